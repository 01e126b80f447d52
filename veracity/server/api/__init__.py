"""The coordinator's admin web API (FastAPI), mounted under ``/api/v1``.

``app.create_app(settings)`` builds it; ``serve`` runs it (with the SuperLink) under
uvicorn; ``tokens``, ``ratelimit``, ``service`` and ``db`` are plain Python (no FastAPI)
beneath the routers in ``routes`` and the encrypted-inference router in ``inference``.
``docs/api.md`` has the routes, roles and error codes.
"""
