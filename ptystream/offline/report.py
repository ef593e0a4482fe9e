"""How reprocessing went: one :class:`Report` per input, the summary table, and the
contact sheet of object phases."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["THUMBNAIL_PX", "Report", "format_table", "write_outputs"]

logger = logging.getLogger(__name__)

#: Longest side of the object image a report carries back for the contact sheet.
THUMBNAIL_PX = 192


@dataclass
class Report:
    """How one input went: one row of the summary table."""

    label: str
    status: str
    """``finished``, ``failed``, ``skipped`` (already reprocessed with these settings) or
    ``interrupted`` (not done: the command was stopped first)."""
    source: str
    scan_id: int | None = None
    frames: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    iterations: int = 0
    final_loss: float = float("nan")
    time_s: float = 0.0
    result: str | None = None
    """Where the result is: a node path in Tiled or an HDF5 file."""
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    """What may make the result wrong (the noise model's, the orientation check's, a
    divergence): the estimate's, as published in Tiled."""
    preprocess: dict[str, Any] | None = None
    """What the detector pre-processing did (the window, binning, masked pixels)."""
    thumbnail: np.ndarray | None = field(default=None, repr=False)

    """The object's phase, downsampled to at most ``THUMBNAIL_PX`` (for the contact sheet)."""


def format_table(reports: list[Report]) -> str:
    """The summary table: run, frames, iterations, final loss, time, status (and why), then
    one line per warning."""
    header = ("run", "frames", "iterations", "final loss", "time (s)", "status")
    rows = [
        (
            r.label,
            str(r.frames) + (f" (-{sum(r.rejected.values())})" if r.rejected else ""),
            str(r.iterations),
            f"{r.final_loss:.4g}" if np.isfinite(r.final_loss) else "-",
            f"{r.time_s:.1f}",
            r.status + (f": {r.error}" if r.error else ""),
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in (header, *rows)
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines += [f"warning: {r.label}: {w}" for r in reports for w in r.warnings]
    return "\n".join(lines)


def write_outputs(out_dir: str | Path, reports: list[Report], root=None) -> Path:
    """Write ``summary.json`` (the table, with errors and result paths) and
    ``contact-sheet.png`` into ``out_dir``; returns the sheet's path. Skipped inputs whose
    result is in Tiled are drawn from it when ``root`` (a tiled client) is given.

    Each file is written under a temporary name and renamed: an interrupted write leaves the
    earlier file whole, never half of one."""
    from ptystream.io.figures import write_contact_sheet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        {k: v for k, v in vars(r).items() if k != "thumbnail"}
        | {"final_loss": r.final_loss if np.isfinite(r.final_loss) else None}
        for r in reports
    ]
    partial = out_dir / ".summary.partial.json"
    partial.write_text(json.dumps(rows, indent=1))
    partial.replace(out_dir / "summary.json")
    tiles = []
    for r in reports:
        phase = r.thumbnail
        if phase is None and r.result and root is not None and r.status == "skipped":
            phase = _served_thumbnail(root, r.result)
        caption = f"{r.label}: {r.status}"
        if np.isfinite(r.final_loss):
            caption += f", loss {r.final_loss:.3g}"
        tiles.append((caption, phase))
    partial = out_dir / ".contact-sheet.partial.png"  # the suffix tells matplotlib the format
    write_contact_sheet(partial, tiles, title="ptystream reprocess")
    return partial.replace(out_dir / "contact-sheet.png")


def _served_thumbnail(root, path: str) -> np.ndarray | None:
    """The object phase of a result in Tiled, cropped to its scanned area (the windows' bounding
    box), global phase removed, downsampled to at most ``THUMBNAIL_PX``."""
    try:
        from ptystream.store.layout import node_at

        final = node_at(root, path)["final"]
        obj = final["object"].read()
        if obj.ndim == 3:  # multislice: the product of the slices
            obj = np.prod(obj, axis=0)
        md = final["object"].metadata
        positions, n = final["positions_m"].read(), final["probe"].shape[-1]
        origin, dx = np.asarray(md["object_origin_m"]), md["pixel_size_m"]
    except Exception as exc:  # the sheet is a convenience: a missing tile is not an error
        logger.warning("no thumbnail for %s: %s", path, exc)
        return None
    corners = np.floor((positions - origin) / dx - n / 2 + 0.5).astype(int)
    lo, hi = np.clip(corners.min(axis=0), 0, None), corners.max(axis=0) + n
    obj = obj[lo[0] : hi[0], lo[1] : hi[1]]
    obj = obj * np.exp(-1j * np.angle(np.sum(obj)))
    step = max(1, -(-max(obj.shape) // THUMBNAIL_PX))
    return np.angle(obj[::step, ::step]).astype(np.float32)
