"""Handwritten digits as a stand-in for scans: a federated cnn2d under DP across three sites.

scikit-learn's 8x8 digits (1797 images, 10 classes, pixel values 0-16) are split across
three sites, each a real site directory: two register a folder of PNG files with a labels
CSV, the third the same kind of images as an NPZ array (the commitment does not depend on
the format). The study declares the geometry (1 x 8 x 8, intensity_max 16); a ``cnn2d``
with a fixed scattering stem and a trained linear head is trained with DP-SGD at every
site (replace-one epsilon within the cap) and federated over Flower. The coordinator
holds out a fifth of the images to measure the released model; its card carries accuracy
and per-class precision, recall and AUC.

The scattering stem's modulus is not a polynomial, so that model cannot be served under
encryption. The example then ends with encrypted inference: the same sites train, in a
second study at the same epsilon (each site's budget holds both), the cnn2d with square
activations that encrypted inference serves; the coordinator's admin API runs, and a clinic
with a researcher token scores held-out images through ``veracity predict``'s client code
(encrypted under a CKKS key that never leaves the clinic). The summary reports that the
decrypted decisions agree with the plaintext argmax of the released model on every scored
image, both models' accuracy and the server's time per image.

    python examples/digits_images.py [DIR] [--rounds N] [--epsilon E] [--json OUT]
        [--encrypted-images N (0 skips the encrypted step)] [--he-rounds N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _network import (  # type: ignore[import-not-found]
    code_hash,
    emit,
    network,
    noise_for,
    run_another,
    run_study,
)

from veracity.client.datasets import ImagesDeclared
from veracity.client.predict import (
    InferenceClient,
    predict_encrypted,
    read_images,
    standardise_images,
)
from veracity.localnet import create_data_site
from veracity.server.api import db
from veracity.server.api.serve import start_api
from veracity.server.api.settings import ApiSettings
from veracity.server.api.tokens import Role, TokenStore
from veracity.server.coordinator import CoordinatorService
from veracity.supervise import ProcessGroup, free_port
from veracity.tasks.spec import predict_logits
from veracity.tasks.study import Study, parse_study

SITES = ("hospital-a", "hospital-b", "hospital-c")
CLASSES = [str(d) for d in range(10)]
SCALING = [[0.3, 0.4]]  # public: pixel / 16 has mean about 0.3 and deviation about 0.4
# Chosen on a validation fifth of the training images (benchmarks/README.md).
BATCH, LEARNING_RATE, CLIP = 256, 4.0, 0.5
#: A cnn2d whose first layers are a fixed scattering stem (Morlet wavelets at 8
#: orientations, modulus, 2x2 pooling, GroupNorm) under a trained linear head: at epsilon 3
#: it stays within a few points of non-private, where two trained convolutions lose 28.
MODEL = {
    "family": "cnn2d",
    "input_shape": [1, 8, 8],
    "stem": "scattering",
    "orientations": 8,
    "kernel": 5,
    "classes": 10,
}
#: The cnn2d that encrypted inference serves (he_bench --images): two trained 3x3
#: convolutions (4 and 8 filters) with square activations and sum pooling, then a dense
#: layer; every step a polynomial. Under DP at epsilon 3 it is far less accurate than the
#: scattering stem (benchmarks/README.md), which is why it is trained second, for serving.
HE_MODEL = {
    "family": "cnn2d",
    "input_shape": [1, 8, 8],
    "filters": [4, 8],
    "kernel": 3,
    "activation": "square",
    "classes": 10,
}
#: Same-split DP FedAvg at 6 rounds, batch 256, clip 0.5, seed 0 (the signals_bench trainer):
#: lr 0.1 0.09, 0.25 0.09, 1 0.13, 4 0.39, 8 0.24 accuracy (chance 0.1).
HE_LEARNING_RATE = 4.0


def write_png_folder(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """One 8-bit grey PNG per image (values 0-16 as they are) and ``labels.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file,digit"]
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = f"scan{index:04d}.png"
        Image.fromarray(image.astype(np.uint8), mode="L").save(folder / name)
        lines.append(f"{name},{label}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def digits_study(
    study_id: str, model: dict[str, Any], *, noise: float, rounds: int, learning_rate: float,
    epsilon: float,
) -> Study:  # fmt: skip
    """The digits study for ``model``: the images' geometry, public scaling, DP terms."""
    return parse_study(
        {
            "study_id": study_id,
            "title": "Handwritten digits (8x8) as a stand-in for scans",
            "model": model,
            "features": ["grey"],
            "label": "digit",
            "classes": CLASSES,
            "input": {
                "kind": "images",
                "height": 8,
                "width": 8,
                "channels": 1,
                "intensity_max": 16,
            },
            "scaling": SCALING,
            "dp": {"noise_multiplier": noise, "max_grad_norm": CLIP, "delta": 1e-5},
            "training": {"batch_size": BATCH, "local_epochs": 1, "learning_rate": learning_rate},
            "rounds": rounds,
            "min_sites": len(SITES),
            "epsilon_caps": dict.fromkeys(SITES, epsilon),
            "code_hash": code_hash(),
        }
    )


