"""Fixtures of the store tests."""

import pytest


@pytest.fixture
def publisher(tiled_client):
    """A TiledPublisher writing to the module's embedded Tiled server."""
    from ptystream.store.publisher import TiledPublisher

    return TiledPublisher(tiled_client)
