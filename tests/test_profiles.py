"""The Snakemake profiles: the workflow profile (profiles/default: what each rule needs), the example
cluster profile (profiles/slurm, copied to ~/.config/snakemake/slurm by users) and the CI profile of
`pytest -m slurm` (profiles/ci-slurm). No cluster here: the Slurm executor plugin's own command
builder, and a run of the README's `snakemake --profile slurm` whose sbatch only records its
arguments, show the sbatch lines the profiles produce.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from slurm_cluster import ACCOUNT, PARTITION
from test_workflow import REPO, TINY, write_config

PROFILES = REPO / "profiles"
GPU_RULES = ("pretrain_spatial", "pretrain_temporal", "finetune", "predict")
TRAINING_RULES = GPU_RULES[:3]
# Resources that make the executor start several copies of a job's script, or claim GPUs indirectly
# (a multi-node training rule's `gres: gpu:N` is its GPUs per node, checked below), or that would
# replace the user profile's slurm_extra (the --signal of the example).
FORBIDDEN = {"tasks", "tasks_per_gpu", "tasks_per_node", "mpi", "gres", "gpu_model", "slurm_extra"}


def load(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def per_rule(profile: dict) -> dict[str, dict]:
    """rule -> {"threads": n, **resources} of a profile's set-threads / set-resources."""
    rules = set(profile.get("set-threads", {})) | set(profile.get("set-resources", {}))
    return {r: {"threads": profile.get("set-threads", {}).get(r), **profile.get("set-resources", {}).get(r, {})}
            for r in rules}


def snakemake(workdir, *args, env=None, cwd=None):
    """Snakemake on the checkout's workflow (not copied: nothing here edits it), working in ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory",
           str(workdir), *args]
    env = dict(env or os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd or workdir)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("profiles")
    write_config(workdir, TINY)
    return workdir


@pytest.fixture(scope="module")
def workflow_rules(tiny):
    proc = snakemake(tiny, "--list-rules", "--workflow-profile", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()} - {"all"}


def test_profiles_parse_and_keep_to_their_keys():
    default, slurm, ci = load("default"), load("slurm"), load("ci-slurm")
    # The workflow profile is read last and replaces whole keys of the user's profile: per-rule keys only.
    assert set(default) == {"set-threads", "set-resources"}
    # In the user's profile these would be replaced by the workflow profile's, hence ignored.
    assert not {"set-threads", "set-resources"} & set(slurm)
    for profile in (slurm, ci):
        assert profile["executor"] == "slurm"
        assert {"slurm_account", "mem_mb", "runtime"} <= set(profile["default-resources"])
        assert {"jobs", "retries", "latency-wait", "rerun-incomplete"} <= set(profile)
        assert profile["group-components"]["extract"] > 1
    # The example's partitions come from partitions.yaml beside it: one for CPU jobs, one for GPU jobs.
    assert "slurm_partition" not in slurm["default-resources"]
    assert slurm["slurm-partition-config"] == "partitions.yaml"
    assert {name: p["max_gpu"] for name, p in partitions().items()} == {"my_cpu_partition": 0, "my_gpu_partition": 8}
    # SIGTERM before the time limit (the training steps checkpoint on it), and retries that resume them.
    assert slurm["default-resources"]["slurm_extra"] == "'--signal=TERM@300'" and slurm["retries"] >= 2
    assert (ci["default-resources"]["slurm_account"], ci["default-resources"]["slurm_partition"]) == (ACCOUNT, PARTITION)


def partitions() -> dict:
    return yaml.safe_load((PROFILES / "slurm" / "partitions.yaml").read_text())["partitions"]


@pytest.mark.parametrize("name", ["default", "ci-slurm"])
def test_every_rule_is_sized(name):
    for rule, needs in per_rule(load(name)).items():
        assert isinstance(needs["threads"], int) and needs["threads"] >= 1, (name, rule)
        assert isinstance(needs.get("mem_mb"), int) and needs["mem_mb"] > 0, (name, rule)
        assert isinstance(needs.get("runtime"), int) and needs["runtime"] > 0, (name, rule)  # minutes
        assert not FORBIDDEN & set(needs), (name, rule)
        # Nodes x GPUs per node, one line each, for the training rules only.
        assert (needs.get("nodes") == 1) == (name == "default" and rule in TRAINING_RULES), (name, rule)


def test_profiles_name_exactly_the_workflow_rules(workflow_rules):
    default, ci = per_rule(load("default")), per_rule(load("ci-slurm"))
    assert set(default) == workflow_rules, "profiles/default must size every rule of the workflow, and no other"
    assert set(ci) == set(default), "profiles/ci-slurm must name the rules of profiles/default"


def test_only_the_gpu_rules_ask_for_a_gpu():
    default = per_rule(load("default"))
    assert set(GPU_RULES) <= set(default)
    for rule, needs in default.items():
        if rule in GPU_RULES:
            assert isinstance(needs.get("gpu"), int) and needs["gpu"] >= 1, rule
        else:
            assert "gpu" not in needs, rule
    # The CI node has no GPU: 0 for the GPU rules (overrides a default the rule may declare), none elsewhere.
    ci = per_rule(load("ci-slurm"))
    assert all(ci[rule].get("gpu") == 0 for rule in GPU_RULES)
    assert not any("gpu" in needs for rule, needs in ci.items() if rule not in GPU_RULES)
    # The example's defaults apply to CPU rules too.
    assert "gpu" not in load("slurm")["default-resources"] and "gpu" not in load("ci-slurm")["default-resources"]


def test_profiles_are_accepted_by_snakemake(tiny):
    for args in (["--profile", str(PROFILES / "slurm"), "--workflow-profile", str(PROFILES / "default")],
                 ["--profile", str(PROFILES / "ci-slurm"), "--workflow-profile", "none"]):
        proc = snakemake(tiny, "-n", *args)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "demo_data" in proc.stdout


class _Resources(dict):
    """A job's resources as the plugin reads them: .get() and attributes."""

    __getattr__ = dict.__getitem__


