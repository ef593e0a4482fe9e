"""Completing, after a restart, the live reconstructions ``ptystream serve`` left unfinished.

A service that was killed (SIGKILL, a crash, a reboot) leaves its run's container ``running``;
one stopped by SIGTERM leaves it ``incomplete``, with the engine's whole state in its spool
(``<data dir>/spool/checkpoints/<run uid>.h5``, also written every
``publish.checkpoint_cadence_s`` during a run). At its start ``serve`` looks for the containers
it owns (``service`` in their metadata: the same host and data directory, another process
that is no longer alive) in either state, and completes each (:func:`recover_unfinished`):

- **from its checkpoint**, when there is one: the engine restored, the frames of the raw run
  the checkpoint lacks added (matched by position, the checkpoint's orientation correction
  applied), then the profile's ``engine.final_epochs`` passes, as the live run would have run;
- **from scratch** otherwise (or when the checkpoint does not fit the profile): the raw run
  read from Tiled, pre-processed and reconstructed with ``max(100, final_epochs)`` passes
  (:data:`SCRATCH_EPOCHS` is ``ptystream reprocess``'s default).

The result goes into the same container. Its status is the raw run's outcome (``finished``
for a run that stopped with success, every frame of the raw run used; ``incomplete`` without
a raw run or its stop), with ``recovered: {from, at, frames, passes, previous_status, by}``
and a line in ``reason``. A lease in the container's metadata (:class:`~ptystream.store.lease.
Lease`) keeps two services from completing one run twice. The passes wait while ``busy()``
(a live run is open): new runs go first. A recovery that fails is recorded
(``recovery_failed``) and not tried again; ``ptystream reprocess`` then completes the run.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptystream.config import Profile
from ptystream.engine import EngineSetup, make_engine, prepare
from ptystream.engine.checkpoint import EngineState, read_state
from ptystream.engine.orientation import OrientationCheck
from ptystream.offline.reconstruct import preprocess_scan, reconstruct_scan
from ptystream.store.layout import PROCESSED_PATH, RAW_KEY, exists, node_at, now
from ptystream.store.lease import Lease
from ptystream.store.publisher import TiledPublisher
from ptystream.store.raw import RawRun
from ptystream.store.runs import RunData, read_run
from ptystream.types import Estimate, Geometry, ScanPlan

__all__ = [
    "SCRATCH_EPOCHS",
    "Outcome",
    "Unfinished",
    "find_unfinished",
    "matched",
    "new_instance",
    "owner_record",
    "recover_run",
    "recover_unfinished",
]

logger = logging.getLogger(__name__)

#: The statuses of a run a restarted service completes.
RECOVERABLE = ("running", "incomplete")
#: Passes of a recovery from scratch, at least (``ptystream reprocess``'s default).
SCRATCH_EPOCHS = 100
_STATUS = {"success": "finished", "abort": "aborted", "fail": "failed"}
#: Share of a checkpoint's frames that must be found in the raw run (else positions differ).
_MATCHED = 0.9


class Stopped(Exception):
    """The service is stopping: the recovery gives way (the run is left as it was)."""


class LeaseLost(Exception):
    """Another process took the run's lease (ours lapsed): it completes the run."""


def new_instance() -> str:
    """A name for this process, unique across hosts and restarts: ``host:pid:token``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_record(data_dir: str | Path, instance: str) -> dict[str, Any]:
    """What ``serve`` records as ``service`` in each run container it creates: the host and
    data directory (a restarted service owns the same), the process id and ``instance``."""
    return {
        "host": socket.gethostname(),
        "data_dir": str(Path(data_dir).resolve()),
        "pid": os.getpid(),
        "instance": instance,
    }


@dataclass(frozen=True)
class Unfinished:
    """A run container a restarted service completes."""

    node_path: str
    run_uid: str
    status: str
    checkpoint: Path | None
    """The engine's saved state, if one is on disk."""


def _alive(pid: Any) -> bool:
    """Whether process ``pid`` of this host is a running ``ptystream`` (this process counts as
    not: a service within it that owned the run is gone). Where ``/proc`` tells, a pid reused
    by another program (after a reboot) is not taken for the service."""
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return b"ptystream" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: the pid runs, so assume it is the service


