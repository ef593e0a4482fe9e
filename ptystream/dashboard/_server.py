"""Running the dashboard: uvicorn on a background daemon thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence

import uvicorn

from ptystream.dashboard._app import create_app
from ptystream.dashboard._hosts import HostAllowlist

__all__ = ["Dashboard", "start_dashboard"]

#: Seconds ``start_dashboard`` waits for uvicorn to accept connections.
STARTUP_TIMEOUT_S = 20.0


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the caller's thread owns the signals
        pass


class Dashboard:
    """A running dashboard server; ``url`` is the page's address, ``close()`` stops it."""

    def __init__(self, server: _ThreadServer, thread: threading.Thread, url: str):
        self._server = server
        self._thread = thread
        self.url = url

    def close(self) -> None:
        """Stop uvicorn (open pages lose their connection) and join its thread."""
        self._server.should_exit = True
        self._thread.join()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Dashboard({self.url!r})"


def start_dashboard(
    tiled_uri: str,
    *,
    api_key: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    allowed_hosts: Sequence[str] = (),
    forward_exports: bool = False,
) -> Dashboard:
    """Serve the control-room page for the Tiled server at ``tiled_uri``.

    Parameters
    ----------
    tiled_uri : the Tiled API root, e.g. ``http://127.0.0.1:8000/api/v1`` (a ``?api_key=`` in
        it is taken out and used when ``api_key`` is None).
    api_key : the key the dashboard adds to its requests to Tiled; the browser never sees it.
    host, port : where the page is served; port 0 picks a free port.
    allowed_hosts : names the page may also be opened under (``Host`` header), besides the
        address it is bound to (on loopback: ``127.0.0.1``, ``localhost``, ``[::1]``; on all
        interfaces, ``0.0.0.0``: any IP address). Other names get 403, so another site cannot
        read the dashboard by pointing its own name at this address (DNS rebinding).
    forward_exports : forward Tiled's exports of whole containers (``node/full``,
        ``container/full``); off by default (403).

    Returns
    -------
    Dashboard
        Already accepting connections; uvicorn runs on a daemon thread until ``close()``.

    Notes
    -----
    The page and the proxied API share one origin, so the facility's Tiled server needs no CORS
    set-up. Serve on 127.0.0.1 (the default) unless the control-room screens are on another
    machine: anyone who can reach the port can read what the key can read. Under a name (a
    control-room alias, the machine's host name), pass it in ``allowed_hosts``.

    Example
    -------
    >>> dashboard = start_dashboard("http://127.0.0.1:8000/api/v1", api_key=key)  # doctest: +SKIP
    >>> print(dashboard.url)  # doctest: +SKIP
    http://127.0.0.1:41231/
    """
    allowlist = HostAllowlist.for_bind(host, allowed_hosts)
    app = create_app(tiled_uri, api_key, allowed_hosts=allowlist, forward_exports=forward_exports)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        # Leave logging alone: uvicorn's default dictConfig would re-route the loggers of any
        # other uvicorn in the process (an embedded Tiled server logs to its own files).
        log_config=None,
        log_level=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
        ws_max_size=2**20,  # the page sends nothing over its websockets
    )
    server = _ThreadServer(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="ptystream-dashboard", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            sock.close()
            raise RuntimeError(f"the dashboard did not start on {host}:{bound_port}")
        time.sleep(0.02)
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    return Dashboard(server, thread, f"http://{shown_host}:{bound_port}/")
