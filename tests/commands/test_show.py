"""``ptystream show`` and ``reconstruct --png`` as a user runs them (real subprocesses): a PNG
of a result file, and of a run's final result in a real Tiled server."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def ptystream(*args, timeout=600):
    exe = Path(sys.executable).with_name("ptystream")
    return subprocess.run(
        [str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def picture(path: Path) -> np.ndarray:
    image = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert image.shape[0] > 200 and image.shape[1] > 600
    assert image.std() > 10  # drawn, not blank
    return image


def test_reconstruct_png_then_show_of_the_file_and_of_its_cxi(
    tmp_path, simulated_npz, small_profile
):
    scan, _ = simulated_npz(small_profile(), tmp_path / "scan.npz")
    out = tmp_path / "out.h5"
    done = ptystream(
        "reconstruct", scan, "--profile", "demo", "--engine", "mpie", "--iterations", "3",
        "--out", out, "--png",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"picture: {out.with_suffix('.png')}" in done.stdout
    picture(out.with_suffix(".png"))
    shown = ptystream("show", out, "--out", tmp_path / "again.png")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == str(tmp_path / "again.png")
    picture(tmp_path / "again.png")
    cxi = tmp_path / "out.cxi"
    assert ptystream(
        "reconstruct", scan, "--profile", "demo", "--engine", "mpie", "--iterations", "2",
        "--out", cxi,
    ).returncode == 0  # fmt: skip
    shown = ptystream("show", cxi)
    assert shown.returncode == 0 and shown.stdout.strip() == str(tmp_path / "out.png")


def test_show_of_a_run_in_tiled(tiled_server, tiled_client, small_profile, run_live_scan, tmp_path):
    uid, result, _ = run_live_scan(small_profile(), tiled_client)
    done = ptystream("show", uid[:8], "--tiled", tiled_server.uri, "--out", tmp_path / "run.png")
    assert done.returncode == 0, done.stderr
    picture(tmp_path / "run.png")
    missing = ptystream("show", "zzzz", "--tiled", tiled_server.uri)
    assert missing.returncode == 2 and "'zzzz' matches 0 reconstructed runs" in missing.stderr
