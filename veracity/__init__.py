"""Veracity: federated analytics that hospital research networks can audit.

Subpackages
-----------
ledger
    The signed, hash-chained, Merkle-proved audit ledger.
crypto
    Signing keys, TLS material and homomorphic encryption.
client
    The site agent: datasets, approvals, privacy budget, DP training.
server
    The coordinator: Flower ServerApp, model registry, admin API, encrypted inference.
tasks
    What both sides share: model architectures and data schemas.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("veracity")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
