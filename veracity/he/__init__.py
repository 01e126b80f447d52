"""Homomorphic (CKKS) inference: parameters, packing layouts, circuits, wire format, SEAL.

Pure modules (no TenSEAL): :mod:`~veracity.he.params` (parameter sets, 128-bit check),
:mod:`~veracity.he.packing` (where patients sit in slots and coefficients, NumPy),
:mod:`~veracity.he.circuit` (models folded into CKKS circuits) and :mod:`~veracity.he.wire`
(the envelopes of docs/inference-wire.md).

TenSEAL adapters (the only modules that import ``tenseal``): :mod:`~veracity.he.seal`
(SEAL runtimes, serialisation, :func:`~veracity.he.seal.seal_errors`),
:mod:`~veracity.he.contexts` (``SecretContext``, the requester's),
:mod:`~veracity.he.public_context` (``PublicContext`` and its admission checks, the server's)
and :mod:`~veracity.he.layouts` (the ``Layout`` protocol, one implementation per packing
layout, and ``evaluate``).

This package's ``__init__`` imports nothing, so the pure modules load without TenSEAL.
"""
