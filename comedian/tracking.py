"""MLflow tracking for every pipeline stage: one parent run per pipeline invocation, one child per job.

The Snakefile's ``onstart:`` handler calls :func:`start_pipeline_run`, which creates the parent run and
exports the settings below into ``os.environ``; every job (local subprocess or ``sbatch``) inherits them.
A stage wraps its body in :func:`stage_run`, which opens a child run of that parent (tag
``mlflow.parentRunId``) or, when no parent id is set (a stage run by hand), a top-level run.
``onsuccess:``/``onerror:`` call :func:`end_pipeline_run`.

Environment (all optional; ``start_pipeline_run`` exports the first four for the jobs):

- ``COMEDIAN_TRACKING_URI``: the store; else ``MLFLOW_TRACKING_URI``; else
  ``sqlite:///results/mlflow.db`` with artifacts in ``results/mlartifacts``.
- ``COMEDIAN_EXPERIMENT``: experiment name; else ``MLFLOW_EXPERIMENT_NAME``; else ``comedian``.
- ``COMEDIAN_PIPELINE_RUN_ID``: the parent run's id (never put it in a rule's ``params:``).
- ``COMEDIAN_TRACKING_FALLBACK_URI``: store used when the first one fails; default
  ``sqlite:///results/mlflow-offline.db``.
- ``COMEDIAN_TRACKING``: ``0``/``off``/``false``/``no`` turns tracking off (runs then do nothing).

Tracking never fails a stage: when the store is unreachable or fails, the process warns once (one
line naming the failed store and where the data goes instead) and goes on in the fallback store,
replaying what the run had logged so far; if the fallback fails too, that same line says tracking is
off. HTTP stores are probed (``/health``, :data:`PROBE_TIMEOUT_S` at most) before use, and MLflow's
own HTTP retries are bounded (:data:`HTTP_ENV_DEFAULTS`). Concurrent jobs on one sqlite file are
safe: database creation is serialised by a lock file and "database is locked" errors are retried.
``mlflow`` (~2 CPU-seconds to import) is imported only when a run starts in a sqlite store; with an
HTTP store a job speaks MLflow's REST API itself (:class:`_HttpStore`) and imports ``mlflow`` only to
log an artifact or system metrics.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

ENV_URI = "COMEDIAN_TRACKING_URI"
ENV_EXPERIMENT = "COMEDIAN_EXPERIMENT"
#: The id of experiment ``$COMEDIAN_EXPERIMENT`` in store ``$COMEDIAN_TRACKING_URI``, exported by the
#: pipeline run: a job then skips the lookup (one request fewer per job start on a server).
ENV_EXPERIMENT_ID = "COMEDIAN_EXPERIMENT_ID"
ENV_PARENT_RUN_ID = "COMEDIAN_PIPELINE_RUN_ID"
ENV_FALLBACK_URI = "COMEDIAN_TRACKING_FALLBACK_URI"
ENV_ENABLED = "COMEDIAN_TRACKING"

DEFAULT_URI = "sqlite:///results/mlflow.db"
DEFAULT_FALLBACK_URI = "sqlite:///results/mlflow-offline.db"
DEFAULT_EXPERIMENT = "comedian"
#: Artifacts of a sqlite store live in this folder beside the database file.
ARTIFACT_DIRNAME = "mlartifacts"

#: MLflow HTTP client settings applied (unless already set) before talking to a server. MLflow's
#: defaults (7 retries, backoff factor 2, 120 s timeout) make one failing call take minutes; these
#: bound it to about 10 s of backoff plus the timeouts.
HTTP_ENV_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
#: Set (unless already set) before MLflow is imported: MLflow 3's usage telemetry would send events
#: to mlflow-telemetry.io from a thread that also rewrites ``os.environ`` while requests read it
#: (seen: a job's log_batch failing with KeyError '_MLFLOW_TELEMETRY_SESSION_ID'). A job talks to
#: its own tracking store only.
MLFLOW_ENV_DEFAULTS: dict[str, str] = {"MLFLOW_DISABLE_TELEMETRY": "true"}
#: Set (unless already set) for `comedian tracking-server`. MLflow 3's server otherwise starts a job
#: runner (GenAI evaluation jobs, which the pipeline has none of) of eight polling processes that
#: burn ~0.6 CPU-seconds per second when idle, on the login node every job's tracking waits on.
#: And each server worker answers up to 40 requests at once (its thread pool), a run's creation
#: holding two database connections (it looks its experiment up in a second session while holding
#: the first): with SQLAlchemy's default pool of 5 + 10 connections, 15 creates at once in one worker
#: each hold one and wait for a second until the pool's 30 s timeout (measured: 100 creates at once
#: on one worker, median 63 s, 35 unanswered). 5 + 80 connections cover 40 requests of two each.
SERVER_ENV_DEFAULTS: dict[str, str] = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "80",
}
#: Seconds the reachability probe of an HTTP store waits (connect + response), one try.
PROBE_TIMEOUT_S = 3.0
#: Seconds between two samples of a training run's system metrics (MLflow's default is 10).
SYSTEM_METRICS_INTERVAL_S = 10.0

#: Tag keys set on every run.
TAG_PARENT = "mlflow.parentRunId"
TAG_KIND = "comedian.kind"
TAG_STAGE = "comedian.stage"
TAG_WILDCARD_PREFIX = "comedian.wildcard."
TAG_WORKDIR = "comedian.workdir"
#: A random token per run, set at creation (and kept in the fallback store): a create request whose
#: answer timed out is not resent, but its run looked up by this tag (:meth:`_Store.create_run`).
TAG_TOKEN = "comedian.run_token"
#: Tries of creating a run on an HTTP server (each a single request; see :meth:`_Store.create_run`),
#: and the factor on the HTTP timeout that each try is given (it is never resent after a timeout).
HTTP_CREATE_ATTEMPTS = 4
HTTP_CREATE_TIMEOUT_FACTOR = 3.0

_OFF_VALUES = {"0", "off", "false", "no"}
_RUNNING, _FINISHED, _FAILED, _KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
_MAX_KEY, _MAX_PARAM, _MAX_TAG = 250, 6000, 8000
_BATCH_PARAMS, _BATCH_METRICS = 100, 1000
#: MLflow error codes that mean "this value was refused", not "the store is broken".
_INPUT_ERROR_CODES = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS"}
#: Loggers quieted (to ERROR) while we call MLflow: a new sqlite database prints 2-3 INFO lines, and
#: urllib3 prints one WARNING per HTTP retry; our own one-line warning replaces them.
_NOISY_LOGGERS = ("mlflow.store.db.utils", "alembic", "urllib3.connectionpool", "mlflow.system_metrics")


# --------------------------------------------------------------------------------------------------
# Settings


def tracking_enabled() -> bool:
    """False when ``COMEDIAN_TRACKING`` is ``0``/``off``/``false``/``no``."""
    return os.environ.get(ENV_ENABLED, "").strip().lower() not in _OFF_VALUES


def in_pipeline() -> bool:
    """Whether this process is a job of a pipeline invocation (a parent run id is in the environment)."""
    return bool(os.environ.get(ENV_PARENT_RUN_ID)) and tracking_enabled()


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``$COMEDIAN_TRACKING_URI``, ``$MLFLOW_TRACKING_URI``,
    :data:`DEFAULT_URI`. A relative sqlite path is made absolute (against the working directory), so
    jobs that start elsewhere log to the same file."""
    uri = uri or os.environ.get(ENV_URI) or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    return _absolute_sqlite(uri)


