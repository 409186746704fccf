"""The Snakemake DAG on a tiny demo config: it runs, it is incremental, config and code changes rerun
exactly the rules that use them; experiments share every common product and tables read their metrics.

The workflow runs from a copy of the checkout (package + workflow) so that the tests can edit code.
"""

import csv
import html
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
    # The demo's table8 and table5 at this scale (8-s windows: at most 3 s ignored at each edge).
    "experiments": {
        "hard_2_5": {"postprocess": {"nms": "hard", "window_s": 5}},
        "hard_3_3": {"predict": {"ignore_s": 3}, "postprocess": {"nms": "hard", "window_s": 3}},
        "soft_3_10": {"predict": {"ignore_s": 3}, "postprocess": {"nms": "soft", "window_s": 10}},
        "scratch": {"finetune": {"init": "scratch"}},
        "step_1_only": {"finetune": {"init": "pretrain_spatial"}},
        "step_2_only": {"pretrain_temporal": {"init": "scratch"}},
    },
    "tables": {
        "table8": {"caption": "NMS", "rows": [
            {"label": "hard 2 5", "experiment": "hard_2_5", "split": "test", "paper": 66.6},
            {"label": "hard 3 3", "experiment": "hard_3_3", "split": "test", "paper": 67.1},
            {"label": "soft 3 10", "experiment": "soft_3_10", "split": "test", "paper": 68.0, "ensemble": True}]},
        "table5": {"caption": "steps", "rows": [
            {"label": "scratch", "experiment": "scratch", "split": "test", "paper": 48.1},
            {"label": "step 1", "experiment": "step_1_only", "split": "test", "paper": 54.7},
            {"label": "step 2", "experiment": "step_2_only", "split": "test", "paper": 60.0},
            {"label": "steps 1 + 2", "split": "test", "metric": "loose", "paper": 64.7}]},
    },
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


def manifest(workdir, view="results"):
    """role -> product (stage, key, folder, settings, inputs) of an experiment's manifest.json."""
    return json.loads((workdir / view / "manifest.json").read_text())["products"]


def product_file(workdir, role, name):
    return str(Path(manifest(workdir)[role]["folder"]) / name)


# Per split: postprocess and evaluate run for each seed's model and for their ensemble (one seed here).
# A settings change gives new keyed products, so the default's manifest is rewritten with them.
AFTER_FINETUNE = {"predict": 1, "ensemble": 1, "postprocess": 2, "evaluate": 4, "report": 1, "view": 1, "all": 1}
DOWNSTREAM_OF_PCA = {"pca": 1, "pretrain_temporal": 1, "finetune": 1, **AFTER_FINETUNE, "manifest": 1}


@pytest.mark.slow
def test_whole_dag_runs(finished):
    frames = sorted((finished / "results" / "frames").glob("*/*/*.h5"))
    assert len(frames) == 3 * 2
    with h5py.File(finished / product_file(finished, "pca", "baidu_pca.h5")) as h5:
        assert h5["components"].shape == (16, 8576)
        assert len(h5["halves"]) == 3
    metrics = json.loads((finished / "results" / "metrics.json").read_text())
    assert set(metrics) == {"test", "provenance"} and set(metrics["test"]) == {"tight", "loose"}
    # the workflow runs from a copy of the checkout without .git: no commit to record (test_provenance.py
    # checks the commit and dirty flag of a git checkout)
    assert metrics["provenance"]["config_sha256"] is not None and metrics["provenance"]["commit"] == "unknown"
    tight = metrics["test"]["tight"]
    assert set(tight) >= {"a_mAP", "a_mAP_per_class", "a_mAP_visible", "a_mAP_unshown", "seeds", "seed_mean"}
    # one seed: its model is the ensemble's only member, so the two score alike
    assert list(tight["seeds"]) == ["0"] and tight["seeds"]["0"]["a_mAP"] == pytest.approx(tight["a_mAP"], abs=1e-12)
    assert tight["seed_mean"]["a_mAP"] == tight["seeds"]["0"]["a_mAP"] and tight["seed_std"]["a_mAP"] == 0.0
    products = manifest(finished)
    step1, step2, step3 = (products[s]["key"] for s in ("pretrain_spatial", "pretrain_temporal", "finetune"))
    for path in ["results/report/ap_table.html", "results/report/pr_curves.png",
                 product_file(finished, "postprocess/ensemble", "ensemble/test.zip").replace("predictions", "submissions"),
                 product_file(finished, "postprocess/seed", "seed0/test.zip").replace("predictions", "submissions"),
                 product_file(finished, "pretrain_spatial", "seed0.pt"), product_file(finished, "pretrain_temporal", "seed0.pt"),
                 "logs/demo_data.log", f"logs/finetune/{step3}/seed0.log", f"benchmarks/pca/{products['pca']['key']}.tsv"]:
        assert (finished / path).is_file(), path
    # the chain: step 2 starts from step 1's product, step 3 from step 2's, inference runs step 3's
    assert products["pretrain_temporal"]["inputs"]["init"] == step1 and products["finetune"]["inputs"]["init"] == step2
    assert products["predict"]["inputs"]["checkpoint"] == step3
    predictions = finished / product_file(finished, "postprocess/ensemble", "ensemble/test")
    assert list(predictions.glob("*/*/*/results_spotting.json"))


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
                                                                "view": 1, "manifest": 1, "all": 1}
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

    assert jobs_after_cutting("test") == {"evaluate": 4, "report": 1, "view": 1, "all": 1}  # same keys, manifest
    assert jobs_after_cutting("train") == {"finetune": 1, **AFTER_FINETUNE}
    assert planned_jobs(finished) == {}


