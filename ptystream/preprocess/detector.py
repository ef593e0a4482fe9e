"""Detector frames to the frames the engine sees: dark, flat, bad pixels, window, binning.

A :class:`Preprocessor` is built from a profile's ``preprocess`` section, fitted once on the
first frames of a scan (the detector's shape, the pattern's centre, pixels saturated, hot or
dead in them), then applied to every frame. Live, offline and in reprocessing the same object
does the same thing, on the worker (never on the RunEngine's thread). Numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ptystream.config import InstrumentSettings, PreprocessSettings, Profile
from ptystream.preprocess.images import read_image
from ptystream.types import Geometry

__all__ = ["FIT_FRAMES", "PreprocessError", "Prepared", "Preprocessor"]

#: Counts a dead pixel's neighbours collect over the first frames (or a count of spread in
#: each) before a pixel that never changes is called dead: fewer, and a pixel may just have
#: seen no photon (P(no photon in 15 expected) = 3e-7).
_DEAD_COUNTS = 15.0
#: Share of the mean pattern's peak (above its median) that counts towards its centre of mass.
_CENTRE_LEVEL = 0.1
#: Frames :meth:`Preprocessor.fit` learns from: the scan's first ones, however many more it
#: is given, so that live (where the first batch's size depends on timing) and reprocessing fit
#: the same frames and cut the same window. Fewer move the centre of mass with the sample
#: (20 frames of the demo put it 1.2 px off the 90 frames' centre, 50 frames 0.05 px).
FIT_FRAMES = 50
#: Share of the window that may lie beyond the detector before it is said.
_OUTSIDE_WARN = 0.1
#: The eight neighbours of a pixel.
_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)


class PreprocessError(ValueError):
    """Frames, or calibration images, that do not fit the detector or the profile; the message
    names the shapes and the profile key to change."""


@dataclass(frozen=True)
class Prepared:
    """Frames as the engine sees them: ``frames`` ``(n, N, N)`` float32 counts, masked pixels
    0; ``saturated[i]`` True where frame i had more saturated pixels outside the mask than
    ``ingest.max_saturated_px`` (its caller rejects it)."""

    frames: np.ndarray
    saturated: np.ndarray


class Preprocessor:
    """One scan's detector pre-processing (see :class:`~ptystream.config.PreprocessSettings`).

    Parameters
    ----------
    settings : the profile's ``preprocess`` section.
    dark, flat : images of the detector's shape (counts; the flat in any units), or None.
    bad : bool image, True where a pixel is bad (the mask file), or None.
    detector_px : the detector's side when the profile gives it (``instrument.frame_px``);
        frames of another shape are refused at :meth:`fit`.
    saturation_counts, max_saturated_px : pixels at or above ``saturation_counts`` in the
        frames :meth:`fit` sees are masked; later frames with more than ``max_saturated_px``
        others are flagged in :attr:`Prepared.saturated`.
    sources : where the dark, flat and mask came from, for the report.
    """

    def __init__(
        self,
        settings: PreprocessSettings,
        *,
        dark: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        bad: np.ndarray | None = None,
        detector_px: int | None = None,
        saturation_counts: float | None = None,
        max_saturated_px: int = 0,
        sources: dict[str, str] | None = None,
    ):
        self.settings = settings
        self._dark = dark
        self._flat = flat
        self._bad = bad
        self._detector_px = detector_px
        self._saturation = saturation_counts
        self._max_saturated = max_saturated_px
        self.sources = dict(sources or {})
        self.warnings: list[str] = []
        self._shape: tuple[int, int] | None = None
        self._valid_detector: np.ndarray | None = None
        self._gain: np.ndarray | None = None
        self._start: tuple[int, int] = (0, 0)
        self._centre: tuple[float, float] | None = None
        self._fit_frames = 0
        self._masked: dict[str, int] = {}
        self.valid_pixels: np.ndarray | None = None

    @classmethod
    def from_profile(
        cls, profile: Profile, *, base: Path | None = None, of_file: bool = False
    ) -> Preprocessor:
        """The profile's pre-processing with its dark, flat and mask files read (relative paths
        from ``base``, default the working directory). A ``dark_stream``'s frames come later,
        through :meth:`set_dark`. ``of_file``: the frames come from a scan file, which says
        what its detector is (``instrument.frame_px``, a simulated detector's, is not
        checked)."""
        prep = profile.preprocess
        images: dict[str, np.ndarray | None] = {}
        sources: dict[str, str] = {}
        for name in ("dark", "flat", "mask"):
            spec = getattr(prep, f"{name}_file")
            if spec is None:
                images[name] = None
                continue
            if base is not None and not Path(str(spec).partition(":/")[0]).is_absolute():
                spec = base / spec
            images[name] = read_image(spec, f"preprocess.{name}_file")
            sources[name] = str(spec)
        if prep.dark_stream is not None:
            sources["dark"] = f"stream {prep.dark_stream!r}"
        return cls(
            prep,
            dark=images["dark"],
            flat=images["flat"],
            bad=None if images["mask"] is None else images["mask"] != 0,
            detector_px=None if of_file else profile.instrument.frame_px,
            saturation_counts=profile.instrument.saturation_counts,
            max_saturated_px=profile.ingest.max_saturated_px,
            sources=sources,
        )

    def unfitted(self) -> Preprocessor:
        """A fresh copy (the same settings and calibration images) for the next scan."""
        return Preprocessor(
            self.settings,
            dark=None if self.settings.dark_stream is not None else self._dark,
            flat=self._flat,
            bad=self._bad,
            detector_px=self._detector_px,
            saturation_counts=self._saturation,
            max_saturated_px=self._max_saturated,
            sources=self.sources,
        )

    # -- set-up -------------------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self.valid_pixels is not None

    def mask_also(self, bad: np.ndarray, source: str) -> None:
        """Mask the pixels where ``bad`` is True as well (e.g. a scan file's own mask)."""
        if not bad.any():
            return
        self._bad = bad if self._bad is None else self._bad | bad
        self.sources["mask"] = ", ".join(filter(None, (self.sources.get("mask"), source)))

    @property
    def frames_to_fit(self) -> int:
        """Frames :meth:`fit` wants before it is called: :data:`FIT_FRAMES` where it learns
        from them (the centre of mass of a window, hot, dead or saturated pixels), else 1."""
        prep = self.settings
        learns = (
            (prep.size_px is not None and prep.centre == "centre_of_mass")
            or prep.hot_pixel_sigma is not None
            or prep.dead_pixels
            or self._saturation is not None
        )
        return FIT_FRAMES if learns else 1

    @property
    def needs_dark(self) -> bool:
        """True while the dark frames of a ``dark_stream`` have not been given."""
        return self.settings.dark_stream is not None and self._dark is None

    def set_dark(self, frames: np.ndarray) -> None:
        """The dark frames of a ``dark_stream`` (``(n, H, W)`` or one image), averaged."""
        if self.fitted:
            raise PreprocessError("dark frames arrived after the first frames were processed")
        frames = np.asarray(frames, dtype=np.float64)
        self._dark = frames.mean(axis=0) if frames.ndim == 3 else frames

    @property
    def frame_px(self) -> int:
        """Side of the frames the engine sees (after :meth:`fit`)."""
        self._need_fit()
        return self.valid_pixels.shape[-1]

    def geometry(self, instrument: InstrumentSettings) -> Geometry:
        """The engine's geometry: the instrument's, with this window's size and binned pixel."""
        return instrument.geometry(self.frame_px, binning=self.settings.bin)

    def fit(self, frames: np.ndarray) -> None:
        """Learn the detector from the scan's first frames ``(n, H, W)`` (raw counts; only the
        first :data:`FIT_FRAMES` are used): its shape, the pixels to mask and the window's
        centre."""
        frames = np.asarray(frames)
        if frames.ndim != 3 or 0 in frames.shape:
            raise PreprocessError(f"frames of shape {frames.shape[1:]}, not images")
        frames = frames[:FIT_FRAMES]
        self._fit_frames = len(frames)
        shape = frames.shape[1:]
        self._check_shape(shape)
        self._shape = shape
        bad = self._calibration(shape)
        corrected = self._corrected(frames)
        if self._saturation is not None:
            self._add("saturated", bad, (frames >= self._saturation).any(axis=0))
        if self.settings.hot_pixel_sigma is not None:
            self._add("hot", bad, self._hot(corrected, bad))
        if self.settings.dead_pixels:
            self._add("dead", bad, self._dead(corrected, bad))
        self._valid_detector = ~bad
        size = self.settings.size_px or shape[0]
        self._centre = self._find_centre(corrected, bad)
        self._start = self._window_start(self._centre, size)
        inside = self._cut(self._valid_detector[None].astype(np.float32), size)[0] > 0.5
        outside = int(np.count_nonzero(self._cut(np.ones((1, *shape), np.float32), size)[0] == 0))
        if outside:
            self._masked["outside the detector"] = outside
            if outside > _OUTSIDE_WARN * size * size:
                self.warnings.append(
                    f"preprocess: the {size} px window around the centre "
                    f"({self._centre[0]:.1f}, {self._centre[1]:.1f}) reaches beyond the "
                    f"{shape[0]} x {shape[1]} detector: {outside} of its pixels are masked "
                    "(set preprocess.size_px smaller, or preprocess.centre)"
                )
        self.valid_pixels = self._binned_valid(inside)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        prep = self.settings
        h, w = shape
        if self._detector_px is not None and shape != (self._detector_px, self._detector_px):
            raise PreprocessError(
                f"the detector's frames are {h} x {w}, instrument.frame_px is "
                f"{self._detector_px} (leave instrument.frame_px out: the frame size comes from "
                "the detector and preprocess.size_px)"
            )
        if prep.size_px is None:
            if h != w:
                raise PreprocessError(
                    f"frames are {h} x {w}, not square (set preprocess.size_px to the side of "
                    "the window to reconstruct, centred on the pattern)"
                )
            if h % prep.bin:
                raise PreprocessError(
                    f"frames are {h} x {w}, not a multiple of preprocess.bin ({prep.bin}) "
                    "(set preprocess.size_px)"
                )
        elif prep.size_px > max(h, w):
            raise PreprocessError(
                f"preprocess.size_px ({prep.size_px}) is larger than the {h} x {w} detector"
            )
        for name, image in (("dark", self._dark), ("flat", self._flat), ("mask", self._bad)):
            if image is not None and image.shape != shape:
                where = self.sources.get(name, name)
                raise PreprocessError(
                    f"the {name} ({where}) is {image.shape[0]} x {image.shape[1]}, the "
                    f"detector's frames are {h} x {w}"
                )

    def _calibration(self, shape: tuple[int, int]) -> np.ndarray:
        """The bad-pixel image from the mask file and the flat; the flat's gain normalised."""
        bad = np.zeros(shape, dtype=bool)
        if self._bad is not None:
            self._add("mask file", bad, self._bad)
        if self._flat is not None:
            usable = np.isfinite(self._flat) & (self._flat > 0)
            self._add("flat not positive", bad, ~usable)
            gain = np.where(usable, self._flat, 1.0)
            self._gain = (gain / gain[usable & ~bad].mean()).astype(np.float32)
        return bad

    def _add(self, reason: str, bad: np.ndarray, more: np.ndarray) -> None:
        new = more & ~bad
        if new.any():
            self._masked[reason] = int(np.count_nonzero(new))
        bad |= more

    # -- the searches on the first frames ----------------------------------------------------

    def _hot(self, corrected: np.ndarray, bad: np.ndarray) -> np.ndarray:
        """Pixels above all eight neighbours in their mean over the frames, or in their spread
        (a hot pixel's dark current has shot noise, which a dark subtracted leaves), by more
        than ``hot_pixel_sigma`` standard errors of that mean or spread (from the neighbours'
        variance, at least one count)."""
        n, k = len(corrected), self.settings.hot_pixel_sigma
        mean, spread = corrected.mean(axis=0), corrected.std(axis=0)
        sigma = np.sqrt(np.maximum(ndimage.median_filter(spread**2, footprint=_RING), 0.0) + 1.0)
        above = [
            value - ndimage.maximum_filter(np.where(bad, -np.inf, value), footprint=_RING)
            for value in (mean, spread)
        ]
        hot = (above[0] > k * sigma / np.sqrt(n)) | (above[1] > k * sigma / np.sqrt(2 * n))
        return ~bad & hot

    def _dead(self, corrected: np.ndarray, bad: np.ndarray) -> np.ndarray:
        """Pixels constant over the frames where their neighbours vary or see light."""
        near_spread = ndimage.median_filter(corrected.std(axis=0), footprint=_RING)
        near_counts = ndimage.median_filter(corrected.mean(axis=0), footprint=_RING)
        lit = (near_spread >= 1.0) | (near_counts * len(corrected) >= _DEAD_COUNTS)
        return ~bad & (np.ptp(corrected, axis=0) == 0) & lit

    def _find_centre(self, corrected: np.ndarray, bad: np.ndarray) -> tuple[float, float]:
        centre = self.settings.centre
        h, w = corrected.shape[1:]
        if self.settings.size_px is None or centre == "detector":
            return float(h // 2), float(w // 2)
        if centre != "centre_of_mass":
            return float(centre[0]), float(centre[1])
        # a 3 x 3 median keeps single bright pixels (hot, unmasked) from pulling the centre;
        # below a tenth of the peak above the background, only noise and the dark are left
        mean = ndimage.median_filter(np.where(bad, 0.0, corrected.mean(axis=0)), size=3)
        weight = np.clip(mean - np.median(mean), 0.0, None)
        weight[weight < _CENTRE_LEVEL * weight.max()] = 0.0
        if not weight.sum() > 0:
            raise PreprocessError(
                "the first frames' mean pattern is flat: its centre of mass is undefined (set "
                "preprocess.centre to [y, x] or detector)"
            )
        y, x = ndimage.center_of_mass(weight)
        return float(y), float(x)

    def _window_start(self, centre: tuple[float, float], size: int) -> tuple[int, int]:
        """The window's first detector pixel along y and x, so that the centre falls in the
        middle of the binned pixel ``N // 2`` (zero frequency, as the engine's frames hold it)."""
        b = self.settings.bin
        half = (size // b) // 2 * b + (b - 1) / 2
        if self.settings.size_px is None:
            return 0, 0
        return int(round(centre[0] - half)), int(round(centre[1] - half))

    # -- applying ------------------------------------------------------------------------------

    def apply(self, frames: np.ndarray) -> Prepared:
        """Frames ``(n, H, W)`` of the detector (raw counts) as the engine sees them."""
        self._need_fit()
        frames = np.asarray(frames)
        if frames.shape[1:] != self._shape:
            raise PreprocessError(f"frames of {frames.shape[1:]}, the detector's are {self._shape}")
        if self._saturation is not None:
            over = (frames >= self._saturation) & self._valid_detector
            saturated = over.reshape(len(frames), -1).sum(axis=1) > self._max_saturated
        else:
            saturated = np.zeros(len(frames), dtype=bool)
        corrected = np.where(self._valid_detector, self._corrected(frames), 0.0)
        size = self.settings.size_px or self._shape[0]
        window = self._cut(corrected.astype(np.float32, copy=False), size)
        return Prepared(self._binned(window) * self.valid_pixels, saturated)

    def _corrected(self, frames: np.ndarray) -> np.ndarray:
        out = frames.astype(np.float32)
        if self._dark is not None:
            out -= self._dark.astype(np.float32)
        if self._gain is not None:
            out /= self._gain
        return out

    def _cut(self, frames: np.ndarray, size: int) -> np.ndarray:
        """The ``size`` square window at :attr:`_start` (zeros beyond the detector)."""
        (y0, x0), (h, w) = self._start, frames.shape[1:]
        out = np.zeros((len(frames), size, size), dtype=frames.dtype)
        ys, xs = slice(max(y0, 0), min(y0 + size, h)), slice(max(x0, 0), min(x0 + size, w))
        if ys.start < ys.stop and xs.start < xs.stop:
            out[:, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = frames[:, ys, xs]
        return out

    def _binned(self, window: np.ndarray) -> np.ndarray:
        b = self.settings.bin
        if b == 1:
            return window
        n, size = len(window), window.shape[-1] // b
        return window.reshape(n, size, b, size, b).sum(axis=(2, 4))

    def _binned_valid(self, inside: np.ndarray) -> np.ndarray:
        b = self.settings.bin
        size = inside.shape[-1] // b
        return inside.reshape(size, b, size, b).all(axis=(1, 3))

    def _need_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError("Preprocessor.fit has not seen the first frames yet")

    # -- what it did ---------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """What was done, for a result's metadata (``preprocess``): the detector's shape, the
        window (first pixel, size, centre and how it was found), the binning, the frame size
        the engine saw, the dark/flat/mask sources and the pixels masked by reason."""
        self._need_fit()
        prep = self.settings
        return {
            "detector_shape": list(self._shape),
            "window": {
                "start_px": list(self._start),
                "size_px": prep.size_px or self._shape[0],
                "centre_px": [round(c, 2) for c in self._centre],
                "centre_from": prep.centre if isinstance(prep.centre, str) else "profile",
            },
            "bin": prep.bin,
            "frame_px": self.frame_px,
            "fit_frames": self._fit_frames,
            "sources": self.sources,
            "masked_px": dict(self._masked),
            "valid_px": int(np.count_nonzero(self.valid_pixels)),
            "warnings": list(self.warnings),
        }
