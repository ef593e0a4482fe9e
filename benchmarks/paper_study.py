"""Reproduce the simulation study of the TensorFlow AD ptychography paper on our engines.

Seifert, Bouchet, Loetgering and Mosk, "Efficient and flexible approach to ptychography using an
optimization framework based on automatic differentiation", OSA Continuum 4, 121 (2021).

    .venv/bin/python benchmarks/paper_study.py               # 60 s per run, all runs
    .venv/bin/python benchmarks/paper_study.py --quick       # smoke run, a few seconds per run
    .venv/bin/python benchmarks/paper_study.py --distance-lr 1e-4 3e-4 --only distance

A 512 x 512 complex object (amplitude: scikit-image's *camera*, phase: *astronaut*), 6.45 um pixels,
561 nm light, 80 probe positions with 60 % overlap drawn by Poisson-disc sampling, angular-spectrum
(near-field) propagation to the camera, Poisson noise plus Gaussian read noise. Every method gets
the same wall-clock budget, on one TensorFlow thread, one after another in this process; |C| and
the amplitude and phase correlations are scored against the truth during the run with the scoring
time taken off the clock. Then the propagation distance is started 15 mm wrong and fitted by the
engine's trainable distance alone (Adam, ``--distance-lr``), and by ``ADEngine.search_distance``
(fixed-z trials on one compiled engine, ``--search-passes`` each) followed by a reconstruction
from the z found with z still trained (``--polish-budget`` s). The README's ``paper_study.py``
section has the parameters (which come from the paper, which are ours) and the measured results.

Writes ``benchmarks/results/paper_study.json`` and ``benchmarks/figures/paper_*.png`` (``--quick``:
``benchmarks/results/paper_study_quick.json`` and its PNGs next to it, so a smoke run never
overwrites the committed figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent

WAVELENGTH_M = 561e-9
PIXEL_M = 6.45e-6
OBJECT_PX = 512
FRAME_PX = 256  # probe window = camera frame; angular spectrum valid up to N dx^2 / lambda
N_POSITIONS = 80
OVERLAP = 0.6
PINHOLE_DIAMETER_M = 60 * PIXEL_M
PINHOLE_TO_SAMPLE_M = 5e-3
TRUE_Z_M = 3.5e-3
PEAK_COUNTS = 1500.0
READ_NOISE_COUNTS = 10.0
TARGET_ABS_C = 0.90
AMPLITUDE_RANGE = (0.3, 1.0)
PHASE_RANGE_RAD = (-np.pi / 2, np.pi / 2)


@dataclass
class Scan:
    truth: object  # ptystream.sim.sample.GroundTruth
    positions_m: np.ndarray
    frames: np.ndarray
    probe_diameter_px: float
    disc_radius_px: float
    poisson_disc_seed: int
    mean_lit_counts: float


@dataclass
class Trace:
    """One run: scores against wall-clock seconds (compile and scoring excluded)."""

    name: str
    settings: dict
    time_s: list[float] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    abs_c: list[float] = field(default_factory=list)
    amplitude: list[float] = field(default_factory=list)
    phase: list[float] = field(default_factory=list)
    distance_m: list[float] = field(default_factory=list)
    z_time_s: list[float] = field(default_factory=list)
    epochs_planned: int = 0
    compile_s: float = 0.0
    flat_abs_c: float = float("nan")
    note: str = ""
    final_estimate: object = None

    def time_to(self, level: float) -> float | None:
        """First time |C| reached ``level`` (linear interpolation between scores)."""
        for i, c in enumerate(self.abs_c):
            if c >= level:
                if i == 0:
                    return self.time_s[0]
                t0, t1, c0 = self.time_s[i - 1], self.time_s[i], self.abs_c[i - 1]
                return t0 + (t1 - t0) * (level - c0) / (c - c0)
        return None

    def summary(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "final_estimate"}
        out["time_to_target_s"] = self.time_to(TARGET_ABS_C)
        return out


# -- the simulated experiment ------------------------------------------------------------------


def poisson_disc_positions(radius_px: float, span_px: float, n: int, seed: int) -> tuple:
    """``n`` probe centres in a ``span_px`` square, no two closer than ``radius_px``.

    ``PoissonDisk.fill_space`` fills the square to saturation; the count varies with the seed, so
    seeds are tried until a fill holds exactly ``n`` points (a subset of a larger fill would leave
    holes, an unsaturated fill would cluster).
    """
    from scipy.stats import qmc

    for s in range(seed, seed + 1000):
        points = qmc.PoissonDisk(2, radius=radius_px / span_px, seed=s).fill_space()
        if len(points) == n:
            return points * span_px, s
    raise RuntimeError(f"no Poisson-disc fill of exactly {n} points in 1000 seeds")


def make_object() -> np.ndarray:
    """512 x 512: amplitude from *camera* in [0.3, 1], phase from *astronaut* (grey) in
    [-pi/2, pi/2] (no wrapping). Two unrelated images, so cross-talk shows in the separate
    amplitude and phase correlations; *moon*, ptystream's usual phase image, varies by only
    0.13 rad rms over the scan and would leave |C| near the flat object's 0.94."""
    from skimage import data
    from skimage.color import rgb2gray

    def unit(image: np.ndarray) -> np.ndarray:
        image = image.astype(np.float64)
        return (image - image.min()) / (image.max() - image.min())

    amplitude = AMPLITUDE_RANGE[0] + np.ptp(AMPLITUDE_RANGE) * unit(data.camera())
    phase = PHASE_RANGE_RAD[0] + np.ptp(PHASE_RANGE_RAD) * unit(rgb2gray(data.astronaut()))
    assert amplitude.shape == (OBJECT_PX, OBJECT_PX) == phase.shape
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def score(estimate, truth) -> tuple:
    """|C|, amplitude and phase r over the well-lit region (30 % of the maximum illumination,
    as ``ptystream.commands.demo.score_against_truth``), and the flat object's |C| there. The arrays are
    cropped to the region's bounding box plus a margin first: the same measure, 3x faster."""
    from ptystream.metrics import complex_correlation

    mask = estimate.illumination > 0.3 * estimate.illumination.max()
    rows, cols = np.nonzero(mask)
    m = 16
    crop = (
        slice(max(rows.min() - m, 0), rows.max() + m + 1),
        slice(max(cols.min() - m, 0), cols.max() + m + 1),
    )
    ref = truth.aligned_to(estimate.object.shape, estimate.object_origin_m)[crop]
    flat = complex_correlation(np.ones_like(ref), ref, mask[crop], register=False).abs_c
    return complex_correlation(estimate.object[crop], ref, mask[crop]), flat


