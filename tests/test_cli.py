"""The ``ptystream`` command as a real subprocess."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import small_profile
from tests.test_reconstruct import simulated_npz


def ptystream(*args, cwd=None, timeout=600, env=None):
    exe = Path(sys.executable).with_name("ptystream")
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
    )


def test_demo_runs_end_to_end(tmp_path):
    profile = small_profile(photons_per_frame=None, n_points=60, object_px=160)
    path = tmp_path / "small.yaml"
    path.write_text(profile.model_dump_json())  # JSON is YAML
    out = ptystream("demo", "--profile", str(path), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"Tiled: +http://127\.0\.0\.1:\d+/api/v1\?api_key=", text)
    assert re.search(r"result: +processed/ptystream/[0-9a-f-]{36}/live/", text)
    abs_c = float(re.search(r"\|C\| = ([0-9.]+)", text).group(1))
    assert abs_c >= 0.95
    png = Path(re.search(r"summary: +(\S+\.png)", text).group(1))
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "start-up" in text and "final reconstruction" in text


def test_bad_profile_is_a_clear_error(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("name: typo\ninstrument: {energy_ev: 8000}\n")
    out = ptystream("demo", "--profile", str(path), "--out", str(tmp_path))
    assert out.returncode == 2
    assert "instrument.energy_ev: Extra inputs are not permitted" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--iterations", "3", "--time-budget", "2"], "not allowed with argument"),
        (["--iterations", "0"], "must be positive"),
        (["--iterations", "3", "--engine", "lsq"], "invalid choice: 'lsq'"),
    ],
)
def test_reconstruct_arguments_are_checked(tmp_path, arguments, message):
    out = ptystream(
        "reconstruct", "x.cxi", "--profile", "demo", *arguments, "--out", str(tmp_path / "o.h5")
    )
    assert out.returncode == 2 and message in out.stderr


def test_reconstruct_unknown_format_is_a_clear_error(tmp_path):
    scan = tmp_path / "scan.tiff"
    scan.write_bytes(b"")
    out = ptystream("reconstruct", str(scan), "--profile", "demo", "--out", str(tmp_path / "o.h5"))
    assert out.returncode == 2
    assert "unknown scan format '.tiff'" in out.stderr and "Traceback" not in out.stderr


def test_reconstruct_with_the_mpie_engine(tmp_path):
    """``--engine mpie`` overrides the profile's AD engine, records itself in OUT.h5 and never
    imports TensorFlow (Python's own import log says so)."""
    profile = small_profile(photons_per_frame=None, n_points=40, object_px=144)
    yaml = tmp_path / "small.yaml"
    yaml.write_text(profile.model_dump_json())  # JSON is YAML; its engine.algorithm is "ad"
    scan, _ = simulated_npz(profile, tmp_path / "scan.npz")
    out = tmp_path / "out.h5"
    run = ptystream(
        "reconstruct",
        str(scan),
        "--profile",
        str(yaml),
        "--engine",
        "mpie",
        "--iterations",
        "20",
        "--out",
        str(out),
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "(mpie)" in run.stdout and "800 position updates" in run.stdout
    assert "| numpy" in run.stderr and "| tensorflow" not in run.stderr
    with h5py.File(out) as f:
        obj, loss, attrs = f["object"][()], f["loss"][()], dict(f.attrs)
    assert attrs["engine"] == "mpie" and json.loads(attrs["settings"])["algorithm"] == "mpie"
    assert attrs["steps"] == len(loss) == 20 * 40
    assert obj.dtype == np.complex64 and np.isfinite(obj).all()
    assert loss[-40:].mean() < 0.05 * loss[:40].mean()
