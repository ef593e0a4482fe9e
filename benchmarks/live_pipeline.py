"""The live pipeline end to end: callback cost, highest acquisition rate kept up, latency.

Bluesky documents are recorded once from simulated scans (``ptystream.sim``, a RunEngine with no
exposure time) and replayed from the main thread at a fixed rate into
``PtychoCallback(profile, LivePipeline(...))``, as the RunEngine's thread would hand them over.
Each replay is a fresh run (new uids); a replay longer than its recording repeats the trajectory
in passes (seq_num keeps counting, the start document announces the total). All pipelines use
the demo profile with ``engine.final_epochs: 0`` (the final passes are not what is measured) and
are started (TensorFlow imported, step compiled) before anything is timed. Measures, one run each:

1. **callback cost**: the time of ``callback("event", doc)`` (``time.perf_counter`` around the
   call) for every event of a scan of 128 x 128 float32 inline frames (the demo profile with
   ``instrument.frame_px: 128``), replayed at 100 events/s, in three set-ups: a sink that does
   nothing (the parsing alone, no other thread; also replayed back to back, without pauses); a
   real ``LivePipeline`` reconstructing behind it and publishing to an embedded Tiled server in
   this process (the default set-up of ``ptystream demo``); the same with
   ``ingest.memory_budget_mb`` below one frame, so that every frame is spilled to disk on the
   callback's thread. Median, 99th percentile (numpy's linear interpolation) and max, in
   microseconds; the calls over 1 ms and how many of them overlapped a garbage collection (on
   any thread, from ``gc.callbacks``); the full (generation 2) collections; and how late
   against its schedule the replay handed an event over at worst (the calling thread stalled,
   e.g. by a collection while it slept).
2. **highest rate**: for the demo profile (64 x 64 frames, batch 16, 4 steps per arrival,
   publication every 1 s), runs of ``--duration`` seconds (``rate * duration`` frames of a
   2000-point Fermat scan) at rates of 50, 100, 200, 400, 800, 1000, 1200, 1600, ... frames/s,
   until the first rate that is not kept up. The backlog is sampled at every live publication (see
   below). A recording publisher stands in for Tiled.
3. **latency**: from the moment a frame's event is handed to the callback to the first live
   publication whose estimate has that frame in an optimiser step, at the demo's own pace
   (10 frames/s, its 200-point scan) and at half the highest rate kept up (``--duration`` s),
   with publication cadences of 1 s and 0.2 s. Median and 95th percentile, over all frames and
   over the frames handed in the second half of the scan (each run's engine is set up when its
   start document arrives, which takes a few seconds while frames queue, and the engine then
   catches up). Part 1's Tiled runs also give the latency until a live estimate is written to
   Tiled (the end of ``publish_live``).

Definitions
-----------
Frames reach the engine and its optimiser in arrival order, so after ``estimate.n_frames -
estimate.frames_waiting`` = S frames have been in an optimiser step, the first S frames handed
over have. At a live publication at time t (when the publisher is called), the **backlog** is
B(t) = frames handed to the callback by t - S. It counts frames queued for the worker, frames
waiting for their pair and frames added but not yet stepped. A rate R is **kept up** when all of:

(a) the replay delivered the events at >= 95 % of R (the callback is part of the pipeline);
(b) the backlog does not grow: the least-squares slope of B(t) over the second half of the scan
    is <= 5 % of R (the optimiser steps at least 95 % of the arriving frames);
(c) the backlog at the last live publication before the stop document is <= R x 1 s (the live
    view is at most one second of acquisition behind when the scan ends; this includes
    catching up with the frames that queued while the run's engine was set up);
(d) the final result is published <= 3 s after the stop document was handed to the callback.

The recording publisher only notes ``(time.perf_counter(), n_frames, frames_waiting)`` per live
estimate and the time of the final one: the cost of Tiled writes is measured elsewhere
(``live_demo.py``) and by part 1 here, whose Tiled publisher is timed the same way.

Usage::

    flock /tmp/ptystream-bench.lock .venv/bin/python benchmarks/live_pipeline.py
        [--quick] [--duration S] [--json PATH] [--report JSON]

Prints a table and writes ``benchmarks/results/live_pipeline.json`` (with every backlog sample;
``--quick``: ``live_pipeline_quick.json``).
Nothing is asserted.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gc  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from ptystream.config import Profile  # noqa: E402
from ptystream.live.callback import PtychoCallback  # noqa: E402
from ptystream.types import Estimate, FrameRecord, RunStart, RunStop  # noqa: E402

import _harness  # noqa: E402
from _harness import describe, fmt  # noqa: E402

RATES_HZ = (50, 100, 200, 400, 800, 1000, 1200, 1600, 2400, 3200, 4800, 6400)
DEMO_RATE_HZ = 10.0  # the demo profile's pace: exposure_s 0.1
CALLBACK_RATE_HZ = 100.0
#: Below one 128 x 128 float32 frame (64 KiB): every frame is spilled.
SPILL_BUDGET_MB = 0.01
MIN_DELIVERED, MAX_GROWTH, MAX_BEHIND_S, MAX_FINAL_DELAY_S = 0.95, 0.05, 1.0, 3.0

Docs = list[tuple[str, dict[str, Any]]]


# -- profiles and documents --------------------------------------------------------------------


def bench_profile(
    *,
    frame_px: int = 64,
    n_points: int = 200,
    object_px: int = 224,
    cadence_s: float = 1.0,
    memory_budget_mb: float = 1024.0,
) -> Profile:
    """The demo profile with no final passes, the given frame size, cadence and memory budget,
    and a simulated scan of ``n_points`` with no exposure time (recorded, then replayed)."""
    return _harness.profile_with(
        "demo",
        {
            "instrument.frame_px": frame_px,
            "engine.final_epochs": 0,
            "ingest.memory_budget_mb": memory_budget_mb,
            "publish.cadence_s": cadence_s,
            "sim.n_points": n_points,
            "sim.object_px": object_px,
            "sim.exposure_s": 0.0,
        },
    )


@dataclass
class Scan:
    """One recorded scan's documents; :meth:`run` makes fresh runs of any length from them."""

    start: dict[str, Any]
    descriptor: dict[str, Any]
    events: list[dict[str, Any]]
    stop: dict[str, Any]

    @classmethod
    def record(cls, profile: Profile) -> Scan:
        """Run the profile's simulated scan in a RunEngine and keep its documents."""
        from bluesky import RunEngine

        from ptystream.sim.scan import build_simulation

        docs: Docs = []
        RunEngine({})(build_simulation(profile).plan(), lambda n, d: docs.append((n, d)))
        names = [n for n, _ in docs]
        if names.count("descriptor") != 1 or {names[0], names[-1]} != {"start", "stop"}:
            raise RuntimeError(f"expected start, one descriptor, events, stop; got {set(names)}")
        by_name = defaultdict(list)
        for name, doc in docs:
            by_name[name].append(doc)
        return cls(by_name["start"][0], by_name["descriptor"][0], by_name["event"], docs[-1][1])

    def run(self, n_events: int | None = None) -> Run:
        """A new run (fresh uids) of ``n_events`` events, repeating the trajectory in passes."""
        return Run(self, n_events or len(self.events), str(uuid.uuid4()))


