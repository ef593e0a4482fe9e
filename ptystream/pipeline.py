"""Wiring: the only module that owns threads and queues.

::

    RE thread ── callback ──► queue ──► worker thread: pair frames, engine.add_frames / step
                                              │ estimate every cadence_s (latest wins)
                                              ▼
                                        publisher thread ──► Tiled (retries for begin/final)

The RunEngine's thread only enqueues (``open_run``, ``submit``, ``close_run`` return at once).
The worker imports TensorFlow and compiles before frames arrive, keeps refining while it waits
for frames, and on the stop document runs the final epochs and hands the final estimate over.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ptystream.batching import Accounting, FramePairer
from ptystream.config import Profile
from ptystream.engine import Engine, configure_tensorflow, make_engine
from ptystream.publisher import TiledPublisher
from ptystream.types import Estimate, FrameRecord, RunStart, RunStop

__all__ = ["BackgroundCallback", "LivePipeline", "RunResult"]

logger = logging.getLogger(__name__)

_STOP = object()


class BackgroundCallback:
    """Runs any ``callback(name, doc)`` on its own thread, so a slow one never blocks the RE.

    Used for bluesky's TiledWriter (about 170 ms per write on this machine class). Documents
    are delivered in order; :meth:`flush` waits until all queued ones are processed.
    Exceptions of the wrapped callback are logged, counted in ``errors`` and do not stop it.
    """

    def __init__(self, callback: Callable[[str, dict], Any], *, name: str = "background"):
        self._callback = callback
        self._queue: queue.Queue = queue.Queue()
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __call__(self, name: str, doc: dict) -> None:
        self._queue.put((name, doc))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued document was handled; False on timeout."""
        done = threading.Event()
        self._queue.put((_STOP, done))
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            name, doc = self._queue.get()
            if name is _STOP:
                doc.set()
                continue
            try:
                self._callback(name, doc)
            except Exception:
                self.errors += 1
                logger.exception("background callback failed on a %r document", name)


@dataclass
class RunResult:
    """What became of one run: its status, final estimate and bookkeeping."""

    run_uid: str
    status: str = "running"
    node_path: str | None = None
    final: Estimate | None = None
    accounting: Accounting = field(default_factory=Accounting)
    timings_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class _LiveRun:
    """Worker-side state of the run being reconstructed."""

    def __init__(self, start: RunStart, engine: Engine, result: RunResult):
        self.start = start
        self.engine = engine
        self.pairer = FramePairer(start.geometry.frame_px)
        self.result = result
        self.t_open = time.perf_counter()
        self.last_publish = 0.0


_STATUS = {"success": "finished", "abort": "aborted", "fail": "failed"}


