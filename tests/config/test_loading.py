"""Profiles found by name or path and read from YAML (a repeated key is an error)."""

from pathlib import Path

import pytest

from ptystream.config import ProfileError, load_profile

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


def test_missing_profile_lists_where_it_looked():
    with pytest.raises(ProfileError, match="'no-such-profile' not found"):
        load_profile("no-such-profile")


def test_not_yaml_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ProfileError, match="must be a mapping"):
        load_profile(path)


def test_a_repeated_key_is_an_error(tmp_path):
    text = (
        (REPO / "profiles" / "demo.yaml")
        .read_text()
        .replace("  batch_size: 16\n", "  batch_size: 16\n  batch_size: 32\n")
    )
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match="'batch_size' appears twice"):
        load_profile(path)