@pytest.mark.slow
def test_seeds_run_every_step_unless_pretraining_is_shared(finished):
    per_seed = {"pretrain_spatial": 1, "pretrain_temporal": 1, "finetune": 1, "predict": 1, "ensemble": 1,
                "postprocess": 2, "evaluate": 4, "report": 1, "view": 1, "manifest": 1, "all": 1}  # seed 1's chain...
    assert jobs_with(finished, seeds=[0, 1]) == per_seed
    # Shared: no pretraining job; every seed's fine-tuning (seed 0's too) is a new product, whose key records
    # that it starts from seed 0's steps 1-2, and so is all that follows it.
    shared = {"finetune": 2, "predict": 2, "ensemble": 1, "postprocess": 3, "evaluate": 6, "report": 1, "view": 1,
              "manifest": 1, "all": 1}
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
    # the report's code is part of its key, which the manifest lists
    assert jobs_after(report, original[report] + "\nUNUSED = 1\n") == {"report": 1, "view": 1, "manifest": 1, "all": 1}
    # NMS code is also fine-tuning's (its validation spots events), so fine-tuning reruns with it.
    assert jobs_after(nms, original[nms] + "\nUNUSED = 1\n") == {"finetune": 1, **AFTER_FINETUNE, "manifest": 1}


@pytest.mark.slow
def test_training_with_several_gpus_runs_through_torchrun(finished):
    def command(gpus):
        out = snakemake(finished, "-n", "-p", "--forcerun", "finetune", "--set-resources",
                        f"finetune:gpu={gpus}", "--", product_file(finished, "finetune", "seed0.pt")).stdout
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


TRAINING = {"extract", "pca", "pretrain_spatial", "pretrain_temporal", "finetune"}


@pytest.mark.slow
def test_table8_runs_only_inference_and_postprocessing(finished):
    # hard_2_5 shares the default's inference; the two others share one inference (3 s ignored)
    assert planned_jobs(finished, "results/tables/table8.csv") == {
        "predict": 1, "ensemble": 1, "postprocess": 6, "evaluate": 12, "report": 3, "view": 3, "manifest": 3,
        "table": 1}


@pytest.mark.slow
def test_table5_reuses_the_data_and_step_1(finished):
    jobs = planned_jobs(finished, "results/tables/table5.csv")
    assert not {"extract", "pca", "pretrain_spatial"} & set(jobs)  # step 1 of the default is step 1 only's too
    assert jobs["finetune"] == 3 and jobs["pretrain_temporal"] == 1  # scratch, step 1 only, step 2 only


