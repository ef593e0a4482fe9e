"""The Tiled layout, live push and the results kept on disk, against real Tiled servers.

Estimates here are made by hand (exact values to check); the pipeline test at the end runs the
real engine and a real RunEngine with the server going away and coming back.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ptystream.store.publisher import NonFiniteEstimate, TiledPublisher, run_metadata, views
from ptystream.store.spool import load_spooled, spool_final, spooled_files
from ptystream.types import Estimate, Geometry, RunStart, ScanPlan


def estimate(iteration: int, shape=(48, 48), *, n_frames=20, final=False, seed=None) -> Estimate:
    """An estimate whose values are known: random object, fixed probe, loss 1/(i+1)."""
    rng = np.random.default_rng(iteration if seed is None else seed)
    obj = (rng.random(shape) + 0.1) * np.exp(1j * (rng.random(shape) - 0.5))
    probe = np.outer(np.hanning(16), np.hanning(16)) * np.exp(0.3j)
    loss = np.array([[i, 1.0 / (i + 1)] for i in range(1, iteration + 1)], dtype=float)
    return Estimate(
        object=obj.astype(np.complex64),
        probe=probe.astype(np.complex64),
        object_origin_m=(-1e-6, -2e-6),
        pixel_size_m=5e-8,
        positions_m=rng.random((n_frames, 2)) * 1e-6,
        illumination=np.ones(shape, np.float32),
        iteration=iteration,
        n_frames=n_frames,
        loss=loss.reshape(-1, 2),
        final=final,
    )


def run_start(uid: str, scan_id: int = 7) -> RunStart:
    return RunStart(
        uid, Geometry(1e-10, 2.0, 75e-6, 16), ScanPlan(100, None), scan_id=scan_id, profile="demo"
    )


def keep(directory, uid, est, node_path=None, status="finished"):
    """Keep ``est`` in the spool ``directory`` as the pipeline would for run ``uid``."""
    return spool_final(
        directory,
        uid,
        est,
        status=status,
        extra={"frames": {"received": 20, "used": 20}},
        run_metadata=run_metadata(run_start(uid), {}),
        node_path=node_path,
    )


@pytest.fixture
def publisher(tiled_client):
    return TiledPublisher(tiled_client)


def test_run_container_metadata(tiled_client, publisher):
    path = publisher.begin_run(run_start("meta-run", scan_id=12), {"learning_rate": 0.1})
    assert path == "processed/ptystream/meta-run"
    md = tiled_client[path].metadata
    assert md["raw_uid"] == "meta-run" and md["scan_id"] == 12 and md["profile"] == "demo"
    assert md["status"] == "running" and md["engine"] == {"learning_rate": 0.1}
    assert md["geometry"]["wavelength_m"] == 1e-10 and md["plan"]["n_points"] == 100
    assert md["version"] and md["timings"]["started_at"]
    # a second reconstruction of the same run gets its own container
    assert publisher.begin_run(run_start("meta-run"), {}) == "processed/ptystream/meta-run-2"


def test_live_views_overwritten_in_place_and_loss_appended(tiled_client, publisher):
    path = publisher.begin_run(run_start("live-run"), {})
    live = tiled_client[path]["live"]
    for i in (3, 5, 9):
        est = estimate(i)
        publisher.publish_live("live-run", est, {"received": 25, "used": 20})
        for key, expected in views(est).items():
            got = live[key].read()
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected)
    live.refresh()
    md = live.metadata
    assert md["sequence"] == 3 and md["iteration"] == 9 and md["final"] is False
    assert md["frames"] == {"received": 25, "used": 20, "waiting": 0}
    assert md["planned"] == 100 and md["object_shape"] == [48, 48]
    assert md["loss"] == pytest.approx(0.1)
    # every loss row once, in order, although each estimate carries the whole history
    table = live["loss"].read()
    assert list(table["iteration"]) == list(range(1, 10))
    np.testing.assert_allclose(table["loss"], [1 / (i + 1) for i in range(1, 10)])


def test_canvas_growth_replaces_the_array(tiled_client, publisher):
    path = publisher.begin_run(run_start("grow-run"), {})
    publisher.publish_live("grow-run", estimate(2, (48, 48)))
    publisher.publish_live("grow-run", estimate(4, (64, 80)))
    live = tiled_client[path]["live"]
    assert live["object_phase"].read().shape == (64, 80)
    assert live.metadata["object_shape"] == [64, 80]


def test_non_finite_estimates_are_never_published(tiled_client, publisher):
    path = publisher.begin_run(run_start("nan-run"), {})
    good = estimate(2)
    publisher.publish_live("nan-run", good)
    bad = estimate(3)
    bad.object[5, 5] = np.nan
    with pytest.raises(NonFiniteEstimate, match="iteration 3"):
        publisher.publish_live("nan-run", bad)
    with pytest.raises(NonFiniteEstimate):
        publisher.publish_final("nan-run", bad, "finished", {})
    live = tiled_client[path]["live"]
    np.testing.assert_array_equal(live["object_amplitude"].read(), views(good)["object_amplitude"])
    assert live.metadata["sequence"] == 1
    assert "final" not in tiled_client[path]


def test_mixed_state_probe_views():
    est = estimate(1)
    modes = np.stack([est.probe, 0.5j * est.probe])
    shown = views(Estimate(**{**est.__dict__, "probe": modes}))
    np.testing.assert_allclose(shown["probe_amplitude"], np.sqrt(1.25) * np.abs(est.probe))
    np.testing.assert_allclose(shown["probe_phase"], np.angle(est.probe), atol=1e-6)


def test_final_layout(tiled_client, publisher):
    path = publisher.begin_run(run_start("final-run"), {})
    publisher.publish_live("final-run", estimate(4))
    est = estimate(10, final=True)
    frames = {"received": 21, "used": 20, "rejected": {"not finite": 1}}
    publisher.publish_final("final-run", est, "finished", {"frames": frames})
    node = tiled_client[path]
    final = node["final"]
    np.testing.assert_array_equal(final["object"].read(), est.object)
    assert final["object"].read().dtype == np.complex64
    np.testing.assert_array_equal(final["probe"].read(), est.probe)
    np.testing.assert_array_equal(final["positions_m"].read(), est.positions_m)
    assert list(final["loss"].read()["iteration"]) == list(range(1, 11))
    md = node.metadata
    assert md["status"] == "finished" and md["iterations"] == 10
    assert md["frames"] == frames
    assert md["timings"]["finished_at"] > md["timings"]["started_at"]
    # live/ shows the final result and the loss table holds the whole history once
    assert node["live"].metadata["final"] is True
    assert list(node["live"]["loss"].read()["iteration"]) == list(range(1, 11))


def test_live_updates_are_pushed_to_websocket_subscribers(tiled_client, tiled_server):
    """A subscriber of the run's container is told of each publication (no polling)."""
    from tiled.client import from_uri

    publisher = TiledPublisher(tiled_client)
    path = publisher.begin_run(run_start("push-run"), {})
    received, arrived = [], threading.Event()

    def on_update(update):  # kept referenced: tiled's registry holds weak references
        if update.key == "live":
            received.append(update.metadata["sequence"])
            if len(received) == 4:
                arrived.set()

    sub = from_uri(tiled_server.uri)[path].subscribe()
    sub.child_metadata_updated.add_callback(on_update)
    sub.start_in_thread(max_size=64_000_000)
    try:
        for i in range(1, 5):
            publisher.publish_live("push-run", estimate(i, (300, 300)))
        assert arrived.wait(20), f"pushed: {received}"
    finally:
        sub.disconnect()
    assert received == [1, 2, 3, 4]


