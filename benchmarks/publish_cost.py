"""What live publishing to Tiled costs the reconstruction: optimiser steps per second with and
without a publisher.

The issue's bar: at the default cadence (``publish.cadence_s`` 1 s) the reconstruction must not
slow by more than a few percent.

Method. The real :class:`~ptystream.live.pipeline.LivePipeline` runs each trial: its worker
thread builds the run's engine (``make_engine``, ``warm_up``), adds the frames, steps, and every
``cadence_s`` takes ``engine.estimate()`` and posts it to the pipeline's publisher thread, which
calls ``TiledPublisher.publish_live`` (latest wins: an estimate not yet written when the next
one comes is dropped). The frames are simulated once per case from the profile's ``sim``
section (``ptystream.sim.problems.profile_problem``: ground truth, trajectory, the same detector
model) and handed to the pipeline directly (``open_run``, ``submit`` of every frame,
``close_run``), without a RunEngine: all frames are in the engine before the timed window, so
the worker steps back to back (a step takes a batch of 16 new frames first, then earlier ones;
every step costs the same). The window starts 1 s after the last frame was added and lasts
``--duration`` s (20 s); then the run is closed (``final_epochs`` 0, its final write is not
timed) and the next trial starts on a fresh engine, as a new run would.

Conditions, per case, each with its own pipeline started (TensorFlow imported, step compiled,
``gc.freeze``) before anything is timed:

- **none**: no publisher, no estimates (``cadence_s`` 1e9): the engine's own rate;
- **none, core busy**: the same while a child process spins in ``while True: pass`` (a control:
  what any work on the second core costs the engine, with no GIL or I/O of this process);
- **embedded**, cadence 1 / 0.5 / 0.2 s: the ``SimpleTiledServer`` in a child process
  (``ptystream.store.server.start_server_process``, what ``ptystream demo`` runs);
- **separate**, cadence 1 / 0.5 / 0.2 s: ``tiled serve catalog --temp`` in its own process (a
  SQLite catalog, zarr and DuckDB storage, in-memory streaming cache), as a facility runs it;
- **in-process**, cadence 1 s: the ``SimpleTiledServer`` in this process
  (``ptystream.store.server.start_embedded_server``, what ``ptystream demo`` ran before): its
  request handling runs on a uvicorn thread of this process and competes for the GIL.

(``_servers.start_server`` starts each.)

All servers run throughout (idle when not written to). The conditions are interleaved (one
trial of each, in an order rotated by one per repeat) and repeated ``--repeats`` times (4).

Measured, per trial, over the window: **steps/s** (steps whose call ended in the window, from a
wrapper around the engine); the duration of single steps (median, p99); ``engine.estimate()``
per call on the worker thread (ms) and its share of the window; ``publish_live`` on the
publisher thread (wall ms, median / p95, and the CPU ms of that thread, ``time.thread_time``)
for the publications started in the window; publications done and estimates dropped; CPU
seconds per wall second of this process (engine, publisher client and, when in-process, the
server), of the condition's server process (``/proc/<pid>/stat``) and of everything else on
the machine (``/proc/stat`` minus this process and both server processes: other users' jobs;
the machine is shared), and the CPU time the hypervisor took (steal).

Per condition: the median over repeats of steps/s; the **slowdown**: the median over repeats
of 1 - (steps/s) / (steps/s of *none* in the same repeat), in %; the **within-run slowdown**:
the median of 1 - (steps/s) / (the same run's steps/s while neither an estimate nor a
publication was under way), which is free of the spread between runs (each run has a fresh
engine, and their rates differ by up to ±15 % on the small canvas) but needs such quiet time
(cadence 1 s only) and misses any cost that outlasts a publication; and over the *clean* trials
only (other jobs used < 0.25 CPU in the window): their number, median steps/s and 1 - that
median / the median of the clean *none* trials. ``--report JSON`` prints the tables of a saved
run again.

Before the trials of a case, per server, ``--alone`` (20) publications of an estimate of the
case's size (all frames added, 20 steps) with no reconstruction running, after an untimed first
one (which creates the arrays): the wall time per publication and per HTTP request by kind
(httpx event hooks: request sent -> response headers), the CPU of the publishing thread and the
server's CPU per publication (``/proc/<pid>/stat`` of its process; in-process: this process
minus the publishing thread).

Cases: ``demo`` (the demo profile: 64² frames, 200-point Fermat scan, object canvas 195 x 196
px) and ``large`` (the same with ``sim.object_px`` 800, ``sim.n_points`` 4000: a canvas of
591 x 592 px), both with ``engine.final_epochs`` 0.

Usage::

    flock /tmp/ptystream-bench.lock .venv/bin/python benchmarks/publish_cost.py
        [--quick] [--duration S] [--repeats N] [--cases demo,large] [--alone N] [--no-separate]
        [--no-in-process]
        [--json PATH] [--report JSON]

Prints a table and writes ``benchmarks/results/publish_cost.json`` (every trial). Nothing is
asserted. The separate server's API key is a random one for this run, passed on its command
line (``--api-key``); the server binds 127.0.0.1 and its storage is deleted at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from ptystream.config import Profile  # noqa: E402
from ptystream.sim.problems import Problem, profile_problem  # noqa: E402
from ptystream.types import Estimate, FrameRecord, RunStart, RunStop  # noqa: E402

import _harness  # noqa: E402
from _harness import fmt, machine_busy_s, machine_steal_s, percentile  # noqa: E402
from _servers import Server, start_server  # noqa: E402

#: Simulation overrides of each case (on top of the demo profile).
CASES: dict[str, dict[str, Any]] = {
    "demo": {},
    "large": {"object_px": 800, "n_points": 4000},
}
CADENCES_S = (1.0, 0.5, 0.2)
#: The in-process server (what ``ptystream demo`` ran before) is measured at the default only.
IN_PROCESS_CADENCES_S = (1.0,)
NO_PUBLISHING_CADENCE_S = 1e9
SETTLE_S = 1.0
#: A trial is *clean* when everything else on the machine used fewer CPUs than this.
CLEAN_OTHERS_CPU = 0.25


# -- the simulated scan --------------------------------------------------------------------------


def case_profile(case: str) -> Profile:
    """The demo profile with no final passes and the case's simulated scan."""
    changes = {f"sim.{key}": value for key, value in CASES[case].items()}
    return _harness.profile_with("demo", {"engine.final_epochs": 0, **changes})


