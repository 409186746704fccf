"""Named experiments (overlays of the base config), the keys of their products, the tables, and the
paper's tables declared in config/paper/: no Snakemake run here (tests/test_workflow.py runs the DAG)."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from comedian import config as comedian_config
from comedian import experiments, tables
from comedian.errors import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def plan_of(base, **overlays):
    config = copy.deepcopy(base)
    config["experiments"] = overlays
    config["tables"] = {}
    return experiments.plan(comedian_config.validate(config))


def keys(experiment):
    return {role: p.key for role, p in experiment.products.items()}


def shared_roles(a, b):
    return {role for role in keys(a) if keys(b).get(role) == keys(a)[role]}


UPSTREAM = ["extract", "pretrain_spatial", "pca", "pretrain_temporal", "finetune", "predict", "ensemble"]


def test_experiments_share_exactly_the_products_whose_settings_agree(demo):
    p = plan_of(demo, nms={"postprocess": {"nms": "hard"}}, alpha2={"finetune": {"mask_ratio": 0.5}},
                alpha1={"pretrain_temporal": {"mask_ratio": 0.5}}, seeds={"seeds": [0, 1]},
                fps={"extract": {"quality": 4}})
    base = p["default"]
    assert shared_roles(base, p["nms"]) == set(UPSTREAM)  # NMS: everything up to inference
    assert shared_roles(base, p["alpha2"]) == {"extract", "pretrain_spatial", "pca", "pretrain_temporal"}
    assert shared_roles(base, p["alpha1"]) == {"extract", "pretrain_spatial", "pca"}
    # seeds multiply only what they reach: every per-seed product is the same, the ensemble is not
    assert shared_roles(base, p["seeds"]) == set(UPSTREAM) - {"ensemble"} | {"postprocess/seed", "evaluate/seed"}
    assert shared_roles(base, p["fps"]) == set()


def test_window_length_and_temporal_depth_share_step_1(demo):
    """Step 1 trains the spatial transformer alone (on 1-s sub-videos): Tables 2-3's depths and windows share it;
    its job gets the model section without those settings."""
    p = plan_of(demo, depth={"model": {"temporal_depth": 6}}, window={"model": {"frames": 32}},
                swin={"model": {"arch": "viswin_demo"}})
    base = p["default"]
    assert shared_roles(base, p["depth"]) == shared_roles(base, p["window"]) == {"extract", "pretrain_spatial", "pca"}
    assert "pretrain_spatial" not in shared_roles(base, p["swin"])
    step1 = base.products["pretrain_spatial"].settings["model"]
    assert "frames" not in step1 and "temporal_depth" not in step1 and step1["arch"] == demo["model"]["arch"]


def test_a_setting_switched_back_names_the_earlier_products(demo):
    first, other, back = (plan_of(demo, x={"postprocess": {"window_s": w}})["x"] for w in (10, 4, 10))
    assert keys(first) == keys(back) and keys(first) != keys(other)
    # the overlay equal to the base: the base's products, but for the report, which names its experiment
    base, named_x = keys(plan_of(demo)["default"]), keys(first)
    assert base.pop("report") != named_x.pop("report") and base == named_x
    # a report setting: a new report, nothing else
    timelines = keys(plan_of(demo, x={"postprocess": {"window_s": 10}, "report": {"timeline_games": 2}})["x"])
    assert {role for role in timelines if timelines[role] != keys(first)[role]} == {"report"}


def test_a_view_is_a_copy_of_its_keyed_report(tmp_path):
    report, view = tmp_path / "results/reports/0123456789", tmp_path / "results/experiments/x"
    for name in experiments.REPORT_FILES.values():
        if name.endswith("timelines"):
            (report / name).mkdir(parents=True)
            (report / name / "g_1.png").write_bytes(b"png")
        else:
            (report / name).parent.mkdir(parents=True, exist_ok=True)
            (report / name).write_text(name)
    (view / "report" / "timelines").mkdir(parents=True)
    (view / "report" / "timelines" / "old_1.png").write_bytes(b"old")
    assert experiments.main(["--view", str(view), "--report", str(report)]) == 0
    assert (view / "metrics.json").read_text() == "metrics.json"
    assert (view / "report" / "run.html").read_text() == "report/run.html"
    assert [p.name for p in (view / "report" / "timelines").iterdir()] == ["g_1.png"]  # the old folder replaced
    assert not list(view.rglob(".*partial"))
    (report / "report" / "seeds.csv").unlink()
    with pytest.raises(InputError, match=r"seeds\.csv: cannot read the report"):
        experiments.main(["--view", str(view), "--report", str(report)])


def test_only_the_steps_an_experiment_needs_are_planned(demo):
    p = plan_of(demo, scratch={"finetune": {"init": "scratch"}}, step1={"finetune": {"init": "pretrain_spatial"}},
                step2={"pretrain_temporal": {"init": "scratch"}}, bank={"pca": {"bank_file": "my_bank.h5"}})
    assert not {"pretrain_spatial", "pretrain_temporal", "pca"} & set(p["scratch"].products)
    assert "pretrain_temporal" not in p["step1"].products
    assert p["step1"].products["pretrain_spatial"].key == p["default"].products["pretrain_spatial"].key
    assert "pretrain_spatial" not in p["step2"].products and p["step2"].products["pretrain_temporal"].inputs["init"] is None
    assert "pca" not in p["bank"].products and p["bank"].products["pretrain_temporal"].inputs["bank"] == {"file": "my_bank.h5"}


def test_manifest_names_every_product_with_its_settings(demo):
    p = plan_of(demo, nms={"postprocess": {"nms": "hard"}})["nms"]
    document = p.manifest()
    assert document["view"] == "results/experiments/nms" and document["overlay"] == {"postprocess": {"nms": "hard"}}
    post = document["products"]["postprocess/ensemble"]
    assert post["settings"]["postprocess"]["nms"] == "hard" and post["inputs"] == {"scores": p.products["ensemble"].key}
    assert post["folder"] == f"results/predictions/{post['key']}"
    assert p.metric_files("ensemble") == [f"results/metrics/{p.products['evaluate/ensemble'].key}/ensemble/test_{m}.json"
                                          for m in ("tight", "loose")]


@pytest.mark.parametrize("overlay, message", [
    ({"pca": {"dims": 0}}, "experiments.bad.pca.dims: 0 is less than the minimum of 1"),
    ({"pca": {"whiten": True}}, "experiments.bad.pca: Additional properties are not allowed"),
    ({"finetune": {"train_splits": ["train", "test"]}}, "experiments.bad.finetune.train_splits: 'test' is also in"),
    ({"dataset": {"root": "elsewhere"}}, "experiments.bad.dataset: every experiment shares the base's dataset"),
    ({"demo": None}, "experiments.bad.demo: every experiment shares"),
])
def test_a_bad_overlay_is_named(demo, overlay, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        plan_of(demo, bad=overlay)


def test_the_base_is_the_experiment_default(demo):
    with pytest.raises(InputError, match="experiments.default: the base config is the experiment 'default'"):
        plan_of(demo, default={"seeds": [1]})


@pytest.mark.parametrize("row, message", [
    ({"label": "x", "experiment": "nope", "split": "test", "paper": 1.0}, r"tables\.t\.rows\.0\.experiment: no experiment 'nope'"),
    ({"label": "x", "split": "valid", "paper": 1.0}, r"tables\.t\.rows\.0\.split: experiment 'default' does not score 'valid'"),
    ({"label": "x", "split": "test", "metric": "at1", "paper": 1.0}, r"tables\.t\.rows\.0\.metric: .* does not compute 'at1'"),
    ({"label": "x", "split": "challenge", "paper": 1.0}, r"tables\.t\.rows\.0\.split: 'challenge' needs dataset\.splits\.challenge"),
])
def test_a_bad_table_row_is_named(demo, row, message):
    config = copy.deepcopy(demo)
    config["tables"] = {"t": {"caption": "c", "rows": [row]}}
    with pytest.raises(InputError, match=message):
        comedian_config.validate(config)


def test_unused_folders_are_the_keyed_ones_no_experiment_uses(demo, tmp_path):
    p = plan_of(demo)
    used = p["default"].products["finetune"]
    (tmp_path / used.folder()).mkdir(parents=True)
    stale = tmp_path / "results" / "checkpoints" / "finetune" / "0123456789"
    stale.mkdir()
    (tmp_path / "results" / "checkpoints" / "finetune" / "notakey").mkdir()
    (tmp_path / "logs" / "finetune" / "0123456789").mkdir(parents=True)
    assert experiments.unused_folders(p, tmp_path) == [stale, tmp_path / "logs" / "finetune" / "0123456789"]


def metrics_document(tmp_path, seeds, ensemble):
    doc = {"test": {"tight": {"a_mAP": ensemble, "seeds": {str(s): {"a_mAP": v} for s, v in seeds.items()},
                              "seed_mean": {"a_mAP": sum(seeds.values()) / len(seeds)}, "seed_std": {"a_mAP": 0.01}}}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(doc))
    return path


def test_table_rows_are_the_metrics_files_in_percent(tmp_path):
    path = metrics_document(tmp_path, {0: 0.5, 2: 0.7, 1: 0.6}, 0.75)
    spec = {"caption": "c", "decimals": 1, "rows": [
        {"label": "mean", "experiment": "a", "split": "test", "metric": "tight", "paper": 60.0, "ensemble": False},
        {"label": "ens.", "experiment": "a", "split": "test", "metric": "tight", "paper": 61.0, "ensemble": True},
        {"label": "zip", "experiment": "c", "split": "challenge", "metric": "tight", "paper": 68.38, "ensemble": True}]}
    rows = tables.table_rows(spec, {"a": path}, {"c": [Path("c.zip")]})
    assert rows[0]["ours_mean"] == pytest.approx(60.0) and rows[0]["ours_std"] == pytest.approx(1.0)
    assert rows[0]["seeds"] == ["0", "1", "2"] and rows[0]["ours_seeds"] == pytest.approx([50.0, 60.0, 70.0])
    assert rows[0]["ours_ensemble"] is None and rows[1]["ours_ensemble"] == pytest.approx(75.0)
    assert rows[2]["source"] == "c.zip" and rows[2]["ours_mean"] is None and rows[2]["paper"] == 68.38
    text = tables.csv_text(rows).splitlines()
    assert text[0] == ",".join(tables.COLUMNS)
    assert text[1].startswith("mean,a,test,tight,60.0,60.0,1.0,0 1 2,50.0 60.0 70.0,,")
    markdown = tables.markdown_text("t", spec, rows).splitlines()
    assert markdown[:3] == ["## t", "", "c"] and "| ens. | a | test | tight | 61.0 | 60.0 | 1.0 | 0 1 2 | 50.0 60.0 70.0 | 75.0 |" in markdown[7]


def test_table_names_a_missing_source(tmp_path):
    spec = {"caption": "c", "decimals": 1, "rows": [
        {"label": "x", "experiment": "a", "split": "valid", "metric": "tight", "paper": 1.0, "ensemble": False}]}
    with pytest.raises(InputError, match=r"metrics\.json: no valid\.tight a_mAP"):
        tables.table_rows(spec, {"a": metrics_document(tmp_path, {0: 0.5}, 0.5)}, {})
    with pytest.raises(InputError, match="no --metrics given for experiment 'a'"):
        tables.table_rows(spec, {}, {})


# The paper's printed figures (t-AmAP %), row by row, as the paper's Tables 1-10 print them (Table 5
# without its ImageNet rows, Tables 9-10 COMEDIAN's rows only).
PAPER = {
    "ablation": {"table1": [64.7, 65.9, 66.1], "table2": [64.7, 65.4, 65.3], "table3": [64.7, 66.0, 65.5],
                 "table4": [64.7, 55.5, 64.9, 65.1, 64.8, 65.2, 65.0, 63.5],
                 "table5": [48.1, 54.7, 62.2, 60.0, 64.7],
                 "table6": [64.7, 65.4, 66.0, 65.2, 66.1, 66.2, 66.6], "table7": [63.6, 65.7, 66.6],
                 "table8": [66.6, 67.1, 68.0]},
    "vivit_tiny": {"table9": [70.7, 71.6, 72.0, 73.1]},
    "challenge": {"table10": [68.38]},
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_tables_print_the_papers_figures(name):
    loaded = comedian_config.load(REPO / "config" / "paper" / f"{name}.yaml")
    assert {t: [r["paper"] for r in spec["rows"]] for t, spec in loaded["tables"].items()} == PAPER[name]
    p = experiments.plan(loaded)
    for table, spec in loaded["tables"].items():
        for row in spec["rows"]:
            assert row["split"] == {"ablation": "valid", "vivit_tiny": "test", "challenge": "challenge"}[name], table
            assert row["ensemble"] == ("ens." in row["label"]), (table, row["label"])
            assert row["experiment"] in p


def test_paper_ablations_differ_from_the_baseline_where_their_rows_say():
    p = experiments.plan(comedian_config.load(REPO / "config" / "paper" / "ablation.yaml"))
    config = {name: e.config for name, e in p.items()}
    assert config["vivit_small"]["model"]["arch"] == "vivit_small" and config["depth_8"]["model"]["temporal_depth"] == 8
    assert [config[n]["model"]["frames"] for n in ("default", "window_64s", "window_128s")] == [64, 128, 256]
    assert (config["mask_0_50"]["pretrain_temporal"]["mask_ratio"], config["mask_0_50"]["finetune"]["mask_ratio"]) == (0, 0.5)
    assert (config["scratch_100f"]["finetune"]["head_epochs"], config["scratch_100f"]["finetune"]["epochs"]) == (0, 100)
    # Table 8's rows share Table 6's best up to fine-tuning; ignoring 12 s is a new inference
    best, hard, soft = p["best"], p["best_hard_12_3"], p["best_soft_12_10"]
    assert shared_roles(best, hard) == {"extract", "pretrain_spatial", "pca", "pretrain_temporal", "finetune"}
    assert shared_roles(hard, soft) == set(UPSTREAM)
    # Table 7: the SCE banks replace the PCA; steps 1 share the baseline's
    assert "pca" not in p["sce_k400"].products
    assert p["sce_k400"].products["pretrain_spatial"].key == p["best"].products["pretrain_spatial"].key
    # Table 6's combinations are made of the single changes
    assert config["best"]["model"] == {**config["default"]["model"], "temporal_depth": 6, "frames": 128}
