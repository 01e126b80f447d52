"""The residue kernels: exact against Python integers, and the same residues SEAL gives."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pytest
import tenseal.sealapi as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.errors import CryptoError
from veracity.he import residues
from veracity.he.circuit import QuadraticCircuit, compile_circuit, compile_conv_circuit
from veracity.he.contexts import SecretContext
from veracity.he.layouts import evaluate, slots
from veracity.he.layouts.slots import _evaluate_one_conv
from veracity.he.params import CNN_PARAMETERS, POLY_MLP_PARAMETERS, PackingLayout
from veracity.he.seal import (
    ciphertext_from_residues,
    ciphertext_residues,
    inflate,
    loaded_ciphertext_residues,
    runtime,
    scratch,
    seal_integer,
    seal_integers,
)
from veracity.tasks.spec import ModelFamily, ModelSpec, predict_logits

#: Primes of the sizes SEAL uses (60, 45, 40 and 30 bits).
PRIMES = (2**60 - 93, 2**45 - 55, 2**40 - 87, 2**30 - 35)
#: The inner kernels this machine runs: the portable one, and AVX2 where the CPU has it.
KERNELS = ["portable"] + (["avx2"] if residues.vector_kernel() == "avx2" else [])


@pytest.fixture(params=KERNELS)
def kernel(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each inner kernel in turn; the one the module chose is restored after."""
    chosen = residues.vector_kernel()
    residues.use_vector_kernel(request.param)
    yield str(request.param)
    residues.use_vector_kernel(chosen)


def test_the_kernels_are_built_in_this_install() -> None:
    # `pip install` compiles them (a C compiler is a documented requirement): without them
    # the batch CNN falls back to SEAL's calls, correct but several times slower.
    assert residues.available()
    assert residues.vector_kernel() in ("avx2", "portable")


