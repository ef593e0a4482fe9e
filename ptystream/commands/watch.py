"""`ptystream watch RUN`: follow a reconstruction in the terminal, pushed by Tiled's websockets.

The run's container is subscribed to (each live publication updates ``live/``'s metadata, which
Tiled pushes to the container's subscribers) and so is ``processed/ptystream`` (a run created,
a status changed). Where the server has no streaming cache nothing is pushed; the metadata is
then read every ``poll_s`` seconds instead, which is also the safety net for a dropped socket.
A server that stops answering is said so (within seconds: the client made by
:func:`ptystream.store.access.connect` does not wait out tiled's retries) and read again every
``poll_s`` seconds until it answers.
"""

from __future__ import annotations

import datetime
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ptystream.store.access import TiledUnreachable
from ptystream.store.layout import ENDED_STATUSES, PROCESSED_PATH, exists, node_at

__all__ = ["find_run", "format_progress", "watch"]

#: Largest websocket message accepted: a child-metadata update carries the whole metadata.
MAX_MESSAGE_BYTES = 64_000_000
_ENDED = ENDED_STATUSES


def _processed(client):
    path = "/".join(PROCESSED_PATH)
    return node_at(client, path) if exists(client, path) else None


def _matches(run: str | None, key: str, metadata: dict[str, Any]) -> bool:
    """Does a run container (``key``, ``metadata``) match ``run`` (uid or prefix, or scan id)?
    None matches any running run."""
    if run is None:
        return metadata.get("status") == "running"
    if run.isdigit() and metadata.get("scan_id") == int(run):
        return True
    return key.startswith(run) or str(metadata.get("raw_uid", "")).startswith(run)


def find_run(client, run: str | None) -> str | None:
    """The key of the newest reconstruction matching ``run`` (see :func:`_matches`)."""
    from tiled.queries import Key

    processed = _processed(client)
    if processed is None:
        return None
    if run is None:
        found = processed.search(Key("status") == "running")
    elif run in processed:
        return run
    elif run.isdigit() and len(found := processed.search(Key("scan_id") == int(run))):
        pass
    else:
        found = [k for k in processed.keys() if k.startswith(run)]
        return found[-1] if found else None
    keys = list(found.keys())
    return keys[-1] if keys else None


@dataclass
class _Update:
    kind: str  # "live", "status" or "created"
    key: str
    metadata: dict[str, Any]


def _missing(frames: dict[str, Any]) -> str:
    """``" / 35 missing (41-75)"`` when frames never arrived, else ``""``."""
    missing = frames.get("missing")
    if not isinstance(missing, dict) or not missing.get("count"):
        return ""
    return f" / {missing['count']} missing ({missing.get('seq_nums', '?')})"


def format_progress(key: str, run_md: dict[str, Any], live: dict[str, Any]) -> str:
    """One line of progress: scan, uid, status, iteration, frames (used, received, planned,
    missing: seq_nums that never arrived), loss, age of the estimate."""
    parts = [f"scan {run_md.get('scan_id')}", key[:8], str(run_md.get("status", "?"))]
    frames = live.get("frames") or {}
    if run_md.get("status") in _ENDED and isinstance(run_md.get("frames"), dict):
        frames = run_md["frames"]  # the final count (live/ may lag behind it, or be absent)
    if live:
        parts.append(f"iteration {live.get('iteration', '?')}")
    if live or frames:
        used, received = frames.get("used", "?"), frames.get("received", "?")
        planned = live.get("planned") or (run_md.get("plan") or {}).get("n_points")
        parts.append(
            f"frames {used} used / {received} received"
            + (f" / {planned} planned" if planned else "")
            + _missing(frames)
        )
    if live:
        if live.get("loss") is not None:
            parts.append(f"loss {live['loss']:.3e}")
        if live.get("updated_at"):
            updated = datetime.datetime.fromisoformat(live["updated_at"])
            age = (datetime.datetime.now(datetime.UTC) - updated).total_seconds()
            parts.append(f"updated {age:.1f} s ago")
    return " | ".join(parts)


#: Seconds to wait for a websocket subscription to connect before reading the current state.
_CONNECT_S = 10.0


def _subscribe(node, handler: Callable[[Any], None], refused: Callable[[Exception], None]):
    """Subscribe ``handler`` to ``node``'s container events, on a daemon thread of our own:
    tiled's ``start_in_thread`` would wait forever for a server without a streaming cache, and
    its thread would print the refusal as a traceback. ``refused`` is told of the refusal.
    Returns once connected (or after ``_CONNECT_S``), so nothing published after the caller
    then reads the current state is missed."""
    sub = node.subscribe()
    sub.child_created.add_callback(handler)
    sub.child_metadata_updated.add_callback(handler)

    ended = threading.Event()

    def run() -> None:
        try:
            sub.start(max_size=MAX_MESSAGE_BYTES)
        except Exception as exc:
            refused(exc)
        finally:
            ended.set()

    threading.Thread(target=run, daemon=True, name="ptystream-watch").start()
    connected = getattr(sub, "_connected_event", None)  # tiled 0.2.20 has no public signal
    deadline = time.monotonic() + _CONNECT_S
    while connected is not None and time.monotonic() < deadline:
        if connected.wait(0.05) or ended.is_set():
            break
    return sub


