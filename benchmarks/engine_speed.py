"""Speed of the AD engine (``ptystream.engine.make_engine``, far field, XLA on, one TF thread).

Measures, each case in its own subprocess (a fresh TensorFlow, and a separate peak RSS, read
from ``VmHWM`` in ``/proc/self/status`` at the end of the case):

1. **epoch**: seconds per pass over 80 positions (``refine``; the median of the timed passes,
   after one untimed pass) and frame-gradients per second, for probes of 128² and 256², batch
   16, sub-pixel shifts on and off; also the XLA compile time of ``warm_up``.
2. **startup**: wall time from just before ``Popen`` to the child printing the timestamp of its
   first estimate. The child (``python -c``) imports ptystream and TensorFlow, builds and warms
   up the engine, adds 16 frames, steps once and calls ``estimate()``; it reports each part.
3. **streaming** (``_engine_runs.streaming_rate``): the sustained frame rate of the streaming
   API at ``w`` frame-gradients per arriving frame. 128² frames already in memory arrive in
   chunks of ``k`` = 16; after each chunk ``step(ceil(w k / batch))``. The rate is frames over
   wall time, for the whole scan and for its first and last quarter (the cost per frame must
   not grow with the scan). The scan is a 2000-point jittered raster (60 % overlap) announced in
   the plan, so the object canvas is as large as the scan's area, as it would be at a beamline;
   a control case sends 2000 frames that revisit the 80-position area (a small canvas), to
   separate the cost of the canvas from the cost of the frames.

4. **add**: the time of one ``add_frames`` call (16 frames of 128²) when the plan announces 400,
   2000 or 8000 points (the frame buffer is allocated for the planned length).

``cpu/wall`` is the child's CPU time over wall time in the timed part: well below 1 means the
machine (2 cores shared with other jobs) took the core away and the wall timing is pessimistic.
The engine is set to one TensorFlow thread (cpu/wall is about 1.00 on a quiet machine, though
runs on a large canvas reached 1.05-1.26: some work still lands on a second thread), so the CPU
time per epoch and the frames per CPU-second are also given: what one free core would do.

Frames are simulated once in the parent (``ptystream.sim.problems.far_field_problem``: the
camera/moon object, a focused probe 1.5 mm out of focus (8 keV, 2 m, 75 µm pixels), Poisson noise
at 500 counts peak plus Gaussian read noise σ = 10; the ENGINE_NOTES test problem), and handed to
the children as ``.npz`` files (``_engine_runs.save_frames``). Reconstruction quality is not
measured here (see ``streaming_vs_offline.py``).

Usage::

    flock /tmp/ptystream-bench.lock .venv/bin/python benchmarks/engine_speed.py [--quick]
        [--json PATH] [--report JSON] [--only epoch,startup,streaming,add]

Prints a table and writes ``benchmarks/results/engine_speed.json`` (``--quick``:
``engine_speed_quick.json``). Nothing is asserted.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from ptystream.sim.problems import Problem, far_field_problem  # noqa: E402

import _harness  # noqa: E402
from _engine_runs import BATCH, load_engine, save_frames  # noqa: E402

# -- cases, each run in a child process (_harness.run_in_child) -------------------------------


def case_epoch(spec: dict[str, Any]) -> dict[str, Any]:
    engine, frames, positions = load_engine(spec["data"], spec["subpixel"])
    t0 = time.perf_counter()
    engine.warm_up()
    compile_s = time.perf_counter() - t0
    engine.add_frames(frames, positions)
    engine.refine(1)  # untimed
    stamps: list[float] = []
    cpus: list[float] = []

    def on_epoch(epoch: int, loss: float) -> None:
        stamps.append(time.perf_counter())
        cpus.append(time.process_time())

    # timed from the end of the first pass: before it, refine() also measures the misfit it
    # starts from (about a pass), which would count as part of the first
    engine.refine(spec["epochs"] + 1, on_epoch=on_epoch)
    cpu_s = cpus[-1] - cpus[0]
    per_epoch = np.diff(stamps)
    median = float(np.median(per_epoch))
    return {
        "compile_s": compile_s,
        "canvas_px": list(engine.estimate().object.shape),
        "epoch_s_median": median,
        "epoch_s_min": float(per_epoch.min()),
        "epoch_s_mean": float(per_epoch.mean()),
        "frame_gradients_per_s": len(frames) / median,
        "ms_per_step": 1e3 * median / math.ceil(len(frames) / BATCH),
        "epoch_cpu_s": cpu_s / spec["epochs"],
        "cpu_per_wall": cpu_s / (stamps[-1] - stamps[0]),
    }


_STARTUP_SCRIPT = textwrap.dedent(
    """
    import time
    t = {"interpreter": time.time()}
    import os, sys, json
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import ptystream
    from ptystream.config import EngineSettings
    from ptystream.engine import EngineSetup, configure_tensorflow, make_engine
    from ptystream.types import Geometry, ScanPlan
    t["import_ptystream"] = time.time()
    import tensorflow
    t["import_tensorflow"] = time.time()
    spec = json.loads(sys.argv[1])
    configure_tensorflow(1)
    data = np.load(spec["data"])
    frames, pos = data["frames"], data["positions_m"]
    geometry = Geometry(*spec["geometry"])
    extent = tuple(tuple(e) for e in spec["extent_m"])
    engine = make_engine(EngineSetup(geometry, EngineSettings(batch_size=16),
                         plan=ScanPlan(80, extent), read_noise_counts=10.0,
                         probe_defocus_m=spec["defocus_m"]))
    t["build_engine"] = time.time()
    engine.warm_up()
    t["compile"] = time.time()
    engine.add_frames(frames, pos)
    engine.step(1)
    t["first_step"] = time.time()
    estimate = engine.estimate()
    t["first_estimate"] = time.time()
    with open("/proc/self/status") as f:
        hwm = [int(line.split()[1]) for line in f if line.startswith("VmHWM:")][0] / 1024
    print("STARTUP " + json.dumps({"t": t, "peak_rss_mb": hwm}), flush=True)
    """
)


def run_startup(problem: Problem, tmp: Path) -> dict[str, Any]:
    """Time a cold process from before ``Popen`` to its first estimate."""
    data = tmp / "startup.npz"
    np.savez(data, frames=problem.frames[:BATCH], positions_m=problem.positions_m[:BATCH])
    g = problem.geometry
    spec = {
        "data": str(data),
        "geometry": [g.wavelength_m, g.distance_m, g.detector_pixel_size_m, g.frame_px],
        "extent_m": problem.plan.extent_m,
        "defocus_m": problem.probe_defocus_m,
    }
    t_before = time.time()
    child = subprocess.Popen(
        [sys.executable, "-c", _STARTUP_SCRIPT, json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = ""
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("STARTUP "):
            break
    t_seen = time.time()
    _, err = child.communicate()
    if not line.startswith("STARTUP "):
        raise RuntimeError(f"start-up child failed:\n{err}")
    out = json.loads(line.split(" ", 1)[1])
    t = out["t"]
    names = [
        "interpreter",
        "import_ptystream",
        "import_tensorflow",
        "build_engine",
        "compile",
        "first_step",
        "first_estimate",
    ]
    parts, prev = {}, t_before
    for name in names:
        parts[name] = t[name] - prev
        prev = t[name]
    return {
        "total_s": t["first_estimate"] - t_before,
        "parent_saw_line_s": t_seen - t_before,
        "parts_s": parts,
        "peak_rss_mb": out["peak_rss_mb"],
    }


def case_add(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``add_frames`` of 16-frame chunks (each followed by one step) for a planned length."""
    engine, frames, positions = load_engine(spec["data"], True, spec["planned_points"])
    engine.warm_up()
    times = []
    for start in range(0, spec["frames"], BATCH):
        t0 = time.perf_counter()
        engine.add_frames(frames[start : start + BATCH], positions[start : start + BATCH])
        times.append(time.perf_counter() - t0)
        engine.step(1)
    return {"add_frames_ms_median": 1e3 * float(np.median(times)), "calls": len(times)}


