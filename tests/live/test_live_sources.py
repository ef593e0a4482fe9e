"""Every frame source of issue 4 through the real callback and pipeline, in one process: inline
frames, NPY_SEQ and area-detector HDF5 files (Resource/Datum), an ophyd-async detector writing
SWMR HDF5 (StreamResource/StreamDatum) in step and fly scans, positions from another stream.
A real RunEngine drives real simulated devices writing real files; the engine is the real one.
Publishing is off (publisher=None): Tiled is exercised by test_pipeline and test_serve."""

import time

import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices

from ptystream.live.callback import PtychoCallback
from ptystream.live.pipeline import LivePipeline
from ptystream.metrics import score_against_truth
from ptystream.sim.async_detector import AsyncSampleStage, SimPtychoDetector
from ptystream.sim.detector import DetectorModel
from ptystream.sim.file_detectors import ad_hdf5_detector, npy_seq_detector
from ptystream.sim.fly import fly_scan
from ptystream.sim.plans import ptycho_scan
from ptystream.sim.scan import build_simulation

N_POINTS = 40


@pytest.fixture(scope="module")
def profile_for(small_profile):
    """``profile_for(**instrument)``: a 40-point scan, 80 final passes, ``instrument`` fields
    overridden."""

    def profile_for(**instrument):
        profile = small_profile(photons_per_frame=None, n_points=N_POINTS, object_px=144)
        engine = profile.engine.model_copy(update={"final_epochs": 80})
        inst = profile.instrument.model_copy(update=instrument)
        return profile.model_copy(update={"engine": engine, "instrument": inst})

    return profile_for


@pytest.fixture(scope="module")
def live(tmp_path_factory, profile_for):
    """One pipeline and RunEngine for the module: the runs follow each other, as at a beamline."""
    profile = profile_for()
    pipeline = LivePipeline(profile, None, spool_dir=tmp_path_factory.mktemp("spool")).start()
    RE = RunEngine({})
    RE.subscribe(PtychoCallback(profile, pipeline))
    yield profile, pipeline, RE
    pipeline.close()


def clean_model():
    return DetectorModel(None, 0.0, None, np.random.default_rng(0))


def check(pipeline, uid, sim):
    """Every frame used, none rejected, and a good reconstruction (a flat object scores |C|
    0.945 on this weak phase object, so phase correlation is the sharper check)."""
    result = pipeline.wait(uid, timeout=300)
    assert result.status == "finished", result.error
    frames = result.accounting.as_dict()
    assert frames["received"] == frames["used"] == N_POINTS and frames["rejected"] == {}
    score, flat = score_against_truth(result.final, sim.truth)
    assert score.abs_c > 0.99 and score.abs_c > flat + 0.04, (score, flat)
    assert score.phase > 0.9, score
    return result


def test_inline_frames(live):
    profile, pipeline, RE = live
    sim = build_simulation(profile)
    (uid,) = RE(sim.plan())
    check(pipeline, uid, sim)


@pytest.mark.parametrize("make", [npy_seq_detector, ad_hdf5_detector], ids=["npy", "ad_hdf5"])
def test_external_files_through_resource_and_datum(live, tmp_path, make):
    profile, pipeline, RE = live
    sim = build_simulation(profile)
    det = make(sim.stage, sim.truth, clean_model(), motor_units_m=1e-6, save_path=tmp_path)
    plan = ptycho_scan(det, sim.stage, sim.positions_m, profile=profile.name, motor_units_m=1e-6)
    (uid,) = RE(plan)
    check(pipeline, uid, sim)


@pytest.fixture
def async_detector(live, tmp_path):
    profile, _, RE = live
    sim = build_simulation(profile)
    with init_devices():
        stage = AsyncSampleStage()
        det = SimPtychoDetector(
            StaticPathProvider(UUIDFilenameProvider(), tmp_path),
            sim.truth,
            clean_model(),
            stage=stage,
            motor_units_m=1e-6,
        )
    return sim, stage, det


def test_ophyd_async_hdf5_step_scan(live, async_detector):
    profile, pipeline, RE = live
    sim, stage, det = async_detector
    plan = ptycho_scan(det, stage, sim.positions_m, profile=profile.name, motor_units_m=1e-6)
    (uid,) = RE(plan)
    check(pipeline, uid, sim)


def test_fly_scan_positions_from_an_event_page_frames_from_stream_datum_ranges(
    tmp_path, profile_for
):
    profile = profile_for(position_stream="positions")
    pipeline = LivePipeline(profile, None, spool_dir=tmp_path / "spool").start()
    RE = RunEngine({})
    RE.subscribe(PtychoCallback(profile, pipeline))
    sim = build_simulation(profile)
    with init_devices():
        det = SimPtychoDetector(
            StaticPathProvider(UUIDFilenameProvider(), tmp_path), sim.truth, clean_model()
        )
    uid = RE(
        fly_scan(
            det,
            sim.positions_m,
            profile=profile.name,
            motor_units_m=1e-6,
            exposure_s=0.002,
            collect_every_s=0.02,
        )
    )
    uid = uid[0] if isinstance(uid, tuple) else uid
    try:
        check(pipeline, uid, sim)
    finally:
        pipeline.close()


