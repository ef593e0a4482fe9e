"""Validation errors in words: each names its key, with a suggestion for a misspelt one and the
file it is in."""

from pathlib import Path

import pytest

from ptystream.config import ProfileError, load_profile

REPO = Path(__file__).resolve().parents[2]


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\ninstrument: {energy_eV: 8000, distance_m: 1, detector_pixel_size_m: 7.5e-5,"
        " frame_px: 64, detecter_key: oops}\n"
    )
    with pytest.raises(ProfileError, match=r"instrument\.detecter_key: Extra inputs"):
        load_profile(path)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("batch_size:", "batch_sise:", "engine.batch_sise: .*did you mean 'batch_size'"),
        ("  energy_eV:", "  energy_ev:", "instrument.energy_ev: .*did you mean 'energy_eV'"),
        ("  seed: 1", "  sed: 1", "sim.sed: .*did you mean 'seed'"),
        ("engine:\n", "engine:\n  frame_px: 64\n", "engine.frame_px: .*instrument.frame_px"),
        ("engine:\n", "engine:\n  zzzz: 1\n", "engine.zzzz: .*accepted: algorithm, probe_modes"),
    ],
)
def test_an_unknown_key_is_named_with_a_suggestion_and_the_file(tmp_path, old, new, message):
    text = (REPO / "profiles" / "demo.yaml").read_text()
    assert old in text
    path = tmp_path / "typo.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ProfileError, match=message) as caught:
        load_profile(path)
    assert str(path) in str(caught.value)
