"""The pipeline through a real Slurm: `snakemake --executor slurm --profile profiles/ci-slurm`.

Starts a Slurm of two emulated nodes with accounting on this machine (tests/slurm_cluster.py; needs
root and .ci/slurm-setup.sh), then:

- runs the default target of the tiny config of test_workflow.py from a copy of the checkout and
  checks in Slurm's accounting that every job (single rules, and the group jobs of `extract` and
  `scoring`) went through sbatch with the resources of the CI profile and completed, and that the
  6 extractions arrived as fewer Slurm jobs than halves;
- trains one fine-tuning step (2 epochs of 50 iterations, CPU) three ways on the frames of that run:
  locally in one process (the reference), as a 2-node job (one rank per node, gloo; equal to the
  reference to 1e-5), and as a 1-node job that gets `scancel --signal=TERM` mid-epoch, exits, is
  resubmitted by Snakemake (`--retries 1`) and resumes mid-epoch (bitwise equal to the reference);

then stops the daemons it started, by PID.

`pytest -m slurm` runs it (the marker is deselected by default): ~5 min on 2 cores, ~10 s of it to
start the cluster.
"""

import collections
import copy
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml

from comedian.models.checkpoint import read_checkpoint
from slurm_cluster import ACCOUNT, NODES, PARTITION, SlurmCluster
from test_workflow import REPO, TINY, write_config

pytestmark = pytest.mark.slurm

PROFILE = REPO / "profiles" / "ci-slurm"
RUN_TIMEOUT_S = 1200  # generous: the DAG grows with the pipeline (it takes ~3 min now)
SACCT_FIELDS = ["JobID", "JobName", "Comment", "State", "ExitCode", "ReqMem", "Timelimit", "AllocCPUS",
                "NNodes", "Account", "Partition"]
#: Why a pending job would wait forever on this cluster: the run stops at once, naming the job.
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
                "ReqNodeNotAvail", "InvalidAccount", "InvalidQOS")

#: Fine-tuning on the tiny demo's train game, long enough to be signalled mid-epoch (2 epochs of 50
#: iterations, 2-6 s each here) and free of per-rank randomness (no mixup; the tiny model has no drop
#: path), so that 1 and 2 processes train alike. A periodic checkpoint every 0.25 s tells the
#: preemption test that training is under way (checkpoint_every_s is not part of the run's identity).
TRAINING = copy.deepcopy(TINY)
TRAINING["finetune"] = {**TINY["finetune"], "init": "scratch", "head_epochs": 0, "epochs": 2,
                        "windows_per_game": 200, "validate_every": 0, "head_validate_every": 0,
                        "mixup_alpha": 0.0, "checkpoint_every_s": 0.25}
#: Fine-tuning and what it needs, nothing else (the frames are copied in): `snakemake --until finetune`.
ONLY_FINETUNE = ("--until", "finetune")
#: Its output, resumable state and log, under the fine-tuning product's key (one in a training workdir).
FINETUNED, FINETUNE_STATE, FINETUNE_LOG = ("results/checkpoints/finetune/*/seed0.pt",
                                           "results/train/finetune/*/seed0/last.pt", "logs/finetune/*/seed0.log")


def profile():
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def expected_resources(rule: str) -> dict:
    """What the CI profile asks for one job of ``rule``: cpus, mem_mb, runtime (minutes)."""
    ci = profile()
    assert rule in ci["set-threads"] and rule in ci["set-resources"], f"add rule {rule} to {PROFILE}/config.yaml"
    resources = dict(ci["default-resources"], **ci["set-resources"][rule])
    return {"cpus": ci["set-threads"][rule], "mem_mb": resources["mem_mb"], "runtime": resources["runtime"]}


def minutes(timelimit: str) -> int:
    """sacct's Timelimit ([D-]HH:MM:SS) -> minutes."""
    days, _, clock = timelimit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


def job_kind(comment: str) -> str:
    """The executor's job comment -> what the job runs: ``rule_<rule>[_wildcards_<values>]`` for one
    rule's job, ``rule_<group>_<its rules, sorted, joined by _>`` for a group job -> the part before
    ``_wildcards_``."""
    assert comment.startswith("rule_"), comment
    return comment.split("_wildcards_")[0]


