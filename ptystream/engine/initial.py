"""What every engine takes in and starts from (numpy only): frames and positions (refused when
they cannot be one scan, before any canvas is sized for them), the detector mask, the initial
probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptystream import optics
from ptystream.types import FRESNEL, NEAR_FIELD, Geometry

__all__ = [
    "MAX_CANVAS_PX",
    "MAX_SCAN_WINDOWS",
    "MAX_STAGE_TRAVEL_M",
    "check_detector_mask",
    "check_positions",
    "checked_frames",
    "corner_centred",
    "fresnel_phase",
    "initial_probe",
    "read_probe_file",
]

#: Farthest a position (m) may be from the stage origin: no sample stage travels a metre.
MAX_STAGE_TRAVEL_M = 1.0
#: Most probe windows (frame_px object pixels) a scan may span. Real scans span up to a few
#: hundred, and a scan of more than one window read 1000 times too large spans more than this.
MAX_SCAN_WINDOWS = 1000
#: Most object-canvas pixels: 2e9 complex64 pixels are 16 GB per copy, and an engine keeps
#: several (object, gradients, optimiser moments).
MAX_CANVAS_PX = 2e9


def checked_frames(
    patterns: np.ndarray,
    positions: np.ndarray,
    n: int,
    pixel_size_m: float,
    unit: str = "m",
    *,
    earlier_m: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames as float32 ``(k, n, n)`` and probe positions as float64 ``(k, 2)`` metres.

    ``positions`` are ``(y, x)`` of the probe's centre, in metres (``unit="m"``) or in object
    pixels of ``pixel_size_m`` from the stage origin (``unit="px"``). Raises ValueError naming
    the problem: a wrong shape, a count mismatch, a non-finite value or an unknown unit, or
    positions that cannot be one scan (:func:`check_positions`: thousands of probe windows
    wide, a metre from the stage origin, or a canvas too large for memory; usually micrometres
    read as metres). ``earlier_m``: the positions already added, which the canvas covers too.
    This runs before any canvas is sized for the positions, so a unit slip is a message rather
    than an out-of-memory error.
    """
    if unit not in ("m", "px"):
        raise ValueError(f"position unit must be 'm' or 'px', got {unit!r}")
    patterns = np.asarray(patterns, dtype=np.float32)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    if patterns.ndim != 3 or patterns.shape[1:] != (n, n):
        raise ValueError(f"frames must be (k, {n}, {n}), got {patterns.shape}")
    if len(patterns) != len(positions):
        raise ValueError(f"{len(patterns)} frames but {len(positions)} positions")
    if not (np.isfinite(patterns).all() and np.isfinite(positions).all()):
        raise ValueError("frames and positions must be finite")
    positions_m = positions * pixel_size_m if unit == "px" else positions
    check_positions(positions_m, n, pixel_size_m, earlier_m=earlier_m)
    return patterns, positions_m


def _positions_slip(size_m: float, low_m: float, high_m: float) -> str:
    """What to do when positions spanning (or reaching) ``size_m`` metres look too large: each
    unit (mm, µm, nm) that brings them between ``low_m`` and ``high_m``."""
    units = ((1e-3, "millimetres"), (1e-6, "micrometres"), (1e-9, "nanometres"))
    fits = [(f, name) for f, name in units if low_m <= size_m * f <= high_m]
    if not fits:
        return "positions must be metres (or object pixels with unit='px')"
    settings = "; ".join(
        f"if they are {name}, set instrument.motor_units_m: {f:.0e}".replace("e-0", "e-")
        for f, name in fits
    )
    return (
        f"they look {' or '.join(f'{1 / f:g}' for f, _ in fits)} times too large: {settings} "
        "(metres per motor unit; divide a value set already by the same factor), or pass "
        "positions in metres"
    )


def check_positions(
    positions_m: np.ndarray,
    frame_px: int,
    pixel_size_m: float,
    *,
    earlier_m: np.ndarray | None = None,
) -> None:
    """Raise ValueError when probe positions (metres, ``(k, 2)``) cannot be one scan, before any
    canvas is allocated for them.

    Refused: a span of more than :data:`MAX_SCAN_WINDOWS` probe windows (``frame_px`` object
    pixels of ``pixel_size_m``); a position further than :data:`MAX_STAGE_TRAVEL_M` from the
    stage origin; an object canvas of more than :data:`MAX_CANVAS_PX` pixels. The message names
    the span in metres and in windows, and the likely slip (positions in µm or mm read as
    metres: ``instrument.motor_units_m``). ``earlier_m``: positions already placed, which the
    canvas also covers (a stream adds a few frames at a time).
    """
    pos = np.asarray(positions_m, dtype=np.float64).reshape(-1, 2)
    if earlier_m is not None:
        pos = np.concatenate([np.asarray(earlier_m, dtype=np.float64).reshape(-1, 2), pos])
    if len(pos) == 0:
        return
    window = frame_px * pixel_size_m
    span = pos.max(axis=0) - pos.min(axis=0)
    widest = float(span.max())
    reach = float(np.abs(pos).max())
    where = (
        f"the positions span {widest:.3g} m ({widest / window:.3g} probe windows of "
        f"{window:.3g} m; a scan spans at most ~{MAX_SCAN_WINDOWS}) and reach {reach:.3g} m "
        "from the stage origin"
    )
    if widest > MAX_SCAN_WINDOWS * window:
        # slips that leave between a pixel and a few hundred windows, as real scans span
        slip = _positions_slip(widest, pixel_size_m, MAX_SCAN_WINDOWS * window / 3)
        raise ValueError(f"{where}: {slip}")
    if reach > MAX_STAGE_TRAVEL_M:
        slip = _positions_slip(reach, pixel_size_m, 0.1 * MAX_STAGE_TRAVEL_M)
        raise ValueError(f"{where}; no sample stage travels a metre: {slip}")
    canvas = float(np.prod(span / pixel_size_m + frame_px + 1))
    if canvas > MAX_CANVAS_PX:
        raise ValueError(
            f"{where}: their object canvas would be {canvas:.3g} pixels ({canvas * 8 / 2**30:.3g}"
            f" GiB per complex64 copy, more than {MAX_CANVAS_PX:.0e}); reconstruct the scan in "
            "parts"
        )