@dataclass
class Run:
    """A replayable run; its documents are made one at a time as they are handed over (as a
    RunEngine would), so the replay holds no list of tens of thousands of events."""

    scan: Scan
    n_events: int
    uid: str

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        scan, n, desc_uid = self.scan, self.n_events, str(uuid.uuid4())
        block = {**scan.start["ptystream"], "n_points": n}
        yield "start", {**scan.start, "uid": self.uid, "time": time.time(), "ptystream": block}
        yield "descriptor", {**scan.descriptor, "uid": desc_uid, "run_start": self.uid}
        m = len(scan.events)
        for i in range(n):
            event = scan.events[i % m]
            yield (
                "event",
                {**event, "uid": str(uuid.uuid4()), "descriptor": desc_uid, "seq_num": i + 1},
            )
        stop = {**scan.stop, "uid": str(uuid.uuid4()), "run_start": self.uid}
        yield "stop", {**stop, "num_events": {scan.descriptor["name"]: n}}


# -- replay and recording ----------------------------------------------------------------------


@dataclass
class Replay:
    """When each event was handed to the callback, how long the call took, when the stop was."""

    run_uid: str
    rate_hz: float
    handed_s: np.ndarray
    event_cost_s: np.ndarray
    stop_s: float
    gc_pauses: list[tuple[float, float, int]]
    t0_s: float

    @property
    def late_s(self) -> np.ndarray:
        """How late each event was handed over against its schedule (a stalled thread)."""
        return self.handed_s - (self.t0_s + np.arange(len(self.handed_s)) / self.rate_hz)

    @property
    def delivered_hz(self) -> float:
        h = self.handed_s
        return (len(h) - 1) / (h[-1] - h[0]) if len(h) > 1 else float("nan")


