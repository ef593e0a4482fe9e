"""The delay from a live estimate handed to ``publish_live`` to its images drawn in a browser.

Method. A real live reconstruction runs as in ``ptystream demo``: a RunEngine (on a background
thread) scans the demo profile's simulated beamline (200 points, 0.1 s exposures, about 25 s),
``PtychoCallback`` feeds a ``LivePipeline`` (the demo profile: cadence 1 s, 40 final passes),
whose publisher thread writes through a ``TiledPublisher``; bluesky's ``TiledWriter`` writes the
raw documents to the same server on a thread of its own, as the demo does. The control-room page
(``ptystream.dashboard``) is open in Debian's chromium, driven by Playwright (headless, 1920 x
1080, the launch arguments of ``tests/test_dashboard.py``), following the newest run over
Tiled's websockets.

The publisher is wrapped: for every call it notes ``time.time()`` just before
``publish_live`` (*handed*) and just after it returns (*written*), with the run's publication
count (the ``sequence`` the call writes into ``live/``'s metadata, from 1) and the iteration.
The final result (``publish_final``, which rewrites ``live/`` too) is noted the same way and
reported apart. The page is not polled: an init script wraps ``window.ptystream`` in a Proxy, so
each time the page sets ``renderedAt`` (``Date.now()`` once the four canvases are drawn) it
calls a function exposed with ``page.expose_function`` with the run key, sequence, iteration
and ``renderedAt``. With it go the Resource Timing entries of that render's array fetches
(``performance.timeOrigin`` + ``startTime`` / ``responseEnd``, buffer cleared after each render)
and, from a second call, the time of the next animation frame (``paintedAt``: the canvases are
on screen). Browser and Python read the same wall clock (one machine).

Measured, per publication the page rendered (matched on run key and sequence, the iteration
checked): **delay** = renderedAt - handed; split into ``publish_live`` (written - handed) and
written -> rendered, which is split again into written -> first array fetch started (Tiled's
websocket event through the dashboard's proxy to the page, which then asks for the arrays;
negative when the page starts before ``publish_live`` has returned: ``live/``'s metadata is its
last request), the fetch (four float32 arrays and the loss rows, through the proxy) and fetch
end -> rendered (decoding and drawing). Median, 95th percentile (numpy's linear interpolation),
max. Also how long each estimate waited between being taken (``engine.estimate()`` on the
worker thread, noted by a wrapper around the engine) and being handed to ``publish_live`` (the
previous publication still in flight), and so the **age** of the drawn estimate (taken ->
rendered). Publications the page never drew (it draws the newest estimate when it is free, so
one arriving while it still draws the previous one is skipped) are counted. Each run's first
publication includes the page switching to the new run and is also reported on its own.

The machine (2 cores) is shared with other users' jobs. About once a second the CPU time of
this process, the Tiled server's process and the separate dashboard, the browser (chromium and
Playwright's driver, from ``/proc``) and the whole machine (``/proc/stat``) is sampled; *other
jobs* is the machine's minus those. Per publication, other jobs' CPUs over the samples spanning
handed -> rendered are noted, and the delays are also given over the *clean* publications (other
jobs < 0.25 CPU).

Placements:

- **embedded**: ``SimpleTiledServer`` in a child process
  (``ptystream.store.server.start_server_process``) and the dashboard in the reconstruction's
  process (what ``ptystream demo`` runs);
- **separate**: ``tiled serve catalog --temp`` and ``ptystream dashboard`` each in their own
  process (a facility's layout; the key reaches the dashboard in ``TILED_API_KEY``);
- **in-process**: ``SimpleTiledServer`` and the dashboard both in the reconstruction's process
  (``start_embedded_server``: what ``ptystream demo`` ran before).

The servers are started by ``_servers.start_server``.

Also recorded: publications that failed (the exception), HTTP 500s in the Tiled server's log,
the raw writer's errors, and every warning logged in this process. Results are written after
each placement; a server that does not stop within 60 s when closed is left behind (noted, and
the script then ends with ``os._exit``).

Each placement first runs one short scan (40 points, not measured): TensorFlow traces, the page
loads and subscribes. Then ``--runs`` (2) scans are measured.

Usage::

    flock /tmp/ptystream-bench.lock .venv/bin/python benchmarks/dashboard_delay.py
        [--quick] [--runs N] [--placements embedded,separate,in-process] [--json PATH]
        [--report JSON]

Prints a table and writes ``benchmarks/results/dashboard_delay.json`` (every publication;
``--quick``: ``dashboard_delay_quick.json``).
Nothing is asserted. Needs Playwright and ``/usr/bin/chromium`` (``make browser``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from ptystream.config import Profile  # noqa: E402
from ptystream.store.server import stop_child  # noqa: E402
from ptystream.types import Estimate, RunStart  # noqa: E402

import _harness  # noqa: E402
from _harness import describe, fmt  # noqa: E402
from _servers import BIN, Server, free_port, start_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WARM_UP_POINTS = 40
#: A publication is *clean* when other jobs used fewer CPUs than this while it was under way.
CLEAN_OTHERS_CPU = 0.25
#: After the last scan, how long to wait for the page to draw the last publications.
DRAIN_S = 15.0

#: Runs in the page before its own script: reports every render (see the module docstring).
INIT_SCRIPT = """
(() => {
  performance.setResourceTimingBufferSize(100000);
  let target;
  const report = (p) => {
    const entries = performance.getEntriesByType("resource");
    performance.clearResourceTimings();
    const arrays = entries.filter((e) => e.name.includes("/array/full/"));
    const origin = performance.timeOrigin;
    const rec = {
      runKey: p.runKey, sequence: p.sequence, iteration: p.iteration, renderedAt: p.renderedAt,
      renders: p.renders, arrays: arrays.length,
      fetchStart: arrays.length ? origin + Math.min(...arrays.map((e) => e.startTime)) : null,
      fetchEnd: arrays.length ? origin + Math.max(...arrays.map((e) => e.responseEnd)) : null,
    };
    window.__ptyRendered(rec);
    requestAnimationFrame(() => window.__ptyPainted(p.runKey, p.sequence, Date.now()));
  };
  Object.defineProperty(window, "ptystream", {
    configurable: true,
    get() { return target; },
    set(value) {
      target = new Proxy(value, {
        set(obj, prop, v) {
          obj[prop] = v;
          if (prop === "renderedAt") report(obj);
          return true;
        },
      });
    },
  });
})();
"""


def bench_profile(n_points: int | None = None) -> Profile:
    """The demo profile, with ``n_points`` scan points if given."""
    return _harness.profile_with("demo", {} if n_points is None else {"sim.n_points": n_points})


def browser_cpu_s() -> dict[int, float]:
    """CPU seconds so far of each live process descending from this one whose name is
    chromium's or Playwright's driver (node), by pid."""
    tck = os.sysconf("SC_CLK_TCK")
    parent, cpu, name = {}, {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        pid = int(d.name)
        name[pid] = text[text.index("(") + 1 : text.rindex(")")]
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tck

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return {
        pid: t for pid, t in cpu.items() if name[pid].startswith(("chrom", "node")) and ours(pid)
    }


class EstimateTimes:
    """Wraps an engine: notes ``time.time()`` when each live estimate is taken, by iteration."""

    def __init__(self, engine: Any, taken: dict[int, float]):
        self._engine = engine
        self._taken = taken

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def estimate(self, *, final: bool = False) -> Estimate:
        t = time.time()
        est = self._engine.estimate(final=final)
        self._taken[est.iteration] = t  # the latest: iterations restart with each run
        return est


class DelayPublisher:
    """Forwards to a ``TiledPublisher``; notes the wall time around every publication."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.taken: dict[int, float] = {}  # estimate taken (worker thread), by iteration
        self._keys: dict[str, str] = {}
        self._sequence: dict[str, int] = defaultdict(int)
        self.records: list[dict[str, Any]] = []

    def begin_run(self, start: RunStart, settings: dict[str, Any]) -> str:
        path = self._inner.begin_run(start, settings)
        self._keys[start.run_uid] = path.rsplit("/", 1)[-1]
        return path

    def _timed(self, run_uid: str, estimate: Estimate, final: bool, write: Any) -> None:
        handed = time.time()
        error = None
        try:
            write()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            raise
        finally:
            # The sequence live/ now carries: the publisher's own count (it counts a publication
            # whose metadata write failed too), else ours.
            nodes = getattr(self._inner, "_runs", {}).get(run_uid)
            if error is None:
                self._sequence[run_uid] += 1
            sequence = getattr(nodes, "sequence", self._sequence[run_uid])
            self.records.append(
                {
                    "run_key": self._keys[run_uid],
                    "sequence": sequence,
                    "iteration": estimate.iteration,
                    "final": final,
                    "taken": self.taken.get(estimate.iteration),
                    "handed": handed,
                    "written": time.time(),
                    "error": error,
                }
            )

    def publish_live(self, run_uid: str, estimate: Estimate, frames: dict | None = None) -> None:
        self._timed(
            run_uid, estimate, False, lambda: self._inner.publish_live(run_uid, estimate, frames)
        )

    def publish_final(self, run_uid: str, estimate: Estimate, status: str, extra: dict) -> None:
        self._timed(
            run_uid,
            estimate,
            True,
            lambda: self._inner.publish_final(run_uid, estimate, status, extra),
        )

    def mark(self, run_uid: str, status: str, extra: dict) -> None:
        self._inner.mark(run_uid, status, extra)


