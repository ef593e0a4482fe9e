"""ePIE and mPIE: the classical baselines, in numpy (no TensorFlow).

- ePIE: Maiden and Rodenburg, Ultramicroscopy 109, 1256 (2009). After each position's modulus
  projection, ``O += beta_O conj(P) dpsi / max|P|^2`` and ``P += beta_P conj(O) dpsi / max|O|^2``.
- mPIE: Maiden, Johnson and Li, Optica 4, 736 (2017): the rPIE updates, whose denominators
  ``(1 - alpha)|P|^2 + alpha max|P|^2`` step further where the probe is weak, plus a momentum
  step every ``T`` position updates: ``v = eta v + (O - O_T)``, ``O += eta v``, ``O_T = O`` (and
  the same for the probe), where ``O_T`` is the object ``T`` updates ago.

Both engines also hold the probe at its initial power every ``T`` updates (once per pass by
default), a probe constraint without which both diverged on noisy data (see
:meth:`PIEEngine._momentum_step`).

The engines follow the conventions of the AD engine (:mod:`ptystream.engine.ad`), so that their
estimates can be compared pixel for pixel: frames are counts normalised by the maximum of the
first frames; far-field frames are centred diffraction patterns (stored ifftshifted here), near-
field ones images; positions are ``(y, x)`` in metres with the probe centred on them; the object
canvas comes from :mod:`ptystream.engine.canvas` (planned extent, grown in chunks and padded with
``1`` when a position falls outside); the reported loss is the AD engine's ``amplitude`` misfit.

One *iteration* is one position update (one frame): ``iteration``, ``step(n)``,
``settings.probe_start_step`` and ``settings.pie.momentum_every`` all count them.

Sub-pixel positions: with ``settings.subpixel`` (the default) the probe is Fourier-shifted by the
fractional part of each position, as in the simulator and the AD engine, and each probe update is
shifted back before it is applied (the probe is kept as its spectrum, so this costs two FFTs per
update on top of the propagation's two); otherwise positions are rounded to whole pixels, as in
the classic papers. With ``fresnel`` propagation the Fresnel phase is folded into the probe
before its shift, as in the AD engine, and taken off the probe the estimate reports.

Multislice (``settings.slices`` = S > 1) has the AD engine's physics
(:mod:`ptystream.engine.model`): slices ``s = 0 .. S-1`` along the beam, each its own canvas,
all under the same window; the probe is the wave entering slice 0, ``psi_{s+1} = AS(psi_s O_s,
gap_s)``, and the exit wave is ``psi_{S-1} O_{S-1}`` (``AS``: the angular spectrum, evanescent
waves cut). A ``fresnel`` geometry applies its phase to the exit wave (unshifted), not to the
probe. The update is 3PIE (Maiden, Humphry and Rodenburg, JOSA A 29, 1606 (2012)), with
mPIE's rPIE denominators per slice (as PtyLab's e3PIE): from the last slice back, with ``d_s``
the change the modulus projection (or the slice behind) asks of ``psi_s O_s``,

- ``O_s += beta_O conj(psi_s) d_s / ((1 - a_O)|psi_s|^2 + a_O max|psi_s|^2)``,
- ``psi_s' = psi_s + beta_P conj(O_s) d_s / ((1 - a_P)|O_s|^2 + a_P max|O_s|^2)`` (old ``O_s``),
- ``d_{s-1} = AS(psi_s', -gap_{s-1}) - psi_{s-1} O_{s-1}``,

and ``psi_0' - psi_0`` is the probe's update (from ``probe_start_step`` on; the slices' waves
are corrected from the first update). mPIE's momentum acts on every slice, and
``slice_regulariser`` filters the stack along z about once per pass, as in the AD engine. The
slice spacings are fixed (``train_slice_spacing`` is refused).
"""

from __future__ import annotations