def check_detector_mask(mask: np.ndarray | None, frame_shape: tuple[int, int]) -> np.ndarray:
    """The detector mask as a boolean array (True: valid pixel), all valid when None.

    Raises ValueError when its shape is not ``frame_shape`` or it leaves no valid pixel.
    """
    if mask is None:
        return np.ones(frame_shape, bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != frame_shape:
        raise ValueError(f"detector mask is {mask.shape}, frames are {frame_shape}")
    if not mask.any():
        raise ValueError("the detector mask leaves no valid pixel")
    return mask


def initial_probe(
    mean_pattern: np.ndarray,
    geometry: Geometry,
    *,
    probe_defocus_m: float = 0.0,
    given: np.ndarray | None = None,
) -> np.ndarray:
    """The probe an engine starts from: complex64 ``(N, N)``, at the sample.

    ``mean_pattern`` is the mean of the first frames in the data's units, masked pixels filled
    (:func:`ptystream.optics.fill_masked`), centred (far field) or as recorded (near field).

    - ``given`` (a previous scan's probe): kept, rescaled to the measured power.
    - far field: the aperture from the mean pattern plus ``probe_defocus_m``
      (:func:`ptystream.optics.initial_probe_from_patterns`); with ``fresnel`` propagation the
      Fresnel phase the forward model adds is taken off again, so the result is the physical
      probe at the sample.
    - near field: the measured amplitude propagated back over the propagation distance.
    """
    dx = geometry.object_pixel_size_m
    if given is not None:  # keep its shape, match the measured power
        probe = np.array(given, dtype=np.complex64)
        probe *= np.sqrt(mean_pattern.sum() / max(np.sum(np.abs(probe) ** 2), 1e-30))
        return probe
    if geometry.propagation == NEAR_FIELD:
        return optics.angular_spectrum(
            np.sqrt(np.clip(mean_pattern, 0.0, None)),
            dx,
            geometry.wavelength_m,
            -geometry.propagation_distance_m,
        ).astype(np.complex64)
    probe = optics.initial_probe_from_patterns(
        mean_pattern, dx, geometry.wavelength_m, probe_defocus_m
    )
    if geometry.propagation == FRESNEL:
        probe = probe * np.conj(fresnel_phase(geometry))
    return probe.astype(np.complex64)


def fresnel_phase(geometry: Geometry) -> np.ndarray:
    """The Fresnel phase a ``fresnel`` geometry folds into the probe (complex64 ``(N, N)``)."""
    return optics.fresnel_phase(
        geometry.frame_px,
        geometry.object_pixel_size_m,
        geometry.wavelength_m,
        geometry.propagation_distance_m,
    )


#: Where a probe file holds its probe: ptystream results and NPZ files, then CXI.
PROBE_KEYS = ("probe", "entry_1/instrument_1/source_1/illumination")


def read_probe_file(path: str | Path, frame_px: int) -> np.ndarray:
    """A probe to start from, complex64 ``(N, N)`` or ``(M, N, N)`` modes, read from ``path``:
    an NPZ with key ``probe``, a ptystream result (HDF5 ``probe``, or a CXI result), or a CXI
    file with ``entry_1/instrument_1/source_1/illumination``. Its power is rescaled to the
    frames' when the engine starts (:func:`initial_probe`).

    Raises FileNotFoundError for a missing file and ValueError naming the file for one without
    a probe, or a probe that is not ``frame_px`` square.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"initial probe file {path} does not exist")
    if path.suffix.lower() == ".npz":
        with np.load(path) as data:
            if "probe" not in data.files:
                raise ValueError(f"{path}: no 'probe' array (keys: {', '.join(data.files)})")
            probe = data["probe"]
    else:
        import h5py

        if not h5py.is_hdf5(path):
            raise ValueError(f"{path}: not an NPZ or HDF5 file, so no probe can be read from it")
        with h5py.File(path, "r") as f:
            key = next((k for k in PROBE_KEYS if k in f), None)
            if key is None:
                raise ValueError(f"{path}: holds none of {', '.join(PROBE_KEYS)}")
            probe = f[key][()]
    probe = np.asarray(probe)
    if probe.ndim not in (2, 3) or probe.shape[-2:] != (frame_px, frame_px):
        raise ValueError(
            f"{path}: the probe is {probe.shape}, the frames are {frame_px} x {frame_px} "
            "(a probe of N x N, or M modes of N x N, is needed)"
        )
    if not np.isfinite(probe).all():
        raise ValueError(f"{path}: the probe has non-finite values")
    return probe.astype(np.complex64)


#: A far-field mean pattern with this much more power about its corners than about its middle
#: has zero frequency at the corner.
CORNER_RATIO = 4.0


def corner_centred(mean_pattern: np.ndarray) -> bool:
    """True when a far-field ``mean_pattern`` ``(N, N)`` (as the profile's frames should be:
    zero frequency in the middle) has its bright direct beam at the corners instead: frames
    stored with zero frequency at ``[0, 0]``, as some packages write them (``np.fft.fftshift``
    turns them around). Compares the power within N/8 of the middle with the power within N/8
    of the corners."""
    n = mean_pattern.shape[-1]
    yy, xx = np.indices(mean_pattern.shape)
    middle = np.hypot(yy - n // 2, xx - n // 2) < n / 8
    power = np.clip(mean_pattern, 0.0, None)
    about_middle = float(power[middle].sum())
    about_corners = float(np.fft.fftshift(power)[middle].sum())
    return about_corners > CORNER_RATIO * max(about_middle, 1e-30)
