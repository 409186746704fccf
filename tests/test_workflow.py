"""The Snakemake DAG on a tiny demo config: it runs, it is incremental, config and code changes rerun
exactly the rules that use them.

The workflow runs from a copy of the checkout (package + workflow) so that the tests can edit code.
"""

import json
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
    # The whole DAG in about a minute: one epoch of each step on a 16-px model.
    "model": {"arch": "vivit_demo", "frames": 16, "size": 16, "temporal_depth": 1, "drop_path": 0.0},
    "pretrain_spatial": {"epochs": 1, "warmup_epochs": 0, "batch_size": 32, "queue_size": 64,
                         "proj_dim": 16, "proj_hidden": 32, "pred_hidden": 32},
    "pretrain_temporal": {"epochs": 1, "warmup_epochs": 0, "batch_size": 4, "windows_per_game": 4,
                          "queue_size": 64, "proj_hidden": 32},
    "finetune": {"head_epochs": 1, "epochs": 1, "batch_size": 4, "windows_per_game": 4, "validate_every": 1,
                 "ignore_s": 2},
    "predict": {"batch_size": 4, "ignore_s": 2},
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


# Per split: postprocess and evaluate run for each seed's model and for their ensemble (one seed here).
AFTER_FINETUNE = {"predict": 1, "ensemble": 1, "postprocess": 2, "evaluate": 4, "report": 1, "all": 1}
DOWNSTREAM_OF_PCA = {"pca": 1, "pretrain_temporal": 1, "finetune": 1, **AFTER_FINETUNE}


@pytest.mark.slow
def test_whole_dag_runs(finished):
    frames = sorted((finished / "results" / "frames").glob("*/*.h5"))
    assert len(frames) == 3 * 2
    with h5py.File(finished / "results" / "features" / "baidu_pca.h5") as h5:
        assert h5["components"].shape == (16, 8576)
        assert len(h5["halves"]) == 3
    metrics = json.loads((finished / "results" / "metrics.json").read_text())
    assert set(metrics) == {"test", "provenance"} and set(metrics["test"]) == {"tight", "loose"}
    assert metrics["provenance"]["config_sha256"] is not None and metrics["provenance"]["commit"] != "unknown"
    tight = metrics["test"]["tight"]
    assert set(tight) >= {"a_mAP", "a_mAP_per_class", "a_mAP_visible", "a_mAP_unshown", "seeds", "seed_mean"}
    # one seed: its model is the ensemble's only member, so the two score alike
    assert list(tight["seeds"]) == ["0"] and tight["seeds"]["0"]["a_mAP"] == pytest.approx(tight["a_mAP"], abs=1e-12)
    assert tight["seed_mean"]["a_mAP"] == tight["seeds"]["0"]["a_mAP"] and tight["seed_std"]["a_mAP"] == 0.0
    for path in ["results/report/ap_table.html", "results/report/pr_curves.png",
                 "results/submissions/ensemble/test.zip", "results/submissions/seed0/test.zip",
                 "results/checkpoints/pretrain_spatial_seed0.pt", "results/checkpoints/pretrain_temporal_seed0.pt",
                 "logs/demo_data.log", "logs/finetune/seed0.log", "benchmarks/pca.tsv"]:
        assert (finished / path).is_file(), path
    assert list((finished / "results" / "predictions" / "ensemble" / "test").glob("*/*/*/results_spotting.json"))


@pytest.mark.slow
def test_every_job_is_a_child_run_of_one_pipeline_run(finished):
    import sqlite3

    with sqlite3.connect(finished / "results" / "mlflow.db") as db:
        runs = dict(db.execute("SELECT run_uuid, status FROM runs"))
        parents = dict(db.execute("SELECT run_uuid, value FROM tags WHERE key = 'mlflow.parentRunId'"))
        stages = dict(db.execute("SELECT run_uuid, value FROM tags WHERE key = 'comedian.stage'"))
    top = set(runs) - set(parents)
    assert len(top) == 1 and set(parents.values()) == top
    assert all(status == "FINISHED" for status in runs.values())
    assert {"demo-data", "extract", "pca", "pretrain_spatial", "finetune", "predict", "postprocess",
            "evaluate", "report"} <= {stage.replace("_", "-") if stage == "demo_data" else stage
                                      for stage in stages.values()} | {"demo-data"}


@pytest.mark.slow
def test_finished_run_has_nothing_to_do(finished):
    assert planned_jobs(finished) == {}


def jobs_with(workdir, **sections):
    write_config(workdir, dict(TINY, **sections))
    try:
        return planned_jobs(workdir)
    finally:
        write_config(workdir, TINY)


