"""The object canvas shared by every engine (numpy only): where each probe window sits.

Conventions: a canvas pixel ``[r, c]`` covers the stage position ``origin_m + (r, c) * dx``;
a probe centred at the stage position ``p`` (metres) covers the window whose top-left corner is
``(p - origin_m) / dx - N / 2`` object pixels (integer part: the window; fractional part: a
sub-pixel shift of the probe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptystream.engine.initial import check_positions
from ptystream.types import ScanPlan

__all__ = [
    "GROW_CHUNK_PX",
    "Canvas",
    "canvas_for",
    "corners",
    "growth",
    "place",
    "plan_canvas",
    "summed_windows",
]

#: Smallest growth of the canvas on any side: growing forces a recompile, so grow rarely.
GROW_CHUNK_PX = 64


@dataclass
class Canvas:
    """Object canvas: ``shape`` in pixels, ``origin_m`` = stage position (y, x) of pixel [0, 0]."""

    shape: tuple[int, int]
    origin_m: np.ndarray


def canvas_for(lo_m: np.ndarray, hi_m: np.ndarray, n: int, dx_m: float, margin_px: int) -> Canvas:
    """Canvas holding every ``n``-pixel probe window for positions in ``[lo_m, hi_m]`` (metres),
    plus ``margin_px`` object pixels of margin."""
    pad = n / 2 + margin_px + 1
    lo_px = np.floor(np.asarray(lo_m) / dx_m - pad)
    hi_px = np.ceil(np.asarray(hi_m) / dx_m + pad)
    shape = tuple(int(v) for v in hi_px - lo_px)
    return Canvas(shape=(shape[0], shape[1]), origin_m=lo_px * dx_m)


def plan_canvas(plan: ScanPlan, n: int, dx_m: float, margin_px: int) -> Canvas | None:
    """Canvas for the planned extent of a scan, or None when the extent is unknown.

    Raises ValueError (:func:`~ptystream.engine.initial.check_positions`) for an extent that
    cannot be one scan (micrometres given as metres, say), before anything is allocated."""
    if plan.extent_m is None:
        return None
    (y0, y1), (x0, x1) = plan.extent_m
    check_positions(np.array([[y0, x0], [y1, x1]], dtype=np.float64), n, dx_m)
    return canvas_for(np.array([y0, x0]), np.array([y1, x1]), n, dx_m, margin_px)


def corners(
    canvas: Canvas, positions_m: np.ndarray, n: int, dx_m: float, subpixel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left pixels ``(k, 2)`` int32 of the windows and their fractional parts ``(k, 2)``
    float32 (zero when ``subpixel`` is False: positions are rounded to whole pixels)."""
    corner = (np.asarray(positions_m) - canvas.origin_m) / dx_m - n / 2
    if not subpixel:
        corner = np.round(corner)
    top_left = np.floor(corner)
    return top_left.astype(np.int32), (corner - top_left).astype(np.float32)


def growth(
    canvas: Canvas, top_left: np.ndarray, n: int, dx_m: float
) -> tuple[Canvas, np.ndarray] | None:
    """The grown canvas and the pixels ``(dy, dx)`` added before the old content, when some
    window ``top_left`` ``(k, 2)`` falls outside ``canvas``; None when all fit.

    Each side that must grow grows by at least :data:`GROW_CHUNK_PX`, so a scan that wanders
    off its plan recompiles rarely.
    """
    h, w = canvas.shape
    need_lo = np.maximum(-top_left.min(axis=0), 0)
    need_hi = np.maximum(top_left.max(axis=0) + n + 1 - np.array([h, w]), 0)
    if not (need_lo.any() or need_hi.any()):
        return None
    grow_lo = np.where(need_lo > 0, np.maximum(need_lo, GROW_CHUNK_PX), 0).astype(int)
    grow_hi = np.where(need_hi > 0, np.maximum(need_hi, GROW_CHUNK_PX), 0).astype(int)
    shape = (int(h + grow_lo[0] + grow_hi[0]), int(w + grow_lo[1] + grow_hi[1]))
    return Canvas(shape, canvas.origin_m - grow_lo * dx_m), grow_lo


