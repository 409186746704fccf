"""``comedian report``: the pipeline's final metrics file and the figures of the Snakemake report.

Inputs: the per-split metrics JSONs of ``comedian evaluate --json`` (each names its ``metric``,
``tight`` / ``loose`` / ...), and for the split the figures are drawn for, its labels, its
``results_spotting.json`` folder and its game list (optionally its raw-score HDF5).

Outputs (each given by its own flag, so a Snakefile can declare it):

- ``--output-metrics``: ``{split: {metric: {<the official keys>}}}``, values as fractions, keys
  ``a_mAP``, ``a_mAP_per_class``, ``a_mAP_visible``, ``a_mAP_per_class_visible``, ``a_mAP_unshown``,
  ``a_mAP_per_class_unshown`` exactly as :mod:`comedian.scoring` / the official scorer return them, for the
  model the ``--metrics`` files score (the pipeline's ensemble of its seeds). With ``--seed-metrics``
  (one file per seed, split and metric) each metric also holds ``seeds`` ({seed: the official keys}) and
  ``seed_mean`` / ``seed_std`` ({"a_mAP", "a_mAP_visible", "a_mAP_unshown"}: the mean over the seeds and
  their sample standard deviation, 0 for one seed): the paper's table cells are the means, its "ens." rows
  the ensemble.
  Beside the splits, ``provenance``: the ``commit``, ``dirty`` flag and ``diff_sha256`` of the checkout
  and the ``config_sha256`` of the pipeline invocation (:func:`comedian.provenance.current_summary`).
- ``--ap-table`` (HTML) and ``--ap-csv``: per-class AP (all / visible / unshown, in %) of the figure
  split for each metric given, with the label counts, and the overall a-mAP row.
- ``--pr-curves`` (PNG): per class, the interpolated-precision step curve (precision at recall r = the
  largest precision at any recall >= r, what the official 11-point AP reads) at each tolerance of
  ``--pr-metric``.
- ``--run-page`` (HTML): what produced the numbers: the ``provenance`` below, the MLflow parent run
  (whose ``provenance.json`` holds the invocation's stack, machine and inputs), the stack and machine of
  the report job, and the experiment's whole config (``--config-json``, ``--experiment``).
- ``--timelines`` (folder): ``<game_slug>_<half>.png`` per half of the first ``--timeline-games``
  games: labels (visible filled, not shown hollow) and predictions (colour = confidence) per class
  against the time in the half (minutes; seconds for halves under 5 minutes), above the raw per-token scores when ``--scores`` is given.

The figure split's metrics files are checked against its predictions (rescored with
:func:`comedian.scoring.score`), so a stale metrics file cannot pass for the figures' numbers. The
metrics, the table and the figures also go to MLflow (:func:`comedian.tracking.stage_run`).
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from comedian.errors import InputError
from comedian.io import atomic_path
from comedian.scoring import (
    LABELS_FILE,
    METRIC_DELTAS_S,
    PREDICTIONS_FILE,
    RESULT_KEYS,
    precision_recall_curves,
    read_label_file,
    read_prediction_file,
    read_tables,
    score,
)

__all__ = ["read_metrics", "metrics_document", "ap_table_rows", "write_ap_table", "interpolated_precision",
           "pr_figure", "timeline_figure", "html_table", "write_page", "write_run_page", "make_report", "main"]

#: Largest difference between a metrics file and the rescored predictions that counts as equal.
METRIC_ATOL = 1e-9
VARIANTS: tuple[tuple[str, str], ...] = (("all", ""), ("visible", "_visible"), ("unshown", "_unshown"))


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def read_metrics(path: str | Path) -> tuple[str, dict[str, Any], list[str] | None]:
    """A ``comedian evaluate --json`` file -> ``(metric, {official key: value}, classes or None)``.

    Raises:
        InputError: unreadable file, missing ``metric`` or official key, or malformed values.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read metrics ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: a metrics file must be a JSON object")
    metric = document.get("metric")
    if metric not in METRIC_DELTAS_S:
        raise InputError(f"{path}: field 'metric' {metric!r} is not one of {list(METRIC_DELTAS_S)}")
    values: dict[str, Any] = {}
    for key in RESULT_KEYS:
        if key not in document:
            raise InputError(f"{path}: field {key!r} is missing")
        value = document[key]
        if key.startswith("a_mAP_per_class"):
            if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
                raise InputError(f"{path}: field {key!r} must be a list of numbers")
            values[key] = [float(v) for v in value]
        else:
            if not isinstance(value, (int, float)):
                raise InputError(f"{path}: field {key!r} must be a number")
            values[key] = float(value)
    sizes = {len(values[k]) for k in RESULT_KEYS if k.startswith("a_mAP_per_class")}
    if len(sizes) != 1:
        raise InputError(f"{path}: the per-class lists have different lengths {sorted(sizes)}")
    classes = document.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != sizes.pop()):
        raise InputError(f"{path}: field 'classes' must list one name per per-class value")
    return metric, values, classes


