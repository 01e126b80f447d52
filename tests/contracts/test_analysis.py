from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.analytics.conftest import study_document
from veracity.contracts.analysis import (
    ANALYSIS_RECEIPT_DOMAIN,
    AnalysisAnswered,
    AnalysisReceipt,
    AnalysisStudy,
    CombinedAnswer,
    SignedAnalysisReceipt,
    query_hash,
)
from veracity.contracts.events import ROOT_ACTOR, KeyEnrolled
from veracity.contracts.receipts import RECEIPT_DOMAIN
from veracity.crypto.keys import SigningKey, generate_signing_key
from veracity.errors import InputError, SignatureError
from veracity.ledger.ledger import Ledger
from veracity.ledger.possession import sign_enrolment
from veracity.ledger.statement import sign_bound


def test_a_query_on_an_undeclared_column_makes_the_study_invalid() -> None:
    document = study_document()
    document["queries"][1]["column"] = "ssn"

    with pytest.raises(InputError, match="does not declare"):
        AnalysisStudy.parse(document)


def test_a_cohort_filter_on_an_undeclared_column_makes_the_study_invalid() -> None:
    document = study_document()
    document["queries"][0]["cohort"] = [{"column": "postcode", "op": "==", "value": 1.0}]

    with pytest.raises(InputError, match="does not declare"):
        AnalysisStudy.parse(document)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "histogram"}, "needs bins"),
        ({"bins": [3.0, 1.0]}, "strictly increasing"),
        ({"epsilon": 0.0}, "greater than 0"),
    ],
)
def test_malformed_queries_are_refused(change: dict[str, object], message: str) -> None:
    document = study_document()
    document["queries"][1].update(change)

    with pytest.raises(InputError, match=message):
        AnalysisStudy.parse(document)


def test_the_study_hash_covers_every_term() -> None:
    base = AnalysisStudy.parse(study_document())
    other = AnalysisStudy.parse(study_document(delta=1e-6))

    assert base.study_hash != other.study_hash
    assert base.to_document()["kind"] == "analysis"


def test_the_query_hash_ignores_the_query_id_but_not_the_bounds() -> None:
    base = AnalysisStudy.parse(study_document())
    renamed = study_document()
    renamed["queries"][1]["query_id"] = "another-name"
    wider = study_document()
    wider["columns"]["age"] = {"lower": 0.0, "upper": 120.0}

    assert query_hash(base, base.queries[1]) == query_hash(
        AnalysisStudy.parse(renamed), AnalysisStudy.parse(renamed).queries[1]
    )
    assert query_hash(base, base.queries[1]) != query_hash(
        AnalysisStudy.parse(wider), AnalysisStudy.parse(wider).queries[1]
    )


def test_the_ledger_refuses_an_analysis_answer_whose_receipt_the_site_did_not_sign(
    tmp_path: Path,
) -> None:
    root = generate_signing_key()
    site_key, forger = generate_signing_key(), generate_signing_key()
    with Ledger.init(f"sqlite:///{tmp_path / 'ledger.db'}", root_key=root) as ledger:
        enrolled = KeyEnrolled(
            name="hospital-a", role="site", public_key=site_key.public.pem(),
            valid_from="2026-12-06T00:00:00Z",
            proof=sign_enrolment(site_key, log_id=ledger.log_id, name="hospital-a", role="site"),
        )  # fmt: skip
        ledger.append(enrolled.KIND, ROOT_ACTOR, enrolled.to_json(), signer=root)
        receipt = AnalysisReceipt(
            site="hospital-a", study="a" * 64, query_id="q", query_hash="b" * 64,
            answer_hash="c" * 64, dataset_id="d", dataset_commitment="e" * 64, sensitivity=1.0,
            noise_multiplier=2.0, noise_std=1.0, accountant="pld", neighbouring="replace-one",
            delta=1e-5, epsilon_query=1.0, epsilon=1.0, history=[[2.0, 1.0, 1]],
            suppression_threshold=0.0, repeated=False, noise_generator="chacha20",
        )  # fmt: skip
        answer = CombinedAnswer(
            kind="count", labels=["count"], value=[3.0], se=[1.0], lower=[1.0], upper=[5.0],
            sites=["hospital-a"],
        )  # fmt: skip

        def answered(key: SigningKey) -> dict[str, Any]:
            signature = sign_bound(key, ANALYSIS_RECEIPT_DOMAIN, ledger.log_id, receipt.to_json())
            return AnalysisAnswered(
                run_id="1", study_hash="a" * 64, query_id="q", query_hash="b" * 64, answer=answer,
                receipts=[SignedAnalysisReceipt(receipt=receipt, signature=signature)],
            ).to_json()  # fmt: skip

        with pytest.raises(SignatureError):
            ledger.append("analysis.answered", ROOT_ACTOR, answered(forger), signer=root)
        forged = answered(site_key)  # signed under the training receipts' domain
        forged["receipts"][0]["signature"] = sign_bound(
            site_key, RECEIPT_DOMAIN, ledger.log_id, receipt.to_json()
        )
        with pytest.raises(SignatureError):
            ledger.append("analysis.answered", ROOT_ACTOR, forged, signer=root)
        ledger.append("analysis.answered", ROOT_ACTOR, answered(site_key), signer=root)
        ledger.verify(root.public)
