"""An analysis study end to end with real processes on 127.0.0.1.

One SuperLink (TLS, SuperNode authentication) and three site agents (SuperNode + warm
worker) answer an analysis study over Flower query messages; the coordinator combines the
noisy answers and records ``analysis.answered`` with every site's signed receipt, which an
auditor re-checks offline (signatures in ``ledger verify``, epsilon with dp-accounting).
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

from tests.conftest import NETWORK_SITES, Network
from veracity.analytics.combine import read_figures
from veracity.analytics.mechanism import exact_release
from veracity.client.analysis import approve_analysis
from veracity.client.datasets import read_table
from veracity.client.site import Site
from veracity.contracts.analysis import AnalysisStudy
from veracity.localnet import DATASET_ID, wait_run
from veracity.server.coordinator import CoordinatorService, operator
from veracity.server.fab import build_fab
from veracity.supervise import wait_for
from veracity.tasks.breast_cancer import FEATURES, LABEL

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITES = NETWORK_SITES
ADMIN = operator("admin")


def _study(cap: float, *, delta: float = 1e-5) -> AnalysisStudy:
    return AnalysisStudy.parse(
        {
            "kind": "analysis",
            "study_id": f"bc-analysis-{cap:g}",
            "columns": {
                "mean_radius": {"lower": 5.0, "upper": 30.0},
                "mean_texture": {"lower": 5.0, "upper": 40.0},
                LABEL: {"lower": 0.0, "upper": 1.0},
            },
            "queries": [
                {"query_id": "malignant", "kind": "count", "epsilon": 0.5,
                 "cohort": [{"column": LABEL, "op": "==", "value": 1.0}]},
                {"query_id": "mean-radius", "kind": "mean", "column": "mean_radius",
                 "epsilon": 0.5},
                {"query_id": "texture", "kind": "histogram", "column": "mean_texture",
                 "bins": [5.0, 15.0, 20.0, 25.0, 40.0], "epsilon": 0.5},
            ],
            "delta": delta,
            "epsilon_caps": dict.fromkeys(SITES, cap),
            "min_sites": 2,
            "code_hash": build_fab().fab_hash,
        }
    )  # fmt: skip


def _run(network: Network, study: AnalysisStudy, *, propose: bool = True) -> str:
    coordinator = network.coordinator
    if propose:
        coordinator.propose_study(ADMIN, study.to_document())
        for name, local in network.sites.items():
            with Site.open(local.directory) as site:
                _decision, statement = approve_analysis(
                    site, study, dataset_id=DATASET_ID, epsilon_cap=study.epsilon_caps[name]
                )
            coordinator.record_statement(
                ADMIN, statement.kind, name, statement.payload, statement.signature
            )
    run = coordinator.start_run(ADMIN, study.study_hash, poll_interval=0.1, node_wait=60).value
    summary = wait_run(coordinator, run.run_id, timeout=300)
    assert summary.state == "finished:completed", summary.details
    return run.run_id


def _answered(coordinator: CoordinatorService, study: AnalysisStudy) -> list[dict[str, Any]]:
    return [
        entry.payload
        for entry in coordinator.ledger.iter_entries(kind="analysis.answered")
        if entry.payload["study_hash"] == study.study_hash
    ]


def _pld(history: list[list[float]], delta: float) -> float:
    accountant = PLDAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    accountant.compose(
        dp_event.ComposedDpEvent(
            [
                dp_event.SelfComposedDpEvent(
                    dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), int(n)
                )
                for z, q, n in history
            ]
        )
    )
    return float(accountant.get_epsilon(delta))


def _pooled(network: Network) -> dict[str, np.ndarray]:
    columns: dict[str, list[np.ndarray]] = {}
    for local in network.sites.values():
        table, _ = read_table(local.data_file, label=LABEL, features=list(FEATURES))
        for index, name in enumerate(table.features):
            columns.setdefault(name, []).append(table.x[:, index])
        columns.setdefault(LABEL, []).append(table.y.astype(np.float64))
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def test_an_analysis_study_is_answered_combined_and_recorded_with_verified_receipts(
    network: Network,
) -> None:
    study = _study(3.0)

    _run(network, study)

    answered = {payload["query_id"]: payload for payload in _answered(network.coordinator, study)}
    assert set(answered) == {"malignant", "mean-radius", "texture"}
    pooled = _pooled(network)
    for query in study.queries:
        payload = answered[query.query_id]
        exact = exact_release(study, query, pooled).values
        truth = read_figures(study, query, exact, np.zeros(len(exact))).value
        answer = payload["answer"]
        assert sorted(answer["sites"]) == list(SITES)
        for k, value in enumerate(truth):  # 5 standard errors: a sanity bound for one draw
            assert abs(answer["value"][k] - value) <= 5 * answer["se"][k] + 1e-9
        for signed in payload["receipts"]:
            receipt = signed["receipt"]
            assert abs(_pld(receipt["history"], receipt["delta"]) - receipt["epsilon"]) <= 0.02
    network.coordinator.ledger.verify(network.coordinator.ledger.identity_public_key)


def test_asking_the_same_analysis_again_returns_stored_answers_at_no_cost(
    network: Network,
) -> None:
    study = _study(3.0)
    first = {p["query_id"]: p for p in _answered(network.coordinator, study)}

    _run(network, study, propose=False)

    again = [
        p for p in _answered(network.coordinator, study) if p["receipts"][0]["receipt"]["repeated"]
    ]
    assert {p["query_id"] for p in again} == set(first)
    for payload in again:
        before = first[payload["query_id"]]
        assert payload["answer"]["value"] == pytest.approx(before["answer"]["value"], rel=1e-12)
        epsilons = {s["receipt"]["site"]: s["receipt"]["epsilon"] for s in payload["receipts"]}
        assert all(
            epsilons[s["receipt"]["site"]] >= s["receipt"]["epsilon"] for s in before["receipts"]
        )


def test_a_query_over_the_cap_is_refused_and_the_refusal_is_recorded(network: Network) -> None:
    # Room for one 0.5 query, not three; another delta, so no stored answer applies.
    study = _study(0.6, delta=1e-6)

    run_id = _run(network, study)

    answered = _answered(network.coordinator, study)
    refusals = [
        entry
        for entry in network.coordinator.ledger.iter_entries(kind="budget.refused")
        if entry.payload["study_hash"] == study.study_hash
    ]
    assert [payload["query_id"] for payload in answered] == ["malignant"]
    assert {entry.actor for entry in refusals} == set(SITES)
    assert network.coordinator.reads.run(run_id).finished is not None


def test_each_run_has_its_own_serverapp_process_that_ends_with_it(network: Network) -> None:
    # The coordinator's executor forks a process per run from a warm interpreter; runs
    # must stay as isolated as with Flower's own executor (a fresh process each, none left).
    log = network.coordinator.home.logs / "serverapp-executor.log"
    started = re.compile(r"run task started in process (\d+)")

    first = _run(network, _study(3.0, delta=1e-7))
    _run(network, _study(3.0, delta=1e-8))

    # The run's answers are one change of the ledger, signed by one checkpoint.
    entries = [
        e
        for e in network.coordinator.ledger.iter_entries()
        if e.payload.get("run_id") == first or e.kind == "checkpoint"
    ]
    answered = [e.seq for e in entries if e.kind == "analysis.answered"]
    assert answered == list(range(answered[0], answered[0] + 3))
    assert entries[[e.seq for e in entries].index(answered[-1]) + 1].kind == "checkpoint"

    pids = [int(pid) for pid in started.findall(log.read_text(encoding="utf-8"))]
    assert len(pids) >= 2
    assert len(set(pids)) == len(pids)

    def ended(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(lambda: all(ended(pid) for pid in pids), timeout=30, what="the runs' processes")
