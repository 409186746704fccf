"""Load and validate the pipeline's YAML config against its JSON schema, before any job starts.

The schema (``comedian/schemas/config.schema.yaml``) is the single description of every key: its type,
range, default, and which stage uses it. Snakemake's ``common.smk`` calls :func:`validate` at parse
time; ``comedian validate-config FILE`` does the same from the shell.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from comedian.errors import InputError


def schema() -> dict[str, Any]:
    """The config's JSON schema as a dict."""
    return yaml.safe_load(resources.files("comedian").joinpath("schemas/config.schema.yaml").read_text())


def _fill_defaults(node: dict[str, Any], spec: dict[str, Any]) -> None:
    """Insert the schema's ``default:`` values for absent keys, recursively through objects; an absent
    section (an object without a default of its own) is created and filled with its defaults."""
    for key, sub in spec.get("properties", {}).items():
        if key not in node and "default" in sub:
            node[key] = yaml.safe_load(yaml.safe_dump(sub["default"]))
        elif key not in node and sub.get("type") == "object":
            node[key] = {}
        if isinstance(node.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(node[key], sub)


def _field(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Fill defaults into ``config`` in place and validate it; raise :class:`InputError` naming the field.

    Unknown keys are rejected (every object in the schema has ``additionalProperties: false``).
    """
    from jsonschema import Draft202012Validator

    if not isinstance(config, dict):
        raise InputError(f"{source}: the config must be a mapping of sections")
    spec = schema()
    _fill_defaults(config, spec)
    errors = sorted(Draft202012Validator(spec).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"{source}: {_field(first.absolute_path)}: {first.message}{more}")
    check_consistency(config, source)
    return config


def check_consistency(config: dict[str, Any], source: str = "config") -> None:
    """Rules across sections that a JSON schema cannot say; InputError naming the keys.

    - No training on an evaluated split (``evaluate.splits`` against ``pretrain_temporal.train_splits`` and
      ``finetune.train_splits``), and no checkpoint picked on valid (``finetune.select: best_valid``) when
      valid is trained on or evaluated.
    - ``report.split`` is one of ``evaluate.splits`` (no report without an evaluated split).
    - A demo's halves hold at least one window (``model.frames`` frames at ``extract.fps``).
    """
    evaluated = config["evaluate"]["splits"]
    for section in ("pretrain_temporal", "finetune"):
        for split in config[section]["train_splits"]:
            if split in evaluated:
                raise InputError(f"{source}: {section}.train_splits: {split!r} is also in evaluate.splits "
                                 f"(training on the evaluated split)")
    finetune = config["finetune"]
    if finetune["select"] == "best_valid":
        if "valid" in finetune["train_splits"]:
            raise InputError(f"{source}: finetune.select: 'best_valid' picks the checkpoint on valid, which "
                             f"finetune.train_splits trains on (use 'last')")
        if "valid" in evaluated:
            raise InputError(f"{source}: finetune.select: 'best_valid' picks the checkpoint on valid, which "
                             f"evaluate.splits scores (use 'last')")
        if finetune["validate_every"] == 0 and finetune["head_validate_every"] == 0:
            raise InputError(f"{source}: finetune.select: 'best_valid' needs finetune.validate_every or "
                             f"head_validate_every > 0")
    if evaluated and config["report"]["split"] not in evaluated:
        raise InputError(f"{source}: report.split: {config['report']['split']!r} must be one of evaluate.splits "
                         f"{evaluated}")
    demo = config["demo"]
    if demo is not None:
        window_s = config["model"]["frames"] / config["extract"]["fps"]
        if window_s > demo["half_duration_s"]:
            raise InputError(f"{source}: model.frames: windows of {window_s:g} s are longer than a half "
                             f"(demo.half_duration_s = {demo['half_duration_s']:g} s)")


def load(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read config ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return validate(config, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comedian validate-config", description="Validate a pipeline config.")
    parser.add_argument("config", type=Path, help="YAML config file")
    parser.add_argument("--print", action="store_true", help="print the config with defaults filled in")
    args = parser.parse_args(argv)
    config = load(args.config)
    if args.print:
        print(yaml.safe_dump(config, sort_keys=False), end="")
    else:
        print(f"{args.config}: valid")
    return 0
