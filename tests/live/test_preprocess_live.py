"""A beamline camera larger than the reconstruction window, live and in reprocessing: a real
RunEngine scans the simulated sample with a 96 x 112 camera whose pattern centre is off its
middle, with dark current, dead and hot pixels; the run's ``dark`` stream (10 frames, shutter
closed) comes first. The profile a beamline would write names no frame size: ``preprocess``
cuts a 64 px window around the pattern's centre of mass, subtracts the dark stream's mean and
masks dead and hot pixels. Reconstructed live into a real embedded Tiled server, then
reprocessed from the raw run that bluesky's TiledWriter saved (its dark stream read back from
Tiled). Nothing is faked."""

from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter

from ptystream.config import Profile
from ptystream.live.background import BackgroundCallback
from ptystream.live.callback import PtychoCallback
from ptystream.live.pipeline import LivePipeline
from ptystream.metrics import score_against_truth
from ptystream.offline.jobs import tiled_jobs
from ptystream.offline.task import reprocess_one
from ptystream.preprocess import FIT_FRAMES
from ptystream.sim.detector import RawDetector
from ptystream.sim.plans import ptycho_scan
from ptystream.sim.scan import build_simulation
from ptystream.store.layout import raw_catalog
from ptystream.store.publisher import TiledPublisher

CAMERA, CENTRE, WINDOW = (96, 112), (41, 63), 64


def beamline_profile(sim_profile) -> Profile:
    """The simulated instrument as a beamline's profile describes it: no ``sim``, no frame
    size, the camera's pre-processing."""
    data = sim_profile.model_dump(mode="json")
    data["sim"] = None
    data["instrument"]["frame_px"] = None
    data["preprocess"] = {
        "size_px": WINDOW,
        "dark_stream": "dark",
        "hot_pixel_sigma": 8.0,
        "dead_pixels": True,
    }
    return Profile.model_validate(data)


@pytest.fixture(scope="module")
def scan(tiled_client, small_profile):
    sim_profile = small_profile()
    sim = build_simulation(sim_profile)
    camera = RawDetector.make(CAMERA, CENTRE, rng=np.random.default_rng(5))
    window = sim.detector.image._func
    sim.detector.configure_frames(lambda: camera.record(window()), CAMERA, 0.0, dark=camera.dark)
    profile = beamline_profile(sim_profile)
    raw_writer = BackgroundCallback(TiledWriter(raw_catalog(tiled_client), batch_size=10))
    pipeline = LivePipeline(profile, TiledPublisher(tiled_client)).start()
    RE = RunEngine({})
    RE.subscribe(raw_writer)
    RE.subscribe(PtychoCallback(profile, pipeline))
    plan = ptycho_scan(
        sim.detector,
        sim.stage,
        sim.positions_m,
        profile=profile.name,
        motor_units_m=profile.instrument.motor_units_m,
        dark_frames=10,
    )
    (uid,) = RE(plan)
    result = pipeline.wait(uid, timeout=300)
    assert raw_writer.flush(timeout=120) and raw_writer.errors == 0
    pipeline.close()
    return uid, result, sim, camera, profile


def test_live_the_window_is_cut_around_the_pattern_and_the_camera_cleaned(tiled_client, scan):
    uid, result, sim, camera, _ = scan
    md = tiled_client[result.node_path].metadata
    assert md["status"] == "finished", md.get("reason")
    frames = md["frames"]
    assert frames["used"] == len(sim.positions_m) and not frames["rejected"]
    prep = md["preprocess"]
    assert prep["detector_shape"] == list(CAMERA) and prep["frame_px"] == WINDOW
    assert np.allclose(prep["window"]["centre_px"], CENTRE, atol=1.0)
    assert prep["sources"] == {"dark": "stream 'dark'"}
    assert prep["masked_px"]["dead"] == camera.dead.sum()
    assert prep["masked_px"]["hot"] == camera.hot.sum()
    assert md["geometry"]["frame_px"] == WINDOW
    assert md["geometry"]["object_pixel_size_m"] == pytest.approx(sim.truth.pixel_size_m)
    # as good as the demo's own live runs on the window's frames (0.99 elsewhere)
    score, flat = score_against_truth(result.final, sim.truth)
    assert score.abs_c >= 0.97 and score.abs_c > flat + 0.04, (score, flat)


def test_reprocessed_from_the_raw_run_the_same_way(tiled_client, tiled_server, scan):
    uid, result, sim, camera, profile = scan
    url = urlparse(tiled_server.uri)
    (key,) = parse_qs(url.query)["api_key"]
    jobs, _ = tiled_jobs(
        tiled_client,
        [uid],
        profile,
        epochs=40,
        tiled_uri=url._replace(query="").geturl(),
        api_key=key,
    )
    report = reprocess_one(jobs[0])
    assert report.status == "finished", report.error
    # fitted on the same first frames, however the live batches arrived: the same window
    assert report.preprocess["fit_frames"] == result.preprocess["fit_frames"] == FIT_FRAMES
    assert report.preprocess["window"] == result.preprocess["window"]
    assert report.preprocess["sources"] == {"dark": "stream 'dark'"}
    assert report.preprocess["masked_px"] == result.preprocess["masked_px"] | {
        "dead": camera.dead.sum(),
        "hot": camera.hot.sum(),
    }
    version = tiled_client[report.result]
    assert version.metadata["preprocess"]["frame_px"] == WINDOW
