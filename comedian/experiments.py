"""Named experiments that share every common product: the plan of products, the manifest of each
experiment, `comedian experiments` (what each experiment shares, what exists, what is left over).

Every product of the pipeline lives under a directory named by its **key**, a short digest of the
effective settings that made it: the config section(s) its stage reads, the keys of its inputs and the
hash of its stage's code (:mod:`comedian.codehash`). Two experiments whose settings agree up to a stage
therefore ask for the very same files, and Snakemake runs each job once:

    results/frames/<key>/<game slug>/<half>.h5                 extract
    results/features/<key>/baidu_pca.h5                         pca (absent with pca.bank_file)
    results/checkpoints/<step>/<key>/seed<N>.pt                 pretrain_spatial, pretrain_temporal, finetune
    results/scores/<key>/seed<N>/<split>.h5                     predict
    results/scores/<key>/ensemble/<split>.h5                    ensemble
    results/predictions/<key>/<model>/<split>/...               postprocess (and results/submissions/<key>/)
    results/metrics/<key>/<model>/<split>_<metric>.json         evaluate
    results/reports/<key>/metrics.json, report/...              report (one per experiment and its settings)

A setting switched back to an earlier value names the earlier key, whose files are still there: no
product is made again. Each experiment's readable view is its folder, ``results/`` for the base (the
experiment ``default``) and ``results/experiments/<name>/`` for the others: a copy of its report
(``metrics.json``, ``report/``) and ``manifest.json``, which names every product the experiment uses with
its key and settings. The view's two jobs (the ``view`` rule copies the report, ``manifest`` writes the
manifest) rerun whenever the products they show change, switching back included: a file such as
results/metrics.json shows one setting at a time, and Snakemake reruns the job of an output whose inputs
changed. They make nothing; they copy or write a few small files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from comedian import config as comedian_config
from comedian.cli import STAGES
from comedian.codehash import stage_code_hash
from comedian.errors import InputError

DEFAULT = comedian_config.DEFAULT
KEY = r"[0-9a-f]{10}"

#: rule -> where its products live (Snakemake wildcards in braces; {key} is the product's key).
TEMPLATES = {
    "extract": "results/frames/{key}/{game}/{half}.h5",
    "pca": "results/features/{key}/baidu_pca.h5",
    "pretrain_spatial": "results/checkpoints/pretrain_spatial/{key}/seed{seed}.pt",
    "pretrain_temporal": "results/checkpoints/pretrain_temporal/{key}/seed{seed}.pt",
    "finetune": "results/checkpoints/finetune/{key}/seed{seed}.pt",
    "predict": "results/scores/{key}/seed{seed}/{split}.h5",
    "ensemble": "results/scores/{key}/ensemble/{split}.h5",
    "postprocess": "results/predictions/{key}/{model}/{split}",
    "submission": "results/submissions/{key}/{model}/{split}.zip",
    "evaluate": "results/metrics/{key}/{model}/{split}_{metric}.json",
    "report": "results/reports/{key}",
}
#: An experiment's report, in its keyed folder and (copied) in its view; the rest is under report/.
REPORT_FILES = {"metrics": "metrics.json", "ap_table": "report/ap_table.html", "ap_csv": "report/ap_table.csv",
                "seeds": "report/seeds.html", "seeds_csv": "report/seeds.csv", "pr_curves": "report/pr_curves.png",
                "timelines": "report/timelines", "run": "report/run.html"}
#: The folders keyed products live in (what `comedian experiments --unused` looks through).
KEYED_DIRS = ["results/frames", "results/features", "results/checkpoints/pretrain_spatial",
              "results/checkpoints/pretrain_temporal", "results/checkpoints/finetune", "results/scores",
              "results/predictions", "results/submissions", "results/metrics", "results/train/pretrain_spatial",
              "results/train/pretrain_temporal", "results/train/finetune", "results/reports"]
#: rule -> its `comedian` stage (whose code hash is part of the key).
STAGE_OF = {"extract": "extract", "pca": "pca", "pretrain_spatial": "pretrain-spatial",
            "pretrain_temporal": "pretrain-temporal", "finetune": "finetune", "predict": "predict",
            "ensemble": "ensemble", "postprocess": "postprocess", "evaluate": "evaluate", "report": "report"}


@dataclass(frozen=True)
class Product:
    """One keyed product: the stage (rule) that makes it, what it reads from the config, its inputs."""

    stage: str
    settings: dict[str, Any]
    inputs: dict[str, Any]  # name -> the key of an upstream product (or a file of the config, or None)
    code: str
    key: str = field(init=False)

    def __post_init__(self) -> None:
        text = json.dumps({"stage": self.stage, "code": self.code, "settings": self.settings,
                           "inputs": self.inputs}, sort_keys=True)
        object.__setattr__(self, "key", hashlib.sha256(text.encode()).hexdigest()[:10])

    def folder(self) -> str:
        """The product's folder (every file of every seed, split and model of it is inside)."""
        return TEMPLATES[self.stage].split("{key}")[0] + self.key


