"""The config schema and `comedian validate-config`; `comedian <stage> --help` for every stage."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from comedian import config
from comedian.cli import STAGES, main
from comedian.errors import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["config.yaml", "soccernet.yaml"])
def test_shipped_configs_are_valid(name):
    loaded = config.load(REPO / "config" / name)
    assert loaded["dataset"]["classes"][0] == "Penalty" and len(loaded["dataset"]["classes"]) == 17


def minimal():
    return {"dataset": {"root": "x", "splits": {"train": "a", "valid": "b", "test": "c"}},
            "extract": {}, "pca": {}, "tracking": {}}


def test_defaults_are_filled():
    filled = config.validate(minimal())
    assert filled["pca"]["dims"] == 512 and filled["extract"]["fps"] == 2.0 and filled["demo"] is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["pca"].update(dims="many"), "pca.dims: 'many' is not of type 'integer'"),
        (lambda c: c["pca"].update(dims=0), "pca.dims: 0 is less than the minimum of 1"),
        (lambda c: c["extract"].update(speed=2), "extract: Additional properties are not allowed ('speed'"),
        (lambda c: c.update(extra={}), "<top level>: Additional properties are not allowed ('extra'"),
        (lambda c: c["dataset"].pop("root"), "dataset: 'root' is a required property"),
    ],
)
def test_bad_configs_name_the_field(edit, message):
    bad = minimal()
    edit(bad)
    with pytest.raises(InputError) as err:
        config.validate(bad, "my.yaml")
    assert str(err.value).startswith(f"my.yaml: {message}")


def test_validate_config_cli(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    assert main(["validate-config", str(path)]) == 0
    path.write_text("pca: [unclosed")
    assert main(["validate-config", str(path)]) == 1
    assert "not valid YAML" in capsys.readouterr().err


def test_every_stage_has_help():
    for stage in STAGES:
        proc = subprocess.run([sys.executable, "-m", "comedian", stage, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, (stage, proc.stderr)
        assert f"comedian {stage}" in proc.stdout


def test_unknown_stage(capsys):
    assert main(["nope"]) == 2
    assert "unknown stage 'nope'" in capsys.readouterr().err
