"""The coordinator's Flower ServerApp."""

from __future__ import annotations

import time

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from veracity.server.polling_grid import PollingGrid

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one study."""
    grid = PollingGrid(grid, poll_interval=float(context.run_config.get("poll-interval", 0.2)))
    t0 = time.time()
    deadline = t0 + 60
    while len(list(grid.get_node_ids())) < 3 and time.time() < deadline:
        time.sleep(0.5)
    nodes = list(grid.get_node_ids())
    print("NODES", nodes, time.time() - t0, flush=True)
    for _ in range(3):
        t1 = time.time()
        msgs = [Message(RecordDict(), dst_node_id=n, message_type="query.hello") for n in nodes]
        replies = list(grid.send_and_receive(msgs, timeout=60))
        print(
            "HELLO",
            [r.content["site"]["site"] if r.has_content() else r.error for r in replies],
            time.time() - t1,
            flush=True,
        )
