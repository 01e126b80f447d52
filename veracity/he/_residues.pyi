"""Type stubs of the C kernels in ``_residues.c`` (see ``veracity.he.residues``)."""

from typing import Any

# Any object with the buffer protocol (bytes, C-contiguous NumPy arrays); typing's Buffer
# (3.12) does not accept NumPy arrays under this NumPy's stubs.
Buffer = Any

def linear(
    inputs: Buffer,
    n_in: int,
    rows: int,
    degree: int,
    weights: Buffer,
    columns: Buffer,
    starts: Buffer,
    moduli: Buffer,
    constants: Buffer,
    out: Buffer,
    /,
) -> None: ...
def pooled_squares(
    units: Buffer,
    count: int,
    primes: int,
    degree: int,
    windows: Buffer,
    moduli: Buffer,
    out: Buffer,
    /,
) -> None: ...
def vector_kernel() -> str: ...
def blake2xb_stream(seed: Buffer, length: int, /) -> bytes: ...
def use_vector_kernel(name: str, /) -> None: ...
