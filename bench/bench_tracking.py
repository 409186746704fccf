"""Benchmark: a job's tracking start against `comedian tracking-server`, alone and with N jobs at once.

Starts `comedian tracking-server` on a free local port, then runs the jobs of a cluster in miniature: each
job is a fresh process that has imported an extraction's module (as ``python -m comedian extract`` has
before the stage starts), waits for the common start signal and times what a stage does when it starts
tracking: importing ``comedian.tracking`` and entering ``stage_run(...)`` with an extraction's params
(probe, run creation with its tags, params), wall and CPU; then it logs one metric and ends its run.
First ``--single`` jobs one after another (a job's own start, the figure a cluster job pays when the server is not saturated), then
``--jobs`` jobs at once. On a cluster the jobs run on their own nodes; here they share this machine's
cores with the server (and whatever else runs: ``load_avg``), so the concurrent figure also measures CPU
contention. ``server_cpu_s_per_request`` (each kind of request a job sends, 20 one after another) gives
``start_s_max_floor_here``: the server's CPU for N starts shared by the cores, which no client can beat;
the jobs' own CPU (``client_cpu_s_per_start_median``) comes on top here, not on a cluster.

It also checks what the concurrent jobs leave: every job that logged over HTTP has its run on the
server once, complete (``runs_lost``, ``runs_doubled``); a job whose requests timed out went on in its own
offline file (``fell_back``), never a shared one (``fallback_files_shared``), and no job opened
any other sqlite file (``other_sqlite_files``); ``starts_importing_mlflow`` counts the starts that imported
mlflow (~2 CPU-s each). Prints one JSON object.

Usage: ``python bench/bench_tracking.py [--jobs 50] [--single 5] [--workers 4] [--server-log F] [--json]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import shutil
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from comedian import tracking

REPO = Path(__file__).resolve().parents[1]

#: The params a job logs at its start (those of an extraction job).
JOB_PARAMS = {"video": "data/SoccerNet/game/1_720p.mkv", "fps": 2.0, "quality": 2}

#: One job, as `python -m comedian extract` runs: the stage's module is imported when the interpreter starts; a
#: stage imports ``comedian.tracking`` when it starts tracking, so that import is timed with the start. Prints
#: "<uri> <run id> <run token> <seconds to enter the run> <CPU seconds of that> <1 if mlflow got imported>".
JOB = textwrap.dedent(
    f"""
    import sys, time
    from pathlib import Path
    import comedian.data.frames
    Path(f"ready-{{sys.argv[1]}}").touch()
    while not Path("go").exists():
        time.sleep(0.01)
    start, cpu = time.perf_counter(), time.process_time()
    from comedian.tracking import stage_run
    with stage_run("extract", wildcards={{"job": sys.argv[1]}}, params={JOB_PARAMS!r}) as run:
        started, started_cpu = time.perf_counter() - start, time.process_time() - cpu
        imported = int("mlflow" in sys.modules)
        run.log_metrics({{"x": 1.0}})
    print(run.uri, run.run_id, run.token, started, started_cpu, imported)
    """
)

#: Environment variables of the caller that would point the jobs elsewhere.
_CLEARED = ("COMEDIAN_TRACKING", "COMEDIAN_TRACKING_FALLBACK_URI", "COMEDIAN_EXPERIMENT", "MLFLOW_TRACKING_URI",
            "MLFLOW_EXPERIMENT_NAME")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def tracking_server(store: Path, workers: int, env: dict[str, str], log: Path | None = None, limit_s: float = 180.0):
    """`comedian tracking-server` on a free port, its output (errors and access log) into ``log``; yields its
    URI (as printed) and process group id once /health answers."""
    port = free_port()
    log_file = open(log or os.devnull, "w")  # noqa: SIM115 - closed below, after the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "comedian", "tracking-server", "--store", str(store), "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.PIPE, stderr=log_file, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        url = lines[1].split(": ", 1)[1].strip()
        # The server's access log goes to its stdout: drained, so that a full pipe never stalls it.
        threading.Thread(target=shutil.copyfileobj, args=(proc.stdout, log_file), daemon=True).start()
        tracking.wait_for_server(url, proc, limit_s)
        yield url, proc.pid
    finally:  # the server and its workers share the process group we started (pgid == pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers can outlive the server process
        proc.wait(timeout=10)
        log_file.close()


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group ``pgid``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ..., utime (12), stime (13)
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_jobs(n: int, folder: Path, env: dict[str, str], limit_s: float = 600.0) -> list[tuple[list[str], str]]:
    """Start ``n`` jobs in ``folder``, release them at once; return each one's (stdout fields, stderr)."""
    folder.mkdir(parents=True)
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(i)], cwd=folder, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    deadline = time.monotonic() + limit_s
    while len(list(folder.glob("ready-*"))) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    (folder / "go").touch()
    outs = [p.communicate(timeout=limit_s) for p in procs]
    failed = [err[-500:] for p, (_, err) in zip(procs, outs) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} jobs failed: {failed[0]}")
    return [(out.split(), err) for out, err in outs]