def planned_jobs(dry_run_output: str) -> dict[str, list[list[str]]]:
    """What the executor submits in a dry run: job kind (as :func:`job_kind`) -> one list per Slurm job of
    the rules it runs (one rule, or a group's members). Local jobs and those without a command are not
    submitted."""
    jobs: dict[str, list[list[str]]] = collections.defaultdict(list)
    blocks = re.split(r"\n(?=\[[^\n]*\](?: Group job |\n))", dry_run_output)
    for block in blocks:
        group = re.match(r"\[[^\n]*\] Group job (\S+) ", block)
        if group:
            members = re.findall(r"^ {4}rule (\w+):", block, re.M)
            rules = sorted(set(members))
            named = rules if len(rules) <= 5 else [*rules[:5], "..."]  # a group job's name lists 5 rules at most
            jobs[f"rule_{group.group(1)}_{'_'.join(named)}"].append(members)
            continue
        head = re.search(r"^(local)?rule (\w+):", block, re.M)
        if head and not head.group(1) and "Shell command: None" not in block:
            jobs[f"rule_{head.group(2)}"].append([head.group(2)])
    return dict(jobs)


def group_bounds(members: list[str]) -> dict:
    """What a group job of ``members`` may ask for (Snakemake sums the jobs it runs at once, takes the max
    of those in series, and the reverse for runtime; --cores, the profile's ``cores``, caps the CPUs):
    (min, max) of cpus, mem_mb and runtime."""
    each = [expected_resources(rule) for rule in members]
    cores = profile()["cores"]
    return {"cpus": (max(e["cpus"] for e in each), min(cores, sum(e["cpus"] for e in each))),
            "mem_mb": (max(e["mem_mb"] for e in each), sum(e["mem_mb"] for e in each)),
            "runtime": (max(e["runtime"] for e in each), sum(e["runtime"] for e in each))}


