"""The noise model from the frames: read noise and gain recovered from simulated far-field scans
(Poisson photons times a gain, plus Gaussian read noise, optionally clipped at zero), the loss
each regime calls for, and bad input refused."""

import json

import numpy as np
import pytest

from ptystream.config import EngineSettings, LossKind
from ptystream.engine import EngineSetup, make_engine
from ptystream.engine.noise import (
    NoiseEstimate,
    NoiseModel,
    estimate_noise,
    noise_model,
    recommend_loss,
    to_photons,
)
from ptystream.sim.problems import far_field_problem


@pytest.fixture(scope="module")
def pattern():
    """Noise-free far-field frames ``(40, 64, 64)`` of the simulator's scan, peak 1."""
    frames = far_field_problem(64, 40, peak_counts=None, read_noise_counts=0.0, seed=3).frames
    return frames.astype(np.float64) / frames.max()


def record(pattern, peak, sigma=0.0, gain=1.0, clip=False, seed=0):
    """``pattern`` at ``peak`` photons: ``gain`` counts per photon plus read noise ``sigma``."""
    rng = np.random.default_rng(seed)
    frames = gain * rng.poisson(pattern * peak) + rng.normal(0.0, sigma, pattern.shape) * (
        sigma > 0
    )
    return (np.maximum(frames, 0.0) if clip else frames).astype(np.float32)


@pytest.mark.parametrize("peak", [50, 500, 1e5])
@pytest.mark.parametrize("sigma, gain", [(2.0, 1.0), (10.0, 1.0), (10.0, 2.5), (20.0, 2.5)])
def test_read_noise_from_the_negatives(pattern, peak, sigma, gain):
    estimate = estimate_noise(record(pattern, peak, sigma, gain))
    assert estimate.read_noise_counts == pytest.approx(sigma, rel=0.1)
    assert not estimate.clipped and estimate.negative_fraction > 0
    # the gain is not identifiable under read noise: assumed, and said so
    assert estimate.counts_per_photon == 1.0 and not estimate.gain_measured
    assert "assumed" in estimate.summary()
    assert recommend_loss(estimate) == "amplitude"


@pytest.mark.parametrize("gain", [1.0, 2.5])
@pytest.mark.parametrize("peak", [50, 1e5])
def test_photon_counts_are_poisson_with_the_gain_from_their_quantisation(pattern, peak, gain):
    frames = record(pattern, peak, gain=gain)
    estimate = estimate_noise(frames)
    assert estimate.read_noise_counts == 0.0 and estimate.kind == "poisson"
    assert estimate.counts_per_photon == pytest.approx(gain) and estimate.gain_measured
    assert recommend_loss(estimate) == "poisson"
    photons = to_photons(frames, estimate)
    np.testing.assert_allclose(photons, np.round(photons), atol=1e-3)


@pytest.mark.parametrize("sigma, gain", [(10.0, 1.0), (20.0, 2.5)])
def test_read_noise_clipped_at_zero_shows_as_zeros(pattern, sigma, gain):
    estimate = estimate_noise(record(pattern, 500, sigma, gain, clip=True))
    assert estimate.clipped and estimate.negative_fraction == 0 and estimate.zero_fraction > 0.3
    assert estimate.read_noise_counts == pytest.approx(sigma, rel=0.1)
    # no negatives, yet the read noise rules the Poisson loss out
    assert recommend_loss(estimate) == "amplitude"


def test_the_kind_follows_the_read_noise_against_the_shot_noise(pattern):
    assert estimate_noise(record(pattern, 50, 20.0)).kind == "gaussian"
    assert estimate_noise(record(pattern, 1e5, 10.0)).kind == "poisson+gaussian"
    # a read noise of a twentieth of a photon is negligible, but its negatives still forbid
    # the Poisson loss, which would clip them
    faint = estimate_noise(record(pattern, 500, 0.05))
    assert faint.kind == "poisson" and recommend_loss(faint) == "amplitude"


def test_masked_pixels_are_ignored(pattern, beamstop_and_hot_pixels):
    frames = record(pattern, 500, 10.0)
    mask, spoilt = beamstop_and_hot_pixels(frames)
    assert estimate_noise(spoilt, mask) == estimate_noise(frames, mask)
    # a mask per frame is taken too
    per_frame = np.broadcast_to(mask, frames.shape)
    assert estimate_noise(spoilt, per_frame) == estimate_noise(frames, mask)


def test_frames_without_signal_or_noise():
    estimate = estimate_noise(np.zeros((3, 16, 16), np.float32))
    assert estimate.read_noise_counts == 0.0 and not estimate.gain_measured
    assert estimate.zero_fraction == 1.0 and not estimate.clipped
    assert recommend_loss(estimate) == "amplitude"


def test_scaled_photon_counts_are_not_taken_for_clipped_noise(pattern):
    """Photon counts times a flat field: zeros and no negatives, as in clipped data, but no
    value near zero, so no read noise."""
    flat = np.random.default_rng(1).uniform(0.8, 1.2, pattern.shape[1:])
    estimate = estimate_noise(record(pattern, 500) * flat)
    assert estimate.read_noise_counts == 0.0 and not estimate.clipped
    assert estimate.kind == "poisson" and not estimate.gain_measured


