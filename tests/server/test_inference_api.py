"""Encrypted inference over HTTP: a real uvicorn on 127.0.0.1, ``veracity predict`` against it."""

from __future__ import annotations

import csv
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from veracity.cli import main
from veracity.client.predict import InferenceClient, predict_encrypted, sigmoid
from veracity.contracts.events import InferenceServed
from veracity.crypto.tls import create_tls_material
from veracity.he.contexts import SecretContext
from veracity.he.params import LOGISTIC_PARAMETERS, POLY_MLP_PARAMETERS, PackingLayout
from veracity.he.wire import (
    CONTENT_TYPE,
    KIND_CONTEXT,
    RequestHeader,
    WireLimits,
    body_hash,
    decode_envelope,
    encode_envelope,
    encode_request,
)
from veracity.server.api.inference import create_inference_app
from veracity.server.inference import InferenceService
from veracity.server.registry import ModelRegistry
from veracity.tasks.spec import predict_logits

pytestmark = pytest.mark.integration

TOKEN = "test-token-0123456789"  # noqa: S105 - a throwaway token for the test server
REQUESTER = "clinic-a"
LIMITS = WireLimits(max_request_bytes=8 * 1024 * 1024, max_context_bytes=12 * 1024 * 1024)


@dataclass
class LiveServer:
    url: str
    hashes: dict[str, str]
    served: list[dict[str, Any]] = field(default_factory=list)
    ca_cert: Path | None = None


def _serve(app: Any, **ssl: Any) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", **ssl)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("uvicorn did not start")
        yield f"{'https' if ssl else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, breast_cancer: Any, trained_models: dict[str, Any]
) -> tuple[ModelRegistry, dict[str, str]]:
    models = ModelRegistry(tmp_path_factory.mktemp("registry"))
    hashes = {
        family: models.put(
            spec,
            weights,
            features=breast_cancer.feature_names,
            label="benign",
            scaling=breast_cancer.scaling,
            card={"study": "breast-cancer-demo", "family": family},
        )
        for family, (spec, weights) in trained_models.items()
    }
    return models, hashes


def _app(models: ModelRegistry, served: list[dict[str, Any]], limits: WireLimits = LIMITS) -> Any:
    def record(payload: InferenceServed) -> None:
        served.append(payload.to_json())

    service = InferenceService(models, recorder=record, limits=limits)
    return create_inference_app(service, tokens={TOKEN: REQUESTER})


@pytest.fixture(scope="module")
def live(registry: tuple[ModelRegistry, dict[str, str]]) -> Iterator[LiveServer]:
    models, hashes = registry
    server = LiveServer(url="", hashes=hashes)
    for url in _serve(_app(models, server.served)):
        server.url = url
        yield server