def resolve_fallback_uri(uri: str | None = None, primary: str | None = None) -> str:
    """The fallback store: ``uri``, else ``$COMEDIAN_TRACKING_FALLBACK_URI``, else
    :data:`DEFAULT_FALLBACK_URI` (absolute, as in :func:`resolve_uri`). When the ``primary`` store
    (default :func:`resolve_uri`) is an HTTP server, the default is a file of this process alone,
    ``results/mlflow-offline/<host>-<pid>.db``: jobs on a cluster never share a sqlite file."""
    chosen = uri or os.environ.get(ENV_FALLBACK_URI)
    if not chosen and _is_http(primary or resolve_uri()):
        chosen = f"sqlite:///results/mlflow-offline/{socket.gethostname()}-{os.getpid()}.db"
    return _absolute_sqlite(chosen or DEFAULT_FALLBACK_URI)


def resolve_experiment(name: str | None = None) -> str:
    """Experiment name: ``name``, else ``$COMEDIAN_EXPERIMENT``, ``$MLFLOW_EXPERIMENT_NAME``, "comedian"."""
    return (
        name
        or os.environ.get(ENV_EXPERIMENT)
        or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        or DEFAULT_EXPERIMENT
    )


def artifact_location_for(uri: str) -> str | None:
    """Artifact location for a new experiment in store ``uri``: ``<db folder>/mlartifacts`` for a
    sqlite file; None (the server's or MLflow's default) otherwise."""
    path = _sqlite_path(uri)
    return None if path is None else str(path.parent / ARTIFACT_DIRNAME)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other URIs and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if raw in {"", ":memory:"} else Path(raw)


def _absolute_sqlite(uri: str) -> str:
    path = _sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    query = uri.partition("?")[2]
    return f"sqlite:///{path.resolve()}" + (f"?{query}" if query else "")


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


# --------------------------------------------------------------------------------------------------
# Stores


class _StoreError(RuntimeError):
    """A store could not be opened or used; the message is one line."""


#: URIs that failed in this process -> one-line reason; later runs skip them without a new warning.
_FAILED_STORES: dict[str, str] = {}
#: (uri, experiment) -> opened store, so a process opens each store once.
_OPEN_STORES: dict[tuple[str, str], _Store] = {}


def _one_line(err: BaseException | str, limit: int = 240) -> str:
    """``err`` as one line of at most ``limit`` characters; a long one keeps its ``[Errno N] ...``."""
    if isinstance(err, _StoreError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, BaseException):
        text = f"{type(err).__name__}: {err}"
    else:
        text = err
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    tail = f"... {errno.group()}" if errno else "..."
    return text[: limit - len(tail)] + tail


def _is_transient(err: BaseException) -> bool:
    """True for sqlite lock contention, which waiting resolves."""
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def _is_input_error(err: BaseException) -> bool:
    """True when MLflow refused a value (bad name, changed param), which a retry would not fix."""
    return getattr(err, "error_code", None) in _INPUT_ERROR_CODES


def _retry(fn: Callable[..., Any], *args: Any, attempts: int = 8, **kwargs: Any) -> Any:
    """Call ``fn``, retrying sqlite lock errors with jittered exponential backoff (0.1 s .. 4 s)."""
    delay = 0.1
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - classified below
            if attempt == attempts - 1 or not _is_transient(err):
                raise
            _log.debug("retrying %s after %s", getattr(fn, "__name__", fn), _one_line(err))
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2.0, 4.0)
    raise AssertionError("unreachable")


