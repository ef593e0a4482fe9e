"""A simulated ptychography beamline in ophyd: a sample stage and a far-field detector.

The detector's trigger computes the noisy diffraction pattern of the ground truth at the stage's
current readback, so any Bluesky plan that moves the stage and triggers the detector produces a
ptychography scan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis, SynSignal

from ptystream.sim.detector import DetectorModel, diffraction_pattern
from ptystream.sim.sample import GroundTruth

__all__ = ["PtychoDetector", "SampleStage", "make_beamline"]


class SampleStage(Device):
    """Sample stage with x and y motors (motor units are set by the profile, micrometres here)."""

    x = Cpt(SynAxis, kind="hinted")
    y = Cpt(SynAxis, kind="hinted")


class _FrameSignal(SynSignal):
    """A computed image that declares its numpy dtype and shape.

    Without ``dtype_numpy`` TiledWriter stores float32 frames as float64 (STACK_NOTES §5).
    """

    frame_shape: tuple[int, int] = (0, 0)

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = super().describe()
        desc[self.name].update(dtype="array", dtype_numpy="<f4", shape=list(self.frame_shape))
        return desc


class PtychoDetector(Device):
    """A detector whose ``image`` is the far-field pattern at the stage's position, or a dark
    frame while ``shutter`` is ``closed``."""

    image = Cpt(_FrameSignal, kind="hinted")
    shutter = Cpt(Signal, value="open", kind="omitted")

    def configure_frames(
        self,
        func: Callable[[], np.ndarray],
        frame_shape: int | tuple[int, int],
        exposure_s: float,
        dark: Callable[[], np.ndarray] | None = None,
    ):
        """Frames of ``frame_shape`` (a side, or ``(H, W)``) from ``func``, or from ``dark``
        while the shutter is closed."""
        if dark is None:
            self.image._func = func
        else:
            self.image._func = lambda: dark() if self.shutter.get() == "closed" else func()
        if isinstance(frame_shape, int):
            frame_shape = (frame_shape, frame_shape)
        self.image.frame_shape = tuple(frame_shape)
        self.image.exposure_time = exposure_s

    def trigger(self):
        return self.image.trigger()


def make_beamline(
    truth: GroundTruth,
    detector: DetectorModel,
    *,
    motor_units_m: float,
    exposure_s: float = 0.0,
    name_prefix: str = "",
) -> tuple[SampleStage, PtychoDetector]:
    """Build the stage (``sx``/``sy`` readbacks) and detector (``det_image``) for ``truth``.

    ``exposure_s`` paces the scan like a real exposure; the frame is computed when it ends.
    """
    stage = SampleStage(name=f"{name_prefix}s")
    stage.x.readback.name = f"{name_prefix}sx"
    stage.y.readback.name = f"{name_prefix}sy"
    stage.x.setpoint.name = f"{name_prefix}sx_setpoint"
    stage.y.setpoint.name = f"{name_prefix}sy_setpoint"
    det = PtychoDetector(name=f"{name_prefix}det")

    def frame() -> np.ndarray:
        position_m = (
            stage.y.readback.get() * motor_units_m,
            stage.x.readback.get() * motor_units_m,
        )
        return detector.record(diffraction_pattern(truth, position_m))

    det.configure_frames(frame, truth.probe.shape[-1], exposure_s)
    return stage, det
