"""Run Dask workers for ``ptystream reprocess`` as Slurm jobs, with dask-jobqueue.

Run this on a machine that can submit jobs (a login node) and that the compute nodes can
reach. It starts a Dask scheduler in this process, submits ``--jobs`` Slurm jobs of one
single-threaded ``dask worker`` each, prints the scheduler's address, and stays up until
Ctrl-C (or SIGTERM), which cancels the jobs. In another shell::

    ptystream reprocess 100:140 --tiled https://tiled.facility/api/v1 \\
        --api-key-file ~/.ptystream-key --profile p25-nearfield --epochs 200 \\
        --scheduler tcp://login01:8786

dask-jobqueue is not a dependency of ptystream; install it into the same environment::

    pip install dask-jobqueue==0.9.0

0.9.0 (2024-08, the latest release) requires only dask and distributed >= 2022.02; its job
script and scheduler were checked with distributed 2026.8.0, ptystream's pin.

The workers run ``--python`` (default: the interpreter running this script), so that
environment must exist at the same path on the compute nodes (a shared file system) and have
ptystream installed. ``--print-job-script`` shows the script Slurm would get and exits
without submitting anything: read it before the first real run. See README.md beside this
file for sizing, networking and TLS.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Start Dask workers as Slurm jobs for 'ptystream reprocess --scheduler'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--jobs", type=int, default=4, help="Slurm jobs, one worker each")
    parser.add_argument(
        "--adapt",
        action="store_true",
        help="submit jobs only while tasks wait (0 to --jobs) instead of a fixed number",
    )
    parser.add_argument("--queue", help="Slurm partition (sbatch -p); default: the site's")
    parser.add_argument("--account", help="Slurm account to charge (sbatch -A)")
    parser.add_argument(
        "--memory",
        default="8GiB",
        help="memory of each job (sbatch --mem): TensorFlow ~0.9 GiB + the scan's reconstruction",
    )
    parser.add_argument(
        "--worker-memory",
        help="Dask memory limit of the worker; default 90%% of --memory, so that Dask restarts a "
        "worker that grows too large before Slurm kills the whole job",
    )
    parser.add_argument("--walltime", default="04:00:00", help="time limit of each job")
    parser.add_argument(
        "--job-extra",
        action="append",
        default=[],
        metavar="OPTION",
        help="extra '#SBATCH OPTION' line, repeatable, e.g. --job-extra=--gpus-per-task=1 "
        "(write it with '=': the value starts with '-')",
    )
    parser.add_argument(
        "--prologue",
        action="append",
        default=[],
        metavar="COMMAND",
        help="shell line run before the worker, repeatable, e.g. 'module load cuda'",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the workers' Python (ptystream installed), at the same path on the compute nodes",
    )
    parser.add_argument(
        "--host",
        default=socket.gethostname(),
        help="address the scheduler binds to; the compute nodes must reach it. Prefer the "
        "cluster's private network over a public interface",
    )
    parser.add_argument(
        "--interface",
        help="network interface for the scheduler and the workers (e.g. ib0); overrides --host",
    )
    parser.add_argument("--port", type=int, default=8786, help="scheduler port (0: any free)")
    parser.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="use TLS: DIR holds ca.pem, scheduler.pem/.key, worker.pem/.key and client.pem/.key "
        "(README.md: Security); it must be readable from the compute nodes",
    )
    parser.add_argument(
        "--print-job-script",
        action="store_true",
        help="print the job script Slurm would get, then exit without submitting",
    )
    return parser


def make_cluster(args: argparse.Namespace):
    """The SLURMCluster described by ``args`` (its scheduler starts here, no job yet)."""
    # Imported here, not at the top, so that --help works without dask-jobqueue installed.
    from dask.utils import parse_bytes
    from dask_jobqueue import SLURMCluster

    # In whole MiB and without a space: the value lands unquoted on the worker's command line.
    worker_memory = args.worker_memory or f"{int(0.9 * parse_bytes(args.memory)) // 2**20}MiB"
    security = None
    protocol = "tcp://"
    if args.tls_dir:
        from pathlib import Path

        from distributed.security import Security

        tls = Path(args.tls_dir).resolve()
        security = Security(
            tls_ca_file=str(tls / "ca.pem"),
            tls_scheduler_cert=str(tls / "scheduler.pem"),
            tls_scheduler_key=str(tls / "scheduler.key"),
            tls_worker_cert=str(tls / "worker.pem"),
            tls_worker_key=str(tls / "worker.key"),
            tls_client_cert=str(tls / "client.pem"),
            tls_client_key=str(tls / "client.key"),
            require_encryption=True,  # refuse plain tcp:// connections
        )
        protocol = "tls://"
    scheduler_options = {
        "port": args.port,
        # No dashboard: without bokeh (not a dependency of ptystream) there is none to see, yet
        # its HTTP server would listen on every interface. For one:
        # pip install "dask[diagnostics]==2026.8.0" and pass
        # "dashboard_address": "127.0.0.1:8787", then tunnel to it with ssh -L.
        "dashboard_address": None,
    }
    if args.interface:
        scheduler_options["interface"] = args.interface
    else:
        scheduler_options["host"] = args.host
    return SLURMCluster(
        queue=args.queue,
        account=args.account,
        # One worker process of one thread per job: TensorFlow is pinned to one thread by
        # ptystream's worker plugin, and a second thread would run a second reconstruction
        # in the same process, sharing its memory.
        cores=1,
        processes=1,
        memory=args.memory,  # sbatch --mem
        walltime=args.walltime,
        job_extra_directives=args.job_extra,
        job_script_prologue=args.prologue,
        python=args.python,
        # dask-jobqueue also passes --memory-limit <--memory>; the last one given wins.
        worker_extra_args=["--memory-limit", worker_memory],
        interface=args.interface,
        protocol=protocol,
        security=security,
        scheduler_options=scheduler_options,
        # A worker whose scheduler is gone for this long exits and frees its allocation.
        death_timeout=120,
        job_name="ptystream-dask",
    )


def _client_tls_environment(security) -> str:
    """Shell lines that give ``ptystream reprocess`` (any dask client) the client certificate."""
    names = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": security.tls_ca_file,
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": security.tls_client_cert,
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": security.tls_client_key,
    }
    return "in the client's shell:\n" + "\n".join(f"export {k}={v}" for k, v in names.items())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        print("dask-jobqueue is not installed: pip install dask-jobqueue==0.9.0", file=sys.stderr)
        return 2
    cluster = make_cluster(args)
    try:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        # Ctrl-C and SIGTERM (kill, the end of a tmux session) both raise KeyboardInterrupt
        # below, which cancels the jobs. Importing dask_jobqueue made SIGINT call sys.exit().
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        if args.adapt:
            cluster.adapt(minimum_jobs=0, maximum_jobs=args.jobs)
        else:
            cluster.scale(jobs=args.jobs)
        print(f"scheduler: {cluster.scheduler_address}", flush=True)
        print(
            f"pass it to: ptystream reprocess ... --scheduler {cluster.scheduler_address}\n"
            "Ctrl-C cancels the Slurm jobs and stops the scheduler.",
            flush=True,
        )
        if args.tls_dir:  # the client's side of TLS, as dask reads it from the environment
            print(_client_tls_environment(cluster.security), flush=True)
        seen = None
        while True:  # report the workers as they come and go
            workers = len(cluster.scheduler_info.get("workers", {}))
            if workers != seen:
                print(f"{time.strftime('%H:%M:%S')} workers connected: {workers}", flush=True)
                seen = workers
            time.sleep(5)
    except KeyboardInterrupt:
        print("stopping: cancelling the Slurm jobs", flush=True)
    finally:
        cluster.close()  # scancel the jobs, stop the scheduler
    return 0


if __name__ == "__main__":
    sys.exit(main())
