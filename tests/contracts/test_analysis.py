from __future__ import annotations

import pytest

from tests.analytics.conftest import study_document
from veracity.contracts.analysis import AnalysisStudy, query_hash
from veracity.errors import InputError


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