def test_offset_metadata_and_summary():
    estimate = NoiseEstimate(10.0, 2.5, True, False, 0.3, 0.0, 100, 40.0, "poisson+gaussian")
    assert estimate.read_noise_photons == 4.0
    assert estimate.loss_offset_counts == pytest.approx(0.375 * 2.5 + 100 / 2.5)
    metadata = estimate.to_metadata()
    assert json.loads(json.dumps(metadata)) == metadata
    assert metadata["counts_per_photon"] == 2.5 and metadata["kind"] == "poisson+gaussian"
    assert estimate.summary() == (
        "read noise 10 counts; 2.5 counts/photon (measured); poisson+gaussian"
    )
    one = NoiseEstimate(3.0, 1.0, False, False, 0.3, 0.0, 100, 40.0, "poisson+gaussian")
    assert one.loss_offset_counts == pytest.approx(0.375 + 9.0)  # the engine's offset


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        estimate_noise(np.zeros((16, 16)))
    with pytest.raises(ValueError, match=r"\(0, 16, 16\)"):
        estimate_noise(np.zeros((0, 16, 16)))
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        estimate_noise(np.zeros((2, 16, 16)), np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="no valid pixel"):
        estimate_noise(np.zeros((2, 16, 16)), np.zeros((16, 16), bool))


# -- what an engine uses: noise_model, and the engines that fit it --------------------------


def test_auto_picks_the_loss_from_the_data(pattern):
    counts = record(pattern, 500)
    noisy = record(pattern, 500, sigma=10)
    assert noise_model(counts, None, read_noise_counts=None, loss="auto").loss == "poisson"
    model = noise_model(noisy, None, read_noise_counts=None, loss="auto")
    assert model.loss == "amplitude" and model.read_noise_source == "estimated"
    assert model.read_noise_counts == pytest.approx(10, rel=0.1)
    assert model.offset_counts == pytest.approx(0.375 + model.read_noise_counts**2)
    assert model.warnings == ()


def test_a_poisson_loss_on_negative_counts_is_said(pattern, caplog):
    """A profile's Poisson loss is kept (the user chose it) but never silently: the warning
    names the loss, the negative counts and the fix, in the log and in the metadata."""
    noisy = record(pattern, 500, sigma=10)
    with caplog.at_level("WARNING", logger="ptystream.engine.noise"):
        model = noise_model(noisy, None, read_noise_counts=None, loss="poisson")
    assert model.loss == "poisson"
    (warning,) = model.warnings
    assert "engine.loss is poisson" in warning and "negative" in warning
    assert "loss: auto or amplitude" in warning
    assert warning in caplog.text
    assert model.to_metadata()["warnings"] == [warning]


def test_a_profile_read_noise_far_from_the_data_is_said_but_used(pattern):
    noisy = record(pattern, 500, sigma=10)
    model = noise_model(noisy, None, read_noise_counts=0.0, loss="amplitude")
    assert model.read_noise_counts == 0.0 and model.read_noise_source == "profile"
    (warning,) = model.warnings
    assert "instrument.read_noise_counts is 0" in warning and "leave it out" in warning
    close = noise_model(noisy, None, read_noise_counts=11.0, loss="amplitude")
    assert close.warnings == ()  # within a factor of 2: the profile's value stands, unremarked
    assert NoiseModel.from_metadata(json.loads(json.dumps(model.to_metadata()))) == model


@pytest.mark.parametrize("algorithm", ["ad", "mpie"])
@pytest.mark.parametrize(("sigma", "loss"), [(0.0, "poisson"), (10.0, "amplitude")])
def test_engines_fit_the_noise_model_to_their_first_frames(algorithm, sigma, loss):
    """Default settings (loss auto, no read noise given): the engine estimates the read noise,
    uses it in the loss's offset, picks the loss (the PIE engines' projection is always the
    amplitude's), reports both in the estimate, and keeps them across a checkpoint."""
    problem = far_field_problem(64, 25, peak_counts=500.0, read_noise_counts=sigma, seed=4)
    settings = EngineSettings.model_validate({"algorithm": algorithm})
    setup = EngineSetup(problem.geometry, settings, problem.plan)
    engine = make_engine(setup)
    engine.add_frames(problem.frames, problem.positions_m)
    noise = engine.estimate().noise
    assert noise["read_noise_source"] == "estimated"
    assert noise["read_noise_counts"] == pytest.approx(sigma, abs=0.1 + 0.1 * sigma)
    assert noise["loss"] == (loss if algorithm == "ad" else "amplitude")
    engine.step(3)
    restored = make_engine(setup)
    restored.restore(engine.snapshot())
    assert restored.estimate().noise == noise
    assert restored.step(2) == engine.step(2)  # the same loss, bit for bit


def test_the_ad_loss_follows_the_choice():
    """On Poisson counts the AD engine's ``auto`` loss is the Poisson deviance, not the amplitude
    misfit: its first-step loss equals that of an engine told ``poisson``. Also when the step
    was compiled before the frames came (``warm_up``, as the live pipeline does): the amplitude
    loss's step then, the Poisson deviance's once the frames chose it, never a blend."""
    problem = far_field_problem(64, 25, peak_counts=500.0, read_noise_counts=0.0, seed=5)
    losses = {}
    for loss in ("auto", "auto warmed up", "poisson", "amplitude"):
        settings = EngineSettings.model_validate({"loss": loss.split()[0], "seed": 1})
        engine = make_engine(EngineSetup(problem.geometry, settings, problem.plan))
        if loss == "auto warmed up":
            engine.warm_up()
            assert set(engine._step_fns) == {LossKind.AMPLITUDE}
        engine.add_frames(problem.frames, problem.positions_m)
        losses[loss] = engine.step(1)
        if loss == "auto warmed up":
            assert set(engine._step_fns) == {LossKind.AMPLITUDE, LossKind.POISSON}
    assert losses["auto"] == losses["auto warmed up"] == losses["poisson"]
    assert losses["poisson"] != losses["amplitude"]
