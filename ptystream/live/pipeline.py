"""Wiring: the worker thread that feeds the engine, and the queues around it.

::

    RE thread ── callback ──► queue ──► worker thread: pair frames, engine.add_frames / step
                                              │ estimate every cadence_s (latest wins)
                                              ▼
                                        publisher thread (:mod:`ptystream.live.delivery`)
                                              ──► Tiled (retries for begin/final)

The RunEngine's thread only enqueues (``open_run``, ``submit``, ``close_run`` return at once).
The worker imports TensorFlow and compiles before frames arrive, keeps refining while it waits
for frames, and on the stop document runs the final epochs and hands the final estimate over.

At the end of intake the worker names the frames that never arrived (``frames.missing``: the
seq_nums missing up to the stop's event count, else the plan's points, else the highest
received); a run with missing frames is published ``incomplete`` (a stop that said success) or
with its own status, never as a clean ``finished``, and its reason says how many and which.
A run refused at its start (:class:`~ptystream.live.callback.RefusedStart`) is published
``failed`` at once and its frames are counted as rejected.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ptystream.config import Profile
from ptystream.engine import Engine, EngineSetup, make_engine, prepare
from ptystream.engine.initial import read_probe_file
from ptystream.engine.orientation import can_judge
from ptystream.live.callback import CountedStop, RefusedStart
from ptystream.live.delivery import Delivery
from ptystream.live.frames import FrameResolver
from ptystream.live.pairing import Accounting, FramePairer, PairedFrames, expected_frames
from ptystream.live.reconcile import Reconciler
from ptystream.live.result import RunResult
from ptystream.live.spill import FrameStore
from ptystream.preprocess import Preprocessor
from ptystream.store.publisher import TiledPublisher
from ptystream.store.raw import RawRun
from ptystream.types import FrameRecord, Geometry, RunStart, RunStop, ScanPlan

__all__ = ["LivePipeline"]

logger = logging.getLogger(__name__)


class _LiveRun:
    """Worker-side state of the run being reconstructed."""

    def __init__(
        self,
        result: RunResult,
        profile: Profile,
        store: FrameStore,
        prep: Preprocessor,
        build: Callable[[Geometry, np.ndarray | None], Engine],
        engine: Engine | None,
    ):
        self.engine = engine
        self.result = result
        self.prep = prep
        self._build = build
        self._instrument = profile.instrument
        self._store = store
        ingest = profile.ingest
        self.resolver = FrameResolver(ingest.handlers, ingest.root_map)
        self.pairer = FramePairer(
            resolve=self._resolved,
            discard=store.release,
            file_timeout_s=ingest.file_timeout_s,
        )
        self._darks: list[Any] = []  # the dark stream's frames (arrays or references)
        self.reconciler: Reconciler | None = None  # the raw run in Tiled, where it is saved
        self.t_open = time.perf_counter()
        self.last_seen = time.monotonic()
        self.last_publish = 0.0
        self.last_checkpoint = time.perf_counter()
        self._first: list[PairedFrames] = []
        self._judge_orientation = profile.instrument.orientation != "off"
        #: The last frame paired for the engine, as it is given it (counts), for the dashboard.
        self.recent_frame: np.ndarray | None = None

    def ready(self, pairs: PairedFrames | None) -> PairedFrames | None:
        """What to add to the engine now: the first frames are held back and added together,
        because the engine fits its noise model, searches the probe's defocus and checks the
        positions' orientation on the frames it is first given, and the pre-processing learns
        from them. They are held until there are :data:`_FIRST_FRAMES` (or the
        pre-processing's :attr:`~ptystream.preprocess.Preprocessor.frames_to_fit`) and
        (unless ``instrument.orientation`` is ``off``) their positions spread along both axes,
        which a raster's first line does not (:func:`~ptystream.engine.orientation.can_judge`),
        or :data:`_MOST_HELD` arrived.
        :meth:`flush` hands over what is held at the end of intake."""
        if self.n_frames or (pairs is None and not self._first):
            return pairs
        if pairs is not None:
            self._first.append(pairs)
        held = sum(len(p) for p in self._first)
        if held < max(_FIRST_FRAMES, self.prep.frames_to_fit):
            return None
        if held < _MOST_HELD and self.prep.needs_dark and not self._darks:
            return None
        if self._judge_orientation and held < _MOST_HELD:
            positions = np.concatenate([p.positions_m for p in self._first])
            if not can_judge(positions):
                return None
        return self.flush()

    @property
    def n_frames(self) -> int:
        """Frames the engine holds (0 before it is built)."""
        return 0 if self.engine is None else self.engine.n_frames

    def add_dark(self, frame: Any) -> None:
        """A frame of the profile's ``preprocess.dark_stream``."""
        self._darks.append(frame)

    def add(self, pairs: PairedFrames | None) -> None:
        """Pre-process ``pairs`` (the first ones fit the pre-processing and build the engine
        for the frame size and mask it gives) and add them to the engine; frames with too many
        saturated pixels are counted as rejected."""
        if pairs is None:
            return
        if not self.prep.fitted:
            self._start(pairs.frames)
        prepared = self.prep.apply(pairs.frames)
        keep = ~prepared.saturated
        if not keep.all():
            self.pairer.reject("saturated", int(np.count_nonzero(~keep)))
        if keep.any():
            self.engine.add_frames(prepared.frames[keep], pairs.positions_m[keep])
            #: the last frame as the engine was given it (counts), for the dashboard
            self.recent_frame = np.array(prepared.frames[keep][-1])

    def _start(self, frames: np.ndarray) -> None:
        prep, result = self.prep, self.result
        if prep.needs_dark:
            held, self._darks = self._darks, []
            darks = [d for d in (self._resolved_dark(f) for f in held) if d is not None]
            if darks:
                prep.set_dark(np.stack(darks))
            else:
                prep.warnings.append(
                    f"preprocess: no dark frame of stream {prep.settings.dark_stream!r} came "
                    f"before the first {len(frames)} frames: the dark is not subtracted"
                )
        prep.fit(frames)
        for warning in prep.warnings:
            logger.warning("run %s: %s", self.uid, warning)
        geometry, mask = prep.geometry(self._instrument), prep.valid_pixels
        if self.engine is None or geometry != result.start.geometry or not mask.all():
            self.engine = self._build(geometry, None if mask.all() else mask)
        # said with the engine's own warnings: in the run's and live metadata, on the dashboard
        self.engine.input_warnings += tuple(prep.warnings)
        result.start = dataclasses.replace(result.start, geometry=geometry)
        result.preprocess = prep.report()

    def release_darks(self) -> None:
        """Give back the memory of dark frames never used (the run ended before its frames)."""
        for frame in self._darks:
            self._store.release(frame)
        self._darks = []

    def _resolved(self, frame: Any) -> Any:
        return self.resolver.resolve(self._store.load(frame))

    def _resolved_dark(self, frame: Any) -> np.ndarray | None:
        try:
            return np.asarray(self._resolved(frame), dtype=np.float64).squeeze()
        except Exception as exc:  # a dark not written yet, or unreadable: named, not fatal
            logger.warning("run %s: a dark frame could not be read (%s)", self.uid, exc)
            return None
        finally:
            self._store.release(frame)

    def flush(self) -> PairedFrames | None:
        """The held first frames as one batch (None if none are held)."""
        held, self._first = self._first, []
        if not held:
            return None
        return PairedFrames(*(np.concatenate([getattr(p, f) for p in held]) for f in _FIELDS))

    @property
    def uid(self) -> str:
        return self.result.run_uid


#: Frames the engine is first given at once (its noise model and probe defocus search use
#: them; the search needs at least 8 and uses 20); more where the pre-processing learns from
#: the first frames (:attr:`~ptystream.preprocess.Preprocessor.frames_to_fit`).
_FIRST_FRAMES = 20
#: Most frames held for the orientation check to see both axes (then it runs on what it has).
_MOST_HELD = 300
_FIELDS = ("seq_nums", "frames", "positions_m")
_STATUS = {"success": "finished", "abort": "aborted", "fail": "failed"}
#: The status of a run that stopped with success but misses frames (also that of a run ended
#: without its stop, or by a shutdown): the dashboard, ``watch`` and the tests know it.
_INCOMPLETE = "incomplete"
#: How the frames of a run refused at its start are counted in ``frames.rejected``.
_REFUSED = "bad start document"
_KEEP_RESULTS = 32
#: Longest stretch (s) of catch-up steps between two looks at the inbox.
_CATCH_UP_S = 0.25
#: Seconds between looks at frames waiting for a position or a file, when nothing else runs.
_RETRY_S = 0.05


class LivePipeline:
    """Live reconstruction of the runs a :class:`~ptystream.live.callback.PtychoCallback` feeds it.

    Parameters
    ----------
    profile : engine and publishing settings.
    publisher : where estimates go; None keeps results in memory only (see :meth:`result`).
    spool_dir : where a final result is saved (NPZ + JSON) when Tiled cannot take it after
        ``profile.publish.retries`` attempts, frames beyond the memory budget are spilled
        (``spill/``) and the run being reconstructed is checkpointed at shutdown
        (``checkpoints/``); None keeps results in memory and spills to a temporary directory.
    engine_factory : builds an engine per run from its :class:`~ptystream.engine.EngineSetup`
        (:func:`~ptystream.engine.make_engine` by default).

    Notes
    -----
    A failure while reconstructing a run marks that run ``failed`` (published with the reason)
    and the worker waits for the next run; it never propagates to the RunEngine.
    """

    def __init__(
        self,
        profile: Profile,
        publisher: TiledPublisher | None,
        *,
        spool_dir: str | Path | None = None,
        engine_factory: Callable[[EngineSetup], Engine] = make_engine,
    ):
        self._profile = profile
        self._spool_dir = Path(spool_dir) if spool_dir is not None else None
        self._engine_factory = engine_factory
        # the dark, flat and mask files are read (and any error said) before the first run
        self._prep = Preprocessor.from_profile(profile)
        self._find_raw = None
        if publisher is not None and profile.ingest.backfill_after_s is not None:
            self._find_raw = lambda uid: RawRun.find(publisher.root, uid, profile)
        geometry = profile.geometry() if profile.frame_px is not None else None
        self._setup = EngineSetup.from_profile(profile, geometry=geometry)
        self._inbox: queue.Queue = queue.Queue()
        self._store = FrameStore(
            int(profile.ingest.memory_budget_mb * 2**20),
            self._spool_dir / "spill" if self._spool_dir is not None else None,
        )
        self._late: set[str] = set()  # worker thread only: runs closed before their documents
        # worker thread only: runs refused at their start, and their frames counted so far
        self._refused: OrderedDict[str, tuple[RunResult, Accounting]] = OrderedDict()
        self._spilled: Counter[str] = Counter()  # frames spilled to disk, by run uid
        self._results: OrderedDict[str, RunResult] = OrderedDict()
        self._last_probe: tuple[str, np.ndarray] | None = None  # worker thread only
        self._ready = threading.Event()
        self._worker = threading.Thread(target=self._work, name="ptystream-worker", daemon=True)
        self._delivery = Delivery(
            publisher,
            profile.publish,
            profile.engine.model_dump(mode="json"),
            self._spool_dir,
        )

    @property
    def busy(self) -> bool:
        """Whether a run is open (started, its final result not yet delivered): work in the
        background, such as ``serve``'s recovery of runs after a restart, waits while it is."""
        return any(not result.done.is_set() for result in list(self._results.values()))

    # -- RunSink: called on the RunEngine's thread; enqueue only ----------------------------

    def open_run(self, start: RunStart) -> None:
        self._results[start.run_uid] = RunResult(start)
        while len(self._results) > _KEEP_RESULTS:
            self._results.popitem(last=False)
        self._inbox.put(("open", start))

    def submit(self, record: FrameRecord) -> None:
        if isinstance(record.frame, np.ndarray):
            held = self._store.hold(record.frame)
            if held is not record.frame:
                record = FrameRecord(record.run_uid, record.seq_num, held, record.position_m)
                self._spilled[record.run_uid] += 1
        self._inbox.put(("frame", record))

    @property
    def store(self) -> FrameStore:
        """The memory budget of frames waiting for the engine (held bytes, spills)."""
        return self._store

    def close_run(self, stop: RunStop) -> None:
        self._inbox.put(("close", stop))

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, *, timeout: float = 120.0) -> LivePipeline:
        """Start the threads and wait until TensorFlow is imported and the step compiled for
        the profile's frame and batch shapes (before any scan starts)."""
        self._worker.start()
        self._delivery.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the engine did not start within {timeout} s")
        # TensorFlow (and an embedded Tiled server) leave ~0.4-0.7 million long-lived objects;
        # a full collection walking them stalls every thread, the RunEngine's included, for
        # ~0.5 s. Moving what exists now out of the collector's reach avoids that.
        gc.freeze()
        return self

    def result(self, run_uid: str) -> RunResult:
        return self._results[run_uid]

    def wait(self, run_uid: str, timeout: float | None = None) -> RunResult:
        """Block until ``run_uid`` is final and published (or failed); raise on timeout."""
        result = self._results[run_uid]
        if not result.done.wait(timeout):
            raise TimeoutError(f"run {run_uid} did not finish within {timeout} s")
        return result

    def close(self) -> None:
        """Stop: a run still going is checkpointed (``spool_dir/checkpoints``) and published as
        'incomplete' with its current estimate, then pending publications are delivered."""
        if self._worker.is_alive():
            self._inbox.put(("shutdown", None))
            self._worker.join()
        self._delivery.close()
        self._store.close()

    # -- worker thread ----------------------------------------------------------------------

    def _work(self) -> None:
        prepare(self._profile.engine)
        self._warm_up()
        self._ready.set()
        run: _LiveRun | None = None
        while True:
            if run is not None and run.n_frames:
                wait = 0.0  # refine between arrivals
            elif run is not None and run.pairer.waiting:
                wait = _RETRY_S  # frames waiting for a position or a file
            else:
                wait = 0.5
            items = []
            try:
                items.append(self._inbox.get(timeout=wait))
                while len(items) < 10_000:
                    items.append(self._inbox.get_nowait())
            except queue.Empty:
                pass
            for kind, item in items:
                run = self._handle(run, kind, item)
                if kind == "shutdown":
                    return
            if run is None:
                continue
            timeout = self._profile.ingest.stop_timeout_s
            if items:
                run.last_seen = time.monotonic()
            elif time.monotonic() - run.last_seen > timeout:
                self._end(run, _INCOMPLETE, f"no document for {timeout:g} s")
                run = None
                continue
            run = self._guarded(run, self._advance)
            rec = run.reconciler if run is not None else None
            if rec is not None and time.monotonic() >= rec.next_look:
                run = self._reconcile(run)

    def _end(self, run: _LiveRun, status: str, reason: str, stop: RunStop | None = None) -> None:
        """Finish ``run`` (final passes, publish); its later documents are ignored. ``stop``:
        the run's stop, None when it ended without one."""
        self._guarded(run, lambda r: self._finish(r, status, reason, stop))
        self._late.add(run.uid)

    def _warm_up(self) -> None:
        """Trace and compile the step for the profile's shapes on a throw-away engine, before
        any run: TensorFlow's and XLA's one-time start-up is then paid here, and a run's set-up
        only traces the step for its canvas (1.5-3.8 s for the demo profile on 2 busy cores,
        benchmarks/live_pipeline.py; 2.4 s against 1.0 s on a quiet machine). Skipped when the
        frame size comes from the detector's frames (each run compiles at its first frames)."""
        if self._setup.geometry is None:
            return
        plan = ScanPlan(self._profile.engine.batch_size, ((0.0, 0.0), (0.0, 0.0)))
        try:
            self._engine_factory(self._setup.replace(plan=plan)).warm_up()
        except Exception:
            logger.exception("compiling ahead of the first run failed; it compiles at its start")

    def _guarded(self, run: _LiveRun, action: Callable[[_LiveRun], Any]) -> _LiveRun | None:
        """``action(run)``; on an exception the run is failed and None is returned."""
        try:
            action(run)
            return run
        except Exception as exc:
            run.pairer.abandon("run failed")
            self._drain(run)
            self._fail(run.result, exc)
            return None

    def _collect(self, run: _LiveRun, wait_s: float) -> None:
        """End of intake: add the last pairs, waiting up to ``wait_s`` for frames whose files
        are not readable yet (a detector may keep its file until after the stop)."""
        pairer = run.pairer
        batches = [pairer.close()]
        deadline = time.monotonic() + wait_s
        while pairer.waiting and time.monotonic() < deadline:
            time.sleep(_RETRY_S)
            batches.append(pairer.take())
        batches.append(pairer.expire())
        for pairs in [run.ready(pairs) for pairs in batches] + [run.flush()]:
            run.add(pairs)

    def _drain(self, run: _LiveRun, stop: RunStop | None = None) -> None:
        """Close the run's files and record its frame accounting, the frames that never arrived
        included (intake is over; ``stop`` is None when the run ended without one)."""
        run.resolver.close()
        run.release_darks()
        accounting = run.pairer.accounting
        expected, source = self._expected(run, stop)
        accounting.missing = run.pairer.missing(expected, source)
        run.result.accounting = accounting
        run.result.spilled_frames += self._spilled.pop(run.uid, 0)
        if accounting.rejected:
            logger.warning(
                "run %s: %d frames rejected (%s)",
                run.uid,
                sum(accounting.rejected.values()),
                ", ".join(f"{n} {why}" for why, n in accounting.rejected.items()),
            )

    @staticmethod
    def _expected(run: _LiveRun, stop: RunStop | None) -> tuple[int | None, str]:
        return expected_frames(
            stop.frame_events if isinstance(stop, CountedStop) else None,
            run.result.start.plan.n_points,
            stop.exit_status if stop is not None else None,
        )

    def _handle(self, run: _LiveRun | None, kind: str, item: Any) -> _LiveRun | None:
        if kind == "frame":
            if run is not None and item.run_uid == run.uid and item.dark:
                run.add_dark(item.frame)
            elif run is not None and item.run_uid == run.uid:
                run.pairer.add(item)
            elif item.run_uid in self._refused:
                self._store.release(item.frame)
                if item.frame is not None:
                    accounting = self._refused[item.run_uid][1]
                    accounting.received += 1
                    accounting.rejected[_REFUSED] += 1
            else:
                self._store.release(item.frame)
                if item.run_uid not in self._late:
                    self._late.add(item.run_uid)
                    logger.warning("run %s: documents after its end are ignored", item.run_uid)
            return run
        if kind == "close" and item.run_uid in self._refused:
            result, counted = self._refused.pop(item.run_uid)
            result.accounting = counted
            self._delivery.post("final", result)  # again, with its frames counted
            return run
        if kind == "close" and (run is None or item.run_uid != run.uid):
            return run
        if run is not None and kind in ("open", "close", "shutdown"):
            if kind == "close":
                status = _STATUS.get(item.exit_status, item.exit_status)
                self._end(run, status, item.reason, item)
            elif kind == "open":
                self._end(run, _INCOMPLETE, "a new run started before this one stopped")
            else:
                self._guarded(run, self._checkpoint)
                self._late.add(run.uid)
            run = None
        if kind == "open":
            result = self._results.get(item.run_uid) or RunResult(item)
            if isinstance(item, RefusedStart):
                self._refuse(result, item.refusal)
                return None
            try:
                return self._open(result)
            except Exception as exc:
                self._fail(result, exc)
        return run

    def _refuse(self, result: RunResult, reason: str) -> None:
        """A run that cannot be reconstructed: its container is created and marked ``failed``
        with ``reason`` at once (its stop may never come); its frames are then counted as
        rejected, and published again at its stop."""
        result.status, result.error = "failed", reason
        self._delivery.post("final", result)
        self._refused[result.run_uid] = (result, Accounting())
        while len(self._refused) > _KEEP_RESULTS:
            self._refused.popitem(last=False)

    def _open(self, result: RunResult) -> _LiveRun:
        """Create the run's container; build its engine now if the profile fixes the frame size
        (else at its first frames, when the pre-processing has seen the detector)."""
        self._delivery.post("begin", result)
        geometry = result.start.geometry

        def build(geometry: Geometry, mask: np.ndarray | None) -> Engine:
            return self._build(result, geometry, mask)

        engine = build(geometry, None) if geometry is not None else None
        logger.info("run %s (scan %s): reconstructing", result.run_uid, result.start.scan_id)
        run = _LiveRun(result, self._profile, self._store, self._prep.unfitted(), build, engine)
        if self._find_raw is not None:
            ingest = self._profile.ingest
            run.reconciler = Reconciler(
                result.run_uid,
                self._find_raw,
                ingest.backfill_after_s,
                self._profile.instrument.stream,
            )
        return run

    # -- reconciliation with the raw run in Tiled ---------------------------------------------

    def _reconcile(self, run: _LiveRun) -> _LiveRun | None:
        """Fill the run's gaps older than ``ingest.backfill_after_s`` from its raw run; close a
        run silent that long whose stop the raw run holds (its own was lost). A raw run that
        cannot be read is logged and tried again; it never fails the run."""
        rec = run.reconciler
        rec.next_look = time.monotonic() + min(1.0, rec.after_s)
        try:
            self._backfill(run, rec.overdue(run.pairer.missing()))
            if time.monotonic() - run.last_seen >= rec.after_s:
                rec.next_look = time.monotonic() + rec.after_s
                stop = rec.stop()
                if stop is not None:
                    logger.warning("run %s: %s", run.uid, stop.reason)
                    status = _STATUS.get(stop.exit_status, stop.exit_status)
                    self._end(run, status, stop.reason, stop)
                    return None
        except Exception as exc:
            logger.warning("run %s: the raw run in Tiled could not be read (%s)", run.uid, exc)
        return run

    def _backfill(self, run: _LiveRun, seq_nums: list[int]) -> None:
        """Read ``seq_nums`` from the raw run and hand them to the engine like any frame."""
        records = run.reconciler.fetch(seq_nums) if seq_nums else []
        for record in records:
            run.pairer.add(record, backfilled=True)
        if records:
            logger.info("run %s: %d frames read from the raw run in Tiled", run.uid, len(records))
            run.add(run.ready(run.pairer.take()))

    def _backfill_at_stop(self, run: _LiveRun, stop: RunStop | None) -> None:
        """Before the final passes: the frames still missing, from the raw run (waiting up to
        ``ingest.file_timeout_s`` for its writer to save the run's end)."""
        rec = run.reconciler
        expected, source = self._expected(run, stop)
        missing = run.pairer.missing(expected, source).seq_nums()
        if rec is None or not missing:
            return
        deadline = time.monotonic() + self._profile.ingest.file_timeout_s
        try:
            if rec.source() is None:
                logger.warning(
                    "run %s: %d frames missing, and no raw run in Tiled to read them from",
                    run.uid,
                    len(missing),
                )
                return
            while rec.stop() is None and time.monotonic() < deadline:
                time.sleep(_RETRY_S * 10)
            self._backfill(run, missing)
        except Exception as exc:
            logger.warning("run %s: the raw run in Tiled could not be read (%s)", run.uid, exc)
        run.add(run.flush())

    def _build(self, result: RunResult, geometry: Geometry, mask: np.ndarray | None) -> Engine:
        """An engine for the run's frames of ``geometry`` (``mask``: their valid pixels)."""
        t0 = time.perf_counter()
        probe_file = self._profile.engine.initial_probe_file
        initial_probe = self._setup.initial_probe  # read from probe_file, if the size was known
        if initial_probe is None and probe_file is not None:
            initial_probe = read_probe_file(probe_file, geometry.frame_px)
        if initial_probe is not None:
            result.initial_probe_from = str(probe_file)
        if self._profile.engine.reuse_probe and self._last_probe is not None:
            source, probe = self._last_probe
            if probe.shape[-2:] == geometry.frame_shape:
                initial_probe, result.initial_probe_from = probe, source
        engine = self._engine_factory(
            self._setup.replace(
                geometry=geometry,
                plan=result.start.plan,
                initial_probe=initial_probe,
                detector_mask=mask,
            )
        )
        engine.warm_up()
        result.timings_s["engine_setup"] = (
            result.timings_s.get("engine_setup", 0.0) + time.perf_counter() - t0
        )
        return engine

    def _advance(self, run: _LiveRun) -> None:
        """Add the frames paired since the last call and step; refine while none arrive.

        After a burst the engine holds more new frames than ``steps_per_arrival`` steps take
        (each step takes up to a batch of them first): it then keeps stepping until none wait
        or ``_CATCH_UP_S`` has passed, so it catches up as fast as it can step, while the
        inbox is still drained and estimates published between passes.
        """
        settings = self._profile.engine
        pairs = run.ready(run.pairer.take())
        if pairs is not None:
            run.add(pairs)
        if pairs is not None and run.n_frames:
            run.engine.step(settings.steps_per_arrival)
            deadline = time.perf_counter() + _CATCH_UP_S
            while run.engine.frames_waiting and time.perf_counter() < deadline:
                run.engine.step(1)
        elif run.n_frames:
            run.engine.step(1)
        self._maybe_publish(run)

    def _maybe_publish(self, run: _LiveRun) -> None:
        now = time.perf_counter()
        if run.n_frames and now - run.last_publish >= self._profile.publish.cadence_s:
            run.last_publish = now
            frames = run.pairer.accounting.as_dict()
            gaps = run.pairer.missing()  # so far: gaps below the highest seq_num received
            if gaps.count:
                frames["missing"] = gaps.as_dict()
            live = (run.engine.estimate(), frames, run.recent_frame)
            self._delivery.post("live", run.result, live)
        cadence = self._profile.publish.checkpoint_cadence_s
        if cadence is not None and run.n_frames and now - run.last_checkpoint >= cadence:
            run.last_checkpoint = now
            self._save_state(run)

    def _save_state(self, run: _LiveRun) -> None:
        """Write the engine's state to ``checkpoints/<run uid>.h5`` in the spool (atomically:
        a checkpoint is whole or the previous one), if there is a spool directory."""
        if self._spool_dir is None or not run.n_frames:
            return
        path = self._spool_dir / "checkpoints" / f"{run.uid}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run.engine.save_state(path)
        run.result.checkpoint = path
        logger.debug("run %s: checkpoint in %.2f s", run.uid, time.perf_counter() - t0)

    def _checkpoint(self, run: _LiveRun) -> None:
        """Shutdown mid-run: save the engine's state and publish what exists as incomplete."""
        self._collect(run, 0.0)
        self._drain(run)
        result = run.result
        result.timings_s["scan"] = time.perf_counter() - run.t_open
        result.recent_frame = run.recent_frame
        self._save_state(run)
        if run.n_frames:
            result.final = run.engine.estimate(final=True)
        result.status, result.error = _with_missing(
            result, _INCOMPLETE, "ptystream shut down before the run stopped"
        )
        self._delivery.post("final", result)

    def _finish(self, run: _LiveRun, status: str, reason: str, stop: RunStop | None) -> None:
        self._collect(run, self._profile.ingest.file_timeout_s)
        self._backfill_at_stop(run, stop)
        self._drain(run, stop)
        result = run.result
        t0 = time.perf_counter()
        result.timings_s["scan"] = t0 - run.t_open
        result.recent_frame = run.recent_frame
        if run.n_frames:
            run.engine.refine(self._profile.engine.final_epochs)
            result.final = run.engine.estimate(final=True)
            if result.final.is_finite():
                self._last_probe = (result.run_uid, result.final.probe)
        result.timings_s["final_reconstruction"] = time.perf_counter() - t0
        result.status, reason = _with_missing(result, status, reason)
        if reason:
            result.error = reason
        self._delivery.post("final", result)

    def _fail(self, result: RunResult, exc: Exception) -> None:
        """Log ``exc`` and publish the run as failed; the worker then waits for the next run."""
        logger.exception("live reconstruction of run %s failed", result.run_uid)
        result.error = f"{type(exc).__name__}: {exc}"
        result.status = "failed"
        self._delivery.post("final", result)


def _with_missing(result: RunResult, status: str, reason: str) -> tuple[str, str]:
    """The status and reason to publish: a run that misses frames is never a clean
    ``finished`` (it becomes ``incomplete``), and its reason says how many and which
    (also logged)."""
    missing = result.missing
    if missing is None:
        return status, reason
    logger.warning("run %s: %s", result.run_uid, missing.describe())
    if status == _STATUS["success"]:
        status = _INCOMPLETE
    return status, "; ".join(filter(None, (reason, missing.describe())))
