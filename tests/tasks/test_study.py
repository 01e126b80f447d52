from __future__ import annotations

from typing import Any

import pytest

from veracity.errors import InputError
from veracity.server.release import privacy_unit
from veracity.tasks.study import parse_study


def _document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "study_id": "bc-mlp-1",
        "model": {
            "family": "poly_mlp",
            "n_features": 2,
            "hidden": 4,
            "activation": [0.125, 0.5, 0.0],
        },
        "features": ["a", "b"],
        "label": "y",
        "scaling": [[0.0, 1.0], [10.0, 2.0]],
        "dp": {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-5},
        "training": {"batch_size": 32, "local_epochs": 1, "learning_rate": 0.1},
        "rounds": 3,
        "min_sites": 2,
        "epsilon_caps": {"hospital-a": 3.0, "hospital-b": 3.0},
        "code_hash": "ab" * 32,
    }
    document.update(changes)
    return document


def test_study_hash_is_stable_and_changes_with_any_term() -> None:
    study = parse_study(_document())
    assert study.study_hash == parse_study(_document()).study_hash
    assert study.study_hash != parse_study(_document(rounds=4)).study_hash
    caps = {"hospital-a": 3.0, "hospital-b": 2.5}
    assert study.study_hash != parse_study(_document(epsilon_caps=caps)).study_hash


def test_study_round_trips_through_its_document() -> None:
    study = parse_study(_document())
    assert parse_study(study.to_document()) == study


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"features": ["a"]}, "inputs"),
        ({"label": "a"}, "label"),
        ({"scaling": [[0.0, 1.0], [0.0, 0.0]]}, "std"),
        ({"min_sites": 3}, "min_sites"),
        ({"code_hash": "xyz"}, "code_hash"),
        ({"dp": {"noise_multiplier": -1, "max_grad_norm": 1.0, "delta": 1e-5}}, "noise_multiplier"),
        ({"model": {"family": "transformer", "n_features": 2}}, "model"),
        ({"extra": 1}, "extra"),
    ],
)
def test_invalid_studies_are_refused_naming_the_problem(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        parse_study(_document(**changes))


#: The hash of ``_document()`` before studies could carry ``central_dp``.
HASH_WITHOUT_CENTRAL_DP = "61da596203d545bb01546904100c7a5b27dd7210b47b667a93eb6598faf0ca42"

CENTRAL_DP = {"noise_multiplier": 1.0, "clipping_norm": 0.5, "max_epsilon": 8.0, "delta": 1e-5}


def test_a_study_without_central_dp_serialises_exactly_as_before() -> None:
    study = parse_study(_document())

    assert study.central_dp is None
    assert "central_dp" not in study.to_document()
    assert "central_dp" not in study.model_dump_json()
    assert study.study_hash == HASH_WITHOUT_CENTRAL_DP
    # An explicit null is the same study.
    assert parse_study(_document(central_dp=None)).study_hash == HASH_WITHOUT_CENTRAL_DP


def test_central_dp_terms_are_part_of_the_study_and_round_trip() -> None:
    study = parse_study(_document(central_dp=CENTRAL_DP))

    assert study.central_dp is not None
    assert study.to_document()["central_dp"] == {**CENTRAL_DP, "accountant": "rdp"}
    assert parse_study(study.to_document()) == study
    assert study.study_hash != HASH_WITHOUT_CENTRAL_DP
    other = parse_study(_document(central_dp={**CENTRAL_DP, "max_epsilon": 9.0}))
    assert other.study_hash != study.study_hash


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"clipping_norm": -1.0}, "clipping_norm"),
        ({"max_epsilon": float("inf")}, "max_epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"accountant": "prv"}, "accountant"),
        ({"sampling": "poisson"}, "sampling"),
    ],
)
def test_invalid_central_dp_terms_are_refused_naming_the_field(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=f"central_dp.{message}"):
        parse_study(_document(central_dp={**CENTRAL_DP, **changes}))