def same_rule_group(members: list[str]) -> dict:
    """Exactly what a group of independent jobs of one rule asks for: ``cores // threads`` of them at once."""
    one, cores = expected_resources(members[0]), profile()["cores"]
    at_once = min(len(members), cores // one["cpus"])
    return {"cpus": at_once * one["cpus"], "mem_mb": at_once * one["mem_mb"],
            "runtime": -(-len(members) // at_once) * one["runtime"]}


def checkout(workdir):
    """A copy of the checkout (package, workflow) in workdir/checkout: the jobs import it (PYTHONPATH)."""
    copy_ = workdir / "checkout"
    if not copy_.exists():
        for part in ("comedian", "workflow", "envs"):
            shutil.copytree(REPO / part, copy_ / part, ignore=shutil.ignore_patterns("__pycache__"))
    return copy_


def snakemake(workdir, cluster, *args, profile_dir=PROFILE, local=False, while_running=None,
              timeout=RUN_TIMEOUT_S):
    """Snakemake on ``workdir`` with a copy of the checkout, through ``profile_dir`` (or ``local``ly:
    --cores 2, no profile). ``while_running(proc)`` is called every 0.2 s until Snakemake ends. A job
    that can never start here stops the run at once (AssertionError naming it); so does ``timeout``."""
    code = checkout(workdir)
    env = dict(cluster.env, PYTHONPATH=str(code))
    where = ["--cores", "2"] if local else ["--executor", "slurm", "--profile", str(profile_dir)]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(code / "workflow" / "Snakefile"), "--directory",
           str(workdir), *where, "--workflow-profile", "none", *args]
    out = workdir / f"snakemake-{len(list(workdir.glob('snakemake-*.out')))}.out"
    with open(out, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=workdir)
        deadline, problem = time.monotonic() + timeout, None
        try:
            while proc.poll() is None:
                if while_running is not None:
                    while_running(proc)
                stuck = [line for line in cluster.squeue() if line.split()[-1] in NEVER_STARTS]
                if stuck or time.monotonic() > deadline:
                    problem = f"a job can never start here: {stuck}" if stuck else f"no end after {timeout} s"
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(60)
    text = out.read_text()
    assert problem is None, f"{problem}; {' '.join(cmd)}:\n{text[-4000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, text, "")


def run_id(output: str) -> str:
    found = re.search(r"SLURM run ID: (\S+)", output)
    assert found, "no 'SLURM run ID' in Snakemake's output: did the slurm executor run?\n" + output[-3000:]
    return found.group(1)


def one_file(workdir, pattern):
    """The file of ``workdir`` that ``pattern`` matches (None when none does; an error when several)."""
    found = list(workdir.glob(pattern))
    assert len(found) <= 1, found
    return found[0] if found else None


def weights(workdir) -> dict[str, torch.Tensor]:
    """The fine-tuned weights of a training workdir."""
    return read_checkpoint(one_file(workdir, FINETUNED))["model"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = time.monotonic()
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        running.start_s = time.monotonic() - started
        yield running


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dag-slurm")
    write_config(workdir, TINY)
    plan = snakemake(workdir, cluster, "-n")
    assert plan.returncode == 0, plan.stdout[-4000:]
    planned = planned_jobs(plan.stdout)
    started = time.monotonic()
    proc = snakemake(workdir, cluster, "--verbose")  # --verbose: the executor logs each sbatch call
    elapsed = time.monotonic() - started
    print(f"\nslurm: cluster started in {cluster.start_s:.1f} s, DAG ran in {elapsed:.1f} s; "
          f"jobs { {kind: len(jobs) for kind, jobs in planned.items()} }; Snakemake log in {workdir}; "
          f"daemons {cluster.root}")
    sbatch = re.findall(r"sbatch call: (sbatch [^\n]*)", proc.stdout)
    return {"workdir": workdir, "proc": proc, "planned": planned, "run_id": run_id(proc.stdout), "sbatch": sbatch}


def test_dag_runs_through_slurm(slurm_run, cluster):
    proc, workdir = slurm_run["proc"], slurm_run["workdir"]
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert sum(len(jobs) for jobs in slurm_run["planned"].values()) >= 5  # demo_data, 2 x extract, pca, ...
    assert len(list((workdir / "results" / "frames").glob("*/*/*.h5"))) == 2 * sum(TINY["demo"]["games"].values())
    assert one_file(workdir, "results/features/*/baidu_pca.h5")
    assert (workdir / "results" / "metrics.json").is_file()
    assert "Nothing to be done" in snakemake(workdir, cluster, "-n").stdout


def test_extraction_arrives_as_fewer_jobs_than_halves(slurm_run, cluster):
    halves = 2 * sum(TINY["demo"]["games"].values())
    rows = [row for row in cluster.sacct(SACCT_FIELDS, name=slurm_run["run_id"])
            if "extract" in slurm_run["planned"].get(job_kind(row["Comment"]), [[]])[0]]
    per_job = [len(slurm_run["planned"][job_kind(row["Comment"])][0]) for row in rows]
    print(f"\n{halves} halves extracted by {len(rows)} Slurm jobs: {[row['JobID'] for row in rows]}")
    size = profile()["group-components"]["extract"]
    assert len(rows) == -(-halves // size) < halves
    assert all(job_kind(row["Comment"]) == "rule_extract_extract" for row in rows)
    assert sum(per_job) == halves and all(row["State"] == "COMPLETED" for row in rows)


def test_every_job_went_through_sbatch_with_the_profile_resources(slurm_run, cluster):
    rows = cluster.sacct(SACCT_FIELDS, name=slurm_run["run_id"])
    print("\n" + "\n".join("|".join(row[f] for f in SACCT_FIELDS if f != "JobName") for row in rows))
    planned = slurm_run["planned"]
    assert collections.Counter(job_kind(row["Comment"]) for row in rows) == {k: len(v) for k, v in planned.items()}
    got = collections.defaultdict(list)
    for row in rows:
        assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0"), row
        assert (row["Account"], row["Partition"], row["NNodes"]) == (ACCOUNT, PARTITION, "1"), row
        asked = {"cpus": int(row["AllocCPUS"]), "mem_mb": int(row["ReqMem"].removesuffix("M")),
                 "runtime": minutes(row["Timelimit"])}
        assert asked["cpus"] <= profile()["cores"], row  # fits one node
        got[job_kind(row["Comment"])].append(asked)
    for kind, jobs in planned.items():
        if kind == f"rule_{jobs[0][0]}":  # one rule's jobs: its profile entry
            want = [expected_resources(members[0]) for members in jobs]
        elif all(len(set(members)) == 1 for members in jobs):  # groups of one rule's independent jobs
            want = [same_rule_group(members) for members in jobs]
        else:  # a group of several rules: within what its members can add up to
            assert len(jobs) == len(got[kind]) == 1, (kind, jobs)
            for key, (low, high) in group_bounds(jobs[0]).items():
                assert low <= got[kind][0][key] <= high, (key, jobs, got[kind])
            continue
        assert sorted(tuple(r.values()) for r in got[kind]) == sorted(tuple(r.values()) for r in want), kind


def test_sbatch_lines_carry_the_profile_resources(slurm_run):
    lines = slurm_run["sbatch"]
    kinds = [re.search(r"--comment '?(rule_[\w.]+?)(?:_wildcards_|'| )", line).group(1) for line in lines]
    assert collections.Counter(kinds) == {k: len(v) for k, v in slurm_run["planned"].items()}
    shown = set()
    for kind, line in zip(kinds, lines):
        if kind not in shown:
            shown.add(kind)
            print(f"\n{kind}: {line.split(' --wrap=')[0]}")
        for part in (f"-A {ACCOUNT}", f"-p {PARTITION}", "--ntasks=1"):
            assert part in line, (part, line)
        members = slurm_run["planned"][kind][0]
        if kind == f"rule_{members[0]}":  # one rule's job: exactly its profile entry
            want = expected_resources(members[0])
            for part in (f"-t {want['runtime']}", f"--mem {want['mem_mb']}", f"--cpus-per-task={want['cpus']}"):
                assert part in line, (part, line)
        assert "--gpus" not in line and "--ntasks-per-gpu" not in line, line


def test_slurm_keeps_each_jobs_log(slurm_run, cluster):
    """Slurm's log of a job: .snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log, and for a group
    job group_<group>_<rules>/<jobid>.log."""
    logs = slurm_run["workdir"] / ".snakemake" / "slurm_logs"
    for row in cluster.sacct(["JobID", "Comment"], name=slurm_run["run_id"]):
        kind = job_kind(row["Comment"])
        members = slurm_run["planned"][kind][0]
        folder = kind if kind == f"rule_{members[0]}" else "group_" + kind.removeprefix("rule_")
        found = list(logs.glob(f"{folder}/**/{row['JobID']}.log"))
        assert len(found) == 1, (row, sorted(p.relative_to(logs) for p in logs.rglob("*.log")))
        assert "Finished jobid" in found[0].read_text()


# --------------------------------------------------------------------------------------------------
# A training step on two nodes, and preempted


def training_workdir(source, workdir):
    """``workdir`` with the TRAINING config and the demo data and frames of the DAG run ``source``
    (copied with their times, so that only the fine-tuning step is to be run)."""
    workdir.mkdir(exist_ok=True)
    write_config(workdir, TRAINING)
    for part in ("resources", "results/frames"):
        shutil.copytree(source / part, workdir / part)
    return workdir


@pytest.fixture(scope="module")
def reference(slurm_run, cluster, tmp_path_factory):
    """The fine-tuning step locally, one process, uninterrupted: the weights both Slurm runs must reach."""
    workdir = training_workdir(slurm_run["workdir"], tmp_path_factory.mktemp("train-local"))
    plan = snakemake(workdir, cluster, "-n", *ONLY_FINETUNE, local=True)
    assert planned_jobs(plan.stdout) == {"rule_finetune": [["finetune"]]}, plan.stdout[-3000:]
    proc = snakemake(workdir, cluster, *ONLY_FINETUNE, local=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return workdir


def test_two_node_training_job_matches_one_process(slurm_run, reference, cluster, tmp_path):
    """finetune with ``nodes: 2`` through the executor: one Slurm job on both nodes, whose script
    srun's one torchrun per node (c10d rendezvous on the first node's NodeAddr), one rank each, gloo.

    The profile also asks ``tasks: 2``: the plugin gives a job without GPUs ``--ntasks=1``, and Slurm
    shrinks ``--nodes=2 --ntasks=1`` to one node; a GPU job gets no --ntasks (one task per node,
    Slurm's default), so real clusters need nothing of the kind.

    Equal to the 1-process run to 1e-5, not bitwise: each rank averages the loss over its 2 clips and
    DDP averages the 2 ranks' gradients (sum, then / 2), where one process averages 4 clips at once;
    the float sums run in another order, which changes the last bits of each gradient, and 100 AdamW
    steps carry those differences into the weights (4e-8 at most here; test_train's DDP test: the same
    on one machine)."""
    ci = profile()
    ci["set-resources"]["finetune"] = {**ci["set-resources"]["finetune"], "nodes": 2, "tasks": 2}
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(yaml.safe_dump(ci))
    workdir = training_workdir(slurm_run["workdir"], tmp_path / "work")
    plan = snakemake(workdir, cluster, "-n", *ONLY_FINETUNE, profile_dir=tmp_path / "profile")
    assert planned_jobs(plan.stdout) == {"rule_finetune": [["finetune"]]}, plan.stdout[-3000:]

    proc = snakemake(workdir, cluster, *ONLY_FINETUNE, profile_dir=tmp_path / "profile")
    assert proc.returncode == 0, proc.stdout[-4000:] + one_file(workdir, FINETUNE_LOG).read_text()[-4000:]
    (job,) = cluster.sacct(["JobID", "State", "NNodes", "NodeList"], name=run_id(proc.stdout))
    steps = cluster.sacct(["JobID", "NNodes", "NTasks", "NodeList", "State"], job=job["JobID"], steps=True)
    print(f"\n2-node job: {job}\nsteps: {steps}")
    assert (job["State"], job["NNodes"]) == ("COMPLETED", "2"), job
    # The torchrun step: one task on each node.
    assert any(s["NNodes"] == "2" and s["NTasks"] == "2" and s["State"] == "COMPLETED" for s in steps), steps
    state = torch.load(one_file(workdir, FINETUNE_STATE), weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # both ranks' RNG states: both trained
    one, two = weights(reference), weights(workdir)
    assert one.keys() == two.keys()
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"largest weight difference, 2 ranks vs 1 process: {worst:.2e}")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=lambda m: f"{key}: {m}")


def test_preempted_training_job_resumes_mid_epoch_to_the_same_weights(slurm_run, reference, cluster, tmp_path):
    """finetune on one node; once its first periodic checkpoint shows it training, `scancel
    --signal=TERM` (what Slurm sends at a preemption, and before a time limit with --signal): every
    process of the job step gets it; Snakemake's own waits for the stage, which finishes its iteration,
    writes a mid-epoch last.pt and exits (128 + 15); Snakemake (--retries 1) submits the job again, and
    the new job resumes at that very iteration and ends with the weights of the uninterrupted run, bit
    for bit (CPU, 1 process). The retry rewrites the stage's log: the first one is read while the
    retry waits in the queue."""
    workdir = training_workdir(slurm_run["workdir"], tmp_path)
    signalled, stopped = [], []

    def signal_when_training(proc):
        if not signalled and one_file(workdir, FINETUNE_STATE):
            jobs = cluster.squeue(states="R")
            assert len(jobs) == 1, jobs
            signalled.append(jobs[0].split()[0])
            cluster.run(["scancel", "--signal=TERM", signalled[0]])
        elif signalled and not stopped and "received; stopped" in (text := one_file(workdir, FINETUNE_LOG).read_text()):
            stopped.append(text)

    proc = snakemake(workdir, cluster, *ONLY_FINETUNE, "--retries", "1", while_running=signal_when_training)
    log, state_file = one_file(workdir, FINETUNE_LOG).read_text(), one_file(workdir, FINETUNE_STATE)
    assert proc.returncode == 0, proc.stdout[-4000:] + log[-4000:]
    assert signalled, "the job ended before its first checkpoint"
    rows = cluster.sacct(["JobID", "State", "ExitCode"], name=run_id(proc.stdout))
    print(f"\njobs: {rows}\nfirst job's stage log:\n{stopped[0] if stopped else '(not seen)'}\nretry's:\n{log}")
    assert [(row["JobID"], row["State"]) for row in rows] == [(signalled[0], "FAILED"), (rows[1]["JobID"], "COMPLETED")]
    slurm_log = next((workdir / ".snakemake/slurm_logs/rule_finetune").glob(f"**/{signalled[0]}.log")).read_text()
    assert "Will exit after finishing currently running jobs" in slurm_log, slurm_log[-3000:]  # SIGTERM: waits
    assert stopped, "the first job's stage log never said it stopped on the signal"
    state = state_file.relative_to(workdir)
    stop = re.search(rf"finetune: SIGTERM received; stopped in epoch (\d)/2 after iteration (\d+)/50 and wrote "
                     rf"{state}", stopped[0])
    assert stop, stopped[0]
    # The retry: from that very iteration (not from the periodic checkpoint before it).
    assert f"finetune: resumed from {state} in epoch {stop.group(1)}/2 after iteration {stop.group(2)}/50" in log
    assert 0 < int(stop.group(2)) < 50
    one, resumed = weights(reference), weights(workdir)
    assert one.keys() == resumed.keys()
    assert all(torch.equal(one[key], resumed[key]) for key in one)


def test_daemons_stop_by_pid(cluster):  # keep last: it stops the cluster of this module
    pids = cluster.pids
    assert set(pids) == {"munged", "mariadbd", "slurmdbd", "slurmctld", *(f"slurmd:{node}" for node in NODES)}
    assert all(cluster.running().values())
    cluster.stop()
    assert not any(cluster.running().values())
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
