"""The callback, fed documents composed with event_model (no RunEngine needed here)."""

import logging

import numpy as np
import pytest
from event_model import compose_run

from ptystream.config import load_profile
from ptystream.live.callback import PtychoCallback, RefusedStart, plan_from_start
from ptystream.types import ScanPlan


class Recorder:
    """A RunSink that keeps what it is given."""

    def __init__(self):
        self.opened, self.records, self.closed = [], [], []

    def open_run(self, start):
        self.opened.append(start)

    def submit(self, record):
        self.records.append(record)

    def close_run(self, stop):
        self.closed.append(stop)


BLOCK = {"profile": "demo", "n_points": 3, "extent_m": [[-1e-6, 1e-6], [-2e-6, 2e-6]]}


def scan_documents(block=BLOCK, n=3, exit_status="success", as_page=False):
    bundle = compose_run(metadata={"ptystream": block, "scan_id": 7} if block else {})
    docs = [("start", bundle.start_doc)]
    keys = {
        "det_image": {"dtype": "array", "shape": [64, 64], "source": "sim"},
        "sx": {"dtype": "number", "shape": [], "source": "sim"},
        "sy": {"dtype": "number", "shape": [], "source": "sim"},
    }
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    docs.append(("descriptor", desc.descriptor_doc))
    events = [
        desc.compose_event(
            data={"det_image": np.full((64, 64), i, np.float32), "sx": 0.5 * i, "sy": -1.0 * i},
            timestamps={"det_image": 0.0, "sx": 0.0, "sy": 0.0},
            seq_num=i + 1,
        )
        for i in range(n)
    ]
    if as_page:
        from event_model import pack_event_page

        docs.append(("event_page", pack_event_page(*events)))
    else:
        docs.extend(("event", e) for e in events)
    docs.append(("stop", bundle.compose_stop(exit_status=exit_status)))
    return bundle.start_doc["uid"], docs


@pytest.fixture
def profile():
    return load_profile("demo")


@pytest.mark.parametrize("as_page", [False, True])
def test_events_become_records_in_metres(profile, as_page):
    sink = Recorder()
    cb = PtychoCallback(profile, sink, raise_errors=True)
    uid, docs = scan_documents(as_page=as_page)
    for name, doc in docs:
        cb(name, doc)
    (start,) = sink.opened
    assert start.run_uid == uid and start.scan_id == 7 and start.profile == "demo"
    assert start.plan == ScanPlan(3, ((-1e-6, 1e-6), (-2e-6, 2e-6)))
    assert [r.seq_num for r in sink.records] == [1, 2, 3]
    # motors are in micrometres (profile motor_units_m = 1e-6); position is (y, x)
    assert sink.records[2].position_m == pytest.approx((-2e-6, 1e-6))
    assert sink.records[2].frame[0, 0] == 2.0
    assert sink.closed[0].exit_status == "success"


def test_runs_without_ptystream_block_or_for_another_profile_are_skipped(profile, caplog):
    sink = Recorder()
    cb = PtychoCallback(profile, sink, raise_errors=True)
    caplog.set_level(logging.INFO, logger="ptystream.live.callback")
    for block in (None, {**BLOCK, "profile": "other-beamline"}):
        for name, doc in scan_documents(block=block)[1]:
            cb(name, doc)
    assert not sink.opened and not sink.records
    assert "no 'ptystream' block" in caplog.text
    assert "asks for profile 'other-beamline'" in caplog.text


def test_each_run_gets_fresh_state(profile):
    sink = Recorder()
    cb = PtychoCallback(profile, sink, raise_errors=True)
    uid1, docs1 = scan_documents(exit_status="abort")
    uid2, docs2 = scan_documents()
    for name, doc in docs1 + docs2:
        cb(name, doc)
    assert [s.run_uid for s in sink.opened] == [uid1, uid2]
    assert [r.run_uid for r in sink.records] == [uid1] * 3 + [uid2] * 3
    assert [s.exit_status for s in sink.closed] == ["abort", "success"]


def test_malformed_start_block_opens_a_refused_run_naming_the_field(profile, caplog):
    """The run is handed over refused (the pipeline publishes it failed and counts its frames),
    with one error line naming the field; nothing is raised into the RunEngine."""
    sink = Recorder()
    cb = PtychoCallback(profile, sink)
    _, docs = scan_documents(block={**BLOCK, "extent_m": "everywhere"})
    with caplog.at_level(logging.ERROR, logger="ptystream.live.callback"):
        for name, doc in docs:
            cb(name, doc)  # must not raise into the RunEngine
    (start,) = sink.opened
    assert isinstance(start, RefusedStart)
    assert start.refusal.startswith("start document: ptystream.extent_m must be")
    assert "it is published as failed" in caplog.text and "Traceback" not in caplog.text
    assert len(sink.records) == 3 and len(sink.closed) == 1


def test_a_document_nothing_foresaw_is_one_log_line_without_traceback(profile, caplog):
    sink = Recorder()
    cb = PtychoCallback(profile, sink)
    _, docs = scan_documents()
    docs[1][1].pop("run_start")  # a descriptor of no run: the router cannot take it
    with caplog.at_level(logging.ERROR, logger="ptystream.live.callback"):
        for name, doc in docs:
            cb(name, doc)
    assert "could not parse" in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "block, message",
    [
        ({"n_points": 0}, "n_points must be a positive integer"),
        ({"n_points": "ten"}, "n_points must be a positive integer"),
        ({"n_points": True}, "n_points must be a positive integer"),
        ({"extent_m": [[0, float("nan")], [0, 1]]}, "extent_m must be finite"),
        ({"extent_m": [[1, 0], [0, 1]]}, "min > max"),
        ({"extent_m": [1, 2]}, "extent_m must be"),
    ],
)
def test_plan_errors_name_the_key(block, message):
    with pytest.raises(ValueError, match=message):
        plan_from_start(block)


def test_plan_may_be_unknown():
    assert plan_from_start({}) == ScanPlan(None, None)


def test_other_streams_are_ignored(profile):
    """A baseline stream that also reads the stage must not lend its seq_nums to frames."""
    sink = Recorder()
    cb = PtychoCallback(profile, sink, raise_errors=True)
    bundle = compose_run(metadata={"ptystream": BLOCK})
    cb("start", bundle.start_doc)
    motors = {k: {"dtype": "number", "shape": [], "source": "sim"} for k in ("sx", "sy")}
    baseline = bundle.compose_descriptor(name="baseline", data_keys=motors)
    cb("descriptor", baseline.descriptor_doc)
    cb(
        "event",
        baseline.compose_event(
            data={"sx": 99.0, "sy": 99.0}, timestamps={"sx": 0.0, "sy": 0.0}, seq_num=1
        ),
    )
    assert sink.records == []
