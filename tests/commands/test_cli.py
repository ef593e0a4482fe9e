"""The ``ptystream`` command as a real subprocess: argument and profile errors, ``reconstruct``
and ``dashboard`` (``demo`` is in test_demo.py, the other commands each in their own file)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest


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


def test_reconstruct_with_the_mpie_engine(tmp_path, small_profile, simulated_npz):
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
    # the noise model the engine used, said on the command line and kept in the file
    assert "noise: amplitude loss, read noise" in run.stdout and "(estimated)" in run.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()}
    assert "numpy" in imported and "tensorflow" not in imported
    with h5py.File(out) as f:
        obj, loss, attrs = f["object"][()], f["loss"][()], dict(f.attrs)
    assert attrs["engine"] == "mpie" and json.loads(attrs["settings"])["algorithm"] == "mpie"
    assert json.loads(attrs["noise"])["read_noise_source"] == "estimated"
    assert attrs["steps"] == len(loss) == 20 * 40
    assert obj.dtype == np.complex64 and np.isfinite(obj).all()
    assert loss[-40:].mean() < 0.05 * loss[:40].mean()


def test_dashboard_command_serves_the_page_and_proxies_reads(tiled_server, tmp_path):
    """`ptystream dashboard` as a real subprocess against a real Tiled server."""
    import signal
    import time

    import httpx

    from ptystream.store.access import split_api_key

    uri, key = split_api_key(tiled_server.uri)
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    exe = Path(sys.executable).with_name("ptystream")
    proc = subprocess.Popen(
        [str(exe), "dashboard", "--tiled", uri, "--api-key-file", str(key_file), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.match(r"dashboard at (http://127\.0\.0\.1:\d+/) \(data from (\S+)\)", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        assert match.group(2) == uri and key not in line
        page = httpx.get(match.group(1), timeout=10)
        assert page.status_code == 200 and "<canvas" in page.text and key not in page.text
        about = httpx.get(match.group(1) + "api/v1/", timeout=10)  # read through the proxy
        assert about.status_code == 200 and "api_version" in about.json()
        assert httpx.post(match.group(1) + "api/v1/metadata/", timeout=10).status_code == 405
    finally:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    assert proc.returncode == 0


def test_dashboard_command_with_a_wrong_key(tiled_server, tmp_path):
    from ptystream.store.access import split_api_key

    uri, _ = split_api_key(tiled_server.uri)
    key_file = tmp_path / "key"
    key_file.write_text("wrongkey\n")
    out = ptystream("dashboard", "--tiled", uri, "--api-key-file", str(key_file), timeout=120)
    assert out.returncode == 2 and "refused the API key" in out.stderr
    assert "wrongkey" not in out.stdout + out.stderr
