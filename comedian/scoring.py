"""t-AmAP: the official SoccerNet-v2 action-spotting metric, vectorised, equal to the official scorer.

The reference is ``SoccerNet.Evaluation.ActionSpotting.evaluate`` (package ``SoccerNet`` 0.2.0).
This module reproduces its arithmetic step by step, quirks included, so that every value it
returns equals the official one (the tests compare all fields of both):

* Each half is a grid of ``120 * 60 * framerate`` frames (14,400 at 2 fps) per class. An entry at
  ``position`` p ms sits at frame ``int(framerate * (p / 1000))`` (truncation toward zero), clipped
  to the last frame; a negative frame indexes from the end of the grid as Python indexing does
  (-1 is the last frame). A label without ``position`` sits at ``framerate * (s + 60 m)``, with
  m and s read from ``gameTime`` as the official code slices it (``time[-5:-3]``, ``time[-2:]``).
* When two labels, or two predictions, of one class fall on one frame of a half, the later one
  in the file (row order of a table) wins; for predictions this happens before negative
  confidences are dropped, so a later negative one hides an earlier positive one.
* A label is +1 ("visible"; any visibility other than ``"not shown"``, or none) or -1 ("not shown").
  A prediction counts when its confidence is >= 0. Entries of halves other than 1 and 2, and
  entries whose label is not in the class list, are ignored.
* Matching, per class and half, for a tolerance of delta seconds (``d = delta * framerate``
  frames): labels in frame order each take the highest-confidence unused prediction with
  ``|frame difference| <= d / 2`` (ties: the earliest frame). Matched predictions are TP.
* Per class, pooled over halves: precision and recall at the 200 thresholds
  ``linspace(0, 1, 200)`` (``confidence >= threshold``; 0/0 counts as 0); AP is the 11-point
  interpolated AP; mAP the mean over all classes (a class without labels scores 0).
* Visible / unshown: a prediction takes the visibility of the nearest label of its class in its
  half (frames from ``(a + b) // 2`` on belong to the later label b; no label: unshown); TP are
  still those matched to any label, recall is over the visible (unshown) labels only.
* Several tolerances are averaged by the trapezoid rule normalised by (n - 1), and the overall
  unshown value is then multiplied by 17/13. With one tolerance (``at1`` ... ``at5``) the values
  of that tolerance are returned as they are, without the 17/13 factor (as the official does).

Time in tables: ``position_ms`` (integer milliseconds, as the JSON files carry it) reproduces the
official frame arithmetic exactly and is preferred; ``time_s`` (seconds) is placed at frame
``int(framerate * time_s)``, which equals the official frame whenever ``time_s == ms / 1000``
for the milliseconds ``ms`` the file holds (e.g. the ``time_s`` of
:func:`comedian.data.soccernet.read_labels`).

Only numpy is imported at start; msgspec (the fast JSON path of the file API) and the class
names are imported where the file API needs them, :mod:`comedian.tracking` only by the CLI.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import operator
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comedian.errors import InputError
from comedian.io import atomic_path

#: metric name -> tolerances delta in seconds (the whole window width; +-delta/2 around a label).
METRIC_DELTAS_S: dict[str, tuple[int, ...]] = {
    "loose": tuple(range(5, 61, 5)),
    "tight": (1, 2, 3, 4, 5),
    "at1": (1,),
    "at2": (2,),
    "at3": (3,),
    "at4": (4,),
    "at5": (5,),
}
#: The official keys of the result, in the official order.
RESULT_KEYS: tuple[str, ...] = (
    "a_mAP",
    "a_mAP_per_class",
    "a_mAP_visible",
    "a_mAP_per_class_visible",
    "a_mAP_unshown",
    "a_mAP_per_class_unshown",
)
FRAMERATE = 2  # grid steps per second of the official scorer
GRID_S = 120 * 60  # seconds of the grid of one half
THRESHOLDS = np.linspace(0, 1, 200)  # confidence thresholds of the precision-recall curve
UNSHOWN_FACTOR = (17, 13)  # the official multiplies the overall unshown a-mAP by 17 / 13
LABELS_FILE = "Labels-v2.json"
PREDICTIONS_FILE = "results_spotting.json"

Table = Mapping[str, Any]  # column name -> 1-D array-like (a dict of arrays or a pandas DataFrame)


# --------------------------------------------------------------------------------------------
# Tables -> sorted, de-duplicated grid entries
# --------------------------------------------------------------------------------------------


def _column(table: Table, name: str, what: str) -> np.ndarray:
    if name not in table:
        raise InputError(f"{what} table: column '{name}' is missing")
    return np.asarray(table[name])


def _factorize(*arrays: np.ndarray) -> list[np.ndarray]:
    """Integer codes (int64) of the values of several arrays, one code per distinct value."""
    if all(np.issubdtype(a.dtype, np.integer) for a in arrays):
        values = np.concatenate([a.astype(np.int64) for a in arrays])
        low = int(values.min()) if values.size else 0
        span = int(values.max()) - low + 1 if values.size else 0
        if span <= 4 * values.size + 1024:  # game indices: rank by a presence table, O(n)
            present = np.zeros(span, dtype=bool)
            present[values - low] = True
            inverse = (np.cumsum(present) - 1)[values - low]
        else:
            inverse = np.unique(values, return_inverse=True)[1].reshape(-1)
        return np.split(inverse.astype(np.int64), np.cumsum([len(a) for a in arrays])[:-1])
    codes: dict[Any, int] = {}
    return [
        np.fromiter((codes.setdefault(v, len(codes)) for v in a.tolist()), dtype=np.int64, count=len(a))
        for a in arrays
    ]


def _frames(table: Table, what: str, framerate: int) -> np.ndarray:
    """Grid frame (int64) of each row: official arithmetic, clipping and negative wrap-around."""
    n_frames = GRID_S * framerate
    if "position_ms" in table:
        ms = np.asarray(table["position_ms"])
        if ms.size and not np.issubdtype(ms.dtype, np.integer):
            raise InputError(f"{what} table: column 'position_ms' must hold integers (milliseconds)")
        frames = np.trunc(framerate * (ms.astype(np.float64) / 1000))
    elif "time_s" in table:
        frames = np.trunc(framerate * np.asarray(table["time_s"], dtype=np.float64))
    else:
        raise InputError(f"{what} table: needs a column 'position_ms' (int ms) or 'time_s' (s)")
    if not np.all(np.isfinite(frames)):
        raise InputError(f"{what} table: a time is not finite")
    frames = np.clip(frames, -2 * n_frames, n_frames - 1).astype(np.int64)
    frames = np.where(frames < 0, frames + n_frames, frames)  # Python's negative indexing
    if frames.size and frames.min() < 0:
        raise InputError(f"{what} table: a time is before minus the grid length ({-GRID_S} s)")
    return frames


def _last_wins(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and, for each, the value of its LAST row (later rows overwrite)."""
    n = len(keys)
    if n and int(keys.min()) >= 0 and int(keys.max()) < np.iinfo(np.int64).max // (n + 1) - 1:
        # one unstable sort of key * n + (n - 1 - row): per key, its last row comes first
        order = np.sort(keys * n + (n - 1 - np.arange(n)))
        sorted_keys, row = np.divmod(order, n)
        first = np.ones(n, dtype=bool)
        first[1:] = sorted_keys[1:] != sorted_keys[:-1]
        return sorted_keys[first], values[n - 1 - row[first]]
    unique, first_in_reversed = np.unique(keys[::-1], return_index=True)
    return unique, values[::-1][first_in_reversed]


