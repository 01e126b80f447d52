"""A real site's signals and images registrations reach the admin API from its outbox.

The site registers recordings (NPZ windows) and images (a PNG folder and an NPZ array)
in its own directory; ``deliver_outbox`` posts the signed ``dataset.registered``
statements to ``POST /api/v1/datasets`` of a running app with the site's token; the
ledger holds them and ``GET /api/v1/datasets`` lists each with its kind.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from tests.server.api.conftest import SETUP, Api
from veracity.client.datasets import ImagesDeclared, SignalsDeclared, register_dataset
from veracity.client.outbox_sync import deliver_outbox
from veracity.client.site import Site, init_site
from veracity.server.api.tokens import Role

CLASSES = ("0", "1", "2")


def _png_folder(root: Path, pixels: np.ndarray, labels: np.ndarray) -> Path:
    root.mkdir(parents=True)
    lines = ["file,digit"]
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        Image.fromarray(image, mode="L").save(root / f"scan{index:03d}.png")
        lines.append(f"scan{index:03d}.png,{label}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _registered_site(root: Path) -> Site:
    """A site directory with one signals and two images datasets, none delivered yet."""
    init_site(root, "clinic-signals")
    site = Site.open(root)
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(24, 3, 64)).astype(np.float32)
    np.savez(root / "gait.npz", x=windows, y=np.arange(24) % 2)
    register_dataset(site, dataset_id="gait", path=root / "gait.npz", label="freeze",
                     declared=SignalsDeclared(rate=64.0), min_rows=10)  # fmt: skip
    pixels = rng.integers(0, 17, size=(12, 8, 8)).astype(np.uint8)
    labels = np.arange(12) % 3
    register_dataset(site, dataset_id="scans", path=_png_folder(root / "scans", pixels, labels),
                     label="digit", classes=CLASSES, declared=ImagesDeclared(8, 8),
                     min_rows=5)  # fmt: skip
    np.savez(root / "scans.npz", x=16 - pixels, y=labels)  # other images, same geometry
    register_dataset(site, dataset_id="scans-npz", path=root / "scans.npz", label="digit",
                     classes=CLASSES, declared=ImagesDeclared(8, 8), min_rows=5)  # fmt: skip
    return site


def test_signals_and_images_registrations_are_delivered_recorded_and_listed(
    api: Api, tmp_path: Path
) -> None:
    site = _registered_site(tmp_path / "site")
    with site:
        api.service.enrol_site(
            SETUP,
            site.name,
            public_key_pem=site.paths.public_key.read_text(encoding="utf-8"),
            supernode_public_key=site.paths.supernode_public_key.read_text(encoding="utf-8"),
            proof=site.enrolment_proof(api.service.ledger.log_id),
        )
        token = api.token_store.create(
            role=Role.SITE, name="clinic-operator", site=site.name, expires_in=timedelta(days=1)
        ).token
        report = deliver_outbox(
            site.store,
            server="http://testserver",
            token=token,
            ca_cert=None,
            transport=api.client._transport,
        )
        assert report.refused == {}
        assert (len(report.delivered), report.pending) == (3, 0)
        assert site.store.outbox() == []

    listed = api.call("GET", "/api/v1/datasets", "admin").json()["items"]
    mine = {item["dataset_id"]: item for item in listed if item["site"] == site.name}
    assert {name: item["kind"] for name, item in mine.items()} == {
        "gait": "signals",
        "scans": "images",
        "scans-npz": "images",
    }, listed
    assert mine["gait"]["rows"] == 24
    assert len(mine["gait"]["features"]) == 3
    # The same geometry and classes from PNG files or an array: the same schema.
    assert mine["scans"]["schema_hash"] == mine["scans-npz"]["schema_hash"]
    entries = api.service.ledger.iter_entries(kind="dataset.registered")
    kinds = {
        e.payload["dataset_id"]: e.payload.get("kind") for e in entries if e.actor == site.name
    }
    assert kinds == {"gait": "signals", "scans": "images", "scans-npz": "images"}
