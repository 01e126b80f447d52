"""The site's witness: its own key, and a loop that cosigns the coordinator's checkpoints.

Every site agent witnesses the coordinator's log (``veracity site start --api URL``): it
reads the newest checkpoint note from ``/ledger/witness/checkpoint``, the consistency proof
from the size it cosigned last, and the entries in between; :class:`Witness` checks them
(signature under the pinned log key, consistency, the site's own key events) and the
cosignature is posted back. The witness key is not the site's statement key:
``DIR/keys/_witness.pem`` (0600), ``.pub`` and ``.vkey`` (the verifier key auditors list in
their policy). The log key is pinned in ``DIR/witness/log.vkey``: given by the operator
(``--log-vkey``), else learnt from the coordinator on first contact and kept from then on.
A refusal is logged at ERROR and the witness keeps refusing; inconsistent notes are kept
in ``DIR/witness/evidence/``.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from veracity.client.site import Site, SitePaths
from veracity.crypto.keys import (
    SigningKey,
    VerifyKey,
    generate_signing_key,
    load_signing_key,
    load_verify_key,
    private_key_path,
    write_key_pair,
)
from veracity.errors import ConfigError, InputError, TransportError, VeracityError
from veracity.ledger.note import (
    SIG_COSIGNATURE_V1,
    CheckpointText,
    Note,
    NoteVerifier,
    origin_log_id,
)
from veracity.ledger.witness import WITNESS_KEY_NAME, Witness, write_atomic
from veracity.ledger.witnessed import witness_name
from veracity.supervise import ManagedProcess, ProcessGroup, python_module_argv

__all__ = [
    "ensure_witness_key",
    "witness_verifier",
    "held_site_keys",
    "WitnessApi",
    "SiteWitness",
    "open_site_witness",
    "start_site_witness",
    "main",
]

log = logging.getLogger(__name__)

_PAGE = 1000


def ensure_witness_key(site_dir: Path, site_name: str) -> SigningKey:
    """The site's witness key, made (with its ``.vkey``) the first time it is needed."""
    keys = site_dir / "keys"
    path = private_key_path(keys, WITNESS_KEY_NAME)
    if path.exists():
        key = load_signing_key(path)
    else:
        key = generate_signing_key()
        write_key_pair(keys, WITNESS_KEY_NAME, key)
    verifier = NoteVerifier.for_key(
        witness_name(site_name), key.public, sig_type=SIG_COSIGNATURE_V1
    )
    vkey_path = keys / f"{WITNESS_KEY_NAME}.vkey"
    if not vkey_path.exists() or vkey_path.read_text(encoding="utf-8").strip() != verifier.vkey():
        write_atomic(vkey_path, (verifier.vkey() + "\n").encode("ascii"))
    return key


def witness_verifier(site_dir: Path) -> NoteVerifier:
    """The site's witness verifier key (made if absent).

    Raises
    ------
    ConfigError
        If ``site_dir`` is not a site.
    """
    with Site.open(site_dir) as site:
        key = ensure_witness_key(site_dir, site.name)
        return NoteVerifier.for_key(
            witness_name(site.name), key.public, sig_type=SIG_COSIGNATURE_V1
        )


class WitnessApi:
    """The coordinator's ``/ledger/witness`` routes, with a site token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        ca_cert: Path | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        verify: ssl.SSLContext | bool = True
        if ca_cert is not None:
            verify = ssl.create_default_context(cafile=str(ca_cert))
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            verify=verify,
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {token}"},
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise TransportError(f"{method} {path}: {err}") from err
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise TransportError(
                f"{method} {path} answered {response.status_code}: {response.text[:300]}"
            )
        return response.json()

    def vkey(self) -> str:
        """The log's verifier key as the coordinator states it."""
        return str(self._call("GET", "/ledger/witness/vkey")["vkey"])

    def checkpoint(self) -> str | None:
        """The newest checkpoint note (``None`` before the first checkpoint)."""
        document = self._call("GET", "/ledger/witness/checkpoint")
        return None if document is None else str(document["note"])

    def consistency(self, old: int, new: int) -> list[bytes]:
        """The consistency proof from ``old`` to ``new``."""
        document = self._call(
            "GET", "/ledger/witness/consistency", params={"old_size": old, "new_size": new}
        )
        return [base64.b64decode(item, validate=True) for item in document["proof"]]

    def entries(self, start: int, end: int) -> list[bytes]:
        """The exact bytes of entries ``start`` to ``end - 1``."""
        found: list[bytes] = []
        while start + len(found) < end:
            page = self._call(
                "GET",
                "/ledger/witness/entries",
                params={"start": start + len(found), "end": end},
            )
            batch = [str(text).encode("utf-8") for text in page["entries"]]
            if not batch:
                raise TransportError(f"the coordinator served no entry at {start + len(found)}")
            found += batch
        return found

    def post(self, size: int, line: str, vkey: str) -> None:
        """Post a cosignature of the checkpoint of ``size`` entries."""
        body = {"tree_size": size, "cosignature": line, "vkey": vkey}
        self._call("POST", "/ledger/witness/cosignatures", json=body)


