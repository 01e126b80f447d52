"""CKKS parameter sets for encrypted inference, one per model family, and why.

Pure Python (no TenSEAL): the server, the client and the docs share these definitions. The
TenSEAL adapter (:mod:`veracity.he.seal`) builds SEAL contexts from them and asks SEAL to
confirm 128-bit security at run time as well.

Security
    Every set stays within the HomomorphicEncryption.org standard for 128-bit classical
    security with a ternary secret (the table SEAL enforces as ``sec_level_type::tc128``):
    the total coefficient-modulus size may not exceed 27, 54, 109, 218, 438 or 881 bits for
    N = 1024 ... 32768. :func:`check_security` applies that table; SEAL applies it again
    when a context is built.

Why these numbers (measured in ``benchmarks/he_bench.py`` and the field note)
    ``logistic`` (``ckks-lr-n4096-v1``): N = 4096, one 60-bit prime, inputs at 2**25.
        A linear model needs no rescaling and no key switching, so one prime is enough and
        the server needs nothing but the parameters (no public, relinearisation or Galois
        keys). With a single prime SEAL has no special prime and no key switching at all. The
        product ``x * w`` lives at scale 2**25 * 2**weight_bits; the weight scale is chosen per
        model so that the worst-case logit (``|b| + input_bound * sum|w|``) stays below
        q / 8. 2**25 gives logit errors around 1e-4 on standardised clinical data (the note's
        2**20 tutorial scale flipped decisions). N = 4096 rather than 2048 doubles the slots
        per ciphertext at the same cost per patient and leaves 60 bits (2048 would allow 54).
    ``poly_mlp`` (``ckks-mlp-n8192-v1``): N = 8192, primes 60, 60, 30 and a 60-bit special
        prime (210 of 218 allowed bits). Inputs and first-layer weights at 2**30, one lazy
        rescale by the 30-bit prime after each hidden unit's 30 products (scale back to
        ~2**30), a square, then the output layer without another rescale: the result keeps
        the two 60-bit primes (120 bits) as headroom for ``scale**2 * 2**output_bits *
        |logit|``. The batched layout defers relinearisation to the requester's decryptor
        (SEAL decrypts three-part ciphertexts), so it needs no keys at all; the 60-bit
        special prime exists for the small-batch layout, whose rotations need Galois and
        relinearisation keys. N = 4096 cannot hold this chain within 109 bits once the
        worst-case input bound is respected.

Input bound
    Standardised features must satisfy ``|x| <= input_bound`` (64): the worst-case
    intermediate values, and hence the weight scales, are derived from it, so no admissible
    input can overflow the modulus. The client refuses rows outside it, naming the cell.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from veracity.core.canonical import canonical_hash
from veracity.errors import CryptoError

__all__ = [
    "MAX_LOG_Q_128",
    "PackingLayout",
    "CKKSParameterSet",
    "LOGISTIC_PARAMETERS",
    "POLY_MLP_PARAMETERS",
    "CNN_PARAMETERS",
    "CNN_IMAGE_PARAMETERS",
    "PARAMETER_SETS",
    "check_security",
    "parameter_set_for",
    "parameter_set_named",
    "small_batch_parameters",
    "he_params_hash",
]

#: HomomorphicEncryption.org standard, 128-bit classical security, ternary secret:
#: the largest total coefficient-modulus size (bits) for each ring degree N.
MAX_LOG_Q_128: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}


class PackingLayout(enum.StrEnum):
    """How patients and features are laid out in ciphertexts (see docs/inference-wire.md)."""

    #: One ciphertext per feature, patient p in polynomial coefficient p (linear models
    #: only): outputs are coefficients, so everything else can be masked uniformly modulo q.
    #: Batched logistic regression.
    COLUMN_COEFFICIENT = "column_coefficient"
    #: Patients' feature vectors in consecutive polynomial coefficients; one plaintext
    #: multiplication gives every patient's dot product (linear models only). Small batches.
    COEFFICIENT = "coefficient"
    #: One ciphertext per feature, one patient per slot. Batched ``poly_mlp``.
    COLUMN = "column"
    #: One ciphertext holds a few patients' feature vectors, replicated per hidden unit;
    #: rotations sum within blocks (Galois and relinearisation keys). Small ``poly_mlp`` batches.
    REPLICATED = "replicated"
    #: One image per ciphertext, its convolution windows packed by the requester; the
    #: server's convolutions are plaintext products and rotations (Galois and
    #: relinearisation keys). Small ``cnn2d`` requests.
    IM2COL = "im2col"


@dataclass(frozen=True)
class CKKSParameterSet:
    """One CKKS parameter set and the layouts it serves.

    Attributes
    ----------
    name
        Stable identifier, part of the wire format and of :func:`he_params_hash`.
    family
        The model family the set is sized for (``veracity.tasks.spec.ModelFamily`` value).
    poly_modulus_degree
        Ring degree N; a ciphertext has N / 2 complex slots.
    coeff_modulus_bits
        Bit sizes of the primes; when there is more than one, the last is SEAL's special
        prime (used only by key switching).
    input_scale_bits
        Features are encoded at 2**input_scale_bits.
    hidden_weight_scale_bits
        ``poly_mlp`` only: first-layer weights are encoded at this scale.
    input_bound
        Largest admissible ``|x|`` of a standardised feature.
    min_weight_scale_bits / max_weight_scale_bits
        Range of per-model weight scales (output layer for ``poly_mlp``); a model whose
        worst-case values need a smaller scale than the minimum is refused.
    small_batch_layout / batch_layout
        Layout for batches of at most ``small_batch_max`` patients, and for the rest.
    small_batch_max
        The crossover chosen from the benchmark's measurement (see docs/inference-wire.md).
    """

    name: str
    family: str
    poly_modulus_degree: int
    coeff_modulus_bits: tuple[int, ...]
    input_scale_bits: int
    input_bound: float
    min_weight_scale_bits: int
    max_weight_scale_bits: int
    batch_layout: PackingLayout
    small_batch_layout: PackingLayout
    small_batch_max: int
    hidden_weight_scale_bits: int = 0
    #: The set the small-batch layout runs under when it is not this one (``cnn2d``: the
    #: ``im2col`` layout needs N = 8192 for its upload, the column layout N = 16384).
    small_batch_parameters: str = ""

    @property
    def slots(self) -> int:
        """Complex slots per ciphertext (N / 2)."""
        return self.poly_modulus_degree // 2

    @property
    def data_prime_bits(self) -> tuple[int, ...]:
        """The primes that carry data (all but SEAL's special prime when there are several)."""
        bits = self.coeff_modulus_bits
        return bits if len(bits) == 1 else bits[:-1]

    @property
    def total_bits(self) -> int:
        """Total coefficient-modulus size in bits (what the security standard bounds)."""
        return sum(self.coeff_modulus_bits)

    @property
    def input_scale(self) -> float:
        """The encoding scale of features."""
        return float(2**self.input_scale_bits)

    def describe(self) -> dict[str, object]:
        """The public, JSON-ready description a requester needs to build its context."""
        return {
            "name": self.name,
            "scheme": "ckks",
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_modulus_bits": list(self.coeff_modulus_bits),
            "input_scale_bits": self.input_scale_bits,
            "input_bound": self.input_bound,
            "security_level": 128,
        }


def check_security(parameter_set: CKKSParameterSet) -> None:
    """Refuse a parameter set below 128-bit security (HomomorphicEncryption.org table).

    Raises
    ------
    CryptoError
        If N is not a supported power of two or the modulus is larger than the standard
        allows for 128-bit security at that N.
    """
    n = parameter_set.poly_modulus_degree
    limit = MAX_LOG_Q_128.get(n)
    if limit is None:
        raise CryptoError(f"parameter set {parameter_set.name}: N={n} is not a supported degree")
    if parameter_set.total_bits > limit:
        raise CryptoError(
            f"parameter set {parameter_set.name}: {parameter_set.total_bits}-bit modulus at "
            f"N={n} is below 128-bit security (at most {limit} bits)"
        )
    if any(not 17 <= bits <= 60 for bits in parameter_set.coeff_modulus_bits):
        raise CryptoError(f"parameter set {parameter_set.name}: primes must have 17 to 60 bits")


LOGISTIC_PARAMETERS = CKKSParameterSet(
    name="ckks-lr-n4096-v1",
    family="logistic",
    poly_modulus_degree=4096,
    coeff_modulus_bits=(60,),
    input_scale_bits=25,
    input_bound=64.0,
    min_weight_scale_bits=14,
    max_weight_scale_bits=30,
    batch_layout=PackingLayout.COLUMN_COEFFICIENT,
    small_batch_layout=PackingLayout.COEFFICIENT,
    # benchmarks/he_bench.py, client + server CPU per request: coefficient 25 ms against
    # the batch layout's 34 ms at 1088 patients, 53 against 28 ms at 2176 (crossover
    # ~1300); 1224 = 9 ciphertexts of 136 patients.
    small_batch_max=1224,
)

POLY_MLP_PARAMETERS = CKKSParameterSet(
    name="ckks-mlp-n8192-v1",
    family="poly_mlp",
    poly_modulus_degree=8192,
    coeff_modulus_bits=(60, 60, 30, 60),
    input_scale_bits=30,
    hidden_weight_scale_bits=30,
    input_bound=64.0,
    min_weight_scale_bits=16,
    max_weight_scale_bits=40,
    batch_layout=PackingLayout.COLUMN,
    small_batch_layout=PackingLayout.REPLICATED,
    # benchmarks/he_bench.py, client + server CPU per request: replicated 233 ms against
    # column 244 ms at 48 patients, 305 against 260 ms at 64 (crossover ~50 since the
    # server replicates the features itself). 72 = 9 ciphertexts of 8 patients is kept:
    # a column request is charged 4096 predictions against 8 per replicated ciphertext, and
    # bytes favour replicated further (~21 KB against 4.6 MB per patient batch).
    small_batch_max=72,
)

CNN_PARAMETERS = CKKSParameterSet(
    name="ckks-cnn-n16384-v1",
    family="cnn2d",
    poly_modulus_degree=16384,
    coeff_modulus_bits=(60, 60, 40, 45, 30, 60),
    input_scale_bits=30,
    hidden_weight_scale_bits=30,
    input_bound=8.0,
    min_weight_scale_bits=12,
    max_weight_scale_bits=40,
    batch_layout=PackingLayout.COLUMN,
    # Small requests go to the im2col layout under its own set (below); its
    # small_batch_max (16 images) is the crossover.
    small_batch_layout=PackingLayout.IM2COL,
    small_batch_max=8192,
    small_batch_parameters="ckks-cnn-im2col-n8192-v1",
)

CNN_IMAGE_PARAMETERS = CKKSParameterSet(
    name="ckks-cnn-im2col-n8192-v1",
    family="cnn2d",
    poly_modulus_degree=8192,
    # Data primes bottom to top: the logits' (49), then one per rescale, last first: the
    # first convolution's (22), the second's (48), the dense layer's (49); special prime 49
    # (>= every data prime: the rotations' key-switching noise stays below the rescales').
    # 217 of the 218 bits N = 8192 allows; a seeded ciphertext is ~168 bits x 8192 / 8.
    coeff_modulus_bits=(49, 49, 48, 22, 49),
    input_scale_bits=20,
    hidden_weight_scale_bits=25,
    input_bound=8.0,
    min_weight_scale_bits=16,
    max_weight_scale_bits=24,
    batch_layout=PackingLayout.IM2COL,
    small_batch_layout=PackingLayout.IM2COL,
    # One ciphertext (~170 KiB, ~70 ms of server CPU) per image: up to 16 images per
    # request; more go to the column layout of ckks-cnn-n16384-v1 (one request of 8,192
    # images costs what ~50-100 single images cost; see benchmarks/he_bench.py --images).
    small_batch_max=16,
)

PARAMETER_SETS: dict[str, CKKSParameterSet] = {
    p.name: p
    for p in (LOGISTIC_PARAMETERS, POLY_MLP_PARAMETERS, CNN_PARAMETERS, CNN_IMAGE_PARAMETERS)
}


def parameter_set_for(family: str) -> CKKSParameterSet:
    """The parameter set that serves models of ``family`` (a ``ModelFamily`` value).

    Raises
    ------
    CryptoError
        If no parameter set serves that family.
    """
    for parameter_set in PARAMETER_SETS.values():
        if parameter_set.family == family:
            return parameter_set
    raise CryptoError(f"no CKKS parameter set serves model family {family!r}")


def small_batch_parameters(parameter_set: CKKSParameterSet) -> CKKSParameterSet:
    """The set ``parameter_set``'s small-batch layout runs under."""
    if not parameter_set.small_batch_parameters:
        return parameter_set
    return parameter_set_named(parameter_set.small_batch_parameters)


def parameter_set_named(name: str) -> CKKSParameterSet:
    """Look up a parameter set by name.

    Raises
    ------
    CryptoError
        If no parameter set has that name.
    """
    try:
        return PARAMETER_SETS[name]
    except KeyError as err:
        raise CryptoError(
            f"unknown CKKS parameter set {name!r}; known: {sorted(PARAMETER_SETS)}"
        ) from err


def he_params_hash(parameter_set: CKKSParameterSet, primes: tuple[int, ...]) -> str:
    """SHA-256 (hex) naming exactly the HE parameters a batch was evaluated under.

    Covers the set's name, N, the actual primes (decimal strings: they exceed 2**53) and the
    input scale; this is the ``he_params_hash`` of ``inference.served``.
    """
    return canonical_hash(
        {
            "scheme": "ckks",
            "name": parameter_set.name,
            "poly_modulus_degree": parameter_set.poly_modulus_degree,
            "coeff_modulus": [str(p) for p in primes],
            "input_scale_bits": parameter_set.input_scale_bits,
        }
    )
