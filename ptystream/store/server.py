"""The embedded Tiled server of the default set-up.

``ptystream demo`` and ``ptystream serve`` (without ``--tiled``) run an embedded Tiled server
in a child process (:func:`start_server_process`): its request handling is Python, and in the
reconstruction's own process it competed with the engine's threads for the GIL and slowed the
reconstruction by ~12 % at the default cadence (benchmarks/README.md, "Live publishing").
:func:`start_embedded_server` runs it in this process, for tests.

The server is Tiled's ``SimpleTiledServer`` set-up (SQLite catalog, zarr arrays, an in-memory
streaming cache, one API key, 127.0.0.1 only) with its appendable tables made safe to append
to from several writers at once (TiledWriter's event tables and the live loss table, say):

- tiled 0.2.20 shares one DuckDB connection between all requests; appends from two clients at
  once made it fail ("No active transaction, cannot rollback") and then abort the whole server
  process (a C++ ``std::system_error``). The tables are kept in SQLite instead
  (``tables.sqlite``), a connection per request;
- SQLite without a busy timeout answers a second writer "database is locked" (HTTP 500, and an
  append is not retried), so the requests that may touch the tables' database take turns
  (:class:`_TablesInTurn`): table reads and writes, node creation, deletion and metadata
  changes. Array writes, the bulk of live publishing, do not wait.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote_plus

__all__ = [
    "EmbeddedTiledServer",
    "ServerProcess",
    "ServerStartError",
    "start_embedded_server",
    "start_server_process",
    "stop_child",
]

#: The child's stderr (and anything it prints after start-up), in the server's directory.
PROCESS_LOG = "server-process.log"

#: First word of the line the child prints once the server answers.
_READY = "ptystream-tiled-ready"


#: The SQLite database of the appendable tables, in the server's directory.
TABLES_DB = "tables.sqlite"
#: Where ``SimpleTiledServer`` kept them (DuckDB): still read when an older directory has it.
_DUCKDB_TABLES = "storage.duckdb"
#: Seconds to wait for the server to answer once it listens.
_READY_TIMEOUT_S = 60.0


class EmbeddedTiledServer:
    """A Tiled server on 127.0.0.1, on a thread of this process, with its data in
    ``directory`` (see :func:`start_embedded_server`).

    Attributes as tiled's ``SimpleTiledServer``: ``uri`` (``http://127.0.0.1:PORT/api/v1
    ?api_key=KEY``), ``web_ui_link``, ``api_key``, ``port``, ``directory``, ``catalog``.
    ``close()`` stops it; it is also a context manager.
    """

    def __init__(self, directory: Path, *, port: int, api_key: str):
        import copy

        import uvicorn
        from tiled.catalog import from_uri as catalog_from_uri
        from tiled.config import Authentication, StreamingCacheConfig
        from tiled.server.app import build_app
        from tiled.server.logging_config import LOGGING_CONFIG
        from tiled.server.simple import ThreadedServer

        directory = Path(directory).resolve()
        (directory / "data").mkdir(parents=True, exist_ok=True)
        self._tables_uri = f"sqlite:///{directory / TABLES_DB}"
        readable = []
        if (directory / _DUCKDB_TABLES).exists():  # tables written by an earlier version
            readable.append(f"duckdb:///{directory / _DUCKDB_TABLES}")
        # its logs to files in the directory, as SimpleTiledServer's
        log_config = copy.deepcopy(LOGGING_CONFIG)
        for handler, name in (("access", "access.log"), ("default", "error.log")):
            log_config["handlers"][handler]["class"] = "logging.FileHandler"
            del log_config["handlers"][handler]["stream"]
            log_config["handlers"][handler]["filename"] = str(directory / name)
        self.catalog = catalog_from_uri(
            directory / "catalog.db",
            writable_storage=[directory / "data", self._tables_uri],
            readable_storage=readable or None,
            init_if_not_exists=True,
            cache_config=StreamingCacheConfig(uri="memory").model_dump(),
        )
        app = _TablesInTurn(
            build_app(self.catalog, authentication=Authentication(single_user_api_key=api_key))
        )
        self._server = ThreadedServer(
            uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", log_config=log_config)
        )
        self._running = self._server.run_in_thread()
        base = self._running.__enter__()
        try:
            _wait_until_healthy(base, self._server.thread, directory)
        except BaseException:
            self._running.__exit__(None, None, None)
            raise
        self.port = int(base.rsplit(":", 1)[1])
        self.directory = directory
        self.api_key = api_key
        self.uri = f"{base}/api/v1?api_key={quote_plus(api_key)}"
        self.web_ui_link = f"{base}?api_key={quote_plus(api_key)}"

    def close(self) -> None:
        """Stop serving. Idempotent."""
        if self._running is None:
            return
        running, self._running = self._running, None
        running.__exit__(None, None, None)  # the app's shutdown closes the tables' connections

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at http://127.0.0.1:{self.port}>"

    def __enter__(self) -> EmbeddedTiledServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TablesInTurn:
    """ASGI middleware: the requests that may touch the appendable tables' SQL database are
    handled one at a time (each to the end of its response); the others as they come.

    Those are any request under ``table/`` or ``container/`` (reads of tables included: a
    SQLite reader is refused while another connection writes), and every request that changes
    something (node creation, deletion, metadata) but array writes.
    """

    _READS = frozenset({"GET", "HEAD", "OPTIONS"})
    _TABLES = ("/api/v1/table/", "/api/v1/container/")
    _ARRAYS = "/api/v1/array/"

    def __init__(self, app):
        self.app = app
        self._turn = asyncio.Lock()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self._may_touch_tables(scope):
            await self.app(scope, receive, send)
            return
        async with self._turn:
            await self.app(scope, receive, send)

    @classmethod
    def _may_touch_tables(cls, scope) -> bool:
        path = scope.get("path", "")
        if path.startswith(cls._TABLES):
            return True
        return scope.get("method") not in cls._READS and not path.startswith(cls._ARRAYS)


def _wait_until_healthy(base: str, thread, directory: Path) -> None:
    """Until ``base``/healthz answers 200 (uvicorn listens before the app has started)."""
    import httpx

    deadline = time.monotonic() + _READY_TIMEOUT_S
    with httpx.Client(trust_env=False) as http:
        while True:
            if not thread.is_alive():
                raise RuntimeError(f"the Tiled server thread ended (its logs are in {directory})")
            try:
                if http.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.RequestError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Tiled did not answer within {_READY_TIMEOUT_S:g} s")
            time.sleep(0.1)


def start_embedded_server(
    directory: str | Path, *, port: int = 0, api_key: str | None = None
) -> EmbeddedTiledServer:
    """Start a Tiled server on 127.0.0.1 in this process, with its data in ``directory``.

    The directory is kept (re-opening it keeps earlier runs); without ``api_key`` a fresh random
    key is made for each start. It has an in-memory streaming cache, so websocket subscribers
    get live updates, and keeps appendable tables in SQLite (``tables.sqlite``), which takes
    appends from concurrent writers. Returns the server (``.uri`` includes the key;
    ``.close()`` when done).

    Its requests are handled on a thread of this process: use :func:`start_server_process`
    next to a reconstruction.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return EmbeddedTiledServer(directory, api_key=api_key or secrets.token_hex(8), port=port)


