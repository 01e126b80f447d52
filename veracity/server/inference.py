"""The encrypted-inference service: wire request in, wire response out, one ledger record.

Plain Python (no web framework): :class:`InferenceService` takes request envelopes
(docs/inference-wire.md), checks them against the released model and the public-context
rules, evaluates the model on the ciphertexts with only public material, and hands the
``inference.served`` payload of every served batch to an injected recorder (the ledger on
the coordinator, a list in tests). The recorder sees the model hash, the requester, the HE
parameter hash, the batch size and the request hash; never features or scores (the server
never sees either in the clear).

A batch is recorded before its response is returned; if the recorder fails, the response
is withheld, so nothing is served unrecorded. Requests are evaluated one at a time per
process (TenSEAL holds the GIL): run one worker process per core.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from veracity.contracts.events import InferenceServed
from veracity.errors import CryptoError, InputError
from veracity.he.circuit import (
    Circuit,
    LinearCircuit,
    compile_circuit,
    compile_conv_circuit,
    contributions_circuit,
)
from veracity.he.layouts import (
    Im2colLayout,
    Layout,
    ModelShape,
    ReplicatedLayout,
    circuit_shape,
    evaluate_loaded,
    layout_for,
)
from veracity.he.params import (
    CKKSParameterSet,
    PackingLayout,
    he_params_hash,
    parameter_set_for,
    small_batch_parameters,
)
from veracity.he.public_context import PublicContext
from veracity.he.seal import RandomBytes, seal_primes
from veracity.he.wire import (
    CONTENT_TYPE,
    DEFAULT_LIMITS,
    WIRE_VERSION,
    Query,
    ResponseHeader,
    WireLimits,
    body_hash,
    decode_request,
    encode_response,
)
from veracity.server.registry import ModelRegistry, ReleasedModel

__all__ = ["Recorder", "Meter", "CountingMeter", "InferenceService"]

#: Receives the ``inference.served`` payload of each served batch; raises to refuse it.
Recorder = Callable[[InferenceServed], None]


class Meter(Protocol):
    """Charges predictions to a requester and model before they are computed."""

    def charge(self, requester: str, model_hash: str, patients: int) -> int:
        """Charge ``patients`` predictions; return the running total, this charge included.

        Raises
        ------
        QueryBudgetExceeded
            If the requester may not have them (budget spent, or over its rate).
        """
        ...


class CountingMeter:
    """Counts predictions per requester and model in this process, with no budget.

    For tests, benchmarks and the standalone app; the admin API charges through its
    database (``veracity.server.api.budget``), shared by every worker.
    """

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def charge(self, requester: str, model_hash: str, patients: int) -> int:
        """Add ``patients`` to the requester's count for the model; return the new total."""
        with self._lock:
            total = self._totals.get((requester, model_hash), 0) + patients
            self._totals[(requester, model_hash)] = total
            return total