def score_encrypted(
    coordinator: CoordinatorService, group: ProcessGroup, model_hash: str, npz: Path
) -> dict[str, Any]:
    """A clinic scores the images in ``npz`` through the coordinator's admin API.

    The API runs under uvicorn over TLS; the clinic holds a researcher token and uses the
    client code of ``veracity predict`` (describe, read and scale the images, encrypt under
    a fresh CKKS key, send ciphertexts only, decrypt). The server time is the time the
    predict requests took on loopback (encryption, key upload and decryption excluded).
    """
    db.upgrade(coordinator.ledger.engine)
    token = TokenStore(coordinator.ledger.engine).create(
        role=Role.RESEARCHER, name="clinic", expires_in=timedelta(hours=1)
    )
    _, base = start_api(
        ApiSettings(data_dir=coordinator.home.data_dir, api_port=free_port()), group
    )
    server_seconds = 0.0

    class TimedClient(InferenceClient):
        def predict(self, model_hash: str, request: bytes) -> bytes:
            nonlocal server_seconds
            started = time.perf_counter()
            try:
                return super().predict(model_hash, request)
            finally:
                server_seconds += time.perf_counter() - started

    started = time.perf_counter()
    with TimedClient(base, token=token.token, ca_cert=coordinator.home.tls.ca_cert) as client:
        description = client.describe(model_hash)
        table = read_images(npz, input_shape=description.input_shape)
        features = standardise_images(table.values, description, ids=table.ids)
        prediction = predict_encrypted(client, description, features)
    return {
        "decisions": prediction.decisions,
        "logits": prediction.logits,
        "requests": prediction.requests,
        "bytes_sent": prediction.bytes_sent,
        "server_seconds": server_seconds,
        "total_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", nargs="?", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--encrypted-images", type=int, default=16,
        help="held-out images a clinic scores under encryption (0 skips the encrypted step)",
    )  # fmt: skip
    parser.add_argument(
        "--he-rounds", type=int, default=None,
        help="rounds of the square-activation model (default: --rounds)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.encrypted_images < 0:
        parser.error("--encrypted-images must be 0 or more")
    root = args.directory or Path(tempfile.mkdtemp(prefix="veracity-digits-"))

    pixels, labels = load_digits(return_X_y=True)
    images = pixels.reshape(-1, 8, 8)
    order = np.random.default_rng(args.seed).permutation(len(labels))
    test, train = order[: len(order) // 5], order[len(order) // 5 :]
    if args.encrypted_images > len(test):
        parser.error(f"--encrypted-images is at most {len(test)} (the held-out images)")
    sites_data = []
    for index, name in enumerate(SITES):
        mine = train[index :: len(SITES)]
        data = root / "sites" / name / "data"
        if index < 2:
            path = write_png_folder(data / "scans", images[mine], labels[mine])
        else:
            data.mkdir(parents=True, exist_ok=True)
            path = data / "scans.npz"
            np.savez(path, x=images[mine].astype(np.uint8), y=labels[mine])
        sites_data.append((name, path, len(mine)))
    smallest = min(n for *_, n in sites_data)
    noise = noise_for(args.epsilon, rows=smallest, batch=BATCH, steps_per_round=1,
                      rounds=args.rounds)  # fmt: skip
    study = digits_study("digits-cnn2d", MODEL, noise=noise, rounds=args.rounds,
                         learning_rate=LEARNING_RATE, epsilon=args.epsilon)  # fmt: skip
    he_rounds = args.he_rounds or args.rounds
    he_noise = noise_for(args.epsilon, rows=smallest, batch=BATCH, steps_per_round=1,
                         rounds=he_rounds)  # fmt: skip
    held_x = ((images[test] / 16 - SCALING[0][0]) / SCALING[0][1]).reshape(len(test), -1)
    evaluation = (held_x.astype(np.float32), labels[test])
    encrypted: dict[str, Any] | None = None
    with network(root) as (coordinator, group):
        sites = [
            create_data_site(
                root / "sites" / name / "site", name, dataset_id="digits", path=path,
                label="digit", classes=CLASSES, declared=ImagesDeclared(height=8, width=8),
                epsilon_budget=2 * args.epsilon,
            )
            for name, path, _ in sites_data
        ]  # fmt: skip
        outcome = run_study(coordinator, group, sites, study, evaluation=evaluation)
        if outcome.model is None:
            raise SystemExit(f"run {outcome.run_id} ended {outcome.status} without a model")
        if args.encrypted_images:
            he_study = digits_study("digits-cnn2d-he", HE_MODEL, noise=he_noise,
                                    rounds=he_rounds, learning_rate=HE_LEARNING_RATE,
                                    epsilon=args.epsilon)  # fmt: skip
            he_outcome = run_another(coordinator, sites, he_study, evaluation=evaluation)
            if he_outcome.model is None:
                raise SystemExit(
                    f"run {he_outcome.run_id} ended {he_outcome.status} without a model"
                )
            scored = test[: args.encrypted_images]
            clinic = root / "clinic"
            clinic.mkdir(parents=True, exist_ok=True)
            np.savez(clinic / "scans.npz", x=images[scored].astype(np.uint8))
            served = score_encrypted(coordinator, group, he_outcome.model.model_hash,
                                     clinic / "scans.npz")  # fmt: skip
            plain_logits = predict_logits(
                he_outcome.model.spec, he_outcome.model.weights, held_x[: len(scored)]
            )
            plain = plain_logits.argmax(axis=1)
            he_evaluation = dict(he_outcome.model.card.get("evaluation") or {})
            decisions = [int(d) for d in served["decisions"]]
            encrypted = {
                "run": he_outcome.run_id,
                "status": he_outcome.status,
                "model_hash": he_outcome.model.model_hash,
                "model": he_outcome.model.spec.to_dict(),
                "rounds": he_rounds,
                "noise_multiplier": he_noise,
                # Receipts carry each dataset's cumulative epsilon: both studies composed,
                # within the sites' budget of twice --epsilon.
                "epsilon_replace_one_both_studies": he_outcome.epsilons,
                "accuracy": he_evaluation.get("accuracy"),
                "images_scored": len(scored),
                "decisions": decisions,
                "plaintext_argmax": [int(d) for d in plain],
                "agree": int(sum(d == p for d, p in zip(decisions, plain, strict=True))),
                "max_logit_error": float(np.abs(served["logits"] - plain_logits).max()),
                "correct": int(sum(d == y for d, y in zip(decisions, labels[scored], strict=True))),
                "requests": served["requests"],
                "bytes_sent": served["bytes_sent"],
                "server_seconds_per_image": served["server_seconds"] / len(scored),
                "client_seconds_total": served["total_seconds"],
                "ledger_entries_verified": he_outcome.ledger_entries,
            }
    evaluation_card = dict(outcome.model.card.get("evaluation") or {})
    summary = {
        "run": outcome.run_id,
        "status": outcome.status,
        "model_hash": outcome.model.model_hash,
        "images_per_site": {name: n for name, _, n in sites_data},
        "noise_multiplier": noise,
        "epsilon_replace_one": outcome.epsilons,
        "held_out_images": len(test),
        "accuracy": evaluation_card.get("accuracy"),
        "balanced_accuracy": evaluation_card.get("balanced_accuracy"),
        "auc_macro_ovr": evaluation_card.get("auc"),
        "per_class_recall": {
            name: metrics["recall"]
            for name, metrics in evaluation_card.get("per_class", {}).items()
        },
        "card_inputs": outcome.model.card["inputs"],
        "card_classes": outcome.model.card["classes"],
        "ledger_entries_verified": outcome.ledger_entries,
        "encrypted_inference": encrypted,
        "directory": str(root),
    }
    emit(summary, args.json)


if __name__ == "__main__":
    main()
