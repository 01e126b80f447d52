"""The coordinator cannot learn whether a record exists from anything but DP-noised updates.

The attack of the privacy review (C1): the coordinator sends large but finite global
weights that make one targeted outlier record's activations overflow in float32, so that
clipping turned ``0 * inf`` into NaN exactly when that record was sampled, and the whole
released update became NaN (noise cannot mask a NaN). Every test here goes through the
real site service (``SiteAgent.handle_train``, real Opacus, the site store).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.client.support import CODE_HASH, SITE, TickingClock, request_for
from veracity.client.approvals import approve_study
from veracity.client.datasets import register_dataset
from veracity.client.service import Refusal, SiteAgent, TrainReply
from veracity.client.site import Site, init_site
from veracity.crypto.keys import load_verify_key
from veracity.ledger.statement import verify_statement
from veracity.tasks.study import Study, parse_study

FEATURES = ("f0", "f1", "f2")
#: Far enough from 1e2 (the largest bound a test here declares) to be an attack weight.
ATTACK_WEIGHT = {"linear-ghost": 2e9, "opacus-hooks": 1e19}


#: The review's target: an outlier, but an ordinary-looking one (f0 = 8 against |x| < 1.5).
TARGET = [8.0, 0.25, -0.5, 1]


def _rows(target: list[float] | None, seed: int = 3) -> list[list[float]]:
    """60 ordinary patients with |x| < 1.5 and, optionally, the target record."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.5, 1.5, size=(60, 3))
    y = (x[:, 1] + 0.5 * rng.normal(size=60) > 0).astype(int)
    rows = [[*map(float, features), int(label)] for features, label in zip(x, y, strict=True)]
    if target is not None:
        rows.append(list(target))
    return rows


def _write_csv(path: Path, rows: list[list[float]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "y"])
        writer.writerows(rows)
    return path


def _study(**changes: Any) -> Study:
    document: dict[str, Any] = {
        "study_id": "side-channel",
        "model": {"family": "poly_mlp", "n_features": 3, "hidden": 4},
        "features": list(FEATURES),
        "label": "y",
        "scaling": [[0.0, 1.0]] * 3,
        "dp": {"noise_multiplier": 5.0, "max_grad_norm": 1.0, "delta": 1e-5},
        "training": {"batch_size": 10, "local_epochs": 1, "learning_rate": 0.1},
        "rounds": 10,
        "min_sites": 1,
        "epsilon_caps": {SITE: 50.0},
        "code_hash": CODE_HASH,
    }
    document.update(changes)
    return parse_study(document)


def _attack_weights(study: Study, weight: float) -> dict[str, np.ndarray]:
    """All zero but ``fc1.weight[0, 0]`` (the target's feature) and ``fc2.weight[0, 0]``."""
    weights = {
        "fc1.weight": np.zeros((4, 3), np.float32),
        "fc1.bias": np.zeros(4, np.float32),
        "fc2.weight": np.zeros((1, 4), np.float32),
        "fc2.bias": np.zeros(1, np.float32),
    }
    weights["fc1.weight"][0, 0] = weight
    weights["fc2.weight"][0, 0] = 1.0
    return weights


def _rounds_where_not(flags: list[bool]) -> list[int]:
    return [number for number, flag in enumerate(flags, start=1) if not flag]


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[Callable[..., SiteAgent]]:
    """A site with clipping ``clipping`` whose dataset holds ``target`` (or not, for None)."""
    agents: list[SiteAgent] = []

    def make(
        clipping: str, target: list[float] | None = TARGET, study: Study | None = None
    ) -> SiteAgent:
        root = tmp_path / f"site-{clipping}"
        clock = TickingClock()
        init_site(root, SITE, clock=clock)
        config = json.loads((root / "site.json").read_text())
        (root / "site.json").write_text(json.dumps({**config, "clipping": clipping}))
        data = _write_csv(root.parent / f"data-{clipping}.csv", _rows(target))
        with Site.open(root, clock=clock) as site:
            register_dataset(site, dataset_id="cohort", path=data, label="y")
            approve_study(site, study or _study(), dataset_id="cohort", epsilon_cap=50.0)
        agent = SiteAgent.open(root, clock=clock, seed=11)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.close()


@pytest.mark.slow
@pytest.mark.parametrize("clipping", ["linear-ghost", "opacus-hooks"])
def test_crafted_weights_and_an_outlier_give_a_finite_update_every_round(
    clipping: str, make_site: Callable[..., SiteAgent]
) -> None:
    # The study declares a weight bound large enough to let the attack weights through,
    # so that what is tested is the clipping itself.
    study = _study(max_weight_norm=1e20)
    agent = make_site(clipping, TARGET, study)
    weights = _attack_weights(study, ATTACK_WEIGHT[clipping])

    finite = []
    for number in range(1, study.rounds + 1):
        outcome = agent.handle_train(request_for(study, round=number, weights=weights))
        assert isinstance(outcome, TrainReply), getattr(outcome, "reason", outcome)
        finite.append(all(np.all(np.isfinite(w)) for w in outcome.weights.values()))

    # Before the fix, the update was NaN in every round in which the target was sampled.
    assert all(finite), f"non-finite update in rounds {_rounds_where_not(finite)}"


def test_weights_beyond_the_study_bound_are_refused_with_a_signed_statement(
    make_site: Callable[..., SiteAgent],
) -> None:
    study = _study()  # the default bound, max_weight_norm 1000
    agent = make_site("linear-ghost", TARGET, study)

    outcome = agent.handle_train(
        request_for(study, round=1, weights=_attack_weights(study, ATTACK_WEIGHT["linear-ghost"]))
    )

    assert isinstance(outcome, Refusal)
    assert outcome.kind == "approval.missing"
    assert "max_weight_norm 1000" in outcome.reason
    public_key = load_verify_key(agent.site.paths.public_key)
    verify_statement(
        public_key, outcome.kind, SITE, outcome.payload, outcome.signature, log_id=agent.site.log_id
    )
    assert agent.site.store.list_spends() == []  # nothing trained, nothing spent


def test_weights_within_the_bound_train(make_site: Callable[..., SiteAgent]) -> None:
    study = _study()
    agent = make_site("linear-ghost", TARGET, study)

    outcome = agent.handle_train(request_for(study, round=1, weights=_attack_weights(study, 900.0)))

    assert isinstance(outcome, TrainReply)
    assert all(np.all(np.isfinite(w)) for w in outcome.weights.values())


@pytest.mark.parametrize("clipping", ["linear-ghost", "opacus-hooks"])
def test_an_extreme_record_gives_a_finite_update_from_ordinary_weights(
    clipping: str, make_site: Callable[..., SiteAgent]
) -> None:
    # No attack: ordinary weights (all 0.1) and one record far out (f0 = 1e20, a legal
    # finite value). Its logit saturates, so its output gradient is exactly 0 while its
    # squared input norm overflows float32: 0 * inf made the round NaN whenever sampled.
    study = _study(model={"family": "logistic", "n_features": 3}, rounds=6)
    agent = make_site(clipping, [1e20, 0.0, 0.0, 1], study)
    weights = {
        "linear.weight": np.full((1, 3), 0.1, np.float32),
        "linear.bias": np.zeros(1, np.float32),
    }

    finite = []
    for number in range(1, study.rounds + 1):
        outcome = agent.handle_train(request_for(study, round=number, weights=weights))
        assert isinstance(outcome, TrainReply), getattr(outcome, "reason", outcome)
        finite.append(all(np.all(np.isfinite(w)) for w in outcome.weights.values()))

    assert all(finite), f"non-finite update in rounds {_rounds_where_not(finite)}"
