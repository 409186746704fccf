"""Shared test settings and the one run of the README's demo that several test files read."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_tracking_by_default(monkeypatch):
    """Stages called in-process log nothing to MLflow unless a test turns tracking on itself
    (``COMEDIAN_TRACKING=1`` and a store in its tmp dir): no test writes into the checkout's results/."""
    monkeypatch.setenv("COMEDIAN_TRACKING", "0")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The README's demo, run once for the whole session: the shipped ``config/config.yaml``, its whole DAG
    (``snakemake --cores 2``, as ``snakemake --cores all`` on 2 cores), in a folder of its own; returns the
    folder. The smoke test of the shipped configs checks its products, the spot test uses its checkpoint."""
    workdir = tmp_path_factory.mktemp("demo_run")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--configfile", str(REPO / "config" / "config.yaml")]
    env = dict(os.environ, PYTHONPATH=str(REPO), COMEDIAN_TRACKING="1")
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir
