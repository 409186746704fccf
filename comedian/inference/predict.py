"""``comedian predict``: a fine-tuned checkpoint's raw per-token scores for every half of a split.

Sliding windows (:mod:`comedian.inference.windows`) over ``<frames-dir>/<game_slug>/<half>.h5``
for each game of the split list; the raw (pre-NMS) probabilities go to ONE HDF5 file per split, so
that NMS can be re-tuned and seeds ensembled without rerunning the network.

Raw-score file (the format :mod:`comedian.postprocess` and :mod:`comedian.inference.ensemble` read)::

    attrs    classes (str: JSON list of the C class names, in column order)
             plus provenance: checkpoint, window_frames, ignore_s, merge (predict) or inputs (ensemble)
    /<game_slug>            group, attrs game (str: "<league>/<season>/<game>")
    /<game_slug>/<half>     group per half ("1", "2"):
        scores   float32 (T, C)  probabilities, row j = token j
        times_s  float64 (T,)    time of row j in seconds within the half (regular grid)

:class:`RawScoreWriter` writes it (atomically), for this stage and the ensemble stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comedian.data.soccernet import HALVES, SOCCERNET_V2_CLASSES, game_slug, read_game_list, slug_table
from comedian.errors import InputError
from comedian.io import atomic_h5

__all__ = ["RawScoreWriter", "frame_paths", "load_spotting_model", "checkpoint_classes", "predict_split", "main"]

log = logging.getLogger(__name__)

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


class RawScoreWriter:
    """Write a raw-score HDF5 file (layout in the module docstring) through :func:`~comedian.io.atomic_h5`.

    Use as a context manager; nothing appears at ``path`` unless the block completes::

        with RawScoreWriter(path, classes, attrs={"merge": "max"}) as out:
            out.add(game, 1, scores, times_s)
    """

    def __init__(self, path: str | Path, classes: Sequence[str], attrs: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.classes = [str(c) for c in classes]
        self.attrs = dict(attrs or {})
        self._atomic = None
        self._h5 = None

    def __enter__(self) -> RawScoreWriter:
        self._atomic = atomic_h5(self.path)
        self._h5 = self._atomic.__enter__()
        try:
            self._h5.attrs["classes"] = json.dumps(self.classes)
            for key, value in self.attrs.items():
                self._h5.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self

    def add(self, game: str, half: int, scores: np.ndarray, times_s: np.ndarray) -> None:
        """Store one half: ``scores`` (T, C) probabilities, ``times_s`` (T,) seconds."""
        scores = np.asarray(scores, dtype=np.float32)
        times_s = np.asarray(times_s, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self.classes) or times_s.shape != scores.shape[:1]:
            raise ValueError(f"{game} half {half}: scores {scores.shape} / times_s {times_s.shape} do not fit "
                             f"{len(self.classes)} classes")
        slug = game_slug(game)
        group = self._h5.require_group(slug)
        group.attrs["game"] = game
        half_group = group.create_group(str(half))
        half_group.create_dataset("scores", data=scores)
        half_group.create_dataset("times_s", data=times_s)

    def __exit__(self, *exc) -> None:
        self._atomic.__exit__(*exc)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def frame_paths(frames_dir: str | Path, games: Sequence[str]) -> dict[tuple[str, int], Path]:
    """``(game, half) -> <frames_dir>/<game_slug>/<half>.h5``; all must exist.

    Raises:
        InputError: naming the missing files (the first few and how many).
    """
    slug_table(list(games))  # two games with one slug are an error
    paths = {(g, h): Path(frames_dir) / game_slug(g) / f"{h}.h5" for g in games for h in HALVES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise InputError(f"{frames_dir}: {len(missing)} packed frame files missing: {shown}")
    return paths


def checkpoint_classes(checkpoint: Mapping[str, Any], num_classes: int, override: str | None, where: str) -> list[str]:
    """Class names in head order: ``override`` (a JSON list, inline or a ``.json`` file), else the
    checkpoint's ``classes`` (top level or in ``extra``), else the 17 SoccerNet-v2 classes when the
    head has 17 outputs.

    Raises:
        InputError: no names found, or as many names as the head has outputs are not given.
    """
    if override is not None:
        text = Path(override).read_text() if Path(override).suffix == ".json" and Path(override).is_file() else override
        try:
            classes = json.loads(text)
        except json.JSONDecodeError:
            raise InputError(f"--classes: {override!r} is neither a JSON list nor a .json file holding one") from None
        source = "--classes"
    else:
        extra = checkpoint.get("extra") if isinstance(checkpoint.get("extra"), Mapping) else {}
        classes = checkpoint.get("classes", extra.get("classes"))
        source = f"{where}: 'classes'"
        if classes is None:
            if num_classes != len(SOCCERNET_V2_CLASSES):
                raise InputError(f"{where}: the head has {num_classes} outputs and the checkpoint names no "
                                 "classes; pass --classes")
            classes = list(SOCCERNET_V2_CLASSES)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise InputError(f"{source}: must be a JSON list of class names")
    if len(classes) != num_classes:
        raise InputError(f"{source}: {len(classes)} class names but the model's head has {num_classes} outputs")
    return classes


def load_spotting_model(path: str | Path, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """A fine-tuned model (spatial + temporal + head) from a checkpoint, in eval mode on ``device``.

    Returns ``(model, checkpoint)``.

    Raises:
        InputError: not a comedian checkpoint, no classifier head (not fine-tuned), or weights that
            do not fit the architecture it names.
    """
    import torch

    from comedian.models import build_model_from_arch, load_step_checkpoint, read_checkpoint

    checkpoint = read_checkpoint(path)
    keys = [k.removeprefix("_orig_mod.").removeprefix("module.") for k in checkpoint["model"]]
    parts = set(checkpoint.get("parts") or {k.split(".", 1)[0] for k in keys})
    if "head" not in parts or not any(k.startswith("head.") for k in keys):
        raise InputError(
            f"{path}: not a fine-tuned model: it has no classifier head (parts {sorted(parts)}, step "
            f"{checkpoint.get('step')!r}); inference needs the checkpoint of fine-tuning"
        )
    missing_parts = {"spatial", "temporal"} - parts
    if missing_parts:
        raise InputError(f"{path}: parts {sorted(missing_parts)} missing (has {sorted(parts)})")
    try:
        model = build_model_from_arch(checkpoint["arch"])
    except (KeyError, TypeError) as err:
        raise InputError(f"{path}: field 'arch' cannot build a model ({err})") from None
    report = load_step_checkpoint(model, path, "predict")  # raises InputError naming the file
    if report.missing:
        raise InputError(f"{path}: {len(report.missing)} weights of the model are missing: {report.missing[:4]}")
    model.to(torch.device(device)).eval()
    return model, checkpoint


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    return name


# ----------------------------------------------------------------------------------------------
# Stage
# ----------------------------------------------------------------------------------------------


def predict_split(
    checkpoint: str | Path,
    frames_dir: str | Path,
    games: Sequence[str],
    output: str | Path,
    window_frames: int | None = None,
    ignore_s: float = 6.0,
    merge: str = "max",
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 0,
    classes: str | None = None,
    run: Any = None,
) -> dict[str, float]:
    """Score every half of ``games`` and write the raw-score file ``output``.

    Args:
        checkpoint: fine-tuned checkpoint (:mod:`comedian.models.checkpoint`).
        frames_dir: holds ``<game_slug>/<half>.h5`` packed frames.
        games: the split's games (``<league>/<season>/<game>``).
        output: the raw-score HDF5 to write (layout in the module docstring).
        window_frames: Tg; None = the checkpoint's clip length.
        ignore_s, merge, batch_size, workers: see :func:`comedian.inference.windows.sliding_window_scores`.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        classes: class names override (JSON list inline or a ``.json`` file).
        run: a tracking run (``log_metrics``), or None.

    Returns:
        Throughput figures: halves, frames, windows, seconds, frames_per_s, windows_per_s.
    """
    from comedian.data.frames import PackedFrames
    from comedian.inference.windows import score_halves, window_plan

    if not games:
        raise InputError("games: the split list is empty")
    paths = frame_paths(frames_dir, games)
    dev = _device(device)
    model, ckpt = load_spotting_model(checkpoint, dev)
    names = checkpoint_classes(ckpt, model.head.num_classes, classes, str(checkpoint))
    if window_frames is None:
        window_frames = int(ckpt["arch"]["config"]["frames"])
    keys = list(paths)
    halves = [PackedFrames(paths[k]) for k in keys]
    n_windows = sum(window_plan(f.count, window_frames, ignore_s, f.fps, model.tubelet_size).n_windows for f in halves)
    n_frames = sum(f.count for f in halves)
    attrs = {"checkpoint": str(checkpoint), "window_frames": int(window_frames), "ignore_s": float(ignore_s),
             "merge": merge}
    t0 = time.perf_counter()
    with RawScoreWriter(output, names, attrs) as out:
        for h, scores, times_s in score_halves(model, halves, window_frames, ignore_s, merge, batch_size,
                                               device=dev, workers=workers):
            game, half = keys[h]
            out.add(game, half, scores, times_s)
            log.info("%s half %d: %d rows", game, half, scores.shape[0])
    seconds = time.perf_counter() - t0
    for f in halves:
        f.close()
    stats = {"halves": len(halves), "frames": n_frames, "windows": n_windows, "seconds": seconds,
             "frames_per_s": n_frames / seconds, "windows_per_s": n_windows / seconds}
    if run is not None:
        run.log_metrics(stats)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="comedian predict",
        description="Sliding-window inference of a fine-tuned model over every half of a split -> one raw-score HDF5.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="fine-tuned checkpoint (.pt)")
    parser.add_argument("--frames-dir", required=True, type=Path, help="folder of <game_slug>/<half>.h5 packed frames")
    parser.add_argument("--games", required=True, type=Path, help="split list (one game per line, or a JSON array)")
    parser.add_argument("--output", required=True, type=Path, help="raw-score HDF5 file to write")
    parser.add_argument("--window-frames", type=int, default=None,
                        help="frames per window Tg (default: the checkpoint's clip length)")
    parser.add_argument("--ignore-s", type=float, default=6.0,
                        help="seconds dropped at each inner window edge (default 6; the paper's best is 12)")
    parser.add_argument("--merge", choices=("max", "mean"), default="max",
                        help="merge of overlapping predictions per class (default max)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto = cuda when available")
    parser.add_argument("--workers", type=int, default=0, help="frame-decoding processes (default 0: in-process)")
    parser.add_argument("--classes", default=None,
                        help="class names in head order, a JSON list inline or a .json file "
                             "(default: from the checkpoint, else the 17 SoccerNet-v2 classes)")
    parser.add_argument("--split", default=None, help="split name for tracking (default: the output's stem)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    games = read_game_list(args.games)

    from comedian.tracking import stage_run

    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    with stage_run("predict", wildcards={"split": args.split or args.output.stem}, params=params) as run:
        stats = predict_split(args.checkpoint, args.frames_dir, games, args.output, args.window_frames,
                              args.ignore_s, args.merge, args.batch_size, args.device, args.workers,
                              args.classes, run)
    print(f"comedian predict: {stats['halves']} halves, {stats['windows']} windows, {stats['frames']} frames "
          f"in {stats['seconds']:.1f} s ({stats['frames_per_s']:.0f} frames/s) -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
