"""Contract tests: what the fakes in tests/fakes serve, checked against the providers' own
published schemas (vendored in `schemas/`) or, for AWS, botocore's service models."""
