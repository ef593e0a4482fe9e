"""`ptystream serve`: live reconstruction as a long-running service, fed over 0MQ or Kafka.

At a facility the RunEngine publishes its documents to a bluesky 0MQ proxy (or to Kafka); this
process subscribes, reconstructs every run its profile matches and publishes to Tiled. It
imports TensorFlow and compiles for the profile's shapes before it says it is ready, takes runs
one after another, and on SIGTERM or SIGINT checkpoints the run in progress, publishes it as
``incomplete`` and exits. Once ready, it completes in the background the runs an earlier
service on this host and data directory left ``running`` or ``incomplete``
(:mod:`ptystream.offline.recover`), between the live runs' work.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptystream.config import Profile
from ptystream.store.access import AccessError, connect, write_key_file

__all__ = ["DocumentSource", "ServeError", "serve"]

logger = logging.getLogger(__name__)


class ServeError(AccessError):
    """A set-up problem the operator must fix (the message says which)."""


@dataclass(frozen=True)
class DocumentSource:
    """Where documents come from: a 0MQ proxy's out address, or Kafka brokers and topics."""

    zmq: str | None = None
    kafka_bootstrap: str | None = None
    kafka_topics: tuple[str, ...] = ()
    kafka_group: str = "ptystream"

    def describe(self) -> str:
        if self.zmq is not None:
            return f"0MQ proxy at {self.zmq}"
        return f"Kafka at {self.kafka_bootstrap}, topics {', '.join(self.kafka_topics)}"


class _Dispatcher:
    """A bluesky RemoteDispatcher (0MQ or Kafka) that can be stopped by a signal."""

    def __init__(self, source: DocumentSource):
        self._stopping = threading.Event()
        self._previous: dict[int, Any] = {}  # Kafka: the signal handlers replaced by arm()
        if source.zmq is not None:
            from bluesky.callbacks.zmq import RemoteDispatcher

            self._remote = RemoteDispatcher(source.zmq)
            self._kafka = False
        else:
            try:
                from bluesky_kafka import RemoteDispatcher as KafkaDispatcher
            except ImportError as exc:
                raise ServeError("--kafka needs bluesky-kafka: pip install bluesky-kafka") from exc
            self._remote = KafkaDispatcher(
                topics=list(source.kafka_topics),
                bootstrap_servers=source.kafka_bootstrap,
                group_id=source.kafka_group,
                consumer_config={"auto.offset.reset": "latest"},
            )
            self._kafka = True

    def subscribe(self, callback: Callable[[str, dict], Any]) -> None:
        self._remote.subscribe(callback)

    def arm(self) -> None:
        """Handle SIGTERM and SIGINT from now on (called before ``ready`` is said, so that a
        signal sent as soon as it is read stops the service cleanly, not by a
        KeyboardInterrupt); :meth:`run_until_signal` then returns on the first."""
        if self._kafka:
            self._previous = {
                sig: signal.signal(sig, lambda *_: self._stopping.set())
                for sig in (signal.SIGTERM, signal.SIGINT)
            }
            return
        loop = self._remote.loop  # a signal before the loop runs is delivered when it starts
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._cancel_all, loop)

    def run_until_signal(self) -> None:
        """Dispatch documents until SIGTERM or SIGINT (:meth:`arm` first)."""
        if self._kafka:
            try:
                self._remote.start(continue_polling=lambda: not self._stopping.is_set())
            finally:
                for sig, handler in self._previous.items():
                    signal.signal(sig, handler)
            return
        try:
            self._remote.start()
        except asyncio.CancelledError:
            pass

    def _cancel_all(self, loop: asyncio.AbstractEventLoop) -> None:
        logger.info("signal received: finishing")
        for task in asyncio.all_tasks(loop):
            task.cancel()


class _Recovery:
    """The background thread that completes the runs an earlier service left unfinished
    (:func:`~ptystream.offline.recover.recover_unfinished`), yielding to live runs
    (``busy``); :meth:`close` stops it between two passes."""

    def __init__(self, announce: Callable[[str], None], **kwargs: Any):
        self._announce = announce
        self._kwargs = kwargs
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recovery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop between two passes (a pass in progress ends first), waiting ``timeout_s`` at
        most: a run not completed is left as it was, for the next start."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        from ptystream.offline.recover import recover_unfinished

        try:
            recover_unfinished(announce=self._announce, stopping=self._stopping, **self._kwargs)
        except Exception as exc:  # Tiled away: said in one line, the next start tries again
            self._announce(f"ptystream serve: unfinished runs not recovered ({exc})")


