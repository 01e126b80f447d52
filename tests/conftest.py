"""Shared fixtures: databases (SQLite and the real PostgreSQL) and the CLI runner.

PostgreSQL: the server at 127.0.0.1:5432 (database ``test``, trust auth), or the URL in
``VERACITY_TEST_PG_URL``. One throwaway database is created per test session and dropped
at the end; each test that asks for ``pg_url`` gets its own schema inside it. Where the
server is unreachable, tests that need it skip with the reason, except under ``CI=true``,
where they fail.

Markers (registered in pyproject.toml; docs/architecture.md "Tests"): a test that starts a
process or uses PostgreSQL must be marked ``integration`` (the fixtures below fail it
otherwise), one slower than a few seconds ``slow``, one that runs real Opacus training
``training``. ``make test-fast`` runs the rest.
"""

from __future__ import annotations

import gc
import multiprocessing.process
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pytest
import sqlalchemy as sa
from hypothesis import settings as hypothesis_settings
from sqlalchemy.engine import make_url

from tests.hypothesis_examples import FAST as FAST_EXAMPLES
from veracity.config import normalise_database_url

if TYPE_CHECKING:
    from veracity.localnet import LocalSite
    from veracity.server.coordinator import CoordinatorService

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

# Under CI, property tests draw the same examples every run (a red CI is a regression, never
# a lucky draw); developers' runs keep exploring new examples.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    hypothesis_settings.load_profile("ci")
# The edit loop (`make test-fast`, VERACITY_FAST_EXAMPLES=1): a property test without a count
# of its own draws 10 examples (those with one draw a tenth: tests/hypothesis_examples.py).
if FAST_EXAMPLES:
    hypothesis_settings.register_profile("fast", hypothesis_settings(), max_examples=10)
    hypothesis_settings.load_profile("fast")


#: Allocations between young-generation collections (Python's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def pytest_collection_finish(session: pytest.Session) -> None:
    """Keep the garbage collector off the modules imported so far, and run it less often.

    A full collection walks every tracked object: with torch, Flower, FastAPI and
    SQLAlchemy loaded that is ~0.4 s, and the default thresholds ran about one every 25
    tests (7 CPU-s of 48 in ``tests/server/api`` in one process). What collection loaded
    stays for the session, so it is frozen (after one last collection, so that no garbage
    is kept), and the young generation is collected every 10,000 allocations rather than
    700. Cyclic garbage made by a test is still collected, a little later; finalizers and
    the unraisable-exception check at the end of the session still run.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _require_integration_mark(item: pytest.Item, what: str) -> None:
    """Fail ``item`` unless it is marked ``integration`` (the fast loop must not reach it)."""
    if item.get_closest_marker("integration") is None:
        pytest.fail(
            f"{item.nodeid} {what} but is not marked integration; mark it (or the "
            "fixture parameter: pytest.param(..., marks=pytest.mark.integration))",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _processes_need_the_integration_mark(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refuse a test that starts a process (subprocess or multiprocessing) unless it is
    marked ``integration``, so that ``make test-fast`` stays free of processes."""
    if request.node.get_closest_marker("integration") is not None:
        return
    refuse = _require_integration_mark

    def popen(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        refuse(request.node, f"starts a process ({args[0] if args else kwargs.get('args')})")

    def start(self: multiprocessing.process.BaseProcess) -> None:
        refuse(request.node, "starts a multiprocessing process")

    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)


def _admin_url() -> str:
    return normalise_database_url(os.environ.get("VERACITY_TEST_PG_URL", DEFAULT_PG_URL))


def _unreachable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {reason}")
    pytest.skip(f"PostgreSQL unreachable at {_admin_url()}: {reason}")


@pytest.fixture(scope="session")
def pg_session_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session; dropped at the end."""
    admin_url = _admin_url()
    try:
        admin = sa.create_engine(
            admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as err:
        _unreachable(str(err).splitlines()[0])
        raise  # unreachable: _unreachable always raises
    name = f"veracity_test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, pg_session_database: str) -> Iterator[str]:
    """A PostgreSQL URL whose default schema is new and empty for this test."""
    _require_integration_mark(request.node, "uses PostgreSQL")
    schema = f"t_{secrets.token_hex(6)}"
    engine = sa.create_engine(pg_session_database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(pg_session_database).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file in this test's temporary directory."""
    return f"sqlite:///{tmp_path / 'veracity.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage backend in turn, for contract suites that must hold on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'veracity.db'}"
    return str(request.getfixturevalue("pg_url"))


