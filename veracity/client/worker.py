"""The site's long-running ClientApp executor (replaces ``flower-superexec`` at a site).

Stock Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message, paying
seconds of interpreter, torch and Opacus start-up each time; on this kind of machine that
dominated a round. ``flower-supernode --isolation process`` lets the site run its own
executor instead: this worker speaks the same SuperNode Runtime API (AcquireTask ->
PullTaskInput/PullMessages -> PushMessages -> PushTaskOutput, with task heartbeats) and
runs the ClientApp in this process, so the interpreter, torch, the site store and the
Opacus engine of a run stay warm across messages and rounds.

It serves only Veracity's own ClientApp, from the Veracity installed at the site: the code
in a run's FAB is never executed here. The FAB's SHA-256 is computed from the bytes the
SuperNode received and handed to the app as the run's code hash, which the site agent
checks against the code hash its operator approved. A FAB that does not declare
``veracity.client.flower_app:app`` is refused.

Uses Flower internals (``flwr.supercore.runtime``, ``flwr.supernode.runtime``); flwr is
pinned to 1.42.0.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import signal
import time
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from veracity.supervise import (
    OBJECT_BACKOFF_CAP,
    OBJECT_PULL_TRIES,
    PollBackoff,
    exit_with_parent,
    log_task_process,
    task_process_parser,
)

__all__ = ["WorkerOptions", "run_worker", "main", "fab_declares_veracity_clientapp"]

log = logging.getLogger("veracity.client.worker")

CLIENTAPP_REF = "veracity.client.flower_app:app"


@dataclass(frozen=True)
class WorkerOptions:
    """How the worker reaches its SuperNode and how it polls."""

    runtime_api_address: str
    poll_interval: float = 0.05
    idle_poll: float = 1.0
    object_backoff: float = 0.05
    site_dir: Path | None = None
    ready_file: Path | None = None
    max_tasks: int | None = None
    parent_pid: int | None = None


def fab_declares_veracity_clientapp(fab_content: bytes) -> bool:
    """True when the FAB's pyproject names Veracity's ClientApp as its client component."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab_content)) as archive:
            config = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    components = config.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    return bool(components.get("clientapp") == CLIENTAPP_REF)


def _warm_up(site_dir: Path | None) -> None:
    """Import torch and Opacus, run one optimiser step and each accountant once, open the agent.

    So that the first round is not cold: the accountants' first call pays for imports and
    set-up (seconds on a busy machine), and the agent (its store, keys and migrations) is
    what every message of the site's runs uses.
    """
    import torch

    torch.set_num_threads(int(os.environ.get("VERACITY_TORCH_THREADS", "1")))
    model = torch.nn.Linear(2, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.zeros(1, 2)).sum().backward()
    optimiser.step()
    import opacus  # noqa: F401  (import cost paid once, here)

    from veracity.client.budget import Segment, epsilon_report

    _ = epsilon_report((Segment(1.0, 0.5, 1),), 1e-5).add_remove

    if site_dir is not None:
        from veracity.client import flower_app

        flower_app.agent_for(site_dir.resolve())


#: Seconds between two looks at the site's new approvals (see :func:`_prepare_approved`).
_PREPARE_EVERY = 0.25


def _prepare_approved(site_dir: Path) -> None:
    """Warm the accountants for round 1 of studies the site approved (never fails the loop)."""
    from veracity.client import flower_app

    try:
        flower_app.agent_for(site_dir.resolve()).prepare_approved()
    except Exception as err:  # noqa: BLE001 - a warm-up: the round computes its own figures
        log.warning("could not prepare the new approvals: %s", err)


