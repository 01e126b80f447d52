"""Every ledger event kind round-trips: contract model -> ledger append -> verify -> read back.

Hypothesis draws the fields of one event of every kind (within the contract's bounds), each
producer's model builds the payload, a real ledger records the events in an order the log's
rules accept (keys enrolled before they sign, a study proposed before its rounds, a
checkpoint before its cosignature), an auditor's verification passes, and every recorded
payload parses back to a model equal to the one produced.
"""

from __future__ import annotations

import hashlib
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.contracts.analysis import (
    ANALYSIS_RECEIPT_DOMAIN,
    AnalysisAnswered,
    AnalysisReceipt,
    CombinedAnswer,
    SignedAnalysisReceipt,
)
from veracity.contracts.base import Payload, SiteStatement
from veracity.contracts.events import (
    KINDS,
    ROOT_ACTOR,
    ApprovalMissingStatement,
    BudgetRefused,
    CheckpointCosigned,
    DatasetRegistered,
    Dropped,
    InferenceBudgetSet,
    InferenceServed,
    KeyEnrolled,
    KeyRecovered,
    KeyRevoked,
    KeyRotated,
    ModelDownloaded,
    ModelReleased,
    NoteRecorded,
    ReleasedDataset,
    RoundCompleted,
    RunFinished,
    RunStarted,
    StudyApproved,
    StudyProposed,
    StudyRefused,
    TokenIssued,
    TokenRevoked,
    UpdatesPruned,
    payload_model,
)
from veracity.contracts.explanation import (
    EXPLANATION_QUERY_ID,
    ExplanationTerms,
    ModelExplained,
    terms_hash,
)
from veracity.contracts.receipts import RECEIPT_DOMAIN, Receipt, SignedReceipt
from veracity.contracts.replay import ReplayConfirmed, ReplayedRound, ReplayFailed
from veracity.core.canonical import canonical_hash
from veracity.core.fields import MAX_SAFE_INTEGER, format_timestamp
from veracity.crypto.keys import SigningKey, generate_signing_key
from veracity.ledger.checkpoint import cosign_checkpoint
from veracity.ledger.ledger import Ledger
from veracity.ledger.possession import sign_enrolment, sign_rotation
from veracity.ledger.statement import sign_bound, sign_statement

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

hashes = st.binary(min_size=8, max_size=8).map(lambda b: hashlib.sha256(b).hexdigest())
names = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,20}\Z").filter(lambda n: n != ROOT_ACTOR)
unicode = st.characters(codec="utf-8")  # any character UTF-8 can carry (no surrogates)
# Identifiers: any character but a control character (C0 or DEL).
idents = st.text(
    alphabet=unicode.filter(lambda c: c >= " " and c != "\x7f"), min_size=1, max_size=40
)
texts = st.text(alphabet=unicode, min_size=1, max_size=200)
timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(format_timestamp)
finite = st.floats(
    min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER, allow_nan=False, allow_infinity=False
)
non_negative = st.floats(min_value=0, max_value=MAX_SAFE_INTEGER, allow_nan=False)
positive = st.floats(min_value=1e-12, max_value=1e6, allow_nan=False)
counts = st.integers(min_value=0, max_value=MAX_SAFE_INTEGER)
rounds = st.integers(min_value=1, max_value=1_000_000)
metrics = st.dictionaries(st.text(string.ascii_lowercase + "-", min_size=1, max_size=20), finite)


@st.composite
def histories(draw: st.DrawFn) -> list[list[int | float]]:
    segment = st.tuples(
        st.floats(min_value=0, max_value=100), st.floats(min_value=1e-6, max_value=1), counts
    ).map(list)
    return draw(st.lists(segment, max_size=4))


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """The drawn fields of one event of every kind."""
    sites = draw(st.lists(names, min_size=2, max_size=3, unique=True))
    return {
        "sites": sites,
        "dataset_id": draw(idents),
        "dataset": {
            "commitment": draw(hashes),
            "schema_hash": draw(hashes),
            "rows": draw(counts),
            "label": draw(idents),
            "features": draw(st.lists(idents, min_size=1, max_size=5)),
        },
        "cap": draw(positive),
        "refusal_reason": draw(st.text(max_size=200)),
        "run_id": draw(idents),
        "round": draw(rounds),
        "versions": draw(st.dictionaries(idents, idents, max_size=4)),
        "receipt": {
            "delta": draw(st.floats(min_value=1e-12, max_value=0.5)),
            "epsilon": draw(non_negative),
            "epsilon_add_remove": draw(non_negative),
            "history": draw(histories()),
            "max_grad_norm": draw(positive),
            "num_examples": draw(counts),
        },
        "dropped_reason": draw(st.text(max_size=100)),
        "metrics": draw(metrics),
        "epsilon_requested": draw(st.one_of(st.none(), non_negative)),
        "epsilon_left": draw(finite),
        "status": draw(st.sampled_from(["completed", "failed", "stopped", "insufficient_sites"])),
        "reason": draw(st.text(max_size=300)),
        "requester": draw(idents),
        "batch": draw(st.integers(min_value=1, max_value=2**31)),
        "note": draw(texts),
        "signed_at": draw(timestamps),
        "hashes": draw(st.lists(hashes, min_size=8, max_size=8)),
    }


