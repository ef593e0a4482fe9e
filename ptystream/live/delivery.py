"""The publisher thread: a run's begin, live estimates and end handed to the store.

Live estimates are best effort and latest wins (a newer one follows within the cadence). A
run's creation and its end are retried with back-off; an end Tiled cannot take is written
ahead to the spool on local disk and uploaded when Tiled answers again, by this process or a
later one (:mod:`ptystream.store.spool`). Nothing here blocks the worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptystream.config import PublishSettings
from ptystream.live.result import RunResult
from ptystream.store.access import TiledUnreachable
from ptystream.store.publisher import TiledPublisher, run_metadata
from ptystream.store.spool import SpoolBusy, set_node_path, spool_final, spool_lock, spooled_files
from ptystream.types import Estimate

__all__ = ["Delivery"]

#: What a live publication carries: the estimate, the frame accounting and, optionally, a recent
#: diffraction frame (the arguments of ``TiledPublisher.publish_live`` after the run uid).
_Live = tuple[Estimate, dict] | tuple[Estimate, dict, Any]

logger = logging.getLogger(__name__)

#: After a failed attempt to create a run's node, live publications wait this long (s) before
#: trying again.
_BEGIN_RETRY_INTERVAL_S = 10.0
#: After an upload of kept results that left some behind, the next attempt waits this long (s).
_FLUSH_RETRY_S = 30.0


class Delivery:
    """Owns the publisher thread of a :class:`~ptystream.live.pipeline.LivePipeline`.

    Parameters
    ----------
    publisher : where results go; None keeps them in memory only (each run's ``done`` is
        still set at its end).
    settings : retries and back-off of a run's creation and end.
    engine_settings : the engine settings recorded in each run's metadata (JSON).
    spool_dir : where a run's end is written ahead (and kept while Tiled cannot take it);
        None: not kept.
    """

    def __init__(
        self,
        publisher: TiledPublisher | None,
        settings: PublishSettings,
        engine_settings: dict[str, Any],
        spool_dir: Path | None = None,
    ):
        self._publisher = publisher
        self._publish_settings = settings
        self._engine_settings = engine_settings
        self._spool_dir = spool_dir
        self._outbox: deque[tuple[str, RunResult, Any]] = deque()
        self._out_cond = threading.Condition()
        self._closing = False
        self._closing_now = threading.Event()  # wakes a back-off sleep at close
        self._begin_after: dict[str, float] = {}  # publisher thread only
        self._spool_pending = spool_dir is not None and bool(spooled_files(spool_dir))
        self._flush_after = 0.0  # publisher thread only
        self._thread = threading.Thread(target=self._run, name="ptystream-publish", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Deliver what is queued, then end the thread."""
        with self._out_cond:
            self._closing = True
            self._closing_now.set()
            self._out_cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def post(self, kind: str, result: RunResult, live: _Live | None = None) -> None:
        """Queue ``kind`` (``begin``, ``live`` with ``(estimate, frames[, recent frame])``,
        ``final``) of ``result``; a newer live estimate or a final replaces a live one still
        queued."""
        with self._out_cond:
            if kind in ("live", "final"):
                stale = [c for c in self._outbox if c[0] == "live" and c[1] is result]
                for command in stale:  # latest wins; a final supersedes any pending live
                    self._outbox.remove(command)
            self._outbox.append((kind, result, live))
            self._out_cond.notify()

    def _run(self) -> None:
        self._flush_spool()  # results kept while Tiled was away, from this process or earlier
        while True:
            with self._out_cond:
                while not self._outbox and not self._closing:
                    self._out_cond.wait()
                if not self._outbox:
                    return
                kind, result, live = self._outbox.popleft()
            try:
                if self._publisher is not None and self._deliver(kind, result, live):
                    self._flush_spool()
            except Exception:
                logger.exception("publishing %s of run %s failed", kind, result.run_uid)
            finally:
                if kind == "final":
                    frames = result.accounting
                    logger.info(
                        "run %s: %s, %d of %d frames used, result at %s",
                        result.run_uid,
                        result.status,
                        frames.used,
                        frames.received,
                        result.node_path if result.spooled is None else result.spooled,
                    )
                    result.done.set()

    def _deliver(self, kind: str, result: RunResult, live: _Live | None) -> bool:
        """Create the run's node if needed, then write; True if Tiled took the write. A live
        estimate is best effort (a newer one follows within ``cadence_s``); see
        :meth:`_deliver_final` for the end of a run."""
        if kind == "final":
            return self._deliver_final(result)
        if result.node_path is None:
            if time.monotonic() < self._begin_after.get(result.run_uid, 0):
                return False
            if not self._attempt(lambda: self._begin(result), "begin", result, 0):
                self._begin_after[result.run_uid] = time.monotonic() + _BEGIN_RETRY_INTERVAL_S
                return False
        if kind == "live" and live is not None:
            estimate, frames, *recent = live  # recent: [a diffraction frame or None], if sent
            args = (result.run_uid, estimate, frames, *recent)
            write = lambda: self._publisher.publish_live(*args)  # noqa: E731
            return self._attempt(write, kind, result, 0)
        return True

    def _deliver_final(self, result: RunResult) -> bool:
        """The end of a run, written ahead to the spool (with its lock held, so no other process
        uploads it meanwhile), then to Tiled with ``publish.retries`` retries; the spooled copy
        is deleted once Tiled has it all, else kept for a later upload."""
        if result.final is not None and not result.final.is_finite():
            it = result.final.iteration
            result.status, result.final = "failed", None
            result.error = f"final estimate at iteration {it} has non-finite values; not published"
        retries = self._publish_settings.retries
        self._begin_after.pop(result.run_uid, None)
        # a periodic checkpoint of a run that ended is removed once its final result is safe;
        # an incomplete run's (a shutdown) is kept to resume from
        stale = result.checkpoint if result.status != "incomplete" else None
        if stale is not None:
            result.checkpoint = None
        lock = spool_lock(self._spool_dir) if self._spool_dir else contextlib.nullcontext()
        with lock:
            kept = self._keep_on_disk(result)
            created = result.node_path is None
            done = self._attempt(lambda: self._begin(result), "begin", result, retries)
            if done and created and kept is not None:
                set_node_path(kept, result.node_path)
            done = done and self._attempt(
                lambda: self._write_final(result), "final", result, retries
            )
            if done and kept is not None:
                kept.unlink()
            elif kept is not None:
                result.spooled = kept
                self._spool_pending = True
                logger.error(
                    "run %s: Tiled unreachable; final result kept at %s (uploaded when Tiled "
                    "answers again, or by `ptystream flush`)",
                    result.run_uid,
                    kept,
                )
            elif not done:
                logger.error("run %s: final result not published and not kept", result.run_uid)
        if stale is not None and (done or kept is not None):
            stale.unlink(missing_ok=True)
        return done

    def _begin(self, result: RunResult) -> None:
        if result.node_path is None:
            result.node_path = self._publisher.begin_run(result.start, self._engine_settings)

    def _write_final(self, result: RunResult) -> None:
        if result.final is None:
            self._publisher.mark(result.run_uid, result.status, result.summary())
        else:
            self._publisher.publish_final(
                result.run_uid,
                result.final,
                result.status,
                result.summary(),
                diffraction=result.recent_frame,
            )

    def _attempt(
        self, write: Callable[[], None], kind: str, result: RunResult, retries: int
    ) -> bool:
        """``write()`` with up to ``retries`` retries and exponential back-off; True if done.

        While closing, a Tiled that is down (:class:`TiledUnreachable`) is not retried: the
        caller keeps the result in the spool, and the process stops within seconds.
        """
        delay = self._publish_settings.retry_backoff_s
        for attempt in range(retries + 1):
            try:
                write()
                return True
            except Exception as exc:
                if attempt == retries or (self._closing and isinstance(exc, TiledUnreachable)):
                    logger.error("publishing %s of run %s failed: %s", kind, result.run_uid, exc)
                    return False
                logger.warning(
                    "publishing %s of run %s failed (%s); retrying in %.1f s",
                    kind,
                    result.run_uid,
                    exc,
                    delay,
                )
                self._closing_now.wait(delay)
                delay = min(2 * delay, 8.0)
        return False

    def _keep_on_disk(self, result: RunResult) -> Path | None:
        """Write the run's end to the spool (None without a spool directory)."""
        if self._spool_dir is None:
            return None
        return spool_final(
            self._spool_dir,
            result.run_uid,
            result.final,
            status=result.status,
            extra=result.summary(),
            run_metadata=run_metadata(result.start, self._engine_settings),
            node_path=result.node_path,
        )

    def _flush_spool(self) -> None:
        """Upload the results kept on disk, once Tiled has taken a write again; after a flush
        that left something behind, not again for ``_FLUSH_RETRY_S``."""
        if not self._spool_pending or self._publisher is None or self._spool_dir is None:
            return
        if time.monotonic() < self._flush_after:
            return
        try:
            outcomes = self._publisher.flush(self._spool_dir, wait=False)
            self._spool_pending = any(
                o.error and not o.error.startswith("unreadable") for o in outcomes
            )
        except SpoolBusy:
            pass  # another process is uploading; look again later
        except Exception:
            logger.exception("uploading the results kept in %s failed", self._spool_dir)
        if self._spool_pending:
            self._flush_after = time.monotonic() + _FLUSH_RETRY_S
