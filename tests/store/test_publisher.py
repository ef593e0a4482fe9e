"""The Tiled layout and live push of the publisher, against a real Tiled server.

Estimates here are made by hand (the ``estimate`` fixture: exact values to check). Results kept
on disk and uploaded later are in test_spool.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ptystream.store.publisher import NonFiniteEstimate, TiledPublisher, views
from ptystream.types import Estimate


def test_run_container_metadata(tiled_client, publisher, run_start):
    path = publisher.begin_run(run_start("meta-run", scan_id=12), {"learning_rate": 0.1})
    assert path == "processed/ptystream/meta-run"
    md = tiled_client[path].metadata
    assert md["raw_uid"] == "meta-run" and md["scan_id"] == 12 and md["profile"] == "demo"
    assert md["status"] == "running" and md["engine"] == {"learning_rate": 0.1}
    assert md["geometry"]["wavelength_m"] == 1e-10 and md["plan"]["n_points"] == 100
    assert md["version"] and md["timings"]["started_at"]
    # a second reconstruction of the same run gets its own container
    assert publisher.begin_run(run_start("meta-run"), {}) == "processed/ptystream/meta-run-2"


def test_live_views_overwritten_in_place_and_loss_appended(
    tiled_client, publisher, estimate, run_start
):
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
    assert md["frames"] == {"received": 25, "used": 20, "waiting": 0, "missing": None}
    assert md["planned"] == 100 and md["object_shape"] == [48, 48]
    assert md["loss"] == pytest.approx(0.1)
    # every loss row once, in order, although each estimate carries the whole history
    table = live["loss"].read()
    assert list(table["iteration"]) == list(range(1, 10))
    np.testing.assert_allclose(table["loss"], [1 / (i + 1) for i in range(1, 10)])


def test_canvas_growth_replaces_the_array(tiled_client, publisher, estimate, run_start):
    path = publisher.begin_run(run_start("grow-run"), {})
    publisher.publish_live("grow-run", estimate(2, (48, 48)))
    publisher.publish_live("grow-run", estimate(4, (64, 80)))
    live = tiled_client[path]["live"]
    assert live["object_phase"].read().shape == (64, 80)
    assert live.metadata["object_shape"] == [64, 80]


def test_non_finite_estimates_are_never_published(tiled_client, publisher, estimate, run_start):
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


def test_mixed_state_probe_views(estimate):
    est = estimate(1)
    modes = np.stack([est.probe, 0.5j * est.probe])
    shown = views(Estimate(**{**est.__dict__, "probe": modes}))
    np.testing.assert_allclose(shown["probe_amplitude"], np.sqrt(1.25) * np.abs(est.probe))
    np.testing.assert_allclose(shown["probe_phase"], np.angle(est.probe), atol=1e-6)


def test_final_layout(tiled_client, publisher, estimate, run_start):
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


def test_live_updates_are_pushed_to_websocket_subscribers(
    tiled_client, tiled_server, estimate, run_start
):
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


def test_live_publishing_recovers_from_a_failed_canvas_growth(
    tiled_client, publisher, estimate, run_start
):
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
