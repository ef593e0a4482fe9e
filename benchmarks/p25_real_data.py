"""Reconstruct the shared PETRA III P25 near-field scan and write its figure and figures.

    .venv/bin/python benchmarks/p25_real_data.py [--iterations 150]

Writes ``benchmarks/figures/p25_nearfield.png`` and ``benchmarks/results/p25_real_data.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "PETRAIII_P25_Near_Field_Ptycho.cxi"


def main() -> None:
    """Reconstruct, then print a table and write the PNG and JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=150, help="passes over all frames")
    parser.add_argument("--input", type=Path, default=DATA)
    args = parser.parse_args()

    from ptystream.config import load_profile
    from ptystream.io.figures import write_summary
    from ptystream.offline.reconstruct import reconstruct_file

    profile = load_profile("p25-nearfield")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        estimate = reconstruct_file(
            args.input, profile, Path(tmp) / "p25.h5", epochs=args.iterations
        )
    seconds = time.perf_counter() - start
    png = write_summary(
        HERE / "figures" / "p25_nearfield.png",
        estimate,
        title=f"PETRA III P25 near field (Siemens star), {args.iterations} passes, "
        f"Poisson loss, {seconds:.0f} s on {os.cpu_count()} cores",
    )
    steps = max(1, len(estimate.loss) // args.iterations)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "iterations": args.iterations,
        "seconds": seconds,
        "object_shape": list(estimate.object.shape),
        "pixel_size_m": estimate.pixel_size_m,
        "loss_first_pass": float(estimate.loss[:steps, 1].mean()),
        "loss_last_pass": float(estimate.loss[-steps:, 1].mean()),
    }
    out = HERE / "results" / "p25_real_data.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for key, value in result.items():
        if key != "machine":
            print(f"{key:20s} {value}")
    print(f"figure: {png}\nresults: {out}")


if __name__ == "__main__":
    main()
