"""The ``ptystream`` command.

Errors the user can fix are one line on stderr, ``ptystream: <what>: <why> (<what to do>)``,
naming the file (and, in a CXI file, the full HDF5 path of the field); no traceback. Exit status
2 means bad input or usage (nothing was done), 1 that the command ran but something failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from ptystream import __version__
from ptystream.config import Algorithm, ProfileError, load_profile, with_overrides
from ptystream.store.access import AccessError

__all__ = ["error_message", "main"]


def _demo(args: argparse.Namespace) -> int:
    from ptystream.commands.demo import _print_report, run_demo

    profile = load_profile(args.profile)
    report = run_demo(
        profile, args.out, keep_serving=args.keep_serving, dashboard_port=args.dashboard_port
    )
    if not args.keep_serving:
        _print_report(report, print)
        print(
            "(the servers have stopped; run with --keep-serving to browse the results in the "
            "dashboard and in Tiled)"
        )
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from ptystream.offline.reconstruct import Interrupted, reconstruct_file

    profile = with_overrides(load_profile(args.profile), args.set)
    algorithm = Algorithm(args.engine or profile.engine.algorithm)
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=args.iterations, unit="epoch", desc="reconstruct")

    def progress(done: int, total: int, loss: float) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)
            bar.set_postfix(loss=f"{loss:.3g}")

    try:
        estimate = reconstruct_file(
            args.input,
            profile,
            args.out,
            epochs=args.iterations,
            time_budget_s=args.time_budget,
            progress=progress,
            algorithm=algorithm,
            resume=args.resume,
        )
    except Interrupted as stop:
        if bar is not None:
            bar.close()
        print(
            f"ptystream: interrupted after {stop.passes_done} passes: wrote {stop.written} "
            "(status incomplete; the same command with --resume goes on)",
            file=sys.stderr,
        )
        return 130
    if bar is not None:
        bar.close()
    steps = "optimiser steps" if algorithm is Algorithm.AD else "position updates"
    print(
        f"wrote {args.out} ({algorithm.value}): object {estimate.object.shape}, "
        f"{estimate.iteration} {steps}, final loss {estimate.last_loss:.4g}"
    )
    for line in estimate.notes():
        print(line)
    if args.png:
        from pathlib import Path

        from ptystream.io.figures import write_summary

        png = write_summary(Path(args.out).with_suffix(".png"), estimate, title=Path(args.out).name)
        print(f"picture: {png}")
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from ptystream.commands.profiles import run_command

    targets = [args.profile] if args.action == "show" else getattr(args, "files", [])
    return run_command(
        args.action, targets, out=print, err=lambda line: print(line, file=sys.stderr)
    )


def _serve(args: argparse.Namespace) -> int:
    from ptystream.commands.serve import DocumentSource, serve
    from ptystream.store.access import read_api_key

    if args.zmq is not None:
        source = DocumentSource(zmq=args.zmq)
    else:
        source = DocumentSource(kafka_bootstrap=args.kafka, kafka_topics=tuple(args.kafka_topic))
        if not source.kafka_topics:
            raise ValueError("--kafka needs at least one --kafka-topic")
    profile = load_profile(args.profile)
    serve(
        profile,
        source,
        tiled_uri=args.tiled,
        api_key=read_api_key(args.api_key_file),
        data_dir=args.data_dir,
        announce=lambda line: print(line, flush=True),
        idle_notice_s=args.idle_notice,
    )
    return 0


def _client(args: argparse.Namespace):
    from ptystream.store.access import connect, read_api_key

    return connect(args.tiled, read_api_key(args.api_key_file))


def _watch(args: argparse.Namespace) -> int:
    from ptystream.commands.watch import watch

    client = _client(args)
    tty = sys.stdout.isatty()

    def show(line: str) -> None:
        if tty:  # one line rewritten in place
            print(f"\r\x1b[2K{line}", end="", flush=True)
        else:
            print(line, flush=True)

    try:
        _, status = watch(client, args.run, show=show)
    except KeyboardInterrupt:
        return 130
    finally:
        if tty:
            print()
    return 0 if status == "finished" else 1


def _flush(args: argparse.Namespace) -> int:
    from ptystream.store.publisher import TiledPublisher
    from ptystream.store.spool import SpoolBusy, spooled_files

    spool = Path(args.spool)
    if not spool.is_dir():  # a mistyped path is not an empty spool
        raise FileNotFoundError(
            f"{spool}: {'not a directory' if spool.exists() else 'no such directory'} (give "
            "the spool with --spool: serve's is <data-dir>/spool, demo's <out>/spool)"
        )
    if not spooled_files(args.spool):
        print(f"nothing to upload in {args.spool}")
        return 0
    try:
        outcomes = TiledPublisher(_client(args)).flush(args.spool, wait=False)
    except SpoolBusy as exc:
        print(f"ptystream: {exc} (a serve uploading it? try again later)", file=sys.stderr)
        return 1
    for outcome in outcomes:
        where = outcome.node_path or f"NOT uploaded ({outcome.error})"
        print(f"{outcome.path.name}: {where}")
    left = spooled_files(args.spool)
    if left:
        print(f"{len(left)} result(s) still kept in {args.spool}", file=sys.stderr)
        return 1
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from ptystream.commands.demo import start_with_port_fallback, wait_for_signal
    from ptystream.store.access import read_api_key, split_api_key

    try:
        from ptystream.dashboard import start_dashboard
    except ImportError as exc:
        print(
            f"ptystream: the dashboard needs the server extra ({exc.name} is missing): "
            'pip install "ptystream[server]"',
            file=sys.stderr,
        )
        return 2

    _, key_in_uri = split_api_key(args.tiled)
    api_key = read_api_key(args.api_key_file) or key_in_uri
    client = _client(args)  # a wrong key or an absent server is reported now, not in a browser
    uri = str(client.context.api_uri).rstrip("/")  # "http://host:8000" -> ".../api/v1"
    try:
        dashboard, taken = start_with_port_fallback(
            start_dashboard,
            args.port,
            tiled_uri=uri,
            api_key=api_key,
            host=args.host,
            allowed_hosts=args.allow_host,
            forward_exports=args.forward_exports,
        )
    except OSError as exc:  # not a port another one would cure: the address is not ours
        raise ValueError(
            f"{args.host}:{args.port}: cannot listen there: {_lower(exc.strerror or str(exc))} "
            "(--host must be an address of this machine, 0.0.0.0 for all)"
        ) from exc
    if taken is not None:
        print(
            f"ptystream: {args.host}:{args.port}: {_lower(taken.strerror or str(taken))} (the "
            "dashboard took a free port instead; --port to choose another)",
            file=sys.stderr,
        )
    print(f"dashboard at {dashboard.url} (data from {uri}); Ctrl-C to stop", flush=True)
    try:
        wait_for_signal()
    finally:
        dashboard.close()
    return 0


def _show(args: argparse.Namespace) -> int:
    from ptystream.commands.show import show_command

    return show_command(args)


def _calibrate(args: argparse.Namespace) -> int:
    from ptystream.commands.calibrate import calibrate_command

    return calibrate_command(args)


def _reprocess(args: argparse.Namespace) -> int:
    from ptystream.commands.reprocess import reprocess_command

    return reprocess_command(args)


def _add_tiled_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tiled",
        required=True,
        metavar="URI",
        help="Tiled server, e.g. http://127.0.0.1:8000/api/v1",
    )
    _add_api_key_option(parser)


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    """``--profile`` (required) and ``--set SECTION.KEY=VALUE`` (repeatable)."""
    parser.add_argument("--profile", required=True, help="profile name or YAML path")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a profile setting, e.g. engine.probe_modes=3 (repeatable)",
    )


def _add_api_key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="file holding the Tiled API key (default: the TILED_API_KEY environment variable)",
    )


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _non_negative(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptystream",
        description="Streaming ptychography: live reconstruction from Bluesky into Tiled.",
        epilog="Exit status: 0 done; 1 ran, but something failed (the output says what); 2 bad "
        "input or usage, nothing done (one line on stderr says what to fix).",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log at INFO level, TensorFlow's start-up messages included",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run a simulated scan reconstructed live into an embedded Tiled server"
    )
    demo.add_argument("--profile", default="demo", help="profile name or YAML path")
    demo.add_argument("--out", default="demo-output", help="directory for Tiled data and the PNG")
    demo.add_argument(
        "--keep-serving", action="store_true", help="keep the Tiled server up until Ctrl-C"
    )
    demo.add_argument(
        "--dashboard-port",
        type=int,
        default=8765,
        help="port of the dashboard web page (any free port if taken)",
    )
    demo.set_defaults(func=_demo)
    rec = sub.add_parser("reconstruct", help="reconstruct a finished scan file (CXI or NPZ)")
    rec.add_argument("input", help="scan file: .cxi or .npz (see README)")
    _add_profile_options(rec)
    budget = rec.add_mutually_exclusive_group()
    budget.add_argument(
        "--iterations", type=_positive(int), help="passes over all frames (default 100)"
    )
    budget.add_argument(
        "--time-budget", type=_positive(float), metavar="S", help="seconds of passes"
    )
    rec.add_argument(
        "--engine",
        choices=[a.value for a in Algorithm],
        help="ad (TensorFlow, automatic differentiation) or the numpy baselines epie and mpie "
        "(default: the profile's engine.algorithm)",
    )
    rec.add_argument(
        "--out", required=True, help="output HDF5 file (ending in .cxi: the CXI layout)"
    )
    rec.add_argument(
        "--png", action="store_true", help="also write OUT.png (as ptystream show does)"
    )
    rec.add_argument(
        "--resume",
        action="store_true",
        help="go on from an interrupted run of the same command (OUT.state.npz): the passes "
        "left, or a new --time-budget",
    )
    rec.set_defaults(func=_reconstruct)
    sho = sub.add_parser(
        "show",
        help="write and print the path of a PNG of a result: object with the scan positions, "
        "phase without its ramp, probe, loss",
    )
    sho.add_argument(
        "input", metavar="RESULT|RUN", help="OUT.h5 or .cxi result, or a run uid (prefix)"
    )
    sho.add_argument("--out", help="PNG to write (default: beside the result, or <uid>.png)")
    sho.add_argument("--tiled", metavar="URI", help="Tiled server holding the run's result")
    _add_api_key_option(sho)
    sho.set_defaults(func=_show)
    cal = sub.add_parser(
        "calibrate",
        help="check a finished scan's position axes (and far-field defocus, near-field "
        "distance) and print the profile lines to paste; exit status 1 if the axes are wrong",
    )
    cal.add_argument(
        "input",
        metavar="INPUT|RUN",
        help="scan file (.cxi, .h5, .npz) or a run in --tiled (uid, uid prefix or scan id)",
    )
    _add_profile_options(cal)
    cal.add_argument("--tiled", metavar="URI", help="Tiled server holding the run")
    _add_api_key_option(cal)
    cal.add_argument("--catalog", default="raw", help="catalog of Bluesky runs in Tiled")
    cal.set_defaults(func=_calibrate)
    pro = sub.add_parser("profiles", help="list, show and validate instrument profiles")
    pro_sub = pro.add_subparsers(dest="action", required=True)
    pro_sub.add_parser(
        "list", help="profiles found by name: description, propagation, energy, distance, pixel"
    )
    show = pro_sub.add_parser("show", help="a profile as resolved, every default filled in")
    show.add_argument("profile", metavar="NAME|FILE", help="profile name or YAML path")
    val = pro_sub.add_parser(
        "validate", help="check profile files; exit status 1 if any is invalid"
    )
    val.add_argument("files", nargs="+", metavar="FILE", help="YAML path (or profile name)")
    pro.set_defaults(func=_profiles)
    srv = sub.add_parser(
        "serve",
        help="reconstruct live the runs a bluesky 0MQ proxy (or Kafka) publishes, until SIGTERM",
    )
    srv.add_argument("--profile", required=True, help="profile name or YAML path")
    feed = srv.add_mutually_exclusive_group(required=True)
    feed.add_argument("--zmq", metavar="HOST:PORT", help="out address of bluesky-0MQ-proxy")
    feed.add_argument(
        "--kafka", metavar="BROKERS", help="Kafka bootstrap servers (needs bluesky-kafka)"
    )
    srv.add_argument("--kafka-topic", action="append", default=[], help="Kafka topic (repeatable)")
    srv.add_argument(
        "--tiled",
        metavar="URI",
        help="Tiled server to publish to (default: an embedded one under --data-dir)",
    )
    _add_api_key_option(srv)
    srv.add_argument(
        "--data-dir",
        default="ptystream-serve",
        help="spool, spill and checkpoint directory (and the embedded server's data)",
    )
    srv.add_argument(
        "--idle-notice",
        type=_non_negative(float),
        default=60.0,
        metavar="S",
        help="print 'waiting for documents on ...' after every S seconds without one "
        "(default 60; 0: never)",
    )
    srv.set_defaults(func=_serve)
    wat = sub.add_parser("watch", help="follow a live reconstruction in the terminal")
    wat.add_argument(
        "run",
        nargs="?",
        help="raw run uid (or its first characters) or scan id; default: the run going on, "
        "or the next one to start",
    )
    _add_tiled_options(wat)
    wat.set_defaults(func=_watch)
    flu = sub.add_parser(
        "flush", help="upload the final results kept on disk while Tiled was unreachable"
    )
    flu.add_argument(
        "--spool",
        default="ptystream-serve/spool",
        help="spool directory (serve: <data-dir>/spool; demo: <out>/spool)",
    )
    _add_tiled_options(flu)
    flu.set_defaults(func=_flush)
    das = sub.add_parser("dashboard", help="serve the control-room web page for a Tiled server")
    _add_tiled_options(das)
    das.add_argument("--host", default="127.0.0.1", help="address to listen on")
    das.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free)")
    das.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name the page may be opened under besides the bound address (repeatable); "
        "other Host headers get 403",
    )
    das.add_argument(
        "--forward-exports",
        action="store_true",
        help="forward Tiled's exports of whole containers (node/full, container/full)",
    )
    das.set_defaults(func=_dashboard)
    rep = sub.add_parser(
        "reprocess",
        help="reconstruct finished runs (from Tiled) or scan files again, in parallel on Dask",
    )
    rep.add_argument(
        "inputs",
        nargs="*",
        metavar="RUN|FILE",
        help="run uid, uid prefix, scan id or scan id range (40:45) in --tiled; or a .cxi/.npz "
        "file",
    )
    _add_profile_options(rep)
    rep.add_argument(
        "--epochs", type=_positive(int), default=100, help="passes over all frames (default 100)"
    )
    rep.add_argument("--tiled", metavar="URI", help="Tiled server holding the runs")
    _add_api_key_option(rep)
    rep.add_argument("--catalog", default="raw", help="catalog of Bluesky runs in Tiled")
    rep.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="select runs whose start document has KEY equal to VALUE (repeatable)",
    )
    rep.add_argument(
        "--format",
        choices=["h5", "cxi"],
        default="h5",
        help="scan files' results: ptystream's HDF5 (default) or the CXI layout",
    )
    rep.add_argument("--force", action="store_true", help="redo inputs already reprocessed")
    rep.add_argument(
        "--workers", type=_positive(int), default=2, help="local Dask worker processes"
    )
    rep.add_argument(
        "--memory-limit", help="per local worker, e.g. 6GiB (default: 80%% of RAM shared)"
    )
    rep.add_argument(
        "--scheduler", metavar="ADDRESS", help="use this Dask scheduler instead of local workers"
    )
    rep.add_argument(
        "--out", default="reprocess-output", help="contact sheet, summary and file results"
    )
    rep.set_defaults(func=_reprocess)
    return parser


#: Errors that mean bad input or usage (exit status 2): their message says what to fix.
_BAD_INPUT = (
    ProfileError,
    AccessError,  # also ServeError
    ValueError,  # also ScanFileError, RunSelectionError
    KeyError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        # TensorFlow's C++ start-up chatter (oneDNN, XLA banners) drowns the commands' output;
        # at level 2 the engine also filters what TensorFlow prints while it is imported
        # (ptystream.engine.import_tensorflow). A level set in the environment wins.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if getattr(args, "command", None) == "reconstruct" and args.time_budget is None:
        args.iterations = 100 if args.iterations is None else args.iterations
    if args.command == "serve" and not args.verbose:
        logging.getLogger("ptystream").setLevel(logging.INFO)  # run skips, frame rejections
    if args.command == "reconstruct":  # SIGTERM ends it as Ctrl-C does: the result so far kept
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        print(f"ptystream: interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130
    except _BAD_INPUT as exc:
        print(f"ptystream: {error_message(exc)}", file=sys.stderr)
        return 2


def error_message(exc: BaseException) -> str:
    """``exc`` as the text after ``ptystream: ``, ``<what>: <why> (<what to do>)``.

    ptystream's own errors are written that way already. Python's OSErrors (``[Errno 2] No
    such file or directory: 'x'``) become ``x: no such file or directory``, and a KeyError loses
    the quotes ``str()`` puts around its text.
    """
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {_lower(exc.strerror)}"
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc)


def _lower(text: str) -> str:
    """``text`` with its first letter in lower case (OS messages start with a capital)."""
    return text[:1].lower() + text[1:]


if __name__ == "__main__":
    sys.exit(main())