def test_spooled_result_is_uploaded_into_the_live_container(tiled_client, publisher, tmp_path):
    start = run_start("spool-run")
    path = publisher.begin_run(start, {"learning_rate": 0.1})
    publisher.publish_live("spool-run", estimate(3))
    est = estimate(12, final=True)
    extra = {"frames": {"received": 20, "used": 20}, "timings_s": {"scan": 1.5}}
    kept = spool_final(
        tmp_path,
        "spool-run",
        est,
        status="finished",
        extra=extra,
        run_metadata=run_metadata(start, {}),
        node_path=path,
    )
    loaded, spooled = load_spooled(kept)
    np.testing.assert_array_equal(loaded.object, est.object)
    np.testing.assert_array_equal(loaded.loss, est.loss)
    assert spooled["status"] == "finished" and spooled["extra"] == extra

    outcomes = TiledPublisher(tiled_client).flush(tmp_path)  # a new process would start afresh
    assert [(o.node_path, o.error) for o in outcomes] == [(path, None)]
    assert spooled_files(tmp_path) == []
    node = tiled_client[path]
    assert node.metadata["status"] == "finished" and node.metadata["frames"]["used"] == 20
    assert "uploaded_from_spool_at" in node.metadata
    np.testing.assert_array_equal(node["final"]["object"].read(), est.object)
    assert list(node["live"]["loss"].read()["iteration"]) == list(range(1, 13))