# -- orchestration and table ----------------------------------------------------------------------


#: Where each case runs in its child: ``(module of benchmarks/, function)``.
CASES = {
    "epoch": ("engine_speed", "case_epoch"),
    "streaming": ("_engine_runs", "streaming_rate"),
    "add": ("engine_speed", "case_add"),
}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the case ``spec["case"]`` in a fresh interpreter."""
    return _harness.run_in_child(*CASES[spec["case"]], spec)


def run_benchmark(quick: bool, only: set[str], tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"quick": quick, "machine": _harness.machine_info()}
    t0 = time.perf_counter()
    problems: dict[str, Problem] = {}

    def data(name: str, limit: int | None = None, **kwargs: Any) -> str:
        """Simulate a problem once (its first ``limit`` frames) and save it for the children."""
        if name not in problems:
            problems[name] = far_field_problem(**kwargs).head(limit)
            save_frames(problems[name], tmp / f"{name}.npz")
        return str(tmp / f"{name}.npz")

    if "epoch" in only:
        rows = []
        for frame_px, epochs in ((128, 3 if quick else 30), (256, 1 if quick else 8)):
            path = data(f"p{frame_px}", frame_px=frame_px)
            for sub in (True, False):
                spec = {"case": "epoch", "data": path, "subpixel": sub, "epochs": epochs}
                print(f"epoch: probe {frame_px}², sub-pixel {sub} ...", flush=True)
                rows.append({"probe_px": frame_px, "epochs": epochs, **spec, **run_child(spec)})
        results["epoch"] = rows
    if "startup" in only:
        print("startup ...", flush=True)
        data("p128", frame_px=128)
        results["startup"] = run_startup(problems["p128"], tmp)
    side = 20 if quick else 45  # the streaming scan: a square raster of 400 or 2025 points
    n_scan = 400 if quick else 2000
    if "streaming" in only:
        scan = data("scan", n_scan, frame_px=128, n_points=side * side, seed=1)
        revisit = data("revisit", n_scan, frame_px=128, n_points=80, passes=n_scan // 80, seed=2)
        rows = []
        cases = [("scan", w, s) for w in (2, 20) for s in (True, False)]
        cases += [("revisit", 2, s) for s in (True, False)]
        for name, w, sub in cases:
            spec = {
                "case": "streaming",
                "data": scan if name == "scan" else revisit,
                "subpixel": sub,
                "chunk": BATCH,
                "work_per_frame": w,
            }
            print(f"streaming: {name}, w = {w}, sub-pixel {sub} ...", flush=True)
            rows.append({"scan": name, **spec, **run_child(spec)})
        results["streaming"] = rows
    if "add" in only:
        path = data("revisit", n_scan, frame_px=128, n_points=80, passes=n_scan // 80, seed=2)
        rows = []
        for planned in (400, 2000, 8000):
            spec = {"case": "add", "data": path, "planned_points": planned, "frames": 160}
            print(f"add_frames: planned {planned} points ...", flush=True)
            rows.append({**spec, **run_child(spec)})
        results["add_frames"] = rows
    results["wall_s"] = time.perf_counter() - t0
    results["load_average_at_end"] = os.getloadavg()
    return results


def format_tables(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        f"ptystream engine speed{' (--quick)' if results['quick'] else ''}: {m['cpu_model']}, "
        f"{m['cpu_count']} CPUs, TF {m['tensorflow']}, numpy {m['numpy']}, {m['date']}, "
        f"load at start {m['load_average_at_start'][0]:.2f}"
    ]
    if "epoch" in results:
        out += [
            "",
            "Epoch of 80 positions, batch 16, XLA   (median over the timed passes)",
            "probe  subpx  canvas     compile s  s/epoch  ms/step  frame-grad/s  cpu/wall"
            "  CPU s/epoch  peak RSS MB",
        ]
        for r in results["epoch"]:
            out.append(
                f"{r['probe_px']:>4}²  {'on' if r['subpixel'] else 'off':>5}  "
                f"{r['canvas_px'][0]:>4}x{r['canvas_px'][1]:<4}  {r['compile_s']:>9.2f}  "
                f"{r['epoch_s_median']:>7.3f}  {r['ms_per_step']:>7.1f}  "
                f"{r['frame_gradients_per_s']:>12.0f}  {r['cpu_per_wall']:>8.2f}"
                f"  {r['epoch_cpu_s']:>11.3f}  {r['peak_rss_mb']:>11.0f}"
            )
    if "startup" in results:
        s = results["startup"]
        out += ["", "Process start to first estimate (probe 128², sub-pixel on)"]
        out += [f"  {k:<18} {v:6.2f} s" for k, v in s["parts_s"].items()]
        out += [f"  {'total':<18} {s['total_s']:6.2f} s   peak RSS {s['peak_rss_mb']:.0f} MB"]
    if "streaming" in results:
        out += [
            "",
            "Streaming: 128² frames in memory, chunks of 16, w frame-gradients per frame",
            "scan     canvas     w  subpx  frames  frames/s  1st quarter  last quarter"
            "  ms/step (1st/last)  add_frames ms (1st/last)  cpu/wall  frames/CPU-s  peak RSS MB",
        ]
        for r in results["streaming"]:
            q0, q3 = r["quarters"][0], r["quarters"][-1]
            out.append(
                f"{r['scan']:<8} {r['canvas_px'][0]:>4}x{r['canvas_px'][1]:<4} "
                f"{r['work_per_frame']:>2}  {'on' if r['subpixel'] else 'off':>5}  "
                f"{r['frames']:>6}  {r['frames_per_s']:>8.0f}  {q0['frames_per_s']:>11.0f}  "
                f"{q3['frames_per_s']:>12.0f}  "
                f"{q0['ms_per_step']:>8.1f} / {q3['ms_per_step']:<8.1f}"
                f"  {q0['add_frames_ms_per_chunk']:>14.1f} / {q3['add_frames_ms_per_chunk']:<8.1f}"
                f"  {r['cpu_per_wall']:>8.2f}  {r['frames_per_cpu_s']:>12.0f}"
                f"  {r['peak_rss_mb']:>11.0f}"
            )
    if "add_frames" in results:
        out += ["", "add_frames of a 16-frame chunk (128²) against the planned scan length"]
        out += ["planned points  frame buffer MB  add_frames ms (median)  peak RSS MB"]
        for r in results["add_frames"]:
            buffer_mb = r["planned_points"] * 128 * 128 * 4 / 2**20
            out.append(
                f"{r['planned_points']:>14}  {buffer_mb:>15.0f}  "
                f"{r['add_frames_ms_median']:>22.1f}  {r['peak_rss_mb']:>11.0f}"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = _harness.parser(__doc__, quick="a small smoke run (~2 min)")
    parser.add_argument(
        "--only", default="epoch,startup,streaming,add", help="comma-separated subset of the cases"
    )
    args = parser.parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_tables)
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="ptystream-speed-") as tmp:
        results = run_benchmark(args.quick, only, Path(tmp))
    return _harness.finish(results, format_tables, _harness.json_path(args, "engine_speed"))


if __name__ == "__main__":
    sys.exit(main())
