"""``ptystream show RESULT|RUN``: a PNG of a result (object amplitude with the scan positions,
phase with its ramp removed, probe, loss), written beside it and its path printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptystream.io.figures import write_summary
from ptystream.types import Estimate

__all__ = ["show_command"]


def show_command(args: argparse.Namespace) -> int:
    """Read the result (an ``OUT.h5`` or ``.cxi`` file, or a run's live final in ``--tiled``
    by uid or uid prefix), write the PNG (``--out``, or the file's name with ``.png``, or
    ``<uid>.png`` for a run) and print its path."""
    source = Path(args.input)
    if source.suffix.lower() in (".h5", ".hdf5", ".cxi"):
        from ptystream.io.results import read_result

        estimate, title = read_result(source), source.name
        out = Path(args.out) if args.out else source.with_suffix(".png")
    else:
        uid, estimate = _read_run(args)
        title = f"run {uid}"
        out = Path(args.out) if args.out else Path(f"{uid[:8]}.png")
    write_summary(out, estimate, title=_title(title, estimate))
    print(out)
    return 0


def _title(name: str, estimate: Estimate) -> str:
    return f"{name}: {estimate.n_frames} frames, {estimate.iteration} iterations"


def _read_run(args: argparse.Namespace) -> tuple[str, Estimate]:
    from ptystream.store.access import connect_from
    from ptystream.store.layout import PROCESSED_PATH, node_at
    from ptystream.store.versions import read_final

    if args.tiled is None:
        raise ValueError(
            f"{args.input!r} is not a result file (.h5, .cxi), so it is read as a run: give "
            "--tiled URI"
        )
    root = connect_from(args.tiled, args.api_key_file)
    runs = node_at(root, "/".join(PROCESSED_PATH))
    matches = [uid for uid in runs if uid.startswith(args.input)]
    if len(matches) != 1:
        raise ValueError(
            f"{args.input!r} matches {len(matches)} reconstructed runs in "
            f"{'/'.join(PROCESSED_PATH)}; give a longer uid prefix"
        )
    node = runs[matches[0]]
    if "final" not in node:
        status = node.metadata.get("status")
        raise ValueError(f"run {matches[0]} has no final result yet (status {status})")
    return matches[0], read_final(node)