def test_spooled_result_without_a_container_gets_one(tiled_client, tmp_path):
    start = run_start("never-begun", scan_id=31)
    est = estimate(6, final=True)
    spool_final(
        tmp_path,
        "never-begun",
        est,
        status="aborted",
        extra={"frames": {"received": 20, "used": 20}},
        run_metadata=run_metadata(start, {"learning_rate": 0.2}),
        node_path=None,
    )
    spool_final(
        tmp_path,
        "no-estimate",
        None,
        status="failed",
        extra={"reason": "RuntimeError: beam lost"},
        run_metadata=run_metadata(run_start("no-estimate"), {}),
        node_path=None,
    )
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    outcomes = {o.path.name: o for o in TiledPublisher(tiled_client).flush(tmp_path)}
    assert "unreadable" in outcomes["broken.npz"].error
    node = tiled_client[outcomes["never-begun.npz"].node_path]
    assert node.metadata["scan_id"] == 31 and node.metadata["status"] == "aborted"
    assert node.metadata["engine"] == {"learning_rate": 0.2}
    np.testing.assert_array_equal(node["final"]["object"].read(), est.object)
    failed = tiled_client[outcomes["no-estimate.npz"].node_path]
    assert failed.metadata["status"] == "failed" and "beam lost" in failed.metadata["reason"]
    assert spooled_files(tmp_path) == []  # the unreadable one is set aside for a person
    assert (tmp_path / "broken.npz.unreadable").read_bytes() == b"not a zip file"


def test_an_upload_failing_halfway_is_completed_in_the_same_container(
    tiled_client, tmp_path, monkeypatch
):
    """Tiled refuses the final write once (a fault injected into the real client call, since
    a server cannot be made to fail one request on demand): the container created for the
    result is recorded in the file, and the next flush completes it instead of making another."""
    est = estimate(8, final=True)
    keep(tmp_path, "halfway-run", est)
    real = TiledPublisher.publish_final
    calls = []

    def refuse_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("HTTP 500 from Tiled")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TiledPublisher, "publish_final", refuse_once)
    first = TiledPublisher(tiled_client).flush(tmp_path)
    assert first[0].node_path is None and "HTTP 500" in first[0].error
    (kept,) = spooled_files(tmp_path)
    assert load_spooled(kept)[1]["node_path"] == "processed/ptystream/halfway-run"
    second = TiledPublisher(tiled_client).flush(tmp_path)
    assert [o.node_path for o in second] == ["processed/ptystream/halfway-run"]
    assert "halfway-run-2" not in tiled_client["processed/ptystream"]
    node = tiled_client["processed/ptystream/halfway-run"]
    assert node.metadata["status"] == "finished"
    np.testing.assert_array_equal(node["final"]["object"].read(), est.object)


def test_a_non_finite_kept_result_is_marked_failed_once(tiled_client, tmp_path):
    bad = estimate(6, final=True)
    bad.object[3, 3] = np.inf
    keep(tmp_path, "inf-run", bad)
    for _ in range(2):
        TiledPublisher(tiled_client).flush(tmp_path)
    node = tiled_client["processed/ptystream/inf-run"]
    assert node.metadata["status"] == "failed"
    assert node.metadata["reason"] == "final estimate at iteration 6 not finite"
    assert "final" not in node and "inf-run-2" not in tiled_client["processed/ptystream"]
    assert spooled_files(tmp_path) == []


