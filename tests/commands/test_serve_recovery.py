"""`ptystream serve` restarted after it was killed or stopped mid-run (issue 18 point 3): real
`serve` subprocesses behind a real `bluesky-0MQ-proxy`, a real Tiled server holding the raw
runs bluesky's TiledWriter saved, the AD engine.

In order (the tests share the services): a service is SIGKILLed mid-run, and the next one
completes that run from the raw run (no checkpoint: every frame used, finished); that service
is SIGTERMed mid-run (checkpointed, incomplete), and two services started at once on the same
data race for its recovery: one completes it from the checkpoint (fewer passes than from
scratch, the same quality), the other leaves it alone.
"""

import signal
import sys
import time
from pathlib import Path

import pytest
import zmq
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from bluesky_tiled_plugins import TiledWriter

from ptystream.offline.recover import SCRATCH_EPOCHS
from ptystream.sim.scan import build_simulation
from ptystream.store.layout import raw_catalog

N_POINTS = 40
SEEN = 28  # events the SIGTERMed service gets before it stops
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def profile(small_profile):
    profile = small_profile(photons_per_frame=None, n_points=N_POINTS, object_px=144)
    return profile.model_copy(
        update={
            "engine": profile.engine.model_copy(update={"final_epochs": 60}),
            # no periodic checkpoint: a killed service leaves none
            "publish": profile.publish.model_copy(update={"checkpoint_cadence_s": None}),
        }
    )


@pytest.fixture(scope="module")
def site(profile, tiled_server, tmp_path_factory, zmq_proxy, serve_process):
    """The proxy, the data directory every service shares, a function starting a service,
    and a 0MQ Publisher to the proxy."""
    tmp = tmp_path_factory.mktemp("serve-recovery")
    proxy, port_in, port_out = zmq_proxy()
    started = []

    def start_serve():
        started.append(serve_process(profile, port_out, tiled_server, tmp))
        return started[-1]

    publisher = Publisher(f"127.0.0.1:{port_in}")
    try:
        yield start_serve, publisher, {}
    finally:
        publisher._socket.setsockopt(zmq.LINGER, 0)
        publisher.close()
        for serve in started:
            serve.stop()
        proxy.stop()


def scan_documents(profile, client):
    """A scan run on a RunEngine whose raw run TiledWriter saves in ``client``; returns its
    documents (to publish as a service would receive them) and the simulation."""
    sim = build_simulation(profile)
    docs = []
    RE = RunEngine({})
    RE.subscribe(TiledWriter(raw_catalog(client), batch_size=10))
    RE(sim.plan(), lambda name, doc: docs.append((name, doc)))
    return docs, sim


def publish(publisher, docs):
    for name, doc in docs:
        publisher(name, doc)


def test_a_run_of_a_killed_service_is_completed_by_the_next_one(
    site, profile, tiled_client, wait_for_status, check_finished
):
    start_serve, publisher, shared = site
    first = start_serve()
    first.wait_for("ptystream serve: ready", timeout=180)
    time.sleep(1.0)  # PUB/SUB: let the subscription reach the proxy before publishing
    docs, sim = scan_documents(profile, tiled_client)
    uid = docs[0][1]["uid"]
    publish(publisher, docs[:-1])  # the stop never reaches it
    wait_for_status(tiled_client, uid, statuses=("running",))
    time.sleep(2.0)  # frames reach the engine
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=30)
    assert tiled_client["processed"]["ptystream"][uid].metadata["status"] == "running"

    second = start_serve()
    second.wait_for(f"run {uid} recovered", timeout=240)
    node = check_finished(tiled_client, uid, sim, frames=N_POINTS)
    record = node.metadata["recovered"]
    assert record["from"] == "raw run" and record["previous_status"] == "running"
    assert record["passes"] == max(SCRATCH_EPOCHS, profile.engine.final_epochs)
    assert record["frames"]["from_raw_run"] == N_POINTS
    shared["second"], shared["scratch_passes"] = second, record["passes"]


def test_a_stopped_run_resumes_from_its_checkpoint_and_two_services_recover_it_once(
    site, profile, tiled_client, wait_for_status, check_finished
):
    start_serve, publisher, shared = site
    second = shared["second"]  # ready, and done with its recovery
    docs, sim = scan_documents(profile, tiled_client)
    uid = docs[0][1]["uid"]
    events = [d for d in docs if d[0] == "event"][:SEEN]
    publish(publisher, [d for d in docs if d[0] in ("start", "descriptor")] + events)
    wait_for_status(tiled_client, uid, statuses=("running",))
    time.sleep(3.0)  # frames reach the engine
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=120) == 0, "\n".join(second.lines)
    stopped = wait_for_status(tiled_client, uid)
    assert stopped.metadata["status"] == "incomplete"
    assert Path(stopped.metadata["checkpoint"]).is_file()

    racing = [start_serve(), start_serve()]  # same host and data: one recovery, not two
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if any(f"run {uid} recovered" in line for s in racing for line in s.lines):
            break
        time.sleep(0.5)
    node = check_finished(tiled_client, uid, sim, frames=N_POINTS)
    record = node.metadata["recovered"]
    assert record["from"] == "checkpoint" and record["previous_status"] == "incomplete"
    assert record["frames"]["from_checkpoint"] + record["frames"]["from_raw_run"] == N_POINTS
    assert record["frames"]["from_raw_run"] >= N_POINTS - SEEN
    assert record["passes"] == profile.engine.final_epochs < shared["scratch_passes"]
    for serve in racing:
        serve.wait_for("ptystream serve: ready", timeout=120)
    time.sleep(2.0)  # the other one's recovery thread has looked
    done = [s for s in racing if any(f"run {uid} recovered" in line for line in s.lines)]
    assert len(done) == 1, [s.lines for s in racing]
    assert not Path(stopped.metadata["checkpoint"]).exists()
    for serve in racing:
        serve.proc.send_signal(signal.SIGTERM)
    for serve in racing:
        assert serve.proc.wait(timeout=60) == 0, "\n".join(serve.lines)
