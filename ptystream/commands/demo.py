"""`ptystream demo`: a simulated scan reconstructed live into an embedded Tiled server."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGINT, SIGTERM
from typing import Any, TypeVar

from ptystream.config import Profile
from ptystream.metrics import Correlation, score_against_truth, score_slices

__all__ = ["DemoReport", "run_demo", "start_with_port_fallback", "wait_for_signal"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class DemoReport:
    """Where the results are and how good and fast they were."""

    tiled_uri: str
    api_key_file: Path
    dashboard_url: str
    raw_path: str
    processed_path: str
    run_uid: str
    summary_png: Path
    correlation: Correlation
    flat_abs_c: float
    status: str
    accounting: dict
    timings_s: dict[str, float] = field(default_factory=dict)
    slice_correlations: list[Correlation] = field(default_factory=list)
    """Multislice: each slice against its own layer (``correlation`` is then the product's)."""
    notes: list[str] = field(default_factory=list)
    """The engine's noise model, probe defocus, early stop and warnings
    (:meth:`~ptystream.types.Estimate.notes`)."""


def run_demo(
    profile: Profile,
    out_dir: str | Path,
    *,
    keep_serving: bool = False,
    dashboard_port: int = 8765,
    wrap_callback: Callable | None = None,
    announce: Callable[[str], None] | None = None,
) -> DemoReport:
    """Start Tiled and the dashboard, run the simulated scan with live reconstruction, score
    and summarise it.

    The embedded server's API key is written to ``out_dir/tiled-api-key`` (mode 0600), never
    printed. The dashboard listens on ``dashboard_port`` (any free port if that one is taken).
    ``wrap_callback`` (for benchmarks) wraps the live callback before it is subscribed.
    ``announce`` tells the progress (default: printed, flushed at once, so that a reader of a
    pipe knows when the scan starts).
    """
    t_start = time.perf_counter()
    announce = announce or _say
    from bluesky import RunEngine
    from bluesky.utils import RunEngineInterrupted

    from ptystream.dashboard import start_dashboard
    from ptystream.io.figures import write_summary
    from ptystream.live.background import BackgroundCallback
    from ptystream.live.callback import PtychoCallback
    from ptystream.live.pipeline import LivePipeline
    from ptystream.sim.scan import build_simulation
    from ptystream.store.access import connect, split_api_key, write_key_file
    from ptystream.store.layout import raw_catalog
    from ptystream.store.publisher import TiledPublisher
    from ptystream.store.server import start_server_process

    out_dir = Path(out_dir).resolve()
    # SIGTERM (a service manager, `kill`) ends the demo as Ctrl-C does: the run aborted
    signals: list[int] = []
    on_term = _as_ctrl_c(signals)
    previous_term = None
    if threading.current_thread() is threading.main_thread():
        previous_term = signal.signal(SIGTERM, on_term)
    server = start_server_process(out_dir / "tiled")
    dashboard = None
    try:
        key_file = write_key_file(out_dir / "tiled-api-key", server.api_key)
        tiled_uri, _ = split_api_key(server.uri)
        client = connect(tiled_uri, server.api_key)  # the key in a header, never in a URL
        from bluesky_tiled_plugins import TiledWriter

        raw_writer = BackgroundCallback(
            TiledWriter(raw_catalog(client), batch_size=profile.publish.raw_batch_size),
            name="raw-writer",
        )
        pipeline = LivePipeline(
            profile, TiledPublisher(client), spool_dir=out_dir / "spool"
        ).start()
        sim = build_simulation(profile)
        RE = RunEngine({}, during_task=_waking_during_task())
        callback = PtychoCallback(profile, pipeline)
        RE.subscribe(raw_writer)
        RE.subscribe(wrap_callback(callback) if wrap_callback else callback)
        dashboard, taken = start_with_port_fallback(
            start_dashboard, dashboard_port, tiled_uri=tiled_uri, api_key=server.api_key
        )
        if taken is not None:
            logger.info(
                "dashboard port %d not available (%s); using a free port", dashboard_port, taken
            )
        t_ready = time.perf_counter()
        announce(f"Tiled server at {tiled_uri}  (API key in {key_file})")
        announce(f"dashboard at {dashboard.url}  (open it to watch the reconstruction)")
        announce(f"scanning {len(sim.positions_m)} points with live reconstruction ...")
        said = io.StringIO()  # bluesky's own words on Ctrl-C (pause, options) are not for us
        try:
            with contextlib.redirect_stdout(said):
                (uid,) = RE(sim.plan())
        except (KeyboardInterrupt, RunEngineInterrupted):
            why = "SIGTERM" if SIGTERM in signals else "Ctrl-C"
            raise KeyboardInterrupt(_aborted(RE, pipeline, raw_writer, why)) from None
        sys.stdout.write(said.getvalue())
        t_scan = time.perf_counter()
        try:
            result = pipeline.wait(uid, timeout=600)
        except KeyboardInterrupt:  # during the final passes: publish, never leave it running
            result = pipeline.wait(uid, timeout=60)
            raise KeyboardInterrupt(
                f"run {uid[:8]} ended {result.status} in Tiled (interrupted during its final "
                "passes, which were let finish)"
            ) from None
        t_final = time.perf_counter()
        raw_writer.flush(timeout=120)
        raw_writer.close()
        pipeline.close()
        if result.final is None or result.node_path is None:
            raise RuntimeError(
                f"run {uid} ended {result.status} without a published result: {result.error}"
            )
        served = client[result.node_path]["final"]["object"].read()
        estimate = dataclasses.replace(result.final, object=served)
        per_slice: list[Correlation] = []
        if estimate.n_slices > 1:  # each slice against its layer, the product against theirs
            per_slice, score, flat = score_slices(estimate, sim.truth)
        else:
            score, flat = score_against_truth(estimate, sim.truth)
        projected = dataclasses.replace(sim.truth, object=sim.truth.projected_object)
        slices_text = "".join(f", slice {s}: {c.abs_c:.4f}" for s, c in enumerate(per_slice))
        png = write_summary(
            out_dir / f"summary-{uid[:8]}.png",
            estimate,
            truth=projected.aligned_to(estimate.object.shape[-2:], estimate.object_origin_m),
            title=f"ptystream demo, run {uid[:8]}: |C| = {score.abs_c:.4f} "
            f"(flat object {flat:.4f}){slices_text}",
        )
        report = DemoReport(
            tiled_uri=tiled_uri,
            api_key_file=key_file,
            dashboard_url=dashboard.url,
            raw_path=f"raw/{uid}",
            processed_path=result.node_path,
            run_uid=uid,
            summary_png=png,
            correlation=score,
            flat_abs_c=flat,
            slice_correlations=per_slice,
            notes=result.final.notes() if result.final is not None else [],
            status=result.status,
            accounting=result.accounting.as_dict(),
            timings_s={
                "start_up": t_ready - t_start,
                "scan": t_scan - t_ready,
                "final_reconstruction": t_final - t_scan,
                "total": time.perf_counter() - t_start,
            },
        )
        if keep_serving:
            _print_report(report, announce)
            announce("serving until Ctrl-C (or SIGTERM) ...")
            wait_for_signal()
        return report
    finally:
        if dashboard is not None:
            dashboard.close()
        server.close()
        if previous_term is not None:
            signal.signal(SIGTERM, previous_term)


#: Why a port cannot be listened on that another port can cure: taken, or privileged.
_PORT_TAKEN = (errno.EADDRINUSE, errno.EACCES)


def start_with_port_fallback(
    start: Callable[..., T], port: int, **kwargs: Any
) -> tuple[T, OSError | None]:
    """``start(port=port, **kwargs)``, or ``start(port=0, **kwargs)`` (any free port) when
    ``port`` is in use or needs privileges; returns what started and the error that made it
    fall back (None when ``port`` was taken up), so the caller can say so.

    Other errors (an address not of this machine, say) are raised: another port would not help.
    ``demo`` and ``dashboard`` start the dashboard through it.
    """
    try:
        return start(port=port, **kwargs), None
    except OSError as exc:
        if port == 0 or exc.errno not in _PORT_TAKEN:
            raise
        return start(port=0, **kwargs), exc


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (handlers set explicitly: a job started in the background
    of a non-interactive shell inherits SIGINT as ignored)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (SIGINT, SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_report(report: DemoReport, announce: Callable[[str], None]) -> None:
    c = report.correlation
    t = report.timings_s
    announce(f"run {report.run_uid}: {report.status}, frames {report.accounting}")
    announce(f"dashboard:  {report.dashboard_url}")
    announce(f"Tiled:      {report.tiled_uri}  (API key in {report.api_key_file})")
    announce(f"raw scan:   {report.raw_path}")
    announce(f"result:     {report.processed_path}/live/..., {report.processed_path}/final/object")
    of = " of the product of the slices" if report.slice_correlations else ""
    announce(
        f"|C|{of} = {c.abs_c:.4f} (flat object {report.flat_abs_c:.4f}); amplitude r = "
        f"{c.amplitude:.3f}, phase r = {c.phase:.3f}"
    )
    for s, cs in enumerate(report.slice_correlations):
        announce(
            f"slice {s}: |C| = {cs.abs_c:.4f}; amplitude r = {cs.amplitude:.3f}, phase r = "
            f"{cs.phase:.3f}"
        )
    announce(
        f"wall time: start-up {t['start_up']:.1f} s, scan {t['scan']:.1f} s, final "
        f"reconstruction {t['final_reconstruction']:.1f} s, total {t['total']:.1f} s"
    )
    for note in report.notes:
        announce(note)
    announce(f"summary:    {report.summary_png}")


def _waking_during_task():
    """How the main thread waits while the RunEngine runs the scan: in short waits, not one
    (bluesky's default), so that Ctrl-C or SIGTERM is handled within 0.2 s. Python runs signal
    handlers on the main thread only, and a signal the kernel gives to another of the demo's
    many threads did not wake it: the pause request then came only after the scan had ended."""
    from bluesky.utils import DuringTask

    class WakingDuringTask(DuringTask):
        def block(self, blocking_event: threading.Event) -> None:
            while not blocking_event.wait(0.2):
                pass

    return WakingDuringTask()


def _say(line: str) -> None:
    print(line, flush=True)


def _as_ctrl_c(seen: list[int]) -> Callable[[int, Any], None]:
    """A SIGTERM handler that does what Ctrl-C would do now: call the SIGINT handler in place
    (the RunEngine's, which pauses the scan, while it runs; else Python's, which raises
    KeyboardInterrupt). The signal is noted in ``seen``."""

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        on_int = signal.getsignal(SIGINT)
        if callable(on_int):
            on_int(SIGINT, frame)
        else:  # SIGINT ignored (a background job of a non-interactive shell): stop all the same
            raise KeyboardInterrupt

    return handler


def _aborted(RE, pipeline, raw_writer, why: str = "Ctrl-C") -> str:
    """Ctrl-C or SIGTERM during the demo's scan (the RunEngine pauses): abort the run, so that
    it ends with a stop document and its reconstruction is published ``aborted`` rather than
    left ``running``; wait for that (at most a minute) and say where it is."""
    if RE.state == "idle":
        return "before the scan started"
    quiet = logging.getLogger("bluesky")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its traceback of the abort request
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            (uid,) = RE.abort(f"interrupted ({why})")
    finally:
        quiet.setLevel(level)
    result = pipeline.wait(uid, timeout=60)
    raw_writer.flush(timeout=30)
    return f"run {uid[:8]} ended {result.status} in Tiled"
