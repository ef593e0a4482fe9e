"""Recovery after a restart (issue 18 point 3), in process against a real embedded Tiled: a
real RunEngine scan saved raw by bluesky's TiledWriter, reconstructed live by a real
LivePipeline that is shut down mid-scan (its real checkpoint), then completed from the
checkpoint plus the raw run's frames it lacked; a run left ``running`` without a checkpoint,
completed from the raw run; the lease two processes race for. The engine is mPIE (numpy):
the recovery is the same for any engine, and no TensorFlow is built in the test process
(tests/commands/test_serve_recovery.py runs the AD engine in real services)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter

from ptystream.config import Algorithm
from ptystream.engine.checkpoint import read_state
from ptystream.live.callback import PtychoCallback
from ptystream.live.pipeline import LivePipeline
from ptystream.offline.recover import (
    find_unfinished,
    matched,
    owner_record,
    recover_run,
)
from ptystream.sim.scan import build_simulation
from ptystream.store.layout import raw_catalog
from ptystream.store.lease import LEASE_KEY, Lease
from ptystream.store.publisher import TiledPublisher
from ptystream.types import RunStart, ScanPlan

N_POINTS = 40
SEEN = 25  # events the live pipeline gets before it is shut down


@pytest.fixture(scope="module")
def profile(small_profile):
    profile = small_profile(n_points=N_POINTS, object_px=144)
    return profile.model_copy(
        update={
            "engine": profile.engine.model_copy(
                update={"algorithm": Algorithm.MPIE, "final_epochs": 12}
            ),
            "publish": profile.publish.model_copy(update={"checkpoint_cadence_s": None}),
        }
    )


def _raw_scan(client, profile, *, also=None):
    """One simulated scan saved raw into ``client`` (``also``: another subscriber)."""
    sim = build_simulation(profile)
    RE = RunEngine({})
    RE.subscribe(TiledWriter(raw_catalog(client), batch_size=10))
    if also is not None:
        RE.subscribe(also)
    (uid,) = RE(sim.plan())
    return uid, sim


def test_a_run_shut_down_mid_scan_is_completed_from_its_checkpoint(tmp_path, tiled_client, profile):
    earlier = owner_record(tmp_path, "earlier-serve")
    spool = tmp_path / "spool"
    pipeline = LivePipeline(
        profile, TiledPublisher(tiled_client, owner=earlier), spool_dir=spool
    ).start()
    callback = PtychoCallback(profile, pipeline)

    def until_shutdown(name, doc):  # the service stops after SEEN events: no more, no stop
        if name == "stop" or (name == "event" and doc["seq_num"] > SEEN):
            return
        callback(name, doc)

    uid, _ = _raw_scan(tiled_client, profile, also=until_shutdown)
    pipeline.close()  # as serve at SIGTERM: checkpointed, published incomplete
    container = tiled_client["processed"]["ptystream"][uid]
    assert container.metadata["status"] == "incomplete"
    assert container.metadata["service"]["data_dir"] == str(tmp_path.resolve())
    held = read_state(container.metadata["checkpoint"]).meta["n_frames"]
    assert 0 < held <= SEEN

    restarted = owner_record(tmp_path, "restarted-serve")
    assert find_unfinished(tiled_client, owner_record(tmp_path / "other", "x"), spool) == []
    (run,) = find_unfinished(tiled_client, restarted, spool)
    assert run.run_uid == uid and run.status == "incomplete" and run.checkpoint.is_file()
    outcome = recover_run(tiled_client, run, profile, holder="restarted-serve", settle_s=0.1)

    assert outcome.done, outcome.summary
    md = tiled_client[run.node_path].metadata
    assert md["status"] == "finished", md["reason"]
    assert md["frames"]["received"] == md["frames"]["used"] == N_POINTS
    assert md["frames"].get("missing") is None and md.get("checkpoint") is None
    record = md["recovered"]
    assert record["from"] == "checkpoint" and record["previous_status"] == "incomplete"
    assert record["frames"]["from_checkpoint"] == held
    assert record["frames"]["from_raw_run"] == N_POINTS - held  # every frame of the raw run
    assert record["passes"] == profile.engine.final_epochs and record["by"] == "restarted-serve"
    assert "recovered after a restart" in md["reason"] and not md.get(LEASE_KEY)
    assert not run.checkpoint.exists()
    final = tiled_client[run.node_path]["final"]
    assert np.isfinite(final["object"].read()).all()
    assert len(final["positions_m"].read()) == N_POINTS
    assert find_unfinished(tiled_client, restarted, spool) == []  # done once


def test_a_run_left_running_without_checkpoint_is_completed_from_the_raw_run(
    tmp_path, tiled_client, profile
):
    uid, _ = _raw_scan(tiled_client, profile)
    killed = owner_record(tmp_path, "killed-serve")  # its container stays "running"
    start = RunStart(uid, profile.geometry(), ScanPlan(N_POINTS, None), profile=profile.name)
    TiledPublisher(tiled_client, owner=killed).begin_run(start, {})
    restarted = owner_record(tmp_path, "restarted-serve")
    (run,) = find_unfinished(tiled_client, restarted, tmp_path / "spool")
    assert run.status == "running" and run.checkpoint is None

    stopping = threading.Event()
    stopping.set()  # the service stops before the recovery starts: the run is left as it was
    gave_way = recover_run(
        tiled_client, run, profile, holder="restarted-serve", stopping=stopping, settle_s=0.1
    )
    md = tiled_client[run.node_path].metadata
    assert not gave_way.done and md["status"] == "running" and not md.get(LEASE_KEY)

    outcome = recover_run(
        tiled_client, run, profile, holder="restarted-serve", scratch_epochs=15, settle_s=0.1
    )
    md = tiled_client[run.node_path].metadata
    assert outcome.done and md["status"] == "finished", md.get("reason")
    assert md["frames"]["received"] == md["frames"]["used"] == N_POINTS
    assert md["recovered"]["from"] == "raw run" and md["recovered"]["passes"] == 15
    assert md["recovered"]["previous_status"] == "running"


def test_two_processes_racing_for_a_lease_one_takes_it(tiled_client):
    node = tiled_client.create_container("lease-race")
    path = node.item["id"]
    start = threading.Barrier(2)
    won: dict[str, bool] = {}

    def race(holder):
        lease = Lease(tiled_client, path, holder, ttl_s=30, settle_s=0.5)
        start.wait()
        won[holder] = lease.take()

    threads = [threading.Thread(target=race, args=(h,)) for h in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won.values()) == [False, True], won
    winner = next(h for h, took in won.items() if took)
    loser = "a" if winner == "b" else "b"
    assert Lease(tiled_client, path, loser).holder_now() == winner
    assert not Lease(tiled_client, path, loser, settle_s=0).take()
    assert not Lease(tiled_client, path, loser).renew(every_s=0)
    Lease(tiled_client, path, loser).release()  # not its own: nothing happens
    assert Lease(tiled_client, path, loser).holder_now() == winner
    Lease(tiled_client, path, winner).release()
    assert Lease(tiled_client, path, loser, settle_s=0).take()


def test_a_lapsed_lease_is_taken(tiled_client):
    node = tiled_client.create_container("lease-lapsed")
    path = node.item["id"]
    assert Lease(tiled_client, path, "crashed", ttl_s=-1, settle_s=0).take() is False
    # written already lapsed (its holder died long ago): anyone takes it
    assert Lease(tiled_client, path, "next", settle_s=0).take()


def test_frames_are_matched_by_position_each_once():
    held = np.array([[0.0, 0.0], [1e-6, 0.0], [1e-6, 0.0]])
    raw = np.array([[1e-6, 0.0], [0.0, 0.0], [2e-6, 0.0], [1e-6, 0.0], [1e-6, 0.0]])
    assert matched(raw, held, None, 1e-9).tolist() == [True, True, False, True, False]
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])  # the engine swapped the axes
    assert matched(raw[:, ::-1], held, swap, 1e-9).tolist() == [True, True, False, True, False]