class _IdleNotice:
    """Says "waiting for documents on ..." after every ``period_s`` seconds without a
    document, so an operator can tell a quiet beamline, or a wrong proxy address, from a hung
    service. Subscribed as a callback: it only notes the time (nothing slow on the
    dispatcher's thread); its own daemon thread does the announcing."""

    def __init__(
        self,
        period_s: float,
        where: str,
        announce: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self._period_s = period_s
        self._where = where
        self._announce = announce
        self._clock = clock
        self._started = self._last = clock()
        self._seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-notice", daemon=True)

    def __call__(self, name: str, doc: dict) -> None:
        self._last = self._clock()
        self._seen = True

    def start(self) -> None:
        self._started = self._last = self._clock()
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        due = self._last + self._period_s
        while not self._stop.wait(max(due - self._clock(), 0.05)):
            now = self._clock()
            quiet = now - self._last
            if quiet < self._period_s:  # a document came meanwhile
                due = self._last + self._period_s
                continue
            since = (
                f"the last one {_duration(quiet)} ago"
                if self._seen
                else f"none yet, ready {_duration(now - self._started)} ago"
            )
            self._announce(f"ptystream serve: waiting for documents on {self._where} ({since})")
            due = now + self._period_s


#: The scopes a key for ``serve`` needs (deploy/tiled/setup_facility.py gives them).
WRITE_SCOPES = (
    "read:metadata",
    "read:data",
    "write:metadata",
    "write:data",
    "create:node",
    "delete:node",
)


def check_can_write(client, where: str) -> None:
    """Create, then delete, a container where ``serve`` writes (``processed/ptystream``,
    created if missing), so that a key that may not write there is found at start-up, not at
    the first scan. Raises ServeError naming what was refused; ``where`` names the server."""
    import httpx

    from ptystream.store.layout import PROCESSED_PATH, child

    path = "/".join(PROCESSED_PATH)
    step = f"reading {path}"
    try:
        parent = client
        for key in PROCESSED_PATH:
            step = f"reading {key}" if key in parent else f"creating the container {key}"
            parent = child(parent, key)
        step = f"creating a container in {path}"
        probe = parent.create_container(f"ptystream-write-check-{secrets.token_hex(4)}")
        step = f"deleting the container {probe.item['id']} it created in {path}"
        probe.delete()
    except httpx.HTTPStatusError as exc:
        code = exc.response.status_code
        raise ServeError(
            f"Tiled at {where}: the API key may not write where serve writes: HTTP {code} "
            f"{step} (give serve a key with the scopes {', '.join(WRITE_SCOPES)} on {path})"
        ) from None


def _duration(seconds: float) -> str:
    """``45 s``, ``3 min``, ``2.5 h``: how long, to the precision a person reads."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def serve(
    profile: Profile,
    source: DocumentSource,
    *,
    tiled_uri: str | None,
    api_key: str | None,
    data_dir: str | Path,
    announce: Callable[[str], None] = print,
    idle_notice_s: float = 60.0,
    recover: bool = True,
) -> None:
    """Reconstruct the runs arriving from ``source`` until SIGTERM/SIGINT.

    Results go to the Tiled server at ``tiled_uri`` (with ``api_key``), or, without one, to an
    embedded server with its data in ``data_dir/tiled`` (its API key is written to
    ``data_dir/tiled-api-key``, mode 0600, never printed). ``data_dir`` also holds the spool of
    results Tiled could not take, the spill file and shutdown checkpoints. After every
    ``idle_notice_s`` seconds without a document (0: never) it announces that it is waiting,
    and from where. With ``recover``, the runs a service of this host and ``data_dir`` left
    ``running`` or ``incomplete`` (a crash, a kill, a shutdown mid-run) are completed in the
    background once it is ready, live runs first (:mod:`ptystream.offline.recover`); each run
    container records its owner (``service``) for that.
    """
    from ptystream.live.callback import PtychoCallback
    from ptystream.live.pipeline import LivePipeline
    from ptystream.offline.recover import new_instance, owner_record
    from ptystream.store.publisher import TiledPublisher

    dispatcher = _Dispatcher(source)
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = None
    if tiled_uri is None:
        from ptystream.store.server import start_server_process

        server = start_server_process(data_dir / "tiled")
        key_file = write_key_file(data_dir / "tiled-api-key", server.api_key)
        tiled_uri, api_key = server.uri.split("?")[0], server.api_key
        announce(f"embedded Tiled server at {tiled_uri} (API key in {key_file})")
    try:
        client = connect(tiled_uri, api_key)
        check_can_write(client, tiled_uri.split("?")[0])
        owner = owner_record(data_dir, new_instance())
        publisher = TiledPublisher(client, owner=owner)
        pipeline = LivePipeline(profile, publisher, spool_dir=data_dir / "spool")
        pipeline.start()
        dispatcher.subscribe(PtychoCallback(profile, pipeline))
        idle = None
        if idle_notice_s > 0:
            idle = _IdleNotice(idle_notice_s, source.describe(), announce)
            dispatcher.subscribe(idle)
        dispatcher.arm()
        announce(
            f"ptystream serve: ready; profile {profile.name!r}, documents from "
            f"{source.describe()}, results to {tiled_uri.split('?')[0]}"
        )
        if idle is not None:
            idle.start()
        recovery = None
        if recover:
            recovery = _Recovery(
                announce,
                root=connect(tiled_uri, api_key),  # its own client: no shared connection pool
                profile=profile,
                owner=owner,
                spool_dir=data_dir / "spool",
                busy=lambda: pipeline.busy,
            )
            recovery.start()
        try:
            dispatcher.run_until_signal()
        finally:
            if idle is not None:
                idle.close()
            announce("ptystream serve: stopping (a run in progress is checkpointed)")
            if recovery is not None:
                recovery.close()
            pipeline.close()
        announce("ptystream serve: stopped")
    finally:
        if server is not None:
            server.close()