def with_cadence(profile: Profile, cadence_s: float) -> Profile:
    return _harness.profile_with(profile, {"publish.cadence_s": cadence_s})


# -- recording wrappers --------------------------------------------------------------------------


class Recorder:
    """What one trial's engine and publisher did, with ``time.perf_counter`` stamps.

    ``steps``: ``(end, n_steps, duration)`` per ``step`` call;
    ``estimates``: ``(start, duration)`` per ``estimate()`` (worker thread); ``publishes``:
    ``(start, duration, publisher thread CPU)`` per live ``publish_live`` call.
    """

    def __init__(self, n_frames: int):
        self.n_frames = n_frames
        self.all_in = threading.Event()
        self.steps: list[tuple[float, int, float]] = []
        self.estimates: list[tuple[float, float]] = []
        self.publishes: list[tuple[float, float, float]] = []
        self.canvas: tuple[int, ...] | None = None


class TimedEngine:
    """Forwards everything to the engine; times ``step`` and ``estimate`` into a recorder."""

    def __init__(self, engine: Any, recorder: Recorder | None):
        self._engine = engine
        self._rec = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def step(self, n_steps: int = 1) -> float:
        t = time.perf_counter()
        loss = self._engine.step(n_steps)
        end = time.perf_counter()
        rec = self._rec
        if rec is not None:
            rec.steps.append((end, n_steps, end - t))
            if not rec.all_in.is_set() and self._engine.n_frames >= rec.n_frames:
                rec.all_in.set()
        return loss

    def estimate(self, *, final: bool = False) -> Estimate:
        t = time.perf_counter()
        est = self._engine.estimate(final=final)
        if self._rec is not None and not final:
            self._rec.estimates.append((t, time.perf_counter() - t))
            self._rec.canvas = est.object.shape
        return est


