"""The Flower message records: what either side sends is validated on the other."""

from __future__ import annotations

import pytest

from tests.factories import STUDY_HASH, budget_refused_document
from veracity.contracts.messages import RefusalRecord, TrainInstruction, train_config
from veracity.contracts.refusals import BudgetRefused
from veracity.errors import InputError


def test_a_train_config_round_trips_with_the_round_flower_adds() -> None:
    fields = train_config(study="{}", study_hash=STUDY_HASH, run_id="7", code_hash=STUDY_HASH)
    assert "server-round" not in fields
    instruction = TrainInstruction.from_record({**fields, "server-round": 3})
    assert (instruction.run_id, instruction.server_round) == ("7", 3)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"study_hash": "nope"}, "study_hash"),
        ({"server-round": 0}, "server-round"),
        ({"server-round": "3"}, "server-round"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_malformed_train_config_names_its_field(changes: dict[str, object], field: str) -> None:
    fields = train_config(study="{}", study_hash=STUDY_HASH, run_id="7", code_hash=STUDY_HASH)
    with pytest.raises(InputError, match=field):
        TrainInstruction.from_record({**fields, "server-round": 1, **changes})


def test_a_refusal_record_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(InputError, match="kind"):
        RefusalRecord.from_record(
            {"kind": "study.proposed", "json": "{}", "signature": "A" * 86 + "==", "reason": "x"}
        )


def test_a_budget_refusal_may_leave_an_unboundable_epsilon_null() -> None:
    refusal = BudgetRefused.parse(budget_refused_document(epsilon_requested=None))
    assert refusal.epsilon_requested is None
    assert refusal.to_json()["epsilon_requested"] is None
