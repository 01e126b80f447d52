"""Stock ClientApp: load the site's data, train one epoch of plain SGD, return the weights."""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from veracity.tasks.spec import ModelFamily, ModelSpec
from veracity.tasks.torch_models import build_model

app = ClientApp()


def _process_start() -> float:
    """Wall-clock time this process started (from /proc; 10 ms resolution)."""
    with open("/proc/self/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    with open("/proc/uptime", encoding="ascii") as handle:
        uptime = float(handle.read().split()[0])
    return time.time() - (uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))


PROCESS_START = _process_start()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch of SGD on the site's standardised data."""
    started = time.time()
    torch.set_num_threads(1)
    data = np.load(str(context.node_config["data-path"]))
    x = torch.from_numpy(data["x"].astype(np.float32))
    y = torch.from_numpy(data["y"].astype(np.float32))
    model = build_model(ModelSpec(ModelFamily.POLY_MLP, n_features=x.shape[1]))
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    optimiser = torch.optim.SGD(model.parameters(), lr=float(context.run_config["learning-rate"]))
    batch = int(context.run_config["batch-size"])
    loss_fn = torch.nn.BCEWithLogitsLoss()
    order = torch.randperm(len(y))
    total = 0.0
    for start in range(0, len(y), batch):
        idx = order[start : start + batch]
        optimiser.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        optimiser.step()
        total += float(loss) * len(idx)
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": len(y),
        "train-loss": total / len(y),
        "train-seconds": time.time() - started,
        "startup-seconds": started - PROCESS_START,
    }
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    return Message(content, reply_to=msg)