@dataclass
class Experiment:
    """An experiment's config and its products by role (``postprocess/seed``, ``evaluate/ensemble``...)."""

    name: str
    config: dict[str, Any]
    overlay: dict[str, Any]
    products: dict[str, Product]

    def view(self) -> str:
        """The experiment's readable folder: ``results`` for the base, else ``results/experiments/<name>``."""
        return view_of(self.name)

    def splits(self) -> list[str]:
        """The splits it runs inference on: the scored ones, and challenge when the data has it."""
        return list(self.config["evaluate"]["splits"]) + (
            ["challenge"] if "challenge" in self.config["dataset"]["splits"] else [])

    def models(self) -> list[str]:
        return [f"seed{seed}" for seed in self.config["seeds"]] + ["ensemble"]

    def metric_files(self, model: str) -> list[str]:
        """One model's metric files: every evaluated split and metric."""
        key = self.products["evaluate/" + ("ensemble" if model == "ensemble" else "seed")].key
        return [TEMPLATES["evaluate"].format(key=key, model=model, split=split, metric=metric)
                for split in self.config["evaluate"]["splits"] for metric in self.config["evaluate"]["metrics"]]

    def predictions(self, model: str, split: str) -> str:
        key = self.products["postprocess/" + ("ensemble" if model == "ensemble" else "seed")].key
        return TEMPLATES["postprocess"].format(key=key, model=model, split=split)

    def submission(self, model: str, split: str) -> str:
        key = self.products["postprocess/" + ("ensemble" if model == "ensemble" else "seed")].key
        return TEMPLATES["submission"].format(key=key, model=model, split=split)

    def scores(self, model: str, split: str) -> str:
        if model == "ensemble":
            return TEMPLATES["ensemble"].format(key=self.products["ensemble"].key, split=split)
        return TEMPLATES["predict"].format(key=self.products["predict"].key, seed=model[len("seed"):], split=split)

    def manifest(self) -> dict[str, Any]:
        """What ``manifest.json`` holds: the overlay, and per product its stage, key, folder, settings and
        inputs (sorted JSON; the same for the same settings)."""
        return {"experiment": self.name, "view": self.view(), "overlay": self.overlay, "seeds": self.config["seeds"],
                "products": {role: {"stage": p.stage, "key": p.key, "folder": p.folder(), "settings": p.settings,
                                    "inputs": p.inputs} for role, p in self.products.items()}}


def view_of(name: str) -> str:
    return "results" if name == DEFAULT else f"results/experiments/{name}"


def _codes() -> dict[str, str]:
    return {rule: stage_code_hash(STAGES[stage]) for rule, stage in STAGE_OF.items()}


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    return {name: config[name]}


#: Model settings that step 1 does not use: it trains the spatial transformer on 1-s sub-videos, and
#: stores only that part, which step 2 loads whatever its clip length and temporal depth.
TEMPORAL_ONLY_MODEL_SETTINGS = ("frames", "temporal_depth")


def spatial_model(model: dict[str, Any]) -> dict[str, Any]:
    """Step 1's model settings: the ``model`` section without :data:`TEMPORAL_ONLY_MODEL_SETTINGS` (step 1
    builds its model with their defaults), so that experiments differing only in those share step 1."""
    return {k: v for k, v in model.items() if k not in TEMPORAL_ONLY_MODEL_SETTINGS}


