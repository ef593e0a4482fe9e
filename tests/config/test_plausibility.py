"""Implausible numbers for the kind of instrument (unit slips) are refused or warned about by
name: the key, the value, the unit it is in and the likely slip, with the value probably meant.
Positions in the wrong unit are refused before any canvas is sized for them."""

import json
from pathlib import Path

import numpy as np
import pytest

from ptystream.config import (
    ProfileError,
    Severity,
    available_profiles,
    check_profile,
    load_profile,
    with_overrides,
)
from ptystream.engine import EngineSetup, make_engine
from ptystream.engine.initial import MAX_CANVAS_PX, check_positions, checked_frames

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in (REPO / "profiles").glob("*.yaml"))
LOGGER = "ptystream.config.plausibility"


def refusal(profile_name: str, *assignments: str) -> str:
    """The message of the ProfileError that overriding a shipped profile raises."""
    with pytest.raises(ProfileError) as caught:
        with_overrides(load_profile(profile_name), list(assignments))
    return str(caught.value)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_without_refusal_or_warning(name, caplog):
    with caplog.at_level("WARNING", logger=LOGGER):
        profile = load_profile(name)
    assert check_profile(profile) == []
    assert caplog.records == []
    assert name in available_profiles()


@pytest.mark.parametrize(
    "name, energy, meant",
    [
        ("hard-xray-farfield", "8", "8000"),
        ("demo", "8", "8000"),
        ("p25-nearfield", "12.658", "12658"),
    ],
)
def test_an_energy_in_kev_beside_an_xray_detector_is_refused_naming_the_slip(name, energy, meant):
    message = refusal(name, f"instrument.energy_eV={energy}")
    assert f"instrument.energy_eV = {energy} (eV)" in message  # key, value, unit
    assert "X-ray detector" in message  # why: the detector says X-rays, the number says light
    assert f"{energy} looks like keV: energy_eV is in eV, did you mean {meant}?" in message


def test_the_kind_of_instrument_is_read_from_the_detector_too():
    """1.75 eV is the visible profile's laser beside its 4.5 µm camera, but a keV slip beside
    the 75 µm pixels of an X-ray detector; 1750 eV with the camera is a soft X-ray setup."""
    assert "1.75 looks like keV" in refusal("hard-xray-farfield", "instrument.energy_eV=1.75")
    visible = load_profile("seifert2021-visible")
    assert check_profile(with_overrides(visible, ["instrument.energy_eV=1750"])) == []


def test_a_distance_in_millimetres_is_refused_naming_the_slip():
    message = refusal("hard-xray-farfield", "instrument.distance_m=2000")
    assert "instrument.distance_m = 2000 (m)" in message and "2 km" in message
    assert "2000 looks like mm: distance_m is in m, did you mean 2?" in message


def test_a_pixel_in_micrometres_is_refused_naming_the_slip():
    message = refusal("demo", "instrument.detector_pixel_size_m=75")
    assert "instrument.detector_pixel_size_m = 75 (m)" in message
    assert "75 looks like µm: detector_pixel_size_m is in m, did you mean 7.5e-05?" in message


def test_a_focus_distance_in_millimetres_and_a_frame_given_as_its_pixel_count_are_refused():
    message = refusal("p25-nearfield", "instrument.focus_to_sample_m=3650")
    assert "instrument.focus_to_sample_m = 3650 (m)" in message
    assert "did you mean 3.65?" in message
    message = refusal("p25-nearfield", "instrument.frame_px=65536")
    assert "instrument.frame_px = 65536 (pixels)" in message and "did you mean 256?" in message


def test_an_object_pixel_far_below_the_wavelength_is_refused_in_a_file(tmp_path):
    """A visible-light near-field profile with its wavelength written in µm digits: the camera's
    6.45 µm pixel is then a hundredth of a wavelength (nothing that fine propagates)."""
    text = (REPO / "profiles" / "seifert2021-sim.yaml").read_text()
    assert "wavelength_m: 561.0e-9" in text
    path = tmp_path / "slip.yaml"
    path.write_text(text.replace("wavelength_m: 561.0e-9", "wavelength_m: 561.0e-6"))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert message.startswith(f"profile {path} is implausible: object_pixel_size_m = 6.45e-06 (m)")
    assert "0.0115 wavelengths of 561 µm" in message
    # the user wrote wavelength_m, so the slip names it
    assert "wavelength_m 0.000561 may be 1000 times too large: did you mean 5.61e-07?" in message


def test_a_far_field_frame_wider_than_90_degrees_is_refused():
    message = refusal("hard-xray-farfield", "instrument.distance_m=0.001")
    assert "object_pixel_size_m = " in message and "NA 4.8" in message
    assert "distance_m 0.001 may be 1000 times too small: did you mean 1?" in message


