"""`ptystream demo` as a real subprocess: a simulated scan reconstructed live into an embedded
Tiled server, with the dashboard, end to end."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def ptystream(*args, timeout=600):
    exe = Path(sys.executable).with_name("ptystream")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs_end_to_end(tmp_path, small_profile):
    profile = small_profile(photons_per_frame=None, n_points=60, object_px=160)
    path = tmp_path / "small.yaml"
    path.write_text(profile.model_dump_json())  # JSON is YAML
    out = ptystream("demo", "--profile", str(path), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"Tiled: +http://127\.0\.0\.1:\d+/api/v1 ", text)
    assert re.search(r"dashboard: +http://127\.0\.0\.1:\d+/", text)
    key_file = tmp_path / "out" / "tiled-api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip() not in text + out.stderr  # the key is never printed
    assert re.search(r"result: +processed/ptystream/[0-9a-f-]{36}/live/", text)
    abs_c = float(re.search(r"\|C\| = ([0-9.]+)", text).group(1))
    assert abs_c >= 0.95
    png = Path(re.search(r"summary: +(\S+\.png)", text).group(1))
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "start-up" in text and "final reconstruction" in text
    # the noise model and the probe's defocus the engine chose from the frames
    assert re.search(r"noise: \w+ loss, read noise [0-9.e+-]+ counts \(estimated\)", text)
    assert re.search(r"initial probe: defocus [0-9.]+ mm", text)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_the_demo_marks_its_run_aborted(tmp_path, small_profile, signum):
    """Ctrl-C or SIGTERM during the scan (a real signal to the real command): one line, no
    traceback, exit status 130, and the run ends with a stop document (``abort`` in the raw
    run), its reconstruction published ``aborted`` in Tiled (read back from the demo's data
    directory afterwards), not left ``running``."""

    from tiled.client import from_uri

    from ptystream.store.server import start_server_process

    profile = small_profile(n_points=90, exposure_s=0.1)  # a 9 s scan
    path = tmp_path / "slow.yaml"
    path.write_text(profile.model_dump_json())
    exe = Path(sys.executable).with_name("ptystream")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(exe), "demo", "--profile", str(path), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if "scanning" in line:
            break
    time.sleep(3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    (said,) = [line for line in err.splitlines() if line.startswith("ptystream: interrupted")]
    uid8 = re.search(r"run ([0-9a-f]{8}) ended aborted in Tiled", said).group(1)
    server = start_server_process(out / "tiled")
    try:
        runs = from_uri(server.uri)["processed"]["ptystream"]
        (uid,) = [u for u in runs if u.startswith(uid8)]
        assert runs[uid].metadata["status"] == "aborted"
        assert from_uri(server.uri)["raw"][uid8].stop["exit_status"] == "abort"
    finally:
        server.close()
