"""The facility set-up of deploy/, brought up for real on this machine.

A private PostgreSQL cluster (Debian's binaries; roles and databases from
deploy/postgresql/setup.sh), `tiled serve config deploy/tiled/config.yml` with the access tags
compiled and the keys made by deploy/tiled/, a `bluesky-0MQ-proxy` and `ptystream serve` with
the reconstruction's key, all as subprocesses on free 127.0.0.1 ports. A simulated scan goes
through them (documents over 0MQ, the raw run written by TiledWriter with the raw writer's
key); then the result is checked with each key, the keys' limits are tried, and every log and
output is searched for the secrets.

About 45 s, so it is part of ``make test`` (which installs PostgreSQL with apt-get where it is
missing); marked ``deploy`` so that ``make test-deploy`` (``-m deploy``) runs it alone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
import zmq
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from bluesky_tiled_plugins import TiledWriter
from tiled.client import from_uri
from tiled.client.utils import ClientError

from ptystream.sim.scan import build_simulation
from ptystream.store.access import AccessError, connect

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
N_POINTS = 40
USERS = ("admin", "raw-writer", "reconstruction", "viewer")


def postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not versions:
        pytest.fail("PostgreSQL is not installed: run `make test-deploy` (it installs it)")
    return versions[-1].parent


def as_postgres(args: list) -> list:
    """``args`` run as the postgres user when we are root (PostgreSQL refuses to run as root)."""
    return ["runuser", "-u", "postgres", "--", *map(str, args)] if os.geteuid() == 0 else args


class Service:
    """A subprocess in its own process group, its output in a log file."""

    def __init__(self, name, args, logs: Path, env):
        self.log = logs / f"{name}.log"
        self._out = open(self.log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(a) for a in args],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not seen in {self.log}:\n{self.text()[-4000:]}")

    def stop(self):
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


@contextlib.contextmanager
def private_postgres(base: Path, secrets_seen: list, port: int):
    """A throw-away PostgreSQL cluster on ``port`` (a free one) with the deploy/postgresql
    set-up; yields (port, PGPASSFILE). The tiled password lives only in the password file."""
    pg = postgres_bin()
    base.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    data = base / "data"
    subprocess.run(
        as_postgres(
            [
                pg / "initdb",
                "-D",
                data,
                "-U",
                "postgres",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        as_postgres(
            [pg / "pg_ctl", "-D", data, "-l", base / "postgresql.log", "-w", "-o", opts, "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        password = secrets.token_hex(24)
        secrets_seen.append(password)
        passfile = base.parent / "pgpass"
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"127.0.0.1:{port}:*:tiled:{password}\n")
        setup = subprocess.run(
            ["bash", DEPLOY / "postgresql" / "setup.sh", passfile],
            env={
                **os.environ,
                "PSQL": " ".join(as_postgres([pg / "psql", "-h", base, "-p", str(port)])),
            },
            capture_output=True,
            text=True,
        )
        assert setup.returncode == 0, setup.stderr
        yield port, passfile
    finally:
        subprocess.run(
            as_postgres([pg / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )


@pytest.fixture(scope="module")
def profile(small_profile):
    profile = small_profile(photons_per_frame=None, n_points=N_POINTS, object_px=144)
    engine = profile.engine.model_copy(update={"final_epochs": 80})
    return profile.model_copy(update={"engine": engine})


@pytest.fixture(scope="module")
def facility(profile, free_port):
    """PostgreSQL, Tiled, the keys, the proxy and `ptystream serve`, as at the facility."""
    # Not pytest's tmp_path: it is private to root, and the postgres user must reach its dir.
    tmp = Path(tempfile.mkdtemp(prefix="ptystream-facility-"))
    tmp.chmod(0o755)
    logs, keys = tmp / "logs", tmp / "keys"
    for d in (logs, keys, tmp / "tiled", tmp / "detector"):
        d.mkdir()
    found = {"secrets": [], "services": []}
    services = found["services"]
    try:
        with private_postgres(tmp / "pg", found["secrets"], free_port()) as (pg_port, passfile):
            passwords = {u: secrets.token_hex(16) for u in USERS}
            env = {k: v for k, v in os.environ.items() if not k.startswith("TILED_")}
            env.update(
                PGPASSFILE=str(passfile),
                PGUSER="tiled",
                PTYSTREAM_DB_HOST="127.0.0.1",
                PTYSTREAM_DB_PORT=str(pg_port),
                PTYSTREAM_TILED_DATA=str(tmp / "tiled"),
                PTYSTREAM_DETECTOR_DATA=str(tmp / "detector"),
                PTYSTREAM_TILED_SECRET_KEY=secrets.token_hex(32),
                **{
                    f"PTYSTREAM_{u.upper().replace('-', '_')}_PASSWORD": p
                    for u, p in passwords.items()
                },
                TF_CPP_MIN_LOG_LEVEL="2",
            )
            found["secrets"] += [*passwords.values(), env["PTYSTREAM_TILED_SECRET_KEY"]]
            port = free_port()
            uri = f"http://127.0.0.1:{port}/api/v1"
            tiled = Service(
                "tiled",
                [
                    BIN / "tiled",
                    "serve",
                    "config",
                    DEPLOY / "tiled" / "config.yml",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    port,
                ],
                logs,
                env,
            )
            services.append(tiled)
            tiled.wait_for("Uvicorn running on", timeout=120)
            tiled_dir = DEPLOY / "tiled"
            for name, args in [
                (
                    "compile",
                    [
                        tiled_dir / "compile_access_tags.py",
                        tiled_dir / "config.yml",
                        tiled_dir / "access_tags.yml",
                    ],
                ),
                (
                    "setup",
                    [DEPLOY / "tiled" / "setup_facility.py", "--tiled", uri, "--keys-dir", keys],
                ),
            ]:
                done = subprocess.run(
                    [sys.executable, *args], env=env, capture_output=True, text=True, timeout=120
                )
                (logs / f"{name}.log").write_text(done.stdout + done.stderr)
                assert done.returncode == 0, done.stdout + done.stderr
            api_keys = {u: (keys / f"{u}.key").read_text().strip() for u in USERS[1:]}
            found["secrets"] += list(api_keys.values())
            assert all((keys / f"{u}.key").stat().st_mode & 0o077 == 0 for u in api_keys)

            port_in, port_out = free_port(), free_port()
            services.append(
                Service(
                    "proxy",
                    [
                        BIN / "bluesky-0MQ-proxy",
                        "--in-address",
                        f"127.0.0.1:{port_in}",
                        "--out-address",
                        f"127.0.0.1:{port_out}",
                    ],
                    logs,
                    env,
                )
            )
            profile_file = tmp / "profile.yaml"
            profile_file.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
            serve = Service(
                "serve",
                [
                    BIN / "ptystream",
                    "serve",
                    "--profile",
                    profile_file,
                    "--zmq",
                    f"127.0.0.1:{port_out}",
                    "--tiled",
                    uri,
                    "--api-key-file",
                    keys / "reconstruction.key",
                    "--data-dir",
                    tmp / "serve",
                ],
                logs,
                {k: v for k, v in env.items() if not k.endswith("_PASSWORD")},
            )
            services.append(serve)
            serve.wait_for("ptystream serve: ready", timeout=300)
            yield {
                "uri": uri,
                "keys": keys,
                "api_keys": api_keys,
                "port_in": port_in,
                "tmp": tmp,
                "logs": logs,
                "found": found,
                "tiled": tiled,
            }
    finally:
        for service in reversed(services):
            service.stop()
        if os.environ.get("PTYSTREAM_KEEP_FACILITY"):  # to read the logs after a failure
            print(f"facility files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def http_status(exc: ClientError) -> int:
    return exc.response.status_code


def test_a_scan_through_the_facility_and_the_keys_limits(facility, profile, capfd, check_finished):
    uri, api_keys = facility["uri"], facility["api_keys"]
    raw_writer = from_uri(uri, api_key=api_keys["raw-writer"])
    publisher = Publisher(f"127.0.0.1:{facility['port_in']}")
    try:
        RE = RunEngine({})
        RE.subscribe(publisher)
        RE.subscribe(TiledWriter(raw_writer["raw"], batch_size=profile.publish.raw_batch_size))
        time.sleep(1.0)  # PUB/SUB: let the subscription reach the proxy before publishing
        sim = build_simulation(profile)
        (uid,) = RE(sim.plan())
    finally:
        publisher._socket.setsockopt(zmq.LINGER, 0)
        publisher.close()

    # The result, read with the reconstruction's key and with the read-only key.
    reconstruction = from_uri(uri, api_key=api_keys["reconstruction"])
    check_finished(reconstruction, uid, sim, frames=N_POINTS)
    viewer = from_uri(uri, api_key=api_keys["viewer"])
    node = viewer["processed/ptystream"][uid]
    assert node.metadata["status"] == "finished"
    assert (
        node["final/object"].read().shape
        == reconstruction["processed/ptystream"][uid]["final/object"].read().shape
    )
    # The raw run TiledWriter wrote is there and readable by all three.
    assert uid in raw_writer["raw"] and uid in reconstruction["raw"] and uid in viewer["raw"]

    # The reconstruction's key writes under processed/, not under raw/.
    trial = reconstruction["processed/ptystream"].create_container(
        "deploy-test", metadata={"kind": "test"}
    )
    trial.update_metadata({"kind": "test", "n": 1})
    with pytest.raises(ClientError) as refused:
        reconstruction["raw"].create_container("not-allowed")
    assert http_status(refused.value) == 403
    with pytest.raises(ClientError) as refused:
        reconstruction["raw"][uid].update_metadata({"tampered": True})
    assert http_status(refused.value) == 403
    # ... and the raw writer's key does not write under processed/.
    with pytest.raises(ClientError) as refused:
        raw_writer["processed/ptystream"][uid].update_metadata({"tampered": True})
    assert http_status(refused.value) == 403

    # The read-only key reads but cannot write anywhere (the key has no write scope: 401).
    for write in (
        lambda: viewer["processed/ptystream"].create_container("nope"),
        lambda: viewer["processed/ptystream"][uid].update_metadata({"x": 1}),
        lambda: viewer["raw"].create_container("nope"),
    ):
        with pytest.raises(ClientError) as refused:
            write()
        assert http_status(refused.value) in (401, 403)
    assert "nope" not in reconstruction["processed/ptystream"]

    # A wrong key: one clear message, from the library and from the command line.
    wrong = facility["tmp"] / "wrong.key"
    wrong.write_text("0123456789abcdef-not-a-key\n")
    with pytest.raises(AccessError, match=r"refused the API key \(HTTP 401\)"):
        connect(uri, "0123456789abcdef-not-a-key")
    watch = subprocess.run(
        [BIN / "ptystream", "watch", uid, "--tiled", uri, "--api-key-file", wrong],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert watch.returncode == 2, watch.stdout + watch.stderr
    assert "refused the API key" in watch.stderr
    # The read-only key is accepted by the same commands.
    ok = subprocess.run(
        [
            BIN / "ptystream",
            "watch",
            uid,
            "--tiled",
            uri,
            "--api-key-file",
            facility["keys"] / "viewer.key",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # No password, secret key or API key in any log or output.
    captured = capfd.readouterr()
    texts = {
        str(p): p.read_text(errors="replace")
        for p in [*facility["logs"].iterdir(), facility["tmp"] / "pg" / "postgresql.log"]
    }
    texts["watch"] = watch.stdout + watch.stderr + ok.stdout + ok.stderr
    texts["captured"] = captured.out + captured.err
    assert "Initializing links store" in texts[str(facility["logs"] / "tiled.log")]
    for secret in facility["found"]["secrets"]:
        for name, text in texts.items():
            assert secret not in text, f"a secret appears in {name}"
            assert secret[:16] not in text, f"part of a secret appears in {name}"
