"""Before and after a change: is the compiled AD step the same XLA function, and what does the
host add per pass?

    .venv/bin/python benchmarks/compiled_step.py --against 1c476da          # ~6 min
    .venv/bin/python benchmarks/compiled_step.py --against 1c476da --quick  # 128² only, ~1.5 min
    .venv/bin/python benchmarks/compiled_step.py --report benchmarks/results/compiled_step.json

``engine_speed.py``'s epoch times move by up to 10 % between fresh processes of one version on
this machine, so it cannot tell a change that leaves the step alone from one that slows it by a
few percent. This script asks directly. For each of ``engine_speed.py``'s epoch cases (80
positions of 128² and 256² far-field frames, sub-pixel shifts on and off, batch 16, XLA, one
TensorFlow thread) it builds the engine of the working tree and of ``--against`` (a ``git
archive`` of that revision, run with its own ``benchmarks/_engine_runs.py``), each in a fresh
process, alternately ``--rounds`` times, and records:

- the SHA-256 of the compiled step's HLO, as traced and after XLA's optimisation
  (``tf.function.experimental_get_compiler_ir``). Equal digests mean the same compiled
  function: its per-step time is the same whatever the clock says.
- per pass of ``refine`` (a ``refine(1)`` before is untimed; so is the first pass, whose
  interval also holds ``refine``'s measure of the misfit it starts from): the wall time, the
  time inside the compiled step's calls, and the rest, the host's Python between the steps
  (batch indices, learning rates, the once-per-pass hold of the probe's power, the guard's
  copy of the variables).

Against a revision whose step has another signature or other physics the digests differ, and
the step times are then the comparison, with the spread between processes beside them. Writes
``benchmarks/results/compiled_step.json``. (The other checkout's ``_engine_runs`` runs with this
tree's ``_harness``, already imported by the child.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import _harness

#: (frame side px, timed passes): engine_speed.py's epoch cases.
CASES = ((128, 30), (256, 8))


def case_step(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter (:func:`_harness.run_in_child`): the engine of the checkout at
    ``spec["root"]`` on ``spec["data"]``; HLO digests and per-pass times."""
    root = spec["root"]
    sys.path[:0] = [root, os.path.join(root, "benchmarks")]  # its ptystream, its _engine_runs
    import tensorflow as tf

    import ptystream

    from _engine_runs import load_engine

    if not Path(ptystream.__file__).is_relative_to(root):
        raise RuntimeError(f"imported {ptystream.__file__}, not the checkout at {root}")
    engine, frames, positions = load_engine(spec["data"], spec["subpixel"])
    engine.warm_up()
    engine.add_frames(frames, positions)
    engine.refine(1)  # untimed: the loss kind chosen, its step compiled
    fn = engine._step_fn
    # any values will do: the compiled function depends on the signature alone
    args = [tf.zeros(sig.shape, sig.dtype) for sig in fn.input_signature]
    digests = {
        stage: hashlib.sha256(
            fn.experimental_get_compiler_ir(*args)(stage=stage).encode()
        ).hexdigest()
        for stage in ("hlo", "optimized_hlo")
    }
    in_step: list[float] = []

    def timed(*a):
        t = time.perf_counter()
        out = fn(*a)
        tf.nest.map_structure(lambda x: x.numpy(), out)  # the step's work done
        in_step.append(time.perf_counter() - t)
        return out

    if isinstance(getattr(type(engine), "_step_fn", None), property):  # one step per loss kind
        engine._step_fns[engine._model.detection.kind] = timed
    else:  # revisions before 10713d1 hold one compiled step
        engine._step_fn = timed
    stamps, marks = [time.perf_counter()], [0]

    def on_epoch(epoch: int, loss: float) -> None:
        stamps.append(time.perf_counter())
        marks.append(len(in_step))

    engine.refine(spec["epochs"] + 1, on_epoch=on_epoch)
    # the first interval also holds refine()'s measure of the misfit it starts from (a pass)
    wall = np.diff(stamps)[1:]
    steps = np.array([sum(in_step[a:z]) for a, z in zip(marks[1:-1], marks[2:], strict=True)])
    host = wall - steps
    return {
        "hlo_sha256": digests["hlo"],
        "optimized_hlo_sha256": digests["optimized_hlo"],
        "steps_per_pass": int(np.median(np.diff(marks[1:]))),
        "pass_s_median": float(np.median(wall)),
        "step_s_median": float(np.median(steps)),
        "host_ms_median": 1e3 * float(np.median(host)),
        "host_ms_min": 1e3 * float(host.min()),
    }


