"""comedian.provenance: commit and dirty tree, stack versions, machine, input fingerprints."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from comedian import provenance


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return repo


def test_clean_tree(repo):
    state = provenance.git_state(repo)
    assert state == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False, "diff_sha256": None, "untracked": 0}


def test_dirty_tree_is_flagged_with_a_digest_of_the_difference(repo):
    (repo / "a.py").write_text("x = 2\n")
    first = provenance.git_state(repo)
    assert first["dirty"] is True and len(first["diff_sha256"]) == 64
    (repo / "a.py").write_text("x = 3\n")
    second = provenance.git_state(repo)
    assert second["dirty"] is True and second["diff_sha256"] != first["diff_sha256"]
    assert second["commit"] == first["commit"]
    (repo / "a.py").write_text("x = 1\n")
    (repo / "new.py").write_text("y = 1\n")  # an untracked file alone makes the tree dirty
    third = provenance.git_state(repo)
    assert third["dirty"] is True and third["untracked"] == 1
    (repo / "new.py").write_text("y = 2\n")
    assert provenance.git_state(repo)["diff_sha256"] != third["diff_sha256"]


def test_outside_a_checkout(tmp_path):
    assert provenance.git_state(tmp_path) == {"commit": "unknown", "dirty": None, "diff_sha256": None,
                                              "untracked": None}


def test_stack_versions_are_the_installed_ones():
    stack = provenance.stack_versions()
    for name in ("torch", "torchvision", "timm", "numpy", "snakemake", "mlflow", "h5py"):
        assert stack[name] == metadata.version(name)
    import platform

    import torch

    assert stack["python"] == platform.python_version()
    assert stack["torch_cuda"] == torch.version.cuda
    assert stack["ffmpeg"].startswith("ffmpeg version ")


def test_machine():
    found = provenance.machine()
    assert found["cpu"] and found["cpu_count"] >= 1 and found["memory_bytes"] > 0
    assert isinstance(found["gpus"], list)  # empty without an NVIDIA driver


def test_inputs_fingerprint_names_and_sizes(tmp_path):
    root = tmp_path / "data"
    (root / "g1").mkdir(parents=True)
    (root / "g1" / "Labels-v2.json").write_text("{}")
    (root / "g1" / "1.npy").write_bytes(b"\0" * 10)
    split = tmp_path / "test.txt"
    split.write_text("g1\n")
    config = {"dataset": {"root": str(root), "splits": {"test": str(split), "valid": str(tmp_path / "none.txt")}}}
    found = provenance.inputs(config)
    assert found["data"]["files"] == 2 and found["data"]["bytes"] == 12
    assert found["splits"]["test"]["sha256"] == provenance.file_digest(split)
    assert found["splits"]["valid"]["sha256"] is None  # a list that does not exist (yet)
    (root / "g1" / "1.npy").write_bytes(b"\0" * 10)  # same name and size: same fingerprint
    assert provenance.inputs(config)["data"]["sha256"] == found["data"]["sha256"]
    (root / "g1" / "1.npy").write_bytes(b"\0" * 11)
    assert provenance.inputs(config)["data"]["sha256"] != found["data"]["sha256"]


def test_config_digest_ignores_key_order():
    assert provenance.config_digest({"a": 1, "b": {"c": 2, "d": 3}}) == provenance.config_digest(
        {"b": {"d": 3, "c": 2}, "a": 1})
    assert provenance.config_digest({"a": 1}) != provenance.config_digest({"a": 2})


def test_collect_and_tags(repo):
    found = provenance.collect({"dataset": {"splits": {}}}, repo=repo)
    json.dumps(found)  # JSON-able as it is
    tags = provenance.tags(found)
    assert tags["comedian.provenance.git.commit"] == _git(repo, "rev-parse", "HEAD")
    assert tags["comedian.provenance.stack.torch"] == metadata.version("torch")
    assert tags["comedian.provenance.config_sha256"] == found["config_sha256"]
    assert provenance.summary(found) == {"commit": found["git"]["commit"], "dirty": False, "diff_sha256": None,
                                         "config_sha256": found["config_sha256"]}


def test_current_summary_prefers_the_pipeline_s(monkeypatch):
    monkeypatch.setenv(provenance.ENV_SUMMARY, json.dumps({"commit": "abc", "config_sha256": "d"}))
    assert provenance.current_summary() == {"commit": "abc", "config_sha256": "d"}
    monkeypatch.delenv(provenance.ENV_SUMMARY)
    assert provenance.current_summary()["commit"] == provenance.git_state()["commit"]