# ---- Encrypted inference: reference models trained in plaintext on breast-cancer data -------


@dataclass(frozen=True)
class BreastCancerSplit:
    """scikit-learn's breast-cancer data, stratified 75/25 (seed 0), study scaling from train."""

    feature_names: tuple[str, ...]
    scaling: tuple[tuple[float, float], ...]
    train_x: npt.NDArray[np.float64]
    train_y: npt.NDArray[np.int64]
    test_x: npt.NDArray[np.float64]
    test_y: npt.NDArray[np.int64]
    raw_test_x: npt.NDArray[np.float64]


@pytest.fixture(scope="session")
def breast_cancer() -> BreastCancerSplit:
    """The split every encrypted-inference test uses (standardised and raw test rows)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, stratify=data.target, random_state=0
    )
    means, stds = x_train.mean(axis=0), x_train.std(axis=0)
    return BreastCancerSplit(
        feature_names=tuple(str(name) for name in data.feature_names),
        scaling=tuple((float(m), float(s)) for m, s in zip(means, stds, strict=True)),
        train_x=(x_train - means) / stds,
        train_y=y_train,
        test_x=(x_test - means) / stds,
        test_y=y_test,
        raw_test_x=x_test,
    )


@pytest.fixture(scope="session")
def trained_models(breast_cancer: BreastCancerSplit) -> dict[str, tuple[Any, dict[str, Any]]]:
    """``{"logistic": (spec, weights), "poly_mlp": (spec, weights)}`` trained in plaintext."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from veracity.tasks.spec import ModelFamily, ModelSpec
    from veracity.tasks.torch_models import build_model, model_weights

    n = breast_cancer.train_x.shape[1]
    lr = LogisticRegression(max_iter=5000).fit(breast_cancer.train_x, breast_cancer.train_y)
    logistic = {
        "linear.weight": lr.coef_.astype(np.float32),
        "linear.bias": lr.intercept_.astype(np.float32),
    }
    spec = ModelSpec(ModelFamily.POLY_MLP, n)
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    torch.manual_seed(0)
    # One thread: a small model trains 3x faster so, and does not stall when the cores are busy.
    torch.set_num_threads(1)
    try:
        model = build_model(spec, seed=0)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-2)
        x = torch.tensor(breast_cancer.train_x, dtype=torch.float32)
        y = torch.tensor(breast_cancer.train_y, dtype=torch.float32)
        for _ in range(300):
            optimiser.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            torch.autograd.backward(loss)
            optimiser.step()
    finally:
        torch.random.set_rng_state(state)
        torch.set_num_threads(threads)
    return {
        "logistic": (ModelSpec(ModelFamily.LOGISTIC, n), logistic),
        "poly_mlp": (spec, model_weights(model)),
    }


@dataclass(frozen=True)
class DigitsSplit:
    """scikit-learn's 8x8 digits, stratified 75/25 (seed 0), pixels scaled to [-1, 1]."""

    train_x: npt.NDArray[np.float64]
    train_y: npt.NDArray[np.int64]
    test_x: npt.NDArray[np.float64]
    test_y: npt.NDArray[np.int64]


