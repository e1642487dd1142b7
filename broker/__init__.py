"""The broker core: domain records, store, ingest, catalogues, CLI."""
