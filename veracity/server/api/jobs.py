"""Long ledger operations (verify, export) as background jobs with a concurrency limit.

Verifying or exporting a large ledger takes seconds to minutes of CPU. Run on request
threads, twelve of them at once held every thread of the API (each waiting its turn for
the verifier) and pushed an admin's 11 ms request to 5.5 s. Here at most ``slots`` of them
run at once, each on its own worker thread; a request that waits for a slot waits on the
event loop, holding no request thread, so every other route keeps its threads.

``POST /ledger/jobs`` starts one and answers 202 at once; ``GET /ledger/jobs/{id}`` says
``queued``, ``running``, ``done`` (with the verification report, or the bundle's size and
SHA-256) or ``failed``; an export's bundle is then ``GET /ledger/jobs/{id}/bundle``. The
older synchronous ``GET /ledger/verify`` and ``GET /ledger/export`` take a slot the same
way. Jobs live in the worker process that started them (``--workers 1``, the default,
serves them all). At most ``max_waiting`` jobs are queued or running at once (a further
``POST`` is refused with 409: nothing queues without bound); of the finished ones the newest
``keep`` are kept, and an evicted export's file is removed (a job is never evicted while it
is queued or running).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
from anyio.to_thread import run_sync

from veracity.errors import Conflict, NotFound, VeracityError

__all__ = ["Job", "JobKind", "JobStatus", "LedgerJobs"]

JobKind = Literal["verify", "export"]
JobStatus = Literal["queued", "running", "done", "failed"]


@dataclass
class Job:
    """One background job and, once done, what it produced."""

    job_id: str
    kind: JobKind
    requested_by: str
    status: JobStatus = "queued"
    result: dict[str, Any] | None = None
    error: str | None = None
    bundle: Path | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The API's view (never the file path)."""
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "requested_by": self.requested_by,
            "status": self.status,
            "result": self.result,
            "error": self.error,
        }


class LedgerJobs:
    """Background ledger jobs of one API process, ``slots`` running at once."""

    def __init__(self, *, slots: int, keep: int = 100, max_waiting: int = 32) -> None:
        self.slots = anyio.Semaphore(slots)
        self.limiter = anyio.CapacityLimiter(slots)
        self.keep = keep
        self.max_waiting = max_waiting
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._directory = Path(tempfile.mkdtemp(prefix="veracity-jobs-"))

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
            If ``max_waiting`` jobs are already queued or running.
        """
        job = Job(job_id=secrets.token_hex(12), kind=kind, requested_by=requested_by)
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.status in ("queued", "running"))
            if waiting >= self.max_waiting:
                raise Conflict(
                    f"{waiting} ledger jobs are queued or running in this API process; "
                    "start another when one has finished"
                )
            self._jobs[job.job_id] = job
            finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
            for old in finished[: max(0, len(self._jobs) - self.keep)]:
                del self._jobs[old.job_id]
                self._remove_files(old)
        task = asyncio.get_running_loop().create_task(self._run(job, work))
        self._tasks.add(task)  # a reference until it ends (the loop keeps only weak ones)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: Job, work: Callable[[Path], dict[str, Any]]) -> None:
        directory = self._directory / job.job_id
        async with self.slots:
            job.status = "running"
            try:
                directory.mkdir(parents=True)
                job.result = await run_sync(work, directory, limiter=self.limiter)
            except VeracityError as err:
                job.status, job.error = "failed", str(err)[:2000]
                return
            except Exception as err:  # noqa: BLE001 - a job's failure is its status, not a crash
                job.status, job.error = "failed", f"internal error: {type(err).__name__}"
                return
        bundle = directory / "ledger-bundle.jsonl"
        job.bundle = bundle if bundle.exists() else None
        job.status = "done"

    def get(self, job_id: str) -> Job:
        """The job ``job_id``.

        Raises
        ------
        NotFound
            If this process has no such job (never started, or evicted).
        """
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no ledger job {job_id!r} (jobs live in the API process that ran them)")
        return job

    def _remove_files(self, job: Job) -> None:
        shutil.rmtree(self._directory / job.job_id, ignore_errors=True)

    async def aclose(self) -> None:
        """Cancel the queued jobs, wait for the running ones, forget all and remove their files."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()  # a running job's thread finishes its work first
        await asyncio.gather(*tasks, return_exceptions=True)
        with self._lock:
            self._jobs.clear()
        shutil.rmtree(self._directory, ignore_errors=True)
