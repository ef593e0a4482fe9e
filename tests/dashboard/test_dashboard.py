"""The control-room dashboard in a real browser (Debian's chromium, driven by Playwright) while a
real live reconstruction is published to a real Tiled server: the RunEngine scans the simulated
beamline on a background thread, the engine reconstructs, the publisher writes, and the page
reads everything through the dashboard's proxy.

A second Tiled app without a streaming cache serves the same storage (as a facility server
configured without ``streaming_cache`` would): a page behind it must fall back to polling.
"""

import dataclasses
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets.sync.client
from bluesky import RunEngine
from playwright.sync_api import sync_playwright

from ptystream.dashboard import start_dashboard
from ptystream.live.callback import PtychoCallback
from ptystream.live.pipeline import LivePipeline
from ptystream.sim.scan import build_simulation
from ptystream.store.access import split_api_key
from ptystream.store.publisher import TiledPublisher

SCREENSHOT = Path(__file__).resolve().parents[2] / "test-output" / "dashboard.png"
CHROMIUM = "/usr/bin/chromium"  # `make browser`; Playwright's own download is not reachable
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
WAIT_MS = 60_000  # generous: chromium, TensorFlow and two Tiled apps share 2 cores


# -- the watched reconstruction ---------------------------------------------------------------


class Scans:
    """One pipeline (engine warm) and a RunEngine on a background thread, as at a beamline."""

    def __init__(self, client, profile, spool_dir):
        self.profile = profile
        self.pipeline = LivePipeline(profile, TiledPublisher(client), spool_dir=spool_dir).start()
        # No context managers: the SIGINT handler can only be installed on the main thread.
        self.RE = RunEngine({}, context_managers=[])
        self.RE.subscribe(PtychoCallback(profile, self.pipeline))

    def start(self, **sim_overrides):
        """Start a scan on a thread; returns a function giving its run uid once it ended."""
        sim = build_simulation(
            self.profile.model_copy(
                update={"sim": self.profile.sim.model_copy(update=sim_overrides)}
            )
        )
        uids = []
        thread = threading.Thread(target=lambda: uids.extend(self.RE(sim.plan())), daemon=True)
        thread.start()

        def uid():
            thread.join(timeout=120)
            assert len(uids) == 1, "the scan did not end"
            return uids[0]

        return uid


@pytest.fixture(scope="module")
def scans(tiled_client, tmp_path_factory, small_profile):
    # 70 points at 0.15 s: a scan of ~11 s, published every 0.2 s (or as fast as Tiled takes
    # it), for the page to watch several estimates while the scan runs.
    profile = small_profile(photons_per_frame=None, n_points=70, object_px=144, exposure_s=0.15)
    scans = Scans(tiled_client, profile, tmp_path_factory.mktemp("spool"))
    yield scans
    scans.pipeline.close()


