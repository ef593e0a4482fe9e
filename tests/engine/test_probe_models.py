"""Probe models: a mixed-state probe for partial coherence, the Fresnel phase folded into it."""

import dataclasses

import h5py
import numpy as np
import pytest

from ptystream import optics
from ptystream.config import EngineSettings
from ptystream.engine import EngineSetup, make_engine
from ptystream.io.figures import write_summary
from ptystream.io.results import write_result
from ptystream.metrics import complex_correlation, score_against_truth
from ptystream.sim.detector import diffraction_pattern
from ptystream.sim.scan import build_simulation
from ptystream.types import FRESNEL, Geometry

PHOTONS = 1e6


@pytest.fixture(scope="module")
def sim(small_profile):
    return build_simulation(small_profile(photons_per_frame=None))


def reconstruct(geometry, settings, sim, frames, defocus_m, planned, epochs=80):
    engine = make_engine(
        EngineSetup(geometry, settings, plan=planned(sim.positions_m), probe_defocus_m=defocus_m)
    )
    for i in range(0, len(frames), 10):
        engine.add_frames(frames[i : i + 10], sim.positions_m[i : i + 10])
        engine.step(4)
    engine.refine(epochs)
    return engine.estimate(final=True)


def with_modes(settings: EngineSettings, modes: int) -> EngineSettings:
    """``settings`` with ``modes`` probe modes and no TV (clean data: nothing to regularise, so
    the loss is the misfit alone)."""
    return EngineSettings.model_validate(
        {**settings.model_dump(), "probe_modes": modes, "tv_weight": 0.0}
    )


WEIGHTS = (0.65, 0.35)


@pytest.fixture(scope="module")
def partial_coherence(sim, small_profile, planned):
    """Frames that are the incoherent sum of the probe and a copy displaced by 3 px (a source
    larger than the coherence allows), reconstructed with one mode and with two."""
    profile = small_profile(photons_per_frame=None)
    displaced = dataclasses.replace(sim.truth, probe=np.roll(sim.truth.probe, 3, axis=1))
    frames = np.stack(
        [
            PHOTONS
            * (
                WEIGHTS[0] * diffraction_pattern(sim.truth, p)
                + WEIGHTS[1] * diffraction_pattern(displaced, p)
            )
            for p in sim.positions_m
        ]
    ).astype(np.float32)
    geometry = profile.instrument.geometry()
    defocus = profile.instrument.probe_defocus_m
    # the modes settle slowly: 80 passes gave a 0.71/0.29 split, 200 the true 0.661/0.339
    one = reconstruct(
        geometry, with_modes(profile.engine, 1), sim, frames, defocus, planned, epochs=200
    )
    two = reconstruct(
        geometry, with_modes(profile.engine, 2), sim, frames, defocus, planned, epochs=200
    )
    true_modes = np.stack(
        [np.sqrt(w) * p for w, p in zip(WEIGHTS, (sim.truth.probe, displaced.probe), strict=True)]
    )
    return geometry, one, two, true_modes


def test_two_modes_fit_a_partially_coherent_beam(sim, partial_coherence):
    """One coherent mode cannot explain the frames; two can, with the true split of power."""
    geometry, one, two, true_modes = partial_coherence
    score_one, flat = score_against_truth(one, sim.truth)
    score_two, _ = score_against_truth(two, sim.truth)

    assert one.probe.shape == geometry.frame_shape
    assert two.probe.shape == (2, *geometry.frame_shape)
    assert two.loss[-1, 1] < 0.01 * one.loss[-1, 1]  # measured 7e-4
    assert score_two.abs_c >= 0.99 and score_two.phase >= 0.9 and score_two.abs_c > flat + 0.04
    assert score_two.phase > score_one.phase + 0.05
    expected = power_fractions(optics.orthogonalise_modes(true_modes))
    np.testing.assert_allclose(power_fractions(two.probe), expected, atol=0.01)


def test_modes_are_written_modes_first(partial_coherence, tmp_path):
    geometry, _, two, _ = partial_coherence
    out = write_result(tmp_path / "out.h5", two, geometry, {"probe_modes": 2})
    with h5py.File(out) as f:
        assert f["probe"].shape == (2, *geometry.frame_shape) and f["probe"].dtype == np.complex64
        np.testing.assert_allclose(f["probe"][()], two.probe)
    png = write_summary(tmp_path / "summary.png", two)
    assert png.stat().st_size > 10_000


def power_fractions(modes: np.ndarray) -> np.ndarray:
    power = np.sum(np.abs(modes) ** 2, axis=(1, 2))
    return power / power.sum()


def test_initial_modes_keep_the_power_and_are_orthogonal():
    probe = optics.focused_probe(64, 5e-8, 1.55e-10, 6e-4, 1.5e-3)
    modes = optics.initial_modes(probe, 4, power_fraction=0.2)
    assert modes.shape == (4, 64, 64)
    assert np.sum(np.abs(modes) ** 2) == pytest.approx(np.sum(np.abs(probe) ** 2), rel=1e-4)
    assert power_fractions(modes)[1:].sum() == pytest.approx(0.2, rel=1e-4)
    ortho = optics.orthogonalise_modes(modes)
    gram = np.abs(ortho.reshape(4, -1).conj() @ ortho.reshape(4, -1).T)
    assert np.all(np.diff(np.diag(gram)) <= 0)  # sorted by power
    assert np.max(gram - np.diag(np.diag(gram))) < 1e-3 * gram.max()


def test_fresnel_phase_is_folded_into_the_probe(sim, small_profile, planned):
    """At a finite distance the exit wave carries exp(i pi r^2 / (lambda z)) over the window.
    With ``fresnel`` propagation the engine reports the physical probe at the sample; a plain
    far-field model can only absorb the phase into its probe, which then is not the beam."""
    n = sim.truth.probe.shape[-1]
    dx = sim.truth.pixel_size_m
    wavelength = 561e-9
    edge_phase_rad = 12.0  # Fresnel phase at the window's edge
    z = np.pi * (n * dx / 2) ** 2 / (edge_phase_rad * wavelength)
    geometry = Geometry(wavelength, z, wavelength * z / (n * dx), n, propagation=FRESNEL)
    assert geometry.object_pixel_size_m == pytest.approx(dx)
    # the phase is centred on the beam, which sits at a sub-pixel offset in its window
    chirped = dataclasses.replace(
        sim.truth, probe=sim.truth.probe * optics.fresnel_phase(n, dx, wavelength, z)
    )
    frames = np.stack([PHOTONS * diffraction_pattern(chirped, p) for p in sim.positions_m])
    frames = frames.astype(np.float32)
    # the simulated beam's curvature pi r^2 / (lambda d), expressed at this wavelength
    xray = small_profile().instrument
    defocus = xray.probe_defocus_m * xray.geometry().wavelength_m / wavelength
    settings = small_profile().engine
    fresnel = reconstruct(geometry, settings, sim, frames, defocus, planned)
    far_field = dataclasses.replace(geometry, propagation="far_field")
    plain = reconstruct(far_field, settings, sim, frames, defocus, planned)

    score, flat = score_against_truth(fresnel, sim.truth)
    assert score.abs_c >= 0.99 and score.phase >= 0.9 and score.abs_c > flat + 0.04
    window = np.abs(sim.truth.probe) > 0.05 * np.abs(sim.truth.probe).max()
    probe_c = complex_correlation(fresnel.probe, sim.truth.probe, window).abs_c
    plain_c = complex_correlation(plain.probe, sim.truth.probe, window).abs_c
    assert probe_c >= 0.95 and plain_c < probe_c - 0.2
