"""Half-set FRC on a simulated far-field Siemens star: what resolution each engine supports,
and whether its amplitude shows a cross-hatch (issue 16, point 6, without the real star).

    .venv/bin/python benchmarks/star_frc.py              # 60 s per half and engine, ~6 min
    .venv/bin/python benchmarks/star_frc.py --quick      # 10 s per half, ~2 min
    .venv/bin/python benchmarks/star_frc.py --peer-python /tmp/peer/bin/python  # and pty-chi
    .venv/bin/python benchmarks/star_frc.py --peak-counts 100 \
        --json benchmarks/results/star_frc_100.json      # fewer counts: the FRC falls
    .venv/bin/python benchmarks/star_frc.py --report benchmarks/results/star_frc.json
    .venv/bin/python benchmarks/star_frc.py --rescore benchmarks/results/star_frc.json

The issue measured, on a real star scanned at another facility (not on this machine), a phase
FRC of 4.37 px for our AD against 3.99 px for an LSQML peer after 60 s on one core, with a
faint cross-hatch in our amplitude. This script builds the same kind of test from data we can
make: ``far_field_problem`` (8 keV, 2 m, 128² frames, a Fermat spiral of :data:`N_POINTS` at
60 % overlap, Poisson counts at :data:`PEAK_COUNTS` peak, no read noise) on
:func:`ptystream.sim.sample.siemens_star`. The scan is split into its even and odd points (two
interleaved half-scans of the same field) and each half is reconstructed from scratch, in a
fresh interpreter on one thread, for ``--budget`` seconds of ``refine``:

- **shipped**: the AD engine with ``hard-xray-farfield``'s engine section (the loss, read
  noise and first probe from the data, told the problem's nominal defocus, 10 % long: 1.65
  mm for 1.5 mm);
- **mpie**: our numpy mPIE with the same section;
- **ptychi-lsqml** (with ``--peer-python``, an interpreter where ``torch`` and ``ptychi`` are
  installed, e.g. ``python3.11 -m venv /tmp/peer && /tmp/peer/bin/pip install ptychi``):
  pty-chi's LSQML through ``_ptychi_peer.py``, started from the focused probe at the told
  defocus (what a user would give it), one thread.

Measures, per engine (:func:`ptystream.metrics.half_set_frc` over the scanned field,
:func:`scanned`): the phase FRC's half-bit resolution (the period in pixels; 2 is
Nyquist), the same for the amplitude, each half's |C| against the truth, and the amplitude's
**axis excess**: the mean power of the amplitude's spectrum within one bin of the two axes,
over the mean elsewhere, in the annulus 0.15-0.45 cycles per pixel, the truth's value beside
it. A Siemens star's spokes run at every angle, so its spectrum has no preferred axis (about 1);
a cross-hatch, stripes along the pixel rows and columns, puts power on the axes. Writes
``results/star_frc.json`` and ``figures/star_frc.png`` (phase FRC curves and the amplitudes;
the figure is named as ``--json``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import _harness  # noqa: E402

N_POINTS = 200
PEAK_COUNTS = 1000.0
TRAJECTORY = "fermat"
#: Points per pass: the spiral in one pass, the raster in two of half the points each.
_PASSES = {"fermat": {"n_points": N_POINTS}, "raster": {"n_points": N_POINTS // 2, "passes": 2}}
SEED = 0
SPOKES = 36
BUDGET_S = 60.0
QUICK_BUDGET_S = 10.0
METHODS = ("shipped", "mpie")
PROFILE = "hard-xray-farfield"
#: Annulus of the axis-excess measure, cycles per pixel.
ANNULUS = (0.15, 0.45)


def make_problem(peak_counts: float = PEAK_COUNTS, trajectory: str = TRAJECTORY):
    """The star scan at ``peak_counts`` along ``trajectory`` (``fermat``, or ``raster``: the
    jittered snake of ``far_field_problem``; every seed here): the object sized to cover the
    scan."""
    from ptystream.sim.problems import far_field_problem
    from ptystream.sim.sample import siemens_star

    kind = {"trajectory": trajectory, "seed": SEED, **_PASSES[trajectory]}
    probe_run = far_field_problem(128, **kind, peak_counts=None)
    dx = probe_run.geometry.object_pixel_size_m
    size = 2 * int(np.ceil(np.abs(probe_run.positions_m).max() / dx + 64 + 8))
    star = siemens_star(size, SPOKES)
    return far_field_problem(
        128, **kind, peak_counts=peak_counts, read_noise_counts=0.0, sample=star
    )


def half_scan(problem, half: int, trajectory: str) -> slice:
    """The frames of half ``half`` (0 or 1): the spiral's even or odd points (two interleaved
    spirals), or the raster's first or second pass (each the whole raster with its own
    jitter; every other point of one raster would leave its rows a fifth overlapped)."""
    if trajectory == "raster":
        middle = len(problem.frames) // 2
        return slice(0, middle) if half == 0 else slice(middle, None)
    return slice(half, None, 2)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """One engine on one half (``spec``: ``method``, ``half`` 0 or 1, ``budget_s``, ``out``
    an NPZ path for the object), in a fresh interpreter."""
    from ptystream.config import Algorithm, load_profile
    from ptystream.engine import EngineSetup, configure_tensorflow, make_engine
    from ptystream.types import ScanPlan

    configure_tensorflow(1)
    problem = make_problem(spec["peak_counts"], spec["trajectory"])
    take = half_scan(problem, spec["half"], spec["trajectory"])
    frames, positions = problem.frames[take], problem.positions_m[take]
    settings = load_profile(PROFILE).engine.model_copy(update={"seed": 0, "tf_threads": 1})
    if spec["method"] == "mpie":
        settings = settings.model_copy(update={"algorithm": Algorithm("mpie")})
    extent = tuple((positions[:, k].min(), positions[:, k].max()) for k in range(2))
    setup = EngineSetup(
        problem.geometry,
        settings,
        plan=ScanPlan(len(frames), extent),
        read_noise_counts=None,
        probe_defocus_m=problem.probe_defocus_m,
    )
    engine = make_engine(setup)
    engine.add_frames(frames, positions)
    engine.warm_up()
    t = time.perf_counter()
    engine.refine(seconds=spec["budget_s"])
    wall = time.perf_counter() - t
    estimate = engine.estimate(final=True)
    np.savez(
        spec["out"],
        object=estimate.object,
        illumination=estimate.illumination,
        origin=np.array(estimate.object_origin_m),
    )
    return {
        "wall_s": wall,
        # the guard's count of passes where the engine has one (AD), else updates per frame
        "passes": int((estimate.training or {}).get("passes") or estimate.iteration // len(frames)),
        "pixel_m": estimate.pixel_size_m,
        "training": estimate.training,
        "loss": (estimate.noise or {}).get("loss"),
    }


def run_peer(
    problem, half: int, budget_s: float, python: str, tmp: Path, trajectory: str = TRAJECTORY
) -> dict[str, Any]:
    """pty-chi's LSQML (``_ptychi_peer.py``, run by ``python``, an interpreter with torch and
    ptychi) on one half: the frames, the probe centres in object pixels, and the probe a user
    would start from (the focused probe at the told defocus, 10 % long; our engine searches
    the defocus from the data instead)."""
    import subprocess

    from ptystream import optics
    from ptystream.sim.problems import SEMI_ANGLE_RAD

    g = problem.geometry
    dx = g.object_pixel_size_m
    take = half_scan(problem, half, trajectory)
    probe = optics.focused_probe(
        g.frame_px, dx, g.wavelength_m, SEMI_ANGLE_RAD, problem.probe_defocus_m
    )
    given, out = tmp / f"peer_in_{half}.npz", tmp / f"peer_out_{half}.npz"
    np.savez(
        given,
        frames=problem.frames[take],
        positions_px=problem.positions_m[take] / dx,
        probe=probe.astype(np.complex64),
        pixel_m=dx,
        wavelength_m=g.wavelength_m,
        distance_m=g.distance_m,
        detector_pixel_m=g.detector_pixel_size_m,
    )
    script = Path(__file__).with_name("_ptychi_peer.py")
    command = [python, str(script), str(given), str(out), "--seconds", f"{budget_s:g}"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the peer failed:\n{proc.stderr[-3000:]}")
    with np.load(out) as data:
        return {
            "object": data["object"],
            "origin": data["origin_px"] * dx,
            "wall_s": float(data["seconds"]),
            "passes": int(data["epochs"]),
            "training": None,
            "loss": "gaussian (amplitude)",
        }


def common_grid(
    first: dict, second: dict, dx: float, positions_m: np.ndarray, spacing_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both halves' objects on one grid (the first's, cropped to where both canvases are, by
    whole pixels; the FRC registers what is left) and the scanned field (:func:`scanned`)."""
    offset = np.rint((second["origin"] - first["origin"]) / dx).astype(int)  # second in first
    a, b = first["object"], second["object"]
    lo = np.maximum(offset, 0)
    hi = np.minimum(np.array(a.shape), offset + np.array(b.shape))
    sa = tuple(slice(lo[k], hi[k]) for k in range(2))
    sb = tuple(slice(lo[k] - offset[k], hi[k] - offset[k]) for k in range(2))
    centres = (positions_m - first["origin"]) / dx - lo
    return a[sa], b[sb], scanned(centres, a[sa].shape, spacing_m / dx)


