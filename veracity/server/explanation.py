"""The coordinator's side of an explanation: combine the sites' noisy sums into a report.

Each site sent the noisy sum ``S_s`` of its records' clipped attribution vectors, the noise
standard deviation of every figure and its number of records ``n_s``
(:mod:`veracity.contracts.explanation`). The noise is independent across sites, so the
mean attribution of input ``i`` over all ``N = sum n_s`` records and its standard error are

    value_i = sum_s S_s[i] / N,     se_i = sqrt(sum_s std_s[i]^2) / N

(the standard error describes the noise; the clipping bias is not in it). The report
reads the flat attributions in the model's layout: one bar per feature of a table; for
signals ``(channels, steps)`` one bar per channel (its steps summed) and a channel x time
step heat map; for images ``(channels, height, width)`` one bar per channel and a
height x width heat map (the channels summed). The plot is an SVG written here, without
a display or a plotting library. ``report_hash`` (canonical JSON) is what
``model.explained`` records; the registry keeps the report and its plot under it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from veracity.contracts.analysis import SignedAnalysisReceipt
from veracity.contracts.explanation import (
    ExplanationTerms,
    ModelExplained,
    SiteExplanation,
    terms_hash,
)
from veracity.core.canonical import canonical_hash, sha256_hex
from veracity.errors import InputError, VerificationError
from veracity.tasks.spec import ModelSpec

__all__ = [
    "REPORT_FORMAT",
    "TOP",
    "GatheredExplanation",
    "card_explanation",
    "explanation_report",
    "report_hash",
    "report_svg",
    "verify_card_explanation",
]

REPORT_FORMAT = "veracity.explanation.v1"
#: How many inputs ``top_features`` names.
TOP = 10

_Array = npt.NDArray[np.float64]


def _summary(labels: Sequence[str], value: _Array, se: _Array) -> dict[str, Any]:
    return {
        "labels": list(labels),
        "value": [float(v) for v in value],
        "se": [float(s) for s in se],
    }


def _top(labels: Sequence[str], value: _Array) -> list[str]:
    order = sorted(range(len(labels)), key=lambda i: (-abs(float(value[i])), i))
    return [labels[i] for i in order[:TOP]]


def explanation_report(
    *,
    spec: ModelSpec,
    features: Sequence[str],
    terms: ExplanationTerms,
    sums: Mapping[str, SiteExplanation],
) -> dict[str, Any]:
    """The explanation report of ``sums`` (site -> its noisy sums), in ``spec``'s layout.

    Raises
    ------
    InputError
        If no site contributed, or a site's figures do not fit the model's inputs.
    """
    if not sums:
        raise InputError("an explanation needs at least one site's answer")
    width = spec.n_features
    total = np.zeros(width)
    variance = np.zeros(width)
    records = 0
    for site, answer in sorted(sums.items()):  # in site order: the same floats every time
        if len(answer.values) != width:
            raise InputError(f"{site} sent {len(answer.values)} figures; the model has {width}")
        total += np.asarray(answer.values, dtype=np.float64)
        variance += np.square(np.asarray(answer.stds, dtype=np.float64))
        records += answer.records
    mean = total / records
    se = np.sqrt(variance) / records
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "model_hash": terms.model_hash,
        "study_hash": terms.study_hash,
        "terms": terms.to_json(),
        "terms_hash": terms_hash(terms),
        "sites": sorted(sums),
        "records": records,
    }
    shape = spec.input_shape or (width,)
    if len(shape) == 1:
        labels = list(features) if len(features) == width else [f"x{i}" for i in range(width)]
        report["layout"] = "features"
        report["features"] = _summary(labels, mean, se)
        report["top_features"] = _top(labels, mean)
        return report
    channels = shape[0]
    names = list(features) if len(features) == channels else [f"c{i}" for i in range(channels)]
    grid_mean = mean.reshape(shape)
    grid_var = np.square(se).reshape(shape)
    axes = tuple(range(1, len(shape)))
    report["channels"] = _summary(names, grid_mean.sum(axis=axes), np.sqrt(grid_var.sum(axis=axes)))
    if len(shape) == 2:
        report["layout"] = "signals"
        report["heatmap"] = {
            "rows": names,
            "columns": [f"t{j}" for j in range(shape[1])],
            "value": grid_mean.tolist(),
            "se": np.sqrt(grid_var).tolist(),
        }
    else:
        report["layout"] = "images"
        report["heatmap"] = {
            "rows": [f"y{j}" for j in range(shape[1])],
            "columns": [f"x{j}" for j in range(shape[2])],
            "value": grid_mean.sum(axis=0).tolist(),
            "se": np.sqrt(grid_var.sum(axis=0)).tolist(),
        }
    report["top_features"] = _top(names, grid_mean.sum(axis=axes))
    return report


def report_hash(report: Mapping[str, Any]) -> str:
    """The canonical hash of a report (what ``model.explained`` records)."""
    return canonical_hash(dict(report))


def _colour(value: float, scale: float) -> str:
    """Blue (negative) - white - red (positive)."""
    t = 0.0 if scale <= 0 else max(-1.0, min(1.0, value / scale))
    fade = round(255 * (1 - abs(t)))
    return f"rgb(255,{fade},{fade})" if t >= 0 else f"rgb({fade},{fade},255)"


def _bars(title: str, block: Mapping[str, Any]) -> list[str]:
    labels: list[str] = block["labels"]
    value: list[float] = block["value"]
    se: list[float] = block["se"]
    top = 40
    row = 18
    label_w, plot_w = 220, 420
    extent = max([abs(v) + 1.96 * s for v, s in zip(value, se, strict=True)] + [1e-12])
    centre = label_w + plot_w / 2
    unit = (plot_w / 2 - 10) / extent
    parts = [f'<text x="10" y="24" font-size="14">{html.escape(title)}</text>']
    parts.append(
        f'<line x1="{centre}" y1="{top - 4}" x2="{centre}" '
        f'y2="{top + row * len(labels)}" stroke="#444"/>'
    )
    for i, (label, v, s) in enumerate(zip(labels, value, se, strict=True)):
        y = top + i * row
        x0, x1 = sorted((centre, centre + v * unit))
        fill = "#c0392b" if v >= 0 else "#2e6fb7"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 12}" font-size="11" '
            f'text-anchor="end">{html.escape(label)}</text>'
        )
        parts.append(
            f'<rect x="{x0:.2f}" y="{y + 2}" width="{max(x1 - x0, 0.5):.2f}" '
            f'height="{row - 5}" fill="{fill}"/>'
        )
        lo, hi = centre + (v - 1.96 * s) * unit, centre + (v + 1.96 * s) * unit
        parts.append(
            f'<line x1="{lo:.2f}" y1="{y + row / 2}" x2="{hi:.2f}" y2="{y + row / 2}" '
            'stroke="#111"/>'
        )
    return parts


def _heatmap(title: str, block: Mapping[str, Any], top: float) -> tuple[list[str], float]:
    value = np.asarray(block["value"], dtype=np.float64)
    rows, columns = value.shape
    cell = max(2.0, min(24.0, 600.0 / max(rows, columns)))
    scale = float(np.max(np.abs(value))) if value.size else 0.0
    parts = [f'<text x="10" y="{top + 14}" font-size="14">{html.escape(title)}</text>']
    for r in range(rows):
        for c in range(columns):
            parts.append(
                f'<rect x="{10 + c * cell:.2f}" y="{top + 24 + r * cell:.2f}" '
                f'width="{cell:.2f}" height="{cell:.2f}" '
                f'fill="{_colour(float(value[r, c]), scale)}"/>'
            )
    return parts, top + 24 + rows * cell + 10


def report_svg(report: Mapping[str, Any]) -> bytes:
    """The report's plot as a standalone SVG: bars with 95% intervals, and a heat map."""
    terms = report["terms"]
    subtitle = (
        f"integrated gradients from the zero baseline, {report['records']} records at "
        f"{len(report['sites'])} site(s), epsilon {terms['epsilon']:g} per site"
    )
    if report["layout"] == "features":
        parts = _bars("Mean attribution per feature (95% interval)", report["features"])
        height = 40.0 + 18 * len(report["features"]["labels"]) + 30
    else:
        parts = _bars("Mean attribution per channel (95% interval)", report["channels"])
        top = 40 + 18 * len(report["channels"]["labels"]) + 20
        what = "channel x time step" if report["layout"] == "signals" else "pixel"
        more, height = _heatmap(f"Mean attribution per {what}", report["heatmap"], top)
        parts.extend(more)
        height += 20
    parts.append(f'<text x="10" y="{height - 8}" font-size="10">{html.escape(subtitle)}</text>')
    width = 680
    body = "\n".join(parts)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{math.ceil(height)}" '
        f'viewBox="0 0 {width} {math.ceil(height)}" font-family="sans-serif">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n'
    )
    return svg.encode("utf-8")