def metrics_document(
    files: Sequence[tuple[str, str | Path]],
) -> tuple[dict[str, dict[str, dict]], list[str] | None, dict[tuple[str, str], Path]]:
    """``[(split, metrics file), ...]`` -> ``({split: {metric: values}}, classes, {(split, metric): file})``.

    Raises:
        InputError: two files for one split and metric, or files naming different classes.
    """
    document: dict[str, dict[str, dict]] = {}
    sources: dict[tuple[str, str], Path] = {}
    classes: list[str] | None = None
    class_source: Path | None = None
    for split, path in files:
        metric, values, names = read_metrics(path)
        if (split, metric) in sources:
            raise InputError(f"{path}: a second {metric!r} metrics file for split {split!r} "
                             f"(the first is {sources[(split, metric)]})")
        if names is not None:
            if classes is not None and names != classes:
                raise InputError(f"{path}: classes differ from those of {class_source}")
            classes, class_source = names, Path(path)
        sources[(split, metric)] = Path(path)
        document.setdefault(split, {})[metric] = values
    return document, classes, sources


SUMMARY_KEYS: tuple[str, ...] = ("a_mAP", "a_mAP_visible", "a_mAP_unshown")


def add_seed_metrics(document: dict[str, dict[str, dict]], files: Sequence[tuple[str, str, str | Path]]) -> None:
    """Add each seed's metrics and their mean and standard deviation to ``document`` (see the module
    docstring); ``files``: ``[(seed, split, metrics file), ...]``.

    Raises:
        InputError: a seed's file for a split or metric the ensemble has no file for, two files for one seed,
            split and metric, or seeds that do not cover the same splits and metrics.
    """
    per_seed: dict[tuple[str, str], dict[str, dict]] = {}
    for seed, split, path in files:
        metric, values, _ = read_metrics(path)
        if metric not in document.get(split, {}):
            raise InputError(f"{path}: seed {seed} {split} {metric}: no --metrics file for that split and metric")
        seeds = per_seed.setdefault((split, metric), {})
        if seed in seeds:
            raise InputError(f"{path}: a second {metric!r} metrics file for seed {seed}, split {split!r}")
        seeds[seed] = values
    all_seeds = {seed for seed, _, _ in files}
    for (split, metric), seeds in sorted(per_seed.items()):
        if set(seeds) != all_seeds:
            raise InputError(f"seed metrics of {split} {metric} cover seeds {sorted(seeds)}, not {sorted(all_seeds)}")
        entry = document[split][metric]
        entry["seeds"] = {seed: seeds[seed] for seed in sorted(seeds, key=int)}
        for name, reduce in (("seed_mean", np.mean), ("seed_std", _sample_std)):
            entry[name] = {k: float(reduce([v[k] for v in seeds.values()])) for k in SUMMARY_KEYS}


