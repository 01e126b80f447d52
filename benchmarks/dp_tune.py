"""Choose DP FedAvg training terms on a validation split (never on the test set).

For each seed: hold out the same stratified test set as ``dp_bench.py`` (and never look
at it), carve a stratified validation set from the remaining training rows, deal the rest
to three label-skewed sites, then run DP FedAvg with the site trainer and non-private
FedAvg with the same terms, and score both on the validation set. Prints, per candidate
``batch,learning_rate,clip,rounds``, the mean validation accuracy and the gap to
non-private (paired by seed, with its standard error). The noise multiplier is calibrated
with PRV for each candidate's total steps.

    python benchmarks/dp_tune.py logistic 1 --seeds 40 --terms 32,0.5,1.0,20 200,1.0,1.0,20
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import statistics

import numpy as np

# See dp_bench.py: Opacus shadows the `benchmarks` package name, so import by file name.
from dp_bench import NonPrivate, _average, _calibrate, _evaluate
from sklearn.model_selection import train_test_split

from veracity.client.budget import poisson_sampling
from veracity.client.training import PrivateTrainer, configure_threads
from veracity.tasks import breast_cancer
from veracity.tasks.spec import ModelFamily, ModelSpec
from veracity.tasks.torch_models import build_model, model_weights


def _seed(*parts: object) -> int:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _validation_split(
    seed: int,
) -> tuple[list[breast_cancer.Partition], breast_cancer.Partition]:
    everyone = breast_cancer.load_breast_cancer()
    train_x, _, train_y, _ = train_test_split(
        everyone.features,
        everyone.labels,
        test_size=0.2,
        stratify=1 - everyone.labels,
        random_state=seed,
    )
    fit_x, val_x, fit_y, val_y = train_test_split(
        train_x, train_y, test_size=0.2, stratify=1 - train_y, random_state=seed + 1000
    )
    rng = np.random.default_rng(seed)
    order = np.argsort((1 - fit_y) + rng.normal(0.0, 0.6, len(fit_y)), kind="stable")
    sites = [breast_cancer.Partition(fit_x[p], fit_y[p]) for p in np.array_split(order, 3)]
    return sites, breast_cancer.Partition(val_x, val_y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family", choices=["logistic", "poly_mlp"])
    parser.add_argument("epsilon", type=float)
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--terms", nargs="+", required=True, help="batch,lr,clip,rounds ...")
    args = parser.parse_args()
    configure_threads(1)
    spec = ModelSpec(ModelFamily(args.family), 30, hidden=16)
    calibrate = functools.lru_cache(maxsize=None)(
        lambda rate, steps: _calibrate(args.epsilon, rate, steps)
    )
    for text in args.terms:
        batch_text, lr_text, clip_text, rounds_text = text.split(",")
        batch, rounds = int(batch_text), int(rounds_text)
        lr, clip = float(lr_text), float(clip_text)
        accuracies, gaps = [], []
        for seed in range(args.seeds):
            sites, validation = _validation_split(seed)
            xs = [breast_cancer.standardise(p.features).astype(np.float32) for p in sites]
            sampling = poisson_sampling(max(p.rows for p in sites), batch)
            sigma = calibrate(sampling.sample_rate, rounds * sampling.steps_per_epoch)
            private = [
                PrivateTrainer(
                    spec, x, p.labels, noise_multiplier=sigma, max_grad_norm=clip,
                    batch_size=batch, learning_rate=lr, seed=_seed(seed, i, text),
                )
                for i, (x, p) in enumerate(zip(xs, sites, strict=True))
            ]  # fmt: skip
            public = [
                NonPrivate(spec, x, p.labels, lr=lr, batch=batch, seed=_seed("np", seed, i))
                for i, (x, p) in enumerate(zip(xs, sites, strict=True))
            ]
            dp_weights = np_weights = model_weights(build_model(spec, seed=seed))
            for _ in range(rounds):
                dp_weights = _average(
                    [
                        (t.train_round(copy.deepcopy(dp_weights), epochs=1).weights, p.rows)
                        for t, p in zip(private, sites, strict=True)
                    ]
                )
                np_weights = _average(
                    [
                        (t.train_round(copy.deepcopy(np_weights), epochs=1), p.rows)
                        for t, p in zip(public, sites, strict=True)
                    ]
                )
            accuracy = _evaluate(spec, dp_weights, validation)[0]
            accuracies.append(accuracy)
            gaps.append(_evaluate(spec, np_weights, validation)[0] - accuracy)
        error = statistics.stdev(gaps) / len(gaps) ** 0.5
        print(
            f"{args.family} eps {args.epsilon:g} terms {text}: validation accuracy "
            f"{statistics.mean(accuracies):.4f}, gap {statistics.mean(gaps):+.4f} +- {error:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