import array
import collections
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ptystream import optics
from ptystream.config import Algorithm, EngineSettings, LossKind, SliceRegulariser
from ptystream.engine import canvas as canvases
from ptystream.engine import initial
from ptystream.engine.checkpoint import EngineState, read_state, write_state
from ptystream.engine.intake import FrameIntake
from ptystream.engine.schedule import PassBudget
from ptystream.engine.setup import EngineSetup
from ptystream.engine.slices import SliceStack, angular_spectrum_kernel
from ptystream.types import FRESNEL, NEAR_FIELD, Estimate, Geometry

__all__ = ["PIEEngine"]

logger = logging.getLogger(__name__)

_DEFAULT_CAPACITY = 256
#: Floor under square roots and predicted moduli (normalised units), as in engine/forward.py.
_FLOOR = 1e-12


class _Propagator:
    """Exit wave to detector and back, unitary, with zero frequency at ``[0, 0]``: the angular
    spectrum in the near field, one FFT otherwise (the Fresnel phase travels with the probe, or
    with the exit wave behind a multislice sample)."""

    def __init__(self, geometry: Geometry):
        self._kernel = None
        if geometry.propagation == NEAR_FIELD:
            self._kernel = angular_spectrum_kernel(geometry, geometry.propagation_distance_m)

    def forward(self, wave: np.ndarray) -> np.ndarray:
        if self._kernel is not None:
            return np.fft.ifft2(np.fft.fft2(wave) * self._kernel)
        return np.fft.fft2(wave, norm="ortho")

    def backward(self, field: np.ndarray) -> np.ndarray:
        if self._kernel is not None:
            return np.fft.ifft2(np.fft.fft2(field) * np.conj(self._kernel))
        return np.fft.ifft2(field, norm="ortho")


