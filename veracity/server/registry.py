"""The content-addressed registry of released models (``DIR/models/``).

A model is named by its ``weights_hash`` (``veracity.tasks.weights``). Each lives in its own
directory::

    ROOT/<model_hash>/weights.npz   the tensors (weights_to_bytes: no pickles)
    ROOT/<model_hash>/model.json    canonical JSON: format, model_hash, spec, features,
                                    label, scaling, card, card_hash, description_hash

A model is written into a fresh temporary directory (files fsynced) and renamed into place,
so a reader sees either nothing or the whole model. Every read recomputes the weights hash
and the metadata hashes and refuses a model whose files were changed.

``card`` is the coordinator's model card (lineage, DP guarantees, metrics): any JSON object.
``card_hash`` is what ``model.released`` records; ``description_hash`` covers everything
inference relies on besides the weights (spec, features, label, scaling, card).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from veracity.core.canonical import canonical_hash, canonical_json
from veracity.core.fields import is_hex64
from veracity.errors import InputError, LedgerIntegrityError, NotFound
from veracity.tasks.spec import ModelSpec, check_weights
from veracity.tasks.weights import Weights, weights_from_bytes, weights_hash, weights_to_bytes

__all__ = ["ReleasedModel", "ModelRegistry", "ReleasedModels"]

_FORMAT = "veracity.model.v1"


@dataclass(frozen=True)
class ReleasedModel:
    """A released model as the registry holds it."""

    model_hash: str
    spec: ModelSpec
    weights: Mapping[str, npt.NDArray[np.floating]] = field(repr=False)
    features: tuple[str, ...]
    label: str
    #: Public standardisation, one ``(mean, std)`` per feature.
    scaling: tuple[tuple[float, float], ...]
    card: Mapping[str, Any]

    @property
    def card_hash(self) -> str:
        """SHA-256 of the card's canonical JSON (what ``model.released`` records)."""
        return canonical_hash(dict(self.card))

    @property
    def description_hash(self) -> str:
        """SHA-256 over spec, features, label, scaling and card."""
        return canonical_hash(
            _description(self.spec, self.features, self.label, self.scaling, self.card)
        )


def _description(
    spec: ModelSpec,
    features: Sequence[str],
    label: str,
    scaling: Sequence[tuple[float, float]],
    card: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "spec": spec.to_dict(),
        "features": list(features),
        "label": label,
        "scaling": [[float(m), float(s)] for m, s in scaling],
        "card": dict(card),
    }


def _check_model(
    spec: ModelSpec,
    weights: Weights,
    features: Sequence[str],
    label: str,
    scaling: Sequence[tuple[float, float]],
) -> None:
    check_weights(spec, weights)
    # A convolutional model's features name its input channels; a table model's, its inputs.
    width = spec.input_shape[0] if spec.family.convolutional else spec.n_features
    if len(features) != width:
        raise InputError(f"model has {width} inputs but {len(features)} features")
    if len(set(features)) != len(features) or not all(features):
        raise InputError("features must be distinct, non-empty names")
    if not label or label in features:
        raise InputError("the label must be a non-empty name that is not a feature")
    if len(scaling) != len(features):
        raise InputError("scaling needs one (mean, std) per feature")
    for mean, std in scaling:
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise InputError("scaling needs finite means and positive finite stds")