@dataclass(frozen=True)
class GatheredExplanation:
    """The sites' checked answers combined: the report, its plot, the receipts to record.

    ``report`` is ``None`` when fewer than the study's ``min_sites`` sites answered.
    """

    terms: ExplanationTerms
    report: dict[str, Any] | None
    plot: bytes
    receipts: tuple[SignedAnalysisReceipt, ...]
    sites: tuple[str, ...]
    refused: tuple[str, ...]

    @property
    def report_hash(self) -> str | None:
        """The report's canonical hash (``None`` without a report)."""
        return None if self.report is None else report_hash(self.report)

    def entry(self, run_id: str) -> ModelExplained:
        """The ``model.explained`` payload of this explanation.

        Raises
        ------
        InputError
            If there is no report to record.
        """
        if self.report is None:
            raise InputError("an explanation without a report is not recorded")
        terms = self.terms
        return ModelExplained(
            run_id=run_id,
            model_hash=terms.model_hash,
            study_hash=terms.study_hash,
            terms=terms,
            terms_hash=terms_hash(terms),
            report_hash=report_hash(self.report),
            records=int(self.report["records"]),
            top_features=[str(name)[:128] for name in self.report["top_features"]],
            receipts=list(self.receipts),
            refused=[why[:10_000] for why in self.refused][:1000],
        )


