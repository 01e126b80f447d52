"""Stock ServerApp: FedAvg with Flower's own Grid, timing each round."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from veracity.tasks.spec import ModelFamily, ModelSpec
from veracity.tasks.torch_models import build_model

app = ServerApp()


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's training phase starts and ends."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rounds: list[dict[str, float]] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Note the round's start."""
        self.rounds.append({"round": server_round, "start": time.time()})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Note the replies' arrival and the aggregation time."""
        received = time.time()
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        done = time.time()
        metrics_of = [r.content.metric_records["metrics"] for r in replies if r.has_content()]
        self.rounds[-1].update(
            received=received,
            end=done,
            aggregate=done - received,
            train_max=max((float(str(m["train-seconds"])) for m in metrics_of), default=0.0),
            startup_max=max((float(str(m["startup-seconds"])) for m in metrics_of), default=0.0),
            replies=len(metrics_of),
        )
        return arrays, metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Train ``num-server-rounds`` rounds of FedAvg over all nodes."""
    config = context.run_config
    nodes = int(config["min-nodes"])
    n_features = 30
    strategy = TimedFedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes
    )
    model = build_model(ModelSpec(ModelFamily.POLY_MLP, n_features=n_features), seed=0)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(config["num-server-rounds"]),
    )
    path = str(config["timing-path"])
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(strategy.rounds, handle)
