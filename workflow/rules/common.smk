# Config validation and the small helpers that compute inputs. Rules hold no path arithmetic.
import json
import os
import re
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
SEEDS = config["seeds"]
LABELLED = ("train", "valid", "test")  # the challenge split has no labels


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
    seed=r"\d+",
    model=r"seed\d+|ensemble",


def video(wildcards):
    return str(soccernet.video_path(DATA_ROOT, SLUGS[wildcards.game], int(wildcards.half)))


def all_frames(splits=SPLITS):
    return [f"results/frames/{soccernet.game_slug(g)}/{h}.h5" for s in splits for g in GAMES[s] for h in soccernet.HALVES]


def baidu_files(splits=SPLITS):
    return [str(soccernet.baidu_path(DATA_ROOT, g, h)) for s in splits for g in GAMES[s] for h in soccernet.HALVES]


def labels_files(splits):
    """Every game's Labels-v2.json of the (labelled) splits: an edited label reruns exactly what reads it."""
    return [str(soccernet.labels_path(DATA_ROOT, g)) for s in splits if s in LABELLED for g in GAMES[s]]


def canonical(value):
    """A config value as a job parameter: canonical JSON (dicts sorted), so that key order, comments or
    formatting of the config never rerun a job, and a value change always does."""
    return json.dumps(value, sort_keys=True)


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


def train_list_flags(wildcards, input):
    """``--train-list FILE`` for each split list a training step trains on."""
    return " ".join(f"--train-list {shlex.quote(path)}" for path in input.train)


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
    """One model's raw scores per seed, for the ensemble."""
    return [f"results/scores/seed{seed}/{wildcards.split}.h5" for seed in SEEDS]


def pretrain_seed(seed):
    """The seed of the steps 1-2 a seed's chain starts from: its own (the paper), or the first seed's with
    ``share_pretraining``."""
    return SEEDS[0] if config["share_pretraining"] else int(seed)


def window_flag():
    window = config["predict"]["window_frames"]
    return f"--window-frames {window}" if window is not None else ""


def class_flags():
    return "--classes " + " ".join(shlex.quote(c) for c in config["dataset"]["classes"])


def metric_files(model):
    """results/metrics/<model>/<split>_<metric>.json for every evaluated split and metric of one model."""
    return [f"results/metrics/{model}/{s}_{m}.json" for s in config["evaluate"]["splits"]
            for m in config["evaluate"]["metrics"]]


def metric_flags(wildcards, input):
    """``--metrics SPLIT FILE`` for the ensemble's files, ``--seed-metrics SEED SPLIT FILE`` for each seed's."""
    def split_of(path):
        return os.path.basename(path).split("_")[0]

    flags = [f"--metrics {split_of(p)} {p}" for p in input.metrics]
    flags += [f"--seed-metrics {os.path.basename(os.path.dirname(p))[len('seed'):]} {split_of(p)} {p}"
              for p in input.seed_metrics]
    return " ".join(flags)


def split_labels(wildcards):
    """The labels of every game of a split."""
    return labels_files([wildcards.split])


def section_json(name):
    """A config section as one JSON argument: the stage reads it, and a change reruns the rule."""
    return canonical(config[name])


def classes_json():
    return canonical(config["dataset"]["classes"])


def job_nodes(resources):
    """Nodes of a job (the profile's ``nodes``; 1 when unset)."""
    return int(resources.get("nodes", 1) or 1)


def gpus_per_node(resources):
    """GPUs on each node of a job: ``gpu`` (one node: sbatch --gpus), or N of ``gres: gpu[:type]:N``
    (several nodes: sbatch --gres, which Slurm counts per node)."""
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus:
        return gpus
    match = re.fullmatch(r"gpu(?::[\w.-]+)?:(\d+)", str(resources.get("gres", "") or ""))
    return int(match.group(1)) if match else 0


def ranks_per_node(resources):
    """Training processes on each node: one per GPU, one on a CPU-only node."""
    return max(1, gpus_per_node(resources))


