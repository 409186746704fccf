# Config validation, the plan of experiments and products, and the small helpers that compute inputs.
# Rules hold no path arithmetic.
import json
import os
import re
import shlex

from comedian import tracking
from comedian.cli import STAGES, export_checkout
from comedian.codehash import stage_code_hash

from comedian import config as comedian_config
from comedian import experiments
from comedian.data import soccernet
from comedian.errors import InputError

# Validate before any job starts; errors name the config file(s) and the field.
SOURCE = " + ".join(str(f) for f in workflow.configfiles) or "config"
comedian_config.validate(config, SOURCE)
# Every experiment (the base is `default`) and every product they use, by key (comedian/experiments.py):
# rules make keyed products, so experiments whose settings agree upstream share the very same jobs.
EXPERIMENTS = experiments.plan(config, SOURCE)
PRODUCTS = experiments.registry(EXPERIMENTS)
PATHS = experiments.TEMPLATES
VIEWS = {experiment.view(): experiment for experiment in EXPERIMENTS.values()}

SPLITS = [s for s in ("train", "valid", "test", "challenge") if s in config["dataset"]["splits"]]
DATA_ROOT = config["dataset"]["root"]
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
    key=experiments.KEY,
    view=r"results(/experiments/[A-Za-z0-9_-]+)?",
    table=r"[A-Za-z0-9_-]+",
    game=r"[A-Za-z0-9._\-]+",
    half=r"[12]",
    split=r"train|valid|test|challenge",
    seed=r"\d+",
    model=r"seed\d+|ensemble",


def video(wildcards):
    return str(soccernet.video_path(DATA_ROOT, SLUGS[wildcards.game], int(wildcards.half)))


def product(wildcards):
    """The keyed product a job makes (its settings and inputs: comedian.experiments.Product)."""
    try:
        return PRODUCTS[wildcards.key]
    except KeyError:
        raise InputError(f"{SOURCE}: no experiment of the config makes a product with key {wildcards.key}") from None


def experiment(wildcards):
    """The experiment whose view folder a job writes (results/ or results/experiments/<name>/)."""
    try:
        return VIEWS[wildcards.view]
    except KeyError:
        raise InputError(
            f"{SOURCE}: {wildcards.view}/ is no experiment's view (declared: " f"{', '.join(VIEWS)})"
        ) from None


def all_frames(key, splits=SPLITS):
    """The packed frames of every half of the splits, as extracted by the product ``key``."""
    return [
        PATHS["extract"].format(key=key, game=soccernet.game_slug(g), half=h)
        for s in splits
        for g in GAMES[s]
        for h in soccernet.HALVES
    ]


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
    """Hash of the code behind `comedian <stage>`: editing it reruns the rule (comedian/codehash.py). Keyed
    products need none: the hash is part of their key."""
    return stage_code_hash(STAGES[stage])


def data_root(wildcards, input=None, output=None):
    """The data root (a params function: it is a prefix of the rule's files)."""
    return DATA_ROOT


def frames_dir(wildcards, input=None):
    """Where the packed frames of every half a job reads live: results/frames/<key>/<slug>/<half>.h5."""
    return PRODUCTS[product(wildcards).inputs["frames"]].folder()


def setting(section, name):
    """A params function: one setting of the job's product."""
    return lambda wildcards: product(wildcards).settings[section][name]


def pca_frames(wildcards):
    return all_frames(product(wildcards).inputs["frames"])


def spatial_frames(wildcards):
    return all_frames(product(wildcards).inputs["frames"], ["train"])


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


def ffmpeg_flag(wildcards):
    ffmpeg = product(wildcards).settings["extract"]["ffmpeg"]
    return f"--ffmpeg {ffmpeg}" if ffmpeg else ""


def split_list(split):
    return config["dataset"]["splits"][split]


def split_list_of(wildcards):
    return split_list(wildcards.split)


def split_frames(wildcards):
    """The packed frames of every half of a split."""
    return all_frames(product(wildcards).inputs["frames"], [wildcards.split])


