"""Delivering a site's outbox to the coordinator's admin API.

Every statement a site signs (dataset registrations, study decisions, budget refusals,
notes) waits in its outbox until the coordinator's ledger holds it. :func:`deliver_outbox`
sends each pending one to the route for its kind with the site's own token, and marks it
delivered when the API records it (201) or already holds it (409: a replay of the same
signed statement, for instance one that reached the ledger through Flower). A refusal
(4xx other than 409) leaves the statement pending and is reported; an unreachable API
stops the pass and leaves everything pending for the next one.

``veracity site sync`` runs one pass; ``veracity site start --server URL --token T`` runs
one every ``--sync-every`` seconds while the site is up.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from veracity.api_options import api_base
from veracity.client.store import SignedStatement, SiteStore
from veracity.core.fields import format_timestamp
from veracity.errors import TransportError

__all__ = ["OutboxReport", "deliver_outbox", "route_for"]

#: How the API answers a statement it already holds.
_ALREADY_RECORDED = 409


@dataclass
class OutboxReport:
    """What one delivery pass did, statement by statement (ids are full SHA-256 hex)."""

    delivered: list[str] = field(default_factory=list)
    already_recorded: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    pending: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "delivered": self.delivered,
            "already_recorded": self.already_recorded,
            "refused": self.refused,
            "pending": self.pending,
        }


def route_for(statement: SignedStatement) -> tuple[str, dict[str, Any]]:
    """The API path and body that record ``statement``."""
    body: dict[str, Any] = {"payload": statement.payload, "signature": statement.signature}
    if statement.kind == "dataset.registered":
        return "/datasets", body
    if statement.kind in ("study.approved", "study.refused"):
        return f"/studies/{statement.payload['study_hash']}/decisions", {
            **body,
            "kind": statement.kind,
        }
    return "/statements", {**body, "kind": statement.kind}


def deliver_outbox(
    store: SiteStore,
    *,
    server: str,
    token: str,
    ca_cert: Path | None,
    timeout: float = 30.0,
    transport: httpx.BaseTransport | None = None,
) -> OutboxReport:
    """Send every pending statement in ``store``'s outbox to the API at ``server``.

    Raises
    ------
    TransportError
        If the API cannot be reached, or refuses the token (401/403): nothing further is
        sent, and what was delivered before stays marked.
    """
    verify: ssl.SSLContext | bool = True
    if ca_cert is not None:
        verify = ssl.create_default_context(cafile=str(ca_cert))
    report = OutboxReport()
    pending = store.outbox()
    with httpx.Client(
        base_url=api_base(server), verify=verify, timeout=timeout, transport=transport
    ) as http:
        for entry in pending:
            statement = entry.statement
            path, body = route_for(statement)
            try:
                response = http.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError as err:
                hint = " (for a private CA pass --ca-cert)" if "CERTIFICATE" in str(err) else ""
                raise TransportError(f"cannot deliver the outbox to {server}: {err}{hint}") from err
            if response.status_code in (401, 403):
                raise TransportError(
                    f"the coordinator refused this site's token ({response.status_code}); "
                    "ask its admin for a site token (veracity admin tokens create --role site)"
                )
            sid = statement.statement_id
            if response.status_code < 300:
                report.delivered.append(sid)
            elif response.status_code == _ALREADY_RECORDED:
                report.already_recorded.append(sid)
            else:
                report.refused[sid] = f"{response.status_code}: {_detail(response)}"
                continue
            store.mark_delivered([sid], now=format_timestamp())
    report.pending = len(store.outbox())
    return report


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text[:300]))
    except (ValueError, AttributeError):
        return response.text[:300]
