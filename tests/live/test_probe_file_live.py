"""A live run that starts from a probe in a file (``engine.initial_probe_file``), as a beamline
would after measuring its probe once: a real RunEngine scan of the simulated beamline, saved by
TiledWriter and reconstructed live into a real embedded Tiled server, with a profile whose
nominal defocus is of the wrong sign. The run records where its probe came from, and starts
from it (no defocus search)."""

import numpy as np

from ptystream.metrics import score_against_truth
from ptystream.sim.scan import build_simulation


def test_a_live_run_starts_from_the_probe_file(
    tmp_path, tiled_client, small_profile, run_live_scan
):
    profile = small_profile()
    probe = build_simulation(profile).truth.probe  # the probe "measured" on an earlier scan
    path = tmp_path / "probe.npz"
    np.savez(path, probe=probe)
    inst = profile.instrument.model_copy(update={"probe_defocus_m": -1.5e-3})  # wrong sign
    engine = profile.engine.model_copy(update={"initial_probe_file": path})
    _, result, sim = run_live_scan(
        profile,
        tiled_client,
        reconstruct_with=profile.model_copy(update={"instrument": inst, "engine": engine}),
    )
    md = tiled_client[result.node_path].metadata
    assert md["status"] == "finished"
    assert md["initial_probe_from"] == str(path)
    assert "probe_defocus_m" not in md  # no probe built from a defocus: the file's is used
    score, flat = score_against_truth(result.final, sim.truth)
    assert score.abs_c >= 0.98 and score.abs_c > flat + 0.04, (score, flat)
