"""``ptystream calibrate INPUT|RUN --profile P``: check a finished scan's geometry as a
reconstruction's start would, and print the profile lines that make the findings permanent."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ptystream.config import load_profile, with_overrides
from ptystream.offline.calibrate import Calibration, calibrate_scan
from ptystream.offline.jobs import looks_like_file

__all__ = ["calibrate_command", "print_calibration"]


def calibrate_command(args: argparse.Namespace) -> int:
    """Read the input (a scan file, or a run in ``--tiled`` by uid, uid prefix or scan id),
    calibrate it, print the findings; exit status 1 when the orientation as given is not the
    best (the profile or file needs the change printed)."""
    profile = with_overrides(load_profile(args.profile), args.set)
    if looks_like_file(args.input):
        from ptystream.io.scans import read_scan

        scan, from_profile, source, dark = read_scan(args.input), False, args.input, None
    else:
        scan, dark, source = _read_run(args, profile)
        from_profile = True
    found = calibrate_scan(scan, profile, positions_from_profile=from_profile, dark=dark)
    print_calibration(found, source, print)
    return 1 if found.orientation.verdict in ("mismatch", "corrected") else 0


def print_calibration(found: Calibration, source: str, out: Callable[[str], None]) -> None:
    """The findings in words, then the lines to paste."""
    out(f"{source}: {found.orientation.message}")
    lines = found.profile_lines()
    if lines:
        out("paste into the profile:")
        for line in lines:
            out(line)


def _read_run(args: argparse.Namespace, profile):
    from ptystream.store.access import connect_from
    from ptystream.store.runs import read_run, select_runs

    if args.tiled is None:
        raise ValueError(
            f"{args.input!r} is not a scan file (.cxi, .h5, .npz), so it is read as a run: give "
            "--tiled URI"
        )
    root = connect_from(args.tiled, args.api_key_file)
    refs = list(select_runs(root[args.catalog], [args.input], []))
    if len(refs) != 1:
        raise ValueError(
            f"{args.input!r} selects {len(refs)} runs in {args.catalog!r}; calibrate takes one"
        )
    data = read_run(root[args.catalog][refs[0].uid], profile)
    return data.scan, data.dark, f"run {refs[0].uid[:8]}"
