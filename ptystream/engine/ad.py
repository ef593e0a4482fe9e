"""The automatic-differentiation engine: streaming, warm-started, fixed batch shape.

The object and probe are float32 real and imaginary ``tf.Variable`` pairs (never complex
variables: Keras' Adam squares complex gradients as g^2, not |g|^2). They are updated by an Adam
written here rather than ``keras.optimizers.Adam`` because the engine needs to own the optimiser
state: the object canvas grows mid-scan (state padded, nothing lost), and a pixel first lit late
in the scan needs its own bias correction (a per-pixel step count; ENGINE_NOTES "Streaming").
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ptystream import optics
from ptystream.engine import canvas as canvases
from ptystream.engine import forward, initial
from ptystream.engine.adam import Adam, adam_update, sparse_adam_update, values_at
from ptystream.engine.checkpoint import EngineState, read_state, write_state
from ptystream.engine.distance import search_distance
from ptystream.engine.intake import FrameIntake
from ptystream.engine.setup import EngineSetup
from ptystream.types import FRESNEL, NEAR_FIELD, Estimate

__all__ = ["ADEngine"]

logger = logging.getLogger(__name__)


_DEFAULT_CAPACITY = 256


class ADEngine(FrameIntake):
    """AD ptychography (far field, Fresnel or near field; coherent or mixed-state probe) that
    accepts frames at any time and keeps its state.

    Parameters
    ----------
    setup : geometry, settings, plan, read noise, defocus, detector mask and initial probe
        (:class:`~ptystream.engine.setup.EngineSetup`). The plan sizes the canvas and frame
        buffer so that a normal scan never recompiles; unknown values are grown into. The read
        noise enters the loss's variance offset; masked pixels (gaps, hot pixels, a beamstop)
        never enter the loss. An initial probe (``(N, N)`` or ``(M, N, N)`` modes) is
        rescaled to the power of the first frames; missing modes are added, surplus ones
        dropped.

    Notes
    -----
    Each :meth:`step` takes the oldest frames not yet visited plus a random sample of earlier
    ones, up to ``settings.batch_size``; the batch shape never changes, so arriving frames never
    retrace. Data are normalised by the maximum of the first frames received.
    """

    def __init__(self, setup: EngineSetup):
        geometry, settings, plan = setup.geometry, setup.settings, setup.plan
        initial_probe, detector_mask = setup.initial_probe, setup.detector_mask
        self.geometry = geometry
        if initial_probe is not None and (
            initial_probe.ndim not in (2, 3) or initial_probe.shape[-2:] != geometry.frame_shape
        ):
            raise ValueError(
                f"initial probe is {initial_probe.shape}, frames are {geometry.frame_shape}"
            )
        self._initial_probe = initial_probe
        self.settings = settings
        self._n = geometry.frame_px
        self._dx = geometry.object_pixel_size_m
        self._noise_offset_counts = 0.375 + setup.read_noise_counts**2
        self._probe_defocus_m = setup.probe_defocus_m
        detector_mask = initial.check_detector_mask(detector_mask, geometry.frame_shape)
        self._valid_pixels = detector_mask
        self._near = geometry.propagation == NEAR_FIELD
        if settings.train_distance and not self._near:
            raise ValueError("train_distance needs a near-field geometry")
        self._rng = np.random.default_rng(settings.seed)
        self._scale: float | None = None
        self._n_frames = 0
        self._pending: collections.deque[int] = collections.deque()
        self._positions_m = np.zeros((0, 2))
        self._loss: list[tuple[int, float]] = []
        self._iteration = 0

        capacity = max(plan.n_points or _DEFAULT_CAPACITY, settings.batch_size)
        self._canvas = canvases.plan_canvas(plan, self._n, self._dx, settings.canvas_margin_px)
        h, w = self._canvas.shape if self._canvas else (self._n, self._n)
        self._obj_re = tf.Variable(tf.ones((h, w)))
        self._obj_im = tf.Variable(tf.zeros((h, w)))
        self._obj_count = tf.Variable(tf.zeros((h, w)), trainable=False)
        self._obj_adam = (Adam((h, w)), Adam((h, w)))
        self._modes = settings.probe_modes
        probe_shape = (self._modes, self._n, self._n)
        self._probe_re = tf.Variable(tf.zeros(probe_shape))
        self._probe_im = tf.Variable(tf.zeros(probe_shape))
        self._probe_count = tf.Variable(0.0, trainable=False)
        self._probe_adam = (Adam(probe_shape), Adam(probe_shape))
        self._fresnel = None
        if geometry.propagation == FRESNEL:
            self._fresnel = tf.constant(initial.fresnel_phase(geometry))
        self._offset = tf.Variable(1.0, trainable=False)
        self._pixel_mask = tf.constant(self._oriented(detector_mask).astype(np.float32))
        q = optics.angular_spectrum_phase(self._n, self._dx, geometry.wavelength_m)
        self._q = tf.constant(np.fft.ifftshift(q).astype(np.float32))
        fy, fx = optics.spatial_frequencies(self._n, self._dx)
        band = (fx**2 + fy**2 < 1.0 / geometry.wavelength_m**2).astype(np.float32)
        self._band = tf.constant(np.fft.ifftshift(band))  # evanescent waves do not propagate
        self._distance = tf.Variable(geometry.propagation_distance_m, dtype=tf.float32)
        self._distance_adam = Adam(())
        self._distance_count = tf.Variable(0.0, trainable=False)
        self._frames = tf.Variable(tf.zeros((capacity, self._n, self._n)), trainable=False)
        self._top_left = tf.Variable(tf.zeros((capacity, 2), tf.int32), trainable=False)
        self._frac = tf.Variable(tf.zeros((capacity, 2)), trainable=False)
        if settings.correct_positions and not settings.subpixel:
            raise ValueError("correct_positions needs subpixel shifts")
        self._shift = tf.Variable(tf.zeros((capacity, 2)))  # position corrections, pixels
        self._shift_count = tf.Variable(tf.zeros((capacity, 2)), trainable=False)
        self._shift_adam = Adam((capacity, 2))
        self._n_var = tf.Variable(0, dtype=tf.int32, trainable=False)
        self._step_fn = self._compile()

    # -- public API -----------------------------------------------------------------------

    #: While True, steps keep the propagation distance fixed even if it is trained.
    hold_distance: bool = False

    @property
    def distance_range_m(self) -> tuple[float, float]:
        """Distances the near-field model is valid for: (0, N dx^2 / lambda] (angular spectrum
        beyond it aliases; the loss in z then oscillates)."""
        return (1e-3 * self._dx, self._n * self._dx**2 / self.geometry.wavelength_m)

    @property
    def distance_m(self) -> float:
        """The propagation distance in metres (near field; fitted when trained)."""
        return float(self._distance.numpy())

    @distance_m.setter
    def distance_m(self, value: float) -> None:
        self._distance.assign(value)

    def search_distance(
        self, lo_m: float, hi_m: float, passes: int = 25
    ) -> tuple[float, dict[float, float]]:
        """Set the propagation distance to the best in ``[lo_m, hi_m]`` (near field).

        Joint gradient descent on (object, probe, z) sticks near a wrong start: the object and
        probe absorb the error. This scores each trial z by the loss after ``passes`` passes
        from the current state with z fixed, and searches a grid then a bounded Brent search
        (:func:`ptystream.engine.distance.search_distance`). The state is then restored, with
        z at the best trial. Returns it and every trial's score.
        """
        return search_distance(self, lo_m, hi_m, passes)

    @property
    def iteration(self) -> int:
        return self._iteration

    def warm_up(self) -> None:
        """Compile the step for the current shapes with an all-padding batch (changes nothing)."""
        b = self.settings.batch_size
        zero = tf.constant(0.0)
        self._step_fn(tf.zeros((b,), tf.int32), tf.zeros((b,)), zero, zero, zero, zero)

    def _store(
        self, first: int, frames: np.ndarray, top_left: np.ndarray, frac: np.ndarray
    ) -> None:
        # scatter, not a sliced assign (which copied the whole buffer on every call)
        rows = tf.range(first, first + len(frames))[:, None]
        self._frames.scatter_nd_update(rows, frames)
        self._top_left.scatter_nd_update(rows, top_left)
        self._frac.scatter_nd_update(rows, frac)
        self._n_var.assign(first + len(frames))

    def step(self, n_steps: int = 1) -> float:
        """Run ``n_steps`` steps on new frames plus a random sample of earlier ones."""
        if self._n_frames == 0:
            return float("nan")
        losses = [self._run_batch(*self._next_batch()) for _ in range(n_steps)]
        return float(np.mean(losses))

    def refine(self, epochs: int, on_epoch: Callable[[int, float], None] | None = None) -> float:
        """``epochs`` passes over all frames in random order; returns the last pass's mean loss.

        The learning rates follow a cosine from their settings down to
        ``settings.final_learning_rate_fraction`` of them over the passes: a constant rate leaves
        Adam jittering around the minimum by about the rate itself. ``on_epoch(i, loss)`` is
        called after pass ``i`` (from 0).
        """
        self._pending.clear()
        b = self.settings.batch_size
        floor = self.settings.final_learning_rate_fraction
        loss = float("nan")
        for epoch in range(epochs):
            progress = epoch / max(epochs - 1, 1)
            lr_scale = floor + (1.0 - floor) * 0.5 * (1.0 + np.cos(np.pi * progress))
            order = self._rng.permutation(self._n_frames)
            losses = []
            for start in range(0, len(order), b):
                chosen = order[start : start + b]
                idx = np.zeros(b, np.int32)
                idx[: len(chosen)] = chosen
                valid = np.zeros(b, np.float32)
                valid[: len(chosen)] = 1.0
                losses.append(self._run_batch(idx, valid, lr_scale))
            loss = float(np.mean(losses))
            if on_epoch is not None:
                on_epoch(epoch, loss)
        return loss

    def snapshot(self) -> EngineState:
        """The whole state (variables, optimiser moments, frames, bookkeeping) as numpy copies."""
        arrays, meta = self._bookkeeping()
        arrays |= {name: var.numpy() for name, (_, var) in self._state_variables().items()}
        arrays["loss"] = np.asarray(self._loss, dtype=np.float64).reshape(-1, 2)
        return EngineState(arrays, meta)

    def restore(self, state: EngineState, *, source: str = "state") -> None:
        """Continue from ``state`` (a :meth:`snapshot` of an engine with the same geometry and
        settings; ValueError naming what differs otherwise). Variables of another shape (a
        canvas that grew, more frames) are re-allocated and the step recompiled."""
        state.check(self.geometry, self.settings, source)
        reshaped = False
        for name, (owner_key, var) in self._state_variables().items():
            value = state.arrays[name]
            if tuple(var.shape) == value.shape:
                var.assign(value)
            else:
                setattr(*owner_key, tf.Variable(value, trainable=var.trainable))
                reshaped = True
        self._restore_bookkeeping(state)
        self._loss = [(int(i), float(v)) for i, v in state.arrays["loss"]]
        if reshaped:
            self._step_fn = self._compile()

    def save_state(self, path: str | Path) -> None:
        """Write :meth:`snapshot` to ``path`` (NPZ, atomically)."""
        write_state(self.snapshot(), path)

    def load_state(self, path: str | Path) -> None:
        """Continue from a state written by :meth:`save_state` (same geometry and settings)."""
        self.restore(read_state(path), source=str(path))

    def _state_variables(self) -> dict[str, tuple[tuple[Any, Any], tf.Variable]]:
        """Every ``tf.Variable`` of the state by checkpoint name, with where it is kept
        (``(owner, attribute)``, so that :meth:`restore` can replace it)."""
        obj_adam, probe_adam = self._obj_adam, self._probe_adam
        places: dict[str, tuple[Any, Any]] = {
            "object_re": (self, "_obj_re"),
            "object_im": (self, "_obj_im"),
            "object_count": (self, "_obj_count"),
            "object_m_re": (obj_adam[0], "m"),
            "object_v_re": (obj_adam[0], "v"),
            "object_m_im": (obj_adam[1], "m"),
            "object_v_im": (obj_adam[1], "v"),
            "probe_re": (self, "_probe_re"),
            "probe_im": (self, "_probe_im"),
            "probe_count": (self, "_probe_count"),
            "probe_m_re": (probe_adam[0], "m"),
            "probe_v_re": (probe_adam[0], "v"),
            "probe_m_im": (probe_adam[1], "m"),
            "probe_v_im": (probe_adam[1], "v"),
            "distance": (self, "_distance"),
            "distance_count": (self, "_distance_count"),
            "distance_m": (self._distance_adam, "m"),
            "distance_v": (self._distance_adam, "v"),
            "offset": (self, "_offset"),
            "frames": (self, "_frames"),
            "top_left": (self, "_top_left"),
            "frac": (self, "_frac"),
            "shift": (self, "_shift"),
            "shift_count": (self, "_shift_count"),
            "shift_m": (self._shift_adam, "m"),
            "shift_v": (self._shift_adam, "v"),
            "n_frames": (self, "_n_var"),
        }
        return {name: (place, getattr(*place)) for name, place in places.items()}

    def estimate(self, *, final: bool = False) -> Estimate:
        """Numpy snapshot of the current state."""
        obj = (self._obj_re.numpy() + 1j * self._obj_im.numpy()).astype(np.complex64)
        modes = (self._probe_re.numpy() + 1j * self._probe_im.numpy()).astype(np.complex64)
        probe = optics.orthogonalise_modes(modes) if self._modes > 1 else modes[0]
        origin = self._canvas.origin_m if self._canvas else np.zeros(2)
        return Estimate(
            object=obj,
            probe=probe,
            object_origin_m=(float(origin[0]), float(origin[1])),
            pixel_size_m=self._dx,
            positions_m=self._positions_m
            + self._shift[: self._n_frames].numpy().astype(np.float64) * self._dx,
            illumination=self._illumination(probe, obj.shape),
            iteration=self._iteration,
            n_frames=self._n_frames,
            frames_waiting=self.frames_waiting,
            loss=np.asarray(self._loss, dtype=np.float64).reshape(-1, 2),
            final=final,
            distance_m=float(self._distance.numpy()) if self._near else float("nan"),
        )

    # -- compiled step ---------------------------------------------------------------------

    def _compile(self):
        n = self._n
        settings = self.settings
        obj_vars = (self._obj_re, self._obj_im)
        # Adam on the whole canvas costs ~17 ns per pixel; on the batch's windows only, a fixed
        # ~8 ms (scatters, batch 16 of 128^2) that pays off on canvases over ~2 B n^2 pixels.
        h, w = self._obj_re.shape
        sparse = h * w > 2 * settings.batch_size * n * n
        probe_vars = (self._probe_re, self._probe_im)

        def train_step(idx, valid, object_lr, probe_lr, distance_lr, position_lr):
            with tf.GradientTape() as tape:
                probe = tf.complex(*probe_vars)  # (M, n, n)
                if self._fresnel is not None:  # folded in before the shift: it moves with it
                    probe = probe * self._fresnel
                top_left = tf.gather(self._top_left, idx)
                frac = tf.gather(self._frac, idx)
                if settings.correct_positions:
                    # the integer part picks the patch; the gradient flows through the rest
                    corner = tf.cast(top_left, tf.float32) + frac + tf.gather(self._shift, idx)
                    top_left = tf.cast(tf.floor(tf.stop_gradient(corner)), tf.int32)
                    top_left = tf.clip_by_value(top_left, 0, tf.shape(self._obj_re) - n)
                    frac = corner - tf.cast(top_left, tf.float32)
                pixels = forward.window_pixels(top_left, n)  # (B, n, n, 2)
                # padding frames point at the first frame's window (so duplicates agree)
                pixels = tf.where(valid[:, None, None, None] > 0, pixels, pixels[:1])
                patch_re = values_at(self._obj_re, pixels)
                patch_im = values_at(self._obj_im, pixels)
                tape.watch([patch_re, patch_im])
                patches = tf.complex(patch_re, patch_im)
                if settings.subpixel:
                    probes = forward.shifted_probes(probe, frac)
                else:
                    probes = probe[None]
                exit_waves = patches[:, None] * probes  # (B, M, n, n)
                if self._near:
                    predicted = forward.nearfield_intensity(
                        exit_waves, self._q, self._distance, self._band
                    )
                else:
                    predicted = forward.farfield_intensity(exit_waves)
                measured = tf.gather(self._frames, idx)
                loss = forward.data_loss(
                    str(settings.loss),
                    predicted,
                    measured,
                    self._offset,
                    valid,
                    self._pixel_mask,
                )
                if settings.tv_weight > 0:
                    loss += settings.tv_weight * forward.total_variation(patches, valid)
            extra = [self._distance] * settings.train_distance
            extra += [self._shift] * settings.correct_positions
            obj_sources = [patch_re, patch_im] if sparse else list(obj_vars)
            g_re, g_im, g_pr, g_pi, *g_extra = tape.gradient(
                loss,
                [*obj_sources, *probe_vars, *extra],
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            if sparse:  # read and write the batch's windows only
                write = tf.reduce_any(valid > 0)
                old_count = values_at(self._obj_count, pixels)
                count = old_count + 1.0
                self._obj_count.scatter_nd_update(pixels, tf.where(write, count, old_count))
                for var, state, g in zip(obj_vars, self._obj_adam, (g_re, g_im), strict=True):
                    g = forward.summed_at(g, pixels, tf.shape(var))  # overlapping windows add
                    sparse_adam_update(var, state, pixels, g, count, write, object_lr)
            else:  # update the whole canvas where the gradient is not zero
                g_re, g_im = tf.convert_to_tensor(g_re), tf.convert_to_tensor(g_im)
                touched = tf.logical_or(g_re != 0.0, g_im != 0.0)
                count = self._obj_count.assign_add(tf.cast(touched, tf.float32))
                adam_update(self._obj_re, g_re, self._obj_adam[0], count, touched, object_lr)
                adam_update(self._obj_im, g_im, self._obj_adam[1], count, touched, object_lr)
            active = probe_lr > 0.0
            p_count = self._probe_count.assign_add(tf.cast(active, tf.float32))
            every = tf.fill([self._modes, n, n], active)
            adam_update(self._probe_re, g_pr, self._probe_adam[0], p_count, every, probe_lr)
            adam_update(self._probe_im, g_pi, self._probe_adam[1], p_count, every, probe_lr)
            if settings.train_distance:
                fit = distance_lr > 0.0
                z_count = self._distance_count.assign_add(tf.cast(fit, tf.float32))
                g_z = g_extra.pop(0)
                adam_update(self._distance, g_z, self._distance_adam, z_count, fit, distance_lr)
                # angular spectrum holds only up to N dx^2 / lambda (ENGINE_NOTES)
                self._distance.assign(tf.clip_by_value(self._distance, *self.distance_range_m))
            if settings.correct_positions:
                g_shift = tf.convert_to_tensor(g_extra.pop(0))
                moved = tf.logical_and(g_shift != 0.0, position_lr > 0.0)
                s_count = self._shift_count.assign_add(tf.cast(moved, tf.float32))
                adam_update(self._shift, g_shift, self._shift_adam, s_count, moved, position_lr)
                seen = tf.range(tf.shape(self._shift)[0]) < self._n_var
                mean = tf.reduce_sum(tf.where(seen[:, None], self._shift, 0.0), axis=0) / tf.cast(
                    tf.maximum(self._n_var, 1), tf.float32
                )
                limit = settings.position_max_px
                self._shift.assign(
                    tf.where(
                        seen[:, None], tf.clip_by_value(self._shift - mean, -limit, limit), 0.0
                    )
                )
            return loss

        b = settings.batch_size
        signature = [
            tf.TensorSpec((b,), tf.int32),
            tf.TensorSpec((b,), tf.float32),
            tf.TensorSpec((), tf.float32),
            tf.TensorSpec((), tf.float32),
            tf.TensorSpec((), tf.float32),
            tf.TensorSpec((), tf.float32),
        ]
        return tf.function(train_step, input_signature=signature, jit_compile=settings.jit_compile)

    def _run_batch(self, idx: np.ndarray, valid: np.ndarray, lr_scale: float = 1.0) -> float:
        s = self.settings
        probe_lr = s.probe_learning_rate if self._iteration >= s.probe_start_step else 0.0
        position_lr = (
            s.position_learning_rate_px if self._iteration >= s.position_start_step else 0.0
        )
        loss = float(
            self._step_fn(
                tf.constant(idx),
                tf.constant(valid),
                tf.constant(lr_scale * s.object_learning_rate, tf.float32),
                tf.constant(lr_scale * probe_lr, tf.float32),
                tf.constant(
                    0.0 if self.hold_distance else lr_scale * s.distance_learning_rate_m,
                    tf.float32,
                ),
                tf.constant(lr_scale * position_lr, tf.float32),
            )
        )
        self._iteration += 1
        self._loss.append((self._iteration, loss))
        return loss

    def _next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        b = self.settings.batch_size
        chosen = [self._pending.popleft() for _ in range(min(b, len(self._pending)))]
        k = len(chosen)
        room = min(b - k, self._n_frames - k)
        if room > 0:
            # pending frames are a contiguous run [chosen[0], chosen[0] + k): draw from the
            # others without listing them, so a step costs the same at any scan length
            picks = self._rng.choice(self._n_frames - k, size=room, replace=False)
            if k:
                picks = np.where(picks >= chosen[0], picks + k, picks)
            chosen.extend(picks.tolist())
        idx = np.zeros(b, np.int32)
        idx[: len(chosen)] = chosen
        valid = np.zeros(b, np.float32)
        valid[: len(chosen)] = 1.0
        return idx, valid

    # -- state management ------------------------------------------------------------------

    def _initialise_from(self, patterns: np.ndarray, positions_m: np.ndarray) -> None:
        """Normalise by the first frames' maximum and build the initial probe from their mean.

        Masked pixels are left out of the maximum and filled from their neighbours in the mean.
        """
        self._scale = float(max(patterns[:, self._valid_pixels].max(), 1e-12))
        self._offset.assign(self._noise_offset_counts / self._scale)
        self._mean_pattern = optics.fill_masked(patterns.mean(axis=0), self._valid_pixels)
        self._mean_pattern /= self._scale
        self.restart_probe(self.geometry.propagation_distance_m)
        if self._canvas is None:
            lo, hi = positions_m.min(axis=0), positions_m.max(axis=0)
            self._canvas = self._canvas_for(lo, hi)
            self._resize_object(self._canvas.shape, (0, 0))

    def restart_probe(self, distance_m: float) -> None:
        """Set the probe to its initial estimate from the first frames' mean, built (near
        field) for the propagation distance ``distance_m``; its optimiser state is left as is."""
        geometry = dataclasses.replace(
            self.geometry, distance_m=distance_m * self.geometry.magnification
        )
        probe = initial.initial_probe(
            self._mean_pattern,
            geometry,
            probe_defocus_m=self._probe_defocus_m,
            given=self._initial_probe,
        )
        modes = self._initial_modes(probe)
        self._probe_re.assign(modes.real)
        self._probe_im.assign(modes.imag)

    def _initial_modes(self, probe: np.ndarray) -> np.ndarray:
        """``(M, N, N)`` starting modes from a probe ``(N, N)`` or modes ``(M', N, N)``, with
        the same total power: surplus modes dropped, missing ones added (10 % of the power)."""
        if probe.ndim == 2:
            probe = probe[None]
        modes = probe[: self._modes]
        if len(modes) < self._modes:
            extra = optics.initial_modes(probe[0], self._modes - len(probe) + 1)[1:]
            modes = np.concatenate([modes, extra])
        power = np.sum(np.abs(probe) ** 2) / max(np.sum(np.abs(modes) ** 2), 1e-30)
        return (modes * np.sqrt(power)).astype(np.complex64)

    def _move_corners(self, offset_px: np.ndarray) -> None:
        self._top_left.assign_add(
            tf.broadcast_to(tf.constant(offset_px, tf.int32), self._top_left.shape)
        )

    def _resize_object(self, shape: tuple[int, int], offset: tuple[int, int]) -> None:
        """Re-allocate object-shaped variables at ``shape``, old content placed at ``offset``."""

        def moved(var: tf.Variable, fill: float) -> tf.Variable:
            new = canvases.place(var.numpy(), shape, offset, fill)
            return tf.Variable(new, trainable=var.trainable)

        self._obj_re = moved(self._obj_re, 1.0)
        self._obj_im = moved(self._obj_im, 0.0)
        self._obj_count = moved(self._obj_count, 0.0)
        for adam in self._obj_adam:
            adam.m = moved(adam.m, 0.0)
            adam.v = moved(adam.v, 0.0)
        self._step_fn = self._compile()

    def _ensure_capacity(self, needed: int) -> None:
        capacity = self._frames.shape[0]
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity)
        logger.info("growing the frame buffer from %d to %d frames", capacity, new_capacity)

        def grown(var: tf.Variable) -> tf.Variable:
            old = var.numpy()
            new = np.zeros((new_capacity, *old.shape[1:]), old.dtype)
            new[:capacity] = old
            return tf.Variable(new, trainable=False)

        self._frames = grown(self._frames)
        self._top_left = grown(self._top_left)
        self._frac = grown(self._frac)
        self._shift = tf.Variable(grown(self._shift).numpy())  # trainable again
        self._shift_count = grown(self._shift_count)
        self._shift_adam.m = grown(self._shift_adam.m)
        self._shift_adam.v = grown(self._shift_adam.v)
        self._step_fn = self._compile()

    def _illumination(self, probe: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Summed probe intensity over the frames' windows (at the whole pixel of each corrected
        position), float32."""
        if self._n_frames == 0:
            return np.zeros(shape, np.float32)
        n = self._n_frames
        corners = self._top_left[:n].numpy() + self._frac[:n].numpy() + self._shift[:n].numpy()
        limit = np.array(shape) - self._n
        corners = np.clip(np.floor(corners).astype(int), 0, limit)
        intensity = np.abs(probe) ** 2
        if intensity.ndim == 3:
            intensity = intensity.sum(axis=0)
        return canvases.summed_windows(intensity, corners, shape)
