"""Frames the document stream lost are read back from the raw run (issue 18 point 2).

A real RunEngine scans the simulated beamline; bluesky's TiledWriter saves the whole raw run
into a real embedded Tiled server; the real pipeline reconstructs live into it. Between the
RunEngine and ptystream's callback a link drops chosen documents (the injected fault, standing
in for a 0MQ proxy restarted mid-run): ten events mid-scan, the last three, or the stop
document. Nothing else is faked.
"""

import time

import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter

from ptystream.live.background import BackgroundCallback
from ptystream.live.callback import PtychoCallback
from ptystream.live.pipeline import LivePipeline
from ptystream.live.reconcile import STOP_FROM_RAW
from ptystream.metrics import score_against_truth
from ptystream.sim.scan import build_simulation
from ptystream.store.layout import raw_catalog
from ptystream.store.publisher import TiledPublisher

N_POINTS = 60
GAP, TAIL = set(range(21, 31)), {58, 59, 60}


class DroppingLink:
    """Passes documents to ``callback`` but the events whose seq_num is in ``lost`` (and the
    stop document if ``drop_stop``); after the event ``hold_at`` it calls ``hold(doc)`` on the
    RunEngine's thread."""

    def __init__(self, callback, lost, *, drop_stop=False, hold_at=None, hold=None):
        self.callback, self.lost, self.drop_stop = callback, lost, drop_stop
        self.hold_at, self.hold = hold_at, hold

    def __call__(self, name, doc):
        if (name == "event" and doc["seq_num"] in self.lost) or (name == "stop" and self.drop_stop):
            return
        self.callback(name, doc)
        if name == "event" and doc["seq_num"] == self.hold_at:
            self.hold(doc)


def scan(tiled_client, profile, link_options, *, raw=True):
    """``(uid, result, sim, live frames seen while held)`` of one lossy scan (``raw``: saved
    by TiledWriter)."""
    sim = build_simulation(profile)
    raw_writer = BackgroundCallback(TiledWriter(raw_catalog(tiled_client), batch_size=10))
    pipeline = LivePipeline(profile, TiledPublisher(tiled_client)).start()
    uids, seen = [], []

    def hold_until_backfilled(doc):
        """Mid-run, until live/ counts the gap's frames as backfilled (within a minute)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                frames = tiled_client[f"processed/ptystream/{uids[0]}/live"].metadata["frames"]
            except KeyError:
                frames = {}
            if frames.get("backfilled", 0) >= len(GAP):
                seen.append(frames)
                return
            time.sleep(0.2)

    RE = RunEngine({})
    if raw:
        RE.subscribe(raw_writer)
    RE.subscribe(lambda name, doc: uids.append(doc["uid"]), "start")
    callback = PtychoCallback(profile, pipeline)
    RE.subscribe(DroppingLink(callback, hold=hold_until_backfilled, **link_options))
    try:
        t0 = time.monotonic()
        (uid,) = RE(sim.plan())
        result = pipeline.wait(uid, timeout=120)
        result.wait_s = time.monotonic() - t0
        assert raw_writer.flush(timeout=120) and raw_writer.errors == 0
    finally:
        pipeline.close()
    return uid, result, sim, seen


@pytest.fixture(scope="module")
def profile(small_profile):
    profile = small_profile(photons_per_frame=None, n_points=N_POINTS, object_px=144)
    ingest = profile.ingest.model_copy(update={"backfill_after_s": 2.0})
    return profile.model_copy(update={"ingest": ingest})


@pytest.fixture(scope="module")
def lossy(tiled_client, profile):
    return scan(tiled_client, profile, {"lost": GAP | TAIL, "hold_at": 50})


def test_lost_frames_are_read_from_the_raw_run_and_the_run_is_whole(tiled_client, lossy):
    uid, result, sim, _ = lossy
    md = tiled_client[f"processed/ptystream/{uid}"].metadata
    assert md["status"] == "finished", md.get("reason")
    frames = md["frames"]
    assert frames["received"] == N_POINTS - len(GAP | TAIL)
    assert frames["backfilled"] == len(GAP | TAIL)
    assert frames["used"] == N_POINTS and "missing" not in frames
    assert result.final.n_frames == N_POINTS
    score, flat = score_against_truth(result.final, sim.truth)
    assert score.abs_c >= 0.98 and score.abs_c > flat + 0.04, (score, flat)


def test_a_gap_is_filled_during_the_run_not_only_at_the_stop(lossy):
    """At seq_num 50 the scan waits until live/ shows the gap's ten frames as backfilled: a
    gap older than ``backfill_after_s`` (2 s) is read while the run goes on."""
    _, _, _, seen = lossy
    assert seen and seen[0]["backfilled"] == len(GAP) and seen[0]["missing"] is None, str(seen)


def test_a_lost_stop_closes_the_run_from_the_raw_runs_in_seconds(tiled_client, profile):
    """Without its stop document the run would wait ``ingest.stop_timeout_s`` (30 min); the
    raw run's stop closes it a few seconds after the scan, with its ``num_events``."""
    uid, result, _, _ = scan(tiled_client, profile, {"lost": TAIL, "drop_stop": True})
    md = tiled_client[f"processed/ptystream/{uid}"].metadata
    assert md["status"] == "finished"
    assert md["reason"] == STOP_FROM_RAW
    assert md["frames"]["backfilled"] == len(TAIL) and md["frames"]["used"] == N_POINTS
    assert result.wait_s < 60


def test_without_a_raw_run_the_lost_frames_are_named(tiled_client, profile):
    """No TiledWriter: nothing to read the lost frames from. They are named and the run is not
    a clean ``finished``; the stop does not wait for a raw run that is not there."""
    uid, result, _, _ = scan(tiled_client, profile, {"lost": TAIL}, raw=False)
    md = tiled_client[f"processed/ptystream/{uid}"].metadata
    assert md["status"] == "incomplete"
    assert md["frames"]["missing"]["seq_nums"] == "58-60" and "backfilled" not in md["frames"]
    assert result.wait_s < profile.ingest.file_timeout_s
