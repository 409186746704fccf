"""Every shipped real-data config runs exactly what it says: a dry run on a fake tree of its split lists
hands every job the values of `comedian validate-config FILE --print` (its own values plus the schema's
defaults, never the demo's), with every seed and the training splits it names.
"""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from comedian.data import soccernet
from comedian.experiments import TEMPORAL_ONLY_MODEL_SETTINGS

REPO = Path(__file__).resolve().parents[1]
PAPER = ["ablation", "vivit_tiny", "viswin_tiny", "challenge"]
TRAINING = {"pretrain-spatial": "pretrain_spatial", "pretrain-temporal": "pretrain_temporal", "finetune": "finetune"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory with the checkout's config/ and an empty file for every video, features file and
    labels file of the official split lists (a dry run reads none of them)."""
    work = tmp_path_factory.mktemp("paper")
    (work / "config").symlink_to(REPO / "config")
    root = work / "SoccerNet"
    for split in ("train", "valid", "test", "challenge"):
        for game in soccernet.read_game_list(REPO / "config" / "splits" / f"{split}.txt"):
            (root / game).mkdir(parents=True)
            for half in soccernet.HALVES:
                soccernet.video_path(root, game, half).touch()
                soccernet.baidu_path(root, game, half).touch()
            soccernet.labels_path(root, game).touch()
    (work / "root.yaml").write_text(yaml.safe_dump({"dataset": {"root": str(root)}}))
    return work


def printed(name: str) -> dict:
    """`comedian validate-config config/paper/NAME.yaml --print`, parsed."""
    out = subprocess.run([sys.executable, "-m", "comedian", "validate-config", f"config/paper/{name}.yaml", "--print"],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    return yaml.safe_load(out)


def dry_run_commands(workdir: Path, name: str) -> list[list[str]]:
    """The shell commands of a dry run of a paper config (+ the fake tree's root), each split into words."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir),
           "-n", "-p", "--workflow-profile", "none", "--configfile", f"config/paper/{name}.yaml", "root.yaml"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    prefix = "Shell command: "
    lines = [line.strip()[len(prefix):] for line in proc.stdout.splitlines() if line.strip().startswith(prefix)]
    return [shlex.split(line.rsplit(" > ", 1)[0]) for line in lines if "comedian" in line.split()[:4]]


def flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def flags(words: list[str], name: str) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words) if w == name]


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_dry_run_hands_every_job_exactly_the_configs_values(workdir, name):
    want = printed(name)
    commands = dry_run_commands(workdir, name)
    stages = {}
    for words in commands:
        stages.setdefault(words[words.index("comedian") + 1], []).append(words)
    for stage, section in TRAINING.items():
        jobs = stages[stage]
        for words in jobs:
            model = {k: v for k, v in want["model"].items()  # step 1 trains only the spatial transformer
                     if stage != "pretrain-spatial" or k not in TEMPORAL_ONLY_MODEL_SETTINGS}
            assert json.loads(flag(words, "--model")) == model, stage
            assert json.loads(flag(words, "--step")) == want[section], stage
        seeds = sorted(int(flag(words, "--seed")) for words in jobs)
        assert seeds == sorted(want["seeds"]), stage  # every step once per seed
    for words in stages["finetune"]:
        assert flags(words, "--train-list") == [want["dataset"]["splits"][s] for s in want["finetune"]["train_splits"]]
        assert json.loads(flag(words, "--classes")) == want["dataset"]["classes"]
    for words in stages["pretrain-temporal"]:
        assert flags(words, "--train-list") == [want["dataset"]["splits"][s]
                                                for s in want["pretrain_temporal"]["train_splits"]]
    for words in stages["extract"]:
        assert float(flag(words, "--fps")) == want["extract"]["fps"]
        assert int(flag(words, "--quality")) == want["extract"]["quality"]
    (pca,) = stages["pca"]
    assert int(flag(pca, "--dims")) == want["pca"]["dims"]
    assert float(flag(pca, "--length-tolerance-s")) == want["pca"]["length_tolerance_s"]
    for words in stages["predict"]:
        assert float(flag(words, "--ignore-s")) == want["predict"]["ignore_s"]
        assert flag(words, "--merge") == want["predict"]["merge"]
        assert int(flag(words, "--batch-size")) == want["predict"]["batch_size"]
    post = want["postprocess"]
    for words in stages["postprocess"]:
        assert (flag(words, "--nms"), float(flag(words, "--window-s")), float(flag(words, "--threshold"))) == (
            post["nms"], post["window_s"], post["threshold"])
    # what is scored: each seed's model and the ensemble, on the evaluated splits only
    evaluated = {(Path(flag(w, "--predictions")).parent.name, Path(flag(w, "--predictions")).name, flag(w, "--metric"))
                 for w in stages.get("evaluate", [])}
    models = [f"seed{s}" for s in want["seeds"]] + ["ensemble"]
    assert evaluated == {(m, s, k) for m in models for s in want["evaluate"]["splits"] for k in want["evaluate"]["metrics"]}
    if "challenge" in want["dataset"]["splits"]:
        assert any(flag(w, "--zip").endswith("ensemble/challenge.zip") for w in stages["postprocess"])


@pytest.mark.slow
def test_paper_table8_shares_everything_up_to_inference(workdir):
    """Table 8's three rows on the full split lists: one chain of steps 1-3 per seed (Table 6's best), two
    inferences per seed (6 s and 12 s ignored) and three post-processings per model."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir),
           "-n", "--workflow-profile", "none", "--configfile", "config/paper/ablation.yaml", "root.yaml", "--",
           "results/tables/table8.csv"]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = proc.stdout.split("Job stats:")[1].split("\n\n")[0]
    jobs = {words[0]: int(words[1]) for words in map(str.split, stats.splitlines())
            if len(words) == 2 and words[1].isdigit()}
    assert {k: jobs[k] for k in ("pretrain_spatial", "pretrain_temporal", "finetune", "predict")} == {
        "pretrain_spatial": 3, "pretrain_temporal": 3, "finetune": 3, "predict": 6}
    assert jobs["ensemble"] == 2 and jobs["postprocess"] == 3 * (3 + 1) and jobs["table"] == 1