class TimedPublisher:
    """Forwards to a ``TiledPublisher``; times each live ``publish_live`` (wall and CPU)."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.recorder: Recorder | None = None

    def begin_run(self, start: RunStart, settings: dict[str, Any]) -> str:
        return self._inner.begin_run(start, settings)

    def publish_live(self, run_uid: str, estimate: Estimate, frames: dict | None = None) -> None:
        t, cpu = time.perf_counter(), time.thread_time()
        self._inner.publish_live(run_uid, estimate, frames)
        if self.recorder is not None and not estimate.final:
            self.recorder.publishes.append((t, time.perf_counter() - t, time.thread_time() - cpu))

    def publish_final(self, run_uid: str, estimate: Estimate, status: str, extra: dict) -> None:
        self._inner.publish_final(run_uid, estimate, status, extra)

    def mark(self, run_uid: str, status: str, extra: dict) -> None:
        self._inner.mark(run_uid, status, extra)


class Spinner:
    """A child process spinning in a Python loop: keeps the second core busy with no I/O, no GIL
    of ours and little memory traffic (the control for "the other core is busy")."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])

    def cpu_s(self) -> float:
        return _harness.process_cpu_s(self.proc.pid)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# -- conditions and trials -------------------------------------------------------------------


@dataclass
class Condition:
    """One way of running: a started pipeline, publishing (or not) at a cadence."""

    name: str
    server: str  # none, busy (a spinning process), embedded, separate, in-process
    cadence_s: float | None
    pipeline: Any = None
    publisher: TimedPublisher | None = None
    recorder: Recorder | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)

    def start(self, profile: Profile, client: Any, spool_dir: Path) -> None:
        from ptystream.engine import EngineSetup, make_engine
        from ptystream.live.pipeline import LivePipeline
        from ptystream.store.publisher import TiledPublisher

        if client is not None:
            self.publisher = TimedPublisher(TiledPublisher(client))
        cadence = self.cadence_s if self.cadence_s is not None else NO_PUBLISHING_CADENCE_S

        def factory(setup: EngineSetup) -> TimedEngine:
            return TimedEngine(make_engine(setup), self.recorder)

        self.pipeline = LivePipeline(
            with_cadence(profile, cadence),
            self.publisher,
            spool_dir=spool_dir,
            engine_factory=factory,
        ).start()


