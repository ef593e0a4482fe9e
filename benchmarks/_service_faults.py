"""The service rows of ``faults.py`` (not a benchmark itself): ``ptystream serve`` as a process
behind a real ``bluesky-0MQ-proxy``, and the proxy or the service failing mid-scan.

Each case: a real embedded Tiled server (in this process), a proxy and a ``serve`` process
(``--data-dir`` in the case's directory, the demo profile with ``checkpoint_cadence_s`` 2 s);
a RunEngine publishes the scan with bluesky's ``Publisher`` (its default socket) and saves it
raw with TiledWriter. At event ``at`` a thread injects the fault and ends it ``down_s`` later:

- ``proxy restarted``: the proxy stopped with SIGTERM (as ``systemctl restart`` does) and
  started again on the same ports; the service backfills what was lost in transit;
- ``serve SIGKILL``: the service killed and a new one started on the same data directory; it
  completes the run from the last periodic checkpoint plus the raw run;
- ``serve SIGTERM``: the service stopped (it checkpoints and publishes ``incomplete``) and a
  new one started; it completes the run from that checkpoint plus the raw run.

The time is from the fault to the run's final result in Tiled (for the service cases: the
recovered one).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
import zmq

import _harness

BIN = Path(sys.executable).parent
CASES = {
    "proxy restarted": {"fault": "proxy", "at": 41, "down_s": 3.0},
    "serve SIGKILL": {"fault": "serve", "signal": signal.SIGKILL, "at": 100, "down_s": 1.0},
    "serve SIGTERM": {"fault": "serve", "signal": signal.SIGTERM, "at": 100, "down_s": 1.0},
}
ENDED = ("finished", "aborted", "failed", "incomplete")
READY = "ptystream serve: ready"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Child:
    """A child process whose output goes to a log file."""

    def __init__(self, args: list[Any], log: Path, env: dict[str, str] | None = None):
        self.log = log
        with open(log, "a") as out:
            self.proc = subprocess.Popen(
                [str(a) for a in args], stdout=out, stderr=subprocess.STDOUT, env=env
            )

    def wait_for(self, text: str, timeout: float, seen: int = 0) -> None:
        """Until ``text`` appears in the log more than ``seen`` times."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.read_text(errors="replace").count(text) > seen:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"{text!r} not in {self.log}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _Site:
    """The proxy and the service of one case, restartable where they were."""

    def __init__(self, directory: Path, profile_file: Path, uri: str, key_file: Path):
        self.directory, self.ports = directory, (_free_port(), _free_port())
        self.serve_args = [BIN / "ptystream", "serve", "--profile", profile_file]
        self.serve_args += ["--zmq", f"127.0.0.1:{self.ports[1]}", "--tiled", uri]
        self.serve_args += ["--api-key-file", key_file, "--data-dir", directory / "data"]
        self.proxy = self.start_proxy()
        self.serve = self.start_serve()
        self.serves = 1

    def start_proxy(self) -> _Child:
        args = [BIN / "bluesky-0MQ-proxy", "--in-address", f"127.0.0.1:{self.ports[0]}"]
        args += ["--out-address", f"127.0.0.1:{self.ports[1]}"]
        return _Child(args, self.directory / "proxy.log")

    def start_serve(self) -> _Child:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("TILED_API_KEY", None)
        return _Child(self.serve_args, self.directory / "serve.log", env)

    def restart_serve(self) -> None:
        self.serve = self.start_serve()
        self.serves += 1

    def close(self) -> None:
        self.serve.stop()
        self.proxy.stop()


