import numpy as np
import pytest

from ptystream.live.frames import FrameNotReady, Unusable
from ptystream.live.pairing import (
    PLAN_N_POINTS,
    SEQ_GAPS,
    STOP_NUM_EVENTS,
    FramePairer,
    expected_frames,
    format_ranges,
    parse_ranges,
)
from ptystream.types import FrameRecord


def frame(value=1.0, n=8):
    return np.full((n, n), value, np.float32)


def test_pairs_in_any_order_and_ignores_duplicates():
    p = FramePairer((8, 8))
    p.add(FrameRecord("r", 2, position_m=(2e-6, 0.0)))
    p.add(FrameRecord("r", 1, frame=frame(1)))
    p.add(FrameRecord("r", 1, frame=frame(99)))  # duplicate frame: ignored
    assert p.take() is None
    p.add(FrameRecord("r", 2, frame=frame(2)))
    p.add(FrameRecord("r", 1, position_m=(1e-6, 0.0)))
    p.add(FrameRecord("r", 1, frame=frame(99), position_m=(9.0, 9.0)))  # replayed: ignored
    pairs = p.take()
    assert sorted(pairs.seq_nums.tolist()) == [1, 2]
    by_seq = dict(zip(pairs.seq_nums.tolist(), pairs.frames[:, 0, 0], strict=True))
    assert by_seq == {1: 1.0, 2: 2.0}
    assert p.take() is None
    assert p.accounting.as_dict() == {
        "received": 2,
        "used": 2,
        "rejected": {},
        "duplicates_ignored": 2,
    }


def test_bad_frames_are_rejected_with_reasons():
    p = FramePairer((8, 8))
    nan = frame()
    nan[3, 3] = np.nan
    p.add(FrameRecord("r", 1, frame=nan, position_m=(0.0, 0.0)))
    p.add(FrameRecord("r", 2, frame=np.ones((8, 9), np.float32), position_m=(0.0, 0.0)))
    p.add(FrameRecord("r", 3, frame="datum-id/0", position_m=(0.0, 0.0)))
    p.add(FrameRecord("r", 4, frame=frame()[None], position_m=(0.0, 0.0)))  # (1, N, N) is fine
    p.add(FrameRecord("r", 5, frame=frame()))  # never gets a position
    pairs = p.take()
    assert pairs.seq_nums.tolist() == [4]
    assert pairs.frames.shape == (1, 8, 8)
    p.close()
    assert p.accounting.as_dict() == {
        "received": 5,
        "used": 1,
        "rejected": {"not finite": 1, "wrong shape": 1, "not an array": 1, "no position": 1},
        "duplicates_ignored": 0,
    }


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_frames_not_yet_written_are_retried_until_a_timeout_after_the_stop():
    written = {}

    def resolve(ref):
        if ref not in written:
            raise FrameNotReady(f"{ref} not written yet")
        return written[ref]

    released = []
    clock = Clock()
    p = FramePairer(
        (8, 8), resolve=resolve, discard=released.append, file_timeout_s=5.0, clock=clock
    )
    p.add(FrameRecord("r", 1, frame="a", position_m=(0.0, 0.0)))
    p.add(FrameRecord("r", 2, frame="b", position_m=(0.0, 0.0)))
    assert p.take() is None and p.waiting == 2
    clock.now = 1000.0  # during the run a detector may hold its file for long: no time limit
    assert p.take() is None and p.waiting == 2 and not p.accounting.rejected
    written["a"] = frame(3.0)
    clock.now = 1001.0
    assert p.take().frames[0, 0, 0] == 3.0
    assert p.close() is None  # the stop: "b" now has file_timeout_s to appear
    clock.now = 1004.0
    assert p.take() is None and p.waiting == 1
    clock.now = 1007.0
    assert p.take() is None and p.waiting == 0
    assert p.accounting.rejected == {"unreadable": 1}
    assert sorted(released) == ["a", "b"]  # every frame leaves through discard exactly once


def test_expire_gives_unready_frames_a_last_try_and_abandon_rejects_the_rest():
    written = {"a": frame(1.0)}
    p = FramePairer((8, 8), resolve=lambda ref: written[ref] if ref in written else _not_ready(ref))
    p.add(FrameRecord("r", 1, frame="a", position_m=(0.0, 0.0)))
    p.add(FrameRecord("r", 2, frame="b", position_m=(0.0, 0.0)))
    assert p.close().seq_nums.tolist() == [1]
    assert p.expire() is None
    assert p.accounting.as_dict()["rejected"] == {"unreadable": 1}
    q = FramePairer((8, 8))
    q.add(FrameRecord("r", 1, frame=frame(), position_m=(0.0, 0.0)))
    q.add(FrameRecord("r", 2, frame=frame()))
    q.abandon("run failed")
    assert q.accounting.as_dict()["rejected"] == {"run failed": 2} and q.waiting == 0