def _set_env_defaults(values: Mapping[str, str]) -> None:
    """Set each environment variable of ``values`` that is not set already."""
    for key, value in values.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _init_lock(uri: str) -> Iterator[None]:
    """Serialise creating a sqlite database and its experiment across processes (MLflow's schema
    migration and get-or-create of an experiment are not safe when several jobs start at once).
    The lock file ``.<db name>.lock`` sits beside the database; other URIs need no lock."""
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def wait_for_server(url: str, proc: Any, limit_s: float) -> None:
    """Wait until the tracking server at ``url``, started as process ``proc`` (a ``subprocess.Popen``),
    answers ``/health`` with 200; raise ``RuntimeError`` if it exits first, ``TimeoutError`` after
    ``limit_s`` seconds."""
    import urllib.request

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tracking server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"tracking server at {url} not healthy after {limit_s:.0f} s")


def _probe_http(uri: str, timeout: float = PROBE_TIMEOUT_S, context: Any = None) -> None:
    """Raise :class:`_StoreError` unless an HTTP server answers at ``uri`` within ``timeout`` s.

    Any HTTP answer (even 401/404) counts as reachable; only connection failures and timeouts do not.
    """
    import urllib.error  # lazily: ~20 ms that a stage run by hand (no tracking) need not pay
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, socket.timeout) as err:
        reason = getattr(err, "reason", err)
        raise _StoreError(f"{url}: {reason} (probe timeout {timeout:g} s)") from err


class _HttpError(RuntimeError):
    """A request to an MLflow server that failed, in one line. ``error_code`` is the server's (as on
    MLflow's exceptions) when it refused the request; ``retry`` when trying again may work (no answer,
    or a 429/5xx answer); ``maybe_delivered`` when the server may have carried it out although no answer
    came (the answer timed out, or the connection dropped after the request was sent)."""

    def __init__(self, message: str, error_code: str | None = None, retry: bool = True,
                 maybe_delivered: bool = False) -> None:  # fmt: skip
        super().__init__(message)
        self.error_code, self.retry, self.maybe_delivered = error_code, retry, maybe_delivered