class _Fault:
    """A RunEngine callback that injects the case's fault at its event, on a thread."""

    def __init__(self, case: dict[str, Any], site: _Site):
        self.case, self.site = case, site
        self.fault_at: float | None = None
        self.sent = 0
        self.thread = threading.Thread(target=self._inject, daemon=True)

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "event":
            self.sent += 1
            if doc["seq_num"] == self.case["at"]:
                self.thread.start()

    def _inject(self) -> None:
        self.fault_at = time.monotonic()
        site = self.site
        if self.case["fault"] == "proxy":
            site.proxy.proc.send_signal(signal.SIGTERM)
            site.proxy.proc.wait(timeout=30)
            time.sleep(self.case["down_s"])
            site.proxy = site.start_proxy()
            return
        site.serve.proc.send_signal(self.case["signal"])
        site.serve.proc.wait(timeout=120)
        time.sleep(self.case["down_s"])
        site.restart_serve()


def _final(client, uid: str, recovered: bool, timeout: float = 600.0) -> dict[str, Any]:
    """The run's metadata once it is final (and recovered, for a service fault)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processed = client["processed"]["ptystream"] if "processed" in client else {}
        if uid in processed:
            md = dict(processed[uid].metadata)
            if md["status"] in ENDED and (not recovered or md.get("recovered")):
                return md
        time.sleep(0.25)
    raise TimeoutError(f"run {uid} not final within {timeout} s")


def run_service_case(name: str, n_points: int, directory: Path) -> dict[str, Any]:
    """One case of :data:`CASES`; the row of ``faults.py``'s table."""
    from bluesky import RunEngine
    from bluesky.callbacks.zmq import Publisher
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    from ptystream.live.background import BackgroundCallback
    from ptystream.sim.scan import build_simulation
    from ptystream.store.layout import raw_catalog
    from ptystream.store.server import start_embedded_server

    case = CASES[name]
    directory = directory / name.replace(" ", "_")
    directory.mkdir(parents=True)
    profile = _harness.profile_with(
        "demo",
        {
            "sim.n_points": n_points,
            "sim.exposure_s": 0.05,
            "sim.object_px": 176,
            "publish.checkpoint_cadence_s": 2.0,
        },
    )
    profile_file = directory / "profile.yaml"
    profile_file.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
    server = start_embedded_server(directory / "tiled")
    key_file = directory / "api-key"
    key_file.write_text(server.api_key + "\n")
    site = _Site(directory, profile_file, server.uri.split("?")[0], key_file)
    publisher = None
    try:
        client = from_uri(server.uri)
        site.serve.wait_for(READY, timeout=300)
        publisher = Publisher(f"127.0.0.1:{site.ports[0]}")
        time.sleep(1.0)  # PUB/SUB: let the subscription reach the proxy before publishing
        fault = _Fault(case, site)
        RE = RunEngine({})
        writer = BackgroundCallback(TiledWriter(raw_catalog(client), batch_size=25))
        RE.subscribe(writer)
        RE.subscribe(publisher)
        RE.subscribe(fault)
        t0 = time.monotonic()
        (uid,) = RE(build_simulation(profile).plan())
        fault.thread.join(timeout=300)
        writer.flush(timeout=120)
        md = _final(client, uid, recovered=case["fault"] == "serve")
        done = time.monotonic()
        frames, record = md["frames"], md.get("recovered") or {}
        source = record.get("frames", {})
        received = source.get("from_checkpoint", 0) if record else frames["received"]
        return {
            "case": name,
            "sent": fault.sent,
            # a recovered run: what the recovery took from the checkpoint and from the raw run
            "received": received,
            "backfilled": source.get("from_raw_run", frames.get("backfilled", 0)),
            "used": frames["used"],
            "missing": (frames.get("missing") or {}).get("count", 0),
            "status": md["status"] + (f" (recovered from {record['from']})" if record else ""),
            "recovered_from": record.get("from"),
            "passes": record.get("passes"),
            "fault_to_final_s": done - (fault.fault_at or t0),
            "scan_s": done - t0,
            "services": site.serves,
        }
    finally:
        if publisher is not None:
            publisher._socket.setsockopt(zmq.LINGER, 0)
            publisher.close()
        site.close()
        server.close()