@pytest.fixture(scope="module")
def dashboard(tiled_server):
    dashboard = start_dashboard(tiled_server.uri)  # the key arrives in the URI, as from the CLI
    yield dashboard
    dashboard.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Watched:
    """A page and everything it asked for (request and websocket URLs)."""

    def __init__(self, browser, url):
        self.urls = []
        self.errors = []
        self.page = browser.new_page(viewport={"width": 1920, "height": 1080})
        self.page.on("request", lambda request: self.urls.append(request.url))
        self.page.on("websocket", lambda ws: self.urls.append(ws.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(url)

    def state(self):
        return self.page.evaluate("() => ({...window.ptystream})")

    def wait(self, condition, arg=None):
        self.page.wait_for_function(condition, arg=arg, timeout=WAIT_MS)

    def canvas(self, element_id):
        """Size, number of distinct colours and a hash of the pixels drawn on a canvas."""
        return self.page.evaluate(
            """(id) => {
                const c = document.getElementById(id);
                const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                const colours = new Set();
                let hash = 0;
                for (let i = 0; i < d.length; i += 4) {
                    colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
                    hash = (Math.imul(hash, 31) + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) >>> 0;
                }
                return {width: c.width, height: c.height, colours: colours.size, hash};
            }""",
            element_id,
        )

    def number(self, element_id):
        text = self.page.locator(f"#{element_id}").text_content()
        return int(text.replace(",", ""))

    def run_status(self, key):
        return self.page.locator(f'#runs li[data-key="{key}"]').get_attribute("data-status")


@pytest.fixture(scope="module")
def watched(browser, dashboard, scans):
    """The page, opened before any reconstruction exists, then a scan started."""
    watched = Watched(browser, dashboard.url)
    watched.first_scan = scans.start()
    yield watched
    watched.page.close()


def assert_not_blank(picture):
    assert picture["width"] > 1 and picture["height"] > 1, picture
    assert picture["colours"] > 20, picture  # an image, not a flat fill


def test_the_page_follows_a_live_reconstruction(watched, scans):
    w = watched
    w.wait("() => window.ptystream.renders >= 1")
    first = w.state()
    key = first["runKey"]
    assert w.run_status(key) == "running"
    assert w.page.locator("#status").get_attribute("data-status") == "running"
    assert w.page.locator("#conn").get_attribute("data-mode") == "websocket"
    images = {i: w.canvas(i) for i in ("obj-amp", "obj-phase", "probe-amp", "probe-phase")}
    for picture in images.values():
        assert_not_blank(picture)
    frames_first = w.number("frames-used")
    assert 0 < frames_first <= w.number("frames-received")  # counted live, not only at the end

    # Later estimates while the scan still runs: new sequence and iteration, and, once the
    # engine has moved the object by more than the colour map's 8-bit steps, another image
    # (two consecutive estimates can draw the same pixels).
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        w.wait(
            "(first) => document.body.dataset.status === 'running'"
            " && window.ptystream.sequence > first.sequence"
            " && window.ptystream.iteration > first.iteration",
            first,
        )
        later = w.state()
        if w.canvas("obj-amp")["hash"] != images["obj-amp"]["hash"]:
            break
        assert time.monotonic() < deadline, "the object image never changed during the run"
        first = later
    assert later["runKey"] == key and later["renders"] > first["renders"]
    assert w.number("frames-used") >= frames_first
    assert int(w.page.locator("#loss-plot").get_attribute("data-points")) >= 2
    SCREENSHOT.parent.mkdir(exist_ok=True)
    w.page.screenshot(path=SCREENSHOT)
    print(f"\ndashboard screenshot (run in progress): {SCREENSHOT}")

    uid = w.first_scan()
    result = scans.pipeline.wait(uid, timeout=120)
    assert result.status == "finished" and result.node_path.endswith(key)
    w.page.locator(f'#runs li[data-key="{key}"][data-status="finished"]').wait_for(timeout=WAIT_MS)
    # The final refresh of live/ is shown: the iteration the run ended with.
    w.wait("(n) => window.ptystream.iteration === n", result.final.iteration)
    assert w.page.locator("#status").get_attribute("data-status") == "finished"
    assert w.number("frames-used") == w.number("frames-received") == scans.profile.sim.n_points
    assert w.number("frames-used") > frames_first
    assert w.errors == []


def test_clicking_a_run_shows_its_result(watched, scans, tiled_client):
    w = watched
    first_uid = w.first_scan()
    first = scans.pipeline.wait(first_uid, timeout=120)
    second_uid = scans.start(n_points=30, exposure_s=0.0, seed=2)()
    second = scans.pipeline.wait(second_uid, timeout=120)
    assert second.status == "finished"
    # Follow mode moved to the new run and shows its final estimate.
    w.wait(
        "([key, n]) => window.ptystream.runKey === key && window.ptystream.iteration === n",
        [second_uid, second.final.iteration],
    )
    w.page.locator(f'#runs li[data-key="{first_uid}"] button').click()
    w.wait(
        "([key, n]) => window.ptystream.runKey === key && window.ptystream.iteration === n",
        [first_uid, first.final.iteration],
    )
    assert w.page.locator("#follow").get_attribute("data-follow") == "false"
    assert w.page.locator(f'#runs li[data-key="{first_uid}"]').get_attribute("aria-current")
    shape = tiled_client[first.node_path]["final"]["object"].shape
    picture = w.canvas("obj-amp")
    assert (picture["height"], picture["width"]) == tuple(shape)
    assert_not_blank(picture)
    # Back to following: the newest run again.
    w.page.locator("#follow").click()
    w.wait("(key) => window.ptystream.runKey === key", second_uid)


def test_the_api_key_never_reaches_the_browser(watched, tiled_server):
    w = watched
    w.wait("() => window.ptystream.renders >= 1")
    key = tiled_server.api_key
    assert key not in w.page.content()
    assert key not in w.page.evaluate("() => JSON.stringify(window.ptystream)")
    assert any("/api/v1/array/full/" in url for url in w.urls)
    assert any(url.startswith("ws://") for url in w.urls)
    leaked = [url for url in w.urls if key in url]
    assert leaked == []


# -- a multislice reconstruction: the object panels show the product or one slice -----------


def two_slice_object(shape):
    """Slice 1 varies along x only, slice 2 along y only (amplitude and phase), so a picture of
    either has identical rows or identical columns, and one of their product has neither."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    first = (0.6 + 0.3 * np.cos(2 * np.pi * x / 10)) * np.exp(0.8j * np.sin(2 * np.pi * x / 14))
    second = (0.6 + 0.3 * np.sin(2 * np.pi * y / 9)) * np.exp(0.8j * np.cos(2 * np.pi * y / 12))
    return np.stack([first, second]).astype(np.complex64)


def stripes(page, element_id):
    """Whether every row of a canvas is the same as its first row (a picture varying along x
    only), and whether every column is the same as its first column (varying along y only)."""
    return page.evaluate(
        """(id) => {
            const c = document.getElementById(id);
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let rows = true, columns = true;
            for (let y = 0; y < c.height; y++) {
                for (let x = 0; x < c.width; x++) {
                    for (let k = 0; k < 3; k++) {
                        const v = d[4 * (y * c.width + x) + k];
                        if (v !== d[4 * x + k]) rows = false;
                        if (v !== d[4 * y * c.width + k]) columns = false;
                    }
                }
            }
            return {rows, columns};
        }""",
        element_id,
    )


def test_a_multislice_run_shows_product_or_one_slice(
    browser, dashboard, tiled_client, estimate, run_start
):
    shape = (40, 56)
    publisher = TiledPublisher(tiled_client)
    thick, thin = str(uuid.uuid4()), str(uuid.uuid4())
    for uid, scan_id in ((thick, 801), (thin, 802)):
        publisher.begin_run(run_start(uid, scan_id=scan_id), {})
    thick_estimate = dataclasses.replace(
        estimate(31, shape), object=two_slice_object(shape), slice_gaps_m=(600e-6,)
    )
    publisher.publish_live(thick, thick_estimate)
    publisher.publish_live(thin, estimate(32, shape))
    w = Watched(browser, dashboard.url)
    shown = "([key, n, s]) => window.ptystream.runKey === key && window.ptystream.iteration === n"
    shown += " && window.ptystream.slice === s"
    buttons = w.page.locator("#slice-buttons button")

    def pressed():
        return [b.get_attribute("aria-pressed") == "true" for b in buttons.all()]

    try:
        w.page.locator(f'#runs li[data-key="{thick}"] button').click()
        w.wait(shown, [thick, 31, None])
        assert w.page.locator("#slice-picker").is_visible()
        assert buttons.all_text_contents() == ["product", "slice 1", "slice 2"]
        assert pressed() == [True, False, False]
        assert w.page.locator("#slices-note").text_content() == "2 slices, 600 µm apart"
        assert "product of 2 slices" in w.page.locator("#obj-phase-extent").text_content()
        pictures = {None: {i: w.canvas(i) for i in ("obj-amp", "obj-phase")}}
        for picture in pictures[None].values():
            assert (picture["height"], picture["width"]) == shape
            assert_not_blank(picture)
        assert stripes(w.page, "obj-phase") == {"rows": False, "columns": False}

        # Each slice on its own: slice 1 varies along x only, slice 2 along y only.
        for s, expected in (
            (1, {"rows": True, "columns": False}),
            (2, {"rows": False, "columns": True}),
        ):
            buttons.nth(s).click()
            w.wait(shown, [thick, 31, s])
            assert pressed() == [i == s for i in range(3)]
            assert f"slice {s} of 2" in w.page.locator("#obj-amp-extent").text_content()
            pictures[s] = {i: w.canvas(i) for i in ("obj-amp", "obj-phase")}
            for element_id, picture in pictures[s].items():
                assert (picture["height"], picture["width"]) == shape
                assert picture["colours"] > 5, picture
                assert stripes(w.page, element_id) == expected, (s, element_id)
        for element_id in ("obj-amp", "obj-phase"):
            hashes = {pictures[s][element_id]["hash"] for s in (None, 1, 2)}
            assert len(hashes) == 3, element_id
        # One slice is read, not the whole stack: Tiled slices it (?slice=<index>).
        reads = [url for url in w.urls if "/slices_" in url]
        assert reads and all("slice=" in url for url in reads), reads
        assert any("slices_phase" in url and "slice=1" in url for url in reads), reads

        # A new estimate of the run keeps the chosen slice.
        publisher.publish_live(thick, dataclasses.replace(thick_estimate, iteration=33))
        w.wait(shown, [thick, 33, 2])
        assert pressed() == [False, False, True]
        assert stripes(w.page, "obj-phase") == {"rows": False, "columns": True}

        # A thin run: no picker, no slices line.
        w.page.locator(f'#runs li[data-key="{thin}"] button').click()
        w.wait(shown, [thin, 32, None])
        assert w.page.locator("#slice-picker").is_hidden()
        assert w.page.locator("#slices-note").is_hidden()
        assert "slice" not in w.page.locator("#obj-amp-extent").text_content()

        # Back to the multislice run: the choice was reset, the product is shown.
        w.page.locator(f'#runs li[data-key="{thick}"] button').click()
        w.wait(shown, [thick, 33, None])
        assert pressed() == [True, False, False]
        assert w.errors == []
    finally:
        w.page.close()
        for uid in (thick, thin):
            publisher.mark(uid, "finished", {})


# -- a Tiled server without streaming cache: the page polls ----------------------------------


def test_the_noise_model_and_the_warnings_are_shown(
    browser, dashboard, tiled_client, estimate, run_start
):
    """The engine's noise model under the loss, and each warning of the run in a list above
    the images; a run without warnings shows none."""
    publisher = TiledPublisher(tiled_client)
    warned, clean = str(uuid.uuid4()), str(uuid.uuid4())
    for uid, scan_id in ((warned, 811), (clean, 812)):
        publisher.begin_run(run_start(uid, scan_id=scan_id), {})
    warning = "engine.loss is poisson, but the frames are not photon counts: 12.5% are negative"
    noise = {"read_noise_counts": 10.04, "read_noise_source": "estimated", "loss": "amplitude"}
    publisher.publish_live(
        warned,
        dataclasses.replace(
            estimate(41), noise={**noise, "warnings": [warning]}, probe_defocus_m=1.5e-3
        ),
    )
    publisher.publish_live(
        clean, dataclasses.replace(estimate(42), noise={**noise, "warnings": []})
    )
    w = Watched(browser, dashboard.url)
    shown = "([key, n]) => window.ptystream.runKey === key && window.ptystream.iteration === n"
    try:
        w.page.locator(f'#runs li[data-key="{warned}"] button').click()
        w.wait(shown, [warned, 41])
        note = w.page.locator("#noise-note").text_content()
        assert note == "amplitude loss · read noise 10 counts (estimated) · probe defocus 1.50 mm"
        assert w.page.locator("#warnings").is_visible()
        assert w.page.locator("#warnings li").all_text_contents() == [warning]
        w.page.locator(f'#runs li[data-key="{clean}"] button').click()
        w.wait(shown, [clean, 42])
        assert w.page.locator("#warnings").is_hidden()
        assert w.errors == []
    finally:
        w.page.close()


def test_missing_frames_are_shown(browser, dashboard, tiled_client, estimate, run_start):
    """A run that lost frames: how many and which seq_nums, under the frame counts and in the
    list of runs; its status is incomplete, not finished."""
    publisher = TiledPublisher(tiled_client)
    uid = str(uuid.uuid4())
    publisher.begin_run(run_start(uid, scan_id=813), {})
    missing = {
        "count": 14,
        "seq_nums": "21-30,45,58-60",
        "expected": 60,
        "source": "stop num_events",
    }
    frames = {"received": 46, "used": 46, "rejected": {}, "missing": missing}
    publisher.publish_live(uid, estimate(43), frames)
    publisher.mark(uid, "incomplete", {"frames": frames, "reason": "14 of 60 frames never arrived"})
    w = Watched(browser, dashboard.url)
    shown = "([key, n]) => window.ptystream.runKey === key && window.ptystream.iteration === n"
    try:
        w.page.locator(f'#runs li[data-key="{uid}"] button').click()
        w.wait(shown, [uid, 43])
        note = w.page.locator("#frames-missing-note")
        assert note.is_visible()
        assert note.text_content() == "14 never arrived: seq_nums 21-30,45,58-60"
        assert note.get_attribute("title") == "14 of 60 expected (stop num_events)"
        assert w.page.locator("#status").text_content() == "incomplete"
        assert "14 missing" in w.page.locator(f'#runs li[data-key="{uid}"]').text_content()
        assert w.errors == []
    finally:
        w.page.close()


def test_without_streaming_the_page_polls(browser, scans, tiled_server, tiled_without_streaming):
    with start_dashboard(tiled_without_streaming, api_key=tiled_server.api_key) as dashboard:
        w = Watched(browser, dashboard.url)
        try:
            uid = scans.start(n_points=40, exposure_s=0.1, seed=3)()
            result = scans.pipeline.wait(uid, timeout=120)
            w.wait(
                "([key, n]) => window.ptystream.runKey === key && window.ptystream.iteration === n",
                [uid, result.final.iteration],
            )
            assert w.page.locator("#conn").get_attribute("data-mode") == "polling"
            assert "no streaming cache" in w.page.locator("#conn").text_content()
            # (live/ is refreshed before the status is set: the status may follow a poll later)
            w.page.locator(f'#runs li[data-key="{uid}"][data-status="finished"]').wait_for(
                timeout=WAIT_MS
            )
            assert_not_blank(w.canvas("obj-amp"))
        finally:
            w.page.close()


# -- the proxy alone --------------------------------------------------------------------------


def test_the_proxy_forwards_reads_only(dashboard):
    api = dashboard.url + "api/v1/"
    assert httpx.get(api).json()["library_version"]  # Tiled's own description, key added
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = httpx.request(method, api + "metadata/processed", json={})
        assert response.status_code == 405, method
        assert "only reads" in response.json()["error"]
    for path in ("auth/whoami", "/auth/whoami", "metadata/%2e%2e/auth/whoami"):  # not data
        assert httpx.get(api + path).status_code == 404, path
    # another site's page must not read through the dashboard's key (cross-site websocket)
    stream = dashboard.url.replace("http", "ws") + "api/v1/stream/single/"
    with pytest.raises(websockets.InvalidStatus) as refused:
        websockets.sync.client.connect(stream, origin="http://elsewhere.example")
    assert refused.value.response.status_code == 403
    with websockets.sync.client.connect(stream, origin=dashboard.url.rstrip("/")) as ws:
        assert '"container-schema"' in ws.recv(timeout=10)  # the page's own origin is served


def test_an_absent_tiled_gives_502_naming_the_problem_not_its_address(free_port):
    key = "0123456789abcdef-secret"
    uri = f"http://127.0.0.1:{free_port()}/api/v1"
    with start_dashboard(f"{uri}?api_key={key}") as dashboard:
        response = httpx.get(dashboard.url + "api/v1/search/processed/ptystream")
        assert response.status_code == 502
        message = response.json()["error"]
        assert "cannot reach Tiled" in message and uri not in message and key not in message
        stream = dashboard.url.replace("http", "ws") + "api/v1/stream/single/processed"
        with websockets.sync.client.connect(stream) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd.code == 4502
    assert split_api_key(f"{uri}?api_key={key}") == (uri, key)


def test_the_dashboard_needs_neither_engine_nor_bluesky():
    code = (
        "import sys, ptystream.dashboard; "
        "heavy = ('tensorflow', 'bluesky', 'ptystream.live.pipeline'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