class _Grid:
    """Labels and predictions of a set of halves, placed on the official grid.

    Keys are ``(slot * num_classes + class) * n_frames + frame`` (int64, sorted, unique), where a
    slot is one (game, half). Labels hold +1 / -1; predictions only those with confidence >= 0.
    """

    def __init__(self, labels: Table, predictions: Table, num_classes: int, framerate: int, games=None):
        if not isinstance(framerate, (int, np.integer)) or framerate < 1:
            raise InputError(f"framerate must be a positive integer, not {framerate!r}")
        self.num_classes = int(num_classes)
        self.framerate = int(framerate)
        self.n_frames = GRID_S * self.framerate
        lab_game = _column(labels, "game", "labels")
        pred_game = _column(predictions, "game", "predictions")
        if games is None:
            lab_game, pred_game = _factorize(lab_game, pred_game)
            scored = None
        else:
            lab_game, pred_game, scored = _factorize(lab_game, pred_game, np.asarray(list(games)))

        lab_keep, lab_keys = self._keys(labels, "labels", lab_game, scored)
        value = np.ones(len(lab_game))
        if "visible" in labels:
            value[~np.asarray(labels["visible"], dtype=bool)] = -1.0
        elif "visibility" in labels:
            value[np.asarray(labels["visibility"]) == "not shown"] = -1.0
        self.label_keys, self.label_values = _last_wins(lab_keys, value[lab_keep])

        pred_keep, pred_keys = self._keys(predictions, "predictions", pred_game, scored)
        confidence = _column(predictions, "confidence", "predictions").astype(np.float64)[pred_keep]
        keys, confidence = _last_wins(pred_keys, confidence)
        counted = confidence >= 0
        self.pred_keys, self.pred_scores = keys[counted], confidence[counted]

    def _keys(self, table: Table, what: str, game: np.ndarray, scored: np.ndarray | None):
        """(rows kept, their keys): rows of halves 1 and 2 (and of the ``scored`` game codes)."""
        half = _column(table, "half", what).astype(np.int64)
        cls = _column(table, "class_index", what).astype(np.int64)
        if cls.size and (cls.min() < 0 or cls.max() >= self.num_classes):
            raise InputError(f"{what} table: a class_index is outside 0..{self.num_classes - 1}")
        frame = _frames(table, what, self.framerate)
        keep = (half == 1) | (half == 2)
        if scored is not None:
            keep &= np.isin(game, scored)
        slot = 2 * game + (half - 1)
        keys = (slot * self.num_classes + cls) * self.n_frames + frame
        return keep, keys[keep]

    # -- derived quantities ------------------------------------------------------------------
    def pred_classes(self) -> np.ndarray:
        return (self.pred_keys // self.n_frames) % self.num_classes

    def label_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Visible and unshown labels per class, pooled over halves: two (C,) int64 arrays."""
        cls = (self.label_keys // self.n_frames) % self.num_classes
        visible = self.label_values > 0
        return (
            np.bincount(cls[visible], minlength=self.num_classes),
            np.bincount(cls[~visible], minlength=self.num_classes),
        )

    def pred_visibility(self) -> np.ndarray:
        """+1 / -1 per prediction: the value of the nearest label of its class in its half.

        The official fills the half grid segment by segment: label i owns frames
        ``[(f[i-1] + f[i]) // 2, (f[i] + f[i+1]) // 2)``, the first from frame 0, the last to the end.
        """
        if len(self.label_keys) == 0:
            return -np.ones(len(self.pred_keys))
        n = self.n_frames
        lab_group, lab_frame = np.divmod(self.label_keys, n)
        group, frame = np.divmod(self.pred_keys, n)
        nxt = np.searchsorted(self.label_keys, self.pred_keys, side="right")  # first label after
        prv = nxt - 1
        nxt_c = np.minimum(nxt, len(self.label_keys) - 1)
        prv_c = np.maximum(prv, 0)
        has_prev = (prv >= 0) & (lab_group[prv_c] == group)
        has_next = (nxt < len(self.label_keys)) & (lab_group[nxt_c] == group)
        to_next = has_next & (~has_prev | (frame >= (lab_frame[prv_c] + lab_frame[nxt_c]) // 2))
        return np.where(to_next, self.label_values[nxt_c], np.where(has_prev, self.label_values[prv_c], -1.0))

    def match(self, delta_frames: int) -> np.ndarray:
        """TP flag (bool) per prediction for a tolerance of ``delta_frames`` grid steps.

        Greedy, as the official: per class and half, labels in frame order each take the
        highest-scoring unused prediction with ``|frame difference| <= delta_frames / 2`` (ties:
        the earliest). Labels whose candidate sets overlap form a chain and are served in order;
        chains are independent, so the k-th labels of all chains are served at once.
        """
        n = self.n_frames
        w = int(np.floor(delta_frames / 2))
        group, frame = np.divmod(self.label_keys, n)
        start = np.searchsorted(self.pred_keys, group * n + np.maximum(frame - w, 0), side="left")
        stop = np.searchsorted(self.pred_keys, group * n + np.minimum(frame + w, n - 1), side="right")
        nonempty = stop > start
        start, stop = start[nonempty], stop[nonempty]  # both non-decreasing
        used = np.zeros(len(self.pred_keys), dtype=bool)
        if start.size == 0:
            return used
        new_chain = np.ones(start.size, dtype=bool)
        new_chain[1:] = start[1:] >= stop[:-1]
        chain_start = np.flatnonzero(new_chain)
        rank = np.arange(start.size) - chain_start[np.cumsum(new_chain) - 1]
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(rank.max() + 2))
        for k in range(rank.max() + 1):
            active = by_rank[bounds[k] : bounds[k + 1]]
            s, e = start[active], stop[active]
            cand = s[:, None] + np.arange((e - s).max())
            valid = cand < e[:, None]
            cand = np.where(valid, cand, 0)
            scores = np.where(valid & ~used[cand], self.pred_scores[cand], -np.inf)
            best = scores.argmax(axis=1)  # first maximum = earliest frame
            rows = np.arange(len(active))
            taken = scores[rows, best] > -np.inf
            used[cand[rows[taken], best[taken]]] = True
        return used


# --------------------------------------------------------------------------------------------
# Curves, AP, averaging
# --------------------------------------------------------------------------------------------


def _counts_at_thresholds(cls: np.ndarray, bucket: np.ndarray, num_classes: int) -> np.ndarray:
    """(200, C) float64: per threshold t and class c, how many of the given predictions have
    ``score >= THRESHOLDS[t]``; ``bucket`` = number of thresholds <= score, per prediction."""
    nb = len(THRESHOLDS) + 1
    hist = np.bincount(cls * nb + bucket, minlength=num_classes * nb).reshape(num_classes, nb)
    at_least = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # at_least[c, b] = count in buckets >= b
    return at_least[:, 1:].T.astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (the official's nan_to_num of 0/0)."""
    den = np.broadcast_to(den, num.shape).astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


class _Curves:
    """Precision-recall curves of one grid; the parts that do not depend on the tolerance are
    computed once. Variants: "" (all), "_visible", "_unshown" (by the nearest label's visibility)."""

    VARIANTS = ("", "_visible", "_unshown")

    def __init__(self, grid: _Grid):
        self.grid = grid
        self.cls = grid.pred_classes()
        self.bucket = np.searchsorted(THRESHOLDS, grid.pred_scores, side="right")
        visibility = grid.pred_visibility()
        n_visible, n_unshown = grid.label_counts()
        self.n_labels = {"": n_visible + n_unshown, "_visible": n_visible, "_unshown": n_unshown}
        self.masks = {
            "": np.ones(len(self.cls), dtype=bool),
            "_visible": visibility > 0.5,
            "_unshown": visibility < -0.5,
        }
        self.selected = {
            v: _counts_at_thresholds(self.cls[m], self.bucket[m], grid.num_classes) for v, m in self.masks.items()
        }

    def at(self, delta_frames: int) -> dict[str, np.ndarray]:
        """``precision<variant>`` and ``recall<variant>``, each (200, C), at THRESHOLDS."""
        tp = np.flatnonzero(self.grid.match(delta_frames))
        out = {}
        for v in self.VARIANTS:
            hits = tp[self.masks[v][tp]]
            true_pos = _counts_at_thresholds(self.cls[hits], self.bucket[hits], self.grid.num_classes)
            out["precision" + v] = _ratio(true_pos, self.selected[v])
            out["recall" + v] = _ratio(true_pos, self.n_labels[v][None, :])
        return out


def _ap_11(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """(C,) 11-point interpolated AP from (200, C) curves, summed in the official order."""
    ap = np.zeros(precision.shape[-1])
    for level in np.arange(11) / 10:
        ap += np.where(recall >= level, precision, 0.0).max(axis=0, initial=0.0)
    return ap / 11


def _average(values: list) -> Any:
    """The official trapezoid average over tolerances, normalised by (n - 1)."""
    integral = 0.0
    for i in range(len(values) - 1):
        integral += (values[i] + values[i + 1]) / 2
    return integral / (len(values) - 1)


def _evaluate(grid: _Grid, deltas_s: Sequence[int]) -> tuple[dict, dict]:
    """Official metrics (plain floats / lists, keys :data:`RESULT_KEYS`) and the curves of one grid."""
    maker = _Curves(grid)
    curves: dict[str, list] = {}
    ap: dict[str, list] = {v: [] for v in _Curves.VARIANTS}  # per tolerance: (C,) AP per class
    m_ap: dict[str, list] = {v: [] for v in _Curves.VARIANTS}  # per tolerance: mAP
    for delta in np.asarray(deltas_s) * grid.framerate:
        at_delta = maker.at(int(delta))
        for key, value in at_delta.items():
            curves.setdefault(key, []).append(value)
        for v in _Curves.VARIANTS:
            ap[v].append(_ap_11(at_delta["precision" + v], at_delta["recall" + v]))
            m_ap[v].append(np.mean(ap[v][-1]))
    result = {}
    for v in _Curves.VARIANTS:
        if len(deltas_s) == 1:  # the official returns the single tolerance's values, without 17/13
            overall, per_class = m_ap[v][0], ap[v][0]
        else:
            overall, per_class = _average(m_ap[v]), _average(ap[v])
            if v == "_unshown":
                overall = overall * UNSHOWN_FACTOR[0] / UNSHOWN_FACTOR[1]
        result["a_mAP" + v] = float(overall)
        result["a_mAP_per_class" + v] = [float(x) for x in per_class]
    result = {key: result[key] for key in RESULT_KEYS}
    curves_out = {k: np.stack(v) for k, v in curves.items()}
    curves_out.update({"ap" + v: np.stack(ap[v]) for v in _Curves.VARIANTS})
    curves_out.update(
        thresholds=THRESHOLDS.copy(),
        deltas_s=np.asarray(deltas_s, dtype=np.float64),
        n_labels_visible=maker.n_labels["_visible"],
        n_labels_unshown=maker.n_labels["_unshown"],
    )
    return result, curves_out


def _deltas(metric: str) -> tuple[int, ...]:
    if metric not in METRIC_DELTAS_S:
        raise InputError(f"metric {metric!r} is not one of {list(METRIC_DELTAS_S)}")
    return METRIC_DELTAS_S[metric]


def score(
    labels: Table,
    predictions: Table,
    metric: str = "tight",
    num_classes: int = 17,
    framerate: int = FRAMERATE,
    games: Iterable | None = None,
) -> dict[str, float | list[float]]:
    """The official t-AmAP of predictions against labels, as fractions in [0, 1].

    ``labels``: a table (dict of 1-D arrays, or a pandas DataFrame) with columns ``game`` (any
    hashable id), ``half`` (1 or 2; other halves are ignored), ``class_index`` (0..C-1), a time
    (``position_ms`` int ms, preferred, or ``time_s`` s; see the module docstring), and optionally
    ``visibility`` (str; ``"not shown"`` = unshown) or ``visible`` (bool); default visible.
    ``predictions``: columns ``game``, ``half``, ``class_index``, ``position_ms`` or ``time_s``,
    ``confidence`` (float; < 0 ignored). Rows are in file order: on one frame the later row wins.
    Games are all those named in either table (a game with predictions but no labels counts, its
    predictions all false positives), or only ``games`` when given.

    Returns the official keys: ``a_mAP``, ``a_mAP_visible``, ``a_mAP_unshown`` (floats) and
    ``a_mAP_per_class*`` (lists of C floats). ``metric``: one of :data:`METRIC_DELTAS_S`.
    """
    grid = _Grid(labels, predictions, num_classes, framerate, games)
    return _evaluate(grid, _deltas(metric))[0]


def precision_recall_curves(
    labels: Table,
    predictions: Table,
    metric: str = "tight",
    num_classes: int = 17,
    framerate: int = FRAMERATE,
    games: Iterable | None = None,
) -> dict[str, np.ndarray]:
    """The per-class precision-recall curves behind :func:`score` (same arguments).

    Returns ``thresholds`` (200,), ``deltas_s`` (D,), ``precision``, ``recall`` and their
    ``_visible`` / ``_unshown`` variants, each (D, 200, C) in threshold order (the official sorts
    each class's points by recall, which does not change AP), ``ap``, ``ap_visible``,
    ``ap_unshown`` (D, C) and ``n_labels_visible`` / ``n_labels_unshown`` (C,) int label counts.
    """
    grid = _Grid(labels, predictions, num_classes, framerate, games)
    return _evaluate(grid, _deltas(metric))[1]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} ({err.strerror})") from None


def _load_json(path: Path, data: bytes) -> Any:
    """``json.loads`` of the bytes ``data`` read from ``path``; bad JSON is an InputError."""
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a large JSON document is millions of new objects, none of them garbage
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def _fields(entries: list, fields: tuple[str, ...], converts: tuple[Callable, ...], whats: tuple[str, ...],
            where: str) -> list[list]:
    """Columns ``[convert(e[field]) for e in entries]``; on failure an InputError naming the entry."""
    try:
        columns = [[e[field] for e in entries] for field in fields]
        return [convert(column) for convert, column in zip(converts, columns)]
    except (KeyError, TypeError, ValueError, OverflowError, IndexError):
        pass
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InputError(f"{where}[{k}] is not an object")
        for field, convert, what in zip(fields, converts, whats):
            if field not in entry:
                raise InputError(f"{where}[{k}]: field '{field}' is missing")
            try:
                convert([entry[field]])
            except (TypeError, ValueError, OverflowError, IndexError):
                raise InputError(f"{where}[{k}]: field '{field}' {entry[field]!r} is not {what}") from None
    raise InputError(f"{where}: cannot be read")


def _class_indices(names: Sequence, index: dict[str, int], path: Path, where: str) -> np.ndarray:
    """Class index per entry, -1 for names outside the class list (one warning per file)."""
    try:
        return np.array(list(map(index.__getitem__, names)), dtype=np.int64)
    except (KeyError, TypeError):
        pass
    try:
        cls = np.array([index.get(n, -1) for n in names], dtype=np.int64)
    except TypeError:  # an unhashable label, which the official cannot look up either
        k = next(k for k, n in enumerate(names) if not isinstance(n, str))
        raise InputError(f"{where}[{k}]: field 'label' {names[k]!r} is not a class name") from None
    unknown = Counter(str(n) for n, c in zip(names, cls.tolist()) if c < 0)
    listed = ", ".join(f"{name!r} x{n}" for name, n in sorted(unknown.items()))
    warnings.warn(f"{path}: skipped {sum(unknown.values())} entries outside the class list: {listed}", stacklevel=3)
    return cls


def _int64(values: list[int]) -> np.ndarray:
    """int64 array of Python ints; values beyond +-2**53 are clamped there (the grid clips them)."""
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        return np.array([min(max(v, -(2**53)), 2**53) for v in values], dtype=np.int64)


def _milliseconds(values: list[int], keep: np.ndarray, path: Path) -> np.ndarray:
    """int64 milliseconds of the kept entries, with a warning for negative ones."""
    ms = _int64(values)[keep]
    if ms.size and ms.min() < 0:
        warnings.warn(
            f"{path}: {int((ms < 0).sum())} entries have a negative position; as the official scorer "
            "does, they are placed counting back from the end of the 2-hour grid",
            stacklevel=3,
        )
    return ms


def read_label_file(path: str | Path, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """A ``Labels-v2.json`` parsed as the official ``label2vector`` does.

    Returns columns ``half``, ``class_index``, ``position_ms`` (int64 ms; ``1000 * (s + 60 m)``
    from ``gameTime`` where ``position`` is missing) and ``visible`` (bool), in file order, without
    the entries outside ``classes`` (one warning per file names and counts them).
    """
    path = Path(path)
    document = _load_json(path, _read(path, "labels"))
    entries = document.get("annotations") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise InputError(f"{path}: field 'annotations' is missing or not a list")
    where = f"{path}: annotations"
    half, ms = [], []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InputError(f"{where}[{k}] is not an object")
        for field in ("gameTime", "label"):
            if field not in entry:
                raise InputError(f"{where}[{k}]: field '{field}' is missing")
        game_time = entry["gameTime"]
        try:  # the official slicing: half = time[0], minutes = time[-5:-3], seconds = time[-2:]
            half.append(int(game_time[0]))
            minutes, seconds = int(game_time[-5:-3]), int(game_time[-2:])
        except (TypeError, ValueError, IndexError):
            raise InputError(f"{where}[{k}]: field 'gameTime' {game_time!r} is not '<half> - <mm>:<ss>'") from None
        if "position" in entry:
            try:
                ms.append(int(entry["position"]))
            except (TypeError, ValueError, OverflowError):
                raise InputError(f"{where}[{k}]: field 'position' {entry['position']!r} is not milliseconds") from None
        else:
            ms.append(1000 * (seconds + 60 * minutes))
    cls = _class_indices([e["label"] for e in entries], {n: i for i, n in enumerate(classes)}, path, where)
    visible = np.array([e.get("visibility") != "not shown" for e in entries], dtype=bool)
    keep = cls >= 0
    return {
        "half": _int64(half)[keep],
        "class_index": cls[keep],
        "position_ms": _milliseconds(ms, keep, path),
        "visible": visible[keep],
    }


_PREDICTION_FIELDS = ("position", "half", "confidence", "label")


def _by_value(convert: Callable) -> Callable[[list], list]:
    """``list(map(convert, column))``, converting each distinct value once (halves and confidences
    repeat). Values equal as dict keys (``1 == 1.0``, ``0.0 == -0.0``) convert to equal results."""

    def apply(column: list) -> list:
        table = {value: convert(value) for value in set(column)}
        return list(map(table.__getitem__, column))

    return apply


_PREDICTION_CONVERTS = (lambda c: list(map(int, c)), _by_value(int), _by_value(float), list)


def _fast_prediction_columns(data: bytes) -> list[list] | None:
    """The converted columns of :data:`_PREDICTION_FIELDS`, or None where the document is not the
    plain case (then the stdlib path reads it and names what is wrong).

    msgspec decodes straight into a struct of the four fields (the others are skipped unparsed),
    ~3x faster than ``json.loads`` building a dict per entry, and converts in C where its
    conversion is the official's: ``confidence`` with msgspec's lax ``float`` (the same double as
    ``float()`` for every string it accepts; it refuses the rest, e.g. ``" 0.5"`` or ``"1e400"``).
    ``position`` and ``half`` are kept raw and converted only where every value is a plain integer
    (digits and a sign, quoted or not), the one case in which msgspec's lax ``int`` equals
    ``int()``: it would also take ``"1e3"`` and ``"1.0"``, which ``int()`` refuses. It agrees with
    ``json.loads`` where it succeeds (later duplicate keys win, integers of any size); what it
    rejects or may read differently (NaN/Infinity literals, lone surrogates, a BOM, invalid UTF-8 in
    skipped fields, numbers out of float range, escapes in the integer fields) goes to the stdlib
    path. One difference is kept: a confidence ``"-0"`` (an integer string) reads as +0.0, not
    ``float()``'s -0.0; the two are equal, and no comparison of the scorer tells them apart.
    """
    import msgspec  # lazily: only the file API needs it

    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    entries_decoder, integers_decoder = _prediction_decoders(msgspec)

    def plain_integers(field: str) -> list[int] | None:
        text = b",".join(map(operator.attrgetter(field), entries))
        if text.translate(None, b'0123456789-",'):
            return None
        return integers_decoder.decode(b"[" + text + b"]")

    try:
        entries = entries_decoder.decode(data).predictions
        position, half = plain_integers("position"), plain_integers("half")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if position is None or half is None:
        return None
    return [position, half, list(map(operator.attrgetter("confidence"), entries)),
            list(map(operator.attrgetter("label"), entries))]


@functools.cache
def _prediction_decoders(msgspec: Any) -> tuple[Any, Any]:
    """(decoder of the documents' four fields, lax decoder of a JSON list of integers)."""
    fields = [("position", msgspec.Raw), ("half", msgspec.Raw), ("confidence", float), ("label", str)]
    entry = msgspec.defstruct("Prediction", fields, gc=False)
    document = msgspec.defstruct("Predictions", [("predictions", list[entry])], gc=False)
    return msgspec.json.Decoder(document, strict=False), msgspec.json.Decoder(list[int], strict=False)


def read_prediction_file(path: str | Path, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """A ``results_spotting.json`` parsed as the official ``predictions2vector`` does.

    Returns columns ``half``, ``class_index``, ``position_ms`` (int64 ms, ``int(position)``) and
    ``confidence`` (float64), in file order, without the entries outside ``classes`` (one warning
    per file). A missing or non-numeric ``half``, ``position`` or ``confidence`` is an InputError.
    """
    path = Path(path)
    where = f"{path}: predictions"
    data = _read(path, "predictions")
    columns = _fast_prediction_columns(data)
    if columns is None:
        document = _load_json(path, data)
        entries = document.get("predictions") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise InputError(f"{path}: field 'predictions' is missing or not a list")
        columns = _fields(
            entries,
            _PREDICTION_FIELDS,
            _PREDICTION_CONVERTS,
            ("an integer number of milliseconds", "an integer", "a number", "a class name"),
            where,
        )
    position, half, confidence, names = columns
    cls = _class_indices(names, {n: i for i, n in enumerate(classes)}, path, where)
    keep = cls >= 0
    return {
        "half": _int64(half)[keep],
        "class_index": cls[keep],
        "position_ms": _milliseconds(position, keep, path),
        "confidence": np.array(confidence, dtype=np.float64)[keep],
    }


def find_games(labels_root: str | Path) -> list[str]:
    """Every folder under ``labels_root`` holding a ``Labels-v2.json``, as sorted relative paths."""
    root = Path(labels_root)
    if not root.is_dir():
        raise InputError(f"{root}: labels folder does not exist")
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob(LABELS_FILE))


def read_tables(
    labels_root: str | Path,
    predictions_root: str | Path,
    games: Sequence[str],
    classes: Sequence[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Label and prediction tables of ``games`` (column ``game`` = index into ``games``).

    Labels at ``<labels_root>/<game>/Labels-v2.json`` (required); predictions at
    ``<predictions_root>/<game>/results_spotting.json`` (a missing file: no predictions, warned).
    """
    label_parts, pred_parts = [], []
    for g, game in enumerate(games):
        part = read_label_file(Path(labels_root) / game / LABELS_FILE, classes)
        label_parts.append({"game": np.full(len(part["half"]), g, dtype=np.int64), **part})
        pred_path = Path(predictions_root) / game / PREDICTIONS_FILE
        if not pred_path.is_file():
            warnings.warn(f"{game}: no {pred_path}; scored as a game without predictions", stacklevel=2)
            continue
        part = read_prediction_file(pred_path, classes)
        pred_parts.append({"game": np.full(len(part["half"]), g, dtype=np.int64), **part})
    empty_labels = {"game": [0], "half": [0], "class_index": [0], "position_ms": [0], "visible": [True]}
    empty_preds = {"game": [0], "half": [0], "class_index": [0], "position_ms": [0], "confidence": [0.0]}

    def concat(parts: list, empty: dict) -> dict[str, np.ndarray]:
        if not parts:
            return {k: np.asarray(v)[:0] for k, v in empty.items()}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return concat(label_parts, empty_labels), concat(pred_parts, empty_preds)


def score_files(
    labels_root: str | Path,
    predictions_root: str | Path,
    games: Sequence[str] | None = None,
    metric: str = "tight",
    classes: Sequence[str] | None = None,
) -> dict[str, float | list[float]]:
    """:func:`score` of the files of ``games`` (default: :func:`find_games` of ``labels_root``)."""
    classes = _default_classes() if classes is None else tuple(classes)
    games = find_games(labels_root) if games is None else list(games)
    labels, predictions = read_tables(labels_root, predictions_root, games, classes)
    return score(labels, predictions, metric=metric, num_classes=len(classes))


def _default_classes() -> tuple[str, ...]:
    from comedian.data.soccernet import SOCCERNET_V2_CLASSES  # imports pandas: only when needed

    return SOCCERNET_V2_CLASSES


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _summary(result: dict, curves: dict, classes: Sequence[str], metric: str, n_games: int) -> str:
    deltas = ", ".join(str(int(d)) for d in curves["deltas_s"])
    lines = [
        f"t-AmAP ({metric}: tolerances {deltas} s) over {n_games} games",
        f"  a-mAP {100 * result['a_mAP']:6.2f} %   visible {100 * result['a_mAP_visible']:6.2f} %   "
        f"unshown {100 * result['a_mAP_unshown']:6.2f} %",
        f"  {'class':<20} {'a-mAP':>7} {'visible':>8} {'unshown':>8} {'labels':>7}",
    ]
    n_labels = curves["n_labels_visible"] + curves["n_labels_unshown"]
    for c, name in enumerate(classes):
        lines.append(
            f"  {name:<20} {100 * result['a_mAP_per_class'][c]:7.2f} {100 * result['a_mAP_per_class_visible'][c]:8.2f} "
            f"{100 * result['a_mAP_per_class_unshown'][c]:8.2f} {int(n_labels[c]):7d}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``comedian evaluate``: the official t-AmAP of a folder of predictions."""
    parser = argparse.ArgumentParser(
        prog="comedian evaluate",
        description="Score <predictions>/<game>/results_spotting.json against <labels>/<game>/Labels-v2.json "
        "exactly as SoccerNet's official scorer does.",
    )
    parser.add_argument("--labels", required=True, type=Path, help="root of <game>/Labels-v2.json")
    parser.add_argument("--predictions", required=True, type=Path, help="root of <game>/results_spotting.json")
    parser.add_argument("--metric", default="tight", choices=list(METRIC_DELTAS_S))
    parser.add_argument("--games", type=Path, help="split list (one game per line, or a JSON array); "
                        "default: every folder under --labels with a Labels-v2.json")
    parser.add_argument("--json", type=Path, help="write the official result keys here")
    parser.add_argument("--classes", nargs="+", help="class names in index order (default: the 17 of SoccerNet-v2)")
    args = parser.parse_args(argv)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            classes = tuple(args.classes) if args.classes else _default_classes()
            if args.games is not None:
                from comedian.data.soccernet import read_game_list

                games = read_game_list(args.games)
                if not games:
                    raise InputError(f"{args.games}: the game list is empty")
            else:
                games = find_games(args.labels)
                if not games:
                    raise InputError(f"{args.labels}: no {LABELS_FILE} under this folder")
            if not args.predictions.is_dir():
                raise InputError(f"{args.predictions}: predictions folder does not exist")
            labels, predictions = read_tables(args.labels, args.predictions, games, classes)
            grid = _Grid(labels, predictions, len(classes), FRAMERATE)
            result, curves = _evaluate(grid, METRIC_DELTAS_S[args.metric])
        finally:
            for warning in caught:
                print(f"comedian evaluate: warning: {warning.message}", file=sys.stderr)
    if args.json is not None:
        document = {**result, "metric": args.metric, "classes": list(classes), "num_games": len(games)}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(document, indent=2) + "\n")
    print(_summary(result, curves, classes, args.metric, len(games)))
    _track(args, result, classes, len(games))
    return 0


def _track(args: argparse.Namespace, result: dict, classes: tuple[str, ...], num_games: int) -> None:
    """Log a pipeline job's result to MLflow. By hand (no pipeline run in the environment) nothing is
    logged, so that the command stays fast (``import mlflow`` alone takes ~2 s)."""
    from comedian import tracking

    if not tracking.in_pipeline():
        return
    params = {"metric": args.metric, "predictions": str(args.predictions), "games": num_games}
    with tracking.stage_run("evaluate", wildcards={"metric": args.metric}, params=params) as run:
        run.log_metrics({key: result[key] for key in ("a_mAP", "a_mAP_visible", "a_mAP_unshown")})
        run.log_metrics({f"AP/{name}": ap for name, ap in zip(classes, result["a_mAP_per_class"])})
        if args.json is not None:
            run.log_artifact(args.json)
