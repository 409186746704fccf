"""comedian.tracking: parent/child runs, fallback on unreachable stores, concurrent writers."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from comedian import tracking

REPO = Path(__file__).resolve().parents[1]
_ENV_VARS = (
    tracking.ENV_URI,
    tracking.ENV_EXPERIMENT,
    tracking.ENV_EXPERIMENT_ID,
    tracking.ENV_PARENT_RUN_ID,
    tracking.ENV_FALLBACK_URI,
    tracking.ENV_ENABLED,
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    *tracking.HTTP_ENV_DEFAULTS,
)


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    """One working folder for the in-process tests, so the sqlite schema is created once (~3 s)."""
    return tmp_path_factory.mktemp("tracking")


@pytest.fixture
def workdir(shared_dir, monkeypatch):
    """chdir into the shared folder with clean tracking env vars and module state; restores all."""
    saved = dict(os.environ)
    for var in _ENV_VARS:
        os.environ.pop(var, None)
    monkeypatch.chdir(shared_dir)
    monkeypatch.setattr(tracking, "_FAILED_STORES", {})
    monkeypatch.setattr(tracking, "_OPEN_STORES", {})
    monkeypatch.setattr(tracking.TrackedRun, "_warned", set())
    yield shared_dir
    os.environ.clear()
    os.environ.update(saved)


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str, filter_string: str = "", experiment: str = "comedian"):
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=filter_string)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _artifacts(uri: str, run_id: str, path: str | None = None) -> set[str]:
    """All artifact file paths of a run (recursive)."""
    client, found = _client(uri), set()
    for info in client.list_artifacts(run_id, path):
        found |= _artifacts(uri, run_id, info.path) if info.is_dir else {info.path}
    return found


def _tracking_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_import_does_not_load_mlflow():
    code = "import sys, comedian.tracking; print('mlflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == "False"


def test_resolve_uri_precedence(workdir, monkeypatch):
    assert tracking.resolve_uri() == f"sqlite:///{workdir.resolve()}/results/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.resolve_uri() == "http://mlflow.example:5000"
    monkeypatch.setenv(tracking.ENV_URI, "sqlite:///other/x.db")
    assert tracking.resolve_uri() == f"sqlite:///{workdir.resolve()}/other/x.db"
    assert tracking.resolve_uri("sqlite:////abs/y.db") == "sqlite:////abs/y.db"
    assert tracking.artifact_location_for("sqlite:////abs/y.db") == "/abs/mlartifacts"
    assert tracking.artifact_location_for("http://h:5000") is None


def test_parent_and_child_runs_in_default_store(workdir, caplog):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    config = {"tracking": {"experiment": "comedian"}, "pca": {"dim": 512}, "splits": ["train"]}
    parent = tracking.start_pipeline_run(None, None, name="pipeline test", config=config)
    assert parent is not None
    uri = os.environ[tracking.ENV_URI]
    assert uri == f"sqlite:///{workdir.resolve()}/results/mlflow.db"
    assert os.environ[tracking.ENV_PARENT_RUN_ID] == parent
    assert os.environ[tracking.ENV_EXPERIMENT] == "comedian"
    assert os.environ[tracking.ENV_EXPERIMENT_ID] == _client(uri).get_experiment_by_name("comedian").experiment_id

    extra = workdir / "table.csv"
    extra.write_text("a,b\n1,2\n")
    folder = workdir / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "one.txt").write_text("1")
    with tracking.stage_run(
        "pca", wildcards={"game": "england_epl/2015-2016/x", "half": 1}, params={"dim": 512}
    ) as run:
        for epoch in range(3):
            run.log_metrics({"loss": 1.0 / (epoch + 1), "acc": np.float32(0.5)}, step=epoch)
        run.log_params({"model": {"depth": 4, "heads": [8, 8]}})
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        run.log_figure(fig, "figures/variance.png")
        plt.close(fig)
        run.log_dict({"mean": np.float64(0.25), "shape": np.arange(3)}, "summary.json")
        run.log_artifact(extra)
        run.log_artifact(folder, "bundle")
    child = run.run_id

    with pytest.raises(ValueError, match="boom"):
        with tracking.stage_run("train", wildcards={"fold": 0}) as failed:
            failed.log_metrics({"loss": 2.0}, step=0)
            raise ValueError("boom")

    log = workdir / "snakemake.log"
    log.write_text("Finished job 0.\n")
    tracking.end_pipeline_run(status="FINISHED", log=log)

    client = _client(uri)
    exp = client.get_experiment_by_name("comedian")
    assert exp.artifact_location == str(workdir.resolve() / "results" / "mlartifacts")
    p = client.get_run(parent)
    assert p.info.status == "FINISHED"
    assert p.data.tags[tracking.TAG_KIND] == "pipeline"
    assert p.data.params["pca.dim"] == "512"
    assert json.loads(p.data.params["splits"]) == ["train"]
    assert _artifacts(uri, parent) == {"config.json", "provenance.json", "snakemake.log"}
    # provenance: the checkout's commit and dirty flag, the stack's versions (tags; all in provenance.json)
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    assert p.data.tags["comedian.provenance.git.commit"] == git.stdout.strip()
    assert p.data.tags["comedian.provenance.git.dirty"] in {"True", "False"}
    from importlib import metadata

    assert p.data.tags["comedian.provenance.stack.torch"] == metadata.version("torch")
    found = json.loads(Path(client.download_artifacts(parent, "provenance.json", str(workdir))).read_text())
    assert found["git"]["commit"] == git.stdout.strip() and found["stack"]["mlflow"] == metadata.version("mlflow")
    assert json.loads(os.environ["COMEDIAN_PROVENANCE"])["config_sha256"] == found["config_sha256"]

    c = client.get_run(child)
    assert c.info.status == "FINISHED"
    assert c.info.run_name == "pca[game=england_epl/2015-2016/x, half=1]"
    assert c.data.tags["mlflow.parentRunId"] == parent
    assert c.data.tags[tracking.TAG_STAGE] == "pca"
    assert c.data.tags["comedian.wildcard.game"] == "england_epl/2015-2016/x"
    assert c.data.tags["comedian.wildcard.half"] == "1"
    assert c.data.params == {"dim": "512", "model.depth": "4", "model.heads": "[8, 8]"}
    history = client.get_metric_history(child, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert c.data.metrics["acc"] == 0.5
    assert _artifacts(uri, child) == {
        "figures/variance.png",
        "summary.json",
        "table.csv",
        "bundle/one.txt",
    }
    summary = json.loads(Path(client.download_artifacts(child, "summary.json", str(workdir))).read_text())
    assert summary == {"mean": 0.25, "shape": [0, 1, 2]}
    png = workdir / "results" / "mlartifacts" / child / "artifacts" / "figures" / "variance.png"
    assert png.read_bytes()[:4] == b"\x89PNG"

    f = client.get_run(failed.run_id)
    assert f.info.status == "FAILED"
    assert f.data.tags["mlflow.parentRunId"] == parent
    assert f.data.metrics["loss"] == 2.0
    assert _tracking_warnings(caplog) == []
    assert not (workdir / "results" / "mlflow-offline.db").exists()


def test_checkpoint_and_system_metrics(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    checkpoint = workdir / "out.pt"
    checkpoint.write_bytes(b"weights")
    with tracking.stage_run("finetune", system_metrics=True) as run:
        time.sleep(1.5)
        run.log_checkpoint(checkpoint, {"epoch": 3, "valid_tight_amap": 0.5})
    client = _client(os.environ.get(tracking.ENV_URI) or tracking.resolve_uri())
    done = client.get_run(run.run_id)
    assert _artifacts(run.uri, run.run_id) == {"checkpoint/out.pt", "checkpoint/metrics.json"}
    assert done.data.tags["comedian.checkpoint"] == "checkpoint/out.pt"
    assert done.data.metrics["checkpoint.valid_tight_amap"] == 0.5
    assert "system/cpu_utilization_percentage" in done.data.metrics
    assert "system/system_memory_usage_megabytes" in done.data.metrics


def test_stage_run_by_hand_is_top_level(workdir):
    with tracking.stage_run("evaluate", params={"tolerance": "tight"}) as run:
        run.log_metrics({"t_amap": 0.42})
    got = _client(tracking.resolve_uri()).get_run(run.run_id)
    assert "mlflow.parentRunId" not in got.data.tags
    assert got.info.status == "FINISHED"
    assert got.data.metrics == {"t_amap": 0.42}


def test_exit_statuses(workdir):
    with pytest.raises(SystemExit):
        with tracking.stage_run("exit0") as ok:
            sys.exit(0)
    with pytest.raises(KeyboardInterrupt):
        with tracking.stage_run("interrupted") as killed:
            raise KeyboardInterrupt
    client = _client(tracking.resolve_uri())
    assert client.get_run(ok.run_id).info.status == "FINISHED"
    assert client.get_run(killed.run_id).info.status == "KILLED"


def test_end_pipeline_run_marks_orphaned_children_killed(workdir):
    parent = tracking.start_pipeline_run(None, None, name="pipeline killed")
    orphan_ctx = tracking.stage_run("extract", wildcards={"half": 2})
    orphan = orphan_ctx.__enter__()  # the job "was killed": its run never ends by itself
    tracking.end_pipeline_run(parent, status="failed")
    client = _client(tracking.resolve_uri())
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(orphan.run_id).info.status == "KILLED"
    orphan.detach()


def test_odd_values_are_cleaned_not_fatal(workdir, caplog):
    with tracking.stage_run("odd") as run:
        run.log_params({"bad key!": 1, "long": "x" * 7000, "path": Path("/a/b")})
        run.log_params({"bad key!": 2})  # changed value: refused, one warning
        run.log_metrics({"loss": float("nan"), "name": "not a number", "ok": 3})
    got = _client(tracking.resolve_uri()).get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["bad key_"] == "1"
    assert len(got.data.params["long"]) == 6000
    assert got.data.params["path"] == "/a/b"
    assert got.data.metrics["ok"] == 3.0
    assert "name" not in got.data.metrics
    warnings = _tracking_warnings(caplog)
    assert len(warnings) == 1 and "odd" in warnings[0]


def test_tracking_off_logs_nothing(tmp_path, monkeypatch):
    saved = dict(os.environ)
    try:
        monkeypatch.chdir(tmp_path)
        os.environ[tracking.ENV_ENABLED] = "off"
        assert tracking.start_pipeline_run(None, None) is None
        with tracking.stage_run("pca", params={"dim": 1}) as run:
            run.log_metrics({"x": 1.0})
            run.log_dict({"a": 1}, "a.json")
        assert run.run_id is None
        tracking.end_pipeline_run("0" * 32)
        assert not (tmp_path / "results").exists()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _warm_fallback(workdir, server: str) -> str:
    """Open the default fallback store of ``server`` (a file of this process) once so timings below
    exclude creating its schema."""
    fallback = tracking.resolve_fallback_uri(primary=server)
    assert "/results/mlflow-offline/" in fallback and fallback.endswith(f"-{os.getpid()}.db")
    tracking._open_store(fallback, tracking.resolve_experiment())
    return fallback


def test_unreachable_server_falls_back_with_one_warning(workdir, caplog):
    server = f"http://127.0.0.1:{_free_port()}"
    fallback = _warm_fallback(workdir, server)
    os.environ[tracking.ENV_URI] = server
    os.environ[tracking.ENV_PARENT_RUN_ID] = "f" * 32
    start = time.monotonic()
    finished = False
    with tracking.stage_run("postprocess", wildcards={"split": "test"}, params={"nms": 20}) as run:
        for step in range(5):
            run.log_metrics({"loss": float(step)}, step=step)
        run.log_dict({"n": 1}, "n.json")
        finished = True
    with tracking.stage_run("postprocess", wildcards={"split": "valid"}) as second:
        second.log_metrics({"loss": 1.0})
    elapsed = time.monotonic() - start
    assert finished
    assert elapsed < 15, f"unreachable server held the stage for {elapsed:.1f} s"
    warnings = _tracking_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert server in warnings[0] and fallback in warnings[0] and "\n" not in warnings[0]
    assert run.uri == fallback == second.uri
    got = _client(fallback).get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"nms": "20"}
    assert got.data.tags["mlflow.parentRunId"] == "f" * 32
    assert len(_client(fallback).get_metric_history(run.run_id, "loss")) == 5
    assert _artifacts(fallback, run.run_id) == {"n.json"}


def _http_store(monkeypatch, answer):
    """An HTTP store of experiment "1" whose requests go to ``answer(endpoint, body, timeout)`` instead of a
    server (no probe: the store is built as a job of the pipeline builds it)."""
    uri = "http://tracking.example:5000"
    for key, value in {tracking.ENV_URI: uri, tracking.ENV_EXPERIMENT: "comedian", tracking.ENV_EXPERIMENT_ID: "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(tracking, "_probe_http", lambda uri, context=None: None)
    monkeypatch.setattr(tracking._HttpStore, "_post_once",
                        lambda self, endpoint, data, timeout: answer(endpoint, json.loads(data), timeout))
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return tracking._HttpStore(uri, "comedian")


@pytest.mark.parametrize("failure", ["landed", "lost", "refused"])
def test_http_run_is_created_at_most_once(workdir, monkeypatch, failure):
    """A create request whose answer timed out is never resent (the server that did carry it out would then
    hold the run twice): the run is looked up by its token, adopted if there, else the store fails (the job
    falls back). A request the server never took (connection refused) is tried again."""
    runs, creates = {}, []

    def server(endpoint, body, timeout):
        if endpoint == "runs/search":
            token = re.search(r"= '(.*)'", body["filter"]).group(1)
            return {"runs": [{"info": {"run_id": i}} for i, t in runs.items() if t == token][:1]}
        assert endpoint == "runs/create" and body["experiment_id"] == "1"
        creates.append(timeout)
        token = {t["key"]: t["value"] for t in body["tags"]}[tracking.TAG_TOKEN]
        if len(creates) == 1 and failure == "refused":
            raise tracking._HttpError("connection refused")
        if len(creates) == 1 and failure == "landed":
            runs[f"run{len(runs)}"] = token
        if len(creates) == 1:
            raise tracking._HttpError("no answer (TimeoutError: timed out)", maybe_delivered=True)
        runs[f"run{len(runs)}"] = token
        return {"run": {"info": {"run_id": f"run{len(runs) - 1}"}}}

    store = _http_store(monkeypatch, server)
    tags = {"comedian.stage": "extract", tracking.TAG_TOKEN: f"token-{failure}"}
    if failure == "lost":
        with pytest.raises(tracking._HttpError, match="no answer"):
            store.create_run(tracking._now_ms(), tags, "extract")
    else:
        assert store.create_run(tracking._now_ms(), tags, "extract") == "run0"
    assert list(runs) == ([] if failure == "lost" else ["run0"])
    assert creates == [30.0] * (2 if failure == "refused" else 1)  # one request per try, 3 x the timeout


def test_http_failures_are_told_apart(workdir, monkeypatch):
    """What a failed request to a server says: not connected (never carried out: try again), sent but not
    answered (maybe carried out: the create is not resent), refused with MLflow's error code (an input
    error: neither tried again nor failed over), or a 5xx answer (try again)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            status, code = (400, "INVALID_PARAMETER_VALUE") if "log-batch" in self.path else (503, "TEMPORARILY_UNAVAILABLE")
            body = json.dumps({"error_code": code, "message": "said no"}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    monkeypatch.setattr(tracking, "_probe_http", lambda uri, context=None: None)
    for key, value in {tracking.ENV_EXPERIMENT: "comedian", tracking.ENV_EXPERIMENT_ID: "1"}.items():
        monkeypatch.setenv(key, value)

    def store(uri):
        monkeypatch.setenv(tracking.ENV_URI, uri)
        return tracking._HttpStore(uri, "comedian")

    with pytest.raises(tracking._HttpError) as refused:
        store(f"http://127.0.0.1:{_free_port()}")._post_once("runs/create", b"{}", timeout=2)
    assert refused.value.retry and not refused.value.maybe_delivered
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with pytest.raises(tracking._HttpError) as unanswered:
            store(f"http://127.0.0.1:{silent.getsockname()[1]}")._post_once("runs/create", b"{}", timeout=0.3)
    assert unanswered.value.retry and unanswered.value.maybe_delivered
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answering = store(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(tracking._HttpError) as bad:
            answering._post_once("runs/log-batch", b"{}", timeout=2)
        assert tracking._is_input_error(bad.value) and not bad.value.retry and "said no" in str(bad.value)
        with pytest.raises(tracking._HttpError) as busy:
            answering._post_once("runs/update", b"{}", timeout=2)
        assert busy.value.retry and not busy.value.maybe_delivered and not tracking._is_input_error(busy.value)
    finally:
        server.shutdown()


def test_a_job_of_the_pipeline_does_not_look_its_experiment_up(workdir, monkeypatch):
    """A job finds the experiment's id in the environment the pipeline run exports: one request fewer per job
    start on a server; in another store (its fallback, say) it looks the experiment up as before."""
    from mlflow import MlflowClient

    tracking.start_pipeline_run(None, "comedian-exported", name="pipeline export")
    monkeypatch.setattr(tracking, "_OPEN_STORES", {})  # as in a new job process
    lookups = []
    real_lookup = MlflowClient.get_experiment_by_name
    monkeypatch.setattr(MlflowClient, "get_experiment_by_name",
                        lambda self, name: lookups.append(name) or real_lookup(self, name))
    with tracking.stage_run("extract", wildcards={"half": 1}) as run:
        pass
    assert lookups == [] and run.experiment_id == os.environ[tracking.ENV_EXPERIMENT_ID]
    tracking.TrackedRun("elsewhere", {}, uri=f"sqlite:///{workdir / 'other.db'}", experiment="comedian-exported").end()
    assert lookups == ["comedian-exported"]
    tracking.end_pipeline_run()


def test_silent_server_is_given_up_quickly(workdir, caplog):
    """A server that accepts connections but never answers costs one probe timeout, not minutes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        server = f"http://127.0.0.1:{sock.getsockname()[1]}"
        fallback = _warm_fallback(workdir, server)
        start = time.monotonic()
        parent = tracking.start_pipeline_run(server, "comedian", name="pipeline offline")
        elapsed = time.monotonic() - start
    assert elapsed < tracking.PROBE_TIMEOUT_S + 10
    # The parent went to the fallback, and jobs are pointed there directly.
    assert os.environ[tracking.ENV_URI] == fallback
    assert _client(fallback).get_run(parent).info.status == "RUNNING"
    tracking.end_pipeline_run()
    assert _client(fallback).get_run(parent).info.status == "FINISHED"
    warnings = _tracking_warnings(caplog)
    assert len(warnings) == 1 and server in warnings[0] and fallback in warnings[0]


def test_no_store_works_stage_still_finishes(workdir, caplog, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    os.environ[tracking.ENV_URI] = f"http://127.0.0.1:{_free_port()}"
    os.environ[tracking.ENV_FALLBACK_URI] = f"sqlite:///{blocker}/sub/offline.db"
    with tracking.stage_run("evaluate") as run:
        run.log_metrics({"x": 1.0})
        run.log_figure(None, "never-drawn.png")  # tracking is off: the figure is not touched
    assert run.run_id is None
    warnings = _tracking_warnings(caplog)
    assert len(warnings) == 1 and "tracking is off" in warnings[0]


_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import mlflow  # import before the barrier, so that all workers then write at the same time
    from comedian.tracking import stage_run

    worker, steps = int(sys.argv[1]), int(sys.argv[2])
    Path(f"ready-{worker}").touch()
    deadline = time.monotonic() + 120
    while not Path("go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    with stage_run("worker", wildcards={"worker": worker}, params={"seed": worker}) as run:
        for step in range(steps):
            run.log_metrics({"loss": 1.0 / (step + 1), "worker": worker}, step=step)
            run.log_params({f"p{step}": step * worker})
        run.log_dict({"worker": worker}, "out.json")
    print(run.run_id)
    """
)


def test_concurrent_processes_lose_nothing(tmp_path):
    """Four jobs start at once on a fresh sqlite store (schema creation and experiment creation race
    too) and each logs 2 x 25 small batches; every param, metric step and artifact must arrive."""
    workers, steps = 4, 25
    env = {k: v for k, v in os.environ.items() if k not in _ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(i), str(steps)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, [err for _, err in outs]
    assert all("comedian tracking" not in err for _, err in outs), [err for _, err in outs]
    run_ids = [out.strip().splitlines()[-1] for out, _ in outs]

    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    client = _client(uri)
    assert len(_runs(uri)) == workers
    for worker, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["comedian.wildcard.worker"] == str(worker)
        expected = {"seed": str(worker)} | {f"p{s}": str(s * worker) for s in range(steps)}
        assert run.data.params == expected
        history = client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(steps))
        assert _artifacts(uri, run_id) == {"out.json"}
    assert not (tmp_path / "results" / "mlflow-offline.db").exists()


# --------------------------------------------------------------------------------------------------
# A real MLflow server


def _start_server(tmp_path: Path, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
        "--artifacts-destination", str(tmp_path / "server-artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed by the test's finally
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True)


def _stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and its workers: they share the process group we started (pgid == pid)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # uvicorn workers can outlive the server process
    proc.wait(timeout=10)


@pytest.mark.slow
def test_real_server_parent_child_and_failover(workdir, caplog, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_server(tmp_path, port)
    try:
        tracking.wait_for_server(url, proc, limit_s=180)
        parent = tracking.start_pipeline_run(url, "comedian-server", config={"seed": 1})
        assert parent is not None and os.environ[tracking.ENV_URI] == url
        with tracking.stage_run("finetune", wildcards={"fold": 0}, params={"lr": 1e-4}) as run:
            run.log_metrics({"loss": 0.5}, step=1)
            run.log_dict({"epochs": 1}, "history.json")
        tracking.end_pipeline_run(status="FINISHED")
        client = _client(url)
        child = client.get_run(run.run_id)
        assert child.data.tags["mlflow.parentRunId"] == parent
        assert child.data.params == {"lr": "0.0001"}
        assert child.info.status == "FINISHED"
        assert client.get_run(parent).info.status == "FINISHED"
        assert _artifacts(url, run.run_id) == {"history.json"}
        assert _tracking_warnings(caplog) == []

        # The server dies mid-run: the run goes on in the fallback store with everything replayed.
        with tracking.stage_run("finetune", wildcards={"fold": 1}, params={"lr": 2e-4}) as run:
            run.log_metrics({"loss": 0.9}, step=0)
            _stop_server(proc)
            run.log_metrics({"loss": 0.7}, step=1)
            run.log_metrics({"loss": 0.6}, step=2)
        fallback = tracking.resolve_fallback_uri()
        assert run.uri == fallback
        got = _client(fallback).get_run(run.run_id)
        assert got.info.status == "FINISHED"
        assert got.data.params == {"lr": "0.0002"}
        assert got.data.tags["mlflow.parentRunId"] == parent
        steps = sorted(m.step for m in _client(fallback).get_metric_history(run.run_id, "loss"))
        assert steps == [0, 1, 2]
        warnings = _tracking_warnings(caplog)
        assert len(warnings) == 1 and url in warnings[0] and fallback in warnings[0]
    finally:
        _stop_server(proc)


@pytest.mark.slow
def test_one_server_worker_answers_100_creates_at_once(tmp_path, monkeypatch):
    """`comedian tracking-server` with one worker answers 100 run creations sent at once, each run made once:
    a worker's database pool holds the two connections each of its 40 concurrent requests may take (with
    SQLAlchemy's default 5 + 10, creates waited 30 s for a connection and timed out). Its sqlite is in WAL
    mode."""
    import threading

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_SQLALCHEMYSTORE")}
    proc = subprocess.Popen([sys.executable, "-m", "comedian", "tracking-server", "--store", str(tmp_path / "store"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env={**env, "PYTHONPATH": str(REPO)}, stdout=log, stderr=log, start_new_session=True)
    try:
        tracking.wait_for_server(url, proc, limit_s=180)
        experiment_id = _client(url).create_experiment("burst")
        for key, value in {tracking.ENV_URI: url, tracking.ENV_EXPERIMENT: "burst",
                           tracking.ENV_EXPERIMENT_ID: experiment_id}.items():  # fmt: skip
            monkeypatch.setenv(key, value)
        store = tracking._HttpStore(url, "burst")
        barrier, made, errors = threading.Barrier(100), [], []

        def create(i):
            barrier.wait()
            try:
                made.append(store.create_run(tracking._now_ms(), {tracking.TAG_TOKEN: f"burst-{i}"}, "burst"))
            except tracking._HttpError as err:
                errors.append(str(err))

        threads = [threading.Thread(target=create, args=(i,)) for i in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and len(set(made)) == 100
        runs = _runs(url, experiment="burst")
        assert sorted(r.data.tags[tracking.TAG_TOKEN] for r in runs) == sorted(f"burst-{i}" for i in range(100))
        import sqlite3

        with contextlib.closing(sqlite3.connect(tmp_path / "store" / "mlflow.db")) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        _stop_server(proc)
        log.close()


def test_killed_invocation_is_closed_by_the_next(workdir):
    """A parent run left RUNNING by an invocation that was killed (its process is gone) is closed as
    KILLED, with its running children, when the next invocation of this working directory starts."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    first = tracking.start_pipeline_run(None, None, name="killed")
    with tracking.stage_run("extract") as child:
        pass
    orphan = tracking.TrackedRun("finetune", {tracking.TAG_PARENT: first})  # left RUNNING, as by a SIGKILL
    orphan.detach()
    client = _client(os.environ[tracking.ENV_URI])
    client.set_tag(first, "comedian.pid", dead)
    alive = tracking.start_pipeline_run(None, None, name="still running")  # this process: alive
    second = tracking.start_pipeline_run(None, None, name="next")
    assert client.get_run(first).info.status == "KILLED"
    assert client.get_run(orphan.run_id).info.status == "KILLED"
    assert client.get_run(child.run_id).info.status == "FINISHED"
    assert client.get_run(alive).info.status == "RUNNING"  # its pid (this test) lives
    assert client.get_run(second).info.status == "RUNNING"
    for run_id in (alive, second):
        tracking.end_pipeline_run(run_id)


@pytest.mark.slow
def test_tracking_server_holds_50_concurrent_jobs():
    """50 jobs starting at once against `comedian tracking-server` (bench/bench_tracking.py): each logs its run
    over HTTP, or (a job whose requests timed out on a loaded machine) to its own offline file, never a shared
    one; no run is lost and none is held twice. The start times are printed: a measurement, not an assertion
    (the issue's < 1 s is the bench's to show; here 50 jobs and the server share 2 cores)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(REPO / "bench" / "bench_tracking.py"), "--jobs", "50", "--single", "1",
                          "--json"], check=True, capture_output=True, text=True, env=env, timeout=1500).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(result)
    assert result["runs_lost"] == 0 and result["runs_doubled"] == 0
    assert result["fallback_files_shared"] == 0 and result["other_sqlite_files"] == 0
    assert result["starts_importing_mlflow"] == 0  # over HTTP a start speaks MLflow's REST API itself
    assert result["start_s_median"] > 0 and result["single_start_s_median"] > 0
