"""Reconstruct the shared PETRA III P25 near-field scan and write its figure and figures.

    .venv/bin/python benchmarks/p25_real_data.py [--iterations 150] [--input CXI] [--quick]
        [--json PATH] [--report JSON]

``ptystream.offline.reconstruct.reconstruct_file`` with the profile ``p25-nearfield``. Writes
``benchmarks/figures/p25_nearfield.png`` and ``benchmarks/results/p25_real_data.json``
(``--quick``: 15 passes, ``p25_nearfield_quick.png`` and ``p25_real_data_quick.json`` in
``benchmarks/results/``, so a smoke run never replaces the committed figure).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _harness  # noqa: E402

#: The shared data set, beside the checkout (``/work/shared/data`` for ``/work/main``).
DATA = _harness.REPO.parent / "shared" / "data" / "PETRAIII_P25_Near_Field_Ptycho.cxi"
QUICK_ITERATIONS = 15


def run_benchmark(input_path: Path, iterations: int, figure: Path) -> dict[str, Any]:
    """Reconstruct, write the figure; the results with the loss of the first and last pass."""
    from ptystream.config import load_profile
    from ptystream.io.figures import write_summary
    from ptystream.offline.reconstruct import reconstruct_file

    profile = load_profile("p25-nearfield")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        estimate = reconstruct_file(input_path, profile, Path(tmp) / "p25.h5", epochs=iterations)
    seconds = time.perf_counter() - start
    png = write_summary(
        figure,
        estimate,
        title=f"PETRA III P25 near field (Siemens star), {iterations} passes, "
        f"Poisson loss, {seconds:.0f} s on {os.cpu_count()} cores",
    )
    steps = max(1, len(estimate.loss) // iterations)
    return {
        "machine": _harness.machine_info(),
        "input": str(input_path),
        "figure": str(png),
        "iterations": iterations,
        "seconds": seconds,
        "object_shape": list(estimate.object.shape),
        "pixel_size_m": estimate.pixel_size_m,
        "loss_first_pass": float(estimate.loss[:steps, 1].mean()),
        "loss_last_pass": float(estimate.loss[-steps:, 1].mean()),
    }


def format_table(results: dict[str, Any]) -> str:
    keys = ("iterations", "seconds", "object_shape", "pixel_size_m")
    keys += ("loss_first_pass", "loss_last_pass")
    lines = [f"{key:20s} {results[key]}" for key in keys]
    return "\n".join([*lines, f"figure: {results.get('figure', '-')}"])


def main(argv: list[str] | None = None) -> int:
    """Reconstruct, then print a table and write the PNG and JSON."""
    parser = _harness.parser(__doc__, quick=f"smoke run: {QUICK_ITERATIONS} passes")
    parser.add_argument("--iterations", type=int, default=150, help="passes over all frames")
    parser.add_argument("--input", type=Path, default=DATA, help="the CXI file")
    args = parser.parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_table)
    iterations = QUICK_ITERATIONS if args.quick else args.iterations
    figure = _harness.output_dir(args.quick) / f"p25_nearfield{'_quick' if args.quick else ''}.png"
    results = run_benchmark(args.input, iterations, figure)
    return _harness.finish(results, format_table, _harness.json_path(args, "p25_real_data"))


if __name__ == "__main__":
    sys.exit(main())
