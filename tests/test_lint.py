"""The workflow is catalog-standard: `snakemake --lint` finds nothing, `snakefmt --check` leaves every
file of workflow/ unchanged (CI runs only pytest, so both are checked here), the catalog's usage file is
there, config/README.md describes every shipped config and every section of the schema, and each report
caption the rules name exists."""

import os
import subprocess
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _run(*cmd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))  # the Snakefile imports this checkout's package
    return subprocess.run(list(cmd), cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_snakemake_lint_is_clean():
    proc = _run(sys.executable, "-m", "snakemake", "--lint", "-s", "workflow/Snakefile")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_check_is_clean():
    # snakefmt reads [tool.snakefmt] of pyproject.toml (the package's line width)
    proc = _run(sys.executable, "-m", "snakefmt", "--check", "workflow/")
    assert proc.returncode == 0, f"run `snakefmt workflow/`:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    assert "would be left unchanged" in proc.stdout + proc.stderr


def test_catalog_usage_file():
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert usage["report"] is True and usage["software-stack-deployment"]["conda"] is True
    flags = usage["mandatory-flags"]["flags"].split()
    assert flags[0] == "--configfile" and (REPO / flags[1]).is_file()
    conda_envs = set(re.findall(r'"\.\./\.\./(envs/[^"]+)"', "".join(
        p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))))
    assert conda_envs == {"envs/comedian.yaml"}  # what --sdm conda deploys


def test_config_readme_covers_every_config_and_section():
    readme = (REPO / "config" / "README.md").read_text()
    configs = [p.relative_to(REPO).as_posix() for p in [REPO / "config" / "config.yaml",
                                                          *sorted((REPO / "config" / "paper").glob("*.yaml"))]]
    for config in configs:
        assert f"`{config}`" in readme, config
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    documented = set(re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \|", readme, re.M))
    sections = {name for pair in documented for name in pair if name}
    assert sections == set(schema["properties"])


def test_report_captions_exist():
    rules = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    captions = re.findall(r'"\.\./report/([^"]+\.rst)"', rules)  # caption= or the views' REPORT_ITEMS
    assert len(captions) >= 6
    for name in captions:
        assert (REPO / "workflow" / "report" / name).is_file(), name
    assert 'report: "report/workflow.rst"' in (REPO / "workflow" / "Snakefile").read_text()


def test_package_reads_the_workflow_schema():
    from comedian import config

    link = REPO / "comedian" / "schemas" / "config.schema.yaml"
    assert link.resolve() == (REPO / "workflow" / "schemas" / "config.schema.yaml").resolve()
    assert config.schema() == yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
