"""Non-maximum suppression of raw per-step scores, ``results_spotting.json`` files, challenge zip.

Two NMS rules, both applied to each class (column) of a half independently:

- :func:`soft_nms` (linear soft NMS, the paper's best): repeatedly take the highest remaining
  score of the class (the first step on ties); stop when it is below ``threshold``; otherwise keep
  it with its current value, remove it, and multiply every remaining score of the class at a
  distance of ``d`` steps by ``min(1, d / (window / 2))``.
- :func:`hard_nms`: keep a step when its score is ``>= threshold`` and is the maximum of its class
  (ties all kept) within ``+-floor(window / 2)`` steps.

Both take scores on a regular time grid in *steps* (rows); the stage ``comedian postprocess``
and :func:`spotting_predictions` take the window in *seconds* and convert it once (see
:func:`window_steps`). They return the kept scores in an array of the input's shape, zero
elsewhere.

Soft NMS is computed exactly (bit for bit equal to the sequential rule) without the sequential
rule's quadratic cost. A kept peak changes only its *zone*, the steps less than ``window / 2``
away (Z = ``ceil(window / 2) - 1`` steps each side), and candidate scores only shrink (multipliers
are <= 1; scores below ``threshold`` can never be taken and are ignored). So a candidate that
beats (by value, then earlier index) every other candidate within 2Z steps keeps its value until
the sequential rule takes it, and is taken before any of them. All such candidates of all
classes are taken at once in a round; being more than 2Z apart, their zones are disjoint, so every
score receives its multipliers in the same order as in the sequential rule. Rounds after the
first re-examine only the neighbourhoods that changed (network-like scores: 15-20 rounds a half).

Stage (``comedian postprocess``): raw-score HDF5 of a split (written by inference) ->
``<output>/<league>/<season>/<game>/results_spotting.json`` per game (+ optional challenge zip).
HDF5 layout: root attribute ``classes`` (JSON list of class names); per game a group
``/<game_slug>`` with attribute ``game`` (``<league>/<season>/<game>``) and one group per half
``/<game_slug>/<half>`` (``"1"``, ``"2"``) holding ``scores`` (T, C) float32 and ``times_s`` (T,)
float64, the time of each row in seconds within the half, regularly spaced.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from comedian.data.soccernet import HALVES, game_slug, read_game_list
from comedian.errors import InputError
from comedian.io import atomic_path, replace_dir

NMS_KINDS: tuple[str, ...] = ("soft", "hard")
RESULTS_FILE = "results_spotting.json"
#: Relative tolerance on the spacing of ``times_s`` (a grid stored in float32 upstream still passes).
SPACING_RTOL = 1e-4
#: Fixed timestamp of zip entries, so that the same predictions give the same zip bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------------------------
# NMS on arrays (steps)
# --------------------------------------------------------------------------------------------


def _check_inputs(scores: np.ndarray, window: float, threshold: float) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a (T, C) array, got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise TypeError(f"scores must be a floating-point array, got dtype {scores.dtype}")
    if not np.all(np.isfinite(scores)):
        bad = np.argwhere(~np.isfinite(scores))[0]
        raise ValueError(f"scores hold NaN or infinite values (first at step {bad[0]}, class {bad[1]})")
    if not (isinstance(window, (int, float, np.integer, np.floating)) and math.isfinite(window) and window >= 0):
        raise ValueError(f"window must be a finite number of steps >= 0, got {window!r}")
    if not (isinstance(threshold, (int, float, np.integer, np.floating)) and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return scores


def _window_max(x: np.ndarray, length: int) -> np.ndarray:
    """``out[i] = max(x[i : i + length])`` along axis 0, for ``i`` in ``[0, len(x) - length]``.

    Doubling: maxima over spans of 1, 2, 4, ... rows, then two overlapping spans of the largest
    power of two <= ``length`` cover each window, so the cost grows with ``log2(length)`` only.
    Maxima are exact, so the result equals a plain loop. ``x``: (N, ...) with N >= length;
    result: (N - length + 1, ...).
    """
    span, result = 1, x
    while 2 * span <= length:
        result = np.maximum(result[:-span], result[span:])
        span *= 2
    if span < length:
        result = np.maximum(result[: -(length - span)], result[length - span :])
    return result


def hard_nms(scores: np.ndarray, window: float, threshold: float) -> np.ndarray:
    """Hard NMS per class: keep local maxima within ``+-floor(window / 2)`` steps.

    Args:
        scores: (T, C) float array of per-step scores (finite; NaN or inf -> ``ValueError``).
        window: window width in steps (>= 0, may be fractional); the radius is
            ``floor(window / 2)``, so ``window < 2`` keeps every score ``>= threshold``.
        threshold: a step is kept only when its score is ``>= threshold``.

    Returns:
        (T, C) array of ``scores``' dtype: the score where kept (ties within the window are all
        kept), 0 elsewhere. The window is cut at both ends of the half.
    """
    scores = _check_inputs(scores, window, threshold)
    radius = min(int(math.floor(window / 2)), max(scores.shape[0] - 1, 0))
    if scores.size == 0:
        return np.zeros_like(scores)
    if radius > 0:
        edge = np.full((radius, scores.shape[1]), -np.inf, dtype=scores.dtype)
        local_max = _window_max(np.concatenate([edge, scores, edge]), 2 * radius + 1)
        keep = (scores >= threshold) & (scores >= local_max)
    else:
        keep = scores >= threshold
    return np.where(keep, scores, np.zeros((), dtype=scores.dtype))


def soft_multipliers(window: float, dtype: np.dtype | type) -> np.ndarray:
    """The soft-NMS multipliers ``min(1, d / (window / 2))`` for ``d = 1, 2, ...`` while below 1.

    Computed in float64 and rounded once to ``dtype`` (the scores' dtype); the product with a
    score is then taken in ``dtype``. Steps at ``d >= window / 2`` keep their score (multiplier 1),
    so ``window <= 2`` suppresses nothing; ``window == 0`` (``d / 0``) is defined as no suppression.
    Returns a (Z,) array, Z = ``ceil(window / 2) - 1`` (0 when ``window <= 2``).
    """
    half = float(window) / 2.0
    zone = max(math.ceil(half) - 1, 0)
    distances = np.arange(1, zone + 1, dtype=np.float64)
    return np.minimum(1.0, distances / half).astype(dtype) if zone else np.zeros(0, dtype=dtype)


def soft_nms(scores: np.ndarray, window: float, threshold: float) -> np.ndarray:
    """Linear soft NMS per class, exact and near-linear in T.

    Args:
        scores: (T, C) float array of per-step scores (finite; NaN or inf -> ``ValueError``).
            Negative scores are accepted only with ``threshold > 0`` (they can then never be
            kept and never affect anything); scores are meant to be probabilities.
        window: window width in steps (>= 0, may be fractional). A kept peak at step m multiplies
            the remaining score at step j by ``min(1, |j - m| / (window / 2))`` (see
            :func:`soft_multipliers`), so only steps with ``|j - m| < window / 2`` change.
        threshold: stop (per class) when the highest remaining score is below it.

    Returns:
        (T, C) array of ``scores``' dtype: each kept score with its value at the moment it was
        taken, 0 elsewhere. Equal bit for bit to the sequential rule in the module docstring.
    """
    scores = _check_inputs(scores, window, threshold)
    if threshold <= 0 and scores.size and scores.min() < 0:
        raise ValueError("soft NMS of negative scores needs threshold > 0 (scores are probabilities)")
    n_steps, n_classes = scores.shape
    weights = soft_multipliers(window, scores.dtype)[: max(n_steps - 1, 0)]
    zone = weights.size
    if zone == 0 or scores.size == 0:
        return np.where(scores >= threshold, scores, np.zeros((), dtype=scores.dtype))

    # One flat row per class, with `reach` never-candidate cells on each side, so that neighbour
    # offsets up to `reach` need no bounds checks and never cross into another class.
    reach = 2 * zone  # peaks closer than this may touch a common step: their order matters
    width = n_steps + 2 * reach
    value = np.zeros((n_classes, width), dtype=scores.dtype)
    value[:, reach : reach + n_steps] = scores.T
    value = value.reshape(-1)
    # key = value while the step is a candidate (remaining and >= threshold), else -inf. A step
    # below threshold can never be taken (scores only shrink), so it constrains nothing.
    key = np.where(value >= threshold, value, -np.inf).astype(scores.dtype)
    key.reshape(n_classes, width)[:, :reach] = -np.inf
    key.reshape(n_classes, width)[:, reach + n_steps :] = -np.inf
    kept = np.zeros_like(value)

    zone_offsets = np.concatenate([-np.arange(1, zone + 1), np.arange(1, zone + 1)])
    zone_weights = np.concatenate([weights, weights])
    near_offsets = np.concatenate([-np.arange(1, reach + 1), np.arange(1, reach + 1)])
    dirty_offsets = np.arange(-(zone + reach), zone + reach + 1)
    positions = None  # None: examine every cell; else the flat indices to re-examine
    while True:
        if positions is None:
            # window_max[j] = max(key[j : j + reach]): left of i is window_max[i - reach],
            # right of i is window_max[i + 1].
            window_max = _window_max(key, reach)
            centre = key[reach:-reach]
            ready = (centre > window_max[: centre.size]) & (centre >= window_max[reach + 1 :])
            picks = np.flatnonzero(ready) + reach
        else:
            near = key[positions[:, None] + near_offsets]
            centre = key[positions]
            ready = (centre > near[:, :reach].max(axis=1)) & (centre >= near[:, reach:].max(axis=1))
            picks = positions[ready]
        if picks.size == 0:
            break
        kept[picks] = value[picks]
        key[picks] = -np.inf
        touched = picks[:, None] + zone_offsets  # zones of peaks of one round are disjoint
        value[touched] *= zone_weights
        still = key[touched] > -np.inf
        key[touched] = np.where(still & (value[touched] >= threshold), value[touched], -np.inf)
        # Steps whose readiness may change: within `reach` of a changed step.
        if picks.size * dirty_offsets.size * 4 > key.size:
            positions = None
        else:
            dirty = np.zeros(key.size + 2 * (zone + reach), dtype=bool)  # shifted by zone + reach
            dirty[(picks[:, None] + (dirty_offsets + zone + reach)).reshape(-1)] = True
            positions = np.flatnonzero(dirty[zone + reach : zone + reach + key.size] & (key > -np.inf))
            if positions.size == 0:
                break
    return np.ascontiguousarray(kept.reshape(n_classes, width)[:, reach : reach + n_steps].T)


def apply_nms(scores: np.ndarray, kind: str, window: float, threshold: float) -> np.ndarray:
    """:func:`soft_nms` or :func:`hard_nms` by name (``kind`` in :data:`NMS_KINDS`)."""
    if kind == "soft":
        return soft_nms(scores, window, threshold)
    if kind == "hard":
        return hard_nms(scores, window, threshold)
    raise ValueError(f"nms must be one of {list(NMS_KINDS)}, got {kind!r}")


# --------------------------------------------------------------------------------------------
# Seconds <-> steps, predictions
# --------------------------------------------------------------------------------------------


def grid_step_s(times_s: np.ndarray) -> float:
    """Spacing in seconds of a regular time grid ``times_s`` (T,), T >= 2.

    The spacing is ``(times_s[-1] - times_s[0]) / (T - 1)``; every difference must lie within
    :data:`SPACING_RTOL` of it, else ``ValueError``.
    """
    times_s = np.asarray(times_s, dtype=np.float64)
    if times_s.size < 2:
        raise ValueError("a time grid needs at least two rows to have a spacing")
    step = float(times_s[-1] - times_s[0]) / (times_s.size - 1)
    gaps = np.diff(times_s)
    if not step > 0 or np.max(np.abs(gaps - step)) > SPACING_RTOL * step:
        raise ValueError(
            f"times are not a regular increasing grid (spacing {step!r} s, gaps from "
            f"{gaps.min()!r} to {gaps.max()!r} s)"
        )
    return step


def window_steps(window_s: float, step_s: float) -> int:
    """An NMS window in seconds -> whole grid steps: ``window_s / step_s`` rounded to the nearest
    integer, halves rounded up (10 s on a 1-s grid -> 10 steps; on a 0.5-s grid -> 20)."""
    if not (math.isfinite(window_s) and window_s >= 0):
        raise ValueError(f"window must be a finite number of seconds >= 0, got {window_s!r}")
    return int(math.floor(window_s / step_s + 0.5))


def game_time(half: int, position_ms: int) -> str:
    """SoccerNet's ``gameTime``: ``"<half> - <minutes>:<seconds>"``, seconds zero-padded to two
    digits, minutes not padded (``"1 - 0:31"``, ``"2 - 45:07"``), from whole seconds of
    ``position_ms`` (rounded down), as in the devkit's README example."""
    minutes, seconds = divmod(position_ms // 1000, 60)
    return f"{half} - {minutes}:{seconds:02d}"


def format_confidence(value: np.floating) -> str:
    """The shortest decimal string that reads back (in the score's own dtype) as ``value``."""
    return np.format_float_positional(value, unique=True, trim="-")


def spotting_predictions(
    scores: np.ndarray,
    times_s: np.ndarray,
    classes: Sequence[str],
    nms: str,
    window_s: float,
    threshold: float,
    *,
    half: int,
) -> Iterator[dict[str, str]]:
    """NMS on one half's raw scores -> SoccerNet prediction entries (all fields strings), one at a time:
    the checks and the NMS are done by the call, the entries made as they are taken (a long video's
    spots need not all be held: ``comedian spot`` writes them as they come).

    Args:
        scores: (T, C) float per-step scores; column c is class ``classes[c]``.
        times_s: (T,) time of each row in seconds within the half, regularly spaced.
        classes: C class names (the ``label`` written).
        nms: ``"soft"`` or ``"hard"``.
        window_s: NMS window in seconds, converted once to whole steps by :func:`window_steps`.
        threshold: NMS threshold on the scores.
        half: 1 or 2 (written as ``half`` and in ``gameTime``).

    Returns:
        An iterator of one dict per kept (nonzero) score, ordered by time then class index, with ``gameTime``
        (:func:`game_time`), ``label``, ``position`` (milliseconds, the row's time rounded to the
        nearest millisecond), ``half`` and ``confidence`` (:func:`format_confidence`).
    """
    scores = np.asarray(scores)
    times_s = np.asarray(times_s, dtype=np.float64)
    if scores.ndim != 2 or times_s.shape != scores.shape[:1] or len(classes) != scores.shape[1]:
        raise ValueError(
            f"shapes disagree: scores {scores.shape}, times_s {times_s.shape}, {len(classes)} classes"
        )
    if not np.all(np.isfinite(times_s)) or (times_s.size and times_s.min() < 0):
        raise ValueError("times_s must be finite seconds >= 0")
    window = window_steps(window_s, grid_step_s(times_s)) if times_s.size >= 2 else 0
    kept = apply_nms(scores, nms, window, threshold)
    rows, cols = np.nonzero(kept)  # row-major: by time, then class
    positions_ms = np.floor(times_s * 1000.0 + 0.5).astype(np.int64)
    return (
        {
            "gameTime": game_time(half, int(positions_ms[r])),
            "label": str(classes[c]),
            "position": str(int(positions_ms[r])),
            "half": str(half),
            "confidence": format_confidence(kept[r, c]),
        }
        for r, c in zip(rows, cols)  # numpy indices: 16 bytes a spot until taken
    )


def results_document(game: str, predictions: list[dict[str, str]]) -> dict:
    """The content of a game's ``results_spotting.json``: ``UrlLocal`` = the game's relative path."""
    return {"UrlLocal": game, "predictions": predictions}


# --------------------------------------------------------------------------------------------
# Stage: HDF5 raw scores -> results folders (+ zip)
# --------------------------------------------------------------------------------------------


def _read_half(path: Path, group, where: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    if not isinstance(group, h5py.Group):
        raise InputError(f"{path}: '{where}' is not a group")
    for name in ("scores", "times_s"):
        if not isinstance(group.get(name), h5py.Dataset):
            raise InputError(f"{path}: dataset '{where}/{name}' is missing")
    scores = group["scores"][()]
    times_s = group["times_s"][()]
    if scores.ndim != 2 or not np.issubdtype(scores.dtype, np.floating):
        raise InputError(f"{path}: '{where}/scores' must be a (T, C) float array, got {scores.dtype} {scores.shape}")
    if scores.shape[1] != n_classes:
        raise InputError(
            f"{path}: '{where}/scores' has {scores.shape[1]} columns but attribute 'classes' has {n_classes}"
        )
    if times_s.shape != scores.shape[:1] or not np.issubdtype(times_s.dtype, np.number):
        raise InputError(
            f"{path}: '{where}/times_s' has shape {times_s.shape}, expected ({scores.shape[0]},) like 'scores'"
        )
    if not np.all(np.isfinite(scores)):
        step, cls = np.argwhere(~np.isfinite(scores))[0]
        raise InputError(f"{path}: '{where}/scores' holds NaN or infinite values (first at row {step}, column {cls})")
    times_s = times_s.astype(np.float64)
    if not np.all(np.isfinite(times_s)) or (times_s.size and times_s.min() < 0):
        raise InputError(f"{path}: '{where}/times_s' must hold finite seconds >= 0")
    if times_s.size >= 2:
        try:
            grid_step_s(times_s)
        except ValueError as err:
            raise InputError(f"{path}: '{where}/times_s': {err}") from None
    return scores, times_s


def read_raw_scores(path: str | Path) -> tuple[list[str], dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]]:
    """Read a raw-score HDF5 file (layout in the module docstring), checking every field.

    Returns ``(classes, games)``: ``games[game][half] = (scores (T, C), times_s (T,))`` with
    ``game`` the relative path ``<league>/<season>/<game>``. Raises :class:`InputError` naming the
    file and the field for anything malformed.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: raw-score file not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: cannot open as HDF5 ({err})") from None
    with handle:
        if "classes" not in handle.attrs:
            raise InputError(f"{path}: root attribute 'classes' is missing")
        try:
            classes = json.loads(handle.attrs["classes"])
        except (TypeError, json.JSONDecodeError):
            raise InputError(f"{path}: root attribute 'classes' is not a JSON list") from None
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise InputError(f"{path}: root attribute 'classes' must be a non-empty JSON list of names")
        games: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        for slug, group in handle.items():
            if not isinstance(group, h5py.Group):
                raise InputError(f"{path}: '/{slug}' is not a game group")
            game = group.attrs.get("game")
            if isinstance(game, bytes):
                game = game.decode()
            if not isinstance(game, str):
                raise InputError(f"{path}: attribute 'game' of '/{slug}' is missing or not a string")
            parts = game.split("/")
            if len(parts) != 3 or any(part in ("", ".", "..") for part in parts):
                raise InputError(f"{path}: attribute 'game' of '/{slug}' = {game!r} is not '<league>/<season>/<game>'")
            if game_slug(game) != slug:
                raise InputError(f"{path}: group '/{slug}' holds game {game!r}, whose slug is {game_slug(game)!r}")
            names = set(group.keys())
            expected = {str(h) for h in HALVES}
            if names != expected:
                raise InputError(
                    f"{path}: game group '/{slug}' must hold exactly the half groups {sorted(expected)}, "
                    f"has {sorted(names)}"
                )
            games[game] = {
                half: _read_half(path, group[str(half)], f"/{slug}/{half}", len(classes)) for half in HALVES
            }
    return classes, games


def _write_json(path: Path, document: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, separators=(",", ":")) + "\n")


def write_zip(path: str | Path, files: dict[str, Path]) -> None:
    """A zip with one entry per ``files`` item (entry name -> file), deterministic bytes."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(files):
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, files[name].read_bytes())


def write_results(
    scores_path: str | Path,
    output: str | Path,
    nms: str,
    window_s: float,
    threshold: float,
    zip_path: str | Path | None = None,
    games: list[str] | None = None,
) -> list[str]:
    """Raw-score HDF5 -> ``<output>/<game>/results_spotting.json`` per game (+ challenge zip).

    ``games``: the games the file must hold exactly (e.g. a split list), else all of its games.
    The folder is built beside ``output`` under a temporary name and renamed at the end, so a
    failure leaves no partial folder; the zip (entries ``<game>/results_spotting.json``) is
    written through :func:`comedian.io.atomic_path`. Returns the games written, sorted.
    """
    scores_path, output = Path(scores_path), Path(output)
    if nms not in NMS_KINDS:
        raise InputError(f"--nms must be one of {list(NMS_KINDS)}, got {nms!r}")
    if not (math.isfinite(window_s) and window_s >= 0):
        raise InputError(f"--window-s must be a finite number of seconds >= 0, got {window_s!r}")
    if not math.isfinite(threshold):
        raise InputError(f"--threshold must be a finite number, got {threshold!r}")
    classes, raw = read_raw_scores(scores_path)
    if games is not None:
        missing = sorted(set(games) - set(raw))
        extra = sorted(set(raw) - set(games))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} listed games missing from the file: {missing[:5]}")
            if extra:
                parts.append(f"{len(extra)} games not in the list: {extra[:5]}")
            raise InputError(f"{scores_path}: games do not match the game list ({'; '.join(parts)})")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")  # a killed run's leftover is overwritten
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files: dict[str, Path] = {}
        for game in sorted(raw):
            predictions: list[dict[str, str]] = []
            for half, (scores, times_s) in sorted(raw[game].items()):
                try:
                    predictions.extend(
                        spotting_predictions(scores, times_s, classes, nms, window_s, threshold, half=half)
                    )
                except ValueError as err:
                    raise InputError(f"{scores_path}: '/{game_slug(game)}/{half}': {err}") from None
            target = tmp / game / RESULTS_FILE
            _write_json(target, results_document(game, predictions))
            files[f"{game}/{RESULTS_FILE}"] = target
        if zip_path is not None:
            write_zip(zip_path, files)
        replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="comedian postprocess",
        description="NMS on raw scores -> SoccerNet results_spotting.json per game (+ challenge zip).",
    )
    parser.add_argument("--scores", required=True, type=Path, help="raw-score HDF5 file of a split")
    parser.add_argument("--output", required=True, type=Path, help="folder to write <game>/results_spotting.json in")
    parser.add_argument("--nms", required=True, choices=NMS_KINDS, help="soft (linear) or hard NMS")
    parser.add_argument("--window-s", required=True, type=float, help="NMS window in seconds (whole width)")
    parser.add_argument("--threshold", required=True, type=float, help="keep scores >= this")
    parser.add_argument("--zip", type=Path, default=None, help="also write a challenge submission zip here")
    parser.add_argument("--games", type=Path, default=None, help="game list the file must match exactly")
    args = parser.parse_args(argv)
    games = read_game_list(args.games) if args.games is not None else None
    from comedian.tracking import stage_run

    params = {"scores": str(args.scores), "nms": args.nms, "window_s": args.window_s, "threshold": args.threshold}
    with stage_run("postprocess", wildcards={"split": args.scores.stem}, params=params) as run:
        written = write_results(args.scores, args.output, args.nms, args.window_s, args.threshold, args.zip, games)
        run.log_metrics({"games": len(written)})
        if args.zip:
            run.log_artifact(args.zip)
    also = f" and {args.zip}" if args.zip else ""
    print(f"comedian postprocess: wrote {len(written)} games to {args.output}{also}")
    return 0
