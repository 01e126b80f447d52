"""The ledger explorer (auditors and admins): entries, checkpoints, proofs checked in the browser.

Entries are listed by kind, actor and time with their payloads decoded. An entry's page
carries the RFC 9162 inclusion proof the API serves (``GET /api/v1/ledger/proofs/
inclusion``), the signed checkpoint it leads to and the coordinator's root public key, as
JSON in the page; ``static/verify.js`` checks them in the browser (WebCrypto SHA-256 for
the leaf and the path, WebCrypto Ed25519 for the checkpoint's signature) and shows the
verdict. The consistency page does the same for two checkpoints. The server's answer is
the thing under test, so nothing the server says about the proof is trusted: the browser
recomputes the leaf hash from the entry's bytes and every node from the path.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from veracity.contracts.events import KINDS, NAME_PATTERN
from veracity.errors import InputError, NotFound
from veracity.ledger.entry import Entry
from veracity.server.api.console import data
from veracity.server.api.console.render import SECURITY_HEADERS, render
from veracity.server.api.console.screens import screen
from veracity.server.api.console.session import ScreenForbidden, check_csrf, require_screen
from veracity.server.api.tokens import Role
from veracity.server.coordinator.service import CoordinatorService

__all__ = ["router", "PAGE_SIZE"]

router = APIRouter(include_in_schema=False)

#: Entries per page of the explorer.
PAGE_SIZE = 50
MAX_SEQ = 2**53
_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.]*Z?)?$"


def _service(request: Request) -> CoordinatorService:
    service: CoordinatorService = request.app.state.service
    return service


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


@router.get("/ledger")
def entries_page(
    request: Request,
    kind: Annotated[str, Query(max_length=64)] = "",
    actor: Annotated[str, Query(max_length=128)] = "",
    since: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    after: Annotated[str, Query(max_length=40)] = "",
    before: Annotated[str, Query(max_length=40)] = "",
) -> HTMLResponse:
    """Entries from ``since``, of one kind or actor, between two times, payloads decoded."""
    user = require_screen(request, screen("ledger"))
    service = _service(request)
    if kind and kind not in KINDS:
        raise InputError(f"no event kind {kind!r}")
    if actor and not re.match(NAME_PATTERN, actor):
        raise InputError(f"{actor!r} is not an actor's name")
    for value in (after, before):
        if value and not re.match(_TIME, value):
            raise InputError(f"{value!r} is not a time like 2026-12-06T07:00:00Z")
    shown: list[Entry] = []
    cursor: int | None = since
    # Times only grow with seq: skip to ``after`` page by page, stop at ``before``.
    while cursor is not None and len(shown) < PAGE_SIZE:
        page, cursor = service.audit_log.entries(
            since=cursor, limit=PAGE_SIZE, kind=kind or None, actor=actor or None
        )
        for entry in page:
            if after and entry.ts < after:
                continue
            if before and entry.ts >= before:
                cursor = None
                break
            shown.append(entry)
            if len(shown) == PAGE_SIZE:
                cursor = entry.seq + 1
                break
    return render(
        request,
        "ledger.html",
        user,
        active="ledger",
        entries=shown,
        kinds=sorted(KINDS),
        filters={"kind": kind, "actor": actor, "since": since, "after": after, "before": before},
        next_since=cursor,
        size=service.ledger.size(),
    )


@router.get("/ledger/entries/{seq}")
def entry_page(
    request: Request,
    seq: Annotated[int, Path(ge=0, le=MAX_SEQ)],
    tree_size: Annotated[int | None, Query(ge=1, le=MAX_SEQ)] = None,
) -> HTMLResponse:
    """One entry, decoded, with its inclusion proof against a checkpoint, checked here."""
    user = require_screen(request, screen("ledger"))
    service = _service(request)
    entry = service.ledger.get(seq)
    covering = [c for c in service.ledger.checkpoints() if c.tree_size > seq]
    chosen = None
    if covering:
        sizes = {c.tree_size: c for c in covering}
        if tree_size is not None and tree_size not in sizes:
            raise NotFound(f"no signed checkpoint of size {tree_size} covers entry {seq}")
        chosen = sizes[tree_size] if tree_size is not None else covering[-1]
    bundle = None
    if chosen is not None:
        proof = service.ledger.inclusion_proof(seq, chosen.tree_size)
        bundle = _json(
            {
                "proof": proof.to_json(),
                "checkpoint": chosen.to_json(),
                # The log key that signed the checkpoint (the identity key enrolled it).
                "root_public_key": service.audit_log.checkpoint_key(chosen).pem(),
            }
        )
    return render(
        request,
        "entry.html",
        user,
        active="ledger",
        entry=entry,
        body=entry.body.decode("utf-8"),
        checkpoints=covering,
        chosen=chosen,
        bundle=bundle,
        can_sign=user.principal.role is Role.ADMIN,
    )


@router.get("/ledger/checkpoints")
def checkpoints_page(request: Request) -> HTMLResponse:
    """Every signed checkpoint with its cosignatures, and the consistency check form."""
    user = require_screen(request, screen("ledger"))
    service = _service(request)
    checkpoints = list(reversed(service.ledger.checkpoints()))
    return render(
        request,
        "checkpoints.html",
        user,
        active="ledger",
        checkpoints=checkpoints,
        cosigned=data.cosignatures(service),
        witnessed=data.witness_cosignatures(service),
        size=service.ledger.size(),
        root_key_id=service.audit_log.info()["root_key_id"],
        can_sign=user.principal.role is Role.ADMIN,
    )


@router.post("/ledger/checkpoints")
def sign_checkpoint(request: Request, csrf: Annotated[str, Form(max_length=100)]) -> Response:
    """Sign a checkpoint of the whole ledger now (admin)."""
    ledger = screen("ledger")
    user = require_screen(request, ledger)
    if user.principal.role is not Role.ADMIN:
        raise ScreenForbidden(user, ledger, "sign checkpoints (admins do)")
    check_csrf(request, user, csrf)
    _service(request).checkpoint(user.principal)
    return RedirectResponse("/ledger/checkpoints", status_code=303, headers=SECURITY_HEADERS)


@router.get("/ledger/consistency")
def consistency_page(
    request: Request,
    old: Annotated[int, Query(ge=1, le=MAX_SEQ)],
    new: Annotated[int, Query(ge=1, le=MAX_SEQ)],
) -> HTMLResponse:
    """The consistency proof between two signed checkpoints, checked in the browser."""
    user = require_screen(request, screen("ledger"))
    service = _service(request)
    first = service.audit_log.checkpoint_for(old)
    second = service.audit_log.checkpoint_for(new)
    if first is None or second is None:
        raise NotFound(f"no signed checkpoint of size {old if first is None else new}")
    if old > new:
        raise InputError("the older checkpoint must not be larger than the newer one")
    proof = service.ledger.consistency_proof(old, new)
    bundle = _json(
        {
            "proof": proof.to_json(),
            "old_checkpoint": first.to_json(),
            "new_checkpoint": second.to_json(),
            "root_public_key": service.audit_log.checkpoint_key(second).pem(),
        }
    )
    return render(
        request,
        "consistency.html",
        user,
        active="ledger",
        old=first,
        new=second,
        bundle=bundle,
    )
