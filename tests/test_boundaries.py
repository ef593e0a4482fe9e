"""Module boundaries of DESIGN.md, checked in fresh interpreters (the tiled trick)."""

import os
import subprocess
import sys

import pytest

CASES = {
    "ptystream.callback": ["tensorflow", "tiled"],
    "ptystream.batching": ["tensorflow", "tiled"],
    "ptystream.frames": ["tensorflow", "tiled"],
    "ptystream.spill": ["tensorflow", "tiled", "bluesky"],
    "ptystream.serve": ["tensorflow", "tiled"],
    "ptystream.engine.ad": ["bluesky", "event_model", "tiled", "dask", "ophyd"],
    "ptystream.publisher": ["tensorflow", "bluesky"],
    "ptystream.versions": ["tensorflow", "bluesky"],
    "ptystream.runs": ["tensorflow"],
    "ptystream.reprocess": ["tensorflow"],  # the client side; workers import it on their own
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


def test_tensorflow_first_does_not_break_the_embedded_tiled_server(tmp_path):
    """TensorFlow loaded before tiled's SQLite catalog broke every write (no FTS5): the engine
    package guards against it, whatever the import order of the process."""
    code = f"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
from ptystream.engine import configure_tensorflow
configure_tensorflow(1)                       # imports tensorflow before any tiled code
from tiled.client import from_uri
from ptystream.server import raw_catalog, start_embedded_server
server = start_embedded_server({str(tmp_path)!r})
raw_catalog(from_uri(server.uri))             # creating a container writes the FTS index
server.close()
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TILED_RETRY_ATTEMPTS": "1", "TILED_RETRY_TIMEOUT": "1"},
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
