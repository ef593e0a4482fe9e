"""Every bad document accounted for, none kept forever (issue 18 point 6).

Malformed documents are fed straight to the real callback (a RunEngine does not emit them):
first into a real :class:`FramePairer` (the counts and reasons), then through a real pipeline
into a real embedded Tiled server (what the run's metadata says). The bounds on documents held
for descriptors never seen are tested in test_ordering.py.
"""

import copy
import logging

import numpy as np
import pytest
from bluesky import RunEngine
from event_model import compose_run

from ptystream.live.callback import PtychoCallback
from ptystream.live.pairing import FramePairer
from ptystream.live.pipeline import LivePipeline
from ptystream.sim.scan import build_simulation
from ptystream.store.publisher import TiledPublisher

N_POINTS = 40


class PairingSink:
    """A RunSink that pairs what it is given at once, as the pipeline's worker would."""

    def __init__(self, frame_px=64):
        self.pairer = FramePairer((frame_px, frame_px))
        self.opened, self.closed, self.used = [], [], []

    def open_run(self, start):
        self.opened.append(start)

    def submit(self, record):
        self.pairer.add(record)

    def close_run(self, stop):
        self.closed.append(stop)
        pairs = self.pairer.close()
        self.used = sorted(pairs.seq_nums.tolist()) if pairs is not None else []


def documents(n=4, seq_nums=None, position_stream=None):
    """A small run's documents: start, descriptor(s), ``n`` events (64 px frames), stop."""
    bundle = compose_run(metadata={"ptystream": {"profile": "demo", "n_points": n}})
    frames = {"det_image": {"dtype": "array", "shape": [64, 64], "source": "sim"}}
    motors = {k: {"dtype": "number", "shape": [], "source": "sim"} for k in ("sx", "sy")}
    primary = bundle.compose_descriptor(
        name="primary", data_keys=frames if position_stream else {**frames, **motors}
    )
    docs = [("start", bundle.start_doc), ("descriptor", primary.descriptor_doc)]
    positions = None
    if position_stream:
        positions = bundle.compose_descriptor(name=position_stream, data_keys=motors)
        docs.append(("descriptor", positions.descriptor_doc))
    for i, seq in enumerate(seq_nums or range(1, n + 1)):
        made = i + 1  # composed with a valid seq_num, then given ``seq``
        frame = {"det_image": np.full((64, 64), 1.0 + i, np.float32)}
        motor = {"sx": 0.1 * i, "sy": -0.1 * i}
        stamps = {"det_image": 0.0, "sx": 0.0, "sy": 0.0}
        if positions is None:
            event = primary.compose_event(data={**frame, **motor}, timestamps=stamps, seq_num=made)
            docs.append(("event", {**event, "seq_num": seq}))
        else:
            f_stamps = {"det_image": 0.0}
            m_stamps = {"sx": 0.0, "sy": 0.0}
            docs.append(("event", primary.compose_event(frame, f_stamps, seq_num=made)))
            docs.append(("event", positions.compose_event(motor, m_stamps, seq_num=made)))
    docs.append(("stop", bundle.compose_stop()))
    return docs


@pytest.fixture
def profile():
    from ptystream.config import load_profile

    return load_profile("demo")


def feed(profile, docs, caplog):
    sink = PairingSink()
    callback = PtychoCallback(profile, sink)
    with caplog.at_level(logging.INFO, logger="ptystream"):
        for name, doc in docs:
            callback(name, doc)
    assert "Traceback" not in caplog.text
    return sink


def event(docs, seq):
    return next(d for n, d in docs if n == "event" and d["seq_num"] == seq)


def test_a_frame_of_none_is_counted_not_lost(profile, caplog):
    docs = documents()
    event(docs, 2)["data"]["det_image"] = None
    sink = feed(profile, docs, caplog)
    accounting = sink.pairer.accounting.as_dict()
    assert accounting["received"] == 4 and accounting["used"] == 3 and sink.used == [1, 3, 4]
    assert accounting["rejected"] == {"no frame data": 1}
    assert "frame rejected (no frame data): seq_num 2: det_image is None" in caplog.text


@pytest.mark.parametrize(
    "change, detail",
    [
        (lambda data: data.update(sx="abc"), "sx = 'abc' is not a number"),
        (lambda data: data.pop("sy"), "the event has no 'sy'"),
        (lambda data: data.update(sy=float("nan")), "sy = nan is not finite"),
        (lambda data: data.update(sx=None), "sx = None is not a number"),
    ],
    ids=["non-numeric", "missing", "nan", "none"],
)
def test_events_with_a_bad_position_are_rejected_with_the_reason(profile, caplog, change, detail):
    docs = documents()
    change(event(docs, 3)["data"])
    sink = feed(profile, docs, caplog)
    assert sink.used == [1, 2, 4]
    accounting = sink.pairer.accounting
    assert accounting.received == 4 and accounting.rejected == {"bad position": 1}
    assert f"frame rejected (bad position): seq_num 3: {detail}" in caplog.text


def test_seq_num_zero_and_negatives_are_refused_with_a_reason(profile, caplog):
    sink = feed(profile, documents(n=5, seq_nums=[0, 1, -2, 2, "3"]), caplog)
    assert sink.used == [1, 2]
    accounting = sink.pairer.accounting
    assert accounting.received == 5 and accounting.rejected == {"bad seq_num": 3}
    assert "frame rejected (bad seq_num): seq_num 0 (they count from 1)" in caplog.text