class _Watch:
    """Keeps the subscriptions' handlers alive (tiled holds only weak references to them)."""

    def __init__(self, client, run: str | None, show: Callable[[str], None], poll_s: float):
        self.client = client
        self.run = run
        self.show = show
        self.poll_s = poll_s
        self.updates: queue.Queue[_Update] = queue.Queue()
        self.subs: list[Any] = []
        self.pushed = True
        self.reason = ""  # why the run followed ended as it did (its metadata's ``reason``)
        self.down = False  # Tiled did not answer the last read

    def read(self, what: Callable[[], Any], otherwise: Any = None) -> Any:
        """``what()``; while Tiled is down, ``otherwise`` (said once, and said again when Tiled
        answers again): a watch outlives a restart of the server."""
        try:
            value = what()
        except TiledUnreachable as exc:
            if not self.down:
                self.down = True
                self.show(f"({exc}; reading again every {self.poll_s:g} s)")
            return otherwise
        if self.down:
            self.down = False
            self.show("(Tiled answers again)")
        return value

    def on_refused(self, exc: Exception) -> None:
        self.updates.put(_Update("refused", "", {"reason": f"{type(exc).__name__}: {exc}"}))

    def note_refused(self, update: _Update) -> None:
        """Say once that nothing will be pushed (the loops then read every ``poll_s``)."""
        if self.pushed:
            self.pushed = False
            self.show(
                f"(no live push from this server: {update.metadata['reason']}; "
                f"reading every {self.poll_s:g} s)"
            )

    def subscribe(self, node, handler: Callable[[Any], None]) -> None:
        self.subs.append(_subscribe(node, handler, self.on_refused))

    def on_processed(self, update) -> None:
        kind = "created" if type(update).__name__.endswith("Created") else "status"
        self.updates.put(_Update(kind, update.key, dict(update.metadata or {})))

    def on_run(self, update) -> None:
        if update.key == "live":
            self.updates.put(_Update("live", update.key, dict(update.metadata or {})))

    def wait_for_run(self, stop: threading.Event) -> str:
        key = find_run(self.client, self.run)
        if key is None:
            self.show(f"waiting for {'a run' if self.run is None else repr(self.run)} to start ...")
        subscribed = False
        while key is None:
            processed = None if subscribed else self.read(lambda: _processed(self.client))
            if processed is not None:
                self.subscribe(processed, self.on_processed)
                subscribed = True
                key = self.read(lambda: find_run(self.client, self.run))  # created meanwhile
                continue
            # until processed/ptystream exists (a new server) there is nothing to subscribe to
            wait = self.poll_s if subscribed else min(self.poll_s, _CONNECT_S / 5)
            try:
                update = self.updates.get(timeout=wait)
                if update.kind == "created" and _matches(self.run, update.key, update.metadata):
                    key = update.key
                elif update.kind == "refused":
                    self.note_refused(update)
            except queue.Empty:
                key = self.read(lambda: find_run(self.client, self.run))
            if stop.is_set():
                raise KeyboardInterrupt
        if not subscribed:
            self.subscribe(_processed(self.client), self.on_processed)
        return key

    def follow(self, key: str, stop: threading.Event) -> tuple[str, str]:
        """Show ``key``'s progress until it ends; returns its key and status. Without a RUN, a
        run started meanwhile is followed instead (the one shown may have been left running
        by a service that died)."""
        node = _processed(self.client)[key]
        self.subscribe(node, self.on_run)
        run_md, live_md = dict(node.metadata), self._live(node)
        last = None
        while True:
            line = format_progress(key, run_md, live_md)
            if line != last:
                self.show(line)
                last = line
            if run_md.get("status") in _ENDED:
                self.reason = str(run_md.get("reason") or "")
                return key, str(run_md["status"])
            try:
                update = self.updates.get(timeout=self.poll_s)
            except queue.Empty:  # nothing pushed: read it (no streaming cache, socket lost)
                run_md, live_md = self.read(lambda: self._current(node), (run_md, live_md))
                continue
            finally:
                if stop.is_set():
                    raise KeyboardInterrupt
            if update.kind == "live":
                live_md = update.metadata
            elif update.kind == "status" and update.key == key:
                run_md = {**run_md, **update.metadata}
            elif update.kind == "created" and self.run is None and update.key != key:
                self.show(f"run {update.key[:8]} started: following it")
                return self.follow(update.key, stop)
            elif update.kind == "refused":
                self.note_refused(update)

    def _current(self, node) -> tuple[dict[str, Any], dict[str, Any]]:
        node.refresh()
        return dict(node.metadata), self._live(node)

    @staticmethod
    def _live(node) -> dict[str, Any]:
        return dict(node["live"].metadata) if "live" in node else {}

    def close(self) -> None:
        for sub in self.subs:
            sub.disconnect(wait=False)


def watch(
    client,
    run: str | None = None,
    *,
    show: Callable[[str], None] = print,
    poll_s: float = 2.0,
    stop: threading.Event | None = None,
) -> tuple[str, str]:
    """Follow the reconstruction ``run`` (raw uid or its prefix, or a scan id; None: the run
    going on, or the next one) until it ends; returns its key and final status.

    Each live publication is shown as one line through ``show``. ``stop`` (set from another
    thread) ends the watch with KeyboardInterrupt.
    """
    stop = stop or threading.Event()
    w = _Watch(client, run, show, poll_s)
    try:
        key, status = w.follow(w.wait_for_run(stop), stop)
    finally:
        w.close()
    node_path = "/".join((*PROCESSED_PATH, key))
    line = f"{status}: result at {node_path}/final (float32 views in {node_path}/live)"
    if status != "finished" and w.reason:
        line += f"; {w.reason}"  # why it is not a clean finish (frames missing, a failure)
    show(line)
    return key, status
