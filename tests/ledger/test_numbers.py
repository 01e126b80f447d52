"""Attack 3 (issue 18): an entry the ledger writes must read back, whatever numbers it holds.

RFC 8785 writes a double in [2**53, 10**21) as an integer literal (``1e20`` becomes
``100000000000000000000``) that no strict decoder can read back as the same value; such an
entry made ``get``, ``entries`` and ``verify`` fail for good. Every number hashed into the
ledger is now finite and below 2**53 in magnitude (the contract types, free-form JSON
included), and every entry is decoded again before it is inserted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import LOG_ID, budget_refused_document, refused_reply
from tests.hypothesis_examples import examples
from veracity.contracts.events import ROOT_ACTOR, validate_payload
from veracity.core.canonical import canonical_hash
from veracity.core.jcs import decode_canonical, encode_canonical
from veracity.crypto.keys import generate_signing_key
from veracity.errors import InputError
from veracity.ledger.statement import sign_statement

from .conftest import World

H = "ab" * 32
HUGE = [1e16, 2.0**53, 1e20, -1e20, 1e300]


def _model_released(value: Any) -> dict[str, Any]:
    return {
        "model_hash": H,
        "run_id": "1",
        "study_hash": H,
        "model": {"family": "logistic", "scale": value},
        "datasets": [{"site": "hospital-a", "dataset_id": "d1", "commitment": H}],
        "epsilon": {"hospital-a": 1.5},
        "metrics": {"auc": 0.93},
        "card_hash": H,
    }


def _study_proposed(value: Any) -> dict[str, Any]:
    study = {"study_id": "bc-1", "rounds": 2, "dp": {"max_epsilon": value}}
    return {
        "study_id": "bc-1",
        "study_hash": canonical_hash(study),
        "study": study,
        "code_hash": "c" * 64,
    }


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("build", [_model_released, _study_proposed])
def test_a_number_that_would_not_read_back_is_refused_and_the_ledger_stays_readable(
    db_url: str,
    make_world: Callable[..., World],
    build: Callable[[Any], dict[str, Any]],
    value: float,
) -> None:
    world = make_world(db_url)
    payload = build(value)
    kind = "model.released" if build is _model_released else "study.proposed"
    with pytest.raises(InputError, match="2\\*\\*53"):
        world.ledger.append(kind, ROOT_ACTOR, payload, signer=world.root, now=world.now())

    world.ledger.append(kind, ROOT_ACTOR, build(0.5), signer=world.root, now=world.now())
    assert [e.kind for e in world.ledger.entries()][-1] == kind
    world.ledger.verify(world.root.public)


def test_a_sites_budget_refusal_with_a_huge_epsilon_is_refused_on_the_wire() -> None:
    """The site's signed ``budget.refused`` sent through Flower never reaches the ledger."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from veracity.contracts.messages import RefusalRecord
    from veracity.server.rounds import check_refusal

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    key = generate_signing_key()
    request = Message(
        RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=1, message_type="train"
    )
    payload = budget_refused_document(epsilon_left=1e20)
    reply = refused_reply(request, key, payload, log_id=LOG_ID)
    record = RefusalRecord.from_record(dict(reply.content.config_records[RefusalRecord.RECORD]))
    with pytest.raises(InputError, match="epsilon_left"):
        check_refusal(record, site="hospital-a", site_key=key.public, log_id=LOG_ID)


def test_a_signed_statement_with_a_huge_number_is_refused_before_it_is_written(
    db_url: str, make_world: Callable[..., World]
) -> None:
    world = make_world(db_url)
    payload = budget_refused_document(site="hospital-a", epsilon_left=1e20)
    signature = sign_statement(
        world.keys["hospital-a"],
        "budget.refused",
        "hospital-a",
        payload,
        log_id=world.ledger.log_id,
    )
    size = world.ledger.size()
    with pytest.raises(InputError):
        world.ledger.append("budget.refused", "hospital-a", payload, signature=signature)
    assert world.ledger.size() == size


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_JSON)
def test_every_payload_the_contract_accepts_round_trips_through_canonical_json(value: Any) -> None:
    payload = _model_released(value)
    try:
        validate_payload("model.released", payload)
    except InputError:
        return
    assert decode_canonical(encode_canonical(payload)) == payload
