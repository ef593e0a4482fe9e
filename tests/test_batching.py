import numpy as np

from ptystream.batching import FramePairer
from ptystream.types import FrameRecord


def frame(value=1.0, n=8):
    return np.full((n, n), value, np.float32)


def test_pairs_in_any_order_and_ignores_duplicates():
    p = FramePairer(8)
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
    assert p.accounting.as_dict() == {"received": 2, "used": 2, "rejected": {}}


def test_bad_frames_are_rejected_with_reasons():
    p = FramePairer(8)
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
    }
