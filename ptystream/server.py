"""The embedded Tiled server of the default set-up, and the raw-data catalog in it."""

from __future__ import annotations

import secrets
from pathlib import Path

__all__ = ["RAW_KEY", "raw_catalog", "start_embedded_server"]

#: Container (under the root) where bluesky's TiledWriter saves raw runs.
RAW_KEY = "raw"


def start_embedded_server(directory: str | Path, *, port: int = 0, api_key: str | None = None):
    """Start ``tiled.server.SimpleTiledServer`` on 127.0.0.1 with its data in ``directory``.

    The directory is kept (re-opening it keeps earlier runs); without ``api_key`` a fresh random
    key is made for each start. It has an in-memory streaming cache, so websocket subscribers
    get live updates. Returns the server (``.uri`` includes the key; ``.close()`` when done).
    """
    from tiled.server import SimpleTiledServer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return SimpleTiledServer(directory, api_key=api_key or secrets.token_hex(8), port=port)


def raw_catalog(root):
    """The ``raw`` container, a ``CatalogOfBlueskyRuns`` so runs can be looked up by scan id."""
    from tiled.structures.core import Spec

    if RAW_KEY in root:
        return root[RAW_KEY]
    return root.create_container(RAW_KEY, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
