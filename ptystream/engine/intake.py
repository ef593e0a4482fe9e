"""Frames into an engine: the bookkeeping every streaming engine shares (numpy only).

Checking frames and positions, normalising, orienting (far-field frames are stored with zero
frequency at [0, 0], near-field ones as recorded), placing each frame on the object canvas, and
growing the canvas when a position falls outside. Engines differ only in where they keep things,
which they say by implementing the hooks below.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ptystream.config import EngineSettings, LossKind
from ptystream.engine import canvas as canvases
from ptystream.engine import initial, probe_search
from ptystream.engine.checkpoint import EngineState, identity
from ptystream.engine.noise import NoiseModel, noise_model
from ptystream.engine.orientation import (
    Orientation,
    OrientationCheck,
    OrientationSetup,
    can_judge,
    check_orientation,
    trial_scorer,
)
from ptystream.engine.probe_search import INFORMATIVE_FRACTION, DefocusSearch
from ptystream.types import FRESNEL, NEAR_FIELD, Geometry

__all__ = ["FrameIntake"]

logger = logging.getLogger(__name__)


class FrameIntake:
    """Mixin: :meth:`add_frames` and the canvas, over the hooks ``_initialise_from``,
    ``_ensure_capacity``, ``_store``, ``_resize_object`` and ``_move_corners``."""

    geometry: Geometry
    settings: EngineSettings
    _n: int
    _dx: float
    _near: bool
    _scale: float | None
    _canvas: canvases.Canvas | None
    _n_frames: int
    _pending: collections.deque[int]
    _positions_m: np.ndarray
    _iteration: int
    _rng: np.random.Generator
    _valid_pixels: np.ndarray
    _read_noise_counts: float | None
    _probe_defocus_m: float
    _initial_probe: np.ndarray | None
    _orientation_setup: OrientationSetup
    #: The noise model fitted to the first frames (None before them).
    noise: NoiseModel | None = None
    #: The check of the positions' orientation on the first frames (None before them, or
    #: with ``instrument.orientation: off``).
    orientation: OrientationCheck | None = None
    #: What the first frames look wrong for (zero frequency at the corner), for the warnings.
    input_warnings: tuple[str, ...] = ()

    #: The defocus search on the first frames, for the orientation the engine uses (None
    #: before them, where none ran, or after a restore).
    defocus_search: DefocusSearch | None = None

    _initial_defocus_m: float | None = None

    @property
    def probe_defocus_m(self) -> float:
        """The defocus in metres the initial probe was built with (far field): the one the
        search chose from the first frames, or the nominal one (kept in a saved state); NaN
        before the first frames and where no defocus applies (near field, a given probe)."""
        return float("nan") if self._initial_defocus_m is None else self._initial_defocus_m

    @property
    def n_frames(self) -> int:
        """Frames added so far."""
        return self._n_frames

    @property
    def frames_waiting(self) -> int:
        """Frames added but not yet in any optimiser step (each step takes them first)."""
        return len(self._pending)

    def add_frames(self, patterns: np.ndarray, positions: np.ndarray, *, unit: str = "m") -> None:
        """Append ``patterns`` ``(k, N, N)`` (counts; far field: centred diffraction patterns)
        taken with the probe centred at ``positions`` ``(k, 2)`` (y, x; ``unit`` ``"m"``:
        metres, ``"px"``: object pixels from the stage origin).

        Raises ValueError on a wrong shape or non-finite input (the pipeline filters these first).
        """
        patterns, positions_m = initial.checked_frames(
            patterns, positions, self._n, self._dx, unit, earlier_m=self._positions_m
        )
        k = len(patterns)
        if k == 0:
            return
        if self._scale is None:
            self._initialise_from(patterns, positions_m)
        positions_m = self._corrected(positions_m)
        self._ensure_canvas(positions_m)
        self._ensure_capacity(self._n_frames + k)
        top_left, frac = self._corners(positions_m)
        self._store(self._n_frames, self._oriented(patterns / self._scale), top_left, frac)
        self._positions_m = np.concatenate([self._positions_m, positions_m])
        self._pending.extend(range(self._n_frames, self._n_frames + k))
        self._n_frames += k

    def _fit_noise(self, patterns: np.ndarray, loss: LossKind | None = None) -> float:
        """Fit the noise model to the first ``patterns`` (counts; kept as :attr:`noise`) and
        return the amplitude loss's variance offset in the engine's normalised units (counts
        over ``_scale``, which must be set). ``loss``: the loss the engine uses whatever the
        settings say (the PIE engines' modulus projection); None: the settings' (``auto``
        resolved from the data)."""
        self.noise = noise_model(
            patterns,
            self._valid_pixels,
            read_noise_counts=self._read_noise_counts,
            loss=self.settings.loss if loss is None else loss,
        )
        return self.noise.offset_counts / self._scale

    def _first_look(
        self, patterns: np.ndarray, positions_m: np.ndarray, mean: np.ndarray, offset: float
    ) -> np.ndarray:
        """:meth:`_choose_start`, and a warning where the defocus search could not choose or
        chose far from the profile's defocus (:meth:`_say_about_the_search`)."""
        positions_m = self._choose_start(patterns, positions_m, mean, offset)
        self._say_about_the_search()
        return positions_m

    def _choose_start(
        self, patterns: np.ndarray, positions_m: np.ndarray, mean: np.ndarray, offset: float
    ) -> np.ndarray:
        """Choose the initial probe's defocus and check the positions' orientation on the
        first ``patterns`` (counts; far field centred) and their ``positions_m``; return those
        positions as the engine uses them (corrected where the check, in ``auto``, chose).

        ``mean`` is their mean over the normalisation, masked pixels filled, ``offset`` the
        amplitude loss's variance offset in the same units; the noise model must be fitted.
        Sets :attr:`probe_defocus_m` and :attr:`orientation`. The check first holds the probe
        chosen for the positions as given; where that does not confirm them and the defocus is
        searched, it is searched for each orientation (:mod:`ptystream.engine.orientation`'s
        notes).
        """
        assert self.noise is not None and self._scale is not None
        if self.geometry.propagation != NEAR_FIELD and initial.corner_centred(mean):
            self.input_warnings += (
                "the frames' mean has its direct beam at the corners, not in the middle: zero "
                "frequency at [0, 0], another package's convention; ptystream expects centred "
                "patterns (np.fft.fftshift(frames, axes=(-2, -1)) turns them around)",
            )
            logger.warning("%s", self.input_warnings[-1])
        setup = self._orientation_setup
        defocus = self._search_defocus(patterns, positions_m, mean, offset)
        self.defocus_search = defocus
        if setup.mode == "off" or not can_judge(positions_m):
            self._initial_defocus_m = defocus.defocus_m if defocus else self._nominal_defocus()
            if setup.mode != "off":
                self.orientation = check_orientation(
                    lambda choice: 0.0, positions_m, self.geometry, setup
                )
            return positions_m
        floor = 0.25 * self.noise.estimate.counts_per_photon / self._scale
        searched = defocus.defocus_m if defocus else self._nominal_defocus()
        fixed = self._fixed_probe_scorer(patterns, positions_m, mean, offset, searched)
        self.orientation = check_orientation(fixed, positions_m, self.geometry, setup, floor=floor)
        self._initial_defocus_m = searched
        if defocus is None or self.orientation.verdict == "confirmed":
            return positions_m
        # not confirmed with the probe chosen for the positions as given: a wrong orientation
        # may have chosen a wrong probe, so each orientation gets its own defocus search
        found = {Orientation(): defocus}

        def score(choice: Orientation) -> float:
            if choice not in found:
                moved = positions_m @ choice.transform(setup.rotation_deg).T
                found[choice] = self._search_defocus(patterns, moved, mean, offset)
            search = found[choice]
            # an orientation whose trials learnt nothing scores as the flat object (the same
            # for every orientation), not by its luckiest trial
            return min(search.trials.values()) if search.informative else search.flat

        self.orientation = check_orientation(score, positions_m, self.geometry, setup, floor=floor)
        self.defocus_search = found[self.orientation.used]
        self._initial_defocus_m = self.defocus_search.defocus_m
        return self._corrected(positions_m)

    def _say_about_the_search(self) -> None:
        """A warning where the defocus search could not choose (no trial predicted 5 % better
        than the flat object: the profile's defocus is used unchecked), or where it chose more
        than half the profile's own away from it (or of the other sign): then either the
        profile's value is wrong or the search was misled, and the data alone cannot say
        which."""
        search, told = self.defocus_search, self._probe_defocus_m
        if search is None:
            return
        chosen = search.defocus_m
        if not search.informative:
            message = (
                f"the probe defocus search could not choose: no trial probe predicted the "
                f"first frames {1 - INFORMATIVE_FRACTION:.0%} better than a flat object (the "
                f"best: {search.best_ratio:.3f} "
                f"of its misfit), so the profile's {told * 1e3:.3g} mm is used unchecked: a "
                "wrong instrument.probe_defocus_m goes unnoticed (few counts, weak or sparse "
                "scattering in the first frames' middle, or positions whose axes or units do "
                "not match the frames)"
            )
        elif told and abs(chosen - told) > 0.5 * abs(told):
            message = (
                f"the probe defocus search chose {chosen * 1e3:.3g} mm where the profile gives "
                f"{told * 1e3:.3g} mm: check instrument.probe_defocus_m; if the profile's value "
                "is right, engine.probe_defocus_search: false starts from it"
            )
        else:
            return
        self.input_warnings += (message,)
        logger.warning("%s", message)

    def _search_defocus(
        self, patterns: np.ndarray, positions_m: np.ndarray, mean: np.ndarray, offset: float
    ) -> DefocusSearch | None:
        """The defocus search on the first frames, or None where none runs."""
        return probe_search.first_frames_search(
            patterns,
            positions_m,
            mean,
            self.geometry,
            self.settings,
            nominal_m=self._probe_defocus_m,
            scale=self._scale,
            valid=self._valid_pixels,
            offset=offset,
            given=self._initial_probe is not None,
        )

    def _nominal_defocus(self) -> float | None:
        """The defocus the probe is built with where none is searched: the profile's, or None
        where none applies (near field, a given probe)."""
        return probe_search.nominal_defocus(
            self.geometry, self._probe_defocus_m, given=self._initial_probe is not None
        )

    def _fixed_probe_scorer(
        self,
        patterns: np.ndarray,
        positions_m: np.ndarray,
        mean: np.ndarray,
        offset: float,
        defocus_m: float | None,
    ) -> Callable[[Orientation], float]:
        """The orientation score with the initial probe of ``defocus_m`` held fixed."""
        probe = initial.initial_probe(
            mean,
            self.geometry,
            probe_defocus_m=defocus_m or 0.0,
            given=self._initial_probe,
        )
        if self.geometry.propagation == FRESNEL:  # the trial's FFT sees the phase folded in
            probe = probe * initial.fresnel_phase(self.geometry)
        return trial_scorer(
            patterns / self._scale,
            positions_m,
            probe[0] if probe.ndim == 3 else probe,
            mean,
            self.geometry,
            self._orientation_setup.rotation_deg,
            valid=self._valid_pixels,
            offset=offset,
        )

    def _corrected(self, positions_m: np.ndarray) -> np.ndarray:
        """``positions_m`` ``(k, 2)`` with the orientation check's correction, if any."""
        correction = self.orientation.correction if self.orientation else None
        return positions_m if correction is None else positions_m @ correction.T

    def _oriented(self, frames: np.ndarray) -> np.ndarray:
        """Frames (or a mask) as the engine stores them: far field with zero frequency at [0, 0]."""
        return frames if self._near else np.fft.ifftshift(frames, axes=(-2, -1))

    def _canvas_for(self, lo_m: np.ndarray, hi_m: np.ndarray) -> canvases.Canvas:
        return canvases.canvas_for(lo_m, hi_m, self._n, self._dx, self.settings.canvas_margin_px)

    def _corners(self, positions_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self._canvas is not None, "the canvas is set by the first frames"
        return canvases.corners(
            self._canvas, positions_m, self._n, self._dx, self.settings.subpixel
        )

    def _ensure_canvas(self, positions_m: np.ndarray) -> None:
        """Grow the canvas (in large chunks) so every probe window fits."""
        old = self._canvas
        assert old is not None, "the canvas is set by the first frames"
        grown = canvases.growth(old, self._corners(positions_m)[0], self._n, self._dx)
        if grown is None:
            return
        new, grow_lo = grown
        logger.info("growing the object canvas from %s to %s px", old.shape, new.shape)
        self._canvas = new
        self._resize_object(new.shape, (int(grow_lo[0]), int(grow_lo[1])))
        self._move_corners(grow_lo)

    # -- state ---------------------------------------------------------------------------

    def _bookkeeping(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays and JSON-able values of the state every engine keeps the same way."""
        canvas = self._canvas
        meta = {
            **identity(self.geometry, self.settings),
            "scale": self._scale,
            "n_frames": self._n_frames,
            "pending": [int(i) for i in self._pending],
            "iteration": self._iteration,
            "canvas_shape": [int(v) for v in canvas.shape] if canvas else None,
            "canvas_origin_m": canvas.origin_m.tolist() if canvas else None,
            "rng": self._rng.bit_generator.state,
            "noise": self.noise.to_metadata() if self.noise else None,
            "orientation": self.orientation.to_metadata() if self.orientation else None,
            "input_warnings": list(self.input_warnings),
            "initial_defocus_m": self._initial_defocus_m,
        }
        return {"positions_m": self._positions_m.copy()}, meta

    def _restore_bookkeeping(self, state: EngineState) -> None:
        meta = state.meta
        self._positions_m = state.arrays["positions_m"].copy()
        self._scale = meta["scale"]
        noise = meta.get("noise")  # states saved before the noise model lack it
        self.noise = NoiseModel.from_metadata(noise) if noise else None
        orientation = meta.get("orientation")  # states saved before the check lack it
        self.orientation = OrientationCheck.from_metadata(orientation) if orientation else None
        self.input_warnings = tuple(meta.get("input_warnings", ()))
        self._initial_defocus_m = meta.get("initial_defocus_m")  # older states lack it: NaN
        self.defocus_search = None  # its verdict is in the input warnings
        self._n_frames = meta["n_frames"]
        self._pending.clear()
        self._pending.extend(meta["pending"])
        self._iteration = meta["iteration"]
        self._canvas = None
        if meta["canvas_shape"] is not None:
            self._canvas = canvases.Canvas(
                tuple(meta["canvas_shape"]), np.asarray(meta["canvas_origin_m"])
            )
        self._rng.bit_generator.state = meta["rng"]

    # -- hooks -----------------------------------------------------------------------------

    def _initialise_from(self, patterns: np.ndarray, positions_m: np.ndarray) -> None:
        """Set the normalisation, the initial probe and (if unplanned) the canvas."""
        raise NotImplementedError

    def _ensure_capacity(self, needed: int) -> None:
        """Make room for ``needed`` frames."""
        raise NotImplementedError

    def _store(
        self, first: int, frames: np.ndarray, top_left: np.ndarray, frac: np.ndarray
    ) -> None:
        """Keep normalised, oriented ``frames`` and their windows from index ``first`` on."""
        raise NotImplementedError

    def _resize_object(self, shape: tuple[int, int], offset: tuple[int, int]) -> None:
        """Re-allocate object-shaped state at ``shape``, old content placed at ``offset``."""
        raise NotImplementedError

    def _move_corners(self, offset_px: np.ndarray) -> None:
        """Shift every stored window's top-left corner by ``offset_px`` (canvas grew before)."""
        raise NotImplementedError
