"""Revisions of the coordinator's read model."""
