"""A short, fixed-probe trial reconstruction scored on frames it was not fitted to (numpy only).

Both start-up checks use it: the probe's defocus (:mod:`ptystream.engine.probe_search`: one
set of positions, many probes) and the orientation of the positions
(:mod:`ptystream.engine.orientation`: one probe, eight sets of positions).

1. The :data:`TRIAL_FRAMES` frames nearest the middle of the positions are taken; every
   :data:`HELD_OUT_EVERY`-th of them by distance from the middle (the most central first) is
   held out.
2. The probe is held fixed and a flat object is fitted to the other frames by
   :data:`TRIAL_PASSES` passes of rPIE (object step 1, alpha :data:`OBJECT_ALPHA`), whose
   modulus constraint is the amplitude loss's with the noise offset ``c``: the wave at the
   detector ``F`` becomes ``F sqrt(I + c) / sqrt(|F|^2 + c)``, so that pixels the read noise
   swamps hardly move the object.
3. The score is the amplitude misfit (the AD engine's, with the variance offset) of the
   held-out frames predicted from that object, over the bright pixels (where the mean pattern
   exceeds :data:`BRIGHT_FRACTION` of its maximum; elsewhere read noise is the same for every
   trial and adds only scatter).

A held-out frame is predicted only through the overlap with its neighbours, so only a probe
and positions that agree with the data make the neighbours' object consistent with it; the
misfit of the fitted frames themselves can be small for wrong ones (each frame fitted alone).
"""

from __future__ import annotations

import numpy as np

from ptystream import optics
from ptystream.types import NEAR_FIELD, Geometry

__all__ = ["HeldOutTrial", "nearest"]

#: Frames a trial uses (the nearest to the middle of the positions).
TRIAL_FRAMES = 20
#: Every this many of them (by distance from the middle) is held out to score the trial.
HELD_OUT_EVERY = 4
#: rPIE passes over the fitted frames per trial.
TRIAL_PASSES = 4
#: rPIE's alpha of the object update (1: ePIE).
OBJECT_ALPHA = 0.5
#: Pixels scored: where the mean pattern exceeds this fraction of its maximum.
BRIGHT_FRACTION = 0.01
#: Floor under predicted moduli (normalised units), as in the engines.
_FLOOR = 1e-12


class HeldOutTrial:
    """The held-out misfit of a fixed probe on a fixed set of frames and positions.

    Parameters
    ----------
    frames : ``(k, N, N)`` patterns in one unit (an engine's: counts over its normalisation):
        far field centred, near field as recorded.
    positions_m : ``(k, 2)`` probe positions ``(y, x)``, metres.
    mean_pattern : ``(N, N)`` the frames' mean in the same orientation, masked pixels filled;
        it chooses the bright pixels scored.
    geometry : far field and Fresnel are one FFT (a Fresnel probe must carry its Fresnel
        phase); near field propagates by angular spectrum over the propagation distance.
    valid : ``(N, N)`` True where a pixel was measured; None: all.
    offset : the amplitude loss's variance offset, in the frames' units.
    """

    def __init__(
        self,
        frames: np.ndarray,
        positions_m: np.ndarray,
        mean_pattern: np.ndarray,
        geometry: Geometry,
        valid: np.ndarray | None = None,
        offset: float = 0.0,
    ):
        n, dx = geometry.frame_px, geometry.object_pixel_size_m
        chosen = nearest(positions_m)
        held = np.arange(len(chosen)) % HELD_OUT_EVERY == 0
        corners = np.round((positions_m[chosen] - positions_m[chosen].min(axis=0)) / dx)
        self._corners = corners.astype(int)
        self._canvas = tuple(self._corners.max(axis=0) + n)
        self._near = geometry.propagation == NEAR_FIELD
        stored = self._stored(np.asarray(frames)[chosen])
        self._amplitude = np.sqrt(np.maximum(stored + offset, 0.0))
        self._fitted, self._held = np.flatnonzero(~held), np.flatnonzero(held)
        valid = np.ones((n, n), bool) if valid is None else np.asarray(valid, bool)
        self._valid = self._stored(valid)
        self._scored = self._stored(valid & (mean_pattern > BRIGHT_FRACTION * mean_pattern.max()))
        self._offset = offset
        self._n = n
        if self._near:
            kernel = optics.angular_spectrum_kernel(
                n, dx, geometry.wavelength_m, geometry.propagation_distance_m
            )
            self._kernel = np.fft.ifftshift(kernel).astype(np.complex64)  # zero frequency at [0, 0]
        self.positions_m = positions_m[chosen]
        """``(TRIAL_FRAMES, 2)`` the positions of the frames the trial uses, metres."""

    def score(self, probe: np.ndarray, passes: int = TRIAL_PASSES) -> float:
        """Held-out misfit (normalised units, mean over bright pixels and held-out frames)
        after fitting a flat object with ``probe`` ``(N, N)`` fixed by ``passes`` rPIE passes;
        lower is better. ``passes=0``: the flat object's misfit, what a trial must beat to say
        anything (a far-field probe built from the mean pattern predicts that pattern for
        every held-out frame, whatever its defocus)."""
        n = self._n
        power = probe.real**2 + probe.imag**2
        step = np.conj(probe) / ((1.0 - OBJECT_ALPHA) * power + OBJECT_ALPHA * power.max())
        obj = np.ones(self._canvas, np.complex64)
        rng = np.random.default_rng(0)  # the same order for every trial
        for _ in range(passes):
            for j in rng.permutation(self._fitted):
                r, c = self._corners[j]
                patch = obj[r : r + n, c : c + n]  # a view: updated in place
                wave = patch * probe
                field = self._forward(wave)
                # the modulus moved as the amplitude loss with offset c asks: where the counts
                # are well above the read noise, to the measured modulus; where not, hardly
                predicted = np.sqrt(field.real**2 + field.imag**2 + self._offset)
                target = field * (self._amplitude[j] / np.maximum(predicted, _FLOOR))
                target = np.where(self._valid, target, field)
                patch += step * (self._backward(target) - wave)
        misfit = []
        for j in self._held:
            r, c = self._corners[j]
            field = self._forward(obj[r : r + n, c : c + n] * probe)
            predicted = np.sqrt(field.real**2 + field.imag**2 + self._offset)
            misfit.append(np.mean((predicted - self._amplitude[j])[self._scored] ** 2))
        return float(np.mean(misfit))

    def _stored(self, image: np.ndarray) -> np.ndarray:
        """``image`` as the trial keeps frames: far field with zero frequency at [0, 0]."""
        return image if self._near else np.fft.ifftshift(image, axes=(-2, -1))

    def _forward(self, wave: np.ndarray) -> np.ndarray:
        spectrum = np.fft.fft2(wave, norm="ortho")
        return np.fft.ifft2(spectrum * self._kernel, norm="ortho") if self._near else spectrum

    def _backward(self, field: np.ndarray) -> np.ndarray:
        if self._near:
            field = np.fft.fft2(field, norm="ortho") * np.conj(self._kernel)
        return np.fft.ifft2(field, norm="ortho")


def nearest(positions_m: np.ndarray, count: int = TRIAL_FRAMES) -> np.ndarray:
    """Indices of the ``count`` positions nearest their median, nearest first."""
    distance = np.hypot(*(positions_m - np.median(positions_m, axis=0)).T)
    return np.argsort(distance, kind="stable")[:count]