def _not_ready(ref):
    raise FrameNotReady(ref)


def test_missing_seq_nums_are_named_as_ranges_up_to_what_was_expected():
    p = FramePairer((8, 8))
    for seq in [1, 2, 3, 7, 8, 10, 3]:  # 3 twice: a duplicate, not a gap filler
        p.add(FrameRecord("r", seq, frame=frame(), position_m=(0.0, 0.0)))
    p.add(FrameRecord("r", 12, position_m=(0.0, 0.0)))  # a position alone brings no frame
    live = p.missing()  # during the run: gaps below the highest seq_num received
    assert live.ranges == ((4, 6), (9, 9)) and live.count == 4
    assert live.as_dict() == {
        "count": 4,
        "seq_nums": "4-6,9",
        "expected": 10,
        "source": SEQ_GAPS,
    }
    end = p.missing(*expected_frames(12, 20, "success"))  # the stop counts 12 events
    assert end.as_dict() == {
        "count": 6,
        "seq_nums": "4-6,9,11-12",
        "expected": 12,
        "source": STOP_NUM_EVENTS,
    }
    assert end.seq_nums() == [4, 5, 6, 9, 11, 12]  # what a backfill would read
    assert end.describe() == (
        "6 of 12 frames never arrived (seq_nums 4-6,9,11-12; expected from the stop "
        "document's num_events)"
    )
    assert parse_ranges(end.as_dict()["seq_nums"]) == list(end.ranges)
    assert p.accounting.duplicates == 1


def test_the_expected_count_comes_from_the_stop_then_the_plan_then_the_seq_nums():
    assert expected_frames(150, 200, "abort") == (150, STOP_NUM_EVENTS)
    assert expected_frames(None, 200, "success") == (200, PLAN_N_POINTS)
    # an aborted run, or one that never stopped, did not take its planned points: not missing
    assert expected_frames(None, 200, "abort") == (None, SEQ_GAPS)
    assert expected_frames(None, 200, None) == (None, SEQ_GAPS)
    assert expected_frames(None, None, "success") == (None, SEQ_GAPS)


def test_a_complete_run_has_no_missing_entry_and_long_lists_are_cut():
    p = FramePairer((8, 8))
    for seq in (1, 2, 3):
        p.add(FrameRecord("r", seq, frame=frame(), position_m=(0.0, 0.0)))
    p.accounting.missing = p.missing(3, STOP_NUM_EVENTS)
    assert "missing" not in p.accounting.as_dict() and p.missing().count == 0
    every_other = tuple((k, k) for k in range(2, 600, 2))
    text = format_ranges(every_other)
    assert text.endswith(",200 (+199 more ranges)")
    with pytest.raises(ValueError, match="lists only the first ranges"):
        parse_ranges(text)


def test_refused_rows_and_bad_seq_nums_are_counted_with_their_reason():
    p = FramePairer((8, 8))
    p.add(FrameRecord("r", 1, frame=Unusable("no frame data", "det_image is None")))
    p.add(FrameRecord("r", 1, frame=Unusable("no frame data", "det_image is None")))  # again
    p.add(FrameRecord("r", 2, frame=Unusable("bad position", "sx = 'abc' is not a number")))
    p.add(FrameRecord("r", 2, position_m=(0.0, 0.0)))  # its position, late: ignored
    p.add(FrameRecord("r", 0, frame=frame(), position_m=(0.0, 0.0)))
    p.add(FrameRecord("r", -4, frame=Unusable("bad seq_num", "seq_num -4")))
    p.add(FrameRecord("r", 3, frame=frame(), position_m=(0.0, 0.0)))
    assert p.take().seq_nums.tolist() == [3]
    assert p.close() is None and p.waiting == 0
    assert p.accounting.as_dict() == {
        "received": 5,
        "used": 1,
        "rejected": {"no frame data": 1, "bad position": 1, "bad seq_num": 2},
        "duplicates_ignored": 1,
    }
    assert p.missing(3, STOP_NUM_EVENTS).count == 0  # refused frames arrived: not missing