def checkout(revision: str, into: Path) -> Path:
    """``git archive`` of ``revision`` unpacked under ``into``; its path."""
    root = into / revision
    root.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(_harness.REPO), "archive", revision],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def run_benchmark(against: str, rounds: int, quick: bool, tmp: Path) -> dict[str, Any]:
    from ptystream.sim.problems import far_field_problem

    from _engine_runs import save_frames

    trees = {"after": str(_harness.REPO), "before": str(checkout(against, tmp))}
    results: dict[str, Any] = {
        "quick": quick,
        "machine": _harness.machine_info(),
        "against": against,
        "rounds": rounds,
        "cases": [],
    }
    t0 = time.perf_counter()
    for frame_px, epochs in CASES[:1] if quick else CASES:
        path = tmp / f"p{frame_px}.npz"
        save_frames(far_field_problem(frame_px=frame_px), path)
        for subpixel in (True, False):
            runs: dict[str, list[dict[str, Any]]] = {"after": [], "before": []}
            for i in range(rounds):
                for version in ("after", "before") if i % 2 == 0 else ("before", "after"):
                    spec = {
                        "root": trees[version],
                        "data": str(path),
                        "subpixel": subpixel,
                        "epochs": 3 if quick else epochs,
                    }
                    print(f"{frame_px}², sub-pixel {subpixel}, {version} ...", flush=True)
                    runs[version].append(_harness.run_in_child("compiled_step", "case_step", spec))
            case = {"frame_px": frame_px, "subpixel": subpixel, **runs}
            results["cases"].append(case)
    results["total_s"] = time.perf_counter() - t0
    return results


def _same(runs: list[dict[str, Any]], key: str) -> str | None:
    digests = {r[key] for r in runs}
    return digests.pop() if len(digests) == 1 else None


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"working tree against {results['against']}, {results['rounds']} fresh processes each,"
        " alternating; medians over passes, then the median over processes",
        "",
        "| case | HLO | optimised HLO | step s per pass, median (range) (after / before) |"
        " host ms per pass"
        " (after / before) | pass s (after / before) |",
        "|---|---|---|---|---|---|",
    ]
    for case in results["cases"]:
        after, before = case["after"], case["before"]
        cells = []
        for key in ("hlo_sha256", "optimized_hlo_sha256"):
            a, b = _same(after, key), _same(before, key)
            cells.append("same" if a is not None and a == b else "**differs**")

        def med(runs: list[dict[str, Any]], key: str) -> float:
            return float(np.median([r[key] for r in runs]))

        def spread(runs: list[dict[str, Any]]) -> str:
            values = [r["step_s_median"] for r in runs]
            return f"{med(runs, 'step_s_median'):.4f} ({min(values):.4f}-{max(values):.4f})"

        step = f"{spread(after)} / {spread(before)}"
        host = f"{med(after, 'host_ms_median'):.1f} / {med(before, 'host_ms_median'):.1f}"
        wall = f"{med(after, 'pass_s_median'):.4f} / {med(before, 'pass_s_median'):.4f}"
        name = f"{case['frame_px']}², sub-pixel {'on' if case['subpixel'] else 'off'}"
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {step} | {host} | {wall} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = _harness.parser(__doc__, quick="128² only, 3 passes, 2 rounds")
    p.add_argument("--against", default="HEAD", help="the revision before the change")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per version and case")
    args = p.parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_table)
    with tempfile.TemporaryDirectory(prefix="compiled_step_") as tmp:
        rounds = 2 if args.quick else args.rounds
        results = run_benchmark(args.against, rounds, args.quick, Path(tmp))
    return _harness.finish(results, format_table, _harness.json_path(args, "compiled_step"))


if __name__ == "__main__":
    sys.exit(main())
