"""The console's screens and which roles see each: the one table navigation and guards read.

Each screen shows what the API lets the same role read (``docs/api.md``'s route table):
runs are the admin's; privacy budgets come from the sites' signed receipts, so an auditor
reads them all and a site its own; studies are read by admins and sites; models by the
roles that may query them; the ledger by admins and auditors; tokens and site keys are
the admin's. The Overview shows every role the parts of the network its role may read.
"""

from __future__ import annotations

from dataclasses import dataclass

from veracity.server.api.tokens import Role

__all__ = ["Screen", "SCREENS", "screen", "screens_for"]

_ALL = frozenset(Role)


@dataclass(frozen=True)
class Screen:
    """One screen: its key, where it lives, its label in the navigation, who sees it."""

    key: str
    path: str
    label: str
    roles: frozenset[Role]


SCREENS: tuple[Screen, ...] = (
    Screen("overview", "/", "Overview", _ALL),
    Screen("runs", "/runs", "Runs", frozenset({Role.ADMIN})),
    Screen(
        "budgets", "/budgets", "Privacy budgets", frozenset({Role.ADMIN, Role.SITE, Role.AUDITOR})
    ),
    Screen("studies", "/studies", "Studies", frozenset({Role.ADMIN, Role.SITE})),
    Screen("models", "/models", "Models", frozenset({Role.ADMIN, Role.SITE, Role.RESEARCHER})),
    Screen("ledger", "/ledger", "Ledger", frozenset({Role.ADMIN, Role.AUDITOR})),
    Screen("access", "/access", "Tokens and sites", frozenset({Role.ADMIN})),
)

_BY_KEY = {s.key: s for s in SCREENS}


def screen(key: str) -> Screen:
    """The screen named ``key`` (a programming error if there is none).

    Raises
    ------
    KeyError
        If no screen has that key.
    """
    return _BY_KEY[key]


def screens_for(role: Role) -> list[Screen]:
    """The screens ``role`` may open, in navigation order."""
    return [s for s in SCREENS if role in s.roles]
