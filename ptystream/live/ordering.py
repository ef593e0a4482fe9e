"""Documents put back in the order the document model requires, on the RunEngine's thread.

A transport that does not keep order (a 0MQ proxy restarted, Kafka partitions) can deliver an
event before its descriptor or a stop twice; a ``serve`` restarted mid-run receives documents of
a run whose start it never saw. :class:`DocumentOrder` holds what arrived early, within bounds of
count, bytes and age, and says what it had to drop and what it could not use.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_HELD_AGE_S", "MAX_HELD_BYTES", "MAX_HELD_DOCUMENTS", "DocumentOrder"]

logger = logging.getLogger(__name__)


#: Documents held because they arrived before the descriptor, stream resource or resource they
#: refer to: at most this many, this many bytes (estimated, arrays counted in full) and this
#: many seconds; beyond, the oldest are dropped with a log line. A restarted ``serve`` joins
#: runs late: their documents wait here for descriptors that never come.
MAX_HELD_DOCUMENTS = 10_000
MAX_HELD_BYTES = 64 * 2**20
MAX_HELD_AGE_S = 60.0
#: Seconds between two log lines about dropped documents (the first is logged at once).
_DROP_LOG_S = 10.0
#: What a document waits for, by document name.
_AWAITS = {
    "event": "descriptor",
    "event_page": "descriptor",
    "stream_datum": "stream_resource",
    "datum": "resource",
    "datum_page": "resource",
}


def _nbytes(value: Any, depth: int = 0) -> int:
    """Rough size in bytes of a document or value: arrays in full, containers walked."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (str, bytes)):
        return len(value)
    if depth > 6:
        return 64
    if isinstance(value, dict):
        return 64 + sum(_nbytes(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return 56 + sum(_nbytes(v, depth + 1) + 8 for v in value)
    return 32


@dataclass
class _Held:
    t: float
    awaited: str
    name: str
    doc: dict
    nbytes: int


class DocumentOrder:
    """Restores the order the document model requires, for transports that do not keep it.

    Duplicated start and stop documents are dropped (a repeated start would otherwise restart
    the run). Events and event pages that arrive before their descriptor, stream datums before
    their stream resource and datums before their resource are held, within
    :data:`MAX_HELD_DOCUMENTS`, :data:`MAX_HELD_BYTES` and :data:`MAX_HELD_AGE_S`, and
    delivered right after it. Duplicated events are let through: the pairer ignores repeated
    seq_nums. Documents of a run whose start this process never saw (it joined late) are
    counted and dropped, and said when that run's stop arrives.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._starts: dict[str, bool] = {}  # run uid -> stopped
        self._owner: dict[str, str] = {}  # descriptor / (stream) resource uid -> run uid
        self._late_owner: dict[str, str] = {}  # the same, of runs joined late
        self._ended: dict[str, str] = {}  # the same, of runs stopped
        self._late: Counter[str] = Counter()  # run uid -> its documents not used
        self._held: OrderedDict[int, _Held] = OrderedDict()  # oldest first
        self._by_awaited: dict[str, list[int]] = {}
        self._next_id = 0
        self._held_bytes = 0
        self._dropped: Counter[str] = Counter()  # since the last log line, by cause
        self._dropped_total = 0  # documents dropped while held, not yet told with a stop
        self._drop_logged = -math.inf

    def __call__(self, name: str, doc: dict[str, Any]) -> list[tuple[str, dict]]:
        now = self._clock()
        self._expire(now)
        if name == "start":
            if doc["uid"] in self._starts:
                return []
            self._starts[doc["uid"]] = False
            return [(name, doc)]
        if name == "stop":
            return self._stop(doc)
        if name in ("descriptor", "stream_resource", "resource"):
            return self._container(name, doc)
        awaited = _AWAITS.get(name)
        if awaited is None:
            return [(name, doc)]
        ref = doc.get(awaited)
        if ref is None or ref in self._owner:  # malformed ones fail in the router, logged
            return [(name, doc)]
        if ref in self._late_owner:
            self._late[self._late_owner[ref]] += 1
            return []
        if ref in self._ended:
            logger.debug("a %r of run %s after its stop: ignored", name, self._ended[ref])
            return []
        self._hold(now, str(ref), name, doc)
        return []

    @property
    def held(self) -> tuple[int, int]:
        """Documents held and their estimated bytes."""
        return len(self._held), self._held_bytes

    def _container(self, name: str, doc: dict[str, Any]) -> list[tuple[str, dict]]:
        """A descriptor or (stream) resource: let it through with what waited for it, unless it
        is repeated or belongs to a run whose start was never seen here."""
        uid = doc["uid"]
        if uid in self._owner or uid in self._late_owner:
            return []  # repeated: routing it twice would deliver each event twice
        run = doc.get("run_start")
        waiting = [self._held.pop(i) for i in self._by_awaited.pop(uid, []) if i in self._held]
        self._held_bytes -= sum(h.nbytes for h in waiting)
        if run is not None and run not in self._starts:
            self._late_owner[uid] = run
            self._late[run] += 1 + len(waiting)
            return []
        self._owner[uid] = run or ""
        return [(name, doc), *((h.name, h.doc) for h in waiting)]

    def _stop(self, doc: dict[str, Any]) -> list[tuple[str, dict]]:
        run = str(doc.get("run_start"))
        stopped = self._starts.get(run)
        if stopped is False:
            self._starts[run] = True
            self._forget(run)
            return [("stop", doc)]
        if stopped:
            logger.info("run %s: repeated stop document ignored", run)
            return []
        unused = self._late.pop(run, 0)
        for uid in [u for u, owner in self._late_owner.items() if owner == run]:
            del self._late_owner[uid]
        events = doc.get("num_events")
        told = sum(v for v in events.values() if _is_count(v)) if isinstance(events, dict) else 0
        # documents waiting for descriptors never seen are most likely this run's (a process
        # that joined late missed the descriptors with the start): counted as its
        waiting, self._dropped_total = len(self._held) + self._dropped_total, 0
        logger.warning(
            "stop document of run %s, whose start this process never saw (it joined the run "
            "late, or the start was lost): ignored; its stop counts %d events, and %d "
            "documents that arrived here could not be used (%d of its own, %d waiting for "
            "descriptors never seen, held at most %g s)",
            run,
            told,
            unused + waiting,
            unused,
            waiting,
            MAX_HELD_AGE_S,
        )
        return []

    def _hold(self, now: float, awaited: str, name: str, doc: dict[str, Any]) -> None:
        held = _Held(now, awaited, name, doc, _nbytes(doc))
        self._held[self._next_id] = held
        self._by_awaited.setdefault(awaited, []).append(self._next_id)
        self._next_id += 1
        self._held_bytes += held.nbytes
        while len(self._held) > MAX_HELD_DOCUMENTS:
            self._drop_oldest(f"more than {MAX_HELD_DOCUMENTS} held")
        while self._held_bytes > MAX_HELD_BYTES and self._held:
            self._drop_oldest(f"more than {MAX_HELD_BYTES / 2**20:g} MB held")
        self._log_drops(now)

    def _expire(self, now: float) -> None:
        while self._held and now - next(iter(self._held.values())).t > MAX_HELD_AGE_S:
            self._drop_oldest(f"held over {MAX_HELD_AGE_S:g} s")
        self._log_drops(now)

    def _drop_oldest(self, cause: str) -> None:
        i, held = self._held.popitem(last=False)
        self._held_bytes -= held.nbytes
        waiting = self._by_awaited.get(held.awaited, [])
        if i in waiting:
            waiting.remove(i)
        if not waiting:
            self._by_awaited.pop(held.awaited, None)
        self._dropped[cause] += 1
        self._dropped_total += 1

    def _log_drops(self, now: float) -> None:
        if not self._dropped or now - self._drop_logged < _DROP_LOG_S:
            return
        causes = ", ".join(f"{n} {cause}" for cause, n in self._dropped.items())
        logger.warning(
            "dropped documents waiting for a descriptor or resource never seen (%s); %d held "
            "(%.1f MB)",
            causes,
            len(self._held),
            self._held_bytes / 2**20,
        )
        self._dropped.clear()
        self._drop_logged = now

    def _forget(self, run: str) -> None:
        for uid in [u for u, owner in self._owner.items() if owner == run]:
            del self._owner[uid]
            self._ended[uid] = run
        if len(self._ended) > 10_000:  # the most recent runs' uids, to ignore late documents
            for uid in list(self._ended)[:5_000]:
                del self._ended[uid]
        if len(self._starts) > 1000:  # keep the most recent runs' uids to spot duplicates
            for uid in list(self._starts)[:500]:
                del self._starts[uid]


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0
