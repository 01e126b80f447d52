"""Dataset registration: each kind of bad file is a distinct clear error, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.client.support import SITE
from veracity.client.datasets import Table, load_registered, read_table, register_dataset
from veracity.client.fingerprint import content_digest, verify_commitment
from veracity.client.site import Site
from veracity.crypto.keys import load_verify_key
from veracity.errors import ApprovalMissing, InputError
from veracity.ledger.statement import verify_statement

HEADER = "age,bmi,glucose,outcome"


def _rows(count: int) -> list[str]:
    return [f"{40 + i % 30},{20 + (i % 7) * 0.5},{90 + i % 11},{i % 2}" for i in range(count)]


def _csv(tmp_path: Path, lines: list[str], name: str = "cohort.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _assert_nothing_registered(site: Site) -> None:
    assert site.store.list_datasets() == []
    assert site.store.outbox(include_delivered=True) == []


BAD_CSV = [
    ("semicolons", [HEADER.replace(",", ";"), *(r.replace(",", ";") for r in _rows(60))],
     r"semicolon-separated"),
    ("tabs", [HEADER.replace(",", "\t"), *(r.replace(",", "\t") for r in _rows(60))],
     r"tab-separated"),
    ("no-label", ["age,bmi,glucose", *(r.rsplit(",", 1)[0] for r in _rows(60))],
     r"no label column 'outcome'; the columns are age, bmi, glucose"),
    ("non-numeric", [HEADER, *_rows(10), "51,twenty,95,1", *_rows(50)],
     r"non-numeric value 'twenty' at row 11 \(line 12\), column 'bmi'"),
    ("nan", [HEADER, *_rows(4), "51,22.5,NaN,1", *_rows(55)],
     r"missing value \(NaN\) at row 5 \(line 6\), column 'glucose'"),
    ("empty-cell", [HEADER, *_rows(30), "51,,95,0", *_rows(29)],
     r"missing value \(empty\) at row 31 \(line 32\), column 'bmi'"),
    ("infinite", [HEADER, *_rows(3), "51,inf,95,0", *_rows(56)],
     r"non-finite value 'inf' at row 4 \(line 5\), column 'bmi'"),
    ("label-two", [HEADER, *_rows(20), "51,22.5,95,2", *_rows(39)],
     r"label 'outcome' must be 0 or 1, found '2' at row 21 \(line 22\)"),
    ("missing-label", [HEADER, *_rows(20), "51,22.5,95,", *_rows(39)],
     r"missing value \(empty\) at row 21 \(line 22\), column 'outcome'"),
    ("one-class", [HEADER, *(r[:-1] + "1" for r in _rows(60))],
     r"label 'outcome' has only the class 1 \(60 rows\)"),
    ("too-few-rows", [HEADER, *_rows(49)], r"49 data rows; at least 50 are needed"),
    ("ragged", [HEADER, *_rows(7), "51,22.5,95", *_rows(52)],
     r"row 8 \(line 9\) has 3 fields; the header has 4"),
    ("duplicate-column", ["age,bmi,age,outcome", *_rows(60)], r"column 'age' appears twice"),
    ("empty", [""], r"the file is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "lines", "message"), BAD_CSV, ids=[c[0] for c in BAD_CSV])
def test_bad_csv_is_refused_with_a_clear_error_and_nothing_registered(
    case: str, lines: list[str], message: str, site: Site, tmp_path: Path
) -> None:
    path = _csv(tmp_path, lines)
    with pytest.raises(InputError, match=message):
        register_dataset(site, dataset_id="cohort", path=path, label="outcome")
    _assert_nothing_registered(site)


def test_error_messages_differ_for_every_bad_file(tmp_path: Path) -> None:
    messages = set()
    for case, lines, _ in BAD_CSV:
        with pytest.raises(InputError) as caught:
            read_table(_csv(tmp_path, lines, f"{case}.csv"), label="outcome", min_rows=50)
        messages.add(str(caught.value).split(": ", 1)[1])
    assert len(messages) == len(BAD_CSV)


def test_non_utf8_file_is_refused(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(("name,outcome\n" + "Müller,1\n" * 60).encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        register_dataset(site, dataset_id="cohort", path=path, label="outcome")
    _assert_nothing_registered(site)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (["age", "insulin"], r"no feature column 'insulin'"),
        (["age", "outcome"], r"cannot also be a feature"),
        (["age", "age"], r"listed twice"),
    ],
)
def test_bad_feature_lists_are_refused(
    features: list[str], message: str, site: Site, tmp_path: Path
) -> None:
    path = _csv(tmp_path, [HEADER, *_rows(60)])
    with pytest.raises(InputError, match=message):
        register_dataset(site, dataset_id="cohort", path=path, label="outcome", features=features)
    _assert_nothing_registered(site)


@pytest.mark.parametrize(
    ("path_name", "message"),
    [("cohort.xlsx", "expected a .csv or .parquet"), ("absent.csv", "no such file")],
)
def test_unusable_paths_are_refused(
    path_name: str, message: str, site: Site, tmp_path: Path
) -> None:
    if path_name.endswith(".xlsx"):
        (tmp_path / path_name).write_text("x")
    with pytest.raises(InputError, match=message):
        register_dataset(site, dataset_id="cohort", path=tmp_path / path_name, label="outcome")
    _assert_nothing_registered(site)


@pytest.mark.parametrize(
    ("dataset_id", "budget", "message"),
    [
        ("bad id", None, "dataset id"),
        ("ok", -1.0, "epsilon budget"),
        ("ok", float("inf"), "epsilon budget"),
    ],
)
def test_bad_ids_and_budgets_are_refused(
    dataset_id: str, budget: float | None, message: str, site: Site, tmp_path: Path
) -> None:
    path = _csv(tmp_path, [HEADER, *_rows(60)])
    with pytest.raises(InputError, match=message):
        register_dataset(
            site, dataset_id=dataset_id, path=path, label="outcome", epsilon_budget=budget
        )
    _assert_nothing_registered(site)


def test_good_csv_is_registered_with_a_signed_statement(site: Site, tmp_path: Path) -> None:
    path = _csv(tmp_path, [HEADER, *_rows(60)])
    dataset, statement = register_dataset(
        site, dataset_id="cohort", path=path, label="outcome", features=["glucose", "age"],
        epsilon_budget=4.0,
    )  # fmt: skip
    assert (dataset.rows, dataset.positives) == (60, 30)
    assert dataset.features == ("glucose", "age")
    assert dataset.path == path.resolve()
    assert statement.kind == "dataset.registered"
    assert statement.actor == SITE
    assert set(statement.payload) == {
        "site", "dataset_id", "commitment", "schema_hash", "rows", "label", "features", "signed_at",
    }  # fmt: skip
    assert statement.payload["features"] == ["glucose", "age"]
    verify_statement(
        load_verify_key(site.paths.public_key), statement.kind, SITE, statement.payload,
        statement.signature, log_id=site.log_id)  # fmt: skip
    stored = site.store.get_dataset("cohort")
    assert stored == dataset
    assert stored.epsilon_budget == 4.0
    assert [entry.statement for entry in site.store.outbox()] == [statement]
    table = load_registered(dataset)
    assert isinstance(table, Table)
    digest = content_digest(table.features, table.label, table.x, table.y)
    verify_commitment(dataset.commitment, dataset.salt, digest)


def test_registering_the_same_id_or_the_same_data_twice_is_refused(
    site: Site, tmp_path: Path
) -> None:
    path = _csv(tmp_path, [HEADER, *_rows(60)])
    register_dataset(site, dataset_id="cohort", path=path, label="outcome")
    with pytest.raises(InputError, match="already registered"):
        register_dataset(site, dataset_id="cohort", path=path, label="outcome")
    copy = _csv(tmp_path, [HEADER, *_rows(60)], "copy.csv")
    with pytest.raises(InputError, match="already registered as dataset 'cohort'"):
        register_dataset(site, dataset_id="cohort-again", path=copy, label="outcome")
    assert [d.dataset_id for d in site.store.list_datasets()] == ["cohort"]
    assert len(site.store.outbox()) == 1


def _parquet(path: Path, columns: dict[str, pa.Array]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_with_the_same_content_has_the_same_digest_as_csv(tmp_path: Path) -> None:
    csv_table, _ = read_table(_csv(tmp_path, [HEADER, *_rows(60)]), label="outcome")
    parquet = _parquet(
        tmp_path / "cohort.parquet",
        {name: pa.array(csv_table.x[:, i]) for i, name in enumerate(csv_table.features)}
        | {"outcome": pa.array(csv_table.y)},
    )
    parquet_table, _ = read_table(parquet, label="outcome")
    assert content_digest(
        parquet_table.features, "outcome", parquet_table.x, parquet_table.y
    ) == content_digest(csv_table.features, "outcome", csv_table.x, csv_table.y)


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (pa.array([1.0] * 30 + [None] + [2.0] * 29), r"missing value at row 31, column 'bmi'"),
        (
            pa.array([1.0] * 12 + [float("nan")] + [2.0] * 47),
            r"missing value at row 13, column 'bmi'",
        ),
        (
            pa.array(["1.5"] * 5 + ["high"] + ["2"] * 54),
            r"non-numeric value 'high' at row 6, column 'bmi'",
        ),
        (pa.array([b"x"] * 60), r"column 'bmi' holds binary, not numbers"),
    ],
)
def test_bad_parquet_columns_are_refused(
    column: pa.Array, message: str, site: Site, tmp_path: Path
) -> None:
    labels = pa.array(np.arange(60) % 2)
    path = _parquet(tmp_path / "cohort.parquet", {"bmi": column, "outcome": labels})
    with pytest.raises(InputError, match=message):
        register_dataset(site, dataset_id="cohort", path=path, label="outcome")
    _assert_nothing_registered(site)


def test_corrupt_parquet_is_refused(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "cohort.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        register_dataset(site, dataset_id="cohort", path=path, label="outcome")
    _assert_nothing_registered(site)


def test_changed_file_is_refused_for_training(site: Site, tmp_path: Path) -> None:
    path = _csv(tmp_path, [HEADER, *_rows(60)])
    dataset, _ = register_dataset(site, dataset_id="cohort", path=path, label="outcome")
    path.write_text(path.read_text().replace("40,20.0", "41,20.0", 1))
    with pytest.raises(ApprovalMissing, match="changed since it was registered"):
        load_registered(dataset)
