"""``/ledger/witness``: what a site's witness reads, and where it posts its cosignature.

It reads the checkpoint note, a consistency proof and the entries in between. Readable by
sites, auditors and admins; only a site posts, and only as its own witness. Cosignatures
are kept outside the Merkle tree and served as extra lines of the note.
"""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from veracity.errors import InputError
from veracity.ledger.note import MAX_NOTE_BYTES, Note, NoteVerifier
from veracity.ledger.witnessed import WitnessedLog
from veracity.server.api.deps import Allow, ServiceDep, SiteDep, declare_roles
from veracity.server.api.problems import responses
from veracity.server.api.tokens import Principal, Role

__all__ = ["router", "MAX_ENTRIES"]

router = APIRouter(prefix="/ledger/witness", tags=["ledger"])

#: Most entries one page of ``/ledger/witness/entries`` holds.
MAX_ENTRIES = 1000
MAX_SEQ = 2**53

_READERS = Allow(Role.ADMIN, Role.AUDITOR, Role.SITE)
ReaderDep = Annotated[Principal, Depends(_READERS)]


class VkeyOut(BaseModel):
    """The log's note verifier key."""

    model_config = ConfigDict(frozen=True)
    origin: str
    vkey: str


class NoteOut(BaseModel):
    """A checkpoint as a signed note, with every stored cosignature line."""

    model_config = ConfigDict(frozen=True)
    origin: str
    tree_size: int
    note: str


class WitnessProofOut(BaseModel):
    """An RFC 9162 consistency proof (base64 hashes)."""

    model_config = ConfigDict(frozen=True)
    old_size: int
    new_size: int
    proof: list[str]


class EntriesOut(BaseModel):
    """The exact bytes of entries ``start`` to ``end - 1`` (UTF-8 JSON text)."""

    model_config = ConfigDict(frozen=True)
    start: int
    entries: list[str]


class CosignatureIn(BaseModel):
    """A witness's ``cosignature/v1`` line for the checkpoint of ``tree_size`` entries."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tree_size: int = Field(ge=1, le=MAX_SEQ)
    cosignature: str = Field(min_length=1, max_length=1024)
    vkey: str = Field(min_length=1, max_length=1024)


class CosignatureOut(BaseModel):
    """Whether the cosignature was new."""

    model_config = ConfigDict(frozen=True)
    tree_size: int
    witness: str
    stored: bool


@router.get("/vkey", summary="The log's note verifier key", responses=responses(401, 403))
def vkey(principal: ReaderDep, service: ServiceDep) -> VkeyOut:
    """``<origin>+<key id>+<key>``: pin it out of band where you can."""
    log = WitnessedLog(service.ledger)
    return VkeyOut(origin=log.origin, vkey=log.verifier.vkey())


@router.get(
    "/checkpoint",
    summary="The newest checkpoint as a signed note, with its cosignatures",
    responses=responses(401, 403, 404, 422),
)
def checkpoint(
    principal: ReaderDep,
    service: ServiceDep,
    tree_size: Annotated[int | None, Query(ge=1, le=MAX_SEQ)] = None,
) -> NoteOut:
    """The C2SP tlog-checkpoint note of ``tree_size`` entries (default: the newest)."""
    log = WitnessedLog(service.ledger)
    note = log.note(tree_size)
    size = int(note.text.split("\n")[1])
    return NoteOut(origin=log.origin, tree_size=size, note=note.render())


@router.get(
    "/consistency",
    summary="A consistency proof between two sizes",
    responses=responses(401, 403, 422),
)
def consistency(
    principal: ReaderDep,
    service: ServiceDep,
    old_size: Annotated[int, Query(ge=1, le=MAX_SEQ)],
    new_size: Annotated[int | None, Query(ge=1, le=MAX_SEQ)] = None,
) -> WitnessProofOut:
    """RFC 9162 proof that the tree of ``new_size`` (default: all) extends ``old_size``."""
    proof = service.ledger.consistency_proof(old_size, new_size)
    return WitnessProofOut(
        old_size=proof.old_size,
        new_size=proof.new_size,
        proof=[base64.b64encode(item).decode("ascii") for item in proof.proof],
    )


@router.get("/entries", summary="Entries' exact bytes, paged", responses=responses(401, 403, 422))
def entries(
    principal: ReaderDep,
    service: ServiceDep,
    start: Annotated[int, Query(ge=0, le=MAX_SEQ)],
    end: Annotated[int, Query(ge=1, le=MAX_SEQ)],
) -> EntriesOut:
    """At most 1,000 entries from ``start`` up to ``end`` (exclusive), in order."""
    if end <= start:
        raise InputError("end must be above start")
    limit = min(end - start, MAX_ENTRIES)
    log = WitnessedLog(service.ledger)
    bodies = [body.decode("utf-8") for body in log.bodies(start, start + limit)]
    return EntriesOut(start=start, entries=bodies)


@router.post(
    "/cosignatures",
    status_code=201,
    summary="Post this site's witness cosignature of a checkpoint",
    responses=responses(401, 403, 404, 422),
)
def post_cosignature(
    body: CosignatureIn, principal: SiteDep, service: ServiceDep
) -> CosignatureOut:
    """Checked against the given vkey, whose name must be this site's witness name."""
    if principal.site is None:
        raise InputError("this site token names no site")
    line = body.cosignature if body.cosignature.endswith("\n") else body.cosignature + "\n"
    if len(line) > MAX_NOTE_BYTES:
        raise InputError("the cosignature line is too long")
    parsed = Note.parse("x\n\n" + line).signatures
    if len(parsed) != 1:
        raise InputError("give exactly one cosignature line")
    verifier = NoteVerifier.parse(body.vkey)
    stored = WitnessedLog(service.ledger).add_cosignature(
        body.tree_size, parsed[0], verifier, site=principal.site
    )
    return CosignatureOut(tree_size=body.tree_size, witness=verifier.name, stored=stored)


declare_roles(router)
