"""The pinned stack: requirements/lock.txt, envs/comedian.yaml and pyproject.toml agree; CI installs it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lock", REPO / "requirements" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)

INSTALL = 'pip install -r requirements/lock.txt -e ".[test]" && pip install --no-deps "SoccerNet==0.2.0"'


def test_conda_env_pins_the_lock():
    python, pins = lock.read_lock()
    env = yaml.safe_load(lock.CONDA_ENV.read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert f"python={python}" in conda
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {}
    for line in pip_lines:
        name, sep, version = line.partition("==")
        assert sep, f"envs/comedian.yaml: {line!r} is not pinned with =="
        conda_pins[canonicalize_name(name)] = version
    assert conda_pins == pins


def test_lock_pins_every_dependency_within_its_range():
    _, pins = lock.read_lock()
    assert pins, "requirements/lock.txt is empty"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pins.values()), "a pin is not an exact version"
    for requirement in lock.project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements/lock.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"lock {pins[name]} outside {requirement}"
    assert "comedian" not in pins and "soccernet" not in pins


def test_pyproject_keeps_floating_ranges():
    for requirement in lock.project_requirements():
        assert not any(spec.operator in {"==", "==="} for spec in requirement.specifier), str(requirement)


def test_ci_and_readme_install_from_the_lock():
    assert INSTALL in (REPO / ".ci" / "run").read_text()
    assert INSTALL in (REPO / "README.md").read_text()
    header = (REPO / "requirements" / "lock.txt").read_text().splitlines()[1]
    assert INSTALL in header


def test_lock_is_what_this_environment_gives():
    """The generator's own logic on this environment: the pins it would write are those committed
    (for a project dependency: the installed version), each a real Requirement."""
    _, committed = lock.read_lock()
    generated = {canonicalize_name(Requirement(line).name): line.partition("==")[2] for line in lock.pins()}
    direct = {canonicalize_name(r.name) for r in lock.project_requirements()}
    assert {n: generated[n] for n in direct} == {n: committed[n] for n in direct}