def seed_checkpoint(wildcards):
    """The fine-tuned model of a seed that inference runs."""
    return PATHS["finetune"].format(key=product(wildcards).inputs["checkpoint"], seed=wildcards.seed)


def seed_scores(wildcards):
    """One model's raw scores per seed, for the ensemble."""
    ensemble = product(wildcards)
    return [
        PATHS["predict"].format(key=ensemble.inputs["scores"], seed=seed, split=wildcards.split)
        for seed in ensemble.settings["seeds"]
    ]


def model_scores(wildcards):
    """The raw scores NMS reads: the ensemble's or one seed's, as the product's input says."""
    scores = PRODUCTS[product(wildcards).inputs["scores"]]
    if (scores.stage == "ensemble") != (wildcards.model == "ensemble"):
        raise InputError(
            f"{SOURCE}: product {wildcards.key} post-processes {scores.stage} scores, not {wildcards.model}'s"
        )
    if scores.stage == "ensemble":
        return PATHS["ensemble"].format(key=scores.key, split=wildcards.split)
    return PATHS["predict"].format(key=scores.key, seed=wildcards.model[len("seed") :], split=wildcards.split)


def model_predictions(wildcards):
    """The spots a model's t-AmAP is computed on."""
    return PATHS["postprocess"].format(
        key=product(wildcards).inputs["predictions"], model=wildcards.model, split=wildcards.split
    )


def window_flag(wildcards):
    window = product(wildcards).settings["predict"]["window_frames"]
    return f"--window-frames {window}" if window is not None else ""


def class_flags():
    return "--classes " + " ".join(shlex.quote(c) for c in config["dataset"]["classes"])


def metric_flags(wildcards, input):
    """``--metrics SPLIT FILE`` for the ensemble's files, ``--seed-metrics SEED SPLIT FILE`` for each seed's."""

    def split_of(path):
        return os.path.basename(path).split("_")[0]

    flags = [f"--metrics {split_of(p)} {p}" for p in input.metrics]
    flags += [
        f"--seed-metrics {os.path.basename(os.path.dirname(p))[len('seed'):]} {split_of(p)} {p}"
        for p in input.seed_metrics
    ]
    return " ".join(flags)


def report_inputs(wildcards):
    """An experiment's report: its metric files (the ensemble's, each seed's), and the ensemble's spots, scores,
    games and labels of the report split."""
    ex = EXPERIMENTS[product(wildcards).settings["experiment"]]
    split = ex.config["report"]["split"]
    return {
        "metrics": ex.metric_files("ensemble"),
        "seed_metrics": [f for seed in ex.config["seeds"] for f in ex.metric_files(f"seed{seed}")],
        "predictions": ex.predictions("ensemble", split),
        "scores": ex.scores("ensemble", split),
        "games": split_list(split),
        "labels": labels_files([split]),
    }


def report_files(folder):
    """The report's files in ``folder`` (experiments.REPORT_FILES)."""
    return {name: f"{folder}/{path}" for name, path in experiments.REPORT_FILES.items()}


def report_outputs(folder):
    """:func:`report_files` as a rule's outputs: the timelines a folder."""
    files = report_files(folder)
    return {**files, "timelines": directory(files["timelines"])}


#: What the HTML report shows of each view, with its caption (workflow/report/) and category.
REPORT_ITEMS = {
    "ap_table": ("../report/ap_table.rst", "Per-class AP"),
    "seeds": ("../report/seeds.rst", "Seeds"),
    "pr_curves": ("../report/pr_curves.rst", "Precision-recall"),
    "timelines": ("../report/timelines.rst", "Timelines"),
    "run": ("../report/run.rst", "Run"),
}


def view_outputs():
    """A view's copy of the report, its items flagged for `snakemake --report`."""
    files = report_outputs("{view}")
    for name, (caption, category) in REPORT_ITEMS.items():
        extra = {"patterns": ["{name}.png"]} if name == "timelines" else {}
        files[name] = report(files[name], caption=caption, category=category, subcategory="{view}", **extra)
    return files