def _tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate for 127.0.0.1 signed by it (the coordinator's kind)."""
    files = create_tls_material(directory / "tls")
    return files.ca_cert, files.server_cert, files.server_key


@pytest.fixture(scope="module")
def live_tls(
    registry: tuple[ModelRegistry, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    models, hashes = registry
    ca, cert, key = _tls_material(tmp_path_factory.mktemp("tls"))
    server = LiveServer(url="", hashes=hashes, ca_cert=ca)
    for url in _serve(_app(models, server.served), ssl_certfile=str(cert), ssl_keyfile=str(key)):
        server.url = url
        yield server


def _write_patients(
    path: Path, names: tuple[str, ...], rows: Any, ids: list[str] | None = None
) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", *names] if ids is not None else list(names))
        for index, row in enumerate(rows):
            values = [repr(float(v)) for v in row]
            writer.writerow([ids[index], *values] if ids is not None else values)
    return path


def _read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    ("family", "copies", "layouts", "charged"),
    [
        ("logistic", 1, {"coefficient"}, 2 * 136),  # 143 patients: the small-batch path
        # 5005: 4096 batched + 909 small (7 ciphertexts of 136)
        ("logistic", 35, {"column_coefficient", "coefficient"}, 4096 + 7 * 136),
        ("poly_mlp", 1, {"column"}, 4096),
    ],
)
def test_predict_cli_end_to_end_matches_plaintext(
    family: str,
    copies: int,
    layouts: set[str],
    charged: int,
    live: LiveServer,
    breast_cancer: Any,
    trained_models: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw = np.tile(breast_cancer.raw_test_x, (copies, 1))
    ids = [f"p{i:05d}" for i in range(len(raw))]
    patients = _write_patients(tmp_path / "patients.csv", breast_cancer.feature_names, raw, ids)
    out = tmp_path / "scores.csv"
    before = len(live.served)

    code = main(
        [
            "predict",
            "--model",
            live.hashes[family],
            "--input",
            str(patients),
            "--server",
            f"{live.url}/api/v1",
            "--token",
            TOKEN,
            "--out",
            str(out),
            "--id-column",
            "patient_id",
            "--format",
            "json",
        ]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["patients"] == len(raw)
    # A progress bar on stderr when the file needs several requests, never on stdout.
    assert ("encrypted scoring" in captured.err) == (len(layouts) > 1)
    scores = _read_scores(out)
    assert [row["patient_id"] for row in scores] == ids
    spec, weights = trained_models[family]
    expected = predict_logits(spec, weights, np.tile(breast_cancer.test_x, (copies, 1)))
    logits = np.array([float(row["logit"]) for row in scores])
    probabilities = np.array([float(row["probability"]) for row in scores])
    decisions = np.array([int(row["decision"]) for row in scores])
    assert np.abs(logits - expected).max() < 1e-3
    np.testing.assert_allclose(probabilities, sigmoid(expected), atol=1e-4)
    assert np.array_equal(decisions, (expected >= 0).astype(int))  # every patient agrees
    batches = live.served[before:]
    # Recorded: the patients the ciphertexts can carry (what is charged), never fewer.
    assert sum(entry["batch_size"] for entry in batches) == charged
    assert all(entry["requester"] == REQUESTER for entry in batches)
    assert all(
        set(entry)
        == {
            "model_hash",
            "requester",
            "he_params_hash",
            "batch_size",
            "request_hash",
            "served_total",
        }
        for entry in batches
    )
    assert len(batches) == len(layouts)


def test_predict_small_mlp_batch_uses_the_replicated_layout(
    live: LiveServer,
    breast_cancer: Any,
    trained_models: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    patients = _write_patients(
        tmp_path / "few.csv", breast_cancer.feature_names, breast_cancer.raw_test_x[:5]
    )
    code = main(
        [
            "predict",
            "--model",
            live.hashes["poly_mlp"],
            "--input",
            str(patients),
            "--server",
            f"{live.url}/api/v1",
            "--token",
            TOKEN,
            "--format",
            "json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)
    spec, weights = trained_models["poly_mlp"]
    expected = predict_logits(spec, weights, breast_cancer.test_x[:5])
    logits = np.array([row["logit"] for row in document["predictions"]])
    assert np.abs(logits - expected).max() < 1e-3
    assert [row["row"] for row in document["predictions"]] == ["1", "2", "3", "4", "5"]
    assert document["bytes_sent"] > 5_000_000  # the Galois-key context went up once


def test_predict_over_https_with_a_private_ca(
    live_tls: LiveServer, breast_cancer: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    patients = _write_patients(
        tmp_path / "p.csv", breast_cancer.feature_names, breast_cancer.raw_test_x[:3]
    )
    arguments = [
        "predict",
        "--model",
        live_tls.hashes["logistic"],
        "--input",
        str(patients),
        "--server",
        f"{live_tls.url}/api/v1",
        "--token",
        TOKEN,
    ]
    assert main([*arguments, "--ca-cert", str(live_tls.ca_cert)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "row,logit,probability,decision"
    assert len(captured.out.splitlines()) == 4
    assert main(arguments) == 2  # the system store does not know the private CA
    assert "certificate" in capsys.readouterr().err.lower()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda names, rows: (names[:-1], [r[:-1] for r in rows]),
            "missing column 'worst fractal dimension'",
        ),
        (
            lambda names, rows: ((*names, "shoe size"), [[*r, "42"] for r in rows]),
            "column 'shoe size' is not a feature",
        ),
        (
            lambda names, rows: (names, [rows[0], [*rows[1][:3], "n/a", *rows[1][4:]]]),
            "row 2, column 'mean area': 'n/a' is not a number",
        ),
        (
            lambda names, rows: (names, [[str(float(r[0]) * 1000), *r[1:]] for r in rows]),
            "row 1, column 'mean radius'",
        ),
    ],
)
def test_predict_refuses_a_csv_that_does_not_fit_the_model(
    mutate: Any,
    message: str,
    live: LiveServer,
    breast_cancer: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [[repr(float(v)) for v in row] for row in breast_cancer.raw_test_x[:2]]
    names, rows = mutate(breast_cancer.feature_names, rows)
    path = tmp_path / "bad.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(rows)
    before = len(live.served)
    code = main(
        [
            "predict",
            "--model",
            live.hashes["logistic"],
            "--input",
            str(path),
            "--server",
            f"{live.url}/api/v1",
            "--token",
            TOKEN,
            "--out",
            str(tmp_path / "o.csv"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert message in captured.err
    assert not (tmp_path / "o.csv").exists()
    assert len(live.served) == before


def _sent_bytes_are_free_of(secret: SecretContext, sent: list[bytes]) -> None:
    key = secret.secret_key_bytes()
    step = max(1, (len(key) - 64) // 50)
    chunks = [key[i : i + 64] for i in range(0, len(key) - 64, step)][:50]
    assert len(chunks) == 50
    for body in sent:
        assert not any(chunk in body for chunk in chunks)


@pytest.mark.parametrize(
    ("family", "patients"),
    [("logistic", 143), ("logistic", 2000), ("poly_mlp", 3), ("poly_mlp", 40)],
)
def test_nothing_the_client_sends_contains_its_secret_key(
    family: str, patients: int, live: LiveServer, breast_cancer: Any
) -> None:
    x = np.resize(breast_cancer.test_x, (patients, 30))
    with InferenceClient(f"{live.url}/api/v1", token=TOKEN, audit=True) as client:
        description = client.describe(live.hashes[family])
        secret = SecretContext.generate(description.parameter_set)
        predict_encrypted(client, description, x, secret=secret)
        assert client.sent
        _sent_bytes_are_free_of(secret, client.sent)


def _good_request(secret: SecretContext, model_hash: str, x: Any) -> bytes:
    header = RequestHeader(
        model_hash,
        secret.parameter_set.name,
        secret.context_hash(),
        PackingLayout.COEFFICIENT,
        len(x),
    )
    return encode_request(
        header, secret.encrypt(PackingLayout.COEFFICIENT, x), context=secret.public_context()
    )


def test_bad_requests_are_refused_with_4xx_and_the_server_stays_healthy(
    live: LiveServer, breast_cancer: Any
) -> None:
    import tenseal as ts

    lr, mlp = live.hashes["logistic"], live.hashes["poly_mlp"]
    secret = SecretContext.generate(LOGISTIC_PARAMETERS)
    good = _good_request(secret, lr, breast_cancer.test_x[:4])
    mlp_secret = SecretContext.generate(POLY_MLP_PARAMETERS)
    mlp_x = breast_cancer.test_x[:4]
    wrong_parameters = encode_request(
        RequestHeader(
            lr, POLY_MLP_PARAMETERS.name, mlp_secret.context_hash(), PackingLayout.COLUMN, 4
        ),
        mlp_secret.encrypt(PackingLayout.COLUMN, mlp_x),
        context=mlp_secret.public_context(),
    )
    lr_for_mlp = encode_request(
        RequestHeader(
            mlp, LOGISTIC_PARAMETERS.name, secret.context_hash(), PackingLayout.COEFFICIENT, 4
        ),
        secret.encrypt(PackingLayout.COEFFICIENT, mlp_x),
        context=secret.public_context(),
    )
    public_parts = list(
        decode_envelope(secret.public_context(), kind=KIND_CONTEXT, max_bytes=2**20).parts
    )
    leaky_context = encode_envelope(
        KIND_CONTEXT,
        {"parameter_set": LOGISTIC_PARAMETERS.name, "scheme": "ckks"},
        [*public_parts, ("secret_key", secret.secret_key_bytes())],
    )
    tenseal_private = ts.context(
        ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60]
    ).serialize(save_secret_key=True)
    predict = f"/api/v1/inference/models/{lr}/predict"
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": CONTENT_TYPE}
    cases: list[tuple[str, str, Any, dict[str, str], int, str]] = [
        ("garbage", predict, b"\x00" * 1000, auth, 422, "bad magic"),
        ("truncated", predict, good[: len(good) // 2], auth, 422, "truncated"),
        ("trailing bytes", predict, good + b"\x00", auth, 422, "unexpected bytes"),
        (
            "oversized (declared)",
            predict,
            b"\x00" * (LIMITS.max_request_bytes + 1),
            auth,
            413,
            "exceeds",
        ),
        ("oversized (streamed)", predict, iter([b"\x00" * 1_048_576] * 9), auth, 413, "exceeds"),
        ("wrong parameters", predict, wrong_parameters, auth, 422, "served under"),
        (
            "LR ciphertexts for the MLP",
            f"/api/v1/inference/models/{mlp}/predict",
            lr_for_mlp,
            auth,
            422,
            "served under",
        ),
        (
            "secret key in context",
            "/api/v1/inference/contexts",
            leaky_context,
            auth,
            422,
            "secret key",
        ),
        (
            "TenSEAL secret context",
            "/api/v1/inference/contexts",
            tenseal_private,
            auth,
            422,
            "secret key",
        ),
        (
            "wrong media type",
            predict,
            good,
            {**auth, "Content-Type": "application/json"},
            415,
            "send",
        ),
        (
            "unknown model",
            f"/api/v1/inference/models/{'e' * 64}/predict",
            good,
            auth,
            404,
            "no released model",
        ),
        (
            "other model in URL",
            f"/api/v1/inference/models/{mlp}/predict",
            good,
            auth,
            422,
            "not " + mlp,
        ),
        ("no token", predict, good, {"Content-Type": CONTENT_TYPE}, 401, ""),
        ("bad token", predict, good, {**auth, "Authorization": "Bearer nope"}, 401, ""),
    ]
    before = len(live.served)
    with httpx.Client(base_url=live.url, timeout=60) as http:
        for name, path, body, headers, status, detail in cases:
            response = http.post(path, content=body, headers=headers)
            assert response.status_code == status, (name, response.text)
            assert response.headers["content-type"] == "application/problem+json", name
            assert response.json()["status"] == status, name
            assert detail in response.json()["detail"], name
            assert http.get("/health").json() == {"status": "ok"}, name
        assert len(live.served) == before  # nothing refused was recorded
        answer = http.post(predict, content=good, headers=auth)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == CONTENT_TYPE
    assert live.served[-1]["request_hash"] == body_hash(good)


def test_the_description_endpoint_needs_a_token_and_names_the_schema(
    live: LiveServer, breast_cancer: Any
) -> None:
    path = f"/api/v1/inference/models/{live.hashes['logistic']}"
    with httpx.Client(base_url=live.url, timeout=30) as http:
        assert http.get(path).status_code == 401
        document = http.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert document["features"] == list(breast_cancer.feature_names)
    assert document["he"]["layouts"]["small"]["name"] == "coefficient"
    assert document["wire"]["max_request_bytes"] == LIMITS.max_request_bytes


def _relin_key_bomb(context: bytes, copies: int, *, declare_size: bool) -> bytes:
    """``context`` with its relinearisation keys replaced by ``copies`` all-zero keys.

    A valid SEAL ``RelinKeys`` object (``copies`` key vectors of three unseeded public keys
    at the key level, as SEAL itself would load), zstd-compressed on the fly: about 18 KiB
    for 300 MiB uncompressed.
    """
    import struct

    import zstandard

    header = struct.Struct("<HBBBBHQ")
    parts = dict(decode_envelope(context, kind=KIND_CONTEXT, max_bytes=2**26).parts)
    real = zstandard.ZstdDecompressor().stream_reader(parts["relin_keys"][16:]).read()
    _, _, major, minor, *_ = header.unpack_from(parts["relin_keys"])
    parms_id = real[:32]
    degree, primes = POLY_MLP_PARAMETERS.poly_modulus_degree, 4
    data = bytes(2 * primes * degree * 8)
    array = struct.pack("<Q", 2 * primes * degree)
    array_header = header.pack(0xA15E, 16, major, minor, 0, 0, 16 + len(array) + len(data))
    members = parms_id + struct.pack("<B3QdQ", 1, 2, degree, primes, 1.0, 1) + array_header
    key_size = 16 + len(members) + len(array) + len(data)
    key_header = header.pack(0xA15E, 16, major, minor, 0, 0, key_size)
    total = 40 + copies * (8 + 3 * key_size)
    compressor = zstandard.ZstdCompressor(level=3).compressobj(size=total if declare_size else -1)
    chunks = [compressor.compress(parms_id + struct.pack("<Q", copies))]
    for _ in range(copies):
        chunks.append(compressor.compress(struct.pack("<Q", 3)))
        for _ in range(3):
            chunks.append(compressor.compress(key_header + members + array))
            chunks.append(compressor.compress(data))
    chunks.append(compressor.flush())
    payload = b"".join(chunks)
    bomb = header.pack(0xA15E, 16, major, minor, 2, 0, 16 + len(payload)) + payload
    parts["relin_keys"] = bomb
    return encode_envelope(
        KIND_CONTEXT,
        {"parameter_set": POLY_MLP_PARAMETERS.name, "scheme": "ckks"},
        list(parts.items()),
    )


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@pytest.mark.parametrize("declare_size", [True, False], ids=["declared", "undeclared"])
def test_a_decompression_bomb_is_refused_at_once_and_memory_stays_flat(
    declare_size: bool, live: LiveServer
) -> None:
    # Attack 2: an 18 KiB key part that inflates to 300 MiB used to be accepted and cached
    # (+732 MiB). The server here runs in this process, so its memory is ours to read.
    secret = SecretContext.generate(POLY_MLP_PARAMETERS)
    context = secret.public_context(rotation_steps=[1])
    bomb = _relin_key_bomb(context, 200, declare_size=declare_size)
    assert len(bomb) - len(context) < 64 * 1024  # ~18 KiB instead of the real key's ~700 KiB
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": CONTENT_TYPE}
    with httpx.Client(base_url=live.url, timeout=60) as http:
        assert http.get("/health").status_code == 200
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set
        before = _memory_kib("VmRSS")
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            response = http.post("/api/v1/inference/contexts", content=bomb, headers=headers)
            timings.append(time.perf_counter() - start)
            assert response.status_code == 422, response.text
            assert "relin_keys" in response.json()["detail"]
        growth_mib = (_memory_kib("VmHWM") - before) / 1024
        assert http.post("/api/v1/inference/contexts", content=context, headers=headers).is_success
    print(f"bomb refused in {min(timings) * 1e3:.1f} ms (best of 3), RSS +{growth_mib:.1f} MiB")
    assert min(timings) < 0.05, timings
    assert growth_mib < 32, f"peak resident memory grew by {growth_mib:.0f} MiB"


@pytest.fixture(scope="module")
def live_digits(
    tmp_path_factory: pytest.TempPathFactory, digits_models: dict[str, Any]
) -> Iterator[LiveServer]:
    models = ModelRegistry(tmp_path_factory.mktemp("digits-registry"))
    hashes = {
        family: models.put(
            spec,
            weights,
            features=tuple(f"pixel{i}" for i in range(64)),
            label="digit",
            scaling=tuple((8.0, 8.0) for _ in range(64)),  # raw 0..16 pixels to [-1, 1]
            card={"classes": [f"d{d}" for d in range(10)]},
        )
        for family, (spec, weights) in digits_models.items()
    }
    server = LiveServer(url="", hashes=hashes)
    for url in _serve(_app(models, server.served)):
        server.url = url
        yield server


@pytest.mark.parametrize("family", ["logistic", "poly_mlp"])
def test_predict_cli_scores_ten_classes_with_one_column_per_class(
    family: str,
    live_digits: LiveServer,
    digits: Any,
    digits_models: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    x = digits.test_x[:40]
    names = tuple(f"pixel{i}" for i in range(64))
    patients = _write_patients(tmp_path / "images.csv", names, (x + 1.0) * 8.0)
    out = tmp_path / "scores.csv"

    code = main(
        [
            "predict",
            "--model",
            live_digits.hashes[family],
            "--input",
            str(patients),
            "--server",
            live_digits.url,
            "--token",
            TOKEN,
            "--out",
            str(out),
            "--format",
            "json",
        ]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["patients"] == 40
    assert sum(summary["decisions"].values()) == 40
    scores = _read_scores(out)
    classes = [f"d{d}" for d in range(10)]
    assert list(scores[0]) == ["row", *(f"probability_{c}" for c in classes), "decision"]
    spec, weights = digits_models[family]
    expected = predict_logits(spec, weights, x)
    probabilities = np.array([[float(row[f"probability_{c}"]) for c in classes] for row in scores])
    shifted = np.exp(expected - expected.max(axis=1, keepdims=True))
    np.testing.assert_allclose(
        probabilities, shifted / shifted.sum(axis=1, keepdims=True), atol=1e-4
    )
    # Every image's decision is the plaintext argmax.
    assert [row["decision"] for row in scores] == [classes[i] for i in expected.argmax(axis=1)]
    assert live_digits.served[-1]["batch_size"] >= 40


@pytest.fixture(scope="module")
def live_cnn(
    tmp_path_factory: pytest.TempPathFactory, digits_cnn: tuple[Any, dict[str, Any]]
) -> Iterator[LiveServer]:
    models = ModelRegistry(tmp_path_factory.mktemp("cnn-registry"))
    spec, weights = digits_cnn
    model_hash = models.put(
        spec,
        weights,
        features=("grey",),
        label="digit",
        scaling=((0.5, 0.5),),  # pixels 0..240 / 240, then (x - 0.5) / 0.5: the trained [-1, 1]
        card={"classes": [f"d{d}" for d in range(10)], "inputs": {"intensity_max": 240.0}},
    )
    server = LiveServer(url="", hashes={"cnn2d": model_hash})
    # One pixel per ciphertext at N = 16384: a request of 8x8 images is ~36 MB.
    for url in _serve(_app(models, server.served, WireLimits())):
        server.url = url
        yield server


@pytest.mark.parametrize("source", ["png folder", "npz"])
def test_predict_cli_scores_a_folder_of_images_with_the_encrypted_cnn(
    source: str,
    live_cnn: LiveServer,
    digits: Any,
    digits_cnn: tuple[Any, dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    x = digits.test_x[:12]
    pixels = np.rint((x + 1.0) * 120.0).astype(np.uint8).reshape(-1, 8, 8)  # 0..240
    if source == "png folder":
        target = tmp_path / "scans"
        target.mkdir()
        for index, image in enumerate(pixels):
            Image.fromarray(image, mode="L").save(target / f"scan{index:02d}.png")
        (target / "notes.txt").write_text("not an image")  # other files are left alone
        ids = [f"scan{index:02d}.png" for index in range(len(pixels))]
    else:
        target = tmp_path / "scans.npz"
        np.savez(target, x=pixels)
        ids = [str(index) for index in range(1, len(pixels) + 1)]
    out = tmp_path / "scores.csv"

    code = main(
        [
            "predict",
            "--model",
            live_cnn.hashes["cnn2d"],
            "--input",
            str(target),
            "--server",
            live_cnn.url,
            "--token",
            TOKEN,
            "--out",
            str(out),
        ]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    scores = _read_scores(out)
    assert [row["image"] for row in scores] == ids
    classes = [f"d{d}" for d in range(10)]
    assert list(scores[0]) == ["image", *(f"probability_{c}" for c in classes), "decision"]
    spec, weights = digits_cnn
    expected = predict_logits(spec, weights, pixels.reshape(-1, 64) / 120.0 - 1.0)
    assert [row["decision"] for row in scores] == [classes[i] for i in expected.argmax(axis=1)]
    # Twelve images: the im2col layout, one ciphertext per image, twelve charged (the
    # column layout would have charged a whole batch of 8,192).
    assert live_cnn.served[-1]["batch_size"] == 12


def test_predict_cli_refuses_images_of_another_size(
    live_cnn: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    folder = tmp_path / "scans"
    folder.mkdir()
    Image.fromarray(np.zeros((9, 8), dtype=np.uint8), mode="L").save(folder / "wide.png")
    before = len(live_cnn.served)

    code = main(
        [
            "predict",
            "--model",
            live_cnn.hashes["cnn2d"],
            "--input",
            str(folder),
            "--server",
            live_cnn.url,
            "--token",
            TOKEN,
        ]
    )

    assert code == 1
    assert "wide.png" in capsys.readouterr().err
    assert len(live_cnn.served) == before  # nothing sent, nothing charged


def test_predict_cli_prints_each_features_contribution_to_a_linear_logit(
    live: LiveServer,
    breast_cancer: Any,
    trained_models: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    raw = breast_cancer.raw_test_x[:12]
    patients = _write_patients(tmp_path / "patients.csv", breast_cancer.feature_names, raw)
    before = len(live.served)

    code = main(
        [
            "predict",
            "--model",
            live.hashes["logistic"],
            "--input",
            str(patients),
            "--server",
            f"{live.url}/api/v1",
            "--token",
            TOKEN,
            "--contributions",
            "--format",
            "json",
        ]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)["predictions"]
    _, weights = trained_models["logistic"]
    w = np.asarray(weights["linear.weight"], dtype=np.float64)[0]
    bias = float(np.asarray(weights["linear.bias"])[0])
    x = breast_cancer.test_x[:12]
    names = list(breast_cancer.feature_names)
    contributions = np.array([[row["contributions"][f] for f in names] for row in rows])
    np.testing.assert_allclose(contributions, w[None, :] * x, atol=1e-3)
    logits = np.array([row["logit"] for row in rows])
    np.testing.assert_allclose(contributions.sum(axis=1) + bias, logits, atol=1e-3)
    # One prediction request (136 carried), one contributions request (136 x 30 charged).
    recorded = live.served[before:]
    assert [(e["batch_size"], e.get("contributions")) for e in recorded] == [
        (136, None),
        (136, 30),
    ]
    assert recorded[1]["served_total"] - recorded[0]["served_total"] == 136 * 30


def test_predict_cli_writes_contributions_per_class_for_a_ten_class_linear_model(
    live_digits: LiveServer,
    digits: Any,
    digits_models: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    x = digits.test_x[:5]
    names = tuple(f"pixel{i}" for i in range(64))
    patients = _write_patients(tmp_path / "images.csv", names, (x + 1.0) * 8.0)
    out = tmp_path / "scores.csv"

    code = main(
        [
            "predict",
            "--model",
            live_digits.hashes["logistic"],
            "--input",
            str(patients),
            "--server",
            live_digits.url,
            "--token",
            TOKEN,
            "--out",
            str(out),
            "--contributions",
        ]
    )

    assert code == 0, capsys.readouterr().err
    scores = _read_scores(out)
    classes = [f"d{d}" for d in range(10)]
    _, weights = digits_models["logistic"]
    w = np.asarray(weights["linear.weight"], dtype=np.float64)
    got = np.array(
        [[[float(row[f"contribution_{c}_{f}"]) for f in names] for c in classes] for row in scores]
    )
    np.testing.assert_allclose(got, w[None, :, :] * x[:, None, :], atol=1e-3)
