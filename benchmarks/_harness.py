"""What every benchmark script shares: its command line, machine facts, CPU clocks, statistics,
tables and JSON.

A script builds its parser with :func:`parser` (``--quick``, ``--json PATH``, ``--report
JSON``, plus its own options), measures into one JSON-able dict that carries
:func:`machine_info`, and hands a ``format_table(results) -> str`` to :func:`finish`::

    args = _harness.parser(__doc__, quick="a short smoke run").parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_table)
    results = {"quick": args.quick, "machine": _harness.machine_info(), ...}
    return _harness.finish(results, format_table, _harness.json_path(args, "name"))

Conventions:

- ``--quick``: a smoke run of a few minutes at most (each script says what it shrinks).
- ``--json PATH``: where the results go; by default ``benchmarks/results/<name>.json``, and
  ``<name>_quick.json`` for ``--quick`` so that a smoke run never replaces a full run's
  results (``benchmarks/results/`` is git-ignored and created when missing).
- ``--report JSON``: measure nothing; print the tables of a saved run again (with the
  formatting of the script as it is now, figures recomputed from the saved raw data where a
  script derives them). The tables are what benchmarks/README.md quotes.

Units are in the names: ``_s`` seconds, ``_ms`` milliseconds, ``_mb`` MiB, ``cpus`` CPU-seconds
per wall second. Nothing here imports TensorFlow, tiled or bluesky.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ptystream.config import Profile

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
FIGURES = HERE / "figures"

Results = dict[str, Any]

# -- command line and output -----------------------------------------------------------------


def parser(doc: str | None, *, quick: str | None = None) -> argparse.ArgumentParser:
    """An argument parser described by ``doc``'s first line, with ``--json PATH`` and
    ``--report JSON``, and ``--quick`` (its help: ``quick``) where the script has a smoke run."""
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument(
        "--json", type=Path, help="where to write the results (default: benchmarks/results/)"
    )
    p.add_argument(
        "--report", type=Path, metavar="JSON", help="measure nothing: print a saved run's tables"
    )
    return p


def json_path(args: argparse.Namespace, name: str, suffix: str = "") -> Path:
    """``--json``, else ``benchmarks/results/<name>[_quick]<suffix>.json``."""
    if args.json is not None:
        return args.json
    quick = "_quick" if getattr(args, "quick", False) else ""
    return RESULTS / f"{name}{quick}{suffix}.json"


def output_dir(quick: bool) -> Path:
    """Where a script's figures go: ``benchmarks/figures/`` (committed, quoted in the README),
    or ``benchmarks/results/`` for a smoke run, so it never replaces a committed figure."""
    folder = RESULTS if quick else FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays as plain numbers and lists (``json.dumps``' ``default``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def write_json(results: Results, path: Path, *, indent: int = 1, announce: bool = True) -> None:
    """Write ``results`` to ``path`` (folders created); print where unless ``announce`` is
    False (a script saving as it goes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=indent, default=_jsonable) + "\n")
    if announce:
        print(f"wrote {path}")


def read_json(path: Path) -> Results:
    return json.loads(Path(path).read_text())


def report(path: Path, format_table: Callable[[Results], str]) -> int:
    """``--report``: print the tables of the run saved at ``path``."""
    print(format_table(read_json(path)))
    return 0


def finish(results: Results, format_table: Callable[[Results], str], path: Path) -> int:
    """Print the tables, the total time (``results["total_s"]``, if any) and write the JSON."""
    print()
    print(format_table(results))
    if "total_s" in results:
        print(f"total {results['total_s']:.0f} s")
    write_json(results, path)
    return 0


# -- machine and versions ----------------------------------------------------------------------


def package_version(*names: str) -> str | None:
    """Installed version of the first of ``names`` that is installed, without importing it."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_version() -> dict[str, Any]:
    """The repository's commit, and the files under ``ptystream/`` with uncommitted changes."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return out.stdout.strip()

    modified = git("status", "--porcelain", "--", "ptystream").splitlines()
    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "ptystream_modified": bool(modified),
        "modified_files": modified,
    }


