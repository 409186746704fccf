"""`comedian <stage> ...`: one subcommand per pipeline stage, each the `main(argv)` of one module.

Modules are imported only when their stage runs, so `comedian evaluate` never pays for torch.
"""

from __future__ import annotations

import importlib
import os
import sys

from comedian.errors import InputError

#: stage name -> module whose ``main(argv)`` implements it, in pipeline order.
STAGES: dict[str, str] = {
    "validate-config": "comedian.config",
    "demo-data": "comedian.data.demo",
    "extract": "comedian.data.frames",
    "pca": "comedian.data.features",
    "model-summary": "comedian.models.summary",
    "pretrain-spatial": "comedian.train.pretrain_spatial",
    "pretrain-temporal": "comedian.train.pretrain_temporal",
    "finetune": "comedian.train.finetune",
    "predict": "comedian.inference.predict",
    "ensemble": "comedian.inference.ensemble",
    "postprocess": "comedian.postprocess",
    "evaluate": "comedian.scoring",
    "report": "comedian.report",
    "spot": "comedian.spot",
    "tracking-server": "comedian.tracking",
    "table": "comedian.tables",
    "experiments": "comedian.experiments",
}


def export_checkout(repo: str) -> None:
    """Put a checkout first on ``PYTHONPATH`` so that ``python -m comedian`` in child processes (the
    Snakemake jobs, in whatever environment: ``--sdm conda`` too) imports this checkout's package."""
    rest = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([repo, rest] if rest else [repo])


def _usage() -> str:
    lines = ["usage: comedian <stage> [options]   (comedian <stage> --help for each)", "", "stages:"]
    for name, module in STAGES.items():
        lines.append(f"  {name:<18} {module}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"comedian: unknown stage {stage!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(STAGES[stage])
    try:
        return int(module.main(rest) or 0)
    except InputError as err:
        print(f"comedian {stage}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
