"""The embedded Tiled server of the default set-up, and the raw-data catalog in it."""

from __future__ import annotations

import secrets
from pathlib import Path

__all__ = ["RAW_KEY", "raw_catalog", "start_embedded_server"]

#: Container (under the root) where bluesky's TiledWriter saves raw runs.
RAW_KEY = "raw"


def start_embedded_server(directory: str | Path, *, port: int = 0):
    """Start ``tiled.server.SimpleTiledServer`` on 127.0.0.1 with its data in ``directory``.

    The directory is kept (re-opening it keeps earlier runs); a fresh random API key is made for
    each start. Returns the server (``.uri`` includes the key; call ``.close()`` when done).
    """
    from tiled.server import SimpleTiledServer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return SimpleTiledServer(directory, api_key=secrets.token_hex(8), port=port)


def raw_catalog(root):
    """The ``raw`` container, a ``CatalogOfBlueskyRuns`` so runs can be looked up by scan id."""
    from tiled.structures.core import Spec

    if RAW_KEY in root:
        return root[RAW_KEY]
    return root.create_container(RAW_KEY, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
