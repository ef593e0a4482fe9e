"""Offline reconstruction of a finished scan file (``ptystream reconstruct``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ptystream.config import Algorithm, Profile
from ptystream.engine import EngineSetup, make_engine, prepare
from ptystream.io.results import write_result
from ptystream.io.scans import ScanFile, read_scan
from ptystream.types import Estimate, Geometry, ScanPlan

__all__ = ["geometry_for", "reconstruct_file", "reconstruct_scan"]

logger = logging.getLogger(__name__)


def geometry_for(scan: ScanFile, profile: Profile) -> Geometry:
    """The file's wavelength, distance and pixel, with the profile's propagation model and
    focus-to-sample distance (which scan files do not record)."""
    inst = profile.instrument
    return Geometry(
        wavelength_m=scan.wavelength_m,
        distance_m=scan.distance_m,
        detector_pixel_size_m=scan.detector_pixel_size_m,
        frame_px=scan.frames.shape[-1],
        propagation=inst.propagation,
        focus_to_sample_m=inst.focus_to_sample_m,
    )


def reconstruct_file(
    path: str | Path,
    profile: Profile,
    out: str | Path,
    *,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    algorithm: Algorithm | str | None = None,
) -> Estimate:
    """Reconstruct ``path`` (CXI or NPZ) and write ``out`` (HDF5, see :func:`write_result`).

    See :func:`reconstruct_scan` for ``epochs``, ``time_budget_s``, ``progress`` and
    ``algorithm``; the algorithm used is written as the ``engine`` attribute.
    """
    scan = read_scan(path)
    settings = EngineSetup.from_profile(profile, algorithm=algorithm).settings
    estimate = reconstruct_scan(
        scan,
        profile,
        epochs=epochs,
        time_budget_s=time_budget_s,
        progress=progress,
        algorithm=algorithm,
    )
    write_result(
        out,
        estimate,
        geometry_for(scan, profile),
        settings.model_dump(mode="json"),
        {"engine": settings.algorithm.value},
    )
    return estimate


def reconstruct_scan(
    scan: ScanFile,
    profile: Profile,
    *,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    algorithm: Algorithm | str | None = None,
) -> Estimate:
    """Reconstruct a finished scan held in memory; returns the final estimate.

    Exactly one of ``epochs`` (passes over all frames) and ``time_budget_s`` is given; with a
    budget the number of passes is set from the time of the first one. ``progress(done, total,
    loss)`` is called after every pass. ``algorithm`` overrides the profile's
    ``engine.algorithm``. The object canvas covers the positions' extent.
    """
    if (epochs is None) == (time_budget_s is None):
        raise ValueError("give exactly one of epochs and time_budget_s")
    pos = scan.positions_m
    extent = ((pos[:, 0].min(), pos[:, 0].max()), (pos[:, 1].min(), pos[:, 1].max()))
    setup = EngineSetup.from_profile(
        profile,
        geometry=geometry_for(scan, profile),
        plan=ScanPlan(len(pos), extent),
        detector_mask=scan.valid_pixels,
        algorithm=algorithm,
    )
    settings = setup.settings
    prepare(settings)
    engine = make_engine(setup)
    engine.add_frames(scan.frames, pos)
    engine.warm_up()  # compile before the first pass is timed
    if settings.distance_search_m is not None:
        lo, hi = settings.distance_search_m
        start = time.perf_counter()
        # AD only: the baselines refuse the setting when they are built
        z, trials = engine.search_distance(lo, hi, settings.distance_search_passes)
        logger.info(
            "distance search: %.4g m after %d trials in %.0f s",
            z,
            len(trials),
            time.perf_counter() - start,
        )
    if time_budget_s is not None:
        start = time.perf_counter()
        loss = engine.refine(1)
        per_epoch = time.perf_counter() - start
        epochs = 1 + max(0, int((time_budget_s - per_epoch) / per_epoch))
        if progress:
            progress(1, epochs, loss)
        remaining = epochs - 1
        done = 1
    else:
        remaining, done = epochs, 0
    if remaining:
        engine.refine(
            remaining,
            on_epoch=(lambda i, loss: progress(done + i + 1, epochs, loss)) if progress else None,
        )
    return engine.estimate(final=True)
