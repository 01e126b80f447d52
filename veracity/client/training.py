"""DP-SGD at a site with Opacus: the torch adapter of the site agent.

One :class:`PrivateTrainer` per (site, dataset, run): it owns one Opacus
``PrivacyEngine`` (PRV accountant), the model, the DP optimizer and the Poisson loader,
and every round copies the global weights into the same model in place, so the engine's
accountant keeps composing (the pattern the DP field notes found correct; a new engine per
round reports one round's epsilon). The agent loads the persisted history into the
accountant before each round and checks afterwards that it grew by exactly the round's
planned steps, so the store, not this process, is the source of truth.

Sampling is always Poisson (:func:`veracity.client.budget.poisson_sampling`): Opacus's
``UniformWithReplacementSampler``, made to yield index tensors instead of Python lists.
Empty batches are never skipped: the step still adds noise and is counted.

Two ways to clip per-sample gradients (``site.json`` ``clipping``):

``linear-ghost`` (default)
    For models whose trainable parameters all sit in ``nn.Linear`` layers applied once to
    2-D inputs, with parameter-free per-sample operations between them (both Veracity
    model families). One backward pass gives each layer's per-sample output gradients
    ``b``; with inputs ``a``, a sample's gradient for the layer is ``b a^T`` (plus ``b`` for
    the bias), whose squared norm is ``|b|^2 (|a|^2 + 1)``. So per-sample norms and the
    clipped sum ``(f * b)^T a`` come without materialising per-sample gradients (ghost
    clipping, in one pass). The clipped sum goes to Opacus's
    ``DPOptimizerFastGradientClipping``, which adds the Gaussian noise, scales by the
    expected batch size and steps the accountant. Measured here about 1.6-1.9 times the
    non-private epoch, against 2.6-3.5 times for Opacus's hooks.
``opacus-hooks``
    Per-sample gradients from hooks, clipped and noised by Opacus's ``DPOptimizer``. For
    models made of ``Linear``, ``Conv1d``, ``Conv2d`` and ``GroupNorm`` layers (every
    Veracity family) the hooks are the trainer's own (:class:`_PerSampleGradients`: Opacus's
    grad-sampler formulas without its full backward hooks, a third of the digits ``cnn2d``
    step); for any other model Opacus's ``GradSampleModule`` (``make_private`` with
    ``grad_sample_mode="hooks"``). The tests check that the two hooks engines give the same
    per-sample gradients and that both ways give the same clipped gradients. The
    convolutional families (``cnn1d``, ``cnn2d``) always clip this way: Opacus's ghost
    clipping has norm samplers for ``Linear`` and ``Embedding`` layers only, and a site
    configured for ``linear-ghost`` uses hooks for them (:func:`effective_clipping`).

Two-class models train on the binary cross-entropy of their one logit; models with ``k > 2``
classes on the cross-entropy of their ``k`` logits (labels are class indices).

Clipping is finite for every input in both ways: a step whose per-sample norms are all
finite in float32 keeps Opacus's rule; any other step is redone with norms in float64,
and a sample whose activations, output gradients or per-sample gradient are not finite
contributes zero (within the clipping bound). So no crafted weights
or outlier record can make ``0 * inf`` turn the released update into NaN exactly when that
record is sampled.

Noise and sampling randomness come from the site's ChaCha20 source
(:mod:`veracity.client.noise`: a CSPRNG keyed from ``os.urandom``, Gaussians in float64 as
the sum of four Box-Muller draws against floating-point attacks), one stream for the noise
and one for Poisson sampling, never from torch's Mersenne Twister. Opacus's own
``secure_mode`` (torchcsprng, no build for this torch) is not used. Receipts name the
source (:attr:`PrivateTrainer.noise_generator`).

Replay. A site re-keys both streams before every round from that round's secret seed
(:meth:`PrivateTrainer.rekey`, HKDF-SHA256 from 32 bytes of ``os.urandom`` the site keeps),
and a round runs with torch's deterministic algorithms on a fixed thread count, in the
fixed order of the registered rows; SGD keeps no state between rounds. So the same global
weights, data, seed and thread count give the same update, bit for bit
(:mod:`veracity.client.replay`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from veracity.client.budget import History, Sampling, Segment, merge_history, poisson_sampling
from veracity.client.noise import (
    GENERATOR_NAME,
    ROUND_SEED_GENERATOR_NAME,
    SEEDED_GENERATOR_NAME,
    ChaCha20Source,
)
from veracity.errors import ConfigError, InputError
from veracity.tasks import scaling as tasks_scaling
from veracity.tasks.spec import ModelSpec
from veracity.tasks.study import Study
from veracity.tasks.torch_models import build_model, load_weights, model_weights
from veracity.tasks.weights import Weights

__all__ = [
    "Clipping",
    "NOISE_GENERATOR",
    "NOISE_GENERATOR_SEEDED",
    "NOISE_GENERATOR_ROUND_SEED",
    "deterministic",
    "configure_threads",
    "effective_clipping",
    "standardise",
    "RoundResult",
    "PrivateTrainer",
]

log = logging.getLogger(__name__)

Clipping = Literal["linear-ghost", "opacus-hooks"]

#: How receipts name the noise source: ChaCha20 keyed from the OS.
NOISE_GENERATOR = GENERATOR_NAME
#: ... and with keys derived from an injected seed (tests only).
NOISE_GENERATOR_SEEDED = SEEDED_GENERATOR_NAME
#: ... and with keys derived from the site's secret per-round seed (what sites train with).
NOISE_GENERATOR_ROUND_SEED = ROUND_SEED_GENERATOR_NAME


@contextmanager
def deterministic() -> Iterator[None]:
    """Run the block with torch's deterministic algorithms on (restored afterwards).

    On the CPU torch then picks deterministic implementations wherever it has a choice;
    an operation that has none warns rather than fails the round (``warn_only``: a replay
    of such a round would report replay.failed, never a wrong confirmation). With the same
    thread count a round then re-trains bit for bit.
    """
    before = torch.are_deterministic_algorithms_enabled()
    warn_before = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_before)


def configure_threads(threads: int) -> None:
    """Set torch's intra-op thread count (a deliberate choice: 1 on small busy machines).

    Raises
    ------
    ConfigError
        If ``threads`` is not positive.
    """
    if threads < 1:
        raise ConfigError("torch needs at least one thread")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def standardise(
    x: npt.NDArray[np.float64], scaling: tuple[tuple[float, float], ...]
) -> npt.NDArray[np.float32]:
    """A study's public scaling (:func:`veracity.tasks.scaling.standardise`), as float32.

    Raises
    ------
    InputError
        If the scaling does not have one entry per column.
    """
    return np.asarray(tasks_scaling.standardise(x, scaling), dtype=np.float32)


def effective_clipping(spec: ModelSpec, configured: Clipping) -> Clipping:
    """How ``spec`` is clipped at a site configured for ``configured``.

    ``linear-ghost`` needs every parameter in a ``Linear`` layer; the convolutional
    families fall back to ``opacus-hooks``.
    """
    if configured == "linear-ghost" and spec.family.convolutional:
        return "opacus-hooks"
    return configured


def _sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample losses: binary cross-entropy of one logit, or cross-entropy of ``k``."""
    if logits.dim() == 1:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return nn.functional.cross_entropy(logits, labels, reduction="none")


