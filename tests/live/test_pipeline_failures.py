"""Failure paths of the live pipeline, with a real RunEngine and real Tiled servers."""

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp

from ptystream.engine import make_engine
from ptystream.live.callback import PtychoCallback
from ptystream.live.pipeline import LivePipeline
from ptystream.sim.plans import scan_metadata
from ptystream.sim.scan import build_simulation
from ptystream.store.publisher import TiledPublisher
from ptystream.store.server import start_embedded_server
from ptystream.store.spool import load_spooled


@pytest.fixture(scope="module")
def quick_profile(small_profile):
    """``quick_profile(**sim)``: a 40-point scan, 10 final passes, one quick publish retry."""

    def quick_profile(**sim):
        profile = small_profile(photons_per_frame=None, n_points=40, object_px=144, **sim)
        publish = profile.publish.model_copy(update={"retries": 1, "retry_backoff_s": 0.05})
        engine = profile.engine.model_copy(update={"final_epochs": 10})
        return profile.model_copy(update={"publish": publish, "engine": engine})

    return quick_profile


def live(profile, publisher, **kwargs):
    """A started pipeline and a RunEngine feeding it through the callback."""
    pipeline = LivePipeline(profile, publisher, **kwargs).start()
    RE = RunEngine({})
    RE.subscribe(PtychoCallback(profile, pipeline))
    return pipeline, RE


def failing_scan(sim, n_ok):
    """The simulated scan, written with plan stubs, raising after ``n_ok`` points."""
    units = sim.profile.instrument.motor_units_m

    @bpp.run_decorator(md={"ptystream": scan_metadata(sim.positions_m, sim.profile.name)})
    def scan():
        for i, (y, x) in enumerate(sim.positions_m / units):
            if i == n_ok:
                raise RuntimeError("beam lost")  # the run closes with exit_status 'fail'
            yield from bps.mv(sim.stage.y, y, sim.stage.x, x)
            yield from bps.trigger_and_read([sim.detector, sim.stage])

    return (yield from scan())


def test_tiled_down_keeps_the_final_result_on_disk(tmp_path, quick_profile):
    profile = quick_profile()
    server = start_embedded_server(tmp_path / "tiled")
    publisher = TiledPublisher.from_uri(server.uri)
    server.close()  # the server is really gone before the scan starts
    pipeline, RE = live(profile, publisher, spool_dir=tmp_path / "spool")
    sim = build_simulation(profile)
    (uid,) = RE(sim.plan())  # the scan is not held up by the dead server
    result = pipeline.wait(uid, timeout=300)
    pipeline.close()
    assert result.node_path is None
    assert result.spooled == tmp_path / "spool" / f"{uid}.npz"
    estimate, spooled = load_spooled(result.spooled)
    np.testing.assert_array_equal(estimate.object, result.final.object)
    assert estimate.n_frames == 40 and estimate.final
    assert spooled["status"] == "finished" and spooled["node_path"] is None
    assert spooled["run_metadata"]["raw_uid"] == uid
    assert spooled["extra"]["frames"] == {
        "received": 40,
        "used": 40,
        "rejected": {},
        "duplicates_ignored": 0,
        "spilled_to_disk": 0,
    }


def test_failed_scan_and_back_to_back_runs(tiled_client, quick_profile):
    profile = quick_profile()
    pipeline, RE = live(profile, TiledPublisher(tiled_client))
    uids = []
    RE.subscribe(lambda name, doc: uids.append(doc["uid"]) if name == "start" else None)
    sim = build_simulation(profile)
    with pytest.raises(RuntimeError, match="beam lost"):
        RE(failing_scan(sim, 15))
    RE(build_simulation(profile).plan())
    failed, good = (pipeline.wait(uid, timeout=300) for uid in uids)
    pipeline.close()
    assert failed.status == "failed" and failed.final.n_frames == 15
    node = tiled_client[failed.node_path]
    assert node.metadata["status"] == "failed"
    assert node.metadata["frames"]["used"] == 15
    assert node["final"]["object"].read().shape == failed.final.object.shape
    assert good.status == "finished" and good.final.n_frames == 40
    assert tiled_client[good.node_path].metadata["status"] == "finished"


def test_engine_failure_fails_that_run_only(tiled_client, quick_profile):
    """The engine factory is wrapped to raise for the first run: a fault injection, because a
    real engine fault (a device error, say) cannot be provoked on demand here."""
    profile = quick_profile()
    calls = []

    def flaky_factory(setup):
        calls.append(1)
        if len(calls) == 2:  # call 1 compiles ahead of the first run, at start-up
            raise RuntimeError("device lost")
        return make_engine(setup)

    pipeline, RE = live(profile, TiledPublisher(tiled_client), engine_factory=flaky_factory)
    (first,) = RE(build_simulation(profile).plan())
    (second,) = RE(build_simulation(profile).plan())
    bad, good = pipeline.wait(first, timeout=300), pipeline.wait(second, timeout=300)
    pipeline.close()
    assert bad.status == "failed" and "device lost" in bad.error and bad.final is None
    assert tiled_client[bad.node_path].metadata["status"] == "failed"
    assert "device lost" in tiled_client[bad.node_path].metadata["reason"]
    assert good.status == "finished" and good.final.n_frames == 40


def test_probe_is_carried_over_to_the_next_run(tiled_client, quick_profile):
    profile = quick_profile()
    profile = profile.model_copy(
        update={"engine": profile.engine.model_copy(update={"reuse_probe": True})}
    )
    pipeline, RE = live(profile, TiledPublisher(tiled_client))
    (first,) = RE(build_simulation(profile).plan())
    (second,) = RE(build_simulation(profile).plan())
    one, two = pipeline.wait(first, timeout=300), pipeline.wait(second, timeout=300)
    pipeline.close()
    assert one.initial_probe_from is None and two.initial_probe_from == first
    assert tiled_client[two.node_path].metadata["initial_probe_from"] == first
    assert two.status == "finished" and np.isfinite(two.final.object).all()
