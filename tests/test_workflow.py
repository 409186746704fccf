"""The Snakemake DAG on a tiny demo config: it runs, it is incremental, config and code changes rerun
exactly the rules that use them.

The workflow runs from a copy of the checkout (package + workflow) so that the tests can edit code.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "dataset": {
        "root": "resources/demo/SoccerNet",
        "splits": {s: f"resources/demo/splits/{s}.txt" for s in ("train", "valid", "test")},
    },
    "demo": {"seed": 3, "games": {"train": 1, "valid": 1, "test": 1}, "half_duration_s": 30},
    "extract": {"fps": 2.0, "quality": 5},
    "pca": {"dims": 16},
    "tracking": {"experiment": "workflow-test"},
}


def snakemake(workdir, *args, check=True):
    """Run Snakemake on ``workdir`` with the checkout copy ``workdir/checkout`` (workflow and package)."""
    checkout = workdir / "checkout"
    if not checkout.exists():
        for part in ("comedian", "workflow", "envs"):
            shutil.copytree(REPO / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    snakefile = checkout / "workflow" / "Snakefile"
    env = dict(os.environ, PYTHONPATH=str(checkout), COMEDIAN_TRACKING="1")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def planned_jobs(workdir, *args):
    """rule -> job count of a dry run (empty when there is nothing to do)."""
    out = snakemake(workdir, "-n", *args).stdout
    table = re.search(r"job\s+count\n-+\s+-+\n(.*?)\ntotal", out, re.S)
    if table is None:
        assert "Nothing to be done" in out, out
        return {}
    return {line.split()[0]: int(line.split()[1]) for line in table.group(1).splitlines()}


def write_config(workdir, config):
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dag")
    write_config(workdir, TINY)
    snakemake(workdir, "--cores", "2")
    return workdir


@pytest.mark.slow
def test_data_half_runs(finished):
    frames = sorted((finished / "results" / "frames").glob("*/*.h5"))
    assert len(frames) == 3 * 2
    with h5py.File(finished / "results" / "features" / "baidu_pca.h5") as h5:
        assert h5["components"].shape == (16, 8576)
        assert len(h5["halves"]) == 3
    for log in ["logs/demo_data.log", "logs/pca.log"]:
        assert (finished / log).is_file()
    assert (finished / "benchmarks" / "pca.tsv").is_file()
    assert (finished / "results" / "mlflow.db").is_file()


@pytest.mark.slow
def test_finished_run_has_nothing_to_do(finished):
    assert planned_jobs(finished) == {}


@pytest.mark.slow
def test_pca_change_reruns_only_pca_and_descendants(finished):
    def jobs_with(**sections):
        write_config(finished, dict(TINY, **sections))
        try:
            return planned_jobs(finished)
        finally:
            write_config(finished, TINY)

    assert jobs_with(pca={"dims": 8}) == {"pca": 1, "all": 1}
    assert jobs_with(extract={"fps": 2.0, "quality": 4}) == {"extract": 6, "pca": 1, "all": 1}
    assert jobs_with(tracking={"experiment": "another"}) == {}


@pytest.mark.slow
def test_code_change_reruns_only_the_stage_that_runs_it(finished):
    features = finished / "checkout" / "comedian" / "data" / "features.py"
    tracking = finished / "checkout" / "comedian" / "tracking.py"
    original = {path: path.read_text() for path in (features, tracking)}

    def jobs_after(path, new_text):
        path.write_text(new_text)
        try:
            return planned_jobs(finished)
        finally:
            path.write_text(original[path])

    code = original[features].replace("BAIDU_DIM = 8576", "BAIDU_DIM = 8576\nUNUSED = 1")
    assert jobs_after(features, code) == {"pca": 1, "all": 1}
    assert jobs_after(features, original[features] + "\n# a comment\n") == {}
    assert jobs_after(tracking, original[tracking] + "\nUNUSED = 1\n") == {}  # bookkeeping
    # Shared code reruns every stage that uses it: frames.py is imported by extract and pca.
    frames = finished / "checkout" / "comedian" / "data" / "frames.py"
    original[frames] = frames.read_text()
    assert jobs_after(frames, original[frames] + "\nUNUSED = 1\n") == {"extract": 6, "pca": 1, "all": 1}


@pytest.mark.slow
def test_bad_config_fails_before_any_job(tmp_path):
    bad = dict(TINY, pca={"dims": 16, "whiten": True})
    write_config(tmp_path, bad)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "pca: Additional properties are not allowed ('whiten' was unexpected)" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
