"""Load and validate the pipeline's YAML config against its JSON schema, before any job starts.

The schema (``workflow/schemas/config.schema.yaml``, where Snakemake workflows keep it; the package reads
it as its data file ``comedian/schemas/config.schema.yaml``, a relative link to it) is the single
description of every key: its type, range, default, and which stage uses it. Snakemake's ``common.smk``
calls :func:`validate` at parse time; ``comedian validate-config FILE`` does the same from the shell.
"""

from __future__ import annotations

import argparse
import copy
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from comedian.errors import InputError


#: The experiment that is the config's base.
DEFAULT = "default"
#: Sections an experiment cannot change: the data and the tracking are the base's, overlays are flat.
BASE_ONLY = ("dataset", "demo", "tracking", "experiments", "tables")


@cache
def schema() -> dict[str, Any]:
    """The config's JSON schema as a dict (read once; do not modify it)."""
    return yaml.safe_load(resources.files("comedian").joinpath("schemas/config.schema.yaml").read_text())


def _fill_defaults(node: Any, spec: dict[str, Any]) -> None:
    """Insert the schema's ``default:`` values for absent keys, recursively through objects, named
    mappings (``additionalProperties``: the tables) and arrays of objects (a table's rows); an absent
    section (an object without a default of its own) is created and filled with its defaults."""
    if isinstance(node, list) and isinstance(spec.get("items"), dict):
        for item in node:
            _fill_defaults(item, spec["items"])
    if not isinstance(node, dict):
        return
    properties = spec.get("properties", {})
    for key, sub in properties.items():
        if key not in node and "default" in sub:
            node[key] = yaml.safe_load(yaml.safe_dump(sub["default"]))
        elif key not in node and sub.get("type") == "object":
            node[key] = {}
    for key, value in node.items():
        sub = properties.get(key, spec.get("additionalProperties"))
        if isinstance(sub, dict):
            _fill_defaults(value, sub)


def _field(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate(config: dict[str, Any], source: str = "config", prefix: str = "") -> dict[str, Any]:
    """Fill defaults into ``config`` in place and validate it; raise :class:`InputError` naming the field
    (after ``prefix``: ``experiments.<name>.`` for an experiment's config).

    Unknown keys are rejected (every object in the schema has ``additionalProperties: false``). A base
    config's experiments and tables are checked too (:func:`experiment_configs`, :func:`check_tables`).
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
        raise InputError(f"{source}: {prefix}{_field(first.absolute_path)}: {first.message}{more}")
    check_consistency(config, source, prefix)
    if not prefix:
        check_tables(config, experiment_configs(config, source), source)
    return config


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` merged in, as a new dict: mappings merge key by key, any other value
    (lists included) replaces the base's."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def experiment_configs(config: dict[str, Any], source: str = "config") -> dict[str, dict[str, Any]]:
    """Experiment name -> its whole validated config: ``default`` is the base (without its experiments
    and tables), every other one its overlay deep-merged over the base; errors name
    ``experiments.<name>.<key>``."""
    base = {key: value for key, value in config.items() if key not in ("experiments", "tables")}
    configs = {DEFAULT: base}
    for name, overlay in config["experiments"].items():
        if name == DEFAULT:
            raise InputError(f"{source}: experiments.{DEFAULT}: the base config is the experiment "
                             f"{DEFAULT!r}; name the variant otherwise")
        for section in BASE_ONLY:
            if section in overlay:
                raise InputError(f"{source}: experiments.{name}.{section}: every experiment shares the base's "
                                 f"{section}; set it in the base config")
        configs[name] = validate(deep_merge(base, overlay), source, prefix=f"experiments.{name}.")
    return configs


def check_tables(config: dict[str, Any], experiments: dict[str, dict[str, Any]], source: str = "config") -> None:
    """Each table row names a declared experiment, and a split and metric that experiment scores (or the
    challenge split, whose submission a row points at); InputError naming ``tables.<table>.rows.<i>``."""
    for table, spec in config["tables"].items():
        for i, row in enumerate(spec["rows"]):
            where = f"{source}: tables.{table}.rows.{i}"
            name = row["experiment"]
            if name not in experiments:
                raise InputError(f"{where}.experiment: no experiment {name!r} (declared: {', '.join(experiments)})")
            cfg = experiments[name]
            if row["split"] == "challenge":
                if "challenge" not in cfg["dataset"]["splits"]:
                    raise InputError(f"{where}.split: 'challenge' needs dataset.splits.challenge")
            elif row["split"] not in cfg["evaluate"]["splits"]:
                raise InputError(f"{where}.split: experiment {name!r} does not score {row['split']!r} "
                                 f"(its evaluate.splits: {cfg['evaluate']['splits']})")
            elif row["metric"] not in cfg["evaluate"]["metrics"]:
                raise InputError(f"{where}.metric: experiment {name!r} does not compute {row['metric']!r} "
                                 f"(its evaluate.metrics: {cfg['evaluate']['metrics']})")


def check_consistency(config: dict[str, Any], source: str = "config", prefix: str = "") -> None:
    """Rules across sections that a JSON schema cannot say; InputError naming the keys.

    - No training on an evaluated split (``evaluate.splits`` against ``pretrain_temporal.train_splits`` and
      ``finetune.train_splits``), and no checkpoint picked on valid (``finetune.select: best_valid``) when
      valid is trained on or evaluated.
    - ``report.split`` is one of ``evaluate.splits`` (no report without an evaluated split).
    - A demo's halves hold at least one window (``model.frames`` frames at ``extract.fps``).
    """
    where = f"{source}: {prefix}"
    evaluated = config["evaluate"]["splits"]
    for section in ("pretrain_temporal", "finetune"):
        for split in config[section]["train_splits"]:
            if split in evaluated:
                raise InputError(f"{where}{section}.train_splits: {split!r} is also in evaluate.splits "
                                 f"(training on the evaluated split)")
    finetune = config["finetune"]
    if finetune["select"] == "best_valid":
        if "valid" in finetune["train_splits"]:
            raise InputError(f"{where}finetune.select: 'best_valid' picks the checkpoint on valid, which "
                             f"finetune.train_splits trains on (use 'last')")
        if "valid" in evaluated:
            raise InputError(f"{where}finetune.select: 'best_valid' picks the checkpoint on valid, which "
                             f"evaluate.splits scores (use 'last')")
        if finetune["validate_every"] == 0 and finetune["head_validate_every"] == 0:
            raise InputError(f"{where}finetune.select: 'best_valid' needs finetune.validate_every or "
                             f"head_validate_every > 0")
    if evaluated and config["report"]["split"] not in evaluated:
        raise InputError(f"{where}report.split: {config['report']['split']!r} must be one of evaluate.splits "
                         f"{evaluated}")
    demo = config["demo"]
    if demo is not None:
        window_s = config["model"]["frames"] / config["extract"]["fps"]
        if window_s > demo["half_duration_s"]:
            raise InputError(f"{where}model.frames: windows of {window_s:g} s are longer than a half "
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