def run_trial(
    cond: Condition,
    scan: Problem,
    profile: Profile,
    duration_s: float,
    servers: dict[str, Any],
) -> dict[str, Any]:
    """One run on ``cond``'s pipeline: all frames in, then ``duration_s`` of stepping timed.

    ``servers``: the server processes by placement (``cpu_s()``), all subtracted from the
    machine's CPU for *other jobs*; the condition's own one is reported as its server's CPU."""
    rec = Recorder(len(scan.frames))
    cond.recorder = rec
    if cond.publisher is not None:
        cond.publisher.recorder = rec
    uid = str(uuid.uuid4())
    pipeline = cond.pipeline
    pipeline.open_run(RunStart(uid, scan.geometry, scan.plan, profile=profile.name))
    for i, (frame, pos) in enumerate(zip(scan.frames, scan.positions_m, strict=True)):
        pipeline.submit(FrameRecord(uid, i + 1, frame, (float(pos[0]), float(pos[1]))))
    if not rec.all_in.wait(300):
        raise TimeoutError(f"{cond.name}: frames not in the engine after 300 s")
    spinner = Spinner() if cond.server == "busy" else None
    time.sleep(SETTLE_S)
    load = os.getloadavg()[0]
    srv0 = {name: server.cpu_s() for name, server in servers.items()}
    spin0 = spinner.cpu_s() if spinner is not None else 0.0
    steal0 = machine_steal_s()
    t0, cpu0, busy0 = time.perf_counter(), time.process_time(), machine_busy_s()
    time.sleep(duration_s)
    t1, cpu1, busy1 = time.perf_counter(), time.process_time(), machine_busy_s()
    steal1 = machine_steal_s()
    srv_cpu = {name: server.cpu_s() - srv0[name] for name, server in servers.items()}
    spin_cpu = 0.0
    if spinner is not None:
        spin_cpu = spinner.cpu_s() - spin0
        spinner.close()
    pipeline.close_run(RunStop(uid, "success"))
    result = pipeline.wait(uid, timeout=300)
    cond.recorder = None

    steps = [s for s in rec.steps if t0 < s[0] <= t1]
    n_steps = sum(n for _, n, _ in steps)
    single = [d * 1e3 for _, n, d in steps if n == 1]
    est_ms = [d * 1e3 for t, d in rec.estimates if t0 < t <= t1]
    pubs = [(d * 1e3, c * 1e3) for t, d, c in rec.publishes if t0 < t <= t1]
    # Steps while a publish_live was in flight against steps while none was.
    busy = [(max(t, t0), min(t + d, t1)) for t, d, _ in rec.publishes if t < t1 and t + d > t0]
    busy_s = sum(b - a for a, b in busy)
    ends = np.array([e for e, _, _ in steps])
    in_pub = np.zeros(len(ends), bool)
    for a, b in busy:
        in_pub |= (ends > a) & (ends <= b)
    n_in = sum(n for (_, n, _), inside in zip(steps, in_pub, strict=True) if inside)
    free_s = (t1 - t0) - busy_s
    pub_ms = [d for d, _ in pubs]
    # The same run's rate while neither an estimate nor a publication was under way: the
    # reference for a within-run slowdown (free of the engine-to-engine spread between runs).
    est_free_s = sum(
        d for t, d in rec.estimates if t0 < t <= t1 and not any(a < t <= b for a, b in busy)
    )
    quiet_s = free_s - est_free_s
    quiet_rate = (n_steps - n_in) / quiet_s if quiet_s > 2.0 else None
    return {
        "condition": cond.name,
        "run_uid": uid,
        "status": result.status,
        "window_s": t1 - t0,
        "steps": n_steps,
        "steps_per_s": n_steps / (t1 - t0),
        "publishing_fraction": busy_s / (t1 - t0),
        "steps_per_s_during_publish": n_in / busy_s if busy_s > 0.5 else None,
        "steps_per_s_between_publishes": (n_steps - n_in) / free_s if free_s > 0.5 else None,
        "steps_per_s_quiet": quiet_rate,
        "within_run_slowdown": 1 - n_steps / (t1 - t0) / quiet_rate if quiet_rate else None,
        "step_ms_median": percentile(single, 50),
        "step_ms_p99": percentile(single, 99),
        "estimates": len(est_ms),
        "estimate_ms_median": percentile(est_ms, 50),
        "estimate_ms_max": max(est_ms) if est_ms else float("nan"),
        "estimate_share": sum(est_ms) / 1e3 / (t1 - t0),
        "publishes": len(pubs),
        "dropped": max(0, len(est_ms) - len(pubs)),
        "publish_ms": pub_ms,
        "publish_ms_median": percentile(pub_ms, 50),
        "publish_ms_p95": percentile(pub_ms, 95),
        "publish_cpu_ms_median": percentile([c for _, c in pubs], 50),
        "process_cpu_per_wall": (cpu1 - cpu0) / (t1 - t0),
        "server_cpu_per_wall": srv_cpu[cond.server] / (t1 - t0) if cond.server in srv_cpu else None,
        "machine_busy_cpus": (busy1 - busy0) / (t1 - t0),
        "steal_cpus": (steal1 - steal0) / (t1 - t0),
        "spinner_cpu_per_wall": spin_cpu / (t1 - t0) if spinner is not None else None,
        "other_cpu_per_wall": (busy1 - busy0 - (cpu1 - cpu0) - sum(srv_cpu.values()) - spin_cpu)
        / (t1 - t0),
        "load_average_1min": load,
        "canvas": list(rec.canvas) if rec.canvas else None,
    }