class LivePipeline:
    """Live reconstruction of the runs a :class:`~ptystream.callback.PtychoCallback` feeds it.

    Parameters
    ----------
    profile : engine and publishing settings.
    publisher : where estimates go; None keeps results in memory only (see :meth:`result`).
    engine_factory : builds an engine per run (the AD engine by default).
    """

    def __init__(
        self,
        profile: Profile,
        publisher: TiledPublisher | None,
        *,
        engine_factory: Callable[..., Engine] = make_engine,
    ):
        self._profile = profile
        self._publisher = publisher
        self._engine_factory = engine_factory
        self._inbox: queue.Queue = queue.Queue()
        self._outbox: deque[tuple[str, str, Any]] = deque()
        self._out_cond = threading.Condition()
        self._results: dict[str, RunResult] = {}
        self._ready = threading.Event()
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="ptystream-worker", daemon=True)
        self._pub = threading.Thread(target=self._publish, name="ptystream-publish", daemon=True)

    # -- RunSink: called on the RunEngine's thread; enqueue only ----------------------------

    def open_run(self, start: RunStart) -> None:
        self._results[start.run_uid] = RunResult(start.run_uid)
        self._inbox.put(("open", start))

    def submit(self, record: FrameRecord) -> None:
        self._inbox.put(("frame", record))

    def close_run(self, stop: RunStop) -> None:
        self._inbox.put(("close", stop))

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, *, timeout: float = 120.0) -> LivePipeline:
        """Start the threads and wait until TensorFlow is imported (before any scan starts)."""
        self._worker.start()
        self._pub.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the engine did not start within {timeout} s")
        return self

    def result(self, run_uid: str) -> RunResult:
        return self._results[run_uid]

    def wait(self, run_uid: str, timeout: float | None = None) -> RunResult:
        """Block until ``run_uid`` is final and published (or failed); raise on timeout."""
        result = self._results[run_uid]
        if not result.done.wait(timeout):
            raise TimeoutError(f"run {run_uid} did not finish within {timeout} s")
        return result

    def close(self, timeout: float = 60.0) -> None:
        """Finish what is queued, then stop both threads."""
        self._inbox.put(("shutdown", None))
        self._worker.join(timeout)
        with self._out_cond:
            self._closing = True
            self._out_cond.notify()
        self._pub.join(timeout)

    # -- worker thread ----------------------------------------------------------------------

    def _work(self) -> None:
        configure_tensorflow(self._profile.engine.tf_threads)
        self._ready.set()
        run: _LiveRun | None = None
        while True:
            busy = run is not None and run.engine.n_frames > 0
            try:
                kind, item = self._inbox.get(timeout=0.0 if busy else 0.5)
            except queue.Empty:
                if busy:
                    run.engine.step(1)
                    self._maybe_publish(run)
                continue
            items = [(kind, item)]
            while len(items) < 10_000:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for kind, item in items:
                try:
                    run = self._handle(run, kind, item)
                except Exception as exc:
                    run = self._fail(run, exc)
                if kind == "shutdown":
                    return
            if run is not None:
                try:
                    self._feed(run)
                except Exception as exc:
                    run = self._fail(run, exc)

    def _handle(self, run: _LiveRun | None, kind: str, item: Any) -> _LiveRun | None:
        if kind == "open":
            if run is not None:
                self._finish(run, "incomplete", "a new run started before this one stopped")
            return self._open(item)
        if kind == "frame":
            if run is not None and item.run_uid == run.start.run_uid:
                run.pairer.add(item)
            return run
        if kind == "close":
            if run is not None and item.run_uid == run.start.run_uid:
                self._feed(run)
                self._finish(run, _STATUS.get(item.exit_status, item.exit_status), item.reason)
                return None
            return run
        if kind == "shutdown" and run is not None:
            self._finish(run, "incomplete", "ptystream shut down before the run stopped")
            return None
        return run

    def _open(self, start: RunStart) -> _LiveRun:
        inst = self._profile.instrument
        t0 = time.perf_counter()
        engine = self._engine_factory(
            start.geometry,
            self._profile.engine,
            plan=start.plan,
            read_noise_counts=inst.read_noise_counts,
            probe_defocus_m=inst.probe_defocus_m,
        )
        engine.warm_up()
        result = self._results[start.run_uid]
        result.timings_s["engine_setup"] = time.perf_counter() - t0
        self._post("begin", start.run_uid, start)
        return _LiveRun(start, engine, result)

    def _feed(self, run: _LiveRun) -> None:
        pairs = run.pairer.take()
        if pairs is not None:
            run.engine.add_frames(pairs.frames, pairs.positions_m)
            run.engine.step(self._profile.engine.steps_per_arrival)
        self._maybe_publish(run)

    def _maybe_publish(self, run: _LiveRun) -> None:
        now = time.perf_counter()
        if run.engine.n_frames and now - run.last_publish >= self._profile.publish.cadence_s:
            run.last_publish = now
            self._post("live", run.start.run_uid, run.engine.estimate())

    def _finish(self, run: _LiveRun, status: str, reason: str) -> None:
        run.pairer.close()
        result = run.result
        result.accounting = run.pairer.accounting
        t0 = time.perf_counter()
        result.timings_s["scan"] = t0 - run.t_open
        if run.engine.n_frames:
            run.engine.refine(self._profile.engine.final_epochs)
            result.final = run.engine.estimate(final=True)
        result.timings_s["final_reconstruction"] = time.perf_counter() - t0
        result.status = status
        if reason:
            result.error = reason
        self._post("final", run.start.run_uid, result)

    def _fail(self, run: _LiveRun | None, exc: Exception) -> None:
        """Log ``exc``, publish the run as failed; the worker then waits for the next run."""
        logger.exception("live reconstruction failed")
        if run is not None:
            run.result.error = f"{type(exc).__name__}: {exc}"
            run.result.status = "failed"
            run.result.accounting = run.pairer.accounting
            self._post("final", run.start.run_uid, run.result)
        return None

    # -- publisher thread -------------------------------------------------------------------

    def _post(self, kind: str, run_uid: str, payload: Any) -> None:
        with self._out_cond:
            if kind in ("live", "final"):
                stale = [c for c in self._outbox if c[0] == "live" and c[1] == run_uid]
                for command in stale:  # latest wins; a final supersedes any pending live
                    self._outbox.remove(command)
            self._outbox.append((kind, run_uid, payload))
            self._out_cond.notify()

    def _publish(self) -> None:
        while True:
            with self._out_cond:
                while not self._outbox and not self._closing:
                    self._out_cond.wait()
                if not self._outbox:
                    return
                kind, run_uid, payload = self._outbox.popleft()
            if kind == "live":
                self._attempt(kind, run_uid, payload, retries=0)
            else:
                self._attempt(kind, run_uid, payload, retries=5)
            if kind == "final":
                payload.done.set()

    def _attempt(self, kind: str, run_uid: str, payload: Any, *, retries: int) -> None:
        if self._publisher is None:
            return
        delay = 0.5
        for attempt in range(retries + 1):
            try:
                self._write(kind, run_uid, payload)
                return
            except Exception as exc:
                if attempt == retries:
                    logger.error("publishing %s of run %s failed: %s", kind, run_uid, exc)
                    if kind == "final":
                        payload.error = f"publishing failed: {exc}"
                    return
                logger.warning("publishing %s of run %s failed (%s); retrying", kind, run_uid, exc)
                time.sleep(delay)
                delay = min(2 * delay, 8.0)

    def _write(self, kind: str, run_uid: str, payload: Any) -> None:
        pub = self._publisher
        if kind == "begin":
            settings = self._profile.engine.model_dump(mode="json")
            self._results[run_uid].node_path = pub.begin_run(payload, settings)
        elif kind == "live":
            pub.publish_live(run_uid, payload)
        elif payload.final is not None:
            extra = {"frames": payload.accounting.as_dict(), "timings_s": payload.timings_s}
            if payload.error:
                extra["reason"] = payload.error
            pub.publish_final(run_uid, payload.final, payload.status, extra)
        else:
            pub.mark(run_uid, payload.status, {"reason": payload.error or "no frames"})
