"""Offline reconstruction of a finished scan file (``ptystream reconstruct``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ptystream.config import Algorithm, Profile
from ptystream.engine import EngineSetup, make_engine, prepare
from ptystream.engine.orientation import OrientationSetup
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
    positions_from_profile: bool = False,
) -> Estimate:
    """Reconstruct a finished scan held in memory; returns the final estimate.

    Exactly one of ``epochs`` (passes over all frames) and ``time_budget_s`` is given. The
    budget is wall time from this call to the end of the passes (TensorFlow's set-up, the
    compile and a distance search included); the last pass stops part-way when the time is spent,
    and at least one whole pass runs even when the search used the budget up (logged).
    ``progress(done, total, loss)`` is called after every pass (with a budget, ``total`` is
    the passes expected at the mean pass time so far). ``algorithm`` overrides the profile's
    ``engine.algorithm``. The object canvas covers the positions' extent.
    ``positions_from_profile``: the positions came through the profile's ``swap_axes``,
    ``y_sign``, ``x_sign`` and ``rotation_deg`` (a raw run's readbacks), so the orientation
    check names those keys; otherwise (a file's positions) it names the file.
    """
    if (epochs is None) == (time_budget_s is None):
        raise ValueError("give exactly one of epochs and time_budget_s")
    start = time.perf_counter()
    pos = scan.positions_m
    setup = EngineSetup.from_profile(
        profile,
        geometry=geometry_for(scan, profile),
        plan=ScanPlan.covering(pos),
        detector_mask=scan.valid_pixels,
        algorithm=algorithm,
    )
    if not positions_from_profile:
        setup = setup.replace(orientation=OrientationSetup(setup.orientation.mode))
    settings = setup.settings
    prepare(settings)
    engine = make_engine(setup)
    engine.add_frames(scan.frames, pos)
    engine.warm_up()  # compile before the first pass is timed
    if settings.distance_search_m is not None:
        lo, hi = settings.distance_search_m
        searched = time.perf_counter()
        # AD only: the baselines refuse the setting when they are built
        z, trials = engine.search_distance(lo, hi, settings.distance_search_passes)
        logger.info(
            "distance search: %.4g m after %d trials in %.0f s",
            z,
            len(trials),
            time.perf_counter() - searched,
        )
    if time_budget_s is None:
        engine.refine(epochs, _report_to(progress, lambda done: epochs))
        return engine.estimate(final=True)
    left = time_budget_s - (time.perf_counter() - start)
    if left <= 0:
        logger.warning(
            "the time budget of %.0f s was spent before the passes (compile and distance "
            "search took %.0f s); running one pass",
            time_budget_s,
            time.perf_counter() - start,
        )
        engine.refine(1, _report_to(progress, lambda done: 1))
        return engine.estimate(final=True)
    passes_start = time.perf_counter()

    def expected(done: int) -> int:
        per_pass = (time.perf_counter() - passes_start) / done
        return max(done, round(left / per_pass))

    engine.refine(on_epoch=_report_to(progress, expected), seconds=left)
    return engine.estimate(final=True)


def _report_to(
    progress: Callable[[int, int, float], None] | None, total: Callable[[int], int]
) -> Callable[[int, float], None] | None:
    """An ``on_epoch(i, loss)`` that calls ``progress(done, total(done), loss)``."""
    if progress is None:
        return None
    return lambda i, loss: progress(i + 1, total(i + 1), loss)