def condition_of(trial: dict[str, Any]) -> tuple[str, float | None]:
    """The server placement and cadence of a trial (from its condition's name)."""
    name = trial["condition"]
    if name.startswith(("embedded", "separate", "in-process")):
        server, cadence = name.split()[:2]
        return server, float(cadence)
    return ("busy" if "busy" in name else "none"), None


def summarise(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per condition (in order of appearance): medians over repeats, the slowdown against
    *none* of the same repeat, and the same over the clean trials only (the other jobs on the
    machine used < ``CLEAN_OTHERS_CPU`` CPUs during the window)."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        by_name.setdefault(t["condition"], []).append(t)
    base = {t["repeat"]: t["steps_per_s"] for t in by_name["none"]}
    clean_base = [t["steps_per_s"] for t in by_name["none"] if is_clean(t)]
    rows = []
    for name, trials in by_name.items():
        server, cadence = condition_of(trials[0])
        rate = [t["steps_per_s"] for t in trials]
        slow = [100 * (1 - t["steps_per_s"] / base[t["repeat"]]) for t in trials]
        clean = [t["steps_per_s"] for t in trials if is_clean(t)]
        pub_ms = [ms for t in trials for ms in t["publish_ms"]]

        def med(key: str, trials: list[dict[str, Any]] = trials) -> float | None:
            vals = [t[key] for t in trials if t.get(key) is not None]
            return float(np.median(vals)) if vals else None

        rows.append(
            {
                "condition": name,
                "server": server,
                "cadence_s": cadence,
                "repeats": len(trials),
                "steps_per_s_median": float(np.median(rate)),
                "steps_per_s_all": rate,
                "slowdown_pct_median": float(np.median(slow)),
                "slowdown_pct_all": slow,
                "clean_trials": len(clean),
                "clean_steps_per_s_median": float(np.median(clean)) if clean else None,
                "clean_slowdown_pct": 100 * (1 - np.median(clean) / np.median(clean_base))
                if clean and clean_base
                else None,
                "within_run_slowdown_pct": 100 * w
                if (w := med("within_run_slowdown")) is not None
                else None,
                "within_run_slowdown_pct_all": [
                    100 * t["within_run_slowdown"]
                    for t in trials
                    if t.get("within_run_slowdown") is not None
                ],
                "estimate_ms_median": med("estimate_ms_median"),
                "estimate_share_pct": 100 * (med("estimate_share") or 0.0),
                "publish_ms_median": percentile(pub_ms, 50),
                "publish_ms_p95": percentile(pub_ms, 95),
                "publish_cpu_ms_median": med("publish_cpu_ms_median"),
                "publishes_per_trial": med("publishes"),
                "dropped_per_trial": med("dropped"),
                "publishing_fraction": med("publishing_fraction"),
                "steps_per_s_during_publish": med("steps_per_s_during_publish"),
                "steps_per_s_between_publishes": med("steps_per_s_between_publishes"),
                "step_ms_median": med("step_ms_median"),
                "step_ms_p99": med("step_ms_p99"),
                "process_cpu_per_wall": med("process_cpu_per_wall"),
                "server_cpu_per_wall": med("server_cpu_per_wall"),
                "spinner_cpu_per_wall": med("spinner_cpu_per_wall"),
                "other_cpu_per_wall": med("other_cpu_per_wall"),
                "steal_cpus": med("steal_cpus"),
            }
        )
    return rows


def is_clean(trial: dict[str, Any]) -> bool:
    return trial["other_cpu_per_wall"] < CLEAN_OTHERS_CPU


REQUEST_KINDS = (
    ("/array/full/", "array"),
    ("/table/partition/", "loss rows"),
    ("/metadata/", "metadata"),
)


def request_kind(path: str) -> str:
    return next((kind for part, kind in REQUEST_KINDS if part in path), "other")


def sample_estimate(scan: Problem, profile: Profile) -> Estimate:
    """An estimate of the case's size: all frames added, a few steps."""
    from ptystream.engine import EngineSetup, make_engine

    setup = EngineSetup.from_profile(profile, geometry=scan.geometry, plan=scan.plan)
    engine = make_engine(setup)
    engine.add_frames(scan.frames, scan.positions_m)
    engine.step(20)
    return engine.estimate()


def measure_requests(client: Any, estimate: Estimate, server: Any, n: int) -> dict[str, Any]:
    """``n`` publications of ``estimate`` (10 new loss rows each, after an untimed first one)
    with nothing else running: the wall time of each HTTP request by kind (request sent ->
    response headers, httpx event hooks), the CPU of the calling thread and of the server per
    publication (``server.cpu_s()``; ``server`` None: in this process, this process minus the
    calling thread)."""
    import dataclasses

    from ptystream.store.publisher import TiledPublisher

    pub = TiledPublisher(client)
    uid = str(uuid.uuid4())
    pub.create_run(uid, {"plan": {"n_points": estimate.n_frames}})
    pub.publish_live(uid, estimate)  # untimed: the first one creates the arrays (14 requests)
    started: dict[int, float] = {}
    requests: list[tuple[str, float]] = []

    def on_request(request: Any) -> None:
        started[id(request)] = time.perf_counter()

    def on_response(response: Any) -> None:
        t = started.pop(id(response.request), None)
        if t is not None:
            requests.append((request_kind(response.request.url.path), time.perf_counter() - t))

    hooks = client.context.http_client.event_hooks
    hooks["request"].append(on_request)
    hooks["response"].append(on_response)
    walls, client_cpu, server_cpu, per_kind = [], [], [], defaultdict(list)
    try:
        for i in range(n):
            first = estimate.iteration + 1 + 10 * i
            rows = np.column_stack([np.arange(first, first + 10), np.full(10, 0.5)])
            est = dataclasses.replace(estimate, iteration=first + 9, loss=rows)
            del requests[:]
            srv = server.cpu_s() if server is not None else None
            t, cpu, proc = time.perf_counter(), time.thread_time(), time.process_time()
            pub.publish_live(uid, est)
            walls.append(time.perf_counter() - t)
            client_cpu.append(time.thread_time() - cpu)
            if server is not None:
                server_cpu.append(server.cpu_s() - srv)
            else:
                server_cpu.append(time.process_time() - proc - client_cpu[-1])
            for kind, dt in requests:
                per_kind[kind].append(dt * 1e3)
    finally:
        hooks["request"].remove(on_request)
        hooks["response"].remove(on_response)
    return {
        "publications": n,
        "wall_ms_median": float(np.median(walls) * 1e3),
        "requests_per_publication": sum(len(v) for v in per_kind.values()) / n,
        "request_ms_median": {k: float(np.median(v)) for k, v in per_kind.items()},
        "client_cpu_ms_median": float(np.median(client_cpu) * 1e3),
        "server_cpu_ms_median": float(np.median(server_cpu) * 1e3),
        "array_bytes": 2 * 4 * (estimate.object.size + estimate.probe.shape[-1] ** 2),
    }


def measure_case(
    case: str,
    args: argparse.Namespace,
    clients: dict[str, Any],
    servers: dict[str, Any],
    tmp: Path,
) -> dict[str, Any]:
    """``clients``: a tiled client per placement (embedded, separate, in-process); ``servers``:
    the server processes by placement (``cpu_s()``)."""
    profile = case_profile(case)
    print(f"{case}: simulating {profile.sim.n_points} frames ...", flush=True)
    scan = profile_problem(profile)
    conds = [Condition("none", "none", None), Condition("none, core busy", "busy", None)]
    for placement in clients:
        cadences = IN_PROCESS_CADENCES_S if placement == "in-process" else CADENCES_S
        conds += [Condition(f"{placement} {c:g} s", placement, c) for c in cadences]
    print(f"{case}: starting {len(conds)} pipelines ...", flush=True)
    for i, cond in enumerate(conds):
        cond.start(profile, clients.get(cond.server), tmp / f"spool-{case}-{i}")
    alone = {}
    try:
        estimate = sample_estimate(scan, profile)
        for placement, client in clients.items():
            print(f"{case}: publish_live alone, {placement} ...", flush=True)
            server = servers.get(placement)
            alone[placement] = measure_requests(client, estimate, server, args.alone)
        for r in range(args.repeats):
            order = conds[r % len(conds) :] + conds[: r % len(conds)]
            for cond in order:
                trial = run_trial(cond, scan, profile, args.duration, servers)
                trial["repeat"] = r
                cond.trials.append(trial)
                print(
                    f"  repeat {r} {cond.name:<16} {trial['steps_per_s']:7.1f} steps/s  "
                    f"cpu/s: this {trial['process_cpu_per_wall']:.2f} server "
                    f"{trial['server_cpu_per_wall'] or 0:.2f} others "
                    f"{trial['other_cpu_per_wall']:.2f}  "
                    f"estimate {trial['estimate_ms_median']:.1f} ms x {trial['estimates']}  "
                    f"publish {trial['publish_ms_median']:.0f} ms x {trial['publishes']}",
                    flush=True,
                )
    finally:
        for cond in conds:
            cond.pipeline.close()
    trials = sorted((t for c in conds for t in c.trials), key=lambda t: t["repeat"])
    canvas = next((t["canvas"] for t in trials if t["canvas"]), None)
    return {
        "case": case,
        "sim": profile.sim.model_dump(mode="json"),
        "frames": len(scan.frames),
        "frame_px": profile.instrument.frame_px,
        "canvas": canvas,
        "publish_alone": alone,
        "summary": summarise(trials),
        "trials": trials,
    }


# -- output --------------------------------------------------------------------------------------


def format_tables(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        f"ptystream publish cost{' (--quick)' if results['quick'] else ''}: {m['cpu_model']}, "
        f"{m['cpu_count']} CPUs, TF {m['tensorflow']}, {m['date']}, commit "
        f"{m['source']['commit']}, load at start {m['load_average_at_start'][0]:.2f}; "
        f"{results['repeats']} x {results['duration_s']:g} s per condition",
    ]
    for case in results["cases"]:
        canvas = "x".join(map(str, case["canvas"] or []))
        out += [
            "",
            f"{case['case']}: {case['frames']} frames of {case['frame_px']}², canvas {canvas} px",
            "condition          steps/s  (each repeat)        slowdown %  within-run %"
            "  | clean: n  steps/s  slowdown %  | estimate ms (% of time)"
            "  publish_live ms med / p95  publishes  dropped",
        ]
        for r in case["summary"]:
            each = " / ".join(f"{v:.1f}" for v in r["steps_per_s_all"])
            out.append(
                f"{r['condition']:<17} {r['steps_per_s_median']:>7.1f}  ({each:<21}) "
                f"{r['slowdown_pct_median']:>8.1f}   "
                f"{fmt(r.get('within_run_slowdown_pct'), '12.1f')}"
                f"  | {r['clean_trials']:>7}  "
                f"{fmt(r['clean_steps_per_s_median'], '7.1f')}  "
                f"{fmt(r['clean_slowdown_pct'], '10.1f')}  | "
                f"{fmt(r['estimate_ms_median'], '11.1f')} "
                f"({r['estimate_share_pct']:>4.1f})        "
                f"{fmt(r['publish_ms_median'], '6.0f')} / {fmt(r['publish_ms_p95'], '5.0f')}"
                f"  {fmt(r['publishes_per_trial'], '9.0f')} {fmt(r['dropped_per_trial'], '8.0f')}"
            )
        if case.get("publish_alone"):
            out += [
                "  publish_live alone (no reconstruction running), medians:",
                "  server     ms / publication  requests  array ms (each)  loss rows ms"
                "  metadata ms  publisher CPU ms  server CPU ms",
            ]
            for placement, a in case["publish_alone"].items():
                ms = a["request_ms_median"]
                out.append(
                    f"  {placement:<10} {a['wall_ms_median']:>16.0f} "
                    f"{a['requests_per_publication']:>9.0f} {fmt(ms.get('array'), '16.0f')} "
                    f"{fmt(ms.get('loss rows'), '13.0f')} {fmt(ms.get('metadata'), '12.0f')} "
                    f"{a['client_cpu_ms_median']:>17.0f} {a['server_cpu_ms_median']:>14.0f}"
                )
        out += [
            "  where the time goes:",
            "  condition          in flight %  steps/s in publish / between  step ms med / p99"
            "  publisher CPU ms  CPUs: this / 2nd proc / others  steal",
        ]
        for r in case["summary"]:
            second = r["spinner_cpu_per_wall"] if r["server"] == "busy" else None
            if r["server"] in ("embedded", "separate"):
                second = r["server_cpu_per_wall"]
            frac = r["publishing_fraction"]
            out.append(
                f"  {r['condition']:<17} {fmt(frac * 100 if frac is not None else None, '11.0f')}"
                f"  {fmt(r['steps_per_s_during_publish'], '17.1f')} / "
                f"{fmt(r['steps_per_s_between_publishes'], '7.1f')}  "
                f"{fmt(r['step_ms_median'], '11.1f')} / {fmt(r['step_ms_p99'], '4.1f')}  "
                f"{fmt(r['publish_cpu_ms_median'], '16.0f')}  "
                f"{fmt(r['process_cpu_per_wall'], '10.2f')} / {fmt(second, '8.2f')} / "
                f"{fmt(r['other_cpu_per_wall'], '.2f')}  {fmt(r.get('steal_cpus'), '5.2f')}"
            )
    return "\n".join(out)


def format_report(results: dict[str, Any]) -> str:
    """``--report``: the tables of a saved run, its summaries recomputed from its trials."""
    for case in results["cases"]:
        case["summary"] = summarise(case["trials"])
    return format_tables(results)


def main(argv: list[str] | None = None) -> int:
    parser = _harness.parser(__doc__, quick="a short smoke run (4 s trials, 1 repeat)")
    parser.add_argument("--duration", type=float, default=20.0, help="timed seconds per trial")
    parser.add_argument("--repeats", type=int, default=4, help="trials per condition")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument(
        "--alone", type=int, default=20, help="publications timed with nothing else running"
    )
    parser.add_argument(
        "--no-separate", action="store_true", help="skip the separate-process server"
    )
    parser.add_argument(
        "--no-in-process", action="store_true", help="skip the server in this process"
    )
    args = parser.parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_report)
    if args.quick:
        args.duration, args.repeats, args.alone = 4.0, 1, 5
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    machine = _harness.machine_info()
    t_start = time.perf_counter()
    placements = ["embedded"]
    placements += [] if args.no_separate else ["separate"]
    placements += [] if args.no_in_process else ["in-process"]
    cases = []
    started: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="ptystream-publish-cost-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            for placement in placements:
                print(f"starting the {placement} server ...", flush=True)
                started.append(start_server(placement, tmp / placement))
            clients = {s.placement: s.connect() for s in started}
            # the server processes (the in-process server's CPU is this process's)
            servers = {s.placement: s for s in started if s.pid is not None}
            for case in args.cases.split(","):
                cases.append(measure_case(case, args, clients, servers, tmp))
        finally:
            for server in started:
                server.close()
    results = {
        "quick": args.quick,
        "duration_s": args.duration,
        "repeats": args.repeats,
        "settle_s": SETTLE_S,
        "cases": cases,
        "total_s": time.perf_counter() - t_start,
        "machine": machine,
    }
    return _harness.finish(results, format_tables, _harness.json_path(args, "publish_cost"))


if __name__ == "__main__":
    sys.exit(main())
