"""``veracity site ...`` through veracity.cli.main: data on stdout, errors on stderr, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.client.support import SITE, make_study
from veracity.cli import main


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.fixture
def cli_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    root = tmp_path / "cli-site"
    _json(capsys, ["site", "init", "--name", SITE, "--data-dir", str(root), "--format", "json"])
    return root


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(make_study().to_document()))
    return path


def test_init_prints_the_site_and_refuses_a_second_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "s"
    shown = _json(
        capsys, ["site", "init", "--name", SITE, "--data-dir", str(root), "--format", "json"]
    )
    assert shown["site"] == SITE
    assert len(shown["key_id"]) == 64
    assert Path(shown["supernode_public_key"]).read_text().startswith("ecdsa-sha2-nistp384 ")
    code = main(["site", "init", "--name", SITE, "--data-dir", str(root)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert "initialised only once" in captured.err


def test_data_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VERACITY_DATA_DIR", str(tmp_path / "env-site"))
    monkeypatch.setenv("VERACITY_NAME", "hospital-env")
    shown = _json(capsys, ["site", "init", "--format", "json"])
    assert shown["site"] == "hospital-env"
    assert shown["data_dir"] == str((tmp_path / "env-site").resolve())


def test_register_dataset_then_list_it(
    cli_site: Path, bc_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = _json(
        capsys,
        ["site", "register-dataset", "--id", "bc-0", "--path", str(bc_csv), "--label", "diagnosis",
         "--epsilon-budget", "6", "--data-dir", str(cli_site), "--format", "json"],
    )  # fmt: skip
    assert shown["rows"] == 152
    assert shown["statement"]["kind"] == "dataset.registered"
    listed = _json(capsys, ["site", "datasets", "--data-dir", str(cli_site), "--format", "json"])
    (dataset,) = listed["datasets"]
    assert dataset["epsilon_spent"] == 0.0
    assert dataset["epsilon_budget"] == 6.0


def test_bad_dataset_exits_1_naming_row_and_column_and_registers_nothing(
    cli_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    rows = [f"{i},{i % 2}" for i in range(60)]
    rows[7] = "abc,1"
    path.write_text("age,outcome\n" + "\n".join(rows) + "\n")
    code = main(
        ["site", "register-dataset", "--id", "bad", "--path", str(path), "--label", "outcome",
         "--data-dir", str(cli_site)]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert "non-numeric value 'abc' at row 8 (line 9), column 'age'" in captured.err
    outbox = _json(capsys, ["site", "outbox", "--data-dir", str(cli_site), "--format", "json"])
    assert outbox["statements"] == []


def test_review_approve_refuse_and_the_outbox(
    cli_site: Path, bc_csv: Path, study_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--data-dir", str(cli_site), "--format", "json"]
    _json(capsys, ["site", "register-dataset", "--id", "bc-0", "--path", str(bc_csv),
                   "--label", "diagnosis", *base])  # fmt: skip
    review = _json(capsys, ["site", "review", str(study_file), "--dataset", "bc-0", *base])
    assert review["total_steps"] == 25
    assert review["problems"] == []
    study = json.loads(study_file.read_text())
    assert review["scaling"] == study["scaling"]
    assert review["max_weight_norm"] == 1000.0
    capsys.readouterr()
    assert main(["site", "review", str(study_file), "--dataset", "bc-0",
                 "--data-dir", str(cli_site)]) == 0  # fmt: skip
    shown = capsys.readouterr().err
    assert "scaling (public, applied to your data before the model): " in shown
    first = study["features"][0]
    mean, std = study["scaling"][0]
    assert f"{first} (x - {mean:g}) / {std:g}" in " ".join(shown.split())
    assert "L2 norm 1000" in shown
    approved = _json(
        capsys,
        [
            "site",
            "approve",
            str(study_file),
            "--dataset",
            "bc-0",
            "--epsilon-cap",
            "2",
            "--yes",
            *base,
        ],
    )
    assert approved["decision"] == "approved"
    assert approved["epsilon_cap_in_force"] == 2.0
    refused = _json(capsys, ["site", "refuse", str(study_file), "--reason", "withdrawn", *base])
    assert refused["decision"] == "refused"
    studies = _json(capsys, ["site", "studies", *base])
    assert [d["decision"] for d in studies["decisions"]] == ["approved", "refused"]
    outbox = _json(capsys, ["site", "outbox", *base])
    kinds = [s["kind"] for s in outbox["statements"]]
    assert kinds == ["dataset.registered", "study.approved", "study.refused"]
    first = outbox["statements"][0]["statement_id"]
    assert _json(capsys, ["site", "outbox-ack", first, *base]) == {"delivered": 1}
    assert len(_json(capsys, ["site", "outbox", *base])["statements"]) == 2
    everything = _json(capsys, ["site", "outbox", "--all", *base])["statements"]
    assert everything[0]["delivered_at"] is not None


def test_approve_shows_a_summary_and_needs_confirmation(
    cli_site: Path, bc_csv: Path, study_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["site", "register-dataset", "--id", "bc-0", "--path", str(bc_csv), "--label", "diagnosis",
          "--data-dir", str(cli_site)])  # fmt: skip
    capsys.readouterr()
    code = main(["site", "approve", str(study_file), "--dataset", "bc-0", "--epsilon-cap", "2",
                 "--data-dir", str(cli_site)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert "Study bc-test" in captured.err
    assert "DP-SGD: noise multiplier 2" in captured.err
    assert "the whole study would spend epsilon" in captured.err
    assert "--yes" in captured.err


def test_approving_with_a_problem_exits_1(
    cli_site: Path, study_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["site", "approve", str(study_file), "--dataset", "ghost", "--epsilon-cap", "2",
                 "--yes", "--data-dir", str(cli_site)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "no dataset 'ghost'" in captured.err


def test_commands_on_a_directory_that_is_not_a_site_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["site", "outbox", "--data-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert "veracity site init" in captured.err


@pytest.mark.training
def test_canary_audit_passes_the_studys_dp_terms(
    cli_site: Path, study_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = _json(
        capsys,
        ["site", "canary-audit", str(study_file), "--rows", "152",
         "--data-dir", str(cli_site), "--format", "json"],
    )  # fmt: skip
    assert audit["flagged"] is False
    assert audit["rows"] == 152
    assert audit["sample_rate"] == 0.2
    assert audit["coordinates"] >= 400
    assert audit["false_alarm_rate"] == 0.001
    code = main(["site", "canary-audit", str(study_file), "--data-dir", str(cli_site)])
    assert code == 1  # neither --dataset nor --rows
    assert "--rows" in capsys.readouterr().err


def _analysis_document(*, code_hash: str = "c" * 64) -> dict[str, Any]:
    return {
        "kind": "analysis",
        "study_id": "bc-cohort",
        "columns": {
            "mean_radius": {"lower": 5.0, "upper": 30.0},
            "diagnosis": {"lower": 0.0, "upper": 1.0},
        },
        "queries": [
            {"query_id": "malignant", "kind": "count", "epsilon": 0.4,
             "cohort": [{"column": "diagnosis", "op": "==", "value": 1.0}]},
            {"query_id": "radius", "kind": "histogram", "column": "mean_radius",
             "bins": [5.0, 15.0, 30.0], "epsilon": 0.6},
        ],
        "delta": 1e-5,
        "epsilon_caps": {SITE: 3.0},
        "code_hash": code_hash,
    }  # fmt: skip


def test_an_analysis_study_is_reviewed_approved_and_refused_like_a_training_study(
    cli_site: Path, bc_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from veracity.core.canonical import canonical_hash

    document = _analysis_document()
    study_file = tmp_path / "analysis.json"
    # As the coordinator publishes it: the study.proposed payload with its hash.
    study_file.write_text(json.dumps({"study": document, "study_hash": canonical_hash(document)}))
    base = ["--data-dir", str(cli_site), "--format", "json"]
    _json(capsys, ["site", "register-dataset", "--id", "bc-0", "--path", str(bc_csv),
                   "--label", "diagnosis", *base])  # fmt: skip

    review = _json(capsys, ["site", "review", str(study_file), "--dataset", "bc-0", *base])
    assert main(["site", "review", str(study_file), "--dataset", "bc-0", "--epsilon-cap", "2",
                 "--data-dir", str(cli_site)]) == 0  # fmt: skip
    shown = " ".join(capsys.readouterr().err.split())
    approved = _json(
        capsys,
        ["site", "approve", str(study_file), "--dataset", "bc-0", "--epsilon-cap", "2",
         "--yes", *base],
    )  # fmt: skip
    refused = _json(capsys, ["site", "refuse", str(study_file), "--reason", "withdrawn", *base])
    outbox = _json(capsys, ["site", "outbox", *base])["statements"]

    assert review["kind"] == "analysis"
    assert review["problems"] == []
    assert review["columns"]["mean_radius"] == {"lower": 5.0, "upper": 30.0}
    assert [q["epsilon"] for q in review["queries"]] == [0.4, 0.6]
    assert review["queries"][0]["cohort"] == [{"column": "diagnosis", "op": "==", "value": 1.0}]
    assert "mean_radius: [5, 30]" in shown
    assert "malignant: count; cohort diagnosis == 1; epsilon 0.4" in shown
    assert "radius: histogram; column mean_radius; bins 5, 15, 30; every row; epsilon 0.6" in shown
    assert "in force 2" in shown
    assert approved["decision"] == "approved"
    assert approved["study_hash"] == canonical_hash(document)
    assert approved["epsilon_cap"] == 2.0
    assert approved["epsilon_cap_in_force"] == 2.0
    assert refused["decision"] == "refused"
    assert [s["kind"] for s in outbox] == ["dataset.registered", "study.approved", "study.refused"]
    signed = outbox[1]
    assert signed["payload"]["study_hash"] == canonical_hash(document)
    assert signed["payload"]["epsilon_cap"] == 2.0


def test_an_approved_analysis_is_bound_to_its_document_and_code_hash(
    cli_site: Path, bc_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from veracity.client.analysis import AnalysisAgent, QueryRefusal, QueryReply, QueryRequest
    from veracity.client.site import Site
    from veracity.contracts.analysis import AnalysisStudy

    document = _analysis_document()
    study_file = tmp_path / "analysis.json"
    study_file.write_text(json.dumps(document))
    base = ["--data-dir", str(cli_site), "--format", "json"]
    _json(capsys, ["site", "register-dataset", "--id", "bc-0", "--path", str(bc_csv),
                   "--label", "diagnosis", *base])  # fmt: skip
    _json(capsys, ["site", "approve", str(study_file), "--dataset", "bc-0", "--epsilon-cap", "2",
                   "--yes", *base])  # fmt: skip
    study = AnalysisStudy.parse(document)
    widened = AnalysisStudy.parse({**document, "epsilon_caps": {SITE: 30.0}})

    with Site.open(cli_site) as site:
        agent = AnalysisAgent(site, seed=0)
        answered = agent.handle_query(
            QueryRequest(document, study.study_hash, study.code_hash, "malignant")
        )
        other_code = agent.handle_query(
            QueryRequest(document, study.study_hash, "d" * 64, "malignant")
        )
        other_terms = agent.handle_query(
            QueryRequest(widened.to_document(), widened.study_hash, study.code_hash, "malignant")
        )

    assert isinstance(answered, QueryReply)
    assert isinstance(other_code, QueryRefusal)
    assert other_code.kind == "approval.missing"
    assert isinstance(other_terms, QueryRefusal)
    assert "not approved" in other_terms.reason


def test_approving_an_analysis_over_an_undeclared_column_exits_1_and_signs_nothing(
    cli_site: Path, bc_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _analysis_document()
    document["columns"]["shoe size"] = {"lower": 30.0, "upper": 50.0}
    study_file = tmp_path / "analysis.json"
    study_file.write_text(json.dumps(document))
    base = ["--data-dir", str(cli_site)]
    main(["site", "register-dataset", "--id", "bc-0", "--path", str(bc_csv), "--label",
          "diagnosis", *base])  # fmt: skip
    capsys.readouterr()

    code = main(["site", "approve", str(study_file), "--dataset", "bc-0", "--epsilon-cap", "2",
                 "--yes", *base])  # fmt: skip
    captured = capsys.readouterr()
    outbox = _json(capsys, ["site", "outbox", *base, "--format", "json"])["statements"]

    assert code == 1
    assert "has no column 'shoe size'" in captured.err
    assert [s["kind"] for s in outbox] == ["dataset.registered"]
