"""Images at registration: PNG folders, DICOM and NPZ, each fault refused and nothing stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veracity.cli import main
from veracity.client.datasets import ImagesDeclared, load_registered, register_dataset
from veracity.client.images import parse_images
from veracity.client.records import Records, read_source, records_digest
from veracity.client.site import Site
from veracity.client.store import Dataset, SignedStatement
from veracity.client.study_inputs import study_examples
from veracity.errors import InputError
from veracity.tasks.study import parse_study

CLASSES = tuple(str(i) for i in range(3))


def _pixels(count: int = 12, size: tuple[int, int] = (8, 8)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(count, *size)).astype(np.uint8), np.arange(count) % 3


def _folder(root: Path, pixels: np.ndarray, labels: np.ndarray) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["file,digit"]
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        name = f"img{index:03d}.png"
        Image.fromarray(image, mode="L").save(root / name)
        lines.append(f"{name},{label}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _register(
    site: Site, path: Path, dataset_id: str = "digits", size: tuple[int, int] = (8, 8)
) -> tuple[Dataset, SignedStatement]:
    return register_dataset(
        site,
        dataset_id=dataset_id,
        path=path,
        label="digit",
        classes=CLASSES,
        declared=ImagesDeclared(height=size[0], width=size[1]),
        min_rows=5,
    )


def _assert_nothing_registered(site: Site) -> None:
    assert site.store.list_datasets() == []
    assert site.store.outbox(include_delivered=True) == []


def test_a_png_folder_is_registered_as_images(site: Site, tmp_path: Path) -> None:
    pixels, labels = _pixels()
    dataset, statement = _register(site, _folder(tmp_path / "scans", pixels, labels))
    assert (dataset.kind, dataset.rows, dataset.features) == ("images", 12, ("grey",))
    assert dataset.file_format == "image-folder"
    assert statement.payload["rows"] == 12
    assert statement.payload["kind"] == "images"
    loaded = load_registered(dataset)
    assert isinstance(loaded, Records)
    np.testing.assert_array_equal(loaded.arrays[0][:, 0], pixels)
    assert loaded.labels[0].tolist() == labels.tolist()


def test_the_same_pixels_in_png_and_npz_have_the_same_digest(tmp_path: Path) -> None:
    pixels, labels = _pixels()
    np.savez(tmp_path / "scans.npz", x=pixels, y=labels)
    digests = {
        records_digest(
            parse_images(read_source(path), label="digit", classes=CLASSES, height=8, width=8)
        )
        for path in (_folder(tmp_path / "scans", pixels, labels), tmp_path / "scans.npz")
    }
    assert len(digests) == 1


def _truncate(root: Path) -> None:
    target = root / "img004.png"
    target.write_bytes(target.read_bytes()[:40])


def _resize(root: Path) -> None:
    Image.fromarray(np.zeros((9, 8), np.uint8), mode="L").save(root / "img007.png")


def _relabel(root: Path) -> None:
    text = (root / "labels.csv").read_text().replace("img005.png,2", "img005.png,7")
    (root / "labels.csv").write_text(text)


def _colour(root: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), mode="RGB").save(root / "img000.png")


BAD = {
    "truncated-png": (_truncate, r"img004.png: not a readable PNG image .*truncated"),
    "mixed-sizes": (_resize, r"mixed image sizes: img007.png is 8x9 .*img000.png is 8x8"),
    "label-outside-classes": (_relabel, r"found '7' at line 7.*declared classes"),
    "mixed-channels": (_colour, r"mixed channels: img001.png has 1 channel\(s\), img000.png has 3"),
}


@pytest.mark.parametrize("case", BAD, ids=BAD.keys())
def test_malformed_images_are_refused_and_nothing_stored(
    site: Site, tmp_path: Path, case: str
) -> None:
    pixels, labels = _pixels()
    root = _folder(tmp_path / "scans", pixels, labels)
    damage, message = BAD[case]
    damage(root)
    with pytest.raises(InputError, match=message):
        _register(site, root)
    _assert_nothing_registered(site)


def test_images_of_another_size_than_declared_are_refused(site: Site, tmp_path: Path) -> None:
    pixels, labels = _pixels()
    with pytest.raises(InputError, match="declared geometry is 16x16"):
        _register(site, _folder(tmp_path / "scans", pixels, labels), size=(16, 16))
    np.savez(tmp_path / "nan.npz", x=np.where(pixels == pixels.max(), np.nan, 1.0), y=labels)
    with pytest.raises(InputError, match=r"missing sample \(NaN\)"):
        _register(site, tmp_path / "nan.npz")
    _assert_nothing_registered(site)


def test_cli_refuses_a_truncated_png_with_exit_1(
    site_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pixels, labels = _pixels()
    root = _folder(tmp_path / "scans", pixels, labels)
    _truncate(root)
    code = main(
        ["site", "register-dataset", "--data-dir", str(site_dir), "--id", "digits", "--kind",
         "images", "--image-size", "8x8", "--classes", "0,1,2", "--path", str(root),
         "--label", "digit"]
    )  # fmt: skip
    assert code == 1
    assert "truncated" in capsys.readouterr().err
    with Site.open(site_dir) as opened:
        assert opened.store.list_datasets() == []


def test_dicom_images_are_read_like_png(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels, labels = _pixels(count=6)
    root = tmp_path / "dicom"
    root.mkdir()
    lines = ["file,digit"]
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = image.tobytes()
        ds.save_as(root / f"scan{index}.dcm", enforce_file_format=True)
        lines.append(f"scan{index}.dcm,{label}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    records = parse_images(read_source(root), label="digit", classes=CLASSES, height=8, width=8)
    np.testing.assert_array_equal(records.arrays[0][:, 0], pixels)
    png = _folder(tmp_path / "png", pixels, labels)
    assert records_digest(records) == records_digest(
        parse_images(read_source(png), label="digit", classes=CLASSES, height=8, width=8)
    )


def test_a_study_scales_intensities_and_channels(site: Site, tmp_path: Path) -> None:
    pixels, labels = _pixels()
    dataset, _ = _register(site, _folder(tmp_path / "scans", pixels, labels))
    study = parse_study(
        {
            "study_id": "digits",
            "model": {"family": "cnn2d", "input_shape": [1, 8, 8], "classes": 3, "kernel": 3},
            "features": ["grey"],
            "label": "digit",
            "classes": list(CLASSES),
            "scaling": [[0.5, 0.25]],
            "input": {"kind": "images", "height": 8, "width": 8, "intensity_max": 255},
            "dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
            "training": {"batch_size": 8, "local_epochs": 1, "learning_rate": 0.1},
            "rounds": 1,
            "min_sites": 1,
            "epsilon_caps": {"site-a": 3.0},
            "code_hash": "ab" * 32,
        }
    )
    x, y = study_examples(study, load_registered(dataset))
    np.testing.assert_allclose(x, ((pixels / 255 - 0.5) / 0.25).reshape(12, 64), rtol=1e-5)
    assert y.tolist() == labels.tolist()
