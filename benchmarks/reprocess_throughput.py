"""Reprocessing throughput: finished runs per hour with ``ptystream reprocess`` on one and on two
local Dask workers.

Set-up (untimed): a real Tiled server (``ptystream.store.server.start_embedded_server``, in this
process, in a temporary directory) and ``--runs`` K (8) runs of the demo profile written into
it by bluesky's ``TiledWriter`` from a RunEngine scanning the simulated beamline
(``ptystream.sim.scan.build_simulation``): 200 points of 64² frames each, ``sim.seed`` 1..K so
each run is a different sample, ``sim.exposure_s`` 0 so the scans take seconds.

Each trial runs the real command line as a subprocess, as a user would::

    ptystream reprocess UID1 ... UIDK --tiled URI --api-key-file FILE --profile demo
        --epochs 100 --workers N --force --out DIR

(``--force``: every trial reconstructs all K runs again and publishes a new version of each.)
The subprocess, not ``run_jobs`` in this process, because what a user waits for includes the
interpreter and ptystream's imports, connecting to Tiled and selecting the runs, starting the
LocalCluster, TensorFlow's import on each worker (``TensorFlowSetup``), and writing the
summary and contact sheet at the end; and because the Tiled server then runs in another process
than the reprocessing client, as at a facility, so their CPU can be told apart. The subprocess's
stderr is not a terminal, so ``reprocess`` prints one line per finished run (``[i/K] scan s:
finished in T s``); each line is time-stamped here on arrival (``PYTHONUNBUFFERED=1``, so the
"K to reprocess" line on stdout is too).

Measured per trial:

- **end to end**: from just before ``Popen`` to the process's exit; runs/hour = K x 3600 / that;
- **start-up**: from launch to the start of the first task (its completion time minus its
  ``time_s``), split at the "K to reprocess" line into *client* (interpreter, imports, Tiled
  connection, run selection) and *cluster* (LocalCluster, worker processes, TensorFlow import);
  **tail**: from the last completion to exit (summary, contact sheet, closing the cluster);
- **steady state**: with t_1 <= ... <= t_K the completion times and N workers,
  (K - N) x 3600 / (t_K - t_N) runs/hour: after every worker has finished its first task, so
  start-up is left out (with one worker (K - 1) / (t_K - t_1)); needs K > N. N x 3600 / that
  is the **time per run per worker** (what one run costs one worker, overheads included);
- **per run**: the version's ``timings_s`` in Tiled (``reconstruct``: engine built, warmed up
  and 100 passes; ``write``: the final arrays and loss table; ``read``), median over the runs.
  The reports' ``time_s`` and ``read`` are shown too, but they include time the task spent
  waiting: tiled's ``ArrayClient.read()`` calls dask's ``compute()``, which inside a Dask task
  goes to the cluster and secedes the task, so the worker starts the next run meanwhile (see
  **in flight**, the most runs started and not yet finished at one time; N would be expected);
- **memory**: the peak RSS (``VmHWM``) of every process under the ``reprocess`` process
  (psutil, sampled every 0.25 s; the kernel's high-water mark, so peaks between samples count
  too): each worker, and the client (scheduler and nannies live in it);
- **CPU**: CPU seconds per wall second of the ``reprocess`` process tree (exact: ``os.times``
  of waited-for children), split into the workers (their last sample) and the rest (the
  client); of this process (the Tiled server; the sampler is negligible); of everything else
  on the machine (other users: ``/proc/stat`` busy time minus the two); hypervisor steal; the
  1-minute load average before and after. ERROR records logged in this process (the server's)
  are counted.

Quality: every run must finish (status ``finished``, a finite final loss, 200 frames used,
100 x 13 iterations); the median final loss is printed. At the end each run must have one
finished version in Tiled per trial, each with a readable loss table of finite values.

Trials alternate between the worker counts (1, 2, then 2, 1, ...), ``--repeats`` (2) each.
Usage::

    flock /tmp/ptystream-bench.lock .venv/bin/python benchmarks/reprocess_throughput.py
        [--quick] [--runs K] [--epochs E] [--workers 1,2] [--repeats R]
        [--env KEY=VALUE] [--json PATH] [--report JSON]

``--quick`` is a smoke run (K 2, 10 passes, one repeat). ``--env DASK_SCHEDULER=sync`` runs
the reads inside each task (the experiment in benchmarks/README.md). Prints a table and writes
``benchmarks/results/reprocess_throughput.json`` (every trial, every report, the machine;
``--quick``: ``reprocess_throughput_quick.json``).
Nothing is asserted, except that the table says so when a run did not finish. The Tiled API key
is random for this run and reaches the subprocess in a file, never on its command line.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import _harness  # noqa: E402
from _harness import (  # noqa: E402
    fmt,
    machine_busy_s,
    machine_steal_s,
    process_cpu_s,
    status_kib,
    table,
)

BIN = Path(sys.executable).parent
PROFILE = "demo"
SAMPLE_S = 0.25
TRIAL_TIMEOUT_S = 3600.0
#: ``reprocess``'s progress line on stderr when stderr is not a terminal.
PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] (.+): (\w+) in ([\d.]+) s$")


# -- errors logged here ----------------------------------------------------------------------


class ErrorLog(logging.Handler):
    """Counts ERROR records logged in this process (the Tiled server's, e.g. its SQL pool)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}"[:300])


# -- set-up ------------------------------------------------------------------------------------


def write_runs(root, k: int) -> list[str]:
    """K demo-profile runs (seeds 1..K, no exposure time) written by TiledWriter; their uids."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from ptystream.config import load_profile
    from ptystream.sim.scan import build_simulation
    from ptystream.store.layout import raw_catalog

    demo = load_profile(PROFILE)
    RE = RunEngine({})
    RE.subscribe(TiledWriter(raw_catalog(root), batch_size=demo.publish.raw_batch_size))
    uids = []
    for seed in range(1, k + 1):
        sim = demo.sim.model_copy(update={"seed": seed, "exposure_s": 0.0})
        (uid,) = RE(build_simulation(demo.model_copy(update={"sim": sim})).plan())
        uids.append(uid)
    return uids


# -- one trial ---------------------------------------------------------------------------------


class TreeSampler:
    """Every ``SAMPLE_S``: the processes under ``pid``, each one's peak RSS and CPU seconds."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.seen: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for proc in procs:
                try:
                    entry = self.seen.setdefault(
                        proc.pid,
                        {"pid": proc.pid, "parent": proc.ppid(), "first_seen": time.perf_counter()},
                    )
                    # read each time: a process just forked still shows its parent's; one
                    # that is exiting shows none (then the last one seen is kept)
                    cmdline = " ".join(proc.cmdline())[:300]
                    if cmdline:
                        entry["cmdline"] = cmdline
                    hwm = status_kib(proc.pid, "VmHWM")
                    if hwm is not None:
                        entry["peak_rss_mb"] = hwm / 1024
                    entry["cpu_s"] = process_cpu_s(proc.pid)
                    entry["last_seen"] = time.perf_counter()
                except (psutil.Error, OSError):
                    continue
            self._stop.wait(SAMPLE_S)

    def close(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join()
        return list(self.seen.values())


def is_worker(proc: dict[str, Any], client_pid: int) -> bool:
    """A Dask worker process: spawned by multiprocessing, not its resource tracker."""
    cmd = proc.get("cmdline", "")
    return proc["pid"] != client_pid and "spawn_main" in cmd and "resource_tracker" not in cmd


def run_trial(
    workers: int,
    uids: list[str],
    uri: str,
    key_file: Path,
    out_dir: Path,
    epochs: int,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``ptystream reprocess`` on all ``uids`` with ``workers`` local workers, timed
    (``extra_env`` added to its environment)."""
    from ptystream.config import load_profile

    demo = load_profile(PROFILE)
    frames, batch = demo.sim.n_points, demo.engine.batch_size
    args = [str(BIN / "ptystream"), "reprocess", *uids, "--tiled", uri]
    args += ["--api-key-file", str(key_file), "--profile", PROFILE, "--epochs", str(epochs)]
    args += ["--workers", str(workers), "--force", "--out", str(out_dir)]
    env = {**os.environ, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    lines: dict[str, list[tuple[float, str]]] = {"stdout": [], "stderr": []}

    def reader(stream, name: str) -> None:
        for line in stream:
            lines[name].append((time.perf_counter(), line.rstrip("\n")))

    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    load0 = os.getloadavg()
    busy0, steal0, self0 = machine_busy_s(), machine_steal_s(), process_cpu_s()
    children0 = os.times()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    sampler = TreeSampler(proc.pid)
    threads = [
        threading.Thread(target=reader, args=(proc.stdout, "stdout"), daemon=True),
        threading.Thread(target=reader, args=(proc.stderr, "stderr"), daemon=True),
    ]
    for thread in threads:
        thread.start()
    returncode = proc.wait(TRIAL_TIMEOUT_S)
    t_exit = time.perf_counter()
    for thread in threads:
        thread.join()
    busy1, steal1, self1 = machine_busy_s(), machine_steal_s(), process_cpu_s()
    children1 = os.times()
    load1 = os.getloadavg()
    logging.getLogger().removeHandler(errors)
    procs = sampler.close()
    wall = t_exit - t0

    tree_cpu = (children1.children_user + children1.children_system) - (
        children0.children_user + children0.children_system
    )
    server_cpu = self1 - self0
    completions = []
    for t, line in lines["stderr"]:
        m = PROGRESS.match(line)
        if m:
            completions.append({"t": t - t0, "label": m[3], "status": m[4], "time_s": float(m[5])})
    planned = next(
        (t - t0 for t, line in lines["stdout"] if re.match(r"^\d+ to reprocess", line)), None
    )
    summary_path = out_dir / "summary.json"
    reports = json.loads(summary_path.read_text()) if summary_path.is_file() else []
    worker_procs = [p for p in procs if is_worker(p, proc.pid)]
    client = next((p for p in procs if p["pid"] == proc.pid), {})
    for p in procs:
        p["first_seen"] -= t0
        p["last_seen"] = p.get("last_seen", t0) - t0
    trial = {
        "workers": workers,
        "runs": len(uids),
        "epochs": epochs,
        "expected_frames": frames,
        "expected_iterations": epochs * -(-frames // batch),
        "returncode": returncode,
        "wall_s": wall,
        "planned_s": planned,
        "completions": completions,
        "reports": reports,
        "processes": procs,
        "worker_peak_rss_mb": [p.get("peak_rss_mb") for p in worker_procs],
        "worker_cpu_s": [p.get("cpu_s") for p in worker_procs],
        "client_peak_rss_mb": client.get("peak_rss_mb"),
        "tree_cpus": tree_cpu / wall,
        "server_cpus": server_cpu / wall,
        "others_cpus": max(0.0, (busy1 - busy0) - tree_cpu - server_cpu) / wall,
        "steal_cpus": (steal1 - steal0) / wall,
        "server_errors": errors.records,
        "load_before": load0[0],
        "load_after": load1[0],
        "stdout_tail": "\n".join(line for _, line in lines["stdout"][-5:]),
        "stderr_tail": "\n".join(line for _, line in lines["stderr"][-20:]),
    }
    trial.update(derived(trial))
    return trial


def in_flight(intervals: list[tuple[float, float]], slack_s: float = 0.5) -> int:
    """The most intervals (task start, completion) open at one time. A start is the
    completion seen here minus the worker's ``time_s``, so it lags the real one by the
    report's trip to the client: overlaps shorter than ``slack_s`` are not counted."""
    events = sorted([(a + slack_s, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def derived(trial: dict[str, Any]) -> dict[str, Any]:
    """The throughput figures of one trial, from its completions and reports."""
    k, n, wall = trial["runs"], trial["workers"], trial["wall_s"]
    done = sorted(trial["completions"], key=lambda c: c["t"])
    exact = {r["label"]: r["time_s"] for r in trial["reports"]}  # the line rounds to 0.1 s
    times = [c["t"] for c in done]
    starts = [c["t"] - exact.get(c["label"], c["time_s"]) for c in done]
    finished = [
        r
        for r in trial["reports"]
        if r["status"] == "finished"
        and r["final_loss"] is not None
        and np.isfinite(r["final_loss"])
        and r["frames"] == trial["expected_frames"]
        and r["iterations"] == trial["expected_iterations"]
    ]
    steady = (k - n) * 3600 / (times[-1] - times[n - 1]) if len(times) == k and k > n else None
    task_s = [r["time_s"] for r in trial["reports"] if r["status"] == "finished"]
    worker_cpu = sum(v for v in trial["worker_cpu_s"] if v is not None)
    out: dict[str, Any] = {
        "finished": len(finished),
        "end_to_end_runs_per_h": k * 3600 / wall,
        "steady_runs_per_h": steady,
        "steady_s_per_run_per_worker": n * 3600 / steady if steady else None,
        "start_up_s": min(starts) if starts else None,
        "client_start_s": trial["planned_s"],
        "cluster_start_s": (min(starts) - trial["planned_s"])
        if starts and trial["planned_s"] is not None
        else None,
        "tail_s": wall - times[-1] if times else None,
        "median_task_s": float(np.median(task_s)) if task_s else None,
        "max_in_flight": in_flight(list(zip(starts, times, strict=True))),
        "workers_cpus": worker_cpu / wall,
        "client_cpus": max(0.0, trial["tree_cpus"] - worker_cpu / wall),
        "median_final_loss": float(np.median([r["final_loss"] for r in finished]))
        if finished
        else None,
    }
    for part in ("read", "reconstruct", "write"):
        values = [r["timings_s"][part] for r in trial["reports"] if r.get("timings_s")]
        out[f"median_{part}_s"] = float(np.median(values)) if values else None
    rss = [v for v in trial["worker_peak_rss_mb"] if v is not None]
    out["max_worker_peak_rss_mb"] = max(rss) if rss else None
    return out


def add_version_timings(root, trial: dict[str, Any]) -> None:
    """Each finished report gains its version's ``timings_s`` and ``frames`` from Tiled."""
    for report in trial["reports"]:
        if not report.get("result"):
            continue
        node = root
        for key in report["result"].split("/"):
            node = node[key]
        md = node.metadata
        report["timings_s"] = dict(md.get("timings_s") or {})
        report["version_status"] = md.get("status")
    trial.update(derived(trial))


def check_versions(root, uids: list[str], trials: int) -> dict[str, Any]:
    """Each run should now have ``trials`` finished versions under ``reprocessed``, each with
    a readable ``final/loss`` table of finite values."""
    counts, bad = {}, []
    for uid in uids:
        versions = root["processed"]["ptystream"][uid]["reprocessed"]
        counts[uid] = 0
        for key, version in versions.items():
            if version.metadata.get("status") != "finished":
                continue
            counts[uid] += 1
            try:
                loss = version["final"]["loss"].read()["loss"].to_numpy()
                if not (len(loss) and np.isfinite(loss).all()):
                    bad.append(f"{uid[:8]}/{key}: loss table of {len(loss)} rows, not finite")
            except Exception as exc:  # reported in the table, not raised
                bad.append(f"{uid[:8]}/{key}: {type(exc).__name__}: {exc}"[:300])
    ok = set(counts.values()) == {trials} and not bad
    return {"expected": trials, "finished_per_run": counts, "bad_loss_tables": bad, "ok": ok}


# -- report --------------------------------------------------------------------------------------


def summarise(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per worker count: the median over its trials of each figure (and each trial's values)."""
    rows = []
    for n in results["workers"]:
        trials = [t for t in results["trials"] if t["workers"] == n]
        row: dict[str, Any] = {"workers": n, "trials": len(trials)}
        for key in (
            "wall_s",
            "end_to_end_runs_per_h",
            "steady_runs_per_h",
            "steady_s_per_run_per_worker",
            "start_up_s",
            "client_start_s",
            "cluster_start_s",
            "tail_s",
            "median_task_s",
            "max_in_flight",
            "median_read_s",
            "median_reconstruct_s",
            "median_write_s",
            "max_worker_peak_rss_mb",
            "client_peak_rss_mb",
            "workers_cpus",
            "client_cpus",
            "server_cpus",
            "others_cpus",
            "steal_cpus",
            "median_final_loss",
        ):
            values = [t[key] for t in trials if t.get(key) is not None]
            pick = max if key == "max_in_flight" else np.median  # in flight: the worst trial
            row[key] = float(pick(values)) if values else None
            row[key + "_each"] = values
        row["finished"] = sum(t["finished"] for t in trials)
        row["expected"] = sum(t["runs"] for t in trials)
        row["server_errors"] = sum(len(t.get("server_errors", [])) for t in trials)
        row["load"] = [(t["load_before"], t["load_after"]) for t in trials]
        rows.append(row)
    return rows


def format_table(results: dict[str, Any]) -> str:
    rows = summarise(results)
    m = results["machine"]
    src = m["source"]
    lines = [
        f"ptystream reprocess: {results['runs']} runs of the {PROFILE} profile, "
        f"{results['epochs']} passes; median of {results['repeats']} trial(s) per row"
        + "".join(f"; {k}={v}" for k, v in results.get("env", {}).items()),
        f"{m['cpu_count']} cores ({m['cpu_model']}), commit {src['commit']}"
        + (" (ptystream/ modified)" if src.get("ptystream_modified") else "")
        + f", {m['date']}",
        "",
    ]
    lines += table(
        [
            "workers",
            "wall s",
            "runs/h e2e",
            "runs/h steady",
            "s/run/worker",
            "recon s",
            "write s",
            "start-up s (client+cluster)",
            "tail s",
            "finished",
            "median final loss",
        ],
        [
            [
                str(r["workers"]),
                fmt(r["wall_s"], ".1f"),
                fmt(r["end_to_end_runs_per_h"], ".0f"),
                fmt(r["steady_runs_per_h"], ".0f"),
                fmt(r["steady_s_per_run_per_worker"], ".1f"),
                fmt(r["median_reconstruct_s"], ".2f"),
                fmt(r["median_write_s"], ".2f"),
                f"{fmt(r['start_up_s'], '.1f')} ({fmt(r['client_start_s'], '.1f')}"
                f"+{fmt(r['cluster_start_s'], '.1f')})",
                fmt(r["tail_s"], ".1f"),
                f"{r['finished']}/{r['expected']}",
                fmt(r["median_final_loss"], ".4g"),
            ]
            for r in rows
        ],
    )
    lines.append("")
    lines += table(
        [
            "workers",
            "peak RSS MB: worker / client",
            "CPUs: workers / client / server / others / steal",
            "in flight",
            "time_s / read s (incl. waits)",
            "server errors",
        ],
        [
            [
                str(r["workers"]),
                fmt(r["max_worker_peak_rss_mb"], ".0f")
                + " / "
                + fmt(r["client_peak_rss_mb"], ".0f"),
                " / ".join(
                    fmt(r[k], ".2f")
                    for k in (
                        "workers_cpus",
                        "client_cpus",
                        "server_cpus",
                        "others_cpus",
                        "steal_cpus",
                    )
                ),
                fmt(r["max_in_flight"], ".0f"),
                f"{fmt(r['median_task_s'], '.1f')} / {fmt(r['median_read_s'], '.1f')}",
                str(r["server_errors"]),
            ]
            for r in rows
        ],
    )
    by_n = {r["workers"]: r for r in rows}
    if 1 in by_n and 2 in by_n:
        one, two = by_n[1], by_n[2]
        ratios = [
            f"{name} {two[key] / one[key]:.2f}x"
            for key, name in (
                ("end_to_end_runs_per_h", "end to end"),
                ("steady_runs_per_h", "steady state"),
            )
            if one[key] and two[key]
        ]
        lines += ["", "speed-up 2 vs 1 worker: " + ", ".join(ratios)]
    lines.append("")
    for t in results["trials"]:
        lines.append(
            f"trial {t['index']}: {t['workers']} worker(s), {t['wall_s']:.1f} s, "
            f"e2e {t['end_to_end_runs_per_h']:.0f}/h, steady "
            f"{fmt(t['steady_runs_per_h'], '.0f')}/h, finished {t['finished']}/{t['runs']}, "
            f"load {t['load_before']:.2f} -> {t['load_after']:.2f}, others "
            f"{t['others_cpus']:.2f} CPU, steal {t['steal_cpus']:.2f}, rc {t['returncode']}, "
            f"server errors {len(t.get('server_errors', []))}"
        )
    check = results.get("versions")
    if check is not None:
        lines.append(
            f"versions in Tiled: {'OK' if check['ok'] else 'NOT OK'} "
            f"({check['expected']} finished per run expected, found "
            f"{sorted(set(check['finished_per_run'].values()))}; "
            f"{len(check.get('bad_loss_tables', []))} bad loss tables)"
        )
    return "\n".join(lines)


def format_report(results: dict[str, Any]) -> str:
    """``--report``: the table of a saved run, each trial's figures recomputed from its raw
    completions and reports."""
    for trial in results["trials"]:
        trial.update(derived(trial))
    return format_table(results)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None):
    parser = _harness.parser(__doc__, quick="smoke run: 2 runs, 10 passes, 1 repeat")
    parser.add_argument("--runs", type=int, default=8, help="runs reprocessed per trial (K)")
    parser.add_argument("--epochs", type=int, default=100, help="passes per run")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--repeats", type=int, default=2, help="trials per worker count")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set in the environment of 'ptystream reprocess' (and so of its local workers), "
        "e.g. DASK_SCHEDULER=sync (repeatable)",
    )
    args = parser.parse_args(argv)
    args.env = dict(text.split("=", 1) for text in args.env)
    if args.quick:
        args.runs, args.epochs, args.repeats = 2, 10, 1
    args.workers = [int(n) for n in args.workers.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        results = json.loads(args.report.read_text())
        for trial in results["trials"]:
            trial.update(derived(trial))
        print(format_table(results))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ptystream.store.access import connect, split_api_key
    from ptystream.store.server import start_embedded_server

    machine = _harness.machine_info()
    t_start = time.perf_counter()
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ptystream-reprocess-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = start_embedded_server(tmp / "tiled")
        try:
            uri, _ = split_api_key(server.uri)
            key_file = tmp / "key"
            key_file.write_text(server.api_key)
            key_file.chmod(0o600)
            root = connect(uri, server.api_key)
            t0 = time.perf_counter()
            uids = write_runs(root, args.runs)
            setup_s = time.perf_counter() - t0
            print(f"set-up: {args.runs} runs written in {setup_s:.1f} s", flush=True)
            order = []
            for r in range(args.repeats):
                order += args.workers if r % 2 == 0 else args.workers[::-1]
            for i, n in enumerate(order):
                print(f"trial {i + 1}/{len(order)}: {n} worker(s) ...", flush=True)
                trial = run_trial(n, uids, uri, key_file, tmp / f"out{i}", args.epochs, args.env)
                trial["index"] = i + 1
                add_version_timings(root, trial)
                trials.append(trial)
                print(
                    f"  {trial['wall_s']:.1f} s, {trial['finished']}/{args.runs} finished, "
                    f"rc {trial['returncode']}",
                    flush=True,
                )
                if trial["returncode"] != 0:
                    print(trial["stderr_tail"], flush=True)
            versions = check_versions(root, uids, len(order))
        finally:
            server.close()
    results = {
        "quick": args.quick,
        "runs": args.runs,
        "epochs": args.epochs,
        "workers": args.workers,
        "repeats": args.repeats,
        "profile": PROFILE,
        "env": args.env,
        "setup_s": setup_s,
        "trials": trials,
        "summary": None,
        "versions": versions,
        "total_s": time.perf_counter() - t_start,
        "machine": machine,
    }
    results["summary"] = summarise(results)
    return _harness.finish(results, format_table, _harness.json_path(args, "reprocess_throughput"))


if __name__ == "__main__":
    sys.exit(main())
