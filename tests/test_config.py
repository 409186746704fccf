"""The config schema and `comedian validate-config`; `comedian <stage> --help` for every stage."""

import re
from pathlib import Path

import pytest
import yaml

from comedian import config
from comedian.cli import STAGES, main
from comedian.errors import InputError

REPO = Path(__file__).resolve().parents[1]


SHIPPED = ["config.yaml", "paper/ablation.yaml", "paper/vivit_tiny.yaml", "paper/viswin_tiny.yaml",
           "paper/challenge.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_valid(name):
    loaded = config.load(REPO / "config" / name)
    assert loaded["dataset"]["classes"][0] == "Penalty" and len(loaded["dataset"]["classes"]) == 17


def test_every_shipped_config_is_listed():
    assert sorted(str(p.relative_to(REPO / "config")) for p in (REPO / "config").rglob("*.yaml")) == sorted(SHIPPED)


def test_paper_configs_hold_the_papers_settings():
    ablation, vivit, viswin, challenge = (config.load(REPO / "config" / "paper" / f"{n}.yaml")
                                          for n in ("ablation", "vivit_tiny", "viswin_tiny", "challenge"))
    assert ablation["model"]["frames"] == 64 and ablation["model"]["temporal_depth"] == 4
    assert ablation["pretrain_temporal"]["mask_ratio"] == ablation["finetune"]["mask_ratio"] == 0.0
    assert (ablation["postprocess"]["nms"], ablation["postprocess"]["window_s"], ablation["predict"]["ignore_s"]) == (
        "hard", 5, 6)
    assert ablation["evaluate"]["splits"] == ["valid"] and ablation["finetune"]["train_splits"] == ["train"]
    for best in (vivit, viswin, challenge):
        assert best["model"]["frames"] == 128 and best["model"]["temporal_depth"] == 6
        assert best["pretrain_temporal"]["mask_ratio"] == best["finetune"]["mask_ratio"] == 0.25
        assert best["pretrain_temporal"]["mask_tube_frames"] == best["finetune"]["mask_tube_frames"] == 2
        assert (best["postprocess"]["nms"], best["postprocess"]["window_s"], best["predict"]["ignore_s"]) == (
            "soft", 10, 12)
        assert best["pretrain_temporal"]["windows_per_game"] == 76 and best["finetune"]["windows_per_game"] == 50
        assert best["pretrain_temporal"]["batch_size"] == 32 and best["finetune"]["batch_size"] == 64
    assert vivit["finetune"]["train_splits"] == viswin["finetune"]["train_splits"] == ["train", "valid"]
    assert vivit["evaluate"]["splits"] == ["test"] and viswin["model"]["arch"] == "viswin_tiny"
    assert challenge["finetune"]["train_splits"] == ["train", "valid", "test"] and challenge["evaluate"]["splits"] == []
    for paper in (ablation, vivit, viswin, challenge):
        assert paper["seeds"] == [0, 1, 2] and paper["share_pretraining"] is False
        assert paper["finetune"]["head_prior"] is False and paper["finetune"]["select"] == "last"
        assert paper["pretrain_temporal"]["sampling"] == "segments" and paper["demo"] is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["finetune"].update(train_splits=["train", "valid"]) or c["evaluate"].update(splits=["valid"]),
         "finetune.train_splits: 'valid' is also in evaluate.splits"),
        (lambda c: c["pretrain_temporal"].update(train_splits=["train", "test"]),
         "pretrain_temporal.train_splits: 'test' is also in evaluate.splits"),
        (lambda c: c["finetune"].update(select="best_valid") or c["evaluate"].update(splits=["valid"]),
         "finetune.select: 'best_valid' picks the checkpoint on valid, which evaluate.splits scores"),
        (lambda c: c["finetune"].update(select="best_valid", train_splits=["train", "valid"]),
         "finetune.select: 'best_valid' picks the checkpoint on valid, which finetune.train_splits trains on"),
        (lambda c: c["finetune"].update(train_splits=["train", "challenge"]), "finetune.train_splits.1: 'challenge'"),
        (lambda c: c["report"].update(split="valid"), "report.split: 'valid' must be one of evaluate.splits"),
        (lambda c: c.update(demo={"seed": 0, "games": {"train": 1, "valid": 1, "test": 1}, "half_duration_s": 30})
         or c["model"].update(frames=64), "model.frames: windows of 32 s are longer than a half"),
    ],
)
def test_inconsistent_configs_fail_naming_the_keys(edit, message):
    bad = config.validate(minimal())
    edit(bad)
    with pytest.raises(InputError, match=re.escape(message)):
        config.validate(bad, "my.yaml")


def minimal():
    return {"dataset": {"root": "x", "splits": {"train": "a", "valid": "b", "test": "c"}},
            "extract": {}, "pca": {}, "tracking": {}}


def test_defaults_are_filled():
    filled = config.validate(minimal())
    assert filled["pca"]["dims"] == 512 and filled["extract"]["fps"] == 2.0 and filled["demo"] is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["pca"].update(dims="many"), "pca.dims: 'many' is not of type 'integer'"),
        (lambda c: c["pca"].update(dims=0), "pca.dims: 0 is less than the minimum of 1"),
        (lambda c: c["extract"].update(speed=2), "extract: Additional properties are not allowed ('speed'"),
        (lambda c: c.update(extra={}), "<top level>: Additional properties are not allowed ('extra'"),
        (lambda c: c["dataset"].pop("root"), "dataset: 'root' is a required property"),
    ],
)
def test_bad_configs_name_the_field(edit, message):
    bad = minimal()
    edit(bad)
    with pytest.raises(InputError) as err:
        config.validate(bad, "my.yaml")
    assert str(err.value).startswith(f"my.yaml: {message}")


def test_validate_config_cli(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    assert main(["validate-config", str(path)]) == 0
    path.write_text("pca: [unclosed")
    assert main(["validate-config", str(path)]) == 1
    assert "not valid YAML" in capsys.readouterr().err


def test_every_stage_has_help(capsys):
    """In this process (a fresh interpreter per stage cost ~25 s); the workflow tests run `python -m comedian`."""
    for stage in STAGES:
        with pytest.raises(SystemExit) as done:
            main([stage, "--help"])
        assert done.value.code == 0, stage
        assert f"comedian {stage}" in capsys.readouterr().out, stage


def test_unknown_stage(capsys):
    assert main(["nope"]) == 2
    assert "unknown stage 'nope'" in capsys.readouterr().err
