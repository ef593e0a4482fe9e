"""ptystream: live ptychography from Bluesky documents into Tiled.

The front door: what a script or notebook needs, in one import::

    from ptystream import LivePipeline, PtychoCallback, TiledPublisher, load_profile

Names are loaded when first used, so ``import ptystream`` pulls in neither TensorFlow, the Tiled
server nor bluesky; the engine imports TensorFlow when it is built.

- profiles: :func:`load_profile`, :func:`with_overrides`, :class:`Profile`;
- live reconstruction: :class:`PtychoCallback` (subscribe it to a RunEngine),
  :class:`LivePipeline` (the worker it feeds), :class:`BackgroundCallback` (any slow callback
  off the RunEngine's thread, e.g. bluesky's TiledWriter);
- Tiled: :class:`TiledPublisher`, :func:`connect`, :func:`raw_catalog`,
  :func:`start_embedded_server` (this process) and :func:`start_server_process` (a child);
- finished scans: :func:`read_scan`, :func:`reconstruct` (arrays in memory, pre-processed as
  the profile says, with a progress bar, a notebook widget in Jupyter, or a callback per pass),
  :func:`reconstruct_file`, :func:`reconstruct_scan`, and a written result back:
  :func:`read_result`;
- the engine: :func:`make_engine` with an :class:`EngineSetup`;
- simulation and scoring: :func:`build_simulation`, :func:`score_against_truth`;
- the vocabulary: :class:`Geometry`, :class:`ScanPlan`, :class:`Estimate`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> module that defines it.
_WHERE = {
    "Profile": "ptystream.config",
    "ProfileError": "ptystream.config",
    "load_profile": "ptystream.config",
    "with_overrides": "ptystream.config",
    "PtychoCallback": "ptystream.live.callback",
    "LivePipeline": "ptystream.live.pipeline",
    "BackgroundCallback": "ptystream.live.background",
    "TiledPublisher": "ptystream.store.publisher",
    "connect": "ptystream.store.access",
    "raw_catalog": "ptystream.store.layout",
    "start_embedded_server": "ptystream.store.server",
    "start_server_process": "ptystream.store.server",
    "read_scan": "ptystream.io.scans",
    "read_result": "ptystream.io.results",
    "reconstruct": "ptystream.offline.reconstruct",
    "reconstruct_file": "ptystream.offline.reconstruct",
    "reconstruct_scan": "ptystream.offline.reconstruct",
    "EngineSetup": "ptystream.engine",
    "make_engine": "ptystream.engine",
    "build_simulation": "ptystream.sim.scan",
    "score_against_truth": "ptystream.metrics",
    "Estimate": "ptystream.types",
    "Geometry": "ptystream.types",
    "ScanPlan": "ptystream.types",
}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ptystream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # the names above, for type checkers and editors
    from ptystream.config import Profile, ProfileError, load_profile, with_overrides  # noqa: F401
    from ptystream.engine import EngineSetup, make_engine  # noqa: F401
    from ptystream.io.scans import read_scan  # noqa: F401
    from ptystream.live.background import BackgroundCallback  # noqa: F401
    from ptystream.live.callback import PtychoCallback  # noqa: F401
    from ptystream.live.pipeline import LivePipeline  # noqa: F401
    from ptystream.metrics import score_against_truth  # noqa: F401
    from ptystream.offline.reconstruct import reconstruct_file, reconstruct_scan  # noqa: F401
    from ptystream.sim.scan import build_simulation  # noqa: F401
    from ptystream.store.access import connect  # noqa: F401
    from ptystream.store.layout import raw_catalog  # noqa: F401
    from ptystream.store.publisher import TiledPublisher  # noqa: F401
    from ptystream.store.server import start_embedded_server, start_server_process  # noqa: F401
    from ptystream.types import Estimate, Geometry, ScanPlan  # noqa: F401