def pass_spacing_m(problem, trajectory: str) -> float:
    """The median distance (metres) between neighbouring points of one pass of the scan: the
    whole spiral, or the raster's first pass (its two passes lie a jitter apart)."""
    from scipy.spatial import cKDTree

    positions = problem.positions_m[
        half_scan(problem, 0, trajectory) if trajectory == "raster" else slice(None)
    ]
    return float(np.median(cKDTree(positions).query(positions, k=2)[0][:, 1]))


def scanned(centres_px: np.ndarray, shape: tuple[int, int], spacing_px: float) -> np.ndarray:
    """Pixels of a grid of ``shape`` closer to a scan point (``centres_px``, the whole scan's
    probe centres in its pixels) than ``spacing_px`` (:func:`pass_spacing_m`): the field both
    halves cover. From the scan, not from each half's estimated probe, whose illumination
    differs between the halves (a focused probe lights separate spots)."""
    from scipy import ndimage

    points = np.ones(shape, bool)
    inside = np.all((centres_px >= 0) & (centres_px < np.array(shape) - 1), axis=1)
    rows, cols = np.rint(centres_px[inside]).astype(int).T
    points[rows, cols] = False
    return ndimage.distance_transform_edt(points) < spacing_px


def axis_excess(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean spectral power of ``image`` (over ``mask``'s box, tapered, mean removed) within one
    bin of the two frequency axes over the mean elsewhere, in :data:`ANNULUS`."""
    from ptystream.metrics import taper

    rows, cols = np.nonzero(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    w = taper(mask[box])
    x = image[box]
    x = (x - np.sum(x * w) / np.sum(w)) * w
    power = np.abs(np.fft.fft2(x)) ** 2
    fy, fx = np.meshgrid(*(np.fft.fftfreq(n) for n in x.shape), indexing="ij")
    radius = np.hypot(fy, fx)
    ring = (radius >= ANNULUS[0]) & (radius <= ANNULUS[1])
    on_axis = (np.abs(fy) * x.shape[0] <= 1.0) | (np.abs(fx) * x.shape[1] <= 1.0)
    return float(power[ring & on_axis].mean() / power[ring & ~on_axis].mean())


def measure(
    problem, halves: list[dict], dx: float, spacing_m: float
) -> tuple[dict[str, Any], np.ndarray]:
    """FRC, |C| per half and the axis excess for one engine's two halves (``spacing_m``:
    :func:`pass_spacing_m`), and the first half's amplitude over the scanned field's box (for
    the figure)."""
    from ptystream.metrics import complex_correlation, half_set_frc

    a, b, field = common_grid(halves[0], halves[1], dx, problem.positions_m, spacing_m)
    phase = half_set_frc(a, b, field, "phase")
    amplitude = half_set_frc(a, b, field, "amplitude")
    scores = []
    for h in halves:
        truth = problem.truth.aligned_to(h["object"].shape, tuple(h["origin"]))
        own = scanned((problem.positions_m - h["origin"]) / dx, h["object"].shape, spacing_m / dx)
        scores.append(complex_correlation(h["object"], truth, own).abs_c)
    truth = problem.truth.aligned_to(a.shape, tuple(halves[0]["origin"]))
    rows, cols = np.nonzero(field)
    image = np.abs(a)[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return {
        "phase_frc_px": phase.resolution_px,
        "amplitude_frc_px": amplitude.resolution_px,
        "abs_c": scores,
        "axis_excess": axis_excess(np.abs(a), field),
        "truth_axis_excess": axis_excess(np.abs(truth), field),
        "frequency_per_px": phase.frequency_per_px,
        "phase_frc": phase.frc,
        "amplitude_frc": amplitude.frc,
        "threshold": phase.threshold,
        "field_px": int(field.sum()),
    }, image


def rescore(path: Path) -> int:
    """``--rescore``: the FRC resolutions of the run saved at ``path`` read again from its
    stored phase and amplitude curves; the JSON rewritten and its table printed."""
    from ptystream.metrics import half_bit_resolution

    results = _harness.read_json(path)
    for r in results["engines"].values():
        curve = (np.asarray(r["frequency_per_px"]), np.asarray(r["threshold"]))
        for part in ("phase", "amplitude"):
            if f"{part}_frc" not in r:  # runs before the amplitude curve was stored
                print(f"no stored {part} curve: its resolution is left as it was")
                continue
            r[f"{part}_frc_px"] = half_bit_resolution(
                curve[0], np.asarray(r[f"{part}_frc"]), curve[1]
            )
    _harness.write_json(results, path)
    print(format_table(results))
    return 0


def format_table(results: dict) -> str:
    header = [
        "engine",
        "phase FRC px",
        "amplitude FRC px",
        "|C| halves",
        "axis excess",
        "truth's",
        "passes",
    ]
    rows = []
    for name, r in results["engines"].items():
        rows.append(
            [
                name,
                f"{r['phase_frc_px']:.2f}",
                f"{r['amplitude_frc_px']:.2f}",
                " / ".join(f"{c:.3f}" for c in r["abs_c"]),
                f"{r['axis_excess']:.2f}",
                f"{r['truth_axis_excess']:.2f}",
                " / ".join(str(h["passes"]) for h in r["halves"]),
            ]
        )
    lines = [
        f"Siemens star, {N_POINTS} points ({results.get('trajectory', TRAJECTORY)}) in two halves, "
        f"{results['peak_counts']:g} "
        f"counts peak, {results['budget_s']:g} s of refine per half on one core; FRC: half-bit, "
        "period in px (2 = Nyquist); axis excess: spectral power on the axes over off them "
        f"({ANNULUS[0]}-{ANNULUS[1]} cycles/px)",
        "",
    ]
    return "\n".join(lines + _harness.table(header, rows))


def plot(results: dict, images: dict, path: Path) -> None:
    plt = _harness.pyplot()
    names = list(results["engines"])
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(5 * (1 + len(names)), 4.2))
    for name in names:
        r = results["engines"][name]
        axes[0].plot(
            r["frequency_per_px"], r["phase_frc"], label=f"{name} ({r['phase_frc_px']:.2f} px)"
        )
    first = results["engines"][names[0]]
    axes[0].plot(first["frequency_per_px"], first["threshold"], "k--", lw=1, label="half-bit")
    axes[0].set_xlabel("spatial frequency (cycles / px)")
    axes[0].set_ylabel("phase FRC between the halves")
    axes[0].set_ylim(-0.2, 1.05)
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    for ax, name in zip(axes[1:], names, strict=True):
        amp = images[name]
        ax.imshow(amp, cmap="gray")
        ax.set_title(f"{name}: amplitude, first half")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = _harness.parser(__doc__, quick=f"{QUICK_BUDGET_S:g} s per half")
    parser.add_argument("--budget", type=float, help=f"seconds per half (default {BUDGET_S:g})")
    parser.add_argument(
        "--peak-counts",
        type=float,
        default=PEAK_COUNTS,
        help=f"counts at the brightest pixel (default {PEAK_COUNTS:g}; fewer: the FRC falls "
        "inside the band)",
    )
    parser.add_argument(
        "--trajectory",
        choices=("fermat", "raster"),
        default=TRAJECTORY,
        help="the scan's path (raster: a jittered snake, the ground of a raster's cross-hatch)",
    )
    parser.add_argument(
        "--peer-python",
        help="an interpreter with torch and ptychi: also run pty-chi's LSQML (_ptychi_peer.py)",
    )
    parser.add_argument(
        "--rescore",
        type=Path,
        metavar="JSON",
        help="read the resolutions again from a saved run's curves "
        "(ptystream.metrics.half_bit_resolution, after a change of its rule), rewrite it",
    )
    args = parser.parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_table)
    if args.rescore:
        return rescore(args.rescore)
    budget = args.budget or (QUICK_BUDGET_S if args.quick else BUDGET_S)
    problem = make_problem(args.peak_counts, args.trajectory)
    dx = problem.geometry.object_pixel_size_m
    spacing_m = pass_spacing_m(problem, args.trajectory)
    results: dict[str, Any] = {
        "quick": args.quick,
        "machine": _harness.machine_info(),
        "budget_s": budget,
        "n_points": N_POINTS,
        "peak_counts": args.peak_counts,
        "trajectory": args.trajectory,
        "spokes": SPOKES,
        "engines": {},
    }
    images = {}
    with tempfile.TemporaryDirectory() as tmp:
        methods = METHODS + (("ptychi-lsqml",) if args.peer_python else ())
        for method in methods:
            halves = []
            for half in (0, 1):
                if method == "ptychi-lsqml":
                    halves.append(
                        run_peer(
                            problem, half, budget, args.peer_python, Path(tmp), args.trajectory
                        )
                    )
                else:
                    out = str(Path(tmp) / f"{method}_{half}.npz")
                    spec = {
                        "method": method,
                        "half": half,
                        "budget_s": budget,
                        "out": out,
                        "peak_counts": args.peak_counts,
                        "trajectory": args.trajectory,
                    }
                    info = _harness.run_in_child("star_frc", "run", spec)
                    with np.load(out) as data:
                        halves.append({**info, **{k: data[k] for k in data.files}})
                print(f"  {method} half {half}: {halves[-1]['passes']} passes", flush=True)
            r, images[method] = measure(problem, halves, dx, spacing_m)
            r["halves"] = [
                {k: h[k] for k in ("wall_s", "passes", "training", "loss")} for h in halves
            ]
            results["engines"][method] = r
    path = _harness.json_path(args, "star_frc")
    figure = _harness.output_dir(args.quick) / path.with_suffix(".png").name
    plot(results, images, figure)
    print(f"wrote {figure}")
    return _harness.finish(results, format_table, path)


if __name__ == "__main__":
    sys.exit(main())
