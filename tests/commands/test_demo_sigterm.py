"""`ptystream demo` stopped by SIGTERM (a real signal to the real command) ends as Ctrl-C does:
one line, no traceback, exit status 130, and its run published ``aborted`` in Tiled."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_sigterm_during_the_demo_marks_its_run_aborted(tmp_path, small_profile):
    from tiled.client import from_uri

    from ptystream.store.server import start_server_process

    profile = small_profile(n_points=90, exposure_s=0.2)  # an 18 s scan
    path = tmp_path / "slow.yaml"
    path.write_text(profile.model_dump_json())
    exe = Path(sys.executable).with_name("ptystream")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [str(exe), "demo", "--profile", str(path), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if "scanning" in line:
            break
    time.sleep(5)
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, rest + err
    assert "Traceback" not in err
    (said,) = [line for line in err.splitlines() if line.startswith("ptystream: interrupted")]
    uid8 = re.search(r"run ([0-9a-f]{8}) ended aborted in Tiled", said).group(1)
    server = start_server_process(out / "tiled")
    try:
        runs = from_uri(server.uri)["processed"]["ptystream"]
        (uid,) = [u for u in runs if u.startswith(uid8)]
        assert runs[uid].metadata["status"] == "aborted"
        raw = from_uri(server.uri)["raw"][uid8]
        assert raw.stop["exit_status"] == "abort"
    finally:
        server.close()
