"""The ``im2col`` layout's slot program (pure NumPy) is the CNN circuit, slot for slot."""

from __future__ import annotations

import numpy as np
import pytest

from veracity.errors import InputError
from veracity.he.circuit import compile_conv_circuit
from veracity.he.image import ImageGeometry
from veracity.he.params import CNN_IMAGE_PARAMETERS, check_security
from veracity.he.seal import seal_primes


def _random_cnn(
    shape: tuple[int, int, int], filters: tuple[int, ...], classes: int, seed: int
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    channels, height, width = shape
    first = filters[0]
    weights = {
        "conv1.weight": rng.normal(size=(first, channels, 3, 3)) * 0.3,
        "conv1.bias": rng.normal(size=first) * 0.1,
        "fc.bias": rng.normal(size=classes),
    }
    if len(filters) == 1:
        weights["fc.weight"] = (
            rng.normal(size=(classes, first * (height // 2) * (width // 2))) * 0.1
        )
        return weights
    second = filters[1]
    weights |= {
        "conv2.weight": rng.normal(size=(second, first, 3, 3)) * 0.1,
        "conv2.bias": rng.normal(size=second) * 0.1,
        "fc.weight": rng.normal(size=(classes, second * (height // 4) * (width // 4))) * 0.1,
    }
    return weights


@pytest.mark.parametrize(
    ("shape", "filters", "classes"),
    [
        ((1, 8, 8), (4, 8), 10),
        ((2, 8, 8), (2, 4), 3),
        ((1, 8, 8), (3, 5), 2),
        ((1, 4, 8), (4, 8), 7),
        ((1, 8, 8), (4,), 10),
        ((3, 6, 6), (2,), 2),
        ((1, 4, 8), (5,), 3),
    ],
)
def test_the_slot_program_computes_the_circuit_and_nothing_else(
    shape: tuple[int, int, int], filters: tuple[int, ...], classes: int
) -> None:
    weights = _random_cnn(shape, filters, classes, seed=sum(filters))
    outputs = 1 if classes == 2 else classes
    if outputs == 1:
        weights["fc.weight"] = weights["fc.weight"][:1]
        weights["fc.bias"] = weights["fc.bias"][:1]
    circuit = compile_conv_circuit(
        weights,
        parameter_set=CNN_IMAGE_PARAMETERS,
        primes=seal_primes(CNN_IMAGE_PARAMETERS),
        input_shape=shape,
        filters=filters,
        kernel=3,
        outputs=outputs,
    )
    geometry = ImageGeometry(shape, filters, 3, outputs, CNN_IMAGE_PARAMETERS.slots)
    rng = np.random.default_rng(1)
    for image in rng.uniform(-1.0, 1.0, size=(4, int(np.prod(shape)))):
        slots = geometry.simulate(circuit, image)
        logits = circuit.forward(image[None])[0]
        classes_at = np.arange(geometry.slots) % geometry.modulus
        mask = geometry.output_mask()
        # Every slot is a copy of one declared logit, or zero: nothing else is in it.
        np.testing.assert_allclose(slots[mask], logits[classes_at[mask]], rtol=1e-9, atol=1e-9)
        assert np.abs(slots[~mask]).max(initial=0.0) < 1e-9
        np.testing.assert_allclose(geometry.unpack(slots), logits, rtol=1e-9, atol=1e-9)


def test_a_network_that_does_not_fit_one_ciphertext_is_refused() -> None:
    with pytest.raises(InputError, match="does not fit"):
        ImageGeometry((1, 12, 12), (4, 8), 3, 10, CNN_IMAGE_PARAMETERS.slots)
    with pytest.raises(InputError, match="does not fit"):
        ImageGeometry((3, 8, 8), (4, 8), 3, 10, CNN_IMAGE_PARAMETERS.slots)


def test_the_image_parameter_set_is_128_bit_and_its_upload_fits_200_kib() -> None:
    check_security(CNN_IMAGE_PARAMETERS)
    ps = CNN_IMAGE_PARAMETERS
    assert ps.total_bits <= 218
    # A seeded ciphertext: one polynomial of residues over the data primes.
    assert ps.poly_modulus_degree * sum(ps.data_prime_bits) / 8 < 200 * 1024
