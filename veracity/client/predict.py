"""Encrypted prediction from the requester's side: read, check, encrypt, send, decrypt.

The flow behind ``veracity predict``: fetch the model's public description, check a
patients CSV against the model's features, standardise with the published scaling,
encrypt locally under a fresh CKKS secret key (which never leaves this process), send
request envelopes, verify and decrypt the responses, and turn logits into probabilities
and decisions. The HTTP transport is :class:`InferenceClient` (httpx); everything else is
plain Python over :mod:`veracity.he`.
"""

from __future__ import annotations

import csv
import math
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from veracity.api_options import api_base
from veracity.errors import ConfigError, CryptoError, InputError, QueryBudgetExceeded
from veracity.he.contexts import SecretContext
from veracity.he.layouts import ModelShape, layout_for
from veracity.he.params import CKKSParameterSet, PackingLayout, parameter_set_named
from veracity.he.wire import (
    CONTENT_TYPE,
    DEFAULT_LIMITS,
    Query,
    RequestHeader,
    WireLimits,
    body_hash,
    decode_response,
    encode_request,
)

__all__ = [
    "ModelDescription",
    "PatientTable",
    "Prediction",
    "Contributions",
    "InferenceClient",
    "read_patients_csv",
    "read_images",
    "standardise_images",
    "standardise",
    "plan_batches",
    "predict_encrypted",
    "contributions_encrypted",
    "sigmoid",
    "softmax",
]

#: Public contexts at most this large travel inline with every request; larger ones
#: (Galois keys) are uploaded once and referenced by hash.
INLINE_CONTEXT_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class LayoutChoice:
    """A layout the server accepts and its largest batch."""

    layout: PackingLayout
    max_batch: int
    rotation_steps: tuple[int, ...] = ()
    #: The parameter set the layout runs under when it is not the model's (cnn2d's
    #: im2col), and the hash of its exact parameters.
    parameter_set: CKKSParameterSet | None = None
    he_params_hash: str = ""


