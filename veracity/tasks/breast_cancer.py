"""The Wisconsin breast-cancer data as a federation of hospitals, for tests, benchmarks and demos.

scikit-learn ships the data (569 patients, 30 real-valued features). Here:

* feature names are scikit-learn's with spaces replaced by underscores (``mean_radius``),
  and they are the CSV column names;
* the label column is ``diagnosis``, with **1 = malignant** and 0 = benign (scikit-learn's
  ``target`` codes malignant as 0; we code the clinical finding as the positive class);
* :func:`federated_split` holds out a stratified test set, then deals the training rows to
  ``n_sites`` hospitals with a deterministic label skew: rows are sorted by
  ``benign + N(0, skew)`` and cut into equal parts, so the first site is malignant-heavy and
  the last one nearly all benign (with the defaults: about 78 %, 28 % and 5 % malignant).
  The default skew (0.6) is the sharpest that still leaves every site at least five
  patients of each class for seeds 0-19: a site with a single class is refused at
  registration. (The DP field notes used 0.35, which leaves the last site benign-only.);
* :data:`PUBLIC_SCALING` is the study's public standardisation, one ``(mean, std)`` per
  feature, fixed here as constants (the statistics of the whole public data set, to six
  significant digits) so that no site's private data shapes the study document.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from veracity.errors import InputError
from veracity.tasks import scaling
from veracity.tasks.spec import ModelFamily, ModelSpec
from veracity.tasks.study import Study, parse_study

__all__ = [
    "LABEL",
    "FEATURES",
    "PUBLIC_SCALING",
    "Partition",
    "FederatedSplit",
    "load_breast_cancer",
    "federated_split",
    "standardise",
    "write_csv",
    "breast_cancer_study",
]

LABEL = "diagnosis"

# (feature, mean, std) over all 569 rows of the public data set, six significant digits.
_PUBLIC_STATISTICS: tuple[tuple[str, float, float], ...] = (
    ("mean_radius", 14.1273, 3.52095),
    ("mean_texture", 19.2896, 4.29725),
    ("mean_perimeter", 91.969, 24.2776),
    ("mean_area", 654.889, 351.605),
    ("mean_smoothness", 0.0963603, 0.0140518),
    ("mean_compactness", 0.104341, 0.0527663),
    ("mean_concavity", 0.0887993, 0.0796497),
    ("mean_concave_points", 0.0489191, 0.0387687),
    ("mean_symmetry", 0.181162, 0.0273902),
    ("mean_fractal_dimension", 0.0627976, 0.00705416),
    ("radius_error", 0.405172, 0.277069),
    ("texture_error", 1.21685, 0.551163),
    ("perimeter_error", 2.86606, 2.02008),
    ("area_error", 40.3371, 45.451),
    ("smoothness_error", 0.00704098, 0.00299988),
    ("compactness_error", 0.0254781, 0.0178924),
    ("concavity_error", 0.0318937, 0.0301595),
    ("concave_points_error", 0.0117961, 0.00616486),
    ("symmetry_error", 0.0205423, 0.0082591),
    ("fractal_dimension_error", 0.0037949, 0.00264374),
    ("worst_radius", 16.2692, 4.82899),
    ("worst_texture", 25.6772, 6.14085),
    ("worst_perimeter", 107.261, 33.573),
    ("worst_area", 880.583, 568.856),
    ("worst_smoothness", 0.132369, 0.0228124),
    ("worst_compactness", 0.254265, 0.157198),
    ("worst_concavity", 0.272188, 0.208441),
    ("worst_concave_points", 0.114606, 0.0656746),
    ("worst_symmetry", 0.290076, 0.0618131),
    ("worst_fractal_dimension", 0.0839458, 0.0180454),
)

#: The 30 feature columns, in scikit-learn's order.
FEATURES: tuple[str, ...] = tuple(name for name, _, _ in _PUBLIC_STATISTICS)

#: Public standardisation for a study's ``scaling``: ``(mean, std)`` per feature.
PUBLIC_SCALING: tuple[tuple[float, float], ...] = tuple(
    (mean, std) for _, mean, std in _PUBLIC_STATISTICS
)


@dataclass(frozen=True)
class Partition:
    """Some patients: raw (unscaled) features in :data:`FEATURES` order and 0/1 diagnoses."""

    features: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]

    @property
    def rows(self) -> int:
        """Number of patients."""
        return int(self.labels.shape[0])

    @property
    def malignant_fraction(self) -> float:
        """Share of malignant diagnoses."""
        return float(self.labels.mean()) if self.rows else 0.0


@dataclass(frozen=True)
class FederatedSplit:
    """Training partitions, one per site, and a held-out test set."""

    sites: tuple[Partition, ...]
    test: Partition


def load_breast_cancer() -> Partition:
    """All 569 patients, with ``diagnosis`` 1 = malignant."""
    from sklearn import datasets

    bunch = datasets.load_breast_cancer()
    features = np.asarray(bunch.data, dtype=np.float64)
    malignant = (np.asarray(bunch.target) == 0).astype(np.int64)
    return Partition(features=features, labels=malignant)


def federated_split(
    n_sites: int = 3, *, seed: int = 0, test_fraction: float = 0.2, skew: float = 0.6
) -> FederatedSplit:
    """Deal the patients to ``n_sites`` hospitals with a label skew, holding out a test set.

    The same arguments always give the same split.

    Parameters
    ----------
    n_sites
        Number of hospitals.
    seed
        Seeds the stratified test split and the skew noise.
    test_fraction
        Share of patients held out (stratified by diagnosis).
    skew
        Standard deviation of the noise added to the benign indicator before sorting:
        small values give sharply separated sites, large ones approach an IID split.

    Raises
    ------
    InputError
        If the arguments leave a site or the test set empty.
    """
    from sklearn.model_selection import train_test_split

    if n_sites < 1:
        raise InputError("a federation needs at least one site")
    if not 0.0 < test_fraction < 1.0:
        raise InputError("test_fraction must lie strictly between 0 and 1")
    if skew < 0:
        raise InputError("skew must be non-negative")
    everyone = load_breast_cancer()
    benign = 1 - everyone.labels
    train_x, test_x, train_y, test_y = train_test_split(
        everyone.features,
        everyone.labels,
        test_size=test_fraction,
        stratify=benign,
        random_state=seed,
    )
    if len(train_y) < n_sites:
        raise InputError(f"{len(train_y)} training rows cannot fill {n_sites} sites")
    rng = np.random.default_rng(seed)
    order = np.argsort((1 - train_y) + rng.normal(0.0, skew, size=len(train_y)), kind="stable")
    sites = tuple(
        Partition(features=np.asarray(train_x[part]), labels=np.asarray(train_y[part]))
        for part in np.array_split(order, n_sites)
    )
    return FederatedSplit(
        sites=sites, test=Partition(features=np.asarray(test_x), labels=np.asarray(test_y))
    )


def standardise(features: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Apply :data:`PUBLIC_SCALING` to raw features of shape ``(n, 30)``.

    Raises
    ------
    InputError
        If the array does not have 30 columns.
    """
    return scaling.standardise(features, PUBLIC_SCALING)


