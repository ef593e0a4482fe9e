"""Simulated ophyd (v1) detectors that write their frames to real files.

The inline :class:`~ptystream.sim.devices.PtychoDetector` puts each frame in its event. Real
detectors write files and put a reference (a datum id) in the event instead, with ``resource``
and ``datum`` documents saying how to read it back. These devices do the same with the
simulated diffraction frames, so the live pipeline can be tested against the readers it will
meet at a beamline:

- :class:`NpySeqFrameSignal`: one ``.npy`` file per frame, spec ``NPY_SEQ``
  (read back with ``ophyd.sim.NumpySeqHandler``).
- :class:`AdHdf5FrameSignal`: one HDF5 file per run, frames appended to ``/entry/data/data``,
  spec ``AD_HDF5`` (read back with
  ``area_detector_handlers.handlers.AreaDetectorHDF5Handler``).

Both are triggerable, readable signals whose name is the event data key, usable in any step
plan (``bluesky.plans.list_scan([det], stage.y, ys, stage.x, xs)``, or
:func:`ptystream.sim.plans.ptycho_scan`). The frame at a point is
``detector_model.record(diffraction_pattern(truth, (y_m, x_m)))`` where ``(y_m, x_m)`` are the
stage readbacks times ``motor_units_m``, as in :func:`ptystream.sim.devices.make_beamline`.
Exposure time is not simulated: the frame is on disk before ``trigger`` returns.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ophyd.areadetector.filestore_mixins import resource_factory
from ophyd.sim import SynSignal, SynSignalWithRegistry
from ophyd.status import StatusBase

from ptystream.sim.detector import DetectorModel, diffraction_pattern
from ptystream.sim.devices import SampleStage
from ptystream.sim.sample import GroundTruth

__all__ = [
    "AD_HDF5_DATASET",
    "AdHdf5FrameSignal",
    "NpySeqFrameSignal",
    "ad_hdf5_detector",
    "frame_at_stage",
    "npy_seq_detector",
]

#: Where the area-detector HDF5 layout keeps the frames (fixed by ``AreaDetectorHDF5Handler``).
AD_HDF5_DATASET = "/entry/data/data"

AssetDoc = tuple[str, dict[str, Any]]


def frame_at_stage(
    truth: GroundTruth,
    detector_model: DetectorModel,
    stage: SampleStage,
    *,
    motor_units_m: float,
) -> Callable[[], np.ndarray]:
    """A function returning the (N, N) float32 frame at the stage's current readbacks.

    ``motor_units_m`` is metres per motor unit (1e-6 when the motors are in micrometres).
    """

    def frame() -> np.ndarray:
        position_m = (
            stage.y.readback.get() * motor_units_m,
            stage.x.readback.get() * motor_units_m,
        )
        return detector_model.record(diffraction_pattern(truth, position_m))

    return frame


def _describe_frame(desc: dict[str, dict[str, Any]], frame_px: int) -> dict[str, dict[str, Any]]:
    # ophyd.sim describes neither dtype_numpy nor (before the first trigger) the shape; without
    # dtype_numpy TiledWriter stores float32 frames as float64 (STACK_NOTES §5).
    for entry in desc.values():
        entry.update(dtype="array", dtype_numpy="<f4", shape=[frame_px, frame_px])
    return desc


class NpySeqFrameSignal(SynSignalWithRegistry):
    """One ``<save_path>/<stem>_<i>.npy`` file per trigger, spec ``NPY_SEQ``.

    ophyd's :class:`~ophyd.sim.SynSignalWithRegistry` does the file writing and the documents:
    ``stage`` caches a ``resource`` (``root=save_path``, ``resource_path=<stem>``, no kwargs),
    each ``trigger`` saves the frame and caches a ``datum`` (``datum_kwargs={"index": i}``),
    and ``read`` returns the datum id. This class only declares the frame's dtype and shape.
    Build it with :func:`npy_seq_detector`.
    """

    def __init__(self, *, name: str, save_path: str | Path, frame_px: int) -> None:
        # No func yet: SynSignal evaluates func once at construction, which would draw noise
        # from the detector's generator before the scan.
        super().__init__(name=name, save_path=str(save_path))
        self.frame_px = frame_px

    def describe(self) -> dict[str, dict[str, Any]]:
        return _describe_frame(super().describe(), self.frame_px)


class AdHdf5FrameSignal(SynSignal):
    """Frames appended to one HDF5 file per run, in the area-detector layout (spec ``AD_HDF5``).

    ``stage`` creates ``<save_path>/<short uid>.h5`` with an empty, growable float32 dataset
    ``/entry/data/data`` of shape (0, N, N), switches the file to SWMR, and caches a
    ``resource`` (``resource_kwargs={"frame_per_point": 1}``). Each ``trigger`` appends the
    frame, flushes the dataset (so a reader in another process sees it during the scan) and
    caches a ``datum`` with ``datum_kwargs={"point_number": i}``; ``read`` returns its datum id.
    ``unstage`` closes the file. Build it with :func:`ad_hdf5_detector`.

    Notes
    -----
    ``AreaDetectorHDF5Handler`` returns each point as a dask array of shape (1, N, N) (one
    frame per point, sliced ``[i:i+1]``); the descriptor says [N, N]. That handler suits reading
    after the scan: it fixes the dataset's length at its first call, so a Filler resolving
    events during the scan fails from the second point on. While the file is being written,
    open it per datum with ``h5py.File(path, "r", swmr=True)`` (works from this process and
    from others); a plain ``"r"`` open from another process fails ("already open for write").
    """

    def __init__(self, *, name: str, save_path: str | Path, frame_px: int) -> None:
        super().__init__(name=name)
        self.save_path = Path(save_path)
        self.frame_px = frame_px
        self._file: Any = None  # h5py.File while staged
        self._dataset: Any = None
        self._datum_factory: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self._asset_docs: deque[AssetDoc] = deque()
        self._reading: dict[str, dict[str, Any]] = {}
        self._n_written = 0

    @property
    def filename(self) -> Path | None:
        """The file being written while staged, else None."""
        return None if self._file is None else Path(self._file.filename)

    def stage(self) -> list[Any]:
        import h5py

        if self._file is not None:
            raise RuntimeError(f"{self.name} is already staged")
        self.save_path.mkdir(parents=True, exist_ok=True)
        resource_path = f"{uuid.uuid4().hex[:12]}.h5"
        # libver="latest" is required for SWMR; the dataset must exist before swmr_mode is set.
        self._file = h5py.File(self.save_path / resource_path, "w", libver="latest")
        n = self.frame_px
        self._dataset = self._file.create_dataset(
            AD_HDF5_DATASET,
            shape=(0, n, n),
            maxshape=(None, n, n),
            chunks=(1, n, n),
            dtype=np.float32,
        )
        self._file.swmr_mode = True
        resource, self._datum_factory = resource_factory(
            spec="AD_HDF5",
            root=str(self.save_path),
            resource_path=resource_path,
            resource_kwargs={"frame_per_point": 1},
            path_semantics="posix",
        )
        self._asset_docs.append(("resource", resource))
        self._n_written = 0
        self._reading = {}
        return [self]

    def unstage(self) -> list[Any]:
        if self._file is not None:
            self._file.close()
        self._file = self._dataset = self._datum_factory = None
        return [self]

    def trigger(self) -> StatusBase:
        if self._dataset is None or self._datum_factory is None:
            raise RuntimeError(f"stage {self.name} before triggering it (it writes a file)")
        status = super().trigger()  # computes the frame into self's value (no exposure time)
        frame = np.asarray(self.get(), dtype=np.float32)
        i = self._n_written
        self._dataset.resize(i + 1, axis=0)
        self._dataset[i] = frame
        self._dataset.flush()
        self._n_written += 1
        datum = self._datum_factory({"point_number": i})
        self._asset_docs.append(("datum", datum))
        self._reading = {self.name: {"value": datum["datum_id"], "timestamp": time.time()}}
        return status

    def read(self) -> dict[str, dict[str, Any]]:
        return dict(self._reading)

    def describe(self) -> dict[str, dict[str, Any]]:
        desc = _describe_frame(super().describe(), self.frame_px)
        for entry in desc.values():
            entry["external"] = "FILESTORE:"
        return desc

    def collect_asset_docs(self) -> Iterator[AssetDoc]:
        items = list(self._asset_docs)
        self._asset_docs.clear()
        yield from items


def _configure(
    signal: SynSignal,
    stage: SampleStage,
    truth: GroundTruth,
    detector_model: DetectorModel,
    motor_units_m: float,
) -> None:
    signal.sim_set_func(frame_at_stage(truth, detector_model, stage, motor_units_m=motor_units_m))


def npy_seq_detector(
    stage: SampleStage,
    truth: GroundTruth,
    detector_model: DetectorModel,
    *,
    motor_units_m: float,
    save_path: str | Path,
    key: str = "det_image",
) -> NpySeqFrameSignal:
    """A detector writing one ``.npy`` per point under ``save_path``; events carry datum ids.

    ``stage`` is the :class:`SampleStage` whose readbacks (``sx``/``sy`` from
    :func:`~ptystream.sim.devices.make_beamline`) place the probe; ``key`` is the event data key.
    """
    Path(save_path).mkdir(parents=True, exist_ok=True)
    det = NpySeqFrameSignal(name=key, save_path=save_path, frame_px=truth.probe.shape[-1])
    _configure(det, stage, truth, detector_model, motor_units_m)
    return det


def ad_hdf5_detector(
    stage: SampleStage,
    truth: GroundTruth,
    detector_model: DetectorModel,
    *,
    motor_units_m: float,
    save_path: str | Path,
    key: str = "det_image",
) -> AdHdf5FrameSignal:
    """A detector appending frames to one AD-layout HDF5 file per run under ``save_path``.

    ``stage`` is the :class:`SampleStage` whose readbacks place the probe; ``key`` is the
    event data key.
    """
    det = AdHdf5FrameSignal(name=key, save_path=save_path, frame_px=truth.probe.shape[-1])
    _configure(det, stage, truth, detector_model, motor_units_m)
    return det
