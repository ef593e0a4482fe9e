"""Offline reconstruction of a finished scan file (``ptystream reconstruct``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ptystream.config import Algorithm, Profile
from ptystream.engine import EngineSetup, make_engine, prepare
from ptystream.engine.checkpoint import EngineState, read_state, write_state
from ptystream.engine.orientation import OrientationSetup
from ptystream.io.results import write_result
from ptystream.io.scans import ScanFile, ScanFileError, read_scan
from ptystream.preprocess import PreprocessError, Preprocessor
from ptystream.types import Estimate, Geometry, ScanPlan

__all__ = [
    "Interrupted",
    "geometry_for",
    "preprocess_scan",
    "reconstruct",
    "reconstruct_file",
    "reconstruct_scan",
    "state_path",
]

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


def preprocess_scan(
    scan: ScanFile, profile: Profile, *, dark: np.ndarray | None = None
) -> tuple[ScanFile, dict[str, Any]]:
    """The scan as the engine sees it after the profile's ``preprocess`` (the steps the live
    pipeline takes, fitted on the same first frames), and what was done
    (:meth:`~ptystream.preprocess.Preprocessor.report`, with ``rejected_saturated``).

    The file's own mask is kept; ``dark`` is the dark of a ``preprocess.dark_stream`` (read
    from the raw run). Raises :class:`~ptystream.preprocess.PreprocessError` (a ValueError)
    naming the shapes and keys when the frames do not fit the profile.
    """
    prep = Preprocessor.from_profile(profile, of_file=True)
    prep.mask_also(~np.asarray(scan.valid_pixels, dtype=bool), "the scan's mask")
    if prep.needs_dark:
        if dark is not None:
            prep.set_dark(dark)
        else:
            stream = profile.preprocess.dark_stream
            prep.warnings.append(
                f"preprocess: no dark frame of stream {stream!r}: the dark is not subtracted"
            )
    prep.fit(scan.frames)
    prepared = prep.apply(scan.frames)
    keep = ~prepared.saturated
    report = prep.report() | {"rejected_saturated": int(np.count_nonzero(~keep))}
    for warning in prep.warnings:
        logger.warning("%s", warning)
    if not keep.any():
        raise ValueError(
            f"every frame has more than ingest.max_saturated_px "
            f"({profile.ingest.max_saturated_px}) saturated pixels outside the mask"
        )
    prepared_scan = ScanFile(
        frames=prepared.frames[keep],
        positions_m=scan.positions_m[keep],
        valid_pixels=prep.valid_pixels,
        wavelength_m=scan.wavelength_m,
        distance_m=scan.distance_m,
        detector_pixel_size_m=scan.detector_pixel_size_m * profile.preprocess.bin,
    )
    return prepared_scan, report


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM turned into it) during the passes of a reconstruction.

    Attributes
    ----------
    estimate : the estimate when it stopped.
    state : the engine's whole state, with ``meta["passes_done"]``, to resume from.
    passes_done : passes over all frames completed.
    written : the result file written with what exists (``reconstruct_file``), or None.
    """

    def __init__(self, estimate: Estimate, state: EngineState, passes_done: int):
        super().__init__(f"interrupted after {passes_done} passes")
        self.estimate, self.state, self.passes_done = estimate, state, passes_done
        self.written: Path | None = None


def state_path(out: str | Path) -> Path:
    """Where ``reconstruct_file`` keeps an interrupted run's engine state: ``OUT.state.npz``."""
    out = Path(out)
    return out.with_name(out.name + ".state.npz")


