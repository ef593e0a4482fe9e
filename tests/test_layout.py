"""tests/ mirrors ptystream/: every module has its test file, or is named below with the test file
that covers it; and test modules share helpers through fixtures, never by importing each other
(or a conftest)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, TESTS = ROOT / "ptystream", ROOT / "tests"

#: Modules whose test file is not ``tests/<folder>/test_<name>.py``, and the file covering them.
COVERED_BY = {
    # the front door: lazy names, and what importing it loads
    "ptystream/__init__.py": "tests/test_front_door.py",
    # make_engine dispatches on the algorithm and refuses what only the AD engine does
    "ptystream/engine/__init__.py": "tests/engine/test_pie.py",
    # Adam with per-pixel counts: a grown canvas and window-only updates keep the same steps
    "ptystream/engine/adam.py": "tests/engine/test_ad.py",
    # frames checked (bad input, mask shape), the initial probe
    "ptystream/engine/initial.py": "tests/engine/test_ad.py",
    # frames into an engine: canvas growth, positions in pixels, which frames a step takes
    "ptystream/engine/intake.py": "tests/engine/test_ad.py",
    # multislice pieces both engines share: against numpy references and in both engines
    "ptystream/engine/slices.py": "tests/engine/test_model.py",
    # the search for the propagation distance
    "ptystream/engine/distance.py": "tests/engine/test_nearfield.py",
    # the held-out trial both start-up checks score by (defocus, orientation)
    "ptystream/engine/trial.py": "tests/engine/test_orientation.py",
    # every frame source: inline, Resource/Datum files, StreamResource HDF5, fly scans
    "ptystream/live/frames.py": "tests/live/test_live_sources.py",
    # TiledWriter kept off the RunEngine's thread, and the run's result, in a live scan
    "ptystream/live/background.py": "tests/live/test_pipeline.py",
    "ptystream/live/result.py": "tests/live/test_pipeline.py",
    # frames the document stream lost, read from the raw run; a stop closed from the raw run's
    "ptystream/live/reconcile.py": "tests/live/test_backfill.py",
    "ptystream/store/raw.py": "tests/live/test_backfill.py",
    # the publisher thread with Tiled down, a failed scan, a failed engine
    "ptystream/live/delivery.py": "tests/live/test_pipeline_failures.py",
    # reprocessing: jobs, the Dask task and cluster, the report, versions, and the command
    "ptystream/offline/jobs.py": "tests/offline/test_reprocess.py",
    "ptystream/offline/task.py": "tests/offline/test_reprocess.py",
    "ptystream/offline/cluster.py": "tests/offline/test_reprocess.py",
    "ptystream/offline/report.py": "tests/offline/test_reprocess.py",
    "ptystream/store/versions.py": "tests/offline/test_reprocess.py",
    "ptystream/commands/reprocess.py": "tests/offline/test_reprocess.py",
    # calibrate: the computation and the command, run as a user runs it
    "ptystream/offline/calibrate.py": "tests/commands/test_calibrate.py",
    # the layout of processed/ptystream/<uid>/
    "ptystream/store/layout.py": "tests/store/test_publisher.py",
    # the API key: from a file, never shown, refused clearly
    "ptystream/store/access.py": "tests/store/test_server.py",
    # the lease two services race for, with the recovery it guards
    "ptystream/store/lease.py": "tests/offline/test_recover.py",
    # the simulated beamline: ophyd and ophyd-async devices, step and fly plans, a whole scan
    "ptystream/sim/devices.py": "tests/sim/test_file_detectors.py",
    "ptystream/sim/async_detector.py": "tests/sim/test_file_detectors.py",
    "ptystream/sim/fly.py": "tests/sim/test_file_detectors.py",
    "ptystream/sim/plans.py": "tests/sim/test_file_detectors.py",
    "ptystream/sim/scan.py": "tests/sim/test_file_detectors.py",
    # the web page and its proxy, in a real browser
    "ptystream/dashboard/_app.py": "tests/dashboard/test_dashboard.py",
    # the Host allowlist against DNS rebinding, with forged Host headers
    "ptystream/dashboard/_hosts.py": "tests/dashboard/test_dashboard_security.py",
    "ptystream/dashboard/_server.py": "tests/dashboard/test_dashboard.py",
}


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _only_reexports(path: Path) -> bool:
    """An ``__init__.py`` holding nothing but its docstring, imports and ``__all__``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            "__all__"
        ]:
            continue
        return False
    return True


MODULES = sorted(
    _name(path)
    for path in PACKAGE.rglob("*.py")
    if not (path.name == "__init__.py" and _only_reexports(path))
)


def mirrored_test(module: str) -> str:
    """``ptystream/<folder>/<name>.py`` -> ``tests/<folder>/test_<name>.py``."""
    path = Path(module).relative_to("ptystream")
    return (Path("tests") / path.parent / f"test_{path.stem}.py").as_posix()


@pytest.mark.parametrize("module", MODULES)
def test_every_module_has_a_test_file(module):
    if module in COVERED_BY:
        covering = COVERED_BY[module]
        assert (ROOT / covering).is_file(), f"{module} is mapped to {covering}, which is missing"
        assert not (ROOT / mirrored_test(module)).is_file(), (
            f"{module} has {mirrored_test(module)}: take it out of COVERED_BY"
        )
    else:
        assert (ROOT / mirrored_test(module)).is_file(), (
            f"{module} has no {mirrored_test(module)}: add one, or name the test file that "
            "covers it in COVERED_BY"
        )


def test_the_mapping_names_only_modules_that_exist():
    stale = [module for module in COVERED_BY if not (ROOT / module).is_file()]
    assert stale == []
    exempt = [module for module in COVERED_BY if module not in MODULES]
    assert exempt == [], "these __init__.py files only re-export: no test file needed"


def test_the_check_finds_the_package_and_names_what_it_skips():
    """Not vacuous: it sees every folder of the package, and skips only __init__.py files
    holding nothing but a docstring, imports and ``__all__``."""
    folders = {Path(module).parent.name for module in MODULES}
    expected = {"commands", "config", "dashboard", "engine", "io", "live", "offline", "sim"}
    assert expected | {"ptystream", "store"} <= folders
    assert "ptystream/engine/ad.py" in MODULES and "ptystream/engine/__init__.py" in MODULES
    skipped = {_name(p) for p in PACKAGE.rglob("__init__.py")} - set(MODULES)
    assert "ptystream/config/__init__.py" in skipped and "ptystream/__init__.py" not in skipped


def _test_modules() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


@pytest.mark.parametrize("path", _test_modules(), ids=lambda p: _name(p))
def test_no_test_module_imports_another_or_a_conftest(path):
    """Shared helpers are fixtures in the conftest.py of the narrowest folder that covers their
    users; importing them from a test module or a conftest would hide that."""
    imported = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
        elif isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
    offending = [
        name
        for name in imported
        if name == "tests" or name.startswith("tests.") or name.split(".")[-1] == "conftest"
    ]
    assert offending == [], f"{_name(path)} imports {offending}"
