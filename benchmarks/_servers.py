"""Tiled servers the live benchmarks publish to (not a benchmark itself).

Three placements of the server (``publish_cost.py``, ``dashboard_delay.py``):

- **embedded**: ``SimpleTiledServer`` in a child process
  (``ptystream.store.server.start_server_process``, what ``ptystream demo`` runs);
- **separate**: ``tiled serve catalog --temp`` in its own process (a SQLite catalog, zarr and
  DuckDB storage, in-memory streaming cache), as a facility runs it; its API key is random for
  the run, it binds 127.0.0.1 and its storage lives under the given directory;
- **in-process**: ``SimpleTiledServer`` in this process
  (``ptystream.store.server.start_embedded_server``, what ``ptystream demo`` ran before): its
  request handling competes for this process's GIL.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptystream.store.server import stop_child

import _harness

PLACEMENTS = ("embedded", "separate", "in-process")
BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SeparateServer:
    """``tiled serve catalog --temp`` in a child process (storage under ``directory``)."""

    def __init__(self, directory: Path):
        self.api_key = secrets.token_hex(16)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}/api/v1"
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "server.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        args = [str(BIN / "tiled"), "serve", "catalog", "--temp", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--api-key", self.api_key]
        env = {**os.environ, "TMPDIR": str(directory)}  # --temp leaves its directory behind
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT_S) -> float:
        """Wait until the server answers an authorised request; returns the seconds waited."""
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tiled serve exited with {self.proc.returncode}")
            try:
                r = httpx.get(self.uri + "/", headers={"Authorization": f"Apikey {self.api_key}"})
                if r.status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"tiled serve did not answer within {timeout} s")

    def close(self) -> None:
        stop_child(self.proc)
        self._log.close()


@dataclass
class Server:
    """A started server of one placement.

    Attributes
    ----------
    placement : ``embedded``, ``separate`` or ``in-process``.
    uri : its API address, without a key.
    api_key : the key it accepts.
    pid : its process, or None in this process.
    log_path : where it logs unhandled exceptions (HTTP 500s).
    handle : what :meth:`close` stops.
    """

    placement: str
    uri: str
    api_key: str
    pid: int | None
    log_path: Path
    handle: Any

    def cpu_s(self) -> float | None:
        """CPU seconds of its process so far; None in this process."""
        return _harness.process_cpu_s(self.pid) if self.pid is not None else None

    def connect(self) -> Any:
        """A tiled client with its key."""
        from ptystream.store.access import connect

        return connect(self.uri, self.api_key)

    def errors_500(self) -> int:
        """How many requests it answered with an unhandled exception (HTTP 500) so far."""
        try:
            return self.log_path.read_text(errors="replace").count("Exception in ASGI application")
        except OSError:
            return 0

    def close(self) -> None:
        self.handle.close()


def start_server(placement: str, directory: Path) -> Server:
    """Start ``placement``'s server with its storage under ``directory``; wait until it answers."""
    from ptystream.store.access import split_api_key
    from ptystream.store.server import start_embedded_server, start_server_process

    if placement == "separate":
        separate = SeparateServer(directory)
        separate.wait_ready()
        return Server(
            placement, separate.uri, separate.api_key, separate.pid, separate.log_path, separate
        )
    if placement == "embedded":
        server = start_server_process(directory)
        pid = server.pid
    elif placement == "in-process":
        server = start_embedded_server(directory)
        pid = None
    else:
        raise ValueError(f"unknown placement {placement!r}: one of {', '.join(PLACEMENTS)}")
    uri = split_api_key(server.uri)[0]
    return Server(placement, uri, server.api_key, pid, directory / "error.log", server)
