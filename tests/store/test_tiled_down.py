"""A Tiled server that is down costs seconds, not tiled's 25-45 s of retries per request: at
connection (nothing listening), and mid-run (a real server process stopped under a client)."""

import time

import pytest

from ptystream.store.access import AccessError, TiledUnreachable, connect, split_api_key
from ptystream.store.server import start_server_process

#: "A few seconds", generously: the tiled client alone would take 25-45 s.
FEW_S = 10.0


def test_nothing_listening_is_said_within_seconds(free_port):
    uri = f"http://127.0.0.1:{free_port()}/api/v1"
    t0 = time.monotonic()
    with pytest.raises(AccessError) as error:
        connect(uri, "key0123")
    assert time.monotonic() - t0 < FEW_S
    message = str(error.value)
    assert message.startswith(f"cannot reach Tiled at {uri}: ")
    assert "refused" in message.lower() and "key0123" not in message


def test_a_server_stopped_mid_run_fails_each_request_within_seconds(tmp_path):
    server = start_server_process(tmp_path / "tiled")
    try:
        uri, key = split_api_key(server.uri)
        client = connect(uri, key)
        client.create_container("before")
    finally:
        server.close()
    for attempt in range(3):  # every attempt, not only the first, is quick
        t0 = time.monotonic()
        with pytest.raises(TiledUnreachable, match="cannot reach Tiled at"):
            client.create_container(f"after-{attempt}")
        assert time.monotonic() - t0 < FEW_S
        time.sleep(0.5 * attempt)


def test_a_server_back_up_is_used_again(tmp_path, free_port):
    """The client gives up quickly while the server is down, but it is not stuck: once the
    server answers again (same directory, port and key), the next request goes through."""
    port = free_port()
    server = start_server_process(tmp_path / "tiled", port=port)
    uri, key = split_api_key(server.uri)
    try:
        client = connect(uri, key)
    finally:
        server.close()
    with pytest.raises(TiledUnreachable):
        client.create_container("while-down")
    server = start_server_process(tmp_path / "tiled", port=port, api_key=key)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_container("back-up")
                break
            except TiledUnreachable:  # still within the hold after the last refusal
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert "back-up" in client
    finally:
        server.close()