def run_worker(options: WorkerOptions) -> int:
    """Serve ClientApp tasks until SIGTERM/SIGINT (or ``max_tasks``); returns tasks served.

    Asks the SuperNode for a task every ``poll_interval`` seconds for a few seconds after
    the last one, backing off to ``idle_poll`` seconds while none comes.
    """
    _warm_up(options.site_dir)

    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import (
        AcquireTaskRequest,
        PullAppMessagesRequest,
        PullTaskInputRequest,
    )
    from flwr.supercore.constant import TaskType
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    from veracity.client import flower_app

    def client_for(token: str | None, component: str) -> Any:
        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name=component)]
        if token:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        return RuntimeHttpClient.from_server_address(
            server_address=options.runtime_api_address,
            insecure=True,  # the SuperNode's Runtime API listens on loopback only
            root_certificates=None,
            interceptors=interceptors,
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def pull_input(client: Any) -> tuple[Any, Any, Any, Any]:
        res = client.PullTaskInput(PullTaskInputRequest())
        TaskIdentity.task_id = res.task_id
        TaskIdentity.run_id = res.run.run_id
        TaskIdentity.node_id = res.context.node_id
        context = context_from_proto(res.context)
        run = run_from_proto(res.run)
        fab = fab_from_proto(res.fab)
        pulled = client.PullMessages(PullAppMessagesRequest())
        if not pulled.messages_list:
            raise RuntimeError("the SuperNode handed over a task without a message")
        node = Node(node_id=context.node_id)
        tree = pulled.message_object_trees[0]
        message = pull_and_inflate_object_from_tree(
            tree,
            make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
            make_confirm_message_received_fn_protobuf(
                client.ConfirmMessageReceived, node, context.run_id
            ),
            return_type=Message,
            initial_backoff=options.object_backoff,
            backoff_cap=OBJECT_BACKOFF_CAP,
            max_tries_per_object=OBJECT_PULL_TRIES,
        )
        message.metadata.__dict__["_message_id"] = tree.object_id
        return message, context, run, fab

    def serve(token: str) -> None:
        client = client_for(token, "flwr-clientapp")
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message = context = reply = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, _run, fab = pull_input(client)
            fab_hash = hashlib.sha256(fab.content).hexdigest()
            if not fab_declares_veracity_clientapp(fab.content):
                raise PermissionError(f"FAB {fab_hash[:12]} does not run {CLIENTAPP_REF}")
            with flower_app.run_code_hash(fab_hash):
                reply = flower_app.app(message=message, context=context)
            sub_status, details = SubStatus.COMPLETED, ""
        except Exception as err:
            log.exception("ClientApp task failed")
            details = f"{type(err).__name__}: {err}"
            if message is not None:
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                    reply_to=message,
                )
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            heartbeat.stop()
            client.close()

    if options.parent_pid is not None:
        exit_with_parent(options.parent_pid, name="worker")
    stopping = False
    serving = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Between tasks, stop at once (even inside a retrying HTTP call); during a task,
        # finish it and report its result first.
        nonlocal stopping
        stopping = True
        if not serving:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    acquirer = client_for(None, "SuperExec")
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    if options.ready_file is not None:
        options.ready_file.write_text(f"{os.getpid()}\n", encoding="ascii")
    log.info("worker %d ready, polling %s", os.getpid(), options.runtime_api_address)
    backoff = PollBackoff(active=options.poll_interval, idle=options.idle_poll)
    served = 0
    prepared_at = 0.0
    while not stopping:
        if options.site_dir is not None and time.monotonic() - prepared_at >= _PREPARE_EVERY:
            prepared_at = time.monotonic()
            _prepare_approved(options.site_dir)
        try:
            response = acquirer.AcquireTask(request)
        except Exception as err:  # noqa: BLE001 - the SuperNode may be restarting; retry
            log.warning("AcquireTask failed: %s", err)
            time.sleep(max(options.poll_interval, 1.0))
            continue
        if response.HasField("task") and response.token:
            serving = True
            try:
                serve(response.token)
            finally:
                serving = False
                backoff.activity()
            served += 1
            if options.max_tasks is not None and served >= options.max_tasks:
                break
            continue
        backoff.sleep()
    return served


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m veracity.client.worker --runtime-api-address HOST:PORT``."""
    parser = task_process_parser(__doc__, poll_interval=0.05)
    parser.add_argument("--idle-poll", type=float, default=1.0)
    parser.add_argument("--site-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    log_task_process()
    run_worker(
        WorkerOptions(
            runtime_api_address=args.runtime_api_address,
            poll_interval=args.poll_interval,
            idle_poll=args.idle_poll,
            object_backoff=args.object_backoff,
            site_dir=args.site_dir,
            ready_file=args.ready_file,
            parent_pid=args.parent_pid,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
