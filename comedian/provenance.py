"""What produced a result: the code, the software stack, the machine and the inputs of a pipeline run.

:func:`collect` gathers it all (one JSON-able dict; the pipeline's parent MLflow run holds it as
tags ``comedian.provenance.*`` and as the artifact ``provenance.json``):

* ``git``: the checkout's commit, whether the tree is dirty (tracked changes or untracked files, as
  ``git status`` shows them) and a SHA-256 of that difference (``git diff HEAD --binary`` plus the
  untracked files' names and contents), so two dirty trees can be told apart;
* ``stack``: the versions of python, torch (+ the CUDA it was built with, and its git commit), torchvision,
  timm, numpy, snakemake, mlflow, h5py, and the first line of the ffmpeg binary's ``-version``;
* ``machine``: host, OS, CPU model and count, memory, and the GPUs with their driver
  (``nvidia-smi``; none listed where there is no NVIDIA driver);
* ``inputs``: the split lists (SHA-256 of each) and the data tree (number of files, total bytes and a
  SHA-256 of the sorted ``<relative path>\\t<size>`` lines; contents are not read).

Nothing here imports torch or mlflow (versions come from the installed metadata), so collecting costs
well under a second plus the walk of the data tree. Every probe that fails gives ``None`` (or
``"unknown"``) for its field instead of raising: provenance never stops a pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: The checkout this package was imported from (the Snakefile puts its checkout first on PYTHONPATH).
CHECKOUT = Path(__file__).resolve().parents[1]
#: Environment variable through which a pipeline's jobs receive :func:`summary` of its start.
ENV_SUMMARY = "COMEDIAN_PROVENANCE"
#: Distributions whose versions are recorded (python, CUDA and ffmpeg are added).
STACK = ("torch", "torchvision", "timm", "numpy", "snakemake", "mlflow", "h5py", "msgspec", "imageio-ffmpeg")
_TIMEOUT_S = 10


def _run(command: Sequence[str], cwd: Path | None = None) -> str | None:
    """stdout of ``command``, or None when it is missing, fails or hangs."""
    try:
        done = subprocess.run(list(command), cwd=cwd, capture_output=True, timeout=_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode("utf-8", "replace")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of a config as canonical JSON (keys sorted), the form the rules' params use."""
    return sha256_text(json.dumps(config, sort_keys=True, default=str))


# --------------------------------------------------------------------------------------------
# Code


def git_state(repo: str | Path = CHECKOUT) -> dict[str, Any]:
    """``{"commit", "dirty", "diff_sha256", "untracked"}`` of the git checkout at ``repo``.

    ``commit`` is ``"unknown"`` (and the rest None) outside a git checkout or without git.
    """
    repo = Path(repo)
    commit = _run(["git", "rev-parse", "HEAD"], repo)
    status = _run(["git", "status", "--porcelain", "--untracked-files=all"], repo)
    if commit is None or status is None:
        return {"commit": "unknown", "dirty": None, "diff_sha256": None, "untracked": None}
    lines = status.splitlines()
    untracked = sorted(line[3:] for line in lines if line.startswith("?? "))
    digest = hashlib.sha256((_run(["git", "diff", "HEAD", "--binary"], repo) or "").encode("utf-8", "replace"))
    for name in untracked:
        digest.update(f"\0{name}\0".encode())
        try:
            digest.update((repo / name).read_bytes())
        except OSError:
            digest.update(b"<unreadable>")
    dirty = bool(lines)
    return {
        "commit": commit.strip(),
        "dirty": dirty,
        "diff_sha256": digest.hexdigest() if dirty else None,
        "untracked": len(untracked),
    }


# --------------------------------------------------------------------------------------------
# Software


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torch_build() -> dict[str, str | None]:
    """torch's CUDA and cuDNN versions as its ``torch/version.py`` states them (without importing torch)."""
    try:
        text = Path(metadata.distribution("torch").locate_file("torch/version.py")).read_text()
    except (metadata.PackageNotFoundError, OSError):
        return {"torch_cuda": None, "torch_git": None}
    found = {key: re.search(rf"^{key}\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]*)['\"]", text, re.M) for key in ("cuda", "git_version")}
    return {
        "torch_cuda": found["cuda"].group(1) if found["cuda"] else None,  # None: a CPU-only build
        "torch_git": found["git_version"].group(1) if found["git_version"] else None,
    }


