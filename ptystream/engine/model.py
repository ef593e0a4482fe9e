"""The AD engine's forward model, as a composition of small TensorFlow stages.

The prediction of a batch of ``B`` frames is four stages, each a small class with documented
shapes and units, chosen once from the settings when the engine is built (:func:`build_model`):

1. **illumination** (:class:`Illumination`): the probe modes ``(M, n, n)`` at the sample, with
   the Fresnel phase folded in (``fresnel`` geometry, thin sample), each frame's sub-pixel shift
   and its fitted position correction: ``(B or 1, M, n, n)``;
2. **the sample** (:class:`ThinObject`, :class:`Multislice`): the waves leaving the sample,
   ``(B, M, n, n)``, from the illumination and the object windows ``S x (B, n, n)``, one per
   slice;
3. **propagation to the detector** (:class:`FarField`, :class:`NearField`): the fields at the
   detector ``(B, M, n, n)``;
4. **detection** (:class:`Detection`): the incoherent sum over modes, the detector mask and the
   loss (amplitude, intensity or Poisson) plus the regularisers on the object windows.

Each stage owns its :class:`Trainable` variables (the probe, the object canvases, the distance,
the position corrections, the slice spacings) and says which are trained. The optimiser
(:class:`~ptystream.engine.ad.ADEngine`) knows none of the physics: it gathers every canvas's
windows, asks :meth:`ForwardModel.loss` for the loss, and updates each trainable by Adam
(on the windows or the whole canvas for canvases) at the learning rate its ``rate`` names, then
applies its constraint. The whole step is still one XLA function per configuration.

Adding physics is one stage and one line in :func:`build_model`. Multislice is the worked
example: the thin sample multiplies the illumination by one window,

.. code-block:: python

    class ThinObject:
        def __call__(self, probes, windows):
            return probes * windows[0][:, None]

while :class:`Multislice` owns ``S`` canvases and the slice spacings, and alternates
multiplication and angular-spectrum propagation,

.. code-block:: python

    def __call__(self, probes, windows):
        wave = probes
        for s, window in enumerate(windows[:-1]):
            wave = forward.angular_spectrum(wave * window[:, None], self._q, gaps[s], self._band)
        return wave * windows[-1][:, None]

and :func:`build_model` picks it with one line,
``sample = Multislice(...) if settings.slices > 1 else ThinObject(...)``. Its canvases, their
Adam states, growth, windowed updates, checkpoints and position correction come from the
optimiser for free; the gradient with respect to the spacings comes from TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from ptystream.config import EngineSettings, LossKind, SliceRegulariser
from ptystream.engine import forward, initial
from ptystream.engine.adam import Adam
from ptystream.engine.slices import (
    angular_spectrum_constants,
    arctan_weight,
    gaussian_mixing,
    max_gap_m,
)
from ptystream.types import FRESNEL, NEAR_FIELD, Geometry

__all__ = [
    "CANVAS",
    "ELEMENTWISE",
    "RATES",
    "WHOLE",
    "Detection",
    "FarField",
    "ForwardModel",
    "Illumination",
    "Multislice",
    "NearField",
    "ThinObject",
    "Trainable",
    "build_model",
]

#: How the optimiser updates a trainable: ``canvas`` (an object canvas: Adam on the batch's
#: windows, or on the whole canvas where the gradient is not zero, one step count per pixel),
#: ``whole`` (every element at every step with a nonzero rate, one step count) or
#: ``elementwise`` (the elements whose gradient is not zero, one step count per element).
CANVAS, WHOLE, ELEMENTWISE = "canvas", "whole", "elementwise"

#: The learning rates a trainable may name, in the order the compiled step receives them.
RATES = ("object", "probe", "distance", "position", "slice_spacing")


class Trainable:
    """Float32 variables the optimiser updates, with their Adam moments and step counts.

    Complex quantities are two real parts (``re``, ``im``): Keras' Adam squares a complex
    gradient as g^2, not |g|^2 (ENGINE_NOTES), and our Adam follows the same rule.

    Parameters
    ----------
    name : the name in checkpoints (``{name}_{part}``, ``{name}_m_{part}``, ``{name}_v_{part}``,
        ``{name}_count``; a single unnamed part is ``{name}``, ``{name}_m``, ``{name}_v``).
    values : the initial value of each part.
    rate : which learning rate of :data:`RATES` moves it.
    kind : :data:`CANVAS`, :data:`WHOLE` or :data:`ELEMENTWISE`.
    parts : the parts' names.
    trained : False keeps it fixed (no gradient is computed) but in the state.
    fills : canvases: the value of each part where a canvas grows (1 + 0i: transparent).
    per_frame : its first axis is the frame buffer's (grown with it).
    constrain : called after each update, inside the compiled step.
    """

    def __init__(
        self,
        name: str,
        values: Sequence[Any],
        *,
        rate: str,
        kind: str,
        parts: Sequence[str] = ("re", "im"),
        trained: bool = True,
        fills: Sequence[float] = (0.0, 0.0),
        per_frame: bool = False,
        constrain: Callable[[], None] | None = None,
    ):
        if rate not in RATES or kind not in (CANVAS, WHOLE, ELEMENTWISE):
            raise ValueError(f"unknown rate {rate!r} or kind {kind!r}")
        self.name, self.rate, self.kind, self.trained = name, rate, kind, trained
        self.part_names = tuple(parts)
        self.fills, self.per_frame, self.constrain = tuple(fills), per_frame, constrain
        self.parts = [tf.Variable(tf.constant(v, tf.float32)) for v in values]
        shape = tuple(self.parts[0].shape)
        self.adam = [Adam(shape) for _ in self.parts]
        count_shape = () if kind == WHOLE else shape[-2:] if kind == CANVAS else shape
        self.count = tf.Variable(tf.zeros(count_shape), trainable=False)

    def value(self) -> tf.Tensor:
        """The complex value (two parts) or the real one."""
        if len(self.parts) == 2:
            return tf.complex(*self.parts)
        return tf.convert_to_tensor(self.parts[0])

    def places(self) -> dict[str, tuple[Any, Any]]:
        """Every variable by checkpoint name, with where it is kept (``(owner, key)``: an
        attribute, or an index into a list), so that a restore can replace it."""
        out: dict[str, tuple[Any, Any]] = {}
        for i, part in enumerate(self.part_names):
            suffix = f"_{part}" if part else ""
            out[f"{self.name}{suffix}"] = (self.parts, i)
            out[f"{self.name}_m{suffix}"] = (self.adam[i], "m")
            out[f"{self.name}_v{suffix}"] = (self.adam[i], "v")
        out[f"{self.name}_count"] = (self, "count")
        return out


class Illumination:
    """Probe modes at the sample for each frame of a batch.

    The probe is ``M`` mutually incoherent modes ``(M, n, n)`` (complex, in the square root of
    the normalised counts). ``fresnel`` ``(n, n)`` is folded in before the sub-pixel shift, so it
    moves with the probe. The position corrections ``(capacity, 2)`` (object pixels, trained with
    ``correct_positions``) are kept at zero mean over the ``n_seen`` frames and within
    ``max_shift_px``: a common shift of all positions only moves the object.
    """

    def __init__(
        self,
        n_modes: int,
        n: int,
        capacity: int,
        n_seen: tf.Variable,
        *,
        fresnel: np.ndarray | None,
        subpixel: bool,
        correct_positions: bool,
        max_shift_px: float,
    ):
        if correct_positions and not subpixel:
            raise ValueError("correct_positions needs subpixel shifts")
        self._n, self._subpixel, self._correct = n, subpixel, correct_positions
        self._fresnel = None if fresnel is None else tf.constant(fresnel, tf.complex64)
        self._n_seen, self._max_shift = n_seen, max_shift_px
        zeros = np.zeros((n_modes, n, n), np.float32)
        self.probe = Trainable("probe", [zeros, zeros], rate="probe", kind=WHOLE)
        self.shift = Trainable(
            "shift",
            [np.zeros((capacity, 2), np.float32)],
            parts=("",),
            rate="position",
            kind=ELEMENTWISE,
            trained=correct_positions,
            per_frame=True,
            constrain=self._centre_shifts,
        )

    @property
    def trainables(self) -> list[Trainable]:
        return [self.probe, self.shift]

    def place(
        self, top_left: tf.Tensor, frac: tf.Tensor, idx: tf.Tensor, canvas_shape: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """The windows' top-left pixels ``(B, 2)`` int32 and the probes' sub-pixel shifts
        ``(B, 2)`` float32 of frames ``idx``, with their position corrections: the integer part
        picks the window, the gradient flows through the fraction."""
        if not self._correct:
            return top_left, frac
        corner = tf.cast(top_left, tf.float32) + frac + tf.gather(self.shift.parts[0], idx)
        top_left = tf.cast(tf.floor(tf.stop_gradient(corner)), tf.int32)
        top_left = tf.clip_by_value(top_left, 0, canvas_shape - self._n)
        return top_left, corner - tf.cast(top_left, tf.float32)

    def __call__(self, frac: tf.Tensor) -> tf.Tensor:
        """Probes ``(B, M, n, n)`` shifted by ``frac`` ``(B, 2)`` pixels (``(1, M, n, n)``
        without sub-pixel shifts)."""
        probe = self.probe.value()
        if self._fresnel is not None:
            probe = probe * self._fresnel
        if self._subpixel:
            return forward.shifted_probes(probe, frac)
        return probe[None]

    @property
    def power(self) -> float:
        """The probe's total power over its modes (normalised counts)."""
        re, im = self.probe.parts
        return float(tf.reduce_sum(re**2 + im**2))

    def hold_power(self, power: float) -> None:
        """Scale the modes back to a total ``power``, their Adam moments with them (the
        gradient scales inversely). The object and the probe trade a common factor the data
        cannot see, and the total variation, which grows with the object, pulls the object down
        and the probe up along it without end: on benchmarks/robustness.py's 50-count scan the
        probe's power grew 300-fold over 1600 passes, the object's steps grew relative to it
        and |C| fell from 0.82 to 0.75, then the fit blew up. Held once per pass, the object
        takes the factor back by its gradient. Nothing changes where the modes' power is 0
        or not finite."""
        if power > 0.0:
            adam = self.probe.adam
            _scale_to_power(
                self.probe.parts,
                [a.m for a in adam],
                [a.v for a in adam],
                tf.constant(power, tf.float32),
            )

    def _centre_shifts(self) -> None:
        shift = self.shift.parts[0]
        seen = tf.range(tf.shape(shift)[0]) < self._n_seen
        total = tf.reduce_sum(tf.where(seen[:, None], shift, 0.0), axis=0)
        mean = total / tf.cast(tf.maximum(self._n_seen, 1), tf.float32)
        limit = self._max_shift
        shift.assign(tf.where(seen[:, None], tf.clip_by_value(shift - mean, -limit, limit), 0.0))


