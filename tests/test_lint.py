"""The workflow is catalog-standard: `snakemake --lint` finds nothing and `snakefmt --check` leaves every
file of workflow/ unchanged (CI runs only pytest, so both are checked here)."""

import os
import subprocess
import sys
from pathlib import Path

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
