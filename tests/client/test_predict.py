"""The requester's side of ``veracity predict`` without a server: CSV, scaling, planning."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.client.predict import (
    LayoutChoice,
    ModelDescription,
    plan_batches,
    read_patients_csv,
    sigmoid,
    standardise,
)
from veracity.errors import ConfigError, CryptoError, InputError
from veracity.he.params import LOGISTIC_PARAMETERS, PackingLayout

FEATURES = ("age", "bmi")
HASH = "ab" * 32


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "patients.csv"
    path.write_text(text)
    return path


def test_columns_may_come_in_any_order_with_an_id_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "bmi,id,age\n22.5,a,40\n30,b,61\n")
    table = read_patients_csv(path, FEATURES, id_column="id")
    assert table.ids == ("a", "b")
    np.testing.assert_array_equal(table.values, [[40.0, 22.5], [61.0, 30.0]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("age\n40\n", "missing column 'bmi'"),
        ("age,bmi,height\n40,22,180\n", "column 'height' is not a feature"),
        ("age,bmi,age\n1,2,3\n", "'age' appears more than once"),
        ("age,bmi\n40,22\n41,abc\n", "row 2, column 'bmi': 'abc' is not a number"),
        ("age,bmi\n40,\n", "row 1, column 'bmi': '' is not a number"),
        ("age,bmi\n40,nan\n", "row 1, column 'bmi': 'nan' is not a number"),
        ("age,bmi\n40,22,7\n", "row 1 has 3 fields"),
        ("", "is empty"),
        ("age,bmi\n", "no patients"),
    ],
)
def test_a_csv_that_does_not_fit_is_refused_by_name(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        read_patients_csv(_csv(tmp_path, text), FEATURES)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        read_patients_csv(tmp_path / "nope.csv", FEATURES)


def test_standardising_refuses_values_outside_the_input_bound() -> None:
    values = np.array([[40.0, 22.0], [41.0, 2200.0]])
    with pytest.raises(InputError, match=r"row b, column 'bmi': 2200 is \+54"):
        standardise(
            values, [(40.0, 10.0), (25.0, 40.0)], features=FEATURES, bound=50, ids=["a", "b"]
        )
    z = standardise(values[:1], [(40.0, 10.0), (25.0, 4.0)], features=FEATURES, bound=50, ids=["a"])
    np.testing.assert_allclose(z, [[0.0, -0.75]])


def _description(small_max: int = 1224, batch_max: int = 4096) -> ModelDescription:
    return ModelDescription(
        model_hash=HASH,
        family="logistic",
        n_features=2,
        hidden=0,
        features=FEATURES,
        label="y",
        scaling=((0.0, 1.0), (0.0, 1.0)),
        parameter_set=LOGISTIC_PARAMETERS,
        he_params_hash="00" * 32,
        small=LayoutChoice(PackingLayout.COEFFICIENT, small_max),
        batch=LayoutChoice(PackingLayout.COLUMN_COEFFICIENT, batch_max),
        threshold=0.5,
    )


@settings(max_examples=examples(50), deadline=None)
@given(n=st.integers(1, 20_000), small_max=st.integers(0, 2000))
def test_batches_cover_every_patient_once_and_respect_capacities(n: int, small_max: int) -> None:
    description = _description(small_max=small_max)
    plan = plan_batches(n, description)
    assert plan[0][1] == 0
    assert plan[-1][2] == n
    assert all(previous[2] == current[1] for previous, current in itertools.pairwise(plan))
    for choice, start, stop in plan:
        assert 0 < stop - start <= choice.max_batch
    # Only the last request may use the small layout, and only when it fits there.
    assert all(choice is description.batch for choice, _, _ in plan[:-1])


def test_small_batches_use_the_small_layout() -> None:
    assert plan_batches(1, _description()) == [(_description().small, 0, 1)]
    assert [c.layout for c, _, _ in plan_batches(5000, _description())] == [
        PackingLayout.COLUMN_COEFFICIENT,
        PackingLayout.COEFFICIENT,
    ]


def test_a_wrong_feature_count_is_refused_before_anything_is_sent() -> None:
    # Attack 4: 29 features for a 30-feature model used to be served and mis-scored in the
    # small layouts (same ciphertext count). Nothing listens on the client's port: the
    # refusal must come before any request.
    from veracity.client.predict import InferenceClient, predict_encrypted
    from veracity.he.contexts import SecretContext

    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    description = dataclasses.replace(_description(), he_params_hash=secret.he_params_hash)
    with InferenceClient("http://127.0.0.1:9", token="t") as client:  # noqa: S106
        for wrong in (np.zeros((3, 3)), np.zeros((3, 1)), np.zeros(2)):
            with pytest.raises(InputError, match="takes 2 features per patient"):
                predict_encrypted(client, description, wrong, secret=secret)
    with pytest.raises(InputError, match="takes 2 features"):
        standardise(np.zeros((1, 3)), [(0.0, 1.0)] * 2, features=FEATURES, bound=64, ids=["a"])


def test_sigmoid_is_stable_for_large_logits() -> None:
    out = sigmoid(np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0]))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [0.0, 0.26894142, 0.5, 0.73105858, 1.0], atol=1e-8)


def _document() -> dict[str, Any]:
    return {
        "model_hash": HASH,
        "model": {"family": "logistic", "n_features": 2},
        "features": list(FEATURES),
        "label": "y",
        "scaling": [[0.0, 1.0], [0.0, 1.0]],
        "decision_threshold": 0.5,
        "he": {
            "parameter_set": LOGISTIC_PARAMETERS.describe(),
            "he_params_hash": "00" * 32,
            "layouts": {
                "small": {"name": "coefficient", "max_batch": 1224},
                "batch": {"name": "column_coefficient", "max_batch": 4096},
            },
        },
    }


def test_a_description_parses() -> None:
    description = ModelDescription.from_json(_document(), expected_hash=HASH)
    assert description.parameter_set is LOGISTIC_PARAMETERS
    assert description.small.layout is PackingLayout.COEFFICIENT


def test_a_server_cannot_talk_the_client_into_other_parameters() -> None:
    weaker = copy.deepcopy(_document())
    weaker["he"]["parameter_set"]["input_scale_bits"] = 10
    with pytest.raises(CryptoError, match="differently"):
        ModelDescription.from_json(weaker, expected_hash=HASH)
    unknown = copy.deepcopy(_document())
    unknown["he"]["parameter_set"]["name"] = "ckks-toy"
    with pytest.raises(CryptoError, match="unknown"):
        ModelDescription.from_json(unknown, expected_hash=HASH)


def test_a_description_of_another_model_or_malformed_is_refused() -> None:
    with pytest.raises(InputError, match="not " + "cd" * 32):
        ModelDescription.from_json(_document(), expected_hash="cd" * 32)
    broken = _document()
    del broken["he"]["layouts"]
    with pytest.raises(InputError, match="malformed"):
        ModelDescription.from_json(broken, expected_hash=HASH)


def _image_document() -> dict[str, Any]:
    from veracity.he.params import CNN_PARAMETERS

    return {
        "model_hash": HASH,
        "model": {"family": "cnn2d", "n_features": 64, "input_shape": [1, 8, 8]},
        "features": ["grey"],
        "label": "digit",
        "scaling": [[0.5, 0.25]],
        "classes": ["a", "b", "c"],
        "input_shape": [1, 8, 8],
        "intensity_max": 255.0,
        "he": {
            "parameter_set": CNN_PARAMETERS.describe(),
            "he_params_hash": "00" * 32,
            "layouts": {
                "small": {"name": "column", "max_batch": 8192},
                "batch": {"name": "column", "max_batch": 8192},
            },
        },
        "wire": {"max_request_bytes": 1024 * 1024},
    }


def test_an_image_model_description_scales_per_channel_and_names_its_classes() -> None:
    description = ModelDescription.from_json(_image_document(), expected_hash=HASH)
    assert description.images
    assert description.outputs == 3
    assert description.classes == ("a", "b", "c")
    broken = _image_document()
    broken["input_shape"] = [1, 8, 7]
    with pytest.raises(InputError, match="input shape"):
        ModelDescription.from_json(broken, expected_hash=HASH)


def test_images_are_read_from_a_folder_or_an_npz_and_scaled_per_channel(tmp_path: Path) -> None:
    from PIL import Image

    from veracity.client.predict import read_images, standardise_images

    folder = tmp_path / "scans"
    (folder / "b").mkdir(parents=True)
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(pixels, mode="L").save(folder / "b" / "two.png")
    Image.fromarray(pixels[::-1], mode="L").save(folder / "one.png")
    (folder / "labels.csv").write_text("file\n")  # not an image: ignored
    description = ModelDescription.from_json(_image_document(), expected_hash=HASH)

    table = read_images(folder, input_shape=(1, 8, 8))

    assert table.ids == ("b/two.png", "one.png")
    z = standardise_images(table.values, description, ids=table.ids)
    np.testing.assert_allclose(z[0], (pixels.reshape(-1) / 255.0 - 0.5) / 0.25)
    np.savez(tmp_path / "scans.npz", x=np.stack([pixels, pixels[::-1]]))
    from_npz = read_images(tmp_path / "scans.npz", input_shape=(1, 8, 8))
    assert from_npz.ids == ("1", "2")
    np.testing.assert_array_equal(from_npz.values[0], table.values[0])


def test_images_that_do_not_fit_the_model_are_refused_by_name(tmp_path: Path) -> None:
    from PIL import Image

    from veracity.client.predict import read_images, standardise_images

    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8), mode="RGB").save(folder / "rgb.png")
    with pytest.raises(InputError, match=r"rgb\.png.*3 channel"):
        read_images(folder, input_shape=(1, 8, 8))
    (folder / "rgb.png").unlink()
    with pytest.raises(InputError, match=r"no \.png or \.dcm"):
        read_images(folder, input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="no such"):
        read_images(tmp_path / "missing", input_shape=(1, 8, 8))
    description = ModelDescription.from_json(_image_document(), expected_hash=HASH)
    bright = np.full((1, 64), 255.0 * 3)  # 16-bit pixels under an 8-bit model: 10 std away
    with pytest.raises(InputError, match="image scan7, channel 'grey'"):
        standardise_images(bright, description, ids=["scan7"])


def test_a_request_above_the_servers_limit_is_refused_before_encrypting() -> None:
    from veracity.client.predict import InferenceClient, predict_encrypted
    from veracity.he.params import CNN_PARAMETERS

    description = ModelDescription.from_json(_image_document(), expected_hash=HASH)
    with (
        InferenceClient("http://127.0.0.1:9", token="t") as client,  # noqa: S106
        pytest.raises(InputError, match="above the server's limit of 1 MiB"),
    ):
        predict_encrypted(client, description, np.zeros((2, 64)))
    assert CNN_PARAMETERS.poly_modulus_degree * sum(CNN_PARAMETERS.data_prime_bits) // 8 > 2**18


def test_a_folder_of_dicom_images_is_read_like_png(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from veracity.client.predict import read_images

    pixels = (np.arange(2 * 64, dtype=np.uint8).reshape(2, 8, 8) * 2) % 255
    dicom, png = tmp_path / "dicom", tmp_path / "png"
    dicom.mkdir()
    png.mkdir()
    for index, image in enumerate(pixels):
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
        ds.save_as(dicom / f"scan{index}.dcm", enforce_file_format=True)
        Image.fromarray(image, mode="L").save(png / f"scan{index}.png")

    from_dicom = read_images(dicom, input_shape=(1, 8, 8))

    assert from_dicom.ids == ("scan0.dcm", "scan1.dcm")
    np.testing.assert_array_equal(from_dicom.values, read_images(png, input_shape=(1, 8, 8)).values)


def _im2col_document() -> dict[str, Any]:
    from veracity.he.params import CNN_IMAGE_PARAMETERS

    document = _image_document()
    document["model"].update({"filters": [4, 8], "kernel": 3})
    document["he"]["layouts"]["small"] = {
        "name": "im2col",
        "max_batch": 16,
        "rotation_steps": [1, 2],
        "parameter_set": CNN_IMAGE_PARAMETERS.describe(),
        "he_params_hash": "11" * 32,
    }
    return document


def test_a_few_images_go_one_ciphertext_each_and_many_in_the_batch_layout() -> None:
    from veracity.he.params import CNN_IMAGE_PARAMETERS, CNN_PARAMETERS

    description = ModelDescription.from_json(_im2col_document(), expected_hash=HASH)
    assert description.small.layout is PackingLayout.IM2COL
    assert description.parameters(description.small) == (CNN_IMAGE_PARAMETERS, "11" * 32)
    assert description.parameters(description.batch) == (CNN_PARAMETERS, "00" * 32)
    assert description.shape().filters == (4, 8)
    assert [c.layout for c, _, _ in plan_batches(16, description)] == [PackingLayout.IM2COL]
    assert [c.layout for c, _, _ in plan_batches(17, description)] == [PackingLayout.COLUMN]
    assert [c.layout for c, _, _ in plan_batches(8192 + 3, description)] == [
        PackingLayout.COLUMN,
        PackingLayout.IM2COL,
    ]


def test_a_server_cannot_talk_the_client_into_other_single_image_parameters() -> None:
    weaker = _im2col_document()
    weaker["he"]["layouts"]["small"]["parameter_set"]["coeff_modulus_bits"] = [60, 60, 60, 60]
    with pytest.raises(CryptoError, match="differently"):
        ModelDescription.from_json(weaker, expected_hash=HASH)
