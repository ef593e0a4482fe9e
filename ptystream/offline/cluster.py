"""Fanning jobs out on Dask (client side): a LocalCluster of worker processes by default, or
an existing scheduler, each worker with TensorFlow imported and pinned before its first task."""

from __future__ import annotations

import os
from collections.abc import Callable

from distributed import WorkerPlugin

from ptystream.offline.jobs import Job
from ptystream.offline.report import Report
from ptystream.offline.task import reprocess_one

__all__ = ["TensorFlowSetup", "run_jobs"]

#: Times a task whose worker died (e.g. past its memory limit) is tried again on another
#: worker of the local cluster before it is reported failed (Dask's default is 3).
_RETRIES_AFTER_DEATH = 1


class TensorFlowSetup(WorkerPlugin):
    """Dask worker plugin: import TensorFlow with its thread pools pinned before any task.

    Without it each worker's TensorFlow would start one thread per core in every pool, and
    ``n`` workers on ``n`` cores would oversubscribe them (STACK_NOTES, Dask).
    """

    name = "ptystream-tensorflow"

    def __init__(self, threads: int = 1):
        self.threads = threads

    def setup(self, worker) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from ptystream.engine import configure_tensorflow

        configure_tensorflow(self.threads)


def run_jobs(
    jobs: list[Job],
    *,
    scheduler: str | None = None,
    workers: int = 2,
    memory_limit: str | None = None,
    tf_threads: int = 1,
    on_report: Callable[[Report], None] | None = None,
) -> list[Report]:
    """Run ``jobs`` on Dask, one task each; returns their reports in the order of ``jobs``.

    Without ``scheduler`` a LocalCluster of ``workers`` worker processes (one thread each,
    ``memory_limit`` each, default 80 % of this machine's memory shared between them) is
    started on 127.0.0.1 and closed at the end; with it, the existing cluster at that address
    is used. Either way each worker gets :class:`TensorFlowSetup`. ``on_report`` is called as
    each task finishes (for a progress bar). A worker that dies fails only its own task.
    """
    if not jobs:
        return []
    import dask
    from dask.distributed import Client, KilledWorker, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        with dask.config.set({"distributed.scheduler.allowed-failures": _RETRIES_AFTER_DEATH}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                # its HTTP endpoints on a free local port (the default 8787 may be taken)
                dashboard_address="127.0.0.1:0",
                memory_limit=memory_limit or _default_memory_limit(workers),
            )
    try:
        with Client(cluster or scheduler) as client:
            client.register_plugin(TensorFlowSetup(tf_threads))
            futures = {
                client.submit(reprocess_one, job, pure=False): i for i, job in enumerate(jobs)
            }
            reports: list[Report | None] = [None] * len(jobs)
            for future in as_completed(futures):
                i = futures[future]
                try:
                    report = future.result()
                except Exception as exc:  # the task never ran to its end on a worker
                    job = jobs[i]
                    why = "worker lost" if isinstance(exc, KilledWorker) else "not run by Dask"
                    report = Report(
                        job.label,
                        "failed",
                        job.run_uid or job.path or "?",
                        job.scan_id,
                        error=f"{why}: {type(exc).__name__}: {exc}",
                    )
                reports[i] = report
                if on_report is not None:
                    on_report(report)
    finally:
        if cluster is not None:
            cluster.close()
    return [r for r in reports if r is not None]


def _default_memory_limit(workers: int) -> int:
    import psutil

    return int(0.8 * psutil.virtual_memory().total / max(workers, 1))
