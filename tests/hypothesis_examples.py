"""How many examples a property test draws: all of them, or a tenth in the edit loop.

``make test-fast`` sets ``VERACITY_FAST_EXAMPLES=1``: each property test then draws a tenth
of its examples (at least 5, never more than its full count), and one without a count of
its own draws 10 (the ``fast`` profile in ``tests/conftest.py``). ``make test``, CI and a
plain ``pytest`` draw every example.
"""

from __future__ import annotations

import os

__all__ = ["FAST", "examples"]

FAST = os.environ.get("VERACITY_FAST_EXAMPLES", "") == "1"


def examples(count: int) -> int:
    """``count``, or a tenth of it (at least 5, at most ``count``) in the edit loop."""
    return min(count, max(5, count // 10)) if FAST else count
