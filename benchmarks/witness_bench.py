"""Witness benchmark: a site witness cosigning a checkpoint 1,000 entries after its last one.

The witnessed cycle, timed end to end against a SQLite ledger of ``--base`` entries:
the log serves the newest checkpoint note (signature check of the stored checkpoint, root
from the tree cache, Ed25519 note signature), a consistency proof from the witness's last
size and the 1,000 entries in between; the witness checks the note signature, the proof,
recomputes the new root from its compact range and the entries' leaf hashes, scans the new
``key.*`` events for its own site (one in ten entries is a key event here), stores its state
(fsync and rename) and signs a ``cosignature/v1``; the log checks and stores the
cosignature. The baseline, in the same run, is the consistency-proof-only cycle (note and
proof, no entries, no key scan, no state write), i.e. what witnessing costs without the
checks that catch a site's impersonation.

    python benchmarks/witness_bench.py                    # 10,000 entries, 1,000 new, 20 rounds
    python benchmarks/witness_bench.py --base 100000 --rounds 10
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Figure, Report, percentile

from veracity.contracts.events import ROOT_ACTOR
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import SigningKey
from veracity.ledger.ledger import EventRequest, Ledger
from veracity.ledger.merkle import verify_consistency
from veracity.ledger.note import CheckpointText, Note, verify_note
from veracity.ledger.possession import sign_enrolment
from veracity.ledger.witness import Witness
from veracity.ledger.witnessed import WitnessedLog, witness_name

T0 = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)


def _key(label: str) -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest()))


def _grow(ledger: Ledger, root: SigningKey, count: int, tag: str) -> None:
    """``count`` root entries: one in ten enrols a new site key, the rest are notes."""
    requests = []
    for i in range(count):
        if i % 10 == 0:
            key = _key(f"{tag}-{i}")
            name = f"site-{tag}-{i}"
            payload = {
                "name": name,
                "role": "site",
                "public_key": key.public.pem(),
                "valid_from": format_timestamp(T0),
                "proof": sign_enrolment(key, log_id=ledger.log_id, name=name, role="site"),
            }
            requests.append(EventRequest("key.enrolled", ROOT_ACTOR, payload, signer=root))
        else:
            requests.append(
                EventRequest("note.recorded", ROOT_ACTOR, {"text": f"{tag} {i}"}, signer=root)
            )
    for start in range(0, count, 1000):
        ledger.append_batch(requests[start : start + 1000], now=T0 + timedelta(seconds=1))


def _cycle(ledger: Ledger, witness: Witness, site: str) -> None:
    log = WitnessedLog(ledger)
    text = log.note().render()
    size = CheckpointText.parse(Note.parse(text).text).tree_size
    old = witness.state().tree_size
    proof = list(ledger.consistency_proof(old, size).proof) if 0 < old < size else []
    entries = log.bodies(old, size)
    signature = witness.witness(text, proof, entries)
    log.add_cosignature(size, signature, witness.verifier, site=site)


def _baseline(ledger: Ledger, old: tuple[int, bytes]) -> None:
    log = WitnessedLog(ledger)
    note = Note.parse(log.note().render())
    verify_note(note, [log.verifier])
    checkpoint = CheckpointText.parse(note.text)
    proof = list(ledger.consistency_proof(old[0], checkpoint.tree_size).proof)
    verify_consistency(old[0], checkpoint.tree_size, proof, old[1], checkpoint.root_hash)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=int, default=10_000, help="entries before the witness")
    parser.add_argument("--step", type=int, default=1_000, help="new entries per checkpoint")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    root, site = _key("bench-root"), "hospital-a"
    site_key = _key("bench-site")
    with tempfile.TemporaryDirectory(prefix="veracity-witness-bench-") as tmp:
        directory = Path(tmp)
        ledger = Ledger.init(
            f"sqlite:///{directory / 'ledger.db'}", root_key=root, now=T0, checkpoint_every=0
        )
        payload = {
            "name": site,
            "role": "site",
            "public_key": site_key.public.pem(),
            "valid_from": format_timestamp(T0),
            "proof": sign_enrolment(site_key, log_id=ledger.log_id, name=site, role="site"),
        }
        ledger.append("key.enrolled", ROOT_ACTOR, payload, signer=root, now=T0)
        _grow(ledger, root, args.base, "base")
        ledger.checkpoint(now=T0)
        log = WitnessedLog(ledger)
        witness = Witness(
            directory / "witness",
            site=site,
            key=_key("bench-witness"),
            name=witness_name(site),
            log=log.verifier,
            site_keys=[site_key.public],
            clock=time.time,
        )
        _cycle(ledger, witness, site)  # the witness's first view (the whole log)
        timings, baselines, cpu, cpu_baselines = [], [], [], []
        for round_number in range(args.rounds):
            _grow(ledger, root, args.step, f"r{round_number}")
            ledger.checkpoint(now=T0)
            state = witness.state()
            started, cpu_started = time.perf_counter(), time.process_time()
            _baseline(ledger, (state.tree_size, state.root_hash))
            baselines.append(time.perf_counter() - started)
            cpu_baselines.append(time.process_time() - cpu_started)
            started, cpu_started = time.perf_counter(), time.process_time()
            _cycle(ledger, witness, site)
            timings.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        ledger.close()
    report = Report("witness: cosign a checkpoint 1,000 entries after the last one")
    p50, p99 = statistics.median(timings), percentile(timings, 99)
    report.add(
        Figure(
            "witness cycle p50 (note, proof, entries, key scan, state, cosignature)",
            p50 * 1000,
            "ms",
            baseline=statistics.median(baselines) * 1000,
            baseline_name="note + consistency proof only",
            goal="< 250 ms",
            higher_is_better=False,
        )
    )
    report.add(Figure("witness cycle max", max(timings) * 1000, "ms", goal="< 250 ms"))
    report.add(
        Figure(
            "witness cycle CPU time p50 (this process; what a loaded machine cannot inflate)",
            statistics.median(cpu) * 1000,
            "ms",
            baseline=statistics.median(cpu_baselines) * 1000,
            baseline_name="note + consistency proof only, CPU",
            higher_is_better=False,
        )
    )
    report.notes.append(
        f"{args.rounds} rounds of {args.step} entries (1 in 10 a key event) over a "
        f"{args.base}-entry SQLite ledger; p99 {p99 * 1000:.1f} ms; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    report.print()


if __name__ == "__main__":
    main()
