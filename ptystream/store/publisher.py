"""Estimates to Tiled, in the layout of DESIGN.md. Knows tiled.client and types, nothing else.

::

    <root>/processed/ptystream/<run uid>/   metadata: raw_uid, scan_id, profile, geometry, plan,
                                            engine, version, status, timings, (at the end) frames,
                                            iterations, reason
        live/          metadata: sequence, iteration, loss, frames, planned, shapes, updated_at
        live/object_amplitude, object_phase, probe_amplitude, probe_phase    float32, overwritten
        live/object_phase_ramp_removed   float32, the phase with its linear ramp taken off
        live/scanned   uint8 (H, W), 1 where the probe lit the object (the rest is unscanned)
        live/positions_m   float64 (n, 2), probe positions (y, x) of the frames used so far
        live/diffraction   float32 (N, N), a recent frame in counts, as the engine was given it
        live/loss      appendable table (iteration, loss), grows during the run
        final/object, final/probe (complex64), final/positions_m (float64), final/loss (table)

The float32 amplitude/phase views exist because image renderers cannot decode complex data.
Each is a single chunk (arrays under 100 MB are not chunked), so a reader never sees a torn
image. A live publication writes the arrays, appends the loss rows, then replaces ``live/``'s
metadata: a reader told of a metadata update (Tiled's websockets push it to subscribers of the
run's container) finds the arrays already written. Non-finite estimates are refused. Loss rows
are appended once each, although Tiled may apply an append it reports as failed: after such a
failure the table is read back before the next append (:meth:`TiledPublisher._append_loss`).

A final result Tiled cannot take is kept on disk (:mod:`ptystream.store.spool`) with everything
needed to upload it later (:meth:`TiledPublisher.flush`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptystream import __version__
from ptystream.io.figures import SCANNED_FRACTION
from ptystream.store.layout import (
    PROCESSED_PATH,
    child,
    diffraction_view,
    exists,
    final_arrays,
    final_loss,
    jsonable,
    mark_ended,
    node_at,
    now,
    overlays,
    quality_metadata,
    views,
)
from ptystream.store.spool import (
    UNREADABLE_SUFFIX,
    load_spooled,
    set_node_path,
    spool_lock,
    spooled_files,
)
from ptystream.types import Estimate, RunStart

__all__ = [
    "NonFiniteEstimate",
    "SpooledResult",
    "TiledPublisher",
    "overlays",
    "run_metadata",
    "views",
]

logger = logging.getLogger(__name__)

#: The live loss table's columns.
_LOSS_SCHEMA = (("iteration", "int64"), ("loss", "float64"))


class NonFiniteEstimate(ValueError):
    """An estimate with NaN or infinite values; it is never published."""


def run_metadata(
    start: RunStart, settings: dict[str, Any], owner: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The metadata a run's container is created with (status ``running``); ``geometry`` is
    None while the frame size is not known (it comes from the detector's frames). ``owner``
    (``service``: the host, data directory and process of ``ptystream serve``) lets a restarted
    service recognise the runs it left unfinished (:mod:`ptystream.offline.recover`)."""
    g = start.geometry
    geometry = None
    if g is not None:
        geometry = {
            "wavelength_m": g.wavelength_m,
            "distance_m": g.distance_m,
            "detector_pixel_size_m": g.detector_pixel_size_m,
            "frame_px": g.frame_px,
            "object_pixel_size_m": g.object_pixel_size_m,
        }
    service = {"service": owner} if owner else {}
    return jsonable(
        {
            **service,
            "raw_uid": start.run_uid,
            "scan_id": start.scan_id,
            "profile": start.profile,
            "geometry": geometry,
            "plan": {"n_points": start.plan.n_points, "extent_m": start.plan.extent_m},
            "engine": settings,
            "status": "running",
            "version": __version__,
            "timings": {"started_at": now()},
        }
    )


