"""Alembic revisions of the site store, oldest first."""
