"""The dashboard against other sites: DNS rebinding, whole-container exports, Tiled's address.

The real dashboard (uvicorn on 127.0.0.1) in front of a real Tiled server. Requests are written
by hand on a socket, so the ``Host`` header is exactly the forged one a browser sends after a
rebinding: ``evil.example`` resolving to 127.0.0.1 makes the browser send ``Host: evil.example``
to the dashboard's port, which the dashboard must refuse (HTTP and the websocket handshake).
"""

from __future__ import annotations

import base64
import os
import socket
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import websockets.sync.client

from ptystream.dashboard import HostAllowlist, start_dashboard
from ptystream.store.access import split_api_key

ALIAS = "control-room.example"
FORGED = ("evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example")


@pytest.fixture(scope="module")
def data(tiled_client):
    """A container with an array in the module's Tiled server."""
    node = tiled_client.create_container("security")
    node.write_array(np.arange(12.0).reshape(3, 4), key="image")
    return node


@pytest.fixture(scope="module")
def dashboard(tiled_server, data):
    with start_dashboard(tiled_server.uri, allowed_hosts=[ALIAS]) as dashboard:
        yield dashboard


def port_of(url: str) -> int:
    return urlsplit(url).port


def raw(url: str, request: str) -> tuple[int, bytes]:
    """Send ``request`` (bytes as written) to the dashboard at ``url``; the status code and
    what followed the status line, up to the end of the headers for a websocket upgrade."""
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=20) as sock:
        sock.sendall(request.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b" 101 " in data.split(b"\r\n", 1)[0] and b"\r\n\r\n" in data:
                break  # an accepted websocket stays open: its headers are enough
    return int(data.split(b" ", 2)[1]), data


def get(url: str, path: str, host: str | None) -> tuple[int, bytes]:
    header = "" if host is None else f"Host: {host}\r\n"
    return raw(url, f"GET {path} HTTP/1.1\r\n{header}Connection: close\r\n\r\n")


def handshake(url: str, path: str, host: str) -> tuple[int, bytes]:
    key = base64.b64encode(os.urandom(16)).decode()
    return raw(
        url,
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )


# -- the Host allowlist -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/app.js", "/api/v1/", "/api/v1/search/security"])
def test_forged_host_gets_403(dashboard, path):
    port = port_of(dashboard.url)
    for forged in FORGED:
        status, answer = get(dashboard.url, path, forged.format(port=port))
        assert status == 403, (forged, answer[:300])
        assert b"not served by this dashboard" in answer
        assert b"container-schema" not in answer and b"library_version" not in answer
    assert get(dashboard.url, path, None)[0] == 403  # no Host: never answered


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LocalHost", ALIAS]
)
def test_the_bound_address_and_the_allowed_names_are_served(dashboard, host):
    status, answer = get(dashboard.url, "/api/v1/", host.format(port=port_of(dashboard.url)))
    assert status == 200 and b"library_version" in answer


def test_forged_host_websocket_handshake_refused(dashboard):
    port, path = port_of(dashboard.url), "/api/v1/stream/single/security?envelope_format=json"
    for forged in FORGED:
        status, answer = handshake(dashboard.url, path, forged.format(port=port))
        assert status == 403, (forged, answer[:300])
    status, answer = handshake(dashboard.url, path, f"127.0.0.1:{port}")
    assert status == 101, answer[:300]
    status, answer = handshake(dashboard.url, path, ALIAS)
    assert status == 101, answer[:300]


