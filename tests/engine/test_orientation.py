"""The check of the positions' orientation against the frames (engine/orientation.py): the
algebra of the eight choices and the profile keys it names, then real checks on simulated
far-field scans and on the shared P25 near-field scan flipped and swapped."""

import itertools

import numpy as np
import pytest

from ptystream.config import Algorithm, load_profile, with_overrides
from ptystream.engine import EngineSetup, make_engine
from ptystream.engine.checkpoint import read_state
from ptystream.engine.orientation import (
    ORIENTATIONS,
    Orientation,
    OrientationCheck,
    OrientationSetup,
    can_judge,
)
from ptystream.metrics import score_against_truth
from ptystream.sim.problems import far_field_problem
from ptystream.sim.trajectories import jittered_raster

SWAP = Orientation(True, 1, 1)
FLIP_Y = Orientation(False, -1, 1)
TURN = Orientation(True, 1, -1)  # a quarter turn


def inverse(choice: Orientation) -> Orientation:
    return Orientation.from_matrix(choice.matrix.T)


def in_class(found: Orientation, wanted: Orientation) -> bool:
    """Far field: the same choice up to the twin (both signs flipped)."""
    return found in (wanted, wanted.twin)


# -- the algebra --------------------------------------------------------------------------------


def test_the_eight_choices_are_the_signed_permutations():
    mats = {tuple(c.matrix.ravel()) for c in ORIENTATIONS}
    assert len(mats) == 8 and ORIENTATIONS[0].is_identity
    for c in ORIENTATIONS:
        m = c.matrix
        np.testing.assert_array_equal(m @ m.T, np.eye(2))
        assert Orientation.from_matrix(m) == c == Orientation.from_label(c.label())
        assert c.twin.twin == c and c.twin != c
    for a, b in itertools.product(ORIENTATIONS, repeat=2):
        np.testing.assert_array_equal(a.then(b).matrix, b.matrix @ a.matrix)


@pytest.mark.parametrize("rotation_deg", [0.0, 30.0])
@pytest.mark.parametrize("axes", [Orientation(), Orientation(True, -1, 1)])
def test_the_keys_named_reproduce_the_corrected_positions(rotation_deg, axes):
    """For every correction, the profile keys the advice names turn stage readbacks into the
    corrected positions: the check's correction acts before the profile's rotation."""
    base = load_profile("demo")
    inst = base.instrument.model_copy(
        update={
            "swap_axes": axes.swap,
            "y_sign": axes.y_sign,
            "x_sign": axes.x_sign,
            "rotation_deg": rotation_deg,
        }
    )
    rng = np.random.default_rng(0)
    y, x = rng.normal(size=(2, 30))
    given = inst.positions_m(y, x)
    for correction in ORIENTATIONS:
        fixed = axes.then(correction)
        keys = inst.model_copy(
            update={"swap_axes": fixed.swap, "y_sign": fixed.y_sign, "x_sign": fixed.x_sign}
        )
        moved = given @ correction.transform(rotation_deg).T
        np.testing.assert_allclose(keys.positions_m(y, x), moved, atol=1e-12)


def test_a_first_raster_line_cannot_judge_but_two_can():
    step = 1e-6
    raster = jittered_raster(100, step, 0.1, np.random.default_rng(0))  # 10 x 10, snake
    assert not can_judge(raster[:10])  # one line: its y sign is invisible
    assert can_judge(raster[:20])
    assert not can_judge(raster[:5])  # too few


def test_the_check_round_trips_through_metadata():
    check = OrientationCheck(
        "mismatch", TURN, Orientation(), {"keep,+y,+x": 2.0}, 0.5, True, "m", ("m",), 30.0
    )
    again = OrientationCheck.from_metadata(check.to_metadata())
    assert again == check and again.correction is None
    used = OrientationCheck("corrected", TURN, TURN, rotation_deg=30.0)
    np.testing.assert_allclose(
        OrientationCheck.from_metadata(used.to_metadata()).correction, TURN.transform(30.0)
    )


# -- simulated far-field scans ------------------------------------------------------------------


@pytest.fixture(scope="module")
def farfield():
    """128² frames, 80 jittered raster points, 500 counts peak, read noise 10."""
    return far_field_problem(128, 80, seed=1)


def checked(problem, applied: Orientation, mode="check", algorithm="mpie", axes=None):
    """An engine given ``problem``'s frames with its positions moved by ``applied``."""
    settings = load_profile("hard-xray-farfield").engine.model_copy(
        update={"algorithm": Algorithm(algorithm)}
    )
    setup = EngineSetup(
        problem.geometry,
        settings,
        plan=problem.plan,
        probe_defocus_m=problem.probe_defocus_m,
        orientation=OrientationSetup(mode, axes),
    )
    engine = make_engine(setup)
    engine.add_frames(problem.frames, problem.positions_m @ applied.matrix.T)
    return engine


@pytest.mark.parametrize("applied", [FLIP_Y, SWAP, TURN], ids=lambda c: c.label())
def test_a_wrong_orientation_is_named_with_the_keys_to_set(farfield, applied):
    engine = checked(farfield, applied, axes=Orientation())
    check = engine.orientation
    assert check.verdict == "mismatch" and check.used.is_identity
    assert in_class(check.best, inverse(applied))
    fixed = check.best
    keys = (
        f"instrument.swap_axes: {str(fixed.swap).lower()}, instrument.y_sign: "
        f"{fixed.y_sign}, instrument.x_sign: {fixed.x_sign}"
    )
    assert keys in check.message and "twin image" in check.message
    assert check.warnings == (check.message,)
    est = engine.estimate()
    assert est.orientation["verdict"] == "mismatch"
    assert f"warning: {check.message}" in est.notes()
    # a clear call: the choice found beats the positions as given by more than twice
    scores = {Orientation.from_label(k): v for k, v in check.scores.items()}
    excess = {c: s - check.floor for c, s in scores.items()}
    assert excess[check.best] < 0.4 * excess[Orientation()]


