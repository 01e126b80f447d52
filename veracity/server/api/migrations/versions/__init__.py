"""Revisions of the admin API tables."""
