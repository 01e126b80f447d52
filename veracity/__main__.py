"""``python -m veracity``: the same entry point as the ``veracity`` command."""

from veracity.cli import main

raise SystemExit(main())