def test_the_weight_bound_is_left_out_at_its_default_and_hashed_otherwise() -> None:
    default = parse_study(_document())
    declared = parse_study(_document(max_weight_norm=50.0))

    assert default.max_weight_norm == 1000.0
    assert "max_weight_norm" not in default.to_document()
    assert parse_study(_document(max_weight_norm=1000.0)).study_hash == HASH_WITHOUT_CENTRAL_DP
    assert declared.to_document()["max_weight_norm"] == 50.0
    assert declared.study_hash != default.study_hash
    with pytest.raises(InputError, match="max_weight_norm"):
        parse_study(_document(max_weight_norm=float("inf")))


def test_runs_are_left_out_at_their_default_and_hashed_otherwise() -> None:
    default = parse_study(_document())
    twice = parse_study(_document(runs=2))

    assert default.runs == 1
    assert "runs" not in default.to_document()
    assert parse_study(_document(runs=1)).study_hash == HASH_WITHOUT_CENTRAL_DP
    assert twice.to_document()["runs"] == 2
    assert twice.study_hash != default.study_hash
    with pytest.raises(InputError, match="runs"):
        parse_study(_document(runs=0))


def _signals_document(**changes: Any) -> dict[str, Any]:
    channels = ["ankle_x", "ankle_y", "trunk_z"]
    document = _document(
        model={"family": "cnn1d", "input_shape": [3, 128], "classes": 3},
        features=channels,
        scaling=[[0.0, 1.0]] * 3,
        classes=["walk", "stand", "freeze"],
        input={"kind": "signals", "rate": 64, "channels": channels, "window": 128, "hop": 64},
    )
    document.update(changes)
    return document


def test_the_cards_privacy_unit_is_a_window_and_says_when_windows_overlap() -> None:
    overlapping = privacy_unit(parse_study(_signals_document()))
    assert overlapping.startswith("one window (128 samples) of one recording")
    assert "up to 2 windows" in overlapping
    channels = ["ankle_x", "ankle_y", "trunk_z"]
    apart = privacy_unit(
        parse_study(
            _signals_document(
                input={
                    "kind": "signals",
                    "rate": 64,
                    "channels": channels,
                    "window": 128,
                    "hop": 128,
                }
            )
        )
    )
    assert apart.startswith("one window (128 samples)")
    assert "overlap" not in apart
    assert privacy_unit(parse_study(_document())).startswith("one record (row)")


def test_a_study_of_k_classes_on_signals_or_images_round_trips() -> None:
    signals = parse_study(_signals_document())
    assert signals.classes == ("walk", "stand", "freeze")
    assert signals.model_spec.classes == 3
    assert parse_study(signals.to_document()).study_hash == signals.study_hash
    images = parse_study(
        _document(
            model={"family": "cnn2d", "input_shape": [1, 8, 8], "classes": 10, "kernel": 3},
            features=["grey"],
            scaling=[[0.3, 0.4]],
            classes=[str(i) for i in range(10)],
            input={"kind": "images", "height": 8, "width": 8, "intensity_max": 16},
        )
    )
    assert images.input is not None
    assert images.input.kind == "images"
    assert parse_study(images.to_document()) == images


def test_binary_studies_leave_classes_and_input_out_of_the_document() -> None:
    document = parse_study(_document(classes=["0", "1"], input=None)).to_document()
    assert "classes" not in document
    assert "input" not in document
    assert parse_study(_document(classes=["0", "1"])).study_hash == HASH_WITHOUT_CENTRAL_DP


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"classes": ["walk", "stand"]}, "3 classes but the study names 2"),
        ({"classes": ["walk", "walk", "freeze"]}, "distinct"),
        ({"features": ["a", "b", "c"]}, "input's channels"),
        ({"input": None}, "needs an input"),
        (
            {
                "input": {
                    "kind": "signals",
                    "rate": 64,
                    "channels": ["ankle_x", "ankle_y", "trunk_z"],
                    "window": 64,
                    "hop": 64,
                }
            },
            "input_shape",
        ),
        ({"input": {"kind": "images", "height": 8, "width": 8, "intensity_max": 1}}, "cnn2d"),
    ],
)
def test_inconsistent_signal_studies_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_study(_signals_document(**changes))
