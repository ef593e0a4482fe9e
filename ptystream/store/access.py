"""Reaching a Tiled server: the API key from a file or the environment, never shown.

Every command that talks to Tiled (``serve``, ``watch``, ``flush``, ``dashboard``) connects
through :func:`connect`, so a wrong key, a missing key or an absent server gives the same clear
message everywhere, and :func:`hide_in_logs` keeps the key out of every log record (httpx logs
request URLs at INFO level, and a URI may carry ``?api_key=``).

A server that is down is said so within seconds: the tiled client retries a refused connection
for 25-45 s on every request, so the clients made here give up on it at once
(:class:`TiledUnreachable`, which tiled does not retry) and, for a few seconds after, fail
without trying again; the callers (the publisher thread's retries, the spool) decide when to try
again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "CONNECT_TIMEOUT_S",
    "AccessError",
    "TiledUnreachable",
    "connect",
    "connect_from",
    "hide_in_logs",
    "read_api_key",
    "split_api_key",
    "write_key_file",
]

#: Environment variable the tiled client itself reads.
API_KEY_ENV = "TILED_API_KEY"


#: Seconds a client waits for Tiled to accept a connection before it says the server is down.
CONNECT_TIMEOUT_S = 3.0
#: After a connection Tiled did not accept, requests fail at once for this long (s) rather than
#: each paying the connect timeout again.
DOWN_HOLD_S = 3.0


class AccessError(RuntimeError):
    """A set-up problem the operator must fix (the message says which, never the key)."""


class TiledUnreachable(ConnectionError):
    """Tiled did not accept a connection (refused, or not within ``CONNECT_TIMEOUT_S``).

    An OSError, not an httpx error, so the tiled client raises it at once instead of retrying
    it for up to 45 s.
    """


class _FailFast:
    """A tiled client's transport, wrapped: a connection the server refuses (or does not accept
    in time) raises :class:`TiledUnreachable`, and for ``hold_s`` after that every request does,
    at once. Other errors (a 5xx answer, a connection lost mid-request) are left to tiled's
    own retries: the server is up."""

    def __init__(self, inner, where: str, hold_s: float = DOWN_HOLD_S):
        self._inner = inner
        self._where = where
        self._hold_s = hold_s
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._why = ""

    @property
    def cache(self):  # tiled's Context reads and sets its transport's cache
        return self._inner.cache

    @cache.setter
    def cache(self, cache) -> None:
        self._inner.cache = cache

    def handle_request(self, request):
        import httpx

        with self._lock:
            if time.monotonic() < self._down_until:
                raise TiledUnreachable(f"cannot reach Tiled at {self._where}: {self._why}")
        try:
            return self._inner.handle_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            why = str(exc) or type(exc).__name__
            with self._lock:
                self._why = why
                self._down_until = time.monotonic() + self._hold_s
            raise TiledUnreachable(f"cannot reach Tiled at {self._where}: {why}") from None

    def close(self) -> None:
        self._inner.close()

    def __enter__(self):
        self._inner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._inner.__exit__(*exc)


def split_api_key(uri: str) -> tuple[str, str | None]:
    """``uri`` without an ``api_key`` query parameter, and that key (or None)."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    keys = [v for k, v in query if k == "api_key"]
    rest = [(k, v) for k, v in query if k != "api_key"]
    return urlunsplit(parts._replace(query=urlencode(rest))), (keys[0] if keys else None)


def read_api_key(path: str | Path | None) -> str | None:
    """The API key from ``path`` (its first line), else from ``TILED_API_KEY``, else None.

    Raises AccessError naming the file (never its content) when it cannot be read or is empty.
    """
    if path is None:
        return os.environ.get(API_KEY_ENV) or None
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise AccessError(f"cannot read the API key file {path}: {exc.strerror}") from exc
    if not key:
        raise AccessError(f"the API key file {path} is empty")
    return key.splitlines()[0].strip()


