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

The problem is ``ptystream.sim.problems.near_field_problem`` (``NearFieldStudy``), scored with
``ptystream.metrics.score_over`` on the well-lit region's bounding box plus 16 px.

Writes ``benchmarks/results/paper_study.json`` and ``benchmarks/figures/paper_*.png`` (``--quick``:
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
from _engine_runs import build_engine  # noqa: E402

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
    parser.add_argument("--only", choices=["methods", "distance"], help="run one part only")
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
    }
    json_path = _harness.json_path(args, "paper_study")

    def save() -> None:  # after every run: a later one may be interrupted
        _harness.write_json(result, json_path, announce=False)

    if args.only == "distance" and json_path.exists():  # keep the earlier method comparison
        earlier = _harness.read_json(json_path)
        result["methods"] = earlier.get("methods", [])
        result["methods_machine"] = earlier.get("methods_machine", earlier.get("machine"))
    traces = []
    if args.only != "distance":
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
    print(format_table(result))
    _harness.write_json(result, json_path)
    print(f"figures in {out_dir}")
    return 0


def format_table(result: dict) -> str:
    lines = []
    lines.append(f"{'method':24s} {'|C|':>7s} {'amp r':>7s} {'phase r':>7s} {'t(|C|>=0.9)':>12s}")
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
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