def machine_info() -> dict[str, Any]:
    """Where, when and on what the benchmark ran, and how busy the machine was at its start."""
    return {
        "source": source_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "tensorflow": package_version("tensorflow-cpu", "tensorflow"),
        "keras": package_version("keras"),
        "numpy": np.__version__,
        "tiled": package_version("tiled"),
        "bluesky": package_version("bluesky"),
        "dask": package_version("dask"),
        "ptystream": package_version("ptystream"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# -- CPU clocks and memory (Linux /proc) -----------------------------------------------------


def _clock_tick() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (this one for None) so far."""
    stat = Path(f"/proc/{pid or 'self'}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _clock_tick()


def machine_busy_s() -> float:
    """CPU seconds all CPUs of the machine spent busy so far (``/proc/stat``, every process:
    user, nice, system, irq, softirq)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / _clock_tick()


def machine_steal_s() -> float:
    """CPU seconds the hypervisor gave this machine's CPUs to others so far (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / _clock_tick()


def status_kib(pid: int | None, field: str) -> int | None:
    """A ``/proc/<pid>/status`` field in KiB (``VmHWM``, ``VmRSS``; this process for None), or
    None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident set size (``VmHWM``) of process ``pid`` (this one for None), in MiB."""
    kib = status_kib(pid, "VmHWM")
    return kib / 1024 if kib is not None else None


# -- statistics and tables ---------------------------------------------------------------------


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (numpy's linear interpolation); NaN for no values."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def describe(
    values: Iterable[float],
    *,
    unit: str = "ms",
    scale: float = 1e3,
    percentiles: Sequence[float] = (95,),
    missing: float | None = None,
) -> dict[str, Any]:
    """``count``, ``median_<unit>``, ``p<q>_<unit>`` per percentile and ``max_<unit>`` of
    ``values`` times ``scale`` (seconds to ms by default); ``missing`` for each when empty."""
    x = np.asarray(list(values), dtype=float) * scale
    empty = not x.size
    out: dict[str, Any] = {"count": int(x.size)}
    out[f"median_{unit}"] = missing if empty else float(np.median(x))
    for q in percentiles:
        out[f"p{q:g}_{unit}"] = missing if empty else float(np.percentile(x, q))
    out[f"max_{unit}"] = missing if empty else float(x.max())
    return out


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``, or ``-`` as wide as the spec's width for None or a
    non-finite value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        width = spec.split(".")[0].lstrip("<>^+-")
        return "-".rjust(int(width) if width.isdigit() else 1)
    return format(value, spec)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Right-aligned columns as wide as their widest cell, under a header and a rule."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    head = "  ".join(c.rjust(w) for c, w in zip(header, widths, strict=True))
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return [head, "-" * len(head), *lines]


def key_values(rows: Sequence[tuple[str, str]], value_width: int = 12) -> list[str]:
    """``label  value`` lines, labels left-aligned, values right-aligned in ``value_width``."""
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {v:>{value_width}}" for k, v in rows]


# -- a measurement in a fresh interpreter --------------------------------------------------------

_CHILD = """
import importlib, json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, sys.argv[1])
result = getattr(importlib.import_module(sys.argv[2]), sys.argv[3])(json.loads(sys.argv[4]))
from _harness import peak_rss_mb
result["peak_rss_mb"] = peak_rss_mb()
print("RESULT " + json.dumps(result), flush=True)
"""


def run_in_child(module: str, function: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``module.function(spec)`` (a module of ``benchmarks/``) in a fresh interpreter: its own
    TensorFlow and its own peak RSS (added as ``peak_rss_mb``). RuntimeError with the end of
    its stderr if it fails."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(HERE), module, function, json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module}.{function}({spec}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


# -- profiles --------------------------------------------------------------------------------


def profile_with(base: str | Path | Profile, changes: dict[str, Any] | None = None) -> Profile:
    """The profile ``base`` (a name, a path or a ``Profile``) with ``{"section.key": value}``
    changes, validated again (:func:`ptystream.config.with_overrides`)."""
    from ptystream.config import Profile, load_profile, with_overrides

    profile: Profile = base if isinstance(base, Profile) else load_profile(base)
    assignments = [f"{key}={json.dumps(value)}" for key, value in (changes or {}).items()]
    return with_overrides(profile, assignments)