@pytest.mark.parametrize("applied", [Orientation(), Orientation(False, -1, -1)], ids=str)
def test_the_right_orientation_and_its_twin_are_confirmed(farfield, applied):
    """A flip of both signs is the far-field twin image: indistinguishable, so confirmed."""
    check = checked(farfield, applied).orientation
    assert check.verdict == "confirmed" and check.best.is_identity and check.twin_ambiguous
    assert "cannot be told apart" in check.message and check.warnings == ()


def test_data_too_noisy_to_tell_are_said_so():
    """50 counts peak under read noise 20: every choice scores within a thousandth of the
    noise floor, so the check says it could not tell rather than guess."""
    problem = far_field_problem(128, 80, seed=1, peak_counts=50, read_noise_counts=20)
    check = checked(problem, SWAP).orientation
    assert check.verdict == "undecided" and check.used.is_identity
    assert "could not be checked" in check.message


def test_auto_uses_the_better_choice_and_reconstructs_as_if_given_right():
    """AD, 1e4 counts peak: with ``auto`` a swapped scan reconstructs to the same object as
    the right one (the same positions, probe and object bit for bit); with ``check`` it
    reconstructs to noise (phase r 0.08 measured, against 0.90) and says so."""
    problem = far_field_problem(128, 80, seed=3, peak_counts=1e4, read_noise_counts=2)
    right = checked(problem, Orientation(), mode="auto", algorithm="ad")
    fixed = checked(problem, SWAP, mode="auto", algorithm="ad")
    wrong = checked(problem, SWAP, mode="check", algorithm="ad")
    for engine in (right, fixed, wrong):
        engine.refine(20)
    assert fixed.orientation.verdict == "corrected" and fixed.orientation.used == SWAP
    assert "used that" in fixed.orientation.message
    a, b, c = (e.estimate(final=True) for e in (right, fixed, wrong))
    np.testing.assert_array_equal(a.positions_m, b.positions_m)
    np.testing.assert_array_equal(a.object, b.object)
    assert a.probe_defocus_m == b.probe_defocus_m
    good, flat = score_against_truth(b, problem.truth)
    bad, _ = score_against_truth(c, problem.truth)
    assert good.abs_c > 0.99 and good.phase > 0.8 and good.abs_c > flat + 0.04
    assert bad.phase < 0.3 and good.abs_c - bad.abs_c > 0.03
    assert c.orientation["warnings"] and not a.orientation["warnings"]
    # the right axes (given or corrected) give the defocus search something to choose by
    assert not [w for e in (a, b) for w in e.warnings if "could not choose" in w]


def test_a_correction_survives_a_saved_state(farfield, tmp_path):
    """Frames added after a restore are corrected as the first ones were."""
    half = len(farfield.frames) // 2
    first, rest = farfield.head(half), farfield.frames[half:]
    engine = checked(first, SWAP, mode="auto")
    engine.save_state(tmp_path / "state.h5")
    again = make_engine(
        EngineSetup(
            farfield.geometry,
            engine.settings,
            plan=farfield.plan,
            probe_defocus_m=farfield.probe_defocus_m,
            orientation=OrientationSetup("auto"),
        )
    )
    again.restore(read_state(tmp_path / "state.h5"))
    assert again.orientation == engine.orientation
    moved = farfield.positions_m[half:] @ SWAP.matrix.T
    engine.add_frames(rest, moved)
    again.add_frames(rest, moved)
    np.testing.assert_array_equal(again.estimate().positions_m, engine.estimate().positions_m)
    np.testing.assert_allclose(engine.estimate().positions_m[half:], farfield.positions_m[half:])


# -- the shared P25 near-field scan -------------------------------------------------------------


@pytest.fixture(scope="module")
def p25_scan(p25):
    from ptystream.io.scans import read_scan

    return read_scan(p25)


@pytest.mark.parametrize("applied", [Orientation(), FLIP_Y, SWAP, TURN], ids=str)
def test_p25_flipped_and_swapped(p25_scan, applied):
    """Real data, near field (no twin): the positions as recorded are confirmed, and every
    flip or swap of them is found and undone exactly, with the profile keys named."""
    from ptystream.offline.reconstruct import geometry_for

    profile = with_overrides(load_profile("p25-nearfield"), ["engine.algorithm=mpie"])
    setup = EngineSetup.from_profile(
        profile, geometry=geometry_for(p25_scan, profile), detector_mask=p25_scan.valid_pixels
    )
    engine = make_engine(setup)
    engine.add_frames(p25_scan.frames, p25_scan.positions_m @ applied.matrix.T)
    check = engine.orientation
    assert not check.twin_ambiguous
    if applied.is_identity:
        assert check.verdict == "confirmed"
        return
    assert check.verdict == "mismatch" and check.best == inverse(applied)
    axes = Orientation().then(check.best)
    assert f"instrument.swap_axes: {str(axes.swap).lower()}" in check.message
    assert f"instrument.y_sign: {axes.y_sign}, instrument.x_sign: {axes.x_sign}" in check.message
