"""The tiny demo DAG through a real Slurm: `snakemake --executor slurm --profile profiles/ci-slurm`.

Starts a single-node Slurm with accounting on this machine (tests/slurm_cluster.py; needs root and
.ci/slurm-setup.sh), runs the default target of the tiny config of test_workflow.py from a copy of
the checkout, checks in Slurm's accounting that every job went through sbatch with the resources of
the CI profile and completed, then stops the daemons it started, by PID.

`pytest -m slurm` runs it (the marker is deselected by default): ~95 s on 2 cores, ~5 s of it to
start the cluster.
"""

import collections
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from slurm_cluster import ACCOUNT, PARTITION, SlurmCluster
from test_workflow import REPO, TINY, write_config

pytestmark = pytest.mark.slurm

PROFILE = REPO / "profiles" / "ci-slurm"
RUN_TIMEOUT_S = 1800  # generous: the DAG grows with the pipeline
SACCT_FIELDS = ["JobID", "JobName", "Comment", "State", "ExitCode", "ReqMem", "Timelimit", "AllocCPUS",
                "Account", "Partition"]


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


def rule_of(comment: str) -> str:
    """The executor's job comment, rule_<rule>[_wildcards_<values>] -> rule."""
    assert comment.startswith("rule_"), comment
    return comment[len("rule_"):].split("_wildcards_")[0]


def snakemake(workdir, cluster, *args, timeout=RUN_TIMEOUT_S):
    """Snakemake on ``workdir`` through the CI profile, with a copy of the checkout in workdir/checkout."""
    checkout = workdir / "checkout"
    if not checkout.exists():
        for part in ("comedian", "workflow", "envs"):
            shutil.copytree(REPO / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(cluster.env, PYTHONPATH=str(checkout))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(checkout / "workflow" / "Snakefile"),
           "--directory", str(workdir), "--executor", "slurm", "--profile", str(PROFILE),
           "--workflow-profile", "none", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)


def submitted_rules(dry_run_output: str) -> collections.Counter:
    """rule -> jobs of a dry run that the executor submits (not the local ones, not those without a command)."""
    counts = collections.Counter()
    for block in re.split(r"\n(?=\[[^\n]*\]\n(?:local)?rule )", dry_run_output):
        head = re.search(r"^\[[^\n]*\]\n(local)?rule (\w+):", block, re.M)
        if head and not head.group(1) and "Shell command: None" not in block:
            counts[head.group(2)] += 1
    return counts


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
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    planned = submitted_rules(plan.stdout)
    started = time.monotonic()
    proc = snakemake(workdir, cluster, "--verbose")  # --verbose: the executor logs each sbatch call
    elapsed = time.monotonic() - started
    (workdir / "snakemake.out").write_text(proc.stdout + proc.stderr)
    run_id = re.search(r"SLURM run ID: (\S+)", proc.stdout + proc.stderr)
    print(f"\nslurm: cluster started in {cluster.start_s:.1f} s, DAG ran in {elapsed:.1f} s; "
          f"jobs {dict(planned)}; Snakemake log {workdir / 'snakemake.out'}; daemons {cluster.root}")
    sbatch = re.findall(r"sbatch call: (sbatch [^\n]*)", proc.stdout + proc.stderr)
    return {"workdir": workdir, "proc": proc, "planned": planned, "run_id": run_id and run_id.group(1),
            "sbatch": sbatch}


def test_dag_runs_through_slurm(slurm_run, cluster):
    proc, workdir = slurm_run["proc"], slurm_run["workdir"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert slurm_run["run_id"], "no 'SLURM run ID' in Snakemake's output: did the slurm executor run?"
    assert sum(slurm_run["planned"].values()) >= 8  # demo_data, 6 x extract, pca at least
    assert len(list((workdir / "results" / "frames").glob("*/*.h5"))) == 2 * sum(TINY["demo"]["games"].values())
    assert (workdir / "results" / "features" / "baidu_pca.h5").is_file()
    assert "Nothing to be done" in snakemake(workdir, cluster, "-n").stdout


def test_every_job_went_through_sbatch_with_the_profile_resources(slurm_run, cluster):
    rows = cluster.sacct(SACCT_FIELDS, name=slurm_run["run_id"])
    print("\n" + "\n".join("|".join(row[f] for f in SACCT_FIELDS if f != "JobName") for row in rows))
    assert collections.Counter(rule_of(row["Comment"]) for row in rows) == slurm_run["planned"]
    for row in rows:
        want = expected_resources(rule_of(row["Comment"]))
        assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0"), row
        assert row["ReqMem"] == f"{want['mem_mb']}M", row
        assert minutes(row["Timelimit"]) == want["runtime"], row
        assert int(row["AllocCPUS"]) == want["cpus"], row
        assert (row["Account"], row["Partition"]) == (ACCOUNT, PARTITION), row


def test_sbatch_lines_carry_the_profile_resources(slurm_run):
    lines = slurm_run["sbatch"]
    rules = [re.search(r"--comment '?rule_(\w+?)(?:_wildcards_|'| )", line).group(1) for line in lines]
    assert collections.Counter(rules) == slurm_run["planned"]
    shown = set()
    for rule, line in zip(rules, lines):
        want = expected_resources(rule)
        if rule not in shown:
            shown.add(rule)
            print(f"\n{rule}: {line.split(' --wrap=')[0]}")
        for part in (f"-A {ACCOUNT}", f"-p {PARTITION}", f"-t {want['runtime']}", f"--mem {want['mem_mb']}",
                     "--ntasks=1", f"--cpus-per-task={want['cpus']}"):
            assert part in line, (part, line)
        assert "--gpus" not in line and "--ntasks-per-gpu" not in line, line


def test_slurm_keeps_each_jobs_log(slurm_run, cluster):
    logs = slurm_run["workdir"] / ".snakemake" / "slurm_logs"
    for row in cluster.sacct(["JobID", "Comment"], name=slurm_run["run_id"]):
        found = list(logs.glob(f"rule_{rule_of(row['Comment'])}/**/{row['JobID']}.log"))
        assert len(found) == 1, (row, sorted(p.relative_to(logs) for p in logs.rglob("*.log")))
        assert "Finished jobid" in found[0].read_text()


def test_daemons_stop_by_pid(cluster):  # keep last: it stops the cluster of this module
    pids = cluster.pids
    assert set(pids) == {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"}
    assert all(cluster.running().values())
    cluster.stop()
    assert not any(cluster.running().values())
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