@dataclass(frozen=True)
class ModelDescription:
    """The public description of a released model (``GET /inference/models/{hash}``)."""

    model_hash: str
    family: str
    n_features: int
    hidden: int
    features: tuple[str, ...]
    label: str
    scaling: tuple[tuple[float, float], ...]
    parameter_set: CKKSParameterSet
    he_params_hash: str
    small: LayoutChoice
    batch: LayoutChoice
    threshold: float
    #: Class names in output order (two for a binary model, whose one logit is the second's).
    classes: tuple[str, ...] = ("0", "1")
    #: The shape of one input (``(n_features,)`` for table rows).
    input_shape: tuple[int, ...] = ()
    #: Image models: what pixel values are divided by before the per-channel scaling.
    intensity_max: float | None = None
    #: The largest request envelope the server accepts.
    max_request_bytes: int = DEFAULT_LIMITS.max_request_bytes
    #: ``cnn2d``: the two filter counts and the kernel (what the im2col layout needs).
    filters: tuple[int, ...] = ()
    kernel: int = 0
    #: Linear models: the layout and largest batch of a per-feature contributions request
    #: (``None``: the server does not offer contributions for this model).
    contributions: LayoutChoice | None = None

    def shape(self) -> ModelShape:
        """What a layout needs to know about the model."""
        return ModelShape(
            self.n_features,
            self.hidden,
            self.outputs,
            input_shape=self.input_shape if self.images else (),
            filters=self.filters,
            kernel=self.kernel,
        )

    def parameters(self, choice: LayoutChoice) -> tuple[CKKSParameterSet, str]:
        """The parameter set and parameters hash ``choice`` runs under."""
        if choice.parameter_set is None:
            return self.parameter_set, self.he_params_hash
        return choice.parameter_set, choice.he_params_hash

    @property
    def images(self) -> bool:
        """Whether one input is an image ``(channels, height, width)``."""
        return len(self.input_shape) == 3

    @property
    def outputs(self) -> int:
        """Logits per patient: 1 for two classes, else one per class."""
        return 1 if len(self.classes) == 2 else len(self.classes)

    @classmethod
    def from_json(cls, document: Any, *, expected_hash: str) -> ModelDescription:
        """Parse and check a description.

        Raises
        ------
        InputError
            If the document is not a consistent description of ``expected_hash``.
        CryptoError
            If it names a parameter set this client does not know or describes it
            differently (a server cannot talk the client into weaker parameters).
        """
        try:
            if document["model_hash"] != expected_hash:
                raise InputError(
                    f"the server described model {document['model_hash']}, not {expected_hash}"
                )
            model = document["model"]
            he = document["he"]
            described = he["parameter_set"]
            parameter_set = parameter_set_named(str(described["name"]))
            if described != parameter_set.describe():
                raise CryptoError(
                    f"the server describes {parameter_set.name} differently from this client"
                )
            layouts = he["layouts"]
            small, batch = layouts["small"], layouts["batch"]
            small_set: CKKSParameterSet | None = None
            if "parameter_set" in small:
                small_set = parameter_set_named(str(small["parameter_set"]["name"]))
                if small["parameter_set"] != small_set.describe():
                    raise CryptoError(
                        f"the server describes {small_set.name} differently from this client"
                    )
            description = cls(
                model_hash=expected_hash,
                family=str(model["family"]),
                n_features=int(model["n_features"]),
                hidden=int(model.get("hidden", 0)),
                features=tuple(str(f) for f in document["features"]),
                label=str(document["label"]),
                scaling=tuple((float(m), float(s)) for m, s in document["scaling"]),
                parameter_set=parameter_set,
                he_params_hash=str(he["he_params_hash"]),
                small=LayoutChoice(
                    PackingLayout(small["name"]),
                    int(small["max_batch"]),
                    tuple(int(s) for s in small.get("rotation_steps", ())),
                    small_set,
                    str(small.get("he_params_hash", "")),
                ),
                batch=LayoutChoice(PackingLayout(batch["name"]), int(batch["max_batch"])),
                threshold=float(document.get("decision_threshold", 0.5)),
                classes=tuple(str(c) for c in document.get("classes", ("0", "1"))),
                input_shape=tuple(
                    int(d) for d in document.get("input_shape", (int(model["n_features"]),))
                ),
                intensity_max=(
                    None
                    if document.get("intensity_max") is None
                    else float(document["intensity_max"])
                ),
                max_request_bytes=int(
                    document.get("wire", {}).get(
                        "max_request_bytes", DEFAULT_LIMITS.max_request_bytes
                    )
                ),
                filters=tuple(int(f) for f in model.get("filters", ())),
                kernel=int(model.get("kernel", 0)),
                contributions=(
                    LayoutChoice(
                        PackingLayout(he["contributions"]["layout"]),
                        int(he["contributions"]["max_batch"]),
                    )
                    if "contributions" in he
                    else None
                ),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"malformed model description from the server: {err}") from err
        for named in (parameter_set, description.small.parameter_set):
            if named is not None and named.family != description.family:
                raise CryptoError(f"{named.name} does not serve {description.family} models")
        # Table models scale each feature; image models each channel (their features).
        scaled = description.input_shape[0] if description.images else description.n_features
        if len(description.features) != scaled or len(description.scaling) != len(
            description.features
        ):
            raise InputError("the model description's features and scaling do not match")
        if description.batch.max_batch < 1 or description.small.max_batch < 0:
            raise InputError("the model description has no usable batch layout")
        if len(description.classes) < 2 or len(set(description.classes)) != len(
            description.classes
        ):
            raise InputError("the model description needs two or more distinct class names")
        if math.prod(description.input_shape) != description.n_features:
            raise InputError("the model description's input shape does not hold its features")
        return description


@dataclass(frozen=True)
class PatientTable:
    """Rows read from a patients CSV: identifiers (or row numbers) and raw features."""

    id_column: str
    ids: tuple[str, ...]
    values: npt.NDArray[np.float64]


