"""Frames that never arrived are named (issue 18 point 1).

A real RunEngine scans the simulated beamline; bluesky's TiledWriter saves the raw run (all of
it) and the real pipeline reconstructs live into a real embedded Tiled server. Between the
RunEngine and ptystream's callback sits :class:`LossyLink`, which drops chosen events: the loss
is injected here, standing in for a 0MQ proxy restarted mid-run (which lost 35 of 150 frames at
a beamline). The tail of the scan is lost too, which only the stop document's ``num_events``
can reveal. The backfill from the raw run is off here (``ingest.backfill_after_s: null``), so
the lost frames stay lost and must be named; tests/live/test_backfill.py has it on.
"""

import threading
import time

import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter

from ptystream.commands.watch import watch
from ptystream.live.background import BackgroundCallback
from ptystream.live.callback import PtychoCallback
from ptystream.live.pipeline import LivePipeline
from ptystream.sim.scan import build_simulation
from ptystream.store.layout import raw_catalog
from ptystream.store.publisher import TiledPublisher

N_POINTS = 60
LOST = {*range(21, 31), 45, 58, 59, 60}  # the last three: a lost tail
MISSING = {"count": 14, "seq_nums": "21-30,45,58-60", "expected": 60, "source": "stop num_events"}
REASON = (
    "14 of 60 frames never arrived (seq_nums 21-30,45,58-60; expected from the stop "
    "document's num_events)"
)


class LossyLink:
    """Passes documents to ``callback`` except the events whose seq_num is in ``lost`` (an
    injected loss). After the event ``hold_at`` it calls ``pause(doc)`` on the RunEngine's
    thread, so the test can look at the live state while the scan waits."""

    def __init__(self, callback, lost, hold_at, pause):
        self.callback, self.lost, self.hold_at, self.pause = callback, lost, hold_at, pause

    def __call__(self, name, doc):
        if name == "event" and doc["seq_num"] in self.lost:
            return
        self.callback(name, doc)
        if name == "event" and doc["seq_num"] == self.hold_at:
            self.pause(doc)


@pytest.fixture(scope="module")
def lossy_run(tiled_client, small_profile):
    """``(uid, result, live frames seen mid-run)`` of a 60-point scan that lost ``LOST``."""
    profile = small_profile(photons_per_frame=None, n_points=N_POINTS, object_px=144)
    ingest = profile.ingest.model_copy(update={"backfill_after_s": None})
    profile = profile.model_copy(update={"ingest": ingest})
    sim = build_simulation(profile)
    raw_writer = BackgroundCallback(
        TiledWriter(raw_catalog(tiled_client), batch_size=profile.publish.raw_batch_size)
    )
    pipeline = LivePipeline(profile, TiledPublisher(tiled_client)).start()
    seen_live: list[dict] = []

    def wait_for_a_live_gap(doc):
        """At seq_num 40, until live/ shows the gap (the pipeline publishes every 0.2 s)."""
        path = f"processed/ptystream/{doc_run[0]}/live"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                frames = tiled_client[path].metadata.get("frames", {})
            except KeyError:
                frames = {}
            if "missing" in frames:
                seen_live.append(frames)
                return
            time.sleep(0.2)

    doc_run: list[str] = []
    RE = RunEngine({})
    RE.subscribe(raw_writer)
    RE.subscribe(lambda name, doc: doc_run.append(doc["uid"]), "start")
    RE.subscribe(LossyLink(PtychoCallback(profile, pipeline), LOST, 40, wait_for_a_live_gap))
    try:
        (uid,) = RE(sim.plan())
        result = pipeline.wait(uid, timeout=300)
        assert raw_writer.flush(timeout=120) and raw_writer.errors == 0
    finally:
        pipeline.close()
    return uid, result, seen_live


def test_missing_frames_are_named_in_the_run_metadata_and_it_is_not_finished(
    tiled_client, lossy_run
):
    uid, result, _ = lossy_run
    md = tiled_client[f"processed/ptystream/{uid}"].metadata
    assert md["status"] == "incomplete"
    assert md["reason"] == REASON
    assert md["frames"] == {
        "received": N_POINTS - len(LOST),
        "used": N_POINTS - len(LOST),
        "rejected": {},
        "duplicates_ignored": 0,
        "missing": MISSING,
        "spilled_to_disk": 0,
    }
    assert result.status == "incomplete" and result.final.n_frames == N_POINTS - len(LOST)


def test_the_live_metadata_shows_the_gap_during_the_run_and_the_count_at_the_end(
    tiled_client, lossy_run
):
    uid, _, seen_live = lossy_run
    # mid-run (at seq_num 40) only the gap below the highest seq_num received can be named
    assert seen_live and seen_live[0]["missing"] == {
        "count": 10,
        "seq_nums": "21-30",
        "expected": 40,
        "source": "seq_num gaps",
    }
    live = tiled_client[f"processed/ptystream/{uid}/live"].metadata
    assert live["frames"]["missing"] == MISSING and live["final"] is True


def test_the_missing_seq_nums_are_there_for_a_backfill_from_the_raw_run(tiled_client, lossy_run):
    uid, result, _ = lossy_run
    assert result.missing is not None and set(result.missing.seq_nums()) == LOST
    raw = tiled_client["raw"][uid]
    assert raw.stop["num_events"]["primary"] == N_POINTS
    assert raw["primary"]["det_image"].shape[0] == N_POINTS  # the raw run has every frame


def test_watch_names_the_missing_frames(tiled_client, lossy_run):
    uid, _, _ = lossy_run
    lines: list[str] = []
    done = threading.Event()

    def follow():
        lines.append(watch(tiled_client, uid, show=lines.append, poll_s=0.5)[1])
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    assert done.wait(60), lines
    *shown, status = lines
    assert status == "incomplete"
    progress = [line for line in shown if "iteration" in line]
    assert "| incomplete |" in progress[-1]
    assert (
        "frames 46 used / 46 received / 60 planned / 14 missing (21-30,45,58-60)" in (progress[-1])
    )
    node = f"processed/ptystream/{uid}"
    assert shown[-1] == (
        f"incomplete: result at {node}/final (float32 views in {node}/live); {REASON}"
    )