@dataclass(frozen=True)
class _ServedModel:
    released: ReleasedModel
    parameter_set: CKKSParameterSet
    circuit: Circuit
    #: The small-batch layout's set and circuit where it runs under another set (cnn2d's
    #: im2col); None where the model does not fit that layout.
    small: tuple[CKKSParameterSet, Circuit] | None = None

    @property
    def hidden(self) -> int:
        return self.released.spec.hidden if self.released.spec.family == "poly_mlp" else 0

    @property
    def shape(self) -> ModelShape:
        if self.released.spec.family.convolutional:
            return circuit_shape(self.circuit)
        spec = self.released.spec
        return ModelShape(spec.n_features, self.hidden, spec.outputs)

    def under(self, layout: PackingLayout) -> tuple[CKKSParameterSet, Circuit] | None:
        """The parameter set and circuit ``layout`` runs under (None: not offered)."""
        ps = self.parameter_set
        if layout is ps.batch_layout:
            return ps, self.circuit
        if layout is not ps.small_batch_layout:
            return None
        if small_batch_parameters(ps) is ps:
            return ps, self.circuit
        return self.small

    def layout(self, layout: PackingLayout) -> Layout | None:
        """The model's implementation of ``layout`` (None: not offered for this model)."""
        found = self.under(layout)
        if found is None:
            return None
        try:
            return layout_for(layout, found[0], self.shape)
        except InputError:
            return None  # the network is too wide for this layout: batches only

    def capacity(self, layout: PackingLayout) -> int:
        """Most patients per request in ``layout`` for this model (0: layout unavailable)."""
        strategy = self.layout(layout)
        return 0 if strategy is None else strategy.capacity()

    def contributions(self) -> dict[str, Any] | None:
        """How per-feature contributions are asked for (linear models only; else None).

        One small-batch ciphertext per request: its patients times d outputs are charged,
        at most N (the smallest burst a deployment may set is one full batch).
        """
        if not isinstance(self.circuit, LinearCircuit):
            return None
        strategy = self.layout(self.parameter_set.small_batch_layout)
        if strategy is None:
            return None
        per_patient = self.circuit.n_features
        return {
            "layout": strategy.name.value,
            "max_batch": strategy.carried(1),
            "outputs_per_patient": per_patient,
        }

    def layouts(self) -> dict[str, Any]:
        ps = self.parameter_set
        small: dict[str, Any] = {
            "name": ps.small_batch_layout.value,
            "max_batch": self.capacity(ps.small_batch_layout),
        }
        strategy = self.layout(ps.small_batch_layout)
        if isinstance(strategy, ReplicatedLayout):
            small["rotation_steps"] = list(strategy.rotation_steps())
            small["patients_per_ciphertext"] = strategy.geometry.patients_per_ciphertext
        if isinstance(strategy, Im2colLayout):
            small["rotation_steps"] = list(strategy.rotation_steps())
        found = self.under(ps.small_batch_layout)
        if found is not None and found[0] is not ps:
            small["parameter_set"] = found[0].describe()
            small["he_params_hash"] = he_params_hash(found[0], seal_primes(found[0]))
        return {
            "small": small,
            "batch": {"name": ps.batch_layout.value, "max_batch": self.capacity(ps.batch_layout)},
        }


def _class_names(released: ReleasedModel) -> list[str]:
    """The model's class names in output order (its card's, else ``"0"``, ``"1"``, ...)."""
    named = released.card.get("classes")
    count = released.spec.classes
    if isinstance(named, list) and len(named) == count:
        return [str(name) for name in named]
    return [str(index) for index in range(count)]


def _intensity_max(released: ReleasedModel) -> float | None:
    """What an image model's pixels are divided by before scaling (its card's inputs)."""
    inputs = released.card.get("inputs")
    value = inputs.get("intensity_max") if isinstance(inputs, dict) else None
    return float(value) if isinstance(value, int | float) and value > 0 else None


