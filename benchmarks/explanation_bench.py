"""What an explanation costs a site: time per 1,000 records and epsilon spent.

Site path (tabular): one site holding 1,000 breast-cancer records (the 569 of scikit-learn's
set resampled with replacement), a logistic study approved on them; each repetition asks
the site's :class:`~veracity.client.explanation.ExplanationAgent` for an explanation with
fresh terms (so it is computed and charged anew): the approval check and file re-hash,
Captum's integrated gradients per record (``--steps`` points), clipping, the sum, the
noise, the budget check and charge, the stored answer and the signed receipt. Baseline:
one plain forward pass of the same model over the same records, in the same run.

Attribution kernel (signals and images): Captum's integrated gradients over 1,000 random
inputs of a ``cnn1d`` (3 channels x 64 steps) and a ``cnn2d`` (1 x 8 x 8) model, against
one forward pass of the same model over the same inputs.

    python benchmarks/explanation_bench.py --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import Figure, Report

from veracity.client.approvals import approve_study
from veracity.client.attributions import forward_pass, integrated_gradients
from veracity.client.datasets import check_registered, load_registered, register_dataset
from veracity.client.explanation import ExplanationAgent, ExplanationAnswer, ExplanationRequest
from veracity.client.site import Site, init_site
from veracity.client.study_inputs import study_examples
from veracity.tasks import breast_cancer
from veracity.tasks.spec import ModelFamily, ModelSpec
from veracity.tasks.study import Study
from veracity.tasks.torch_models import build_model, model_weights
from veracity.tasks.weights import weights_hash

RECORDS = 1_000


def _site(root: Path) -> tuple[Site, Study]:
    split = breast_cancer.federated_split(1, seed=0)
    part = split.sites[0]
    rng = np.random.default_rng(0)
    pick = rng.integers(0, part.rows, RECORDS)
    resampled = breast_cancer.Partition(features=part.features[pick], labels=part.labels[pick])
    csv = breast_cancer.write_csv(resampled, root / "records.csv")
    init_site(root / "site", "hospital-a", default_epsilon_budget=1e3)
    site = Site.open(root / "site")
    register_dataset(site, dataset_id="bc", path=csv, label=breast_cancer.LABEL)
    study = breast_cancer.breast_cancer_study(
        study_id="explain-bench",
        epsilon_caps={"hospital-a": 1e3},
        noise_multiplier=1.0,
        code_hash="c0de" * 16,
        rounds=1,
    )
    approve_study(site, study, dataset_id="bc", epsilon_cap=1e3)
    return site, study


def _kernel(spec: ModelSpec, steps: int, runs: int) -> tuple[float, float]:
    weights = model_weights(build_model(spec, seed=1))
    x = np.random.default_rng(1).normal(size=(RECORDS, spec.n_features)).astype(np.float32)
    y = np.zeros(RECORDS, dtype=np.int64)
    forward_pass(spec, weights, x)  # warm
    ig, fw = [], []
    for _ in range(runs):
        start = time.perf_counter()
        integrated_gradients(spec, weights, x, y, steps=steps)
        ig.append(time.perf_counter() - start)
        start = time.perf_counter()
        forward_pass(spec, weights, x)
        fw.append(time.perf_counter() - start)
    return statistics.median(ig), statistics.median(fw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = Report(f"explanation_bench: {RECORDS} records per site, {args.steps} IG steps")
    with tempfile.TemporaryDirectory() as tmp:
        site, study = _site(Path(tmp))
        try:
            dataset = site.store.get_dataset("bc")
            assert dataset is not None
            x, _ = study_examples(study, load_registered(dataset, check_registered(dataset)))
            weights = model_weights(build_model(study.model_spec, seed=1))
            agent = ExplanationAgent(site)
            handled, forward, spent = [], [], []
            forward_pass(study.model_spec, weights, x)  # warm
            for rep in range(args.runs + 1):
                terms = {
                    "model_hash": weights_hash(weights), "study_hash": study.study_hash,
                    "steps": args.steps, "clip_norm": 1.0, "epsilon": 0.5 + rep * 1e-4,
                    "delta": 1e-5,
                }  # fmt: skip
                request = ExplanationRequest(
                    terms=terms, study=study.to_document(), code_hash=study.code_hash,
                    weights=weights,
                )  # fmt: skip
                start = time.perf_counter()
                outcome = agent.handle(request)
                took = time.perf_counter() - start
                assert isinstance(outcome, ExplanationAnswer), outcome
                start = time.perf_counter()
                forward_pass(study.model_spec, weights, x)
                plain = time.perf_counter() - start
                if rep:  # the first is the warm-up
                    handled.append(took)
                    forward.append(plain)
                    spent.append(outcome.receipt.epsilon_query)
        finally:
            site.close()
    scale = 1000 / RECORDS
    report.add(
        Figure(
            "site explanation, logistic (30 features), whole site path, per 1,000 records",
            statistics.median(handled) * scale * 1000,
            "ms",
            baseline=statistics.median(forward) * scale * 1000,
            baseline_name="one plain forward pass over the same records",
            higher_is_better=False,
        )
    )
    report.add(
        Figure("epsilon spent per explanation (declared 0.5)", statistics.fmean(spent), "eps")
    )
    for name, spec in (
        ("cnn1d 3 x 64", ModelSpec(ModelFamily.CNN1D, n_features=192, input_shape=(3, 64))),
        ("cnn2d 1 x 8 x 8", ModelSpec(ModelFamily.CNN2D, n_features=64, input_shape=(1, 8, 8))),
    ):
        ig, fw = _kernel(spec, args.steps, args.runs)
        report.add(
            Figure(
                f"integrated gradients, {name}, per 1,000 records",
                ig * scale * 1000,
                "ms",
                baseline=fw * scale * 1000,
                baseline_name="one plain forward pass over the same inputs",
                higher_is_better=False,
            )
        )
    report.notes.append(
        "a site pays the explanation's epsilon once per distinct terms; asking again with "
        "the same terms returns the stored answer at no cost"
    )
    report.print()
    if args.json:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
