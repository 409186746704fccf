"""`python -m comedian <stage> ...` (what the Snakemake rules call, so that any environment works)."""

import sys

from comedian.cli import main

sys.exit(main())
