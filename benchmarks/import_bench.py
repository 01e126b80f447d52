"""Start-up cost: `veracity --help` and the coordinator side's imports, against a baseline tree.

Each figure is the median over fresh interpreters of wall-clock and CPU seconds (user +
system; CPU time is what a loaded machine inflates least), with the heavy packages each
import pulls in. The baseline is the same measurement of another checkout of Veracity in
the same run: ``--baseline-ref REF`` makes a temporary git worktree of REF (default: the
first commit before the torch-free core, 8bbd756) and measures it with the same
interpreter through PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import Figure, Report

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "opacus", "tenseal", "flwr", "fastapi", "sqlalchemy", "sklearn")
MODULES = (
    "veracity.server.api.app",
    "veracity.server.coordinator",
    "veracity.ledger.cli",
    "veracity.tasks.study",
)


def _run(argv: list[str], tree: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (children) and stdout of one fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    import time

    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tree, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def _measure(argv: list[str], tree: Path, repeat: int) -> tuple[float, float, str]:
    runs = [_run(argv, tree) for _ in range(repeat)]
    return (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        runs[-1][2],
    )


def _import_argv(module: str) -> list[str]:
    probe = (
        f"import json, sys\nimport {module}\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    return [sys.executable, "-c", probe]


def _help_argv() -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from veracity.cli import main; sys.exit(main(['--help']))",
    ]


def _baseline_tree(ref: str, directory: Path) -> Path:
    tree = directory / "baseline"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(tree), ref], cwd=ROOT, check=True
    )
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--baseline-ref", default="8bbd756")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    report = Report("start-up: veracity --help and the coordinator side's imports")
    with tempfile.TemporaryDirectory() as scratch:
        baseline = _baseline_tree(args.baseline_ref, Path(scratch))
        try:
            wall, cpu, _ = _measure(_help_argv(), ROOT, args.repeat)
            base_wall, base_cpu, _ = _measure(_help_argv(), baseline, args.repeat)
            label = f"at {args.baseline_ref}"
            report.add(Figure("veracity --help, wall", wall, "s", base_wall, label,
                              "< 0.5 s", higher_is_better=False))  # fmt: skip
            report.add(Figure("veracity --help, CPU", cpu, "s", base_cpu, label,
                              "< 0.5 s", higher_is_better=False))  # fmt: skip
            for module in MODULES:
                wall, cpu, out = _measure(_import_argv(module), ROOT, args.repeat)
                base_wall, base_cpu, base_out = _measure(
                    _import_argv(module), baseline, args.repeat
                )
                report.add(Figure(f"import {module}, CPU", cpu, "s", base_cpu, label,
                                  higher_is_better=False))  # fmt: skip
                report.notes.append(
                    f"{module} loads {json.loads(out) or 'none of ' + '/'.join(HEAVY)} "
                    f"(wall {wall:.2f} s); {label}: {json.loads(base_out)} (wall {base_wall:.2f} s)"
                )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT,
                           check=False)  # fmt: skip
            shutil.rmtree(baseline, ignore_errors=True)
    report.notes.append(f"load average {os.getloadavg()[0]:.2f}; median of {args.repeat} runs")
    report.print()
    if args.json is not None:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
