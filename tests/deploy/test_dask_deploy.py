"""deploy/dask: the manifests parse and size the workers as the README says, the Slurm script
and batch file run, and a standing cluster of real ``dask scheduler`` and ``dask worker``
processes (no LocalCluster) runs ``ptystream reprocess --scheduler``."""

from __future__ import annotations

import contextlib
import json
import os
import py_compile
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from dask.utils import parse_bytes

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "dask"
BIN = Path(sys.executable).parent  # the venv's dask and ptystream commands

#: Kubernetes quantity suffixes (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/)
_QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6}
_QUANTITY |= {"G": 10**9, "T": 10**12, "": 1}


def _quantity_bytes(text: str) -> int:
    number, suffix = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return int(float(number) * _QUANTITY[suffix])


def _manifests() -> list[tuple[Path, dict]]:
    return [
        (path, doc)
        for path in sorted(DEPLOY.rglob("*.y*ml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def _worker_containers():
    """(file, container) for every container whose command runs ``dask worker``."""
    for path, doc in _manifests():
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec", spec)  # Deployment/Job, or a bare Pod
        for container in pod.get("containers", []):
            argv = [*container.get("command", []), *container.get("args", [])]
            if argv[:2] == ["dask", "worker"] or "dask-worker" in argv[:1]:
                yield path, container


def test_every_yaml_file_parses():
    files = sorted(DEPLOY.rglob("*.y*ml"))
    assert {"scheduler.yaml", "workers.yaml"} <= {f.name for f in files}
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path
        for doc in docs:  # every manifest is namespace-agnostic (kubectl -n chooses)
            assert "namespace" not in doc.get("metadata", {}), path


def test_workers_run_one_thread_with_the_containers_memory_limit():
    containers = list(_worker_containers())
    assert containers
    for path, container in containers:
        argv = [*container.get("command", []), *container.get("args", [])]
        assert argv[argv.index("--nthreads") + 1] == "1", path
        limit = container["resources"]["limits"]["memory"]
        assert container["resources"]["requests"]["memory"] == limit, path
        value = argv[argv.index("--memory-limit") + 1]
        ref = re.fullmatch(r"\$\((\w+)\)", value)
        if ref is None:  # a literal: the same number of bytes as the container's limit
            assert parse_bytes(value) == _quantity_bytes(limit), path
        else:  # a variable the downward API sets to this container's limit, in bytes
            env = {e["name"]: e for e in container.get("env", [])}
            field = env[ref.group(1)]["valueFrom"]["resourceFieldRef"]
            assert field["resource"] == "limits.memory", path
            assert field.get("containerName", container["name"]) == container["name"], path
            assert str(field.get("divisor", "1")) == "1", path


def test_workers_connect_to_the_scheduler_service():
    services = [d for _, d in _manifests() if d["kind"] == "Service"]
    (service,) = [s for s in services if s["metadata"]["name"] == "ptystream-dask-scheduler"]
    assert [p["port"] for p in service["spec"]["ports"]] == [8786]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"  # never exposed outside
    for path, container in _worker_containers():
        argv = [*container.get("command", []), *container.get("args", [])]
        assert "tcp://ptystream-dask-scheduler:8786" in argv, path
        assert container["image"] == "ghcr.io/YOUR-ORG/ptystream:VERSION", path


def test_slurm_cluster_script_compiles_and_explains_itself(tmp_path):
    script = DEPLOY / "slurm_cluster.py"
    # compiled into tmp_path: no __pycache__ left in deploy/
    py_compile.compile(str(script), cfile=str(tmp_path / "slurm_cluster.pyc"), doraise=True)
    run = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "--jobs" in run.stdout and "--memory" in run.stdout and "--queue" in run.stdout
    dry = [sys.executable, str(script), "--print-job-script", "--host", "127.0.0.1", "--port", "0"]
    run = subprocess.run(dry, capture_output=True, text=True, timeout=120)
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:  # not a dependency of ptystream: the script says what to install
        assert run.returncode == 2 and "pip install dask-jobqueue==0.9.0" in run.stderr
    else:  # the job script Slurm would get: one core, one single-threaded worker
        assert run.returncode == 0, run.stderr
        assert "#SBATCH --cpus-per-task=1" in run.stdout
        assert "--nthreads 1" in run.stdout and "--memory-limit 7372MiB" in run.stdout


# -- real processes ----------------------------------------------------------------------------


@contextlib.contextmanager
def _processes(logs: Path):
    """``start(name, argv, **popen)`` runs a command in its own session (logging to
    ``logs/name.log``); on exit every process group started is ended, TERM then KILL."""
    started: list[subprocess.Popen] = []
    logs.mkdir(parents=True, exist_ok=True)

    def start(name: str, argv: list, **kwargs) -> subprocess.Popen:
        with open(logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the nanny's child included
                **kwargs,
            )
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(started):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
            proc.wait(timeout=15)


def _start_scheduler(start, tmp: Path) -> str:
    """A real ``dask scheduler`` on a free 127.0.0.1 port; returns its address."""
    info = tmp / "scheduler.json"
    proc = start(
        "scheduler",
        [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
        + ["--scheduler-file", info],  # where it writes the port it got
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp / "logs" / "scheduler.log").read_text()[-3000:]
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.loads(info.read_text())["address"]
        time.sleep(0.2)
    raise TimeoutError("the scheduler wrote no address in 60 s")


def _workers(address: str) -> dict:
    from distributed import Client

    with Client(address, timeout=30) as client:
        return {w["name"]: w for w in client.scheduler_info(n_workers=-1)["workers"].values()}


def test_reprocess_on_a_standing_cluster(tmp_path, small_profile, simulated_npz):
    """``dask scheduler`` + two ``dask worker`` processes, started as an operator would (in
    their own directory), then ``ptystream reprocess --scheduler``: the tasks run there."""
    from distributed import Client

    profile = small_profile(photons_per_frame=None)
    profile_file = tmp_path / "test.yaml"
    profile_file.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
    scans = [simulated_npz(profile, tmp_path / f"scan{i}.npz")[0] for i in (1, 2)]
    out = tmp_path / "out"
    for d in ("workers", "client"):
        (tmp_path / d).mkdir()

    with _processes(tmp_path / "logs") as start:
        address = _start_scheduler(start, tmp_path)
        for i in (1, 2):
            start(
                f"worker{i}",
                [BIN / "dask", "worker", address, "--nthreads", "1", "--memory-limit", "3GiB"]
                + ["--host", "127.0.0.1", "--no-dashboard", "--name", f"worker{i}"],
                cwd=tmp_path / "workers",
            )
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=120)

        argv = [BIN / "ptystream", "reprocess", *scans, "--profile", profile_file]
        argv += ["--epochs", 5, "--scheduler", address, "--out", out]
        run = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path / "client",
        )
        logs = "\n".join(p.read_text()[-1500:] for p in sorted((tmp_path / "logs").iterdir()))
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:] + logs
        assert "2 to reprocess, 0 skipped" in run.stdout

        with Client(address, timeout=30) as client:
            # ptystream's client set TensorFlow up on the standing workers, which had not
            # imported it when they started
            plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
            loaded = client.run(lambda: "tensorflow" in sys.modules)
        assert len(plugins) == 2 and all("ptystream-tensorflow" in p for p in plugins.values())
        assert all(loaded.values()), loaded

    rows = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in rows] == ["scan1.npz", "scan2.npz"]
    for row in rows:
        assert row["status"] == "finished", row
        assert row["frames"] == 90 and row["iterations"] == 5 * 6  # 90 frames, batches of 16
        result = Path(row["result"])
        assert result.is_file() and result.parent == out, row
        with h5py.File(result) as f:
            obj = f["object"][()]
        assert obj.dtype == np.complex64 and np.isfinite(obj).all()
    assert not list((tmp_path / "workers").rglob("*.h5"))  # nothing in the workers' directory


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_sbatch_file_starts_named_single_threaded_workers(tmp_path):
    """deploy/dask/slurm-workers.sbatch run by bash with a stand-in for srun (SLURM_NTASKS
    copies of its command, each with its SLURM_PROCID): its workers join a real scheduler."""
    batch = DEPLOY / "slurm-workers.sbatch"
    assert subprocess.run(["bash", "-n", batch], capture_output=True).returncode == 0
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text(
        "#!/bin/bash\n"
        "while [[ $1 == -* ]]; do shift; done\n"  # srun's own options
        'for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" & done\n'
        "wait\n"
    )
    (fake / "srun").chmod(0o755)
    env = os.environ | {
        "PATH": f"{fake}:{os.environ['PATH']}",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_ID": "4242",
        "PTYSTREAM_VENV": str(BIN.parent),
        "WORKER_MEMORY": "2GiB",
        "DASK_WORKER_OPTIONS": "--host 127.0.0.1",
    }
    with _processes(tmp_path / "logs") as start:
        address = _start_scheduler(start, tmp_path)
        job = start("job", ["bash", batch, address], env=env, cwd=tmp_path)
        deadline = time.monotonic() + 90
        workers: dict = {}
        while len(workers) < 2 and time.monotonic() < deadline:
            assert job.poll() is None, (tmp_path / "logs" / "job.log").read_text()[-3000:]
            time.sleep(1)
            workers = _workers(address)
    assert set(workers) == {"slurm-4242-0", "slurm-4242-1"}
    for w in workers.values():
        assert w["nthreads"] == 1 and w["memory_limit"] == 2 * 2**30