def held_site_keys(paths: SitePaths) -> list[VerifyKey]:
    """The statement public keys the site holds now: its key, and a rotation's new key.

    Read from the key files each time (a ``site rotate-key`` during a long ``site start``
    makes a new key the witness must know of before the rotation is recorded).

    Raises
    ------
    ConfigError, CryptoError
        If a public key file is missing or unreadable.
    """
    keys = [load_verify_key(paths.public_key)]
    if paths.next_public_key.exists():
        keys.append(load_verify_key(paths.next_public_key))
    return keys


@dataclass
class SiteWitness:
    """A site's witness and the API it talks to.

    ``site_keys``, when given, re-reads the statement keys the site holds before each
    cosignature; the witness then knows every key the site held while it ran (a key event
    about the site's name enrolling any other key is still refused, loudly). The log's own
    key history is followed from the entries each cosignature scans (:class:`Witness`).
    """

    witness: Witness
    api: WitnessApi
    site_keys: Callable[[], Sequence[VerifyKey]] | None = None

    def _refresh_site_keys(self) -> None:
        if self.site_keys is None:
            return
        held = {key.raw.hex() for key in self.site_keys()}
        new = held - self.witness.site_keys
        if new:
            log.info(
                "witness %s: the site now holds %d more statement key(s)",
                self.witness.name,
                len(new),
            )
            self.witness.site_keys |= new

    def once(self) -> dict[str, Any]:
        """Witness the newest checkpoint if it is new; what was done.

        Raises
        ------
        VerificationError
            If the witness refuses (see :meth:`Witness.witness`).
        TransportError
            If the coordinator cannot be reached.
        """
        text = self.api.checkpoint()
        if text is None:
            return {"cosigned": None, "reason": "no checkpoint yet"}
        self._refresh_site_keys()
        size = CheckpointText.parse(Note.parse(text).text).tree_size
        old = self.witness.state().tree_size
        if size == old and old:
            signed = Note.parse(self.witness.state().note)
            mine = [s for s in Note.parse(text).signatures if self.witness.verifier.matches(s)]
            if signed.text == Note.parse(text).text and mine:
                return {"cosigned": None, "tree_size": size, "reason": "already cosigned"}
        proof = self.api.consistency(old, size) if 0 < old < size else []
        entries = self.api.entries(old, size) if size > old else []
        signature = self.witness.witness(text, proof, entries)
        self.api.post(size, signature.line(), self.witness.verifier.vkey())
        return {"cosigned": size, "witness": self.witness.name}

    def run(self, stop: threading.Event, *, interval: float) -> None:
        """Witness every ``interval`` seconds until ``stop`` is set; refusals are logged."""
        while not stop.is_set():
            try:
                done = self.once()
                if done.get("cosigned") is not None:
                    log.info("witness %s cosigned size %s", self.witness.name, done["cosigned"])
            except TransportError as err:
                log.warning("witness %s: %s", self.witness.name, err)
            except VeracityError as err:
                log.error("witness %s REFUSES to cosign: %s", self.witness.name, err)
            stop.wait(interval)


