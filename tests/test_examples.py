"""The examples run as documented (so they cannot silently rot)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_breast_cancer_network_example_runs_a_study_and_verifies_its_ledger(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "breast_cancer_network.py"), str(tmp_path),
         "--rounds", "2"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished:completed" in done.stdout
    assert "round 2:" in done.stdout
    assert "ledger verified:" in done.stdout


def _run_example(script: str, tmp_path: Path, *arguments: str) -> dict[str, Any]:
    out = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), str(tmp_path / "net"), "--json",
         str(out), *arguments],
        capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(out.read_text())
    assert summary["status"] == "completed"
    assert summary["ledger_entries_verified"] > 10
    return summary


@pytest.mark.training
def test_freezing_of_gait_example_detects_freezes_under_dp_and_scores_real_daphnet(
    tmp_path: Path,
) -> None:
    # The example's own cohort (4 patients per clinic, 240 s each: noise multiplier 2.78) and
    # its 8 rounds. A smaller one (3 patients, 180 s: multiplier 3.51) left the held-out AUC
    # anywhere in 0.68-0.98 over ten runs (two CI failures at 0.68 and 0.69); this one gave
    # 0.936 and 0.957 with two runs side by side at load 14, and 0.905-0.975 over six seeds
    # in benchmarks/signals_bench.py --only gait.
    summary = _run_example("freezing_of_gait.py", tmp_path, "--rounds", "8")
    assert max(summary["epsilon_replace_one"].values()) <= 3.0
    assert summary["held_out"]["auc"] > 0.75  # freeze against walking or standing; chance 0.5
    assert summary["card_evaluation_auc"] == pytest.approx(summary["held_out"]["auc"])
    assert summary["card_inputs"]["window_samples"] == 256
    daphnet = summary["daphnet"]
    if daphnet is not None:  # aeon's data installed
        assert daphnet["windows"] == 54
        assert daphnet["freeze_windows_annotated"] == 0
        assert 0.0 <= daphnet["false_alarm_rate"] <= 0.5


@pytest.mark.training
def test_digits_example_trains_a_ten_class_cnn2d_under_dp_then_infers_under_encryption(
    tmp_path: Path,
) -> None:
    summary = _run_example("digits_images.py", tmp_path, "--rounds", "6", "--encrypted-images", "8")
    assert max(summary["epsilon_replace_one"].values()) <= 3.0
    # Ten classes, chance 0.1. The scattering-stem cnn2d reached 0.894 at these 6 rounds
    # (signals_bench: 0.942 at 10 rounds, 5 seeds); two trained convolutions 0.67 at 15.
    assert summary["accuracy"] > 0.75
    assert summary["card_classes"] == [str(d) for d in range(10)]
    assert set(summary["per_class_recall"]) == {str(d) for d in range(10)}
    assert summary["card_inputs"]["kind"] == "images"
    # Then the square-activation cnn2d, trained by the same sites in a second study and
    # scored by a clinic under encryption through the admin API: every decrypted decision
    # is the plaintext argmax of the released model.
    encrypted = summary["encrypted_inference"]
    assert encrypted["status"] == "completed"
    assert encrypted["model_hash"] != summary["model_hash"]
    assert encrypted["model"]["activation"] == "square"
    both = encrypted["epsilon_replace_one_both_studies"]  # each dataset's composed spend
    assert max(summary["epsilon_replace_one"].values()) < min(both.values()) <= 6.0
    assert encrypted["images_scored"] == 8
    assert len(encrypted["decisions"]) == 8
    assert encrypted["decisions"] == encrypted["plaintext_argmax"]
    assert encrypted["agree"] == 8
    assert encrypted["max_logit_error"] < 0.25  # CKKS noise, not another model
    assert 0.0 <= encrypted["accuracy"] <= 1.0
    assert 0 <= encrypted["correct"] <= 8
    assert encrypted["server_seconds_per_image"] > 0.0
    assert encrypted["requests"] >= 1
    assert encrypted["ledger_entries_verified"] > summary["ledger_entries_verified"]


@pytest.mark.training
def test_basic_motions_example_runs_the_signals_path_on_real_recordings(tmp_path: Path) -> None:
    if importlib.util.find_spec("aeon") is None:
        pytest.skip("aeon's data are not installed (pip install --no-deps aeon==1.6.0)")
    summary = _run_example("basic_motions.py", tmp_path, "--rounds", "4")
    assert summary["recordings_per_site"] == {"clinic-a": 20, "clinic-b": 20}
    assert summary["card_classes"] == ["Standing", "Running", "Walking", "Badminton"]
    assert summary["card_inputs"]["channels"] == [
        "accel_x", "accel_y", "accel_z", "gyro_x", "gyro_y", "gyro_z",
    ]  # fmt: skip
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert max(summary["epsilon_replace_one"].values()) <= 8.0