def place(old: np.ndarray, shape: tuple[int, int], offset: tuple[int, int], fill) -> np.ndarray:
    """``old`` copied into a new array of ``shape`` (filled with ``fill``) at ``offset``."""
    new = np.full(shape, fill, old.dtype)
    oy, ox = offset
    hy, hx = min(old.shape[0], shape[0] - oy), min(old.shape[1], shape[1] - ox)
    new[oy : oy + hy, ox : ox + hx] = old[:hy, :hx]
    return new


def summed_windows(
    intensity: np.ndarray, corners: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """``intensity`` added at every window of a ``shape`` canvas, float32.

    The same as ``for r, c in corners: out[r : r + m, c : c + n] += intensity`` for a
    non-negative ``(m, n)`` ``intensity`` and integer top-left ``corners`` ``(k, 2)`` (every
    window inside the canvas), computed as one convolution of the corners' hit counts with the
    intensity, by FFT in float64. On 4000 windows of 64² on a 591 x 592 canvas it takes ~9 ms
    against ~20 ms for the loop; on the demo's 200 windows on 195 x 196, about the same as the
    loop (~1 ms). It agrees with the loop to ~1e-15 of the maximum, and is 0 exactly where the
    loop's is: where no window's intensity is nonzero.
    """
    import scipy.fft

    h, w = shape
    m, n = intensity.shape
    out = np.zeros(shape, np.float32)
    corners = np.asarray(corners, np.int64).reshape(-1, 2)
    positive = intensity[intensity > 0]
    if len(corners) == 0 or positive.size == 0:
        return out
    rows, cols = corners[:, 0], corners[:, 1]
    outside = (rows < 0) | (cols < 0) | (rows > h - m) | (cols > w - n)
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} windows of {m} x {n} px leave the {h} x {w} canvas, "
            f"e.g. at {corners[outside][0].tolist()}"
        )
    # Sizes with small prime factors; the circular convolution cannot wrap around, as every
    # window ends inside the canvas.
    fh, fw = scipy.fft.next_fast_len(h, real=True), scipy.fft.next_fast_len(w, real=True)
    hits = np.bincount(rows * fw + cols, minlength=fh * fw).reshape(fh, fw).astype(np.float64)
    hits_spectrum = scipy.fft.rfft2(hits)

    def convolved(window: np.ndarray) -> np.ndarray:
        # The window's spectrum: along x on its m rows only, then along y, padded.
        along_x = scipy.fft.rfft(window.astype(np.float64), n=fw, axis=1)
        spectrum = scipy.fft.fft(along_x, n=fh, axis=0)
        spectrum *= hits_spectrum
        return scipy.fft.irfft2(spectrum, s=(fh, fw))[:h, :w]

    total = convolved(intensity)
    # Rounding leaves ~1e-16 of the maximum where nothing shines. Lit pixels (some window's
    # intensity is nonzero there) are found exactly, in integers: by box sums of the corners
    # when the intensity has no zeros, else by the same convolution of its support, rounded
    # (counts of at most k, off by ~1e-12). A lit pixel's sum is at least the smallest nonzero
    # intensity.
    if positive.size == intensity.size:
        cover = np.zeros((h + m, w + n), np.int32)
        cover[rows + m, cols + n] = 1
        cover = np.cumsum(np.cumsum(cover, axis=0, dtype=np.int32), axis=1, dtype=np.int32)
        lit = (cover[m:, n:] - cover[:-m, n:] - cover[m:, :-n] + cover[:-m, :-n]) > 0
    else:
        lit = convolved(intensity > 0) > 0.5
    np.maximum(total, float(positive.min()), out=total)
    np.copyto(out, total, where=lit, casting="same_kind")
    return out
