"""The site's ChaCha20 noise source: the keystream, uniforms, Gaussians and their scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy import stats

from veracity.client.noise import (
    GENERATOR_NAME,
    ROUND_SEED_GENERATOR_NAME,
    SEEDED_GENERATOR_NAME,
    ChaCha20Source,
)
from veracity.errors import InputError

KEY = bytes(range(32))


def test_uniforms_are_the_chacha20_keystream_read_as_53_bit_fractions() -> None:
    # RFC 8439's cipher through OpenSSL: the same key and counter give the same words.
    keystream = Cipher(algorithms.ChaCha20(KEY, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(keystream.update(bytes(8 * 5)), dtype="<u8")
    expected = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    assert ChaCha20Source(KEY).uniform(5).tolist() == expected.tolist()


def test_coin_flips_are_32_bit_words_below_the_rate_rounded_down() -> None:
    keystream = Cipher(algorithms.ChaCha20(KEY, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(keystream.update(bytes(4 * 1000)), dtype="<u4")
    expected = words < math.floor(0.3 * 2**32)
    assert ChaCha20Source(KEY).bernoulli(1000, 0.3).tolist() == expected.tolist()
    flips = ChaCha20Source(KEY).bernoulli(200_000, 0.2).numpy()
    assert abs(flips.mean() - 0.2) < 0.004  # 4.5 standard errors
    assert not ChaCha20Source(KEY).bernoulli(100, 0.0).any()
    assert ChaCha20Source(KEY).bernoulli(100, 1.0).all()


def test_uniforms_stay_inside_the_open_unit_interval() -> None:
    draws = ChaCha20Source(KEY).uniform(200_000).numpy()
    assert draws.min() > 0.0
    assert draws.max() < 1.0
    assert stats.kstest(draws, "uniform").pvalue > 1e-4


def test_gaussians_have_the_asked_standard_deviation_and_are_normal() -> None:
    draws = ChaCha20Source(KEY).gaussian((400, 250), 3.0)
    assert tuple(draws.shape) == (400, 250)
    assert draws.dtype == torch.float64
    flat = draws.numpy().ravel()
    # 100 000 draws: the sample std is within 1 % of 3 with overwhelming probability.
    assert abs(flat.std() / 3.0 - 1.0) < 0.01
    assert abs(flat.mean()) < 0.05
    assert stats.kstest(flat / 3.0, "norm").pvalue > 1e-4


def test_a_gaussian_is_the_sum_of_four_box_muller_draws_halved() -> None:
    # Drawn a block of 4096 at a time: the first values are the block's first columns.
    block = ChaCha20Source(KEY).standard_normal(4 * 4096).reshape(4, 4096)
    expected = block.sum(dim=0)[:3] / 2.0
    source = ChaCha20Source(KEY)
    assert source.gaussian((3,), 1.0).tolist() == expected.tolist()
    # The next draw continues the same block; a draw past its end starts the next one.
    assert source.gaussian((2,), 2.0).tolist() == (2.0 * block.sum(dim=0)[3:5] / 2.0).tolist()
    assert tuple(source.gaussian((5000,), 1.0).shape) == (5000,)


def test_keys_from_the_os_differ_and_seeded_keys_repeat() -> None:
    assert ChaCha20Source().uniform(4).tolist() != ChaCha20Source().uniform(4).tolist()
    first = ChaCha20Source.from_seed(7, "noise").uniform(4).tolist()
    assert ChaCha20Source.from_seed(7, "noise").uniform(4).tolist() == first
    assert ChaCha20Source.from_seed(7, "sampling").uniform(4).tolist() != first
    assert ChaCha20Source().name == GENERATOR_NAME
    assert ChaCha20Source.from_seed(7, "noise").name == SEEDED_GENERATOR_NAME


@pytest.mark.parametrize("std", [-1.0, math.inf, math.nan])
def test_bad_standard_deviations_are_refused(std: float) -> None:
    with pytest.raises(InputError):
        ChaCha20Source(KEY).gaussian((2,), std)


def test_zero_noise_is_exactly_zero_and_a_key_is_32_bytes() -> None:
    assert ChaCha20Source(KEY).gaussian((2, 2), 0.0).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(InputError):
        ChaCha20Source(b"short")


def test_a_round_seed_keys_each_purpose_apart_and_repeats_its_draws() -> None:
    seed = bytes(range(32))
    noise = ChaCha20Source.from_round_seed(seed, "noise")
    again = ChaCha20Source.from_round_seed(seed, "noise")
    sampling = ChaCha20Source.from_round_seed(seed, "sampling")
    other = ChaCha20Source.from_round_seed(bytes(32), "noise")

    drawn = noise.gaussian((64,), 1.0)
    assert torch.equal(drawn, again.gaussian((64,), 1.0))
    assert not torch.equal(drawn, sampling.gaussian((64,), 1.0))
    assert not torch.equal(drawn, other.gaussian((64,), 1.0))
    assert noise.name == ROUND_SEED_GENERATOR_NAME
    assert not noise.seeded


def test_a_round_seed_is_32_bytes() -> None:
    with pytest.raises(InputError, match="32 bytes"):
        ChaCha20Source.from_round_seed(b"short", "noise")