def _sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1); 0 for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _check_against_predictions(metrics: Mapping[str, dict], files: Mapping[str, Path], labels: dict,
                               predictions: dict, n_classes: int, source: str) -> None:
    """Rescore the predictions for each metric of ``metrics`` (``files``: metric -> its file); refuse a
    metrics file that differs."""
    for metric, values in metrics.items():
        fresh = score(labels, predictions, metric=metric, num_classes=n_classes)
        for key in RESULT_KEYS:
            a, b = np.asarray(values[key], dtype=np.float64), np.asarray(fresh[key], dtype=np.float64)
            if a.shape != b.shape or not np.allclose(a, b, rtol=0.0, atol=METRIC_ATOL):
                raise InputError(
                    f"{files[metric]}: field {key!r} does not match the predictions in {source} "
                    f"(file {np.round(a, 6).tolist()}, rescored {np.round(b, 6).tolist()}); is it stale?"
                )


# ----------------------------------------------------------------------------------------------
# Per-class AP table
# ----------------------------------------------------------------------------------------------


def ap_table_rows(metrics: Mapping[str, dict], classes: Sequence[str], n_visible: np.ndarray | None = None,
                  n_unshown: np.ndarray | None = None) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the per-class AP table: one row per class plus the overall ``a-mAP`` row.

    Columns: ``class``, label counts (when given), then per metric ``<metric> all`` / ``visible`` /
    ``unshown``, in percent rounded to 2 decimals.
    """
    header = ["class"]
    if n_visible is not None:
        header += ["labels visible", "labels not shown"]
    for metric in metrics:
        header += [f"{metric} {name} (%)" for name, _ in VARIANTS]
    rows: list[list[Any]] = []
    for c, name in enumerate(classes):
        row: list[Any] = [name]
        if n_visible is not None:
            row += [int(n_visible[c]), int(n_unshown[c])]
        for values in metrics.values():
            row += [round(100 * values[f"a_mAP_per_class{suffix}"][c], 2) for _, suffix in VARIANTS]
        rows.append(row)
    total: list[Any] = ["a-mAP"]
    if n_visible is not None:
        total += [int(np.sum(n_visible)), int(np.sum(n_unshown))]
    for values in metrics.values():
        total += [round(100 * values[f"a_mAP{suffix}"], 2) for _, suffix in VARIANTS]
    rows.append(total)
    return header, rows


def seed_table_rows(document: Mapping[str, Mapping[str, dict]]) -> tuple[list[str], list[list[Any]]]:
    """The t-AmAP (%) of each seed's model, their mean and standard deviation, and the ensemble, one row
    per split and metric (the paper's table cells and its "ens." rows). Needs the ``seeds`` entries of
    :func:`add_seed_metrics`."""
    seeds = sorted({seed for by_metric in document.values() for v in by_metric.values() for seed in v["seeds"]},
                   key=int)
    header = ["split", "metric", *[f"seed {s}" for s in seeds], "seed mean", "seed std", "ensemble"]
    rows = [[split, metric, *[100 * v["seeds"][s]["a_mAP"] for s in seeds], 100 * v["seed_mean"]["a_mAP"],
             100 * v["seed_std"]["a_mAP"], 100 * v["a_mAP"]]
            for split, by_metric in document.items() for metric, v in by_metric.items()]
    return header, rows


def write_ap_table(header: Sequence[str], rows: Sequence[Sequence[Any]], html_path: str | Path | None,
                   csv_path: str | Path | None, title: str, total_row: bool = True) -> None:
    """Write the table as a standalone HTML page and/or a CSV file (atomically); the last row is shown as
    a total when ``total_row``."""
    if csv_path is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        with atomic_path(csv_path) as tmp:
            tmp.write_text(buffer.getvalue())
    if html_path is not None:
        write_page(html_path, title, [(title, html_table(header, rows, total_row))])


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], total_row: bool = False) -> str:
    """An HTML table: the first column and text cells as text, numbers right-aligned (floats to 2 decimals)."""
    def cell(i: int, value: Any) -> str:
        if i > 0 and isinstance(value, float):
            return f'<td class="num">{value:.2f}</td>'
        if i > 0 and isinstance(value, int) and not isinstance(value, bool):
            return f'<td class="num">{value}</td>'
        return f"<td>{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = [f'<tr{" class=total" if total_row and k == len(rows) - 1 else ""}>'
            + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for k, row in enumerate(rows)]
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


def write_page(path: str | Path, title: str, sections: Sequence[tuple[str, str]]) -> None:
    """A standalone HTML page (atomically): ``sections`` are (heading, HTML body) pairs."""
    parts = "\n".join(f"<h3>{html.escape(heading)}</h3>\n{body}" for heading, body in sections)
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title>\n"
        "<style>body{font-family:sans-serif} table{border-collapse:collapse} "
        "th,td{border:1px solid #bbb;padding:2px 8px} td.num{text-align:right} "
        "tr.total{font-weight:bold;background:#eee} pre{background:#f6f6f6;padding:6px}</style></head><body>\n"
        f"{parts}\n</body></html>\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page)


# ----------------------------------------------------------------------------------------------
# The run: provenance and config
# ----------------------------------------------------------------------------------------------


def _flat(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` rows of nested mappings (:func:`comedian.tracking.flatten`; an empty mapping
    gives no row); lists holding mappings or lists (the GPUs) as JSON, None as ``"null"``."""
    from comedian.tracking import flatten

    rows = []
    for key, value in flatten(values).items():
        if isinstance(value, Mapping):  # an empty one: flatten keeps it as a value
            continue
        if isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
            value = json.dumps(value)
        rows.append((key, "null" if value is None else value))
    return rows


def write_run_page(path: str | Path, experiment: str, config: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    """The run behind the report: the ``provenance`` of ``metrics.json`` (``summary``: commit, dirty flag,
    digests), the MLflow parent run holding the invocation's whole record, the software stack and machine
    of the report job (:mod:`comedian.provenance`), and the experiment's whole config (defaults filled in)."""
    import yaml

    from comedian import provenance, tracking

    parent = os.environ.get(tracking.ENV_PARENT_RUN_ID)
    mlflow = [("parent run", parent or "none (tracking off, or the stage was run by hand)")]
    if parent:
        uri = urlsplit(os.environ.get(tracking.ENV_URI, ""))
        uri = uri._replace(netloc=uri.netloc.rpartition("@")[2])  # no user:password of a server URL
        mlflow += [("tracking URI", uri.geturl()),
                   ("record", "artifact provenance.json and tags comedian.provenance.* of the parent run: "
                              "stack, machine and inputs of the invocation")]
    job = {"stack": provenance.stack_versions(), "machine": provenance.machine()}
    sections = [
        ("Provenance (metrics.json)", html_table(["field", "value"], _flat(dict(summary)))),
        ("MLflow", html_table(["field", "value"], mlflow)),
        ("Software stack and machine of the report job", html_table(["field", "value"], _flat(job))),
        (f"Config of experiment {experiment!r}",
         f"<pre>{html.escape(yaml.safe_dump(dict(config), sort_keys=False))}</pre>"),
    ]
    write_page(path, f"Run of experiment {experiment}", sections)


# ----------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot, no display needed; Agg canvas)
# ----------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def interpolated_precision(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The interpolated-precision step curve of one class's precision-recall points.

    The interpolated precision at recall r is the largest precision of any point with recall >= r (the
    precision the official 11-point AP reads at r = 0, 0.1, ..., 1). Returns ``(recalls, precisions)``
    for ``Axes.step(..., where="pre")``: ``recalls`` starts at 0 and rises through the points' distinct
    recalls; ``precisions[i]`` is the interpolated precision on (recalls[i-1], recalls[i]] (and
    ``precisions[0] == precisions[1]``, at recall 0). The curve ends at the largest recall reached.
    """
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    levels, inverse = np.unique(recall, return_inverse=True)
    best = np.full(len(levels), -np.inf)
    np.maximum.at(best, inverse, precision)  # the best precision at each distinct recall
    envelope = np.maximum.accumulate(best[::-1])[::-1]  # ... and at every larger recall
    return np.concatenate([[0.0], levels]), np.concatenate([envelope[:1], envelope])


def pr_figure(curves: Mapping[str, np.ndarray], classes: Sequence[str], metric: str):
    """Per-class precision-recall curves, one panel per class, one step curve per tolerance: the
    interpolated precision (:func:`interpolated_precision`) of the scorer's points.

    ``curves``: :func:`comedian.scoring.precision_recall_curves` output (``precision``, ``recall``
    (D, 200, C), ``ap`` (D, C), ``deltas_s`` (D,)).
    """
    from matplotlib import colormaps

    n = len(classes)
    cols = min(6, n)
    rows = math.ceil(n / cols)
    figure = _figure(2.6 * cols, 2.4 * rows + 0.6)
    deltas = curves["deltas_s"]
    colours = colormaps["viridis"](np.linspace(0, 0.9, len(deltas)))
    axes = figure.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for c, name in enumerate(classes):
        ax = axes.flat[c]
        for d, delta in enumerate(deltas):
            recall, precision = interpolated_precision(curves["recall"][d, :, c], curves["precision"][d, :, c])
            ax.step(recall, precision, where="pre", color=colours[d], lw=1.2, label=f"{delta:g} s")
        n_labels = int(curves["n_labels_visible"][c] + curves["n_labels_unshown"][c])
        ax.set_title(f"{name}\nAP@{deltas[0]:g}s {100 * curves['ap'][0, c]:.1f}%, {n_labels} labels", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("recall", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("interpolated precision", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper center", ncol=len(deltas), fontsize=8,
                  title=f"{metric} tolerance (window width)", title_fontsize=8)
    return figure


def timeline_figure(
    classes: Sequence[str],
    label_times_s: np.ndarray,
    label_classes: np.ndarray,
    label_visible: np.ndarray,
    pred_times_s: np.ndarray,
    pred_classes: np.ndarray,
    pred_confidence: np.ndarray,
    title: str,
    min_confidence: float = 0.0,
    raw: tuple[np.ndarray, np.ndarray] | None = None,
):
    """One half: predictions against labels per class, against the time in the half (minutes, or
    seconds when the half lasts under 5 minutes).

    Args:
        classes: C class names (rows of the plot, first at the top).
        label_times_s, label_classes, label_visible: the half's labels, (E,) each (seconds, index, bool).
        pred_times_s, pred_classes, pred_confidence: the half's predictions, (P,) each.
        title: figure title.
        min_confidence: predictions below it are not drawn.
        raw: optional ``(scores (T, C), times_s (T,))`` raw per-token scores, drawn as a heat map below.
    """
    n = len(classes)
    figure = _figure(14, 0.32 * n * (2 if raw is not None else 1) + 1.6)
    if raw is not None:
        ax, ax_raw = figure.subplots(2, 1, sharex=True)
    else:
        ax, ax_raw = figure.subplots(1, 1), None
    end_s = max([1.0, *label_times_s.tolist(), *pred_times_s.tolist()])
    if raw is not None and raw[1].size:
        end_s = max(end_s, float(raw[1][-1]))
    unit, unit_name = (60.0, "minutes") if end_s >= 300 else (1.0, "seconds")
    keep = pred_confidence >= min_confidence
    order = np.argsort(pred_confidence[keep], kind="stable")
    points = ax.scatter(
        pred_times_s[keep][order] / unit, pred_classes[keep][order], c=pred_confidence[keep][order], cmap="viridis",
        vmin=0, vmax=1, s=14, marker="o", linewidths=0, label="prediction", zorder=2,
    )
    vis = label_visible.astype(bool)
    ax.scatter(label_times_s[vis] / unit, label_classes[vis], s=90, marker="|", color="crimson", linewidths=2,
               label="label (visible)", zorder=3)
    ax.scatter(label_times_s[~vis] / unit, label_classes[~vis], s=60, marker="o", facecolors="none",
               edgecolors="crimson", linewidths=1.2, label="label (not shown)", zorder=3)
    ax.set_yticks(range(n), list(classes), fontsize=7)
    ax.set_ylim(n - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=9, loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=7, ncol=3, frameon=False, borderaxespad=0.2)
    figure.colorbar(points, ax=ax, label="confidence", pad=0.01)
    if ax_raw is not None:
        scores, times = raw
        if times.size:
            step = times[1] - times[0] if times.size > 1 else 1.0
            extent = ((times[0] - step / 2) / unit, (times[-1] + step / 2) / unit, n - 0.5, -0.5)
            # resampled as data, then coloured: the same pixels as matplotlib's RGBA stage (nearest), without
            # its float RGBA copies of the image, whose size grew with the half's length (bench/bench_spot.py)
            image = ax_raw.imshow(scores.T, aspect="auto", extent=extent, cmap="magma", vmin=0, vmax=1,
                                  interpolation="nearest", interpolation_stage="data")
            figure.colorbar(image, ax=ax_raw, label="raw score", pad=0.01)
        ax_raw.scatter(label_times_s / unit, label_classes, s=40, marker="|", color="cyan", linewidths=1)
        ax_raw.set_yticks(range(n), list(classes), fontsize=7)
        ax_raw.set_title("raw per-token scores (before NMS), labels in cyan", fontsize=8)
        ax_raw.set_xlabel(f"time in the half ({unit_name})")
    else:
        ax.set_xlabel(f"time in the half ({unit_name})")
    ax.set_xlim(0, end_s / unit * 1.01)
    return figure


def _save(figure, path: Path, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")


# ----------------------------------------------------------------------------------------------
# Stage
# ----------------------------------------------------------------------------------------------


def make_report(
    metrics_files: Sequence[tuple[str, str | Path]],
    output_metrics: str | Path,
    split: str | None = None,
    labels: str | Path | None = None,
    predictions: str | Path | None = None,
    games: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    ap_table: str | Path | None = None,
    ap_csv: str | Path | None = None,
    pr_curves: str | Path | None = None,
    pr_metric: str = "tight",
    timelines: str | Path | None = None,
    timeline_games: int = 1,
    min_confidence: float = 0.0,
    scores: str | Path | None = None,
    run: Any = None,
    seed_metrics: Sequence[tuple[str, str, str | Path]] = (),
    seed_table: str | Path | None = None,
    seed_csv: str | Path | None = None,
    run_page: str | Path | None = None,
    experiment: str = "default",
    config: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, dict]]:
    """Write the metrics file and the figures (arguments as the CLI flags; see the module docstring).

    Returns the metrics document ``{split: {metric: values}}``.
    """
    document, file_classes, sources = metrics_document(metrics_files)
    if classes is None:
        from comedian.data.soccernet import SOCCERNET_V2_CLASSES

        classes = file_classes or list(SOCCERNET_V2_CLASSES)
    classes = list(classes)
    if file_classes is not None and file_classes != classes:
        raise InputError(f"--classes {classes} differ from the metrics files' {file_classes}")
    for s, by_metric in document.items():
        for metric, values in by_metric.items():
            if len(values["a_mAP_per_class"]) != len(classes):
                raise InputError(f"split {s!r} {metric}: {len(values['a_mAP_per_class'])} per-class values for "
                                 f"{len(classes)} classes")
    figures_wanted = any(x is not None for x in (ap_table, ap_csv, pr_curves, timelines))
    produced: list[Path] = []
    if figures_wanted:
        if split is None or labels is None or predictions is None or games is None:
            raise InputError("figures need --split, --labels, --predictions and --games")
        if split not in document:
            raise InputError(f"--split {split!r}: no --metrics file for it (have {sorted(document)})")
        label_table, pred_table = read_tables(labels, predictions, list(games), classes)
        files = {metric: path for (s, metric), path in sources.items() if s == split}
        _check_against_predictions(document[split], files, label_table, pred_table, len(classes), str(predictions))
        curves = precision_recall_curves(label_table, pred_table, metric=pr_metric, num_classes=len(classes))
        if ap_table is not None or ap_csv is not None:
            header, rows = ap_table_rows(document[split], classes, curves["n_labels_visible"],
                                         curves["n_labels_unshown"])
            write_ap_table(header, rows, ap_table, ap_csv, f"Per-class average-mAP, {split} split ({len(games)} games)")
            produced += [Path(p) for p in (ap_table, ap_csv) if p is not None]
        if pr_curves is not None:
            _save(pr_figure(curves, classes, pr_metric), Path(pr_curves))
            produced.append(Path(pr_curves))
        if timelines is not None:
            produced += _write_timelines(Path(timelines), labels, predictions, list(games)[:timeline_games],
                                         classes, min_confidence, scores)
    add_seed_metrics(document, seed_metrics)
    if seed_metrics and (seed_table is not None or seed_csv is not None):
        header, rows = seed_table_rows(document)
        write_ap_table(header, rows, seed_table, seed_csv, "t-AmAP (%) of each seed, their mean and std, and "
                       "their ensemble", total_row=False)
        produced += [Path(p) for p in (seed_table, seed_csv) if p is not None]
    from comedian.provenance import current_summary

    summary = current_summary()
    if run_page is not None:
        if config is None:
            raise InputError("--run-page needs --config-json (the experiment's config)")
        write_run_page(run_page, experiment, config, summary)
        produced.append(Path(run_page))
    with atomic_path(output_metrics) as tmp:  # {split: ...} plus what computed it: commit, config digest
        tmp.write_text(json.dumps({**document, "provenance": summary}, indent=2) + "\n")
    if run is not None:
        for s, by_metric in document.items():
            for metric, values in by_metric.items():
                flat = {f"{s}.{metric}.{k}": values[k] for k in SUMMARY_KEYS}
                for name in ("seed_mean", "seed_std"):
                    flat.update({f"{s}.{metric}.{name}.{k}": v for k, v in values.get(name, {}).items()})
                for key in ("a_mAP_per_class", "a_mAP_per_class_visible", "a_mAP_per_class_unshown"):
                    flat.update({f"{s}.{metric}.{key}.{name}": v for name, v in zip(classes, values[key])})
                run.log_metrics(flat)
        run.log_dict(document, "metrics.json")
        for path in produced:
            run.log_artifact(path, "report")
    return document


def _write_timelines(folder: Path, labels: str | Path, predictions: str | Path, games: Sequence[str],
                     classes: Sequence[str], min_confidence: float, scores: str | Path | None) -> list[Path]:
    """``<folder>/<game_slug>_<half>.png`` for each half of ``games``; the folder is replaced whole."""
    import shutil

    from comedian.data.soccernet import HALVES, game_slug

    raw = None
    if scores is not None:
        from comedian.postprocess import read_raw_scores

        raw_classes, raw = read_raw_scores(scores)
        if raw_classes != list(classes):
            raise InputError(f"{scores}: classes {raw_classes} differ from the report's {list(classes)}")
        missing = [g for g in games if g not in raw]
        if missing:
            raise InputError(f"{scores}: games missing from the raw-score file: {missing[:5]}")
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    written = []
    try:
        for game in games:
            lab = read_label_file(Path(labels) / game / LABELS_FILE, classes)
            pred_path = Path(predictions) / game / PREDICTIONS_FILE
            pred = read_prediction_file(pred_path, classes) if pred_path.is_file() else None
            for half in HALVES:
                lm = lab["half"] == half
                if pred is not None:
                    pm = pred["half"] == half
                    p_t, p_c, p_conf = pred["position_ms"][pm] / 1000, pred["class_index"][pm], pred["confidence"][pm]
                else:
                    p_t, p_c, p_conf = np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0)
                figure = timeline_figure(
                    classes, lab["position_ms"][lm] / 1000, lab["class_index"][lm], lab["visible"][lm],
                    p_t, p_c, p_conf, f"{game} - half {half}", min_confidence,
                    raw[game][half] if raw is not None else None,
                )
                name = f"{game_slug(game)}_{half}.png"
                figure.savefig(tmp / name, dpi=90)
                written.append(folder / name)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def _metrics_arg(values: list[str]) -> tuple[str, str]:
    return values[0], values[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="comedian report",
        description="results/metrics.json from the evaluate stage's JSONs, plus the figures of the report.",
    )
    parser.add_argument("--metrics", nargs=2, action="append", required=True, metavar=("SPLIT", "FILE"),
                        help="a `comedian evaluate --json` file of SPLIT (its 'metric' field says tight/loose...); "
                             "repeat for each split and metric")
    parser.add_argument("--seed-metrics", nargs=3, action="append", default=[], metavar=("SEED", "SPLIT", "FILE"),
                        help="a `comedian evaluate --json` file of one seed's model; repeat for each seed, split and "
                             "metric (adds seeds, seed_mean and seed_std to the output)")
    parser.add_argument("--output-metrics", required=True, type=Path, help="write {split: {metric: {...}}} here")
    parser.add_argument("--seed-table", type=Path, default=None, help="t-AmAP per seed, mean, std, ensemble; HTML")
    parser.add_argument("--seed-csv", type=Path, default=None, help="the same table, CSV")
    parser.add_argument("--split", default=None, help="the split the figures are drawn for (e.g. test)")
    parser.add_argument("--labels", type=Path, default=None, help="labels root (<game>/Labels-v2.json)")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="the split's predictions root (<game>/results_spotting.json)")
    parser.add_argument("--games", type=Path, default=None, help="the split's game list")
    parser.add_argument("--scores", type=Path, default=None, help="the split's raw-score HDF5 (timelines' heat map)")
    parser.add_argument("--classes", nargs="+", default=None, help="class names (default: the metrics files')")
    parser.add_argument("--ap-table", type=Path, default=None, help="per-class AP table, HTML")
    parser.add_argument("--ap-csv", type=Path, default=None, help="per-class AP table, CSV")
    parser.add_argument("--pr-curves", type=Path, default=None, help="precision-recall curves, PNG")
    parser.add_argument("--pr-metric", choices=list(METRIC_DELTAS_S), default="tight",
                        help="tolerances of the precision-recall curves (default tight)")
    parser.add_argument("--timelines", type=Path, default=None, help="folder for <game_slug>_<half>.png timelines")
    parser.add_argument("--timeline-games", type=int, default=1, help="timelines of the first N games (default 1)")
    parser.add_argument("--run-page", type=Path, default=None,
                        help="HTML page of the run: provenance, MLflow parent run, stack and machine, config")
    parser.add_argument("--experiment", default="default", help="the experiment's name (the run page's title)")
    parser.add_argument("--config-json", default=None, help="the experiment's whole config as JSON (the run page)")
    parser.add_argument("--min-confidence", type=float, default=0.0,
                        help="predictions below this confidence are left out of the timelines (default 0)")
    args = parser.parse_args(argv)
    if args.timeline_games < 0:
        raise InputError(f"--timeline-games must be >= 0, got {args.timeline_games}")
    config = None
    if args.config_json is not None:
        try:
            config = json.loads(args.config_json)
        except json.JSONDecodeError as err:
            raise InputError(f"--config-json: not valid JSON ({err.msg})") from None
        if not isinstance(config, dict):
            raise InputError("--config-json: the config must be a JSON object")
    games = None
    if args.games is not None:
        from comedian.data.soccernet import read_game_list

        games = read_game_list(args.games)

    from comedian.tracking import stage_run

    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k != "config_json"}  # the config is the parent run's (config.json), and too long for a param
    with stage_run("report", wildcards={"split": args.split} if args.split else None, params=params) as run:
        document = make_report(
            [_metrics_arg(m) for m in args.metrics], args.output_metrics, args.split, args.labels, args.predictions,
            games, args.classes, args.ap_table, args.ap_csv, args.pr_curves, args.pr_metric, args.timelines,
            args.timeline_games, args.min_confidence, args.scores, run, [tuple(m) for m in args.seed_metrics],
            args.seed_table, args.seed_csv, args.run_page, args.experiment, config,
        )
    for s, by_metric in document.items():
        shown = ", ".join(f"{m} {100 * v['a_mAP']:.2f} %" + (
            f" (seeds {100 * v['seed_mean']['a_mAP']:.2f} +- {100 * v['seed_std']['a_mAP']:.2f} %)"
            if "seed_mean" in v else "") for m, v in by_metric.items())
        print(f"comedian report: {s}: {shown}")
    print(f"comedian report: wrote {args.output_metrics}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
