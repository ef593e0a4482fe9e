"""Fixtures shared by test folders: small simulated scans and profiles, real Tiled servers, live
scans on a real RunEngine, hand-made estimates, and the checks of a served reconstruction.

Helpers that take arguments are fixtures returning a function (a factory). Nothing here is
imported by a test module (tests/test_layout.py checks it); heavy packages are imported inside
the fixtures, so collecting a test loads only what it uses.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tiled's client retries each request for up to 45 s; the test servers are local, so a dead one
# should fail fast (read by tiled at import).
os.environ.setdefault("TILED_RETRY_ATTEMPTS", "2")
os.environ.setdefault("TILED_RETRY_TIMEOUT", "2")
# The commands the tests start must see Ctrl-C as from a terminal. Run as a background job of a
# non-interactive shell (`make test &`), pytest inherits SIGINT ignored and so would they: a
# SIGINT sent by a test was then lost and the command ran to its end (seen once, 120 s timeout).
# Caught here, the signal is back to its default in every process started from now on.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from ptystream.config import Profile, load_profile  # noqa: E402

# -- profiles and simulated scans -------------------------------------------------------------


def _shrunk(name: str, test_name: str, **sim_overrides) -> Profile:
    """Profile ``name`` shrunk to a fast scan (no exposure time), ``sim`` fields overridable."""
    base = load_profile(name)
    sim = base.sim.model_copy(
        update={"object_px": 176, "n_points": 90, "exposure_s": 0.0, **sim_overrides}
    )
    return base.model_copy(
        update={
            "name": test_name,
            "sim": sim,
            "engine": base.engine.model_copy(update={"final_epochs": 60}),
            "publish": base.publish.model_copy(update={"cadence_s": 0.2, "raw_batch_size": 10}),
        }
    )


@pytest.fixture(scope="session")
def small_profile():
    """``small_profile(**sim_overrides)``: the demo profile shrunk to a fast scan (no exposure
    time); ``sim`` fields overridable."""
    return lambda **sim_overrides: _shrunk("demo", "test", **sim_overrides)


@pytest.fixture(scope="session")
def small_thick_profile():
    """``small_thick_profile(**sim_overrides)``: the multislice-demo profile (two layers 600 um
    apart, reconstructed with two slices) shrunk as ``small_profile`` shrinks the demo."""
    return lambda **sim_overrides: _shrunk("multislice-demo", "test-thick", **sim_overrides)


@pytest.fixture(scope="session")
def planned():
    """``planned(positions)``: the ScanPlan a scan's start document announces for
    ``positions`` ``(n, 2)`` in metres."""
    from ptystream.sim.plans import scan_metadata
    from ptystream.types import ScanPlan

    def planned(positions):
        md = scan_metadata(positions, "test")
        return ScanPlan(md["n_points"], tuple(tuple(e) for e in md["extent_m"]))

    return planned


@pytest.fixture(scope="session")
def simulated_npz():
    """``simulated_npz(profile, path) -> (path, sim)``: a noise-free simulated scan written in
    the documented NPZ layout."""
    from ptystream.sim.detector import diffraction_pattern
    from ptystream.sim.scan import build_simulation

    def simulated_npz(profile, path):
        sim = build_simulation(profile)
        frames = np.stack([1e6 * diffraction_pattern(sim.truth, p) for p in sim.positions_m])
        g = profile.instrument.geometry()
        np.savez(
            path,
            frames=frames,
            positions_m=sim.positions_m,
            wavelength_m=g.wavelength_m,
            distance_m=g.distance_m,
            detector_pixel_size_m=g.detector_pixel_size_m,
        )
        return path, sim

    return simulated_npz


@pytest.fixture(scope="session")
def p25():
    """The PETRA III P25 near-field scan in the shared data directory; the test is skipped when
    it is not there."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    path = path / "PETRAIII_P25_Near_Field_Ptycho.cxi"
    if not path.is_file():
        pytest.skip(f"shared P25 scan not found at {path}")
    return path


