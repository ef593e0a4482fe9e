"""Faults of the document stream, and what the live service makes of them: a fault matrix.

Method. Each case is one scan of the demo profile's simulated beamline on a real RunEngine
(150 points at 0.05 s exposures, about 8 s), saved raw by bluesky's TiledWriter into a real
embedded Tiled server (on a background thread, as the demo does) and reconstructed live by the
real ``LivePipeline`` into the same server. Between the RunEngine and ptystream's callback a
link drops documents: the injected fault. Cases:

- ``none``: nothing lost (the reference);
- ``gap 41-75``: events 41-75 lost (35 of 150: what a 0MQ proxy restarted for ~3 s lost at
  a beamline);
- ``tail lost``: the last 10 events lost (only the stop's ``num_events`` reveals them);
- ``stop lost``: the stop document lost (without the raw run: 30 minutes of ``stop_timeout_s``);
- ``no raw run``: events 41-75 lost and no TiledWriter (nothing to backfill from);

and with ``ptystream serve`` as a process behind a real ``bluesky-0MQ-proxy``
(:mod:`_service_faults`, which says how): ``proxy restarted`` (SIGTERM, 3 s down, from event
41), ``serve SIGKILL`` and ``serve SIGTERM`` (at event 100, a new service 1 s later, which
completes the run). For a recovered run, ``received`` is what the recovery took from the
checkpoint and ``backfilled`` what it read from the raw run.

Measured per case: frames sent (events the RunEngine emitted), received (through the link),
backfilled (read from the raw run), used, missing (named in the metadata), the final status,
and the time from the fault (the first document dropped, the proxy or service stopped) to the
final result being published. ``ingest.backfill_after_s`` is the profile's (5 s). ``--quick``: 60
points, and the ``stop lost`` and ``no raw run`` cases only. ``--case NAME`` (repeatable): those
cases only.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness
import _service_faults

N_POINTS, QUICK_POINTS = 150, 60
CASES = {
    "none": {"lost": set()},
    "gap 41-75": {"lost": set(range(41, 76))},
    "tail lost": {"lost": "tail"},
    "stop lost": {"lost": set(), "drop_stop": True},
    "no raw run": {"lost": set(range(41, 76)), "raw": False},
}
SERVICE_CASES = tuple(_service_faults.CASES)
QUICK_CASES = ("stop lost", "no raw run")


class _Link:
    """Passes documents on, except those of the fault; notes when the first was dropped."""

    def __init__(self, callback, lost: set[int], drop_stop: bool):
        self.callback, self.lost, self.drop_stop = callback, lost, drop_stop
        self.fault_at: float | None = None
        self.sent = 0

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "event":
            self.sent += 1
        dropped = (name == "event" and doc["seq_num"] in self.lost) or (
            name == "stop" and self.drop_stop
        )
        if dropped:
            self.fault_at = self.fault_at or time.monotonic()
            return
        self.callback(name, doc)


def run_case(name: str, n_points: int, directory: Path) -> dict[str, Any]:
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    from ptystream.live.background import BackgroundCallback
    from ptystream.live.callback import PtychoCallback
    from ptystream.live.pipeline import LivePipeline
    from ptystream.sim.scan import build_simulation
    from ptystream.store.layout import raw_catalog
    from ptystream.store.publisher import TiledPublisher
    from ptystream.store.server import start_embedded_server

    case = CASES[name]
    lost = set(range(n_points - 9, n_points + 1)) if case["lost"] == "tail" else case["lost"]
    profile = _harness.profile_with(
        "demo", {"sim.n_points": n_points, "sim.exposure_s": 0.05, "sim.object_px": 176}
    )
    server = start_embedded_server(directory / name.replace(" ", "_"))
    try:
        client = from_uri(server.uri)
        sim = build_simulation(profile)
        pipeline = LivePipeline(profile, TiledPublisher(client)).start()
        link = _Link(PtychoCallback(profile, pipeline), lost, case.get("drop_stop", False))
        RE = RunEngine({})
        writer = BackgroundCallback(TiledWriter(raw_catalog(client), batch_size=25))
        if case.get("raw", True):
            RE.subscribe(writer)
        RE.subscribe(link)
        t0 = time.monotonic()
        (uid,) = RE(sim.plan())
        result = pipeline.wait(uid, timeout=600)
        done = time.monotonic()
        writer.flush(timeout=120)
        pipeline.close()
        frames = client[f"processed/ptystream/{uid}"].metadata["frames"]
        missing = (frames.get("missing") or {}).get("count", 0)
        return {
            "case": name,
            "sent": link.sent,
            "received": frames["received"],
            "backfilled": frames.get("backfilled", 0),
            "used": frames["used"],
            "missing": missing,
            "status": result.status,
            "fault_to_final_s": done - (link.fault_at or t0),
            "scan_s": done - t0,
        }
    finally:
        server.close()


def format_table(results: dict[str, Any]) -> str:
    header = (
        "fault",
        "sent",
        "received",
        "backfilled",
        "used",
        "missing",
        "status",
        "fault->final (s)",
    )
    rows = [
        (
            r["case"],
            str(r["sent"]),
            str(r["received"]),
            str(r["backfilled"]),
            str(r["used"]),
            str(r["missing"]),
            r["status"],
            _harness.fmt(r["fault_to_final_s"], ".1f"),
        )
        for r in results["cases"]
    ]
    return "\n".join(_harness.table(header, rows))


def main(argv: list[str] | None = None) -> int:
    parser = _harness.parser(__doc__, quick="60 points, two cases")
    parser.add_argument("--case", action="append", choices=[*CASES, *SERVICE_CASES], help="these")
    args = parser.parse_args(argv)
    if args.report:
        return _harness.report(args.report, format_table)
    n_points = QUICK_POINTS if args.quick else N_POINTS
    names = args.case or (QUICK_CASES if args.quick else (*CASES, *SERVICE_CASES))
    results: dict[str, Any] = {"quick": args.quick, "machine": _harness.machine_info()}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        results["cases"] = []
        for name in names:
            run = _service_faults.run_service_case if name in SERVICE_CASES else run_case
            results["cases"].append(run(name, n_points, Path(tmp)))
            print(format_table(results), flush=True)
    results["total_s"] = time.monotonic() - t0
    return _harness.finish(results, format_table, _harness.json_path(args, "faults"))


if __name__ == "__main__":
    sys.exit(main())