def find_unfinished(root, owner: dict[str, Any], spool_dir: str | Path) -> list[Unfinished]:
    """The run containers under ``processed/ptystream`` that ``owner`` (:func:`owner_record`)
    completes: ``running`` or ``incomplete``, created by a service of the same host and data
    directory whose process is gone, never recovered nor failed to be, and whose final result
    is not waiting in ``spool_dir`` (the spool's upload completes those). Oldest first."""
    from tiled.queries import Eq, In

    path = "/".join(PROCESSED_PATH)
    if not exists(root, path):
        return []
    spool_dir = Path(spool_dir)
    spooled = [p.name for p in spool_dir.glob("*.npz")] if spool_dir.is_dir() else []
    runs = (
        node_at(root, path)
        .search(Eq("service.host", owner["host"]))
        .search(Eq("service.data_dir", owner["data_dir"]))
        .search(In("status", list(RECOVERABLE)))
    )
    found = []
    for key, node in runs.items():
        md = node.metadata
        service = md.get("service") or {}
        uid = md.get("raw_uid") or key
        if service.get("instance") == owner["instance"] or _alive(service.get("pid")):
            continue  # this service's own run, or another live service's
        if md.get("recovered") or md.get("recovery_failed"):
            continue
        if any(name.startswith(uid) for name in spooled):
            logger.info("run %s: its final result is in the spool, to be uploaded", uid)
            continue
        checkpoint = _checkpoint(md, spool_dir, uid)
        found.append(Unfinished(f"{path}/{key}", uid, md["status"], checkpoint))
    return found


