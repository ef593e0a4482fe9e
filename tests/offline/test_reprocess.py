"""`ptystream reprocess`: runs that bluesky's TiledWriter saved into a real Tiled server (inline
frames, an external AD_HDF5 file, one reconstructed live, one broken) and a scan file,
reprocessed on a real Dask LocalCluster of two worker processes, checked against the ground
truth. Nothing is faked."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter

from ptystream.config import with_overrides
from ptystream.metrics import complex_correlation
from ptystream.offline.jobs import file_jobs, settings_hash, tiled_jobs
from ptystream.offline.report import format_table
from ptystream.offline.task import reprocess_one
from ptystream.sim.detector import DetectorModel
from ptystream.sim.file_detectors import ad_hdf5_detector
from ptystream.sim.plans import ptycho_scan
from ptystream.sim.scan import build_simulation, simulated_read_noise
from ptystream.store.layout import raw_catalog
from ptystream.store.runs import RunSelectionError, read_run, select_runs

KEY = "reprocesskey"  # SimpleTiledServer keys must be alphanumeric
EPOCHS = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real SimpleTiledServer allowed to read the detector files the runs reference."""
    from tiled.server import SimpleTiledServer

    files = tmp_path_factory.mktemp("detector-files")
    server = SimpleTiledServer(
        tmp_path_factory.mktemp("tiled"), api_key=KEY, readable_storage=[files]
    )
    server.files = files
    yield server
    server.close()


@pytest.fixture(scope="module")
def root(server):
    from tiled.client import from_uri

    return from_uri(server.uri)


@pytest.fixture(scope="module")
def profile(small_profile):
    return small_profile()


@pytest.fixture(scope="module")
def runs(server, root, profile, small_profile, run_live_scan):
    """scan 1 reconstructed live; scan 2 inline frames of another sample; scan 3 frames in an
    AD_HDF5 file; scan 4 every frame NaN. Returns {scan id: (uid, truth)} and scan 1's live
    result."""
    uid1, live, sim1 = run_live_scan(profile, root)
    out = {1: (uid1, sim1.truth)}
    RE = RunEngine({})
    RE.md["scan_id"] = 1
    RE.subscribe(TiledWriter(raw_catalog(root), batch_size=10))
    units = profile.instrument.motor_units_m

    other = small_profile(seed=2, trajectory="raster")
    sim2 = build_simulation(other)
    (uid,) = RE(sim2.plan())
    out[2] = (uid, sim2.truth)

    sim3 = build_simulation(small_profile(seed=3))
    model = DetectorModel(
        photons_per_frame=1e6,
        read_noise_counts=simulated_read_noise(profile),
        saturation_counts=None,
        rng=np.random.default_rng(3),
    )
    det = ad_hdf5_detector(
        sim3.stage, sim3.truth, model, motor_units_m=units, save_path=server.files
    )
    (uid,) = RE(
        ptycho_scan(det, sim3.stage, sim3.positions_m, profile=profile.name, motor_units_m=units)
    )
    out[3] = (uid, sim3.truth)

    sim4 = build_simulation(profile)
    sim4.detector.image._func = lambda: np.full((64, 64), np.nan, np.float32)
    (uid,) = RE(sim4.plan())
    out[4] = (uid, None)
    return out, live


def abs_c_from_tiled(version, truth) -> float:
    """|C| of the served final object against the truth (see :func:`abs_c`)."""
    final = version["final"]
    md = final["object"].metadata
    return abs_c(
        final["object"].read(),
        md["object_origin_m"],
        md["pixel_size_m"],
        final["positions_m"].read(),
        truth,
    )


def abs_c(obj, origin, dx, positions, truth) -> float:
    """|C| of ``obj`` against the truth over the scanned area: where the truth probe's summed
    intensity over the windows at ``positions`` is above 30 % of its peak."""
    origin = np.asarray(origin)
    n = truth.probe.shape[-1]
    lit = np.zeros(obj.shape)
    corners = np.floor((positions - origin) / dx - n / 2 + 0.5).astype(int)
    for r, c in np.clip(corners, 0, np.array(obj.shape) - n):
        lit[r : r + n, c : c + n] += np.abs(truth.probe) ** 2
    mask = lit > 0.3 * lit.max()
    aligned = truth.aligned_to(obj.shape, tuple(origin))
    return complex_correlation(obj, aligned, mask).abs_c


