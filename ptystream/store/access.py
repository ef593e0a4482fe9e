"""Reaching a Tiled server: the API key from a file or the environment, never shown.

Every command that talks to Tiled (``serve``, ``watch``, ``flush``, ``dashboard``) connects
through :func:`connect`, so a wrong key, a missing key or an absent server gives the same clear
message everywhere, and :func:`hide_in_logs` keeps the key out of every log record (httpx logs
request URLs at INFO level, and a URI may carry ``?api_key=``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "AccessError",
    "connect",
    "connect_from",
    "hide_in_logs",
    "read_api_key",
    "split_api_key",
    "write_key_file",
]

#: Environment variable the tiled client itself reads.
API_KEY_ENV = "TILED_API_KEY"


class AccessError(RuntimeError):
    """A set-up problem the operator must fix (the message says which, never the key)."""


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
    """
    import httpx
    from tiled.client import from_uri
    from tiled.client.context import CannotPrompt

    shown, key_in_uri = split_api_key(uri)
    api_key = api_key or key_in_uri
    hide_in_logs(api_key)
    try:
        client = from_uri(shown, api_key=api_key)
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
        raise AccessError(f"cannot reach Tiled at {shown}: {reason}") from None
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


def connect_from(uri: str, api_key_file: str | Path | None):
    """:func:`connect` as the commands take a server: ``uri`` (an ``?api_key=`` in it is
    used when ``api_key_file`` is None and ``TILED_API_KEY`` is unset) and the key file."""
    bare, key_in_uri = split_api_key(uri)
    return connect(bare, read_api_key(api_key_file) or key_in_uri)
