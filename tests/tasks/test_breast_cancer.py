"""The breast-cancer federation: a deterministic label-skewed split and public scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veracity.client.datasets import read_table
from veracity.errors import InputError
from veracity.tasks import breast_cancer
from veracity.tasks.spec import ModelFamily


def test_diagnosis_one_means_malignant() -> None:
    everyone = breast_cancer.load_breast_cancer()
    assert everyone.rows == 569
    assert int(everyone.labels.sum()) == 212  # scikit-learn: 212 malignant, 357 benign


def test_split_is_deterministic_label_skewed_and_holds_out_a_stratified_test_set() -> None:
    split = breast_cancer.federated_split(3, seed=0)
    again = breast_cancer.federated_split(3, seed=0)
    other = breast_cancer.federated_split(3, seed=1)
    assert [site.rows for site in split.sites] == [152, 152, 151]
    assert split.test.rows == 114
    for a, b in zip(split.sites, again.sites, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(split.sites[0].features, other.sites[0].features)
    fractions = [site.malignant_fraction for site in split.sites]
    assert fractions[0] > 0.7
    assert fractions[2] < 0.1
    assert fractions == sorted(fractions, reverse=True)
    assert split.test.malignant_fraction == pytest.approx(212 / 569, abs=0.01)
    everything = np.vstack([*(s.features for s in split.sites), split.test.features])
    assert len({row.tobytes() for row in everything}) == 569  # every patient exactly once


def test_public_scaling_is_the_whole_public_data_sets_statistics() -> None:
    everyone = breast_cancer.load_breast_cancer()
    means, stds = everyone.features.mean(0), everyone.features.std(0)
    for (mean, std), true_mean, true_std in zip(
        breast_cancer.PUBLIC_SCALING, means, stds, strict=True
    ):
        assert mean == pytest.approx(true_mean, rel=1e-5)
        assert std == pytest.approx(true_std, rel=1e-5)
    scaled = breast_cancer.standardise(everyone.features)
    np.testing.assert_allclose(scaled.mean(0), 0, atol=1e-4)


def test_csv_reads_back_bit_exactly(tmp_path: Path) -> None:
    site = breast_cancer.federated_split(3, seed=0).sites[1]
    path = breast_cancer.write_csv(site, tmp_path / "site1.csv")
    table, _ = read_table(path, label=breast_cancer.LABEL)
    assert table.features == breast_cancer.FEATURES
    np.testing.assert_array_equal(table.x, site.features)
    np.testing.assert_array_equal(table.y, site.labels)


def test_study_builder_covers_both_model_families() -> None:
    caps = {"a": 3.0, "b": 3.0}
    logistic = breast_cancer.breast_cancer_study(
        study_id="bc", epsilon_caps=caps, noise_multiplier=3.0, code_hash="0" * 64
    )
    poly = breast_cancer.breast_cancer_study(
        study_id="bc", epsilon_caps=caps, noise_multiplier=3.0, code_hash="0" * 64,
        family=ModelFamily.POLY_MLP, hidden=8,
    )  # fmt: skip
    assert logistic.model_spec.n_features == poly.model_spec.n_features == 30
    assert poly.model_spec.hidden == 8
    assert logistic.min_sites == 2
    assert logistic.study_hash != poly.study_hash


@pytest.mark.parametrize("arguments", [{"n_sites": 0}, {"test_fraction": 1.0}, {"skew": -1.0}])
def test_invalid_splits_are_refused(arguments: dict[str, float]) -> None:
    with pytest.raises(InputError):
        breast_cancer.federated_split(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(20))
def test_every_site_keeps_both_classes_so_it_can_register(seed: int) -> None:
    for site in breast_cancer.federated_split(3, seed=seed).sites:
        malignant = int(site.labels.sum())
        assert min(malignant, site.rows - malignant) >= 5