def test_a_borderline_number_loads_with_a_warning_that_can_go_into_metadata(caplog):
    profile = load_profile("hard-xray-farfield")
    with caplog.at_level("WARNING", logger=LOGGER):
        odd = with_overrides(profile, ["instrument.probe_defocus_m=2.75"])
    assert odd.instrument.probe_defocus_m == 2.75
    (finding,) = check_profile(odd)
    assert finding.severity is Severity.WARN and finding.key == "instrument.probe_defocus_m"
    assert "2.75 looks like mm: probe_defocus_m is in m, did you mean 0.00275?" in finding.message
    assert [r.getMessage() for r in caplog.records] == [
        f"the profile with --set instrument.probe_defocus_m=2.75: {finding.message}"
    ]
    assert json.loads(json.dumps(finding.as_dict()))["severity"] == "warn"
    # a later override of something else does not log the same warning again
    caplog.clear()
    with caplog.at_level("WARNING", logger=LOGGER):
        with_overrides(odd, ["engine.probe_modes=2"])
    assert caplog.records == []


# -- positions --------------------------------------------------------------------------------


def micrometre_raster() -> np.ndarray:
    """A 5 x 5 raster with 2 µm steps, as numbers of micrometres."""
    y, x = np.meshgrid(np.arange(5) * 2.0, np.arange(5) * 2.0, indexing="ij")
    return np.stack([y.ravel(), x.ravel()], axis=-1)


def test_positions_in_micrometres_given_as_metres_are_refused_before_any_canvas():
    profile = load_profile("hard-xray-farfield")
    engine = make_engine(EngineSetup.from_profile(profile, algorithm="epie"))
    frames = np.ones((25, 128, 128), np.float32)
    with pytest.raises(ValueError) as caught:
        engine.add_frames(frames, micrometre_raster())  # 8 "m" across, window 8.3 µm
    message = str(caught.value)
    assert "the positions span 8 m (9.68e+05 probe windows of 8.27e-06 m" in message
    assert "they look 1e+06 times too large" in message
    assert "if they are micrometres, set instrument.motor_units_m: 1e-6" in message
    assert "millimetres" not in message  # 8 mm would be ~1000 windows: not a scan either
    assert engine.n_frames == 0  # refused before anything was added
    engine.add_frames(frames, micrometre_raster() * 1e-6)  # the same scan in metres is fine
    assert engine.n_frames == 25


def test_a_stream_that_wanders_off_in_the_wrong_unit_is_refused_with_the_earlier_positions():
    """Single frames reach the engine one by one: each alone spans nothing, so the positions
    already added count too (the canvas covers them)."""
    window = 128 * 64.6e-9
    frame = np.ones((1, 128, 128))
    _, first = checked_frames(frame, [[0.0, 0.0]], 128, 64.6e-9)
    with pytest.raises(ValueError, match="if they are micrometres, set instrument.motor_units"):
        checked_frames(frame, [[0.0, 0.5]], 128, 64.6e-9, earlier_m=first)
    checked_frames(frame, [[0.0, 0.5]], 128, 64.6e-9)  # alone, one frame spans nothing
    # 300 windows of a real large scan pass
    checked_frames(frame, [[0.0, 300 * window]], 128, 64.6e-9, earlier_m=first)


def test_positions_a_metre_from_the_stage_origin_are_refused():
    """One frame 3 "m" away: 3 mm or 3 µm, both could be; the message offers both."""
    with pytest.raises(ValueError, match="no sample stage travels a metre") as caught:
        check_positions(np.array([[2.5, 3.0]]), 128, 64.6e-9)
    assert "reach 3 m from the stage origin" in str(caught.value)
    assert "millimetres, set instrument.motor_units_m: 1e-3" in str(caught.value)
    assert "micrometres, set instrument.motor_units_m: 1e-6" in str(caught.value)


def test_a_canvas_too_large_for_memory_is_refused_without_blaming_units():
    """900 windows of 128 px would be a 115 200 px square canvas: 1.3e10 pixels."""
    window = 128 * 64.6e-9
    positions = np.array([[0.0, 0.0], [900 * window, 900 * window]])
    with pytest.raises(ValueError) as caught:
        check_positions(positions, 128, 64.6e-9)
    message = str(caught.value)
    assert "object canvas would be 1.33e+10 pixels" in message
    assert f"{MAX_CANVAS_PX:.0e}" in message and "reconstruct the scan in parts" in message
    assert "motor_units_m" not in message
    check_positions(positions / 3, 128, 64.6e-9)  # 300 windows: 1.5e9 pixels fit
