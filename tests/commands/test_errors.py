"""Errors and notices of the ``ptystream`` commands, from the real executable in a subprocess:
one line on stderr, ``ptystream: <what>: <why> (<what to do>)``, no traceback, exit status 2
for bad input; the dashboard's port fallback, ``serve``'s waiting line, ``--version``, and
TensorFlow's import chatter kept off stderr unless ``-v``."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

BIN = Path(sys.executable).parent
CHATTER = ("absl::InitializeLog", "oneDNN custom operations")


def ptystream(*args, env=None, timeout=300):
    """Run the real command; ``env`` entries set to None are removed from its environment."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("TF_ENABLE_ONEDNN_OPTS", None)  # keep TensorFlow's oneDNN banner on
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return subprocess.run(
        [BIN / "ptystream", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def one_line_error(run) -> str:
    """The only line of a failed run's stderr (exit status 2), without its ``ptystream: ``."""
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptystream: "), run.stderr
    return lines[0].removeprefix("ptystream: ")


class Process:
    """A command in the background; its stdout and stderr lines are collected by a thread."""

    def __init__(self, *args, env=None):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [BIN / "ptystream", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not seen; output:\n" + "\n".join(self.lines))

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


# -- scan files --------------------------------------------------------------------------------


def _cxi(path: Path, *, frames=(3, 8, 8), without=()):
    with h5py.File(path, "w") as f:
        fields = {
            "entry_1/instrument_1/detector_1/data": np.ones(frames, np.int32),
            "entry_1/instrument_1/detector_1/distance": 1.0,
            "entry_1/instrument_1/detector_1/x_pixel_size": 1e-5,
            "entry_1/instrument_1/detector_1/basis_vectors": [[0, 1e-5], [1e-5, 0], [0, 0]],
            "entry_1/instrument_1/source_1/wavelength": 1e-10,
            "entry_1/sample_1/geometry_1/translation": np.zeros((frames[0], 3)),
        }
        for name, value in fields.items():
            if name not in without:
                f[name] = value
    return path


def _npz(path: Path, frames=(3, 100, 120)):
    np.savez(
        path,
        frames=np.ones(frames),
        positions_m=np.zeros((frames[0], 2)),
        wavelength_m=1e-10,
        distance_m=1.0,
        detector_pixel_size_m=1e-5,
    )
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "absent.cxi", "{path}: no such file"),
        (lambda d: d / "absent.npz", "{path}: no such file"),
        (
            lambda d: (d / "text.cxi").write_text("not HDF5") and d / "text.cxi",
            "{path}: not an HDF5 file (",
        ),
        (
            lambda d: (d / "text.npz").write_text("not a zip") and d / "text.npz",
            "{path}: not an NPZ file (",
        ),
        (
            lambda d: _cxi(d / "s.cxi", without=["entry_1/instrument_1/detector_1/data"]),
            "{path}: entry_1/instrument_1/detector_1/data is missing (",
        ),
        (
            lambda d: _cxi(d / "s.cxi", without=["entry_1/instrument_1/source_1/wavelength"]),
            "{path}: entry_1/instrument_1/source_1/wavelength is missing (",
        ),
        (
            lambda d: _cxi(d / "s.cxi", frames=(3, 100, 120)),
            "{path}: frames are 100 x 120, not square (",
        ),
        (lambda d: _npz(d / "s.npz"), "{path}: frames are 100 x 120, not square ("),
    ],
    ids=[
        "missing-cxi",
        "missing-npz",
        "not-hdf5",
        "not-npz",
        "cxi-no-data",
        "cxi-no-wavelength",
        "cxi-not-square",
        "npz-not-square",
    ],
)
def test_scan_file_errors_name_the_file_and_what_is_wrong(tmp_path, make, message):
    path = make(tmp_path)
    run = ptystream("reconstruct", path, "--profile", "demo", "--out", tmp_path / "o.h5")
    assert one_line_error(run).startswith(message.format(path=path))
    assert not (tmp_path / "o.h5").exists()


# -- flush, reprocess ------------------------------------------------------------------------


def test_flush_of_a_spool_that_does_not_exist_fails(tmp_path):
    spool = tmp_path / "no-spool"
    run = ptystream("flush", "--spool", spool, "--tiled", "http://127.0.0.1:1/api/v1")
    assert one_line_error(run).startswith(f"{spool}: no such directory (")


def test_reprocess_of_nothing_fails(tmp_path):
    run = ptystream("reprocess", "--profile", "demo", "--out", tmp_path / "out")
    assert one_line_error(run).startswith("reprocess: nothing selected (")
    assert not (tmp_path / "out").exists()


def test_reprocess_selecting_nothing_leaves_earlier_results(tmp_path, tiled_server, tiled_client):
    from ptystream.store.layout import raw_catalog

    raw_catalog(tiled_client)
    key = tmp_path / "key"
    key.write_text(tiled_server.api_key)
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"summary.json": json.dumps([{"label": "scan 1"}]), "contact-sheet.png": "png"}
    for name, text in earlier.items():
        (out / name).write_text(text)
    run = ptystream(
        "reprocess",
        "--where",
        "sample=nothing-like-it",
        "--tiled",
        tiled_server.uri.split("?")[0],
        "--api-key-file",
        key,
        "--profile",
        "demo",
        "--out",
        out,
    )
    message = one_line_error(run)
    assert message.startswith("--where sample=nothing-like-it: no run in catalog 'raw' matches")
    assert {p.name: p.read_text() for p in out.iterdir()} == earlier


