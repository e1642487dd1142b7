"""The REST API (FastAPI): `create_app` in `broker.api.app`; one router per resource."""
