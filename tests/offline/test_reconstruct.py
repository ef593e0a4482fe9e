"""`ptystream reconstruct` on the real P25 scan and on a simulated NPZ."""

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptystream.config import Algorithm
from ptystream.engine import prepare
from ptystream.metrics import score_against_truth, score_slices
from ptystream.offline.reconstruct import reconstruct, reconstruct_file


def test_reconstruct_the_p25_scan_from_the_command_line(tmp_path, p25):
    out = tmp_path / "p25.h5"
    exe = Path(sys.executable).with_name("ptystream")
    run = subprocess.run(
        [
            str(exe),
            "reconstruct",
            str(p25),
            "--profile",
            "p25-nearfield",
            "--iterations",
            "12",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with h5py.File(out) as f:
        obj, probe, corners, loss = (f[k][()] for k in ("object", "probe", "positions_px", "loss"))
        attrs = dict(f.attrs)
    assert obj.dtype == np.complex64 and obj.ndim == 2 and np.isfinite(obj).all()
    assert probe.dtype == np.complex64 and probe.shape == (100, 100)
    assert corners.shape == (200, 2)
    assert corners.min() >= 0 and (corners.max(axis=0) + 100 <= obj.shape).all()
    magnification = (3.65e-3 + 1.12) / 3.65e-3  # Fresnel scaling, z1 from the profile
    assert attrs["object_pixel_size_m"] == pytest.approx(55e-6 / magnification, rel=1e-6)
    assert attrs["propagation"] == "near_field"
    steps_per_epoch = int(np.ceil(200 / 16))
    first, last = loss[:steps_per_epoch].mean(), loss[-steps_per_epoch:].mean()
    assert len(loss) == 12 * steps_per_epoch == attrs["steps"]
    assert last < 0.45 * first  # measured: 0.36 of the first pass after 12 passes


def test_reconstruct_a_simulated_npz(tmp_path, small_profile, simulated_npz):
    profile = small_profile(photons_per_frame=None)
    path, sim = simulated_npz(profile, tmp_path / "scan.npz")
    estimate = reconstruct_file(path, profile, tmp_path / "out.h5", epochs=80)
    with h5py.File(tmp_path / "out.h5") as f:
        served = f["object"][()]
        corners = f["positions_px"][()]
    score, flat = score_against_truth(dataclasses.replace(estimate, object=served), sim.truth)
    assert score.abs_c >= 0.99 and score.phase >= 0.9 and score.abs_c > flat + 0.04
    # corners: probe centre = origin + (corner + N/2) * pixel, back in metres
    centres = np.asarray(estimate.object_origin_m) + (corners + 32) * estimate.pixel_size_m
    np.testing.assert_allclose(centres, sim.positions_m, atol=1e-12)


def test_reconstruct_a_thick_sample(tmp_path, small_thick_profile, simulated_npz):
    profile = small_thick_profile(photons_per_frame=None)
    path, sim = simulated_npz(profile, tmp_path / "scan.npz")
    estimate = reconstruct_file(path, profile, tmp_path / "out.h5", epochs=60)
    with h5py.File(tmp_path / "out.h5") as f:
        served = f["object"][()]
        gaps = f.attrs["slice_gaps_m"]
    assert served.shape[0] == 2 and served.dtype == np.complex64
    np.testing.assert_allclose(gaps, [600e-6])
    per_slice, product, flat = score_slices(dataclasses.replace(estimate, object=served), sim.truth)
    assert min(c.abs_c for c in per_slice) >= 0.98 and min(c.phase for c in per_slice) >= 0.9
    assert product.abs_c > flat + 0.04


def test_a_time_budget_is_kept(tmp_path, small_profile, simulated_npz):
    """The budget is wall time from the engine's construction to the end of the passes; the
    last pass stops part-way when it is spent. The bound checks the budget is obeyed, not how
    fast anything runs: extrapolating from the first pass missed budgets by up to 30 %."""
    profile = small_profile(photons_per_frame=None, n_points=40, object_px=144)
    # no early stop: it would end the passes before the budget (that is its job)
    profile = profile.model_copy(
        update={"engine": profile.engine.model_copy(update={"early_stop_patience": 0})}
    )
    path, sim = simulated_npz(profile, tmp_path / "scan.npz")
    calls = []
    prepare(profile.engine)  # TensorFlow imported and set up: the budget counts it otherwise
    start = time.perf_counter()
    estimate = reconstruct_file(
        path,
        profile,
        tmp_path / "out.h5",
        time_budget_s=8.0,
        progress=lambda done, total, loss: calls.append((done, total)),
    )
    elapsed = time.perf_counter() - start
    passes = calls[-1][0]
    assert [done for done, _ in calls] == list(range(1, passes + 1))  # one report per pass
    assert calls[-1] == (passes, passes)  # the last report knows it is the last
    assert passes >= 2  # a pass of 40 frames takes well under 0.5 s once compiled
    assert (passes - 1) * 3 < estimate.iteration <= passes * 3  # 3 steps a pass, last partial
    # never short of the budget; past it by one step, the estimate and the file (milliseconds
    # on an idle machine; the bound leaves room for a loaded one: it checks that the budget
    # is obeyed, not a speed)
    assert 8.0 <= elapsed < 8.0 + 3.0


def test_the_engine_argument_overrides_the_profile_and_is_recorded(
    tmp_path, small_profile, simulated_npz
):
    """A profile asking for mPIE, reconstructed as it says and with ePIE instead. Measured after
    30 passes over 40 frames: |C| 0.99996 (mPIE) and 0.99991 (ePIE), flat object 0.945."""
    small = small_profile(photons_per_frame=None, n_points=40, object_px=144)
    profile = small.model_copy(
        update={"engine": small.engine.model_copy(update={"algorithm": Algorithm.MPIE})}
    )
    path, sim = simulated_npz(profile, tmp_path / "scan.npz")
    for algorithm, used in ((None, "mpie"), ("epie", "epie")):
        out = tmp_path / f"{used}.h5"
        estimate = reconstruct_file(path, profile, out, epochs=30, algorithm=algorithm)
        with h5py.File(out) as f:
            attrs = dict(f.attrs)
        assert attrs["engine"] == used and json.loads(attrs["settings"])["algorithm"] == used
        assert attrs["steps"] == estimate.iteration == 30 * 40  # one step per position update
        score, flat = score_against_truth(estimate, sim.truth)
        assert score.abs_c >= 0.999 and score.abs_c > flat + 0.04 and score.phase >= 0.95


def test_an_interrupted_reconstruction_is_written_and_resumed(
    tmp_path, small_profile, simulated_npz
):
    """Ctrl-C after the third of six passes (raised from the progress callback, where a
    signal would land between two steps): the result so far is written, marked incomplete with
    the passes done, the engine's state beside it; ``resume`` runs the three passes left from
    that state, and the finished run removes it."""
    from ptystream.offline.reconstruct import Interrupted, state_path

    profile = small_profile()
    scan, sim = simulated_npz(profile, tmp_path / "scan.npz")
    out = tmp_path / "out.h5"

    def stop_after_three(done, total, loss):
        if done == 3:
            raise KeyboardInterrupt

    mpie = Algorithm.MPIE
    with pytest.raises(Interrupted) as stopped:
        reconstruct_file(scan, profile, out, epochs=6, progress=stop_after_three, algorithm=mpie)
    assert stopped.value.passes_done == 3 and stopped.value.written == out
    with h5py.File(out) as f:
        assert f.attrs["status"] == "incomplete" and f.attrs["passes_done"] == 3
        assert f.attrs["steps"] == 3 * len(sim.positions_m)
    assert state_path(out).is_file()
    seen = []
    est = reconstruct_file(
        scan, profile, out, epochs=6, algorithm=mpie, resume=True,
        progress=lambda done, total, loss: seen.append((done, total)),
    )  # fmt: skip
    assert seen == [(1, 3), (2, 3), (3, 3)]  # the passes left
    assert est.iteration == 6 * len(sim.positions_m)
    with h5py.File(out) as f:
        assert f.attrs["status"] == "finished"
    assert not state_path(out).exists()
    score, flat = score_against_truth(est, sim.truth)
    assert score.abs_c > flat + 0.02
    with pytest.raises(ValueError, match="no saved state"):
        reconstruct_file(scan, profile, out, epochs=6, algorithm=mpie, resume=True)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_in_reconstruct_then_resume(tmp_path, small_profile, simulated_npz, signum):
    """The real command, interrupted (Ctrl-C or SIGTERM) during its passes (after the
    orientation check's log line), ends with one line and no traceback, leaves the result so
    far (incomplete) and the state; the same command with --resume finishes it."""
    import signal as signals

    path, _ = simulated_npz(small_profile(), tmp_path / "scan.npz")
    out = tmp_path / "out.h5"
    exe = str(Path(sys.executable).with_name("ptystream"))
    base = ["reconstruct", str(path), "--profile", "demo", "--engine", "mpie", "--out", str(out)]
    proc = subprocess.Popen(
        # far more passes than run before the signal (400 could all end within the 1.5 s on
        # an idle core)
        [exe, "-v", *base, "--iterations", "20000"],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if "positions: the orientation" in line:
            break
    time.sleep(1.5)  # into the passes
    proc.send_signal(getattr(signals, signum))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    (last,) = [x for x in err.splitlines() if x.startswith("ptystream: interrupted")]
    assert f"wrote {out}" in last and "--resume" in last
    with h5py.File(out) as f:
        assert f.attrs["status"] == "incomplete" and 0 < f.attrs["passes_done"] < 20000
        done = int(f.attrs["passes_done"])
    resumed = subprocess.run(
        [exe, *base, "--iterations", str(done + 2), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(out) as f:
        assert f.attrs["status"] == "finished"


def test_reconstruct_takes_set_overrides(tmp_path, small_profile, simulated_npz):
    """``--set SECTION.KEY=VALUE`` as ``reprocess`` takes it: applied and recorded; a misspelt
    key is refused by name."""
    path, _ = simulated_npz(small_profile(), tmp_path / "scan.npz")
    exe = str(Path(sys.executable).with_name("ptystream"))
    base = [exe, "reconstruct", str(path), "--profile", "demo", "--engine", "mpie"]
    tv = ["--set", "engine.tv_weight=0.002"]
    done = subprocess.run(
        [*base, "--iterations", "1", "--out", str(tmp_path / "o.h5"), *tv],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "o.h5") as f:
        assert json.loads(f.attrs["settings"])["tv_weight"] == 0.002
    bad = subprocess.run(
        [*base, "--out", str(tmp_path / "b.h5"), "--set", "engine.tv_wieght=1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "did you mean 'tv_weight'" in bad.stderr


def test_reconstruct_arrays_from_a_larger_camera_with_a_callback_and_a_bar(
    tmp_path, small_profile, simulated_npz, capsys
):
    """The notebook path: a scan's arrays as a 80 x 100 camera records them (pattern centre off
    the middle, dark current, dead pixels), the profile's preprocess cutting the 64 px window
    and subtracting a dark file; a callback per pass, then tqdm's bar (text outside Jupyter)."""
    from ptystream.config import PreprocessSettings
    from ptystream.io.scans import read_scan
    from ptystream.sim.detector import RawDetector

    profile = small_profile(photons_per_frame=None)
    path, sim = simulated_npz(profile, tmp_path / "scan.npz")
    window = read_scan(path)
    camera = RawDetector.make((80, 100), (37, 58), n_hot=0, rng=np.random.default_rng(2))
    frames = np.stack([camera.record(f) for f in window.frames])
    np.save(tmp_path / "dark.npy", np.stack([camera.dark() for _ in range(10)]))
    scan = dataclasses.replace(window, frames=frames, valid_pixels=np.ones(frames.shape[1:], bool))
    prep = PreprocessSettings(size_px=64, dark_file=tmp_path / "dark.npy", dead_pixels=True)
    profile = profile.model_copy(update={"preprocess": prep})
    passes = []
    estimate = reconstruct(scan, profile, epochs=60, progress=lambda *a: passes.append(a))
    assert [p[0] for p in passes] == list(range(1, 61)) and passes[-1][1] == 60
    score, flat = score_against_truth(estimate, sim.truth)
    assert score.abs_c >= 0.98 and score.abs_c > flat + 0.04, (score, flat)
    reconstruct(scan, profile, epochs=2)
    assert "reconstruct: 100%" in capsys.readouterr().err
