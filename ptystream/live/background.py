"""Any document callback on a thread of its own, so a slow one never blocks the RunEngine."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["BackgroundCallback"]

logger = logging.getLogger(__name__)

_STOP = object()
_FLUSH = object()


class BackgroundCallback:
    """Runs any ``callback(name, doc)`` on its own thread, so a slow one never blocks the RE.

    Used for bluesky's TiledWriter (about 170 ms per write on this machine class). Documents
    are delivered in order; :meth:`flush` waits until all queued ones are processed.
    Exceptions of the wrapped callback are logged, counted in ``errors`` and do not stop it.
    """

    def __init__(self, callback: Callable[[str, dict], Any], *, name: str = "background"):
        self._callback = callback
        self._queue: queue.Queue = queue.Queue()
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __call__(self, name: str, doc: dict) -> None:
        self._queue.put((name, doc))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued document was handled; False on timeout."""
        done = threading.Event()
        self._queue.put((_FLUSH, done))
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Handle what is queued, then end the thread."""
        self._queue.put((_STOP, None))
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            name, doc = self._queue.get()
            if name is _STOP:
                return
            if name is _FLUSH:
                doc.set()
                continue
            try:
                self._callback(name, doc)
            except Exception:
                self.errors += 1
                logger.exception("background callback failed on a %r document", name)
