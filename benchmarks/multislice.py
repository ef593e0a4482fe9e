"""Multislice reconstruction of a thick hard X-ray sample: layers separated, at equal time.

    flock /tmp/ptystream-bench.lock .venv/bin/python benchmarks/multislice.py   # ~10 min
    .venv/bin/python benchmarks/multislice.py --quick        # smoke run, 4 s per run
    .venv/bin/python benchmarks/multislice.py --only pie     # other mPIE settings (~5 min)
    .venv/bin/python benchmarks/multislice.py --report benchmarks/results/multislice.json

Two cases, simulated by :func:`ptystream.sim.thick.thick_far_field_problem` (numpy multislice,
independent of the engines): two and three strong layers 600 um apart (about 4 depths of focus,
5.4 dx^2 / lambda, at the object pixel dx = 64.6 nm, 8 keV), 100 positions of 64^2 far-field
frames, Poisson noise at 500 counts peak plus Gaussian read noise sigma = 10 counts. For each
case, one after another in this process, each for the same wall-clock budget on one TensorFlow
thread: single-slice AD (a thin object: scored against the product of the layers only),
multislice AD (the engine defaults but batch 8, :data:`AD_BATCH`; the true spacing), the same at
the default batch 16, and multislice mPIE (3PIE updates; object and probe steps 0.5, the other
``PieSettings`` at their defaults). Then, on the two-layer case, multislice AD (batch 8) with
``train_slice_spacing`` from a spacing 30 % short and 30 % long, the spacing logged after every
pass.

Timing follows ``paper_study.py``: engine built, frames added and ``warm_up()`` (the XLA
compile) untimed; four passes timed to size the run (the median of the last three; AD: a pass's
worth of ``step()``, since each ``refine`` call also measures its starting misfit; mPIE:
``refine(1)``), then
one ``refine(E - 4)`` with E = budget / pass time (AD's cosine decay of the learning rates then
spans the budget), and a run more than 20 % over budget is stopped; mPIE, which has no schedule,
runs until the budget. Scores are taken about every budget / ``--scores`` seconds; their time is
off the clock (wall and CPU). Scores: per slice against its own layer, |C|, amplitude r and
phase r (``ptystream.metrics.score_over`` over the pixels the true probe lights above 30 % of
its maximum, ``Problem.lit_mask``), the flat object's |C| per layer, and |C| of the product of
the slices against the product of the layers; at the end also each slice's phase r against every
*other* layer (scored the same way, registration included, so if anything biased upwards), with
the truth layers' own phase r against each other beside it.

``--only pie`` runs other PIE settings on the two-layer case instead (into
``results/multislice_pie.json``), the evidence for the mPIE steps chosen.

Writes ``benchmarks/results/multislice.json`` and ``benchmarks/figures/multislice_*.png``
(``--quick``: ``results/multislice_quick.json`` and ``results/multislice_*_quick.png``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # numpy's PIE gets one core too

import numpy as np  # noqa: E402

from ptystream.metrics import complex_correlation, fourier_shift, score_over  # noqa: E402
from ptystream.sim.problems import Problem  # noqa: E402
from ptystream.sim.thick import thick_far_field_problem, thick_sample  # noqa: E402

import _harness  # noqa: E402
from _engine_runs import build_engine, full_rate_pass  # noqa: E402

FRAME_PX = 64
N_POINTS = 100
SPACING_M = 600e-6
PEAK_COUNTS = 500.0
READ_NOISE_COUNTS = 10.0
#: Each layer's transmission and phase (``thick_sample``): strong layers, so that a flat object
#: scores well below 0.9 per layer (weak layers leave it at 0.94-0.99 and |C| means little).
AMPLITUDE_RANGE = (0.5, 1.0)
PHASE_RANGE_RAD = (-2.0, 2.0)
SEED = 0  # positions, then noise
CASES = {"two layers": 2, "three layers": 3}
SPACING_ERRORS = (-0.3, 0.3)
SPACING_LEARNING_RATE_M = 5e-6
TARGET_ABS_C = 0.9
SPACING_TOLERANCE = 0.1
#: The AD runs' batch (the default is 16, also run as "multislice AD, batch 16"): twice the
#: Adam steps per pass. In 60 s runs of the three-layer case it gave per-layer |C| 0.916 / 0.907
#: / 0.952 and 0.925 / 0.907 / 0.953 against 0.886 / 0.878 / 0.948 at 16 in the same kind of
#: run (batch 4 with the rates decaying to 1 %: 0.931 / 0.919 / 0.954); two layers 0.933 /
#: 0.942 against 0.938 / 0.947.
AD_BATCH = 8
BATCH_16_RUN = "multislice AD, batch 16"  # the name of the run at the default batch
#: mPIE for the multislice runs: half steps (the project defaults, measured on thin scans,
#: diverged here within 20 s; ``--only pie`` runs the alternatives).
PIE_STEPS = {"object_step": 0.5, "probe_step": 0.5}


def make_problem(n_slices: int) -> Problem:
    """The case of ``n_slices`` layers :data:`SPACING_M` apart (same positions for every case)."""
    kwargs = {"n_slices": n_slices, "spacing_m": SPACING_M, "seed": SEED}
    # the sample's size is the one thick_far_field_problem picks for the scan (noise-free, fast)
    size = thick_far_field_problem(FRAME_PX, N_POINTS, peak_counts=None, **kwargs)
    sample = thick_sample(
        size.truth.object.shape[-1],
        n_slices,
        amplitude_range=AMPLITUDE_RANGE,
        phase_range_rad=PHASE_RANGE_RAD,
    )
    return thick_far_field_problem(
        FRAME_PX,
        N_POINTS,
        peak_counts=PEAK_COUNTS,
        read_noise_counts=READ_NOISE_COUNTS,
        sample=sample,
        **kwargs,
    )


# -- scoring ---------------------------------------------------------------------------------


def _layer(thing, obj: np.ndarray):
    return dataclasses.replace(thing, object=obj)


def lit_mask(problem: Problem, estimate) -> np.ndarray:
    obj = estimate.object
    return problem.lit_mask(_layer(estimate, obj if obj.ndim == 2 else obj[0]))


def score(problem: Problem, estimate, *, cross: bool = False) -> dict[str, Any]:
    """Per-slice |C|, amplitude r, phase r and flat |C| against each layer (multislice), and
    |C| of the product of the slices (or of the thin object) against the layers' product; with
    ``cross``, ``cross_phase[s][l]``: slice s's phase r against layer l."""
    truth, obj = problem.truth, estimate.object
    mask = lit_mask(problem, estimate)
    product = obj if obj.ndim == 2 else np.prod(obj, axis=0)
    c, flat = score_over(
        _layer(estimate, product),
        _layer(truth, np.prod(truth.object, axis=0)),
        mask,
        crop_margin_px=16,
    )
    out: dict[str, Any] = {"product": c.abs_c, "flat_product": flat}
    if obj.ndim == 2:
        return out
    layers = [
        score_over(_layer(estimate, o), _layer(truth, t), mask, crop_margin_px=16)
        for o, t in zip(obj, truth.object, strict=True)
    ]
    out["abs_c"] = [c.abs_c for c, _ in layers]
    out["amplitude"] = [c.amplitude for c, _ in layers]
    out["phase"] = [c.phase for c, _ in layers]
    out["flat"] = [f for _, f in layers]
    if cross:
        out["cross_phase"] = [
            [
                score_over(_layer(estimate, o), _layer(truth, t), mask, crop_margin_px=16)[0].phase
                for t in truth.object
            ]
            for o in obj
        ]
    return out