def _residues_of(
    rng: np.random.Generator, shape: tuple[int, ...], primes: tuple[int, ...]
) -> np.ndarray:
    values = np.empty(shape, dtype=np.uint64)
    for p, q in enumerate(primes):
        values[:, :, p] = rng.integers(0, q, size=values[:, :, p].shape, dtype=np.uint64)
        values[:, :, p].flat[:: max(1, values[:, :, p].size // 7)] = q - 1  # the largest
    return values


@settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # the kernel: not per example
)
@given(
    n_in=st.integers(1, 7),
    n_out=st.integers(1, 5),
    parts=st.integers(1, 3),
    primes=st.lists(st.sampled_from(PRIMES), min_size=1, max_size=4).map(tuple),
    extreme=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_is_the_exact_sum_of_products_modulo_each_prime(
    kernel: str,
    n_in: int,
    n_out: int,
    parts: int,
    primes: tuple[int, ...],
    extreme: bool,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    x = _residues_of(rng, (n_in, parts, len(primes), 32), primes)
    if extreme:  # weights at the bound, up to four a row (a row sum up to 2**33 - 4)
        weights = np.zeros((n_out, n_in), dtype=np.int64)
        at_bound = min(n_in, 4)
        signs = rng.choice([-1, 1], size=(n_out, at_bound))
        weights[:, :at_bound] = signs * (residues.MAX_WEIGHT - 1)
    else:
        weights = rng.integers(-(2**27), 2**27, size=(n_out, n_in))
        weights[rng.random(weights.shape) < 0.3] = 0
    # Biases at large scales: integers far beyond 64 bits, of either sign.
    constants = [int(c) * 2**70 + 3 for c in rng.integers(-(2**40), 2**40, size=n_out)]

    got = residues.linear(x, weights, primes, constants)

    for o in range(n_out):
        for part in range(parts):
            for p, q in enumerate(primes):
                for j in (0, 1, 17, 31):
                    expected = sum(int(weights[o, i]) * int(x[i, part, p, j]) for i in range(n_in))
                    expected += constants[o] if part == 0 else 0  # a plaintext scalar: part 0
                    assert int(got[o, part, p, j]) == expected % q


@settings(max_examples=examples(15), deadline=None)
@given(
    units=st.integers(1, 9),
    windows=st.integers(1, 4),
    primes=st.lists(st.sampled_from(PRIMES), min_size=1, max_size=3).map(tuple),
    seed=st.integers(0, 2**31 - 1),
)
def test_pooled_squares_are_sums_of_seal_squares(
    units: int, windows: int, primes: tuple[int, ...], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    z = _residues_of(rng, (units, 2, len(primes), 16), primes)
    index = rng.integers(0, units, size=(windows, 4))

    got = residues.pooled_squares(z, index, primes)

    for w in range(windows):
        for p, q in enumerate(primes):
            for j in (0, 5, 15):
                c0 = [int(z[u, 0, p, j]) for u in index[w]]
                c1 = [int(z[u, 1, p, j]) for u in index[w]]
                assert int(got[w, 0, p, j]) == sum(a * a for a in c0) % q
                assert (
                    int(got[w, 1, p, j]) == sum(2 * a * b for a, b in zip(c0, c1, strict=True)) % q
                )
                assert int(got[w, 2, p, j]) == sum(b * b for b in c1) % q


@pytest.mark.parametrize(
    ("weights", "moduli", "problem"),
    [
        (np.array([[2**31 - 1] * 4 + [4]]), PRIMES[:1], "2\\*\\*33"),
        (np.array([[-(2**31), 0, 0, 0, 0]]), PRIMES[:1], "2\\*\\*31"),
        (np.array([[0.5, 1.0, 0.0, 0.0, 0.0]]), PRIMES[:1], "integers"),
        (np.array([[1, 2, 3]]), PRIMES[:1], "shape"),
        (np.zeros((0, 5), dtype=np.int64), PRIMES[:1], "outputs >= 1"),
        (np.array([[1, 2, 0, 0, 0]]), (2**61 - 1,), "below 2\\*\\*60"),
        (np.array([[1, 2, 0, 0, 0]]), (2**40,), "odd"),
        (np.array([[1, 2, 0, 0, 0]]), PRIMES[:2], "moduli for 1 primes"),
    ],
)
def test_linear_refuses_what_it_cannot_compute_exactly(
    weights: np.ndarray, moduli: tuple[int, ...], problem: str
) -> None:
    x = np.zeros((5, 2, 1, 16), dtype=np.uint64)
    with pytest.raises(CryptoError, match=problem):
        residues.linear(x, weights, moduli)


def test_the_compiled_kernel_checks_its_arguments_before_reading_them() -> None:
    # Row starts that jump past the weights (the private module called directly): refused
    # before any weight is read, not an out-of-bounds read.
    from veracity.he import _residues

    x = np.zeros((2, 1, 1, 16), dtype=np.uint64)
    out = np.zeros((2, 1, 1, 16), dtype=np.uint64)
    weights = np.ones(5, dtype=np.int32)
    columns = np.zeros(5, dtype=np.int32)
    starts = np.array([0, 2**31 - 1, 5], dtype=np.int32)
    moduli = np.array([PRIMES[0]], dtype=np.uint64)
    constants = np.zeros(2, dtype=np.uint64)
    with pytest.raises(ValueError, match="row starts"):
        _residues.linear(x, 2, 1, 16, weights, columns, starts, moduli, constants, out)
    with pytest.raises(ValueError, match="buffer sizes"):
        _residues.linear(x, 2**40, 2**40, 2**40, weights, columns, starts, moduli, constants, out)


def test_a_pool_window_outside_the_units_is_refused() -> None:
    z = np.zeros((2, 2, 1, 16), dtype=np.uint64)
    with pytest.raises(CryptoError, match="out of range"):
        residues.pooled_squares(z, np.array([[0, 1, 1, 2]]), PRIMES[:1])


def test_seal_integers_round_half_away_from_zero_as_seal_does() -> None:
    values = np.array([0.5, -0.5, 1.5, -2.5, 0.49999999999999994, 2.0**60 + 4096.0])
    assert seal_integers(values, 1.0).tolist() == [1, -1, 2, -3, 0, 2**60 + 4096]
    assert [seal_integer(float(v), 1.0) for v in values] == [1, -1, 2, -3, 0, 2**60 + 4096]
    assert seal_integer(-1.25, 2.0**100) == -(5 * 2**98)


def test_ciphertext_residues_round_trip_through_seal_and_a_residue_above_its_prime_is_refused() -> (
    None
):
    rt = runtime(CNN_PARAMETERS.name)
    secret = SecretContext.generate(CNN_PARAMETERS)
    public = secret.public()
    ciphertext = public.load_inputs(secret.encrypt(PackingLayout.COLUMN, np.ones((3, 1))))[0]
    values = ciphertext_residues(rt, ciphertext)
    assert values.shape == (2, len(CNN_PARAMETERS.data_prime_bits), 16384)

    again = ciphertext_from_residues(rt, values, ciphertext.parms_id(), ciphertext.scale)
    assert np.array_equal(ciphertext_residues(rt, again), values)
    assert again.scale == ciphertext.scale
    values[1, 0, 7] = rt.primes[0]  # not a residue modulo its prime
    with pytest.raises(CryptoError, match="do not make a ciphertext"):
        ciphertext_from_residues(rt, values, ciphertext.parms_id(), ciphertext.scale)


def test_a_one_convolution_network_on_residues_gives_the_residues_seal_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small images (16 ciphertexts) keep this in the edit loop: the layers, biases, squares,
    # pools, scales and the selector's rescale are those of the digits CNN.
    spec = ModelSpec(
        ModelFamily.CNN2D,
        16,
        classes=3,
        input_shape=(1, 4, 4),
        filters=(2,),
        kernel=3,
        conv_activation="square",
    )
    weights = spec.initial_weights(11)
    rt = runtime(CNN_PARAMETERS.name)
    circuit = compile_conv_circuit(
        weights,
        parameter_set=CNN_PARAMETERS,
        primes=rt.primes,
        input_shape=(1, 4, 4),
        filters=(2,),
        kernel=3,
        outputs=3,
    )
    secret = SecretContext.generate(CNN_PARAMETERS)
    public = secret.public()
    x = np.random.default_rng(2).uniform(-1.0, 1.0, size=(40, 16))
    blobs = secret.encrypt(PackingLayout.COLUMN, x)
    monkeypatch.setattr(slots, "_WINDOWS_PER_PASS", 3)  # 8 windows: passes of 3, 3 and 2

    # Read from the request's bytes (seeds expanded), read back through SEAL, and SEAL's calls.
    on_residues = _evaluate_one_conv(rt, circuit, public.load_inputs(blobs), 25, kernels=True)
    read_by_seal = list(public.load_inputs(blobs))  # a plain list: no bytes to read
    through_seal_reads = _evaluate_one_conv(rt, circuit, read_by_seal, 25, kernels=True)
    through_seal = _evaluate_one_conv(rt, circuit, public.load_inputs(blobs), 25, kernels=False)

    assert len(on_residues) == len(through_seal_reads) == len(through_seal) == 3
    for a, b, c in zip(on_residues, through_seal_reads, through_seal, strict=True):
        assert a.scale == b.scale == c.scale
        assert a.parms_id() == b.parms_id() == c.parms_id()
        assert np.array_equal(ciphertext_residues(rt, a), ciphertext_residues(rt, c))
        assert np.array_equal(ciphertext_residues(rt, b), ciphertext_residues(rt, c))


def test_the_prng_stream_is_seals_blake2xb_prng() -> None:
    seed = [(0x0123456789ABCDEF * (i + 1)) % 2**64 for i in range(8)]
    stream = residues.seal_prng_stream(struct.pack("<8Q", *seed), 3 * 4096 + 100)
    prng = sa.Blake2xbPRNG(seed)  # SEAL's generate() gives 32-bit words
    assert list(struct.unpack("<3097I", stream[: 3097 * 4])) == [
        prng.generate() for _ in range(3097)
    ]


def test_a_requests_seeded_ciphertexts_read_as_residues_are_what_seal_loads() -> None:
    rt = runtime(CNN_PARAMETERS.name)
    secret = SecretContext.generate(CNN_PARAMETERS)
    public = secret.public()
    blobs = secret.encrypt(PackingLayout.COLUMN, np.random.default_rng(3).normal(size=(9, 2)))
    loaded = public.load_inputs(blobs)
    assert len(loaded.blobs) == 2
    for value, blob in zip(loaded, loaded.blobs, strict=True):
        assert len(blob) < 8 * 2 * 5 * 16384  # seeded: the second part is a seed
        lowered = sa.Ciphertext()
        rt.evaluator.mod_switch_to_next(value, lowered)
        read = loaded_ciphertext_residues(rt, blob, 4)
        assert read is not None
        assert np.array_equal(read, ciphertext_residues(rt, lowered))
    assert loaded_ciphertext_residues(rt, loaded.blobs[0][:-1], 4) is None  # not that shape


def _sample_as_seal_does(seed: bytes, moduli: tuple[int, ...], degree: int) -> list[list[int]]:
    """SEAL's sample_poly_uniform, word by word, as a reference."""
    words = struct.unpack(f"<{2**16}Q", residues.seal_prng_stream(seed, 8 * 2**16))
    cursor = len(moduli) * degree
    out = []
    for row, q in enumerate(moduli):
        limit = 2**64 - 1 - ((2**64 - 1) % q) - 1
        values = []
        for i in range(degree):
            word = words[row * degree + i]
            while word >= limit:
                word = words[cursor]
                cursor += 1
            values.append(word % q)
        out.append(values)
    return out


def test_uniform_residues_redraw_rejected_words_as_seal_does() -> None:
    # SEAL's primes almost never reject a word; these moduli reject a third to a half of them
    # (2**64 mod q close to q), so the redraws and their order are exercised.
    seed = bytes(range(64))
    moduli = (2**62 + 1, 2**63 + 5, 97)
    got = residues.uniform_residues_from(seed, moduli, 512)
    assert got.tolist() == _sample_as_seal_does(seed, moduli, 512)


def test_unseeded_and_unknown_ciphertext_bytes_are_read_or_left_to_seal() -> None:
    rt = runtime(CNN_PARAMETERS.name)
    secret = SecretContext.generate(CNN_PARAMETERS)
    public = secret.public()
    loaded = public.load_inputs(secret.encrypt(PackingLayout.COLUMN, np.ones((5, 1))))
    # A ciphertext SEAL saved in full (both parts, no seed): read as it is.
    full = inflate(scratch().save(loaded[0]), "saved", max_bytes=2**24, max_inflated=2**24)
    read = loaded_ciphertext_residues(rt, full, 5)
    assert read is not None
    assert np.array_equal(read, ciphertext_residues(rt, loaded[0]))
    # A seed of another PRNG type (SHAKE256): left to SEAL.
    seeded = bytearray(loaded.blobs[0])
    seeded[-65] = 2
    assert loaded_ciphertext_residues(rt, bytes(seeded), 4) is None


def test_an_mlp_hidden_layer_on_residues_gives_the_response_seal_calls_give(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The whole column request, flood included (the same random bytes): byte for byte.
    spec = ModelSpec(ModelFamily.POLY_MLP, 30, hidden=16)
    weights = {k: v * 1.5 for k, v in spec.initial_weights(4).items()}  # row sums near 2**32
    ps = POLY_MLP_PARAMETERS
    circuit = compile_circuit(
        "poly_mlp",
        weights,
        parameter_set=ps,
        primes=runtime(ps.name).primes,
        n_features=30,
        hidden=16,
        activation=spec.activation,
    )
    assert isinstance(circuit, QuadraticCircuit)
    hidden = seal_integers(circuit.hidden_weights, circuit.hidden_weight_scale)
    assert residues.fits(hidden)  # the kernel computes this layer: rows beyond 2**31 too
    assert np.abs(hidden).sum(axis=1).max() >= 2**31
    secret = SecretContext.generate(ps)
    public = secret.public()
    blobs = secret.encrypt(PackingLayout.COLUMN, np.random.default_rng(5).normal(size=(300, 30)))

    def answer() -> list[bytes]:
        stream = np.random.default_rng(9)
        return evaluate(
            public,
            circuit,
            PackingLayout.COLUMN,
            blobs,
            batch_size=300,
            random_bytes=lambda n: stream.bytes(n),
        )

    on_residues = answer()
    monkeypatch.setattr(residues, "available", lambda: False)
    through_seal = answer()

    assert on_residues == through_seal
    logits = secret.decrypt(
        PackingLayout.COLUMN, on_residues, batch_size=300, n_features=30, hidden=16
    )
    x = np.random.default_rng(5).normal(size=(300, 30))
    np.testing.assert_allclose(logits, predict_logits(spec, weights, x), atol=1e-3)