def reconstruct_file(
    path: str | Path,
    profile: Profile,
    out: str | Path,
    *,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    algorithm: Algorithm | str | None = None,
    resume: bool = False,
) -> Estimate:
    """Reconstruct ``path`` (CXI or NPZ) and write ``out`` (HDF5, see :func:`write_result`).

    See :func:`reconstruct_scan` for ``epochs``, ``time_budget_s``, ``progress`` and
    ``algorithm``; the algorithm used is written as the ``engine`` attribute, and ``status``
    (``finished``). Interrupted (:class:`Interrupted`, re-raised), the
    result so far is written with ``status`` ``incomplete`` and ``passes_done``, and the
    engine's state beside it
    (:func:`state_path`); ``resume`` continues from that state (the passes left of ``epochs``,
    or a new ``time_budget_s``), and a finished run removes it. ValueError when ``resume`` has
    no state to resume from.
    """
    try:
        scan, done = preprocess_scan(read_scan(path), profile)
    except PreprocessError as exc:
        raise ScanFileError(f"{path}: {exc}") from None
    settings = EngineSetup.from_profile(profile, algorithm=algorithm).settings
    saved = state_path(out)
    resume_from = None
    if resume:
        if not saved.is_file():
            raise ValueError(f"--resume: no saved state {saved} (is {out} an interrupted run's?)")
        resume_from = read_state(saved)
    attrs = {"engine": settings.algorithm.value, "preprocess": json.dumps(done)}
    geometry = geometry_for(scan, profile)
    try:
        estimate = reconstruct_scan(
            scan,
            profile,
            epochs=epochs,
            time_budget_s=time_budget_s,
            progress=progress,
            algorithm=algorithm,
            resume_from=resume_from,
            input_warnings=tuple(done["warnings"]),
        )
    except Interrupted as stop:
        write_state(stop.state, saved)
        stop.written = write_result(
            out,
            stop.estimate,
            geometry,
            settings.model_dump(mode="json"),
            attrs | {"status": "incomplete", "passes_done": stop.passes_done},
        )
        raise
    write_result(
        out, estimate, geometry, settings.model_dump(mode="json"), attrs | {"status": "finished"}
    )
    saved.unlink(missing_ok=True)
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
    resume_from: EngineState | None = None,
    input_warnings: tuple[str, ...] = (),
) -> Estimate:
    """Reconstruct a finished scan held in memory, already pre-processed
    (:func:`preprocess_scan`); returns the final estimate.

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
    ``resume_from``: an :class:`Interrupted` run's state (same scan and settings): the engine
    continues from it, for the passes left of ``epochs``. Ctrl-C during the passes raises
    :class:`Interrupted` with the estimate and state so far. ``input_warnings`` (e.g. the
    pre-processing's) are carried in the estimate's warnings.
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
    engine.input_warnings += tuple(input_warnings)
    done_before = 0
    if resume_from is not None:
        engine.restore(resume_from, source="the saved state")
        done_before = int(resume_from.meta.get("passes_done", 0))
        epochs = None if epochs is None else max(epochs - done_before, 1)
    else:
        engine.add_frames(scan.frames, pos)
    engine.warm_up()  # compile before the first pass is timed
    if settings.distance_search_m is not None and resume_from is None:
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
    done = [done_before]

    def counted(report: Callable[[int, float], None] | None) -> Callable[[int, float], None]:
        def on_epoch(i: int, loss: float) -> None:
            done[0] = done_before + i + 1
            if report is not None:
                report(i, loss)

        return on_epoch

    try:
        if time_budget_s is None:
            engine.refine(epochs, counted(_report_to(progress, lambda n: epochs)))
            return engine.estimate(final=True)
        left = time_budget_s - (time.perf_counter() - start)
        if left <= 0:
            logger.warning(
                "the time budget of %.0f s was spent before the passes (compile and distance "
                "search took %.0f s); running one pass",
                time_budget_s,
                time.perf_counter() - start,
            )
            engine.refine(1, counted(_report_to(progress, lambda n: 1)))
            return engine.estimate(final=True)
        passes_start = time.perf_counter()

        def expected(n: int) -> int:
            per_pass = (time.perf_counter() - passes_start) / n
            return max(n, round(left / per_pass))

        engine.refine(on_epoch=counted(_report_to(progress, expected)), seconds=left)
        return engine.estimate(final=True)
    except KeyboardInterrupt:
        state = engine.snapshot()
        state.meta["passes_done"] = done[0]
        raise Interrupted(engine.estimate(final=True), state, done[0]) from None


def _report_to(
    progress: Callable[[int, int, float], None] | None, total: Callable[[int], int]
) -> Callable[[int, float], None] | None:
    """An ``on_epoch(i, loss)`` that calls ``progress(done, total(done), loss)``."""
    if progress is None:
        return None
    return lambda i, loss: progress(i + 1, total(i + 1), loss)


def reconstruct(
    scan: ScanFile,
    profile: Profile,
    *,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    progress: bool | Callable[[int, int, float], None] = True,
    dark: np.ndarray | None = None,
) -> Estimate:
    """Reconstruct a scan held in memory (a notebook's arrays in a
    :class:`~ptystream.io.scans.ScanFile`, the detector's frames as recorded): pre-processed as
    the profile says (:func:`preprocess_scan`), then :func:`reconstruct_scan`.

    ``progress``: True shows a bar (``tqdm.auto``: a widget in Jupyter, text elsewhere),
    a callable is called ``progress(done, total, loss)`` after every pass, False shows nothing.
    """
    prepared, done = preprocess_scan(scan, profile, dark=dark)
    bar, report = None, progress if callable(progress) else None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, unit="pass", desc="reconstruct")

        def report(n: int, total: int, loss: float) -> None:
            bar.total = total
            bar.update(n - bar.n)
            bar.set_postfix(loss=f"{loss:.3g}")

    try:
        return reconstruct_scan(
            prepared,
            profile,
            epochs=epochs,
            time_budget_s=time_budget_s,
            progress=report,
            input_warnings=tuple(done["warnings"]),
        )
    finally:
        if bar is not None:
            bar.close()