#: The per-node command of a multi-node job (run by srun, one task per node): one torchrun that joins
#: the c10d rendezvous hosted by the job's first node (its NodeAddr, as Slurm reaches it), at a port
#: and id taken from the job id; then the stage's arguments ("$@").
NODE_TORCHRUN = (
    'first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1); '
    'host=$(scontrol show node "$first" | sed -n "s/.*NodeAddr=\\([^ ]*\\).*/\\1/p"); '
    "exec torchrun --nnodes {nodes} --nproc-per-node {ranks} --rdzv-backend c10d "
    '--rdzv-id "$SLURM_JOB_ID" --rdzv-endpoint "$host:$((20000 + SLURM_JOB_ID % 10000))" '
    '--rdzv-conf "is_host=$((SLURM_NODEID == 0))" -m comedian "$@"'
)


def launcher(wildcards, resources, threads):
    """How a training rule starts its stage, ``exec``-ed so that a signal (Slurm's SIGTERM before a time
    limit or at a preemption) reaches the stage or torchrun, not a shell in between:

    - one node, at most one GPU: ``python -m comedian``;
    - one node, several GPUs: ``torchrun --standalone``, one process per GPU;
    - several nodes (``nodes`` > 1, inside a Slurm job): ``srun`` one task per node, each a torchrun of
      one process per GPU of its node (:data:`NODE_TORCHRUN`); ``--overlap``, as Snakemake's own job step
      holds the first node's CPUs.
    """
    nodes, ranks = job_nodes(resources), ranks_per_node(resources)
    if nodes > 1:
        script = NODE_TORCHRUN.format(nodes=nodes, ranks=ranks)
        return (f"exec srun --overlap --nodes={nodes} --ntasks-per-node=1 --cpus-per-task={threads} "
                f"--kill-on-bad-exit=1 bash -c {shlex.quote(script)} comedian-node")
    if ranks > 1:
        return f"exec torchrun --standalone --nproc-per-node {ranks} -m comedian"
    return "exec python -m comedian"


def rank_cores(threads, resources):
    """Cores of one training process: its share of its node's (``threads`` are one node's cores)."""
    return max(1, threads // ranks_per_node(resources))


def loader_workers(wildcards, threads, resources):
    """DataLoader workers per training process: its share of the node's cores but one (its own)."""
    return max(1, rank_cores(threads, resources) - 1)


def torch_threads(wildcards, threads, resources):
    """Intra-op threads of each training process: its share of the cores left by its loader workers."""
    return max(1, rank_cores(threads, resources) - loader_workers(wildcards, threads, resources))


def temporal_init(wildcards):
    """Step 2 starts from step 1's spatial weights of the same seed, or from scratch (pretrain_temporal.init)."""
    if config["pretrain_temporal"]["init"] == "pretrain_spatial":
        return {"init": f"results/checkpoints/pretrain_spatial_seed{wildcards.seed}.pt"}
    return {}


def finetune_init(wildcards):
    """Step 3 starts from step 2, from step 1 only, or from scratch (finetune.init): Table 5's rows."""
    step = config["finetune"]["init"]
    if step == "scratch":
        return {}
    return {"init": f"results/checkpoints/{step}_seed{pretrain_seed(wildcards.seed)}.pt"}


def finetune_validates():
    return config["finetune"]["validate_every"] > 0 or config["finetune"]["head_validate_every"] > 0


def finetune_data(wildcards):
    """Fine-tuning's inputs: the frames and labels of its training splits (and of valid when it
    validates), and their split lists."""
    splits = list(config["finetune"]["train_splits"])
    files = {"train": [split_list(s) for s in splits]}
    if finetune_validates():
        files["valid"] = split_list("valid")
        splits = list(dict.fromkeys(splits + ["valid"]))
    files["frames"] = all_frames(splits)
    files["labels"] = labels_files(splits)
    return files


def valid_flag(wildcards, input):
    return f"--valid-list {shlex.quote(input.valid)}" if "valid" in input.keys() else ""


def init_flag(wildcards, input):
    return f"--init {input.init}" if "init" in input.keys() else ""


def final_targets():
    """What `snakemake` builds by default: metrics.json and the report (when a split is evaluated), and the
    challenge submission of the ensemble."""
    targets = ["results/metrics.json"] if config["evaluate"]["splits"] else []
    if "challenge" in SPLITS:
        targets.append("results/submissions/ensemble/challenge.zip")
    return targets


# Rules call `python -m comedian`, which finds this checkout in any environment (--sdm conda too).
export_checkout(os.path.dirname(workflow.basedir))