def truth_cross_phase(problem: Problem, estimate) -> list[list[float]]:
    """Phase r of the true layers against each other over the scored region (no registration):
    what unrelated pictures share, the floor for a slice's phase r with another layer."""
    mask = lit_mask(problem, estimate)
    aligned = problem.truth.aligned_to(estimate.object.shape, estimate.object_origin_m)
    return [
        [complex_correlation(a, b, mask, register=False, remove_ramp=False).phase for b in aligned]
        for a in aligned
    ]


# -- one timed run ---------------------------------------------------------------------------


@dataclass
class Run:
    """One method on one case: scores against wall-clock seconds (compile and scoring off)."""

    case: str
    method: str
    settings: dict
    time_s: list[float] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    gaps_m: list[list[float]] = field(default_factory=list)  # after every pass (trained)
    compile_s: float = 0.0
    epochs_planned: int = 0
    cpu_per_wall: float = float("nan")
    final: dict = field(default_factory=dict)
    note: str = ""
    estimate: Any = None  # the final estimate, not saved

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "estimate"}


#: Passes at the full rate that size a run (the median of all but the first).
SIZING_PASSES = 4


class _OverBudget(Exception):
    pass


def timed_run(
    case: str, method: str, settings, problem: Problem, budget_s: float, n_scores: int
) -> Run:
    """Build, add the frames and compile (untimed), then refine for ``budget_s``."""
    run = Run(case, method, settings.model_dump(mode="json"))
    engine = build_engine(problem, settings)
    t = time.perf_counter()
    engine.add_frames(problem.frames, problem.positions_m)
    engine.warm_up()
    run.compile_s = time.perf_counter() - t
    trained = settings.train_slice_spacing
    # AD's rates decay over the planned passes, so its run is planned; PIE has no schedule and
    # simply stops at the budget
    scheduled = settings.algorithm == "ad"
    limit_s = 1.2 * budget_s if scheduled else budget_s
    clock = {"epoch": 0, "off": 0.0, "cpu_off": 0.0, "next": 0.0}
    t0, cpu0 = time.perf_counter(), time.process_time()

    def record(force: bool = False) -> float:
        now, cpu = time.perf_counter(), time.process_time()
        elapsed = now - t0 - clock["off"]
        if trained:
            run.gaps_m.append(list(engine.slice_gaps_m))
        if force or elapsed >= clock["next"]:
            run.time_s.append(elapsed)
            run.epoch.append(clock["epoch"])
            run.scores.append(score(problem, engine.estimate()))
            clock["next"] = elapsed + budget_s / n_scores
        clock["off"] += time.perf_counter() - now
        clock["cpu_off"] += time.process_time() - cpu
        return elapsed

    def on_epoch(_i: int, _loss: float) -> None:
        clock["epoch"] += 1
        if record() >= limit_s:
            raise _OverBudget

    record(force=True)
    passes_s = []
    for _ in range(SIZING_PASSES):
        off, t = clock["off"], time.perf_counter()
        full_rate_pass(engine, settings, len(problem.frames), on_epoch)
        passes_s.append(time.perf_counter() - t - (clock["off"] - off))
    epoch_s = float(np.median(passes_s[1:]))  # the first pays one-off costs
    run.epochs_planned = max(SIZING_PASSES + 1, round(budget_s / max(epoch_s, 1e-3)))
    try:
        more = run.epochs_planned if scheduled else 100 * run.epochs_planned
        engine.refine(more - SIZING_PASSES, on_epoch=on_epoch)
    except _OverBudget:
        if scheduled:
            run.note = f"stopped at 1.2 x budget after {clock['epoch']} passes"
    if run.epoch[-1] != clock["epoch"]:
        record(force=True)
    wall = time.perf_counter() - t0 - clock["off"]
    run.cpu_per_wall = (time.process_time() - cpu0 - clock["cpu_off"]) / wall
    run.estimate = engine.estimate()
    run.final = score(problem, run.estimate, cross=run.estimate.object.ndim == 3)
    print(f"  {method}: {clock['epoch']} passes in {run.time_s[-1]:.1f} s; {_brief(run.final)}")
    return run


