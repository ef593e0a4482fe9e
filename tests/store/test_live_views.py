"""What ``live/`` holds for the dashboard besides the four views: the phase with its ramp
removed, the scanned area, the positions used so far and a recent diffraction frame; and the
run's ``latest_reprocess`` while a version runs. Against a real Tiled server."""

from __future__ import annotations

import dataclasses

import numpy as np

from ptystream.io.figures import SCANNED_FRACTION, scanned_area
from ptystream.store.publisher import TiledPublisher, overlays, views
from ptystream.store.versions import create_version, finish_version


def _ramped(estimate, iteration, shape=(40, 56), ramp=(0.3, -0.2)):
    """``estimate(iteration)`` with a phase ramp (rad per pixel, y and x) and its right half
    unscanned."""
    est = estimate(iteration, shape)
    yy, xx = np.indices(shape)
    obj = np.abs(est.object) * np.exp(1j * (0.2 * np.sin(xx / 3) + ramp[0] * yy + ramp[1] * xx))
    illumination = np.ones(shape, np.float32)
    illumination[:, shape[1] // 2 :] = 0.01
    return dataclasses.replace(est, object=obj.astype(np.complex64), illumination=illumination)


def test_views_remove_the_phase_ramp_over_the_scanned_area(estimate):
    est = _ramped(estimate, 3)
    lit = scanned_area(est.illumination)
    assert lit[:, :28].all() and not lit[:, 28:].any()
    flat = np.exp(1j * views(est)["object_phase_ramp_removed"].astype(float))
    dy = np.angle(np.sum((flat[1:] * np.conj(flat[:-1]))[lit[1:] & lit[:-1]]))
    dx = np.angle(np.sum((flat[:, 1:] * np.conj(flat[:, :-1]))[lit[:, 1:] & lit[:, :-1]]))
    assert abs(dy) < 2e-3 and abs(dx) < 2e-3  # of 0.3 and 0.2 rad per pixel
    # the raw phase keeps it
    np.testing.assert_allclose(views(est)["object_phase"], np.angle(est.object), atol=1e-6)


def test_overlays_hold_the_scanned_area_and_the_positions(estimate):
    est = _ramped(estimate, 3)
    shown = overlays(est)
    assert shown["scanned"].dtype == np.uint8
    np.testing.assert_array_equal(shown["scanned"], scanned_area(est.illumination))
    assert shown["positions_m"].dtype == np.float64
    np.testing.assert_array_equal(shown["positions_m"], est.positions_m)
    none_yet = overlays(dataclasses.replace(est, positions_m=np.empty((0, 2))))
    assert "positions_m" not in none_yet


def test_live_holds_positions_scanned_area_and_a_recent_frame(
    tiled_client, publisher, estimate, run_start
):
    path = publisher.begin_run(run_start("views-run"), {})
    live = tiled_client[path]["live"]
    frame = np.arange(16 * 16, dtype=np.float64).reshape(16, 16)
    frame[0, 0] = np.nan
    first = _ramped(estimate, 4)
    publisher.publish_live("views-run", first, {"used": 20}, frame)
    got = live["diffraction"].read()
    assert got.dtype == np.float32 and got[0, 0] == 0 and got[0, 1] == 1 and got[15, 15] == 255
    np.testing.assert_array_equal(live["positions_m"].read(), first.positions_m)
    np.testing.assert_array_equal(live["scanned"].read(), overlays(first)["scanned"])
    np.testing.assert_array_equal(
        live["object_phase_ramp_removed"].read(), views(first)["object_phase_ramp_removed"]
    )
    live.refresh()
    md = live.metadata
    assert md["positions"] == 20 and md["diffraction_shape"] == [16, 16]
    assert md["phase_ramp_removed"] is True and md["scanned_fraction"] == SCANNED_FRACTION

    # more frames: the positions grow; without a frame the last one stays (and is named)
    more = dataclasses.replace(_ramped(estimate, 6), positions_m=np.random.rand(25, 2) * 1e-6)
    publisher.publish_live("views-run", dataclasses.replace(more, n_frames=25))
    live.refresh()
    assert live["positions_m"].read().shape == (25, 2)
    assert live.metadata["positions"] == 25 and live.metadata["diffraction_shape"] == [16, 16]
    assert live["diffraction"].read()[15, 15] == 255

    # a publisher taking the run up again (a spooled result uploaded) keeps naming it
    again = TiledPublisher(tiled_client)
    again.resume("views-run", path)
    again.publish_live("views-run", more)
    live.refresh()
    assert live.metadata["diffraction_shape"] == [16, 16]


def test_a_running_version_is_named_by_its_run(tiled_client, estimate):
    uid = "versioned-run"
    path, _ = create_version(tiled_client, uid, 5, {"kind": "reprocess"})
    run = tiled_client["processed/ptystream"][uid]
    assert run.metadata["latest_reprocess"] == {"version": "v1", "status": "running", "path": path}
    finish_version(tiled_client, path, "failed", {"reason": "test"})
    run.refresh()
    assert run.metadata["latest_reprocess"]["status"] == "failed"


def test_unchanged_overlays_and_frame_are_not_written_again(
    tiled_client, publisher, estimate, run_start
):
    """After the scan the engine refines: positions, scanned area and frame stay the same, and a
    publication is the five views, the loss rows and the metadata (seven requests)."""
    from tiled.client.logger import record_history

    publisher.begin_run(run_start("quiet-run"), {})
    frame = np.ones((16, 16), np.float32)
    publisher.publish_live("quiet-run", _ramped(estimate, 4), None, frame)
    refined = dataclasses.replace(_ramped(estimate, 4), iteration=5)
    refined = dataclasses.replace(refined, loss=estimate(5).loss)
    with record_history() as history:
        publisher.publish_live("quiet-run", refined, None, frame)
    written = [r.url.path.rsplit("/", 1)[-1] for r in history.requests if r.method == "PUT"]
    assert sorted(written) == sorted(views(refined)), written
    assert len(history.requests) == len(views(refined)) + 2
    with record_history() as history:  # a new frame is written
        publisher.publish_live("quiet-run", refined, None, 2 * frame)
    written = [r.url.path.rsplit("/", 1)[-1] for r in history.requests if r.method == "PUT"]
    assert "diffraction" in written and "positions_m" not in written