def view_inputs(wildcards):
    """The keyed report a view copies (an experiment that scores no split has none, hence no metrics.json), and
    its manifest, so that a view is never without it."""
    ex = experiment(wildcards)
    if "report" not in ex.products:
        raise InputError(f"{SOURCE}: experiment {ex.name!r} scores no split (evaluate.splits): it has no metrics.json")
    return [f"{ex.view()}/manifest.json", *report_files(ex.products["report"].folder()).values()]


def view_report(wildcards):
    """The keyed report folder a view copies."""
    return experiment(wildcards).products["report"].folder()


def report_setting(name):
    """A params function: one setting of the report section of the report's experiment."""
    return lambda wildcards: product(wildcards).settings["config"]["report"][name]


def experiment_name(wildcards):
    return product(wildcards).settings["experiment"]


def report_config_json(wildcards):
    """The report's experiment's whole config (defaults filled in) as canonical JSON, for its run page; without
    ``tracking``, which computes nothing (where runs are logged reruns no job: the page names the MLflow run)."""
    return canonical(product(wildcards).settings["config"])


def manifest_json(wildcards):
    """The view's manifest (every product of the experiment, its key and settings) as canonical JSON."""
    return canonical(experiment(wildcards).manifest())


def table_spec(wildcards):
    try:
        return config["tables"][wildcards.table]
    except KeyError:
        raise InputError(
            f"{SOURCE}: tables: no table {wildcards.table!r} (declared: " f"{', '.join(config['tables']) or 'none'})"
        ) from None


def table_json(wildcards):
    return canonical(table_spec(wildcards))


def table_inputs(wildcards):
    """A table's sources: the metrics.json of each experiment a scored row names, the submission zips of
    its challenge rows."""
    rows = table_spec(wildcards)["rows"]
    scored = [r["experiment"] for r in rows if r["split"] != "challenge"]
    zips = [
        EXPERIMENTS[r["experiment"]].submission(m, "challenge")
        for r in rows
        if r["split"] == "challenge"
        for m in (["ensemble"] if r["ensemble"] else EXPERIMENTS[r["experiment"]].models()[:-1])
    ]
    return {
        "metrics": [f"{EXPERIMENTS[e].view()}/metrics.json" for e in dict.fromkeys(scored)],
        "submissions": list(dict.fromkeys(zips)),
    }


def table_flags(wildcards, input):
    """``--metrics EXPERIMENT FILE`` per scored experiment, ``--submission EXPERIMENT FILE`` per zip."""
    views = {f"{e.view()}/metrics.json": e.name for e in EXPERIMENTS.values()}
    flags = [f"--metrics {views[p]} {p}" for p in input.metrics]
    owners = {
        e.submission(m, "challenge"): e.name for e in EXPERIMENTS.values() if "challenge" in SPLITS for m in e.models()
    }
    flags += [f"--submission {owners[p]} {p}" for p in input.submissions]
    return " ".join(flags)


def split_labels(wildcards):
    """The labels of every game of a split."""
    return labels_files([wildcards.split])


def section_json(name):
    """A params function: a section of the job's product settings as one JSON argument (the stage reads it)."""
    return lambda wildcards: canonical(product(wildcards).settings[name])


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


#: Before the srun of a multi-node job: unset the SLURM_* variables of the job step that the rule's
#: command runs in (Snakemake's ``srun -n1``, on the first node only). srun would take that step's
#: SLURM_JOB_NODELIST / SLURM_NNODES / SLURM_NTASKS for the job's allocation and stop with "Only
#: allocated 1 nodes asked for 2"; with SLURM_JOB_ID alone it asks the controller for the job's nodes
#: (as Snakemake's own srun does). SLURM_CONF (a cluster's non-default configuration) is kept.
LEAVE_JOB_STEP = (
    'for v in $(compgen -v SLURM_); do case "$v" in SLURM_JOB_ID|SLURM_CONF) ;; ' '*) unset "$v" ;; esac; done; '
)