@tf.function
def _scale_to_power(
    parts: list[tf.Variable], m: list[tf.Variable], v: list[tf.Variable], power: tf.Tensor
) -> None:
    """Scale ``parts`` (the real and imaginary parts of a field) to a total ``power``, their
    Adam moments ``m`` and ``v`` by the inverse and its square; unchanged where their power is
    0 or not finite. One graph call, traced once per shape (the variables are arguments, so a
    restored engine's new variables reuse it): as eager operations it cost 2.9 ms per pass at
    128² (4 % of a pass), as one call 1.1 ms."""
    now = tf.add_n([tf.reduce_sum(p**2) for p in parts])
    ok = tf.logical_and(now > 0.0, tf.math.is_finite(now))
    factor = tf.where(ok, tf.sqrt(power / tf.where(ok, now, 1.0)), 1.0)
    for part, first, second in zip(parts, m, v, strict=True):
        part.assign(part * factor)
        first.assign(first / factor)
        second.assign(second / factor**2)


def _canvas(name: str, shape: tuple[int, int]) -> Trainable:
    """A transparent object canvas (1 + 0i) of ``shape`` pixels."""
    ones, zeros = np.ones(shape, np.float32), np.zeros(shape, np.float32)
    return Trainable(name, [ones, zeros], rate="object", kind=CANVAS, fills=(1.0, 0.0))