def _resource_value(value):
    """A profile's resource as Snakemake reads it: a Python expression, else the plain string."""
    try:
        return eval(value, {}) if isinstance(value, str) else value
    except (NameError, SyntaxError):
        return value


def sbatch_line(rule: str, **changes) -> str:
    """The sbatch command the Slurm executor plugin builds for one job of ``rule`` under the example
    profile: its default-resources (Python expressions, as Snakemake evaluates them), overridden by the
    workflow profile's entries for the rule, then by ``changes`` (``threads`` too; None removes a key);
    the partition chosen from partitions.yaml as the plugin does."""
    from snakemake_executor_plugin_slurm import ExecutorSettings
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    slurm, default = load("slurm"), {**per_rule(load("default"))[rule], **changes}
    defaults = {k: _resource_value(v) for k, v in slurm["default-resources"].items()}
    resources = _Resources(defaults, **{k: v for k, v in default.items() if k != "threads" and v is not None})
    job = SimpleNamespace(name=rule, threads=default["threads"], resources=resources, wildcards={},
                          is_group=lambda: False)
    partition = get_best_partition(read_partition_file(PROFILES / "slurm" / slurm["slurm-partition-config"]), job,
                                   SimpleNamespace(info=print, debug=print, warning=print))
    # The profile's slurm-* keys are the plugin's settings: constructing them validates their names.
    settings = ExecutorSettings(**{k[len("slurm-"):].replace("-", "_"): v for k, v in slurm.items()
                                   if k.startswith("slurm-") and k != "slurm-partition-config"})
    params = {"run_uuid": "RUN", "slurm_logfile": f".snakemake/slurm_logs/rule_{rule}/%j.log",
              "comment_str": f"rule_{rule}", "workdir": "/work",
              "account": f" -A {shlex.quote(resources['slurm_account'])}", "partition": f" -p {partition}"}
    return get_submit_command(job, params, settings=settings) + set_gres_string(job)


@pytest.mark.parametrize("rule", GPU_RULES)
def test_sbatch_line_of_a_gpu_job(rule):
    default, slurm = per_rule(load("default"))[rule], load("slurm")["default-resources"]
    line = sbatch_line(rule)
    print(f"\n{rule}: {line}")
    args = shlex.split(line)
    assert f"--gpus={default['gpu']}" in args
    assert not any(a.startswith(("--ntasks", "--gres")) for a in args), line  # one copy of the script
    assert [a for a in args if a.startswith("--nodes")] == (["--nodes=1"] if rule in TRAINING_RULES else [])
    assert f"--cpus-per-task={default['threads']}" in args and "--signal=TERM@300" in args
    for flag, value in [("-A", slurm["slurm_account"]), ("-p", "my_gpu_partition"),
                        ("--mem", default["mem_mb"]), ("-t", default["runtime"])]:
        assert args[args.index(flag) + 1] == str(value), (flag, line)


@pytest.mark.parametrize("rule", ["extract", "pca", "report"])
def test_cpu_jobs_go_to_the_cpu_partition(rule):
    args = shlex.split(sbatch_line(rule))
    assert args[args.index("-p") + 1] == "my_cpu_partition" and not any("gpu" in a for a in args)


#: The README's 2-node x 4-GPU step 1 (profiles/default/config.yaml's comment), 32 cores per node.
TWO_BY_FOUR = {"nodes": 2, "gpu": None, "gres": "gpu:4", "threads": 32, "mem_mb": 256000, "runtime": 720}


def test_sbatch_line_of_a_two_node_four_gpu_job():
    line = sbatch_line("pretrain_spatial", **TWO_BY_FOUR)
    print(f"\npretrain_spatial 2x4: {line}")
    args = shlex.split(line)
    # GPUs counted per node, one task (Slurm's default with --nodes) of 32 cores per node.
    for part in ("--nodes=2", "--gres=gpu:4", "--cpus-per-task=32", "--signal=TERM@300"):
        assert part in args, (part, line)
    assert not any(a.startswith(("--gpus", "--ntasks")) for a in args), line
    assert args[args.index("-p") + 1] == "my_gpu_partition" and args[args.index("--mem") + 1] == "256000"


