"""`ptystream demo` as a real subprocess: a simulated scan reconstructed live into an embedded
Tiled server, with the dashboard, end to end."""

import re
import subprocess
import sys
from pathlib import Path


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
