"""The profile's models: validation rules, wavelength or energy, and the one transform of stage
readbacks into probe positions (numpy only: these tests run without TensorFlow)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptystream.config import HC_EV_M, InstrumentSettings, Profile, ProfileError, load_profile

REPO = Path(__file__).resolve().parents[2]
INSTRUMENT = "distance_m: 0.03, detector_pixel_size_m: 4.5e-6, frame_px: 64"


def test_ranges_must_be_ordered():
    demo = load_profile("demo").model_dump()
    demo["sim"]["phase_range_rad"] = (1.0, -1.0)
    with pytest.raises(ValueError, match="phase_range_rad must be"):
        Profile.model_validate(demo)


def test_simulated_object_must_hold_a_frame():
    demo = load_profile("demo").model_dump()
    demo["sim"]["object_px"] = 32
    with pytest.raises(ValueError, match="smaller than instrument.frame_px"):
        Profile.model_validate(demo)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"engine": {"train_distance": True}}, "train_distance needs instrument.propagation"),
        ({"instrument": {"propagation": "near_field"}}, "sim\\) is far-field only"),
        ({"instrument": {"focus_to_sample_m": 1e-3}}, "near field only"),
        ({"engine": {"correct_positions": True, "subpixel": False}}, "needs engine.subpixel"),
    ],
)
def test_near_field_rules(change, message):
    data = load_profile("demo").model_dump()
    for section, values in change.items():
        data[section].update(values)
    with pytest.raises(ValueError, match=message):
        Profile.model_validate(data)


@pytest.mark.parametrize(
    "engine, message",
    [
        ({"slices": 3, "slice_spacing_m": -1e-6}, "slice_spacing_m must be >= 0 metres"),
        ({"slices": 3, "slice_spacing_m": [1e-6, -2e-6]}, "got -2e-06"),
        ({"slices": 3, "slice_spacing_m": [1e-6]}, "lists 1 spacings, but engine.slices = 3"),
        ({"slices": 2, "slice_spacing_m": [1e-6, 2e-6]}, "has 1 gaps"),
        ({"slices": 1, "train_slice_spacing": True}, "needs engine.slices >= 2"),
        ({"slices": 0}, "greater than or equal to 1"),
        ({"slices": 2, "slice_regulariser": "median"}, "'none', 'arctan' or 'gaussian'"),
    ],
)
def test_bad_slice_settings_are_named(tmp_path, engine, message):
    data = load_profile("demo").model_dump(mode="json")
    data["engine"].update(engine)
    with pytest.raises(ValueError, match=message):
        Profile.model_validate(data)
    # and through a profile file, as a user meets it
    import yaml

    path = tmp_path / "thick.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="engine"):
        load_profile(path)


def test_slice_gaps_from_one_value_or_one_per_gap():
    data = load_profile("demo").model_dump(mode="json")
    data["engine"].update({"slices": 3, "slice_spacing_m": 2e-6})
    assert Profile.model_validate(data).engine.slice_gaps_m == (2e-6, 2e-6)
    data["engine"]["slice_spacing_m"] = [1e-6, 3e-6]
    assert Profile.model_validate(data).engine.slice_gaps_m == (1e-6, 3e-6)


# -- wavelength or energy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "radiation",
    [
        "wavelength_m: 561.0e-9",
        "energy_eV: 2.2100570124777",
        "energy_eV: 2.2100570, wavelength_m: 561.0e-9",
    ],
)
def test_a_profile_gives_the_wavelength_or_the_energy(tmp_path, radiation):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: x\ninstrument: {{{radiation}, {INSTRUMENT}}}\n")
    instrument = load_profile(path).instrument
    assert instrument.wavelength_m == pytest.approx(561e-9, rel=1e-6)
    assert instrument.energy_eV == pytest.approx(HC_EV_M / 561e-9, rel=1e-6)


@pytest.mark.parametrize(
    "radiation, message",
    [
        ("energy_eV: 8000, wavelength_m: 561.0e-9", "energy_eV \\(8000\\) and wavelength_m"),
        ("wavelength_m: -1", "wavelength_m must be a positive number"),
        ("wavelength_m: nm", "wavelength_m must be a positive number"),
        ("frame_px: 64", "instrument.energy_eV: Field required \\(give energy_eV or wave"),
    ],
)
def test_wavelength_and_energy_errors(tmp_path, radiation, message):
    instrument = INSTRUMENT.replace(", frame_px: 64", "")
    path = tmp_path / "p.yaml"
    path.write_text(f"name: x\ninstrument: {{{radiation}, {instrument}}}\n")
    with pytest.raises(ProfileError, match=message):
        load_profile(path)


# -- stage readbacks to probe positions ------------------------------------------------------

C30, S30 = np.sqrt(3.0) / 2.0, 0.5  # cos and sin of 30 degrees


def instrument(**options) -> InstrumentSettings:
    """A far-field instrument with the stage ``options`` (motor units, axes, signs, rotation)."""
    fixed = {"energy_eV": 8000, "distance_m": 2.0, "detector_pixel_size_m": 75e-6, "frame_px": 64}
    return InstrumentSettings(**fixed, **options)


def assert_metres(got, expected_motor, units_m=1.0):
    """``got`` (metres) is ``expected_motor`` (motor units) times ``units_m``, to 1e-12 of a
    motor unit."""
    expected = np.asarray(expected_motor, dtype=np.float64) * units_m
    assert got.dtype == np.float64 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * units_m)


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, (2.0, 3.0)),  # (y, x) as read
        ({"swap_axes": True}, (3.0, 2.0)),  # the stage's x is the detector's y
        ({"x_sign": -1}, (2.0, -3.0)),
        ({"y_sign": -1}, (-2.0, 3.0)),
        ({"x_sign": -1, "y_sign": -1}, (-2.0, -3.0)),
        # signs apply after the swap: to the detector's axes, not the stage's
        ({"swap_axes": True, "x_sign": -1}, (3.0, -2.0)),
        ({"swap_axes": True, "y_sign": -1}, (-3.0, 2.0)),
        # counter-clockwise from x towards y: (y, x) -> (y cos + x sin, x cos - y sin)
        ({"rotation_deg": 90.0}, (3.0, -2.0)),
        ({"rotation_deg": 180.0}, (-2.0, -3.0)),
        ({"rotation_deg": -90.0}, (-3.0, 2.0)),
        ({"rotation_deg": 30.0}, (2.0 * C30 + 3.0 * S30, 3.0 * C30 - 2.0 * S30)),
        # rotation last: swap (3, 2), x_sign (3, -2), then 90 degrees
        ({"swap_axes": True, "x_sign": -1, "rotation_deg": 90.0}, (-2.0, -3.0)),
        # swap (3, 2), y_sign (-3, 2), then 30 degrees
        (
            {"swap_axes": True, "y_sign": -1, "rotation_deg": 30.0},
            (-3.0 * C30 + 2.0 * S30, 2.0 * C30 + 3.0 * S30),
        ),
    ],
)
def test_each_stage_option_and_their_composition(options, expected):
    """The readback (y 2, x 3) in motor units of 1 m, then each option and compositions."""
    assert_metres(instrument(motor_units_m=1.0, **options).positions_m(2.0, 3.0), expected)


def test_the_unit_vector_of_x_turns_towards_y():
    """Counter-clockwise from x towards y: x's unit vector goes to (y sin, x cos); y's to
    (y cos, x -sin)."""
    turned = instrument(motor_units_m=1.0, rotation_deg=30.0)
    assert_metres(turned.positions_m(0.0, 1.0), (S30, C30))
    assert_metres(turned.positions_m(1.0, 0.0), (C30, -S30))


@pytest.mark.parametrize("units_m", [1e-6, 1e-3, 2.5e-9])
def test_motor_units_are_turned_into_metres_first(units_m):
    assert_metres(instrument(motor_units_m=units_m).positions_m(2.0, -3.0), (2.0, -3.0), units_m)
    # the axes options act on metres: swapped, mirrored and rotated by 90 degrees
    turned = instrument(motor_units_m=units_m, swap_axes=True, x_sign=-1, rotation_deg=90.0)
    assert_metres(turned.positions_m(2.0, 3.0), (-2.0, -3.0), units_m)


def test_the_default_motors_are_in_micrometres():
    assert instrument().motor_units_m == 1e-6
    assert_metres(instrument().positions_m(1.5, -0.25), (1.5, -0.25), 1e-6)


def test_arrays_give_one_position_per_readback():
    """Arrays of readbacks of any shape give positions ``(..., 2)``; each is the scalar result;
    integer readbacks (motor counts) are taken as floats."""
    settings = instrument(motor_units_m=1e-6, swap_axes=True, y_sign=-1, rotation_deg=30.0)
    y = np.array([[2.0, 0.0, -1.0], [4.5, 1.0, 0.0]])
    x = np.array([[3.0, 1.0, 2.0], [-0.5, 0.0, 0.0]])
    got = settings.positions_m(y, x)
    # swap then y_sign: (y', x') = (-x, y); then 30 degrees
    expected = np.stack([-x * C30 + y * S30, y * C30 + x * S30], axis=-1)
    assert_metres(got, expected, 1e-6)
    for i, j in np.ndindex(y.shape):
        np.testing.assert_array_equal(settings.positions_m(y[i, j], x[i, j]), got[i, j])
    assert_metres(settings.positions_m([2, 0], [3, 1]), expected[0, :2], 1e-6)
    assert settings.positions_m([], []).shape == (0, 2)


def test_these_tests_run_without_tensorflow():
    """The transform must work where the engine is not installed: importing this module (and
    so the config package) leaves TensorFlow unloaded."""
    code = "import sys, tests.config.test_models; print('tensorflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
