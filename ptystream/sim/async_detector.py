"""A simulated ophyd-async detector writing ptychography frames to HDF5 (StreamResource/Datum).

Modelled on ``ophyd_async.sim.SimBlobDetector``: a :class:`~ophyd_async.core.StandardDetector`
assembled from trigger, acquire and data logics around one shared frame writer. The writer
appends float32 (N, N) diffraction frames to ``/entry/data/data`` of an HDF5 file opened with
``libver="latest"`` and switched to SWMR, flushing after each frame, so a reader can open it
with ``h5py.File(path, "r", swmr=True)`` while the scan runs. Documents come from ophyd-async's
own :class:`~ophyd_async.core.StreamResourceDataProvider`: one ``stream_resource``
(mimetype ``application/x-hdf5``, ``parameters={"dataset": "/entry/data/data",
"chunk_shape": (1, N, N)}``) per file, then ``stream_datum`` documents whose ``indices`` are
ranges of frames in that dataset.

The descriptor entry of the frame key is ``{"dtype": "array", "shape": [1, N, N],
"dtype_numpy": "<f4", "external": "STREAM:"}``: one frame per event (ophyd-async puts
``collections_per_event`` first).

Where frame ``j`` of the file is computed:

- with an empty fly trajectory (the default), at the readbacks of ``stage`` when the frame is
  taken (step scans: one frame per ``trigger``);
- after the plan has set ``detector.fly_y_m``/``detector.fly_x_m`` (metres), at position
  ``j`` of those arrays (fly scans: :func:`ptystream.sim.fly.fly_scan`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
from ophyd_async.core import (
    Array1D,
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    PathProvider,
    SignalR,
    StandardDetector,
    StandardReadable,
    StreamableDataProvider,
    StreamResourceDataProvider,
    StreamResourceInfo,
    TriggerInfo,
    soft_signal_r_and_setter,
    soft_signal_rw,
)
from ophyd_async.sim import SimMotor

from ptystream.sim.detector import DetectorModel, diffraction_pattern
from ptystream.sim.sample import GroundTruth

__all__ = ["FRAME_DATASET", "AsyncSampleStage", "SimPtychoDetector"]

#: Dataset holding the frames, (n, N, N) float32 (the area-detector layout).
FRAME_DATASET = "/entry/data/data"


class AsyncSampleStage(StandardReadable):
    """An ophyd-async sample stage: ``x`` and ``y`` :class:`~ophyd_async.sim.SimMotor` s.

    The motors' readbacks appear in events as ``x_key``/``y_key`` (``sx``/``sy``, like the ophyd
    :class:`~ptystream.sim.devices.SampleStage`), in motor units (``units``, micrometres here);
    setpoints are ``sx-user_setpoint``/``sy-user_setpoint`` and are not read. The motors move
    instantly (velocity 0), so a simulated step scan does not wait for motion.
    """

    def __init__(
        self, name: str = "", *, x_key: str = "sx", y_key: str = "sy", units: str = "um"
    ) -> None:
        self._keys = (x_key, y_key)
        with self.add_children_as_readables():
            self.x = SimMotor(instant=True, units=units)
            self.y = SimMotor(instant=True, units=units)
        super().__init__(name=name)

    def set_name(self, name: str, *, child_name_separator: str | None = None) -> None:
        # Keep the motors' keys whatever the stage is called (init_devices names it after the
        # variable), so profiles can rely on them.
        super().set_name(name, child_name_separator=child_name_separator)
        self.x.set_name(self._keys[0], child_name_separator=child_name_separator)
        self.y.set_name(self._keys[1], child_name_separator=child_name_separator)


class _FrameWriter:
    """Computes frames and appends them to the open HDF5 file; shared by the three logics."""

    def __init__(
        self,
        truth: GroundTruth,
        detector_model: DetectorModel,
        stage: AsyncSampleStage | None,
        motor_units_m: float,
        fly_y_m: SignalR[Array1D[np.float64]],
        fly_x_m: SignalR[Array1D[np.float64]],
        exposure_s: float,
    ) -> None:
        self.truth = truth
        self.detector_model = detector_model
        self.stage = stage
        self.motor_units_m = motor_units_m
        self.fly_y_m, self.fly_x_m = fly_y_m, fly_x_m
        self.frame_px = int(truth.probe.shape[-1])
        self.default_period_s = exposure_s
        self.period_s = exposure_s
        self.n_frames = 1
        self.images_written, self._set_images_written = soft_signal_r_and_setter(int)
        self._file: Any = None  # h5py.File while open
        self._dataset: Any = None

    def open(self, path: Path) -> None:
        import h5py

        self.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        n = self.frame_px
        # libver="latest" is needed for SWMR; datasets must exist before swmr_mode is set.
        self._file = h5py.File(path, "w", libver="latest")
        self._dataset = self._file.create_dataset(
            FRAME_DATASET, shape=(0, n, n), maxshape=(None, n, n), chunks=(1, n, n), dtype="<f4"
        )
        self._file.swmr_mode = True
        self._set_images_written(0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._dataset = None

    async def _position_m(self, j: int) -> tuple[float, float]:
        ys, xs = await asyncio.gather(self.fly_y_m.get_value(), self.fly_x_m.get_value())
        if len(ys):
            if j >= len(ys) or len(xs) != len(ys):
                raise RuntimeError(
                    f"frame {j} has no fly position: the trajectory has {len(ys)} y and "
                    f"{len(xs)} x values"
                )
            return float(ys[j]), float(xs[j])
        if self.stage is None:
            raise RuntimeError("no stage to read positions from and no fly trajectory set")
        y, x = await asyncio.gather(
            self.stage.y.user_readback.get_value(), self.stage.x.user_readback.get_value()
        )
        return y * self.motor_units_m, x * self.motor_units_m

    async def write_frames(self) -> None:
        """Write ``n_frames`` frames, one every ``period_s`` seconds (as fast as possible if 0)."""
        if self._dataset is None:
            raise RuntimeError("the frame file is not open: prepare the detector first")
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in range(self.n_frames):
            j = self._dataset.shape[0]
            position_m = await self._position_m(j)
            frame = self.detector_model.record(diffraction_pattern(self.truth, position_m))
            await asyncio.sleep(max(0.0, start + (k + 1) * self.period_s - loop.time()))
            self._dataset.resize(j + 1, axis=0)
            self._dataset[j] = frame
            self._dataset.flush()
            self._set_images_written(j + 1)


class _TriggerLogic(DetectorTriggerLogic):
    """Internal triggering only: ``num`` frames, one per ``livetime + deadtime`` seconds."""

    def __init__(self, writer: _FrameWriter) -> None:
        self.writer = writer

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        self.writer.n_frames = num
        self.writer.period_s = (livetime + deadtime) or self.writer.default_period_s

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo()


class _AcquireLogic(DetectorAcquireLogic):
    """Runs :meth:`_FrameWriter.write_frames` as a task, like ``BlobAcquireLogic``."""

    def __init__(self, writer: _FrameWriter) -> None:
        self.writer = writer
        self.task: asyncio.Task[None] | None = None

    async def start_acquiring(self) -> None:
        self.task = asyncio.create_task(self.writer.write_frames())

    async def wait_for_idle(self) -> None:
        if self.task:
            await self.task

    async def ensure_stopped(self) -> None:
        if self.task:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class _DataLogic(DetectorDataLogic):
    """Opens one file per prepare and describes it with a :class:`StreamResourceDataProvider`."""

    def __init__(self, writer: _FrameWriter, path_provider: PathProvider, key: str) -> None:
        self.writer = writer
        self.path_provider = path_provider
        self.key = key

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        # The data key is ours (``key``), not the detector's name, so a profile's
        # ``detector_key`` can name it.
        info = self.path_provider(self.key)
        filename = f"{info.filename}.h5"
        self.writer.open(Path(info.directory_path) / filename)
        n = self.writer.frame_px
        resource = StreamResourceInfo(
            data_key=self.key,
            shape=(n, n),
            chunk_shape=(1, n, n),
            dtype_numpy=np.dtype(np.float32).str,
            parameters={"dataset": FRAME_DATASET},
        )
        return StreamResourceDataProvider(
            uri=f"{info.directory_uri}{filename}",
            resources=[resource],
            mimetype="application/x-hdf5",
            collections_written_signal=self.writer.images_written,
        )

    async def stop(self) -> None:
        self.writer.close()

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return [self.key]


class SimPtychoDetector(StandardDetector):
    """A step- and fly-scannable detector writing simulated diffraction frames to HDF5.

    Parameters
    ----------
    path_provider : where files go, e.g. ``StaticPathProvider(UUIDFilenameProvider(), dir)``;
        one file ``<filename>.h5`` per prepare (per run in a step scan).
    truth, detector_model : the sample and the noise model of the frames.
    stage : the stage whose readbacks (motor units) place the probe in step scans; None for a
        detector used only in fly scans.
    motor_units_m : metres per motor unit of ``stage`` (1e-6 for micrometres).
    key : the event data key of the frames (``instrument.detector_key`` of a profile).
    exposure_s : seconds per frame when the plan's TriggerInfo gives no livetime/deadtime.
    name : the device name (child signals are ``<name>-fly_y_m`` ...); not the data key.

    Notes
    -----
    ``fly_y_m``/``fly_x_m`` (metres, 1-D float64 soft signals) hold a fly trajectory: while
    non-empty, frame ``j`` of the file is computed at ``(fly_y_m[j], fly_x_m[j])`` instead of at
    the stage. :func:`ptystream.sim.fly.fly_scan` sets them and empties them at the end.
    Create the RunEngine before ``init_devices()`` (it connects on the RunEngine's loop).
    """

    def __init__(
        self,
        path_provider: PathProvider,
        truth: GroundTruth,
        detector_model: DetectorModel,
        *,
        stage: AsyncSampleStage | None = None,
        motor_units_m: float = 1e-6,
        key: str = "det_image",
        exposure_s: float = 0.0,
        name: str = "",
    ) -> None:
        self.fly_y_m = soft_signal_rw(Array1D[np.float64], units="m")
        self.fly_x_m = soft_signal_rw(Array1D[np.float64], units="m")
        # The writer keeps the stage: as an attribute of this Device it would become a child
        # and be renamed after the detector.
        writer = _FrameWriter(
            truth, detector_model, stage, motor_units_m, self.fly_y_m, self.fly_x_m, exposure_s
        )
        self.add_detector_logics(
            _TriggerLogic(writer),
            _AcquireLogic(writer),
            _DataLogic(writer, path_provider, key),
        )
        self.key = key
        super().__init__(name=name)