class PIEEngine(FrameIntake):
    """ePIE or mPIE (``settings.algorithm``), streaming and warm-started like the AD engine.

    Parameters
    ----------
    setup : geometry, settings, plan, read noise, defocus, detector mask and initial probe
        (:class:`~ptystream.engine.setup.EngineSetup`). Of the settings, ``algorithm``,
        ``pie``, ``probe_start_step``, ``subpixel``, ``canvas_margin_px``, ``seed``,
        ``slices``, ``slice_spacing_m`` and ``slice_regulariser`` (with its strength) are
        used; the AD engine's learning rates, batch size, loss kind and TV weight do not apply.
        The read noise enters the reported loss only; masked pixels keep the predicted modulus
        and never enter the loss; an initial probe (``(N, N)``) is rescaled to the measured
        power.

    Raises
    ------
    ValueError
        For settings a PIE engine cannot honour: ``probe_modes`` > 1, ``train_distance``,
        ``correct_positions``, ``distance_search_m`` and ``train_slice_spacing`` (the AD
        engine does them all).

    Notes
    -----
    The modulus constraint uses ``sqrt(max(I, 0))``: read noise makes counts negative. The loss
    reported per update is the AD engine's amplitude misfit of the prediction *before* the
    update, ``mean((sqrt(I_pred + c) - sqrt(max(I + c, 0)))^2)`` over the valid pixels with
    ``c = 3/8 + sigma^2`` (normalised), so loss curves of the engines are comparable.
    """

    def __init__(self, setup: EngineSetup):
        geometry, settings, plan = setup.geometry, setup.settings, setup.plan
        initial_probe, detector_mask = setup.initial_probe, setup.detector_mask
        self.algorithm = Algorithm(settings.algorithm)
        if self.algorithm not in (Algorithm.EPIE, Algorithm.MPIE):
            raise ValueError(f"PIEEngine runs epie or mpie, not {self.algorithm.value!r}")
        _check_settings(settings, self.algorithm)
        if initial_probe is not None and np.shape(initial_probe) != geometry.frame_shape:
            raise ValueError(
                f"initial probe is {np.shape(initial_probe)}, frames are {geometry.frame_shape}"
            )
        self.geometry = geometry
        self.settings = settings
        self._initial_probe = initial_probe
        self._probe_defocus_m = setup.probe_defocus_m
        self._orientation_setup = setup.orientation
        self._n = geometry.frame_px
        self._dx = geometry.object_pixel_size_m
        self._near = geometry.propagation == NEAR_FIELD
        self._propagator = _Propagator(geometry)
        # Fresnel: the engine updates the probe times the Fresnel phase, the product the patterns
        # see, shifted as one (the phase is centred on the beam, which moves with the probe, as
        # in the AD engine); the estimate reports the probe with the phase taken off again.
        # Behind a multislice sample the phase belongs after the last slice: on the exit wave.
        fresnel = initial.fresnel_phase(geometry) if geometry.propagation == FRESNEL else None
        thick = settings.slices > 1
        self._chirp = None if thick else fresnel
        self._exit_phase = fresnel if thick else None
        self._slices = SliceStack(geometry, settings) if thick else None
        self._since_regularised = 0
        valid = initial.check_detector_mask(detector_mask, geometry.frame_shape)
        self._valid_pixels = valid
        self._mask = self._oriented(valid)
        self._masked = not valid.all()
        self._n_valid = int(valid.sum())
        self._read_noise_counts = setup.read_noise_counts
        self._offset = 0.0
        self._scale: float | None = None

        pie = settings.pie
        mpie = self.algorithm is Algorithm.MPIE
        # ePIE is rPIE with alpha = 1 (denominator max|P|^2) and no momentum.
        self._object_alpha = pie.object_alpha if mpie else 1.0
        self._probe_alpha = pie.probe_alpha if mpie else 1.0
        self._momentum = pie.momentum if mpie else 0.0
        self._probe_power = 0.0  # mPIE holds the probe at this power (set by the first frames)

        self._rng = np.random.default_rng(settings.seed)
        self._n_frames = 0
        self._pending: collections.deque[int] = collections.deque()
        self._positions_m = np.zeros((0, 2))
        self._loss = array.array("d")  # one per position update: row i is iteration i + 1
        self._iteration = 0
        self._since_momentum = 0

        capacity = max(plan.n_points or _DEFAULT_CAPACITY, 1)
        n = self._n
        self._amplitude = np.zeros((capacity, n, n), np.float32)  # sqrt(max(I, 0))
        self._loss_amplitude = np.zeros((capacity, n, n), np.float32)  # sqrt(max(I + c, 0))
        self._top_left = np.zeros((capacity, 2), np.int64)
        self._frac = np.zeros((capacity, 2), np.float32)
        self._ramps = np.ones((capacity, 2, n), np.complex64)  # 1-D sub-pixel ramps (y, x)
        self._canvas = canvases.plan_canvas(plan, n, self._dx, settings.canvas_margin_px)
        shape = self._canvas.shape if self._canvas else (n, n)
        # one canvas per slice, slice 0 (upstream) first
        stacked = (settings.slices, *shape) if thick else shape
        self._object = np.ones(stacked, np.complex64)
        self._object_before = self._object.copy()  # mPIE: the object T updates ago
        self._object_velocity = np.zeros(stacked, np.complex64)
        # With sub-pixel shifts the probe is kept as its (orthonormal, unshifted) spectrum: a shift
        # is then one FFT to the shifted probe and one back for its update, not two each way.
        self._spectral = settings.subpixel
        self._probe: np.ndarray = np.zeros((n, n), np.complex64)
        self._probe_before = self._probe.copy()
        self._probe_velocity = np.zeros((n, n), np.complex64)
        self._freq = np.fft.fftfreq(n)

    # -- public API -----------------------------------------------------------------------

    @property
    def iteration(self) -> int:
        """Position updates taken so far."""
        return self._iteration

    def warm_up(self) -> None:
        """Nothing to compile: numpy runs at full speed from the first update."""

    def _store(
        self, first: int, frames: np.ndarray, top_left: np.ndarray, frac: np.ndarray
    ) -> None:
        sl = slice(first, first + len(frames))
        self._amplitude[sl] = np.sqrt(np.maximum(frames, 0.0))
        self._loss_amplitude[sl] = np.sqrt(np.maximum(frames + self._offset, 0.0))
        self._top_left[sl] = top_left
        self._frac[sl] = frac
        self._ramps[sl] = np.exp(-2j * np.pi * frac[:, :, None] * self._freq)

    def step(self, n_steps: int = 1) -> float:
        """``n_steps`` position updates: frames not yet visited first (oldest first), then a
        random sample of the others; returns their mean loss."""
        if self._n_frames == 0 or n_steps <= 0:
            return float("nan")
        chosen = [self._pending.popleft() for _ in range(min(n_steps, len(self._pending)))]
        k = len(chosen)
        room = n_steps - k
        others = self._n_frames - k
        if room > 0 and others > 0:
            # pending frames are a contiguous run [chosen[0], chosen[0] + k): draw from the
            # others without listing them, so a call costs the same at any scan length
            picks = self._rng.choice(others, size=room, replace=room > others)
            if k:
                picks = np.where(picks >= chosen[0], picks + k, picks)
            chosen.extend(picks.tolist())
        elif room > 0:  # every frame was just visited
            chosen.extend(self._rng.choice(self._n_frames, size=room).tolist())
        loss = float(np.mean([self._update(j) for j in chosen]))
        self._since_regularised += n_steps
        if self._since_regularised >= self._n_frames:  # about once per pass, as the AD engine
            self._regularise()
        return loss

    def refine(
        self,
        epochs: int | None = None,
        on_epoch: Callable[[int, float], None] | None = None,
        *,
        seconds: float | None = None,
    ) -> float:
        """``epochs`` passes over all frames, each in a new random order, or passes until
        ``seconds`` of wall time are spent (stopping between two position updates); returns the
        last pass's mean loss. ``on_epoch(i, loss)`` is called after pass ``i`` (from 0), a
        partial last one included."""
        budget = PassBudget(epochs, seconds)
        self._pending.clear()
        loss = float("nan")
        if self._n_frames == 0:
            return loss
        for epoch in budget.passes():
            losses = []
            for j in self._rng.permutation(self._n_frames):
                if losses and budget.spent:
                    break
                losses.append(self._update(int(j)))
            loss = float(np.mean(losses))
            self._regularise()
            if on_epoch is not None:
                on_epoch(epoch, loss)
        return loss

    def estimate(self, *, final: bool = False) -> Estimate:
        """Numpy snapshot of the current state (copies): the object ``(H, W)``, or ``(S, H, W)``
        slices (slice 0, first met by the beam, first) for a multislice sample."""
        origin = self._canvas.origin_m if self._canvas else np.zeros(2)
        probe = self._probe_image() * np.float32(np.sqrt(self._scale or 1.0))  # sqrt(counts)
        return Estimate(
            object=self._object.copy(),
            probe=probe,
            object_origin_m=(float(origin[0]), float(origin[1])),
            pixel_size_m=self._dx,
            positions_m=self._positions_m.copy(),
            illumination=self._illumination(probe),
            iteration=self._iteration,
            n_frames=self._n_frames,
            frames_waiting=self.frames_waiting,
            loss=np.column_stack(
                [np.arange(1, len(self._loss) + 1, dtype=np.float64), np.array(self._loss)]
            ),
            final=final,
            distance_m=self.geometry.propagation_distance_m if self._near else float("nan"),
            noise=self.noise.to_metadata() if self.noise else None,
            probe_defocus_m=self.probe_defocus_m,
            orientation=self.orientation.to_metadata() if self.orientation else None,
            warnings=self.input_warnings,
        )

    def snapshot(self) -> EngineState:
        """The whole state (object, probe, their momentum terms, frames, bookkeeping) as numpy
        copies."""
        arrays, meta = self._bookkeeping()
        arrays |= {name: getattr(self, f"_{name}").copy() for name in _STATE_ARRAYS}
        arrays["loss"] = np.array(self._loss, dtype=np.float64)  # a copy: a view pins the buffer
        meta |= {name: getattr(self, f"_{name}") for name in _STATE_VALUES}
        meta["since_regularised"] = self._since_regularised
        return EngineState(arrays, meta)

    def restore(self, state: EngineState, *, source: str = "state") -> None:
        """Continue from ``state`` (a :meth:`snapshot` of an engine with the same geometry and
        settings; ValueError naming what differs otherwise)."""
        state.check(self.geometry, self.settings, source)
        for name in _STATE_ARRAYS:
            setattr(self, f"_{name}", state.arrays[name].copy())
        for name in _STATE_VALUES:
            setattr(self, f"_{name}", state.meta[name])
        self._since_regularised = state.meta.get("since_regularised", 0)  # older states lack it
        self._restore_bookkeeping(state)
        self._loss = array.array("d", state.arrays["loss"])

    def save_state(self, path: str | Path) -> None:
        """Write :meth:`snapshot` to ``path`` (NPZ, atomically)."""
        write_state(self.snapshot(), path)

    def load_state(self, path: str | Path) -> None:
        """Continue from a state written by :meth:`save_state` (same geometry and settings)."""
        self.restore(read_state(path), source=str(path))

    def predict(self, positions_m: np.ndarray) -> np.ndarray:
        """The frames ``(k, N, N)`` float32, in counts, that the current object and probe
        predict for probe positions ``(k, 2)`` (y, x, metres), laid out as :meth:`add_frames`
        takes them (far field: centred patterns) and without noise: the model the updates fit.

        Raises ValueError before the first frames (they set the probe and the normalisation) or
        when a position's window leaves the canvas.
        """
        if self._scale is None:
            raise ValueError("nothing to predict from before the first frames")
        positions_m = np.asarray(positions_m, dtype=np.float64).reshape(-1, 2)
        top_left, frac = self._corners(positions_m)
        n, (h, w) = self._n, self._object.shape[-2:]
        outside = (top_left < 0).any(axis=1) | (top_left[:, 0] > h - n) | (top_left[:, 1] > w - n)
        if outside.any():
            raise ValueError(f"positions {positions_m[outside].tolist()} m leave the canvas")
        ramps = np.exp(-2j * np.pi * frac[:, :, None] * self._freq).astype(np.complex64)
        predicted = np.empty((len(positions_m), n, n), np.float32)
        for i, ((r, c), (ramp_y, ramp_x)) in enumerate(zip(top_left, ramps, strict=True)):
            probe = self._shifted_probe(ramp_y[:, None] * ramp_x[None, :])
            window = self._object[..., r : r + n, c : c + n]
            if self._slices is None:
                wave = window * probe
            else:
                wave = self._slices.waves(window, probe)[1][-1]
                if self._exit_phase is not None:
                    wave = wave * self._exit_phase
            field = self._propagator.forward(wave)
            predicted[i] = (field.real**2 + field.imag**2) * self._scale
        return predicted if self._near else np.fft.fftshift(predicted, axes=(-2, -1))

    def search_distance(
        self, lo_m: float, hi_m: float, passes: int = 25
    ) -> tuple[float, dict[float, float]]:
        """Not offered by the baselines (their propagation distance is fixed): ValueError."""
        raise ValueError(
            f"the {self.algorithm.value} engine does not search the propagation distance; "
            "use engine.algorithm: ad for engine.distance_search_m"
        )

    # -- the update -------------------------------------------------------------------------

    def _update(self, j: int) -> float:
        """One position update on frame ``j``; returns its loss before the update."""
        if self._slices is not None:
            return self._update_slices(j, self._slices)
        n = self._n
        r, c = self._top_left[j]
        patch = self._object[r : r + n, c : c + n]  # a view: updated in place
        ramp = self._ramp(j) if self._spectral else None
        probe = self._shifted_probe(ramp)
        wave = patch * probe
        delta, loss = self._projected(wave, j)

        pie = self.settings.pie
        probe_active = self._iteration >= self.settings.probe_start_step
        if probe_active:
            probe_delta = (
                pie.probe_step * np.conj(patch) * delta / _denominator(patch, self._probe_alpha)
            )
        patch += pie.object_step * np.conj(probe) * delta / _denominator(probe, self._object_alpha)
        if probe_active:
            self._add_to_probe(probe_delta, ramp)
        return self._advance(loss)

    def _update_slices(self, j: int, slices: SliceStack) -> float:
        """3PIE on frame ``j`` (see the module's notes); returns its loss before the update."""
        n = self._n
        r, c = self._top_left[j]
        patches = self._object[:, r : r + n, c : c + n]  # views: updated in place
        ramp = self._ramp(j) if self._spectral else None
        incident, exits = slices.waves(patches, self._shifted_probe(ramp))
        if self._exit_phase is None:
            delta, loss = self._projected(exits[-1], j)
        else:  # the change of the exit wave is the change behind the phase, taken off again
            delta, loss = self._projected(exits[-1] * self._exit_phase, j)
            delta *= np.conj(self._exit_phase)

        pie = self.settings.pie
        for s in range(len(patches) - 1, -1, -1):
            psi, patch = incident[s], patches[s]
            wave_delta = (
                pie.probe_step * np.conj(patch) * delta / _denominator(patch, self._probe_alpha)
            )
            patch += pie.object_step * np.conj(psi) * delta / _denominator(psi, self._object_alpha)
            if s > 0:  # the corrected incident wave, back over the gap: the target of slice s - 1
                delta = slices.back(psi + wave_delta, s - 1) - exits[s - 1]
        if self._iteration >= self.settings.probe_start_step:
            self._add_to_probe(wave_delta, ramp)
        return self._advance(loss)

    def _shifted_probe(self, ramp: np.ndarray | None) -> np.ndarray:
        """The probe at the sample, moved by ``ramp`` (sub-pixel shifts; the probe itself, not a
        copy, without them)."""
        if ramp is None:
            return self._probe
        return np.fft.ifft2(self._probe * ramp, norm="ortho")

    def _projected(self, wave: np.ndarray, j: int) -> tuple[np.ndarray, float]:
        """The modulus projection: the change of the exit ``wave`` that makes its pattern match
        frame ``j`` (none in masked pixels), and the loss before it."""
        field = self._propagator.forward(wave)
        modulus = np.abs(field)
        loss = self._misfit(modulus, j)
        corrected = field * (self._amplitude[j] / np.maximum(modulus, _FLOOR))
        if self._masked:  # no modulus constraint where nothing was measured
            corrected = np.where(self._mask, corrected, field)
        return self._propagator.backward(corrected) - wave, loss

    def _add_to_probe(self, delta: np.ndarray, ramp: np.ndarray | None) -> None:
        """Add the update ``delta`` of the shifted probe, shifted back when it was shifted."""
        if ramp is not None:
            self._probe += np.fft.fft2(delta, norm="ortho") * np.conj(ramp)
        else:
            self._probe += delta

    def _advance(self, loss: float) -> float:
        """Count the update, record its loss and take the momentum step when it is due."""
        self._iteration += 1
        self._loss.append(loss)
        self._since_momentum += 1
        if self._since_momentum >= (self.settings.pie.momentum_every or self._n_frames):
            self._momentum_step()
        return loss

    def _misfit(self, modulus: np.ndarray, j: int) -> float:
        predicted = np.sqrt(np.maximum(modulus * modulus + self._offset, _FLOOR))
        residual = (predicted - self._loss_amplitude[j]) ** 2
        if self._masked:
            residual = residual[self._mask]
        return float(residual.sum() / self._n_valid)

    def _momentum_step(self) -> None:
        """mPIE's momentum, ``v = eta v + (X - X_T)``, ``X += eta v``, ``X_T = X`` for the object
        and the probe (none for ePIE: ``eta = 0``), then the probe held at its initial power
        (both engines).

        The power constraint fixes the scale that ptychography cannot see (``O / c`` and ``c P``
        predict the same frames). Left free, noise walks it: the probe grows and the well-lit
        object shrinks while its barely lit rim, rarely updated, stays near the canvas's ``1``,
        until the frames at the scan's edge see a strong probe on an unshrunk rim and the
        reconstruction diverges (measured: mPIE with alpha 0.5 at step 1 diverged after ~150
        passes over the noisy test scan; with the constraint it held for 300; ePIE, free,
        peaked at |C| 0.83 after ~240 passes of benchmarks/targets.py, then fell to 0.03).
        The initial probe carries the mean measured power, so the object's mean transmission
        stays near ``1``, like the canvas padding. The lit object takes the inverse factor
        (:meth:`_rescale_lit_object`), so the object and probe still predict the frames: without
        it the written result of mPIE predicted 37-43 % of the counts in the bright pixels of
        the noisy test scan (500 counts peak, read noise 10), 76-80 % without read noise.
        """
        self._since_momentum = 0
        eta = self._momentum
        if eta > 0:
            self._object_velocity = eta * self._object_velocity + (
                self._object - self._object_before
            )
            self._object += eta * self._object_velocity
            self._object_before = self._object.copy()
            self._probe_velocity = eta * self._probe_velocity + (self._probe - self._probe_before)
            self._probe += eta * self._probe_velocity
        power = float(np.sum(self._probe.real**2 + self._probe.imag**2))  # Parseval: either space
        if power > 0 and np.isfinite(power):
            scale = np.float32(np.sqrt(self._probe_power / power))
            self._probe *= scale
            self._probe_velocity *= scale
            self._rescale_lit_object(1.0 / scale)
        self._probe_before = self._probe.copy()

    def _rescale_lit_object(self, factor: float) -> None:
        """Multiply the object by ``factor`` where the probe lights it, so that a rescaled probe
        leaves the predicted frames as they were.

        The factor is blended by the illumination (``1 + (factor - 1) * I / max I``): the
        barely lit rim, which the data do not constrain, is left alone, because rescaling it
        once per pass compounds (measured: the whole object rescaled diverged within 75
        passes of mPIE on the noisy test scan). For a multislice sample only the first slice is
        rescaled: the exit wave is linear in each slice.
        """
        lit = self._illumination(self._probe_image())
        weight = np.clip(lit / max(float(lit.max()), _FLOOR), 0.0, 1.0)
        blended = (1.0 + (factor - 1.0) * weight).astype(np.float32)
        for name in ("_object", "_object_before", "_object_velocity"):
            array = getattr(self, name)
            (array if array.ndim == 2 else array[0])[...] *= blended

    def _regularise(self) -> None:
        """The regulariser along z on the whole stack of slices. The mPIE momentum's history
        (the object ``T`` updates ago and the velocity) is filtered with it (the filters are
        linear), so that the momentum carries the updates only, not the filter's change."""
        self._since_regularised = 0
        if self._slices is None or self._slices.regulariser is SliceRegulariser.NONE:
            return
        for name in ("_object", "_object_before", "_object_velocity"):
            setattr(self, name, self._slices.regularised(getattr(self, name)))

    def _probe_image(self) -> np.ndarray:
        """The probe at the sample, in real space (a new array)."""
        probe = np.fft.ifft2(self._probe, norm="ortho") if self._spectral else self._probe.copy()
        if self._chirp is not None:
            probe *= np.conj(self._chirp)
        return probe.astype(np.complex64)

    def _ramp(self, j: int) -> np.ndarray:
        """Fourier ramp moving the probe by frame ``j``'s fractional offset (in pixels)."""
        ramp_y, ramp_x = self._ramps[j]
        return ramp_y[:, None] * ramp_x[None, :]

    # -- state management ------------------------------------------------------------------

    def _initialise_from(self, patterns: np.ndarray, positions_m: np.ndarray) -> None:
        """Normalise by the first frames' maximum and build the initial probe from their mean,
        with the defocus they show, after checking the positions' orientation
        (:meth:`~ptystream.engine.intake.FrameIntake._first_look`).

        Masked pixels are left out of the maximum and filled from their neighbours in the mean.
        """
        self._scale = float(max(patterns[:, self._valid_pixels].max(), 1e-12))
        self._offset = self._fit_noise(patterns, LossKind.AMPLITUDE)  # the modulus projection
        mean = optics.fill_masked(patterns.mean(axis=0), self._valid_pixels) / self._scale
        positions_m = self._first_look(patterns, positions_m, mean, self._offset)
        probe = initial.initial_probe(
            mean,
            self.geometry,
            probe_defocus_m=self._initial_defocus_m or 0.0,  # None: no defocus applies
            given=self._initial_probe,
        )
        if self._chirp is not None:
            probe = probe * self._chirp
        self._probe = np.fft.fft2(probe, norm="ortho") if self._spectral else probe
        self._probe_power = float(np.sum(np.abs(probe) ** 2))
        self._probe_before = self._probe.copy()
        if self._canvas is None:
            lo, hi = positions_m.min(axis=0), positions_m.max(axis=0)
            self._canvas = self._canvas_for(lo, hi)
            self._resize_object(self._canvas.shape, (0, 0))

    def _move_corners(self, offset_px: np.ndarray) -> None:
        self._top_left[: self._n_frames] += offset_px.astype(np.int64)

    def _resize_object(self, shape: tuple[int, int], offset: tuple[int, int]) -> None:
        """Re-allocate the object-shaped arrays at ``shape``, old content placed at ``offset``."""
        self._object = _placed(self._object, shape, offset, 1.0)
        self._object_before = _placed(self._object_before, shape, offset, 1.0)
        self._object_velocity = _placed(self._object_velocity, shape, offset, 0.0)

    def _ensure_capacity(self, needed: int) -> None:
        capacity = len(self._amplitude)
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity)
        logger.info("growing the frame buffer from %d to %d frames", capacity, new_capacity)

        def grown(old: np.ndarray) -> np.ndarray:
            new = np.zeros((new_capacity, *old.shape[1:]), old.dtype)
            new[:capacity] = old
            return new

        self._amplitude = grown(self._amplitude)
        self._loss_amplitude = grown(self._loss_amplitude)
        self._top_left = grown(self._top_left)
        self._frac = grown(self._frac)
        self._ramps = grown(self._ramps)

    def _illumination(self, probe: np.ndarray) -> np.ndarray:
        """Summed probe intensity over the frames' windows (at their whole pixels), float32."""
        intensity = (np.abs(probe) ** 2).astype(np.float32)
        h, w = self._object.shape[-2:]
        return canvases.summed_windows(intensity, self._top_left[: self._n_frames], (h, w))