def products(config: dict[str, Any], codes: dict[str, str], name: str) -> dict[str, Product]:
    """The products by role of the experiment ``name``; only those its DAG needs (no step 1 when nothing
    starts from it, no PCA with a bank file of one's own, no report when it scores no split). The report
    is the experiment's own (it names it and shows its whole config, but not ``tracking``, which
    computes nothing)."""
    data = {"dataset": config["dataset"], "demo": config["demo"]}

    def make(stage: str, settings: dict[str, Any], **inputs: Any) -> Product:
        return Product(stage, settings, inputs, codes[stage])

    out: dict[str, Product] = {"extract": make("extract", _section(config, "extract"))}
    frames = out["extract"].key
    init = config["finetune"]["init"]
    temporal = init == "pretrain_temporal"
    spatial = init == "pretrain_spatial" or (temporal and config["pretrain_temporal"]["init"] == "pretrain_spatial")
    if spatial:
        out["pretrain_spatial"] = make("pretrain_spatial", {"model": spatial_model(config["model"]),
                                                            **_section(config, "pretrain_spatial"), **data},
                                       frames=frames)
    if temporal:
        bank_file = config["pca"]["bank_file"]
        if bank_file is None:
            pca = {k: v for k, v in config["pca"].items() if k != "bank_file"}
            out["pca"] = make("pca", {"pca": pca, **data}, frames=frames)
        step1 = out["pretrain_spatial"].key if config["pretrain_temporal"]["init"] == "pretrain_spatial" else None
        out["pretrain_temporal"] = make(
            "pretrain_temporal", {**_section(config, "model"), **_section(config, "pretrain_temporal"), **data},
            frames=frames, bank=out["pca"].key if bank_file is None else {"file": bank_file}, init=step1)
    shared = config["seeds"][0] if config["share_pretraining"] and init != "scratch" else None
    out["finetune"] = make("finetune", {**_section(config, "model"), **_section(config, "finetune"), **data,
                                        "init_seed": shared},
                           frames=frames, init=out[init].key if init != "scratch" else None)
    out["predict"] = make("predict", {**_section(config, "predict"), **data}, frames=frames,
                          checkpoint=out["finetune"].key)
    out["ensemble"] = make("ensemble", {**_section(config, "seeds"), **data}, scores=out["predict"].key)
    for model, scores in (("seed", "predict"), ("ensemble", "ensemble")):
        out[f"postprocess/{model}"] = make("postprocess", {**_section(config, "postprocess"), **data},
                                           scores=out[scores].key)
        out[f"evaluate/{model}"] = make("evaluate", data, predictions=out[f"postprocess/{model}"].key)
    if config["evaluate"]["splits"]:
        shown = {k: v for k, v in config.items() if k != "tracking"}
        out["report"] = make("report", {"experiment": name, "config": shown},
                             metrics=out["evaluate/ensemble"].key, seed_metrics=out["evaluate/seed"].key,
                             predictions=out["postprocess/ensemble"].key, scores=out["ensemble"].key)
    return out


def plan(config: dict[str, Any], source: str = "config") -> dict[str, Experiment]:
    """Every experiment of a validated config (the base first, as ``default``) with its products."""
    codes = _codes()
    overlays = {DEFAULT: {}, **config["experiments"]}
    return {name: Experiment(name, cfg, overlays[name], products(cfg, codes, name))
            for name, cfg in comedian_config.experiment_configs(config, source).items()}


def registry(experiments: dict[str, Experiment]) -> dict[str, Product]:
    """key -> product over every experiment (a shared product appears once)."""
    return {p.key: p for e in experiments.values() for p in e.products.values()}


def write_manifest(experiment_json: str, output: Path) -> None:
    from comedian.io import atomic_path

    document = json.loads(experiment_json)
    with atomic_path(output) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


def copy_report(report: Path, view: Path) -> None:
    """An experiment's view: a copy of its keyed report folder (:data:`REPORT_FILES`). Each file is
    written whole (a temporary name, then a rename); the timelines folder replaces the old one at once."""
    from comedian.io import atomic_path, replace_dir

    for name in REPORT_FILES.values():
        source, target = report / name, view / name
        if source.is_dir():
            tmp = target.with_name(f".{target.name}.partial")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp, copy_function=shutil.copyfile)
            replace_dir(tmp, target)
            continue
        try:
            data = source.read_bytes()
        except OSError as err:
            raise InputError(f"{source}: cannot read the report ({err.strerror})") from None
        with atomic_path(target, len(data)) as tmp:
            tmp.write_bytes(data)