def open_site_witness(
    site_dir: Path,
    *,
    api_url: str,
    token: str,
    ca_cert: Path | None = None,
    log_vkey: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> SiteWitness:
    """The witness of the site in ``site_dir`` against the coordinator at ``api_url``.

    The site learns its log id from the log key's origin if it did not know it yet
    (:meth:`~veracity.client.site.Site.bind_log`).

    Raises
    ------
    ConfigError
        If ``site_dir`` is not a site, ``log_vkey`` differs from the pinned one, or the log
        is not the one the site signs for.
    """
    with Site.open(site_dir) as site:
        name = site.name
        paths = site.paths
    # A rotation waiting to be recorded hands the name to a key the site holds too; the
    # keys are read again before each cosignature (SiteWitness.site_keys).
    site_keys = held_site_keys(paths)
    key = ensure_witness_key(site_dir, name)
    api = WitnessApi(api_url, token, ca_cert=ca_cert, transport=transport)
    directory = site_dir / "witness"
    pinned_path = directory / "log.vkey"
    pinned = pinned_path.read_text(encoding="utf-8").strip() if pinned_path.exists() else None
    if log_vkey and pinned and log_vkey.strip() != pinned:
        raise ConfigError(f"the log key given differs from the one pinned in {pinned_path}")
    chosen = log_vkey or pinned
    if chosen is None:
        chosen = api.vkey()
        log.warning("witness of %s: pinning the log key the coordinator states: %s", name, chosen)
    if chosen != pinned:
        write_atomic(pinned_path, (chosen.strip() + "\n").encode("ascii"))
    verifier = NoteVerifier.parse(chosen)
    if verifier.sig_type != 0x01:
        raise ConfigError("the log key is an Ed25519 note key (type 0x01)")
    log_id = origin_log_id(verifier.name)
    if log_id is not None:
        # The site signs for the log it witnesses: a site enrolled before it kept its log id
        # learns it here; one that signs for another log refuses to witness this one.
        with Site.open(site_dir) as site:
            site.bind_log(log_id)
    witness = Witness(
        directory,
        site=name,
        key=key,
        name=witness_name(name),
        log=verifier,
        site_keys=site_keys,
        clock=time.time,
    )
    return SiteWitness(witness, api, site_keys=lambda: held_site_keys(paths))


def start_site_witness(
    site_dir: Path,
    group: ProcessGroup,
    *,
    api_url: str,
    token: str,
    ca_cert: Path | None = None,
    log_vkey: str | None = None,
    interval: float = 2.0,
) -> ManagedProcess:
    """Start the witness process of the site in ``site_dir`` in ``group``.

    Raises
    ------
    ConfigError
        If ``site_dir`` is not a site, or the process cannot start.
    """
    witness_verifier(site_dir)  # a site, with its witness key, before the process starts
    # The process runs in the site directory: a relative --data-dir would name site-a/site-a.
    args = ["--data-dir", str(site_dir.resolve()), "--api", api_url, "--interval", str(interval)]
    if ca_cert is not None:
        args += ["--ca-cert", str(ca_cert.resolve())]
    if log_vkey:
        args += ["--log-vkey", log_vkey]
    env = {**os.environ, "VERACITY_API_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    return group.start(
        ManagedProcess(
            name=f"witness[{site_dir.name}]",
            argv=python_module_argv("veracity.client.witness", *args),
            log_path=site_dir / "logs" / "witness.log",
            env=env,
            cwd=site_dir,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m veracity.client.witness``: the witness process ``site start`` runs.

    The site token comes from ``VERACITY_API_TOKEN`` (never the command line).
    """
    parser = argparse.ArgumentParser(prog="veracity-witness")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--api", required=True)
    parser.add_argument("--ca-cert", type=Path)
    parser.add_argument("--log-vkey")
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise
    token = os.environ.get("VERACITY_API_TOKEN", "")
    if not token:
        sys.stderr.write("error: set VERACITY_API_TOKEN to this site's API token\n")
        return 2
    try:
        witness = open_site_witness(
            args.data_dir,
            api_url=args.api,
            token=token,
            ca_cert=args.ca_cert,
            log_vkey=args.log_vkey,
        )
    except (ConfigError, InputError, TransportError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    stop = threading.Event()
    try:
        witness.run(stop, interval=args.interval)
    except KeyboardInterrupt:
        stop.set()
    return 0


if __name__ == "__main__":  # pragma: no cover - the witness process
    sys.exit(main())
