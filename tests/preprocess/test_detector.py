"""Detector pre-processing against a simulated camera whose truth is known: a 96 x 112 camera
with the pattern's centre off the middle, dark current, dead and hot pixels, and a 64 px
window to reconstruct. Numbers checked: the window lands on the true centre, the dark is
subtracted to within the read noise, every dead and hot pixel (and no other) is masked,
binning sums counts, saturation masks and rejects."""

import numpy as np
import pytest

from ptystream.config import PreprocessSettings, load_profile
from ptystream.preprocess import FIT_FRAMES, PreprocessError, Preprocessor
from ptystream.sim.detector import RawDetector

N = 64
CENTRE = (41, 63)  # off the 96 x 112 camera's middle (48, 56)


def window_patterns(rng, n_frames=30, peak=400.0):
    """Far-field-like counts ``(n, N, N)``: a broad central disc with speckle, zero frequency at
    N // 2, wide enough (several pixels) that no true feature is one pixel across."""
    y, x = np.mgrid[:N, :N] - N // 2
    envelope = peak * np.exp(-(x**2 + y**2) / (2 * 6.0**2))
    speckle = rng.gamma(4.0, 0.25, (n_frames, N // 2, N // 2)).repeat(2, 1).repeat(2, 2)
    return rng.poisson(envelope * speckle).astype(np.float32)


@pytest.fixture
def camera():
    rng = np.random.default_rng(7)
    raw = RawDetector.make((96, 112), CENTRE, rng=rng)
    patterns = window_patterns(rng)
    return raw, patterns, np.stack([raw.record(p) for p in patterns])


def settings(**kw):
    return PreprocessSettings(**({"size_px": N, "hot_pixel_sigma": 8.0, "dead_pixels": True} | kw))


def test_window_centred_dark_subtracted_and_bad_pixels_masked(camera):
    raw, patterns, frames = camera
    darks = np.stack([raw.dark() for _ in range(20)])
    prep = Preprocessor(settings(), dark=darks.mean(axis=0))
    prep.fit(frames[:20])
    report = prep.report()
    assert report["window"]["start_px"] == [CENTRE[0] - N // 2, CENTRE[1] - N // 2]
    assert np.allclose(report["window"]["centre_px"], CENTRE, atol=1.0)
    assert report["frame_px"] == N and report["detector_shape"] == [96, 112]

    # the masked pixels are exactly the camera's dead and hot ones inside the window
    y0, x0 = report["window"]["start_px"]
    bad = (raw.dead | raw.hot)[y0 : y0 + N, x0 : x0 + N]
    assert bad.any()
    assert np.array_equal(~prep.valid_pixels, bad)
    assert report["masked_px"]["dead"] == raw.dead.sum()
    assert report["masked_px"]["hot"] == raw.hot.sum()

    out = prep.apply(frames).frames
    assert out.shape == (len(frames), N, N) and out.dtype == np.float32
    good = prep.valid_pixels
    # dark subtracted: what is left is the pattern plus read noise (2 counts, and the dark
    # frames' mean carries 2 / sqrt(20))
    residual = (out - patterns)[:, good]
    assert abs(residual.mean()) < 0.1 and residual.std() < 2.3
    assert (out[:, ~good] == 0).all()


def test_without_a_dark_the_offset_stays_and_the_centre_still_found(camera):
    _, _, frames = camera
    prep = Preprocessor(settings(dead_pixels=False, hot_pixel_sigma=None))
    prep.fit(frames[:20])
    assert np.allclose(prep.report()["window"]["centre_px"], CENTRE, atol=1.5)
    assert prep.apply(frames[:1]).frames[0][prep.valid_pixels].mean() > 90  # the dark is in


def test_a_centre_given_and_binning_sum_counts(camera):
    raw, patterns, frames = camera
    prep = Preprocessor(settings(centre=CENTRE, bin=2, size_px=N), dark=raw.dark_counts)
    prep.fit(frames[:20])
    out = prep.apply(frames).frames
    assert out.shape == (len(frames), N // 2, N // 2)
    # the binned pixel N // 2 holds the centre: it covers camera pixels 40-41 (or 41-42)
    y0, x0 = prep.report()["window"]["start_px"]
    assert y0 + N // 2 in (CENTRE[0] - 1, CENTRE[0]) and x0 + N // 2 in (CENTRE[1] - 1, CENTRE[1])
    on_camera = np.zeros((len(frames), 96, 112), np.float32)
    on_camera[
        :, CENTRE[0] - N // 2 : CENTRE[0] + N // 2, CENTRE[1] - N // 2 : CENTRE[1] + N // 2
    ] = patterns
    window = on_camera[:, y0 : y0 + N, x0 : x0 + N]
    block = window.reshape(len(frames), N // 2, 2, N // 2, 2).sum(axis=(2, 4))
    good = prep.valid_pixels
    # read noise sums over 4 pixels: sigma 4 counts per binned pixel, a mean |error| of 3.2
    assert np.abs(out - block)[:, good].mean() < 3.5
    # a binned pixel with a dead or hot part is masked; the others are not
    bad = (raw.dead | raw.hot)[y0 : y0 + N, x0 : x0 + N].reshape(N // 2, 2, N // 2, 2)
    assert np.array_equal(~good, bad.any(axis=(1, 3)))
    geometry = prep.geometry(load_profile("demo").instrument)
    assert geometry.frame_px == N // 2
    assert geometry.detector_pixel_size_m == pytest.approx(2 * 75e-6)


def test_saturated_pixels_masked_and_frames_beyond_rejected():
    frames = np.full((4, 8, 8), 10.0, dtype=np.float32)
    frames[:, 4, 4] = 100.0  # saturated in every frame: masked for the run
    prep = Preprocessor(PreprocessSettings(), saturation_counts=100.0, max_saturated_px=1)
    prep.fit(frames)
    assert not prep.valid_pixels[4, 4] and prep.report()["masked_px"] == {"saturated": 1}
    later = np.full((3, 8, 8), 10.0, dtype=np.float32)
    later[1, 0, :1] = 150.0  # one more saturated pixel: allowed
    later[2, 0, :2] = 150.0  # two: rejected
    assert prep.apply(later).saturated.tolist() == [False, False, True]


def test_files_mask_and_flat(tmp_path):
    frames = np.full((5, 16, 16), 50.0, dtype=np.float32)
    flat = np.ones((16, 16))
    flat[:, 8:] = 2.0  # the right half is twice as sensitive
    flat[0, 0] = 0.0  # not measured in the flat: masked
    frames[:, :, 8:] *= 2.0
    mask = np.zeros((16, 16), np.uint8)
    mask[3, 3] = 1
    np.save(tmp_path / "flat.npy", flat)
    import tifffile

    tifffile.imwrite(tmp_path / "mask.tif", mask)
    profile = load_profile("demo").model_copy(
        update={
            "preprocess": PreprocessSettings(
                flat_file=tmp_path / "flat.npy", mask_file=tmp_path / "mask.tif"
            ),
            "instrument": load_profile("demo").instrument.model_copy(update={"frame_px": 16}),
        }
    )
    prep = Preprocessor.from_profile(profile)
    prep.fit(frames)
    out = prep.apply(frames).frames[0]
    valid = prep.valid_pixels
    assert not valid[3, 3] and not valid[0, 0] and valid.sum() == 16 * 16 - 2
    assert np.allclose(out[valid], out[valid].mean())  # the flat evens the halves out
    assert prep.report()["masked_px"] == {"mask file": 1, "flat not positive": 1}


def test_shapes_that_do_not_fit_are_named():
    frames = np.zeros((2, 100, 120), np.float32)
    with pytest.raises(PreprocessError, match=r"frames are 100 x 120, not square \(set preprocess"):
        Preprocessor(PreprocessSettings()).fit(frames)
    with pytest.raises(PreprocessError, match=r"frames are 100 x 100, instrument.frame_px is 64"):
        Preprocessor(PreprocessSettings(), detector_px=64).fit(frames[:, :, :100])
    with pytest.raises(PreprocessError, match=r"the dark \(d.npy\) is 10 x 10"):
        prep = Preprocessor(
            PreprocessSettings(size_px=64), dark=np.zeros((10, 10)), sources={"dark": "d.npy"}
        )
        prep.fit(frames)


def test_a_window_beyond_the_camera_is_masked_and_said(camera):
    _, _, frames = camera
    prep = Preprocessor(settings(centre=(5, 56), dead_pixels=False, hot_pixel_sigma=None))
    prep.fit(frames[:20])
    outside = prep.report()["masked_px"]["outside the detector"]
    assert outside == (N // 2 - 5) * N
    assert not prep.valid_pixels[: N // 2 - 5].any() and prep.valid_pixels[N // 2 - 5 :].all()
    (warning,) = prep.warnings
    assert "reaches beyond the 96 x 112 detector" in warning


def test_the_fit_learns_from_the_first_fit_frames_only(camera):
    """Live, the first batch's size depends on timing; offline the whole scan is there. Both fit
    on the first FIT_FRAMES, so both cut the same window: frames beyond them, here with their
    pattern moved 6 px, change nothing."""
    raw, patterns, _ = camera
    rng = np.random.default_rng(3)
    moved = np.roll(window_patterns(rng, n_frames=FIT_FRAMES), (6, 6), axis=(1, 2))
    first = np.stack([raw.record(p) for p in window_patterns(rng, n_frames=FIT_FRAMES)])
    later = np.stack([raw.record(p) for p in moved])
    alone, more = Preprocessor(settings()), Preprocessor(settings())
    assert alone.frames_to_fit == FIT_FRAMES
    alone.fit(first)
    more.fit(np.concatenate([first, later]))
    assert more.report() == alone.report()
    assert more.report()["fit_frames"] == FIT_FRAMES
    # nothing learned from the frames (a centre given, no pixel search): nothing to wait for
    assert (
        Preprocessor(settings(centre=CENTRE, hot_pixel_sigma=None, dead_pixels=False)).frames_to_fit
        == 1
    )