class _Recorder:
    """Appends each produced payload and remembers it, as the ledger's callers do."""

    def __init__(self, ledger: Ledger, root: SigningKey) -> None:
        self.ledger, self.root = ledger, root
        self.keys: dict[str, SigningKey] = {}
        self.produced: list[tuple[int, Payload]] = []

    def root_event(self, payload: Payload) -> None:
        entry = self.ledger.append(payload.KIND, ROOT_ACTOR, payload.to_json(), signer=self.root)
        self.produced.append((entry.seq, payload))

    def site_event(self, site: str, payload: Payload) -> None:
        document = payload.to_json()
        signature = sign_statement(
            self.keys[site], payload.KIND, site, document, log_id=self.ledger.log_id
        )
        entry = self.ledger.append(payload.KIND, site, document, signature=signature)
        self.produced.append((entry.seq, payload))


def _record_every_kind(recorder: _Recorder, drawn: dict[str, Any]) -> None:
    sites: list[str] = drawn["sites"]
    h = drawn["hashes"]
    for site in sites:
        recorder.keys[site] = key = generate_signing_key()
        recorder.root_event(
            KeyEnrolled(
                name=site,
                role="site",
                public_key=key.public.pem(),
                valid_from=drawn["signed_at"],
                proof=sign_enrolment(key, log_id=recorder.ledger.log_id, name=site, role="site"),
            )
        )
    first, second = sites[0], sites[1]
    for site in sites:
        recorder.site_event(
            site,
            DatasetRegistered(
                site=site, dataset_id=drawn["dataset_id"], signed_at=drawn["signed_at"],
                **drawn["dataset"],
            ),
        )  # fmt: skip
    study = {"study_id": "s-1", "code_hash": h[0], "sites": sites}
    study_hash = canonical_hash(study)
    recorder.root_event(
        StudyProposed(study_id="s-1", study_hash=study_hash, study=study, code_hash=h[0])
    )
    recorder.site_event(
        first,
        StudyApproved(
            site=first, study_hash=study_hash, dataset_id=drawn["dataset_id"],
            epsilon_cap=drawn["cap"], signed_at=drawn["signed_at"],
        ),
    )  # fmt: skip
    recorder.site_event(
        second,
        StudyRefused(
            site=second, study_hash=study_hash, reason=drawn["refusal_reason"],
            signed_at=drawn["signed_at"],
        ),
    )  # fmt: skip
    recorder.root_event(
        RunStarted(
            run_id=drawn["run_id"], study_hash=study_hash, fab_hash=h[0], config_hash=h[1],
            package_versions=drawn["versions"], seed_commitment=h[2],
        )
    )  # fmt: skip
    receipt = Receipt(
        site=first, study=study_hash, round=drawn["round"], run_id=drawn["run_id"],
        dataset_id=drawn["dataset_id"], dataset_commitment=drawn["dataset"]["commitment"],
        update_hash=h[3], accountant="pld", neighbouring="replace-one",
        noise_generator="ChaCha20", **drawn["receipt"],
    )  # fmt: skip
    signature = sign_bound(
        recorder.keys[first], RECEIPT_DOMAIN, recorder.ledger.log_id, receipt.to_json()
    )
    recorder.root_event(
        RoundCompleted(
            run_id=drawn["run_id"], study_hash=study_hash, round=drawn["round"],
            participants=[first], receipts=[SignedReceipt(receipt=receipt, signature=signature)],
            dropped=[Dropped(site=second, reason=drawn["dropped_reason"])], refused=[],
            aggregated_model_hash=h[4], metrics=drawn["metrics"],
        )
    )  # fmt: skip
    analysed = AnalysisReceipt(
        site=first, study=study_hash, query_id="q-1", query_hash=h[5], answer_hash=h[6],
        dataset_id=drawn["dataset_id"], dataset_commitment=drawn["dataset"]["commitment"],
        sensitivity=drawn["receipt"]["max_grad_norm"], noise_multiplier=drawn["cap"],
        noise_std=drawn["cap"], accountant="pld", neighbouring="replace-one",
        delta=drawn["receipt"]["delta"], epsilon_query=drawn["receipt"]["epsilon"],
        epsilon=drawn["receipt"]["epsilon"], history=drawn["receipt"]["history"],
        suppression_threshold=0.0, repeated=False, noise_generator="ChaCha20",
    )  # fmt: skip
    analysis_signature = sign_bound(
        recorder.keys[first], ANALYSIS_RECEIPT_DOMAIN, recorder.ledger.log_id, analysed.to_json()
    )
    value = drawn["epsilon_left"]
    recorder.root_event(
        AnalysisAnswered(
            run_id=drawn["run_id"], study_hash=study_hash, query_id="q-1", query_hash=h[5],
            answer=CombinedAnswer(
                kind="count", labels=["count"], value=[value], se=[1.0], lower=[value],
                upper=[value], sites=[first],
            ),
            receipts=[SignedAnalysisReceipt(receipt=analysed, signature=analysis_signature)],
            refused=[drawn["dropped_reason"]],
        )
    )  # fmt: skip
    recorder.site_event(
        second,
        BudgetRefused(
            site=second, study_hash=study_hash, dataset_id=drawn["dataset_id"],
            run_id=drawn["run_id"], round=drawn["round"],
            epsilon_requested=drawn["epsilon_requested"], epsilon_left=drawn["epsilon_left"],
            signed_at=drawn["signed_at"],
        ),
    )  # fmt: skip
    recorder.site_event(
        second,
        ApprovalMissingStatement(
            site=second, study_hash=study_hash, run_id=drawn["run_id"], round=drawn["round"],
            reason=drawn["refusal_reason"], signed_at=drawn["signed_at"],
        ),
    )  # fmt: skip
    # Site-side replay (#19).
    replayed = ReplayedRound(round=drawn["round"], update_hash=h[3], seed_commitment=h[2])
    recorder.site_event(
        first,
        ReplayConfirmed(
            site=first, run_id=drawn["run_id"], study_hash=study_hash,
            dataset_id=drawn["dataset_id"], dataset_commitment=drawn["dataset"]["commitment"],
            rounds=[replayed], signed_at=drawn["signed_at"],
        ),
    )  # fmt: skip
    recorder.site_event(
        first,
        ReplayFailed(
            site=first, run_id=drawn["run_id"], study_hash=study_hash,
            dataset_id=drawn["dataset_id"], dataset_commitment=drawn["dataset"]["commitment"],
            round=drawn["round"], expected_update_hash=h[3], replayed_update_hash=h[4],
            reason="re-training gave another update", confirmed=[], signed_at=drawn["signed_at"],
        ),
    )  # fmt: skip
    recorder.root_event(
        ModelReleased(
            model_hash=h[4], run_id=drawn["run_id"], study_hash=study_hash,
            model={"family": "logistic", "n_features": 2},
            datasets=[ReleasedDataset(
                site=first, dataset_id=drawn["dataset_id"],
                commitment=drawn["dataset"]["commitment"],
            )],
            epsilon={first: drawn["receipt"]["epsilon"]}, metrics=drawn["metrics"],
            card_hash=h[5],
        )
    )  # fmt: skip
    # --- explanations (#19): an explanation receipt is an analysis receipt
    terms = ExplanationTerms(
        model_hash=h[4], study_hash=study_hash, clip_norm=drawn["cap"],
        epsilon=min(drawn["cap"], 100.0), delta=drawn["receipt"]["delta"],
    )  # fmt: skip
    explained = analysed.model_copy(
        update={"query_id": EXPLANATION_QUERY_ID, "query_hash": terms_hash(terms)}
    )
    recorder.root_event(
        ModelExplained(
            run_id=drawn["run_id"], model_hash=h[4], study_hash=study_hash, terms=terms,
            terms_hash=terms_hash(terms), report_hash=h[6], records=drawn["batch"],
            top_features=drawn["dataset"]["features"][:10],
            receipts=[SignedAnalysisReceipt(
                receipt=explained,
                signature=sign_bound(
                    recorder.keys[first], ANALYSIS_RECEIPT_DOMAIN, recorder.ledger.log_id,
                    explained.to_json(),
                ),
            )],
            refused=[drawn["dropped_reason"]],
        )
    )  # fmt: skip
    recorder.root_event(
        UpdatesPruned(
            older_than_days=drawn["batch"] % 36_500, before=drawn["signed_at"],
            include_released=drawn["batch"] % 2 == 0,
            runs=[drawn["run_id"]], kept_released=[], removed=h[:3],
            removed_bytes=drawn["batch"],
        )
    )  # fmt: skip
    recorder.root_event(
        RunFinished(
            run_id=drawn["run_id"], study_hash=study_hash, status=drawn["status"],
            reason=drawn["reason"], rounds_completed=1, model_hash=h[4],
        )
    )  # fmt: skip
    recorder.root_event(
        InferenceServed(
            model_hash=h[4], requester=drawn["requester"], he_params_hash=h[6],
            batch_size=drawn["batch"], request_hash=h[7], served_total=drawn["batch"],
        )
    )  # fmt: skip
    recorder.site_event(first, NoteRecorded(text=drawn["note"]))
    checkpoint = recorder.ledger.checkpoint()
    recorder.site_event(
        first,
        CheckpointCosigned(
            site=first, tree_size=checkpoint.tree_size, root_hash=checkpoint.root_hash,
            log_id=checkpoint.log_id, signature=cosign_checkpoint(recorder.keys[first], checkpoint),
        ),
    )  # fmt: skip
    log_id = recorder.ledger.log_id
    handed_to = generate_signing_key()
    recorder.root_event(
        KeyRotated(
            name=first, public_key=handed_to.public.pem(), valid_from=drawn["signed_at"],
            proof=sign_enrolment(handed_to, log_id=log_id, name=first, role="site"),
            outgoing_signature=sign_rotation(
                recorder.keys[first], log_id=log_id, name=first, incoming=handed_to.public
            ),
        )
    )  # fmt: skip
    recorder.keys[first] = handed_to
    recorder.root_event(
        KeyRevoked(name=second, key_id=recorder.keys[second].public.key_id, reason="retired")
    )
    recovered = generate_signing_key()
    recorder.root_event(
        KeyRecovered(
            name=second, public_key=recovered.public.pem(), valid_from=drawn["signed_at"],
            proof=sign_enrolment(recovered, log_id=log_id, name=second, role="site"),
            reason="the site's key was lost with its disk",
        )
    )  # fmt: skip
    recorder.keys[second] = recovered
    recorder.root_event(
        TokenIssued(
            token_id=h[7][:16], name=drawn["requester"], role="site", site=first,
            expires_at=drawn["signed_at"], requested_by=drawn["requester"],
        )
    )  # fmt: skip
    recorder.root_event(
        TokenRevoked(token_id=h[7][:16], name=drawn["requester"], requested_by="alice")
    )
    recorder.root_event(ModelDownloaded(model_hash=h[0], requested_by=drawn["requester"]))
    recorder.root_event(
        InferenceBudgetSet(
            model_hash=h[0], requester=drawn["requester"], budget=31, requested_by="alice"
        )
    )


@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=scenarios())
def test_every_event_kind_round_trips_through_append_and_verify(
    tmp_path_factory: Any, drawn: dict[str, Any]
) -> None:
    directory: Path = tmp_path_factory.mktemp("ledger")
    root = generate_signing_key()
    with Ledger.init(f"sqlite:///{directory / 'ledger.db'}", root_key=root, now=T0) as ledger:
        recorder = _Recorder(ledger, root)
        _record_every_kind(recorder, drawn)

        ledger.verify(root.public)
        recorded = {entry.kind for entry in ledger.iter_entries()}
        assert recorded == KINDS
        for seq, produced in recorder.produced:
            entry = ledger.get(seq)
            assert entry.kind == produced.KIND
            assert payload_model(entry.kind).parse(entry.payload) == produced
            if isinstance(produced, SiteStatement):
                assert entry.actor == produced.site