class InferenceService:
    """Serve encrypted predictions for the models in a registry.

    Parameters
    ----------
    registry
        Where released models live.
    recorder
        Called with the ``inference.served`` payload of every batch before it is returned.
    limits
        Wire size limits.
    max_contexts
        Public contexts kept in memory (uploaded or inline), least recently used evicted.
    context_dir
        Where uploaded contexts are also stored, by hash, so that every worker process of a
        deployment (and a restarted one) knows them; they are re-checked when loaded.
    max_stored_contexts
        Uploaded contexts kept in ``context_dir``, least recently used removed.
    max_models
        Compiled models kept in memory.
    random_bytes
        Randomness for response masks (``os.urandom``; injectable for tests).
    meter
        Charges each request's capacity before it is evaluated (a :class:`CountingMeter`,
        without budget, unless given).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        recorder: Recorder,
        limits: WireLimits = DEFAULT_LIMITS,
        max_contexts: int = 16,
        context_dir: Path | None = None,
        max_stored_contexts: int = 256,
        max_models: int = 32,
        random_bytes: RandomBytes = os.urandom,
        meter: Meter | None = None,
    ) -> None:
        self._meter: Meter = meter if meter is not None else CountingMeter()
        self._registry = registry
        self._recorder = recorder
        self.limits = limits
        self._max_contexts = max_contexts
        self._context_dir = context_dir
        self._max_stored_contexts = max_stored_contexts
        if context_dir is not None:
            context_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._max_models = max_models
        self._random_bytes = random_bytes
        self._contexts: OrderedDict[str, PublicContext] = OrderedDict()
        self._models: OrderedDict[str, _ServedModel] = OrderedDict()
        self._lock = threading.RLock()

    def has_model(self, model_hash: str) -> bool:
        """Whether ``model_hash`` names a released model."""
        return model_hash in self._registry

    def _served(self, model_hash: str) -> _ServedModel:
        with self._lock:
            served = self._models.get(model_hash)
            if served is not None:
                self._models.move_to_end(model_hash)
                return served
        released = self._registry.get(model_hash)
        spec = released.spec
        circuit: Circuit
        small: tuple[CKKSParameterSet, Circuit] | None = None
        if spec.family.convolutional:
            if spec.family.value != "cnn2d" or spec.conv_activation != "square":
                what = (
                    "cnn2d with the scattering stem (its modulus and GroupNorm are not polynomials)"
                    if spec.scattering
                    else f"{spec.family.value} with {spec.conv_activation} (ReLU, max pooling "
                    "and GroupNorm are not polynomials)"
                )
                raise CryptoError(
                    "encrypted inference serves cnn2d models with square activations; model "
                    f"{model_hash[:12]} is {what}"
                )
            parameter_set = parameter_set_for(spec.family.value)

            def compiled(ps: CKKSParameterSet) -> Circuit:
                return compile_conv_circuit(
                    released.weights,
                    parameter_set=ps,
                    primes=seal_primes(ps),
                    input_shape=spec.input_shape,
                    filters=spec.filters,
                    kernel=spec.kernel,
                    outputs=spec.outputs,
                )

            circuit = compiled(parameter_set)
            small_ps = small_batch_parameters(parameter_set)
            if small_ps is not parameter_set:
                try:
                    small = (small_ps, compiled(small_ps))
                    layout_for(small_ps.small_batch_layout, small_ps, circuit_shape(small[1]))
                except (CryptoError, InputError):
                    small = None  # the model does not fit the small layout: batches only
        else:
            parameter_set = parameter_set_for(spec.family.value)
            circuit = compile_circuit(
                spec.family.value,
                released.weights,
                parameter_set=parameter_set,
                primes=seal_primes(parameter_set),
                n_features=spec.n_features,
                hidden=spec.hidden,
                activation=spec.activation,
                outputs=spec.outputs,
            )
        served = _ServedModel(released, parameter_set, circuit, small)
        with self._lock:
            self._models[model_hash] = served
            while len(self._models) > self._max_models:
                self._models.popitem(last=False)
        return served

    def describe(self, model_hash: str) -> dict[str, Any]:
        """The model's public description: what a requester needs to query it.

        Raises
        ------
        InputError
            If no such model is registered.
        CryptoError
            If the model cannot be served under its family's parameter set.
        """
        served = self._served(model_hash)
        released = served.released
        ps = served.parameter_set
        return {
            "model_hash": released.model_hash,
            "model": released.spec.to_dict(),
            "features": list(released.features),
            "label": released.label,
            "scaling": [[m, s] for m, s in released.scaling],
            "card": dict(released.card),
            "card_hash": released.card_hash,
            "classes": _class_names(released),
            "input_shape": list(released.spec.input_shape) or [released.spec.n_features],
            "intensity_max": _intensity_max(released),
            "decision_threshold": 0.5,
            "he": {
                "parameter_set": ps.describe(),
                "he_params_hash": he_params_hash(ps, seal_primes(ps)),
                "layouts": served.layouts(),
                **(
                    {"contributions": contributions}
                    if (contributions := served.contributions()) is not None
                    else {}
                ),
            },
            "wire": {
                "version": WIRE_VERSION,
                "content_type": CONTENT_TYPE,
                "max_request_bytes": self.limits.max_request_bytes,
                "max_context_bytes": self.limits.max_context_bytes,
            },
        }

    def _remember(self, context: PublicContext) -> None:
        with self._lock:
            self._contexts[context.context_hash] = context
            self._contexts.move_to_end(context.context_hash)
            while len(self._contexts) > self._max_contexts:
                self._contexts.popitem(last=False)

    def upload_context(self, data: bytes) -> str:
        """Accept a public context for later requests; return its hash.

        Raises
        ------
        CryptoError
            If it holds a secret key or its parameters are insecure or unknown.
        InputError
            If it is malformed, truncated or too large.
        """
        context = PublicContext.from_bytes(data, limits=self.limits)
        self._remember(context)
        self._store(context.context_hash, data)
        return context.context_hash

    def _stored_path(self, context_hash: str) -> Path | None:
        if self._context_dir is None:
            return None
        return self._context_dir / f"{context_hash}.context"

    def _store(self, context_hash: str, data: bytes) -> None:
        path = self._stored_path(context_hash)
        if path is None or self._context_dir is None:
            return
        if path.exists():
            os.utime(path)
            return
        fd, temporary = tempfile.mkstemp(dir=self._context_dir, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        stored = sorted(self._context_dir.glob("*.context"), key=lambda p: p.stat().st_mtime)
        for old in stored[: max(0, len(stored) - self._max_stored_contexts)]:
            old.unlink(missing_ok=True)

    def _load_stored(self, context_hash: str) -> PublicContext | None:
        path = self._stored_path(context_hash)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if body_hash(data) != context_hash:  # a damaged file: forget it
            path.unlink(missing_ok=True)
            return None
        os.utime(path)
        context = PublicContext.from_bytes(data, limits=self.limits)
        self._remember(context)
        return context

    def _context(self, context_hash: str, inline: bytes | None) -> PublicContext:
        if inline is not None:
            if body_hash(inline) != context_hash:
                raise InputError("the inline context does not hash to the request's context_hash")
            with self._lock:
                known = self._contexts.get(context_hash)
            if known is None:
                known = PublicContext.from_bytes(inline, limits=self.limits)
            self._remember(known)
            return known
        with self._lock:
            known = self._contexts.get(context_hash)
            if known is not None:
                self._contexts.move_to_end(context_hash)
                return known
        known = self._load_stored(context_hash)
        if known is not None:
            return known
        raise InputError(
            f"context {context_hash[:16]}... is not known here; upload it (or send it inline) first"
        )

    def serve(self, data: bytes, *, requester: str, model_hash: str | None = None) -> bytes:
        """Evaluate one request envelope; record the batch; return the response envelope.

        Parameters
        ----------
        data
            The request envelope.
        requester
            Who asks (the authenticated identity); recorded in ``inference.served``.
        model_hash
            If given (the model in the URL), the request must be for this model.

        Raises
        ------
        InputError
            If the request is malformed, truncated, oversized, for another or unknown model,
            references an unknown context, or its batch does not fit the layout.
        CryptoError
            If the context or ciphertexts do not match the model's parameter set, the
            layout does not serve the model, or the context holds a secret key.
        """
        if not requester:
            raise InputError("a request needs an authenticated requester")
        request_hash = body_hash(data)
        header, inline, ciphertexts = decode_request(data, limits=self.limits)
        if model_hash is not None and header.model_hash != model_hash:
            raise InputError(f"the request is for model {header.model_hash}, not {model_hash}")
        if header.model_hash not in self._registry:
            raise InputError(f"no released model {header.model_hash}")
        served = self._served(header.model_hash)
        ps = served.parameter_set
        sets = {ps.name} | ({served.small[0].name} if served.small is not None else set())
        if header.parameter_set not in sets:
            raise CryptoError(
                f"model {header.model_hash[:16]}... is served under {' or '.join(sorted(sets))}; "
                f"the request uses {header.parameter_set}"
            )
        if header.layout not in (ps.batch_layout, ps.small_batch_layout):
            raise CryptoError(
                f"layout {header.layout} does not serve {served.released.spec.family.value} "
                f"models; use {ps.batch_layout} or {ps.small_batch_layout}"
            )
        found = served.under(header.layout)
        strategy = served.layout(header.layout)
        if found is None or strategy is None:
            raise InputError(
                f"layout {header.layout} cannot hold this model; use {ps.batch_layout}"
            )
        layout_ps, circuit = found
        if header.parameter_set != layout_ps.name:
            raise CryptoError(
                f"model {header.model_hash[:16]}... is served under {layout_ps.name} in the "
                f"{header.layout} layout; the request uses {header.parameter_set}"
            )
        context = self._context(header.context_hash, inline)
        if context.parameter_set.name != layout_ps.name:
            raise CryptoError(
                f"the public context is for {context.parameter_set.name}; "
                f"this model needs {layout_ps.name}"
            )
        capacity = strategy.capacity()
        if header.batch_size > capacity:
            raise InputError(
                f"a batch of {header.batch_size} exceeds the {header.layout} layout's {capacity}"
            )
        expected = strategy.ciphertext_count(header.batch_size)
        if len(ciphertexts) != expected:
            raise InputError(
                f"a {header.layout} batch of {header.batch_size} needs {expected} ciphertexts, "
                f"got {len(ciphertexts)}"
            )
        per_patient = 1
        if header.query is Query.CONTRIBUTIONS:
            circuit = self._contributions(served, circuit, header.layout, len(ciphertexts))
            per_patient = served.released.spec.n_features
        # What is recorded (and charged) is what the ciphertexts can carry, not the
        # declared figure: only the declared patients' outputs leave, but a request is
        # never counted as less than its capacity. Contributions count d outputs each.
        carried = strategy.carried(len(ciphertexts))
        inputs = context.load_inputs(ciphertexts)  # malformed input is refused uncharged
        served_total = self._meter.charge(requester, header.model_hash, carried * per_patient)
        with self._lock:
            results = evaluate_loaded(
                context,
                circuit,
                header.layout,
                inputs,
                batch_size=header.batch_size,
                random_bytes=self._random_bytes,
            )
        response = encode_response(
            ResponseHeader(
                model_hash=header.model_hash,
                request_hash=request_hash,
                he_params_hash=context.he_params_hash,
                layout=header.layout,
                batch_size=header.batch_size,
                query=header.query,
            ),
            results,
        )
        # Optional field: set only for contributions (an unset field stays out of the entry).
        extra = {"contributions": per_patient} if header.query is Query.CONTRIBUTIONS else {}
        self._recorder(
            InferenceServed(
                model_hash=header.model_hash,
                requester=requester,
                he_params_hash=context.he_params_hash,
                batch_size=carried,
                request_hash=request_hash,
                served_total=served_total,
                **extra,
            )
        )
        return response

    def _contributions(
        self, served: _ServedModel, circuit: Circuit, layout: PackingLayout, ciphertexts: int
    ) -> LinearCircuit:
        """The contributions circuit of a linear model, if its response fits the limits."""
        if not isinstance(circuit, LinearCircuit):
            raise InputError(
                "per-feature contributions are served for linear (logistic) models only; "
                f"model {served.released.model_hash[:16]}... is "
                f"{served.released.spec.family.value}"
            )
        contributions = contributions_circuit(circuit)
        groups = ciphertexts if layout is PackingLayout.COEFFICIENT else 1
        results = groups * contributions.outputs
        ps = served.parameter_set
        result_bytes = 1024 + 2 * ps.poly_modulus_degree * len(ps.data_prime_bits) * 8
        if (
            results > self.limits.max_parts
            or results * result_bytes > self.limits.max_response_bytes
        ):
            raise InputError(
                f"contributions for {ciphertexts} {layout} ciphertexts would be {results} "
                f"results (~{results * result_bytes / 2**20:.0f} MiB), above the response "
                "limits; send one ciphertext per request"
            )
        return contributions
