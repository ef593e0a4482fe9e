"""Speed of the AD engine (``ptystream.engine.make_engine``, far field, XLA on, one TF thread).

Measures, each case in its own subprocess (a fresh TensorFlow, and a separate peak RSS, read
from ``VmHWM`` in ``/proc/self/status`` at the end of the case):

1. **epoch**: seconds per pass over 80 positions (``refine``; the median of the timed passes,
   after one untimed pass) and frame-gradients per second, for probes of 128² and 256², batch
   16, sub-pixel shifts on and off; also the XLA compile time of ``warm_up``.
2. **startup**: wall time from just before ``Popen`` to the child printing the timestamp of its
   first estimate. The child (``python -c``) imports ptystream and TensorFlow, builds and warms
   up the engine, adds 16 frames, steps once and calls ``estimate()``; it reports each part.
3. **streaming**: the sustained frame rate of the streaming API at ``w`` frame-gradients per
   arriving frame. 128² frames already in memory arrive in chunks of ``k`` = 16; after each
   chunk ``step(ceil(w k / batch))``. The rate is frames over wall time, for the whole scan and
   for its first and last quarter (the cost per frame must not grow with the scan). The scan is
   a 2000-point jittered raster (60 % overlap) announced in the plan, so the object canvas is as
   large as the scan's area, as it would be at a beamline; a control case sends 2000 frames that
   revisit the 80-position area (a small canvas), to separate the cost of the canvas from the
   cost of the frames.

4. **add**: the time of one ``add_frames`` call (16 frames of 128²) when the plan announces 400,
   2000 or 8000 points (the frame buffer is allocated for the planned length).

``cpu/wall`` is the child's CPU time over wall time in the timed part: well below 1 means the
machine (2 cores shared with other jobs) took the core away and the wall timing is pessimistic.
The engine is set to one TensorFlow thread (cpu/wall is about 1.00 on a quiet machine, though
runs on a large canvas reached 1.05-1.26: some work still lands on a second thread), so the CPU
time per epoch and the frames per CPU-second are also given: what one free core would do.

Frames are simulated once in the parent with ``ptystream.sim`` pieces: the camera/moon object, a
focused probe 1.5 mm out of focus (8 keV, 2 m, 75 µm pixels), Poisson noise at 500 counts peak
plus Gaussian read noise σ = 10 (the ENGINE_NOTES test problem), and handed to the children as
``.npz`` files. Reconstruction quality is not measured here (see ``streaming_vs_offline.py``).

Usage::

    flock /tmp/ptystream-bench.lock .venv/bin/python benchmarks/engine_speed.py [--quick]
        [--json PATH] [--only epoch,startup,streaming,add]

Prints a table and writes ``benchmarks/results/engine_speed.json``. Nothing is asserted.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from ptystream import optics  # noqa: E402
from ptystream.config import HC_EV_M, EngineSettings, SimSettings  # noqa: E402
from ptystream.sim import trajectories  # noqa: E402
from ptystream.sim.detector import DetectorModel, diffraction_pattern  # noqa: E402
from ptystream.sim.sample import GroundTruth, make_object  # noqa: E402
from ptystream.types import Geometry, ScanPlan  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "engine_speed.json"

ENERGY_EV, DISTANCE_M, DETECTOR_PIXEL_M = 8000.0, 2.0, 75e-6
SEMI_ANGLE_RAD, DEFOCUS_M = 6e-4, 1.5e-3
NOMINAL_DEFOCUS_M = 1.1 * DEFOCUS_M  # the engine's initial probe is built 10 % out, as in demo
BATCH = 16


# -- the simulated problem (numpy only; shared with streaming_vs_offline.py) -------------------


@dataclass
class Problem:
    """A simulated far-field scan: frames (counts, centred) at positions, and the truth."""

    geometry: Geometry
    truth: GroundTruth
    positions_m: np.ndarray
    frames: np.ndarray
    read_noise_counts: float
    step_px: float

    @property
    def plan(self) -> ScanPlan:
        return plan_for(self.positions_m)


def plan_for(positions_m: np.ndarray) -> ScanPlan:
    """What a start document would announce: the number of points and their extent."""
    p = positions_m
    extent = ((p[:, 0].min(), p[:, 0].max()), (p[:, 1].min(), p[:, 1].max()))
    return ScanPlan(n_points=len(p), extent_m=extent)


def make_problem(
    frame_px: int = 128,
    n_points: int = 80,
    *,
    passes: int = 1,
    seed: int = 0,
    overlap: float = 0.6,
    jitter_px: float = 3.0,
    peak_counts: float = 500.0,
    read_noise_counts: float = 10.0,
) -> Problem:
    """A jittered raster of ``n_points`` (60 % overlap, ±``jitter_px``), scanned ``passes`` times
    (fresh jitter and noise each pass), Poisson noise scaled to ``peak_counts`` at the brightest
    pixel of the scan, plus Gaussian read noise."""
    rng = np.random.default_rng(seed)
    wavelength = HC_EV_M / ENERGY_EV
    geometry = Geometry(wavelength, DISTANCE_M, DETECTOR_PIXEL_M, frame_px)
    dx = geometry.object_pixel_size_m
    probe = optics.focused_probe(frame_px, dx, wavelength, SEMI_ANGLE_RAD, DEFOCUS_M)
    step_m = trajectories.step_from_overlap(optics.probe_diameter_m(probe, dx), overlap)
    jitter = jitter_px * dx / step_m
    positions = np.concatenate(
        [trajectories.jittered_raster(n_points, step_m, jitter, rng) for _ in range(passes)]
    )
    object_px = 2 * int(np.ceil(np.abs(positions).max() / dx + frame_px / 2 + 4))
    sim = SimSettings()
    obj = make_object(object_px, sim.amplitude_range, sim.phase_range_rad)
    origin = -(object_px // 2) * dx
    truth = GroundTruth(obj, probe, dx, (origin, origin))
    clean = np.stack([diffraction_pattern(truth, p).astype(np.float32) for p in positions])
    flux = peak_counts / float(clean.max())
    detector = DetectorModel(flux, read_noise_counts, None, rng)
    for i in range(len(clean)):  # in place, frame by frame: no float64 copy of the whole scan
        clean[i] = detector.record(clean[i])
    return Problem(geometry, truth, positions, clean, read_noise_counts, step_m / dx)


def engine_settings(subpixel: bool = True, **changes: Any) -> EngineSettings:
    """The default engine settings, batch 16, XLA on."""
    return EngineSettings(batch_size=BATCH, subpixel=subpixel, **changes)


def save_problem(problem: Problem, path: Path) -> None:
    np.savez(
        path,
        frames=problem.frames,
        positions_m=problem.positions_m,
        frame_px=problem.geometry.frame_px,
        read_noise_counts=problem.read_noise_counts,
    )


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_version() -> dict[str, Any]:
    """The repository's commit and whether ``ptystream/`` had uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "ptystream_modified": bool(git("status", "--porcelain", "--", "ptystream")),
    }


