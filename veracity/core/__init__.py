"""The dependency-free core: canonical JSON and the field types every contract shares.

Nothing here imports another Veracity subpackage (only :mod:`veracity.errors`), nor torch,
TenSEAL, Flower or a web framework.
"""