def test_a_spool_in_use_by_another_process_is_left_alone(tiled_client, tmp_path):
    from ptystream.store.spool import SpoolBusy, spool_lock

    keep(tmp_path, "busy-run", estimate(2, final=True))
    holder = subprocess.Popen(  # another process holding the spool's lock
        [
            sys.executable,
            "-c",
            "import sys, time; from ptystream.store.spool import spool_lock\n"
            f"with spool_lock({str(tmp_path)!r}):\n print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(SpoolBusy, match="in use by another process"):
            TiledPublisher(tiled_client).flush(tmp_path, wait=False)
        assert len(spooled_files(tmp_path)) == 1
    finally:
        holder.kill()
        holder.wait()
    with spool_lock(tmp_path, wait=False):
        pass  # released with its holder
    assert TiledPublisher(tiled_client).flush(tmp_path)[0].node_path.endswith("busy-run")


def test_live_publishing_recovers_from_a_failed_canvas_growth(tiled_client, publisher):
    """The write of the grown array fails once (a fault injected into the real client, as
    above): the handle of the deleted array is dropped, so the next publication succeeds."""
    path = publisher.begin_run(run_start("regrow-run"), {})
    publisher.publish_live("regrow-run", estimate(2, (48, 48)))
    live = publisher._runs["regrow-run"].live
    real, calls = live.write_array, []

    def fail_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("connection reset")
        return real(*args, **kwargs)

    live.write_array = fail_once
    with pytest.raises(RuntimeError, match="connection reset"):
        publisher.publish_live("regrow-run", estimate(4, (64, 64)))
    publisher.publish_live("regrow-run", estimate(6, (64, 64)))
    node = tiled_client[path]["live"]
    np.testing.assert_array_equal(
        node["object_amplitude"].read(), views(estimate(6, (64, 64)))["object_amplitude"]
    )


def test_flush_with_the_server_down_keeps_everything(tmp_path):
    from ptystream.store.server import start_embedded_server

    server = start_embedded_server(tmp_path / "tiled")
    publisher = TiledPublisher.from_uri(server.uri)
    for uid in ("a-run", "b-run"):
        keep(tmp_path / "spool", uid, estimate(3, final=True))
    server.close()
    outcomes = publisher.flush(tmp_path / "spool")
    assert len(outcomes) == 1 and outcomes[0].error  # stops at the first refusal
    assert len(spooled_files(tmp_path / "spool")) == 2


def test_final_kept_while_tiled_is_away_is_uploaded_when_it_returns(tmp_path):
    """The server goes away mid-run and comes back (same directory, port and key): the final
    result is kept on disk, then uploaded into the run's container by the same pipeline as soon
    as Tiled takes a write again (here: the next run's creation)."""
    from bluesky import RunEngine

    from ptystream.live.callback import PtychoCallback
    from ptystream.live.pipeline import LivePipeline
    from ptystream.sim.scan import build_simulation
    from ptystream.store.server import start_embedded_server
    from tests.conftest import small_profile
    from tests.live.test_live_sources import pausing, run_until_paused

    profile = small_profile(photons_per_frame=None, n_points=40, object_px=144)
    profile = profile.model_copy(
        update={
            "publish": profile.publish.model_copy(update={"retries": 1, "retry_backoff_s": 0.05}),
            "engine": profile.engine.model_copy(update={"final_epochs": 10}),
        }
    )
    server = start_embedded_server(tmp_path / "tiled", api_key="secretforthistest")
    port = int(server.uri.split(":")[2].split("/")[0])
    pipeline = LivePipeline(
        profile, TiledPublisher.from_uri(server.uri), spool_dir=tmp_path / "spool"
    ).start()
    RE = RunEngine({})
    RE.subscribe(PtychoCallback(profile, pipeline))
    uid = run_until_paused(RE, pausing(build_simulation(profile).plan(), 20))
    deadline = time.monotonic() + 60
    while pipeline.result(uid).node_path is None and time.monotonic() < deadline:
        time.sleep(0.1)
    node_path = pipeline.result(uid).node_path
    assert node_path == f"processed/ptystream/{uid}"
    server.close()
    RE.resume()
    first = pipeline.wait(uid, timeout=300)
    assert first.status == "finished" and first.spooled is not None
    assert first.spooled.exists()

    server = start_embedded_server(tmp_path / "tiled", api_key="secretforthistest", port=port)
    try:
        (second_uid,) = RE(build_simulation(profile).plan())
        second = pipeline.wait(second_uid, timeout=300)
        pipeline.close()
        assert second.status == "finished" and second.node_path is not None
        assert spooled_files(tmp_path / "spool") == []
        from tiled.client import from_uri

        node = from_uri(server.uri)[node_path]
        assert node.metadata["status"] == "finished"
        assert node.metadata["frames"]["used"] == 40
        np.testing.assert_array_equal(node["final"]["object"].read(), first.final.object)
    finally:
        server.close()