#: The arrays of the state, by attribute name without its underscore.
_STATE_ARRAYS = (
    "amplitude",
    "loss_amplitude",
    "top_left",
    "frac",
    "ramps",
    "object",
    "object_before",
    "object_velocity",
    "probe",
    "probe_before",
    "probe_velocity",
)
#: The numbers of the state besides the bookkeeping every engine keeps.
_STATE_VALUES = ("offset", "probe_power", "since_momentum")


def _placed(old: np.ndarray, shape: tuple[int, int], offset: tuple[int, int], fill) -> np.ndarray:
    """:func:`~ptystream.engine.canvas.place` for one canvas ``(H, W)`` or a stack of them."""
    if old.ndim == 2:
        return canvases.place(old, shape, offset, fill)
    return np.stack([canvases.place(layer, shape, offset, fill) for layer in old])


def _denominator(field: np.ndarray, alpha: float) -> np.ndarray:
    """rPIE's ``(1 - alpha)|X|^2 + alpha max|X|^2`` (ePIE's ``max|X|^2`` at alpha = 1)."""
    power = (field.real**2 + field.imag**2).astype(np.float32)
    peak = max(float(power.max()), _FLOOR)
    return (1.0 - alpha) * power + alpha * peak


def _check_settings(settings: EngineSettings, algorithm: Algorithm) -> None:
    """Refuse what only the AD engine does, naming the setting."""
    unsupported = []
    if settings.probe_modes > 1:
        unsupported.append(f"engine.probe_modes = {settings.probe_modes} (use 1)")
    if settings.train_distance:
        unsupported.append("engine.train_distance")
    if settings.correct_positions:
        unsupported.append("engine.correct_positions")
    if settings.distance_search_m is not None:
        unsupported.append("engine.distance_search_m")
    if settings.train_slice_spacing:
        unsupported.append("engine.train_slice_spacing (the spacings stay as given)")
    if unsupported:
        raise ValueError(
            f"the {algorithm.value} engine does not support {', '.join(unsupported)}; "
            "use engine.algorithm: ad for these"
        )
