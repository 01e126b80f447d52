"""``/sites``: enrol a site (admin) and read enrolments."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from veracity.contracts.handover import KeyHandover
from veracity.server.api.deps import (
    AdminDep,
    AdminOrSiteDep,
    PageDep,
    ServiceDep,
    action_id,
    declare_roles,
    forbid,
)
from veracity.server.api.problems import responses
from veracity.server.api.schemas import (
    SITE_PATTERN,
    SiteEnrolIn,
    SiteEnrolledOut,
    SiteListOut,
    SiteOut,
    SiteRevokedOut,
    SiteRevokeIn,
    SiteRotatedOut,
    SiteRotateIn,
    SiteSummaryOut,
)
from veracity.server.api.tokens import Role

__all__ = ["router"]

router = APIRouter(prefix="/sites", tags=["sites"])
SitePath = Annotated[str, Path(pattern=SITE_PATTERN)]


@router.post(
    "",
    status_code=201,
    summary="Enrol a site (key.enrolled) and register its SuperNode",
    responses=responses(400, 401, 403, 409, 413, 422, 503),
)
def enrol_site(body: SiteEnrolIn, principal: AdminDep, service: ServiceDep) -> SiteEnrolledOut:
    """Record the site's Ed25519 key in the ledger and its SuperNode key on the SuperLink."""
    recorded = service.enrol_site(
        principal,
        body.name,
        public_key_pem=body.public_key,
        supernode_public_key=body.supernode_public_key,
        proof=body.proof,
    )
    enrolled = recorded.value
    return SiteEnrolledOut(
        name=enrolled.name,
        key_id=enrolled.key_id,
        node_id=str(enrolled.node_id),
        seq=recorded.seq,
        action_id=action_id(recorded),
    )


@router.get("", summary="Enrolled sites", responses=responses(401, 403, 422))
def list_sites(principal: AdminDep, service: ServiceDep, page: PageDep) -> SiteListOut:
    """Every enrolled site with its current key id (null once revoked), a page at a time."""
    sites, following = page.of(service.reads.sites())
    return SiteListOut(
        next_offset=following,
        items=[
            SiteSummaryOut(
                name=site.name,
                enrolled_seq=site.enrolled_seq,
                valid_from=site.valid_from,
                key_id=site.key_id,
            )
            for site in sites
        ],
    )


@router.get("/{name}", summary="One enrolled site", responses=responses(401, 403, 404, 422))
def get_site(
    name: SitePath, request: Request, principal: AdminOrSiteDep, service: ServiceDep
) -> SiteOut:
    """A site's enrolment (a site token reads only its own)."""
    if principal.role is Role.SITE and principal.site != name:
        raise forbid(request, principal, f"a token of site {principal.site} reads only its own")
    site = service.reads.site(name)
    return SiteOut(
        name=site.name,
        key_id=site.key_id,
        public_key=site.public_key,
        supernode_public_key=site.supernode_public_key,
        valid_from=site.valid_from,
        enrolled_seq=None if site.revoked else site.enrolled_seq,
    )


@router.post(
    "/{name}/revoke",
    summary="Revoke a site's key (key.revoked), optionally withdrawing its SuperNode",
    responses=responses(401, 403, 413, 422, 503),
)
def revoke_site(
    name: SitePath, body: SiteRevokeIn, principal: AdminDep, service: ServiceDep
) -> SiteRevokedOut:
    """Record ``key.revoked``, then withdraw the SuperNode's registration if asked.

    The site can enrol again with a new key (and a new SuperNode key if it was withdrawn).
    """
    recorded = service.revoke_site_key(
        principal, name, reason=body.reason, withdraw_supernode=body.withdraw_supernode
    )
    return SiteRevokedOut(
        name=name,
        key_id=recorded.value,
        supernode_withdrawn=body.withdraw_supernode,
        seq=recorded.seq,
        action_id=action_id(recorded),
    )


@router.post(
    "/{name}/rotations",
    status_code=201,
    summary="Record a site's key hand-over (key.rotated), signed by its outgoing key",
    responses=responses(401, 403, 409, 413, 422),
)
def rotate_site(
    name: SitePath, body: SiteRotateIn, principal: AdminDep, service: ServiceDep
) -> SiteRotatedOut:
    """Record ``key.rotated`` from the hand-over the site made (``veracity site rotate-key``).

    The outgoing key signs the hand-over and the new key proves possession, both for this
    log: a hand-over for another site or log, or with a bad signature, is 422; one that
    does not start from the site's current key (or whose new key was enrolled before) is
    409. A lost key is not rotated but recovered: revoke, then enrol again (``key.recovered``).
    """
    handover = KeyHandover.parse(body.model_dump(), what="key hand-over")
    recorded = service.rotate_site_key(principal, name, handover)
    return SiteRotatedOut(
        name=name,
        previous_key_id=handover.key_id,
        key_id=recorded.value,
        seq=recorded.seq,
        action_id=action_id(recorded),
    )


declare_roles(router)
