"""The coordinator's HTTP API (FastAPI routers, mounted under ``/api/v1``)."""
