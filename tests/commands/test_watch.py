"""`ptystream watch` and `ptystream flush` against a real Tiled server, as real subprocesses;
the API key never shows in their output, even at INFO level."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from ptystream.commands.watch import watch
from ptystream.store.access import split_api_key
from ptystream.store.publisher import TiledPublisher
from ptystream.store.spool import spooled_files


@pytest.fixture(scope="module")
def tiled(tiled_server, tmp_path_factory):
    """The server's URI without the key, and a 0600 file holding the key."""
    uri, key = split_api_key(tiled_server.uri)
    key_file = tmp_path_factory.mktemp("key") / "api-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return uri, key, key_file


def ptystream(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TILED_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "ptystream.commands.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


@pytest.fixture(scope="module")
def publish_run(estimate, run_start):
    """``publish_run(publisher, uid, scan_id, status, n_live)``: a run published as the pipeline
    does: created, ``n_live`` estimates 0.3 s apart, end."""

    def publish_run(publisher: TiledPublisher, uid: str, scan_id: int, status: str, n_live: int):
        publisher.begin_run(run_start(uid, scan_id=scan_id), {})
        for i in range(1, n_live + 1):
            publisher.publish_live(uid, estimate(10 * i), {"received": 5 * i, "used": 5 * i})
            time.sleep(0.3)
        frames = {"received": 5 * n_live, "used": 5 * n_live}
        final = estimate(10 * n_live + 5, final=True)
        publisher.publish_final(uid, final, status, {"frames": frames})

    return publish_run


def test_watch_command_follows_a_run_that_starts_later(tiled_client, tiled, publish_run):
    uri, key, key_file = tiled
    watcher = ptystream("-v", "watch", "4242", "--tiled", uri, "--api-key-file", str(key_file))
    first = watcher.stdout.readline()
    assert first == "waiting for '4242' to start ...\n"
    time.sleep(2)  # let it subscribe
    publish_run(TiledPublisher(tiled_client), "watched-run", 4242, "finished", n_live=5)
    out, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, err
    lines = out.splitlines()
    progress = [line for line in lines if "iteration" in line]
    assert progress[0].startswith("scan 4242 | watched- | running")
    iterations = [int(line.split("iteration ")[1].split(" ")[0]) for line in progress]
    assert iterations == sorted(iterations) and iterations[-1] == 55
    assert len(set(iterations)) >= 3  # successive estimates, not only the end
    assert "frames 25 used / 25 received / 100 planned" in progress[-1]
    assert lines[-1] == (
        "finished: result at processed/ptystream/watched-run/final "
        "(float32 views in processed/ptystream/watched-run/live)"
    )
    assert key not in out + err


def test_updates_arrive_by_push_not_polling(tiled_client, publish_run):
    """With a poll interval longer than the test, every line must come from a websocket push."""
    lines: list[str] = []
    done = threading.Event()

    def follow():
        watch(tiled_client, "pushed-run", show=lines.append, poll_s=600)
        done.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(3)
    publish_run(TiledPublisher(tiled_client), "pushed-run", 77, "failed", n_live=4)
    assert done.wait(60), lines
    iterations = {
        line.split("iteration ")[1].split(" ")[0] for line in lines if "iteration" in line
    }
    assert {"10", "20", "30", "40"} <= iterations
    assert lines[-1].startswith("failed: result at processed/ptystream/pushed-run/final")


def test_watch_of_an_ended_run_exits_at_once_with_its_status(tiled_client, tiled, publish_run):
    uri, _, key_file = tiled
    publish_run(TiledPublisher(tiled_client), "aborted-run", 88, "aborted", n_live=1)
    watcher = ptystream("watch", "aborted-r", "--tiled", uri, "--api-key-file", str(key_file))
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 1, err
    assert "| aborted |" in out and out.splitlines()[-1].startswith("aborted: result at")


def test_wrong_or_missing_key_is_refused_clearly(tiled, tmp_path):
    uri, key, _ = tiled
    wrong = tmp_path / "wrong"
    wrong.write_text("notthekey\n")
    watcher = ptystream("watch", "--tiled", uri, "--api-key-file", str(wrong))
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 2
    assert f"Tiled at {uri} refused the API key" in err and "notthekey" not in out + err
    watcher = ptystream("watch", "--tiled", uri)
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 2 and "requires an API key" in err
    missing = ptystream("watch", "--tiled", uri, "--api-key-file", str(tmp_path / "nope"))
    out, err = missing.communicate(timeout=60)
    assert missing.returncode == 2 and "cannot read the API key file" in err


def test_flush_command_uploads_what_was_kept(tiled_client, tiled, tmp_path, estimate, keep):
    uri, key, key_file = tiled
    spool = tmp_path / "spool"
    keep(spool, "flushed-run", estimate(9, final=True))
    # the key in the URI, as SimpleTiledServer prints it: taken out before anything is logged
    flush = ptystream("-v", "flush", "--spool", str(spool), "--tiled", f"{uri}?api_key={key}")
    out, err = flush.communicate(timeout=120)
    assert flush.returncode == 0, err
    assert out.strip() == "flushed-run.npz: processed/ptystream/flushed-run"
    assert "HTTP Request" in err and key not in out + err  # httpx logged URLs, without the key
    assert spooled_files(spool) == []
    assert tiled_client["processed/ptystream/flushed-run"].metadata["status"] == "finished"


def test_flush_with_the_server_down_keeps_the_files(tmp_path, estimate, keep):
    spool = tmp_path / "spool"
    keep(spool, "kept-run", estimate(3, final=True))
    flush = ptystream("flush", "--spool", str(spool), "--tiled", "http://127.0.0.1:9/api/v1")
    out, err = flush.communicate(timeout=120)
    assert flush.returncode == 2 and "cannot reach Tiled at http://127.0.0.1:9/api/v1" in err
    assert [p.name for p in spooled_files(spool)] == ["kept-run.npz"]


def test_watch_without_a_streaming_cache_reads_the_metadata(
    tiled_client, tiled_server, tiled_without_streaming, publish_run
):
    """A Tiled app on the same storage without a streaming cache (as a facility server
    configured without ``streaming_cache``): watch says so once and follows by reading."""
    from ptystream.store.access import connect

    lines: list[str] = []
    client = connect(tiled_without_streaming, tiled_server.api_key)
    thread = threading.Thread(
        target=watch,
        args=(client, "unpushed-run"),
        kwargs={"show": lines.append, "poll_s": 0.5},
        daemon=True,
    )
    thread.start()
    time.sleep(2)
    publish_run(TiledPublisher(tiled_client), "unpushed-run", 91, "finished", n_live=4)
    thread.join(60)
    assert not thread.is_alive(), lines
    notes = [line for line in lines if line.startswith("(no live push from this server")]
    assert len(notes) == 1 and "reading every 0.5 s" in notes[0]
    iterations = {
        line.split("iteration ")[1].split(" ")[0] for line in lines if "iteration" in line
    }
    assert len(iterations) >= 3 and "45" in iterations
    assert lines[-1].startswith("finished: result at processed/ptystream/unpushed-run/final")
