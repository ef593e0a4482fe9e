"""Finished Bluesky runs read back from a Tiled catalog: selection, frames and positions.

The catalog is the one bluesky's ``TiledWriter`` fills (``CatalogOfBlueskyRuns``, as the tiled
client with ``bluesky-tiled-plugins``, the databroker 2 client, presents it). Frames are read
through the same client whether the run stored them inline or as external files the server
registered (NPY, HDF5). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from ptystream.config import Profile
from ptystream.io.scans import ScanFile

__all__ = ["RunRef", "RunSelectionError", "read_run", "select_runs"]

logger = logging.getLogger(__name__)

_RANGE = re.compile(r"^(\d+)[:-](\d+)$")


class RunSelectionError(ValueError):
    """A run selector matched nothing or is malformed; the message names the selector."""


@dataclass(frozen=True)
class RunRef:
    """A run picked for reprocessing: its uid, scan id and whether it ended."""

    uid: str
    scan_id: int | None
    exit_status: str | None
    """bluesky's ``exit_status`` from the stop document; None when the run has none yet."""


def select_runs(catalog, selectors: list[str], where: list[str] | None = None) -> list[RunRef]:
    """The runs ``selectors`` and ``where`` name, in the order given, each once.

    A selector is a uid, a uid prefix (at least 5 characters; one of digits only is read as a
    scan id first), a scan id (``42``) or an
    inclusive range of scan ids (``40:45`` or ``40-45``; when a scan id was reused, each of its
    runs). ``where`` holds ``KEY=VALUE`` conditions on the start document, ANDed together and
    with a range if one is given alone (VALUE is read as YAML, so ``scan_id=3`` is a number and
    ``sample=gold`` a string). With ``where`` and no selectors, every run matching it.
    """
    from tiled.queries import Eq

    conditions = [Eq(*_condition(text)) for text in where or []]
    refs: list[RunRef] = []

    def filtered(node):
        for query in conditions:
            node = node.search(query)
        return node

    if not selectors:
        if not conditions:
            raise RunSelectionError("name runs by uid, scan id or range, or give --where")
        refs.extend(_ref(run) for run in filtered(catalog).values())
    for text in selectors:
        refs.extend(_resolve(catalog, filtered, text, bool(conditions)))
    seen: set[str] = set()
    return [r for r in refs if not (r.uid in seen or seen.add(r.uid))]