def test_a_bad_row_of_a_position_stream_is_logged_and_its_frame_rejected(profile, caplog):
    inst = profile.instrument.model_copy(update={"position_stream": "positions"})
    profile = profile.model_copy(update={"instrument": inst})
    docs = documents(position_stream="positions")
    positions = [d for n, d in docs if n == "event" and "sx" in d["data"]]
    positions[1]["data"]["sx"] = "jammed"
    positions[2]["seq_num"] = -1
    sink = feed(profile, docs, caplog)
    assert "a position row refused (bad position): sx = 'jammed' is not a number" in caplog.text
    assert "a position row refused (bad seq_num): seq_num -1" in caplog.text
    assert sink.pairer.accounting.rejected == {"no position": 2}  # frames 2 and 3


def test_a_stop_for_an_unknown_run_is_logged(profile, caplog):
    docs = documents()
    feed(profile, [docs[-1]], caplog)
    run = docs[-1][1]["run_start"]
    assert f"stop document of run {run}, whose start this process never saw" in caplog.text
    caplog.clear()
    sink = feed(profile, docs + [docs[-1]], caplog)  # and a repeated stop
    assert f"run {run}: repeated stop document ignored" in caplog.text
    assert len(sink.closed) == 1


def test_a_process_joining_a_run_late_says_what_it_could_not_use(profile, caplog):
    """A ``serve`` restarted mid-run: no start; the descriptor seen (its events counted as the
    run's) or missed too (its events wait for it, and are counted at the stop)."""
    docs = documents(n=6)
    sink = feed(profile, docs[1:], caplog)  # everything but the start
    run = docs[0][1]["uid"]
    assert not sink.opened and sink.pairer.accounting.received == 0
    assert (
        f"stop document of run {run}, whose start this process never saw (it joined the run "
        "late, or the start was lost): ignored; its stop counts 6 events, and 7 documents"
    ) in caplog.text  # 6 events and the descriptor
    assert "(7 of its own, 0 waiting for descriptors never seen" in caplog.text
    caplog.clear()
    docs = documents(n=6)
    feed(profile, docs[2:], caplog)  # the descriptor missed too
    assert "(0 of its own, 6 waiting for descriptors never seen, held at most 60 s)" in caplog.text


# -- through the pipeline into Tiled ----------------------------------------------------------


@pytest.fixture(scope="module")
def published(tiled_client, small_profile):
    """Two runs fed to one pipeline publishing to Tiled: a malformed ``ptystream`` block, and
    a run with bad events. Returns their uids once everything is delivered."""
    profile = small_profile(photons_per_frame=None, n_points=N_POINTS, object_px=144)
    sim = build_simulation(profile)
    recorded = []
    RunEngine({})(sim.plan(), lambda name, doc: recorded.append((name, doc)))

    def fresh(docs):
        """The recorded run under new uids (so it can be fed twice)."""
        docs = copy.deepcopy(docs)
        bundle = compose_run()
        old, new = docs[0][1]["uid"], bundle.start_doc["uid"]
        for _, doc in docs:
            for key in ("uid", "run_start"):
                if doc.get(key) == old:
                    doc[key] = new
        return new, docs

    refused_uid, refused = fresh(recorded)
    refused[0][1]["ptystream"]["n_points"] = "40"
    bad_uid, bad = fresh(recorded)
    event(bad, 5)["data"]["det_image"] = None
    event(bad, 6)["data"]["sx"] = "abc"
    event(bad, 7)["data"].pop("sy")
    for seq in (0, -3):  # copies of the ninth event with impossible seq_nums
        extra = copy.deepcopy(event(bad, 9))
        extra["seq_num"], extra["uid"] = seq, f"{extra['uid']}{seq}"
        bad.insert(-1, ("event", extra))

    pipeline = LivePipeline(profile, TiledPublisher(tiled_client)).start()
    try:
        callback = PtychoCallback(profile, pipeline)
        for name, doc in refused + bad:
            callback(name, doc)
        pipeline.wait(bad_uid, timeout=300)
    finally:
        pipeline.close()  # delivers everything queued
    return refused_uid, bad_uid


def test_a_malformed_start_block_is_published_failed_naming_the_field(tiled_client, published):
    refused_uid, _ = published
    md = tiled_client[f"processed/ptystream/{refused_uid}"].metadata
    assert md["status"] == "failed"
    assert md["reason"] == (
        "start document: ptystream.n_points must be a positive integer, got '40'"
    )
    assert md["frames"]["received"] == N_POINTS
    assert md["frames"]["rejected"] == {"bad start document": N_POINTS}


def test_bad_events_are_counted_in_the_published_frames(tiled_client, published):
    _, bad_uid = published
    md = tiled_client[f"processed/ptystream/{bad_uid}"].metadata
    assert md["status"] == "finished", md.get("reason")  # every seq_num arrived
    assert md["frames"] == {
        "received": N_POINTS + 2,
        "used": N_POINTS - 3,
        "rejected": {"no frame data": 1, "bad position": 2, "bad seq_num": 2},
        "duplicates_ignored": 0,
        "spilled_to_disk": 0,
    }
