# Config validation and the small helpers that compute inputs. Rules hold no path arithmetic.
import json
import os
import shlex

from comedian import tracking
from comedian.cli import STAGES, export_checkout
from comedian.codehash import stage_code_hash

from comedian import config as comedian_config
from comedian.data import soccernet
from comedian.errors import InputError

# Validate before any job starts; errors name the config file(s) and the field.
comedian_config.validate(config, " + ".join(str(f) for f in workflow.configfiles) or "config")

SPLITS = [s for s in ("train", "valid", "test", "challenge") if s in config["dataset"]["splits"]]
DATA_ROOT = config["dataset"]["root"]


def split_games():
    """Split -> games, known at parse time: computed for the demo, read from the lists otherwise."""
    if config["demo"] is not None:
        from comedian.data.demo import demo_games

        demo = config["demo"]
        return demo_games(demo["seed"], demo["games"]["train"], demo["games"]["valid"], demo["games"]["test"])
    return {s: soccernet.read_game_list(config["dataset"]["splits"][s]) for s in SPLITS}


GAMES = split_games()
SLUGS = soccernet.slug_table([g for s in SPLITS for g in GAMES[s]])  # slug -> game


wildcard_constraints:
    game=r"[A-Za-z0-9._\-]+",
    half=r"[12]",
    split=r"train|valid|test|challenge",


def video(wildcards):
    return str(soccernet.video_path(DATA_ROOT, SLUGS[wildcards.game], int(wildcards.half)))


def all_frames(splits=SPLITS):
    return [f"results/frames/{soccernet.game_slug(g)}/{h}.h5" for s in splits for g in GAMES[s] for h in soccernet.HALVES]


def baidu_files(splits=SPLITS):
    return [str(soccernet.baidu_path(DATA_ROOT, g, h)) for s in splits for g in GAMES[s] for h in soccernet.HALVES]


def demo_outputs():
    """Every file the demo generator writes under the data root."""
    from comedian.data.demo import demo_files

    demo = config["demo"]
    files = demo_files(demo["seed"], demo["games"]["train"], demo["games"]["valid"], demo["games"]["test"])
    return [os.path.join(DATA_ROOT, f) for f in files]


def code(stage):
    """Hash of the code behind `comedian <stage>`: editing it reruns the rule (comedian/codehash.py)."""
    return stage_code_hash(STAGES[stage])


def data_root(wildcards, input=None, output=None):
    """The data root (a params function: it is a prefix of the rule's files)."""
    return DATA_ROOT


def frames_dir(wildcards, input=None):
    """Where the packed frames of every half live: results/frames/<slug>/<half>.h5."""
    return "results/frames"


def split_flags(wildcards, input):
    """``--split FILE`` for each split list but the train one."""
    return " ".join(f"--split {shlex.quote(path)}" for path in input.others)


def splits_dir(wildcards, output):
    """The demo writes its split lists as <dir>/<split>.txt: the config must name them so."""
    dirs = {os.path.dirname(split_list(s)) for s in ("train", "valid", "test")}
    names = [os.path.basename(split_list(s)) for s in ("train", "valid", "test")]
    if len(dirs) != 1 or names != ["train.txt", "valid.txt", "test.txt"]:
        raise InputError("config: dataset.splits: with a demo, the lists must be <dir>/{train,valid,test}.txt")
    return dirs.pop()


def ffmpeg_flag():
    return f"--ffmpeg {config['extract']['ffmpeg']}" if config["extract"]["ffmpeg"] else ""


def split_list(split):
    return config["dataset"]["splits"][split]


def split_list_of(wildcards):
    return split_list(wildcards.split)


def split_frames(wildcards):
    """The packed frames of every half of a split."""
    return all_frames([wildcards.split])


def seed_scores(wildcards):
    """One model's raw scores per fine-tuning seed, for the ensemble."""
    return [f"results/scores/seed{seed}/{wildcards.split}.h5" for seed in config["ensemble"]["seeds"]]


def window_flag():
    window = config["predict"]["window_frames"]
    return f"--window-frames {window}" if window is not None else ""


def class_flags():
    return "--classes " + " ".join(shlex.quote(c) for c in config["dataset"]["classes"])


def metric_files():
    """results/metrics/<split>_<metric>.json for every evaluated split and metric."""
    return [f"results/metrics/{s}_{m}.json" for s in config["evaluate"]["splits"] for m in config["evaluate"]["metrics"]]


def metric_flags(wildcards, input):
    return " ".join(f"--metrics {os.path.basename(p).split('_')[0]} {p}" for p in input.metrics)


def section_json(name):
    """A config section as one JSON argument: the stage reads it, and a change reruns the rule."""
    return json.dumps(config[name], sort_keys=True)


def classes_json():
    return json.dumps(config["dataset"]["classes"])


def launcher(wildcards, resources):
    """`python -m comedian`, or torchrun with one process per GPU when the rule is given several."""
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus > 1:
        return f"torchrun --standalone --nproc-per-node {gpus} -m comedian"
    return "python -m comedian"


def loader_workers(wildcards, threads):
    """DataLoader workers per training process: the job's cores but one (the training process's)."""
    return max(1, threads - 1)


def torch_threads(wildcards, threads):
    """Intra-op threads of the training process: the job's cores left to it by the loader workers."""
    return max(1, threads - loader_workers(wildcards, threads))


def temporal_init(wildcards):
    """Step 2 starts from step 1's spatial weights, or from scratch (pretrain_temporal.init)."""
    if config["pretrain_temporal"]["init"] == "pretrain_spatial":
        return {"init": "results/checkpoints/pretrain_spatial.pt"}
    return {}


def finetune_init(wildcards):
    """Step 3 starts from step 2, from step 1 only, or from scratch (finetune.init): Table 5's rows."""
    step = config["finetune"]["init"]
    return {} if step == "scratch" else {"init": f"results/checkpoints/{step}.pt"}


def init_flag(wildcards, input):
    return f"--init {input.init}" if "init" in input.keys() else ""


def final_targets():
    """What `snakemake` builds by default: metrics.json and the report, and the challenge submission."""
    targets = ["results/metrics.json"]
    if "challenge" in SPLITS:
        targets.append("results/submissions/challenge.zip")
    return targets


if config["report"]["split"] not in config["evaluate"]["splits"]:
    raise InputError(f"config: report.split = {config['report']['split']!r} must be one of evaluate.splits")


# Rules call `python -m comedian`, which finds this checkout in any environment (--sdm conda too).
export_checkout(os.path.dirname(workflow.basedir))
