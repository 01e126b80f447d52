"""A study: what is trained, on which columns, under which privacy terms, by whom.

The coordinator proposes a study (``study.proposed``); each site operator approves exactly
that document, identified by its :attr:`Study.study_hash` (SHA-256 of its RFC 8785
canonical JSON). A site agent trains only for a study whose hash, code hash and dataset
match what its operator approved.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from veracity.contracts.analysis import AnalysisStudy
from veracity.core.canonical import canonical_hash
from veracity.errors import InputError
from veracity.tasks.spec import ModelFamily, ModelSpec

__all__ = [
    "BINARY_CLASSES",
    "DEFAULT_MAX_WEIGHT_NORM",
    "ImagesInput",
    "SignalsInput",
    "DEFAULT_RUNS",
    "CentralDPConfig",
    "DPConfig",
    "TrainingConfig",
    "Study",
    "parse_study",
    "AnyStudy",
    "parse_any_study",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DPConfig(_Frozen):
    """Record-level DP-SGD terms every site trains under (Opacus, Poisson sampling)."""

    noise_multiplier: float = Field(gt=0, le=100)
    max_grad_norm: float = Field(gt=0, le=1000)
    delta: float = Field(gt=0, lt=1)
    accountant: Literal["prv"] = "prv"
    secure_mode: bool = False

    @field_validator("noise_multiplier", "max_grad_norm", "delta")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


class CentralDPConfig(_Frozen):
    """Client-level DP at the coordinator, on top of the sites' record-level DP-SGD.

    Each round the coordinator clips every site's update (its difference from the global
    model) to ``clipping_norm`` in L2, averages the clipped updates with equal weights and
    adds Gaussian noise of standard deviation ``noise_multiplier * clipping_norm / sites``
    (Flower's server-side fixed clipping). Flower's RDP accountant composes the rounds
    without sampling amplification (every approved site is asked every round), at ``delta``;
    the run stops before a round that would take epsilon past ``max_epsilon``. The unit is
    a site's whole contribution to the model updates, not one record: a different guarantee
    from :class:`DPConfig`, reported separately.
    """

    noise_multiplier: float = Field(gt=0, le=100)
    clipping_norm: float = Field(gt=0, le=1_000_000)
    max_epsilon: float = Field(gt=0, le=1_000_000)
    delta: float = Field(gt=0, lt=1)
    accountant: Literal["rdp"] = "rdp"

    @field_validator("noise_multiplier", "clipping_norm", "max_epsilon", "delta")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


def _is_none(value: object) -> bool:
    return value is None


#: The classes of a study that does not declare any: label values 0 and 1.
BINARY_CLASSES: tuple[str, ...] = ("0", "1")


def _is_binary(value: object) -> bool:
    return tuple(value) == BINARY_CLASSES if isinstance(value, tuple | list) else False


_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._()/-]{0,127}$"


class SignalsInput(_Frozen):
    """Recordings windowed at the site: what one example of a ``cnn1d`` study is.

    Each recording (a CSV file with a timestamp column, or a 2-D array) sampled at ``rate``
    Hz is cut into windows of ``window`` samples every ``hop`` samples, never across two
    recordings; a window's label is its most frequent per-sample label (ties go to the
    higher class index, so a window half in a freeze counts as a freeze). Data registered
    already windowed (``(windows, channels, steps)``) must have ``window`` steps and are
    used as they are. ``channels`` are the recording's columns the model reads, in order;
    the study's ``features`` repeat them and its ``scaling`` holds one ``(mean, std)`` per
    channel.
    """

    kind: Literal["signals"] = "signals"
    rate: float = Field(gt=0, le=1_000_000)
    channels: tuple[str, ...] = Field(min_length=1, max_length=1024)
    window: int = Field(ge=4, le=1_000_000)
    hop: int = Field(ge=1, le=1_000_000)

    @field_validator("rate")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


class ImagesInput(_Frozen):
    """Images of one geometry: what one example of a ``cnn2d`` study is.

    Every image must be ``height`` x ``width`` with ``channels`` channels (1: grey, 3: RGB);
    pixel values are divided by ``intensity_max`` (255 for 8-bit PNG, 4095 for 12-bit
    DICOM, 16 for scikit-learn's digits) and then standardised per channel with the
    study's ``scaling``. The study's ``features`` name the channels.
    """

    kind: Literal["images"] = "images"
    height: int = Field(ge=4, le=4096)
    width: int = Field(ge=4, le=4096)
    channels: Literal[1, 3] = 1
    intensity_max: float = Field(gt=0, le=1e9)


#: The bound on the global weights' L2 norm of a study that does not declare one.
DEFAULT_MAX_WEIGHT_NORM = 1000.0
#: The number of runs of a study that does not declare one.
DEFAULT_RUNS = 1


def _is_default_weight_norm(value: object) -> bool:
    return value == DEFAULT_MAX_WEIGHT_NORM


def _is_default_runs(value: object) -> bool:
    return value == DEFAULT_RUNS


class TrainingConfig(_Frozen):
    """Local optimisation each round: expected batch size, epochs, learning rate."""

    batch_size: int = Field(ge=1, le=100_000)
    local_epochs: int = Field(ge=1, le=100)
    learning_rate: float = Field(gt=0, le=100)


class Study(_Frozen):
    """The document the coordinator proposes and each site approves."""

    study_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    title: str = Field(default="", max_length=500)
    model: dict[str, Any]
    features: tuple[str, ...] = Field(min_length=1)
    label: str = Field(min_length=1)
    #: The label's values, in class-index order (the model's class ``i`` is ``classes[i]``).
    #: Left out of the document for two classes ``0`` and ``1``, so binary studies keep the
    #: hashes they had before classes existed.
    classes: tuple[str, ...] = Field(
        default=BINARY_CLASSES, min_length=2, max_length=1000, exclude_if=_is_binary
    )
    #: What one example is for signals or images (``None``: a table row of ``features``).
    input: SignalsInput | ImagesInput | None = Field(
        default=None, discriminator="kind", exclude_if=_is_none
    )
    #: Public standardisation, one ``(mean, std)`` per feature (for signals and images:
    #: per channel), applied before the model.
    scaling: tuple[tuple[float, float], ...]
    dp: DPConfig
    training: TrainingConfig
    rounds: int = Field(ge=1, le=1000)
    #: How many runs of the study a site takes part in (each of ``rounds`` rounds): a site
    #: refuses a round outside 1..rounds, a round of a run it already trained, and a run
    #: beyond this number. Left out of the document at its default (1).
    runs: int = Field(default=DEFAULT_RUNS, ge=1, le=1000, exclude_if=_is_default_runs)
    min_sites: int = Field(ge=1, le=1000)
    #: The most epsilon each named site may spend on this study.
    epsilon_caps: dict[str, float]
    #: SHA-256 of the Flower app bundle (FAB) that will run; what sites approve as code.
    code_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: Seed of the initial global model (public; sites' noise is drawn locally).
    model_seed: int = Field(default=0, ge=0, le=2**31 - 1)
    #: Optional client-level DP at the coordinator. Left out of the document when absent,
    #: so studies without it keep the hashes they had before the field existed.
    central_dp: CentralDPConfig | None = Field(default=None, exclude_if=_is_none)
    #: The largest L2 norm (all arrays together) of the global weights a site accepts; a
    #: site refuses, with a signed statement, to train from weights beyond it. Left out of
    #: the document at its default, so older studies keep their hashes (and get the bound).
    max_weight_norm: float = Field(
        default=DEFAULT_MAX_WEIGHT_NORM, gt=0, le=1e30, exclude_if=_is_default_weight_norm
    )

    @model_validator(mode="after")
    def _consistent(self) -> Study:
        spec = self.model_spec  # validates the model dict
        self._consistent_input(spec)
        if len(set(self.classes)) != len(self.classes) or not all(
            re.match(_NAME, name) for name in self.classes
        ):
            raise ValueError("classes must be distinct names of 1-128 printable characters")
        if spec.classes != len(self.classes):
            raise ValueError(
                f"the model has {spec.classes} classes but the study names {len(self.classes)}"
            )
        if len(set(self.features)) != len(self.features):
            raise ValueError("features must be distinct")
        if self.label in self.features:
            raise ValueError("the label cannot also be a feature")
        if len(self.scaling) != len(self.features):
            raise ValueError("scaling needs one (mean, std) per feature")
        for mean, std in self.scaling:
            if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                raise ValueError("scaling needs finite means and positive finite stds")
        if not self.epsilon_caps:
            raise ValueError("epsilon_caps must name at least one site")
        for site, cap in self.epsilon_caps.items():
            if not site or not (math.isfinite(cap) and cap > 0):
                raise ValueError(f"epsilon cap for {site!r} must be positive and finite")
        if self.min_sites > len(self.epsilon_caps):
            raise ValueError("min_sites exceeds the number of sites with an epsilon cap")
        return self

    def _consistent_input(self, spec: ModelSpec) -> None:
        inputs = self.input
        if inputs is None:
            if spec.family.convolutional:
                raise ValueError(f"a {spec.family.value} model needs an input of signals or images")
            if spec.n_features != len(self.features):
                raise ValueError(
                    f"model has {spec.n_features} inputs but {len(self.features)} features"
                )
            return
        if isinstance(inputs, SignalsInput):
            if spec.family is not ModelFamily.CNN1D:
                raise ValueError("a study on signals trains a cnn1d model")
            if tuple(self.features) != inputs.channels:
                raise ValueError("the features of a study on signals are its input's channels")
            expected: tuple[int, ...] = (len(inputs.channels), inputs.window)
        else:
            if spec.family is not ModelFamily.CNN2D:
                raise ValueError("a study on images trains a cnn2d model")
            if len(self.features) != inputs.channels:
                raise ValueError("the features of a study on images name its channels")
            expected = (inputs.channels, inputs.height, inputs.width)
        if spec.input_shape != expected:
            raise ValueError(
                f"the model's input_shape {list(spec.input_shape)} is not the input's "
                f"{list(expected)}"
            )

    @property
    def model_spec(self) -> ModelSpec:
        """The architecture, parsed."""
        try:
            return ModelSpec.from_dict(self.model)
        except InputError as err:
            raise ValueError(str(err)) from err

    def to_document(self) -> dict[str, Any]:
        """The JSON document that is hashed, signed and recorded."""
        return self.model_dump(mode="json")

    @property
    def study_hash(self) -> str:
        """SHA-256 (hex) of the study's canonical JSON."""
        return canonical_hash(self.to_document())

    @property
    def family(self) -> ModelFamily:
        """The model family."""
        return self.model_spec.family


def parse_study(document: dict[str, Any]) -> Study:
    """Validate a study document.

    Raises
    ------
    InputError
        Naming the first invalid field.
    """
    try:
        return Study.model_validate(document)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "study"
        raise InputError(f"invalid study ({where}): {first.get('msg', 'invalid')}") from err


#: A training study or an analysis study (``"kind": "analysis"``).
AnyStudy = Study | AnalysisStudy


def parse_any_study(document: dict[str, Any]) -> AnyStudy:
    """Validate a training study, or an analysis study where ``kind`` is ``"analysis"``.

    Raises
    ------
    InputError
        Naming the first invalid field.
    """
    if document.get("kind") == "analysis":
        return AnalysisStudy.parse(document, what="analysis study")
    return parse_study(document)