def read_patients_csv(
    path: Path, features: Sequence[str], *, id_column: str | None = None
) -> PatientTable:
    """Read ``path`` and check its columns against ``features``.

    The CSV must have a header with exactly the model's features (any order), plus
    ``id_column`` if given; every feature cell must be a finite number.

    Raises
    ------
    InputError
        Naming the missing, extra, duplicated or non-numeric column (and the row), or if the
        file is empty or unreadable as UTF-8 CSV.
    ConfigError
        If the file does not exist.
    """
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such file") from err
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration as err:
            raise InputError(f"{path} is empty; expected a header row") from err
        except (csv.Error, UnicodeDecodeError) as err:
            raise InputError(f"{path} is not a readable CSV: {err}") from err
        names = [name.strip() for name in header]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InputError(f"{path}: column {duplicates[0]!r} appears more than once")
        missing = [f for f in features if f not in names]
        if missing:
            raise InputError(
                f"{path}: missing column {missing[0]!r} (the model needs {len(features)} "
                f"features; {len(missing)} missing)"
            )
        allowed = set(features) | ({id_column} if id_column else set())
        extra = [n for n in names if n not in allowed]
        if extra:
            raise InputError(
                f"{path}: column {extra[0]!r} is not a feature of this model; remove it"
                + ("" if id_column else " or name it with --id-column")
            )
        if id_column and id_column not in names:
            raise InputError(f"{path}: missing id column {id_column!r}")
        positions = [names.index(f) for f in features]
        id_position = names.index(id_column) if id_column else None
        ids: list[str] = []
        rows: list[list[float]] = []
        try:
            for number, record in enumerate(reader, start=1):
                if not record or all(not cell.strip() for cell in record):
                    continue
                if len(record) != len(names):
                    raise InputError(
                        f"{path}: row {number} has {len(record)} fields, the header {len(names)}"
                    )
                row = []
                for feature, position in zip(features, positions, strict=True):
                    cell = record[position].strip()
                    try:
                        value = float(cell)
                    except ValueError:
                        value = math.nan
                    if not math.isfinite(value):
                        raise InputError(
                            f"{path}: row {number}, column {feature!r}: {cell!r} is not a number"
                        )
                    row.append(value)
                rows.append(row)
                ids.append(record[id_position] if id_position is not None else str(number))
        except (csv.Error, UnicodeDecodeError) as err:
            raise InputError(f"{path} is not a readable CSV: {err}") from err
    if not rows:
        raise InputError(f"{path} has a header but no patients")
    return PatientTable(
        id_column=id_column or "row", ids=tuple(ids), values=np.asarray(rows, dtype=np.float64)
    )


