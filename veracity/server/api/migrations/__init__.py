"""Alembic migrations of the admin API tables."""
