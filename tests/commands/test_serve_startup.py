"""`ptystream serve` checks at start-up that its key may write where serve writes: a real Tiled
server (``tiled serve config``, a SQLite catalog, a password login) with real API keys of
different scopes; a key that may only read is refused with one line before `ready`."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ptystream.commands.serve import ServeError, check_can_write
from ptystream.store.access import connect

BIN = Path(sys.executable).parent
READ_ONLY = ["read:metadata", "read:data"]
NO_DELETE = ["read:metadata", "read:data", "write:metadata", "write:data", "create:node"]


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, free_port):
    """A Tiled server with one user who logs in with a password; returns its URI and keys
    made by that user: ``full`` (the user's scopes), ``read_only`` and ``no_delete``."""
    tmp = tmp_path_factory.mktemp("keyed-tiled")
    (tmp / "data").mkdir()
    port = free_port()
    config = {
        "authentication": {
            "providers": [
                {
                    "provider": "local",
                    "authenticator": "tiled.authenticators:DictionaryAuthenticator",
                    "args": {"users_to_passwords": {"alice": "alicepassword"}},
                }
            ],
            "secret_keys": ["0123456789abcdef0123456789abcdef"],
            "allow_anonymous_access": False,
        },
        "database": {"uri": f"sqlite:///{tmp / 'auth.db'}", "init_if_not_exists": True},
        "trees": [
            {
                "path": "/",
                "tree": "catalog",
                "args": {
                    "uri": f"sqlite:///{tmp / 'catalog.db'}",
                    "init_if_not_exists": True,
                    "writable_storage": [str(tmp / "data")],
                },
            }
        ],
        "uvicorn": {"host": "127.0.0.1", "port": port},
    }
    (tmp / "config.yml").write_text(yaml.safe_dump(config))
    log = open(tmp / "server.log", "w")  # noqa: SIM115 (closed at the end of the module)
    proc = subprocess.Popen(
        [BIN / "tiled", "serve", "config", tmp / "config.yml"], stdout=log, stderr=log
    )
    uri = f"http://127.0.0.1:{port}/api/v1"
    try:
        http = httpx.Client(base_url=f"{uri}/")
        deadline = time.monotonic() + 120
        while True:
            try:
                http.get("")
                break
            except httpx.TransportError:
                assert proc.poll() is None, (tmp / "server.log").read_text()
                assert time.monotonic() < deadline, "the Tiled server did not start"
                time.sleep(0.5)
        token = http.post(
            "auth/provider/local/token", data={"username": "alice", "password": "alicepassword"}
        ).json()["access_token"]

        def key(scopes):
            response = http.post(
                "auth/apikey",
                json={"scopes": scopes, "note": "test", "expires_in": None},
                headers={"Authorization": f"Bearer {token}"},
            )
            return response.json()["secret"]

        keys = {"full": key(["inherit"]), "read_only": key(READ_ONLY), "no_delete": key(NO_DELETE)}
        yield uri, keys
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_a_read_only_key_is_refused_before_ready(keyed_server, tmp_path, free_port):
    uri, keys = keyed_server
    key_file = tmp_path / "viewer.key"
    key_file.write_text(keys["read_only"] + "\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TILED_API_KEY", None)
    args = ["serve", "--profile", "demo", "--zmq", f"127.0.0.1:{free_port()}", "--tiled", uri]
    out = subprocess.run(
        [BIN / "ptystream", *args, "--api-key-file", key_file, "--data-dir", tmp_path / "d"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 2, out.stderr
    assert "ready" not in out.stdout
    (line,) = out.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"ptystream: Tiled at {uri}: the API key may not write where serve ")
    # (on this fresh server even processed/ is missing, and the key may not create it)
    assert "writes: HTTP 401 creating the container processed (give serve a key" in line
    assert "(give serve a key with the scopes " in line and "create:node" in line
    assert keys["read_only"] not in out.stdout + out.stderr


def test_a_key_that_may_write_passes_and_leaves_nothing_behind(keyed_server):
    uri, keys = keyed_server
    client = connect(uri, keys["full"])
    check_can_write(client, uri)
    before = set(client["processed"]["ptystream"])
    check_can_write(client, uri)  # and again, with processed/ptystream there already
    assert set(client["processed"]["ptystream"]) == before


def test_a_key_that_may_not_delete_is_named(keyed_server):
    uri, keys = keyed_server
    with pytest.raises(ServeError, match=r"HTTP 401 deleting the container ptystream-write-"):
        check_can_write(connect(uri, keys["no_delete"]), uri)
