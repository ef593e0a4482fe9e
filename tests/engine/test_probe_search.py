"""The initial probe's defocus chosen from the data: found from a nominal 50 % off or of the
wrong sign, as good a start as the truth, skipped for a given probe, kept
at the nominal where the data cannot choose."""

import dataclasses
import math

import numpy as np
import pydantic
import pytest

from ptystream.config import EngineSettings
from ptystream.engine import EngineSetup, make_engine, probe_search
from ptystream.metrics import score_against_truth
from ptystream.sim.problems import DEFOCUS_M, far_field_problem

#: Nominal defocus over the true one: 50 % short, 50 % long, the wrong sign.
WRONG = {"-50 %": 0.5, "+50 %": 1.5, "wrong sign": -1.0}


@pytest.fixture(scope="module")
def scan():
    """The ENGINE_NOTES far-field problem shrunk to 64² frames (60 points, 500 counts peak,
    read noise 10)."""
    return far_field_problem(64, 60)


def search(problem, **kwargs) -> probe_search.DefocusSearch:
    """:func:`probe_search.search_defocus` on all of ``problem``'s frames over their maximum,
    with the noise model's offset in those units (one count per photon)."""
    scale = float(problem.frames.max())
    frames = problem.frames / scale
    offset = (0.375 + problem.read_noise_counts**2) / scale
    return probe_search.search_defocus(
        frames, problem.positions_m, frames.mean(axis=0), problem.geometry, offset=offset, **kwargs
    )


def engine_for(problem, nominal_m, **settings):
    setup = EngineSetup(
        problem.geometry,
        EngineSettings(**settings),
        plan=problem.plan,
        read_noise_counts=problem.read_noise_counts,
        probe_defocus_m=nominal_m,
    )
    return make_engine(setup)


@pytest.mark.parametrize("factor", WRONG.values(), ids=WRONG.keys())
def test_the_search_finds_the_true_defocus_from_a_wrong_nominal(scan, factor):
    """Measured: 1.536-1.546 mm for the truth's 1.5 mm in 24-27 trials (the nominal one of
    them), 0.2-0.5 s, the best at 0.28 of the flat object's misfit; the best negative defocus
    scored 3.2-3.5 times the chosen one. The tolerance, 10 %, keeps the phase
    error at the bright-field disc's edge under pi/3 (the grid's step, the defocus that changes
    it by pi, is 0.43 mm here)."""
    found = search(scan, nominal_m=factor * DEFOCUS_M)
    assert found.defocus_m == pytest.approx(DEFOCUS_M, rel=0.1)
    assert found.trials[found.defocus_m] == min(found.trials.values())
    assert factor * DEFOCUS_M in found.trials  # the nominal is a candidate
    assert found.informative and found.best_ratio < 0.8  # the trials learnt from the data
    assert min(found.trials) < -DEFOCUS_M and max(found.trials) > DEFOCUS_M  # both signs tried
    # the wrong sign is not a near miss: it predicts the held-out frames much worse
    assert min(v for d, v in found.trials.items() if d < 0) > 1.3 * found.trials[found.defocus_m]


def test_a_wrong_nominal_reconstructs_as_well_as_the_truth(scan):
    """|C| after 20 passes of the AD engine from each wrong nominal, searched, against the
    true defocus given (no search); without the search the wrong sign stays behind. Measured:
    0.9878 from every wrong nominal, 0.9875 with the truth; unsearched 0.954 (-50 %), 0.973
    (+50 %), 0.924 (wrong sign)."""
    problem = scan
    passes = 20

    def abs_c(nominal_m, search=True):
        engine = engine_for(problem, nominal_m, probe_defocus_search=search)
        engine.add_frames(problem.frames, problem.positions_m)
        engine.refine(passes)
        estimate = engine.estimate()
        return score_against_truth(estimate, problem.truth)[0].abs_c, estimate.probe_defocus_m

    truth, reported = abs_c(DEFOCUS_M, search=False)
    assert reported == DEFOCUS_M  # the nominal, as given
    for factor in WRONG.values():
        score, chosen = abs_c(factor * DEFOCUS_M)
        assert chosen == pytest.approx(DEFOCUS_M, rel=0.1)
        assert score >= truth - 0.005, (factor, score, truth)
    unsearched, _ = abs_c(-DEFOCUS_M, search=False)
    assert unsearched < truth - 0.02


