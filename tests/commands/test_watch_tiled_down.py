"""`watch` outlives a restart of its Tiled server (a real one, in its own process, stopped and
started again on the same port): it says within seconds that Tiled does not answer, reads
again, and follows the run to its end once Tiled is back."""

import threading
import time

from ptystream.commands.watch import watch
from ptystream.store.access import connect, split_api_key
from ptystream.store.server import start_server_process


def wait_for(lines, text, timeout):
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines):
        assert time.monotonic() < deadline, f"{text!r} not seen in {lines}"
        time.sleep(0.1)
    return time.monotonic()


def test_watch_says_tiled_is_down_and_goes_on_when_it_is_back(tmp_path, free_port):
    port = free_port()
    server = start_server_process(tmp_path / "tiled", port=port)
    uri, key = split_api_key(server.uri)
    try:
        writer = connect(uri, key)
        runs = writer.create_container("processed").create_container("ptystream")
        runs.create_container("run-0001", metadata={"status": "running", "scan_id": 7})
        lines: list[str] = []
        outcome = []
        thread = threading.Thread(
            target=lambda: outcome.append(
                watch(connect(uri, key), "run-0001", show=lines.append, poll_s=0.5)
            ),
            daemon=True,
        )
        thread.start()
        wait_for(lines, "scan 7 | run-0001 | running", 30)

        server.close()
        t_down = time.monotonic()
        said = wait_for(lines, f"cannot reach Tiled at {uri}", 10)
        assert said - t_down < 10

        server = start_server_process(tmp_path / "tiled", port=port, api_key=key)
        wait_for(lines, "(Tiled answers again)", 30)
        connect(uri, key)["processed"]["ptystream"]["run-0001"].update_metadata(
            {"status": "finished"}
        )
        thread.join(30)
        assert outcome == [("run-0001", "finished")]
        assert lines[-1].startswith("finished: result at processed/ptystream/run-0001/final")
    finally:
        server.close()