@dataclass
class _RunNodes:
    """Client handles of one run's nodes, kept so a live publication costs one request per
    array plus two (loss rows, metadata) instead of a lookup per node."""

    node: Any
    live: Any
    planned: int | None = None
    arrays: dict[str, Any] = field(default_factory=dict)
    loss_table: Any = None
    #: The last iteration in the live loss table; None when unknown (an append failed, so Tiled
    #: may or may not have applied it; or the run was resumed): read the table before appending.
    loss_sent_to: float | None = -1.0
    sequence: int = 0
    #: Shape of the ``live/diffraction`` last written (None: none yet).
    diffraction_shape: tuple[int, ...] | None = None
    #: The overlays and diffraction frame last written, by key: not written again unchanged
    #: (after the scan, while the engine refines, they stay the same).
    written: dict[str, np.ndarray] = field(default_factory=dict)


def _loss_columns(rows: np.ndarray) -> dict[str, list]:
    """``(k, 2)`` rows of ``(iteration, loss)`` as the live loss table's columns."""
    return {"iteration": rows[:, 0].astype(np.int64).tolist(), "loss": rows[:, 1].tolist()}


def _new_loss_table(live):
    """Create the (empty) appendable loss table in ``live``; returns its client."""
    import pyarrow as pa

    schema = pa.schema([(name, kind) for name, kind in _LOSS_SCHEMA])
    return live.create_appendable_table(schema, key="loss")


def _reconcile(nodes: _RunNodes, rows: np.ndarray) -> float:
    """Read the live loss table back and return its last iteration, if it is a prefix of
    ``rows`` (the finite history); otherwise (rows repeated by an append Tiled applied after
    reporting an error, or a history the table does not match) replace it by ``rows`` and
    return their last iteration. A missing table is created."""
    held = nodes.loss_table.read() if "loss" in nodes.live else None
    if held is not None:
        n = len(held)
        iterations, values = held["iteration"].to_numpy(), held["loss"].to_numpy()
        prefix = rows[:n]
        if n <= len(rows) and (iterations == prefix[:, 0]).all() and (values == prefix[:, 1]).all():
            return float(prefix[-1, 0]) if n else -1.0
        logger.warning(
            "run container %s: live loss table (%d rows) is not the engine's history (%d rows): "
            "rewritten",
            nodes.node.item["id"],
            n,
            len(rows),
        )
        nodes.live.delete_contents("loss", external_only=False)
    nodes.loss_table = _new_loss_table(nodes.live)
    if len(rows):
        nodes.loss_table.append_partition(0, _loss_columns(rows))
    return float(rows[-1, 0]) if len(rows) else -1.0


@dataclass(frozen=True)
class SpooledResult:
    """What :meth:`TiledPublisher.flush` did with one spooled file."""

    path: Path
    node_path: str | None
    error: str | None = None


