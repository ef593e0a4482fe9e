"""``ptystream reprocess``: finished runs (from Tiled) or scan files reconstructed again, in
parallel on Dask, with a summary table and a contact sheet."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from ptystream.config import load_profile, with_overrides
from ptystream.offline.cluster import JobsInterrupted, run_jobs
from ptystream.offline.jobs import Job, file_jobs, looks_like_file, settings_hash, tiled_jobs
from ptystream.offline.report import Report, format_table, write_outputs
from ptystream.store.access import connect, read_api_key, split_api_key

__all__ = ["reprocess_command"]


def reprocess_command(args: argparse.Namespace) -> int:
    """``ptystream reprocess``: select, fan out on Dask, print the table, write the contact
    sheet and summary; exit status 1 if any input failed.

    Selecting nothing (no inputs, or ``--where`` matching no run) is an error (ValueError, exit
    status 2) raised before anything runs, so the summary and contact sheet of an earlier
    reprocessing in ``--out`` stay as they were.

    Ctrl-C or SIGTERM stops it: the jobs not done are cancelled, the summary and contact sheet
    list those done and the others as ``interrupted`` (each file whole: written aside and
    renamed), and KeyboardInterrupt is raised with one line saying so (exit status 130). A
    result written before stays, and the same command later skips it.
    """
    with _sigterm_as_ctrl_c():
        return _reprocess(args)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, while in this context (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _reprocess(args: argparse.Namespace) -> int:
    logging.getLogger("distributed").setLevel(logging.WARNING)  # one line per worker event

    if not args.inputs and not args.where:
        raise ValueError(
            "reprocess: nothing selected (name runs by uid, uid prefix, scan id or range "
            "40:45, pick them with --where KEY=VALUE, or give scan files)"
        )
    profile = with_overrides(load_profile(args.profile), args.set)
    out = Path(args.out)
    files = [text for text in args.inputs if looks_like_file(text)]
    selectors = [text for text in args.inputs if text not in files]
    for text in files:
        if not Path(text).is_file():
            raise FileNotFoundError(f"{text}: no such file")
    jobs, skipped = file_jobs(
        files,
        profile,
        epochs=args.epochs,
        out_dir=out,
        force=args.force,
        result_format=args.format,
    )
    root = None
    if selectors or args.where:
        if args.tiled is None:
            raise ValueError(
                f"runs {selectors or args.where} are read from Tiled: give --tiled URI "
                "(scan files must exist and end in .cxi, .h5 or .npz)"
            )
        uri, key_in_uri = split_api_key(args.tiled)
        key = read_api_key(args.api_key_file) or key_in_uri
        root = connect(uri, key)
        more, more_skipped = tiled_jobs(
            root,
            selectors,
            profile,
            epochs=args.epochs,
            tiled_uri=uri,
            api_key=key,
            catalog=args.catalog,
            where=args.where,
            force=args.force,
        )
        jobs += more
        skipped += more_skipped
        if not jobs and not skipped:  # selectors that match nothing raise: --where did it
            asked = " ".join([*selectors, *(f"--where {w}" for w in args.where)])
            raise ValueError(
                f"{asked}: no run in catalog {args.catalog!r} matches (compare with a run's "
                f"start document; nothing in {out} was changed)"
            )
    print(
        f"{len(jobs)} to reprocess, {len(skipped)} skipped (profile {profile.name}, "
        f"{args.epochs} passes, settings {settings_hash(profile, args.epochs)})"
    )
    try:
        reports = run_jobs(
            jobs,
            scheduler=args.scheduler,
            workers=args.workers,
            memory_limit=args.memory_limit,
            on_report=_progress(len(jobs)),
        )
    except JobsInterrupted as stop:
        done = [r for r in stop.reports if r is not None]
        everything = skipped + _with_interrupted(jobs, stop.reports)
        write_outputs(out, everything, root)
        raise KeyboardInterrupt(
            f"{len(done)} of {len(jobs)} reprocessed before the stop, the others not "
            f"(summary in {out / 'summary.json'}; the same command goes on with the rest)"
        ) from None
    everything = skipped + reports
    print(format_table(everything))
    sheet = write_outputs(out, everything, root)
    print(f"contact sheet: {sheet}; table: {out / 'summary.json'}")
    return 1 if any(r.status == "failed" for r in everything) else 0


def _with_interrupted(jobs: list[Job], reports: list[Report | None]) -> list[Report]:
    """``reports``, with an ``interrupted`` report for each job that has none."""
    return [
        report
        or Report(
            job.label,
            "interrupted",
            job.run_uid or job.path or "?",
            job.scan_id,
            error="not done: stopped first",
        )
        for job, report in zip(jobs, reports, strict=True)
    ]


def _progress(total: int):
    """A progress bar on a terminal, else one line per finished input."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="run", desc="reprocess")

        def update(report) -> None:
            bar.update(1)
            bar.set_postfix_str(f"{report.label}: {report.status}")
            if bar.n == bar.total:
                bar.close()

        return update
    done = [0]

    def line(report) -> None:
        done[0] += 1
        print(
            f"[{done[0]}/{total}] {report.label}: {report.status} in {report.time_s:.1f} s",
            file=sys.stderr,
            flush=True,
        )

    return line
