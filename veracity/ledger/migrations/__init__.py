"""Alembic migrations of the ledger tables (version table ``ledger_alembic_version``)."""