def stop_child(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM to ``proc`` and wait for it to exit; SIGKILL if it has not within ``timeout_s``.
    Nothing if it has exited already."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ServerStartError(RuntimeError):
    """The server process did not come up; the message names the cause and ends with the tail
    of the child's log."""


class ServerProcess:
    """The embedded Tiled server running in a child process (see :func:`start_server_process`).

    Attributes as :class:`EmbeddedTiledServer`'s: ``uri`` (``http://127.0.0.1:PORT/api/v1?api_key=``),
    ``api_key``, ``port``, ``directory``; and ``pid``, ``log_path``. ``close()`` stops the
    child; it is also a context manager.
    """

    def __init__(self, proc: subprocess.Popen, port: int, api_key: str, directory: Path):
        self._proc = proc
        self.port = port
        self.api_key = api_key
        self.directory = directory
        self.log_path = directory / PROCESS_LOG
        base = f"http://127.0.0.1:{port}"
        self.uri = f"{base}/api/v1?api_key={quote_plus(api_key)}"
        self.web_ui_link = f"{base}?api_key={quote_plus(api_key)}"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def running(self) -> bool:
        return self._proc.poll() is None

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the child: SIGTERM (it closes the server: storage disposed, uvicorn shut down),
        then SIGKILL if it has not exited within ``timeout_s``. Idempotent."""
        proc = self._proc
        stop_child(proc, timeout_s)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid {self.pid} at http://127.0.0.1:{self.port}>"

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_server_process(
    directory: str | Path,
    *,
    port: int = 0,
    api_key: str | None = None,
    timeout_s: float = 120.0,
) -> ServerProcess:
    """Start the embedded Tiled server (:func:`start_embedded_server`) on 127.0.0.1 in a child
    Python process, with its data in ``directory``; return once it answers requests.

    The same server as :func:`start_embedded_server` (the directory is kept; a fresh random key
    without ``api_key``; websocket subscriptions), but its request handling no longer shares
    this process's GIL and CPU time.

    - The key reaches the child on its stdin, never on its command line or in its environment,
      and the child logs it nowhere. (Its ``access.log`` records request URLs: clients should
      send the key in a header, as :func:`ptystream.store.access.connect` does, not as
      ``?api_key=``.)
      It must be ASCII letters and digits (tiled's rule for a single-user key).
    - The child keeps reading its stdin, a pipe from this process, and stops its server and
      exits at end-of-file: when this process exits or dies, even by SIGKILL. It runs in a
      session of its own, so Ctrl-C in a terminal (or a signal to this process group) reaches
      only this process, which decides when to stop the server (after its last write).
    - Its stderr goes to ``directory/server-process.log`` (appended to).

    Raises ``ValueError`` for a key that is not alphanumeric, and :class:`ServerStartError`
    when the child exits before it is ready (port in use, unusable directory, ...), naming the
    cause with the tail of its log, or when it is not ready within ``timeout_s`` (it is killed).
    """
    if api_key is not None and not (api_key.isascii() and api_key.isalnum()):
        raise ValueError("the Tiled API key must be ASCII letters and digits only")
    api_key = api_key or secrets.token_hex(8)
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / PROCESS_LOG
    with open(log_path, "ab") as log:
        log_start = log.tell()
        args = [sys.executable, "-c", "from ptystream.store.server import _child; _child()"]
        proc = subprocess.Popen(
            [*args, str(directory), str(int(port))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,  # Ctrl-C and signals to our process group are for us
        )
    deadline = time.monotonic() + timeout_s
    try:
        proc.stdin.write(api_key.encode() + b"\n")
        proc.stdin.flush()
        ready = _ready_line(proc, deadline)
    except BrokenPipeError:  # it exited already
        ready = None
    except BaseException:
        _stop(proc)
        raise
    if ready is not None:
        return ServerProcess(proc, int(json.loads(ready)["port"]), api_key, directory)
    try:  # its output ended (it is exiting), or the time is up
        code = proc.wait(max(1.0, min(10.0, deadline - time.monotonic())))
        cause = f"exited with status {code} before it was ready"
    except subprocess.TimeoutExpired:
        cause = f"was not ready within {timeout_s:g} s (killed)"
    _stop(proc)
    raise ServerStartError(
        f"the Tiled server process for {directory} {cause}; "
        f"the end of {log_path}:\n{_tail(log_path, log_start)}"
    )


def _ready_line(proc: subprocess.Popen, deadline: float) -> str | None:
    """What follows the ready word on the child's stdout, or None if its output ends or the
    ``deadline`` (``time.monotonic``) passes first."""
    fd = proc.stdout.fileno()
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            *lines, data = data.split(b"\n")
            for line in lines:
                word, _, rest = line.decode(errors="replace").partition(" ")
                if word == _READY:
                    return rest
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if sel.select(remaining):
                chunk = os.read(fd, 4096)  # readable: does not block
                if not chunk:  # end of file: the child is exiting
                    return None
                data += chunk


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None and not pipe.closed:
            pipe.close()


def _tail(path: Path, start: int, limit: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read it: {exc.strerror})"
    text = text.strip() or "(empty)"
    return text if len(text) <= limit else "..." + text[-limit:]


def _child() -> None:
    """The child of :func:`start_server_process`: ``argv`` = directory, port; the API key is
    the first line of stdin. Prints one ready line, then serves until stdin ends or SIGTERM."""

    def on_term(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one shutdown at a time
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    directory, port = Path(sys.argv[1]), int(sys.argv[2])
    api_key = sys.stdin.buffer.readline().decode().strip()
    if not api_key:  # the parent died before it sent the key
        raise SystemExit(4)
    if port:
        _check_port_free(port)
    server = start_embedded_server(directory, port=port, api_key=api_key)
    try:
        ready = json.dumps({"port": server.port, "pid": os.getpid()})
        os.write(1, f"{_READY} {ready}\n".encode())
        os.dup2(2, 1)  # later prints go to the log: nobody reads the pipe any more
        while sys.stdin.buffer.read(4096):  # until end of file: the parent closed it or died
            pass
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    finally:
        server.close()


def _check_port_free(port: int) -> None:
    """Exit with a clear message when something listens on 127.0.0.1:``port`` (uvicorn would
    only log it to ``error.log`` and the server would time out 20 s later)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            print(f"port {port} on 127.0.0.1 is not available: {exc.strerror}", file=sys.stderr)
            raise SystemExit(3) from None
