"""One router per resource of the admin API, each mounted under ``/api/v1``."""
