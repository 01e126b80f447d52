"""Sites, their statements and studies: the coordinator service's first command group.

An enrolment writes ``key.enrolled`` (``key.recovered`` for a site whose key was revoked);
a rotation, ``key.rotated`` from the site's signed hand-over
and registers the site's SuperNode key with the
SuperLink last, after every row of the change and just before the commit (Flower never
registers a withdrawn key again); a failed commit withdraws the registration. A site that
enrols a new signing key after a revocation keeps its SuperNode registration.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veracity.contracts.base import Payload
from veracity.contracts.events import (
    ANY_ACTOR_KINDS,
    ROOT_ACTOR,
    SITE_KINDS,
    KeyEnrolled,
    KeyRecovered,
    KeyRevoked,
    KeyRotated,
    StudyApproved,
    StudyProposed,
    StudyRefused,
    validate_payload,
)
from veracity.contracts.handover import KeyHandover
from veracity.contracts.receipts import Receipt
from veracity.contracts.replay import ReplayConfirmed, ReplayFailed
from veracity.core.fields import check_site_name, format_timestamp
from veracity.crypto.keys import VerifyKey
from veracity.crypto.supernode import parse_supernode_public_key
from veracity.errors import Conflict, InputError, NotFound
from veracity.server.coordinator import queries
from veracity.server.coordinator.core import ServiceCore
from veracity.server.coordinator.records import (
    EnrolledSite,
    StudyRecord,
)
from veracity.server.coordinator.unit_of_work import (
    Actor,
    Recorded,
    UnitOfWork,
)
from veracity.server.fab import build_fab
from veracity.tasks.study import parse_any_study

__all__ = ["SiteCommands", "SITE_STATEMENT_KINDS"]

#: Statements a site signs on its own machine and the coordinator records for it.
SITE_STATEMENT_KINDS = SITE_KINDS | ANY_ACTOR_KINDS


class SiteCommands(ServiceCore):
    """Enrolments, revocations, site-signed statements and study proposals."""

    # ------------------------------------------------------------------- sites
    def site_key(self, site: str) -> VerifyKey:
        """The Ed25519 key ``site`` holds now (from the ledger's own key index).

        Raises
        ------
        NotFound
            If the site is not enrolled (or its key was revoked).
        """
        record = self.ledger.key_at(site)
        if record is None:
            raise NotFound(f"site {site!r} is not enrolled")
        return record.key

    def enrol_site(
        self,
        actor: Actor,
        name: str,
        *,
        public_key_pem: str,
        supernode_public_key: str,
        proof: str,
    ) -> Recorded[EnrolledSite]:
        """Enrol a site: ``key.enrolled`` with its keys, then its SuperNode's registration.

        ``proof`` is the site key's proof of possession for this log, the name and the role
        ``site`` (:func:`veracity.ledger.possession.sign_enrolment`, made at the site). A
        site whose key was revoked comes back with a new key through a visible
        ``key.recovered`` (a name is enrolled once; its role never changes).

        Raises
        ------
        InputError, Conflict, CryptoError
            A malformed name or key, or a site or key already enrolled (or a SuperNode key
            the SuperLink holds already).
        SignatureError
            If ``proof`` is not the key's proof of possession for this site in this log.
        TransportError
            If the SuperLink does not answer.
        """
        check_site_name(name)
        if name == ROOT_ACTOR:
            raise InputError(f"{ROOT_ACTOR!r} is the root's name, not a site's")
        public_key = VerifyKey.from_pem(public_key_pem)
        supernode_key = supernode_public_key.strip()
        supernode_pem = (
            parse_supernode_public_key(supernode_key)
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )
        with self._change(actor, "site.enrol", name) as uow:
            if self.ledger.key_at(name) is not None:
                raise Conflict(f"site {name!r} is already enrolled")
            event: Payload
            if self.ledger.key_history(name):
                event = KeyRecovered(
                    name=name,
                    public_key=public_key.pem(),
                    valid_from=format_timestamp(),
                    proof=proof,
                    reason="enrolled again after its key was revoked",
                    supernode_public_key=supernode_key,
                )
            else:
                event = KeyEnrolled(
                    name=name,
                    role="site",
                    public_key=public_key.pem(),
                    valid_from=format_timestamp(),
                    supernode_public_key=supernode_key,
                    proof=proof,
                )
            entry = uow.append_root(event)
            uow.seal()
            held = self._registration(name, supernode_pem)
            node_id = (
                held
                if held is not None
                else uow.effect(
                    lambda: self.federation.register_node(name, supernode_key),
                    undo=self.federation.unregister_node,
                )
            )
        site = EnrolledSite(name=name, key_id=public_key.key_id, node_id=node_id, seq=entry.seq)
        return uow.recorded(site)

    def _registration(self, name: str, pem: str) -> int | None:
        """The node id under which the SuperLink holds this key for ``name``, if it does.

        A site that was revoked and enrols a new signing key keeps its SuperNode: its
        registration stands and is not made again (the SuperLink would refuse the key).
        """
        for node in self.federation.list_nodes():
            if node.name == name and node.status != "unregistered" and node.public_key_pem == pem:
                return node.node_id
        return None

    def revoke_site_key(
        self, actor: Actor, name: str, *, reason: str, withdraw_supernode: bool = False
    ) -> Recorded[str]:
        """Revoke the key ``name`` holds now (``key.revoked``); returns the key id.

        Its later signatures are refused, and it no longer counts as approving anything.
        With ``withdraw_supernode`` its SuperNode's registration is withdrawn too, after
        the ledger entry is written (Flower never lets a withdrawn key connect again: the
        site enrols with a new SuperNode key).

        Raises
        ------
        InputError
            If ``name`` holds no site key.
        TransportError
            If the SuperLink does not answer (nothing is recorded).
        """
        with self._change(actor, "site.revoke", name) as uow:
            record = self.ledger.key_at(name)
            if record is None or name == ROOT_ACTOR:
                raise InputError(f"{name!r} holds no site key to revoke")
            uow.append_root(KeyRevoked(name=name, key_id=record.key_id, reason=reason))
            uow.seal()
            if withdraw_supernode:
                for node in self.federation.list_nodes():
                    if node.name == name and node.status != "unregistered":
                        withdraw = partial(self.federation.unregister_node, node.node_id)
                        uow.effect(withdraw)
        return uow.recorded(record.key_id)

    def rotate_site_key(self, actor: Actor, name: str, handover: KeyHandover) -> Recorded[str]:
        """Hand ``name`` over to a new key (``key.rotated``); returns the new key id.

        ``handover`` is made at the site (``veracity site rotate-key``): the new key's
        proof of possession and the outgoing key's signature of the hand-over, both for this
        log. A site whose key is lost or revoked gets a new key through a visible
        ``key.recovered`` instead (revoke, then enrol again).

        Raises
        ------
        InputError
            If ``name`` holds no site key, or the hand-over names another site, another log
            or a new key id that is not its key's.
        Conflict
            If the hand-over starts from a key ``name`` does not hold now (an old
            hand-over, or one made by another key), or its new key was enrolled before.
        SignatureError
            If either signature does not verify.
        """
        public_key = VerifyKey.from_pem(handover.public_key)
        if handover.name != name:
            raise InputError(f"the hand-over is for site {handover.name!r}, not {name!r}")
        if handover.log_id != self.ledger.log_id:
            raise InputError(
                "the hand-over was made for another log (its log_id is not this ledger's)"
            )
        if handover.new_key_id != public_key.key_id:
            raise InputError("the hand-over's new_key_id is not its public key's id")
        with self._change(actor, "site.rotate", name) as uow:
            record = self.ledger.key_at(name)
            if record is None or name == ROOT_ACTOR:
                raise InputError(
                    f"{name!r} holds no site key to hand over: a lost or revoked key is "
                    "replaced by a recovery (revoke, then enrol again: key.recovered)"
                )
            if handover.key_id != record.key_id:
                raise Conflict(
                    f"the hand-over starts from key {handover.key_id[:16]}, but {name!r} holds "
                    f"{record.key_id[:16]}: only the current key hands a site over"
                )
            uow.append_root(
                KeyRotated(
                    name=name,
                    public_key=public_key.pem(),
                    valid_from=format_timestamp(),
                    proof=handover.proof,
                    outgoing_signature=handover.outgoing_signature,
                )
            )
            uow.seal()
        return uow.recorded(public_key.key_id)

    # -------------------------------------------------------------- statements
    def record_statement(
        self, actor: Actor, kind: str, site: str, payload: dict[str, Any], signature: str
    ) -> Recorded[Payload]:
        """Record a statement ``site`` signed on its own machine; the value is its model.

        Raises
        ------
        InputError
            If the kind is not a site statement, the payload is malformed or names another
            site, or an approval does not fit the study (site not in it, cap above the
            study's, dataset not registered by the site).
        NotFound
            If a decision names a study that was never proposed.
        Conflict
            If this signed statement was recorded before.
        SignatureError
            If the site did not sign it.
        """
        if kind not in SITE_STATEMENT_KINDS:
            raise InputError(f"{kind!r} is not a statement a site can make")
        if "site" in payload and payload["site"] != site:
            raise InputError(f"the statement names site {payload['site']!r}, not {site!r}")
        statement = validate_payload(kind, payload, actor=site)
        dataset_id = getattr(statement, "dataset_id", "")
        with self._change(actor, kind, f"{site} {dataset_id}") as uow:
            if isinstance(statement, StudyApproved | StudyRefused):
                self._check_decision(uow, site, statement)
            elif isinstance(statement, ReplayConfirmed | ReplayFailed):
                self._check_replay(uow, site, statement)
            uow.append_signed(kind, site, payload, signature)
        return uow.recorded(statement)

    @staticmethod
    def _check_decision(
        uow: UnitOfWork, site: str, statement: StudyApproved | StudyRefused
    ) -> None:
        found = queries.study(uow.session, statement.study_hash)
        if found is None:
            raise NotFound(f"no study {statement.study_hash!r} was proposed")
        caps = found.study.epsilon_caps
        if site not in caps:
            raise InputError(f"study {found.study.study_id} does not include site {site!r}")
        if isinstance(statement, StudyApproved):
            if statement.epsilon_cap > caps[site]:
                raise InputError(
                    f"approved epsilon {statement.epsilon_cap} exceeds the study's cap "
                    f"{caps[site]} for {site}"
                )
            if queries.dataset(uow.session, site, statement.dataset_id) is None:
                raise InputError(f"{site} has not registered dataset {statement.dataset_id!r}")

    # Site-side replay (#19): a replay names rounds the ledger holds this site's receipts of.
    @staticmethod
    def _check_replay(
        uow: UnitOfWork, site: str, statement: ReplayConfirmed | ReplayFailed
    ) -> None:
        receipts: dict[int, Receipt] = {}
        for record in queries.rounds(uow.session, statement.run_id):
            for signed in record.completed.receipts:
                if signed.receipt.site == site:
                    receipts[record.round] = signed.receipt
        if isinstance(statement, ReplayConfirmed):
            named = list(statement.rounds)
        else:
            named = list(statement.confirmed)
            failed = receipts.get(statement.round)
            if failed is None:
                raise InputError(
                    f"the ledger holds no receipt of {site} for round {statement.round} of "
                    f"run {statement.run_id}"
                )
            if failed.update_hash != statement.expected_update_hash:
                raise InputError(
                    f"round {statement.round}: the expected update hash is not the one in "
                    f"{site}'s receipt"
                )
        for item in named:
            receipt = receipts.get(item.round)
            if receipt is None:
                raise InputError(
                    f"the ledger holds no receipt of {site} for round {item.round} of run "
                    f"{statement.run_id}"
                )
            if (receipt.update_hash, receipt.seed_commitment) != (
                item.update_hash,
                item.seed_commitment,
            ) or (receipt.study, receipt.dataset_id, receipt.dataset_commitment) != (
                statement.study_hash,
                statement.dataset_id,
                statement.dataset_commitment,
            ):
                raise InputError(
                    f"round {item.round}: the replayed hashes are not those of {site}'s receipt"
                )

    # ----------------------------------------------------------------- studies
    def propose_study(self, actor: Actor, document: dict[str, Any]) -> Recorded[StudyRecord]:
        """Record ``study.proposed``; its code hash is the FAB this coordinator submits.

        Raises
        ------
        InputError
            If the document is invalid, names a code hash other than this coordinator's
            FAB, or names sites that are not enrolled.
        Conflict
            If it was proposed before.
        """
        fab_hash = build_fab().fab_hash
        document = dict(document)
        if document.setdefault("code_hash", fab_hash) != fab_hash:
            raise InputError(f"code_hash must be this coordinator's app bundle hash {fab_hash}")
        study = parse_any_study(document)
        with self._change(actor, "study.propose", study.study_id) as uow:
            for site in study.epsilon_caps:
                found = queries.site(uow.session, site)
                if found is None or found.revoked:
                    raise InputError(f"site {site!r} in epsilon_caps is not enrolled")
            if queries.study(uow.session, study.study_hash) is not None:
                raise Conflict(f"study {study.study_hash} was already proposed")
            entry = uow.append_root(
                StudyProposed(
                    study_id=study.study_id,
                    study_hash=study.study_hash,
                    study=study.to_document(),
                    code_hash=study.code_hash,
                )
            )
        return uow.recorded(StudyRecord(study, proposed_seq=entry.seq, proposed_at=entry.ts))
