"""Which ``Host`` headers the dashboard answers: a guard against DNS rebinding.

A page on another site can point its own domain name at the dashboard's address (DNS
rebinding); the browser then treats the dashboard as that site and lets the page read it, and
with it everything the dashboard's Tiled key can read. Such requests carry the other site's name
in their ``Host`` header, so the dashboard answers only the names it is served under: the
address it is bound to (on loopback: ``127.0.0.1``, ``localhost`` and ``::1``), and the names
given to it (``--allow-host``). Every other request, HTTP or websocket, gets 403.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HostAllowlist", "HostGuard"]

#: The names of the loopback interface a browser on this machine may use.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _normal(name: str) -> str:
    """``name`` lower-cased, without brackets or a trailing dot (``[::1]`` -> ``::1``)."""
    name = name.strip().lower().rstrip(".")
    return name[1:-1] if name.startswith("[") and name.endswith("]") else name


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8765`` -> ``::1``)."""
    header = header.strip()
    if header.startswith("["):  # an IPv6 literal: the port, if any, follows the bracket
        return _normal(header[: header.find("]") + 1] if "]" in header else header)
    name, _, _port = header.rpartition(":") if header.count(":") == 1 else (header, "", "")
    return _normal(name)


@dataclass(frozen=True)
class HostAllowlist:
    """The names the dashboard answers to.

    ``names``: host names and addresses, as normalised by :func:`host_name`; ``any_address``:
    also any IP address (for a dashboard bound to all interfaces: a browser that names an
    address reaches the dashboard as that address, which no other site can claim).
    """

    names: frozenset[str]
    any_address: bool = False

    @classmethod
    def for_bind(cls, host: str, extra: Iterable[str] = ()) -> HostAllowlist:
        """The allowlist of a dashboard bound to ``host``, plus the names in ``extra``.

        Bound to a loopback address (or ``localhost``), the loopback names are allowed; bound
        to all interfaces (``0.0.0.0``, ``::``), any IP address and the loopback names; bound to
        one address, that address.
        """
        bound = _normal(host)
        names = {bound, *(host_name(name) for name in extra)}
        address = _ip(bound)
        wildcard = address is not None and address.is_unspecified
        if bound == "localhost" or wildcard or (address is not None and address.is_loopback):
            names.update(LOOPBACK_NAMES)
        names.discard("")
        return cls(frozenset(names), any_address=wildcard)

    def allows(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header is answered (none: refused)."""
        if not header:
            return False
        name = host_name(header)
        return name in self.names or (self.any_address and _ip(name) is not None)


class HostGuard:
    """ASGI middleware: 403 for an HTTP request, and a refused handshake (HTTP 403) for a
    websocket, whose ``Host`` header the allowlist does not hold."""

    def __init__(self, app: ASGIApp, allowlist: HostAllowlist):
        self.app = app
        self.allowlist = allowlist

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.allowlist.allows(host):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
        else:
            message = (
                f"Host {host!r} is not served by this dashboard; to serve it under that name, "
                "start it with --allow-host NAME"
            )
            await PlainTextResponse(message, status_code=403)(scope, receive, send)