def _checkpoint(md: dict[str, Any], spool_dir: Path, uid: str) -> Path | None:
    for candidate in (md.get("checkpoint"), spool_dir / "checkpoints" / f"{uid}.h5"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@dataclass(frozen=True)
class Outcome:
    """What became of one recovery: ``done`` (published), ``summary`` (one line for the
    operator) and the ``recovered`` record written (None when not done)."""

    run_uid: str
    node_path: str
    done: bool
    summary: str
    record: dict[str, Any] | None = None


class _Pacer:
    """Called between passes: waits while a live run is open, renews the lease, and stops
    the recovery when the service stops or the lease is lost."""

    def __init__(self, busy: Callable[[], bool], stopping: threading.Event, lease: Lease):
        self._busy, self._stopping, self._lease = busy, stopping, lease
        self.waited_s = 0.0

    def __call__(self, *_: Any) -> None:
        t0 = time.monotonic()
        while self._busy() and not self._stopping.is_set():
            self._stopping.wait(0.2)
            self._renew()
        self.waited_s += time.monotonic() - t0
        if self._stopping.is_set():
            raise Stopped
        self._renew()

    def _renew(self) -> None:
        if not self._lease.renew():
            raise LeaseLost


def recover_unfinished(
    root,
    profile: Profile,
    owner: dict[str, Any],
    spool_dir: str | Path,
    *,
    busy: Callable[[], bool] = lambda: False,
    stopping: threading.Event | None = None,
    announce: Callable[[str], None] = logger.info,
    **options: Any,
) -> list[Outcome]:
    """Complete every run :func:`find_unfinished` names, one after another (see
    :func:`recover_run` for ``busy``, ``stopping`` and ``options``); ``announce`` gets a line
    per run. Returns what became of each (an error is an outcome, never raised)."""
    stopping = stopping or threading.Event()
    outcomes = []
    for run in find_unfinished(root, owner, spool_dir):
        if stopping.is_set():
            break
        source = "its checkpoint" if run.checkpoint is not None else "the raw run"
        announce(f"ptystream serve: recovering run {run.run_uid} ({run.status}) from {source}")
        try:
            outcome = recover_run(
                root,
                run,
                profile,
                holder=owner["instance"],
                busy=busy,
                stopping=stopping,
                **options,
            )
        except Exception as exc:  # one run's failure never stops the others
            logger.exception("recovery of run %s failed", run.run_uid)
            outcome = Outcome(run.run_uid, run.node_path, False, f"failed: {exc}")
        announce(f"ptystream serve: run {run.run_uid} {outcome.summary}")
        outcomes.append(outcome)
    return outcomes


def recover_run(
    root,
    run: Unfinished,
    profile: Profile,
    *,
    holder: str,
    busy: Callable[[], bool] = lambda: False,
    stopping: threading.Event | None = None,
    scratch_epochs: int = SCRATCH_EPOCHS,
    lease_ttl_s: float = 60.0,
    settle_s: float = 1.0,
) -> Outcome:
    """Complete ``run`` (from its checkpoint, else from the raw run) and publish it into its
    container, holding the container's lease as ``holder``.

    ``busy()`` true (a live run is open) holds the recovery between passes; ``stopping`` set
    ends it between passes, leaving the run as it was (its checkpoint kept). A run another
    process holds the lease of, or completed meanwhile, is left alone (``done`` False). An
    error is raised, and recorded in the container as ``recovery_failed`` (so no later start
    tries again) unless it may pass (Tiled unreachable, an OSError).
    """
    stopping = stopping or threading.Event()
    lease = Lease(root, run.node_path, holder, ttl_s=lease_ttl_s, settle_s=settle_s)
    if not lease.take():
        return Outcome(run.run_uid, run.node_path, False, "is being recovered by another process")
    try:
        md = node_at(root, run.node_path).metadata
        if md.get("status") not in RECOVERABLE or md.get("recovered"):
            return Outcome(run.run_uid, run.node_path, False, "was completed meanwhile")
        pacer = _Pacer(busy, stopping, lease)
        pacer()  # live runs first
        return _recover(root, run, profile, pacer, lease, scratch_epochs)
    except (Stopped, LeaseLost) as exc:
        why = "the service stopped" if isinstance(exc, Stopped) else "another process took it"
        return Outcome(run.run_uid, run.node_path, False, f"not recovered: {why}")
    except Exception as exc:
        if not _transient(exc):  # Tiled or a disk away: the next start tries again
            _record_failure(root, run, holder, exc)
        raise
    finally:
        lease.release()


def _recover(
    root,
    run: Unfinished,
    profile: Profile,
    pacer: _Pacer,
    lease: Lease,
    scratch_epochs: int,
) -> Outcome:
    t0 = time.perf_counter()
    raw = RawRun.find(root, run.run_uid, profile)
    stop = _wait_for_stop(raw, profile.ingest.stop_timeout_s, pacer) if raw else None
    data = read_run(root[RAW_KEY][run.run_uid], profile) if raw is not None else None
    state = read_state(run.checkpoint) if run.checkpoint is not None else None
    if state is None and data is None:
        raise ValueError(f"run {run.run_uid}: no checkpoint and no raw run in Tiled")
    fallback = None
    made = None
    if state is not None:
        try:
            made = _from_checkpoint(state, data, profile, pacer, str(run.checkpoint))
        except ValueError as exc:  # another profile, frame size or positions: from scratch
            if data is None:
                raise
            fallback = f"the checkpoint was not used ({exc})"
            logger.warning("run %s: %s", run.run_uid, fallback)
    if made is None:
        assert data is not None  # checked above: without a checkpoint there is a raw run
        made = _from_scratch(data, profile, pacer, max(scratch_epochs, profile.engine.final_epochs))
    estimate, counts, passes, source = made
    status, reason = _status(stop, data, raw is not None)
    record = {
        "from": source,
        "at": now(),
        "frames": counts,
        "passes": passes,
        "previous_status": run.status,
        "by": lease.holder,
    }
    why = f"recovered after a restart of ptystream serve (was {run.status}) from the {source}"
    extra = {
        "frames": _frames(counts, data),
        "recovered": record,
        "reason": "; ".join(filter(None, (why, reason, fallback))),
        "checkpoint": None,
        "timings_s": {"recovery": time.perf_counter() - t0, "recovery_waited": pacer.waited_s},
    }
    if lease.holder_now() != lease.holder:
        raise LeaseLost
    publisher = TiledPublisher(root)
    publisher.resume(run.run_uid, run.node_path)
    publisher.publish_final(run.run_uid, estimate, status, extra)
    if run.checkpoint is not None:
        run.checkpoint.unlink(missing_ok=True)
    summary = f"recovered from the {source}: {status}, {counts['used']} frames, {passes} passes"
    return Outcome(run.run_uid, run.node_path, True, summary, record)


def _wait_for_stop(raw: RawRun, timeout_s: float, pacer: _Pacer) -> dict[str, Any] | None:
    """The raw run's stop document, waiting up to ``timeout_s`` while the scan goes on."""
    deadline = time.monotonic() + timeout_s
    stop = raw.stop()
    while stop is None and time.monotonic() < deadline:
        pacer()
        time.sleep(1.0)
        stop = raw.stop()
    return stop


def _status(stop: dict[str, Any] | None, data: RunData | None, has_raw: bool) -> tuple[str, str]:
    """The status to publish and what limits it (empty when nothing does)."""
    if not has_raw:
        return "incomplete", "no raw run in Tiled: only the checkpoint's frames"
    if stop is None:
        return "incomplete", "the raw run has no stop document (the scan may not have ended)"
    exit_status = str(stop.get("exit_status") or "incomplete")
    return _STATUS.get(exit_status, exit_status), str(stop.get("reason") or "")


def _frames(counts: dict[str, int], data: RunData | None) -> dict[str, Any]:
    """The ``frames`` record: ``received`` counts every frame of the raw run (read back,
    rejected or not); ``missing`` clears what the interrupted run said was missing."""
    if data is None:
        return {"received": counts["used"], "used": counts["used"], "rejected": {}, "missing": None}
    received = len(data.scan.frames) + sum(data.rejected.values())
    rejected = dict(data.rejected)
    if counts.get("rejected_saturated"):
        rejected["saturated"] = counts["rejected_saturated"]
    return {"received": received, "used": counts["used"], "rejected": rejected, "missing": None}


_Made = tuple[Estimate, dict[str, int], int, str]


def _from_scratch(data: RunData, profile: Profile, pacer: _Pacer, epochs: int) -> _Made:
    scan, done = preprocess_scan(data.scan, profile, dark=data.dark)
    estimate = reconstruct_scan(
        scan,
        profile,
        epochs=epochs,
        progress=pacer,
        positions_from_profile=True,
        input_warnings=tuple(done["warnings"]),
    )
    counts = {
        "raw_run": len(data.scan.frames),
        "from_checkpoint": 0,
        "from_raw_run": len(scan.frames),
        "used": estimate.n_frames,
        "rejected_saturated": done["rejected_saturated"],
    }
    return estimate, counts, epochs, "raw run"


def _from_checkpoint(
    state: EngineState, data: RunData | None, profile: Profile, pacer: _Pacer, source: str
) -> _Made:
    """Restore the engine, add the raw run's frames the state lacks, run the final passes.
    ValueError when the state does not fit the profile, or its positions the raw run's."""
    geometry = Geometry(**state.meta["geometry"])
    held = state.arrays["positions_m"]
    frames: np.ndarray | None = None
    positions: np.ndarray | None = None
    mask = None
    saturated = 0
    if data is not None:
        scan, done = preprocess_scan(data.scan, profile, dark=data.dark)
        saturated, mask = done["rejected_saturated"], scan.valid_pixels
        tolerance = 0.01 * geometry.object_pixel_size_m
        have = matched(scan.positions_m, held, _correction(state), tolerance)
        if have.sum() < _MATCHED * len(held):
            raise ValueError(
                f"{source}: only {int(have.sum())} of its {len(held)} frames are at positions "
                "of the raw run"
            )
        frames, positions = scan.frames[~have], scan.positions_m[~have]
    every = held if positions is None else np.concatenate([held, positions])
    setup = EngineSetup.from_profile(
        profile, geometry=geometry, plan=ScanPlan.covering(every), detector_mask=mask
    )
    prepare(setup.settings)
    engine = make_engine(setup)
    engine.restore(state, source=source)
    engine.warm_up()
    if frames is not None and positions is not None and len(frames):
        # as the live run takes frames: steps that take the new ones first, before the passes
        engine.add_frames(frames, positions)
        engine.step(profile.engine.steps_per_arrival)
        while engine.frames_waiting:
            pacer()
            engine.step(1)
    epochs = profile.engine.final_epochs
    engine.refine(epochs, pacer)
    counts = {
        "raw_run": len(data.scan.frames) if data is not None else 0,
        "from_checkpoint": len(held),
        "from_raw_run": 0 if frames is None else len(frames),
        "used": engine.n_frames,
        "rejected_saturated": saturated,
    }
    return engine.estimate(final=True), counts, epochs, "checkpoint"


def _correction(state: EngineState) -> np.ndarray | None:
    """The orientation correction the saved engine applied to every position."""
    meta = state.meta.get("orientation")
    return OrientationCheck.from_metadata(meta).correction if meta else None


def matched(
    positions_m: np.ndarray,
    held_m: np.ndarray,
    correction: np.ndarray | None,
    tolerance_m: float,
) -> np.ndarray:
    """Which of ``positions_m`` ``(n, 2)`` (a raw run's, metres) an engine already holds:
    each is paired with one unpaired position of ``held_m`` ``(m, 2)`` (as the engine keeps
    them: ``correction`` applied) within ``tolerance_m``; a position visited twice is held
    twice. Returns a boolean ``(n,)``."""
    from scipy.spatial import cKDTree

    wanted = positions_m if correction is None else positions_m @ correction.T
    out = np.zeros(len(wanted), bool)
    if not len(held_m) or not len(wanted):
        return out
    taken = np.zeros(len(held_m), bool)
    for i, near in enumerate(cKDTree(held_m).query_ball_point(wanted, tolerance_m)):
        for j in sorted(near):
            if not taken[j]:
                taken[j] = out[i] = True
                break
    return out


def _transient(exc: Exception) -> bool:
    """An error a later attempt may not meet (Tiled unreachable, a file system away)."""
    import httpx

    return isinstance(exc, (httpx.TransportError, OSError))


def _record_failure(root, run: Unfinished, holder: str, exc: Exception) -> None:
    """Mark the container so no later start tries again (``ptystream reprocess`` can)."""
    try:
        node_at(root, run.node_path).update_metadata(
            {
                "recovery_failed": {
                    "at": now(),
                    "by": holder,
                    "reason": f"{type(exc).__name__}: {exc}",
                }
            }
        )
    except Exception as error:
        logger.warning("run %s: the failed recovery not recorded (%s)", run.run_uid, error)
