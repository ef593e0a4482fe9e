"""`ptystream serve` (a real subprocess behind a real `bluesky-0MQ-proxy`) whose Tiled server (a
real one, in its own process) is stopped in the middle of a run: SIGTERM still stops the
service within seconds, the run's checkpoint kept and its end kept in the spool."""

import signal
import sys
import time
from pathlib import Path

import zmq
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher

from ptystream.sim.scan import build_simulation
from ptystream.store.server import start_server_process
from ptystream.store.spool import load_spooled, spooled_files

BIN = Path(sys.executable).parent


def test_sigterm_with_tiled_down_stops_within_seconds(
    tmp_path, small_profile, wait_for_status, zmq_proxy, serve_process
):
    from tiled.client import from_uri

    profile = small_profile(photons_per_frame=None, n_points=40, object_px=144)
    tiled = start_server_process(tmp_path / "tiled")
    data_dir = tmp_path / "data"
    proxy, port_in, port_out = zmq_proxy()
    serve = serve_process(profile, port_out, tiled, tmp_path)
    publish = Publisher(f"127.0.0.1:{port_in}")
    try:
        serve.wait_for("ptystream serve: ready", timeout=180)
        time.sleep(1.0)  # PUB/SUB: let the subscription reach the proxy before publishing
        docs = []
        RunEngine({})(build_simulation(profile).plan(), lambda name, doc: docs.append((name, doc)))
        for name, doc in docs[:-1]:  # the run never stops
            publish(name, doc)
        uid = docs[0][1]["uid"]
        wait_for_status(from_uri(tiled.uri), uid, statuses=("running",))
        time.sleep(3.0)  # let the frames reach the engine
        tiled.close()  # Tiled goes down in the middle of the run
        time.sleep(2.0)  # a live publication or two fails meanwhile

        t0 = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=120) == 0, "\n".join(serve.lines)
        stop_s = time.monotonic() - t0
        assert stop_s < 20, f"stopped {stop_s:.1f} s after SIGTERM"  # not 6 x 45 s of retries
        assert "ptystream serve: stopped" in serve.lines
        assert not any("Traceback" in line for line in serve.lines), "\n".join(serve.lines)

        spool = data_dir / "spool"
        assert (spool / "checkpoints" / f"{uid}.h5").is_file()  # to resume from
        (kept,) = spooled_files(spool)  # the run's end, for `ptystream flush`
        estimate, spooled = load_spooled(kept)
        assert spooled["run_uid"] == uid and spooled["status"] == "incomplete"
        assert estimate is not None and spooled["node_path"].endswith(uid)
    finally:
        publish._socket.setsockopt(zmq.LINGER, 0)
        publish.close()
        serve.stop()
        proxy.stop()
        tiled.close()