@pytest.mark.slow
def test_a_built_table_leaves_the_default_untouched_and_reads_its_metrics_files(finished):
    default_metrics = (finished / "results" / "metrics.json").read_bytes()
    snakemake(finished, "--cores", "2", "results/tables/table8.csv")
    assert planned_jobs(finished) == {}
    assert (finished / "results" / "metrics.json").read_bytes() == default_metrics
    assert planned_jobs(finished, "results/tables/table8.csv") == {}
    with open(finished / "results" / "tables" / "table8.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["label"] for r in rows] == [r["label"] for r in TINY["tables"]["table8"]["rows"]]
    for row, spec in zip(rows, TINY["tables"]["table8"]["rows"]):
        assert row["source"] == f"results/experiments/{spec['experiment']}/metrics.json"
        tight = json.loads((finished / row["source"]).read_text())["test"]["tight"]
        assert float(row["paper"]) == spec["paper"]
        assert float(row["ours_mean"]) == pytest.approx(100 * tight["seed_mean"]["a_mAP"], abs=1e-9)
        assert float(row["ours_std"]) == pytest.approx(100 * tight["seed_std"]["a_mAP"], abs=1e-9)
        assert row["seeds"] == "0"
        assert float(row["ours_seeds"]) == pytest.approx(100 * tight["seeds"]["0"]["a_mAP"], abs=1e-9)
        if spec.get("ensemble"):
            assert float(row["ours_ensemble"]) == pytest.approx(100 * tight["a_mAP"], abs=1e-9)
        else:
            assert row["ours_ensemble"] == ""
        # the experiment's metrics are its own keyed evaluation's, as its manifest says
        evaluated = manifest(finished, f"results/experiments/{spec['experiment']}")["evaluate/seed"]["folder"]
        seed_file = json.loads((finished / evaluated / "seed0" / "test_tight.json").read_text())
        assert seed_file["a_mAP"] == tight["seeds"]["0"]["a_mAP"]
    markdown = (finished / "results" / "tables" / "table8.md").read_text()
    assert markdown.startswith("## table8\n\nNMS\n") and len(markdown.strip().splitlines()) == 6 + 3  # heading, caption, header, rule, rows
    # hard_2_5 differs from the default in NMS only: the very same inference, other spots
    default, hard = manifest(finished), manifest(finished, "results/experiments/hard_2_5")
    assert default["ensemble"]["key"] == hard["ensemble"]["key"]
    assert default["postprocess/ensemble"]["key"] != hard["postprocess/ensemble"]["key"]


@pytest.mark.slow
def test_html_report_has_captions_the_run_page_and_a_built_table(finished):
    """`snakemake --report` of the default target and a built table: each item with its caption, the front
    page, the run page (commit, config) and the table's page."""
    snakemake(finished, "--cores", "2", "results/tables/table8.csv")  # built already by the test above
    snakemake(finished, "--report", "report.html", "all", "results/tables/table8.csv")
    page = (finished / "report.html").read_text()
    for text in ("interpolated precision of the scorer", "Per-class average-mAP (%) of the ensemble",
                 "One half per figure", "What produced the numbers", "Per row: the paper", "The config declares the tables"):
        assert text in page, text
    run = (finished / "results" / "report" / "run.html").read_text()
    metrics = json.loads((finished / "results" / "metrics.json").read_text())
    assert f"<td>{metrics['provenance']['config_sha256']}</td>" in run and "<td>commit</td><td>unknown</td>" in run
    shown = yaml.safe_load(html.unescape(run.split("<pre>")[1].split("</pre>")[0]))
    assert shown["model"] == {**TINY["model"], **{k: v for k, v in shown["model"].items() if k not in TINY["model"]}}
    assert "experiments" not in shown and "tracking" not in shown and shown["postprocess"]["nms"] == "soft"
    assert (finished / "results" / "tables" / "table8.html").is_file()


@pytest.mark.slow
def test_switching_a_setting_back_reruns_no_stage(finished):
    """The default set to an experiment's NMS: its products exist already, only its report (which names
    the experiment `default`) is new, and its view is rewritten; set back: the view is rewritten (a copy
    of the report and the manifest), every product is still there, the report too, keyed like them."""
    snakemake(finished, "--cores", "2", "results/experiments/hard_2_5/metrics.json")
    hard = {"nms": "hard", "window_s": 5}
    assert jobs_with(finished, postprocess=hard) == {"report": 1, "view": 1, "manifest": 1, "all": 1}
    write_config(finished, dict(TINY, postprocess=hard))
    try:
        snakemake(finished, "--cores", "2")
    finally:
        write_config(finished, TINY)
    assert planned_jobs(finished) == {"view": 1, "manifest": 1, "all": 1}  # back: nothing but the view
    snakemake(finished, "--cores", "2")
    assert planned_jobs(finished) == {}


@pytest.mark.slow
def test_experiments_listing_and_unused_products(finished):
    def experiments(*args):
        proc = subprocess.run([sys.executable, "-m", "comedian", "experiments", *args], cwd=finished,
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(finished / "checkout")))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    listing = experiments("config/config.yaml")
    assert "hard_2_5  (view: results/experiments/hard_2_5/" in listing
    ensemble = manifest(finished)["ensemble"]["key"]
    assert re.search(rf"ensemble +{ensemble}  exists .*shared with hard_2_5", listing)
    # left over at most: the default's report with hard_2_5's NMS (test_switching_a_setting_back_reruns_no_stage)
    leftover = experiments("config/config.yaml", "--unused").split()
    assert len({Path(p).name for p in leftover}) <= 1
    assert all(p.startswith(("results/reports/", "logs/report/", "benchmarks/report/")) for p in leftover)
    # without its NMS experiments, their post-processing and scores are left over (listed, not removed)
    lean = dict(TINY, experiments={k: v for k, v in TINY["experiments"].items() if not k.startswith(("hard", "soft"))},
                tables={"table5": TINY["tables"]["table5"]})
    (finished / "lean.yaml").write_text(yaml.safe_dump(lean))
    unused = experiments("lean.yaml", "--unused").split()
    hard = manifest(finished, "results/experiments/hard_2_5")
    assert hard["postprocess/seed"]["folder"] in unused and hard["evaluate/ensemble"]["folder"] in unused
    assert not any(p["folder"] in unused for p in manifest(finished).values())
    assert all((finished / folder).exists() for folder in unused if folder.startswith("results/"))
