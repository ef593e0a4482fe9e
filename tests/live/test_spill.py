"""The memory budget of frames waiting for the engine, with a real spill file."""

import numpy as np

from ptystream.live.spill import FrameStore, SpilledFrame


def frames(k, n=16, seed=0):
    return list(np.random.default_rng(seed).random((k, n, n), dtype=np.float32))


def test_frames_beyond_the_budget_go_to_disk_and_come_back_intact(tmp_path):
    data = frames(10)
    store = FrameStore(3 * data[0].nbytes, tmp_path)
    held = [store.hold(f) for f in data]
    assert all(h is f for h, f in zip(held[:3], data, strict=False))  # within the budget
    assert all(isinstance(h, SpilledFrame) for h in held[3:])
    assert store.held_bytes == 3 * data[0].nbytes and store.spilled_outstanding == 7
    for h, f in zip(held, data, strict=True):
        np.testing.assert_array_equal(store.load(h), f)
        store.release(h)
    assert store.held_bytes == 0 and store.spilled_outstanding == 0
    (spill,) = tmp_path.iterdir()
    assert spill.stat().st_size == 0  # emptied once nothing spilled is outstanding
    # the next burst reuses the file from its start, and reads back the new frames
    again = frames(5, seed=1)
    refs = [store.hold(f) for f in again]
    for h, f in zip(refs, again, strict=True):
        np.testing.assert_array_equal(store.load(h), f)
    store.close()
    assert not list(tmp_path.iterdir())


def test_a_frame_read_before_the_writer_reached_it_comes_from_memory(tmp_path):
    store = FrameStore(0, tmp_path)
    data = frames(200)
    refs = [store.hold(f) for f in data]
    # read back at once: some are still queued for the writer thread, all must be exact
    for h, f in zip(refs, data, strict=True):
        np.testing.assert_array_equal(store.load(h), f)
        store.release(h)
    store.close()


def test_non_arrays_pass_through_uncounted(tmp_path):
    store = FrameStore(0, tmp_path)
    ref = object()
    assert store.hold(ref) is ref and store.load(ref) is ref
    store.release(ref)
    assert store.held_bytes == 0 and not list(tmp_path.iterdir())


def test_no_spill_file_possible_keeps_frames_in_memory(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    store = FrameStore(0, not_a_dir / "spill")
    frame = frames(1)[0]
    assert store.hold(frame) is frame  # over the budget rather than lost
    assert store.held_bytes == frame.nbytes
    store.release(frame)
    assert store.held_bytes == 0
    store.close()
