"""Fixtures for the site agent: a deterministic clock, sites, breast-cancer data and studies."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.client.support import SITE, TickingClock, make_study
from veracity.client.approvals import approve_study
from veracity.client.datasets import register_dataset
from veracity.client.service import SiteAgent
from veracity.client.site import Clock, Site, init_site
from veracity.tasks import breast_cancer
from veracity.tasks.study import Study


@pytest.fixture
def clock() -> Clock:
    return TickingClock()


@pytest.fixture(scope="session")
def federation() -> breast_cancer.FederatedSplit:
    return breast_cancer.federated_split(3, seed=0)


@pytest.fixture(scope="session")
def _site_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TickingClock]:
    """SITE initialised once per process, and the clock it was initialised with."""
    clock = TickingClock()
    root = tmp_path_factory.mktemp("site-template") / "site"
    init_site(root, SITE, clock=clock)
    return root, clock


@pytest.fixture
def site_dir(tmp_path: Path, clock: Clock, _site_template: tuple[Path, TickingClock]) -> Path:
    """A copy of SITE initialised at the clock's first reading, the clock moved on past it.

    The same files ``init_site(root, SITE, clock=clock)`` writes (copies share the keys):
    keys and a migrated store cost ~65 ms of CPU per site, a copy a few.
    """
    template, initialised_with = _site_template
    root = tmp_path / "site"
    shutil.copytree(template, root)
    assert isinstance(clock, TickingClock)
    clock.now = initialised_with.now
    return root


@pytest.fixture
def bc_csv(tmp_path: Path, federation: breast_cancer.FederatedSplit) -> Path:
    """Hospital 0's patients (152 rows, mostly malignant)."""
    return breast_cancer.write_csv(federation.sites[0], tmp_path / "data" / "site0.csv")


@pytest.fixture
def site(site_dir: Path, clock: Clock) -> Iterator[Site]:
    with Site.open(site_dir, clock=clock) as opened:
        yield opened


@pytest.fixture
def ready_site(site: Site, bc_csv: Path) -> Site:
    """SITE with hospital 0's data registered as ``bc-0`` (budget 10)."""
    register_dataset(site, dataset_id="bc-0", path=bc_csv, label=breast_cancer.LABEL)
    return site


@pytest.fixture
def approved(ready_site: Site) -> Study:
    """``make_study()`` approved on ``bc-0`` with cap 5."""
    study = make_study()
    approve_study(ready_site, study, dataset_id="bc-0", epsilon_cap=5.0)
    return study


@pytest.fixture
def agent_factory(site_dir: Path, clock: Clock) -> Iterator[Callable[[], SiteAgent]]:
    """Opens agents on the site (each a fresh object, as after a restart)."""
    opened: list[SiteAgent] = []

    def make() -> SiteAgent:
        agent = SiteAgent.open(site_dir, clock=clock, seed=7)
        opened.append(agent)
        return agent

    yield make
    for agent in opened:
        agent.close()