def write_key_file(path: str | Path, key: str) -> Path:
    """Write ``key`` to ``path`` with mode 0600 (also when the file existed with a wider mode),
    refusing to follow a symbolic link."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return path


class _Redact(logging.Filter):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "***"), None
        return True


def hide_in_logs(secret: str | None) -> None:
    """Replace ``secret`` by ``***`` in every record that reaches the root logger's handlers."""
    if not secret:
        return
    for handler in logging.getLogger().handlers or [logging.lastResort]:
        if handler is None:
            continue
        if not any(isinstance(f, _Redact) and f.secret == secret for f in handler.filters):
            handler.addFilter(_Redact(secret))


def connect(uri: str, api_key: str | None = None):
    """A tiled client for ``uri``, checked with one authorised request.

    A key in the URI's query is taken out of it (and used unless ``api_key`` is given), so
    messages can show the URI. Raises AccessError naming the cause: server absent, key
    refused, key missing.

    The client gives up on a server that is down within seconds (``CONNECT_TIMEOUT_S``)
    rather than after tiled's 25-45 s of retries, on every request it makes later too: such a
    request raises :class:`TiledUnreachable` (an OSError).
    """
    import httpx
    from tiled.client import from_uri
    from tiled.client.context import CannotPrompt

    shown, key_in_uri = split_api_key(uri)
    api_key = api_key or key_in_uri
    hide_in_logs(api_key)
    timeout = httpx.Timeout(30.0, connect=CONNECT_TIMEOUT_S, pool=5.0)  # tiled's, but connect
    try:
        _probe(shown, timeout)  # tiled's own first request retries a refusal for 25-45 s
        client = from_uri(shown, api_key=api_key, timeout=timeout)
        http = client.context.http_client
        # tiled wraps the transport of its ASGI test client the same way
        http._transport = _FailFast(http._transport, shown)
        client.keys()[:1]  # an authorised request: a wrong key fails here, not mid-run
        return client
    except httpx.HTTPStatusError as exc:
        code = exc.response.status_code
        if code in (401, 403):
            raise AccessError(
                f"Tiled at {shown} refused the API key (HTTP {code}): check --api-key-file "
                f"or {API_KEY_ENV}"
            ) from None
        raise AccessError(f"Tiled at {shown} answered HTTP {code}") from None
    except (httpx.TransportError, OSError) as exc:
        reason = str(exc).replace(api_key, "***") if api_key else str(exc)
        if reason.startswith("cannot reach Tiled"):
            raise AccessError(f"{reason} (is the server running?)") from None
        raise AccessError(
            f"cannot reach Tiled at {shown}: {reason} (is the server running?)"
        ) from None
    except (RuntimeError, CannotPrompt) as exc:
        # tiled: "This server requires API key authentication." (single-user server), or,
        # from a server with login providers that refused the key, an attempt to prompt for
        # a password that cannot be made (CannotPrompt).
        if not isinstance(exc, CannotPrompt) and "API key" not in str(exc):
            raise
        if api_key:
            raise AccessError(
                f"Tiled at {shown} refused the API key (HTTP 401): check --api-key-file "
                f"or {API_KEY_ENV}"
            ) from None
        raise AccessError(
            f"Tiled at {shown} requires an API key: give --api-key-file or set {API_KEY_ENV}"
        ) from None


def _probe(uri: str, timeout) -> None:
    """One request to ``uri`` without retries: TiledUnreachable if nothing answers."""
    import httpx

    try:
        httpx.get(uri, timeout=timeout, follow_redirects=False)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise TiledUnreachable(
            f"cannot reach Tiled at {uri}: {str(exc) or type(exc).__name__}"
        ) from None


def connect_from(uri: str, api_key_file: str | Path | None):
    """:func:`connect` as the commands take a server: ``uri`` (an ``?api_key=`` in it is
    used when ``api_key_file`` is None and ``TILED_API_KEY`` is unset) and the key file."""
    bare, key_in_uri = split_api_key(uri)
    return connect(bare, read_api_key(api_key_file) or key_in_uri)
