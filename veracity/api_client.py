"""A typed client for the coordinator's admin API: requests in, the API's own schemas out.

Each method parses the answer with the response model the route declares
(:mod:`veracity.server.api.schemas`), so a caller reads fields mypy knows instead of
guessing the shape of a JSON document. Errors arrive as the API's problem documents
(docs/api.md "One error contract") and are raised as :class:`ApiError` with their status,
code and detail. List methods read every page (``offset``/``next_offset``). It covers
what ``veracity demo`` and ``veracity admin`` call; the transport is injectable
(``httpx.ASGITransport`` to talk to an app in process).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from veracity.api_options import api_base, check_credentials
from veracity.errors import TransportError
from veracity.server.api.schemas import (
    DatasetListOut,
    ExplanationListOut,
    ExplanationStartedOut,
    ModelListOut,
    ModelOut,
    PrincipalOut,
    PruneOut,
    RecordedOut,
    RoundListOut,
    RunListOut,
    RunLogsOut,
    RunOut,
    RunStartedOut,
    RunStoppedOut,
    SiteEnrolledOut,
    SiteListOut,
    SiteOut,
    SiteRevokedOut,
    SiteRotatedOut,
    StudyListOut,
    StudyOut,
    StudyProposedOut,
    TokenCreatedOut,
    TokenListOut,
    TokenOut,
)

__all__ = ["ApiError", "ApiSession", "CoordinatorClient"]

_Model = TypeVar("_Model", bound=BaseModel)
_Listed = TypeVar(
    "_Listed",
    DatasetListOut,
    ExplanationListOut,
    ModelListOut,
    RoundListOut,
    RunListOut,
    SiteListOut,
    StudyListOut,
    TokenListOut,
)
#: Items asked for per page when a list is read whole (the server may cap it lower).
PAGE_SIZE = 500


class ApiError(TransportError):
    """The admin API refused a request, or answered something that is not its schema.

    Parameters
    ----------
    message
        What was asked and what came back.
    status
        The HTTP status (0 when the answer could not be parsed).
    code
        The problem document's ``code`` (empty when there was none).
    """

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class CoordinatorClient:
    """The admin API at ``base_url`` (e.g. ``https://127.0.0.1:8443/api/v1``).

    Parameters
    ----------
    base_url
        The API base, ``/api/v1`` included.
    ca_cert
        PEM file of the coordinator's CA (``DIR/tls/ca.crt``); the system store without it.
    timeout
        Seconds per request.
    transport
        Another httpx transport (tests); ``ca_cert`` is then unused.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ca_cert: Path | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        verify: ssl.SSLContext | bool = True
        if ca_cert is not None:
            verify = ssl.create_default_context(cafile=str(ca_cert))
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), verify=verify, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        """One request with ``token``; the answer if it is not an error.

        Raises
        ------
        ApiError
            If the API answers 4xx or 5xx (with the problem's status, code and detail).
        TransportError
            If the API cannot be reached.
        """
        try:
            response = self._http.request(
                method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs
            )
        except httpx.HTTPError as err:
            raise TransportError(f"{method} {path}: {err}") from err
        if response.status_code >= 400:
            self._raise_problem(method, path, response)
        return response

    @staticmethod
    def _raise_problem(method: str, path: str, response: httpx.Response) -> NoReturn:
        try:
            problem = response.json()
            code, detail = str(problem["code"]), str(problem["detail"])
        except (ValueError, KeyError, TypeError):
            code, detail = "", response.text[:500]
        raise ApiError(
            f"{method} {path} answered {response.status_code} {code}: {detail}",
            status=response.status_code,
            code=code,
        )

    def _parsed(
        self, model: type[_Model], method: str, path: str, token: str, **kwargs: Any
    ) -> _Model:
        response = self.send(method, path, token, **kwargs)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as err:
            raise ApiError(
                f"{method} {path} answered a document that is not a {model.__name__}: {err}",
                status=0,
                code="",
            ) from err

    def _every_page(self, model: type[_Listed], path: str, token: str) -> _Listed:
        """``GET path`` page after page (``offset``/``next_offset``); every item in one."""
        first = self._parsed(model, "GET", path, token, params={"limit": PAGE_SIZE})
        items = list(first.items)
        following, offset = first.next_offset, 0
        while following is not None:
            if following <= offset:  # a server must move forward, or this would never end
                raise ApiError(
                    f"GET {path} answered next_offset {following} after offset {offset}",
                    status=0,
                    code="",
                )
            offset = following
            params = {"offset": following, "limit": PAGE_SIZE}
            page = self._parsed(model, "GET", path, token, params=params)
            if not page.items:
                break
            items.extend(page.items)
            following = page.next_offset
        return first.model_copy(update={"items": items, "next_offset": None})

    def enrol_site(
        self, token: str, *, name: str, public_key: str, supernode_public_key: str, proof: str
    ) -> SiteEnrolledOut:
        """``POST /sites`` (admin); ``proof`` is the site key's proof of possession."""
        body = {
            "name": name,
            "public_key": public_key,
            "supernode_public_key": supernode_public_key,
            "proof": proof,
        }
        return self._parsed(SiteEnrolledOut, "POST", "/sites", token, json=body)

    def register_dataset(
        self, token: str, *, payload: dict[str, Any], signature: str
    ) -> RecordedOut:
        """``POST /datasets`` (the site's own token)."""
        body = {"payload": payload, "signature": signature}
        return self._parsed(RecordedOut, "POST", "/datasets", token, json=body)

    def propose_study(self, token: str, document: dict[str, Any]) -> StudyProposedOut:
        """``POST /studies`` (admin)."""
        return self._parsed(StudyProposedOut, "POST", "/studies", token, json=document)

    def study(self, token: str, study_hash: str) -> StudyOut:
        """``GET /studies/{hash}``."""
        return self._parsed(StudyOut, "GET", f"/studies/{study_hash}", token)

    def decide(
        self, token: str, study_hash: str, *, kind: str, payload: dict[str, Any], signature: str
    ) -> RecordedOut:
        """``POST /studies/{hash}/decisions`` (the site's own token)."""
        body = {"kind": kind, "payload": payload, "signature": signature}
        path = f"/studies/{study_hash}/decisions"
        return self._parsed(RecordedOut, "POST", path, token, json=body)

    def start_run(
        self, token: str, study_hash: str, *, explain_at_release: dict[str, Any] | None = None
    ) -> RunStartedOut:
        """``POST /runs`` (admin); ``explain_at_release``: ``ExplainIn``'s fields."""
        body: dict[str, Any] = {"study_hash": study_hash}
        if explain_at_release is not None:
            body["explain_at_release"] = explain_at_release
        return self._parsed(RunStartedOut, "POST", "/runs", token, json=body)

    def prune_runs(
        self, token: str, *, older_than_days: int, include_released: bool, dry_run: bool
    ) -> PruneOut:
        """``POST /runs/prune`` (admin): retention of the round archive."""
        body = {
            "older_than_days": older_than_days,
            "include_released": include_released,
            "dry_run": dry_run,
        }
        return self._parsed(PruneOut, "POST", "/runs/prune", token, json=body)

    def run(self, token: str, run_id: str) -> RunOut:
        """``GET /runs/{id}`` (admin)."""
        return self._parsed(RunOut, "GET", f"/runs/{run_id}", token)

    def rounds(self, token: str, run_id: str) -> RoundListOut:
        """``GET /runs/{id}/rounds`` (admin)."""
        return self._every_page(RoundListOut, f"/runs/{run_id}/rounds", token)

    def model(self, token: str, model_hash: str) -> ModelOut:
        """``GET /models/{hash}``: the model's architecture, features and card."""
        return self._parsed(ModelOut, "GET", f"/models/{model_hash}", token)

    def explain_model(
        self,
        token: str,
        model_hash: str,
        *,
        epsilon: float,
        clip_norm: float,
        steps: int,
        delta: float | None,
    ) -> ExplanationStartedOut:
        """``POST /models/{hash}/explanations`` (admin): start an explanation run."""
        body: dict[str, Any] = {"epsilon": epsilon, "clip_norm": clip_norm, "steps": steps}
        if delta is not None:
            body["delta"] = delta
        path = f"/models/{model_hash}/explanations"
        return self._parsed(ExplanationStartedOut, "POST", path, token, json=body)

    def explanations(self, token: str, model_hash: str) -> ExplanationListOut:
        """``GET /models/{hash}/explanations``: the model's explanation reports."""
        return self._every_page(ExplanationListOut, f"/models/{model_hash}/explanations", token)

    def weights(self, token: str, model_hash: str) -> bytes:
        """``GET /models/{hash}/weights`` (admin): the plaintext weights file."""
        return self.send("GET", f"/models/{model_hash}/weights", token).content

    def run_archive(self, token: str, run_id: str) -> bytes:
        """``GET /runs/{run_id}/archive`` (admin, auditor): the run archive, zipped.

        Holds the whole archive in memory; :meth:`download_run_archive` does not.
        """
        return self.send("GET", f"/runs/{run_id}/archive", token).content

    def download_run_archive(self, token: str, run_id: str, target: IO[bytes]) -> int:
        """``GET /runs/{run_id}/archive`` written to ``target`` as it arrives; bytes written.

        Raises
        ------
        ApiError
            If the API answers 4xx or 5xx.
        TransportError
            If the API cannot be reached or the download breaks off.
        """
        path = f"/runs/{run_id}/archive"
        written = 0
        try:
            with self._http.stream(
                "GET", path, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_problem("GET", path, response)
                for chunk in response.iter_bytes(1 << 20):
                    target.write(chunk)
                    written += len(chunk)
        except httpx.HTTPError as err:
            raise TransportError(f"GET {path}: {err}") from err
        return written

    def export_ledger(self, token: str) -> bytes:
        """``GET /ledger/export``: the ledger bundle (JSON lines)."""
        return self.send("GET", "/ledger/export", token).content

    def whoami(self, token: str) -> PrincipalOut:
        """``GET /whoami``: the token's principal."""
        return self._parsed(PrincipalOut, "GET", "/whoami", token)

    def sites(self, token: str) -> SiteListOut:
        """``GET /sites`` (admin)."""
        return self._every_page(SiteListOut, "/sites", token)

    def site(self, token: str, name: str) -> SiteOut:
        """``GET /sites/{name}``."""
        return self._parsed(SiteOut, "GET", f"/sites/{name}", token)

    def revoke_site(
        self, token: str, name: str, *, reason: str, withdraw_supernode: bool
    ) -> SiteRevokedOut:
        """``POST /sites/{name}/revoke`` (admin)."""
        body = {"reason": reason, "withdraw_supernode": withdraw_supernode}
        return self._parsed(SiteRevokedOut, "POST", f"/sites/{name}/revoke", token, json=body)

    def rotate_site(self, token: str, name: str, *, handover: dict[str, Any]) -> SiteRotatedOut:
        """``POST /sites/{name}/rotations`` (admin): record the site's key hand-over."""
        return self._parsed(
            SiteRotatedOut, "POST", f"/sites/{name}/rotations", token, json=handover
        )

    def datasets(self, token: str) -> DatasetListOut:
        """``GET /datasets``: the latest registration per site and dataset."""
        return self._every_page(DatasetListOut, "/datasets", token)

    def studies(self, token: str) -> StudyListOut:
        """``GET /studies``."""
        return self._every_page(StudyListOut, "/studies", token)

    def runs(self, token: str) -> RunListOut:
        """``GET /runs`` (admin)."""
        return self._every_page(RunListOut, "/runs", token)

    def stop_run(self, token: str, run_id: str) -> RunStoppedOut:
        """``POST /runs/{id}/stop`` (admin)."""
        return self._parsed(RunStoppedOut, "POST", f"/runs/{run_id}/stop", token)

    def run_logs(self, token: str, run_id: str, *, after: float, wait: float) -> RunLogsOut:
        """``GET /runs/{id}/logs``: log text after ``after``, waiting up to ``wait`` s."""
        params = {"after": after, "wait": wait}
        return self._parsed(RunLogsOut, "GET", f"/runs/{run_id}/logs", token, params=params)

    def models(self, token: str) -> ModelListOut:
        """``GET /models``: released models."""
        return self._every_page(ModelListOut, "/models", token)

    def create_token(
        self, token: str, *, role: str, name: str, site: str | None, expires_in_days: int
    ) -> TokenCreatedOut:
        """``POST /tokens`` (admin): the new token (shown once) and its record."""
        body: dict[str, Any] = {"role": role, "name": name, "expires_in_days": expires_in_days}
        if site is not None:
            body["site"] = site
        return self._parsed(TokenCreatedOut, "POST", "/tokens", token, json=body)

    def tokens(self, token: str) -> TokenListOut:
        """``GET /tokens`` (admin): every token's record, never a token."""
        return self._every_page(TokenListOut, "/tokens", token)

    def revoke_token(self, token: str, token_id: str) -> TokenOut:
        """``POST /tokens/{id}/revoke`` (admin)."""
        return self._parsed(TokenOut, "POST", f"/tokens/{token_id}/revoke", token)

    def provenance(self, token: str, model_hash: str) -> dict[str, Any]:
        """``GET /ledger/provenance/{hash}``: the model's W3C PROV-JSON document."""
        document = self.send("GET", f"/ledger/provenance/{model_hash}", token).json()
        if not isinstance(document, dict):
            raise ApiError("the provenance answer is not a JSON object", status=0, code="")
        return document


class ApiSession:
    """A command's connection: the client of ``server``'s admin API and the caller's token.

    What every ``veracity admin`` and ``veracity analysis`` command opens, from the options
    of :mod:`veracity.api_options`, and closes when it ends.

    Raises
    ------
    ConfigError
        If there is no token or the CA certificate file is missing.
    """

    def __init__(self, server: str, token: str | None, ca_cert: Path | None) -> None:
        self.token = check_credentials(token, ca_cert)
        self.server = server
        self.client = CoordinatorClient(api_base(server), ca_cert=ca_cert)

    def __enter__(self) -> ApiSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