def _brief(s: dict) -> str:
    layers = " / ".join(f"{c:.4f}" for c in s.get("abs_c", []))
    return (f"per-layer |C| {layers}, " if layers else "") + f"product |C| {s['product']:.4f}"


def methods(n_slices: int) -> dict:
    from ptystream.config import EngineSettings, PieSettings

    thick = {"slices": n_slices, "slice_spacing_m": SPACING_M}
    return {
        "single-slice AD": EngineSettings(batch_size=AD_BATCH),
        "multislice AD": EngineSettings(batch_size=AD_BATCH, **thick),
        BATCH_16_RUN: EngineSettings(**thick),
        "multislice mPIE": EngineSettings(algorithm="mpie", pie=PieSettings(**PIE_STEPS), **thick),
    }


def pie_variants() -> dict:
    """``--only pie``: other mPIE settings on the two-layer case (all at the true spacing)."""
    from ptystream.config import EngineSettings, PieSettings

    thick = {"algorithm": "mpie", "slices": 2, "slice_spacing_m": SPACING_M}
    return {
        "mPIE, steps 0.5 (as used)": EngineSettings(pie=PieSettings(**PIE_STEPS), **thick),
        "mPIE, PieSettings defaults": EngineSettings(**thick),
        "mPIE, momentum 0 (rPIE)": EngineSettings(pie=PieSettings(momentum=0.0), **thick),
        "mPIE, alphas 1": EngineSettings(
            pie=PieSettings(object_alpha=1.0, probe_alpha=1.0), **thick
        ),
        "ePIE (3PIE), steps 1": EngineSettings(**{**thick, "algorithm": "epie"}),
    }


