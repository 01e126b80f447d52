"""Tables with k classes: declared at registration, labels outside them refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from veracity.cli import main
from veracity.client.datasets import Table, load_registered, register_dataset
from veracity.client.fingerprint import schema_hash
from veracity.client.site import Site
from veracity.errors import InputError

CLASSES = ("walk", "stand", "freeze")


def _csv(tmp_path: Path, labels: list[str]) -> Path:
    path = tmp_path / "gait.csv"
    rows = [f"{i % 7},{(i * 3) % 5},{label}" for i, label in enumerate(labels)]
    path.write_text("\n".join(["a,b,activity", *rows]) + "\n", encoding="utf-8")
    return path


def test_a_three_class_table_is_registered_with_its_classes(site: Site, tmp_path: Path) -> None:
    path = _csv(tmp_path, [CLASSES[i % 3] for i in range(60)])
    dataset, _ = register_dataset(
        site, dataset_id="gait", path=path, label="activity", classes=CLASSES
    )
    assert dataset.classes == CLASSES
    assert dataset.kind == "table"
    assert site.store.get_dataset("gait") == dataset
    assert dataset.schema_hash != schema_hash(("a", "b"), "activity")
    table = load_registered(dataset)
    assert isinstance(table, Table)
    assert table.y.tolist() == [i % 3 for i in range(60)]


def test_numeric_classes_match_numbers_written_differently(site: Site, tmp_path: Path) -> None:
    path = _csv(tmp_path, [f"{i % 3}.0" for i in range(60)])
    dataset, _ = register_dataset(
        site, dataset_id="gait", path=path, label="activity", classes=("0", "1", "2")
    )
    table = load_registered(dataset)
    assert isinstance(table, Table)
    assert table.y.tolist() == [i % 3 for i in range(60)]


def test_binary_schema_hash_is_unchanged() -> None:
    # The schema of a 0/1 table is what it was before classes existed.
    expected = "026fddc65ae33ad679276f5fa7c8f7efbc46f93afff58cea1dbfb72d475b9dd5"
    assert schema_hash(("a",), "y") == expected
    assert schema_hash(("a",), "y", classes=("0", "1")) == expected


def test_a_label_outside_the_declared_classes_is_refused_and_nothing_stored(
    site: Site, tmp_path: Path
) -> None:
    labels = [CLASSES[i % 3] for i in range(60)]
    labels[41] = "run"
    path = _csv(tmp_path, labels)
    with pytest.raises(InputError, match=r"found 'run' at row 42 \(line 43\).*declared classes"):
        register_dataset(site, dataset_id="gait", path=path, label="activity", classes=CLASSES)
    assert site.store.list_datasets() == []
    assert site.store.outbox(include_delivered=True) == []


@pytest.mark.parametrize(
    ("classes", "message"),
    [(("walk",), "between 2 and 1000"), (("walk", "walk"), "distinct"), (("", "x"), "printable")],
)
def test_bad_class_declarations_are_refused(
    site: Site, tmp_path: Path, classes: tuple[str, ...], message: str
) -> None:
    path = _csv(tmp_path, [CLASSES[i % 3] for i in range(60)])
    with pytest.raises(InputError, match=message):
        register_dataset(site, dataset_id="gait", path=path, label="activity", classes=classes)


def test_cli_refuses_a_label_outside_the_classes_with_exit_1(
    site_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = [CLASSES[i % 3] for i in range(60)]
    labels[5] = "jump"
    path = _csv(tmp_path, labels)
    code = main(
        ["site", "register-dataset", "--data-dir", str(site_dir), "--id", "gait", "--path",
         str(path), "--label", "activity", "--classes", ",".join(CLASSES)],
    )  # fmt: skip
    assert code == 1
    assert "'jump'" in capsys.readouterr().err
    with Site.open(site_dir) as site:
        assert site.store.list_datasets() == []