def make_probe(kind: str, seed: int) -> np.ndarray:
    """``pinhole``: a plane wave through a pinhole, propagated to the sample (Fresnel rings at
    its edge); ``diffuser``: the same beam through a thin diffuser just before the sample (a
    random phase screen, 3 rad rms, correlation length ~3 px), as in tests/engine/test_nearfield."""
    from ptystream import optics

    probe = optics.pinhole_probe(
        FRAME_PX, PIXEL_M, WAVELENGTH_M, PINHOLE_DIAMETER_M, PINHOLE_TO_SAMPLE_M
    )
    if kind == "diffuser":
        rng = np.random.default_rng(seed + 1)
        f2 = np.fft.fftfreq(FRAME_PX)[:, None] ** 2 + np.fft.fftfreq(FRAME_PX)[None, :] ** 2
        noise = np.fft.fft2(rng.normal(size=(FRAME_PX, FRAME_PX)))
        screen = np.fft.ifft2(noise * np.exp(-f2 / (2 * 0.05**2))).real
        probe = (probe * np.exp(3j * screen / screen.std())).astype(np.complex64)
    return probe


def simulate(seed: int = 0, probe_kind: str = "pinhole") -> Scan:
    """Truth, positions (whole pixels) and noisy near-field frames (counts)."""
    from ptystream import optics
    from ptystream.sim.detector import exit_wave
    from ptystream.sim.sample import GroundTruth

    probe = make_probe(probe_kind, seed)
    diameter_px = optics.probe_diameter_m(probe, PIXEL_M) / PIXEL_M
    radius_px = (1 - OVERLAP) * diameter_px
    span_px = OBJECT_PX - FRAME_PX  # probe windows stay inside the object
    centres, used_seed = poisson_disc_positions(radius_px, span_px, N_POSITIONS, seed)
    # Whole pixels, so every engine (sub-pixel shifts or not) sees an exact forward model.
    centres = np.round(centres + FRAME_PX / 2)
    origin = -(OBJECT_PX // 2) * PIXEL_M
    truth = GroundTruth(make_object(), probe, PIXEL_M, (origin, origin))
    positions_m = centres * PIXEL_M + origin
    unit = np.abs(optics.angular_spectrum(probe, PIXEL_M, WAVELENGTH_M, TRUE_Z_M)) ** 2
    scale = PEAK_COUNTS / unit.max()  # a unit-transmission object peaks at PEAK_COUNTS
    rng = np.random.default_rng(seed)
    frames = []
    for p in positions_m:
        far = optics.angular_spectrum(exit_wave(truth, p), PIXEL_M, WAVELENGTH_M, TRUE_Z_M)
        expected = scale * np.abs(far) ** 2
        counts = rng.poisson(expected) + rng.normal(0.0, READ_NOISE_COUNTS, expected.shape)
        frames.append(counts.astype(np.float32))
    frames = np.stack(frames)
    lit = unit > 0.1 * unit.max()
    return Scan(
        truth, positions_m, frames, diameter_px, radius_px, used_seed, float(frames[:, lit].mean())
    )


# -- running one method for a wall-clock budget ------------------------------------------------


def build_engine(settings, scan: Scan, z_start_m: float):
    """The engine ``make_engine`` builds for ``settings``, with z started at ``z_start_m``."""
    from ptystream.engine import make_engine
    from ptystream.types import Geometry, ScanPlan

    geometry = Geometry(WAVELENGTH_M, z_start_m, PIXEL_M, FRAME_PX, propagation="near_field")
    extent = tuple((scan.positions_m[:, k].min(), scan.positions_m[:, k].max()) for k in range(2))
    return make_engine(
        geometry,
        settings,
        plan=ScanPlan(len(scan.positions_m), extent),
        read_noise_counts=READ_NOISE_COUNTS,
    )


def add_and_compile(engine, scan: Scan, trace: Trace) -> None:
    """Add the frames and compile the step (``warm_up``); the time goes to ``trace.compile_s``."""
    t = time.perf_counter()
    engine.add_frames(scan.frames, scan.positions_m)
    engine.warm_up()
    trace.compile_s = time.perf_counter() - t


def run_method(
    name: str, settings, scan: Scan, budget_s: float, z_start_m: float, n_scores: int
) -> Trace:
    """Build the engine, compile (untimed), then :func:`timed_refine` for ``budget_s``."""
    from ptystream.engine.ad import ADEngine

    trace = Trace(name, settings.model_dump(mode="json"))
    engine = build_engine(settings, scan, z_start_m)
    if str(settings.algorithm) != "ad" and isinstance(engine, ADEngine):
        trace.note = "make_engine does not build this algorithm yet: skipped"
        print(f"{name}: {trace.note}")
        return trace
    add_and_compile(engine, scan, trace)
    timed_refine(engine, scan, trace, budget_s, n_scores)
    return trace


def timed_refine(
    engine, scan: Scan, trace: Trace, budget_s: float, n_scores: int, t_start_s: float = 0.0
) -> None:
    """Refine for ``budget_s``, logging z every pass and the scores about every
    ``budget_s / n_scores`` into ``trace``, on a clock that starts at ``t_start_s``.

    ``refine(E)`` applies a cosine decay of the learning rates over its E epochs (``refine(1)``
    runs at the full rate), so the run is two ``refine(1)`` calls (timed, to size the run) and
    one ``refine(E - 2)`` with E = budget / epoch time: the decay spans the whole budget. A run
    more than 20 % over budget is stopped.
    """
    clock = {"epoch": 0, "off": 0.0, "next_score": t_start_s}
    t0 = time.perf_counter()

    class _OverBudget(Exception):
        pass

    def record(force: bool = False) -> float:
        """Log z (every epoch) and the scores (every budget / n_scores s); returns the clock."""
        now = time.perf_counter()
        elapsed = t_start_s + now - t0 - clock["off"]
        estimate = engine.estimate()
        trace.z_time_s.append(elapsed)
        trace.distance_m.append(float(estimate.distance_m))
        if force or elapsed >= clock["next_score"]:
            score_, flat = score(estimate, scan.truth)
            trace.time_s.append(elapsed)
            trace.epoch.append(clock["epoch"])
            trace.abs_c.append(score_.abs_c)
            trace.amplitude.append(score_.amplitude)
            trace.phase.append(score_.phase)
            trace.flat_abs_c = flat
            clock["next_score"] = elapsed + budget_s / n_scores
        clock["off"] += time.perf_counter() - now
        return elapsed

    def on_epoch(_i: int, _loss: float) -> None:
        clock["epoch"] += 1
        if record() - t_start_s > 1.2 * budget_s:
            raise _OverBudget

    record(force=True)  # the starting point
    off, t = clock["off"], time.perf_counter()
    for _ in range(2):  # two epochs at the full rate, to time one
        engine.refine(1, on_epoch=on_epoch)
    epoch_s = (time.perf_counter() - t - (clock["off"] - off)) / 2
    trace.epochs_planned = max(3, round(budget_s / max(epoch_s, 1e-3)))
    try:
        engine.refine(trace.epochs_planned - 2, on_epoch=on_epoch)
    except _OverBudget:
        trace.note = f"stopped at 1.2 x budget after {clock['epoch']} epochs"
    if trace.epoch[-1] != clock["epoch"]:
        record(force=True)  # score the last epoch too
    estimate = engine.estimate()
    trace.final_estimate = estimate
    print(
        f"{trace.name}: {clock['epoch']} epochs ({trace.epochs_planned} planned) in "
        f"{trace.time_s[-1] - t_start_s:.1f} s, |C| {trace.abs_c[-1]:.4f}, "
        f"amp r {trace.amplitude[-1]:.3f}, phase r {trace.phase[-1]:.3f}, "
        f"z {estimate.distance_m * 1e3:.3f} mm"
    )


class _TrialClock(logging.Handler):
    """Collects (z, score, seconds since ``t0``) from the distance search's per-trial log."""

    def __init__(self, t0: float):
        super().__init__(logging.INFO)
        self.t0 = t0
        self.trials: list[tuple[float, float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple) and len(record.args) == 2:
            z, loss = record.args
            self.trials.append((float(z), float(loss), time.perf_counter() - self.t0))


def search_then_polish(
    scan: Scan,
    z_start_m: float,
    z_lo_m: float,
    z_hi_m: float,
    passes: int,
    polish_s: float,
    n_scores: int,
) -> tuple[dict, Trace]:
    """``ADEngine.search_distance`` from ``z_start_m``, then a reconstruction from the z it
    found with ``train_distance=True`` (default distance rate), on the same compiled engine.

    The search is timed by the wall clock from after the compile; each trial's finish time
    comes from the search's log. The polish's clock continues from the search's end.
    """
    from ptystream.config import EngineSettings

    settings = EngineSettings(subpixel=False, train_distance=True)
    z_lr = settings.distance_learning_rate_m
    trace = Trace(f"polish from the z found (lr {z_lr:g} m)", settings.model_dump(mode="json"))
    engine = build_engine(settings, scan, z_start_m)
    add_and_compile(engine, scan, trace)
    search_log = logging.getLogger("ptystream.engine.distance")
    level = search_log.level
    clock = _TrialClock(time.perf_counter())
    search_log.setLevel(logging.INFO)
    search_log.addHandler(clock)
    try:
        z_found, scores = engine.search_distance(z_lo_m, z_hi_m, passes)
    finally:
        search_log.removeHandler(clock)
        search_log.setLevel(level)
    search_s = time.perf_counter() - clock.t0
    for z, loss, t in clock.trials:
        print(f"  trial z {z * 1e3:6.3f} mm, loss {loss:.5e}, at {t:5.1f} s")
    print(
        f"search_distance: z {z_found * 1e3:.3f} mm (error {(z_found - TRUE_Z_M) * 1e3:+.3f} mm) "
        f"after {len(scores)} trials in {search_s:.1f} s (compile {trace.compile_s:.1f} s, "
        "untimed)"
    )
    timed_refine(engine, scan, trace, polish_s, n_scores, t_start_s=search_s)
    z_polished = trace.distance_m[-1]
    search = {
        "passes_per_trial": passes,
        "range_m": [z_lo_m, z_hi_m],
        "valid_range_m": list(engine.distance_range_m),
        "z_start_m": z_start_m,
        "trials": clock.trials,
        "n_trials": len(scores),
        "z_found_m": z_found,
        "error_mm": (z_found - TRUE_Z_M) * 1e3,
        "wall_s": search_s,
        "compile_s": trace.compile_s,
        "polish_budget_s": polish_s,
        "polish_learning_rate_m": z_lr,
        "z_polished_m": z_polished,
        "polished_error_mm": (z_polished - TRUE_Z_M) * 1e3,
        "polished_end_s": trace.z_time_s[-1],
    }
    return search, trace


# -- figures ---------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_convergence(traces: list[Trace], budget_s: float, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    keys = (("abs_c", "|C|"), ("amplitude", "amplitude r"), ("phase", "phase r"))
    for ax, (key, label) in zip(axes, keys, strict=True):
        for tr in traces:
            ax.plot(tr.time_s, getattr(tr, key), marker=".", ms=3, label=tr.name)
        if key == "abs_c":
            flat = traces[0].flat_abs_c
            ax.axhline(flat, color="gray", ls=":", label=f"flat object ({flat:.3f})")
            ax.axhline(TARGET_ABS_C, color="k", ls="--", lw=0.8, label=f"|C| {TARGET_ABS_C}")
            ax.set_ylim(max(0.0, flat - 0.1), 1.0)
        else:
            ax.set_ylim(-0.1, 1.0)
        ax.axvline(30.0, color="k", lw=0.5, ls=":")
        ax.set_xlim(0, budget_s * 1.05)
        ax.set_xlabel("wall-clock time (s), one TensorFlow thread, compile excluded")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{N_POSITIONS} positions, {OVERLAP:.0%} overlap, near field z = {TRUE_Z_M * 1e3} mm, "
        f"{PEAK_COUNTS:.0f} counts peak + read noise {READ_NOISE_COUNTS:.0f}: same budget each"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _aligned(estimate, truth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimate registered to the truth (shift, ramp, global phase, scale), truth, lit mask."""
    from ptystream.metrics import complex_correlation, fourier_shift

    mask = estimate.illumination > 0.3 * estimate.illumination.max()
    ref = truth.aligned_to(estimate.object.shape, estimate.object_origin_m)
    c = complex_correlation(estimate.object, ref, mask)
    yy, xx = np.indices(ref.shape)
    ramp = c.ramp_rad_per_px
    est = fourier_shift(estimate.object.astype(np.complex128), c.shift_px)
    est = est * np.exp(-1j * (ramp[0] * yy + ramp[1] * xx + c.global_phase_rad))
    est *= np.sum(np.abs(ref[mask])) / max(np.sum(np.abs(est[mask])), 1e-30)
    return est, ref, mask


def plot_images(traces: list[Trace], truth, path: Path) -> None:
    plt = _pyplot()
    done = [tr for tr in traces if tr.final_estimate is not None]
    fig, axes = plt.subplots(2, len(done) + 1, figsize=(3.3 * (len(done) + 1), 6.6))
    for col, tr in enumerate([None, *done]):
        est, ref, mask = _aligned((tr or done[0]).final_estimate, truth)
        rows, cols = np.nonzero(mask)
        crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        image = ref if tr is None else est
        shown = np.ma.masked_where(~mask[crop], image[crop])
        axes[0, col].imshow(np.abs(shown), cmap="gray", vmin=0.2, vmax=1.1)
        axes[1, col].imshow(np.ma.angle(shown), cmap="twilight", vmin=-1.6, vmax=1.6)
        title = "truth" if tr is None else f"{tr.name}\n|C| {tr.abs_c[-1]:.3f}"
        axes[0, col].set_title(title, fontsize=9)
        for ax in axes[:, col]:
            ax.axis("off")
    axes[0, 0].text(-0.08, 0.5, "amplitude", rotation=90, transform=axes[0, 0].transAxes)
    axes[1, 0].text(-0.08, 0.5, "phase", rotation=90, transform=axes[1, 0].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_distance(traces: list[Trace], search: dict | None, polish: Trace | None, path: Path):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for tr in traces:
        error_mm = (np.array(tr.distance_m) - TRUE_Z_M) * 1e3
        axes[0].plot(tr.z_time_s, error_mm, label=f"Adam on z: {tr.name}")
        axes[1].semilogy(tr.z_time_s, np.abs(error_mm), label=f"Adam on z: {tr.name}")
    if search:
        z, _, t = (np.array(v) for v in zip(*search["trials"], strict=True))
        t0 = np.array([0.0])
        z = np.concatenate([[search["z_start_m"]], z])  # the start, at t = 0
        t = np.concatenate([t0, t])
        label = f"search_distance trials ({search['passes_per_trial']} passes each)"
        err = (z - TRUE_Z_M) * 1e3
        axes[0].plot(t, err, "o:", ms=4, lw=0.8, label=label)
        axes[1].semilogy(t, np.abs(err), "o:", ms=4, lw=0.8, label=label)
        found = abs(search["error_mm"])
        label = f"z found: {found:.2f} mm off, {search['wall_s']:.0f} s"
        axes[0].plot([search["wall_s"]], [search["error_mm"]], "k*", ms=12)
        axes[1].semilogy([search["wall_s"]], [found], "k*", ms=12, label=label)
    if polish is not None:
        error_mm = (np.array(polish.distance_m) - TRUE_Z_M) * 1e3
        label = f"{polish.name}: {abs(error_mm[-1]):.2f} mm off"
        axes[0].plot(polish.z_time_s, error_mm, "k", lw=1.5, label=label)
        axes[1].semilogy(polish.z_time_s, np.abs(error_mm), "k", lw=1.5, label=label)
    axes[0].axhline(0.0, color="k", lw=0.5)
    axes[0].set_ylabel("z - z_true (mm)")
    axes[1].axhline(1.0, color="k", ls="--", lw=0.8, label="1 mm target")
    axes[1].set_ylabel("|z - z_true| (mm)")
    for ax in axes:
        ax.set_xlabel("wall-clock time (s), one TensorFlow thread, compile excluded")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"fitting the propagation distance (true z = {TRUE_Z_M * 1e3} mm)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- the study ---------------------------------------------------------------------------------


def methods(paper_probe_ratio: float) -> dict:
    from ptystream.config import EngineSettings

    common = {"subpixel": False}  # positions are whole pixels
    paper = {"loss": "intensity", **common}
    return {
        "AD paper, lr 0.01": EngineSettings(
            object_learning_rate=0.01, probe_learning_rate=0.01 * paper_probe_ratio, **paper
        ),
        "AD paper, lr 0.04": EngineSettings(
            object_learning_rate=0.04, probe_learning_rate=0.04 * paper_probe_ratio, **paper
        ),
        "ptystream default": EngineSettings(**common),
        "ePIE": EngineSettings(algorithm="epie", **common),
        "mPIE": EngineSettings(algorithm="mpie", **common),
    }


def machine() -> dict:
    import tensorflow as tf

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import hashlib
    import subprocess

    def git(*cmd: str) -> str:
        run = subprocess.run(["git", *cmd], cwd=HERE, capture_output=True, text=True)
        return run.stdout.strip()

    pie = HERE.parent / "ptystream" / "engine" / "pie.py"
    return {
        "git_head": git("rev-parse", "--short", "HEAD"),
        "engine_files_modified": git("status", "--short", "--", "../ptystream/engine"),
        "pie_py_sha256": hashlib.sha256(pie.read_bytes()).hexdigest()[:12] if pie.exists() else "",
        "cpu_model": model or platform.processor(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "date": datetime.date.today().isoformat(),
        "note": "one run on a shared 2-core machine; wall times vary between runs",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per method")
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 s per method")
    parser.add_argument(
        "--distance-lr",
        type=float,
        nargs="+",
        default=[1e-4, 1e-3],
        help="Adam learning rate(s) of the propagation distance, metres per step",
    )
    parser.add_argument(
        "--distance-error-mm",
        type=float,
        nargs="+",
        default=[15.0],
        help="start errors of z in mm (z + error must stay inside the angular-spectrum limit)",
    )
    parser.add_argument(
        "--search-passes",
        type=int,
        default=None,
        help="passes per trial distance of search_distance (0: skip; default 25, quick 4)",
    )
    parser.add_argument(
        "--polish-budget",
        type=float,
        default=None,
        help="seconds of reconstruction (z trained) after the search (default 30, quick 6)",
    )
    parser.add_argument(
        "--probe", choices=["pinhole", "diffuser"], default="pinhole", help="illumination"
    )
    parser.add_argument("--only", choices=["methods", "distance"], help="run one part only")
    parser.add_argument(
        "--paper-probe-ratio",
        type=float,
        default=1.0,
        help="paper runs: probe learning rate as a fraction of the object's",
    )
    parser.add_argument("--scores", type=int, default=40, help="scores per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    budget = 6.0 if args.quick else args.budget
    if args.search_passes is None:
        args.search_passes = 4 if args.quick else 25
    if args.polish_budget is None:
        args.polish_budget = 6.0 if args.quick else 30.0
    out_dir = HERE / "results" if args.quick else HERE / "figures"
    suffix = "_quick" if args.quick else ""

    from ptystream.config import EngineSettings
    from ptystream.engine import configure_tensorflow

    configure_tensorflow(1)
    limit_m = FRAME_PX * PIXEL_M**2 / WAVELENGTH_M
    t = time.perf_counter()
    scan = simulate(args.seed, args.probe)
    print(
        f"simulated {len(scan.frames)} frames in {time.perf_counter() - t:.1f} s: probe "
        f"{scan.probe_diameter_px:.1f} px (90 % power), disc radius {scan.disc_radius_px:.1f} px, "
        f"mean counts over the lit area {scan.mean_lit_counts:.0f}; z {TRUE_Z_M * 1e3} mm, "
        f"angular-spectrum limit N dx^2 / lambda = {limit_m * 1e3:.2f} mm"
    )
    result = {
        "machine": machine(),
        "budget_s": budget,
        "setup": {
            "wavelength_m": WAVELENGTH_M,
            "pixel_m": PIXEL_M,
            "object_px": OBJECT_PX,
            "frame_px": FRAME_PX,
            "n_positions": N_POSITIONS,
            "overlap": OVERLAP,
            "probe": f"{args.probe}: pinhole {PINHOLE_DIAMETER_M * 1e6:.0f} um, "
            f"{PINHOLE_TO_SAMPLE_M * 1e3} mm before the sample",
            "probe_diameter_px": scan.probe_diameter_px,
            "poisson_disc_radius_px": scan.disc_radius_px,
            "poisson_disc_seed": scan.poisson_disc_seed,
            "true_z_m": TRUE_Z_M,
            "angular_spectrum_limit_m": limit_m,
            "peak_counts": PEAK_COUNTS,
            "mean_lit_counts": scan.mean_lit_counts,
            "read_noise_counts": READ_NOISE_COUNTS,
        },
        "methods": [],
        "distance": [],
        "distance_search": None,
    }
    json_path = HERE / "results" / f"paper_study{suffix}.json"
    json_path.parent.mkdir(exist_ok=True)
    if args.only == "distance" and json_path.exists():  # keep the earlier method comparison
        earlier = json.loads(json_path.read_text())
        result["methods"] = earlier.get("methods", [])
        result["methods_machine"] = earlier.get("methods_machine", earlier.get("machine"))
    traces = []
    if args.only != "distance":
        for name, settings in methods(args.paper_probe_ratio).items():
            trace = run_method(name, settings, scan, budget, TRUE_Z_M, args.scores)
            traces.append(trace)
            result["methods"].append(trace.summary())
            json_path.write_text(json.dumps(result, indent=1))
        ran = [tr for tr in traces if tr.time_s]
        if ran:
            plot_convergence(ran, budget, out_dir / f"paper_convergence{suffix}.png")
            plot_images(ran, scan.truth, out_dir / f"paper_images{suffix}.png")
    z_traces = []
    if args.only != "methods":
        starts = []
        for error_mm in args.distance_error_mm:
            z0 = TRUE_Z_M + error_mm * 1e-3
            if not 0 < z0 <= limit_m:
                print(f"z error {error_mm} mm: start {z0 * 1e3:.2f} mm outside (0, limit]: skip")
                continue
            starts.append(z0)
            for lr in args.distance_lr:
                settings = EngineSettings(
                    subpixel=False, train_distance=True, distance_learning_rate_m=lr
                )
                name = f"z {error_mm:+g} mm, lr {lr:g} m"
                trace = run_method(name, settings, scan, budget, z0, args.scores)
                z_traces.append(trace)
                result["distance"].append(trace.summary())
                json_path.write_text(json.dumps(result, indent=1))
        search, polish = None, None
        if args.search_passes > 0 and starts:
            print(f"search_distance from z {starts[0] * 1e3:.2f} mm:")
            search, polish = search_then_polish(
                scan,
                starts[0],
                0.5e-3,
                0.97 * limit_m,
                args.search_passes,
                args.polish_budget,
                args.scores,
            )
            result["distance_search"] = {**search, "polish": polish.summary()}
            json_path.write_text(json.dumps(result, indent=1))
        if z_traces or search:
            plot_distance(z_traces, search, polish, out_dir / f"paper_distance{suffix}.png")
    print_table(result)
    print(f"results: {json_path}; figures in {out_dir}")


def print_table(result: dict) -> None:
    print(f"{'method':24s} {'|C|':>7s} {'amp r':>7s} {'phase r':>7s} {'t(|C|>=0.9)':>12s}")
    for m in result["methods"]:
        if not m["abs_c"]:
            print(f"{m['name']:24s} {m['note']}")
            continue
        t = m["time_to_target_s"]
        print(
            f"{m['name']:24s} {m['abs_c'][-1]:7.4f} {m['amplitude'][-1]:7.3f} "
            f"{m['phase'][-1]:7.3f} {'-' if t is None else f'{t:.1f} s':>12s}"
        )
    for d in result["distance"]:
        z = np.array(d["distance_m"])
        err = np.abs(z - TRUE_Z_M) * 1e3
        below = np.nonzero(err < 1.0)[0]
        first = f"{d['z_time_s'][below[0]]:.1f} s" if len(below) else "never"
        print(f"{d['name']:24s} final |z error| {err[-1]:.3f} mm, first < 1 mm at {first}")
    search = result.get("distance_search")
    if search:
        print(
            f"search_distance: z {search['z_found_m'] * 1e3:.3f} mm "
            f"(|error| {abs(search['error_mm']):.3f} mm), {search['n_trials']} trials in "
            f"{search['wall_s']:.1f} s; polished: z {search['z_polished_m'] * 1e3:.3f} mm "
            f"(|error| {abs(search['polished_error_mm']):.3f} mm) at "
            f"{search['polished_end_s']:.1f} s"
        )


if __name__ == "__main__":
    main()