def test_allowlist_of_a_bound_address():
    loopback = HostAllowlist.for_bind("127.0.0.1", ["Beamline-WS.example."])
    assert loopback.allows("localhost:8765") and loopback.allows("[::1]:8765")
    assert loopback.allows("beamline-ws.example:80") and not loopback.allows("evil.example")
    assert not loopback.allows("") and not loopback.allows(None)
    one = HostAllowlist.for_bind("192.0.2.7")  # bound to one interface: that address only
    assert one.allows("192.0.2.7:8765") and not one.allows("localhost:8765")
    assert not one.allows("192.0.2.8") and not one.allows("evil.example:8765")
    every = HostAllowlist.for_bind("0.0.0.0", ["ctrl"])  # all interfaces: any address, no name
    assert every.allows("192.0.2.8:8765") and every.allows("[2001:db8::1]:8765")
    assert every.allows("localhost") and every.allows("ctrl:1") and not every.allows("evil.example")
    assert HostAllowlist.for_bind("::1").allows("[::1]:1")


# -- exports of whole containers --------------------------------------------------------------


@pytest.mark.parametrize("route", ["node/full/security", "container/full/security"])
def test_whole_container_exports_are_not_forwarded_unless_asked(dashboard, tiled_server, route):
    as_json = {"format": "application/json"}
    refused = httpx.get(f"{dashboard.url}api/v1/{route}", params=as_json)
    assert refused.status_code == 403 and "--forward-exports" in refused.json()["error"]
    # the same read of the array itself is forwarded
    array = httpx.get(f"{dashboard.url}api/v1/array/full/security/image")
    assert array.status_code == 200 and len(array.content) == 12 * 8
    with start_dashboard(tiled_server.uri, forward_exports=True) as forwarding:
        exported = httpx.get(f"{forwarding.url}api/v1/{route}", params=as_json)
    assert exported.status_code == 200 and "image" in exported.text


# -- Tiled's address ------------------------------------------------------------------------


def test_tiled_address_not_in_links(dashboard, tiled_server):
    upstream, _ = split_api_key(tiled_server.uri)
    netloc = urlsplit(upstream).netloc
    api = dashboard.url + "api/v1/"
    answers = {}
    for path in ("", "metadata/security", "search/security", "metadata/security/image"):
        for accept in ("application/json", "application/x-msgpack"):
            response = httpx.get(api + path, headers={"accept": accept, "accept-encoding": "gzip"})
            assert response.status_code == 200, path
            assert netloc.encode() not in response.content, (path, accept)
            answers[path] = response.json()
    links = answers["metadata/security"]["data"]["links"]
    assert links["self"] == api + "metadata/security" and links["search"] == api + "search/security"
    assert answers["search/security"]["data"][0]["links"]["full"].startswith(api + "array/full/")
    assert answers["search/security"]["links"]["self"].startswith(api + "search/security")
    followed = httpx.get(answers["metadata/security/image"]["data"]["links"]["full"])
    assert followed.status_code == 200 and len(followed.content) == 12 * 8  # through the proxy
    # under another allowed name, the links name that one
    renamed = httpx.get(api + "metadata/security", headers={"host": ALIAS}).json()
    assert renamed["data"]["links"]["self"].startswith(f"http://{ALIAS}/api/v1/")


def test_tiled_address_not_in_stream_events(dashboard, tiled_server, data):
    """Events carry metadata as written: one naming Tiled's address names the dashboard's."""
    upstream = split_api_key(tiled_server.uri)[0]
    stream = dashboard.url.replace("http", "ws") + "api/v1/stream/single/security"
    with websockets.sync.client.connect(stream + "?envelope_format=json") as ws:
        assert '"container-schema"' in ws.recv(timeout=10)
        data.write_array(np.ones(3), key="more", metadata={"source": f"{upstream}/metadata/x"})
        event = ws.recv(timeout=10)
    assert '"container-child-created"' in event and urlsplit(upstream).netloc not in event
    assert f'"source":"{dashboard.url}api/v1/metadata/x"' in event


def test_an_absent_tiled_is_not_named(free_port):
    uri = f"http://127.0.0.1:{free_port()}/api/v1"
    with start_dashboard(uri) as dashboard:
        response = httpx.get(dashboard.url + "api/v1/search/processed")
    assert response.status_code == 502
    message = response.json()["error"]
    assert "cannot reach Tiled" in message and urlsplit(uri).netloc not in message
