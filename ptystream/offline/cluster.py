"""Fanning jobs out on Dask (client side): a LocalCluster of worker processes by default, or
an existing scheduler, each worker with TensorFlow imported and pinned before its first task."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from distributed import WorkerPlugin

from ptystream.offline.jobs import Job
from ptystream.offline.report import Report
from ptystream.offline.task import reprocess_one

__all__ = ["IgnoreCtrlC", "JobsInterrupted", "TensorFlowSetup", "run_jobs"]

#: Times a task whose worker died (e.g. past its memory limit) is tried again on another
#: worker of the local cluster before it is reported failed (Dask's default is 3).
_RETRIES_AFTER_DEATH = 1


class JobsInterrupted(KeyboardInterrupt):
    """:func:`run_jobs` was interrupted (Ctrl-C, or SIGTERM turned into one): ``reports`` has
    the report of each job that ended before, in the order of the jobs, None for the others
    (cancelled: whatever they were writing is left unfinished, never reported done)."""

    def __init__(self, reports: list[Report | None]):
        super().__init__()
        self.reports = reports


class IgnoreCtrlC(WorkerPlugin):
    """Dask worker plugin for local workers: Ctrl-C in a terminal reaches the whole process
    group, workers included; they ignore it and leave the stopping to the client, which
    closes them (a worker interrupted on its own dies with a traceback, and its nanny logs
    another)."""

    name = "ptystream-ignore-ctrl-c"

    def setup(self, worker) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # the worker's event loop
            signal.signal(signal.SIGINT, signal.SIG_IGN)


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

    A KeyboardInterrupt while they run drops the jobs not yet done (the scheduler cancels
    them when the client goes; local workers are stopped) and raises :class:`JobsInterrupted`
    with the reports of those done. Local workers ignore Ctrl-C (:class:`IgnoreCtrlC`).
    """
    if not jobs:
        return []
    import dask
    from dask.distributed import Client, LocalCluster

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
    reports: list[Report | None] = [None] * len(jobs)
    try:
        with Client(cluster or scheduler) as client:
            if cluster is not None:
                client.register_plugin(IgnoreCtrlC())
            client.register_plugin(TensorFlowSetup(tf_threads))
            futures = {
                client.submit(reprocess_one, job, pure=False): i for i, job in enumerate(jobs)
            }
            try:
                _gather(futures, jobs, reports, on_report)
            except KeyboardInterrupt:
                # the jobs not done are dropped with the client: the scheduler cancels them
                # (a local cluster's workers are stopped with it)
                _silence_distributed()
                if cluster is not None:  # and in the local workers, stopped with a task
                    with contextlib.suppress(Exception):
                        client.run(_silence_distributed)
                raise JobsInterrupted(reports) from None
    finally:
        if cluster is not None:
            cluster.close()
    return [r for r in reports if r is not None]


def _gather(
    futures: dict,
    jobs: list[Job],
    reports: list[Report | None],
    on_report: Callable[[Report], None] | None,
) -> None:
    """Fill ``reports`` (by job index, which ``futures`` map to) as the futures finish."""
    from dask.distributed import KilledWorker, as_completed

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


def _silence_distributed() -> None:
    """After an interrupt, the local cluster is stopped with its tasks running: its warnings
    about the workers it kills and their tasks cancelled are expected, not news."""
    import logging

    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _default_memory_limit(workers: int) -> int:
    import psutil

    return int(0.8 * psutil.virtual_memory().total / max(workers, 1))
