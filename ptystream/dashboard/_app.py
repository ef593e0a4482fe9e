"""The dashboard's ASGI app: static page plus a read-only proxy to Tiled that adds the API key.

The browser talks only to this app (one origin, no CORS on the facility's Tiled server) and never
sees the key: it is added here, as an ``Authorization: Apikey`` header, to every upstream request.
Only GET (and HEAD) on the routes that read data are forwarded, so even a key that may write
cannot be used to write from the page. Whole-subtree exports (``node/full``, ``container/full``)
are forwarded only when asked for, and requests under a name the dashboard is not served by are
refused (:mod:`ptystream.dashboard._hosts`, against DNS rebinding). Tiled's address does not
reach the browser: links in Tiled's JSON (and its websocket events) are rewritten to point at
the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import websockets
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from ptystream.dashboard._hosts import HostAllowlist, HostGuard
from ptystream.store.access import hide_in_logs, split_api_key

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

#: First path segment of the Tiled routes the page may read through the proxy (plus ``/api/v1/``
#: itself, the server's description). Everything else (auth, register, asset, ...) gets 404.
READ_ROUTES = frozenset({"metadata", "search", "distinct", "array", "table", "node", "container"})
#: Routes that export a whole subtree in one response (``node/full``, ``container/full``):
#: forwarded only with ``forward_exports`` (one request could pull a beamline's data).
EXPORT_ROUTES = frozenset({"node", "container"})
#: Routes whose JSON documents carry links (Tiled's own address): asked for as JSON, in an
#: encoding httpx decodes, and rewritten before they reach the browser.
DOCUMENT_ROUTES = frozenset({"", "metadata", "search", "distinct"})
#: Content encodings of a JSON response this proxy decodes to rewrite it (others, only from
#: data routes, pass as they are: data and error details carry no links).
_DECODED = frozenset({"", "identity", "gzip", "deflate"})

#: Request headers passed on to Tiled; cookies and the browser's own Authorization are not.
_REQUEST_HEADERS = ("accept", "accept-encoding", "if-none-match", "if-modified-since")
#: Response headers passed back to the browser (no set-cookie, no server timings).
_RESPONSE_HEADERS = (
    "content-type",
    "content-encoding",
    "content-length",
    "etag",
    "last-modified",
    "cache-control",
    "expires",
)

#: Websocket close codes the page understands: 4000 + the HTTP status Tiled refused the
#: handshake with (4404: no such node yet; 4500: the server has no streaming cache), and:
WS_UNREACHABLE = 4502
#: Close code of a websocket refused here: another site's page, or a path with "..".
WS_FORBIDDEN = 4403
#: Largest upstream websocket message relayed (container events are small; array events carry
#: the whole array as JSON).
WS_MAX_SIZE = 64 * 2**20

_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]


class _SecurityHeaders:
    """Adds a strict content security policy (nothing but this origin) to every response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + _SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Static(StaticFiles):
    """The page's files, revalidated on each load (an updated dashboard shows at once)."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = "no-cache"
        return response


def _forwarded_query(query: str) -> str:
    """The browser's query without any ``api_key`` (the proxy's key is the one used)."""
    return urlencode(
        [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "api_key"]
    )


def _readable(path: str) -> bool:
    segments = path.split("/")
    return (path == "" or segments[0] in READ_ROUTES) and ".." not in segments


class _Proxy:
    """Forwards reads to one Tiled server; owns the upstream HTTP client."""

    def __init__(self, tiled_uri: str, api_key: str | None, *, forward_exports: bool = False):
        self.root = tiled_uri.rstrip("/")
        parts = urlsplit(self.root)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        self.ws_root = urlunsplit(parts._replace(scheme=scheme))
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.ws_origin = f"{scheme}://{parts.netloc}"
        self.forward_exports = forward_exports
        self.api_key = api_key
        self.headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
        self.client: httpx.AsyncClient | None = None

    def _hide(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        # trust_env=False: a proxy set in the environment must not see the key.
        async with httpx.AsyncClient(
            headers=self.headers,
            timeout=httpx.Timeout(30.0, connect=5.0),
            trust_env=False,
        ) as client:
            self.client = client
            yield
        self.client = None

    async def http(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return JSONResponse(
                {"error": f"{request.method} refused: this dashboard forwards only reads (GET)"},
                status_code=405,
                headers={"Allow": "GET, HEAD"},
            )
        path = request.path_params.get("path", "")
        if not _readable(path):
            return JSONResponse({"error": f"/api/v1/{path} is not forwarded"}, status_code=404)
        route = path.split("/")[0]
        if route in EXPORT_ROUTES and not self.forward_exports:
            return JSONResponse(
                {
                    "error": f"/api/v1/{path} is not forwarded: exports of whole containers are "
                    "off (start the dashboard with --forward-exports to allow them)"
                },
                status_code=403,
            )
        assert self.client is not None, "the app's lifespan did not run"
        query = _forwarded_query(request.url.query)
        url = f"{self.root}/{quote(path)}" + (f"?{query}" if query else "")
        headers = {k: v for k in _REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
        if route in DOCUMENT_ROUTES:  # JSON (not msgpack), in an encoding decoded here
            headers.update({"accept": "application/json", "accept-encoding": "gzip"})
        upstream = self.client.build_request(request.method, url, headers=headers)
        try:
            response = await self.client.send(upstream, stream=True)
        except httpx.TimeoutException:
            return self._bad_gateway("Tiled did not answer in time")
        except (httpx.TransportError, OSError) as exc:
            return self._bad_gateway(f"cannot reach Tiled: {exc or type(exc).__name__}")
        forwarded = {k: v for k in _RESPONSE_HEADERS if (v := response.headers.get(k)) is not None}
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if (kind == "application/json" or kind.endswith("+json")) and encoding in _DECODED:
            try:
                body = await response.aread()  # decoded by httpx
            except (httpx.TransportError, OSError) as exc:
                return self._bad_gateway(f"Tiled's answer broke off: {exc or type(exc).__name__}")
            finally:
                await response.aclose()
            for name in ("content-encoding", "content-length", "etag"):
                forwarded.pop(name, None)  # the body is now another (uncompressed) one
            own = str(request.base_url).rstrip("/")
            return Response(self._rewrite(body.decode(), own), response.status_code, forwarded)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers=forwarded,
            background=BackgroundTask(response.aclose),
        )

    def _rewrite(self, text: str, own_origin: str) -> str:
        """``text`` with Tiled's address replaced by the dashboard's (``own_origin``, e.g.
        ``http://127.0.0.1:8765``): the browser follows links through the proxy and never
        learns where Tiled is."""
        ws_own = own_origin.replace("http", "ws", 1)
        text = text.replace(self.root, f"{own_origin}/api/v1")
        text = text.replace(self.ws_root, f"{ws_own}/api/v1")
        return text.replace(self.origin, own_origin).replace(self.ws_origin, ws_own)

    def _bad_gateway(self, reason: str) -> JSONResponse:
        # Tiled's address goes to the log, not to the browser
        logger.warning("dashboard proxy: %s (Tiled at %s)", reason, self._hide(self.root))
        return JSONResponse({"error": self._hide(reason)}, status_code=502)

    async def stream(self, websocket: WebSocket) -> None:
        """Relay Tiled's ``/stream/single/{path}`` events to the browser, one way."""
        path = websocket.path_params["path"]
        origin = websocket.headers.get("origin")
        if ".." in path.split("/") or (
            origin is not None and urlsplit(origin).netloc != websocket.headers.get("host")
        ):  # a page of another site must not read through our key (cross-site websocket)
            await websocket.close(code=WS_FORBIDDEN)
            return
        query = _forwarded_query(websocket.url.query)
        await websocket.accept()
        url = f"{self.ws_root}/stream/single/{quote(path)}" + (f"?{query}" if query else "")
        try:
            upstream = await websockets.connect(
                url,
                additional_headers=self.headers,
                max_size=WS_MAX_SIZE,
                open_timeout=10,
                proxy=None,
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            reason = {404: "no such node", 500: "Tiled refused (no streaming cache?)"}.get(
                status, f"Tiled answered HTTP {status}"
            )
            await websocket.close(
                code=4000 + status if 400 <= status < 600 else 4500, reason=reason
            )
            return
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            logger.warning("dashboard proxy: cannot open Tiled's stream for %s: %s", path, exc)
            await websocket.close(code=WS_UNREACHABLE, reason="cannot reach Tiled")
            return
        own = str(websocket.base_url).replace("ws", "http", 1).rstrip("/")
        async with upstream:
            await self._relay(websocket, upstream, lambda text: self._rewrite(text, own))

    @staticmethod
    async def _relay(websocket: WebSocket, upstream, rewrite) -> None:
        async def downstream():
            async for message in upstream:
                if isinstance(message, bytes):
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_text(rewrite(message))

        async def until_browser_leaves():
            with contextlib.suppress(WebSocketDisconnect):
                while True:  # the page sends nothing; a message is read only to see it close
                    await websocket.receive_text()

        tasks = [asyncio.create_task(downstream()), asyncio.create_task(until_browser_leaves())]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if tasks[0] in done:  # Tiled ended the stream (or dropped): tell the page to reconnect
            failed = tasks[0].exception() is not None
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await websocket.close(
                    code=WS_UNREACHABLE if failed else 1000,
                    reason="Tiled closed the stream",
                )


def create_app(
    tiled_uri: str,
    api_key: str | None,
    *,
    allowed_hosts: HostAllowlist | Iterable[str] | None = None,
    forward_exports: bool = False,
):
    """The dashboard as a Starlette app (serve it with any ASGI server).

    Parameters
    ----------
    tiled_uri : the Tiled server's API root, e.g. ``http://127.0.0.1:8000/api/v1``. An
        ``api_key`` query parameter is taken out of it (and used when ``api_key`` is None).
    api_key : the key added to every request to Tiled; None for a server open to anonymous
        reads.
    allowed_hosts : the ``Host`` names answered (others get 403, HTTP and websocket): a
        :class:`~ptystream.dashboard._hosts.HostAllowlist`, or names; None: the loopback names
        (``127.0.0.1``, ``localhost``, ``::1``).
    forward_exports : forward Tiled's whole-subtree exports (``node/full``,
        ``container/full``); off, they get 403.

    Returns
    -------
    starlette.applications.Starlette
        ``/`` serves the page; ``GET /api/v1/...`` and the websocket
        ``/api/v1/stream/single/...`` are forwarded to Tiled with the key (exports of whole
        containers only with ``forward_exports``); every other method is answered 405, and a
        request under a name not in ``allowed_hosts`` 403.
    """
    tiled_uri, key_in_uri = split_api_key(tiled_uri)
    api_key = api_key or key_in_uri
    hide_in_logs(api_key)
    proxy = _Proxy(tiled_uri, api_key, forward_exports=forward_exports)
    if not isinstance(allowed_hosts, HostAllowlist):
        allowed_hosts = HostAllowlist.for_bind("127.0.0.1", allowed_hosts or ())
    any_method = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(
        routes=[
            WebSocketRoute("/api/v1/stream/single/{path:path}", proxy.stream),
            Route("/api/v1/{path:path}", proxy.http, methods=any_method),
            Route("/api/v1", proxy.http, methods=any_method),
            Mount("/", _Static(directory=STATIC_DIR, html=True)),
        ],
        lifespan=proxy.lifespan,
    )
    app.add_middleware(HostGuard, allowlist=allowed_hosts)  # before any route or file
    app.add_middleware(_SecurityHeaders)  # the last added is the outermost: on every answer
    return app
