"""Documents put back in order, and those held for a descriptor never seen bounded in count,
bytes and age (issue 18 point 6: 1000 early 128² events once stayed held, 62 MB, forever). A
clock the test moves stands in for the 60 s."""

import logging

import numpy as np

from ptystream.live.ordering import (
    MAX_HELD_AGE_S,
    MAX_HELD_BYTES,
    MAX_HELD_DOCUMENTS,
    DocumentOrder,
)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def early_events(n, shape=(128, 128), descriptor="never-seen", dtype=np.float64):
    """``n`` events of a descriptor not seen yet, each with an array of ``shape``."""
    return [
        (
            "event",
            {"descriptor": descriptor, "seq_num": i + 1, "data": {"d": np.ones(shape, dtype)}},
        )
        for i in range(n)
    ]


def test_held_documents_are_bounded_in_bytes(caplog):
    order = DocumentOrder(clock=Clock())
    with caplog.at_level(logging.WARNING, logger="ptystream.live.ordering"):
        for name, doc in early_events(1000):  # 128 kB each: 131 MB if all were kept
            assert order(name, doc) == []
    held, nbytes = order.held
    assert nbytes <= MAX_HELD_BYTES and 500 <= held <= 512  # the newest 64 MB
    assert "dropped documents waiting for a descriptor or resource never seen" in caplog.text
    assert f"more than {MAX_HELD_BYTES / 2**20:g} MB held" in caplog.text


def test_held_documents_are_bounded_in_age_and_count(caplog):
    clock = Clock()
    order = DocumentOrder(clock=clock)
    with caplog.at_level(logging.WARNING, logger="ptystream.live.ordering"):
        for name, doc in early_events(1000, shape=(128, 128), dtype=np.float32):  # 62 MB
            order(name, doc)
        assert order.held[0] == 1000
        clock.now = MAX_HELD_AGE_S + 1
        order("start", {"uid": "another-run"})  # any later document lets them expire
        assert order.held == (0, 0)
        assert f"1000 held over {MAX_HELD_AGE_S:g} s" in caplog.text
        for name, doc in early_events(MAX_HELD_DOCUMENTS + 5, shape=(1,)):
            order(name, doc)
    assert order.held[0] == MAX_HELD_DOCUMENTS


def test_held_documents_still_reach_their_descriptor_in_order():
    clock = Clock()
    order = DocumentOrder(clock=clock)
    assert order("start", {"uid": "run"}) == [("start", {"uid": "run"})]
    early = early_events(3, shape=(2,), descriptor="d1")
    for name, doc in early:
        assert order(name, doc) == []
    descriptor = {"uid": "d1", "run_start": "run"}
    released = order("descriptor", descriptor)
    assert released == [("descriptor", descriptor), *early] and order.held == (0, 0)