class ModelRegistry:
    """Released models under ``root``, named by their weights hash.

    Parameters
    ----------
    root
        Directory of the registry (created, mode 0700, if missing).
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def root(self) -> Path:
        """The registry's directory."""
        return self._root

    def _directory(self, model_hash: str) -> Path:
        if not is_hex64(model_hash):
            raise InputError(f"{model_hash!r} is not a model hash (64 lowercase hex characters)")
        return self._root / model_hash

    def __contains__(self, model_hash: object) -> bool:
        """Whether a model with this hash is registered."""
        if not is_hex64(model_hash):
            return False
        return (self._root / model_hash / "model.json").is_file()

    def put(
        self,
        spec: ModelSpec,
        weights: Weights,
        *,
        features: Sequence[str],
        label: str,
        scaling: Sequence[tuple[float, float]],
        card: Mapping[str, Any],
    ) -> str:
        """Register a model; return its hash. Registering the same model again is a no-op.

        Raises
        ------
        InputError
            If the weights do not match ``spec``, the schema is inconsistent, the card is not
            canonical JSON, or the same weights are registered with other metadata.
        """
        features = tuple(features)
        scaling_pairs = tuple((float(m), float(s)) for m, s in scaling)
        _check_model(spec, weights, features, label, scaling_pairs)
        model_hash = weights_hash(weights)
        description = _description(spec, features, label, scaling_pairs, card)
        document = {
            "format": _FORMAT,
            "model_hash": model_hash,
            **description,
            "card_hash": canonical_hash(dict(card)),
            "description_hash": canonical_hash(description),
        }
        encoded = canonical_json(document)
        target = self._directory(model_hash)
        if model_hash in self:
            existing = self.get(model_hash)
            if existing.description_hash != document["description_hash"]:
                raise InputError(
                    f"model {model_hash} is already registered with other metadata; "
                    "register changed metadata as a new release"
                )
            return model_hash
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self._root))
        try:
            _write_synced(staging / "weights.npz", weights_to_bytes(weights))
            _write_synced(staging / "model.json", encoded)
            try:
                os.rename(staging, target)
            except OSError:
                if model_hash not in self:  # not a concurrent put of the same model
                    raise
            _sync_directory(self._root)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return model_hash

    def get(self, model_hash: str) -> ReleasedModel:
        """Read and verify a model.

        Raises
        ------
        InputError
            If the hash is malformed or no such model is registered.
        LedgerIntegrityError
            If the stored files were modified: weights that hash to something else,
            metadata that does not match its recorded hashes, or unreadable files.
        """
        directory = self._directory(model_hash)
        try:
            raw_document = (directory / "model.json").read_bytes()
            raw_weights = (directory / "weights.npz").read_bytes()
        except FileNotFoundError as err:
            raise NotFound(f"no released model {model_hash}") from err

        def corrupt(reason: str) -> LedgerIntegrityError:
            return LedgerIntegrityError(f"model registry: model {model_hash}: {reason}")

        try:
            weights = weights_from_bytes(raw_weights)
        except InputError as err:
            raise corrupt(f"weights.npz is unreadable ({err})") from err
        actual = weights_hash(weights)
        if actual != model_hash:
            raise corrupt(f"weights hash to {actual}; the weights file was modified")
        try:
            document = json.loads(raw_document)
            if document.get("format") != _FORMAT or document.get("model_hash") != model_hash:
                raise ValueError("wrong format or model hash")
            spec = ModelSpec.from_dict(document["spec"])
            features = tuple(str(f) for f in document["features"])
            label = str(document["label"])
            scaling = tuple((float(m), float(s)) for m, s in document["scaling"])
            card = document["card"]
            if not isinstance(card, dict):
                raise ValueError("card is not an object")
        except (ValueError, KeyError, TypeError, InputError) as err:
            raise corrupt(f"model.json is malformed ({err})") from err
        description = _description(spec, features, label, scaling, card)
        if canonical_hash(description) != document.get("description_hash"):
            raise corrupt("model.json does not match its description hash; it was modified")
        if canonical_hash(card) != document.get("card_hash"):
            raise corrupt("the model card does not match its card hash; it was modified")
        try:
            _check_model(spec, weights, features, label, scaling)
        except InputError as err:
            raise corrupt(str(err)) from err
        return ReleasedModel(model_hash, spec, weights, features, label, scaling, card)

    # --- explanations (#19) -----------------------------------------------------------
    def put_explanation(self, model_hash: str, report: Mapping[str, Any], plot: bytes) -> str:
        """Keep an explanation report and its SVG plot beside the model; return its hash.

        Stored as ``ROOT/<model_hash>/explanations/<report_hash>.json`` and ``.svg``.

        Raises
        ------
        NotFound
            If no such model is registered.
        """
        directory = self._directory(model_hash)
        if model_hash not in self:
            raise NotFound(f"no released model {model_hash}")
        folder = directory / "explanations"
        folder.mkdir(exist_ok=True, mode=0o700)
        encoded = canonical_json(dict(report))
        report_hash = canonical_hash(dict(report))
        for suffix, data in ((".svg", plot), (".json", encoded)):
            path = folder / f"{report_hash}{suffix}"
            if not path.exists():
                staged = folder / f".incoming-{report_hash}{suffix}"
                staged.unlink(missing_ok=True)
                _write_synced(staged, data)
                os.replace(staged, path)
        return report_hash

    def explanation(self, model_hash: str, report_hash: str) -> tuple[dict[str, Any], bytes]:
        """An explanation report (re-hashed on read) and its SVG plot.

        Raises
        ------
        NotFound
            If it is not stored.
        LedgerIntegrityError
            If the stored report does not hash to ``report_hash``.
        """
        if not is_hex64(report_hash):
            raise InputError(f"{report_hash!r} is not a report hash")
        folder = self._directory(model_hash) / "explanations"
        try:
            raw = (folder / f"{report_hash}.json").read_bytes()
            plot = (folder / f"{report_hash}.svg").read_bytes()
        except FileNotFoundError as err:
            raise NotFound(f"no explanation {report_hash} of model {model_hash}") from err
        try:
            report = json.loads(raw)
        except ValueError as err:
            raise LedgerIntegrityError(f"explanation {report_hash} is unreadable") from err
        if not isinstance(report, dict) or canonical_hash(report) != report_hash:
            raise LedgerIntegrityError(
                f"explanation {report_hash} of model {model_hash} was modified"
            )
        return report, plot

    def list(self) -> list[str]:
        """Hashes of the registered models, sorted."""
        return sorted(
            entry.name
            for entry in self._root.iterdir()
            if is_hex64(entry.name) and (entry / "model.json").is_file()
        )


class ReleasedModels(ModelRegistry):
    """The registry as clients see it: only the models the ledger records as released.

    A model whose files are in the registry but whose ``model.released`` was never
    recorded (a release that failed half-way, files copied in by hand) is neither listed,
    nor read, nor served.

    Parameters
    ----------
    registry
        The registry to read.
    is_released
        Whether the ledger holds ``model.released`` for a hash.
    """

    def __init__(self, registry: ModelRegistry, is_released: Callable[[str], bool]) -> None:
        super().__init__(registry.root)
        self._is_released = is_released

    def __contains__(self, model_hash: object) -> bool:
        """Whether the model is registered and released."""
        return (
            super().__contains__(model_hash)
            and isinstance(model_hash, str)
            and self._is_released(model_hash)
        )

    def get(self, model_hash: str) -> ReleasedModel:
        """Read and verify a released model.

        Raises
        ------
        InputError
            If the hash is malformed, or no such model was released.
        LedgerIntegrityError
            As :meth:`ModelRegistry.get`.
        """
        self._directory(model_hash)  # refuses a malformed hash
        if not self._is_released(model_hash):
            raise NotFound(f"no released model {model_hash}")
        return super().get(model_hash)

    def list(self) -> list[str]:
        """Hashes of the released models, sorted."""
        return [h for h in super().list() if self._is_released(h)]


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
