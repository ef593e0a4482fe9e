"""Module boundaries of DESIGN.md, checked in fresh interpreters (the tiled trick)."""

import subprocess
import sys

import pytest

CASES = {
    "ptystream.callback": ["tensorflow", "tiled"],
    "ptystream.batching": ["tensorflow", "tiled"],
    "ptystream.engine.ad": ["bluesky", "event_model", "tiled", "dask", "ophyd"],
    "ptystream.publisher": ["tensorflow", "bluesky"],
    "ptystream.metrics": ["tensorflow", "tiled", "bluesky", "scipy"],
    "ptystream.types": ["tensorflow", "tiled", "bluesky", "pydantic"],
    "ptystream": ["tensorflow", "tiled", "bluesky"],
}


@pytest.mark.parametrize("module", list(CASES))
def test_module_does_not_pull_forbidden_packages(module):
    forbidden = CASES[module]
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {forbidden!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", f"importing {module} imported {out.stdout.strip()}"
