"""README's "Running it for real", row by row, with relative directories and the CLI alone.

A coordinator, three hospitals, a clinic and an auditor, each in its own directory under one
working directory, every step a ``veracity`` command (no HTTP by hand): init and start the
coordinator, enrol the sites, register data, write and propose a study, review and approve
it at every site (the outbox delivered by ``site start`` and by ``site sync``), run it and
watch it, download the model, propose an analysis study that the sites approve and a
researcher runs (its answers checked against the hospital files, its plot drawn), predict
under encryption, export the ledger and audit it offline (verify and provenance from the
bundle and the root key only, the analysis's signed receipts in it, and an inclusion proof
of the release checked with ``ledger verify-proof``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.network_cli import (
    ANALYSIS_QUERIES,
    SITES,
    Shell,
    analysis_study,
    answered_in_bundle,
    check_analysis,
    wait_for,
    write_hospital_files,
)
from veracity.supervise import free_port
from veracity.tasks.weights import weights_from_bytes, weights_hash

# About forty commands, each a fresh process that imports Veracity: minutes on a loaded
# two-core machine, so the suite's 900 s per test is not enough.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]


def test_the_readme_table_end_to_end_with_relative_directories(tmp_path: Path) -> None:
    files = write_hospital_files(tmp_path / "data")
    superlink, api = free_port(), free_port()
    shell = Shell(cwd=tmp_path)
    try:
        _run_network(shell, files, superlink=superlink, api=api)
    finally:
        codes = shell.stop_all()
    assert all(code == 0 for code in codes), codes  # every process stops cleanly on SIGTERM


def _run_network(shell: Shell, files: dict[str, Path], *, superlink: int, api: int) -> None:
    # ---- coordinator admin --------------------------------------------------------------
    init = shell.json("server", "init", "--data-dir", "coord", "--superlink-port", str(superlink))
    assert init["data_dir"] == str(shell.cwd / "coord")
    shell.start(
        "server", "start", "--data-dir", "coord", "--api-port", str(api),
        log=shell.cwd / "logs" / "server.log", ready="Ctrl-C stops",
    )  # fmt: skip
    admin_token = shell.run(
        "server", "token", "create", "--role", "admin", "--name", "alice", "--data-dir", "coord"
    ).stdout.strip()
    # The admin's own shell: the API, its token and the CA in the environment. Site
    # operators have their own (they must not pick up the admin's token).
    admin = Shell(cwd=shell.cwd, started=shell.started)
    admin.env.update(
        VERACITY_SERVER=f"https://127.0.0.1:{api}",
        VERACITY_TOKEN=admin_token,
        VERACITY_CA_CERT="coord/tls/ca.crt",
    )

    # ---- each site operator, with the admin enrolling them ----------------------------------
    site_tokens: dict[str, str] = {}
    site_processes: list[subprocess.Popen[bytes]] = []
    for index, site in enumerate(SITES):
        where = f"site-{site[-1]}"
        made = shell.json("site", "init", "--name", site, "--data-dir", where)
        proof = shell.run(
            "site", "enrolment-proof", "--log-id", init["log_id"], "--data-dir", where
        ).stdout.strip()  # fmt: skip
        enrolled = admin.json(
            "admin", "sites", "enrol", site,
            "--public-key", made["public_key"],
            "--supernode-public-key", made["supernode_public_key"],
            "--proof", proof,
        )  # fmt: skip
        assert enrolled["name"] == site
        site_tokens[site] = admin.run(
            "admin", "tokens", "create", "--role", "site", "--name", f"{site} operator",
            "--site", site,
        ).stdout.strip()  # fmt: skip
        shell.run(
            "site", "register-dataset", "--id", "cohort", "--path", str(files[site]),
            "--label", "diagnosis", "--data-dir", where,
        )  # fmt: skip
        # Two sites deliver their outbox while they run; the third on demand.
        sync = ["--server", f"https://127.0.0.1:{api}", "--token", site_tokens[site]]
        started = shell.start(
            "site", "start", "--superlink", f"127.0.0.1:{superlink}",
            "--ca-cert", "coord/tls/ca.crt", "--data-dir", where,
            *([*sync, "--sync-every", "1"] if index < 2 else []),
            log=shell.cwd / "logs" / f"{site}.log", ready="Ctrl-C stops",
        )  # fmt: skip
        site_processes.append(started)
    listed = admin.json("admin", "sites", "list")
    assert sorted(s["name"] for s in listed["items"]) == list(SITES)

    # ---- the admin writes and proposes a study ------------------------------------------------
    written = admin.json(
        "admin", "studies", "new", "--study-id", "bc-for-real",
        *[arg for site in SITES for arg in ("--site", site)],
        "--schema", "data/reference.csv", "--label", "diagnosis",
        "--epsilon-cap", "8", "--rounds", "2", "--out", "STUDY.json",
    )  # fmt: skip
    proposed = admin.json("admin", "studies", "propose", "STUDY.json")
    study_hash = proposed["study_hash"]
    assert study_hash == written["study_hash"]

    # ---- each site reviews and approves it --------------------------------------------------
    shell.run("site", "review", "STUDY.json", "--dataset", "cohort", "--data-dir", "site-a")
    for site in SITES:
        where = f"site-{site[-1]}"
        shell.run(
            "site", "approve", "STUDY.json", "--dataset", "cohort", "--epsilon-cap", "8",
            "--yes", "--data-dir", where,
        )  # fmt: skip
    synced = shell.json(
        "site", "sync", "--server", f"https://127.0.0.1:{api}",
        "--token", site_tokens["hospital-c"], "--ca-cert", "coord/tls/ca.crt",
        "--data-dir", "site-c",
    )  # fmt: skip
    assert len(synced["delivered"]) == 2  # its registration and its approval
    assert synced["pending"] == 0

    def ready() -> bool:
        return bool(admin.json("admin", "studies", "show", study_hash)["ready"])

    wait_for("every approval to reach the coordinator", ready, timeout=60)
    study = admin.json("admin", "studies", "show", study_hash)
    assert sorted(study["approved_by"]) == list(SITES)

    # ---- the admin runs it, watching round by round -----------------------------------------
    watched = admin.json("admin", "runs", "start", study_hash, "--watch", timeout=900)
    assert watched["finished"]["status"] == "completed", watched["finished"]
    assert [r["round"] for r in watched["rounds"]] == [1, 2]
    model = watched["finished"]["model_hash"]
    assert len(model) == 64
    runs = admin.json("admin", "runs", "list")
    assert [r["run_id"] for r in runs["items"]] == [watched["run_id"]]
    assert [m["model_hash"] for m in admin.json("admin", "models", "list")["items"]] == [model]
    admin.run("admin", "models", "download", model, "--out", "model.bin")
    downloaded = weights_from_bytes((shell.cwd / "model.bin").read_bytes())
    assert weights_hash(downloaded) == model
    explained = admin.json(
        "admin", "models", "explain", model, "--epsilon", "0.5", "--clip-norm", "1",
        "--steps", "8", "--watch", timeout=900,
    )  # fmt: skip
    assert len(explained["report_hash"]) == 64

    # ---- a researcher's analysis study: written, proposed, approved, answered ----------------
    # Written by hand (its queries and bounds), with the code hash `studies new` printed.
    document = analysis_study("bc-analysis-for-real", code_hash=written["code_hash"])
    (shell.cwd / "ANALYSIS.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    analysis_hash = admin.json("admin", "studies", "propose", "ANALYSIS.json")["study_hash"]
    reviewed = shell.json(
        "site", "review", "ANALYSIS.json", "--dataset", "cohort", "--data-dir", "site-a"
    )  # fmt: skip
    assert reviewed["problems"] == [], reviewed
    for site in SITES:
        shell.run(
            "site", "approve", "ANALYSIS.json", "--dataset", "cohort", "--epsilon-cap", "8",
            "--yes", "--data-dir", f"site-{site[-1]}",
        )  # fmt: skip
    synced = shell.json(
        "site", "sync", "--server", f"https://127.0.0.1:{api}",
        "--token", site_tokens["hospital-c"], "--ca-cert", "coord/tls/ca.crt",
        "--data-dir", "site-c",
    )  # fmt: skip
    assert synced["pending"] == 0
    wait_for(
        "every approval of the analysis to reach the coordinator",
        lambda: admin.json("admin", "studies", "show", analysis_hash)["ready"],
        timeout=60,
    )
    researcher_token = admin.run(
        "admin", "tokens", "create", "--role", "researcher", "--name", "epidemiologist"
    ).stdout.strip()
    researcher = Shell(cwd=shell.cwd)
    answered = researcher.json(
        "analysis", "run", "ANALYSIS.json", "--server", f"https://127.0.0.1:{api}/api/v1",
        "--token", researcher_token, "--ca-cert", "coord/tls/ca.crt", "--plot", "texture.png",
        timeout=900,
    )  # fmt: skip
    assert answered["study_hash"] == analysis_hash
    spent = check_analysis(answered, files)
    assert answered["plot"] == "texture.png"
    assert (shell.cwd / "texture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The site's own store holds the spend its receipts state (one site: each command costs).
    (dataset,) = shell.json("site", "datasets", "--data-dir", "site-c")["datasets"]
    assert dataset["epsilon_spent"] == pytest.approx(spent["hospital-c"], rel=1e-9)

    # ---- a clinic predicts under encryption --------------------------------------------------
    clinic_token = admin.run(
        "admin", "tokens", "create", "--role", "researcher", "--name", "clinic"
    ).stdout.strip()
    shell.run(
        "predict", "--model", model, "--input", "data/clinic.csv", "--id-column", "patient_id",
        "--server", f"https://127.0.0.1:{api}", "--token", clinic_token,
        "--ca-cert", "coord/tls/ca.crt", "--out", "scores.csv",
    )  # fmt: skip
    with (shell.cwd / "scores.csv").open(encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 8

    # ---- an auditor, with the bundle and the root key only ------------------------------------
    auditor_token = admin.run(
        "admin", "tokens", "create", "--role", "auditor", "--name", "ethics board"
    ).stdout.strip()
    (shell.cwd / "auditor").mkdir()
    admin.run(
        "admin", "ledger", "export", "--out", "auditor/ledger.jsonl",
        env={"VERACITY_TOKEN": auditor_token},
    )  # fmt: skip
    shutil.copy(shell.cwd / "coord" / "keys" / "root.pub", shell.cwd / "auditor" / "root.pub")
    auditor = Shell(cwd=shell.cwd / "auditor")
    report = auditor.json("ledger", "verify", "--bundle", "ledger.jsonl", "--trust", "root.pub")
    assert report["ok"] is True
    in_bundle = answered_in_bundle(auditor.cwd / "ledger.jsonl", answered["run_id"])
    assert sorted(in_bundle) == sorted(ANALYSIS_QUERIES)
    for query in answered["queries"]:  # every site's signed receipt, the epsilon it stated
        receipts = [r["receipt"] for r in in_bundle[query["query_id"]]["receipts"]]
        assert {r["site"]: r["epsilon"] for r in receipts} == query["epsilon"]
    provenance = auditor.json(
        "ledger", "provenance", model, "--bundle", "ledger.jsonl", "--trust", "root.pub"
    )
    assert f"veracity:model/{model}" in json.dumps(provenance)
    # The coordinator proves the release is in its log; the auditor checks the proof offline
    # against a checkpoint signed under the log key root.pub enrolled.
    (released,) = shell.json("ledger", "show", "--kind", "model.released", "--data-dir", "coord")
    proof = shell.json("ledger", "prove", str(released["seq"]), "--data-dir", "coord")
    (auditor.cwd / "proof.json").write_text(json.dumps(proof), encoding="utf-8")
    (auditor.cwd / "checkpoint.json").write_text(json.dumps(proof["checkpoint"]), encoding="utf-8")
    checked = auditor.json(
        "ledger", "verify-proof", "--proof", "proof.json", "--checkpoint", "checkpoint.json",
        "--trust", "root.pub",
    )  # fmt: skip
    assert checked["ok"] is True
    for site in SITES:
        pending = shell.json("site", "outbox", "--data-dir", f"site-{site[-1]}")
        assert pending["statements"] == [], site

    # ---- a run whose ServerApp process dies: `server start` records its end by itself ------
    # The sites stop first: each would refuse a second run of this one-run study at once,
    # and the run could end by itself (insufficient_sites) before its ServerApp is found
    # and killed. Without them the ServerApp waits for their nodes.
    for process in site_processes:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    crashed = admin.json("admin", "runs", "start", study_hash)["run_id"]
    serverapp = wait_for(
        "the run's ServerApp process", lambda: _serverapp_process(shell.cwd / "coord"), timeout=120
    )
    os.kill(serverapp, signal.SIGKILL)

    def recorded() -> dict[str, Any] | None:
        finished: dict[str, Any] | None = admin.json("admin", "runs", "show", crashed)["finished"]
        return finished

    # Flower's SuperLink marks a run whose ServerApp stopped its heartbeats as finished after
    # about a minute; `server start` looks for such runs every 10 s and records the end.
    ended = wait_for("server start to record the crashed run's end", recorded, timeout=600,
                     interval=2)  # fmt: skip
    assert ended["status"] == "failed", ended
    assert ended["model_hash"] is None


def _serverapp_process(coordinator: Path) -> int | None:
    """The pid of a run's ServerApp: a child that this coordinator's executor forked."""
    ca_cert = str((coordinator / "tls" / "ca.crt").resolve())
    executors: dict[int, int] = {}  # pid -> parent pid, for this coordinator's executor
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it has exited
        if b"veracity.server.serverapp_executor" in argv and ca_cert.encode() in argv:
            executors[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    children = [pid for pid, parent in executors.items() if parent in executors]
    return children[0] if children else None