class TiledPublisher:
    """Writes one container per reconstructed run under ``processed/ptystream``.

    Calls are synchronous and may raise (server down, wrong key): the pipeline's publisher
    thread owns retries and cadence, so nothing here sleeps.

    Parameters
    ----------
    root : a writable tiled client container (the server's root).
    owner : recorded as ``service`` in the metadata of each run container it creates
        (:func:`run_metadata`); None records none.
    """

    def __init__(self, root, *, owner: dict[str, Any] | None = None):
        self._root = root
        self._owner = owner
        self._processed = None
        self._runs: dict[str, _RunNodes] = {}
        self._created: dict[str, str] = {}  # run uid -> key of a container not yet complete

    @classmethod
    def from_uri(cls, uri: str, *, api_key: str | None = None) -> TiledPublisher:
        """Connect to a Tiled server (see :func:`ptystream.store.access.connect`)."""
        from ptystream.store.access import connect

        return cls(connect(uri, api_key))

    @property
    def root(self):
        """The Tiled node this publisher writes under (its ``raw`` catalog holds the raw runs)."""
        return self._root

    def _processed_node(self):
        if self._processed is None:
            node = self._root
            for key in PROCESSED_PATH:
                node = child(node, key)
            self._processed = node
        return self._processed

    def node_path(self, run_uid: str) -> str:
        """The path under the root of ``run_uid``'s container."""
        return "/".join((*PROCESSED_PATH, self._runs[run_uid].node.item["id"]))

    def begin_run(self, start: RunStart, settings: dict[str, Any]) -> str:
        """Create the run's container (status 'running'); returns its path under the root.

        A second reconstruction of the same run gets the key ``<uid>-2``, ``<uid>-3``, ...
        """
        return self.create_run(start.run_uid, run_metadata(start, settings, self._owner))

    def create_run(self, run_uid: str, metadata: dict[str, Any]) -> str:
        """Create a container for ``run_uid`` with ``metadata``, its ``live/`` container and
        live loss table; returns its path under the root."""
        processed = self._processed_node()
        if run_uid in self._created:  # created by an attempt that failed after it: complete it
            self.resume(run_uid, "/".join((*PROCESSED_PATH, self._created[run_uid])))
        else:
            key, n = run_uid, 1
            while key in processed:
                n += 1
                key = f"{run_uid}-{n}"
            node = processed.create_container(key, metadata=metadata)
            self._created[run_uid] = key
            self._adopt(run_uid, node, metadata)
        del self._created[run_uid]
        return self.node_path(run_uid)

    def _adopt(self, run_uid: str, node, metadata: dict[str, Any]) -> _RunNodes:
        live = child(node, "live")
        planned = (metadata.get("plan") or {}).get("n_points")
        nodes = _RunNodes(node, live, planned=planned)
        # resumed: the sequence goes on where it stopped; the loss table's end is read from it
        # before the next append (``live``'s metadata is written after the rows, so it may lag)
        nodes.sequence = int(live.metadata.get("sequence", 0))
        shape = live.metadata.get("diffraction_shape")
        nodes.diffraction_shape = tuple(shape) if shape else None
        if "loss" in live:
            nodes.loss_table, nodes.loss_sent_to = live["loss"], None
        else:
            try:
                nodes.loss_table = _new_loss_table(live)
            except Exception as exc:  # a server without SQL storage cannot append
                logger.warning("run %s: no live loss table (%s)", run_uid, exc)
        self._runs[run_uid] = nodes
        return nodes

    def publish_live(
        self,
        run_uid: str,
        estimate: Estimate,
        frames: dict[str, Any] | None = None,
        diffraction: np.ndarray | None = None,
    ) -> None:
        """Overwrite ``live/`` with the estimate's views and overlays (and ``diffraction``, a
        recent frame ``(N, N)`` in counts, when given; the last one written stays otherwise),
        append its new loss rows, then replace ``live/``'s metadata (progress, and ``frames``:
        the run's frame accounting)."""
        self._check_finite(estimate)
        nodes = self._runs[run_uid]
        images = views(estimate)
        extras = overlays(estimate)
        if diffraction is not None:
            extras["diffraction"] = diffraction_view(diffraction)
        try:
            for key, array in images.items():
                nodes.arrays[key] = self._overwrite(nodes.live, nodes.arrays.get(key), key, array)
            for key, array in extras.items():
                held = nodes.written.get(key)
                if held is None or held.shape != array.shape or not np.array_equal(held, array):
                    nodes.written.pop(key, None)
                    nodes.arrays[key] = self._overwrite(
                        nodes.live, nodes.arrays.get(key), key, array
                    )
                    nodes.written[key] = array
        except Exception:
            nodes.arrays.clear()  # a handle may name a deleted array: look them up again
            nodes.written.clear()
            raise
        if diffraction is not None:
            nodes.diffraction_shape = extras["diffraction"].shape
        self._append_loss(nodes, estimate.loss)
        nodes.sequence += 1
        frames = dict(frames or {})
        frames.setdefault("used", estimate.n_frames)
        frames["waiting"] = estimate.frames_waiting
        # Tiled merges metadata updates: a gap filled since the last publication is cleared
        frames.setdefault("missing", None)
        nodes.live.update_metadata(
            jsonable(
                {
                    "sequence": nodes.sequence,
                    "iteration": estimate.iteration,
                    "loss": estimate.last_loss if np.isfinite(estimate.last_loss) else None,
                    "frames": frames,
                    "planned": nodes.planned,
                    "final": estimate.final,
                    "object_shape": images["object_amplitude"].shape,
                    "probe_shape": images["probe_amplitude"].shape,
                    # what live/ holds besides the four views (the dashboard reads these)
                    "phase_ramp_removed": True,
                    "scanned_fraction": SCANNED_FRACTION,
                    "positions": len(extras.get("positions_m", ())),
                    "diffraction_shape": nodes.diffraction_shape,
                    "object_origin_m": estimate.object_origin_m,
                    "pixel_size_m": estimate.pixel_size_m,
                    "distance_m": estimate.distance_m if np.isfinite(estimate.distance_m) else None,
                    "slices": estimate.n_slices,
                    "slice_gaps_m": list(estimate.slice_gaps_m),
                    **quality_metadata(estimate),
                    "updated_at": now(),
                }
            ),
            drop_revision=True,
        )

    def _append_loss(self, nodes: _RunNodes, loss: np.ndarray) -> None:
        """Append the rows of ``loss`` (the engine's whole history) that the table lacks.

        Appending is not idempotent: a 500 or a timeout may come after Tiled applied the rows,
        and a retry would add them twice. So when the table's end is unknown (an append failed,
        a resumed run, the end of a run) it is read back first and only the rows beyond it are
        sent; a table that is not a prefix of the history is rewritten (:func:`_reconcile`).
        """
        if nodes.loss_table is None:
            return
        rows = loss[np.isfinite(loss[:, 1])] if len(loss) else np.empty((0, 2))
        if nodes.loss_sent_to is None:
            nodes.loss_sent_to = _reconcile(nodes, rows)
        new = rows[rows[:, 0] > nodes.loss_sent_to]
        if not len(new):
            return
        nodes.loss_sent_to = None  # unknown until Tiled answers
        nodes.loss_table.append_partition(0, _loss_columns(new))
        nodes.loss_sent_to = float(new[-1, 0])

    def publish_final(
        self,
        run_uid: str,
        estimate: Estimate,
        status: str,
        extra: dict[str, Any],
        diffraction: np.ndarray | None = None,
    ) -> None:
        """Write ``final/``, refresh ``live/`` from it (and ``diffraction``, a recent frame,
        when given) and set the run's status and bookkeeping (``extra``: frames, timings_s,
        reason, ...)."""
        self._check_finite(estimate)
        nodes = self._runs[run_uid]
        nodes.loss_sent_to = None  # the live loss table is checked against the whole history
        self.publish_live(run_uid, estimate, extra.get("frames"), diffraction)
        final = child(nodes.node, "final")
        for key, array, md in final_arrays(estimate):
            self._overwrite(final, final[key] if key in final else None, key, array, md)
        if "loss" in final:
            final.delete_contents("loss", external_only=False)
        final.write_table(final_loss(estimate), key="loss")
        self.mark(
            run_uid,
            status,
            {"iterations": estimate.iteration, **quality_metadata(estimate), **extra},
        )

    def mark(self, run_uid: str, status: str, extra: dict[str, Any]) -> None:
        """Set a run's status (and bookkeeping), with its finish time."""
        mark_ended(self._runs[run_uid].node, status, extra)

    def resume(self, run_uid: str, node_path: str) -> None:
        """Take up the existing container at ``node_path`` for ``run_uid`` (e.g. to upload a
        spooled result into the container the live run created)."""
        node = node_at(self._root, node_path)
        self._adopt(run_uid, node, dict(node.metadata))

    # -- results kept on disk -----------------------------------------------------------------

    def upload(self, path: str | Path) -> str:
        """Upload a result kept on disk (:func:`ptystream.store.spool.spool_final`); returns its
        node path and deletes the file once Tiled has all of it.

        The run's container is the one the live run created, if it exists, else a new one,
        whose path is recorded in the file before anything is written into it (a retry after a
        failure completes it). A non-finite estimate is not published: the run is marked
        ``failed`` with the reason. Call with the spool's lock held (:meth:`flush` does).
        """
        path = Path(path)
        estimate, spooled = load_spooled(path)
        run_uid, status = spooled["run_uid"], spooled["status"]
        extra = {**spooled["extra"], "uploaded_from_spool_at": now()}
        if estimate is not None and not estimate.is_finite():
            extra["reason"] = f"final estimate at iteration {estimate.iteration} not finite"
            estimate, status = None, "failed"
        if spooled.get("node_path") and exists(self._root, spooled["node_path"]):
            self.resume(run_uid, spooled["node_path"])
        else:
            set_node_path(path, self.create_run(run_uid, spooled["run_metadata"]))
        if estimate is None:
            self.mark(run_uid, status, extra)
        else:
            self.publish_final(run_uid, estimate, status, extra)
        node_path = self.node_path(run_uid)
        del self._runs[run_uid]
        path.unlink()
        logger.info("run %s: spooled result %s uploaded to %s", run_uid, path, node_path)
        return node_path

    def flush(self, directory: str | Path, *, wait: bool = True) -> list[SpooledResult]:
        """Upload every result kept in ``directory``, oldest first, holding its lock (without
        ``wait``, SpoolBusy if another process holds it).

        A file that cannot be read is reported and renamed ``*.npz.unreadable`` (left for a
        person to look at). When Tiled cannot be reached the flush stops there (the rest would
        fail the same way); a result Tiled refuses is reported and the next one tried. Nothing
        is deleted before Tiled has taken it.
        """
        import httpx

        uploader = TiledPublisher(self._root)  # its own run handles: live runs are untouched
        outcomes = []
        with spool_lock(directory, wait=wait):
            for path in spooled_files(directory):
                try:
                    load_spooled(path)
                except Exception as exc:
                    logger.error("spooled result %s cannot be read (%s): set aside", path, exc)
                    path.rename(path.with_name(path.name + UNREADABLE_SUFFIX))
                    outcomes.append(SpooledResult(path, None, f"unreadable: {exc}"))
                    continue
                try:
                    outcomes.append(SpooledResult(path, uploader.upload(path)))
                except Exception as exc:
                    logger.warning("spooled result %s not uploaded: %s", path, exc)
                    outcomes.append(SpooledResult(path, None, f"{type(exc).__name__}: {exc}"))
                    if isinstance(exc, (httpx.TransportError, OSError)):
                        break
        return outcomes

    @staticmethod
    def _check_finite(estimate: Estimate) -> None:
        if not estimate.is_finite():
            raise NonFiniteEstimate(
                f"estimate at iteration {estimate.iteration} has non-finite values; not published"
            )

    @staticmethod
    def _overwrite(parent, node, key: str, array: np.ndarray, metadata: dict | None = None):
        """Write ``array`` at ``key``: in place when shape and dtype match, else replaced.
        ``node`` is the client of the existing array, if known; returns the current one."""
        if node is None and key in parent:
            node = parent[key]
        if node is not None:
            if tuple(node.shape) == array.shape and node.dtype == array.dtype:
                node.write(array)
                if metadata:
                    node.update_metadata(metadata, drop_revision=True)
                return node
            parent.delete_contents(key, external_only=False)
        return parent.write_array(array, key=key, metadata=metadata or {})
