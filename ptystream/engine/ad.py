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
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ptystream import optics
from ptystream.config import LossKind
from ptystream.engine import canvas as canvases
from ptystream.engine import forward, initial
from ptystream.engine.adam import adam_update, sparse_adam_update, values_at
from ptystream.engine.checkpoint import EngineState, read_state, write_state
from ptystream.engine.distance import search_distance
from ptystream.engine.guard import GuardReport, LastGood, PassGuard, held_out_pixels
from ptystream.engine.intake import FrameIntake
from ptystream.engine.model import CANVAS, ELEMENTWISE, RATES, Trainable, build_model
from ptystream.engine.schedule import PassBudget
from ptystream.engine.setup import EngineSetup
from ptystream.types import NEAR_FIELD, Estimate

__all__ = ["ADEngine"]

logger = logging.getLogger(__name__)


_DEFAULT_CAPACITY = 256
#: The total variation's weight is at least and at most these times ``settings.tv_weight``
#: however many or few the photons (:meth:`ADEngine._tv_factor`). The floor keeps 3e-4 on clean
#: data where the total variation also steadies what the data leave ill-posed, noise or not (the
#: near field, several slices); a single far-field slice has no floor.
TV_MIN_FACTOR = 1.0
TV_MAX_FACTOR = 10.0
#: ``settings.tv_weight`` suits the amplitude loss; the Poisson deviance is twice as stiff at a
#: fit (its second derivative in the prediction 1/I against 1/(2(I + c))), so it gets twice it.
TV_POISSON_FACTOR = 2.0


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
        self._read_noise_counts = setup.read_noise_counts
        self._probe_defocus_m = setup.probe_defocus_m
        self._orientation_setup = setup.orientation
        detector_mask = initial.check_detector_mask(detector_mask, geometry.frame_shape)
        self._valid_pixels = detector_mask
        self._near = geometry.propagation == NEAR_FIELD
        if settings.train_distance and not self._near:
            raise ValueError("train_distance needs a near-field geometry")
        if settings.correct_positions and not settings.subpixel:
            raise ValueError("correct_positions needs subpixel shifts")
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
        self._modes = settings.probe_modes
        self._offset = tf.Variable(1.0, trainable=False)
        self._frames = tf.Variable(tf.zeros((capacity, self._n, self._n)), trainable=False)
        self._top_left = tf.Variable(tf.zeros((capacity, 2), tf.int32), trainable=False)
        self._frac = tf.Variable(tf.zeros((capacity, 2)), trainable=False)
        self._n_var = tf.Variable(0, dtype=tf.int32, trainable=False)
        self._model = build_model(
            geometry,
            settings,
            canvas_shape=(h, w),
            capacity=capacity,
            n_seen=self._n_var,
            offset=self._offset,
            pixel_mask=self._oriented(detector_mask).astype(np.float32),
            distance_range_m=self.distance_range_m,
        )
        self._since_regularised = 0
        fraction = settings.held_out_fraction
        self._held_every = round(1.0 / fraction) if fraction > 0 else 0
        self._held_phase = tf.constant(held_out_pixels(self._n, max(self._held_every, 1)))
        self._held: list[float] = []  # held-out misfit of each step of the current pass
        self._misfit: list[float] = []  # the data misfit (no regulariser) of each step
        self._holding = tf.Variable(1.0, trainable=False)  # 0: every pixel is fitted
        self._searching = False
        self._report = GuardReport()
        self._last_good = LastGood()  # for step(); refine()'s guard keeps its own
        self._probe_power: float | None = None  # held once per pass; None: the probe's own
        self._step_fns: dict[LossKind, Any] = {}  # compiled steps by loss kind

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
        """The propagation distance in metres (near field: fitted when trained)."""
        if not self._near:
            return self.geometry.propagation_distance_m
        return float(self._model.propagation.distance.parts[0].numpy())

    @distance_m.setter
    def distance_m(self, value: float) -> None:
        if not self._near:
            raise ValueError("only a near-field engine's propagation distance can be set")
        self._model.propagation.distance.parts[0].assign(value)

    @property
    def slice_gaps_m(self) -> tuple[float, ...]:
        """The distances between neighbouring object slices in metres (fitted when trained);
        empty for a thin object."""
        gaps = getattr(self._model.sample, "gaps", None)
        # float32 holds 7 significant digits: 6e-4 stays 6e-4, not 6.000000285e-4
        return () if gaps is None else tuple(float(f"{g:.7g}") for g in gaps.parts[0].numpy())

    def search_distance(
        self, lo_m: float, hi_m: float, passes: int = 25
    ) -> tuple[float, dict[float, float]]:
        """Set the propagation distance to the best in ``[lo_m, hi_m]`` (near field).

        Joint gradient descent on (object, probe, z) sticks near a wrong start: the object and
        probe absorb the error. This scores each trial z by the loss after ``passes`` passes
        from the current state with z fixed, and searches a grid then a bounded Brent search
        (:func:`ptystream.engine.distance.search_distance`). The state is then restored, with
        z at the best trial. Returns it and every trial's score. The trials fit every pixel
        and run all their passes (no held-out pixels, no early stop): they are compared by
        their fit, and 5 % fewer pixels moved the chosen z by 1.2 % on a clean scan.
        """
        self._searching = True
        self._holding.assign(0.0)
        report = dataclasses.replace(self._report, warnings=list(self._report.warnings))
        try:
            return search_distance(self, lo_m, hi_m, passes)
        finally:
            self._report = report  # what the trials' guards did is not the run's
            self._searching = False
            self._holding.assign(self._holding_wanted())

    @property
    def iteration(self) -> int:
        return self._iteration

    def warm_up(self) -> None:
        """Compile the step for the current shapes with an all-padding batch (changes nothing).
        An ``auto`` loss the frames have not chosen yet compiles the amplitude loss's step;
        frames that choose the Poisson deviance compile its step when they arrive (about as
        long again, once), which spares data with read noise a compile they never use."""
        b = self.settings.batch_size
        self._step_fn(tf.zeros((b,), tf.int32), tf.zeros((b,)), tf.zeros((len(RATES),)))

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
        self._held.clear()
        self._misfit.clear()
        losses = [self._run_batch(*self._next_batch()) for _ in range(n_steps)]
        if not np.isfinite(losses).all():
            self._report.diverged("not finite", f"step {self._iteration}")
            self._fall_back(self._last_good.state)
            self._last_good.discard()
            return float(np.mean(losses))
        self._since_regularised += n_steps * self.settings.batch_size
        if self._since_regularised >= self._n_frames:  # about once per pass's worth of frames
            # the state kept a pass's worth of steps ago: these steps, begun from it, were finite
            self._last_good.good(self._weights())
            self._regularise()
        return float(np.mean(losses))

    def refine(
        self,
        epochs: int | None = None,
        on_epoch: Callable[[int, float], None] | None = None,
        *,
        seconds: float | None = None,
    ) -> float:
        """``epochs`` passes over all frames in random order, or passes until ``seconds`` of
        wall time are spent (stopping between two steps, so the last pass may be partial);
        returns the last pass's mean loss.

        The learning rates follow a cosine from their settings down to
        ``settings.final_learning_rate_fraction`` of them over the passes, or over the seconds:
        a constant rate leaves Adam jittering around the minimum by about the rate itself.
        ``on_epoch(i, loss)`` is called after pass ``i`` (from 0), a partial last one included.
        """
        budget = PassBudget(epochs, seconds)
        self._pending.clear()
        if self._n_frames == 0:
            return float("nan")
        b = self.settings.batch_size
        floor = self.settings.final_learning_rate_fraction
        loss = float("nan")
        holding = self._held_every and float(self._holding.numpy()) > 0
        start = self._last_good.state
        guard = PassGuard(
            self.settings.early_stop_patience if holding else 0,
            report=self._report,
            last_good=start if start is not None else self._weights(),
            # coarse to fine: the misfit rises as the blur shrinks, so no ceiling from the start
            ceiling=math.inf if self._coarse() else 2.0 * self._current_loss(),
        )
        for epoch in budget.passes():
            order = self._rng.permutation(self._n_frames)
            losses = []
            self._held.clear()
            self._misfit.clear()
            for start in range(0, len(order), b):
                if losses and budget.spent:
                    break
                progress = budget.progress(epoch)
                lr_scale = floor + (1.0 - floor) * 0.5 * (1.0 + np.cos(np.pi * progress))
                chosen = order[start : start + b]
                idx = np.zeros(b, np.int32)
                idx[: len(chosen)] = chosen
                valid = np.zeros(b, np.float32)
                valid[: len(chosen)] = 1.0
                losses.append(self._run_batch(idx, valid, lr_scale))
            loss = float(np.mean(losses))
            self._regularise()
            if on_epoch is not None:
                on_epoch(epoch, loss)
            misfit = float(np.mean(self._misfit))
            held = float(np.mean(self._held)) if holding else misfit
            verdict = guard.after_pass(misfit, held, self._weights, judge=not self._coarse())
            if verdict in ("diverged", "give up"):
                self._fall_back(guard.last_good)
            if verdict in ("stop", "give up"):
                break
        self._last_good = LastGood(guard.last_good)
        if guard.report.stopped_early and guard.best is not None:
            self._set_weights(guard.best)  # the pass where the held-out misfit was lowest
        return loss

    def snapshot(self) -> EngineState:
        """The whole state (variables, optimiser moments, frames, bookkeeping) as numpy copies."""
        arrays, meta = self._bookkeeping()
        meta["probe_power"] = self._probe_power
        arrays |= {name: var.numpy() for name, (_, var) in self._state_variables().items()}
        arrays["loss"] = np.asarray(self._loss, dtype=np.float64).reshape(-1, 2)
        return EngineState(arrays, meta)

    def restore(self, state: EngineState, *, source: str = "state") -> None:
        """Continue from ``state`` (a :meth:`snapshot` of an engine with the same geometry and
        settings; ValueError naming what differs otherwise). Variables of another shape (a
        canvas that grew, more frames) are re-allocated and the step recompiled."""
        state.check(self.geometry, self.settings, source)
        missing = sorted(set(self._state_variables()) - set(state.arrays))
        if missing:
            raise ValueError(f"{source}: the engine state lacks {', '.join(missing)}")
        reshaped = False
        for name, (place, var) in self._state_variables().items():
            value = state.arrays[name]
            if tuple(var.shape) == value.shape:
                var.assign(value)
            else:
                _put(*place, tf.Variable(value, trainable=var.trainable))
                reshaped = True
        self._restore_bookkeeping(state)
        self._probe_power = state.meta.get("probe_power")  # older states: the probe's own
        if self.noise is not None:
            self._use_noise_model()
        self._loss = [(int(i), float(v)) for i, v in state.arrays["loss"]]
        if reshaped:
            self._step_fns.clear()

    def save_state(self, path: str | Path) -> None:
        """Write :meth:`snapshot` to ``path`` (NPZ, atomically)."""
        write_state(self.snapshot(), path)

    def load_state(self, path: str | Path) -> None:
        """Continue from a state written by :meth:`save_state` (same geometry and settings)."""
        self.restore(read_state(path), source=str(path))

    def _state_variables(self) -> dict[str, tuple[tuple[Any, Any], tf.Variable]]:
        """Every ``tf.Variable`` of the state by checkpoint name, with where it is kept
        (``(owner, key)``: an attribute, or an index into a list), so that :meth:`restore` can
        replace it."""
        places: dict[str, tuple[Any, Any]] = {
            "offset": (self, "_offset"),
            "frames": (self, "_frames"),
            "top_left": (self, "_top_left"),
            "frac": (self, "_frac"),
            "n_frames": (self, "_n_var"),
        }
        for trainable in self._model.trainables:
            places |= trainable.places()
        return {name: (place, _get(*place)) for name, place in places.items()}

    def estimate(self, *, final: bool = False) -> Estimate:
        """Numpy snapshot of the current state: the object ``(H, W)``, or ``(S, H, W)`` slices
        (first met by the beam first) for a multislice sample."""
        slices = [c.value().numpy().astype(np.complex64) for c in self._model.canvases]
        obj = slices[0] if len(slices) == 1 else np.stack(slices)
        modes = self._model.illumination.probe.value().numpy() * np.sqrt(self._scale or 1.0)
        modes = modes.astype(np.complex64)  # in sqrt(counts): the frames were divided by _scale
        probe = optics.orthogonalise_modes(modes) if self._modes > 1 else modes[0]
        origin = self._canvas.origin_m if self._canvas else np.zeros(2)
        return Estimate(
            object=obj,
            probe=probe,
            object_origin_m=(float(origin[0]), float(origin[1])),
            pixel_size_m=self._dx,
            positions_m=self._positions_m + self._shifts_px()[: self._n_frames] * self._dx,
            illumination=self._illumination(probe, slices[0].shape),
            iteration=self._iteration,
            n_frames=self._n_frames,
            frames_waiting=self.frames_waiting,
            loss=np.asarray(self._loss, dtype=np.float64).reshape(-1, 2),
            final=final,
            distance_m=self.distance_m if self._near else float("nan"),
            slice_gaps_m=self.slice_gaps_m,
            noise=self.noise.to_metadata() if self.noise else None,
            probe_defocus_m=self.probe_defocus_m,
            orientation=self.orientation.to_metadata() if self.orientation else None,
            training={**self._report.to_metadata(), "tv_weight": self._model.detection.tv_weight},
            warnings=self.input_warnings + tuple(self._report.warnings),
        )

    def _shifts_px(self) -> np.ndarray:
        """Position corrections of every frame slot ``(capacity, 2)``, object pixels."""
        return self._model.illumination.shift.parts[0].numpy().astype(np.float64)

    # -- compiled step ---------------------------------------------------------------------

    @property
    def _step_fn(self):
        """The compiled step for the shapes and the loss kind in use, compiled when first
        asked for (one XLA function per configuration)."""
        kind = self._model.detection.kind
        if kind not in self._step_fns:
            self._step_fns[kind] = self._compile()
        return self._step_fns[kind]

    def _compile(self):
        """The training step for the current shapes: it gathers the batch's windows of every
        canvas, asks the model for the loss, and updates each trained variable by Adam at the
        rate it names (see :mod:`ptystream.engine.model`); one XLA function."""
        n = self._n
        settings = self.settings
        model = self._model
        canvas_list = model.canvases
        others = [t for t in model.trainables if t.kind != CANVAS and t.trained]
        # Adam on the whole canvas costs ~17 ns per pixel; on the batch's windows only, a fixed
        # ~8 ms (scatters, batch 16 of 128^2) that pays off on canvases over ~2 B n^2 pixels.
        h, w = canvas_list[0].parts[0].shape
        sparse = h * w > 2 * settings.batch_size * n * n

        def train_step(idx, valid, rates):
            with tf.GradientTape() as tape:
                canvas_shape = tf.shape(canvas_list[0].parts[0])
                top_left = tf.gather(self._top_left, idx)
                frac = tf.gather(self._frac, idx)
                top_left, frac = model.place(top_left, frac, idx, canvas_shape)
                pixels = forward.window_pixels(top_left, n)  # (B, n, n, 2)
                # padding frames point at the first frame's window (so duplicates agree)
                pixels = tf.where(valid[:, None, None, None] > 0, pixels, pixels[:1])
                window_parts = [[values_at(p, pixels) for p in c.parts] for c in canvas_list]
                for parts in window_parts:
                    tape.watch(parts)
                windows = [tf.complex(*parts) for parts in window_parts]
                measured = tf.gather(self._frames, idx)
                held = None
                if self._held_every:
                    phase = self._held_phase[None] + idx[:, None, None]
                    held = tf.cast(tf.equal(phase % self._held_every, 0), tf.float32)
                    held *= self._holding
                loss, misfit, check = model.losses(windows, frac, measured, valid, held)
            canvas_sources = window_parts if sparse else [c.parts for c in canvas_list]
            sources = [p for parts in canvas_sources for p in parts]
            sources += [p for t in others for p in t.parts]
            grads = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            grads.reverse()  # popped in the order of sources
            for canvas in canvas_list:
                rate = rates[RATES.index(canvas.rate)]
                g_parts = [grads.pop() for _ in canvas.parts]
                if sparse:
                    _update_windows(canvas, pixels, g_parts, valid, rate)
                else:
                    _update_canvas(canvas, g_parts, rate)
            for trainable in others:
                rate = rates[RATES.index(trainable.rate)]
                g_parts = [tf.convert_to_tensor(grads.pop()) for _ in trainable.parts]
                _update(trainable, g_parts, rate)
                if trainable.constrain is not None:
                    trainable.constrain()
            return tf.stack([loss, misfit, check])

        b = settings.batch_size
        signature = [
            tf.TensorSpec((b,), tf.int32),
            tf.TensorSpec((b,), tf.float32),
            tf.TensorSpec((len(RATES),), tf.float32),
        ]
        step = tf.function(train_step, input_signature=signature, jit_compile=settings.jit_compile)
        step.get_concrete_function()  # traced now, for the model as it is (its loss kind)
        return step

    def _rates(self, lr_scale: float) -> np.ndarray:
        """The learning rate of each name of :data:`~ptystream.engine.model.RATES` for the next
        step: the settings' rates times ``lr_scale``, 0 where a schedule holds one back."""
        s, i = self.settings, self._iteration
        rates = {
            "object": s.object_learning_rate,
            "probe": s.probe_learning_rate if i >= s.probe_start_step else 0.0,
            "distance": 0.0 if self.hold_distance else s.distance_learning_rate_m,
            "position": s.position_learning_rate_px if i >= s.position_start_step else 0.0,
            "slice_spacing": s.slice_spacing_learning_rate_m,
        }
        scale = lr_scale * self._report.rate_factor  # lowered after a divergence
        return np.array([scale * rates[name] for name in RATES], np.float32)

    def _coarse(self) -> bool:
        """True while coarse to fine in z blurs the loss."""
        return self._model.detection.blur_px is not None and self._distance_blur_px() > 0

    def _distance_blur_px(self) -> float:
        """The coarse-to-fine blur of the next step: ``distance_blur_px`` falling linearly to 0
        over ``distance_blur_passes`` passes of z training (z's Adam steps times the batch over
        the frames); 0 while z is held."""
        s = self.settings
        if self.hold_distance:
            return 0.0
        steps = float(self._model.propagation.distance.count.numpy())
        passes = steps * s.batch_size / max(self._n_frames, 1)
        return s.distance_blur_px * max(0.0, 1.0 - passes / s.distance_blur_passes)

    def _run_batch(self, idx: np.ndarray, valid: np.ndarray, lr_scale: float = 1.0) -> float:
        blur = self._model.detection.blur_px
        if blur is not None:
            blur.assign(self._distance_blur_px())
        rates = tf.constant(self._rates(lr_scale))
        loss, misfit, check = self._step_fn(tf.constant(idx), tf.constant(valid), rates).numpy()
        loss = float(loss)
        self._misfit.append(float(misfit))
        self._held.append(float(check))
        self._iteration += 1
        self._loss.append((self._iteration, loss))
        return loss

    def _use_noise_model(self) -> None:
        """The loss :attr:`noise` chose, the total variation's weight for the noise
        (:meth:`_tv_factor`), and held-out pixels unless the loss is the Poisson deviance:
        with it, on a two-layer scan at 1e4 counts, the misfit rose above the start's when
        pixels were held out (per-slice |C| 0.98 against 0.993), so Poisson fits use every
        pixel and run without the early stop for now."""
        self._model.detection.use(self.noise.loss)
        self._model.detection.scale_tv(self._tv_factor())
        self._holding.assign(self._holding_wanted())

    def _tv_factor(self) -> float:
        """What ``settings.tv_weight`` is multiplied by: the square root of
        ``tv_reference_photons`` over the photons at the first frames' maximum (the
        normalisation), at most :data:`TV_MAX_FACTOR` and, in the near field or with several
        slices, at least :data:`TV_MIN_FACTOR`; times :data:`TV_POISSON_FACTOR` with the Poisson
        loss; 1 when ``tv_reference_photons`` is 0.

        Fewer photons, more noise the fit can over-fit, more weight; but less than in
        proportion (the data misfit's noise floor, ``g / (4 scale)`` in the engine's normalised
        units): with the probe's power held (:meth:`_regularise`), on
        benchmarks/robustness.py's far-field scans over 300 s, 3e-4 ended 0.0001 below its best
        |C| (0.987) at 500 counts peak, and at 50 counts peak (73 photons at the maximum) the
        weight in proportion (2e-3) peaked at 0.802 and fell by 0.02, 5e-3 and 1e-2 lower still,
        while 6.8e-4 rose without falling to 0.867 (the square root gives 7.8e-4). The floor:
        on the near-field scan at 1e5 counts peak, a weight of 3e-6 ended at |C| 0.796 against
        0.827 at 3e-4 after 130 passes; the total variation also steadies what the near field
        leaves ill-posed, noise or not. Several slices keep the floor too, as a precaution (not
        measured without it: benchmarks/multislice.py's scans have 500 counts, where the floor
        does not act). A single far-field slice has no floor: on the far-field scan at 1e5
        counts peak (the weight 2.1e-5, batch 8) |C| reached 0.99947 at 30 s of 120 against
        0.9977 with the floor (batch 16; 0.99912 at 16 without it), above mPIE's 0.99926 at
        120 s, while no total variation at all gave 0.99855. The Poisson factor: on the
        far-field scan at 500 counts without read noise (Poisson loss, batch 8) |C| at 30 / 60 /
        120 s was 0.9929 / 0.9951 / 0.9953 with the amplitude loss's weight (2.8e-4) and
        0.9955 / 0.9962 / 0.9965 with twice it."""
        reference = self.settings.tv_reference_photons
        if not reference or self.noise is None or not self._scale:
            return 1.0
        photons = self._scale / self.noise.estimate.counts_per_photon
        factor = float(np.sqrt(reference / max(photons, 1e-12)))
        floor = TV_MIN_FACTOR if self._near or self.settings.slices > 1 else 0.0
        stiffness = TV_POISSON_FACTOR if self.noise.loss == LossKind.POISSON else 1.0
        return stiffness * min(max(factor, floor), TV_MAX_FACTOR)

    def _holding_wanted(self) -> float:
        """1 when pixels are held out: not during a distance search (a restore there must not
        turn them back on), nor with the Poisson loss."""
        poisson = self.noise is not None and self.noise.loss == LossKind.POISSON
        return 0.0 if self._searching or poisson else 1.0

    def _current_loss(self) -> float:
        """The mean data misfit of the current state over every frame (the loss without its
        regulariser, which grows as the image forms), leaving the state as it was:
        steps at rate 0 (which still move Adam's moments, so those are put back). What a
        refinement's guard compares its passes with; costs about one pass."""
        saved = self._weights()
        b = self.settings.batch_size
        zero = tf.zeros((len(RATES),))
        losses = []
        for start in range(0, self._n_frames, b):
            chosen = np.arange(start, min(start + b, self._n_frames))
            idx = np.zeros(b, np.int32)
            idx[: len(chosen)] = chosen
            valid = np.zeros(b, np.float32)
            valid[: len(chosen)] = 1.0
            out = self._step_fn(tf.constant(idx), tf.constant(valid), zero)
            losses.append(float(out[1]))
        self._set_weights(saved)
        return float(np.mean(losses))

    def _trained_variables(self) -> dict[str, tf.Variable]:
        """The model's variables with their Adam state, by checkpoint name (no frames)."""
        places: dict[str, tuple[Any, Any]] = {}
        for trainable in self._model.trainables:
            places |= trainable.places()
        return {name: _get(*place) for name, place in places.items()}

    def _weights(self) -> dict[str, tf.Tensor]:
        """Copies of :meth:`_trained_variables` where they live (a GPU's memory, no copy to the
        host): a state to fall back on. A read shares the variable's buffer until the variable
        is next written, which then writes a new one, so the copy is made only if needed. Per
        pass on one CPU core, numpy copies cost 2.9 ms at 128² frames and 10.7 ms at 256², these
        1.9 and 4.3 ms; on a GPU the up to four states kept during a refinement stay in its
        memory."""
        return {name: tf.identity(var) for name, var in self._trained_variables().items()}

    def _set_weights(self, weights: dict[str, tf.Tensor]) -> None:
        """Put back :meth:`_weights`; variables that changed shape since (a canvas that grew)
        keep their values."""
        for name, var in self._trained_variables().items():
            value = weights.get(name)
            if value is not None and tuple(var.shape) == tuple(value.shape):
                var.assign(value)

    def _fall_back(self, weights: dict[str, tf.Tensor] | None) -> None:
        """After a divergence: back to the last good state, when there is one (the rates are
        lowered through the guard's report)."""
        if weights is not None:
            self._set_weights(weights)

    def _regularise(self) -> None:
        """Once per pass: the probe's power held where it started
        (:meth:`~ptystream.engine.model.Illumination.hold_power`), and the sample's regulariser
        along z (multislice), on the whole stack."""
        self._since_regularised = 0
        illumination = self._model.illumination
        if self._probe_power is None:  # a state saved before the power was held
            self._probe_power = illumination.power
        illumination.hold_power(self._probe_power)
        self._model.sample.regularise()

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
        """Normalise by the first frames' maximum and build the initial probe from their mean,
        with the defocus they show, after checking the positions' orientation
        (:meth:`~ptystream.engine.intake.FrameIntake._first_look`).

        Masked pixels are left out of the maximum and filled from their neighbours in the mean.
        """
        self._scale = float(max(patterns[:, self._valid_pixels].max(), 1e-12))
        self._offset.assign(self._fit_noise(patterns))
        self._use_noise_model()
        self._mean_pattern = optics.fill_masked(patterns.mean(axis=0), self._valid_pixels)
        self._mean_pattern /= self._scale
        positions_m = self._first_look(
            patterns, positions_m, self._mean_pattern, self.noise.offset_counts / self._scale
        )
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
            probe_defocus_m=self._initial_defocus_m or 0.0,  # None: no defocus applies
            given=self._initial_probe,
        )
        modes = self._initial_modes(probe)
        re, im = self._model.illumination.probe.parts
        re.assign(modes.real)
        im.assign(modes.imag)
        self._probe_power = float(np.sum(np.abs(modes) ** 2))

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
        """Re-allocate every canvas (and its Adam state and step counts) at ``shape``, the old
        content placed at ``offset``."""

        def moved(var: tf.Variable, fill: float) -> tf.Variable:
            new = canvases.place(var.numpy(), shape, offset, fill)
            return tf.Variable(new, trainable=var.trainable)

        for canvas in self._model.canvases:
            canvas.parts = [moved(p, f) for p, f in zip(canvas.parts, canvas.fills, strict=True)]
            canvas.count = moved(canvas.count, 0.0)
            for adam in canvas.adam:
                adam.m = moved(adam.m, 0.0)
                adam.v = moved(adam.v, 0.0)
        self._step_fns.clear()

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
            return tf.Variable(new, trainable=var.trainable)

        self._frames = grown(self._frames)
        self._top_left = grown(self._top_left)
        self._frac = grown(self._frac)
        for trainable in self._model.trainables:
            if trainable.per_frame:
                trainable.parts = [grown(p) for p in trainable.parts]
                trainable.count = grown(trainable.count)
                for adam in trainable.adam:
                    adam.m = grown(adam.m)
                    adam.v = grown(adam.v)
        self._step_fns.clear()

    def _illumination(self, probe: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Summed probe intensity over the frames' windows (at the whole pixel of each corrected
        position), float32."""
        if self._n_frames == 0:
            return np.zeros(shape, np.float32)
        n = self._n_frames
        corners = self._top_left[:n].numpy() + self._frac[:n].numpy() + self._shifts_px()[:n]
        limit = np.array(shape) - self._n
        corners = np.clip(np.floor(corners).astype(int), 0, limit)
        intensity = np.abs(probe) ** 2
        if intensity.ndim == 3:
            intensity = intensity.sum(axis=0)
        return canvases.summed_windows(intensity, corners, shape)


def _get(owner: Any, key: Any) -> Any:
    return owner[key] if isinstance(key, int) else getattr(owner, key)


def _put(owner: Any, key: Any, value: Any) -> None:
    if isinstance(key, int):
        owner[key] = value
    else:
        setattr(owner, key, value)


def _update_windows(
    canvas: Trainable, pixels: tf.Tensor, grads: list[tf.Tensor], valid: tf.Tensor, rate
) -> None:
    """Adam on the batch's windows ``pixels`` ``(B, n, n, 2)`` of a canvas only (nothing
    changes for an all-padding batch)."""
    write = tf.reduce_any(valid > 0)
    old_count = values_at(canvas.count, pixels)
    count = old_count + 1.0
    canvas.count.scatter_nd_update(pixels, tf.where(write, count, old_count))
    for var, state, g in zip(canvas.parts, canvas.adam, grads, strict=True):
        g = forward.summed_at(g, pixels, tf.shape(var))  # overlapping windows add
        sparse_adam_update(var, state, pixels, g, count, write, rate)


def _update_canvas(canvas: Trainable, grads: list[tf.Tensor], rate) -> None:
    """Adam on the whole canvas, where the gradient is not zero."""
    grads = [tf.convert_to_tensor(g) for g in grads]
    touched = tf.logical_or(grads[0] != 0.0, grads[1] != 0.0)
    count = canvas.count.assign_add(tf.cast(touched, tf.float32))
    for var, state, g in zip(canvas.parts, canvas.adam, grads, strict=True):
        adam_update(var, g, state, count, touched, rate)


def _update(trainable: Trainable, grads: list[tf.Tensor], rate) -> None:
    """Adam on a variable that is not a canvas: every element while the rate is not zero
    (``whole``), or the elements with a gradient (``elementwise``)."""
    active = rate > 0.0
    if trainable.kind == ELEMENTWISE:
        moved = tf.reduce_any(tf.stack([g != 0.0 for g in grads]), axis=0)
        touched = tf.logical_and(moved, active)
        count = trainable.count.assign_add(tf.cast(touched, tf.float32))
    else:
        touched = tf.fill(tf.shape(trainable.parts[0]), active)
        count = trainable.count.assign_add(tf.cast(active, tf.float32))
    for var, state, g in zip(trainable.parts, trainable.adam, grads, strict=True):
        adam_update(var, g, state, count, touched, rate)
