"""The control-room web page: live and recent reconstructions, read from Tiled.

A small Starlette app serves a plain-JavaScript page (no framework, nothing fetched from the
internet) and forwards the page's reads to Tiled, adding the API key on the server side:

- ``GET /api/v1/{path}`` -> Tiled's HTTP API (read routes only; other methods get 405, an
  unreachable Tiled gives 502 with a JSON message);
- websocket ``/api/v1/stream/single/{path}`` -> Tiled's event stream (new runs, status changes,
  each live publish). Where Tiled has no streaming cache the page polls once a second.

Against other sites: only requests naming the dashboard's own address or an allowed name in
their ``Host`` header are answered (DNS rebinding); exports of whole containers (``node/full``,
``container/full``) are not forwarded unless asked for; Tiled's address never reaches the page
(links in its answers point at the dashboard).

The module needs only what ``tiled[server]`` installs (starlette, uvicorn, httpx, websockets);
it imports neither TensorFlow nor bluesky, so it runs on a machine without the engine.
"""

from ptystream.dashboard._app import create_app
from ptystream.dashboard._hosts import HostAllowlist
from ptystream.dashboard._server import Dashboard, start_dashboard

__all__ = ["Dashboard", "HostAllowlist", "create_app", "start_dashboard"]
