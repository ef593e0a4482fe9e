"""A lease in a Tiled node's metadata: one process at a time does a piece of work on the node
(the recovery of an interrupted run after a restart, :mod:`ptystream.offline.recover`).

The lease is ``recovery_lease: {by, until}`` in the node's metadata: who holds it and when it
lapses (ISO 8601, UTC). Tiled has no compare-and-set on metadata, so a lease is taken by
writing it, waiting ``settle_s`` and reading it back: of two processes that both saw the node
free, the later writer's name is what both read back, and the other gives way. This holds
while a process writes within ``settle_s`` of its read (milliseconds against a second); the
holder renews the lease while it works and checks it is still its own before it publishes.
A lease whose holder died lapses after ``ttl_s``; hosts are assumed to agree on the time to
well under ``ttl_s``.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from ptystream.store.layout import node_at

__all__ = ["LEASE_KEY", "Lease"]

logger = logging.getLogger(__name__)

#: The metadata key of the lease.
LEASE_KEY = "recovery_lease"


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _holder(node) -> str | None:
    """Who holds a lease on ``node`` that has not lapsed (None: free)."""
    lease = node.metadata.get(LEASE_KEY)
    if not lease or not lease.get("by"):
        return None
    try:
        until = datetime.datetime.fromisoformat(lease["until"])
    except (KeyError, TypeError, ValueError):
        return None  # unreadable: treated as lapsed
    return lease["by"] if until > _utcnow() else None


class Lease:
    """A lease on the node at ``path`` under ``root`` for ``holder`` (a name unique to the
    process, e.g. ``host:pid:token``), lasting ``ttl_s`` seconds from each write.

    Parameters
    ----------
    root : a tiled client container (the server's root).
    path : the node's path under ``root`` (``processed/ptystream/<key>``).
    holder : who takes the lease.
    ttl_s : seconds a lease lasts after it is written (renewed by :meth:`renew`).
    settle_s : seconds between writing the lease and reading it back, longer than a racing
        process takes from its read to its write.
    """

    def __init__(
        self,
        root,
        path: str,
        holder: str,
        *,
        ttl_s: float = 60.0,
        settle_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._root, self.path, self.holder = root, path, holder
        self.ttl_s, self._settle_s, self._sleep = ttl_s, settle_s, sleep
        self._written = 0.0  # time.monotonic() of the last write

    def _node(self):
        return node_at(self._root, self.path)  # read anew: another process may have written

    def _write(self, node, lease: dict[str, Any] | None) -> None:
        node.update_metadata({LEASE_KEY: lease}, drop_revision=True)
        self._written = time.monotonic()

    def _record(self) -> dict[str, Any]:
        until = _utcnow() + datetime.timedelta(seconds=self.ttl_s)
        return {"by": self.holder, "until": until.isoformat()}

    def holder_now(self) -> str | None:
        """Who holds the lease now (None: nobody, or it lapsed)."""
        return _holder(self._node())

    def take(self) -> bool:
        """Take the lease if it is free, lapsed or already ours; False when another process
        holds it (or took it at the same moment and wrote last)."""
        node = self._node()
        held = _holder(node)
        if held is not None and held != self.holder:
            return False
        self._write(node, self._record())
        self._sleep(self._settle_s)
        held = self.holder_now()
        if held != self.holder:
            logger.info("lease on %s: taken by %s at the same moment", self.path, held)
            return False
        return True

    def renew(self, *, every_s: float | None = None) -> bool:
        """Extend the lease by ``ttl_s`` (only when ``every_s`` seconds passed since the last
        write, if given; default a third of ``ttl_s``); False when it is no longer ours."""
        every_s = self.ttl_s / 3 if every_s is None else every_s
        if time.monotonic() - self._written < every_s:
            return True
        node = self._node()
        if _holder(node) not in (None, self.holder):
            return False
        self._write(node, self._record())
        return True

    def release(self) -> None:
        """Give the lease up, if it is still ours (a failure to reach Tiled is logged: the
        lease then lapses by itself)."""
        try:
            node = self._node()
            if _holder(node) == self.holder:
                self._write(node, None)
        except Exception as exc:
            logger.warning("lease on %s not released (%s): it lapses by itself", self.path, exc)