def server_runs(url: str) -> dict[str, list]:
    """The server's runs of experiment "comedian", by run token."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("comedian")
    by_token = collections.defaultdict(list)
    for run in client.search_runs([experiment.experiment_id], max_results=10_000):
        by_token[run.data.tags[tracking.TAG_TOKEN]].append(run)
    return by_token


def server_cpu_per_request(url: str, server: int, n: int = 20) -> dict[str, float]:
    """Server CPU seconds per request of each kind a job sends (one after another, ``n`` of each), sent as
    the jobs send them (:class:`comedian.tracking._HttpStore`)."""
    store = tracking._HttpStore(url, "comedian")
    cost, run_ids = {}, []
    requests = {
        "health": lambda i: tracking._probe_http(url),
        "create": lambda i: run_ids.append(store.create_run(tracking._now_ms(), {tracking.TAG_TOKEN: f"cpu-{i}"}, "cpu")),
        "log_batch_params": lambda i: store.log_batch(run_ids[i], params={k: str(v) for k, v in JOB_PARAMS.items()}),
        "log_batch_metric": lambda i: store.log_batch(run_ids[i], metrics=[("x", 1.0, tracking._now_ms(), 0)]),
        "update": lambda i: store.set_terminated(run_ids[i], "FINISHED", tracking._now_ms()),
    }
    for kind, send in requests.items():
        before = group_cpu_s(server)
        for i in range(n):
            send(i)
        cost[kind] = round((group_cpu_s(server) - before) / n, 4)
    return cost


def measure(jobs: int, single: int, workers: int, log: Path | None = None) -> dict:
    from mlflow import MlflowClient

    env = {k: v for k, v in os.environ.items() if k not in _CLEARED and not k.startswith("MLFLOW_HTTP")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp, \
            tracking_server(Path(tmp) / "store", workers, env, log) as (url, server):  # fmt: skip
        experiment_id = MlflowClient(tracking_uri=url).create_experiment("comedian")
        # What a pipeline run exports to its jobs (but a parent run: each job's run is top-level here).
        job_env = {**env, tracking.ENV_URI: url, tracking.ENV_EXPERIMENT: "comedian",
                   tracking.ENV_EXPERIMENT_ID: experiment_id, tracking.ENV_PARENT_RUN_ID: "", "OMP_NUM_THREADS": "1"}
        alone = [float(run_jobs(1, Path(tmp) / f"single-{i}", job_env)[0][0][3]) for i in range(single)]
        load_before, cpu_before = os.getloadavg()[0], group_cpu_s(server)
        rows = run_jobs(jobs, Path(tmp) / "concurrent", job_env)
        server_cpu = group_cpu_s(server) - cpu_before
        per_request = server_cpu_per_request(url, server)
        starts = sorted(float(fields[3]) for fields, _ in rows)
        fell_back = [fields[0] for fields, _ in rows if fields[0] != url]
        warnings = collections.Counter(
            re.sub(r"\d+(\.\d+)?", "N", err.strip().splitlines()[-1])[:160] for _, err in rows if err.strip()
        )
        by_token = server_runs(url)
        params = {k: str(v) for k, v in JOB_PARAMS.items()}
        lost = doubled = 0
        for (uri, run_id, token, *_), _ in rows:
            if uri != url:
                continue
            runs = by_token.get(token, [])
            doubled += len(runs) > 1
            lost += not any(r.info.run_id == run_id and r.info.status == "FINISHED" and r.data.metrics == {"x": 1.0}
                            and r.data.params == params for r in runs)
        sqlite_files = list((Path(tmp) / "concurrent").rglob("*.db"))
    cores = os.cpu_count()
    start_cpu = per_request["health"] + per_request["create"] + per_request["log_batch_params"]
    return {
        "jobs": jobs,
        "server_workers": workers,
        "cores": cores,
        "load_avg": round(load_before, 2),
        "single_start_s_median": round(statistics.median(alone), 3) if alone else None,
        "start_s_median": round(starts[len(starts) // 2], 3),
        "start_s_max": round(starts[-1], 3),
        "client_cpu_s_per_start_median": round(statistics.median(float(fields[4]) for fields, _ in rows), 4),
        "starts_importing_mlflow": sum(int(fields[5]) for fields, _ in rows),
        "server_cpu_s_per_job": round(server_cpu / jobs, 4),
        "server_cpu_s_per_request": per_request,
        # With every job on these cores: the last of N simultaneous starts waits at least for the server's CPU
        # of all N starts (its probe, create and params), shared by the cores.
        "start_s_max_floor_here": round(jobs * start_cpu / cores, 3),
        # A cluster's jobs run on their own nodes: the server's CPU is then the shared resource, and the
        # last of N simultaneous starts waits about N x its CPU per job / its workers beyond its own start.
        "projected_start_s_max_on_cluster": round(
            (statistics.median(alone) if alone else 0.0) + server_cpu / workers, 3
        ),
        "fell_back": len(fell_back),
        "fallback_warnings": dict(warnings),
        "fallback_files_shared": len(fell_back) - len(set(fell_back)),
        "other_sqlite_files": len(sqlite_files) - len(set(fell_back)),
        "runs_lost": lost,
        "runs_doubled": doubled,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50, help="jobs started at once (default 50)")
    parser.add_argument("--single", type=int, default=5, help="jobs run one after another first (default 5)")
    parser.add_argument("--workers", type=int, default=4,
                        help="server worker processes (default 4, as comedian tracking-server)")
    parser.add_argument("--server-log", type=Path, help="write the server's output (errors, access log) here")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args(argv)
    result = measure(args.jobs, args.single, args.workers, args.server_log)
    if not args.json:
        print(f"one job alone: tracking start {result['single_start_s_median']} s (median of {args.single}); "
              f"{args.jobs} at once on {result['cores']} cores (load {result['load_avg']}): median "
              f"{result['start_s_median']} s, max {result['start_s_max']} s, {result['fell_back']} fell back",
              file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
