"""Shared fixtures: profiles for small simulated scans and a real embedded Tiled server."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tiled's client retries each request for up to 45 s; the test servers are local, so a dead one
# should fail fast (read by tiled at import).
os.environ.setdefault("TILED_RETRY_ATTEMPTS", "2")
os.environ.setdefault("TILED_RETRY_TIMEOUT", "2")

from ptystream.config import Profile, load_profile  # noqa: E402


def small_profile(**sim_overrides) -> Profile:
    """The demo profile shrunk to a fast scan (no exposure time); ``sim`` fields overridable."""
    demo = load_profile("demo")
    sim = demo.sim.model_copy(
        update={"object_px": 176, "n_points": 90, "exposure_s": 0.0, **sim_overrides}
    )
    return demo.model_copy(
        update={
            "name": "test",
            "sim": sim,
            "engine": demo.engine.model_copy(update={"final_epochs": 60}),
            "publish": demo.publish.model_copy(update={"cadence_s": 0.2, "raw_batch_size": 10}),
        }
    )


@pytest.fixture(scope="module")
def tiled_server(tmp_path_factory):
    """A real SimpleTiledServer on 127.0.0.1, one per test module."""
    from ptystream.store.server import start_embedded_server

    server = start_embedded_server(tmp_path_factory.mktemp("tiled"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def tiled_client(tiled_server):
    from tiled.client import from_uri

    return from_uri(tiled_server.uri)


@contextlib.contextmanager
def tiled_without_streaming(tiled_server):
    """A second Tiled app on the embedded server's storage, without a streaming cache."""
    import uvicorn
    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.config import Authentication
    from tiled.server.app import build_app
    from tiled.server.simple import ThreadedServer

    directory = Path(tiled_server.directory)
    catalog = catalog_from_uri(
        directory / "catalog.db",
        writable_storage=[directory / "data", f"duckdb:///{directory / 'storage.duckdb'}"],
    )
    # The same key: tiled keeps its authentication settings in a process-wide singleton.
    app = build_app(
        catalog, authentication=Authentication(single_user_api_key=tiled_server.api_key)
    )
    server = ThreadedServer(uvicorn.Config(app, port=0, loop="asyncio", log_config=None))
    with server.run_in_thread() as url:
        yield f"{url}/api/v1"
