"""Periodic checkpoints of a live run (issue 18 point 4): a real RunEngine scan reconstructed
live into a real embedded Tiled server with a spool directory; the checkpoint appears during
the scan (and is a state an engine resumes from), and is gone once the run is final."""

import time

import numpy as np


def test_a_live_run_is_checkpointed_while_it_runs_and_cleaned_after(
    tmp_path, tiled_client, small_profile
):
    from bluesky import RunEngine

    from ptystream.config import Algorithm
    from ptystream.engine import EngineSetup, make_engine
    from ptystream.engine.checkpoint import read_state
    from ptystream.live.callback import PtychoCallback
    from ptystream.live.pipeline import LivePipeline
    from ptystream.sim.scan import build_simulation
    from ptystream.store.publisher import TiledPublisher

    profile = small_profile(exposure_s=0.05)  # 90 points in about 5 s
    profile = profile.model_copy(  # mPIE: the checkpointing is the pipeline's, any engine's
        update={
            "publish": profile.publish.model_copy(update={"checkpoint_cadence_s": 0.5}),
            "engine": profile.engine.model_copy(update={"algorithm": Algorithm.MPIE}),
        }
    )
    spool = tmp_path / "spool"
    pipeline = LivePipeline(profile, TiledPublisher(tiled_client), spool_dir=spool).start()
    sim = build_simulation(profile)
    RE = RunEngine({})
    RE.subscribe(PtychoCallback(profile, pipeline))
    seen: dict[str, object] = {}

    def look(name, doc):
        if name == "start":
            seen["uid"] = doc["uid"]
        if name == "event" and doc["seq_num"] == 80 and "state" not in seen:
            path = spool / "checkpoints" / f"{seen['uid']}.h5"
            deadline = time.monotonic() + 10
            while not path.is_file() and time.monotonic() < deadline:
                time.sleep(0.1)
            seen["state"] = read_state(path) if path.is_file() else None

    RE.subscribe(look)
    (uid,) = RE(sim.plan())
    result = pipeline.wait(uid, timeout=300)
    pipeline.close()
    state = seen["state"]
    assert state is not None, "no checkpoint during the scan"
    assert 20 <= state.meta["n_frames"] <= 90  # frames the engine had by then
    engine = make_engine(EngineSetup.from_profile(profile))
    engine.restore(state)  # a state an engine goes on from
    assert engine.n_frames == state.meta["n_frames"] and np.isfinite(engine.estimate().object).all()
    assert result.status == "finished"
    assert not (spool / "checkpoints" / f"{uid}.h5").exists()  # removed once final
    assert "checkpoint" not in tiled_client[result.node_path].metadata