class ThinObject:
    """The projection approximation: the exit wave is the illumination times one complex
    transmission window ``(B, n, n)`` of the object canvas."""

    def __init__(self, canvas_shape: tuple[int, int]):
        self.canvases = [_canvas("object", canvas_shape)]
        self.trainables: list[Trainable] = []

    def __call__(self, probes: tf.Tensor, windows: Sequence[tf.Tensor]) -> tf.Tensor:
        return probes * windows[0][:, None]

    def regularise(self) -> None:
        """Nothing to do along z for one slice."""


class Multislice:
    """A sample thicker than the depth of focus, as ``S`` slices along the beam.

    The wave entering slice 0 is the illumination; it is multiplied by each slice's window and
    propagated by angular spectrum over the gap to the next, the last slice not propagated. Each
    slice is its own canvas (``object``, ``slice1``, ...) with its own Adam state. The gaps
    ``(S - 1,)`` metres are trained with ``train_spacing`` and kept in ``[0, max_gap_m]``
    (angular spectrum holds up to ``n dx^2 / lambda``).
    """

    def __init__(
        self,
        canvas_shape: tuple[int, int],
        gaps_m: Sequence[float],
        propagator: tuple[tf.Tensor, tf.Tensor],
        *,
        train_spacing: bool,
        max_gap_m: float,
        regulariser: SliceRegulariser = SliceRegulariser.NONE,
        strength: float = 1.0,
    ):
        names = ["object"] + [f"slice{s}" for s in range(1, len(gaps_m) + 1)]
        self.canvases = [_canvas(name, canvas_shape) for name in names]
        self._q, self._band = propagator
        self._max_gap = max_gap_m
        self._regulariser, self._strength = SliceRegulariser(regulariser), strength
        self.gaps = Trainable(
            "slice_spacing",
            [np.asarray(gaps_m, np.float32)],
            parts=("",),
            rate="slice_spacing",
            kind=WHOLE,
            trained=train_spacing,
            constrain=self._clip_gaps,
        )
        self.trainables = [self.gaps]

    def __call__(self, probes: tf.Tensor, windows: Sequence[tf.Tensor]) -> tf.Tensor:
        gaps = self.gaps.parts[0]
        wave = probes
        for s, window in enumerate(windows[:-1]):
            wave = forward.angular_spectrum(wave * window[:, None], self._q, gaps[s], self._band)
        return wave * windows[-1][:, None]

    def _clip_gaps(self) -> None:
        gaps = self.gaps.parts[0]
        gaps.assign(tf.clip_by_value(gaps, 0.0, self._max_gap))

    def regularise(self) -> None:
        """Apply the regulariser along z to the whole stack of slices (eager; a few FFTs of the
        canvas, so call it about once per pass over the frames)."""
        if self._regulariser is SliceRegulariser.NONE:
            return
        stack = tf.stack([c.value() for c in self.canvases])  # (S, H, W)
        if self._regulariser is SliceRegulariser.ARCTAN:
            weight = arctan_weight(stack.shape, self._strength).astype(np.complex64)
            stack = tf.signal.ifft3d(tf.signal.fft3d(stack) * weight)
        else:
            mixing = gaussian_mixing(len(self.canvases), self._strength)
            stack = tf.tensordot(mixing.astype(np.complex64), stack, 1)
        for canvas, value in zip(self.canvases, tf.unstack(stack), strict=True):
            canvas.parts[0].assign(tf.math.real(value))
            canvas.parts[1].assign(tf.math.imag(value))


