"""Signals at registration: recordings (CSV, folders, NPZ) and windows, each fault refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from veracity.cli import main
from veracity.client.datasets import SignalsDeclared, load_registered, register_dataset
from veracity.client.records import Records, window_recordings
from veracity.client.site import Site
from veracity.client.study_inputs import study_examples
from veracity.errors import ApprovalMissing, InputError
from veracity.tasks.study import parse_study

RATE = 64.0
CHANNELS = ("ankle_x", "ankle_y", "trunk_z")
SALT = bytes(range(32))


def _recording(samples: int = 640, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(size=(samples, 3)) * 100)  # integers, exact in text
    labels = ((np.arange(samples) // 160) % 2).astype(np.int64)
    return values, labels


def _write_csv(
    path: Path,
    values: np.ndarray,
    labels: np.ndarray,
    *,
    rate: float = RATE,
    columns: tuple[str, ...] = CHANNELS,
    iso: bool = False,
) -> Path:
    lines = ["timestamp," + ",".join(columns) + ",freeze"]
    for index, (row, label) in enumerate(zip(values, labels, strict=True)):
        seconds = index / rate
        stamp = f"1970-01-01 00:04:{40 + seconds:06.3f}" if iso else f"{seconds:.6f}"
        lines.append(stamp + "," + ",".join(f"{v:g}" for v in row) + f",{label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _register(
    site: Site, path: Path, dataset_id: str = "gait", **declared: object
) -> tuple[object, object]:
    return register_dataset(
        site,
        dataset_id=dataset_id,
        path=path,
        label="freeze",
        declared=SignalsDeclared(rate=RATE, **declared),  # type: ignore[arg-type]
        salt=SALT,
        min_rows=10,
    )


def _assert_nothing_registered(site: Site) -> None:
    assert site.store.list_datasets() == []
    assert site.store.outbox(include_delivered=True) == []


def test_a_csv_recording_is_registered_as_signals(site: Site, tmp_path: Path) -> None:
    values, labels = _recording()
    dataset, statement = _register(site, _write_csv(tmp_path / "s1.csv", values, labels))
    assert dataset.kind == "signals"  # type: ignore[attr-defined]
    assert dataset.features == CHANNELS  # type: ignore[attr-defined]
    assert dataset.rows == 640  # type: ignore[attr-defined]
    assert statement.payload["features"] == list(CHANNELS)  # type: ignore[attr-defined]
    assert statement.payload["kind"] == "signals"  # type: ignore[attr-defined]
    loaded = load_registered(site.store.get_dataset("gait"))  # type: ignore[arg-type]
    assert isinstance(loaded, Records)
    np.testing.assert_array_equal(loaded.arrays[0], values)


def test_the_same_recording_as_npz_or_with_iso_timestamps_is_the_same_data(
    site: Site, tmp_path: Path
) -> None:
    # Same content, same digest: registering it again under another id is refused.
    values, labels = _recording()
    _register(site, _write_csv(tmp_path / "a.csv", values, labels))
    npz = tmp_path / "a.npz"
    np.savez(npz, x=values.astype(np.float32), y=labels, channels=np.array(CHANNELS), rate=RATE)
    iso = _write_csv(tmp_path / "b" / "a.csv", values, labels, iso=True)
    for again in (npz, iso.parent):  # an NPZ; a folder of one recording, ISO timestamps
        with pytest.raises(InputError, match="already registered as dataset 'gait'"):
            _register(site, again, dataset_id="gait-again")


def test_csv_and_npz_digests_are_equal(tmp_path: Path) -> None:
    from veracity.client.records import read_source, records_digest
    from veracity.client.signals import parse_signals

    values, labels = _recording()
    npz = tmp_path / "a.npz"
    np.savez(npz, x=values, y=labels.astype(np.float64), channels=np.array(CHANNELS))
    digests = {
        records_digest(
            parse_signals(read_source(path), label="freeze", classes=("0", "1"), rate=RATE)
        )
        for path in (_write_csv(tmp_path / "a.csv", values, labels), npz)
    }
    assert len(digests) == 1


Writer = Callable[[np.ndarray, np.ndarray, Path], Path]

BAD: dict[str, tuple[Writer, str]] = {
    "wrong-rate": (lambda v, y, p: _write_csv(p, v, y, rate=32.0), "sampled at 32 Hz"),
    "missing-channel": (
        lambda v, y, p: _write_csv(p, v, y, columns=("ankle_x", "ankle_y", "trunk_y")),
        "no channel 'trunk_z'",
    ),
    "nan-sample": (
        lambda v, y, p: _write_csv(p, np.where(np.arange(640)[:, None] == 99, np.nan, v), y),
        r"missing sample \(nan\) at row 100 \(line 101\), channel 'ankle_x'",
    ),
    "label-outside-classes": (
        lambda v, y, p: _write_csv(p, v, np.where(np.arange(640) == 7, 2, y)),
        r"found '2' at row 8 .*declared classes",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=BAD.keys())
def test_malformed_recordings_are_refused_and_nothing_stored(
    site: Site, tmp_path: Path, case: str
) -> None:
    values, labels = _recording()
    write, message = BAD[case]
    path = write(values, labels, tmp_path / "s.csv")
    with pytest.raises(InputError, match=message):
        _register(site, path, channels=CHANNELS)
    _assert_nothing_registered(site)


def test_a_gap_in_a_recording_is_refused(site: Site, tmp_path: Path) -> None:
    values, labels = _recording()
    path = _write_csv(tmp_path / "s.csv", values, labels)
    lines = path.read_text().splitlines()
    del lines[300:340]  # 40 samples lost: the mean rate drifts less than the gap shows
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"sampled at|a gap of"):
        _register(site, path)
    _assert_nothing_registered(site)


def test_npz_windows_with_nan_or_a_wrong_rate_are_refused(site: Site, tmp_path: Path) -> None:
    x = np.zeros((20, 3, 128))
    y = np.arange(20) % 2
    x[4, 1, 17] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=y)
    with pytest.raises(InputError, match=r"missing sample \(NaN\) in x at .* \[4, 1, 17\]"):
        _register(site, tmp_path / "nan.npz")
    np.savez(tmp_path / "rate.npz", x=np.zeros((20, 3, 128)), y=y, rate=100.0)
    with pytest.raises(InputError, match="sampled at 100 Hz"):
        _register(site, tmp_path / "rate.npz")
    _assert_nothing_registered(site)


def test_cli_refuses_a_wrong_rate_with_exit_1(
    site_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values, labels = _recording()
    path = _write_csv(tmp_path / "s.csv", values, labels, rate=50.0)
    code = main(
        ["site", "register-dataset", "--data-dir", str(site_dir), "--id", "gait", "--kind",
         "signals", "--rate", "64", "--path", str(path), "--label", "freeze"]
    )  # fmt: skip
    assert code == 1
    assert "declared rate is 64 Hz" in capsys.readouterr().err
    with Site.open(site_dir) as opened:
        assert opened.store.list_datasets() == []


def test_windows_take_the_majority_label_ties_to_the_higher_class() -> None:
    recording = np.arange(20, dtype=np.float64).reshape(10, 2)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 0])
    x, y = window_recordings((recording, recording[:3]), (labels, labels[:3]), window=4, hop=2)
    assert x.shape == (4, 2, 4)  # starts 0, 2, 4, 6; the 3-sample recording gives none
    np.testing.assert_array_equal(x[1], recording[2:6].T)
    assert y.tolist() == [0, 1, 1, 0]  # [0,0,0,1], [0,1,1,1], [1,1,1,0], [1,0,0,0]
    _, tie = window_recordings((recording,), (labels,), window=2, hop=2)
    assert tie.tolist() == [0, 1, 1, 1, 0]  # [0,0] [0,1]->1 [1,1] [1,0]->1 [0,0]


def _study(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "study_id": "fog",
        "model": {"family": "cnn1d", "input_shape": [2, 128]},
        "features": ["trunk_z", "ankle_x"],
        "label": "freeze",
        "scaling": [[0.0, 100.0], [0.0, 50.0]],
        "input": {"kind": "signals", "rate": RATE, "channels": ["trunk_z", "ankle_x"],
                  "window": 128, "hop": 64},
        "dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
        "training": {"batch_size": 8, "local_epochs": 1, "learning_rate": 0.1},
        "rounds": 1,
        "min_sites": 1,
        "epsilon_caps": {"site-a": 3.0},
        "code_hash": "ab" * 32,
    }  # fmt: skip
    document.update(changes)
    return document


def test_a_study_windows_the_recordings_at_the_site(site: Site, tmp_path: Path) -> None:
    values, labels = _recording()
    dataset, _ = _register(site, _write_csv(tmp_path / "s.csv", values, labels))
    loaded = load_registered(dataset)  # type: ignore[arg-type]
    x, y = study_examples(parse_study(_study()), loaded)
    assert x.shape == ((640 - 128) // 64 + 1, 2 * 128)
    first = x[0].reshape(2, 128)
    np.testing.assert_allclose(first[0], values[:128, 2] / 100.0, rtol=1e-6)
    np.testing.assert_allclose(first[1], values[:128, 0] / 50.0, rtol=1e-6)
    # [0,160) walk, [160,320) freeze: [64,192) mostly walk, [256,384) a tie, so a freeze
    assert y.tolist()[:5] == [0, 0, 1, 1, 1]
    wrong = parse_study(_study(input={"kind": "signals", "rate": 50.0, "channels": [
        "trunk_z", "ankle_x"], "window": 128, "hop": 64}))  # fmt: skip
    with pytest.raises(ApprovalMissing, match="50 Hz"):
        study_examples(wrong, loaded)


@pytest.mark.training
def test_the_site_agent_trains_a_cnn1d_round_on_windows_with_a_receipt(
    site: Site, tmp_path: Path
) -> None:
    from tests.client.support import SITE, request_for
    from veracity.client.approvals import approve_study, review_study
    from veracity.client.service import SiteAgent, TrainReply

    values, labels = _recording(samples=1280)
    dataset, _ = _register(site, _write_csv(tmp_path / "s.csv", values, labels))
    dp = {"noise_multiplier": 4.0, "max_grad_norm": 1.0, "delta": 1e-5}
    study = parse_study(_study(epsilon_caps={SITE: 5.0}, code_hash="c0de" * 16, dp=dp))
    other = parse_study(
        _study(
            epsilon_caps={SITE: 5.0},
            input={"kind": "signals", "rate": 128.0, "channels": ["trunk_z", "ankle_x"],
                   "window": 128, "hop": 64},
        )
    )  # fmt: skip
    assert "128 Hz" in review_study(site, other, dataset_id="gait", epsilon_cap=1.0).problems[0]
    approve_study(site, study, dataset_id="gait", epsilon_cap=5.0)
    agent = SiteAgent(site, seed=3)
    reply = agent.handle_train(request_for(study, round=1))
    assert isinstance(reply, TrainReply)
    assert reply.receipt["dataset_commitment"] == dataset.commitment  # type: ignore[attr-defined]
    assert reply.receipt["num_examples"] == 1280
    assert reply.metrics["epsilon"] > 0
    assert set(reply.weights) == set(study.model_spec.weight_shapes())
