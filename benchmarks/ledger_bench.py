"""Ledger benchmark: append throughput, full verification, proof generation and size.

Every figure is printed beside a baseline measured in the same run:

* batched durable appends (``append_batch``, one SQLite WAL/FULL commit per batch) vs one
  durable commit per entry (``append``);
* full verification (``Ledger.verify``: canonical bytes, leaf hashes, chain, schemas, key
  history, signatures, receipts, checkpoints and their consistency) vs chain-only
  verification (leaf hash + prev link per row, the cheapest meaningful check), twice:
  checking every per-entry signature (10^6 Ed25519 verifications, about 55 us each here,
  cannot fit 10 s on 2 cores) and with ``root_signatures="tail"`` (the root's own
  per-entry signatures below the newest checkpoint are implied by the root's signature on
  that checkpoint's Merkle root; every site signature and receipt is checked), the mode the
  10 s goal is for; with ``--policy``, also tail verification plus the policy audit when 2
  of 3 witnesses cosigned the newest checkpoint (an auditor's ``ledger verify --policy P
  --root-signatures tail``: tail mode trusts only quorum-cosigned checkpoints);
* inclusion-proof generation p50/p99/p99.9 at N leaves (``Ledger.inclusion_proof``, entry
  read from the database), with the size given and with the default size, vs recomputing
  the path from all leaves; the load average is printed with them;
* proof sizes (bytes) vs the ``ceil(log2 n)`` hash bound.

Sizes are options so that a quick run takes seconds::

    python benchmarks/ledger_bench.py                       # the issue's figures (10^6)
    python benchmarks/ledger_bench.py --entries 20000 --append-entries 5000 --single-entries 300
    python benchmarks/ledger_bench.py --keep /tmp/ledger-1m  # build 10^6 once, reuse it after
    python benchmarks/ledger_bench.py --policy               # and the quorum-cosigned figure
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Figure, Report, percentile

from veracity.contracts.events import ROOT_ACTOR
from veracity.core.fields import format_timestamp
from veracity.crypto.keys import (
    SigningKey,
    generate_signing_key,
    load_signing_key,
    write_key_pair,
)
from veracity.ledger.ledger import EventRequest, Ledger
from veracity.ledger.merkle import leaf_hash, node_hash
from veracity.ledger.possession import sign_enrolment
from veracity.ledger.statement import sign_statement
from veracity.ledger.store import create_engine

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _hex(label: str, i: int) -> str:
    return hashlib.sha256(f"{label}/{i}".encode()).hexdigest()


class Workload:
    """A realistic mix: root ``inference.served`` entries and site ``dataset.registered``."""

    def __init__(
        self, root: SigningKey, site: SigningKey, site_fraction: float, log_id: str, seed: int = 7
    ) -> None:
        self.root, self.site = root, site
        #: The log the site's statements are bound to.
        self.log_id = bytes.fromhex(log_id)
        self.site_fraction = site_fraction
        self.random = random.Random(seed)
        self.counter = 0

    def request(self) -> EventRequest:
        self.counter += 1
        i = self.counter
        if self.random.random() < self.site_fraction:
            payload = {
                "site": "hospital-a",
                "dataset_id": f"d{i}",
                "commitment": _hex("commitment", i),
                "schema_hash": _hex("schema", 1),
                "rows": 1000 + i % 97,
                "label": "diagnosis",
                "features": ["radius", "texture", "perimeter", "area"],
                "signed_at": format_timestamp(T0 + timedelta(microseconds=i)),
            }
            signature = sign_statement(
                self.site, "dataset.registered", "hospital-a", payload, log_id=self.log_id
            )
            return EventRequest("dataset.registered", "hospital-a", payload, signature=signature)
        payload = {
            "model_hash": _hex("model", 1),
            "requester": f"clinic-{i % 13}",
            "he_params_hash": _hex("he", 1),
            "batch_size": 16,
            "request_hash": _hex("request", i),
            "served_total": 16 * (i + 1),
        }
        return EventRequest("inference.served", ROOT_ACTOR, payload, signer=self.root)


def new_ledger(path: Path, root: SigningKey, site: SigningKey) -> Ledger:
    ledger = Ledger.init(f"sqlite:///{path}", root_key=root, now=T0, checkpoint_every=1000)
    ledger.append(
        "key.enrolled",
        ROOT_ACTOR,
        {
            "name": "hospital-a",
            "role": "site",
            "public_key": site.public.pem(),
            "valid_from": format_timestamp(T0),
            "proof": sign_enrolment(site, log_id=ledger.log_id, name="hospital-a", role="site"),
        },
        signer=root,
    )
    return ledger


def fill(ledger: Ledger, workload: Workload, count: int, batch: int) -> float:
    """Append ``count`` entries in batches; returns wall seconds (signing included)."""
    start = time.perf_counter()
    done = 0
    while done < count:
        size = min(batch, count - done)
        ledger.append_batch([workload.request() for _ in range(size)])
        done += size
    return time.perf_counter() - start


def chain_only(url: str) -> tuple[int, float]:
    """Baseline verifier: recompute each leaf hash and check each prev link, nothing else."""
    engine = create_engine(url)
    start = time.perf_counter()
    count, previous = 0, bytes(32)
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=8192).execute(
            sa.text("SELECT seq, prev, hash, body FROM ledger_entry ORDER BY seq")
        )
        for seq, prev, digest, body in result:
            if seq != count or bytes(prev) != previous or leaf_hash(bytes(body)) != bytes(digest):
                raise SystemExit(f"chain broken at {seq}")
            previous = bytes(digest)
            count += 1
    engine.dispose()
    return count, time.perf_counter() - start


def naive_path(leaves: list[bytes], index: int) -> list[bytes]:
    """Inclusion path recomputed from all leaves (what a store without a tree cache does)."""
    proof: list[bytes] = []
    level = leaves
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        level = [
            node_hash(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)
        ]
        index //= 2
    return proof


def verify_with_policy(
    ledger: Ledger, root: SigningKey, workdir: Path, workers: int | None
) -> tuple[float, dict[str, Any]]:
    """2 of 3 witnesses cosign the newest checkpoint; time tail verification plus the audit."""
    from veracity.ledger.note import SIG_COSIGNATURE_V1, NoteVerifier, cosign
    from veracity.ledger.policy import Policy
    from veracity.ledger.verify_audit import audit_verified
    from veracity.ledger.witnessed import WitnessedLog, witness_name

    with Ledger.open(ledger.url, root_key=root) as signer:
        log = WitnessedLog(signer)
        newest = signer.latest_checkpoint()
        assert newest is not None
        text = log.note(newest.tree_size).text
        witnesses: dict[str, NoteVerifier] = {}
        for i, site in enumerate(("north", "south", "east")):
            key, name = generate_signing_key(), witness_name(site)
            witnesses[site] = NoteVerifier.for_key(name, key.public, sig_type=SIG_COSIGNATURE_V1)
            if i < 2:
                signature = cosign(key, name, text, timestamp=int(time.time()))
                log.add_cosignature(newest.tree_size, signature, witnesses[site], site=site)
        policy = Policy.build(logs=[log.verifier], witnesses=witnesses, threshold=2)
    path = workdir / "policy.txt"
    path.write_text(policy.render(), encoding="utf-8")
    start = time.perf_counter()
    tail = ledger.verify(root.public, workers=workers, root_signatures="tail")
    witnessed = audit_verified(
        tail, db=ledger.url, bundle=None, policy_file=path, state=None, notes=[], tail=True
    )
    return time.perf_counter() - start, witnessed


def _load() -> str:
    """The 1-minute load average (other work on the machine skews every figure)."""
    return f"{os.getloadavg()[0]:.2f}"


def _ms(samples: list[float]) -> str:
    """p50/p99/p99.9 of ``samples`` in milliseconds."""
    return "/".join(f"{percentile(samples, q) * 1000:.3f}" for q in (50, 99, 99.9))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--entries", type=int, default=1_000_000, help="ledger size to verify and prove"
    )
    parser.add_argument(
        "--append-entries", type=int, default=50_000, help="entries for the batched-append figure"
    )
    parser.add_argument(
        "--single-entries", type=int, default=2_000, help="entries for the per-entry baseline"
    )
    parser.add_argument("--batch", type=int, default=1000, help="entries per batched transaction")
    parser.add_argument(
        "--site-fraction", type=float, default=0.1, help="share of site-signed entries"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="verifier processes (default: CPUs)"
    )
    parser.add_argument("--proof-samples", type=int, default=20_000)
    parser.add_argument("--naive-samples", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the large ledger (and its keys) in this directory and reuse it next time",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument(
        "--policy",
        action="store_true",
        help="also time tail verification plus the policy audit, 2 of 3 witnesses having "
        "cosigned the newest checkpoint (what an auditor with a policy runs)",
    )
    args = parser.parse_args(argv)

    root, site = generate_signing_key(), generate_signing_key()
    workdir = Path(tempfile.mkdtemp(prefix="ledger-bench-", dir=args.dir))
    report = Report(f"ledger ({args.entries:,} entries, {os.cpu_count()} CPUs)")
    report.notes.append(
        f"workload: {args.site_fraction:.0%} site-signed dataset.registered, the rest root-signed "
        "inference.served; checkpoint every 1000 entries; SQLite WAL, synchronous=FULL"
    )
    try:
        # --- appends -------------------------------------------------------------------
        ledger = new_ledger(workdir / "append.db", root, site)
        workload = Workload(root, site, args.site_fraction, ledger.log_id)
        batched_s = fill(ledger, workload, args.append_entries, args.batch)
        ledger.close()
        ledger = new_ledger(workdir / "single.db", root, site)
        workload = Workload(root, site, args.site_fraction, ledger.log_id, seed=8)
        requests = [workload.request() for _ in range(args.single_entries)]
        start = time.perf_counter()
        for request in requests:
            ledger.append(
                request.kind,
                request.actor,
                request.payload,
                signer=request.signer,
                signature=request.signature,
            )
        single_s = time.perf_counter() - start
        ledger.close()
        report.add(
            Figure(
                f"batched durable appends (batch {args.batch})",
                args.append_entries / batched_s,
                "entries/s",
                baseline=args.single_entries / single_s,
                baseline_name="one durable commit per entry",
                goal=">= 5000 entries/s",
            )
        )

        # --- a large ledger --------------------------------------------------------------
        big_root, big_site = root, site
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            big = args.keep / f"ledger-{args.entries}.db"
            if (args.keep / "root.pem").exists():
                big_root = load_signing_key(args.keep / "root.pem")
                big_site = load_signing_key(args.keep / "site.pem")
            else:
                big.unlink(missing_ok=True)
                write_key_pair(args.keep, "root", big_root)
                write_key_pair(args.keep, "site", big_site)
        else:
            big = workdir / "big.db"
        if big.exists():
            ledger = Ledger.open(f"sqlite:///{big}")
            report.notes.append(f"reused the {ledger.size():,}-entry ledger in {big}")
        else:
            ledger = new_ledger(big, big_root, big_site)
            workload = Workload(big_root, big_site, args.site_fraction, ledger.log_id, seed=9)
            build_s = fill(ledger, workload, args.entries - ledger.size(), 5000)
            report.notes.append(
                f"built {ledger.size():,} entries in {build_s:.1f} s "
                f"({ledger.size() / build_s:,.0f}/s, batch 5000)"
            )
        size = ledger.size()
        url = ledger.url
        trusted = big_root.public

        report.notes.append(f"load average before verification: {_load()}")
        count, chain_s = chain_only(url)
        assert count == size
        start = time.perf_counter()
        full = ledger.verify(trusted, workers=args.workers)
        full_s = time.perf_counter() - start
        report.add(
            Figure(
                f"full verification of {size:,} entries, every signature "
                f"({full.signatures:,} signatures)",
                full_s,
                "s",
                baseline=chain_s,
                baseline_name="chain-only verification (1 process)",
                goal="none (Ed25519-bound: 10^6 signatures alone take about 27 s on 2 cores)",
                higher_is_better=False,
            )
        )
        report.notes.append(f"load average after the first verification: {_load()}")
        start = time.perf_counter()
        tail = ledger.verify(trusted, workers=args.workers, root_signatures="tail")
        tail_s = time.perf_counter() - start
        report.add(
            Figure(
                "full verification, root per-entry signatures below the newest checkpoint "
                f"implied by its signed root ({tail.signatures:,} signatures: every site "
                "signature, every receipt)",
                tail_s,
                "s",
                baseline=chain_s,
                baseline_name="chain-only verification (1 process)",
                goal="<= 10 s",
                higher_is_better=False,
            )
        )
        if args.policy:
            policy_s, witnessed = verify_with_policy(ledger, big_root, workdir, args.workers)
            report.add(
                Figure(
                    "verification trusting a quorum-cosigned checkpoint: tail mode plus the "
                    f"policy audit ({witnessed['quorum']}, cosigned by "
                    f"{', '.join(witnessed['cosigned_by'])}; what `ledger verify --policy P "
                    "--root-signatures tail` runs)",
                    policy_s,
                    "s",
                    baseline=chain_s,
                    baseline_name="chain-only verification (1 process)",
                    goal="<= 10 s",
                    higher_is_better=False,
                )
            )
        report.notes.append(f"load average after verification: {_load()}")

        # --- proofs --------------------------------------------------------------------
        start = time.perf_counter()
        ledger.inclusion_proof(0, size)
        cache_s = time.perf_counter() - start
        report.notes.append(
            f"first proof loads the tree cache: {cache_s:.2f} s for {size:,} leaves"
        )
        rng = random.Random(11)
        samples, defaults, sizes, paths = [], [], [], []
        tree = ledger._tree
        load_before = _load()
        for _ in range(args.proof_samples):
            seq = rng.randrange(size)
            start = time.perf_counter()
            proof = ledger.inclusion_proof(seq, size)
            samples.append(time.perf_counter() - start)
            sizes.append(32 * len(proof.proof))
            seq = rng.randrange(size)
            start = time.perf_counter()
            ledger.inclusion_proof(seq)
            defaults.append(time.perf_counter() - start)
            start = time.perf_counter()
            tree.inclusion_proof(seq, size)
            paths.append(time.perf_counter() - start)
        report.notes.append(
            f"inclusion proofs, {args.proof_samples:,} each, load average {load_before} before "
            f"and {_load()} after: with the size given p50/p99/p99.9 {_ms(samples)} ms; with "
            f"the default size (newest covering checkpoint, as the API) {_ms(defaults)} ms; "
            f"the path alone {_ms(paths)} ms"
        )
        with ledger.engine.connect() as connection:
            leaves = [
                bytes(h)
                for (h,) in connection.execute(
                    sa.text("SELECT hash FROM ledger_entry ORDER BY seq")
                )
            ]
        naive = []
        for _ in range(args.naive_samples):
            seq = rng.randrange(size)
            start = time.perf_counter()
            naive_path(leaves, seq)
            naive.append(time.perf_counter() - start)
        naive_ms = percentile(naive, 99) * 1000 if len(naive) > 1 else naive[0] * 1000
        report.add(
            Figure(
                f"inclusion proof generation p99 at {size:,} leaves (Ledger.inclusion_proof, "
                "entry read from the database)",
                percentile(samples, 99) * 1000,
                "ms",
                baseline=naive_ms,
                baseline_name="recompute from all leaves",
                goal="<= 1 ms",
                higher_is_better=False,
            )
        )
        report.add(
            Figure(
                f"inclusion proof generation p99 at {size:,} leaves, default size (API)",
                percentile(defaults, 99) * 1000,
                "ms",
                baseline=naive_ms,
                baseline_name="recompute from all leaves",
                goal="<= 1 ms",
                higher_is_better=False,
            )
        )
        report.add(
            Figure(
                f"inclusion proof path p99 at {size:,} leaves (tree cache, no database read)",
                percentile(paths, 99) * 1000,
                "ms",
                baseline=naive_ms,
                baseline_name="recompute from all leaves",
                goal="<= 1 ms",
                higher_is_better=False,
            )
        )
        report.add(
            Figure(
                "inclusion proof size (max)",
                max(sizes),
                "bytes",
                baseline=32 * math.ceil(math.log2(size)),
                baseline_name="32 x ceil(log2 n)",
                higher_is_better=False,
            )
        )
        old = max(1, size // 3)
        consistency = ledger.consistency_proof(old, size)
        report.add(
            Figure(
                f"consistency proof size ({old:,} -> {size:,})",
                32 * len(consistency.proof),
                "bytes",
                baseline=32 * 2 * math.ceil(math.log2(size)),
                baseline_name="32 x 2 ceil(log2 n)",
                higher_is_better=False,
            )
        )
        ledger.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.notes.append(f"load average at the end: {os.getloadavg()[0]:.2f}")
    report.print()
    if args.json is not None:
        report.write_json(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
