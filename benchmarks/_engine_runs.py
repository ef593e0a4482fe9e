"""Engine runs that several benchmarks make (not a benchmark itself).

- :func:`compare_streaming`: streaming against offline at the same compute
  (``streaming_vs_offline.py``, and target (b) of ``targets.py``);
- :func:`streaming_rate`: the sustained frame rate of the streaming API, run in a fresh
  interpreter with :func:`_harness.run_in_child` (``engine_speed.py``, target (c));
- :class:`Trace`: scores against wall-clock seconds of a timed run, and
  :func:`plot_convergence` of several (``paper_study.py``, target (a)).

Problems come from :mod:`ptystream.sim.problems`, scores from :mod:`ptystream.metrics`,
engines from ``make_engine(EngineSetup(...))``. TensorFlow is imported when the first AD engine
is built, never at import.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptystream.config import EngineSettings
from ptystream.engine import Engine, EngineSetup, configure_tensorflow, make_engine
from ptystream.metrics import score_over
from ptystream.sim.problems import Problem
from ptystream.types import Estimate, Geometry, ScanPlan

import _harness

#: Frames per optimiser step (the engine's default batch).
BATCH = 16
#: Frames per arrival in :func:`compare_streaming`'s streaming runs.
CHUNK = 8


def engine_settings(subpixel: bool = True, **changes: Any) -> EngineSettings:
    """The default engine settings, batch 16, XLA on."""
    return EngineSettings(batch_size=BATCH, subpixel=subpixel, **changes)


def setup_for(
    problem: Problem,
    settings: EngineSettings,
    *,
    plan: ScanPlan | None = None,
    distance_m: float | None = None,
) -> EngineSetup:
    """The :class:`~ptystream.engine.EngineSetup` of ``problem`` (its geometry, plan, read
    noise and nominal defocus), with another ``plan`` or propagation distance (metres)."""
    geometry = problem.geometry
    if distance_m is not None:
        geometry = dataclasses.replace(geometry, distance_m=distance_m)
    return EngineSetup(
        geometry,
        settings,
        plan=plan or problem.plan,
        read_noise_counts=problem.read_noise_counts,
        probe_defocus_m=problem.probe_defocus_m,
    )


def build_engine(problem: Problem, settings: EngineSettings, **changes: Any) -> Engine:
    """``make_engine`` for ``problem`` (:func:`setup_for`'s keywords in ``changes``)."""
    return make_engine(setup_for(problem, settings, **changes))


def full_rate_pass(
    engine: Engine,
    settings: EngineSettings,
    n_frames: int,
    on_epoch: Callable[[int, float], None],
) -> None:
    """One pass over ``n_frames`` at the full learning rates, to time a pass before planning a
    run whose rates decay over it: AD a pass's worth of ``step()`` (its ``refine`` also
    measures the misfit it starts from, about one more pass, so timing ``refine(1)`` plans
    about half the passes a budget buys), PIE ``refine(1)``. ``on_epoch`` is called once."""
    if settings.algorithm == "ad":
        engine.step(math.ceil(n_frames / settings.batch_size))
        on_epoch(0, float("nan"))
    else:
        engine.refine(1, on_epoch=on_epoch)


def score(problem: Problem, estimate: Estimate, crop_margin_px: int | None = None) -> dict:
    """|C|, amplitude and phase r of ``estimate`` over the pixels the *true* probe lights
    (:meth:`Problem.lit_mask`, the same for every run of a problem), the flat object's |C|
    there, and the mask's size; cropped as :func:`ptystream.metrics.score_over` says."""
    mask = problem.lit_mask(estimate)
    c, flat = score_over(estimate, problem.truth, mask, crop_margin_px=crop_margin_px)
    return {
        "abs_c": c.abs_c,
        "amplitude": c.amplitude,
        "phase": c.phase,
        "flat_abs_c": flat,
        "mask_px": int(mask.sum()),
    }


# -- streaming against offline at the same compute ---------------------------------------------


def _new_engine(problem: Problem, seed: int) -> Engine:
    engine = build_engine(problem, engine_settings(seed=seed))
    engine.warm_up()  # compile outside the timed part
    return engine


def run_offline(problem: Problem, epochs: int, seed: int) -> dict[str, Any]:
    """All frames added, then ``refine(epochs)``; scored (:func:`score`)."""
    engine = _new_engine(problem, seed)
    t0 = time.perf_counter()
    engine.add_frames(problem.frames, problem.positions_m)
    engine.refine(epochs)
    wall = time.perf_counter() - t0
    n = len(problem.frames)
    return {
        "run": "offline",
        "steps_per_chunk": None,
        "final_epochs": epochs,
        "steps": engine.iteration,
        "valid_frame_gradients": epochs * n,
        "wall_s": wall,
        **score(problem, engine.estimate(final=True)),
    }


def run_streaming(problem: Problem, epochs: int, k: int, seed: int) -> dict[str, Any]:
    """Chunks of :data:`CHUNK` frames, ``step(k)`` after each, then as many passes as make the
    steps equal to ``refine(epochs)``'s; scored (:func:`score`)."""
    n = len(problem.frames)
    per_epoch = math.ceil(n / BATCH)
    n_chunks = math.ceil(n / CHUNK)
    rest = epochs * per_epoch - n_chunks * k
    if rest < 0 or rest % per_epoch:
        raise ValueError(f"{n_chunks} chunks x {k} steps do not leave whole passes of {epochs}")
    final_epochs = rest // per_epoch
    engine = _new_engine(problem, seed)
    valid = 0
    t0 = time.perf_counter()
    for start in range(0, n, CHUNK):
        engine.add_frames(
            problem.frames[start : start + CHUNK], problem.positions_m[start : start + CHUNK]
        )
        engine.step(k)
        valid += k * min(BATCH, engine.n_frames)
    engine.refine(final_epochs)
    wall = time.perf_counter() - t0
    return {
        "run": f"streaming k={k}",
        "steps_per_chunk": k,
        "final_epochs": final_epochs,
        "steps": engine.iteration,
        "valid_frame_gradients": valid + final_epochs * n,
        "wall_s": wall,
        **score(problem, engine.estimate(final=True)),
    }


def fits(epochs: int, k: int, n_frames: int = 80) -> bool:
    """Whether ``k`` steps per chunk leave whole final passes (at least one) in the budget."""
    per_epoch, n_chunks = math.ceil(n_frames / BATCH), math.ceil(n_frames / CHUNK)
    rest = epochs * per_epoch - n_chunks * k
    return rest >= per_epoch and rest % per_epoch == 0


def compare_streaming(
    problem_for: Callable[[int], Problem],
    seeds: list[int],
    budgets: list[int],
    ks: list[int],
    indent: str = "",
) -> list[dict[str, Any]]:
    """For each seed (``problem_for(seed)``, and the engine's seed) and budget E: offline
    ``refine(E)`` and streaming with each ``k`` that :func:`fits`; one row per run, with
    ``delta_abs_c`` against offline of the same seed and budget. Progress is printed."""
    rows = []
    for seed in seeds:
        problem = problem_for(seed)
        for epochs in budgets:
            offline = run_offline(problem, epochs, seed)
            rows.append({"seed": seed, "epochs": epochs, **offline, "delta_abs_c": 0.0})
            c = offline["abs_c"]
            print(f"{indent}seed {seed}, E {epochs}: offline |C| {c:.4f}", flush=True)
            for k in ks:
                if not fits(epochs, k, len(problem.frames)):
                    continue
                r = run_streaming(problem, epochs, k, seed)
                assert r["steps"] == offline["steps"], (r["steps"], offline["steps"])
                delta = r["abs_c"] - offline["abs_c"]
                rows.append({"seed": seed, "epochs": epochs, **r, "delta_abs_c": delta})
                print(
                    f"{indent}seed {seed}, E {epochs}: {r['run']} |C| {r['abs_c']:.4f} "
                    f"(delta {delta:+.4f})",
                    flush=True,
                )
    return rows


# -- the streaming rate, in a child process ---------------------------------------------------


def save_frames(problem: Problem, path: Path) -> None:
    """The frames, positions and what an engine is told about them, for :func:`load_engine`
    in another process (``.npz``)."""
    g = problem.geometry
    np.savez(
        path,
        frames=problem.frames,
        positions_m=problem.positions_m,
        geometry=np.array([g.wavelength_m, g.distance_m, g.detector_pixel_size_m]),
        frame_px=g.frame_px,
        read_noise_counts=problem.read_noise_counts,
        probe_defocus_m=problem.probe_defocus_m,
    )


def load_engine(
    data_path: str, subpixel: bool, n_points: int | None = None
) -> tuple[Engine, np.ndarray, np.ndarray]:
    """Configure TensorFlow (one thread, as the pipeline does), load frames saved by
    :func:`save_frames` and build the far-field engine, planned for ``n_points`` points if
    given (else the frames in the file). Returns ``(engine, frames, positions_m)``."""
    settings = engine_settings(subpixel)
    configure_tensorflow(settings.tf_threads)
    data = np.load(data_path)
    frames, positions = data["frames"], data["positions_m"]
    wavelength, distance, pixel = (float(v) for v in data["geometry"])
    geometry = Geometry(wavelength, distance, pixel, int(data["frame_px"]))
    plan = ScanPlan(n_points or len(positions), ScanPlan.covering(positions).extent_m)
    setup = EngineSetup(
        geometry,
        settings,
        plan=plan,
        read_noise_counts=float(data["read_noise_counts"]),
        probe_defocus_m=float(data["probe_defocus_m"]),
    )
    return make_engine(setup), frames, positions


def streaming_rate(spec: dict[str, Any]) -> dict[str, Any]:
    """Frames of ``spec["data"]`` (:func:`save_frames`) arrive in chunks of ``spec["chunk"]``;
    after each, ``step(ceil(w k / batch))`` for ``w = spec["work_per_frame"]``. The rate over
    the whole scan and per quarter, the mean ``add_frames`` per chunk and the time per step,
    and frames per CPU-second. Runs in a child (:func:`_harness.run_in_child`)."""
    engine, frames, positions = load_engine(spec["data"], spec["subpixel"])
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


# -- timed runs ------------------------------------------------------------------------------


@dataclass
class Trace:
    """One timed run: scores against wall-clock seconds (compile and scoring excluded)."""

    name: str
    settings: dict
    time_s: list[float] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    abs_c: list[float] = field(default_factory=list)
    amplitude: list[float] = field(default_factory=list)
    phase: list[float] = field(default_factory=list)
    flat_abs_c: float = float("nan")
    compile_s: float = 0.0
    epochs_planned: int = 0
    note: str = ""

    def add_score(self, t_s: float, epoch: int, scores: dict[str, float]) -> None:
        """Note :func:`score`'s ``scores`` taken at ``t_s`` seconds after ``epoch`` passes."""
        self.time_s.append(t_s)
        self.epoch.append(epoch)
        self.abs_c.append(scores["abs_c"])
        self.amplitude.append(scores["amplitude"])
        self.phase.append(scores["phase"])
        self.flat_abs_c = scores["flat_abs_c"]

    def time_to(self, level: float) -> float | None:
        """First time |C| reached ``level`` (linear interpolation between scores)."""
        for i, c in enumerate(self.abs_c):
            if c >= level:
                if i == 0:
                    return self.time_s[0]
                t0, t1, c0 = self.time_s[i - 1], self.time_s[i], self.abs_c[i - 1]
                return t0 + (t1 - t0) * (level - c0) / (c - c0)
        return None

    def at(self, t: float) -> float:
        """|C| of the last score taken at or before ``t`` seconds."""
        inside = [c for s, c in zip(self.time_s, self.abs_c, strict=True) if s <= t + 1e-9]
        return inside[-1] if inside else float("nan")


def plot_convergence(
    traces: list[Trace],
    path: Path,
    *,
    budget_s: float,
    target_abs_c: float,
    mark_s: float,
    title: str,
    xlabel: str,
    below_flat: float = 0.1,
    xlim_factor: float = 1.05,
    dashed: Callable[[Trace], bool] = lambda trace: False,
) -> None:
    """|C|, amplitude r and phase r against seconds, one line per trace (dashed where
    ``dashed(trace)``), with the flat object's |C| and ``target_abs_c`` marked and a vertical
    line at ``mark_s``; |C| shown from ``below_flat`` under the flat object's; x up to
    ``xlim_factor`` times the budget. Written to ``path`` (PNG, 90 dpi)."""
    plt = _harness.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    keys = (("abs_c", "|C|"), ("amplitude", "amplitude r"), ("phase", "phase r"))
    for ax, (key, label) in zip(axes, keys, strict=True):
        for tr in traces:
            style = "--" if dashed(tr) else "-"
            ax.plot(tr.time_s, getattr(tr, key), style, marker=".", ms=3, label=tr.name)
        if key == "abs_c":
            flat = traces[0].flat_abs_c
            ax.axhline(flat, color="gray", ls=":", label=f"flat object ({flat:.3f})")
            ax.axhline(target_abs_c, color="k", ls="--", lw=0.8, label=f"|C| {target_abs_c}")
            ax.set_ylim(max(0.0, flat - below_flat), 1.0)
        else:
            ax.set_ylim(-0.1, 1.0)
        ax.axvline(mark_s, color="k", lw=0.5, ls=":")
        ax.set_xlim(0, budget_s * xlim_factor)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
