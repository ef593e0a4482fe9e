"""What the dashboard shows of one estimate, in a real browser (Debian's chromium, Playwright)
reading a real Tiled server through a real dashboard, on a 1024 × 768 screen: the scan
positions used so far over the object, the unscanned area masked, the phase with its ramp
removed, scale bars, colour bars with tick labels, a recent diffraction pattern on a log scale,
the run's reprocessed versions, and a header and values that neither overlap nor leave the
screen.

The estimate is made by hand (a known phase ramp, positions over the middle of the canvas
only), so every number on the page can be checked against it.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import sync_playwright

from ptystream.dashboard import start_dashboard
from ptystream.io.figures import scanned_area
from ptystream.io.results import illumination_of
from ptystream.store.publisher import TiledPublisher
from ptystream.store.versions import create_version, finish_version, write_final

CHROMIUM = "/usr/bin/chromium"  # `make browser`
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-output" / "dashboard-1024.png"
WAIT_MS = 30_000
VIEWPORT = {"width": 1024, "height": 768}
SHAPE = (64, 96)  # object canvas (y, x)
PIXEL_M = 5e-8
ORIGIN_M = (-1e-6, -2e-6)
RAMP = (0.05, 0.08)  # rad per pixel along y and x, added to the object's phase
PROBE_PX = 16
DIFFRACTION_PX = 64
PEAK_COUNTS = 1e4


def _estimate(estimate):
    """An estimate on SHAPE with a phase ramp, 30 positions over the middle of the canvas (its
    border unscanned) and the illumination they give."""
    yy, xx = np.indices(SHAPE)
    discs = sum(0.6 * (((yy - cy) ** 2 + (xx - cx) ** 2) < 36) for cy, cx in ((28, 40), (36, 56)))
    obj = (0.8 + 0.2 * discs) * np.exp(1j * (discs + RAMP[0] * yy + RAMP[1] * xx))
    g = np.exp(-((np.arange(PROBE_PX) - PROBE_PX / 2 + 0.5) ** 2) / 20)
    probe = np.outer(g, g).astype(np.complex64)
    rows, cols = np.meshgrid(np.arange(22, 47, 5), np.arange(26, 71, 8), indexing="ij")
    centres_px = np.column_stack([rows.ravel(), cols.ravel()]).astype(float)  # 5 x 6 = 30
    positions = np.asarray(ORIGIN_M) + centres_px * PIXEL_M
    illumination = illumination_of(probe, centres_px - PROBE_PX / 2, SHAPE)
    return dataclasses.replace(
        estimate(27, SHAPE, n_frames=len(positions)),
        object=obj.astype(np.complex64),
        probe=probe,
        object_origin_m=ORIGIN_M,
        pixel_size_m=PIXEL_M,
        positions_m=positions,
        illumination=illumination,
    )


def _diffraction():
    """A far-field pattern in counts: a bright centre falling off over four decades."""
    padded = np.zeros((DIFFRACTION_PX, DIFFRACTION_PX), complex)
    padded[:8, :8] = 1.0
    pattern = np.abs(np.fft.fftshift(np.fft.fft2(padded))) ** 2
    return (PEAK_COUNTS * pattern / pattern.max()).astype(np.float32)


def _ramp(phase_or_field, mask):
    """The mean phase step (rad per pixel, along y and x) between neighbouring masked pixels."""
    field = phase_or_field if np.iscomplexobj(phase_or_field) else np.exp(1j * phase_or_field)
    dy = np.angle(np.sum((field[1:] * np.conj(field[:-1]))[mask[1:] & mask[:-1]]))
    dx = np.angle(np.sum((field[:, 1:] * np.conj(field[:, :-1]))[mask[:, 1:] & mask[:, :-1]]))
    return dy, dx


@pytest.fixture(scope="module")
def shown(tiled_server, tiled_client, estimate, run_start):
    """One run (estimate, diffraction pattern, two reprocessed versions) and a 1024 × 768 page
    showing it."""
    publisher = TiledPublisher(tiled_client)
    uid = str(uuid.uuid4())
    publisher.begin_run(run_start(uid, scan_id=9021), {})
    est = _estimate(estimate)
    publisher.publish_live(uid, est, {"received": 30, "used": 30}, _diffraction())
    publisher.mark(uid, "finished", {"frames": {"received": 30, "used": 30}})
    path, node = create_version(tiled_client, uid, 9021, {"kind": "reprocess"})
    write_final(node, dataclasses.replace(est, final=True))
    finish_version(tiled_client, path, "finished", {"iterations": 300, "final_loss": 1.5e-3})
    create_version(tiled_client, uid, 9021, {"kind": "reprocess"})  # v2, still running
    with start_dashboard(tiled_server.uri) as dashboard, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        urls, errors = [], []
        page.on("request", lambda request: urls.append(request.url))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(dashboard.url)
        page.locator(f'#runs li[data-key="{uid}"] button').click()
        page.wait_for_function(
            "([key, n]) => window.ptystream.runKey === key && window.ptystream.iteration === n"
            " && document.getElementById('diffraction').dataset.drawn === 'true'",
            arg=[uid, est.iteration],
            timeout=WAIT_MS,
        )
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOT, full_page=True)
        yield {
            "page": page,
            "uid": uid,
            "estimate": est,
            "live": tiled_client[publisher.node_path(uid)]["live"],
            "urls": urls,
            "errors": errors,
        }
        browser.close()


def _box(page, selector):
    return page.locator(selector).bounding_box()


def _overlap(a, b):
    """Area shared by two bounding boxes."""
    w = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    return max(0.0, w) * max(0.0, h)


def _inside(inner, outer, slack=0.5):
    return (
        inner["x"] >= outer["x"] - slack
        and inner["y"] >= outer["y"] - slack
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack
    )


def test_positions_used_so_far_are_drawn_over_the_object(shown):
    page, est = shown["page"], shown["estimate"]
    overlay = page.locator("#obj-amp-positions")
    assert int(overlay.get_attribute("data-points")) == est.n_frames == 30
    assert shown["live"].metadata["frames"]["used"] == 30
    np.testing.assert_array_equal(shown["live"]["positions_m"].read(), est.positions_m)
    # the overlay covers the image and has orange dots on it
    assert _overlap(_box(page, "#obj-amp-positions"), _box(page, "#obj-amp")) > 0
    orange = page.evaluate(
        """() => {
            const c = document.getElementById("obj-amp-positions");
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i] > 200 && d[i + 1] > 120 && d[i + 2] < 80 && d[i + 3] > 200) n++;
            }
            return n;
        }"""
    )
    assert orange >= 30


def test_the_unscanned_area_is_masked(shown):
    page, est = shown["page"], shown["estimate"]
    scanned = shown["live"]["scanned"].read()
    assert scanned.dtype == np.uint8
    np.testing.assert_array_equal(scanned.astype(bool), scanned_area(est.illumination))
    unscanned = int((scanned == 0).sum())
    assert 0 < unscanned < scanned.size
    for element_id in ("obj-amp", "obj-phase"):
        assert int(page.locator(f"#{element_id}").get_attribute("data-masked")) == unscanned
        assert "not scanned (grey)" in page.locator(f"#{element_id}-extent").text_content()
    corner = page.evaluate(
        "() => [...document.getElementById('obj-phase').getContext('2d')"
        ".getImageData(0, 0, 1, 1).data]"
    )
    assert corner == [58, 58, 58, 255]  # pixel [0, 0] was never lit


def test_the_phase_is_shown_with_its_ramp_removed(shown):
    page = shown["page"]
    live = shown["live"]
    lit = live["scanned"].read().astype(bool)
    raw = live["object_phase"].read()
    flat = live["object_phase_ramp_removed"].read()
    assert flat.dtype == np.float32 and flat.shape == SHAPE
    np.testing.assert_allclose(_ramp(raw, lit), RAMP, atol=0.01)  # what there was to remove
    assert np.abs(_ramp(flat, lit)).max() < 1e-3
    # no plane left either (least squares over the scanned area, no wrap in the flat phase)
    yy, xx = np.nonzero(lit)
    a = np.column_stack([yy, xx, np.ones_like(yy)]).astype(float)
    slope = np.linalg.lstsq(a, flat[lit].astype(float), rcond=None)[0][:2]
    assert np.abs(slope).max() < 5e-3, slope
    assert page.locator("#obj-phase-ramp").is_visible()
    assert any("/object_phase_ramp_removed" in url for url in shown["urls"])
    assert not any(re.search(r"/live/object_phase\?", url) for url in shown["urls"])


def test_scale_bars_match_the_pixel_size(shown):
    page = shown["page"]
    units = {"nm": 1e-9, "µm": 1e-6, "mm": 1e-3}
    for element_id, width_px in (
        ("obj-amp", SHAPE[1]),
        ("obj-phase", SHAPE[1]),
        ("probe-amp", PROBE_PX),
    ):
        bar = page.locator(f"#{element_id}-scalebar")
        assert bar.is_visible(), element_id
        bar_px = float(bar.get_attribute("data-bar-px"))
        length_m = float(bar.get_attribute("data-length-m"))
        assert length_m == pytest.approx(bar_px * PIXEL_M, rel=1e-9)
        value, unit = bar.locator(".scalebar-label").text_content().split()
        assert float(value) * units[unit] == pytest.approx(length_m, rel=1e-6)
        assert float(value) in (1, 2, 5, 10, 20, 50, 100, 200, 500)
        assert 0.12 * width_px <= bar_px <= 0.25 * width_px
        # drawn as long as bar_px image pixels are shown (object-fit: contain)
        image = _box(page, f"#{element_id}")
        shape = SHAPE if element_id.startswith("obj") else (PROBE_PX, PROBE_PX)
        scale = min(image["width"] / shape[1], image["height"] / shape[0])
        line = _box(page, f"#{element_id}-scalebar .scalebar-line")
        assert line["width"] == pytest.approx(bar_px * scale, abs=1.0)
        assert _inside(line, image)


def test_colour_bars_have_tick_labels(shown):
    page = shown["page"]
    for element_id in ("obj-amp", "obj-phase", "probe-amp", "probe-phase", "diffraction"):
        labels = page.locator(f"#{element_id}-ticks span")
        texts = labels.all_text_contents()
        assert len(texts) >= 2 and all(texts), (element_id, texts)
        bar = _box(page, f"#{element_id}-cbar")
        figure = _box(page, f"figure:has(#{element_id})")
        shown_boxes = [
            _box(page, f"#{element_id}-ticks span >> nth={i}")
            for i in range(len(texts))
            if labels.nth(i).evaluate("e => getComputedStyle(e).visibility") == "visible"
        ]
        assert len(shown_boxes) >= 2, element_id
        for box in shown_boxes:
            assert (
                box["x"] >= bar["x"] - 1 and box["x"] + box["width"] <= bar["x"] + bar["width"] + 1
            )
            assert _inside(box, figure), element_id
        for a, b in zip(shown_boxes, shown_boxes[1:], strict=False):
            assert _overlap(a, b) == 0, (element_id, texts)
    # numbers: linear ticks lie inside the amplitude's colour range
    lo, hi = re.findall(r"[-\d.e+]+", page.locator("#obj-amp-range").text_content())[:2]
    for text in page.locator("#obj-amp-ticks span").all_text_contents():
        assert float(lo) - 1e-9 <= float(text.replace("−", "-")) <= float(hi) + 1e-9


def test_a_recent_diffraction_pattern_on_a_log_scale(shown):
    page = shown["page"]
    np.testing.assert_array_equal(shown["live"]["diffraction"].read(), _diffraction())
    assert shown["live"].metadata["diffraction_shape"] == [DIFFRACTION_PX, DIFFRACTION_PX]
    picture = page.evaluate(
        """() => {
            const c = document.getElementById("diffraction");
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            const colours = new Set();
            for (let i = 0; i < d.length; i += 4) {
                colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
            }
            return {width: c.width, height: c.height, colours: colours.size};
        }"""
    )
    assert picture["width"] == picture["height"] == DIFFRACTION_PX
    assert picture["colours"] > 20  # on a linear scale all but a few pixels would be one colour
    assert page.locator("#diffraction-range").text_content().endswith("counts (log)")
    ticks = page.locator("#diffraction-ticks span").all_text_contents()
    assert set(ticks) <= {"0", "1", "10", "100", "1000", "1e4"} and "1e4" in ticks


def test_reprocessed_versions_are_listed_with_their_run(shown):
    page = shown["page"]
    versions = page.locator(f'#runs li[data-key="{shown["uid"]}"] .versions li')
    versions.nth(1).wait_for(timeout=WAIT_MS)
    assert [v.get_attribute("data-version") for v in versions.all()] == ["v1", "v2"]
    assert [v.get_attribute("data-status") for v in versions.all()] == ["finished", "running"]
    first = versions.nth(0).text_content()
    assert "reprocessed v1" in first and "300 it" in first and "loss 1.50e-3" in first


def test_nothing_overlaps_or_leaves_a_1024_px_screen(shown):
    page = shown["page"]
    width = VIEWPORT["width"]
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    header = [
        "header h1",
        "#scan-id",
        "#run-uid",
        "#status",
        "#profile",
        "#timing",
        "#conn",
        "#follow",
    ]
    boxes = {s: _box(page, s) for s in header}
    boxes = {s: b for s, b in boxes.items() if b and b["width"] > 0}
    assert len(boxes) == len(header), boxes  # all shown (a finished run: profile, timing)
    for s, box in boxes.items():
        assert 0 <= box["x"] and box["x"] + box["width"] <= width, (s, box)
    names = list(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert _overlap(boxes[a], boxes[b]) == 0, (a, b, boxes[a], boxes[b])
    # images, colour bars, value texts: inside the screen's width and their panel
    for element_id in ("obj-amp", "obj-phase", "probe-amp", "probe-phase", "diffraction"):
        figure = _box(page, f"figure:has(#{element_id})")
        assert 0 <= figure["x"] and figure["x"] + figure["width"] <= width, element_id
        for part in (
            f"#{element_id}",
            f"#{element_id}-cbar",
            f"#{element_id}-range",
            f"#{element_id}-extent",
        ):
            box = _box(page, part)
            assert box and box["width"] > 0 and _inside(box, figure), part
    # the big numbers are not cut (no ellipsis)
    cut = page.evaluate(
        "() => [...document.querySelectorAll('.big')]"
        ".filter((e) => e.scrollWidth > e.clientWidth + 1).map((e) => e.textContent)"
    )
    assert cut == []
    assert shown["errors"] == []