def test_both_engines_report_the_chosen_defocus(scan):
    problem = scan
    engine = engine_for(problem, -DEFOCUS_M, algorithm="mpie")
    assert math.isnan(engine.probe_defocus_m)  # before the first frames
    engine.add_frames(problem.frames, problem.positions_m)
    assert engine.probe_defocus_m == pytest.approx(DEFOCUS_M, rel=0.1)
    assert engine.estimate().probe_defocus_m == engine.probe_defocus_m
    # told the wrong sign, the choice is far from the profile's value: said, not silent
    (far,) = [w for w in engine.estimate().warnings if "probe defocus search chose" in w]
    assert "where the profile gives -1.5 mm" in far and "probe_defocus_search: false" in far
    near = engine_for(problem, 1.1 * DEFOCUS_M)
    near.add_frames(problem.frames, problem.positions_m)
    assert not any("probe defocus search chose" in w for w in near.estimate().warnings)


def test_data_that_cannot_choose_keep_the_nominal_and_say_so():
    """A flat sample: every frame is the probe's own pattern plus noise, so no trial predicts
    the held-out frames better than the flat object, whatever its defocus. The search keeps
    the profile's defocus, even a wrong one, rather than choose by the noise (on a simulated
    Siemens star it chose 0 mm for 1.5 mm and the reconstruction failed), and the engine says
    so. Measured: best trial 1.000 of the flat object's misfit here; 0.2-0.74 on the grid's
    scans, where the search chooses."""
    problem = far_field_problem(64, 60, sample=np.ones((512, 512), np.complex64))
    found = search(problem, nominal_m=-DEFOCUS_M)
    assert not found.informative and found.best_ratio > probe_search.INFORMATIVE_FRACTION
    assert found.defocus_m == -DEFOCUS_M
    engine = engine_for(problem, 0.5 * DEFOCUS_M)
    engine.add_frames(problem.frames, problem.positions_m)
    assert engine.probe_defocus_m == 0.5 * DEFOCUS_M
    (said,) = [w for w in engine.estimate().warnings if "could not choose" in w]
    assert "the profile's 0.75 mm is used unchecked" in said
    assert not any("probe defocus search chose" in w for w in engine.estimate().warnings)


def test_a_given_probe_or_the_setting_off_skips_the_search(scan, monkeypatch):
    problem = scan

    def refused(*args, **kwargs):
        raise AssertionError("the defocus search ran")

    monkeypatch.setattr(probe_search, "search_defocus", refused)
    given = make_engine(
        EngineSetup(
            problem.geometry,
            EngineSettings(algorithm="epie"),
            plan=problem.plan,
            probe_defocus_m=0.5 * DEFOCUS_M,
            initial_probe=problem.truth.probe,
        )
    )
    given.add_frames(problem.frames, problem.positions_m)
    assert math.isnan(given.probe_defocus_m) and math.isnan(given.estimate().probe_defocus_m)
    off = engine_for(problem, 0.5 * DEFOCUS_M, algorithm="epie", probe_defocus_search=False)
    off.add_frames(problem.frames, problem.positions_m)
    assert off.probe_defocus_m == 0.5 * DEFOCUS_M
    few = engine_for(problem, 0.5 * DEFOCUS_M, algorithm="epie")
    few.add_frames(problem.frames[:5], problem.positions_m[:5])  # too few to judge overlap
    assert few.probe_defocus_m == 0.5 * DEFOCUS_M


def test_the_range_setting_bounds_the_search(scan):
    found = search(scan, range_m=(-1e-3, -0.2e-3))  # the truth left out: the best inside
    assert all(-1e-3 <= d <= -0.2e-3 for d in found.trials)
    with pytest.raises(pydantic.ValidationError, match="probe_defocus_search_m"):
        EngineSettings(probe_defocus_search_m=(2e-3, 1e-3))
    near = dataclasses.replace(
        scan, geometry=dataclasses.replace(scan.geometry, propagation="near_field")
    )
    with pytest.raises(ValueError, match="far-field"):
        search(near)
