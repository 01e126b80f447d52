"""The site's side of an explanation: attribute, clip, sum, noise, charge, sign.

:class:`ExplanationAgent` answers one ``query.explain`` request
(:mod:`veracity.contracts.explanation` has the terms and the privacy argument):

1. the terms must name the study the request carries and the model whose weights it
   carries (the weights hash to ``model_hash`` and fit the study's model); the study must
   be approved at this site for this code, and its dataset still the registered file.
   Otherwise the site refuses with a signed ``approval.missing``;
2. under the budget pool's lock (:meth:`SiteStore.answer_query`, the analysis queries'
   own path): if this dataset already explained the same terms, the stored noisy answer
   comes back, charged nothing; otherwise the explanation's Gaussian mechanism
   (``[z, 1.0, 1]``) is added to the dataset's history and to the study's, and refused
   with a signed ``budget.refused`` if that would take either past its budget or cap;
3. else the site computes every record's integrated gradients
   (:mod:`veracity.client.attributions`), clips each vector to ``clip_norm``, sums them,
   adds the noise from its ChaCha20 source (:func:`veracity.analytics.mechanism.add_noise`
   with replace-one sensitivity ``2 * clip_norm``), stores the answer with the spend and
   signs an analysis receipt for it.

The privacy guarantee does not depend on the model: whatever weights the coordinator
sends, one record moves the released sum by at most ``2 * clip_norm``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from veracity.analytics.calibration import calibrate_noise_multiplier
from veracity.analytics.mechanism import Release, UnitNoise, add_noise
from veracity.client.analysis import AnalysisAgent, QueryRefusal, ReleaseTerms
from veracity.client.approvals import approved_terms
from veracity.client.datasets import check_registered, load_registered
from veracity.client.site import Site
from veracity.client.store import Dataset
from veracity.client.study_inputs import study_examples
from veracity.contracts.analysis import AnalysisReceipt
from veracity.contracts.explanation import (
    EXPLANATION_QUERY_ID,
    ExplanationTerms,
    SiteExplanation,
    terms_hash,
)
from veracity.core.fields import is_hex64
from veracity.errors import ApprovalMissing, InputError
from veracity.tasks.spec import check_weights
from veracity.tasks.study import Study, parse_study
from veracity.tasks.weights import Weights, weights_hash

__all__ = [
    "ExplanationRequest",
    "ExplanationAnswer",
    "ExplanationOutcome",
    "ExplanationAgent",
    "clip_rows",
    "clipped_sum",
]

log = logging.getLogger(__name__)

#: Computes every record's attribution vector: ``(spec, weights, x, y, steps) -> (n, d)``.
Attribute = Callable[..., npt.NDArray[np.float64]]


@dataclass(frozen=True)
class ExplanationRequest:
    """A coordinator's request to explain a model over this site's records."""

    terms: Mapping[str, Any]
    study: Mapping[str, Any]
    code_hash: str
    weights: Weights


@dataclass(frozen=True)
class ExplanationAnswer:
    """The site's noisy sums and the signed receipt."""

    explanation: SiteExplanation
    receipt: AnalysisReceipt
    signature: str


ExplanationOutcome = ExplanationAnswer | QueryRefusal


