"""`ptystream reprocess` stopped while its jobs run (a real subprocess, a real Dask
LocalCluster, real signals): one line, no traceback, exit status 130; the jobs done are kept and
reported, the others reported ``interrupted`` (never ``finished``), nothing half-written, and the
same command then skips what was done."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

N_SCANS = 4
EPOCHS = 150  # several seconds per scan on one worker: the stop lands between two of them


@pytest.fixture(scope="module")
def scans(tmp_path_factory, small_profile, simulated_npz):
    tmp = tmp_path_factory.mktemp("scans")
    profile = small_profile()
    profile_file = tmp / "test.yaml"
    profile_file.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
    paths = [simulated_npz(small_profile(seed=10 + i), tmp / f"scan{i}.npz")[0] for i in range(4)]
    return profile_file, paths


def start(profile_file, paths, out):
    exe = Path(sys.executable).with_name("ptystream")
    args = [exe, "reprocess", *paths, "--profile", profile_file, "--epochs", EPOCHS]
    args += ["--workers", 1, "--out", out]
    return subprocess.Popen(
        [str(a) for a in args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job's
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def lines_of(stream, into):
    def read():
        for line in stream:
            into.append(line.rstrip("\n"))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "how",
    [
        "ctrl-c",  # SIGINT to the process group, as a terminal sends it (Dask's workers too)
        "sigterm",  # SIGTERM to the command's process only, as `kill` or a scheduler sends it
    ],
)
def test_a_stopped_reprocess_keeps_what_was_done(scans, tmp_path, how):
    profile_file, paths = scans
    out = tmp_path / "out"
    proc = start(profile_file, paths, out)
    err: list[str] = []
    reader = lines_of(proc.stderr, err)
    deadline = time.monotonic() + 400
    while not any(line.startswith("[1/") for line in err):
        assert proc.poll() is None and time.monotonic() < deadline, "\n".join(err)
        time.sleep(0.2)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    t_signal = time.monotonic()
    proc.wait(timeout=120)
    t_exit = time.monotonic() - t_signal
    reader.join(10)
    proc.stdout.close()
    assert proc.returncode == 130, "\n".join(err)
    text = "\n".join(err)
    assert "Traceback" not in text
    (said,) = [line for line in err if line.startswith("ptystream:")]
    assert said.startswith("ptystream: interrupted: ")
    # nor Dask's words about the workers it stops (the engine's notes on a pass may be there)
    assert not [line for line in err if re.search(r" - (WARNING|ERROR|CRITICAL) - ", line)]
    done = int(re.search(r"(\d+) of 4 reprocessed", said).group(1))
    assert 1 <= done < N_SCANS and f"summary in {out / 'summary.json'}" in said
    assert t_exit < 60  # cancelling and stopping the local cluster

    rows = json.loads((out / "summary.json").read_text())
    finished = [r for r in rows if r["status"] == "finished"]
    assert len(finished) == done
    assert {r["status"] for r in rows} == {"finished", "interrupted"}
    for row in rows:
        if row["status"] == "finished":
            assert Path(row["result"]).is_file()
        else:
            assert row["result"] is None
    results = sorted(out.glob("scan*.h5"))
    assert len(results) == done  # a job cancelled mid-way left no result a rerun would skip
    assert not [p for p in out.iterdir() if "partial" in p.name]
    assert (out / "contact-sheet.png").read_bytes()[:4] == b"\x89PNG"

    # the same command skips what was done (checked without running it to its end)
    from ptystream.config import load_profile
    from ptystream.offline.jobs import file_jobs

    jobs, skipped = file_jobs(paths, load_profile(profile_file), epochs=EPOCHS, out_dir=out)
    assert len(skipped) == done and len(jobs) == N_SCANS - done