# -- Tiled ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiled_server(tmp_path_factory):
    """A real SimpleTiledServer on 127.0.0.1, one per test module."""
    from ptystream.store.server import start_embedded_server

    server = start_embedded_server(tmp_path_factory.mktemp("tiled"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def tiled_client(tiled_server):
    from tiled.client import from_uri

    return from_uri(tiled_server.uri)


@pytest.fixture
def tiled_without_streaming(tiled_server):
    """The URI of a second Tiled app on the embedded server's storage, without a streaming
    cache (as a facility server configured without ``streaming_cache``), up for one test."""
    import uvicorn
    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.config import Authentication
    from tiled.server.app import build_app
    from tiled.server.simple import ThreadedServer

    directory = Path(tiled_server.directory)
    catalog = catalog_from_uri(
        directory / "catalog.db",
        # the embedded server keeps its appendable tables in SQLite (ptystream.store.server)
        writable_storage=[directory / "data", f"sqlite:///{directory / 'tables.sqlite'}"],
    )
    # The same key: tiled keeps its authentication settings in a process-wide singleton.
    app = build_app(
        catalog, authentication=Authentication(single_user_api_key=tiled_server.api_key)
    )
    server = ThreadedServer(uvicorn.Config(app, port=0, loop="asyncio", log_config=None))
    with server.run_in_thread() as url:
        yield f"{url}/api/v1"


class _Process:
    """A subprocess whose output lines (stdout and stderr) a thread collects in ``lines``, so
    its pipes never fill."""

    def __init__(self, args, **kwargs):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [str(a) for a in args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **kwargs,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, text, timeout):
        """Until a line contains ``text``; fails with the output if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not seen; output:\n" + "\n".join(self.lines))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def spawn():
    """``spawn(args, **popen_kwargs)``: a subprocess whose output lines are collected in
    ``.lines``, with ``.wait_for(text, timeout)`` and ``.stop()`` (kill); ``.proc`` is the
    ``Popen``."""
    return _Process


@pytest.fixture(scope="session")
def zmq_proxy(spawn, free_port):
    """``zmq_proxy(port_in=None, port_out=None) -> (process, in_port, out_port)``: a real
    ``bluesky-0MQ-proxy`` on two ports of 127.0.0.1, free ones unless given (to restart it where
    it was); publishers connect to ``in_port``, ``serve`` to ``out_port``."""
    import sys

    def start(port_in: int | None = None, port_out: int | None = None):
        port_in, port_out = port_in or free_port(), port_out or free_port()
        proxy = Path(sys.executable).parent / "bluesky-0MQ-proxy"
        args = [proxy, "--in-address", f"127.0.0.1:{port_in}"]
        return spawn([*args, "--out-address", f"127.0.0.1:{port_out}"]), port_in, port_out

    return start


@pytest.fixture(scope="session")
def serve_process(spawn):
    """``serve_process(profile, out_port, server, directory)``: a real ``ptystream serve``
    subprocess on the proxy's ``out_port``, writing to the Tiled ``server`` (``.uri``,
    ``.api_key``) with ``profile``; its profile and key files and its ``--data-dir``
    (``data``) are in ``directory`` (TensorFlow's start-up lines and any TILED_API_KEY left
    out)."""
    import sys

    import yaml

    def start(profile, out_port, server, directory):
        directory.mkdir(parents=True, exist_ok=True)
        profile_file = directory / "profile.yaml"
        profile_file.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
        key_file = directory / "api-key"
        key_file.write_text(server.api_key + "\n")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("TILED_API_KEY", None)
        args = [Path(sys.executable).parent / "ptystream", "serve", "--profile", profile_file]
        args += ["--zmq", f"127.0.0.1:{out_port}", "--tiled", server.uri.split("?")[0]]
        args += ["--api-key-file", key_file, "--data-dir", directory / "data"]
        return spawn(args, env=env)

    return start


@pytest.fixture(scope="session")
def free_port():
    """``free_port()``: a TCP port on 127.0.0.1 nothing listens on (now)."""

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return free_port


@pytest.fixture(scope="session")
def uid_prefix():
    """``uid_prefix(uid, length)``: the first ``length`` characters of ``uid``, or more until
    one is a letter (an all-digit selector is a scan id, as ``ptystream reprocess`` reads it;
    about 4 % of 7-character uuid4 prefixes are all digits)."""

    def uid_prefix(uid: str, length: int) -> str:
        while uid[:length].isdigit():
            length += 1
        return uid[:length]

    return uid_prefix


# -- live scans on a real RunEngine -----------------------------------------------------------


@pytest.fixture(scope="session")
def run_live_scan():
    """``run_live_scan(profile, client, *, corrupt_seq=None, reconstruct_with=None) -> (uid,
    result, sim)``: one simulated scan on a real RunEngine, saved raw by bluesky's TiledWriter
    and reconstructed live into ``client``; ``corrupt_seq`` makes that point's frame NaN
    (1-based); ``reconstruct_with``: the profile the callback and pipeline use (a user's
    mistaken one, say), ``profile`` by default."""
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter

    from ptystream.live.background import BackgroundCallback
    from ptystream.live.callback import PtychoCallback
    from ptystream.live.pipeline import LivePipeline
    from ptystream.sim.scan import build_simulation
    from ptystream.store.layout import raw_catalog
    from ptystream.store.publisher import TiledPublisher

    def run_live_scan(profile, client, *, corrupt_seq=None, reconstruct_with=None):
        sim = build_simulation(profile)
        if corrupt_seq is not None:
            compute, calls = sim.detector.image._func, [0]

            def sometimes_nan():
                calls[0] += 1
                frame = compute()
                return np.full_like(frame, np.nan) if calls[0] == corrupt_seq else frame

            sim.detector.image._func = sometimes_nan
        raw_writer = BackgroundCallback(
            TiledWriter(raw_catalog(client), batch_size=profile.publish.raw_batch_size)
        )
        used = reconstruct_with or profile
        pipeline = LivePipeline(used, TiledPublisher(client)).start()
        RE = RunEngine({})
        RE.subscribe(raw_writer)
        RE.subscribe(PtychoCallback(used, pipeline))
        (uid,) = RE(sim.plan())
        result = pipeline.wait(uid, timeout=300)
        assert raw_writer.flush(timeout=120) and raw_writer.errors == 0
        pipeline.close()
        return uid, result, sim

    return run_live_scan


@pytest.fixture(scope="session")
def pausing():
    """``pausing(plan, after_events)``: ``plan`` with a pause (immediate, so the RunEngine
    rewinds to the last checkpoint and repeats what followed it on resume) after its
    ``after_events``-th event."""
    from bluesky import plan_stubs as bps
    from bluesky.preprocessors import plan_mutator

    def pausing(plan, after_events):
        saved = [0]

        def insert(msg):
            if msg.command == "save":
                saved[0] += 1
                if saved[0] == after_events:
                    return None, bps.pause()
            return None, None

        return plan_mutator(plan, insert)

    return pausing


@pytest.fixture(scope="session")
def run_until_paused():
    """``run_until_paused(RE, plan) -> uid``: run ``plan`` until it pauses."""
    from bluesky.utils import RunEngineInterrupted

    def run_until_paused(RE, plan):
        starts = []
        token = RE.subscribe(lambda name, doc: starts.append(doc["uid"]), "start")
        try:
            with pytest.raises(RunEngineInterrupted):
                RE(plan)
        finally:
            RE.unsubscribe(token)
        assert RE.state == "paused"
        return starts[0]

    return run_until_paused


# -- estimates made by hand, and the spool ----------------------------------------------------


@pytest.fixture(scope="session")
def estimate():
    """``estimate(iteration, shape=(48, 48), *, n_frames=20, final=False, seed=None)``: an
    estimate whose values are known: random object, fixed probe, loss 1/(i+1)."""
    from ptystream.types import Estimate

    def estimate(iteration: int, shape=(48, 48), *, n_frames=20, final=False, seed=None):
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

    return estimate


@pytest.fixture(scope="session")
def run_start():
    """``run_start(uid, scan_id=7)``: the RunStart of a 100-point run of the demo profile
    (16 px frames)."""
    from ptystream.types import Geometry, RunStart, ScanPlan

    def run_start(uid: str, scan_id: int = 7):
        return RunStart(
            uid,
            Geometry(1e-10, 2.0, 75e-6, 16),
            ScanPlan(100, None),
            scan_id=scan_id,
            profile="demo",
        )

    return run_start


@pytest.fixture(scope="session")
def keep(run_start):
    """``keep(directory, uid, est, node_path=None, status="finished")``: keep ``est`` in the
    spool ``directory`` as the pipeline would for run ``uid``."""
    from ptystream.store.publisher import run_metadata
    from ptystream.store.spool import spool_final

    def keep(directory, uid, est, node_path=None, status="finished"):
        return spool_final(
            directory,
            uid,
            est,
            status=status,
            extra={"frames": {"received": 20, "used": 20}},
            run_metadata=run_metadata(run_start(uid), {}),
            node_path=node_path,
        )

    return keep


# -- a reconstruction served by Tiled ---------------------------------------------------------


@pytest.fixture(scope="session")
def wait_for_status():
    """``wait_for_status(client, uid, statuses=(ended...))``: the run's processed node once its
    status is one of ``statuses`` (fails after 240 s)."""

    def wait_for_status(client, uid, statuses=("finished", "aborted", "failed", "incomplete")):
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            processed = client["processed"]["ptystream"] if "processed" in client else {}
            if uid in processed:
                node = processed[uid]
                if node.metadata["status"] in statuses:
                    return node
            time.sleep(0.5)
        raise AssertionError(f"run {uid} not published with a status in {statuses}")

    return wait_for_status


def _served_correlation(node, truth):
    """|C| and phase r of the served final object against the truth, over the region the
    published probe and positions light above 30 % of the maximum."""
    from ptystream.metrics import complex_correlation

    final = node["final"]
    obj = final["object"].read()
    probe = final["probe"].read()
    probe = probe if probe.ndim == 3 else probe[None]
    positions = final["positions_m"].read()
    meta = final["object"].metadata
    dx, origin = meta["pixel_size_m"], np.asarray(meta["object_origin_m"])
    n = probe.shape[-1]
    power = (np.abs(probe) ** 2).sum(axis=0)
    light = np.zeros(obj.shape)
    for corner in np.round((positions - origin) / dx - n / 2).astype(int):
        light[corner[0] : corner[0] + n, corner[1] : corner[1] + n] += power
    aligned = truth.aligned_to(obj.shape, tuple(origin))
    return complex_correlation(obj, aligned, light > 0.3 * light.max())


@pytest.fixture(scope="session")
def check_finished(wait_for_status):
    """``check_finished(client, uid, sim, *, frames) -> node``: the run was published as
    finished with every one of its ``frames`` used, and its served object matches the truth
    (|C| > 0.99, phase r > 0.9)."""

    def check_finished(client, uid, sim, *, frames):
        node = wait_for_status(client, uid)
        assert node.metadata["status"] == "finished", node.metadata.get("reason")
        counts = node.metadata["frames"]
        assert counts["received"] == counts["used"] == frames and counts["rejected"] == {}
        score = _served_correlation(node, sim.truth)
        assert score.abs_c > 0.99 and score.phase > 0.9, score
        return node

    return check_finished