def ptystream(*args, timeout=900):
    exe = Path(sys.executable).with_name("ptystream")
    return subprocess.run(
        [str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def first_pass(tmp_path_factory, server, runs, profile, small_profile, simulated_npz):
    """``ptystream reprocess 1:4 scan.npz`` as a real subprocess on two local workers."""
    tmp = tmp_path_factory.mktemp("reprocess")
    profile_file = tmp / "test.yaml"
    profile_file.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
    key_file = tmp / "key"
    key_file.write_text(KEY)
    npz, npz_sim = simulated_npz(small_profile(seed=5), tmp / "scan5.npz")
    base = [
        "--tiled",
        server.uri.split("?")[0],
        "--api-key-file",
        key_file,
        "--profile",
        profile_file,
        "--epochs",
        EPOCHS,
        "--out",
        tmp / "out",
    ]
    run = ptystream("-v", "reprocess", "1:4", npz, "--workers", 2, *base)
    return run, base, tmp, npz_sim


def test_reprocessing_runs_and_a_file_on_two_workers(root, runs, first_pass, profile):
    (scans, _), (run, _, tmp, npz_sim) = runs, first_pass
    assert run.returncode == 1, run.stderr[-3000:]  # scan 4 fails, alone
    assert "5 to reprocess, 0 skipped" in run.stdout
    assert KEY not in run.stdout + run.stderr
    assert (tmp / "out" / "summary.json").is_file(), run.stderr[-3000:]
    rows = {r["label"]: r for r in json.loads((tmp / "out" / "summary.json").read_text())}
    assert set(rows) == {"scan 1", "scan 2", "scan 3", "scan 4", "scan5.npz"}
    for label in ("scan 1", "scan 2", "scan 3", "scan5.npz"):
        assert rows[label]["status"] == "finished", rows[label]
        assert rows[label]["frames"] == 90
        assert rows[label]["iterations"] == EPOCHS * 6  # 90 frames in batches of 16
    assert rows["scan 4"]["status"] == "failed"
    assert "no usable frame out of 90 (90 not finite)" in rows["scan 4"]["error"]
    table = run.stdout[run.stdout.index("run ") :]
    assert "scan 4" in table and "failed: ValueError" in table
    assert (tmp / "out" / "contact-sheet.png").stat().st_size > 10_000

    digest = settings_hash(profile, EPOCHS)
    for scan in (1, 2, 3):
        uid, truth = scans[scan]
        version = root["processed"]["ptystream"][uid]["reprocessed"]["v1"]
        md = version.metadata
        assert md["status"] == "finished" and md["kind"] == "reprocess"
        assert md["settings_hash"] == digest and md["raw_uid"] == uid and md["scan_id"] == scan
        prov = md["provenance"]
        assert prov["input"]["raw_uid"] == uid and prov["profile"] == "test"
        assert prov["settings"]["epochs"] == EPOCHS
        assert prov["settings"]["engine"]["batch_size"] == profile.engine.batch_size
        assert "api_key" not in json.dumps(dict(md)) and KEY not in json.dumps(dict(md))
        assert md["frames"] == {"read": 90, "used": 90, "rejected": {}}
        assert abs_c_from_tiled(version, truth) >= 0.98, scan

    import h5py

    (h5,) = (tmp / "out").glob("scan5-*.h5")
    with h5py.File(h5) as f:
        assert f.attrs["settings_hash"] == digest
        obj, origin, dx = (
            f["object"][()],
            f.attrs["object_origin_m"],
            f.attrs["object_pixel_size_m"],
        )
    assert abs_c(obj, origin, dx, npz_sim.positions_m, npz_sim.truth) >= 0.98


def test_the_live_result_is_kept(root, runs, first_pass):
    (scans, live), _ = runs, first_pass
    uid = scans[1][0]
    node = root["processed"]["ptystream"][uid]
    assert node.metadata["status"] == "finished"
    assert node.metadata["latest_reprocess"]["version"] == "v1"
    served = node["final"]["object"].read()
    assert np.array_equal(served, live.final.object)
    assert {"live", "final", "reprocessed"} <= set(node)
    # a run never reconstructed live gets a container saying so
    assert root["processed"]["ptystream"][scans[2][0]].metadata["status"] == (
        "not reconstructed live"
    )


def test_a_rerun_skips_what_is_done_unless_forced(root, runs, first_pass, server, profile):
    (scans, _), (_, base, tmp, _) = runs, first_pass
    run = ptystream("reprocess", "1:3", *base, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "0 to reprocess, 3 skipped" in run.stdout
    assert run.stdout.count("already reprocessed with these settings") == 3

    uri = server.uri.split("?")[0]
    jobs, skipped = tiled_jobs(
        root, ["1:3"], profile, epochs=EPOCHS, tiled_uri=uri, api_key=KEY, force=True
    )
    assert [j.run_uid for j in jobs] == [scans[k][0] for k in (1, 2, 3)] and not skipped
    assert KEY not in repr(jobs[0])
    better = with_overrides(profile, ["engine.probe_modes=2"])
    jobs, skipped = tiled_jobs(root, ["2"], better, epochs=EPOCHS, tiled_uri=uri, api_key=KEY)
    assert len(jobs) == 1 and not skipped  # other settings, another version
    jobs, skipped = file_jobs([tmp / "scan5.npz"], profile, epochs=EPOCHS, out_dir=tmp / "out")
    assert not jobs and skipped[0].status == "skipped"


def test_a_forced_rerun_adds_a_version(root, runs, first_pass, server, profile, uid_prefix):
    (scans, _), _ = runs, first_pass
    uid = scans[2][0]
    uri = server.uri.split("?")[0]
    (job,), _ = tiled_jobs(
        root, [uid_prefix(uid, 8)], profile, epochs=2, tiled_uri=uri, api_key=KEY, force=True
    )
    report = reprocess_one(job)  # in this process: the task itself, without Dask
    assert report.status == "finished", report.error
    versions = root["processed"]["ptystream"][uid]["reprocessed"]
    assert list(versions) == ["v1", "v2"]
    assert versions["v2"].metadata["provenance"]["settings"]["epochs"] == 2
    assert versions["v1"].metadata["status"] == "finished"  # untouched
    assert "scan 2" in format_table([report])


def test_selection(root, runs, uid_prefix):
    scans, _ = runs
    raw = root["raw"]
    assert [r.scan_id for r in select_runs(raw, ["2:3"])] == [2, 3]
    assert [r.scan_id for r in select_runs(raw, ["3", uid_prefix(scans[1][0], 7), "3"])] == [3, 1]
    every = select_runs(raw, ["1-4"], where=["plan_name=ptycho_scan"])
    assert [r.scan_id for r in every] == [1, 2, 3, 4]
    assert [r.uid for r in select_runs(raw, [], where=["scan_id=4"])] == [scans[4][0]]
    assert all(r.exit_status == "success" for r in select_runs(raw, ["1:4"]))
    with pytest.raises(RunSelectionError, match="no run has a scan id in 7..9"):
        select_runs(raw, ["7:9"])
    with pytest.raises(RunSelectionError, match="no run with scan id '42'"):
        select_runs(raw, ["42"])
    with pytest.raises(RunSelectionError, match="expected KEY=VALUE"):
        select_runs(raw, [], where=["sample"])
    with pytest.raises(RunSelectionError, match="runs backwards"):
        select_runs(raw, ["4:2"])


def test_file_results_go_where_the_client_says(tmp_path, profile, monkeypatch):
    """Workers of a standing cluster run elsewhere: the output directory travels absolute."""
    scan = tmp_path / "scan.npz"
    scan.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    (job,), _ = file_jobs([scan], profile, epochs=1, out_dir="results")
    assert job.out_dir == str(tmp_path / "results")


@pytest.mark.parametrize("result_format", ["h5", "cxi"])
def test_a_wrong_orientation_is_in_the_report_and_the_table(tmp_path, result_format):
    """A scan file whose positions have y and x swapped: reprocessed (mPIE, 2 passes) it
    finishes, and the orientation check's warning is in its report, the table printed and the
    result file, in either format."""
    from ptystream.config import load_profile
    from ptystream.sim.problems import far_field_problem

    problem = far_field_problem(128, 80, seed=1)
    g = problem.geometry
    path = tmp_path / "swapped.npz"
    np.savez(
        path,
        frames=problem.frames,
        positions_m=problem.positions_m[:, ::-1],
        wavelength_m=g.wavelength_m,
        distance_m=g.distance_m,
        detector_pixel_size_m=g.detector_pixel_size_m,
    )
    profile = with_overrides(load_profile("hard-xray-farfield"), ["engine.algorithm=mpie"])
    (job,), _ = file_jobs(
        [path], profile, epochs=2, out_dir=tmp_path / "out", result_format=result_format
    )
    report = reprocess_one(job)
    assert report.status == "finished", report.error
    (warning,) = [w for w in report.warnings if "y and x swapped" in w]
    assert "The positions come from the file" in warning
    assert f"warning: {report.label}: {warning}" in format_table([report]).splitlines()
    import h5py

    assert report.result.endswith(f".{result_format}")
    with h5py.File(report.result) as f:
        group = f["entry_1/image_1/process_1"] if result_format == "cxi" else f
        assert json.loads(group.attrs["orientation"])["warnings"] == [warning]
    from ptystream.io.results import read_result

    assert read_result(report.result).orientation["verdict"] == "mismatch"


def test_bad_input_is_named(root, runs, profile):
    scans, _ = runs
    run = root["raw"][scans[2][0]]
    other = profile.model_copy(
        update={"instrument": profile.instrument.model_copy(update={"detector_key": "eiger"})}
    )
    with pytest.raises(ValueError, match="stream 'primary' has no data key 'eiger'"):
        read_run(run, other)
    with pytest.raises(ValueError, match="engine.probe_modez.*did you mean 'probe_modes'"):
        with_overrides(profile, ["engine.probe_modez=2"])
    with pytest.raises(ValueError, match="no section 'engin'"):
        with_overrides(profile, ["engin.probe_modes=2"])
    with pytest.raises(FileNotFoundError, match="missing.cxi does not exist"):
        file_jobs(["missing.cxi"], profile, epochs=1, out_dir=".")
    data = read_run(root["raw"][scans[3][0]], profile)  # the external AD_HDF5 frames
    assert data.scan.frames.shape == (90, 64, 64) and not data.rejected


def test_a_wrong_key_is_refused_clearly(server, first_pass):
    _, base, tmp, _ = first_pass
    bad = tmp / "bad-key"
    bad.write_text("wrongkey")
    args = list(base)
    args[args.index("--api-key-file") + 1] = bad
    run = ptystream("reprocess", "1", *args, timeout=120)
    assert run.returncode == 2
    assert "refused the API key" in run.stderr and "wrongkey" not in run.stderr


def test_a_thick_sample_is_reprocessed_slice_by_slice(root, server, small_thick_profile, tmp_path):
    """A two-layer run saved by TiledWriter (scan 100, after the other tests' scans) and the
    same scan as a file, reprocessed in-process (one task each) with the multislice profile:
    both results hold two slices, each its own layer."""
    profile = small_thick_profile()
    sim = build_simulation(profile)
    RE = RunEngine({})
    RE.md["scan_id"] = 99
    RE.subscribe(TiledWriter(raw_catalog(root), batch_size=10))
    (uid,) = RE(sim.plan())
    jobs, skipped = tiled_jobs(
        root,
        [uid],
        profile,
        epochs=40,
        tiled_uri=server.uri.split("?")[0],
        api_key=KEY,
    )
    assert not skipped and len(jobs) == 1
    report = reprocess_one(jobs[0])
    assert report.status == "finished", report.error
    final = root["processed"]["ptystream"][uid]["reprocessed"]["v1"]["final"]
    md = final["object"].metadata
    obj = final["object"].read()
    assert obj.shape[0] == 2 and md["slices"] == 2 and md["slice_gaps_m"] == [600e-6]
    for s in (0, 1):
        layer = dataclasses.replace(sim.truth, object=sim.truth.object[s])
        c = abs_c(obj[s], md["object_origin_m"], md["pixel_size_m"], sim.positions_m, layer)
        assert c >= 0.97, (s, c)  # measured 0.99
