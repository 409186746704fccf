"""``comedian ensemble``: average the raw scores of several seeds' models (the paper's "ens." rows).

Inputs are raw-score HDF5 files of one split (layout in :mod:`comedian.inference.predict`), e.g. one
per seed. They must hold the same classes (same order), the same games, and for every half the same
time grid; the output holds, for every half, the plain mean of the inputs' scores (computed in
float64, stored float32) on that grid. Anything that differs is refused, naming the files and the
games, halves or classes concerned. With ``--games``, the inputs must also hold exactly the
split list's games.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from comedian.data.soccernet import HALVES, read_game_list
from comedian.errors import InputError
from comedian.inference.predict import RawScoreWriter

__all__ = ["TIME_ATOL_S", "check_same_grid", "ensemble_scores", "main"]

#: Two inputs' row times may differ by this much (seconds) and still count as one grid.
TIME_ATOL_S = 1e-6


def _names(items: Sequence[str], limit: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _check_games(path: Path, games: set[str], expected: set[str], what: str) -> None:
    missing, extra = sorted(expected - games), sorted(games - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} games of {what}: {_names(missing)}")
        if extra:
            parts.append(f"has {len(extra)} games not in {what}: {_names(extra)}")
        raise InputError(f"{path}: {'; '.join(parts)}")


def check_same_grid(times_s: np.ndarray, ref_times_s: np.ndarray, where: str, ref: str) -> None:
    """The ensemble's condition on two models' rows: the same time grid (within :data:`TIME_ATOL_S`).

    Raises:
        InputError: ``where`` (what holds ``times_s``) and ``ref`` named, with the first difference.
    """
    if times_s.shape != ref_times_s.shape:
        raise InputError(f"{where}: {times_s.size} rows but {ref} has {ref_times_s.size}")
    if not np.allclose(times_s, ref_times_s, rtol=0.0, atol=TIME_ATOL_S):
        row = int(np.argmax(np.abs(times_s - ref_times_s) > TIME_ATOL_S))
        raise InputError(f"{where}: times_s differ from {ref}'s (first at row {row}: "
                         f"{times_s[row]!r} s vs {ref_times_s[row]!r} s)")


def ensemble_scores(inputs: Sequence[str | Path], output: str | Path, games: Sequence[str] | None = None) -> list[str]:
    """Average the raw-score files ``inputs`` into ``output`` (atomic write).

    Args:
        inputs: raw-score HDF5 files (at least one; the first one's classes, games and times are
            the reference).
        output: raw-score HDF5 file to write.
        games: when given, every input must hold exactly these games.

    Returns:
        The games written, sorted.

    Raises:
        InputError: unreadable input, or inputs that differ in classes, games or row times (the
            message names both files and what differs).
    """
    from comedian.postprocess import read_raw_scores

    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputError("--inputs: no raw-score files given")
    if len(set(map(str, paths))) != len(paths):
        raise InputError(f"--inputs: a file is listed twice ({_names([str(p) for p in paths])})")
    ref_path = paths[0]
    ref_classes, ref = read_raw_scores(ref_path)
    if games is not None:
        _check_games(ref_path, set(ref), set(games), "the game list")
    sums = {g: {h: ref[g][h][0].astype(np.float64) for h in HALVES} for g in ref}
    for path in paths[1:]:
        classes, raw = read_raw_scores(path)
        if classes != ref_classes:
            raise InputError(f"{path}: classes {classes} differ from {ref_path}'s {ref_classes}")
        _check_games(path, set(raw), set(ref), str(ref_path))
        for game in sorted(ref):
            for half in HALVES:
                scores, times = raw[game][half]
                ref_times = ref[game][half][1]
                check_same_grid(times, ref_times, f"{path}: game {game!r} half {half}", str(ref_path))
                sums[game][half] += scores
        del raw
    attrs = {"inputs": [str(p) for p in paths]}
    with RawScoreWriter(output, ref_classes, attrs) as out:
        for game in sorted(ref):
            for half in HALVES:
                out.add(game, half, sums[game][half] / len(paths), ref[game][half][1])
    return sorted(ref)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="comedian ensemble",
        description="Average the raw per-token scores of several models (seeds) of one split.",
    )
    parser.add_argument("--inputs", required=True, nargs="+", type=Path, help="raw-score HDF5 files, one per model")
    parser.add_argument("--output", required=True, type=Path, help="raw-score HDF5 file to write")
    parser.add_argument("--games", type=Path, default=None, help="split list the inputs must match exactly")
    parser.add_argument("--split", default=None, help="split name for tracking (default: the output's stem)")
    args = parser.parse_args(argv)
    games = read_game_list(args.games) if args.games is not None else None

    from comedian.tracking import stage_run

    params = {"inputs": [str(p) for p in args.inputs], "output": str(args.output), "n_inputs": len(args.inputs)}
    with stage_run("ensemble", wildcards={"split": args.split or args.output.stem}, params=params) as run:
        written = ensemble_scores(args.inputs, args.output, games)
        run.log_metrics({"games": len(written), "models": len(args.inputs)})
    print(f"comedian ensemble: averaged {len(args.inputs)} files over {len(written)} games -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