def _http_settings() -> tuple[int, float, float, float]:
    """(retries, backoff factor, backoff jitter, timeout in s) of HTTP requests, from the environment
    variables MLflow's own client reads (defaults :data:`HTTP_ENV_DEFAULTS`)."""
    value = {key: os.environ.get(key) or default for key, default in HTTP_ENV_DEFAULTS.items()}
    return (
        int(value["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]),
        float(value["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]),
        float(value["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]),
        float(value["MLFLOW_HTTP_REQUEST_TIMEOUT"]),
    )


def _json_float(value: float) -> float | str:
    """A metric value for JSON: non-finite ones as the protobuf JSON mapping spells them."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return value


class _Store:
    """An MLflow client bound to one store and one experiment (created if missing)."""

    def __init__(self, uri: str, experiment: str) -> None:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # stdout may be a stage output
        _set_env_defaults(MLFLOW_ENV_DEFAULTS)
        self.uri = uri
        self.experiment = experiment
        known = os.environ.get(ENV_EXPERIMENT_ID)
        if known and uri == os.environ.get(ENV_URI) and experiment == os.environ.get(ENV_EXPERIMENT):
            self.experiment_id = known
            return
        with _init_lock(uri), _quiet_loggers():
            self.experiment_id = _retry(self._get_or_create_experiment)

    @functools.cached_property
    def client(self) -> Any:
        """MLflow's client for this store, made (and ``mlflow`` imported) on first use."""
        from mlflow import MlflowClient

        with _quiet_loggers():
            return MlflowClient(tracking_uri=self.uri)

    def _get_or_create_experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                return self.client.create_experiment(
                    self.experiment, artifact_location=artifact_location_for(self.uri)
                )
            except Exception as err:  # another process (on a server) created it first
                found = self.client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise err
        if found.lifecycle_stage != "active":
            raise _StoreError(f"experiment {self.experiment!r} is deleted in {self.uri}")
        return found.experiment_id

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.<method>(*args, **kwargs)`` with sqlite lock retries."""
        with _quiet_loggers():
            return _retry(getattr(self.client, method), *args, **kwargs)

    def create_run(self, start_ms: int, tags: Mapping[str, str], name: str) -> str:
        """Create a run with ``tags``; return its id."""
        run = self.call("create_run", self.experiment_id, start_time=start_ms, tags=tags, run_name=name)
        return run.info.run_id

    def log_batch(
        self,
        run_id: str,
        metrics: list[tuple[str, float, int, int]] = (),
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log (key, value, timestamp ms, step) ``metrics``, ``params`` and ``tags`` in one request."""
        from mlflow.entities import Metric, Param, RunTag

        self.call(
            "log_batch",
            run_id,
            metrics=[Metric(*row) for row in metrics],
            params=[Param(k, v) for k, v in (params or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )

    def set_terminated(self, run_id: str, status: str, end_ms: int) -> None:
        self.call("set_terminated", run_id, status=status, end_time=end_ms)


class _HttpStore(_Store):
    """An MLflow tracking server. What every job does (create its run, log params, metrics and tags, end
    it) goes over MLflow's REST API with the standard library: a job that logs no artifact never
    imports ``mlflow`` (~2 CPU-seconds, ten times the rest of a job's start). Artifacts, searches and
    experiment lookups go through MLflow's client (:attr:`client`, made on first use).

    Requests follow MLflow's HTTP settings (:data:`HTTP_ENV_DEFAULTS`: retries with jittered
    exponential backoff on no answer or a 429/5xx one, the timeout), its ``MLFLOW_TRACKING_TOKEN`` /
    ``MLFLOW_TRACKING_USERNAME`` + ``MLFLOW_TRACKING_PASSWORD`` authentication and its
    ``MLFLOW_TRACKING_INSECURE_TLS`` / ``MLFLOW_TRACKING_SERVER_CERT_PATH`` TLS settings.
    """

    def __init__(self, uri: str, experiment: str) -> None:
        _set_env_defaults(HTTP_ENV_DEFAULTS)
        self._headers = {"Content-Type": "application/json"}
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            self._headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            import base64

            pair = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
            self._headers["Authorization"] = f"Basic {base64.b64encode(pair.encode()).decode()}"
        self._tls = None
        if uri.startswith("https://"):
            import ssl

            if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
                self._tls = ssl._create_unverified_context()  # noqa: S323 - the user asked for it
            else:
                self._tls = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
        _probe_http(uri, context=self._tls)
        super().__init__(uri, experiment)

    def create_run(self, start_ms: int, tags: Mapping[str, str], name: str) -> str:
        """Create a run, at most once, from ``tags`` that hold its :data:`TAG_TOKEN`; return its id.

        Each try is one request, given :data:`HTTP_CREATE_TIMEOUT_FACTOR` times the usual timeout
        (resending after a timeout would hold the run twice when the server did carry out the first
        request). A request the server may have received (its answer timed out or the connection
        dropped) is never resent: the run is looked up by its token, and if it is not there the error
        is raised (the caller falls back; should the server create the run later, it stays RUNNING
        there, the fallback store holding the whole run under the same token). A request the server
        never took or refused with 429/5xx is tried again, after 1 s, 2 s, 4 s (with the default
        backoff; :data:`HTTP_CREATE_ATTEMPTS` in all).
        """
        body = {"experiment_id": self.experiment_id, "start_time": start_ms, "run_name": name,
                "user_id": tags.get("mlflow.user", "unknown"), "tags": [{"key": k, "value": v} for k, v in tags.items()]}  # fmt: skip
        timeout = _http_settings()[3] * HTTP_CREATE_TIMEOUT_FACTOR
        try:
            answer = self._post("runs/create", body, attempts=HTTP_CREATE_ATTEMPTS, timeout=timeout, resend=False)
        except _HttpError as err:
            found = self._run_with_token(tags[TAG_TOKEN]) if err.maybe_delivered else None
            if found is None:
                raise
            return found
        return answer["run"]["info"]["run_id"]

    def _run_with_token(self, token: str) -> str | None:
        """The id of the run tagged ``token``, or None (also when the lookup itself fails)."""
        body = {"experiment_ids": [self.experiment_id], "filter": f"tags.`{TAG_TOKEN}` = '{token}'", "max_results": 1}
        try:
            runs = self._post("runs/search", body).get("runs", [])
        except _HttpError as err:
            _log.debug("looking up run token %s failed: %s", token, _one_line(err))
            return None
        return runs[0]["info"]["run_id"] if runs else None

    def log_batch(
        self,
        run_id: str,
        metrics: list[tuple[str, float, int, int]] = (),
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self._post("runs/log-batch", {
            "run_id": run_id,
            "metrics": [{"key": k, "value": _json_float(v), "timestamp": ts, "step": step} for k, v, ts, step in metrics],
            "params": [{"key": k, "value": v} for k, v in (params or {}).items()],
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        })  # fmt: skip

    def set_terminated(self, run_id: str, status: str, end_ms: int) -> None:
        self._post("runs/update", {"run_id": run_id, "status": status, "end_time": end_ms})

    def _post(self, endpoint: str, body: Mapping[str, Any], attempts: int | None = None,
              timeout: float | None = None, resend: bool = True) -> dict:  # fmt: skip
        """POST ``body`` to ``/api/2.0/mlflow/<endpoint>``; return the answer. Tried ``attempts`` times
        (default: MLflow's retries + 1) while the failure allows it, a request that may have been
        carried out only when ``resend``; raises the last :class:`_HttpError`."""
        retries, factor, jitter, default_timeout = _http_settings()
        attempts = attempts or retries + 1
        data = json.dumps(body).encode()
        for attempt in range(attempts):
            try:
                return self._post_once(endpoint, data, timeout or default_timeout)
            except _HttpError as err:
                if not err.retry or (err.maybe_delivered and not resend) or attempt == attempts - 1:
                    raise
                _log.debug("retrying %s after %s", endpoint, _one_line(err))
                time.sleep(factor * 2.0**attempt * (1.0 + jitter * random.random()))
        raise AssertionError("unreachable")

    def _post_once(self, endpoint: str, data: bytes, timeout: float) -> dict:
        import http.client
        import urllib.error
        import urllib.request

        url = f"{self.uri.rstrip('/')}/api/2.0/mlflow/{endpoint}"
        request = urllib.request.Request(url, data=data, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._tls) as response:
                text = response.read()
        except urllib.error.HTTPError as err:  # an answer with an error status
            try:
                answer = json.loads(err.read() or b"{}")
            except (ValueError, OSError):
                answer = None
            answer = answer if isinstance(answer, dict) else {}
            retry = err.code == 429 or err.code >= 500
            raise _HttpError(f"{url}: HTTP {err.code} {answer.get('message', err.reason)}",
                             answer.get("error_code"), retry=retry) from err  # fmt: skip
        except urllib.error.URLError as err:  # not connected, or the request not sent: not carried out
            raise _HttpError(f"{url}: {err.reason}") from err
        except (OSError, http.client.HTTPException) as err:  # sent, but the answer did not come
            raise _HttpError(f"{url}: no answer ({type(err).__name__}: {err}; timeout {timeout:g} s)",
                             maybe_delivered=True) from err  # fmt: skip
        return json.loads(text or b"{}")


def _open_store(uri: str, experiment: str) -> _Store:
    key = (uri, experiment)
    if key not in _OPEN_STORES:
        if uri in _FAILED_STORES:
            raise _StoreError(_FAILED_STORES[uri])
        try:
            _OPEN_STORES[key] = (_HttpStore if _is_http(uri) else _Store)(uri, experiment)
        except Exception as err:
            _FAILED_STORES[uri] = _one_line(err)
            raise _StoreError(_FAILED_STORES[uri]) from err
    return _OPEN_STORES[key]


# --------------------------------------------------------------------------------------------------
# Values


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> one level with dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _clean_key(key: Any) -> str:
    """A name MLflow accepts: alphanumerics and ``_-. :/`` only, no empty/``..`` path parts, <=250."""
    text = re.sub(r"[^\w.\- :/]", "_", str(key))
    parts = [p if p not in {"", ".", ".."} else "_" for p in text.split("/")]
    return "/".join(parts)[:_MAX_KEY] or "_"


def _param_text(value: Any) -> str:
    """Text of a param: strings as they are; numbers, lists, dicts, NumPy values as JSON; anything
    else (paths, enums) via ``str``; cut to MLflow's 6000 characters."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bool, int, float, list, tuple, dict, type(None))) or hasattr(
        value, "tolist"
    ):
        text = json.dumps(value, default=_json_default)
    else:
        text = str(value)
    return text[:_MAX_PARAM]


def _json_default(value: Any) -> Any:
    """JSON for NumPy scalars/arrays, tensors, paths and sets."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def _metric_value(value: Any) -> float | None:
    try:
        return float(value)
    except Exception:  # noqa: BLE001 - e.g. a tensor of several elements
        return None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _warn(message: str) -> None:
    _log.warning("comedian tracking: %s", message)


# --------------------------------------------------------------------------------------------------
# Runs


class TrackedRun:
    """One MLflow run that logs to its store and, if that fails, to the fallback store.

    Every method swallows tracking failures (after one warning line) so the stage goes on. When
    tracking is off or both stores failed, ``run_id`` is None and the methods do nothing.
    Everything logged is also kept in a journal, replayed into the fallback run if the first store
    fails mid-run, so the fallback run is complete.
    """

    #: Warnings already printed by this process (one per failure outcome).
    _warned: set[str] = set()

    def __init__(
        self,
        name: str,
        tags: Mapping[str, Any],
        uri: str | None = None,
        experiment: str | None = None,
        fallback_uri: str | None = None,
    ) -> None:
        self.name = name
        self.run_id: str | None = None
        self.uri: str | None = None
        self.experiment_id: str | None = None  # in the store at ``uri``
        self._store: _Store | None = None
        self._enabled = tracking_enabled()
        primary = resolve_uri(uri)
        self._uris = [primary, resolve_fallback_uri(fallback_uri, primary)]
        if self._uris[1] == self._uris[0]:
            self._uris.pop()
        self._experiment = resolve_experiment(experiment)
        self.token = uuid.uuid4().hex  # the same in the fallback store, if the run moves there
        self._tags = {_clean_key(k): str(v)[:_MAX_TAG] for k, v in tags.items()}
        self._tags[TAG_TOKEN] = self.token
        self._start_ms = _now_ms()
        self._params: dict[str, str] = {}
        self._journal: list[tuple[str, Any]] = []
        self._warned_input = False
        self._tmp: Path | None = None  # scratch folder for figures/dicts, made on first use
        if self._enabled:
            self._report(self._activate())

    # -- store selection ---------------------------------------------------------------------------

    def _activate(self) -> list[tuple[str, str]]:
        """Create the run in the first store of ``self._uris`` that works, replaying the journal.

        Returns the (uri, one-line reason) of each store that failed on the way (and drops them).
        """
        failures = []
        while self._uris:
            uri = self._uris[0]
            try:
                store = _open_store(uri, self._experiment)
                run_id = store.create_run(self._start_ms, self._tags, self.name)
                self._store, self.run_id, self.uri = store, run_id, uri
                self.experiment_id = store.experiment_id
                self._replay()
                return failures
            except Exception as err:  # noqa: BLE001 - any failure moves on to the next store
                failures.append((uri, self._drop_current(err)))
        return failures

    def _drop_current(self, err: BaseException) -> str:
        """Forget the first store after ``err``; return the reason as one line."""
        uri = self._uris.pop(0)
        reason = _one_line(err)
        _FAILED_STORES.setdefault(uri, reason)
        _OPEN_STORES.pop((uri, self._experiment), None)
        self._store = self.run_id = self.uri = None
        return reason

    def _fail_over(self, err: BaseException) -> None:
        """The current store failed with ``err``: go on in the next one (the journal is replayed)."""
        failures = [(self._uris[0], self._drop_current(err))]
        self._report(failures + self._activate())

    def _report(self, failures: list[tuple[str, str]]) -> None:
        """Warn in one line which stores failed and where the data goes now (once per process)."""
        if not failures:
            return
        failed = " nor to ".join(f"{uri} ({reason})" for uri, reason in failures)
        where = f"logging to {self.uri} instead" if self.uri else "tracking is off"
        key = f"{[u for u, _ in failures]}->{self.uri}"
        if key not in TrackedRun._warned:
            TrackedRun._warned.add(key)
            _warn(f"cannot log to {failed}; {where}")

    def _replay(self) -> None:
        for kind, payload in self._journal:
            try:
                self._send(kind, payload)
            except Exception as err:
                if not _is_input_error(err):
                    raise

    def _do(self, kind: str, payload: Any) -> None:
        """Journal ``payload`` and send it; on a store failure fail over to the next store."""
        if self._store is None:
            return
        self._journal.append((kind, payload))
        try:
            self._send(kind, payload)
        except Exception as err:  # noqa: BLE001
            if _is_input_error(err):
                self._warn_input(kind, err)
            else:
                self._fail_over(err)

    def _warn_input(self, kind: str, err: BaseException) -> None:
        if not self._warned_input:
            self._warned_input = True
            _warn(f"some {kind} of run {self.name} were not logged ({_one_line(err)})")

    def end(self, status: str = _FINISHED) -> None:
        """Mark the run ``FINISHED``/``FAILED``/``KILLED`` and remove its scratch folder."""
        try:
            while self._store is not None:
                try:
                    self._store.set_terminated(self.run_id, status, _now_ms())
                    break
                except Exception as err:  # noqa: BLE001
                    self._fail_over(err)
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
            self._store = None

    def detach(self) -> None:
        """Stop logging here but leave the run ``RUNNING`` (the pipeline run, ended by another call)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._store = None

    # -- senders (raise on failure) --------------------------------------------------------------

    def _send(self, kind: str, payload: Any) -> None:
        if kind in ("params", "tags"):
            items = list(payload.items())
            for i in range(0, len(items), _BATCH_PARAMS):
                self._store.log_batch(self.run_id, **{kind: dict(items[i : i + _BATCH_PARAMS])})
        elif kind == "metrics":
            for i in range(0, len(payload), _BATCH_METRICS):
                self._store.log_batch(self.run_id, metrics=payload[i : i + _BATCH_METRICS])
        elif Path(payload[0]).exists():  # an artifact; a file gone before a replay is skipped
            self._send_artifact(*payload)

    def _send_artifact(self, path: str, artifact_path: str | None) -> None:
        method = "log_artifacts" if Path(path).is_dir() else "log_artifact"
        self._store.call(method, self.run_id, path, artifact_path)

    # -- public logging API ------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters; nested mappings become dotted keys, values become text (<= 6000 chars).

        A key logged again with the same value is skipped; with a different value it is refused by
        MLflow, so it is dropped with a warning.
        """
        new: dict[str, str] = {}
        for key, value in flatten(params).items():
            name, text = _clean_key(key), _param_text(value)
            if name in self._params:
                if self._params[name] != text and self.run_id is not None:
                    self._warn_input("params", ValueError(f"param {name!r} changed value"))
                continue
            self._params[name] = new[name] = text
        if new:
            self._do("params", new)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics at ``step`` (int, e.g. epoch or optimiser step; default 0).

        Values are converted with ``float()`` (NumPy scalars and 0-d tensors work; NaN/inf are kept);
        non-numeric values are skipped with a warning.
        """
        ts, step = _now_ms(), int(step or 0)
        rows = []
        for key, value in flatten(metrics).items():
            number = _metric_value(value)
            if number is None:
                self._warn_input("metrics", ValueError(f"metric {key!r} is not a number: {value!r}"))
                continue
            rows.append((_clean_key(key), number, ts, step))
        if rows:
            self._do("metrics", rows)

    def log_metric(self, key: str, value: Any, step: int | None = None) -> None:
        """Log one metric (see :meth:`log_metrics`)."""
        self.log_metrics({key: value}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values as text, <= 8000 chars)."""
        clean = {_clean_key(k): str(v)[:_MAX_TAG] for k, v in tags.items()}
        if clean:
            self._do("tags", clean)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file or a whole folder into the run's artifacts (under ``artifact_path``)."""
        if not Path(path).exists():
            self._warn_input("artifact", FileNotFoundError(f"no such file: {path}"))
            return
        self._do("artifact", (str(Path(path).resolve()), artifact_path))

    def log_figure(self, figure: Any, name: str, dpi: int = 100) -> None:
        """Save a matplotlib figure as artifact ``name`` (e.g. ``"figures/pca.png"``; ``.png`` is
        appended when there is no suffix). The figure is left open."""
        if not Path(name).suffix:
            name = f"{name}.png"
        self._log_local(name, lambda path: figure.savefig(path, dpi=dpi, bbox_inches="tight"))

    def log_dict(self, values: Any, name: str) -> None:
        """Save a JSON-serialisable object (NumPy values allowed) as JSON artifact ``name``
        (e.g. ``"metrics/summary.json"``)."""
        text = json.dumps(values, indent=2, default=_json_default, allow_nan=True)
        self._log_local(name, lambda path: path.write_text(text))

    def log_checkpoint(self, path: str | Path, metrics: Mapping[str, Any]) -> None:
        """Log a step's output checkpoint as artifact ``checkpoint/<name>``, with the validation
        ``metrics`` it was chosen by as ``checkpoint/metrics.json`` beside it (and as metrics
        ``checkpoint.<key>``), and tag ``comedian.checkpoint`` with its artifact path."""
        name = Path(path).name
        self.log_artifact(path, "checkpoint")
        self.log_dict(dict(metrics), "checkpoint/metrics.json")
        numbers = {f"checkpoint.{k}": v for k, v in metrics.items() if _metric_value(v) is not None}
        if numbers:
            self.log_metrics(numbers)
        self.set_tags({"comedian.checkpoint": f"checkpoint/{name}"})

    @contextlib.contextmanager
    def system_metrics(self, sampling_interval_s: float = SYSTEM_METRICS_INTERVAL_S) -> Iterator[None]:
        """While the block runs, MLflow's own system-metrics monitor logs ``system/*`` (CPU, memory,
        disk, network; GPU utilisation and memory through pynvml where there is an NVIDIA GPU) to
        this run every ``sampling_interval_s`` (``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` wins).
        Nothing when tracking is off; a monitor that cannot start warns and the block still runs."""
        monitor = None
        if self._store is not None:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                with _quiet_loggers():
                    monitor = SystemMetricsMonitor(
                        self.run_id, sampling_interval=sampling_interval_s, tracking_uri=self.uri
                    )
                    monitor.start()
            except Exception as err:  # noqa: BLE001 - e.g. psutil missing: tracking never fails a stage
                self._warn_input("system metrics", err)
                monitor = None
        try:
            yield
        finally:
            if monitor is not None:
                with _quiet_loggers():
                    monitor.finish()

    def _log_local(self, name: str, write: Callable[[Path], Any]) -> None:
        """Write artifact ``name`` to a scratch file kept until the run ends (for a fallback replay)
        and log it. A failure to write it warns instead of raising."""
        if self._store is None:
            return
        try:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="comedian-tracking-"))
            folder = self._tmp / str(len(self._journal))
            folder.mkdir(exist_ok=True)
            local = folder / Path(name).name
            write(local)
        except Exception as err:  # noqa: BLE001 - tracking never fails the stage
            self._warn_input("artifact", err)
            return
        self._do("artifact", (str(local), str(Path(name).parent) if "/" in name else None))


# --------------------------------------------------------------------------------------------------
# Entry points


def _context_tags() -> dict[str, str]:
    """Who and where: user, host, pid, command line, Slurm job id (when there is one)."""
    tags = {"comedian.host": socket.gethostname(), "comedian.pid": str(os.getpid())}
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    tags["comedian.command"] = " ".join(sys.argv)
    if os.environ.get("SLURM_JOB_ID"):
        tags["comedian.slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return tags


def stage_run_name(stage: str, wildcards: Mapping[str, Any] | None = None) -> str:
    """``"pca"`` or ``"extract[game=..., half=1]"``: the stage and its wildcards."""
    if not wildcards:
        return stage
    return f"{stage}[{', '.join(f'{k}={v}' for k, v in wildcards.items())}]"


@contextlib.contextmanager
def stage_run(
    stage: str,
    wildcards: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    system_metrics: bool = False,
) -> Iterator[TrackedRun]:
    """A child run of the pipeline run for one job of ``stage`` (a top-level run when
    ``$COMEDIAN_PIPELINE_RUN_ID`` is unset); with ``system_metrics``, MLflow's system metrics are
    logged while the block runs (:meth:`TrackedRun.system_metrics`).

    Tags: ``mlflow.parentRunId``, ``comedian.stage``, ``comedian.wildcard.<name>`` per wildcard, plus
    host/pid/command/Slurm job id. ``params`` are logged at once. The run ends ``FINISHED`` when the
    block completes (or exits with ``sys.exit(0)``), ``KILLED`` on ``KeyboardInterrupt`` and ``FAILED``
    on any other exception, which is re-raised. Tracking failures never raise.

    Example::

        with stage_run("pca", wildcards={"split": "train"}, params={"dim": 512}) as run:
            run.log_metrics({"explained_variance": 0.93})
            run.log_figure(fig, "figures/variance.png")
    """
    wildcards = dict(wildcards or {})
    all_tags = {**_context_tags(), TAG_KIND: "stage", TAG_STAGE: stage}
    all_tags.update({f"{TAG_WILDCARD_PREFIX}{k}": v for k, v in wildcards.items()})
    parent = os.environ.get(ENV_PARENT_RUN_ID)
    if parent:
        all_tags[TAG_PARENT] = parent
    all_tags.update(tags or {})
    run = TrackedRun(stage_run_name(stage, wildcards), all_tags)
    status = _FAILED
    try:
        if params:
            run.log_params(params)
        with run.system_metrics() if system_metrics else contextlib.nullcontext():
            yield run
        status = _FINISHED
    except KeyboardInterrupt:
        status = _KILLED
        raise
    except SystemExit as exit_:
        status = _FINISHED if exit_.code in (None, 0) else _FAILED
        raise
    finally:
        run.end(status)


def start_pipeline_run(
    uri: str | None = None,
    experiment: str | None = None,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    export: bool = True,
) -> str | None:
    """Create the parent run of one pipeline invocation; for the Snakefile's ``onstart:``.

    Args:
        uri: tracking URI (``config["tracking"]["uri"]``; None/"" -> :func:`resolve_uri`).
        experiment: experiment name (None -> :func:`resolve_experiment`).
        name: run name (default ``"pipeline <local time>"``).
        config: the pipeline config; logged as dotted params and as artifact ``config.json``.
            The run also holds :func:`comedian.provenance.collect` (code, stack, machine, inputs) as
            tags ``comedian.provenance.*`` and artifact ``provenance.json``.
        export: set ``COMEDIAN_TRACKING_URI`` (the store actually used: the fallback if ``uri``
            failed), ``COMEDIAN_TRACKING_FALLBACK_URI``, ``COMEDIAN_EXPERIMENT`` (and its id,
            ``COMEDIAN_EXPERIMENT_ID``) and ``COMEDIAN_PIPELINE_RUN_ID`` in ``os.environ``, which
            every job inherits; and
            ``COMEDIAN_PROVENANCE`` (commit and digests, for result files) even with tracking off.

    Returns:
        The parent run id, or None when tracking is off or no store works (then nothing is exported
        but ``COMEDIAN_TRACKING`` stays as it is, and jobs try the stores themselves).
    """
    from comedian import provenance

    found = provenance.collect(config)
    if export:
        os.environ[provenance.ENV_SUMMARY] = json.dumps(provenance.summary(found))
    name = name or time.strftime("pipeline %Y-%m-%d %H:%M:%S")
    tags = {**_context_tags(), **provenance.tags(found), TAG_KIND: "pipeline", TAG_WORKDIR: str(Path.cwd())}
    run = TrackedRun(name, tags, uri, experiment)
    if run.run_id is None:
        run.end(_FAILED)
        return None
    close_killed_pipeline_runs(run.uri, run.run_id, experiment)
    if config:
        run.log_params(config)
        run.log_dict(dict(config), "config.json")
    run.log_dict(found, "provenance.json")
    run.detach()
    if export:
        os.environ[ENV_URI] = run.uri
        if os.environ.get(ENV_FALLBACK_URI) or not _is_http(run.uri):  # else each job has its own file
            os.environ[ENV_FALLBACK_URI] = resolve_fallback_uri(primary=run.uri)
        os.environ[ENV_EXPERIMENT] = resolve_experiment(experiment)
        os.environ[ENV_EXPERIMENT_ID] = run.experiment_id
        os.environ[ENV_PARENT_RUN_ID] = run.run_id
    return run.run_id


def end_pipeline_run(
    run_id: str | None = None,
    status: str = _FINISHED,
    log: str | Path | list[str | Path] | None = None,
    uri: str | None = None,
) -> None:
    """End the parent run; for ``onsuccess:`` (``"FINISHED"``) and ``onerror:`` (``"FAILED"``).

    Child runs still ``RUNNING`` (jobs that were killed) are marked ``KILLED``. ``log`` (Snakemake's
    log file or files, the handlers' ``log`` variable) is attached as an artifact. ``run_id`` and ``uri``
    default to ``$COMEDIAN_PIPELINE_RUN_ID`` and :func:`resolve_uri`. Never raises: failures warn.
    """
    run_id = run_id or os.environ.get(ENV_PARENT_RUN_ID)
    if not run_id or not tracking_enabled():
        return
    uri = resolve_uri(uri)
    try:
        store = _open_store(uri, resolve_experiment())
        experiment_id = store.call("get_run", run_id).info.experiment_id
        orphans = store.call(
            "search_runs",
            [experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{run_id}' and attributes.status = '{_RUNNING}'",
        )
        for child in orphans:
            store.call("set_terminated", child.info.run_id, status=_KILLED)
        for path in [log] if isinstance(log, (str, Path)) else log or []:
            if Path(path).is_file():
                store.call("log_artifact", run_id, str(path), None)
        store.call("set_terminated", run_id, status=status.upper(), end_time=_now_ms())
    except Exception as err:  # noqa: BLE001 - tracking never fails the pipeline
        _warn(f"could not end pipeline run {run_id} in {uri} ({_one_line(err)})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_killed_pipeline_runs(uri: str, current: str, experiment: str | None = None) -> list[str]:
    """Close as ``KILLED`` the pipeline runs of this working directory still ``RUNNING`` in ``uri``
    (and their running children): invocations killed before their ``onerror:`` ran. Snakemake locks
    a working directory, so another invocation there is running only if its process is alive; one
    of this host whose pid lives is left alone. Returns the ids closed; never raises."""
    closed = []
    try:
        store = _open_store(uri, resolve_experiment(experiment))
        stale = store.call(
            "search_runs",
            [store.experiment_id],
            filter_string=f"tags.`{TAG_KIND}` = 'pipeline' and tags.`{TAG_WORKDIR}` = '{Path.cwd()}' "
            f"and attributes.status = '{_RUNNING}'",
        )
    except Exception as err:  # noqa: BLE001 - tracking never fails the pipeline
        _warn(f"could not look for killed pipeline runs in {uri} ({_one_line(err)})")
        return closed
    for old in stale:
        tags = old.data.tags
        if old.info.run_id == current:
            continue
        pid = tags.get("comedian.pid", "")
        if tags.get("comedian.host") == socket.gethostname() and pid.isdigit() and _alive(int(pid)):
            continue
        end_pipeline_run(old.info.run_id, status=_KILLED, uri=uri)
        closed.append(old.info.run_id)
    return closed


# --------------------------------------------------------------------------------------------------
# `comedian tracking-server`


def use_wal(path: Path) -> None:
    """Put the sqlite database ``path`` (made if missing) in write-ahead-log mode, which the file keeps:
    a long read of one server worker (the UI's or a pipeline's run search) then never blocks the job
    writes of the others, nor they it (MLflow's busy timeout is 20 s). For short requests alone it
    makes no measurable difference (100 creates at once on 4 workers: medians 1.1-2.7 s with or without,
    the spread of a shared machine). WAL needs a local disk, as the server's store is."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def server_command(store: Path, host: str, port: int, workers: int) -> list[str]:
    """The ``mlflow server`` command line: sqlite in ``store`` (local disk), artifacts served by the
    server from ``store/mlartifacts``, so that jobs need nothing but HTTP."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{store.resolve()}/mlflow.db",
        "--artifacts-destination", str(store.resolve() / ARTIFACT_DIRNAME), "--serve-artifacts",
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``comedian tracking-server``: an MLflow server for the jobs of a cluster (run it on the login
    node); prints the URI to put in the config's ``tracking.uri``."""
    import argparse

    default_store = Path(tempfile.gettempdir()) / f"comedian-mlflow-{getpass.getuser()}"
    parser = argparse.ArgumentParser(
        prog="comedian tracking-server",
        description="Serve MLflow tracking over HTTP for a pipeline's jobs (sqlite on this machine's local "
        "disk, artifacts through the server). Put the printed URI in tracking.uri.",
    )
    parser.add_argument("--store", type=Path, default=default_store,
                        help=f"folder on LOCAL disk for mlflow.db and the artifacts (default {default_store})")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4, help="server worker processes (default 4)")
    args = parser.parse_args(argv)
    args.store.mkdir(parents=True, exist_ok=True)
    use_wal(args.store / "mlflow.db")
    name = socket.getfqdn() if args.host in {"0.0.0.0", "::"} else args.host
    print(f"comedian tracking-server: store {args.store.resolve()}", flush=True)
    print(f"tracking.uri: http://{name}:{args.port}", flush=True)
    _set_env_defaults({**MLFLOW_ENV_DEFAULTS, **SERVER_ENV_DEFAULTS})
    os.execv(sys.executable, server_command(args.store, args.host, args.port, args.workers))
    return 0  # not reached