def clip_rows(rows: npt.NDArray[np.float64], bound: float) -> npt.NDArray[np.float64]:
    """Each row scaled down to L2 norm at most ``bound`` (rows within it are unchanged)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    scale = np.minimum(1.0, bound / np.maximum(norms, np.finfo(np.float64).tiny))
    clipped: npt.NDArray[np.float64] = rows * scale
    return clipped


def clipped_sum(rows: npt.NDArray[np.float64], bound: float) -> npt.NDArray[np.float64]:
    """The sum of the rows clipped to ``bound``: one row moves it by at most ``bound``."""
    total: npt.NDArray[np.float64] = clip_rows(rows, bound).sum(axis=0)
    return total


def _default_attribute(*args: Any, **kwargs: Any) -> npt.NDArray[np.float64]:
    from veracity.client.attributions import integrated_gradients

    return integrated_gradients(*args, **kwargs)


class ExplanationAgent:
    """Answers explanation requests for one site (see the module docstring).

    Parameters
    ----------
    site
        The opened site.
    seed
        Derives the noise key from a seed (tests only); ``None`` keys ChaCha20 from the OS.
    attribute
        Computes the per-record attributions (tests may count calls); Captum's integrated
        gradients by default.
    """

    def __init__(
        self, site: Site, *, seed: int | None = None, attribute: Attribute | None = None
    ) -> None:
        self.site = site
        # The analysis agent's noise source and signed refusals, shared.
        self._analyst = AnalysisAgent(site, seed=seed)
        self._attribute = attribute or _default_attribute

    @property
    def _noise(self) -> UnitNoise:
        return self._analyst._noise

    def _refuse(self, study_hash: str, reason: str) -> QueryRefusal:
        return self._analyst.refuse_approval(study_hash, EXPLANATION_QUERY_ID, reason)

    def _check(self, request: ExplanationRequest) -> tuple[ExplanationTerms, Study]:
        if not is_hex64(request.code_hash):
            raise InputError("code_hash must be 64 lowercase hex characters")
        terms = ExplanationTerms.parse(dict(request.terms), what="explanation terms")
        study = parse_study(dict(request.study))
        return terms, study

    def handle(self, request: ExplanationRequest) -> ExplanationOutcome:
        """Explain the request's model over this site's records, or refuse with a signature.

        Raises
        ------
        InputError
            If the terms or the study document are malformed.
        VerificationError
            If the accountants disagree.
        """
        terms, study = self._check(request)
        try:
            if terms.study_hash != study.study_hash:
                raise ApprovalMissing("the explanation's terms name another study")
            _decision, dataset, cap = approved_terms(
                self.site, study=study, study_hash=terms.study_hash, code_hash=request.code_hash
            )
            try:
                check_weights(study.model_spec, request.weights, what="model weights")
            except InputError as err:
                raise ApprovalMissing(f"the model does not fit the study: {err}") from err
            if weights_hash(request.weights) != terms.model_hash:
                raise ApprovalMissing("the weights sent are not the model the terms name")
            x, y = study_examples(study, load_registered(dataset, check_registered(dataset)))
        except ApprovalMissing as err:
            return self._refuse(terms.study_hash, str(err))
        return self._answer(terms, study, dataset, cap, x, y, request.weights)

    def _answer(
        self,
        terms: ExplanationTerms,
        study: Study,
        dataset: Dataset,
        cap: float,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        weights: Weights,
    ) -> ExplanationOutcome:
        hashed_terms = terms_hash(terms)
        release_terms = ReleaseTerms(
            study_hash=study.study_hash,
            study_id=study.study_id,
            query_id=EXPLANATION_QUERY_ID,
            query_hash=hashed_terms,
            delta=terms.delta,
            noise_multiplier=calibrate_noise_multiplier(terms.epsilon, terms.delta),
            sensitivity=2.0 * terms.clip_norm,
            suppression_threshold=0.0,
            whose="the explanation's",
        )

        def compute() -> dict[str, Any]:
            rows = self._attribute(study.model_spec, weights, x, y, steps=terms.steps)
            total = clipped_sum(np.asarray(rows, dtype=np.float64), terms.clip_norm)
            release = Release(total, np.ones(len(total)), release_terms.sensitivity, ())
            noisy = add_noise(
                release, noise_multiplier=release_terms.noise_multiplier, unit_noise=self._noise
            )
            return SiteExplanation(
                query_hash=hashed_terms,
                records=len(x),
                values=list(noisy.values),
                stds=list(noisy.stds),
            ).to_json()

        released = self._analyst.release(release_terms, dataset, cap, compute)
        if isinstance(released, QueryRefusal):
            return released
        log.info(
            "site %s explained model %s... (epsilon now %.4f%s)",
            self.site.name,
            terms.model_hash[:16],
            released.receipt.epsilon,
            ", stored answer" if released.receipt.repeated else "",
        )
        return ExplanationAnswer(
            SiteExplanation.parse(released.answer), released.receipt, released.signature
        )
