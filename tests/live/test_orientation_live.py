"""A user's mistaken profile in a live scan: the stage's axes swapped relative to the detector's.
A real RunEngine scan of the simulated beamline, reconstructed live into a real embedded Tiled
server; the live reconstruction checks the orientation on its first frames, off the
RunEngine's thread, and publishes what it found. Nothing is faked."""

import pytest

from ptystream.metrics import score_against_truth

FIX = "instrument.swap_axes: false, instrument.y_sign: 1, instrument.x_sign: 1"


def swapped(profile, mode):
    """``profile`` as a user who got the stage axes wrong would have it."""
    inst = profile.instrument.model_copy(update={"swap_axes": True, "orientation": mode})
    return profile.model_copy(update={"instrument": inst})


@pytest.fixture(scope="module")
def runs(tiled_client, small_profile, run_live_scan):
    truth = small_profile()
    return {
        mode: run_live_scan(truth, tiled_client, reconstruct_with=swapped(truth, mode))
        for mode in ("check", "auto")
    }


def test_a_swapped_stage_is_named_in_tiled_with_the_keys_to_set(tiled_client, runs):
    """``check``: the run finishes (the reconstruction is of no use: the positions are
    wrong) with a warning naming the profile keys that undo the swap, in the run's metadata,
    the live metadata (the dashboard's) and the orientation record."""
    _, result, sim = runs["check"]
    node = tiled_client[result.node_path]
    md = node.metadata
    assert md["status"] == "finished"
    assert md["orientation"]["verdict"] == "mismatch"
    (warning,) = [w for w in md["warnings"] if "orientation" in w or "swapped" in w]
    assert FIX in warning and "probably wrong" in warning
    assert warning in node["live"].metadata["warnings"]
    score, flat = score_against_truth(result.final, sim.truth)
    assert score.phase < 0.5  # what the warning is for


def test_auto_reconstructs_a_swapped_stage_as_a_right_one(tiled_client, runs):
    _, result, sim = runs["auto"]
    md = tiled_client[result.node_path].metadata
    assert md["orientation"]["verdict"] == "corrected"
    assert any(FIX in w and "used that" in w for w in md["warnings"])
    score, flat = score_against_truth(result.final, sim.truth)
    assert score.abs_c >= 0.99 and score.abs_c > flat + 0.04 and score.phase >= 0.9