class GcPauses:
    """Records every garbage collection (on any thread) as ``(start, end, generation)``.

    A collection holds the GIL throughout, so one on another thread stalls the callback too.
    """

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._start = 0.0

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._record)

    def _record(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((self._start, time.perf_counter(), info["generation"]))


def replay(callback: Callable[[str, dict], Any], run: Run, rate_hz: float) -> Replay:
    """Hand ``run``'s documents to ``callback``: start and descriptor at once, event i (from 0)
    at ``t0 + i / rate_hz`` and the stop one interval after the last event (never earlier; a
    late call is made at once)."""
    handed, cost = np.empty(run.n_events), np.empty(run.n_events)
    t0, i, stop_s = None, 0, float("nan")
    with GcPauses() as gcs:
        for name, doc in run:
            if name in ("event", "stop"):
                if t0 is None:
                    t0 = time.perf_counter()
                target = t0 + i / rate_hz
                while (wait := target - time.perf_counter()) > 0:
                    time.sleep(wait)
            t = time.perf_counter()
            callback(name, doc)
            if name == "event":
                handed[i], cost[i] = t, time.perf_counter() - t
                i += 1
            elif name == "stop":
                stop_s = t
    return Replay(run.uid, rate_hz, handed, cost, stop_s, gcs.pauses, t0 or float("nan"))


class RecordingPublisher:
    """A publisher that notes when each live estimate is delivered and what it covers.

    With ``inner`` (a ``TiledPublisher``) every call is forwarded and timed; without it nothing is
    written anywhere.
    """

    def __init__(self, inner: Any = None):
        self._inner = inner
        self.live: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
        self.live_written: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
        self.live_write_s: list[float] = []
        self.final_s: dict[str, float] = {}

    def begin_run(self, start: RunStart, settings: dict[str, Any]) -> str:
        if self._inner is not None:
            return self._inner.begin_run(start, settings)
        return f"recorded/{start.run_uid}"

    def publish_live(self, run_uid: str, estimate: Estimate, frames: dict | None = None) -> None:
        t = time.perf_counter()
        self.live[run_uid].append((t, estimate.n_frames, estimate.frames_waiting))
        if self._inner is not None:
            self._inner.publish_live(run_uid, estimate, frames)
            done = time.perf_counter()
            self.live_written[run_uid].append((done, estimate.n_frames, estimate.frames_waiting))
            self.live_write_s.append(done - t)

    def publish_final(self, run_uid: str, estimate: Estimate, status: str, extra: dict) -> None:
        self.final_s[run_uid] = time.perf_counter()
        if self._inner is not None:
            self._inner.publish_final(run_uid, estimate, status, extra)

    def mark(self, run_uid: str, status: str, extra: dict) -> None:
        self.final_s[run_uid] = time.perf_counter()
        if self._inner is not None:
            self._inner.mark(run_uid, status, extra)


class NullSink:
    """A ``RunSink`` that drops every record: the callback's parsing cost alone."""

    def open_run(self, start: RunStart) -> None:
        pass

    def submit(self, record: FrameRecord) -> None:
        pass

    def close_run(self, stop: RunStop) -> None:
        pass


def cost_stats_us(rep: Replay) -> dict[str, Any]:
    """Median, p99, max of the event calls in µs; the calls over 1 ms, and how many of those
    overlapped a garbage collection; the collections during the replay."""
    us = rep.event_cost_s * 1e6
    slow = np.flatnonzero(us > 1000)
    pauses = np.array([(a, b) for a, b, _ in rep.gc_pauses]).reshape(-1, 2)
    during_gc = sum(
        bool(
            np.any(
                (pauses[:, 0] < rep.handed_s[k] + rep.event_cost_s[k])
                & (pauses[:, 1] > rep.handed_s[k])
            )
        )
        for k in slow
    )
    full = [b - a for a, b, gen in rep.gc_pauses if gen == 2]
    return {
        **describe(rep.event_cost_s, unit="us", scale=1e6, percentiles=(99,)),
        "over_1ms": int(slow.size),
        "over_1ms_during_gc": int(during_gc),
        "gc_collections": len(rep.gc_pauses),
        "gc_full_collections": len(full),
        "gc_full_max_ms": float(max(full) * 1e3) if full else 0.0,
        "late_max_ms": float(rep.late_s.max() * 1e3) if np.isfinite(rep.rate_hz) else float("nan"),
    }


# -- analysis ----------------------------------------------------------------------------------


def backlog(rep: Replay, live: list[tuple[float, int, int]]) -> dict[str, np.ndarray]:
    """Per live publication: time since the first event, frames handed, in the engine, stepped,
    and the backlog B = handed - stepped."""
    t = np.array([p for p, _, _ in live])
    n_frames = np.array([n for _, n, _ in live], dtype=int)
    stepped = n_frames - np.array([w for _, _, w in live], dtype=int)
    handed = np.searchsorted(rep.handed_s, t, side="right")
    return {
        "t_s": t - rep.handed_s[0],
        "handed": handed,
        "in_engine": n_frames,
        "stepped": stepped,
        "backlog": handed - stepped,
    }


def judge_rate(rep: Replay, pub: RecordingPublisher, setup_s: float) -> dict[str, Any]:
    """The backlog over the scan and whether ``rep.rate_hz`` was kept up (criteria a-d)."""
    rate = rep.rate_hz
    series = backlog(rep, pub.live[rep.run_uid])
    scan_s = rep.stop_s - rep.handed_s[0]
    during = series["t_s"] <= scan_s
    t, b, stepped = series["t_s"][during], series["backlog"][during], series["stepped"][during]
    half = t >= scan_s / 2
    slope = float(np.polyfit(t[half], b[half], 1)[0]) if half.sum() >= 3 else float("nan")
    stepped_hz = (
        float((stepped[half][-1] - stepped[half][0]) / (t[half][-1] - t[half][0]))
        if half.sum() >= 2
        else float("nan")
    )
    b_end = int(b[-1]) if len(b) else len(rep.handed_s)
    final_delay = pub.final_s[rep.run_uid] - rep.stop_s
    failed = []
    if not rep.delivered_hz >= MIN_DELIVERED * rate:
        failed.append("a: delivered")
    if not slope <= MAX_GROWTH * rate:
        failed.append("b: growing")
    if not b_end <= MAX_BEHIND_S * rate:
        failed.append("c: behind at stop")
    if not final_delay <= MAX_FINAL_DELAY_S:
        failed.append("d: final late")
    return {
        "rate_hz": rate,
        "frames": len(rep.handed_s),
        "delivered_hz": rep.delivered_hz,
        "engine_setup_s": setup_s,
        "backlog_peak": int(b.max()) if len(b) else None,
        "backlog_end": b_end,
        "backlog_end_not_in_engine": int(
            series["handed"][during][-1] - series["in_engine"][during][-1]
        )
        if len(b)
        else None,
        "backlog_slope_per_s": slope,
        "stepped_hz_second_half": stepped_hz,
        "final_delay_s": final_delay,
        "keeps_up": not failed,
        "failed": failed,
        "callback": cost_stats_us(rep),
        "series": {k: v.tolist() for k, v in series.items()},
    }


def latency(rep: Replay, live: list[tuple[float, int, int]]) -> dict[str, Any]:
    """Per frame: handed to the callback -> first live publication with the frame stepped
    (``live``: ``(time, n_frames, frames_waiting)`` per publication, in order). Statistics over
    every frame that reached a live estimate, and over those handed in the second half of the
    scan (after the engine's set-up and the catching up that follows it)."""
    p = np.array([t for t, _, _ in live])
    stepped = np.array([n - w for _, n, w in live])
    monotone = bool(np.all(np.diff(stepped) >= 0))
    stepped = np.maximum.accumulate(stepped)
    index = np.arange(1, len(rep.handed_s) + 1)
    k = np.searchsorted(stepped, index, side="left")
    covered = k < len(p)
    lat = p[k[covered]] - rep.handed_s[covered]
    h = rep.handed_s
    second_half = h[covered] >= h[0] + (rep.stop_s - h[0]) / 2

    def stats(x: np.ndarray) -> dict[str, float]:
        return describe(x, unit="s", scale=1.0, missing=float("nan"))

    return {
        "rate_hz": rep.rate_hz,
        "frames": len(rep.handed_s),
        "delivered_hz": rep.delivered_hz,
        "publications": len(p),
        "stepped_monotone": monotone,
        "no_live_estimate": int((~covered).sum()),
        "all": stats(lat),
        "second_half": stats(lat[second_half]),
    }


# -- the three measurements --------------------------------------------------------------------


def measure_callback_cost(n_events: int, tmp: Path) -> list[dict[str, Any]]:
    """Part 1: callback time per event document, 128 x 128 frames, three set-ups."""
    from ptystream.live.pipeline import LivePipeline
    from ptystream.store.publisher import TiledPublisher
    from ptystream.store.server import start_embedded_server

    profile = bench_profile(frame_px=128, n_points=n_events, object_px=900)
    print(f"callback cost: recording a {n_events}-point scan of 128² frames ...", flush=True)
    scan = Scan.record(profile)
    rows = []
    print("callback cost: null sink ...", flush=True)
    for case, rate in (
        ("null sink, back to back", float("inf")),
        ("null sink (parsing only)", CALLBACK_RATE_HZ),
    ):
        rep = replay(PtychoCallback(profile, NullSink()), scan.run(), rate)
        rows.append({"case": case, **cost_stats_us(rep), "delivered_hz": rep.delivered_hz})
    server = start_embedded_server(tmp / "tiled")
    try:
        for case, budget in (
            ("pipeline + Tiled", 1024.0),
            ("pipeline + Tiled, every frame spilled", SPILL_BUDGET_MB),
        ):
            print(f"callback cost: {case} ...", flush=True)
            prof = _harness.profile_with(profile, {"ingest.memory_budget_mb": budget})
            pub = RecordingPublisher(TiledPublisher.from_uri(server.uri))
            pipeline = LivePipeline(prof, pub, spool_dir=tmp / f"spool-{len(rows)}").start()
            try:
                rep = replay(PtychoCallback(prof, pipeline), scan.run(), CALLBACK_RATE_HZ)
                result = pipeline.wait(rep.run_uid, timeout=300)
            finally:
                pipeline.close()
            writes = np.asarray(pub.live_write_s) * 1e3
            into_tiled = latency(rep, pub.live_written[rep.run_uid])
            rows.append(
                {
                    "case": case,
                    **cost_stats_us(rep),
                    "delivered_hz": rep.delivered_hz,
                    "spilled_frames": result.spilled_frames,
                    "status": result.status,
                    "accounting": result.accounting.as_dict(),
                    "live_publications": len(writes),
                    "tiled_live_write_ms_median": float(np.median(writes)) if len(writes) else None,
                    "latency_into_tiled": into_tiled,
                    "backlog_end": judge_rate(rep, pub, result.timings_s["engine_setup"])[
                        "backlog_end"
                    ],
                }
            )
    finally:
        server.close()
    return rows


def run_once(pipeline: Any, callback: Any, run: Run, rate: float) -> tuple[Replay, Any]:
    rep = replay(callback, run, rate)
    result = pipeline.wait(rep.run_uid, timeout=600)
    return rep, result


def measure_rates_and_latency(
    duration_s: float, rates: tuple[float, ...]
) -> tuple[list[dict], int | None, list[dict]]:
    """Parts 2 and 3 (64 x 64 frames): the rate ladder at cadence 1 s, then latency."""
    from ptystream.live.pipeline import LivePipeline

    print("rates: recording the 2000-point scan and the demo's 200-point scan ...", flush=True)
    long_scan = Scan.record(bench_profile(n_points=2000, object_px=440))
    demo_scan = Scan.record(bench_profile())
    ladder: list[dict] = []
    latencies: list[dict] = []
    best = None
    for cadence in (1.0, 0.2):
        profile = bench_profile(cadence_s=cadence)
        pub = RecordingPublisher()
        pipeline = LivePipeline(profile, pub).start()
        callback = PtychoCallback(profile, pipeline)
        try:
            if cadence == 1.0:
                for rate in rates:
                    print(f"rates: {rate} frames/s for {duration_s:g} s ...", flush=True)
                    run = long_scan.run(max(int(rate * duration_s), 50))
                    rep, result = run_once(pipeline, callback, run, rate)
                    row = judge_rate(rep, pub, result.timings_s.get("engine_setup", float("nan")))
                    row["latency"] = latency(rep, pub.live[rep.run_uid])
                    ladder.append(row)
                    print(
                        f"  backlog end {row['backlog_end']}, "
                        f"slope {row['backlog_slope_per_s']:.1f}/s, "
                        f"keeps up: {row['keeps_up']} {row['failed']}",
                        flush=True,
                    )
                    if not row["keeps_up"]:
                        break
                    best = rate
            half = best / 2 if best else None
            for rate, scan in ((DEMO_RATE_HZ, demo_scan), (half, long_scan)):
                if rate is None:
                    continue
                n = len(scan.events) if scan is demo_scan else max(int(rate * duration_s), 50)
                print(f"latency: {rate:g} frames/s, cadence {cadence:g} s ...", flush=True)
                rep, result = run_once(pipeline, callback, scan.run(n), rate)
                lat = latency(rep, pub.live[rep.run_uid])
                judged = judge_rate(rep, pub, result.timings_s.get("engine_setup", float("nan")))
                lat.update(
                    cadence_s=cadence,
                    keeps_up=judged["keeps_up"],
                    backlog_end=judged["backlog_end"],
                    engine_setup_s=judged["engine_setup_s"],
                )
                latencies.append(lat)
        finally:
            pipeline.close()
    return ladder, best, latencies


# -- output ------------------------------------------------------------------------------------


def format_tables(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        f"ptystream live pipeline{' (--quick)' if results['quick'] else ''}: {m['cpu_model']}, "
        f"{m['cpu_count']} CPUs, TF {m['tensorflow']}, {m['date']}, commit "
        f"{m['source']['commit']}, load at start {m['load_average_at_start'][0]:.2f}",
        "",
        f"1. Callback time per event document (128² float32 inline frames, "
        f"{results['callback_events']} events at {CALLBACK_RATE_HZ:g}/s)",
        "case                                      median µs   p99 µs   max µs  >1 ms (in GC)"
        "  full GCs (max ms)  late max ms  spilled  | Tiled: writes  ms/write  latency median s"
        "  p95 s (2nd half)",
    ]
    for r in results["callback_cost"]:
        line = (
            f"{r['case']:<40} {r['median_us']:>10.0f} {r['p99_us']:>8.0f} {r['max_us']:>8.0f} "
            f"{r['over_1ms']:>6} ({r['over_1ms_during_gc']:>4}) {r['gc_full_collections']:>9} "
            f"({r['gc_full_max_ms']:>5.0f}) {r['late_max_ms']:>12.1f} "
            f"{r.get('spilled_frames', '-'):>8}"
        )
        if "latency_into_tiled" in r:
            lat = r["latency_into_tiled"]["second_half"]
            line += (
                f"  | {r['live_publications']:>12} {fmt(r['tiled_live_write_ms_median'], '9.0f')} "
                f"{lat['median_s']:>17.2f} {lat['p95_s']:>6.2f}"
            )
        out.append(line)
    out += [
        "",
        f"2. Rates kept up (64², demo profile, cadence 1 s, final_epochs 0, "
        f"{results['duration_s']:g} s per rate)",
        "rate/s  delivered/s  frames  setup s  B peak  B end  B slope/s  stepped/s (2nd half)"
        "  final s  cb p99 µs  cb max ms  keeps up",
    ]
    for r in results["rates"]:
        verdict = "yes" if r["keeps_up"] else "no: " + ", ".join(r["failed"])
        cb = r["callback"]
        out.append(
            f"{r['rate_hz']:>6.0f} {r['delivered_hz']:>12.0f} {r['frames']:>7} "
            f"{r['engine_setup_s']:>8.2f} {r['backlog_peak']:>7} {r['backlog_end']:>6} "
            f"{r['backlog_slope_per_s']:>10.1f} {r['stepped_hz_second_half']:>21.0f} "
            f"{r['final_delay_s']:>8.2f} {cb['p99_us']:>10.0f} {cb['max_us'] / 1e3:>10.1f}  "
            f"{verdict}"
        )
    out.append(f"highest rate kept up: {results['highest_rate_hz']} frames/s")
    out += [
        "",
        "3. Latency: event handed to the callback -> first live estimate with the frame stepped",
        "rate/s  cadence s  frames  median s  p95 s  | 2nd half: median s  p95 s  | no live est."
        "  keeps up",
    ]
    for r in results["latency"]:
        a, s = r["all"], r["second_half"]
        out.append(
            f"{r['rate_hz']:>6.0f} {r['cadence_s']:>10.1f} {r['frames']:>7} {a['median_s']:>9.2f} "
            f"{a['p95_s']:>6.2f}  | {s['median_s']:>16.2f} {s['p95_s']:>6.2f}  | "
            f"{r['no_live_estimate']:>12}  {'yes' if r['keeps_up'] else 'no'}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = _harness.parser(__doc__, quick="a short smoke run")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate (part 2)")
    args = parser.parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_tables)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    machine = _harness.machine_info()
    t0 = time.perf_counter()
    n_callback = 200 if args.quick else 2000
    duration = 3.0 if args.quick else args.duration
    rates = (100, 800, 6400) if args.quick else RATES_HZ
    with tempfile.TemporaryDirectory(prefix="ptystream-live-bench-") as tmp:
        callback_cost = measure_callback_cost(n_callback, Path(tmp))
    ladder, best, latencies = measure_rates_and_latency(duration, rates)
    results = {
        "quick": args.quick,
        "callback_events": n_callback,
        "callback_rate_hz": CALLBACK_RATE_HZ,
        "duration_s": duration,
        "criteria": {
            "min_delivered_fraction": MIN_DELIVERED,
            "max_backlog_growth_fraction_of_rate": MAX_GROWTH,
            "max_backlog_at_stop_s_of_acquisition": MAX_BEHIND_S,
            "max_final_delay_s": MAX_FINAL_DELAY_S,
        },
        "callback_cost": callback_cost,
        "rates": ladder,
        "highest_rate_hz": best,
        "latency": latencies,
        "total_s": time.perf_counter() - t0,
        "machine": machine,
    }
    return _harness.finish(results, format_tables, _harness.json_path(args, "live_pipeline"))


if __name__ == "__main__":
    sys.exit(main())
