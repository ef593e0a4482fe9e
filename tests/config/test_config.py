from pathlib import Path

import pytest

from ptystream.config import Profile, ProfileError, load_profile

REPO = Path(__file__).resolve().parents[2]


def test_demo_profile_loads_and_derives_geometry():
    profile = load_profile("demo")
    g = profile.instrument.geometry()
    assert profile.name == "demo"
    assert g.wavelength_m == pytest.approx(1.5498e-10, rel=1e-4)  # 8 keV
    # far-field object pixel = lambda z / (N dx) = 1.5498e-10 * 2 / (64 * 75e-6)
    assert g.object_pixel_size_m == pytest.approx(64.57e-9, rel=1e-3)


def test_profile_by_path(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text((REPO / "profiles" / "demo.yaml").read_text())
    assert load_profile(path).name == "demo"


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\ninstrument: {energy_eV: 8000, distance_m: 1, detector_pixel_size_m: 7.5e-5,"
        " frame_px: 64, detecter_key: oops}\n"
    )
    with pytest.raises(ProfileError, match=r"instrument\.detecter_key: Extra inputs"):
        load_profile(path)


def test_missing_profile_lists_where_it_looked():
    with pytest.raises(ProfileError, match="'no-such-profile' not found"):
        load_profile("no-such-profile")


def test_not_yaml_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ProfileError, match="must be a mapping"):
        load_profile(path)


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