class Page:
    """Chromium with the dashboard open; collects every render the page reports."""

    def __init__(self, url: str):
        from playwright.sync_api import sync_playwright

        self.renders: list[dict[str, Any]] = []
        self.painted: dict[tuple[str, int], float] = {}
        self.errors: list[str] = []
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.page = self._browser.new_page(viewport={"width": 1920, "height": 1080})
        self.page.expose_function("__ptyRendered", self._rendered)
        self.page.expose_function("__ptyPainted", self._painted)
        self.page.add_init_script(INIT_SCRIPT)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(url)

    def _rendered(self, record: dict[str, Any]) -> None:
        self.renders.append(record)

    def _painted(self, run_key: str, sequence: int, at: float) -> None:
        self.painted[(run_key, sequence)] = at

    def pump(self, seconds: float) -> None:
        """Let Playwright deliver the page's calls for ``seconds`` (the main thread waits)."""
        self.page.wait_for_timeout(seconds * 1e3)

    def connection(self) -> str | None:
        return self.page.locator("#conn").get_attribute("data-mode")

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


class Dashboard:
    """The dashboard in this process (``start_dashboard``) or as ``ptystream dashboard``."""

    def __init__(self, uri: str, api_key: str, separate: bool, log: Path):
        self.proc = None
        if not separate:
            from ptystream.dashboard import start_dashboard

            self._inproc = start_dashboard(uri, api_key=api_key, port=0)
            self.url = self._inproc.url
            return
        port = free_port()
        env = {**os.environ, "TILED_API_KEY": api_key}
        self._log = open(log, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [str(BIN / "ptystream"), "dashboard", "--tiled", uri, "--port", str(port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while "dashboard at" not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ptystream dashboard did not start:\n{log.read_text()}")
            time.sleep(0.2)

    def cpu_s(self) -> float | None:
        return _harness.process_cpu_s(self.proc.pid) if self.proc is not None else None

    def close(self) -> None:
        if self.proc is None:
            self._inproc.close()
            return
        stop_child(self.proc)
        self._log.close()


class CpuSampler:
    """CPU seconds so far of this process, the server process and dashboard, the browser and
    the whole machine, with ``time.time()``, each time :meth:`sample` is called."""

    def __init__(self, server: Server, dashboard: Dashboard):
        self._server = server
        self._dashboard = dashboard
        self._browser_seen: dict[int, float] = {}
        self._browser = 0.0
        self.samples: list[dict[str, float]] = []
        self.sample()

    def sample(self) -> None:
        for pid, t in browser_cpu_s().items():  # processes may come and go: sum increments
            self._browser += max(0.0, t - self._browser_seen.get(pid, 0.0))
            self._browser_seen[pid] = t
        self.samples.append(
            {
                "t": time.time(),
                "machine": _harness.machine_busy_s(),
                "this_process": time.process_time(),
                "tiled_server": self._server.cpu_s() or 0.0,
                "dashboard": self._dashboard.cpu_s() or 0.0,
                "browser": self._browser,
            }
        )

    def per_wall(self, i: int, j: int) -> dict[str, float]:
        """CPUs used between samples ``i`` and ``j`` (CPU seconds per wall second)."""
        a, b = self.samples[i], self.samples[j]
        dt = b["t"] - a["t"]
        out = {k: (b[k] - a[k]) / dt for k in a if k != "t"}
        out["others"] = out["machine"] - sum(v for k, v in out.items() if k != "machine")
        return out

    def others_between(self, t0: float, t1: float) -> float | None:
        """Other jobs' CPUs over the samples spanning ``t0`` .. ``t1``."""
        times = np.array([s["t"] for s in self.samples])
        i = int(np.searchsorted(times, t0, side="right")) - 1
        j = int(np.searchsorted(times, t1, side="left"))
        if i < 0 or j >= len(times) or j <= i:
            return None
        return self.per_wall(i, j)["others"]


class LogRecords(logging.Handler):
    """Keeps the first line of every warning or error logged in this process (Tiled's client
    retries, bluesky's TiledWriter, the dashboard's proxy, ...)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        first = record.getMessage().splitlines()[0] if record.getMessage() else ""
        self.lines.append(f"{record.levelname} {record.name}: {first[:300]}")


def close_within(close: Any, timeout_s: float, what: str, stuck: list[str]) -> None:
    """``close()`` on a daemon thread; if it has not returned after ``timeout_s``, note ``what``
    in ``stuck`` and go on."""
    thread = threading.Thread(target=close, daemon=True, name=f"close {what}")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        print(f"WARNING: closing {what} did not finish within {timeout_s:g} s", flush=True)
        stuck.append(what)


def run_scans(RE: Any, plans: list[Any], uids: list[str], pipeline: Any) -> None:
    """On a background thread: each plan in turn, waiting for its final result."""
    for plan in plans:
        (uid,) = RE(plan)
        uids.append(uid)
        pipeline.wait(uid, timeout=600)


def measure_placement(
    placement: str, profile: Profile, n_runs: int, tmp: Path, stuck: list[str]
) -> dict[str, Any]:
    """One placement: servers, pipeline, page; a warm-up scan, then ``n_runs`` measured."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from ptystream.engine import make_engine
    from ptystream.live.background import BackgroundCallback
    from ptystream.live.callback import PtychoCallback
    from ptystream.live.pipeline import LivePipeline
    from ptystream.sim.scan import build_simulation
    from ptystream.store.layout import raw_catalog
    from ptystream.store.publisher import TiledPublisher

    work = tmp / placement
    work.mkdir()
    separate = placement == "separate"
    print(f"{placement}: starting the Tiled server ...", flush=True)
    server = start_server(placement, work / "tiled")
    uri, key = server.uri, server.api_key
    dashboard = page = pipeline = raw_writer = None
    logged = LogRecords()
    logging.getLogger().addHandler(logged)
    try:
        client = server.connect()
        publisher = DelayPublisher(TiledPublisher(client))
        pipeline = LivePipeline(
            profile,
            publisher,
            spool_dir=work / "spool",
            engine_factory=lambda setup: EstimateTimes(make_engine(setup), publisher.taken),
        ).start()
        raw_writer = BackgroundCallback(
            TiledWriter(raw_catalog(client), batch_size=profile.publish.raw_batch_size),
            name="raw-writer",
        )
        RE = RunEngine({}, context_managers=[])  # on a thread: no SIGINT handler
        RE.subscribe(raw_writer)
        RE.subscribe(PtychoCallback(profile, pipeline))
        dashboard = Dashboard(uri, key, separate, work / "dashboard.log")
        page = Page(dashboard.url)

        warm = _harness.profile_with(profile, {"sim.n_points": WARM_UP_POINTS})
        print(f"{placement}: warm-up scan ({WARM_UP_POINTS} points) ...", flush=True)
        uids: list[str] = []
        thread = threading.Thread(
            target=run_scans, args=(RE, [build_simulation(warm).plan()], uids, pipeline)
        )
        thread.start()
        while thread.is_alive():
            page.pump(0.5)
        page.pump(3.0)
        warm_records = len(publisher.records)
        page.renders.clear()

        print(f"{placement}: {n_runs} measured scans of {profile.sim.n_points} points ...")
        sim = build_simulation(profile)
        sampler = CpuSampler(server, dashboard)
        measured: list[str] = []
        thread = threading.Thread(
            target=run_scans, args=(RE, [sim.plan() for _ in range(n_runs)], measured, pipeline)
        )
        thread.start()
        while thread.is_alive():
            page.pump(0.5)
            sampler.sample()
        cpu = sampler.per_wall(0, len(sampler.samples) - 1)
        records = publisher.records[warm_records:]
        last = records[-1]
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:  # the page draws the last publications
            if any(
                r["runKey"] == last["run_key"] and r["sequence"] == last["sequence"]
                for r in page.renders
            ):
                break
            page.pump(0.25)
            sampler.sample()
        page.pump(1.0)
        sampler.sample()
        raw_flushed = raw_writer.flush(timeout=60)
        results = {pipeline.result(u).status for u in measured}
        return {
            "placement": placement,
            "runs": n_runs,
            "run_status": sorted(results),
            "wall_s": sampler.samples[-1]["t"] - sampler.samples[0]["t"],
            "cpu_per_wall": cpu,
            "connection": page.connection(),
            "page_errors": page.errors,
            "raw_writer": {"flushed": raw_flushed, "errors": raw_writer.errors},
            "tiled_500s": server.errors_500(),
            "logged": logged.lines,
            **analyse(records, page.renders, page.painted, sampler),
        }
    finally:
        logging.getLogger().removeHandler(logged)
        if page is not None:
            page.close()
        if dashboard is not None:
            dashboard.close()
        if raw_writer is not None:
            raw_writer.close(timeout=60)
        if pipeline is not None:
            close_within(pipeline.close, 120, f"{placement} pipeline", stuck)
        close_within(server.close, 60, f"{placement} Tiled server", stuck)


def stats_ms(values: list[float]) -> dict[str, Any]:
    """Count, median, 95th percentile and max of ``values`` (seconds) in ms (None if empty)."""
    return describe(values)


def analyse(
    records: list[dict[str, Any]],
    renders: list[dict[str, Any]],
    painted: dict[tuple[str, int], float],
    sampler: CpuSampler,
) -> dict[str, Any]:
    """Match publications with renders (run key, sequence); delays and their parts."""
    rendered = {}
    for r in renders:  # the first render of a (run, sequence)
        rendered.setdefault((r["runKey"], r["sequence"]), r)
    rows = []
    for rec in records:
        key = (rec["run_key"], rec["sequence"])
        row = dict(rec)
        r = rendered.get(key)
        if r is not None:
            row["rendered"] = r["renderedAt"] / 1e3
            row["iteration_matches"] = r["iteration"] == rec["iteration"]
            row["fetch_start"] = r["fetchStart"] / 1e3 if r["fetchStart"] else None
            row["fetch_end"] = r["fetchEnd"] / 1e3 if r["fetchEnd"] else None
            row["arrays_fetched"] = r["arrays"]
            row["painted"] = painted[key] / 1e3 if key in painted else None
            row["other_jobs_cpu"] = sampler.others_between(rec["handed"], row["rendered"])
        rows.append(row)
    firsts = set()
    seen = set()
    for row in rows:
        if row["run_key"] not in seen:
            seen.add(row["run_key"])
            firsts.add((row["run_key"], row["sequence"]))
    live = [r for r in rows if not r["final"] and not r["error"]]
    drawn = [r for r in live if "rendered" in r]
    steady = [r for r in drawn if (r["run_key"], r["sequence"]) not in firsts]
    split = [r for r in steady if r.get("fetch_start") is not None]
    clean = [
        r
        for r in steady
        if r["other_jobs_cpu"] is not None and r["other_jobs_cpu"] < CLEAN_OTHERS_CPU
    ]

    def parts(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "delay": stats_ms([r["rendered"] - r["handed"] for r in rows]),
            "taken_to_handed": stats_ms([r["handed"] - r["taken"] for r in rows if r["taken"]]),
            "taken_to_rendered": stats_ms([r["rendered"] - r["taken"] for r in rows if r["taken"]]),
            "publish_live": stats_ms([r["written"] - r["handed"] for r in rows]),
            "written_to_rendered": stats_ms([r["rendered"] - r["written"] for r in rows]),
        }

    return {
        "publications": len(live),
        "publish_errors": [r["error"] for r in rows if r["error"]],
        "rendered": len(drawn),
        "not_rendered": len(live) - len(drawn),
        "iteration_mismatches": sum(not r["iteration_matches"] for r in drawn),
        "all": parts(drawn),
        "steady": {
            **parts(steady),
            "written_to_fetch_start": stats_ms([r["fetch_start"] - r["written"] for r in split]),
            "fetch": stats_ms([r["fetch_end"] - r["fetch_start"] for r in split]),
            "fetch_end_to_rendered": stats_ms([r["rendered"] - r["fetch_end"] for r in split]),
            "rendered_to_painted": stats_ms(
                [r["painted"] - r["rendered"] for r in steady if r.get("painted")]
            ),
        },
        "clean": parts(clean),
        "first_of_run_delay_ms": [
            (r["rendered"] - r["handed"]) * 1e3
            for r in drawn
            if (r["run_key"], r["sequence"]) in firsts
        ],
        "final": [
            {
                "publish_final_ms": (r["written"] - r["handed"]) * 1e3,
                "delay_ms": (r["rendered"] - r["handed"]) * 1e3 if "rendered" in r else None,
            }
            for r in rows
            if r["final"] and not r["error"]
        ],
        "publications_detail": rows,
    }


# -- output --------------------------------------------------------------------------------------


def _msr(s: dict[str, Any]) -> str:
    return (
        f"{fmt(s['median_ms'], '6.0f')} / {fmt(s['p95_ms'], '5.0f')} / {fmt(s['max_ms'], '5.0f')}"
    )


def format_tables(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        f"ptystream dashboard delay{' (--quick)' if results['quick'] else ''}: "
        f"{m['cpu_model']}, {m['cpu_count']} CPUs, TF {m['tensorflow']}, {m['date']}, commit "
        f"{m['source']['commit']}, load at start {m['load_average_at_start'][0]:.2f}; "
        f"{results['runs']} scans of {results['n_points']} points per placement, cadence "
        f"{results['cadence_s']:g} s",
        "",
        "handed to publish_live -> drawn in the browser, ms: median / p95 / max "
        "(all live publications drawn, each run's first included)",
        "placement  drawn/published  delay                 publish_live          "
        "written -> rendered   | age: taken -> rendered  connection",
    ]
    for r in results["placements"]:
        a = r["all"]
        out.append(
            f"{r['placement']:<10} {r['rendered']:>6} / {r['publications']:<6}  "
            f"{_msr(a['delay'])}  {_msr(a['publish_live'])}  {_msr(a['written_to_rendered'])}"
            f"  | {_msr(a['taken_to_rendered'])}  {r['connection']}"
        )
    out += [
        "",
        "clean publications only (other jobs < 0.25 CPU while under way; each run's first "
        "excluded)",
        "placement  n    delay                 publish_live          written -> rendered",
    ]
    for r in results["placements"]:
        c = r["clean"]
        out.append(
            f"{r['placement']:<10} {c['delay']['count']:>3}  {_msr(c['delay'])}  "
            f"{_msr(c['publish_live'])}  {_msr(c['written_to_rendered'])}"
        )
    out += [
        "",
        "without each run's first publication (ms, median / p95 / max), and written -> rendered "
        "split (medians)",
        "placement  n    delay                 publish_live          written -> rendered    "
        "-> fetch start  fetch  -> drawn  -> painted  | estimate queued before handed",
    ]
    for r in results["placements"]:
        s = r["steady"]
        out.append(
            f"{r['placement']:<10} {s['delay']['count']:>3}  {_msr(s['delay'])}  "
            f"{_msr(s['publish_live'])}  {_msr(s['written_to_rendered'])}   "
            f"{fmt(s['written_to_fetch_start']['median_ms'], '13.0f')} "
            f"{fmt(s['fetch']['median_ms'], '6.0f')} "
            f"{fmt(s['fetch_end_to_rendered']['median_ms'], '8.0f')} "
            f"{fmt(s['rendered_to_painted']['median_ms'], '10.0f')}  | "
            f"{_msr(s['taken_to_handed'])}"
        )
    out.append("")
    for r in results["placements"]:
        firsts = ", ".join(f"{d:.0f}" for d in r["first_of_run_delay_ms"])
        finals = ", ".join(
            f"{f['publish_final_ms']:.0f} ms written, drawn after {fmt(f['delay_ms'], '.0f')} ms"
            for f in r["final"]
        )
        cpu = r["cpu_per_wall"]
        apart = {
            "separate": f"tiled {cpu['tiled_server']:.2f}, dashboard {cpu['dashboard']:.2f}, ",
            "embedded": f"tiled {cpu['tiled_server']:.2f}, ",
        }.get(r["placement"], "")
        out.append(
            f"{r['placement']}: first publication of each run drawn after {firsts} ms; finals: "
            f"{finals}; not drawn {r['not_rendered']}; CPUs: this process "
            f"{cpu['this_process']:.2f}, {apart}browser {cpu['browser']:.2f}, other jobs "
            f"{cpu['others']:.2f}, whole machine {cpu['machine']:.2f}; page errors "
            f"{len(r['page_errors'])}; failed publications {len(r['publish_errors'])}; Tiled "
            f"HTTP 500s {r['tiled_500s']}; raw writer errors {r['raw_writer']['errors']}"
            f"{'' if r['raw_writer']['flushed'] else ' (not flushed)'}"
        )
    if results.get("stuck_at_close"):
        out.append(f"did not stop when closed: {', '.join(results['stuck_at_close'])}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = _harness.parser(__doc__, quick="a short smoke run (1 scan of 60 points)")
    parser.add_argument("--runs", type=int, default=2, help="measured scans per placement")
    parser.add_argument(
        "--placements", default="embedded,separate,in-process", help="comma-separated"
    )
    args = parser.parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_tables)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    machine = _harness.machine_info()
    t_start = time.perf_counter()
    profile = bench_profile(60 if args.quick else None)
    runs = 1 if args.quick else args.runs
    placements: list[dict[str, Any]] = []
    stuck: list[str] = []
    results = {
        "quick": args.quick,
        "runs": runs,
        "n_points": profile.sim.n_points,
        "cadence_s": profile.publish.cadence_s,
        "placements": placements,
        "stuck_at_close": stuck,
        "machine": machine,
    }
    json_path = _harness.json_path(args, "dashboard_delay")
    tmp = tempfile.mkdtemp(prefix="ptystream-dashboard-delay-")
    for placement in args.placements.split(","):
        placements.append(measure_placement(placement, profile, runs, Path(tmp), stuck))
        results["total_s"] = time.perf_counter() - t_start
        _harness.write_json(results, json_path, announce=False)  # kept if a later one hangs
    _harness.finish(results, format_tables, json_path)
    if stuck:
        # A server thread that would not stop keeps the process alive (see the README).
        print(f"exiting although {', '.join(stuck)} did not stop; left {tmp}", flush=True)
        os._exit(0)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
