"""Packing layouts, checked in plain NumPy against the operations the server performs."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.errors import InputError
from veracity.he.packing import (
    CoefficientGeometry,
    ReplicatedGeometry,
    coefficients_from_slots,
    pack_column,
    pack_column_coefficients,
    slots_from_coefficients,
    unpack_column,
    unpack_column_coefficients,
)

degrees = st.sampled_from([8, 16, 64, 256])


def negacyclic_product(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``a * b`` in R[X] / (X**N + 1), the ring CKKS plaintexts live in."""
    n = a.shape[0]
    full = np.convolve(a, b)
    result = full[:n].copy()
    result[: full.shape[0] - n] -= full[n:]
    return result


@settings(max_examples=examples(25), deadline=None)
@given(n=degrees, seed=st.integers(0, 2**32 - 1))
def test_slot_map_round_trips_any_real_polynomial(n: int, seed: int) -> None:
    coefficients = np.random.default_rng(seed).normal(size=n) * 100
    back = coefficients_from_slots(slots_from_coefficients(coefficients))
    np.testing.assert_allclose(back, coefficients, atol=1e-9)


@settings(max_examples=examples(25), deadline=None)
@given(n=degrees, seed=st.integers(0, 2**32 - 1))
def test_slotwise_product_is_the_negacyclic_polynomial_product(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    slotwise = slots_from_coefficients(a) * slots_from_coefficients(b)
    np.testing.assert_allclose(
        coefficients_from_slots(slotwise), negacyclic_product(a, b), atol=1e-9
    )


@settings(max_examples=examples(30), deadline=None)
@given(
    n=st.sampled_from([16, 64, 128]),
    features=st.integers(1, 12),
    patients=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_coefficient_layout_leaves_each_dot_product_at_its_output_position(
    n: int, features: int, patients: int, seed: int
) -> None:
    geometry = CoefficientGeometry(features, n)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(patients, features))
    w = rng.normal(size=features)
    packed = geometry.pack(x)
    assert packed.shape[0] == -(-patients // geometry.patients_per_ciphertext)
    products = np.stack([negacyclic_product(c, geometry.weight_polynomial(w)) for c in packed])
    np.testing.assert_allclose(geometry.unpack(products, patients), x @ w, atol=1e-9)


def _simulate_replicated(
    geometry: ReplicatedGeometry,
    packed: npt.NDArray[np.float64],
    w1: npt.NDArray[np.float64],
    b1: npt.NDArray[np.float64],
    alpha: npt.NDArray[np.float64],
    gamma: float,
    patients: int,
) -> npt.NDArray[np.float64]:
    """What the server computes, with np.roll standing in for SEAL's rotations."""
    out = []
    per = geometry.patients_per_ciphertext
    for index, vector in enumerate(packed):
        live = min(per, patients - index * per)
        value = vector
        for step in geometry.replication_steps():
            value = value + np.roll(value, -step)
        value = value * geometry.first_layer_vector(w1, live)
        for step in geometry.block_sum_steps():
            value = value + np.roll(value, -step)
        value = value + geometry.bias_vector(b1, live)
        value = value * value * geometry.output_selector(alpha, live)
        for step in geometry.unit_sum_steps():
            value = value + np.roll(value, -step)
        out.append(value + geometry.output_constant(gamma, live))
    return np.stack(out)


@settings(max_examples=examples(30), deadline=None)
@given(
    features=st.integers(1, 9),
    hidden=st.integers(1, 6),
    patients=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_replicated_layout_gives_each_patient_its_quadratic_network_output(
    features: int, hidden: int, patients: int, seed: int
) -> None:
    geometry = ReplicatedGeometry(features, hidden, 512)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(patients, features))
    w1, b1 = rng.normal(size=(hidden, features)), rng.normal(size=hidden)
    alpha, gamma = rng.normal(size=hidden), float(rng.normal())
    expected = ((x @ w1.T + b1) ** 2) @ alpha + gamma
    result = _simulate_replicated(geometry, geometry.pack(x), w1, b1, alpha, gamma, patients)
    np.testing.assert_allclose(geometry.unpack(result, patients), expected, atol=1e-8)
    # Only live patients' block starts hold anything: every other slot is exactly zero.
    for index, vector in enumerate(result):
        live = min(
            geometry.patients_per_ciphertext, patients - index * geometry.patients_per_ciphertext
        )
        others = np.setdiff1d(np.arange(512), geometry.output_positions(live))
        assert np.all(vector[others] == 0.0)


def test_replicated_layout_gives_every_unit_the_same_input_whatever_the_blocks_hold() -> None:
    # The per-neuron oracle: a requester puts a different input in each unit's block. The
    # server's replication sums the blocks, so every unit sees their sum.
    geometry = ReplicatedGeometry(4, 4, 128)
    rng = np.random.default_rng(7)
    w1, b1 = rng.normal(size=(4, 4)), rng.normal(size=4)
    alpha, gamma = rng.normal(size=4), 0.3
    per_unit = rng.normal(size=(geometry.hidden_blocks, 4))
    vector = np.zeros(128)
    for k in range(geometry.hidden_blocks):
        vector[k * geometry.unit_stride : k * geometry.unit_stride + 4] = per_unit[k]
    result = _simulate_replicated(geometry, vector[None, :], w1, b1, alpha, gamma, 1)
    seen = per_unit.sum(axis=0)
    expected = ((seen @ w1.T + b1) ** 2) @ alpha + gamma
    np.testing.assert_allclose(geometry.unpack(result, 1), [expected], atol=1e-9)


def test_replicated_geometry_for_the_30_16_network_at_n8192() -> None:
    geometry = ReplicatedGeometry(30, 16, 4096)
    assert (geometry.block_width, geometry.hidden_blocks, geometry.patients_per_ciphertext) == (
        32,
        16,
        8,
    )
    assert geometry.rotation_steps() == (
        *(-256, -512, -1024, -2048),  # replication into every unit's blocks
        *(1, 2, 4, 8, 16),  # block sums
        *(256, 512, 1024, 2048),  # sums over units
    )


def test_a_network_too_wide_for_the_replicated_layout_is_refused() -> None:
    with pytest.raises(InputError, match="does not fit"):
        ReplicatedGeometry(600, 16, 4096)


@settings(max_examples=examples(20), deadline=None)
@given(patients=st.integers(1, 16), features=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_column_layouts_round_trip(patients: int, features: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(patients, features))
    real = pack_column(x, 16)
    assert real.shape == (features, 16)
    np.testing.assert_array_equal(unpack_column(real[0], patients), x[:, 0])
    packed = pack_column_coefficients(x, 16)
    assert packed.shape == (features, 16)
    np.testing.assert_array_equal(unpack_column_coefficients(packed[-1], patients), x[:, -1])


def test_more_patients_than_a_column_holds_is_refused() -> None:
    with pytest.raises(InputError, match="capacity"):
        pack_column_coefficients(np.zeros((17, 2)), 16)