def _condition(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RunSelectionError(f"--where {text!r}: expected KEY=VALUE")
    return key.strip(), yaml.safe_load(value)


def _resolve(catalog, filtered, text: str, has_conditions: bool) -> list[RunRef]:
    from bluesky_tiled_plugins.queries import ScanIDRange

    text = text.strip()
    match = _RANGE.match(text)
    if match:
        lo, hi = int(match[1]), int(match[2])
        if lo > hi:
            raise RunSelectionError(f"scan id range {text!r} runs backwards")
        runs = filtered(catalog.search(ScanIDRange(lo, hi + 1))).values()
        found = sorted((_ref(run) for run in runs), key=lambda r: r.scan_id or 0)
        if not found:
            raise RunSelectionError(f"no run has a scan id in {lo}..{hi}")
        return found
    if text.isdigit():
        # a scan id; or, with at least 5 digits and no such scan id, the start of a uid
        keys: list[Any] = [int(text), text] if len(text) >= 5 else [int(text)]
    else:
        keys = [text]
    for key in keys:
        try:
            run = catalog[key]
            break
        except (KeyError, ValueError) as exc:
            error = exc
    else:
        what = "scan id or uid" if len(keys) == 2 else "scan id" if text.isdigit() else "uid"
        raise RunSelectionError(f"no run with {what} {text!r} ({error})") from error
    ref = _ref(run)
    if has_conditions and ref.uid not in {r.uid for r in map(_ref, filtered(catalog).values())}:
        logger.info("run %s does not match --where: left out", ref.uid)
        return []
    return [ref]


def _ref(run) -> RunRef:
    start, stop = run.metadata["start"], run.metadata.get("stop") or {}
    return RunRef(start["uid"], start.get("scan_id"), stop.get("exit_status"))


@dataclass
class RunData:
    """A run read back: the scan, and what was left out of it and why."""

    scan: ScanFile
    start: dict[str, Any]
    rejected: dict[str, int] = field(default_factory=dict)
    dark: np.ndarray | None = None
    """The mean frame of ``preprocess.dark_stream`` (None: no such stream, or none asked)."""


def read_run(run, profile: Profile) -> RunData:
    """Frames and positions of a finished run, as the live pipeline would have paired them.

    The frames come from ``instrument.stream``'s ``detector_key`` (a leading axis of length 1
    per frame, as ophyd-async writes, is dropped); the stage readbacks from the same stream or
    ``instrument.position_stream``, paired by row (seq_num order), converted to metres by
    :meth:`InstrumentSettings.positions_m`. Frames with non-finite values, and positions
    that are not finite, are left out and counted in ``rejected``. The frames are the
    detector's, not pre-processed (:func:`ptystream.offline.reconstruct.preprocess_scan`); the
    mean of ``preprocess.dark_stream``'s frames comes with them, if the run has that stream.

    Raises ValueError naming the run and the missing stream or key, or when no frame is left.
    """
    inst = profile.instrument
    uid = run.metadata["start"]["uid"]
    frames = _column(run, uid, inst.stream, inst.detector_key)
    pos_stream = inst.position_stream or inst.stream
    y = _column(run, uid, pos_stream, inst.y_motor)
    x = _column(run, uid, pos_stream, inst.x_motor)
    frames = _stack(frames)
    if frames.ndim != 3:
        raise ValueError(
            f"run {uid}: {inst.stream}/{inst.detector_key} has shape {frames.shape}, not a "
            "stack of images (n, H, W)"
        )
    positions = inst.positions_m(y.reshape(-1), x.reshape(-1))
    rejected: dict[str, int] = {}
    n = min(len(frames), len(positions))
    if len(frames) != len(positions):
        rejected["no position" if len(frames) > n else "no frame"] = abs(
            len(frames) - len(positions)
        )
    frames, positions = frames[:n].astype(np.float32), positions[:n]
    good_frames = np.isfinite(frames).all(axis=(1, 2))
    good_positions = np.isfinite(positions).all(axis=1)
    if (~good_frames).any():
        rejected["not finite"] = int((~good_frames).sum())
    if (good_frames & ~good_positions).any():
        rejected["position not finite"] = int((good_frames & ~good_positions).sum())
    keep = good_frames & good_positions
    if not keep.any():
        raise ValueError(f"run {uid}: no usable frame out of {n} ({_describe(rejected)})")
    scan = ScanFile(
        frames=frames[keep],
        positions_m=positions[keep],
        valid_pixels=np.ones(frames.shape[1:], bool),
        wavelength_m=inst.wavelength_m,
        distance_m=inst.distance_m,
        detector_pixel_size_m=inst.detector_pixel_size_m,
    )
    dark = None
    if (name := profile.preprocess.dark_stream) is not None and name in run:
        darks = _stack(_column(run, uid, name, inst.detector_key))
        dark = darks.reshape(-1, *darks.shape[-2:]).mean(axis=0)
    elif name is not None:
        logger.warning("run %s has no stream %r (preprocess.dark_stream)", uid, name)
    return RunData(scan, dict(run.metadata["start"]), rejected, dark)


def _stack(frames: np.ndarray) -> np.ndarray:
    """Frames ``(n, H, W)``: a leading axis of length 1 per frame (ophyd-async's) dropped."""
    return frames[:, 0] if frames.ndim == 4 and frames.shape[1] == 1 else frames


def _column(run, uid: str, stream: str, key: str) -> np.ndarray:
    if stream not in run:
        raise ValueError(f"run {uid} has no stream {stream!r} (it has {sorted(run)})")
    node = run[stream]
    if key not in node:
        raise ValueError(f"run {uid}: stream {stream!r} has no data key {key!r} ({sorted(node)})")
    return np.asarray(node[key].read())


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items()) or "none read"