def ffmpeg_version() -> str | None:
    """First line of ``ffmpeg -version`` of the binary frame extraction uses (imageio-ffmpeg's)."""
    try:
        import imageio_ffmpeg

        binary = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # noqa: BLE001 - no binary: recorded as None
        binary = shutil.which("ffmpeg")
    out = _run([binary, "-version"]) if binary else None
    return out.splitlines()[0].split(" Copyright")[0].strip() if out else None


def stack_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    versions.update({name: _version(name) for name in STACK})
    versions.update(_torch_build())
    versions["ffmpeg"] = ffmpeg_version()
    return versions


# --------------------------------------------------------------------------------------------
# Machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gpus() -> list[dict[str, str]]:
    """``[{"name", "driver", "memory"}]`` from ``nvidia-smi``; empty without an NVIDIA driver."""
    binary = shutil.which("nvidia-smi")
    out = _run([binary, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]) if binary else None
    rows = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            rows.append(dict(zip(("name", "driver", "memory"), parts)))
    return rows


def machine() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "gpus": gpus(),
    }


# --------------------------------------------------------------------------------------------
# Inputs


def tree_fingerprint(root: str | Path) -> dict[str, Any]:
    """``{"root", "files", "bytes", "sha256"}`` of the file names and sizes under ``root`` (links
    followed, contents not read); ``files`` 0 and ``sha256`` None where ``root`` does not exist."""
    root = Path(root)
    entries = []
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            path = Path(folder, name)
            try:
                size = path.stat().st_size
            except OSError:
                continue
            entries.append((path.relative_to(root).as_posix(), size))
    entries.sort()
    text = "".join(f"{name}\t{size}\n" for name, size in entries)
    return {
        "root": str(root),
        "files": len(entries),
        "bytes": sum(size for _, size in entries),
        "sha256": sha256_text(text) if entries else None,
    }


def file_digest(path: str | Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def inputs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The split lists and the data tree named by a pipeline config (``dataset.root``, ``dataset.splits``)."""
    dataset = config.get("dataset") or {}
    splits = dataset.get("splits") or {}
    found: dict[str, Any] = {"splits": {name: {"path": str(path), "sha256": file_digest(path)}
                                        for name, path in sorted(splits.items())}}
    if dataset.get("root"):
        found["data"] = tree_fingerprint(dataset["root"])
    return found


# --------------------------------------------------------------------------------------------
# All of it


def collect(config: Mapping[str, Any] | None = None, repo: str | Path = CHECKOUT) -> dict[str, Any]:
    """Everything above, for one pipeline run: ``git``, ``stack``, ``machine``, ``inputs`` and the
    ``config_sha256`` (inputs and digest only when a config is given)."""
    found: dict[str, Any] = {"git": git_state(repo), "stack": stack_versions(), "machine": machine()}
    if config is not None:
        found["config_sha256"] = config_digest(config)
        found["inputs"] = inputs(config)
    found["command"] = " ".join(sys.argv)
    return found


def tags(found: Mapping[str, Any]) -> dict[str, str]:
    """The searchable part of :func:`collect` as MLflow tags ``comedian.provenance.<section>.<key>``
    (the GPU list as one JSON tag); the full record goes in ``provenance.json``."""
    out = {}
    for section in ("git", "stack", "machine"):
        for key, value in (found.get(section) or {}).items():
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            out[f"comedian.provenance.{section}.{key}"] = text
    if "config_sha256" in found:
        out["comedian.provenance.config_sha256"] = found["config_sha256"]
    data = (found.get("inputs") or {}).get("data")
    if data:
        out["comedian.provenance.inputs.data_sha256"] = str(data["sha256"])
    return out


def summary(found: Mapping[str, Any]) -> dict[str, Any]:
    """The part of :func:`collect` that a result file carries: commit, dirty flag, diff digest and the
    config digest (``metrics.json``)."""
    git = found.get("git") or {}
    return {
        "commit": git.get("commit"),
        "dirty": git.get("dirty"),
        "diff_sha256": git.get("diff_sha256"),
        "config_sha256": found.get("config_sha256"),
    }


def current_summary() -> dict[str, Any]:
    """:func:`summary` of the pipeline invocation this job belongs to (exported by
    :func:`comedian.tracking.start_pipeline_run` in ``$COMEDIAN_PROVENANCE``); for a stage run by
    hand, that of this checkout now, without a config digest."""
    text = os.environ.get(ENV_SUMMARY)
    if text:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return summary({"git": git_state()})