def recorded_scan(profile, sim=None):
    """The documents of a simulated scan on a RunEngine no pipeline listens to."""
    sim = sim or build_simulation(profile)
    docs = []
    RunEngine({})(sim.plan(), lambda name, doc: docs.append((name, doc)))
    return sim, docs


def test_documents_out_of_order_and_duplicated(live):
    """Events shuffled and a third of them sent twice, some before their descriptor; the start
    and stop documents repeated: the same reconstruction, duplicates counted and ignored."""
    profile, pipeline, _ = live
    sim, docs = recorded_scan(profile)
    rng = np.random.default_rng(3)
    start, descriptor, stop = docs[0], docs[1], docs[-1]
    events = [d for d in docs if d[0] == "event"]
    events += [events[i] for i in rng.choice(len(events), len(events) // 3, replace=False)]
    events = [events[i] for i in rng.permutation(len(events))]
    shuffled = [start, start, *events[:5], descriptor, *events[5:], stop, stop]
    callback = PtychoCallback(profile, pipeline)
    for name, doc in shuffled:
        callback(name, doc)
    result = check(pipeline, start[1]["uid"], sim)
    assert result.accounting.duplicates == N_POINTS // 3


def test_positions_in_stage_axes_are_turned_into_detector_axes(live):
    """A stage mounted swapped, mirrored and rotated: the documents carry its own readbacks and
    the profile says how its axes lie. The profile's transform must undo it exactly."""
    profile, pipeline, _ = live
    sim, docs = recorded_scan(profile)
    turned = profile.instrument.model_copy(
        update={"swap_axes": True, "x_sign": -1, "rotation_deg": 30.0}
    )
    theta = np.radians(30.0)
    for name, doc in docs:
        if name == "event":
            y, x = doc["data"]["sy"], doc["data"]["sx"]
            # the inverse of: swap, x -> -x, rotate by +30 degrees
            c, s = np.cos(theta), np.sin(theta)
            y_r, x_r = -s * x + c * y, c * x + s * y
            doc["data"]["sy"], doc["data"]["sx"] = -x_r, y_r
    callback = PtychoCallback(profile.model_copy(update={"instrument": turned}), pipeline)
    for name, doc in docs:
        callback(name, doc)
    check(pipeline, docs[0][1]["uid"], sim)


def test_pause_and_resume(live, pausing, run_until_paused):
    profile, pipeline, RE = live
    sim = build_simulation(profile)
    uid = run_until_paused(RE, pausing(sim.plan(), 15))
    time.sleep(2.0)  # paused: the pipeline refines what it has and waits
    assert pipeline.result(uid).status == "running"
    RE.resume()
    result = check(pipeline, uid, sim)
    assert result.status == "finished"


def test_aborted_scan_publishes_what_exists(live, pausing, run_until_paused):
    profile, pipeline, RE = live
    sim = build_simulation(profile)
    uid = run_until_paused(RE, pausing(sim.plan(), 12))
    RE.abort("sample fell off")
    result = pipeline.wait(uid, timeout=300)
    # bluesky 1.15 leaves the stop document's reason empty when a paused run is aborted
    assert result.status == "aborted"
    assert 12 <= result.accounting.used < N_POINTS
    assert result.final is not None and result.final.n_frames == result.accounting.used


def test_burst_beyond_the_memory_budget_spills_and_loses_nothing(tmp_path, profile_for):
    """A budget of 8 frames: the whole scan arrives while the engine is still being set up, so
    most frames go to the spill file and come back in turn."""
    profile = profile_for()
    profile.ingest.memory_budget_mb = 8 * 64 * 64 * 4 / 2**20
    pipeline = LivePipeline(profile, None, spool_dir=tmp_path).start()
    try:
        sim, docs = recorded_scan(profile)
        callback = PtychoCallback(profile, pipeline)
        for name, doc in docs:
            callback(name, doc)
        result = check(pipeline, docs[0][1]["uid"], sim)
        assert result.spilled_frames >= N_POINTS - 8
        assert pipeline.store.held_bytes == 0 and pipeline.store.spilled_outstanding == 0
        assert pipeline.store.peak_bytes <= 8 * 64 * 64 * 4
    finally:
        pipeline.close()
    assert not list((tmp_path / "spill").iterdir())  # the spill file is removed


def test_run_without_stop_is_closed_by_timeout_and_by_the_next_start(tmp_path, profile_for):
    profile = profile_for()
    profile.ingest.stop_timeout_s = 3.0
    pipeline = LivePipeline(profile, None).start()
    try:
        callback = PtychoCallback(profile, pipeline)
        sim, first = recorded_scan(profile)
        _, second = recorded_scan(profile, sim)
        _, third = recorded_scan(profile, sim)
        for name, doc in first[:-1]:  # no stop document
            callback(name, doc)
        lost = pipeline.wait(first[0][1]["uid"], timeout=60)
        assert lost.status == "incomplete" and "no document for 3 s" in lost.error
        assert lost.accounting.used == N_POINTS and lost.final is not None
        callback(*first[-1])  # the stop arrives after all: ignored, nothing changes
        for name, doc in second[:-1] + third:  # the next start closes the second run
            callback(name, doc)
        cut = pipeline.wait(second[0][1]["uid"], timeout=60)
        assert cut.status == "incomplete" and "new run started" in cut.error
        check(pipeline, third[0][1]["uid"], sim)
    finally:
        pipeline.close()