def launcher(wildcards, resources, threads):
    """How a training rule starts its stage, ``exec``-ed so that a signal (Slurm's SIGTERM before a time
    limit or at a preemption) reaches the stage or torchrun, not a shell in between:

    - one node, at most one GPU: ``python -m comedian``;
    - one node, several GPUs: ``torchrun --standalone``, one process per GPU;
    - several nodes (``nodes`` > 1, inside a Slurm job): ``srun`` one task per node, each a torchrun of
      one process per GPU of its node (:data:`NODE_TORCHRUN`), after :data:`LEAVE_JOB_STEP`;
      ``--overlap``, as Snakemake's own job step holds the first node's CPUs.
    """
    nodes, ranks = job_nodes(resources), ranks_per_node(resources)
    if nodes > 1:
        script = NODE_TORCHRUN.format(nodes=nodes, ranks=ranks)
        return (
            f"{LEAVE_JOB_STEP}exec srun --overlap --nodes={nodes} --ntasks-per-node=1 --cpus-per-task={threads} "
            f"--kill-on-bad-exit=1 bash -c {shlex.quote(script)} comedian-node"
        )
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


def temporal_inputs(wildcards):
    """Step 2's inputs: the frames and split lists of its training splits, the teacher bank (the PCA's, or
    pca.bank_file), and step 1's weights of the same seed unless it starts from scratch."""
    step = product(wildcards)
    splits = step.settings["pretrain_temporal"]["train_splits"]
    bank = step.inputs["bank"]
    files = {
        "frames": all_frames(step.inputs["frames"], splits),
        "train": [split_list(s) for s in splits],
        "bank": bank["file"] if isinstance(bank, dict) else PATHS["pca"].format(key=bank),
    }
    if step.inputs["init"] is not None:
        files["init"] = PATHS["pretrain_spatial"].format(key=step.inputs["init"], seed=wildcards.seed)
    return files


def finetune_validates(settings):
    return settings["validate_every"] > 0 or settings["head_validate_every"] > 0


def finetune_inputs(wildcards):
    """Fine-tuning's inputs: the weights it starts from (step 2's, step 1's or none: finetune.init, of the
    same seed or of the first with share_pretraining), the frames and labels of its training splits (and
    of valid when it validates), and their split lists."""
    step = product(wildcards)
    settings = step.settings["finetune"]
    splits = list(settings["train_splits"])
    files = {"train": [split_list(s) for s in splits]}
    if finetune_validates(settings):
        files["valid"] = split_list("valid")
        splits = list(dict.fromkeys(splits + ["valid"]))
    files["frames"] = all_frames(step.inputs["frames"], splits)
    files["labels"] = labels_files(splits)
    if step.inputs["init"] is not None:
        seed = step.settings["init_seed"] if step.settings["init_seed"] is not None else wildcards.seed
        files["init"] = PATHS[settings["init"]].format(key=step.inputs["init"], seed=seed)
    return files


def valid_flag(wildcards, input):
    return f"--valid-list {shlex.quote(input.valid)}" if "valid" in input.keys() else ""


def init_flag(wildcards, input):
    return f"--init {input.init}" if "init" in input.keys() else ""


def final_targets():
    """What `snakemake` builds by default, the experiment `default`: metrics.json and the report (when a
    split is evaluated), the challenge submission of the ensemble, and results/manifest.json."""
    default = EXPERIMENTS[experiments.DEFAULT]
    targets = ["results/metrics.json"] if config["evaluate"]["splits"] else []
    if "challenge" in SPLITS:
        targets.append(default.submission("ensemble", "challenge"))
    return targets + ["results/manifest.json"]


# Rules call `python -m comedian`, which finds this checkout in any environment (--sdm conda too).
export_checkout(os.path.dirname(workflow.basedir))
