"""`ptystream serve` as a real subprocess behind a real `bluesky-0MQ-proxy`, publishing to a real
Tiled server; a real RunEngine publishes its documents with bluesky's 0MQ Publisher.

One service takes, back to back: an inline scan, an external-file (NPY_SEQ) scan, an ophyd-async
HDF5 scan, an aborted scan, a run for another profile (skipped), documents out of order and
duplicated, and finally a run cut short by SIGTERM (checkpointed, published as incomplete).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices

from ptystream.sim.async_detector import AsyncSampleStage, SimPtychoDetector
from ptystream.sim.detector import DetectorModel
from ptystream.sim.file_detectors import npy_seq_detector
from ptystream.sim.plans import ptycho_scan
from ptystream.sim.scan import build_simulation

N_POINTS = 40
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def profile(small_profile):
    profile = small_profile(photons_per_frame=None, n_points=N_POINTS, object_px=144)
    engine = profile.engine.model_copy(update={"final_epochs": 80})
    return profile.model_copy(update={"engine": engine})


@pytest.fixture(scope="module")
def service(profile, tiled_server, tmp_path_factory, zmq_proxy, serve_process):
    """proxy + `ptystream serve` subprocesses and a RunEngine publishing to the proxy."""
    tmp = tmp_path_factory.mktemp("serve")
    proxy, port_in, port_out = zmq_proxy()
    serve = serve_process(profile, port_out, tiled_server, tmp)
    publisher = Publisher(f"127.0.0.1:{port_in}")
    try:
        serve.wait_for("ptystream serve: ready", timeout=180)
        RE = RunEngine({})
        RE.subscribe(publisher)
        time.sleep(1.0)  # PUB/SUB: let the subscription reach the proxy before publishing
        RE.publish = publisher
        yield RE, serve, tmp / "data"
    finally:
        # Closed explicitly, without lingering: a zmq Context left to the garbage collector at
        # interpreter exit can be finalised before its socket and then blocks pytest forever.
        publisher._socket.setsockopt(zmq.LINGER, 0)
        publisher.close()
        serve.stop()
        proxy.stop()


def clean_model():
    return DetectorModel(None, 0.0, None, np.random.default_rng(0))


def run_serve(*args, env=None, timeout=120):
    return subprocess.run(
        [BIN / "ptystream", "serve", "--profile", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_wrong_api_key_or_absent_server_is_a_clear_error(tiled_server, tmp_path, free_port):
    key_file = tmp_path / "key"
    key_file.write_text("not-the-key-0123\n")
    uri = tiled_server.uri.split("?")[0]
    wrong = run_serve("--zmq", "127.0.0.1:1", "--tiled", uri, "--api-key-file", key_file)
    assert wrong.returncode == 2
    assert "refused the API key (HTTP 401)" in wrong.stderr
    assert "not-the-key-0123" not in wrong.stderr + wrong.stdout
    absent = run_serve(
        "--zmq",
        "127.0.0.1:1",
        "--tiled",
        f"http://127.0.0.1:{free_port()}/api/v1",
        env={"TILED_API_KEY": "secret-key-4567"},
    )
    assert absent.returncode == 2 and "cannot reach Tiled at http://127.0.0.1" in absent.stderr
    assert "secret-key-4567" not in absent.stderr + absent.stdout
    missing = run_serve("--zmq", "127.0.0.1:1", "--api-key-file", tmp_path / "nope")
    assert missing.returncode == 2 and "cannot read the API key file" in missing.stderr


def test_kafka_without_bluesky_kafka_says_what_to_install():
    """bluesky-kafka is optional and not installed here (nor is a Kafka broker available):
    the Kafka path is checked up to the import of its dispatcher."""
    out = run_serve("--kafka", "127.0.0.1:9092", "--kafka-topic", "bluesky.documents")
    assert out.returncode == 2 and "pip install bluesky-kafka" in out.stderr


def test_runs_back_to_back_from_every_detector_kind(
    service, profile, tiled_client, tmp_path, check_finished
):
    RE, serve, _ = service
    sim = build_simulation(profile)
    (inline,) = RE(sim.plan())
    check_finished(tiled_client, inline, sim, frames=N_POINTS)

    det = npy_seq_detector(
        sim.stage, sim.truth, clean_model(), motor_units_m=1e-6, save_path=tmp_path / "npy"
    )
    plan = ptycho_scan(det, sim.stage, sim.positions_m, profile=profile.name, motor_units_m=1e-6)
    (external,) = RE(plan)
    check_finished(tiled_client, external, sim, frames=N_POINTS)

    with init_devices():
        stage = AsyncSampleStage()
        hdf = SimPtychoDetector(
            StaticPathProvider(UUIDFilenameProvider(), tmp_path / "h5"),
            sim.truth,
            clean_model(),
            stage=stage,
            motor_units_m=1e-6,
        )
    (tmp_path / "h5").mkdir()
    plan = ptycho_scan(hdf, stage, sim.positions_m, profile=profile.name, motor_units_m=1e-6)
    (streamed,) = RE(plan)
    check_finished(tiled_client, streamed, sim, frames=N_POINTS)
    assert "skipped" not in "\n".join(serve.lines)


def test_aborted_scan_is_published_with_its_status(
    service, profile, tiled_client, pausing, run_until_paused, wait_for_status
):
    RE, _, _ = service
    sim = build_simulation(profile)
    uid = run_until_paused(RE, pausing(sim.plan(), 15))
    RE.abort()
    node = wait_for_status(tiled_client, uid)
    assert node.metadata["status"] == "aborted"
    assert 15 <= node.metadata["frames"]["used"] < N_POINTS
    assert node["final"]["object"].read().shape == tuple(node["live"]["object_phase"].shape)


def test_another_profiles_run_is_skipped_with_one_line(service, profile, tiled_client):
    RE, serve, _ = service
    sim = build_simulation(profile)
    (uid,) = RE(sim.plan(md={"ptystream": {"profile": "p25-nearfield"}}))
    time.sleep(2.0)
    skipped = [line for line in serve.lines if uid in line]
    assert len(skipped) == 1 and "skipped" in skipped[0]
    assert uid not in tiled_client["processed"]["ptystream"]


def test_documents_out_of_order_and_duplicated(service, profile, tiled_client, check_finished):
    """The Publisher is called directly with a recorded scan's documents, shuffled and
    partly repeated, as a lossy or reordering transport would deliver them."""
    RE, _, _ = service
    sim = build_simulation(profile)
    docs = []
    RunEngine({})(sim.plan(), lambda name, doc: docs.append((name, doc)))
    rng = np.random.default_rng(5)
    start, descriptor, stop = docs[0], docs[1], docs[-1]
    events = [d for d in docs if d[0] == "event"]
    events += [events[i] for i in rng.choice(len(events), 10, replace=False)]
    events = [events[i] for i in rng.permutation(len(events))]
    publish = RE.publish
    for name, doc in [start, start, *events[:4], descriptor, *events[4:], stop, stop]:
        publish(name, doc)
    node = check_finished(tiled_client, start[1]["uid"], sim, frames=N_POINTS)
    assert node.metadata["frames"]["duplicates_ignored"] == 10


def test_sigterm_checkpoints_the_run_in_progress_and_exits(
    service, profile, tiled_client, wait_for_status
):
    """Last test of the module: it ends the service."""
    RE, serve, data_dir = service
    sim = build_simulation(profile)
    docs = []
    RunEngine({})(sim.plan(), lambda name, doc: docs.append((name, doc)))
    publish = RE.publish
    for name, doc in docs[:-1]:  # the run never stops
        publish(name, doc)
    uid = docs[0][1]["uid"]
    wait_for_status(tiled_client, uid, statuses=("running",))
    time.sleep(3.0)  # let the frames reach the engine
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(timeout=120) == 0, "\n".join(serve.lines)
    node = wait_for_status(tiled_client, uid)
    assert node.metadata["status"] == "incomplete"
    assert node.metadata["frames"]["used"] == N_POINTS
    checkpoint = Path(node.metadata["checkpoint"])
    assert checkpoint.is_file() and checkpoint.parent.parent == data_dir.resolve() / "spool"
    assert "ptystream serve: stopped" in serve.lines


def test_without_tiled_an_embedded_server_is_started_and_sigint_stops_it(
    tmp_path, free_port, spawn
):
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    serve = spawn(
        [
            BIN / "ptystream",
            "serve",
            "--profile",
            "demo",
            "--zmq",
            f"127.0.0.1:{port}",
            "--data-dir",
            tmp_path,
        ],
        env=env,
    )
    try:
        serve.wait_for("ptystream serve: ready", timeout=180)
        key_file = tmp_path / "tiled-api-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        assert not any(key in line for line in serve.lines)
        (announced,) = [line for line in serve.lines if "embedded Tiled server at" in line]
        uri = announced.split(" at ")[1].split()[0]
        from tiled.client import from_uri

        assert "raw" not in from_uri(uri, api_key=key)  # reachable with the key from the file
        serve.proc.send_signal(signal.SIGINT)
        assert serve.proc.wait(timeout=60) == 0
    finally:
        serve.stop()
