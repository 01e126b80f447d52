"""A research network on one machine: a coordinator and hospital sites on loopback.

The building blocks the demo, the federation tests and the federation benchmark share.
Each site lives in its own directory with its own keys, store and data file; the
coordinator sees only what sites send it (public keys and signed statements), exactly as
across real machines. Nothing here bypasses a check: sites sign on their side, the
coordinator verifies and records on its side.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from veracity.client.approvals import approve_study
from veracity.client.datasets import ImagesDeclared, SignalsDeclared, register_dataset
from veracity.client.site import Site, SitePaths, init_site
from veracity.client.store import SignedStatement
from veracity.client.supernode import SiteNode, SuperNodeOptions, start_site_node
from veracity.crypto.keys import load_verify_key
from veracity.crypto.supernode import load_supernode_public_key
from veracity.errors import TransportError
from veracity.server.coordinator import CoordinatorService, operator
from veracity.server.coordinator.federation import RunSummary
from veracity.server.coordinator.records import EnrolledSite
from veracity.supervise import ProcessGroup
from veracity.tasks.breast_cancer import FEATURES, LABEL, Partition, write_csv
from veracity.tasks.study import BINARY_CLASSES, Study

__all__ = [
    "LocalSite",
    "create_data_site",
    "create_site",
    "enrol",
    "approve",
    "start_nodes",
    "wait_run",
    "DATASET_ID",
]

DATASET_ID = "breast-cancer"


@dataclass(frozen=True)
class LocalSite:
    """A hospital of the local network."""

    name: str
    directory: Path
    data_file: Path
    rows: int
    #: The dataset registration as signed at ``site init`` (before the site knew its log).
    registered: SignedStatement
    dataset_id: str = DATASET_ID

    @property
    def registration(self) -> SignedStatement:
        """The dataset registration as the site's outbox holds it now.

        A site registers its data before it enrols, so it first signs for no log; its
        enrolment proof binds it to the coordinator's log and re-signs the queued statement
        for it (:meth:`veracity.client.site.Site.bind_log`). Read after enrolment, this is
        the statement the coordinator's ledger accepts.
        """
        with Site.open(self.directory) as site:
            for entry in site.store.outbox(include_delivered=True):
                if entry.statement.statement_id == self.registered.statement_id:
                    return entry.statement
        return self.registered

    @property
    def public_key_pem(self) -> str:
        """The site's Ed25519 public key (PEM)."""
        return load_verify_key(SitePaths(self.directory, self.name).public_key).pem()

    def enrolment_proof(self, log_id: str) -> str:
        """The site key's proof of possession for the log ``log_id``."""
        with Site.open(self.directory) as site:
            return site.enrolment_proof(log_id)

    @property
    def supernode_public_key(self) -> str:
        """The site's SuperNode public key (OpenSSH line)."""
        paths = SitePaths(self.directory, self.name)
        return load_supernode_public_key(paths.supernode_public_key)


def create_site(
    directory: Path,
    name: str,
    partition: Partition,
    *,
    epsilon_budget: float = 10.0,
) -> LocalSite:
    """Initialise a site in ``directory``, write its patients as CSV and register them.

    Raises
    ------
    ConfigError
        If ``directory`` already holds a site.
    InputError
        If the data do not validate.
    """
    init_site(directory, name)
    data_file = write_csv(partition, directory / "data" / f"{DATASET_ID}.csv")
    with Site.open(directory) as site:
        _dataset, statement = register_dataset(
            site,
            dataset_id=DATASET_ID,
            path=data_file,
            label=LABEL,
            features=list(FEATURES),
            epsilon_budget=epsilon_budget,
        )
    return LocalSite(name, directory, data_file, partition.rows, statement)


def create_data_site(
    directory: Path,
    name: str,
    *,
    dataset_id: str,
    path: Path,
    label: str,
    classes: Sequence[str] = BINARY_CLASSES,
    declared: SignalsDeclared | ImagesDeclared | None = None,
    features: Sequence[str] | None = None,
    epsilon_budget: float = 10.0,
    min_rows: int = 50,
) -> LocalSite:
    """Initialise a site in ``directory`` and register the data at ``path`` (any kind).

    ``path`` is a table, signals or images as :func:`veracity.client.datasets.register_dataset`
    takes them (``declared`` says which, for signals and images). ``min_rows`` is the site's
    smallest dataset (its ``site init --min-rows``).

    Raises
    ------
    ConfigError
        If ``directory`` already holds a site.
    InputError
        If the data do not validate.
    """
    init_site(directory, name, min_rows=min_rows)
    with Site.open(directory) as site:
        dataset, statement = register_dataset(
            site,
            dataset_id=dataset_id,
            path=path,
            label=label,
            features=features,
            epsilon_budget=epsilon_budget,
            classes=classes,
            declared=declared,
        )
    return LocalSite(name, directory, path, dataset.rows, statement, dataset_id)


def enrol(coordinator: CoordinatorService, site: LocalSite) -> EnrolledSite:
    """Enrol ``site`` (keys, SuperNode registration) and record its dataset registration.

    Both as the local operator, through the coordinator service (the admin API's path).
    """
    actor = operator()
    enrolled = coordinator.enrol_site(
        actor,
        site.name,
        public_key_pem=site.public_key_pem,
        supernode_public_key=site.supernode_public_key,
        proof=site.enrolment_proof(coordinator.ledger.log_id),
    ).value
    statement = site.registration
    coordinator.record_statement(
        actor, statement.kind, site.name, statement.payload, statement.signature
    )
    return enrolled


def approve(site: LocalSite, study: Study, *, epsilon_cap: float) -> SignedStatement:
    """The site operator approves ``study`` on its dataset; returns the signed statement."""
    with Site.open(site.directory) as opened:
        _decision, statement, _review = approve_study(
            opened, study, dataset_id=site.dataset_id, epsilon_cap=epsilon_cap
        )
    return statement


def start_nodes(
    coordinator: CoordinatorService,
    sites: Sequence[LocalSite],
    group: ProcessGroup,
    *,
    idle_poll: float = 0.5,
    timeout: float = 240.0,
) -> list[SiteNode]:
    """Start every site's SuperNode and worker together, then wait until all are ready."""
    options = SuperNodeOptions(
        superlink=coordinator.home.superlink_address,
        ca_cert=coordinator.home.tls.ca_cert,
        idle_poll=idle_poll,
    )
    nodes = [start_site_node(site.directory, options, group, wait=False) for site in sites]
    for node in nodes:
        node.wait_ready(timeout=timeout)
    return nodes


def wait_run(
    coordinator: CoordinatorService, run_id: str, *, timeout: float, interval: float = 0.5
) -> RunSummary:
    """Poll the SuperLink until the run ``run_id`` has ended; what it says of it then.

    Raises
    ------
    TransportError
        If it has not ended after ``timeout`` seconds, the SuperLink does not answer, or
        it no longer knows the run (it restarted).
    """
    deadline = time.monotonic() + timeout
    while True:
        summary = coordinator.run_status(run_id)
        if summary is None:
            raise TransportError(f"the SuperLink no longer knows run {run_id} (it restarted)")
        if summary.finished:
            return summary
        if time.monotonic() >= deadline:
            raise TransportError(f"run {run_id} still {summary.state} after {timeout:.0f} s")
        time.sleep(interval)
