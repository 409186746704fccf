"""`comedian table`: one table of results beside the paper's figures, as CSV and Markdown.

A table (the config's ``tables.<name>``) is a caption and rows; each row names an experiment, the split
and metric it is read on, the paper's printed figure, and whether it is an "ens." row. Its numbers come
from the experiment's ``metrics.json`` (:mod:`comedian.report`): t-AmAP (``a_mAP``) in percent,

    paper          the paper's figure, as printed
    ours_mean      the mean over the seeds (``seed_mean``)
    ours_std       their sample standard deviation (``seed_std``; 0 with one seed)
    seeds          the seeds, in order, and ours_seeds each one's figure
    ours_ensemble  "ens." rows: the ensemble of the seeds' raw scores (the paper's "ens.")
    source         the file the row was read from

The CSV holds the exact values (100 x the metrics file's); the Markdown twin rounds them to the table's
``decimals``, as the paper prints them (``--html``: the same, as a page of the Snakemake report). A row
on the challenge split has no score (its labels are hidden): its source is the submission zip to upload,
and its ``ours_*`` cells are empty.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from comedian.errors import InputError
from comedian.io import atomic_path

COLUMNS = ["label", "experiment", "split", "metric", "paper", "ours_mean", "ours_std", "seeds", "ours_seeds",
           "ours_ensemble", "source"]


def _percent(value: float) -> float:
    return 100.0 * float(value)


def table_rows(spec: dict[str, Any], metrics: dict[str, Path], submissions: dict[str, list[Path]]) -> list[dict]:
    """One dict per row of ``spec`` (COLUMNS as keys; numbers as floats, empty cells as None)."""
    documents: dict[str, dict] = {}
    rows = []
    for row in spec["rows"]:
        name, split, metric = row["experiment"], row["split"], row["metric"]
        out = {"label": row["label"], "experiment": name, "split": split, "paper": row["paper"],
               "ours_mean": None, "ours_std": None, "seeds": None, "ours_seeds": None, "ours_ensemble": None}
        if split == "challenge":
            if name not in submissions:
                raise InputError(f"row {row['label']!r}: no --submission given for experiment {name!r}")
            rows.append({**out, "metric": None, "source": " ".join(str(p) for p in submissions[name])})
            continue
        if name not in metrics:
            raise InputError(f"row {row['label']!r}: no --metrics given for experiment {name!r}")
        path = metrics[name]
        if name not in documents:
            try:
                documents[name] = json.loads(Path(path).read_text())
            except (OSError, ValueError) as err:
                raise InputError(f"{path}: not a readable metrics.json ({err})") from None
        try:
            doc = documents[name][split][metric]
            seeds = sorted(doc["seeds"], key=int)
            values = [_percent(doc["seeds"][s]["a_mAP"]) for s in seeds]
            mean, std, ensemble = (_percent(doc["seed_mean"]["a_mAP"]), _percent(doc["seed_std"]["a_mAP"]),
                                   _percent(doc["a_mAP"]))
        except KeyError as err:
            raise InputError(f"{path}: no {split}.{metric} a_mAP with seeds (missing {err})") from None
        rows.append({**out, "metric": metric, "ours_mean": mean, "ours_std": std, "seeds": seeds,
                     "ours_seeds": values, "ours_ensemble": ensemble if row["ensemble"] else None,
                     "source": str(path)})
    return rows


def _cell(value: Any, decimals: int | None) -> str:
    """A cell: numbers exact (repr) or rounded, lists space-separated, None empty."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(_cell(v, decimals) for v in value)
    if isinstance(value, float) and decimals is not None:
        return f"{value:.{decimals}f}"
    return str(value)


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[c], None) for c in COLUMNS])
    return buffer.getvalue()


def markdown_text(name: str, spec: dict[str, Any], rows: list[dict]) -> str:
    decimals = spec["decimals"]
    lines = [f"## {name}", "", spec["caption"].strip(), "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        cells = [_cell(row[c], decimals).replace("|", "\\|") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_html(path: Path, name: str, spec: dict[str, Any], rows: list[dict]) -> None:
    """The Markdown twin as a page of the Snakemake report: the caption, then the rounded cells."""
    from comedian.report import html_table, write_page

    caption = f"<p>{html.escape(spec['caption'].strip())}</p>\n"
    cells = [[_cell(row[c], spec["decimals"]) for c in COLUMNS] for row in rows]
    write_page(path, name, [(name, caption + html_table(COLUMNS, cells))])


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comedian table",
                                     description="Write one table of results beside the paper's figures.")
    parser.add_argument("--name", required=True, help="the table's name (its Markdown heading)")
    parser.add_argument("--spec", required=True, help="the table as JSON: {caption, decimals, rows: [...]}")
    parser.add_argument("--metrics", nargs=2, action="append", default=[], metavar=("EXPERIMENT", "FILE"),
                        help="an experiment's metrics.json (repeat)")
    parser.add_argument("--submission", nargs=2, action="append", default=[], metavar=("EXPERIMENT", "FILE"),
                        help="an experiment's challenge submission zip (repeat)")
    parser.add_argument("--csv", required=True, type=Path)
    parser.add_argument("--markdown", required=True, type=Path)
    parser.add_argument("--html", type=Path, default=None, help="the Markdown twin as an HTML page (the report's)")
    args = parser.parse_args(argv)
    try:
        spec = json.loads(args.spec)
    except ValueError as err:
        raise InputError(f"--spec: not JSON ({err})") from None
    submissions: dict[str, list[Path]] = {}
    for name, path in args.submission:
        if not Path(path).is_file():
            raise InputError(f"{path}: submission zip is missing")
        submissions.setdefault(name, []).append(Path(path))
    rows = table_rows(spec, {name: Path(path) for name, path in args.metrics}, submissions)
    _write(args.csv, csv_text(rows))
    _write(args.markdown, markdown_text(args.name, spec, rows))
    if args.html is not None:
        write_html(args.html, args.name, spec, rows)
    return 0