@pytest.fixture(scope="session")
def digits() -> DigitsSplit:
    """Ten classes of images, as flat rows of 64 pixels (the k-class and CNN tests)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data / 8.0 - 1.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.25, stratify=data.target, random_state=0
    )
    return DigitsSplit(x_train, y_train, x_test, y_test)


def train_plaintext(
    spec: Any, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64], *, epochs: int, lr: float
) -> dict[str, Any]:
    """Full-batch Adam on cross-entropy, seeded, one thread: reference models for HE tests."""
    import torch

    from veracity.tasks.torch_models import build_model, model_weights

    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    try:
        model = build_model(spec, seed=0)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-3)
        inputs = torch.tensor(x, dtype=torch.float32)
        labels = torch.tensor(y, dtype=torch.int64)
        for _ in range(epochs):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            torch.autograd.backward(loss)
            optimiser.step()
    finally:
        torch.random.set_rng_state(state)
        torch.set_num_threads(threads)
    return model_weights(model)


@pytest.fixture(scope="session")
def digits_models(digits: DigitsSplit) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Ten-class ``logistic`` and ``poly_mlp`` on digits, trained in plaintext."""
    from sklearn.linear_model import LogisticRegression

    from veracity.tasks.spec import ModelFamily, ModelSpec

    lr = LogisticRegression(max_iter=5000).fit(digits.train_x, digits.train_y)
    logistic = {
        "linear.weight": lr.coef_.astype(np.float32),
        "linear.bias": lr.intercept_.astype(np.float32),
    }
    mlp = ModelSpec(ModelFamily.POLY_MLP, 64, hidden=16, classes=10)
    return {
        "logistic": (ModelSpec(ModelFamily.LOGISTIC, 64, classes=10), logistic),
        "poly_mlp": (
            mlp,
            train_plaintext(mlp, digits.train_x, digits.train_y, epochs=200, lr=1e-2),
        ),
    }


@pytest.fixture(scope="session")
def digits_cnn(digits: DigitsSplit) -> tuple[Any, dict[str, Any]]:
    """A ten-class square-activation ``cnn2d`` on 8x8 digits (conv 4x3x3, conv 8x3x3, dense)."""
    from veracity.tasks.spec import ModelFamily, ModelSpec

    spec = ModelSpec(
        ModelFamily.CNN2D,
        64,
        classes=10,
        input_shape=(1, 8, 8),
        filters=(4, 8),
        kernel=3,
        conv_activation="square",
    )
    return spec, train_plaintext(spec, digits.train_x, digits.train_y, epochs=150, lr=1e-2)


@pytest.fixture(scope="session")
def digits_cnn_one(digits: DigitsSplit) -> tuple[Any, dict[str, Any]]:
    """The issue's digits CNN: one convolution (4x3x3), a square, a 2x2 pool, a dense layer."""
    from veracity.tasks.spec import ModelFamily, ModelSpec

    spec = ModelSpec(
        ModelFamily.CNN2D,
        64,
        classes=10,
        input_shape=(1, 8, 8),
        filters=(4,),
        kernel=3,
        conv_activation="square",
    )
    return spec, train_plaintext(spec, digits.train_x, digits.train_y, epochs=150, lr=1e-2)


# ---- A research network on loopback --------------------------------------------------

#: The hospitals of :func:`network`.
NETWORK_SITES = ("hospital-a", "hospital-b", "hospital-c")


@dataclass
class Network:
    """A coordinator and its sites, all running (see :func:`network`)."""

    coordinator: CoordinatorService
    sites: dict[str, LocalSite]
    root: Path


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """One SuperLink (TLS, SuperNode authentication) and three site agents on 127.0.0.1.

    Each hospital holds a skewed part of the breast-cancer data as dataset
    ``breast-cancer``; the network serves a module's tests in turn. Mark the module
    ``integration`` and ``slow``.
    """
    from veracity.localnet import create_site, enrol, start_nodes
    from veracity.server.coordinator import init_coordinator
    from veracity.server.superlink import SuperLinkOptions, start_superlink
    from veracity.supervise import ProcessGroup, free_port
    from veracity.tasks.breast_cancer import federated_split

    root = tmp_path_factory.mktemp("network")
    port = free_port()
    coordinator = init_coordinator(root / "coordinator", superlink_port=port)
    split = federated_split(len(NETWORK_SITES), seed=0, skew=0.6)
    with ProcessGroup() as group:
        start_superlink(coordinator.home, SuperLinkOptions(port=port), group)
        sites = {
            name: create_site(root / "sites" / name, name, partition)
            for name, partition in zip(NETWORK_SITES, split.sites, strict=True)
        }
        for site in sites.values():
            enrol(coordinator, site)
        start_nodes(coordinator, list(sites.values()), group, idle_poll=0.2)
        try:
            yield Network(coordinator, sites, root)
        finally:
            coordinator.close()
