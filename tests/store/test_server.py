"""The Tiled server in its own process: start, serve, push, stop, and die with its parent."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from ptystream.store.access import connect, split_api_key
from ptystream.store.server import ServerStartError, start_server_process


def gone(pid: int) -> bool:
    """True when process ``pid`` has exited (absent, or a zombie not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.1)
    return gone(pid)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiled")
    server = start_server_process(directory)
    yield server
    server.close()


def test_serves_writes_and_pushes_to_websocket_subscribers(server):
    uri, key = split_api_key(server.uri)
    assert uri == f"http://127.0.0.1:{server.port}/api/v1" and key == server.api_key
    writer = connect(uri, server.api_key)  # the key in a header
    node = writer.write_array(np.zeros((8, 8), np.float32), key="image")
    reader = connect(uri, server.api_key)
    received, arrived = [], threading.Event()

    def on_data(update):  # kept referenced: tiled's registry holds weak references
        received.append(update.data())
        arrived.set()

    sub = reader["image"].subscribe()
    sub.new_data.add_callback(on_data)
    sub.start_in_thread(max_size=8_000_000)
    try:
        new = np.arange(64, dtype=np.float32).reshape(8, 8)
        node.write(new)
        assert arrived.wait(20), "no websocket update (no streaming cache?)"
    finally:
        sub.disconnect()
    np.testing.assert_array_equal(received[-1], new)
    np.testing.assert_array_equal(reader["image"].read(), new)


def test_the_key_is_in_neither_the_command_line_nor_the_environment_nor_a_log(server):
    connect(split_api_key(server.uri)[0], server.api_key).keys()
    key = server.api_key.encode()
    for part in ("cmdline", "environ"):
        with open(f"/proc/{server.pid}/{part}", "rb") as f:
            assert key not in f.read(), part
    logs = list(server.directory.glob("*.log"))
    assert {p.name for p in logs} >= {"access.log", "error.log", "server-process.log"}
    for path in logs:
        assert key not in path.read_bytes(), path.name


def test_close_stops_the_process(tmp_path):
    server = start_server_process(tmp_path, api_key="fixedKey123")
    assert server.running() and server.api_key == "fixedKey123"
    server.close()
    assert not server.running() and wait_gone(server.pid, 1)
    server.close()  # again: nothing to do
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_the_child_stops_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from ptystream.store.server import start_server_process
                server = start_server_process({str(tmp_path)!r})
                print(server.pid, flush=True)
                time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the parent printed {line!r}"
        child = int(line)
        assert not gone(child)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    assert wait_gone(child, 30), "the server process outlived its parent"


def test_a_port_in_use_is_named(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ServerStartError, match=f"port {port} on 127.0.0.1 is not available"):
            start_server_process(tmp_path, port=port)
        assert time.monotonic() - t0 < 15  # not uvicorn's 20 s start-up time-out


def test_a_crashing_child_is_reported_with_its_stderr(tmp_path):
    (tmp_path / "data").write_text("a file where the server wants its data directory")
    with pytest.raises(ServerStartError, match="exited with status 1") as info:
        start_server_process(tmp_path)
    assert "FileExistsError" in str(info.value) and "server-process.log" in str(info.value)


def test_not_ready_in_time_is_reported_and_the_child_killed(tmp_path):
    with pytest.raises(ServerStartError, match="was not ready within 0.2 s"):
        start_server_process(tmp_path, timeout_s=0.2)
    assert not [line for line in os.popen("ps -eo args") if str(tmp_path) in line]


@pytest.mark.parametrize("key", ["has-dash", "spaced key", "ключ"])
def test_keys_must_be_alphanumeric(tmp_path, key):
    with pytest.raises(ValueError, match="letters and digits"):
        start_server_process(tmp_path, api_key=key)