#: How the card describes the attribution method.
_METHOD = (
    "integrated gradients (Captum) from the all-zero input (every standardised input at the "
    "centre of the study's public scaling), per record at each site; each record's "
    "attribution vector clipped to clip_norm in L2, summed, Gaussian noise added and the "
    "cost charged to the site's dataset budget like any analytics query"
)


def card_explanation(gathered: GatheredExplanation, run_id: str) -> dict[str, Any]:
    """The model card's ``explanation`` section of an explanation asked for at release.

    With a report: the report itself (values, standard errors, layout), its hash (what the
    run's ``model.explained`` records) and the SHA-256 of its plot. Without one (too few
    sites answered): the terms and why, with ``report_hash`` null.
    """
    section: dict[str, Any] = {
        "method": _METHOD,
        "run_id": run_id,
        "terms": gathered.terms.to_json(),
        "terms_hash": terms_hash(gathered.terms),
    }
    if gathered.report is None:
        return {**section, "report_hash": None, "not_recorded": list(gathered.refused)[:100]}
    layout = gathered.report["layout"]
    return {
        **section,
        "report_hash": report_hash(gathered.report),
        "report": gathered.report,
        "plot_sha256": sha256_hex(gathered.plot),
        "plot_media_type": "image/svg+xml",
        "plot": "bar chart" if layout == "features" else "bar chart and heat map",
        "ledger": "model.explained of run_id, recorded in the same change as model.released",
    }


def verify_card_explanation(
    card: Mapping[str, Any],
    released: Mapping[str, Any],
    explained: Iterable[Mapping[str, Any]],
    *,
    plot: bytes | None = None,
) -> str:
    """Check a model card's explanation against the ledger; return the report's hash.

    ``released`` is the model's ``model.released`` payload and ``explained`` the
    ``model.explained`` payloads of a verified ledger (or bundle); ``plot`` the report's
    plot, if the auditor has it. The card must be the one ``model.released`` hashes, its
    report must hash to its ``report_hash``, a ``model.explained`` of the same model and run
    must record that hash with the same terms, records and top features, and the plot
    must have the SHA-256 the card names.

    Raises
    ------
    VerificationError
        If any of these does not hold (the message names which).
    """
    model_hash = str(released.get("model_hash", ""))
    if canonical_hash(dict(card)) != released.get("card_hash"):
        raise VerificationError(f"the card is not the one model.released of {model_hash} hashes")
    section = card.get("explanation")
    if not isinstance(section, Mapping) or section.get("report_hash") is None:
        raise VerificationError(f"the card of model {model_hash} has no explanation report")
    report = section.get("report")
    hashed = str(section["report_hash"])
    if not isinstance(report, Mapping) or report_hash(report) != hashed:
        raise VerificationError("the card's explanation report does not hash to its report_hash")
    entries = [
        payload
        for payload in explained
        if payload.get("model_hash") == model_hash and payload.get("report_hash") == hashed
    ]
    if not entries:
        raise VerificationError(f"no model.explained of model {model_hash} records report {hashed}")
    entry = entries[0]
    if entry.get("run_id") != section.get("run_id") or entry.get("run_id") != released.get(
        "run_id"
    ):
        raise VerificationError("the card's explanation was recorded by another run")
    if entry.get("terms") != section.get("terms") or entry.get("terms_hash") != report.get(
        "terms_hash"
    ):
        raise VerificationError(
            "the card's explanation terms are not those model.explained records"
        )
    if entry.get("records") != report.get("records") or list(entry.get("top_features", [])) != list(
        report.get("top_features", [])
    ):
        raise VerificationError(
            "the card's report names other records or top features than model.explained"
        )
    if plot is not None and sha256_hex(plot) != section.get("plot_sha256"):
        raise VerificationError("the plot is not the one the card names (SHA-256 differs)")
    return hashed
