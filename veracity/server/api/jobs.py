"""Long ledger operations (verify, export) as background jobs with a concurrency limit.

Verifying or exporting a large ledger takes seconds to minutes of CPU. Run on request
threads, twelve of them at once held every thread of the API (each waiting its turn for
the verifier) and pushed an admin's 11 ms request to 5.5 s. Here at most ``slots`` of them
run at once in each API worker process, each on its own worker thread; a request that
waits for a slot waits on the event loop, holding no request thread, so every other route
keeps its threads.

``POST /ledger/jobs`` starts one and answers 202 at once; ``GET /ledger/jobs/{id}`` says
``queued``, ``running``, ``done`` (with the verification report, or the bundle's size and
SHA-256) or ``failed``; an export's bundle is then ``GET /ledger/jobs/{id}/bundle``. The
older synchronous ``GET /ledger/verify`` and ``GET /ledger/export`` take a slot the same
way.

Jobs are kept in the coordinator's data directory (``DIR/ledger-jobs/<id>/job.json``, written
atomically, and the export's bundle beside it), so every API worker (``--workers N``)
answers for every job: a job runs in the worker that accepted it and any worker reports
it. A job whose worker process has gone while it was queued or running is reported
``failed``. At most ``max_waiting`` jobs are queued or running at once across the workers
(a further ``POST`` is refused with 409: nothing queues without bound); of the finished
ones the newest ``keep`` are kept, and an evicted job's files are removed (a job is never
evicted while it is queued or running).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import anyio
from anyio.to_thread import run_sync

from veracity.errors import Conflict, NotFound, VeracityError

__all__ = ["Job", "JobKind", "JobStatus", "LedgerJobs"]

JobKind = Literal["verify", "export"]
JobStatus = Literal["queued", "running", "done", "failed"]

_JOB_FILE = "job.json"
_BUNDLE_FILE = "ledger-bundle.jsonl"
_JOB_ID = re.compile(r"^[0-9a-f]{24}$")
_WAITING: tuple[JobStatus, ...] = ("queued", "running")


@dataclass(frozen=True)
class Job:
    """One background job as its file records it."""

    job_id: str
    kind: JobKind
    requested_by: str
    worker_pid: int
    created: float
    status: JobStatus = "queued"
    result: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The API's view (never the worker or the file path)."""
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "requested_by": self.requested_by,
            "status": self.status,
            "result": self.result,
            "error": self.error,
        }

    def _to_file(self) -> dict[str, Any]:
        return {**self.to_json(), "worker_pid": self.worker_pid, "created": self.created}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


class LedgerJobs:
    """Background ledger jobs kept in ``directory``, ``slots`` running at once per process."""

    def __init__(
        self, directory: Path, *, slots: int, keep: int = 100, max_waiting: int = 32
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.slots = anyio.Semaphore(slots)
        self.limiter = anyio.CapacityLimiter(slots)
        self.keep = keep
        self.max_waiting = max_waiting
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def run_now(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on a worker thread once a slot is free (waiting holds no thread)."""
        async with self.slots:
            return await run_sync(work, limiter=self.limiter)

    def start(
        self, kind: JobKind, requested_by: str, work: Callable[[Path], dict[str, Any]]
    ) -> Job:
        """Queue ``work(directory)`` as a job on the running event loop; the job, queued.

        Raises
        ------
        Conflict
            If ``max_waiting`` jobs are already queued or running (in any worker).
        """
        job = Job(
            job_id=secrets.token_hex(12),
            kind=kind,
            requested_by=requested_by,
            worker_pid=self._pid,
            created=time.time(),
        )
        with self._lock:
            jobs = self._all()
            waiting = sum(1 for j in jobs if j.status in _WAITING)
            if waiting >= self.max_waiting:
                raise Conflict(
                    f"{waiting} ledger jobs are queued or running; "
                    "start another when one has finished"
                )
            (self.directory / job.job_id).mkdir()
            self._write(job)
            finished = [j for j in jobs if j.status not in _WAITING]
            for old in finished[: max(0, len(jobs) + 1 - self.keep)]:
                shutil.rmtree(self.directory / old.job_id, ignore_errors=True)
        task = asyncio.get_running_loop().create_task(self._run(job, work))
        self._tasks[job.job_id] = task  # a reference until it ends (the loop keeps weak ones)
        task.add_done_callback(lambda _: self._tasks.pop(job.job_id, None))
        return job

    async def _run(self, job: Job, work: Callable[[Path], dict[str, Any]]) -> None:
        directory = self.directory / job.job_id
        async with self.slots:
            self._write(replace(job, status="running"))
            try:
                result = await run_sync(work, directory, limiter=self.limiter)
            except VeracityError as err:
                self._write(replace(job, status="failed", error=str(err)[:2000]))
                return
            except Exception as err:  # noqa: BLE001 - a job's failure is its status, not a crash
                error = f"internal error: {type(err).__name__}"
                self._write(replace(job, status="failed", error=error))
                return
        self._write(replace(job, status="done", result=result))

    def get(self, job_id: str) -> Job:
        """The job ``job_id``, as any API worker sees it.

        Raises
        ------
        NotFound
            If there is no such job (never started, or evicted).
        """
        job = self._read(job_id) if _JOB_ID.match(job_id) else None
        if job is None:
            raise NotFound(f"no ledger job {job_id!r}")
        return job

    def bundle(self, job: Job) -> Path | None:
        """The bundle a finished export job wrote, if it is there."""
        path = self.directory / job.job_id / _BUNDLE_FILE
        return path if job.status == "done" and path.is_file() else None

    def _all(self) -> list[Job]:
        """Every job, oldest first."""
        found = (self._read(p.name) for p in self.directory.iterdir() if _JOB_ID.match(p.name))
        return sorted((j for j in found if j is not None), key=lambda j: j.created)

    def _read(self, job_id: str) -> Job | None:
        try:
            data = json.loads((self.directory / job_id / _JOB_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        job = Job(
            job_id=str(data["job_id"]),
            kind=cast(JobKind, data["kind"]),
            requested_by=str(data["requested_by"]),
            worker_pid=int(data["worker_pid"]),
            created=float(data["created"]),
            status=cast(JobStatus, data["status"]),
            result=data.get("result"),
            error=data.get("error"),
        )
        orphaned = job.worker_pid != self._pid and not _process_alive(job.worker_pid)
        if job.status in _WAITING and (orphaned or self._stopped(job)):
            return replace(job, status="failed", error="the API worker that ran it stopped")
        return job

    def _stopped(self, job: Job) -> bool:
        """A job of this process that no task runs any more (its loop closed)."""
        return job.worker_pid == self._pid and job.job_id not in self._tasks

    def _write(self, job: Job) -> None:
        path = self.directory / job.job_id / _JOB_FILE
        staging = path.with_name(f"{_JOB_FILE}.{secrets.token_hex(4)}.tmp")
        staging.write_text(json.dumps(job._to_file()), encoding="utf-8")
        os.replace(staging, path)  # a reader in another worker sees the old or the new file

    async def aclose(self) -> None:
        """Cancel this process's queued jobs and wait for its running ones."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()  # a running job's thread finishes its work first
        await asyncio.gather(*tasks, return_exceptions=True)