class _Rows(TorchDataset[tuple[torch.Tensor, torch.Tensor]]):
    """Feature and label tensors, fetched a whole batch at a time by tensor indexing."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[indices], self.y[indices]


class _PoissonBatches(UniformWithReplacementSampler):  # type: ignore[misc]
    """Opacus's Poisson sampler (each record joins each batch with probability ``q``).

    Each record joins each step's batch independently with probability ``q`` (at most
    ``q``, by less than ``2**-32``: conservative), drawn from the site's ChaCha20 source
    (:meth:`veracity.client.noise.ChaCha20Source.bernoulli`); it yields the index tensor
    rather than a Python list, which halves the time of a small step.
    """

    source: ChaCha20Source

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _ in range(self.steps):
            yield torch.from_numpy(
                np.flatnonzero(self.source.bernoulli(self.num_samples, self.sample_rate))
            )


def _add_secure_noise(optimizer: Any, source: ChaCha20Source, std: float) -> None:
    """Opacus's ``add_noise`` with noise from ``source``, added in float64.

    ``p.grad = p.summed_grad + N(0, std^2)`` per coordinate, the sum taken in float64 and
    rounded once to the parameter's dtype (see :mod:`veracity.client.noise`). One draw
    covers every parameter of the step, and one float64 addition covers every coordinate.
    """
    params = list(optimizer.params)
    sizes = [p.summed_grad.numel() for p in params]
    noise = source.gaussian((sum(sizes),), std)
    for p in params:
        _check_processed_flag(p.summed_grad)
    summed = torch.cat([p.summed_grad.detach().reshape(-1) for p in params]).to(torch.float64)
    noisy = summed + noise
    for p, part in zip(params, torch.split(noisy, sizes), strict=True):
        p.grad = part.to(p.dtype).view_as(p)
        _mark_as_processed(p.summed_grad)


def _batch(data: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return data


class _ClippedSumOptimizer(DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """Opacus's ghost-clipping DP optimizer, given the clipped per-sample sum in ``p.grad``.

    It adds ``N(0, (noise_multiplier * max_grad_norm)^2)`` noise to every coordinate,
    divides by the expected batch size, steps the accountant and the wrapped optimizer.
    ``accumulate`` takes the fresh ``p.grad`` tensor instead of deep-copying it.
    """

    noise_source: ChaCha20Source

    def accumulate(self) -> None:
        for p in self.params:
            p.summed_grad = p.grad if p.summed_grad is None else p.summed_grad + p.grad

    def add_noise(self) -> None:
        _add_secure_noise(self, self.noise_source, self.noise_multiplier * self.max_grad_norm)


class _LinearGhostClipping:
    """Per-sample clipping for models made of ``nn.Linear`` layers (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [module for module in model.modules() if isinstance(module, nn.Linear)]
        covered = {id(p) for layer in self.layers for p in layer.parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not self.layers or any(id(p) not in covered for p in trainable):
            raise ConfigError(
                "linear-ghost clipping needs a model whose parameters all belong to Linear "
                "layers; set clipping to opacus-hooks in site.json"
            )
        self._inputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self._outputs: list[torch.Tensor | None] = [None] * len(self.layers)
        for index, layer in enumerate(self.layers):
            layer.register_forward_hook(self._capture(index))

    def _capture(self, index: int) -> Any:
        def hook(
            _module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> None:
            if self._outputs[index] is not None:
                raise ConfigError("linear-ghost clipping needs each Linear layer used once")
            if inputs[0].dim() != 2:
                raise ConfigError("linear-ghost clipping needs 2-D inputs to Linear layers")
            self._inputs[index] = inputs[0]
            self._outputs[index] = output

        return hook

    def reset(self) -> None:
        """Forget the last forward pass."""
        self._inputs = [None] * len(self.layers)
        self._outputs = [None] * len(self.layers)

    def clipped_sum(self, loss_sum: torch.Tensor, max_grad_norm: float) -> None:
        """Write the sum of per-sample gradients, each clipped to ``max_grad_norm``, to ``.grad``.

        ``loss_sum`` must be the *sum* of the per-sample losses of the last forward pass.
        The clip factor is Opacus's, ``min(1, C / (norm + 1e-6))``. When any squared norm
        is not finite in float32 (an overflow, or a non-finite activation or output
        gradient), the whole step is redone in float64, where squares of float32 values
        cannot overflow, and a sample whose activations or output gradients are not
        finite contributes zero (:func:`finite_clip_factors`). Either way each sample's
        contribution has norm at most ``max_grad_norm``, so the sum is finite whatever
        the data and the weights.
        """
        outputs = [tensor for tensor in self._outputs if tensor is not None]
        inputs = [tensor for tensor in self._inputs if tensor is not None]
        if len(outputs) != len(self.layers):
            raise ConfigError("a Linear layer was skipped in the forward pass")
        backprops = torch.autograd.grad(loss_sum, outputs)
        squared = torch.zeros(inputs[0].shape[0], dtype=inputs[0].dtype)
        for layer, a, b in zip(self.layers, inputs, backprops, strict=True):
            input_norm = (a * a).sum(1)
            if layer.bias is not None:
                input_norm = input_norm + 1.0
            squared = squared + (b * b).sum(1) * input_norm
        if bool(torch.isfinite(squared).all()):
            # Every a and b is finite and no square overflowed (an inf or NaN anywhere, or
            # an overflow, leaves a non-finite squared norm): Opacus's float32 rule is exact
            # and each sample's term f * b a^T has entries of at most C in magnitude.
            factor = (max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
            for layer, a, b in zip(self.layers, inputs, backprops, strict=True):
                scaled = b.detach() * factor[:, None]
                layer.weight.grad = scaled.T @ a.detach()
                if layer.bias is not None:
                    layer.bias.grad = scaled.sum(0)
        else:
            self._clipped_sum_float64(inputs, backprops, max_grad_norm)
        self.reset()

    def _clipped_sum_float64(
        self, inputs: list[torch.Tensor], backprops: tuple[torch.Tensor, ...], max_grad_norm: float
    ) -> None:
        """The clipped sum where float32 overflowed: float64, non-finite samples count zero."""
        activations = [a.detach().to(torch.float64) for a in inputs]
        gradients = [b.detach().to(torch.float64) for b in backprops]
        finite = torch.ones(activations[0].shape[0], dtype=torch.bool)
        for a, b in zip(activations, gradients, strict=True):
            finite &= torch.isfinite(a).all(1) & torch.isfinite(b).all(1)
        keep = finite[:, None]
        activations = [torch.where(keep, a, 0.0) for a in activations]
        gradients = [torch.where(keep, b, 0.0) for b in gradients]
        squared = torch.zeros(finite.shape[0], dtype=torch.float64)
        for layer, a, b in zip(self.layers, activations, gradients, strict=True):
            input_norm = (a * a).sum(1)
            if layer.bias is not None:
                input_norm = input_norm + 1.0
            squared = squared + (b * b).sum(1) * input_norm
        factor = finite_clip_factors(squared.sqrt(), finite, max_grad_norm)
        for layer, a, b in zip(self.layers, activations, gradients, strict=True):
            scaled = b * factor[:, None]
            layer.weight.grad = (scaled.T @ a).to(layer.weight.dtype)
            if layer.bias is not None:
                layer.bias.grad = scaled.sum(0).to(layer.bias.dtype)


def finite_clip_factors(
    norms: torch.Tensor, finite: torch.Tensor, max_grad_norm: float
) -> torch.Tensor:
    """Per-sample clip factors ``min(1, C / (norm + 1e-6))``, and 0 where ``finite`` is False.

    ``norms`` are float64 per-sample gradient norms of samples whose gradients are finite
    (non-finite samples' norms are ignored). A zero factor is a valid clipping function:
    the sample's contribution (zero) is within the bound, so the DP guarantee holds, and
    no ``0 * inf`` can turn the sum into NaN.
    """
    safe = torch.where(finite, norms, 0.0)
    factor = (max_grad_norm / (safe + 1e-6)).clamp(max=1.0)
    return torch.where(finite, factor, 0.0)


class _FiniteClippingDPOptimizer(DPOptimizer):  # type: ignore[misc]
    """Opacus's ``DPOptimizer`` (hooks) with clipping that is finite for every input.

    Opacus computes per-sample norms in float32, where a large finite gradient overflows
    and ``0 * inf`` makes the whole step NaN exactly when that sample is in the batch.
    Here, when any norm is not finite, the step is redone with norms in float64 and a
    sample with any non-finite per-sample gradient contributes zero
    (:func:`finite_clip_factors`); otherwise it is Opacus's rule unchanged.
    """

    noise_source: ChaCha20Source

    def add_noise(self) -> None:
        _add_secure_noise(self, self.noise_source, self.noise_multiplier * self.max_grad_norm)

    def clip_and_accumulate(self) -> None:
        samples = self.grad_samples
        count = len(samples[0])
        flat = [sample.flatten(1) for sample in samples]
        same_dtype = all(sample.dtype == flat[0].dtype for sample in flat)
        if count == 0:
            norms = torch.zeros(0, dtype=flat[0].dtype)
        elif same_dtype:
            # All parameters' per-sample gradients side by side: one norm, one product.
            joined = torch.cat(flat, dim=1)
            norms = joined.norm(2, dim=1)
        else:
            norms = torch.stack([sample.norm(2, dim=1) for sample in flat], dim=1).norm(2, dim=1)
        if bool(torch.isfinite(norms).all()):
            # Opacus's own rule: every per-sample gradient is finite and its norm too.
            factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            if count and same_dtype:
                self._accumulate_joined(factor, joined)
                return
            finite = None
        else:
            finite = torch.ones(count, dtype=torch.bool)
            for sample in flat:
                finite &= torch.isfinite(sample).all(1)
            keep = finite[:, None]
            norms = torch.stack(
                [torch.where(keep, s.to(torch.float64), 0.0).norm(2, dim=1) for s in flat], dim=1
            ).norm(2, dim=1)
            factor = finite_clip_factors(norms, finite, self.max_grad_norm)
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            sample = self._get_flat_grad_sample(p)
            if finite is None:
                grad = torch.einsum("i,i...", factor.to(p.dtype), sample.to(p.dtype))
            else:
                wide = sample.to(torch.float64)
                mask = finite.reshape(-1, *([1] * (wide.dim() - 1)))
                grad = torch.einsum("i,i...", factor, torch.where(mask, wide, 0.0)).to(p.dtype)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)

    def _accumulate_joined(self, factor: torch.Tensor, joined: torch.Tensor) -> None:
        """Opacus's clipped sum ``sum_i factor_i g_i`` for all parameters in one product."""
        params = list(self.params)
        for p in params:
            _check_processed_flag(p.grad_sample)
        summed = factor.to(joined.dtype) @ joined
        offset = 0
        for p in params:
            size = p.numel()
            grad = summed[offset : offset + size].view_as(p).to(p.dtype)
            offset += size
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)


#: The layers whose per-sample gradients :class:`_PerSampleGradients` computes.
_HOOKED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.GroupNorm)


class _PerSampleGradients:
    """Per-sample gradients of ``Linear``, ``Conv1d``, ``Conv2d`` and ``GroupNorm`` layers.

    The hooks engine of ``opacus-hooks`` for models made of these layers (every Veracity
    family): a forward hook keeps each layer's input and hooks the layer's output tensor;
    in the backward pass that tensor hook receives the output gradient ``b`` and writes
    each parameter's per-sample gradients to ``p.grad_sample``, where Opacus's
    ``DPOptimizer`` reads them. The formulas are Opacus's grad samplers' (the tests check
    equality with Opacus's ``GradSampleModule``): ``Linear`` ``b a^T``; a convolution
    ``b`` times the unfolded input (``im2col``); ``GroupNorm`` the normalised input times
    ``b``, summed over positions. Opacus registers full backward hooks on every layer,
    which wrap each layer's inputs and outputs in extra autograd nodes, and keeps
    bookkeeping for gradient accumulation, which Poisson sampling forbids anyway: on the
    digits ``cnn2d`` that machinery was a third of the DP step.

    The loss must be the *mean* of the batch's per-sample losses (``b`` is scaled by the
    batch's row count). A layer applied twice in one step is refused.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, _HOOKED_LAYERS)]
        for layer in self.layers:
            layer.register_forward_hook(self._capture)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether every trainable parameter sits directly in a layer this engine handles."""
        covered: set[int] = set()
        for module in model.modules():
            if isinstance(module, nn.Conv1d | nn.Conv2d):
                if module.groups != 1 or isinstance(module.padding, str):
                    return False
                if module.padding_mode != "zeros":
                    return False
            if isinstance(module, _HOOKED_LAYERS):
                covered.update(id(p) for p in module.parameters(recurse=False))
        return all(id(p) in covered for p in model.parameters() if p.requires_grad)

    def _capture(
        self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        if not output.requires_grad:
            return  # evaluation under no_grad, or nothing to train below
        activations = inputs[0].detach()

        def hook(gradient: torch.Tensor) -> None:
            self._per_sample(layer, activations, gradient)

        output.register_hook(hook)  # type: ignore[no-untyped-call]

    @staticmethod
    def _per_sample(layer: nn.Module, a: torch.Tensor, gradient: torch.Tensor) -> None:
        rows = a.shape[0]
        b = gradient.detach() * rows  # the loss is the batch mean: per-sample gradients
        samples: dict[torch.Tensor, torch.Tensor] = {}
        if isinstance(layer, nn.Linear):
            if a.dim() != 2:
                raise ConfigError("per-sample gradients need 2-D inputs to Linear layers")
            samples[layer.weight] = torch.bmm(b.unsqueeze(2), a.unsqueeze(1))
            if layer.bias is not None:
                samples[layer.bias] = b
        elif isinstance(layer, nn.GroupNorm):
            if layer.affine:
                normed = nn.functional.group_norm(a, layer.num_groups, eps=layer.eps)
                samples[layer.weight] = (normed * b).flatten(2).sum(2)
                samples[layer.bias] = b.flatten(2).sum(2)
        else:
            conv = cast(nn.Conv1d | nn.Conv2d, layer)
            if isinstance(conv, nn.Conv2d):
                columns = nn.functional.unfold(
                    a,
                    conv.kernel_size,
                    dilation=conv.dilation,
                    padding=cast(tuple[int, int], conv.padding),
                    stride=conv.stride,
                )
            else:
                pad = cast(tuple[int], conv.padding)[0]
                columns = nn.functional.unfold(
                    nn.functional.pad(a, (pad, pad)).unsqueeze(-2),
                    (1, conv.kernel_size[0]),
                    dilation=(1, conv.dilation[0]),
                    stride=(1, conv.stride[0]),
                )
            flat = b.flatten(2)
            samples[conv.weight] = torch.bmm(flat, columns.transpose(1, 2)).view(
                rows, *conv.weight.shape
            )
            if conv.bias is not None:
                samples[conv.bias] = flat.sum(2)
        for parameter, sample in samples.items():
            if not parameter.requires_grad:
                continue
            if getattr(parameter, "grad_sample", None) is not None:
                raise ConfigError("per-sample gradients need each layer used once per step")
            parameter.grad_sample = sample  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RoundResult:
    """What one round of local training produced."""

    weights: dict[str, npt.NDArray[np.float32]]
    steps: int
    examples: int
    mean_loss: float


class PrivateTrainer:
    """DP-SGD on one dataset for one run (see the module docstring).

    Parameters
    ----------
    spec
        The model architecture.
    x, y
        Standardised features (float32) and class indices (0/1 for two classes).
    noise_multiplier, max_grad_norm
        DP-SGD terms (``noise_multiplier`` 0 is accepted for tests of the mechanism).
    batch_size, learning_rate
        Expected batch size (sets the Poisson rate) and SGD step size.
    clipping
        ``"linear-ghost"`` or ``"opacus-hooks"`` (see :func:`effective_clipping`).
    secure_mode
        Refuse an injected seed (the keys then always come from the OS, as they do
        whenever ``seed`` is ``None``).
    seed
        Derives the ChaCha20 keys of the sampling and noise streams (tests); ``None`` draws
        each key from the OS. Must be ``None`` in secure mode.

    Raises
    ------
    ConfigError
        If a seed is injected in secure mode, or the model does not suit the
        clipping method.
    InputError
        If the data do not match the model.
    """

    def __init__(
        self,
        spec: ModelSpec,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.integer],
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        batch_size: int,
        learning_rate: float,
        clipping: Clipping = "linear-ghost",
        secure_mode: bool = False,
        seed: int | None = None,
    ) -> None:
        if x.ndim != 2 or x.shape[1] != spec.n_features or y.shape != (x.shape[0],):
            raise InputError(
                f"data of shape {x.shape} do not fit a model of {spec.n_features} features"
            )
        if y.size and not (int(np.min(y)) >= 0 and int(np.max(y)) < spec.classes):
            raise InputError(f"labels must be class indices 0..{spec.classes - 1}")
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise InputError("the noise multiplier must be finite and non-negative")
        if secure_mode and seed is not None:
            raise ConfigError("a seed cannot be injected in secure mode")
        self.spec = spec
        self.sampling: Sampling = poisson_sampling(int(x.shape[0]), batch_size)
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        clipping = effective_clipping(spec, clipping)
        self.clipping: Clipping = clipping
        with warnings.catch_warnings():
            # "Secure RNG turned off": Opacus's RNG is not used; the noise is ChaCha20.
            warnings.filterwarnings("ignore", message="Secure RNG", category=UserWarning)
            self.engine = PrivacyEngine(accountant="prv", secure_mode=False)
        if seed is None:
            sample_source, noise_source = ChaCha20Source(), ChaCha20Source()
        else:
            sample_source = ChaCha20Source.from_seed(seed, "sampling")
            noise_source = ChaCha20Source.from_seed(seed, "noise")
        #: Whether the keys came from the OS (always, outside tests).
        self.secure_mode = not noise_source.seeded
        #: How receipts name the noise source.
        self.noise_generator = noise_source.name
        self.model = build_model(spec)
        rows = _Rows(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            torch.from_numpy(np.asarray(y, dtype=np.int64 if spec.outputs > 1 else np.float32)),
        )
        sampler = _PoissonBatches(
            num_samples=len(rows),
            sample_rate=self.sampling.sample_rate,
            generator=None,
            steps=self.sampling.steps_per_epoch,
        )
        sampler.source = sample_source
        self._sampler = sampler
        loader = DataLoader(rows, batch_sampler=sampler, collate_fn=cast(Any, _batch))
        base_optimizer = torch.optim.SGD(self.model.parameters(), lr=learning_rate)
        self._ghost: _LinearGhostClipping | None = None
        if clipping == "linear-ghost":
            self._ghost = _LinearGhostClipping(self.model)
            self._forward: nn.Module = self.model
            self.optimizer = _ClippedSumOptimizer(
                base_optimizer,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.max_grad_norm,
                expected_batch_size=self.sampling.expected_batch_size,
            )
            self.optimizer.noise_source = noise_source
            self.optimizer.attach_step_hook(
                self.engine.accountant.get_optimizer_hook_fn(sample_rate=self.sampling.sample_rate)
            )
            self.loader = loader
        elif clipping == "opacus-hooks":
            if _PerSampleGradients.supports(self.model):
                # The loader already samples Poisson batches at the exact rate.
                _PerSampleGradients(self.model)
                self._forward = self.model
                self.optimizer = self._hooks_optimizer(
                    base_optimizer, noise_source, self.sampling.expected_batch_size
                )
                self.loader = loader
            else:
                # Opacus's GradSampleModule for layers the engine above does not know. The
                # loader already samples Poisson batches at the exact rate, so Opacus must
                # not re-wrap it (poisson_sampling=False); it then takes q = 1 / len(loader).
                module, optimizer, wrapped_loader = self.engine.make_private(
                    module=self.model,
                    optimizer=base_optimizer,
                    data_loader=loader,
                    noise_multiplier=self.noise_multiplier,
                    max_grad_norm=self.max_grad_norm,
                    poisson_sampling=False,
                    grad_sample_mode="hooks",
                )
                module.forbid_grad_accumulation()
                self._forward = module
                self.optimizer = self._hooks_optimizer(
                    optimizer.original_optimizer, noise_source, optimizer.expected_batch_size
                )
                self.loader = wrapped_loader
                if optimizer.expected_batch_size != self.sampling.expected_batch_size:
                    raise ConfigError("Opacus chose another expected batch size than planned")
        else:
            raise ConfigError(f"unknown clipping method {clipping!r}")

    def _hooks_optimizer(
        self, base: torch.optim.Optimizer, noise_source: ChaCha20Source, expected_batch: int
    ) -> _FiniteClippingDPOptimizer:
        """Opacus's DP optimizer over ``p.grad_sample``, clipping finite for every input."""
        optimizer = _FiniteClippingDPOptimizer(
            base,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=expected_batch,
            loss_reduction="mean",
        )
        optimizer.noise_source = noise_source
        optimizer.attach_step_hook(
            self.engine.accountant.get_optimizer_hook_fn(sample_rate=self.sampling.sample_rate)
        )
        return optimizer

    @classmethod
    def for_study(
        cls,
        study: Study,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.integer],
        *,
        clipping: Clipping,
        secure_mode: bool,
        seed: int | None,
    ) -> PrivateTrainer:
        """The trainer of ``study`` on standardised ``x`` and labels ``y``.

        The study's model and DP-SGD terms, as the site agent and the noise audit build it.

        Raises
        ------
        ConfigError, InputError
            As the constructor.
        """
        return cls(
            study.model_spec,
            x,
            y,
            noise_multiplier=study.dp.noise_multiplier,
            max_grad_norm=study.dp.max_grad_norm,
            batch_size=study.training.batch_size,
            learning_rate=study.training.learning_rate,
            clipping=clipping,
            secure_mode=secure_mode,
            seed=seed,
        )

    # ------------------------------------------------------------------ randomness

    def rekey(self, seed: bytes, *, injected: bool = False) -> None:
        """Key the sampling and noise streams afresh from a round's 32-byte secret ``seed``.

        Each stream's key is HKDF-SHA256 of the seed for its purpose
        (:meth:`veracity.client.noise.ChaCha20Source.from_round_seed`), so a round's
        Poisson samples and DP noise are a function of the seed alone. ``injected`` says
        the seed was derived from a test seed rather than drawn from the OS: receipts then
        name the generator as seeded, and a trainer in secure mode refuses it.

        Raises
        ------
        ConfigError
            If an injected seed is given in secure mode.
        InputError
            If the seed is not 32 bytes.
        """
        if injected and self.secure_mode:
            raise ConfigError("a seed cannot be injected in secure mode")
        sample_source = ChaCha20Source.from_round_seed(seed, "sampling")
        noise_source = ChaCha20Source.from_round_seed(seed, "noise")
        self._sampler.source = sample_source
        self.optimizer.noise_source = noise_source
        if injected:
            self.noise_generator = NOISE_GENERATOR_SEEDED
        else:
            self.noise_generator = noise_source.name

    # ------------------------------------------------------------------ accounting

    def load_history(self, history: History) -> None:
        """Make the engine's accountant hold ``history`` (the persisted one)."""
        self.engine.accountant.history = [
            (s.noise_multiplier, s.sample_rate, s.steps) for s in history
        ]

    def accountant_history(self) -> History:
        """The engine accountant's history, merged."""
        return merge_history(
            Segment(float(sigma), float(rate), int(steps))
            for sigma, rate, steps in self.engine.accountant.history
        )

    def planned_segment(self, epochs: int) -> Segment:
        """The history segment ``epochs`` local epochs add."""
        return self.sampling.segment(self.noise_multiplier, epochs)

    # ------------------------------------------------------------------ training

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        """One DP-SGD step; returns the sum of the batch's per-sample losses."""
        self.optimizer.zero_grad(set_to_none=True)
        if self._ghost is not None:
            if xb.shape[0] == 0:
                for p in self.model.parameters():
                    p.grad = torch.zeros_like(p)
                self.optimizer.step()
                return 0.0
            logits = self._forward(xb)
            losses = _sample_losses(logits, yb)
            summed = losses.sum()
            self._ghost.clipped_sum(summed, self.max_grad_norm)
            self.optimizer.step()
            return float(summed.detach())
        logits = self._forward(xb)
        loss_sum = 0.0
        if xb.shape[0] == 0:
            loss = logits.sum() * 0.0  # keeps Opacus's hooks firing on an empty batch
        else:
            losses = _sample_losses(logits, yb)
            loss = losses.mean()
            loss_sum = float(losses.detach().sum())
        with warnings.catch_warnings():
            # torch notes that Opacus's hooks fire on outputs when inputs need no gradient.
            warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
            loss.backward()
        self.optimizer.step()
        return loss_sum

    def train_round(self, weights: Weights, *, epochs: int) -> RoundResult:
        """Copy ``weights`` into the model in place, run ``epochs`` epochs of DP-SGD.

        Raises
        ------
        InputError
            If the weights do not match the model, or are not finite.
        """
        for name, value in weights.items():
            if not np.all(np.isfinite(np.asarray(value))):
                raise InputError(f"global weights {name!r} hold non-finite values")
        with torch.no_grad():
            load_weights(self.model, weights)
        self.model.train()
        steps = examples = 0
        loss_total = 0.0
        with deterministic():
            for _ in range(epochs):
                for xb, yb in self.loader:
                    loss_total += self._step(xb, yb)
                    steps += 1
                    examples += int(xb.shape[0])
        mean_loss = loss_total / examples if examples else math.nan
        return RoundResult(
            weights=model_weights(self.model), steps=steps, examples=examples, mean_loss=mean_loss
        )