@pytest.mark.slow
def test_config_change_reruns_exactly_the_rules_that_use_it(finished):
    assert jobs_with(finished, pca={"dims": 8}) == DOWNSTREAM_OF_PCA
    assert jobs_with(finished, postprocess={"nms": "hard"}) == {"postprocess": 2, "evaluate": 4, "report": 1,
                                                                "all": 1}
    everything = {k: v for k, v in planned_jobs(finished, "--forceall").items() if k != "demo_data"}
    assert jobs_with(finished, extract={"fps": 2.0, "quality": 4}) == everything
    assert jobs_with(finished, tracking={"experiment": "another"}) == {}


@pytest.mark.slow
def test_key_order_comments_and_formatting_rerun_nothing(finished):
    path = finished / "config" / "config.yaml"
    text = "# the same config, keys sorted, flow style and comments\n" + yaml.safe_dump(
        TINY, sort_keys=True, default_flow_style=True, width=60)
    path.write_text(text)
    try:
        assert planned_jobs(finished) == {}
    finally:
        write_config(finished, TINY)


@pytest.mark.slow
def test_edited_labels_rerun_exactly_the_rules_that_read_them(finished):
    games = {s: (finished / "resources" / "demo" / "splits" / f"{s}.txt").read_text().split("\n")[0]
             for s in ("train", "test")}

    def jobs_after_cutting(split):
        path = finished / "resources" / "demo" / "SoccerNet" / games[split] / "Labels-v2.json"
        original, stat = path.read_text(), path.stat()
        document = json.loads(original)
        document["annotations"] = document["annotations"][:5]
        path.write_text(json.dumps(document))
        try:
            return planned_jobs(finished)
        finally:
            path.write_text(original)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert jobs_after_cutting("test") == {"evaluate": 4, "report": 1, "all": 1}
    assert jobs_after_cutting("train") == {"finetune": 1, **AFTER_FINETUNE}
    assert planned_jobs(finished) == {}


@pytest.mark.slow
def test_seeds_run_every_step_unless_pretraining_is_shared(finished):
    per_seed = {"pretrain_spatial": 1, "pretrain_temporal": 1, "finetune": 1, "predict": 1, "ensemble": 1,
                "postprocess": 2, "evaluate": 4, "report": 1, "all": 1}  # seed 1's chain; the ensemble's again
    assert jobs_with(finished, seeds=[0, 1]) == per_seed
    shared = {k: v for k, v in per_seed.items() if not k.startswith("pretrain")}
    assert jobs_with(finished, seeds=[0, 1], share_pretraining=True) == shared


@pytest.mark.slow
def test_code_change_reruns_only_the_stage_that_runs_it(finished):
    checkout = finished / "checkout" / "comedian"
    features, tracking, report = checkout / "data" / "features.py", checkout / "tracking.py", checkout / "report.py"
    nms = checkout / "postprocess.py"
    original = {path: path.read_text() for path in (features, tracking, report, nms)}

    def jobs_after(path, new_text):
        path.write_text(new_text)
        try:
            return planned_jobs(finished)
        finally:
            path.write_text(original[path])

    code = original[features].replace("BAIDU_DIM = 8576", "BAIDU_DIM = 8576\nUNUSED = 1")
    assert jobs_after(features, code) == DOWNSTREAM_OF_PCA
    assert jobs_after(features, original[features] + "\n# a comment\n") == {}
    assert jobs_after(tracking, original[tracking] + "\nUNUSED = 1\n") == {}  # bookkeeping
    assert jobs_after(report, original[report] + "\nUNUSED = 1\n") == {"report": 1, "all": 1}
    # NMS code is also fine-tuning's (its validation spots events), so fine-tuning reruns with it.
    assert jobs_after(nms, original[nms] + "\nUNUSED = 1\n") == {"finetune": 1, **AFTER_FINETUNE}


@pytest.mark.slow
def test_training_with_several_gpus_runs_through_torchrun(finished):
    def command(gpus):
        out = snakemake(finished, "-n", "-p", "--forcerun", "finetune", "--set-resources",
                        f"finetune:gpu={gpus}", "--", "results/checkpoints/finetune_seed0.pt").stdout
        line = next(line for line in out.splitlines() if "comedian finetune" in line)
        return line.split("Shell command:")[-1].strip()

    assert command(2).startswith("exec torchrun --standalone --nproc-per-node 2 -m comedian finetune ")
    assert command(1).startswith("exec python -m comedian finetune ")
    assert command(0).startswith("exec python -m comedian finetune ")


@pytest.mark.slow
def test_bad_config_fails_before_any_job(tmp_path):
    bad = dict(TINY, pca={"dims": 16, "whiten": True})
    write_config(tmp_path, bad)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "pca: Additional properties are not allowed ('whiten' was unexpected)" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