class FarField:
    """Propagation to a far-field detector: the orthonormal FFT of the exit waves (zero
    frequency at [0, 0]). ``exit_phase`` ``(n, n)`` (the Fresnel phase of a ``fresnel``
    geometry behind a multislice sample, where it cannot be folded into the probe) multiplies
    the exit waves first."""

    def __init__(self, exit_phase: np.ndarray | None = None):
        self._phase = None if exit_phase is None else tf.constant(exit_phase, tf.complex64)
        self.trainables: list[Trainable] = []

    def __call__(self, exit_waves: tf.Tensor) -> tf.Tensor:
        if self._phase is not None:
            exit_waves = exit_waves * self._phase
        return forward.farfield(exit_waves)


class NearField:
    """Angular-spectrum propagation of the exit waves over the propagation distance (metres; a
    variable, trained with ``train_distance`` and kept in ``distance_range_m``)."""

    def __init__(
        self,
        distance_m: float,
        propagator: tuple[tf.Tensor, tf.Tensor],
        distance_range_m: tuple[float, float],
        *,
        train_distance: bool,
    ):
        self._q, self._band = propagator
        self._range = distance_range_m
        self.distance = Trainable(
            "distance",
            [np.float32(distance_m)],
            parts=("",),
            rate="distance",
            kind=WHOLE,
            trained=train_distance,
            constrain=self._clip,
        )
        self.trainables = [self.distance]

    def __call__(self, exit_waves: tf.Tensor) -> tf.Tensor:
        return forward.angular_spectrum(exit_waves, self._q, self.distance.parts[0], self._band)

    def _clip(self) -> None:
        distance = self.distance.parts[0]
        distance.assign(tf.clip_by_value(distance, *self._range))


class Detection:
    """The detector: the intensity of ``M`` incoherent modes, the mask, and the loss.

    ``kind`` is a :class:`~ptystream.config.LossKind` (``auto``: amplitude or Poisson, set by
    :meth:`use` once the noise model is known); ``offset`` (a variable, normalised
    units) is the variance offset ``3/8 + sigma^2`` of the amplitude loss; ``pixel_mask``
    ``(n, n)`` is 1 where a pixel enters the loss (ifftshifted like the frames). The total
    variation of each slice's windows, times ``tv_weight`` (the settings', times the factor of
    :meth:`scale_tv`, which the engine ties to the frames' noise), is added against over-fitting
    noise.

    With ``coarse``, :attr:`blur_px` (a variable, detector pixels) low-passes the predicted and
    the measured intensities alike by a Gaussian of that sigma before the loss (masked pixels
    zeroed first); at 0 the loss is exactly the plain one. It smooths the loss in the
    propagation distance: the fine Fresnel fringes that make its local minima are blurred away
    (coarse to fine, ``EngineSettings.distance_blur_px``).
    """

    def __init__(
        self,
        kind: LossKind,
        offset: tf.Variable,
        pixel_mask: np.ndarray,
        tv_weight: float,
        *,
        coarse: bool = False,
    ):
        self._kind, self._offset, self._tv_weight = kind, offset, tv_weight
        self._chosen: LossKind | None = None  # for ``auto``, once the frames have said
        # a variable, so that the weight can follow the noise measured after compiling
        self._tv = tf.Variable(tv_weight, trainable=False) if tv_weight > 0 else None
        self._mask = tf.constant(pixel_mask, tf.float32)
        self.blur_px = tf.Variable(0.0, trainable=False) if coarse else None
        n = pixel_mask.shape[-1]
        fy, fx = np.fft.fftfreq(n), np.fft.rfftfreq(n)  # cycles per pixel, real-input FFT
        self._f2 = (fy[:, None] ** 2 + fx[None, :] ** 2).astype(np.float32)

    @property
    def kind(self) -> LossKind:
        """The loss a step traced now computes: the fixed kind, or for ``auto`` the one
        :meth:`use` chose (amplitude until then). Read when the step is traced, so the engine
        keeps one compiled step per kind (a ``tf.cond`` between the two in one step cost about
        3 % of a 128^2 step)."""
        if self._kind != LossKind.AUTO:
            return self._kind
        return self._chosen or LossKind.AMPLITUDE

    def use(self, kind: LossKind) -> None:
        """Set the loss chosen for ``auto`` (``poisson`` or ``amplitude``); ValueError for a
        fixed kind other than ``kind``."""
        if self._kind == LossKind.AUTO and kind in (LossKind.POISSON, LossKind.AMPLITUDE):
            self._chosen = kind
        elif kind != self._kind:
            raise ValueError(f"the loss is {self._kind}, not {kind}")

    def scale_tv(self, factor: float) -> None:
        """Set the total variation's weight to ``tv_weight`` times ``factor`` (a weight of 0
        stays 0)."""
        if self._tv is not None:
            self._tv.assign(self._tv_weight * factor)

    @property
    def tv_weight(self) -> float:
        """The total variation's weight in use."""
        return 0.0 if self._tv is None else float(self._tv.numpy())

    def _data_loss(
        self, predicted: tf.Tensor, measured: tf.Tensor, valid: tf.Tensor, mask: tf.Tensor
    ) -> tf.Tensor:
        return forward.data_loss(self.kind, predicted, measured, self._offset, valid, mask)

    def low_pass(self, intensity: tf.Tensor, sigma_px: tf.Tensor) -> tf.Tensor:
        """``intensity`` ``(..., n, n)`` with masked pixels zeroed, convolved (circularly) with
        a Gaussian of ``sigma_px`` pixels: a product in Fourier space (real-input FFTs)."""
        n = intensity.shape[-1]
        gain = tf.complex(tf.exp(-2.0 * np.pi**2 * sigma_px**2 * self._f2), 0.0)
        spectrum = tf.signal.rfft2d(intensity * self._mask)
        return tf.signal.irfft2d(spectrum * gain, fft_length=[n, n])

    def __call__(
        self,
        fields: tf.Tensor,
        measured: tf.Tensor,
        valid: tf.Tensor,
        windows: Sequence[tf.Tensor],
        held: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The loss the optimiser sees (data misfit plus TV), its data misfit alone, and the data
        misfit on the held-out pixels (``held`` ``(B, n, n)``, 1 where a pixel is held out;
        None: none, and a misfit of 0)."""
        predicted = forward.incoherent_intensity(fields)
        if self.blur_px is not None:
            sigma = tf.convert_to_tensor(self.blur_px)
            predicted, measured = tf.cond(
                sigma > 0.0,
                lambda: tuple(tf.unstack(self.low_pass(tf.stack([predicted, measured]), sigma))),
                lambda: (predicted, measured),
            )
        if held is None:
            misfit, check = self._data_loss(predicted, measured, valid, self._mask), tf.zeros(())
        else:
            misfit = self._data_loss(predicted, measured, valid, self._mask * (1.0 - held))
            check = self._data_loss(predicted, measured, valid, self._mask * held)
        loss = misfit
        if self._tv is not None:
            for window in windows:
                loss += self._tv * forward.total_variation(window, valid)
        return loss, misfit, check


class ForwardModel:
    """The four stages of a batch's prediction and the loss; see the module docstring."""

    def __init__(
        self,
        illumination: Illumination,
        sample: ThinObject | Multislice,
        propagation: FarField | NearField,
        detection: Detection,
    ):
        self.illumination, self.sample = illumination, sample
        self.propagation, self.detection = propagation, detection

    @property
    def canvases(self) -> list[Trainable]:
        """The object canvases, one per slice."""
        return self.sample.canvases

    @property
    def trainables(self) -> list[Trainable]:
        """Every variable of the model, canvases first."""
        return [
            *self.sample.canvases,
            *self.illumination.trainables,
            *self.sample.trainables,
            *self.propagation.trainables,
        ]

    def place(
        self, top_left: tf.Tensor, frac: tf.Tensor, idx: tf.Tensor, canvas_shape: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Windows and sub-pixel shifts of frames ``idx`` (:meth:`Illumination.place`)."""
        return self.illumination.place(top_left, frac, idx, canvas_shape)

    def loss(
        self,
        windows: Sequence[tf.Tensor],
        frac: tf.Tensor,
        measured: tf.Tensor,
        valid: tf.Tensor,
    ) -> tf.Tensor:
        """The loss of a batch: ``windows`` ``S x (B, n, n)`` complex object windows, ``frac``
        ``(B, 2)`` sub-pixel shifts, ``measured`` ``(B, n, n)`` frames (normalised, zero
        frequency at [0, 0]), ``valid`` ``(B,)`` 1 for a frame, 0 for padding."""
        return self.losses(windows, frac, measured, valid)[0]

    def losses(
        self,
        windows: Sequence[tf.Tensor],
        frac: tf.Tensor,
        measured: tf.Tensor,
        valid: tf.Tensor,
        held: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """As :meth:`loss`, with ``held`` ``(B, n, n)`` (1: a pixel held out of the loss):
        the loss without those pixels, its data misfit alone (no regulariser), and the data
        misfit on the held-out pixels."""
        probes = self.illumination(frac)
        fields = self.propagation(self.sample(probes, windows))
        return self.detection(fields, measured, valid, windows, held)


def build_model(
    geometry: Geometry,
    settings: EngineSettings,
    *,
    canvas_shape: tuple[int, int],
    capacity: int,
    n_seen: tf.Variable,
    offset: tf.Variable,
    pixel_mask: np.ndarray,
    distance_range_m: tuple[float, float],
) -> ForwardModel:
    """Assemble the stages ``settings`` and ``geometry`` ask for: the one place a new stage is
    added."""
    fresnel = initial.fresnel_phase(geometry) if geometry.propagation == FRESNEL else None
    thick = settings.slices > 1
    propagator = tuple(tf.constant(a) for a in angular_spectrum_constants(geometry))
    illumination = Illumination(
        settings.probe_modes,
        geometry.frame_px,
        capacity,
        n_seen,
        fresnel=None if thick else fresnel,
        subpixel=settings.subpixel,
        correct_positions=settings.correct_positions,
        max_shift_px=settings.position_max_px,
    )
    if thick:
        sample: ThinObject | Multislice = Multislice(
            canvas_shape,
            settings.slice_gaps_m,
            propagator,
            train_spacing=settings.train_slice_spacing,
            max_gap_m=max_gap_m(geometry),
            regulariser=settings.slice_regulariser,
            strength=settings.slice_regulariser_strength,
        )
    else:
        sample = ThinObject(canvas_shape)
    if geometry.propagation == NEAR_FIELD:
        propagation: FarField | NearField = NearField(
            geometry.propagation_distance_m,
            propagator,
            distance_range_m,
            train_distance=settings.train_distance,
        )
    else:
        propagation = FarField(fresnel if thick else None)
    detection = Detection(
        LossKind(settings.loss),
        offset,
        pixel_mask,
        settings.tv_weight,  # on each slice: benchmarks/multislice.py measured the shares
        coarse=settings.train_distance and settings.distance_blur_px > 0,
    )
    return ForwardModel(illumination, sample, propagation, detection)
