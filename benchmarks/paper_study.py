"""Reproduce the simulation study of the TensorFlow AD ptychography paper on our engines.

Seifert, Bouchet, Loetgering and Mosk, "Efficient and flexible approach to ptychography using an
optimization framework based on automatic differentiation", OSA Continuum 4, 121 (2021).

    .venv/bin/python benchmarks/paper_study.py               # 60 s per run, all runs
    .venv/bin/python benchmarks/paper_study.py --quick       # smoke run, a few seconds per run
    .venv/bin/python benchmarks/paper_study.py --distance-lr 1e-4 3e-4 --only distance
    .venv/bin/python benchmarks/paper_study.py --only calibrated   # the paper's Fig. 4, ~3 min

A 512 x 512 complex object (amplitude: scikit-image's *camera*, phase: *astronaut*), 6.45 um pixels,
561 nm light, 80 probe positions with 60 % overlap drawn by Poisson-disc sampling, angular-spectrum
(near-field) propagation to the camera, Poisson noise plus Gaussian read noise. Every method gets
the same wall-clock budget, on one TensorFlow thread, one after another in this process; |C| and
the amplitude and phase correlations are scored against the truth during the run with the scoring
time taken off the clock. Then the propagation distance is started 15 mm wrong and fitted by the
engine's trainable distance alone (Adam, ``--distance-lr``), and by ``ADEngine.search_distance``
(fixed-z trials on one compiled engine, ``--search-passes`` each) followed by a reconstruction
from the z found with z still trained (``--polish-budget`` s).

``--only calibrated`` is the paper's Fig. 4: the probe pre-calibrated (the true probe, given as
``EngineSetup(initial_probe=...)`` and kept fixed, ``probe_learning_rate=0``), z started 15 mm
off and trained by Adam at ``--calibrated-lr-fraction`` of the start error per step, for
``--calibrated-passes`` passes (one ``refine`` call, so one cosine decay); the same from the
smaller start errors of ``--calibrated-starts-mm`` (its capture range); the same runs coarse
to fine (``EngineSettings.distance_blur_px = --calibrated-blur-px``: the loss on intensities
blurred by a Gaussian whose sigma falls linearly to 0 over ``--calibrated-blur-passes``
passes); ``search_distance`` with
the same probe at ``--calibrated-search-passes`` passes a trial, then z trained for the passes
left; and the loss against a fixed z after the first and after ``--landscape-passes`` passes
from the flat start (what the gradient sees, and what the search sees). |z - z_true| is logged
after every pass with the wall time.

The README's ``paper_study.py`` section has the parameters (which come from the paper, which are
ours) and the measured results.

The problem is ``ptystream.sim.problems.near_field_problem`` (``NearFieldStudy``), scored with
``ptystream.metrics.score_over`` on the well-lit region's bounding box plus 16 px.

Writes ``benchmarks/results/paper_study.json`` (a run with ``--only`` keeps the other parts of
the one already there) and ``benchmarks/figures/paper_*.png`` (``--quick``:
``benchmarks/results/paper_study_quick.json`` and its PNGs next to it, so a smoke run never
overwrites the committed figures). ``--report JSON`` prints a saved run's table again.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ptystream.metrics import score_over, well_lit_mask  # noqa: E402
from ptystream.sim.problems import NearFieldStudy, Problem, near_field_problem  # noqa: E402

import _engine_runs  # noqa: E402
import _harness  # noqa: E402
from _engine_runs import Trace as _Trace  # noqa: E402
from _engine_runs import build_engine, full_rate_pass  # noqa: E402

STUDY = NearFieldStudy()
TRUE_Z_M = STUDY.distance_m
TARGET_ABS_C = 0.90


@dataclass
class Trace(_Trace):
    """One run (:class:`_engine_runs.Trace`), with the propagation distance after every pass
    and the final estimate."""

    distance_m: list[float] = field(default_factory=list)
    z_time_s: list[float] = field(default_factory=list)
    final_estimate: object = None

    def summary(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "final_estimate"}
        out["time_to_target_s"] = self.time_to(TARGET_ABS_C)
        return out


def score(estimate, truth) -> dict[str, float]:
    """|C|, amplitude and phase r over the well-lit region (30 % of the maximum illumination,
    as ``ptystream.metrics.score_against_truth``), and the flat object's |C| there. The arrays
    are cropped to the region's bounding box plus 16 px first: about the same measure, 3x
    faster."""
    c, flat = score_over(estimate, truth, well_lit_mask(estimate), crop_margin_px=16)
    return {"abs_c": c.abs_c, "amplitude": c.amplitude, "phase": c.phase, "flat_abs_c": flat}


# -- running one method for a wall-clock budget ------------------------------------------------


def add_and_compile(engine, scan: Problem, trace: Trace) -> None:
    """Add the frames and compile the step (``warm_up``); the time goes to ``trace.compile_s``."""
    t = time.perf_counter()
    engine.add_frames(scan.frames, scan.positions_m)
    engine.warm_up()
    trace.compile_s = time.perf_counter() - t


def run_method(
    name: str, settings, scan: Problem, budget_s: float, z_start_m: float, n_scores: int
) -> Trace:
    """Build the engine, compile (untimed), then :func:`timed_refine` for ``budget_s``."""
    trace = Trace(name, settings.model_dump(mode="json"))
    engine = build_engine(scan, settings, distance_m=z_start_m)
    add_and_compile(engine, scan, trace)
    timed_refine(engine, scan, trace, budget_s, n_scores)
    return trace


def timed_refine(
    engine, scan: Problem, trace: Trace, budget_s: float, n_scores: int, t_start_s: float = 0.0
) -> None:
    """Refine for ``budget_s``, logging z every pass and the scores about every
    ``budget_s / n_scores`` into ``trace``, on a clock that starts at ``t_start_s``.

    ``refine(E)`` applies a cosine decay of the learning rates over its E epochs, so the run is
    two epochs at the full rate (timed, to size the run: AD a pass's worth of ``step()``, PIE
    ``refine(1)``) and one ``refine(E - 2)`` with E = budget / epoch time: the decay spans the
    whole budget. A run more than 20 % over budget is stopped.
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
            trace.add_score(elapsed, clock["epoch"], score(estimate, scan.truth))
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
        full_rate_pass(engine, engine.settings, len(scan.frames), on_epoch)
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


