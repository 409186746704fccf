"""Every config the project ships runs end to end. The demo (``config/config.yaml``) runs uncut, as the README
runs it (once per session, shared with the spot test: ``conftest.py::demo_run``). Each paper config runs its
real model, frame count and image size on a small tree in the SoccerNet layout made by the demo generator
(halves as long as the longest window, 64 s), with one small overlay that cuts only epochs, windows per game
(sub-videos per half in step 1), batch sizes, game counts and seeds, and the PCA width (a 1-game train split
has 128 s of features, fewer than their 512 dims).

So a config that cannot run (shapes at 128 frames, ViSwin at 224 px, memory, windows longer than a half)
fails here, not on a cluster. Seeds are cut to one: every seed runs the same jobs (the dry-run test of
test_paper_configs.py checks that each seed gets its own). Costs some minutes per config on 2 cores.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from comedian.models.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["config.yaml", "paper/ablation.yaml", "paper/vivit_tiny.yaml", "paper/viswin_tiny.yaml",
           "paper/challenge.yaml"]
HALF_S = 64  # the paper's longest window (128 frames at 2 fps)

#: The one overlay: epochs, windows per game, batch sizes and seeds; nothing that shapes the model or the data.
SMOKE = {
    "pretrain_spatial": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16, "subvideos_per_half": 8},
    "pretrain_temporal": {"epochs": 1, "warmup_epochs": 0, "batch_size": 1, "windows_per_game": 1},
    "finetune": {"head_epochs": 1, "epochs": 1, "batch_size": 1, "windows_per_game": 1, "valid_batch_size": 1},
    "predict": {"batch_size": 1},
    "seeds": [0],
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """1 train, 1 valid, 1 test and 1 challenge game of 2 x 64 s, with split lists."""
    data = tmp_path_factory.mktemp("smoke-data")
    subprocess.run([sys.executable, "-m", "comedian", "demo-data", "--root", str(data / "SoccerNet"),
                    "--splits-dir", str(data / "splits"), "--seed", "5", "--train-games", "1", "--valid-games", "1",
                    "--test-games", "2", "--half-duration", str(HALF_S)], check=True, capture_output=True)
    lines = (data / "splits" / "test.txt").read_text().splitlines()
    (data / "splits" / "test.txt").write_text(lines[0] + "\n")
    (data / "splits" / "challenge.txt").write_text(lines[1] + "\n")
    return data


def overlay(name: str, tree: Path) -> dict:
    """The cut for a paper config: :data:`SMOKE`, the small tree, a PCA width that 128 s of features fit."""
    cut = json.loads(json.dumps(SMOKE))
    shipped = yaml.safe_load((REPO / "config" / name).read_text())
    cut["pca"] = {**shipped.get("pca", {}), "dims": 64}
    cut["dataset"] = {"root": str(tree / "SoccerNet"),
                      "splits": {s: str(tree / "splits" / f"{s}.txt") for s in shipped["dataset"]["splits"]}}
    return cut


@pytest.mark.slow
@pytest.mark.smoke
@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_runs_end_to_end(tree, tmp_path, name, request):
    shipped = yaml.safe_load((REPO / "config" / name).read_text())
    if name == "config.yaml":  # the demo as the README runs it, uncut (shared with the spot test: conftest.py)
        tmp_path = request.getfixturevalue("demo_run")
    else:
        (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(overlay(name, tree)))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory",
               str(tmp_path), "--cores", "2", "--configfile", str(REPO / "config" / name), "smoke.yaml"]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env)
        logs = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in sorted((tmp_path / "logs").rglob("*.log"))
                         if "rror" in p.read_text()) if (tmp_path / "logs").exists() else ""
        assert proc.returncode == 0, proc.stderr[-3000:] + logs

    model = shipped["model"]
    products = json.loads((tmp_path / "results" / "manifest.json").read_text())["products"]
    checkpoint = read_checkpoint(tmp_path / products["finetune"]["folder"] / "seed0.pt")
    arch = checkpoint["arch"]
    assert arch["name"] == model["arch"] and arch["config"]["frames"] == model["frames"]
    assert arch["config"]["size"] == model.get("size", arch["config"]["size"])
    assert arch["config"]["temporal_depth"] == model["temporal_depth"]
    evaluated = shipped.get("evaluate", {}).get("splits", ["test"])
    if evaluated:
        metrics = json.loads((tmp_path / "results" / "metrics.json").read_text())
        assert set(metrics) - {"provenance"} == set(evaluated)
        for split in evaluated:
            by_metric = metrics[split]
            for values in by_metric.values():
                assert 0.0 <= values["a_mAP"] <= 1.0 and math.isfinite(values["seed_mean"]["a_mAP"])
    if "challenge" in shipped["dataset"]["splits"]:
        zips = tmp_path / "results" / "submissions" / products["postprocess/ensemble"]["key"]
        assert (zips / "ensemble" / "challenge.zip").stat().st_size > 0
