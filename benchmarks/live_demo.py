"""Benchmark one run of the default `ptystream demo`.

Measures, in a single run of :func:`ptystream.commands.demo.run_demo`:

1. the time the live callback spends on the RunEngine's thread per document (median, 99th
   percentile, max and count, in milliseconds), by wrapping the callback with a timer;
2. the wall time: process start-up (script start to the call of ``run_demo``), then the demo's
   own start-up, scan and final reconstruction (``DemoReport.timings_s``);
3. the reconstruction quality (``|C|``, amplitude and phase correlation, flat-object baseline).

Usage::

    python benchmarks/live_demo.py [--profile demo] [--out DIR] [--json PATH] [--report JSON]

Prints a plain-text table and writes a JSON file (default ``benchmarks/results/live_demo.json``).
There is no ``--quick``: the demo's one scan (about a minute) is already the smallest run.
No timing is asserted: the numbers are for reading, not for pass/fail.
"""

from __future__ import annotations

import time

# Taken before any heavy import, so that "process start-up" includes the imports.
T_SCRIPT_START = time.perf_counter()

import os  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from ptystream.commands.demo import DemoReport, run_demo  # noqa: E402
from ptystream.config import load_profile  # noqa: E402

import _harness  # noqa: E402

DocCallback = Callable[[str, dict[str, Any]], Any]


class CallbackTimer:
    """Wraps a ``callback(name, doc)`` and records how long each call takes, per document name.

    Calls are timed with :func:`time.perf_counter` on the calling thread (the RunEngine's), so
    the samples are exactly the time the live callback holds up the scan.
    """

    def __init__(self) -> None:
        self.samples_s: dict[str, list[float]] = defaultdict(list)
        self.threads: set[str] = set()

    def wrap(self, callback: DocCallback) -> DocCallback:
        """Return a callable that forwards to ``callback`` and records the call's duration."""

        def timed(name: str, doc: dict[str, Any]) -> Any:
            t0 = time.perf_counter()
            try:
                return callback(name, doc)
            finally:
                self.samples_s[name].append(time.perf_counter() - t0)
                self.threads.add(threading.current_thread().name)

        return timed


def latency_stats_ms(samples_s: list[float]) -> dict[str, Any]:
    """Count, median, 99th percentile (linear interpolation) and max of ``samples_s``, in ms."""
    return _harness.describe(samples_s, percentiles=(99,), missing=float("nan"))


def run_benchmark(profile_name: str, out_dir: Path) -> dict[str, Any]:
    """Run the demo once with a timed callback and gather every measurement into one dict."""
    profile = load_profile(profile_name)
    timer = CallbackTimer()
    t_run_demo = time.perf_counter()
    report: DemoReport = run_demo(profile, out_dir, wrap_callback=timer.wrap, announce=print)
    c = report.correlation
    return {
        "profile": profile_name,
        "status": report.status,
        "run_uid": report.run_uid,
        "accounting": report.accounting,
        "callback_latency": {name: latency_stats_ms(s) for name, s in timer.samples_s.items()},
        "callback_threads": sorted(timer.threads),
        "wall_time_s": {
            "process_start_up": t_run_demo - T_SCRIPT_START,
            **report.timings_s,
        },
        "quality": {
            "abs_c": float(c.abs_c),
            "amplitude": float(c.amplitude),
            "phase": float(c.phase),
            "flat_abs_c": float(report.flat_abs_c),
        },
        "machine": _harness.machine_info(),
    }


def format_table(results: dict[str, Any]) -> str:
    """A small plain-text table of the headline numbers."""
    ev = results["callback_latency"].get("event", latency_stats_ms([]))
    wall = results["wall_time_s"]
    q = results["quality"]
    m = results["machine"]
    rows = [
        ("callback per event doc, median", f"{ev['median_ms']:.3f} ms"),
        ("callback per event doc, p99", f"{ev['p99_ms']:.3f} ms"),
        ("callback per event doc, max", f"{ev['max_ms']:.3f} ms"),
        ("event docs timed", f"{ev['count']}"),
        ("process start-up (imports)", f"{wall['process_start_up']:.2f} s"),
        ("demo start-up", f"{wall['start_up']:.2f} s"),
        ("scan", f"{wall['scan']:.2f} s"),
        ("final reconstruction", f"{wall['final_reconstruction']:.2f} s"),
        ("demo total", f"{wall['total']:.2f} s"),
        ("|C|", f"{q['abs_c']:.4f}"),
        ("amplitude r", f"{q['amplitude']:.4f}"),
        ("phase r", f"{q['phase']:.4f}"),
        ("flat-object |C|", f"{q['flat_abs_c']:.4f}"),
    ]
    table = _harness.key_values(rows)
    lines = [
        f"ptystream live demo benchmark (profile {results['profile']}, status {results['status']})",
        f"{m['platform']}, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"TensorFlow {m['tensorflow']}, {m['date']}",
        "-" * len(table[0]) + "--",
    ]
    return "\n".join(lines + table)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON."""
    parser = _harness.parser(__doc__)
    parser.add_argument("--profile", default="demo", help="profile name or YAML path")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_table)
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="ptystream-bench-") as tmp:
            results = run_benchmark(args.profile, Path(tmp))
    else:
        results = run_benchmark(args.profile, args.out)
    return _harness.finish(results, format_table, _harness.json_path(args, "live_demo"))


if __name__ == "__main__":
    sys.exit(main())
