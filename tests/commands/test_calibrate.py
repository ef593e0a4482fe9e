"""``ptystream calibrate`` as a user runs it (a real subprocess): a swapped far-field scan file,
the shared P25 scan with its y positions negated (near field: the distance search too), and a
raw run saved in a real Tiled server by bluesky's TiledWriter, calibrated through the
profile's axes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptystream.sim.problems import far_field_problem


def ptystream(*args, timeout=600):
    exe = Path(sys.executable).with_name("ptystream")
    return subprocess.run(
        [str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def write_npz(path, frames, positions_m, geometry, valid=None):
    """The documented NPZ layout; ``geometry``: anything with the wavelength, distance and
    detector pixel (a Geometry, a ScanFile)."""
    extra = {} if valid is None else {"valid_pixels": valid}
    np.savez(
        path,
        frames=frames,
        positions_m=positions_m,
        wavelength_m=geometry.wavelength_m,
        distance_m=geometry.distance_m,
        detector_pixel_size_m=geometry.detector_pixel_size_m,
        **extra,
    )
    return path


@pytest.fixture(scope="module")
def farfield():
    return far_field_problem(128, 80, seed=1)


def test_a_swapped_file_is_named_and_the_lines_printed(tmp_path, farfield):
    swapped = farfield.positions_m[:, ::-1]
    path = write_npz(tmp_path / "swapped.npz", farfield.frames, swapped, farfield.geometry)
    done = ptystream("calibrate", path, "--profile", "hard-xray-farfield")
    assert done.returncode == 1, done.stderr
    out = done.stdout.splitlines()
    assert "clearly better with y and x swapped" in out[0]
    assert "The positions come from the file" in out[0] and "twin image" in out[0]
    i = out.index("paste into the profile:")
    assert out[i + 1] == "instrument:"
    assert out[i + 2].startswith("  orientation: auto")
    defocus = float(out[i + 3].split(":")[1])
    assert out[i + 3].startswith("  probe_defocus_m:") and abs(defocus - 1.5e-3) < 0.2e-3


def test_a_right_file_is_confirmed(tmp_path, farfield):
    path = write_npz(
        tmp_path / "right.npz", farfield.frames, farfield.positions_m, farfield.geometry
    )
    done = ptystream("calibrate", path, "--profile", "hard-xray-farfield")
    assert done.returncode == 0, done.stderr
    assert "fits clearly best" in done.stdout and "orientation: auto" not in done.stdout
    assert "probe_defocus_m:" in done.stdout  # the search's choice, to paste


def test_p25_with_y_negated_and_its_distance(tmp_path, p25):
    """Near field: y negated is found (no twin there), and the distance search's propagation
    distance is turned into the focus-to-sample distance, printed beside the profile's (few
    passes per trial to keep it short; the search's choice itself is not validated on P25)."""
    from ptystream.io.scans import read_scan

    scan = read_scan(p25)
    flipped = scan.positions_m * np.array([-1.0, 1.0])
    path = write_npz(tmp_path / "p25.npz", scan.frames, flipped, scan, scan.valid_pixels)
    done = ptystream(
        "calibrate",
        path,
        "--profile",
        "p25-nearfield",
        "--set",
        "engine.distance_search_passes=5",
    )
    assert done.returncode == 1, done.stderr
    assert "clearly better with y negated" in done.stdout
    assert "twin" not in done.stdout
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("  focus_to_sample_m:")]
    z1 = float(line.split(":")[1].split("#")[0])
    z = float(line.split("propagation distance")[1].split()[0])
    z2 = scan.distance_m
    assert z1 == pytest.approx(z * z2 / (z2 - z), rel=1e-5)
    assert 0.5 * 3.64e-3 <= z <= 1.5 * 3.64e-3  # the range searched
    assert "the profile's: 0.00365" in line


def test_a_raw_run_in_tiled_is_calibrated_through_the_profile_axes(
    tiled_server, tiled_client, small_profile
):
    """The stage was scanned as the profile says; calibrating with ``swap_axes`` set wrongly
    names the keys that undo it."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from ptystream.sim.scan import build_simulation
    from ptystream.store.layout import raw_catalog

    profile = small_profile()
    sim = build_simulation(profile)
    RE = RunEngine({})
    RE.subscribe(TiledWriter(raw_catalog(tiled_client), batch_size=30))
    (uid,) = RE(sim.plan())
    done = ptystream(
        "calibrate",
        uid[:8],
        "--profile",
        "demo",
        "--set",
        "instrument.swap_axes=true",
        "--tiled",
        tiled_server.uri,
    )
    assert done.returncode == 1, done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith(f"run {uid[:8]}:") and "y and x swapped" in out[0]
    i = out.index("paste into the profile:")
    assert out[i + 1 : i + 5] == ["instrument:", "  swap_axes: false", "  y_sign: 1", "  x_sign: 1"]
