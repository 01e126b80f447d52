"""Alembic migrations of the coordinator's read model."""