def write_csv(partition: Partition, path: Path) -> Path:
    """Write ``partition`` as a comma-separated file: the features, then ``diagnosis``.

    Values are written with ``repr`` so they read back bit-exactly. Returns ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, LABEL])
        for row, label in zip(partition.features, partition.labels, strict=True):
            writer.writerow([*(repr(float(value)) for value in row), int(label)])
    return path


def breast_cancer_study(
    *,
    study_id: str,
    epsilon_caps: dict[str, float],
    noise_multiplier: float,
    code_hash: str,
    family: ModelFamily = ModelFamily.LOGISTIC,
    hidden: int = 16,
    max_grad_norm: float = 1.0,
    delta: float = 1e-5,
    batch_size: int = 32,
    local_epochs: int = 1,
    learning_rate: float = 0.5,
    rounds: int = 20,
    runs: int = 1,
    min_sites: int | None = None,
    model_seed: int = 0,
    secure_mode: bool = False,
) -> Study:
    """A study of the breast-cancer task over all 30 features, scaled by :data:`PUBLIC_SCALING`.

    Raises
    ------
    InputError
        If any term is invalid (see :class:`veracity.tasks.study.Study`).
    """
    if family is ModelFamily.LOGISTIC:
        spec = ModelSpec(family, len(FEATURES))
    else:
        spec = ModelSpec(family, len(FEATURES), hidden=hidden)
    return parse_study(
        {
            "study_id": study_id,
            "title": f"Breast cancer ({family.value})",
            "model": spec.to_dict(),
            "features": list(FEATURES),
            "label": LABEL,
            "scaling": [list(pair) for pair in PUBLIC_SCALING],
            "dp": {
                "noise_multiplier": noise_multiplier,
                "max_grad_norm": max_grad_norm,
                "delta": delta,
                "secure_mode": secure_mode,
            },
            "training": {
                "batch_size": batch_size,
                "local_epochs": local_epochs,
                "learning_rate": learning_rate,
            },
            "rounds": rounds,
            "runs": runs,
            "min_sites": len(epsilon_caps) if min_sites is None else min_sites,
            "epsilon_caps": dict(epsilon_caps),
            "code_hash": code_hash,
            "model_seed": model_seed,
        }
    )