def machine_info() -> dict[str, Any]:
    """Where and when the benchmark ran, and how busy the machine was when it started."""
    return {
        "source": source_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "tensorflow": package_version("tensorflow-cpu") or package_version("tensorflow"),
        "keras": package_version("keras"),
        "numpy": np.__version__,
        "ptystream": package_version("ptystream"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- cases, each run in a child process -----------------------------------------------------------


def _load_engine(data_path: str, subpixel: bool, n_points: int | None = None):
    """Configure TensorFlow (one thread, as the pipeline does), load frames, build the engine
    (planned for ``n_points`` points if given, else for the frames in the file)."""
    from ptystream.engine import configure_tensorflow, make_engine

    settings = engine_settings(subpixel)
    configure_tensorflow(settings.tf_threads)
    data = np.load(data_path)
    frames, positions = data["frames"], data["positions_m"]
    geometry = Geometry(HC_EV_M / ENERGY_EV, DISTANCE_M, DETECTOR_PIXEL_M, int(data["frame_px"]))
    engine = make_engine(
        geometry,
        settings,
        plan=ScanPlan(n_points or len(positions), plan_for(positions).extent_m),
        read_noise_counts=float(data["read_noise_counts"]),
        probe_defocus_m=NOMINAL_DEFOCUS_M,
    )
    return engine, frames, positions


def case_epoch(spec: dict[str, Any]) -> dict[str, Any]:
    engine, frames, positions = _load_engine(spec["data"], spec["subpixel"])
    t0 = time.perf_counter()
    engine.warm_up()
    compile_s = time.perf_counter() - t0
    engine.add_frames(frames, positions)
    engine.refine(1)  # untimed
    stamps, cpu0 = [time.perf_counter()], time.process_time()
    engine.refine(spec["epochs"], on_epoch=lambda i, loss: stamps.append(time.perf_counter()))
    cpu_s = time.process_time() - cpu0
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


def case_streaming(spec: dict[str, Any]) -> dict[str, Any]:
    engine, frames, positions = _load_engine(spec["data"], spec["subpixel"])
    engine.warm_up()
    k, w = spec["chunk"], spec["work_per_frame"]
    steps = math.ceil(w * k / BATCH)
    starts, add_s, step_s = [], [], []
    t_begin, cpu0 = time.perf_counter(), time.process_time()
    for start in range(0, len(frames), k):
        t0 = time.perf_counter()
        engine.add_frames(frames[start : start + k], positions[start : start + k])
        t1 = time.perf_counter()
        engine.step(steps)
        starts.append(start)
        add_s.append(t1 - t0)
        step_s.append(time.perf_counter() - t1)
    total = time.perf_counter() - t_begin
    cpu_s = time.process_time() - cpu0
    n = len(frames)
    starts_a, chunk_s = np.asarray(starts), np.asarray(add_s) + np.asarray(step_s)
    sizes = np.minimum(starts_a + k, n) - starts_a
    quarters = []
    for q in range(4):
        sel = (starts_a >= q * n / 4) & (starts_a < (q + 1) * n / 4)
        quarters.append(
            {
                "frames_per_s": float(sizes[sel].sum() / chunk_s[sel].sum()),
                "add_frames_ms_per_chunk": 1e3 * float(np.mean(np.asarray(add_s)[sel])),
                "ms_per_step": 1e3 * float(np.sum(np.asarray(step_s)[sel]) / (sel.sum() * steps)),
            }
        )
    return {
        "frames": n,
        "steps_per_chunk": steps,
        "frame_gradients_per_frame": steps * BATCH / k,
        "canvas_px": list(engine.estimate().object.shape),
        "total_s": total,
        "frames_per_s": n / total,
        "frames_per_cpu_s": n / cpu_s,
        "cpu_per_wall": cpu_s / total,
        "quarters": quarters,
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
    from ptystream.engine import configure_tensorflow, make_engine
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
    engine = make_engine(geometry, EngineSettings(batch_size=16), plan=ScanPlan(80, extent),
                         read_noise_counts=10.0, probe_defocus_m=spec["defocus_m"])
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
        "defocus_m": NOMINAL_DEFOCUS_M,
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
    engine, frames, positions = _load_engine(spec["data"], True, spec["planned_points"])
    engine.warm_up()
    times = []
    for start in range(0, spec["frames"], BATCH):
        t0 = time.perf_counter()
        engine.add_frames(frames[start : start + BATCH], positions[start : start + BATCH])
        times.append(time.perf_counter() - t0)
        engine.step(1)
    return {"add_frames_ms_median": 1e3 * float(np.median(times)), "calls": len(times)}


CASES = {"epoch": case_epoch, "streaming": case_streaming, "add": case_add}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in a fresh interpreter; it prints ``RESULT {json}`` as its last line."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


def child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    result = CASES[spec["case"]](spec)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- orchestration and table ----------------------------------------------------------------------


def run_benchmark(quick: bool, only: set[str], tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"quick": quick, "machine": machine_info()}
    t0 = time.perf_counter()
    problems: dict[str, Problem] = {}

    def data(name: str, limit: int | None = None, **kwargs: Any) -> str:
        """Simulate a problem once (its first ``limit`` frames) and save it for the children."""
        if name not in problems:
            p = make_problem(**kwargs)
            p.frames, p.positions_m = p.frames[:limit], p.positions_m[:limit]
            problems[name] = p
            save_problem(p, tmp / f"{name}.npz")
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (~2 min)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument(
        "--only", default="epoch,startup,streaming,add", help="comma-separated subset of the cases"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one case
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="ptystream-speed-") as tmp:
        results = run_benchmark(args.quick, only, Path(tmp))
    print(format_tables(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