def standardise(
    values: npt.NDArray[np.float64],
    scaling: Sequence[tuple[float, float]],
    *,
    features: Sequence[str],
    bound: float,
    ids: Sequence[str],
) -> npt.NDArray[np.float64]:
    """``(x - mean) / std`` per feature, refusing values outside ``+-bound``.

    Raises
    ------
    InputError
        If ``values`` does not have one column per scaled feature, or naming the first row
        and column whose standardised value exceeds the bound (a value in the wrong unit,
        usually).
    """
    means = np.array([m for m, _ in scaling], dtype=np.float64)
    stds = np.array([s for _, s in scaling], dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != means.shape[0]:
        raise InputError(
            f"the model takes {means.shape[0]} features per patient; got an array of shape "
            f"{values.shape}"
        )
    z = (values - means) / stds
    outside = np.argwhere(np.abs(z) > bound)
    if outside.size:
        row, column = (int(v) for v in outside[0])
        raise InputError(
            f"row {ids[row]}, column {features[column]!r}: {values[row, column]:g} is "
            f"{z[row, column]:+.1f} standard deviations from the study mean, outside the "
            f"+-{bound:g} the encrypted model accepts; check its unit"
        )
    return np.asarray(z, dtype=np.float64)


def read_images(path: Path, *, input_shape: tuple[int, ...]) -> PatientTable:
    """Images to score: a folder of PNG or DICOM files, or an NPZ file with ``x``.

    A folder contributes every ``.png``, ``.dcm`` and ``.dicom`` file (sub-folders included),
    in name order, each identified by its path in the folder; an NPZ's ``x`` has shape
    ``(images, height, width)`` or ``(images, channels, height, width)`` and its images are
    numbered from 1. Every image must have the model's ``(channels, height, width)``.

    Raises
    ------
    InputError
        Naming the first file that does not decode or has another geometry, or if there is
        no image at all.
    ConfigError
        If the path does not exist.
    """
    from veracity.client.images import IMAGE_SUFFIXES, decode_image
    from veracity.client.records import read_source
    from veracity.client.signals import load_npz, npz_floats

    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    source = read_source(path)
    expected = tuple(int(d) for d in input_shape)
    if source.directory:
        names = sorted(n for n in source.files if n.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise InputError(f"{path}: no .png or .dcm images in the folder")
        images = []
        for name in names:
            pixels = decode_image(name, source.files[name])
            if pixels.shape != expected:
                raise InputError(
                    f"{name}: {pixels.shape[2]}x{pixels.shape[1]} with {pixels.shape[0]} "
                    f"channel(s); the model takes {expected[2]}x{expected[1]} with {expected[0]}"
                )
            images.append(pixels.reshape(-1))
        return PatientTable("image", tuple(names), np.stack(images))
    name = path.name
    if not name.lower().endswith(".npz"):
        raise InputError(f"{name}: images are a folder of PNG or DICOM files, or an .npz file")
    arrays = load_npz(name, source.single())
    if "x" not in arrays:
        raise InputError(f"{name}: holds no array 'x'; found {sorted(arrays)}")
    x = npz_floats(name, arrays["x"], "image, channel, row, column")
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim != 4 or x.shape[0] == 0 or x.shape[1:] != expected:
        geometry = ", ".join(str(d) for d in expected)
        raise InputError(f"{name}: x has shape {x.shape}; the model takes (images, {geometry})")
    ids = tuple(str(i) for i in range(1, x.shape[0] + 1))
    return PatientTable("image", ids, x.reshape(x.shape[0], -1))


def standardise_images(
    values: npt.NDArray[np.float64], description: ModelDescription, *, ids: Sequence[str]
) -> npt.NDArray[np.float64]:
    """Pixels divided by the model's ``intensity_max``, then ``(x - mean) / std`` per channel.

    Raises
    ------
    InputError
        If the model does not say how to scale its pixels, or naming the first image and
        channel whose scaled value exceeds the parameter set's input bound.
    """
    if description.intensity_max is None:
        raise InputError("the model's card does not say what its pixel values are divided by")
    channels = description.input_shape[0]
    x = values.reshape(values.shape[0], channels, -1) / description.intensity_max
    means = np.array([m for m, _ in description.scaling], dtype=np.float64)[None, :, None]
    stds = np.array([s for _, s in description.scaling], dtype=np.float64)[None, :, None]
    z = (x - means) / stds
    bound = description.parameter_set.input_bound
    outside = np.argwhere(np.abs(z) > bound)
    if outside.size:
        image, channel, _ = (int(v) for v in outside[0])
        raise InputError(
            f"image {ids[image]}, channel {description.features[channel]!r}: a pixel is "
            f"{z[image, channel].flat[int(np.abs(z[image, channel]).argmax())]:+.1f} standard "
            f"deviations from the study mean, outside the +-{bound:g} the encrypted model "
            f"accepts; check the images' bit depth"
        )
    return np.asarray(z.reshape(values.shape[0], -1), dtype=np.float64)


def plan_batches(n: int, description: ModelDescription) -> list[tuple[LayoutChoice, int, int]]:
    """Split ``n`` patients into requests: full batch-layout requests, then a small one.

    The small-batch layout takes whatever remains once at most its ``max_batch`` patients
    are left (the crossover the server publishes; 0 when the model is too wide for it);
    everything before goes in batches.
    """
    plan: list[tuple[LayoutChoice, int, int]] = []
    start = 0
    while start < n:
        remaining = n - start
        if remaining <= description.small.max_batch:
            plan.append((description.small, start, n))
            break
        stop = start + min(description.batch.max_batch, remaining)
        plan.append((description.batch, start, stop))
        start = stop
    return plan


def softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Row-wise softmax of ``(n, k)`` logits, without overflow."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float64)


def sigmoid(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The logistic function, without overflow for large ``|logit|``."""
    out = np.empty_like(logits)
    positive = logits >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-logits[positive]))
    exp = np.exp(logits[~positive])
    out[~positive] = exp / (1.0 + exp)
    return out


@dataclass(frozen=True)
class Prediction:
    """Decrypted scores for the patients of one input, in input order.

    For a two-class model ``logits`` and ``probabilities`` are the positive class's,
    shape ``(n,)``, and ``decisions`` are 0 or 1; for k classes they have shape ``(n, k)``
    (softmax, computed here) and ``decisions`` are class indices (argmax).
    """

    model_hash: str
    logits: npt.NDArray[np.float64]
    probabilities: npt.NDArray[np.float64]
    decisions: npt.NDArray[np.int64]
    requests: int
    bytes_sent: int


class InferenceClient:
    """HTTP transport to the inference routes of a Veracity server.

    Parameters
    ----------
    base_url
        The API base, e.g. ``https://coordinator.example:8443/api/v1``; a bare server URL
        (no path) means its ``/api/v1``.
    token
        Bearer token.
    ca_cert
        PEM file of a private CA to trust for HTTPS (instead of the system store).
    timeout
        Seconds per HTTP call.
    limits
        Size limits for responses.
    audit
        Keep every request body sent in :attr:`sent` (for secret-key leak checks).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str,
        ca_cert: Path | None = None,
        timeout: float = 300.0,
        limits: WireLimits = DEFAULT_LIMITS,
        audit: bool = False,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"server URL {base_url!r} must start with http:// or https://")
        verify: ssl.SSLContext | bool = True
        if ca_cert is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca_cert))
            except (OSError, ssl.SSLError) as err:
                raise ConfigError(f"cannot use CA certificate {ca_cert}: {err}") from err
        self._limits = limits
        # TCP_NODELAY: a request is headers then a large body; without it Nagle's algorithm
        # and delayed ACKs add tens of milliseconds to every small request.
        transport = httpx.HTTPTransport(
            verify=verify, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        self._http = httpx.Client(
            base_url=api_base(base_url),
            headers={"Authorization": f"Bearer {token}"},
            transport=transport,
            timeout=timeout,
        )
        #: Every request body sent, for leak audits (kept only when ``audit`` is set).
        self.sent: list[bytes] | None = [] if audit else None
        self._uploaded: set[str] = set()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as err:
            hint = " (for a private CA pass --ca-cert)" if "CERTIFICATE" in str(err).upper() else ""
            raise ConfigError(f"cannot reach {self._http.base_url}: {err}{hint}") from err
        except httpx.HTTPError as err:
            raise ConfigError(f"HTTP error talking to {self._http.base_url}: {err}") from err
        if response.status_code < 400:
            return response
        try:  # a problem document (RFC 9457) with the server's stable ``code``
            problem = response.json()
            detail, code = str(problem.get("detail", "")), str(problem.get("code", ""))
        except (ValueError, AttributeError):
            detail, code = response.text[:200], ""
        if code == "budget_exhausted":
            raise QueryBudgetExceeded(f"the server refused the request: {detail}")
        if response.status_code == 429:
            retry = response.headers.get("Retry-After", "")
            raise QueryBudgetExceeded(
                f"the server refused the request: {detail}",
                retry_after=float(retry) if retry.isdigit() else 1.0,
            )
        if response.status_code in (401, 403):
            raise ConfigError(f"the server refused the token ({response.status_code})")
        message = f"server refused the request ({response.status_code}): {detail}"
        if response.status_code >= 500:
            raise ConfigError(message)
        if code == "crypto_refused":
            raise CryptoError(message)
        raise InputError(message)

    def describe(self, model_hash: str) -> ModelDescription:
        """Fetch and check the model's public description."""
        response = self._call("GET", f"/inference/models/{model_hash}")
        try:
            document = response.json()
        except ValueError as err:
            raise InputError("the server's model description is not JSON") from err
        return ModelDescription.from_json(document, expected_hash=model_hash)

    def upload_context(self, context: bytes) -> str:
        """Upload a public context; return the hash the server acknowledged."""
        if body_hash(context) in self._uploaded:
            return body_hash(context)
        self._record(context)
        response = self._call(
            "POST", "/inference/contexts", content=context, headers={"Content-Type": CONTENT_TYPE}
        )
        acknowledged = str(response.json().get("context_hash", ""))
        if acknowledged != body_hash(context):
            raise CryptoError("the server acknowledged a different context hash")
        self._uploaded.add(acknowledged)
        return acknowledged

    def has_uploaded(self, context_hash: str) -> bool:
        """Whether this client already uploaded the context with this hash."""
        return context_hash in self._uploaded

    def forget_upload(self, context_hash: str) -> None:
        """Upload the context with this hash again next time (the server lost it)."""
        self._uploaded.discard(context_hash)

    def predict(self, model_hash: str, request: bytes) -> bytes:
        """Send one request envelope; return the response envelope."""
        self._record(request)
        response = self._call(
            "POST",
            f"/inference/models/{model_hash}/predict",
            content=request,
            headers={"Content-Type": CONTENT_TYPE},
        )
        if len(response.content) > self._limits.max_response_bytes:
            raise InputError("the server's response exceeds the response size limit")
        return response.content

    def _record(self, body: bytes) -> None:
        if self.sent is not None:
            self.sent.append(body)


def _secrets(
    description: ModelDescription, secret: SecretContext | None
) -> dict[str, SecretContext]:
    """Secret contexts by parameter-set name, starting with ``secret`` if given."""
    secrets: dict[str, SecretContext] = {}
    if secret is not None:
        if secret.parameter_set != description.parameter_set:
            raise CryptoError("the secret context's parameter set is not the model's")
        secrets[secret.parameter_set.name] = secret
    return secrets


def _exchange(
    client: InferenceClient,
    description: ModelDescription,
    secrets: dict[str, SecretContext],
    choice: LayoutChoice,
    x: npt.NDArray[np.float64],
    query: Query,
) -> tuple[npt.NDArray[np.float64], int]:
    """Encrypt ``x``, send one request, check and decrypt the answer; bytes sent too.

    The decrypted outputs are the logits (``query`` prediction) or ``(batch, k * d)``
    contributions, class by class.
    """
    ps, params_hash = description.parameters(choice)
    if ps.name not in secrets:
        secrets[ps.name] = SecretContext.generate(ps)
    secret_for = secrets[ps.name]
    if secret_for.he_params_hash != params_hash:
        raise CryptoError("the server's HE parameters differ from this client's")
    shape = description.shape()
    batch = x.shape[0]
    sent = 0
    context = secret_for.public_context(rotation_steps=choice.rotation_steps)
    context_hash = secret_for.context_hash(rotation_steps=choice.rotation_steps)
    inline: bytes | None = context
    if len(context) > INLINE_CONTEXT_MAX_BYTES:
        if not client.has_uploaded(context_hash):
            client.upload_context(context)
            sent += len(context)
        inline = None
    ciphertexts = secret_for.encrypt(choice.layout, x, hidden=description.hidden, shape=shape)
    header = RequestHeader(
        model_hash=description.model_hash,
        parameter_set=ps.name,
        context_hash=context_hash,
        layout=choice.layout,
        batch_size=batch,
        query=query,
    )
    request = encode_request(header, ciphertexts, context=inline)
    try:
        reply = client.predict(description.model_hash, request)
    except InputError as err:
        if inline is not None or "not known here" not in str(err):
            raise
        # The server no longer knows the uploaded context (evicted, or a worker that
        # cannot see it): upload it again, once.
        client.forget_upload(context_hash)
        client.upload_context(context)
        sent += len(context)
        reply = client.predict(description.model_hash, request)
    answer, results = decode_response(reply)
    sent += len(request)
    if (
        answer.request_hash != body_hash(request)
        or answer.model_hash != description.model_hash
        or answer.layout is not choice.layout
        or answer.batch_size != batch
        or answer.query is not query
        or answer.he_params_hash != secret_for.he_params_hash
    ):
        raise CryptoError("the server's response does not answer the request that was sent")
    outputs = description.outputs
    if query is Query.CONTRIBUTIONS:
        outputs *= description.n_features
        shape = ModelShape(description.n_features, outputs=outputs)
    values = secret_for.decrypt(
        choice.layout,
        results,
        batch_size=batch,
        n_features=shape.n_features,
        hidden=description.hidden,
        outputs=outputs,
        shape=shape,
    )
    return values, sent


def predict_encrypted(
    client: InferenceClient,
    description: ModelDescription,
    features: npt.NDArray[np.float64],
    *,
    secret: SecretContext | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Prediction:
    """Encrypt standardised ``features``, query the server batch by batch, decrypt.

    Parameters
    ----------
    client
        Transport to the server.
    description
        The model's description (from :meth:`InferenceClient.describe`).
    features
        Standardised features, patients x ``description.n_features``.
    secret
        The CKKS secret context to use (a fresh one by default; it never leaves the process).
    on_batch
        Called with the number of patients after each answered request (progress).

    Raises
    ------
    CryptoError
        If a response does not answer the request that was sent, was made under other
        parameters or does not decrypt.
    InputError
        If ``features`` is not a (patients, ``description.n_features``) array, or the
        server refuses a request.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != description.n_features:
        raise InputError(
            f"the model takes {description.n_features} features per patient "
            f"({', '.join(description.features[:3])}, ...); got an array of shape {x.shape}"
        )
    outputs = description.outputs
    plan = plan_batches(x.shape[0], description)
    shape = description.shape()
    for choice, start, stop in plan:
        ps, _ = description.parameters(choice)
        # A fresh seeded ciphertext is one polynomial of uniform residues over the data
        # primes, so at least N * sum(bits) / 8 bytes whatever the compression: refuse a
        # request the server's limit cannot take before encrypting anything (an image
        # model has one ciphertext per pixel in the batch layout).
        count = layout_for(choice.layout, ps, shape).ciphertext_count(stop - start)
        needed = count * ps.poly_modulus_degree * sum(ps.data_prime_bits) // 8
        if needed > description.max_request_bytes:
            raise InputError(
                f"a {choice.layout} request for this model carries {count} ciphertexts "
                f"(~{needed / 2**20:.0f} MiB), above the server's limit of "
                f"{description.max_request_bytes / 2**20:.0f} MiB per request"
            )
    secrets = _secrets(description, secret)
    logits = np.empty((x.shape[0], outputs) if outputs > 1 else x.shape[0], dtype=np.float64)
    requests = sent = 0
    for choice, start, stop in plan:
        logits[start:stop], size = _exchange(
            client, description, secrets, choice, x[start:stop], Query.PREDICTION
        )
        requests += 1
        sent += size
        if on_batch is not None:
            on_batch(stop - start)
    if outputs > 1:
        probabilities = softmax(logits)
        decisions = np.argmax(logits, axis=1).astype(np.int64)
    else:
        probabilities = sigmoid(logits)
        decisions = (probabilities >= description.threshold).astype(np.int64)
    return Prediction(description.model_hash, logits, probabilities, decisions, requests, sent)


@dataclass(frozen=True)
class Contributions:
    """Decrypted per-feature contributions ``w_j * x_j`` of the patients of one input.

    ``values`` has shape ``(n, d)`` for a two-class model (the positive class's logit)
    and ``(n, k, d)`` for k classes; a patient's contributions to a class sum to that
    class's logit minus the model's bias.
    """

    model_hash: str
    values: npt.NDArray[np.float64]
    requests: int
    bytes_sent: int


def contributions_encrypted(
    client: InferenceClient,
    description: ModelDescription,
    features: npt.NDArray[np.float64],
    *,
    secret: SecretContext | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Contributions:
    """Per-feature contributions to each patient's encrypted prediction (linear models).

    Each request carries at most the description's contributions ``max_batch`` patients
    and is charged d outputs for every patient its ciphertexts can carry: one answer with
    a nonzero feature vector gives the model's weights, so the budget counts it as d
    predictions per patient.

    Raises
    ------
    InputError
        If the model offers no contributions (not linear), ``features`` is not a
        (patients, ``description.n_features``) array, or the server refuses a request.
    CryptoError
        If a response does not answer the request that was sent or does not decrypt.
    """
    choice = description.contributions
    if choice is None or choice.max_batch < 1:
        raise InputError(
            f"model {description.model_hash[:16]}... ({description.family}) offers no "
            "per-feature contributions; they exist for linear models only"
        )
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != description.n_features:
        raise InputError(
            f"the model takes {description.n_features} features per patient; got an array "
            f"of shape {x.shape}"
        )
    secrets = _secrets(description, secret)
    d, k = description.n_features, description.outputs
    values = np.empty((x.shape[0], k * d), dtype=np.float64)
    requests = sent = 0
    for start in range(0, x.shape[0], choice.max_batch):
        stop = min(start + choice.max_batch, x.shape[0])
        answer, size = _exchange(
            client, description, secrets, choice, x[start:stop], Query.CONTRIBUTIONS
        )
        values[start:stop] = answer.reshape(stop - start, k * d)
        requests += 1
        sent += size
        if on_batch is not None:
            on_batch(stop - start)
    shaped = values if k == 1 else values.reshape(x.shape[0], k, d)
    return Contributions(description.model_hash, shaped, requests, sent)
