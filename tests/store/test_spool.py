"""Results kept on disk (the spool) and uploaded into Tiled later, against real Tiled servers.

Estimates here are made by hand (the ``estimate`` fixture); the test at the end runs the real
engine and a real RunEngine with the server going away and coming back.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from ptystream.store.publisher import TiledPublisher, run_metadata
from ptystream.store.spool import load_spooled, spool_final, spooled_files


def test_spooled_result_is_uploaded_into_the_live_container(
    tiled_client, publisher, tmp_path, estimate, run_start
):
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


def test_spooled_result_without_a_container_gets_one(tiled_client, tmp_path, estimate, run_start):
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
    tiled_client, tmp_path, monkeypatch, estimate, keep
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


def test_a_non_finite_kept_result_is_marked_failed_once(tiled_client, tmp_path, estimate, keep):
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


def test_a_spool_in_use_by_another_process_is_left_alone(tiled_client, tmp_path, estimate, keep):
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


def test_flush_with_the_server_down_keeps_everything(tmp_path, estimate, keep):
    from ptystream.store.server import start_embedded_server

    server = start_embedded_server(tmp_path / "tiled")
    publisher = TiledPublisher.from_uri(server.uri)
    for uid in ("a-run", "b-run"):
        keep(tmp_path / "spool", uid, estimate(3, final=True))
    server.close()
    outcomes = publisher.flush(tmp_path / "spool")
    assert len(outcomes) == 1 and outcomes[0].error  # stops at the first refusal
    assert len(spooled_files(tmp_path / "spool")) == 2


def test_final_kept_while_tiled_is_away_is_uploaded_when_it_returns(
    tmp_path, small_profile, pausing, run_until_paused
):
    """The server goes away mid-run and comes back (same directory, port and key): the final
    result is kept on disk, then uploaded into the run's container by the same pipeline as soon
    as Tiled takes a write again (here: the next run's creation)."""
    from bluesky import RunEngine

    from ptystream.live.callback import PtychoCallback
    from ptystream.live.pipeline import LivePipeline
    from ptystream.sim.scan import build_simulation
    from ptystream.store.server import start_embedded_server

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
