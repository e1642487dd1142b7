"""The broker core: domain records, store, ingest, catalogues, CLI."""

from __future__ import annotations


def package_version() -> str:
    """The installed distribution's version (`0.0.0` when run from an uninstalled tree)."""
    from importlib import metadata

    try:
        return metadata.version("gpu-capacity-broker")
    except metadata.PackageNotFoundError:
        return "0.0.0"