def timed_search(
    engine, lo_m: float, hi_m: float, passes: int
) -> tuple[float, dict[float, float], _TrialClock]:
    """``engine.search_distance(lo_m, hi_m, passes)``, with each trial's z, score and finish
    time (seconds since the call) caught from the search's log into the returned clock."""
    search_log = logging.getLogger("ptystream.engine.distance")
    level = search_log.level
    clock = _TrialClock(time.perf_counter())
    search_log.setLevel(logging.INFO)
    search_log.addHandler(clock)
    try:
        z_found, scores = engine.search_distance(lo_m, hi_m, passes)
    finally:
        search_log.removeHandler(clock)
        search_log.setLevel(level)
    return z_found, scores, clock


def search_then_polish(
    scan: Problem,
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
    engine = build_engine(scan, settings, distance_m=z_start_m)
    add_and_compile(engine, scan, trace)
    z_found, scores, clock = timed_search(engine, z_lo_m, z_hi_m, passes)
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


# -- the paper's Fig. 4: z trained with a pre-calibrated probe ---------------------------------


def calibrated_engine(scan: Problem, z_start_m: float, **changes: Any) -> tuple[Any, dict, float]:
    """The AD engine given the true probe and keeping it fixed (``probe_learning_rate=0``), z
    trained (``changes`` override the settings), started at ``z_start_m``, frames added and
    compiled. Returns it, its settings (JSON) and the untimed add-and-compile seconds."""
    from ptystream.config import EngineSettings
    from ptystream.engine import make_engine

    settings = EngineSettings(
        subpixel=False, train_distance=True, probe_learning_rate=0.0, **changes
    )
    setup = _engine_runs.setup_for(scan, settings, distance_m=z_start_m)
    engine = make_engine(setup.replace(initial_probe=scan.truth.probe))
    t = time.perf_counter()
    engine.add_frames(scan.frames, scan.positions_m)
    engine.warm_up()
    return engine, settings.model_dump(mode="json"), time.perf_counter() - t


def _final_scores(engine, scan: Problem) -> dict[str, float]:
    return {f"final_{k}": v for k, v in score(engine.estimate(), scan.truth).items()}


def calibrated_adam(
    scan: Problem,
    error_mm: float,
    lr_fraction: float,
    passes: int,
    blur_px: float = 0.0,
    blur_passes: float = 10.0,
) -> dict:
    """Adam on z from ``error_mm`` off at ``lr_fraction * |error|`` metres per step, the object
    trained at the default rate, the true probe fixed: one ``refine(passes)``, z and the time
    logged after every pass (clock from after the compile), scored at the end. ``blur_px`` > 0:
    coarse to fine (``distance_blur_px``, falling to 0 over ``blur_passes`` passes)."""
    lr = lr_fraction * abs(error_mm) * 1e-3
    coarse = {"distance_blur_px": blur_px, "distance_blur_passes": blur_passes} if blur_px else {}
    engine, settings, compile_s = calibrated_engine(
        scan, TRUE_Z_M + error_mm * 1e-3, distance_learning_rate_m=lr, **coarse
    )
    how = f"coarse to fine ({blur_px:g} px to 0 in {blur_passes:g} passes) " if blur_px else ""
    run: dict[str, Any] = {
        "name": f"Adam on z {how}from {error_mm:+g} mm, lr {lr:.3g} m",
        "start_error_mm": error_mm,
        "learning_rate_m": lr,
        "settings": settings,
        "compile_s": compile_s,
        "z_error_mm": [],
        "time_s": [],
        "loss": [],
    }
    t0 = time.perf_counter()

    def on_epoch(_i: int, loss: float) -> None:
        run["time_s"].append(time.perf_counter() - t0)
        run["z_error_mm"].append((engine.distance_m - TRUE_Z_M) * 1e3)
        run["loss"].append(loss)

    engine.refine(passes, on_epoch=on_epoch)
    run |= _final_scores(engine, scan)
    print(
        f"{run['name']}: |z error| {abs(run['z_error_mm'][-1]):.3f} mm after {passes} passes "
        f"({run['time_s'][-1]:.1f} s), |C| {run['final_abs_c']:.4f}"
    )
    return run


def calibrated_search(
    scan: Problem, error_mm: float, passes: int, trial_passes: int, lo_m: float, hi_m: float
) -> dict:
    """``search_distance`` with the true probe fixed, ``trial_passes`` passes a trial, from
    ``error_mm`` off; then z trained (default distance rate) for the passes left of ``passes``
    on the same engine. After each trial the best z so far is the estimate; after each pass of
    the polish, the engine's z."""
    engine, settings, compile_s = calibrated_engine(scan, TRUE_Z_M + error_mm * 1e-3)
    z_found, _, clock = timed_search(engine, lo_m, hi_m, trial_passes)
    t_search = time.perf_counter() - clock.t0
    best, passes_done, errors, times = float("inf"), [], [], []
    for i, (z, loss, t) in enumerate(clock.trials):
        if i == 0 or loss < best:
            best, z_best = loss, z
        passes_done.append((i + 1) * trial_passes)
        errors.append((z_best - TRUE_Z_M) * 1e3)
        times.append(t)
    n_search = passes_done[-1]
    t0 = clock.t0

    def on_epoch(_i: int, _loss: float) -> None:
        passes_done.append(passes_done[-1] + 1)
        errors.append((engine.distance_m - TRUE_Z_M) * 1e3)
        times.append(time.perf_counter() - t0)

    if passes > n_search:
        engine.refine(passes - n_search, on_epoch=on_epoch)
    run = {
        "name": f"search_distance ({trial_passes} pass/trial) + z trained",
        "start_error_mm": error_mm,
        "trial_passes": trial_passes,
        "range_m": [lo_m, hi_m],
        "settings": settings,
        "compile_s": compile_s,
        "trials": clock.trials,
        "search_passes": n_search,
        "search_s": t_search,
        "z_found_m": z_found,
        "passes": passes_done,
        "z_error_mm": errors,
        "time_s": times,
        **_final_scores(engine, scan),
    }
    print(
        f"{run['name']}: z {z_found * 1e3:.3f} mm after {len(clock.trials)} trials = {n_search} "
        f"passes ({t_search:.1f} s); |z error| {abs(errors[-1]):.3f} mm after {passes_done[-1]} "
        f"passes ({times[-1]:.1f} s), |C| {run['final_abs_c']:.4f}"
    )
    return run


def loss_landscape(scan: Problem, z_grid_m: np.ndarray, passes: int) -> dict:
    """With the true probe fixed and z held at each of ``z_grid_m``, ``passes`` passes from the
    same flat start (one engine, its state restored each time): the mean loss of the first pass
    (the object barely formed: what Adam on z sees) and of the last (what the search scores)."""
    engine, _, _ = calibrated_engine(scan, TRUE_Z_M)
    start = engine.snapshot()
    engine.hold_distance = True
    first, last = [], []
    t = time.perf_counter()
    for z in z_grid_m:
        engine.restore(start)
        engine.distance_m = float(z)
        losses: list[float] = []
        engine.refine(passes, on_epoch=lambda _i, loss, out=losses: out.append(loss))
        first.append(losses[0])
        last.append(losses[-1])
    wall = time.perf_counter() - t
    print(f"loss landscape: {len(z_grid_m)} distances x {passes} passes in {wall:.1f} s")
    return {"z_m": z_grid_m, "passes": passes, "first_pass_loss": first, "last_pass_loss": last}


def _local_minima_mm(z_m, loss) -> list[float]:
    """The grid distances (mm) whose loss is below both neighbours' (an end counts if below its
    one neighbour)."""
    y = np.asarray(loss)
    padded = np.concatenate([[np.inf], y, [np.inf]])
    low = (y < padded[:-2]) & (y < padded[2:])
    return [round(float(z) * 1e3, 3) for z in np.asarray(z_m)[low]]


def run_calibrated(scan: Problem, args, quick: bool, save) -> dict:
    """The ``calibrated`` part (module docstring); ``save(part)`` after every run."""
    limit_m = STUDY.distance_limit_m
    part: dict[str, Any] = {
        "machine": _harness.machine_info(),
        "probe": "the true probe, fixed (probe_learning_rate 0)",
        "passes": args.calibrated_passes,
        "lr_fraction_of_start_error_per_step": args.calibrated_lr_fraction,
        "blur_px": args.calibrated_blur_px,
        "blur_passes": args.calibrated_blur_passes,
        "adam": [],
        "coarse_to_fine": [],
        "search": None,
        "landscape": None,
    }
    starts = [e for e in args.calibrated_starts_mm if 0 < TRUE_Z_M + e * 1e-3 <= limit_m]
    for error_mm in starts:
        part["adam"].append(
            calibrated_adam(scan, error_mm, args.calibrated_lr_fraction, args.calibrated_passes)
        )
        save(part)
    for error_mm in starts if args.calibrated_blur_px > 0 else []:
        part["coarse_to_fine"].append(
            calibrated_adam(
                scan,
                error_mm,
                args.calibrated_lr_fraction,
                args.calibrated_passes,
                args.calibrated_blur_px,
                args.calibrated_blur_passes,
            )
        )
        save(part)
    if starts and args.calibrated_search_passes > 0:
        part["search"] = calibrated_search(
            scan,
            starts[0],
            args.calibrated_passes,
            args.calibrated_search_passes,
            0.5e-3,
            0.97 * limit_m,
        )
        save(part)
    step_m = (2.0 if quick else args.landscape_step_mm) * 1e-3
    if args.landscape_passes > 0:
        grid = np.arange(0.5e-3, limit_m, step_m)
        part["landscape"] = loss_landscape(scan, grid, args.landscape_passes)
        save(part)
    return part


# -- figures ---------------------------------------------------------------------------------


def plot_convergence(traces: list[Trace], budget_s: float, path: Path) -> None:
    """The methods' scores against time, each with the same budget."""
    _engine_runs.plot_convergence(
        traces,
        path,
        budget_s=budget_s,
        target_abs_c=TARGET_ABS_C,
        mark_s=30.0,
        title=f"{STUDY.n_positions} positions, {STUDY.overlap:.0%} overlap, near field z = "
        f"{TRUE_Z_M * 1e3} mm, {STUDY.peak_counts:.0f} counts peak + read noise "
        f"{STUDY.read_noise_counts:.0f}: same budget each",
        xlabel="wall-clock time (s), one TensorFlow thread, compile excluded",
    )


def _aligned(estimate, truth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimate registered to the truth (shift, ramp, global phase, scale), truth, lit mask."""
    from ptystream.metrics import complex_correlation, fourier_shift

    mask = well_lit_mask(estimate)
    ref = truth.aligned_to(estimate.object.shape, estimate.object_origin_m)
    c = complex_correlation(estimate.object, ref, mask)
    yy, xx = np.indices(ref.shape)
    ramp = c.ramp_rad_per_px
    est = fourier_shift(estimate.object.astype(np.complex128), c.shift_px)
    est = est * np.exp(-1j * (ramp[0] * yy + ramp[1] * xx + c.global_phase_rad))
    est *= np.sum(np.abs(ref[mask])) / max(np.sum(np.abs(est[mask])), 1e-30)
    return est, ref, mask


def plot_images(traces: list[Trace], truth, path: Path) -> None:
    plt = _harness.pyplot()
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
    plt = _harness.pyplot()
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


def plot_calibrated(part: dict, path: Path) -> None:
    """|z - z_true| against passes and against seconds for each run of the ``calibrated``
    part, and the loss against a fixed z after the first and the last landscape pass."""
    plt = _harness.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6))
    for run in part["adam"]:
        err = np.abs([run["start_error_mm"], *run["z_error_mm"]])
        width = 2.0 if run is part["adam"][0] else 1.0
        line = axes[0].semilogy(np.arange(len(err)), err, lw=width, label=run["name"])[0]
        axes[1].semilogy([0.0, *run["time_s"]], err, lw=width, color=line.get_color())
    coarse = part.get("coarse_to_fine") or []
    for i, run in enumerate(coarse):  # dashed, in the colour of the plain run from its start
        err = np.abs([run["start_error_mm"], *run["z_error_mm"]])
        style = {"ls": "--", "lw": 2.0 if i == 0 else 1.0, "color": f"C{i}"}
        axes[0].semilogy(np.arange(len(err)), err, label=run["name"], **style)
        axes[1].semilogy([0.0, *run["time_s"]], err, **style)
    search = part.get("search")
    if search:
        err = np.abs([search["start_error_mm"], *search["z_error_mm"]])
        label = f"{search['name']} (best trial so far, then z trained)"
        n = len(search["trials"]) + 1  # start and trials: markers; the polish: a line
        for ax, x in ((axes[0], [0, *search["passes"]]), (axes[1], [0.0, *search["time_s"]])):
            ax.semilogy(x[:n], err[:n], "ko:", ms=4, lw=0.8, label=label)
            ax.semilogy(x[n - 1 :], err[n - 1 :], "k-", lw=1.5)
            label = None
    for ax in axes[:2]:
        ax.axhline(1.0, color="r", ls="--", lw=0.8, label="1 mm")
        ax.set_ylabel("|z - z_true| (mm)")
        ax.grid(alpha=0.3)
    axes[0].axvline(part["passes"], color="r", ls=":", lw=0.8, label=f"{part['passes']} passes")
    axes[0].set_xlabel("passes over the 80 frames (refine epochs)")
    axes[1].set_xlabel("wall-clock time (s), one TensorFlow thread, compile excluded")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    land = part.get("landscape")
    if land:
        z_mm = np.asarray(land["z_m"]) * 1e3
        for key, label in (
            ("first_pass_loss", "first pass (what the gradient on z sees)"),
            ("last_pass_loss", f"pass {land['passes']} (what search_distance scores)"),
        ):
            y = np.asarray(land[key])
            axes[2].plot(z_mm, y / y.min() - 1.0, ".-", label=label)
        axes[2].axvline(TRUE_Z_M * 1e3, color="k", lw=0.8, label="true z")
        if part["adam"]:
            z0_mm = TRUE_Z_M * 1e3 + part["adam"][0]["start_error_mm"]
            axes[2].axvline(z0_mm, color="C0", ls="--", lw=0.8, label="start of the first run")
        axes[2].axvline(STUDY.distance_limit_m * 1e3, color="r", ls=":", label="N dx^2 / lambda")
        axes[2].set_xlabel("z held at (mm)")
        axes[2].set_ylabel("mean loss of the pass / its minimum over z - 1")
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=7)
    fig.suptitle(
        f"z trained with the probe pre-calibrated (true probe, fixed); true z {TRUE_Z_M * 1e3} mm"
    )
    fig.tight_layout(rect=(0.0, 0.17, 1.0, 1.0))  # room for the runs' legend below
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
        # tried for the near field (robustness.py) and not shipped: it lost phase here
        "ptystream, object rate 0.3": EngineSettings(object_learning_rate=0.3, **common),
        # seifert2021-sim's batch (robustness.py's near-field scans gained |C| and phase at 8)
        "ptystream, batch 8": EngineSettings(batch_size=8, **common),
        "ePIE": EngineSettings(algorithm="epie", **common),
        "mPIE": EngineSettings(algorithm="mpie", **common),
    }


def main(argv: list[str] | None = None) -> int:
    parser = _harness.parser(__doc__, quick="smoke run: 6 s per method")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per method")
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
    parser.add_argument(
        "--only", choices=["methods", "distance", "calibrated"], help="run one part only"
    )
    parser.add_argument(
        "--calibrated-starts-mm",
        type=float,
        nargs="+",
        default=None,
        help="calibrated: start errors of z in mm, the paper's first (default 15 4 2 1 -1 -2, "
        "quick 15 1)",
    )
    parser.add_argument(
        "--calibrated-lr-fraction",
        type=float,
        default=1 / 30,
        help="calibrated: Adam rate of z per step as a fraction of the start error",
    )
    parser.add_argument(
        "--calibrated-passes", type=int, default=35, help="calibrated: passes per run"
    )
    parser.add_argument(
        "--calibrated-blur-px",
        type=float,
        default=8.0,
        help="calibrated: the coarse-to-fine runs' starting blur, detector pixels (0: skip them)",
    )
    parser.add_argument(
        "--calibrated-blur-passes",
        type=float,
        default=10.0,
        help="calibrated: passes over which the coarse-to-fine blur falls to 0",
    )
    parser.add_argument(
        "--calibrated-search-passes",
        type=int,
        default=1,
        help="calibrated: passes per trial of search_distance (0: skip)",
    )
    parser.add_argument(
        "--landscape-step-mm",
        type=float,
        default=0.5,
        help="calibrated: grid step of the loss landscape in z (quick: 2)",
    )
    parser.add_argument(
        "--landscape-passes",
        type=int,
        default=3,
        help="calibrated: passes at each fixed z of the landscape (0: skip)",
    )
    parser.add_argument(
        "--paper-probe-ratio",
        type=float,
        default=1.0,
        help="paper runs: probe learning rate as a fraction of the object's",
    )
    parser.add_argument("--scores", type=int, default=40, help="scores per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_table)
    budget = 6.0 if args.quick else args.budget
    if args.search_passes is None:
        args.search_passes = 4 if args.quick else 25
    if args.polish_budget is None:
        args.polish_budget = 6.0 if args.quick else 30.0
    if args.calibrated_starts_mm is None:
        args.calibrated_starts_mm = [15.0, 1.0] if args.quick else [15.0, 4.0, 2.0, 1.0, -1.0, -2.0]
    out_dir = _harness.output_dir(args.quick)
    suffix = "_quick" if args.quick else ""

    from ptystream.config import EngineSettings
    from ptystream.engine import configure_tensorflow

    configure_tensorflow(1)
    limit_m = STUDY.distance_limit_m
    t = time.perf_counter()
    scan = near_field_problem(STUDY, seed=args.seed, probe_kind=args.probe)
    facts = scan.details
    print(
        f"simulated {len(scan.frames)} frames in {time.perf_counter() - t:.1f} s: probe "
        f"{facts['probe_diameter_px']:.1f} px (90 % power), disc radius "
        f"{facts['disc_radius_px']:.1f} px, mean counts over the lit area "
        f"{facts['mean_lit_counts']:.0f}; z {TRUE_Z_M * 1e3} mm, "
        f"angular-spectrum limit N dx^2 / lambda = {limit_m * 1e3:.2f} mm"
    )
    result: dict[str, Any] = {
        "machine": {
            **_harness.machine_info(),
            "note": "one run on a shared 2-core machine; wall times vary between runs",
        },
        "budget_s": budget,
        "setup": {
            "wavelength_m": STUDY.wavelength_m,
            "pixel_m": STUDY.pixel_m,
            "object_px": scan.truth.object.shape[0],
            "frame_px": STUDY.frame_px,
            "n_positions": STUDY.n_positions,
            "overlap": STUDY.overlap,
            "probe": f"{args.probe}: pinhole {STUDY.pinhole_diameter_m * 1e6:.0f} um, "
            f"{STUDY.pinhole_to_sample_m * 1e3} mm before the sample",
            "probe_diameter_px": facts["probe_diameter_px"],
            "poisson_disc_radius_px": facts["disc_radius_px"],
            "poisson_disc_seed": facts["poisson_disc_seed"],
            "true_z_m": TRUE_Z_M,
            "angular_spectrum_limit_m": limit_m,
            "peak_counts": STUDY.peak_counts,
            "mean_lit_counts": facts["mean_lit_counts"],
            "read_noise_counts": STUDY.read_noise_counts,
        },
        "methods": [],
        "distance": [],
        "distance_search": None,
        "calibrated": None,
    }
    json_path = _harness.json_path(args, "paper_study")

    def save() -> None:  # after every run: a later one may be interrupted
        _harness.write_json(result, json_path, announce=False)

    if args.only and json_path.exists():  # keep the parts not run now
        earlier = _harness.read_json(json_path)
        if args.only != "methods":
            result["methods"] = earlier.get("methods", [])
            result["methods_machine"] = earlier.get("methods_machine", earlier.get("machine"))
        if args.only != "distance":
            result["distance"] = earlier.get("distance", [])
            result["distance_search"] = earlier.get("distance_search")
        if args.only != "calibrated":
            result["calibrated"] = earlier.get("calibrated")
    traces = []
    if args.only in (None, "methods"):
        for name, settings in methods(args.paper_probe_ratio).items():
            trace = run_method(name, settings, scan, budget, TRUE_Z_M, args.scores)
            traces.append(trace)
            result["methods"].append(trace.summary())
            save()
        ran = [tr for tr in traces if tr.time_s]
        if ran:
            plot_convergence(ran, budget, out_dir / f"paper_convergence{suffix}.png")
            plot_images(ran, scan.truth, out_dir / f"paper_images{suffix}.png")
    z_traces = []
    if args.only in (None, "distance"):
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
                save()
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
            save()
        if z_traces or search:
            plot_distance(z_traces, search, polish, out_dir / f"paper_distance{suffix}.png")
    if args.only in (None, "calibrated"):

        def save_part(part: dict) -> None:
            result["calibrated"] = part
            save()

        part = run_calibrated(scan, args, args.quick, save_part)
        plot_calibrated(part, out_dir / f"paper_calibrated{suffix}.png")
    print(format_table(result))
    _harness.write_json(result, json_path)
    print(f"figures in {out_dir}")
    return 0


def format_table(result: dict) -> str:
    lines = []
    if result["methods"]:
        header = f"{'method':24s} {'|C|':>7s} {'amp r':>7s} {'phase r':>7s} {'t(|C|>=0.9)':>12s}"
        lines.append(header)
    for m in result["methods"]:
        if not m["abs_c"]:
            lines.append(f"{m['name']:24s} {m['note']}")
            continue
        t = m["time_to_target_s"]
        lines.append(
            f"{m['name']:24s} {m['abs_c'][-1]:7.4f} {m['amplitude'][-1]:7.3f} "
            f"{m['phase'][-1]:7.3f} {'-' if t is None else f'{t:.1f} s':>12s}"
        )
    for d in result["distance"]:
        z = np.array(d["distance_m"])
        err = np.abs(z - result["setup"]["true_z_m"]) * 1e3
        below = np.nonzero(err < 1.0)[0]
        first = f"{d['z_time_s'][below[0]]:.1f} s" if len(below) else "never"
        lines.append(f"{d['name']:24s} final |z error| {err[-1]:.3f} mm, first < 1 mm at {first}")
    search = result.get("distance_search")
    if search:
        lines.append(
            f"search_distance: z {search['z_found_m'] * 1e3:.3f} mm "
            f"(|error| {abs(search['error_mm']):.3f} mm), {search['n_trials']} trials in "
            f"{search['wall_s']:.1f} s; polished: z {search['z_polished_m'] * 1e3:.3f} mm "
            f"(|error| {abs(search['polished_error_mm']):.3f} mm) at "
            f"{search['polished_end_s']:.1f} s"
        )
    if result.get("calibrated"):
        lines += [""] * bool(lines) + format_calibrated(result["calibrated"])
    return "\n".join(lines)


def _first_within(passes, errors, times, limit_mm: float = 1.0) -> str:
    """``pass P (T s)`` of the first |z error| under ``limit_mm``, or ``never``."""
    for p, e, t in zip(passes, errors, times, strict=True):
        if abs(e) < limit_mm:
            return f"pass {p} ({t:.1f} s)"
    return "never"


def format_calibrated(part: dict) -> list[str]:
    """The ``calibrated`` part: one row per run, |z error| after every pass, the landscape."""
    n = part["passes"]
    lines = [f"z trained with the probe pre-calibrated (true probe, fixed), {n} passes a run:"]
    rows = []
    for run in [*part["adam"], *part.get("coarse_to_fine", [])]:
        errs = run["z_error_mm"]
        passes = range(1, len(errs) + 1)
        rows.append(
            [
                run["name"],
                _first_within(passes, errs, run["time_s"]),
                f"{abs(errs[-1]):.3f}",
                f"{run['time_s'][-1]:.1f}",
                f"{run['final_abs_c']:.4f}",
            ]
        )
    search = part.get("search")
    if search:
        rows.append(
            [
                f"{search['name']}, from {search['start_error_mm']:+g} mm",
                _first_within(search["passes"], search["z_error_mm"], search["time_s"]),
                f"{abs(search['z_error_mm'][-1]):.3f}",
                f"{search['time_s'][-1]:.1f}",
                f"{search['final_abs_c']:.4f}",
            ]
        )
    header = ["run", "first |z error| < 1 mm", f"|z error| after {n} (mm)", "s", "|C|"]
    lines += _harness.table(header, rows)
    if search:
        lines.append(
            f"search_distance done after {len(search['trials'])} trials = "
            f"{search['search_passes']} passes ({search['search_s']:.1f} s): z "
            f"{search['z_found_m'] * 1e3:.3f} mm, "
            f"{abs(search['z_found_m'] - TRUE_Z_M) * 1e3:.3f} mm off (earlier rows: its best "
            "trial so far)"
        )
    if part["adam"] or part.get("coarse_to_fine") or search:
        runs = [*part["adam"][:1], *part.get("coarse_to_fine", [])[:1]]
        header = ["pass"]
        columns: list[dict[int, tuple[float, float]]] = []
        for run in runs:
            header += [f"{run['name']}: |z error| mm", "s"]
            errs, times = run["z_error_mm"], run["time_s"]
            columns.append(
                {i + 1: (e, t) for i, (e, t) in enumerate(zip(errs, times, strict=True))}
            )
        if search:
            header += ["search + z trained: |z error| mm", "s"]
            z_err, times = search["z_error_mm"], search["time_s"]
            columns.append(dict(zip(search["passes"], zip(z_err, times, strict=True), strict=True)))
        last = max(max(c) for c in columns)
        rows = []
        for p in range(1, last + 1):
            row = [str(p)]
            for c in columns:
                e_t = c.get(p)
                row += ["-", "-"] if e_t is None else [f"{abs(e_t[0]):.3f}", f"{e_t[1]:.1f}"]
            rows.append(row)
        lines += ["", *_harness.table(header, rows)]
    land = part.get("landscape")
    if land:
        first = _local_minima_mm(land["z_m"], land["first_pass_loss"])
        last = _local_minima_mm(land["z_m"], land["last_pass_loss"])
        lines += [
            "",
            f"loss with z held ({len(land['z_m'])} distances): local minima of the first pass at "
            f"{first} mm; of pass {land['passes']} at {last} mm (true z {TRUE_Z_M * 1e3} mm)",
        ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