# -- dashboard, serve ------------------------------------------------------------------------


def test_dashboard_on_a_port_in_use_takes_a_free_one_and_says_so(tmp_path, tiled_server):
    key = tmp_path / "key"
    key.write_text(tiled_server.api_key)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dashboard = Process(
            "dashboard",
            "--tiled",
            tiled_server.uri.split("?")[0],
            "--api-key-file",
            key,
            "--port",
            port,
        )
        try:
            url = dashboard.wait_for(r"dashboard at (http://127\.0\.0\.1:(\d+)/)", timeout=120)
            assert int(url.group(2)) != port
            dashboard.wait_for(
                rf"^ptystream: 127\.0\.0\.1:{port}: address already in use \(", timeout=5
            )
        finally:
            assert dashboard.terminate() == 0, "\n".join(dashboard.lines)
    assert not any("Traceback" in line for line in dashboard.lines)


def test_serve_says_it_is_waiting_when_nothing_arrives(
    tmp_path, small_profile, tiled_server, free_port
):
    """With ``--idle-notice 1`` a ``serve`` fed nothing says so every second; TensorFlow,
    imported on its worker thread, leaves no import chatter among its lines."""
    profile = small_profile(photons_per_frame=None, n_points=20, object_px=144)
    profile_file = tmp_path / "test.yaml"
    profile_file.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
    key = tmp_path / "key"
    key.write_text(tiled_server.api_key)
    port = free_port()  # nothing publishes there
    serve = Process(
        "serve",
        "--profile",
        profile_file,
        "--zmq",
        f"127.0.0.1:{port}",
        "--tiled",
        tiled_server.uri.split("?")[0],
        "--api-key-file",
        key,
        "--data-dir",
        tmp_path / "data",
        "--idle-notice",
        "1",
    )
    try:
        serve.wait_for("ptystream serve: ready", timeout=240)
        serve.wait_for(
            rf"^ptystream serve: waiting for documents on 0MQ proxy at 127\.0\.0\.1:{port} "
            r"\(none yet, ready \d+ s ago\)$",
            timeout=30,
        )
    finally:
        assert serve.terminate() == 0, "\n".join(serve.lines)
    output = "\n".join(serve.lines)
    assert "ptystream serve: stopped" in output
    assert not any(text in output for text in CHATTER), output


# -- --version, TensorFlow's chatter -------------------------------------------------------------


def test_version():
    import ptystream as package

    run = ptystream("--version")
    assert run.returncode == 0 and run.stdout == f"ptystream {package.__version__}\n"


def test_tensorflow_chatter_only_with_verbose(tmp_path, small_profile, simulated_npz):
    profile = small_profile(photons_per_frame=None, n_points=20, object_px=144)
    profile_file = tmp_path / "small.yaml"
    profile_file.write_text(profile.model_dump_json())
    scan, _ = simulated_npz(profile, tmp_path / "scan.npz")
    args = ["reconstruct", scan, "--profile", profile_file, "--engine", "ad", "--iterations", 1]
    quiet = ptystream(*args, "--out", tmp_path / "quiet.h5", env={"TF_CPP_MIN_LOG_LEVEL": None})
    assert quiet.returncode == 0, quiet.stderr
    assert not any(text in quiet.stderr for text in CHATTER), quiet.stderr
    loud = ptystream("-v", *args, "--out", tmp_path / "loud.h5", env={"TF_CPP_MIN_LOG_LEVEL": None})
    assert loud.returncode == 0, loud.stderr
    assert any(text in loud.stderr for text in CHATTER), loud.stderr


def test_quiet_tensorflow_import_keeps_other_threads_lines():
    """While TensorFlow is imported with fd 2 filtered, a thread logging meanwhile loses no
    line and keeps its order; only the import's chatter is gone."""
    script = """
import logging, threading, time
logging.basicConfig(level=logging.INFO, format="%(message)s")
stop = threading.Event()
def tick():
    i = 0
    while not stop.is_set():
        logging.getLogger("other").info("tick %d", i)
        i += 1
        time.sleep(0.02)
thread = threading.Thread(target=tick)
thread.start()
from ptystream.engine import configure_tensorflow
configure_tensorflow(1)
time.sleep(0.1)
stop.set()
thread.join()
logging.getLogger("other").info("done")
"""
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert run.returncode == 0, run.stderr
    assert not any(text in run.stderr for text in CHATTER), run.stderr
    ticks = [int(m) for m in re.findall(r"^tick (\d+)$", run.stderr, re.MULTILINE)]
    assert len(ticks) > 20 and ticks == list(range(len(ticks))), run.stderr
    assert run.stderr.rstrip().endswith("done")


def test_port_fallback_only_where_another_port_helps():
    """In use or privileged: any free port instead; an address not of this machine: raised."""
    import errno

    from ptystream.commands.demo import start_with_port_fallback

    def start(*, port, host):
        if port == 8765:
            raise OSError(code, os.strerror(code))
        return (host, port)

    code = errno.EADDRINUSE
    started, taken = start_with_port_fallback(start, 8765, host="127.0.0.1")
    assert started == ("127.0.0.1", 0) and taken.errno == errno.EADDRINUSE
    assert start_with_port_fallback(start, 9000, host="h") == (("h", 9000), None)
    code = errno.EADDRNOTAVAIL
    with pytest.raises(OSError, match="assign requested address"):
        start_with_port_fallback(start, 8765, host="10.99.99.99")