def test_two_node_job_starts_one_torchrun_per_node_with_each_ranks_share_of_the_cores(tiny):
    """Dry run (-p prints the shell commands) with the 2x4 sizes: srun one task per node; each a torchrun
    of 4 ranks joining a c10d rendezvous on the first node; each rank 32 / 4 = 8 cores (7 workers)."""
    resources = [f"pretrain_spatial:{k}={v}" for k, v in TWO_BY_FOUR.items() if k not in ("threads", "gpu")]
    proc = snakemake(tiny, "-n", "-p", "--cores", "32", "--workflow-profile", str(PROFILES / "default"), "--set-threads",
                     "pretrain_spatial=32", "--set-resources", "pretrain_spatial:gpu=0", *resources,
                     "--forcerun", "pretrain_spatial")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    commands = [line.removeprefix("Shell command: ") for line in proc.stdout.splitlines() if " pretrain-spatial " in line]
    assert commands, proc.stdout[-3000:]
    command = commands[0]
    print(f"\n{command}")
    args = shlex.split(command)
    # First the job step's SLURM_* view goes (srun would take it for the allocation: one node), then srun.
    start = args.index("exec")
    assert args[0] == "for" and "compgen -v SLURM_" in command.split("exec srun")[0], command
    assert args[start:start + 7] == ["exec", "srun", "--overlap", "--nodes=2", "--ntasks-per-node=1",
                                     "--cpus-per-task=32", "--kill-on-bad-exit=1"], command
    node = args[args.index("-c") + 1]
    for part in ("torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d", '--rdzv-id "$SLURM_JOB_ID"',
                 'scontrol show hostnames "$SLURM_JOB_NODELIST"', '"is_host=$((SLURM_NODEID == 0))"'):
        assert part in node, (part, node)
    assert args[args.index("--workers") + 1] == "7" and args[args.index("--threads") + 1] == "1"
    # One node, one GPU: the stage itself, exec-ed (a signal reaches it, not a shell).
    single = snakemake(tiny, "-n", "-p", "--cores", "32", "--workflow-profile", str(PROFILES / "default"),
                       "--forcerun", "pretrain_spatial")
    line = next(line for line in single.stdout.splitlines() if " pretrain-spatial " in line)
    assert line.removeprefix("Shell command: ").startswith("exec python -m comedian pretrain-spatial"), line
    assert "--workers 7 " in line and "--threads 1 " in line


SHIM = """#!{python}
# Test shim of `{name}`: records its arguments; sbatch refuses every submission.
import json, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(["{name}", *sys.argv[1:]]) + "\\n")
if "{name}" == "sacctmgr":
    print({account!r})
    sys.exit(0)
print("{name}: test shim, no cluster here", file=sys.stderr)
sys.exit(1)
"""


def test_readme_command_submits_with_the_profiles(tiny, tmp_path):
    """`snakemake --profile slurm` from the repository root, the example profile copied to
    ~/.config/snakemake/slurm: the workflow profile is found by itself, and sbatch gets the rule's
    resources with the example's account and partition. sbatch is a shim that records and refuses."""
    config_home, shims, log = tmp_path / "config", tmp_path / "bin", tmp_path / "calls.jsonl"
    shutil.copytree(PROFILES / "slurm", config_home / "snakemake" / "slurm")
    shims.mkdir()
    account = load("slurm")["default-resources"]["slurm_account"]
    for name in ("sbatch", "sacct", "sacctmgr", "squeue", "scontrol", "sinfo", "scancel", "sshare", "srun"):
        (shims / name).write_text(SHIM.format(python=sys.executable, name=name, log=str(log), account=account))
        (shims / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(XDG_CONFIG_HOME=str(config_home), PATH=f"{shims}{os.pathsep}{env['PATH']}")
    # (The first status check would wait 40 s after the refused submission: 1 s is enough here.)
    proc = snakemake(tiny, "--profile", "slurm", "--slurm-init-seconds-before-status-checks", "1", env=env, cwd=REPO)
    assert proc.returncode != 0  # every submission was refused
    assert "workflow specific profile profiles/default" in proc.stderr
    calls = [json.loads(line) for line in (log.read_text() if log.exists() else "").splitlines()]
    # demo_data's submissions (the manifest job, which needs no input, is submitted beside it)
    submitted = [call for call in calls if call[0] == "sbatch" and "rule_demo_data" in " ".join(call)]
    assert len(submitted) == 1 + load("slurm")["retries"], proc.stdout[-2000:] + proc.stderr[-2000:]
    line = " ".join(submitted[0][1:])
    print(f"\ndemo_data: {line}")
    needs, slurm = per_rule(load("default"))["demo_data"], load("slurm")["default-resources"]
    assert "--comment rule_demo_data" in line
    for part in (f"-A {slurm['slurm_account']}", "-p my_cpu_partition", f"-t {needs['runtime']}",
                 f"--mem {needs['mem_mb']}", "--ntasks=1", f"--cpus-per-task={needs['threads']}"):
        assert part in line, (part, line)
    assert "--gpus" not in line
