"""The coordinator's Flower ServerApp: unpack the run config, run the study, nothing more.

It runs in the ``flwr-serverapp`` process the SuperLink starts for each run, on the
coordinator's host, and reaches the coordinator's ledger, keys and model registry through
the ``coordinator-dir`` the run was submitted with.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from veracity.server.coordinator.bootstrap import open_coordinator
from veracity.server.polling_grid import PollingGrid
from veracity.server.study_run import RunSettings, execute_run

__all__ = ["app"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the study named by the run config."""
    logging.getLogger("veracity").setLevel(logging.INFO)
    config = context.run_config
    settings = RunSettings(
        run_id=str(context.run_id),
        study_hash=str(config["study-hash"]),
        fab_hash=grid.run.fab_hash,
        round_timeout=float(config["round-timeout"]),
        node_wait=float(config["node-wait"]),
        explain=str(config.get("explain", "")),
        explain_at_release=str(config.get("explain-at-release", "")),
    )
    polling = PollingGrid(grid, poll_interval=float(config["poll-interval"]))
    with open_coordinator(Path(str(config["coordinator-dir"]))) as coordinator:
        execute_run(coordinator, polling, settings)