def load_configs(paths: list[Path]) -> dict[str, Any]:
    """Config files merged as Snakemake's --configfile merges them (later files win, mappings merge)."""
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            merged = comedian_config.deep_merge(merged, yaml.safe_load(path.read_text()) or {})
        except OSError as err:
            raise InputError(f"{path}: cannot read config ({err.strerror})") from None
    return comedian_config.validate(merged, " + ".join(str(p) for p in paths))


def unused_folders(experiments: dict[str, Experiment], root: Path) -> list[Path]:
    """Keyed folders under ``root`` (a working directory) that no experiment of the config uses."""
    used = set(registry(experiments))
    found = []
    for parent in KEYED_DIRS:
        folder = root / parent
        if folder.is_dir():
            found += [p for p in sorted(folder.iterdir()) if re.fullmatch(KEY, p.name) and p.name not in used]
    for logs in ("logs", "benchmarks"):  # logs/<rule>/<key>/..., benchmarks/<rule>/<key>/...
        if (root / logs).is_dir():
            found += [p for p in sorted((root / logs).glob("*/*")) if re.fullmatch(KEY, p.name) and p.name not in used]
    return found


def describe(experiments: dict[str, Experiment], root: Path) -> str:
    """The listing of `comedian experiments`: per experiment, each product's key, whether its folder
    exists, and which other experiments use the very same product."""
    users: dict[str, list[str]] = {}
    for e in experiments.values():
        for p in e.products.values():
            users.setdefault(p.key, [])
            if e.name not in users[p.key]:
                users[p.key].append(e.name)
    lines = []
    for e in experiments.values():
        lines.append(f"{e.name}  (view: {e.view()}/, seeds {e.config['seeds']}"
                     + (f", overlay {json.dumps(e.overlay, sort_keys=True)})" if e.overlay else ")"))
        for role, p in e.products.items():
            state = "exists " if (root / p.folder()).exists() else "missing"
            others = [n for n in users[p.key] if n != e.name]
            lines.append(f"  {role:<20} {p.key}  {state}  {p.folder()}"
                         + (f"  shared with {', '.join(others)}" if others else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="comedian experiments",
        description="List a config's experiments (what each shares with which, what exists), list or remove "
                    "the products none of them uses any more, or write one experiment's manifest or view.")
    parser.add_argument("configs", nargs="*", type=Path, help="config file(s), merged as snakemake --configfile")
    parser.add_argument("--directory", type=Path, default=Path("."), help="the working directory (default .)")
    parser.add_argument("--unused", action="store_true", help="list the keyed folders no experiment uses")
    parser.add_argument("--remove", action="store_true", help="with --unused: delete them (each is printed)")
    parser.add_argument("--manifest", default=None, help="(the workflow's manifest rule) the manifest as JSON")
    parser.add_argument("--output", type=Path, default=None, help="(with --manifest) the manifest file")
    parser.add_argument("--view", type=Path, default=None,
                        help="(the workflow's view rule) copy the keyed report --report into this view folder")
    parser.add_argument("--report", type=Path, default=None, help="(with --view) the keyed report folder")
    args = parser.parse_args(argv)
    if args.manifest is not None:
        if args.output is None:
            raise InputError("--manifest needs --output")
        write_manifest(args.manifest, args.output)
        return 0
    if args.view is not None:
        if args.report is None:
            raise InputError("--view needs --report")
        copy_report(args.report, args.view)
        return 0
    if not args.configs:
        raise InputError("name the config file(s), e.g. config/config.yaml")
    experiments = plan(load_configs(args.configs))
    if args.remove and not args.unused:
        raise InputError("--remove removes the folders --unused lists: give both")
    if not args.unused:
        print(describe(experiments, args.directory))
        return 0
    for folder in unused_folders(experiments, args.directory):
        print(("removed " if args.remove else "") + str(folder.relative_to(args.directory)))
        if args.remove:
            shutil.rmtree(folder)
    return 0