def spacing_settings(start_m: float):
    from ptystream.config import EngineSettings

    return EngineSettings(
        batch_size=AD_BATCH,
        slices=2,
        slice_spacing_m=start_m,
        train_slice_spacing=True,
        slice_spacing_learning_rate_m=SPACING_LEARNING_RATE_M,
    )


# -- figures ---------------------------------------------------------------------------------

_COLOURS = ("C0", "C1", "C2")


def plot_convergence(cases: list[dict], runs: dict[str, list[Run]], budget_s: float, path: Path):
    plt = _harness.pyplot()
    fig, axes = plt.subplots(len(cases), 3, figsize=(16, 4.4 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases, strict=True):
        for run in runs[case["name"]]:
            style = "--" if "PIE" in run.method else ":" if run.method == BATCH_16_RUN else "-"
            if "abs_c" in run.scores[0]:
                for s in range(case["n_slices"]):
                    for ax, key in ((row[0], "abs_c"), (row[2], "phase")):
                        values = [sc[key][s] for sc in run.scores]
                        label = f"{run.method}, layer {s}"
                        ax.plot(run.time_s, values, style, color=_COLOURS[s], label=label)
            colour = {"single-slice AD": "k", "multislice AD": "C3", BATCH_16_RUN: "C1"}.get(
                run.method, "C4"
            )
            products = [sc["product"] for sc in run.scores]
            row[1].plot(run.time_s, products, style, color=colour, marker=".", label=run.method)
        for s, flat in enumerate(case["flat_layers"]):
            row[0].axhline(flat, color=_COLOURS[s], ls=":", lw=0.8)
        row[0].axhline(TARGET_ABS_C, color="k", ls="--", lw=0.8)
        flat = case["flat_product"]
        row[1].axhline(flat, color="gray", ls=":", label=f"flat object ({flat:.3f})")
        titles = (
            "|C| of each slice against its layer (dotted: flat object)",
            "|C| of the product against the layers' product",
            "phase r of each slice against its layer",
        )
        for ax, title in zip(row, titles, strict=True):
            ax.set_title(f"{case['name']}: {title}", fontsize=9)
            ax.set_xlim(0, budget_s * 1.25)
            ax.set_xlabel("wall-clock s, one thread, compile and scoring excluded")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        row[0].set_ylim(0.4, 1.0)
        row[1].set_ylim(0.2, 1.0)
        row[2].set_ylim(0.0, 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_spacing(spacing: list[Run], path: Path) -> None:
    plt = _harness.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.4))
    true_um = SPACING_M * 1e6
    ax.axhspan(true_um * (1 - SPACING_TOLERANCE), true_um * (1 + SPACING_TOLERANCE), alpha=0.15)
    ax.axhline(true_um, color="k", lw=0.8, label=f"true {true_um:.0f} um (band: 10 %)")
    for run in spacing:
        gaps = np.array(run.gaps_m)[:, 0] * 1e6
        ax.plot(np.arange(len(gaps)), gaps, label=run.method)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("pass over the 100 frames")
    ax.set_ylabel("slice spacing (um)")
    ax.set_title(f"trained spacing, Adam at {SPACING_LEARNING_RATE_M:g} m per step", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _registered(obj: np.ndarray, layer: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``obj`` shifted, de-ramped and de-phased onto ``layer`` (as the score registers it)."""
    c = complex_correlation(obj, layer, mask)
    yy, xx = np.indices(obj.shape)
    ramp = c.ramp_rad_per_px
    out = fourier_shift(obj.astype(np.complex128), c.shift_px)
    return out * np.exp(-1j * (ramp[0] * yy + ramp[1] * xx + c.global_phase_rad))


def plot_images(cases: list[dict], runs: dict[str, list[Run]], path: Path) -> None:
    """The phase of each layer: truth, multislice AD, multislice mPIE."""
    plt = _harness.pyplot()
    rows = [(case, s) for case in cases for s in range(case["n_slices"])]
    shown = ("multislice AD", "multislice mPIE")
    thick = {c["name"]: [r for r in runs[c["name"]] if r.method in shown] for c in cases}
    fig, axes = plt.subplots(len(rows), 3, figsize=(8.4, 2.9 * len(rows)), squeeze=False)
    for ax_row, (case, s) in zip(axes, rows, strict=True):
        problem, done = case["problem"], thick[case["name"]]
        estimate = done[0].estimate
        mask = lit_mask(problem, estimate)
        truth = problem.truth.aligned_to(estimate.object.shape, estimate.object_origin_m)[s]
        r, c = np.nonzero(mask)
        crop = (slice(r.min(), r.max() + 1), slice(c.min(), c.max() + 1))
        images = [("truth", truth)] + [
            (f"{run.method}\n|C| {run.final['abs_c'][s]:.3f}", run.estimate.object[s])
            for run in done
        ]
        for ax, (title, image) in zip(ax_row, images, strict=False):
            if title != "truth":
                image = _registered(image, truth, mask)
            masked = np.ma.masked_where(~mask[crop], np.angle(image[crop]))
            ax.imshow(masked, cmap="twilight", vmin=-2.5, vmax=2.5)
            ax.set_title(f"{case['name']}, layer {s}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- the study -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = _harness.parser(__doc__, quick="smoke run: 4 s per run, into results/")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per method")
    parser.add_argument(
        "--spacing-budget", type=float, default=30.0, help="seconds per trained-spacing run"
    )
    parser.add_argument("--scores", type=int, default=15, help="scores per run")
    parser.add_argument(
        "--only",
        choices=["methods", "spacing", "pie"],
        help="run one part only (pie: other mPIE settings, into multislice_pie.json)",
    )
    args = parser.parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_table)
    budget = 4.0 if args.quick else args.budget
    spacing_budget = 4.0 if args.quick else args.spacing_budget
    n_scores = 4 if args.quick else args.scores
    out_dir = _harness.output_dir(args.quick)
    suffix = "_quick" if args.quick else ""

    from ptystream.engine import configure_tensorflow

    configure_tensorflow(1)
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "quick": args.quick,
        "machine": {
            **_harness.machine_info(),
            "note": "one run on a shared 2-core machine; wall times vary between runs",
        },
        "budget_s": budget,
        "spacing_budget_s": spacing_budget,
        "setup": {
            "frame_px": FRAME_PX,
            "n_points": N_POINTS,
            "spacing_m": SPACING_M,
            "amplitude_range": AMPLITUDE_RANGE,
            "phase_range_rad": PHASE_RANGE_RAD,
            "peak_counts": PEAK_COUNTS,
            "read_noise_counts": READ_NOISE_COUNTS,
            "seed": SEED,
            "pie_steps": PIE_STEPS,
            "spacing_learning_rate_m": SPACING_LEARNING_RATE_M,
        },
        "cases": [],
        "spacing": [],
        "pie_variants": [],
    }
    json_path = _harness.json_path(args, "multislice", "_pie" if args.only == "pie" else "")
    if args.only in ("methods", "spacing") and json_path.exists():  # keep the other part
        keep = "spacing" if args.only == "methods" else "cases"
        result[keep] = _harness.read_json(json_path).get(keep, [])
    cases: list[dict] = []
    runs: dict[str, list[Run]] = {}
    for name, n_slices in CASES.items():
        if args.only in ("spacing", "pie") and n_slices != 2:
            continue
        problem = make_problem(n_slices)
        d = problem.details
        case = {
            "name": name,
            "n_slices": n_slices,
            "problem": problem,
            "wavelength_m": problem.geometry.wavelength_m,
            "object_pixel_m": problem.geometry.object_pixel_size_m,
            "depth_of_focus_m": d["depth_of_focus_m"],
            "max_gap_m": d["max_gap_m"],
            "step_px": problem.step_px,
            "negative_pixels": float(np.mean(problem.frames < 0)),
            "runs": [],
        }
        cases.append(case)
        print(
            f"{name}: dx {case['object_pixel_m'] * 1e9:.1f} nm, lambda "
            f"{case['wavelength_m'] * 1e9:.4f} nm, depth of focus "
            f"{d['depth_of_focus_m'] * 1e6:.0f} um, spacing {SPACING_M * 1e6:.0f} um = "
            f"{SPACING_M / d['depth_of_focus_m']:.1f} depths of focus (limit "
            f"{d['max_gap_m'] * 1e6:.0f} um)",
            flush=True,
        )
    if args.only in (None, "methods"):
        for case in cases:
            problem, name = case["problem"], case["name"]
            todo = methods(case["n_slices"])
            runs[name] = [timed_run(name, m, s, problem, budget, n_scores) for m, s in todo.items()]
            thick_run = runs[name][1]
            case["flat_layers"] = thick_run.final["flat"]
            case["flat_product"] = thick_run.final["flat_product"]
            case["truth_cross_phase"] = truth_cross_phase(problem, thick_run.estimate)
            case["runs"] = [r.summary() for r in runs[name]]
            result["cases"].append({k: v for k, v in case.items() if k != "problem"})
            _harness.write_json(result, json_path, announce=False)
        plot_convergence(cases, runs, budget, out_dir / f"multislice_convergence{suffix}.png")
        plot_images(cases, runs, out_dir / f"multislice_images{suffix}.png")
    if args.only in (None, "spacing"):
        two = cases[0]["problem"]
        spacing = []
        for error in SPACING_ERRORS:
            start = SPACING_M * (1 + error)
            label = f"start {start * 1e6:.0f} um ({error:+.0%})"
            spacing.append(
                timed_run(
                    "two layers", label, spacing_settings(start), two, spacing_budget, n_scores
                )
            )
            result["spacing"].append(spacing[-1].summary())
            _harness.write_json(result, json_path, announce=False)
        plot_spacing(spacing, out_dir / f"multislice_spacing{suffix}.png")
    if args.only == "pie":
        two = cases[0]["problem"]
        for method, settings in pie_variants().items():
            run = timed_run("two layers", method, settings, two, budget, n_scores)
            result["pie_variants"].append(run.summary())
            _harness.write_json(result, json_path, announce=False)
    result["total_s"] = time.perf_counter() - t_start
    if args.only != "pie":
        print(f"figures in {out_dir}")
    return _harness.finish(result, format_table, json_path)


# -- tables ----------------------------------------------------------------------------------


def _at(run: dict, t: float, key: str) -> Any:
    """The score ``key`` of the last score taken at or before ``t`` seconds."""
    inside = [
        sc.get(key) for s, sc in zip(run["time_s"], run["scores"], strict=True) if s <= t + 1e-9
    ]
    return inside[-1] if inside else None


def _layers(values) -> str:
    return " / ".join(f"{v:.3f}" for v in values) if values else "-"


def _first_within(gaps: list[float], true: float, tol: float) -> int | None:
    """The pass from which the gap stays within ``tol`` of ``true``."""
    bad = [i for i, g in enumerate(gaps) if abs(g - true) > tol * true]
    first = 0 if not bad else bad[-1] + 1
    return first if first < len(gaps) else None


def format_table(result: dict) -> str:
    lines = []
    for case in result["cases"]:
        t_eq = min(r["time_s"][-1] for r in case["runs"])
        lines.append(
            f"\n{case['name']} ({case['n_slices']} layers {result['setup']['spacing_m'] * 1e6:.0f}"
            f" um apart = {result['setup']['spacing_m'] / case['depth_of_focus_m']:.1f} depths "
            f"of focus; {result['budget_s']:.0f} s each; equal time t = {t_eq:.1f} s)"
        )
        lines.append(
            f"{'method':24s} {'per-layer |C| @t':>24s} {'at end':>24s} {'product @t':>10s} "
            f"{'at end':>7s} {'passes':>6s} {'end s':>6s} {'cpu/wall':>8s}"
        )
        lines.append(
            f"{'flat object':24s} {_layers(case['flat_layers']):>24s} {'':>24s} "
            f"{case['flat_product']:10.4f}"
        )
        for r in case["runs"]:
            lines.append(
                f"{r['method']:24s} {_layers(_at(r, t_eq, 'abs_c')):>24s} "
                f"{_layers(r['final'].get('abs_c')):>24s} {_at(r, t_eq, 'product'):10.4f} "
                f"{r['final']['product']:7.4f} {r['epoch'][-1]:6d} {r['time_s'][-1]:6.1f} "
                f"{r['cpu_per_wall']:8.2f}"
            )
        lines.append(
            f"  {'per layer, at end':26s} {'amp r':>22s} {'phase r':>22s} "
            f"{'max |phase r| with another layer':>34s}"
        )
        others = [
            max(abs(v) for j, v in enumerate(row) if j != i)
            for i, row in enumerate(case["truth_cross_phase"])
        ]
        lines.append(
            f"  {'truth layers (each other)':26s} {'':>22s} {'':>22s} {_layers(others):>34s}"
        )
        for r in case["runs"]:
            f = r["final"]
            if "cross_phase" not in f:
                lines.append(f"  {r['method']:26s} no per-layer result (one slice)")
                continue
            cross = [
                max(abs(v) for j, v in enumerate(row) if j != i)
                for i, row in enumerate(f["cross_phase"])
            ]
            lines.append(
                f"  {r['method']:26s} {_layers(f['amplitude']):>22s} {_layers(f['phase']):>22s} "
                f"{_layers(cross):>34s}"
            )
    if result["spacing"]:
        true = result["setup"]["spacing_m"]
        lines.append(f"\ntrained spacing (two layers, true {true * 1e6:.0f} um), um after pass:")
        marks = [0, 1, 5, 10, 25, 50, 100, 200]
        head = " ".join(f"{m:>6d}" for m in marks)
        lines.append(
            f"{'run':24s} {head} {'end':>7s} {'error':>7s} {'<10 % from':>10s} {'|C| at end':>16s}"
        )
        for r in result["spacing"]:
            gaps = [g[0] for g in r["gaps_m"]]
            cols = " ".join(
                f"{gaps[m] * 1e6:6.0f}" if m < len(gaps) else f"{'':>6s}" for m in marks
            )
            first = _first_within(gaps, true, SPACING_TOLERANCE)
            since = "never" if first is None else f"pass {first}"
            lines.append(
                f"{r['method']:24s} {cols} {gaps[-1] * 1e6:7.1f} "
                f"{(gaps[-1] - true) / true:+7.1%} {since:>10s} "
                f"{_layers(r['final']['abs_c']):>16s}"
            )
    if result.get("pie_variants"):
        lines.append("\nother PIE settings (two layers, same budget):")
        for r in result["pie_variants"]:
            peak = max(min(sc["abs_c"]) for sc in r["scores"])
            lines.append(
                f"{r['method']:28s} end {_layers(r['final']['abs_c'])}, product "
                f"{r['final']['product']:.4f}; best min-layer |C| on the way {peak:.3f}"
            )
    lines.extend(_targets(result))
    return "\n".join(lines)


def _targets(result: dict) -> list[str]:
    if not (result["cases"] or result["spacing"]):
        return []
    out = ["\ntargets:"]
    for case in result["cases"]:
        runs = {r["method"]: r for r in case["runs"]}
        ad, pie = runs.get("multislice AD"), runs.get("multislice mPIE")
        if ad is None:
            continue
        layers = ad["final"]["abs_c"]
        ok = min(layers) >= TARGET_ABS_C and max(case["flat_layers"]) < TARGET_ABS_C
        out.append(
            f"  {case['name']}: multislice AD per-layer |C| >= {TARGET_ABS_C} (flat below it): "
            f"{_layers(layers)} (flat {_layers(case['flat_layers'])}) -> "
            f"{'PASS' if ok else 'FAIL'}"
        )
        if pie is not None:
            above = min(layers) > min(pie["final"]["abs_c"]) and (
                ad["final"]["product"] > pie["final"]["product"]
            )
            out.append(
                f"  {case['name']}: AD ends above mPIE: min layer {min(layers):.4f} vs "
                f"{min(pie['final']['abs_c']):.4f}, product {ad['final']['product']:.4f} vs "
                f"{pie['final']['product']:.4f} -> {'PASS' if above else 'FAIL'}"
            )
    true = result["setup"]["spacing_m"]
    for r in result["spacing"]:
        end = r["gaps_m"][-1][0]
        ok = abs(end - true) <= SPACING_TOLERANCE * true
        out.append(
            f"  spacing {r['method']}: ends at {end * 1e6:.1f} um "
            f"({(end - true) / true:+.1%}) -> {'PASS' if ok else 'FAIL'}"
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
