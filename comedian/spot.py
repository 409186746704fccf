"""``comedian spot``: action spotting on anyone's own video with fine-tuned checkpoints.

::

    comedian spot VIDEO [VIDEO ...] --checkpoint CKPT [--checkpoint CKPT ...] [--output DIR]
                  [--device auto|cpu|cuda] [--nms soft|hard] [--window-s S] [--threshold T]

Each video goes through the pipeline's own modules, with nothing held but the frames of the windows
not yet scored (memory does not grow with the video's length; ``bench/bench_spot.py``):

1. frames: :class:`comedian.data.frames.VideoJpegStream`, the ffmpeg command of ``comedian extract``
   (frame i at ``i / fps`` s, sample and hold, the checkpoint's fps; JPEG at the extraction's quality),
   read in chunks of :data:`CHUNK_FRAMES` frames, decoded and resized to the model's input by
   :func:`comedian.data.frames.decode_jpegs` as ``comedian predict`` reads packed frames (the whole frame
   to a square, the aspect ratio not kept, as in training);
2. windows: :class:`comedian.inference.windows.StreamScorer` (the sliding windows, edge rule and merge of
   ``comedian predict``, equal to them), batched, bf16 on CUDA, float32 on CPU;
3. several checkpoints: their raw scores averaged as ``comedian ensemble`` does (float64 mean on one
   time grid, :func:`comedian.inference.ensemble.check_same_grid`);
4. NMS and the prediction entries of ``comedian postprocess``
   (:func:`comedian.postprocess.spotting_predictions`), the whole video as half 1, written as they come.

Settings come from the checkpoints' ``extra["inference"]`` (written by ``comedian finetune``: fps, window,
input normalisation, ignore_s, merge, and the NMS settings its validation scored it with); ``--nms``,
``--window-s``, ``--threshold`` override the NMS settings (``--ignore-s`` the edge rule), which must otherwise agree between the
checkpoints. A fine-tuned checkpoint written before checkpoints carried ``extra["inference"]`` is used
with the pipeline's defaults (fps 2 of ``comedian extract``; ignore_s, merge and NMS of
:class:`comedian.train.finetune.FinetuneSettings`, the paper's best), and a warning line says so.

Outputs, per video, ``DIR/<video stem>/`` (built as ``DIR/.<stem>.partial`` and renamed when complete,
so a failed video leaves nothing):

- ``results_spotting.json``: the SoccerNet schema (``UrlLocal`` = the video's file name, half "1",
  ``position`` in ms);
- ``spots.csv``: ``time_s,label,confidence``, one row per spot, by time then class;
- ``timeline.png``: the spots against time per class, the raw scores below
  (:func:`comedian.report.timeline_figure`);
- ``scores.h5``: the raw per-token scores: ``scores`` float32 (T, C), ``times_s`` float64 (T,) seconds
  in the video; attributes ``classes`` (JSON list), ``video``, ``checkpoints`` (JSON list), ``fps``,
  ``models`` (JSON: each checkpoint's window_frames, ignore_s, merge), ``nms``, ``nms_window_s``,
  ``nms_threshold``.

Bad input: a missing, truncated or non-video file is one error line naming it; its folder is not
written; the other videos still run; the exit status is 1 if any video failed. A video shorter than one
window is scored by one window padded with its last frame (as ``comedian predict`` does). A checkpoint
that is not fine-tuned (no classifier head, e.g. step 1's) stops the call before any video.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import shutil
import sys
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comedian.errors import InputError

__all__ = ["CHUNK_FRAMES", "SpotModel", "SpotSettings", "load_models", "spot_settings", "spot_video", "main"]

#: Frames decoded per step and pushed to the windows at once (64 s at 2 fps).
CHUNK_FRAMES = 128
DEFAULT_OUTPUT = Path("spots")
RESULTS_FILE = "results_spotting.json"
_SEPARATORS = (",", ":")
_MARK = "\x00predictions\x00"  # stands for the prediction list in the JSON document's text
_INFERENCE_KEYS = ("fps", "window_frames", "ignore_s", "merge", "nms", "nms_window_s", "nms_threshold")


@dataclasses.dataclass
class SpotModel:
    """A loaded checkpoint and the inference settings it is used with."""

    path: Path
    model: Any
    classes: list[str]
    fps: float
    window_frames: int
    ignore_s: float
    merge: str
    nms: str
    nms_window_s: float
    nms_threshold: float


@dataclasses.dataclass(frozen=True)
class SpotSettings:
    """What all the checkpoints of one call share: classes, frame rate and NMS."""

    classes: list[str]
    fps: float
    nms: str
    nms_window_s: float
    nms_threshold: float


def _warn(message: str) -> None:
    print(f"comedian spot: warning: {message}", file=sys.stderr)


def _inference_settings(path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``extra["inference"]``, or the pipeline's defaults (with a warning) when it has none."""
    from comedian.data.frames import DEFAULT_FPS
    from comedian.inference.windows import INPUT_MEAN, INPUT_STD

    extra = checkpoint.get("extra") if isinstance(checkpoint.get("extra"), dict) else {}
    window_frames = int(checkpoint["arch"]["config"]["frames"])
    found = extra.get("inference")
    if found is None:
        from comedian.train.finetune import FinetuneSettings

        d = FinetuneSettings()
        found = {"fps": DEFAULT_FPS, "window_frames": window_frames, "ignore_s": d.ignore_s, "merge": d.merge,
                 "nms": d.nms, "nms_window_s": d.nms_window_s, "nms_threshold": d.nms_threshold}
        _warn(f"{path}: the checkpoint records no inference settings (fine-tuned before checkpoints carried "
              f"them); assuming the pipeline's defaults: fps {DEFAULT_FPS:g}, ignore_s {d.ignore_s:g}, "
              f"merge {d.merge}, {d.nms} NMS of {d.nms_window_s:g} s at threshold {d.nms_threshold:g}, and the "
              "input normalisation of this version")
        return found
    if not isinstance(found, dict) or any(k not in found for k in _INFERENCE_KEYS):
        missing = [k for k in _INFERENCE_KEYS if not isinstance(found, dict) or k not in found]
        raise InputError(f"{path}: extra['inference'] lacks {missing}")
    for key, ours in (("input_mean", INPUT_MEAN), ("input_std", INPUT_STD)):
        theirs = found.get(key)
        if theirs is not None and not np.allclose(theirs, ours, rtol=0, atol=1e-9):
            raise InputError(f"{path}: trained with input {key.removeprefix('input_')} {list(theirs)}, but this "
                             f"version normalises with {list(ours)}")
    return found


def load_models(paths: Sequence[Path], device: str, ignore_s: float | None = None) -> list[SpotModel]:
    """Load fine-tuned checkpoints with their inference settings (see the module docstring); ``ignore_s``,
    when given, replaces every checkpoint's.

    Raises:
        InputError: a checkpoint that is missing, not a comedian one, or not fine-tuned (no classifier
            head), or whose window and ignore_s leave nothing of a window, naming the file.
    """
    from comedian.inference.predict import checkpoint_classes, load_spotting_model
    from comedian.inference.windows import window_plan

    models = []
    for path in paths:
        model, checkpoint = load_spotting_model(path, device)
        classes = checkpoint_classes(checkpoint, model.head.num_classes, None, str(path))
        s = _inference_settings(path, checkpoint)
        s["ignore_s"] = s["ignore_s"] if ignore_s is None else ignore_s
        try:  # the windows of a long video: bad window / ignore_s settings fail now, not per video
            window_plan(1 << 20, int(s["window_frames"]), float(s["ignore_s"]), float(s["fps"]), model.tubelet_size)
        except InputError as err:
            raise InputError(f"{path}: {err} (--ignore-s sets it)") from None
        models.append(SpotModel(Path(path), model, classes, float(s["fps"]), int(s["window_frames"]),
                                float(s["ignore_s"]), str(s["merge"]), str(s["nms"]), float(s["nms_window_s"]),
                                float(s["nms_threshold"])))
    return models


def spot_settings(models: Sequence[SpotModel], nms: str | None = None, window_s: float | None = None,
                  threshold: float | None = None) -> SpotSettings:
    """The settings all models share; NMS values given here replace the checkpoints'.

    Raises:
        InputError: checkpoints with other classes or frame rates, or other NMS settings where none is
            given here (the message names both checkpoints and the field).
    """
    from comedian.postprocess import NMS_KINDS

    first = models[0]
    given = {"nms": nms, "nms_window_s": window_s, "nms_threshold": threshold}
    for other in models[1:]:
        for field in ("classes", "fps") + tuple(k for k, v in given.items() if v is None):
            if getattr(other, field) != getattr(first, field):
                raise InputError(f"{other.path}: {field} {getattr(other, field)!r} differs from {first.path}'s "
                                 f"{getattr(first, field)!r}" + ("" if field in ("classes", "fps") else
                                                                 f"; set it with --{_FLAGS[field]}"))
    values = {k: (v if v is not None else getattr(first, k)) for k, v in given.items()}
    if values["nms"] not in NMS_KINDS:
        raise InputError(f"--nms: must be one of {list(NMS_KINDS)}, got {values['nms']!r}")
    if not (np.isfinite(values["nms_window_s"]) and values["nms_window_s"] >= 0):
        raise InputError(f"--window-s: must be a finite number of seconds >= 0, got {values['nms_window_s']!r}")
    if not np.isfinite(values["nms_threshold"]):
        raise InputError(f"--threshold: must be a finite number, got {values['nms_threshold']!r}")
    return SpotSettings(list(first.classes), first.fps, values["nms"], float(values["nms_window_s"]),
                        float(values["nms_threshold"]))


_FLAGS = {"nms": "nms", "nms_window_s": "window-s", "nms_threshold": "threshold"}


class _Progress:
    """A progress line on stderr: video time done, share, speed, ETA (redrawn in place on a terminal,
    else one line per tenth of the video)."""

    def __init__(self, name: str, enabled: bool = True) -> None:
        self.name, self.enabled = name, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = self.last = time.perf_counter()
        self.tenth = -1

    def update(self, done_s: float, total_s: float | None) -> None:
        if not self.enabled:
            return
        from comedian.train.loop import _duration
        now = time.perf_counter()
        elapsed = now - self.t0
        speed = done_s / elapsed if elapsed > 0 else 0.0
        if total_s:
            share = min(done_s / total_s, 1.0)
            bar = "#" * int(24 * share) + "." * (24 - int(24 * share))
            eta = (total_s - done_s) / speed if speed > 0 else float("inf")
            text = (f"{self.name}: [{bar}] {100 * share:3.0f}% {_duration(done_s)} / {_duration(total_s)} of video, "
                    f"{speed:.1f}x real time, ETA {_duration(eta) if np.isfinite(eta) else '?'}")
            tenth = int(10 * share)
        else:
            text = f"{self.name}: {_duration(done_s)} of video, {speed:.1f}x real time"
            tenth = int(done_s // 600)
        if self.tty:
            if now - self.last >= 0.5 or done_s == total_s:
                print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
                self.last = now
        elif tenth > self.tenth:
            print(text, file=sys.stderr, flush=True)
            self.tenth = tenth

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)


def _raw_scores(video: Path, models: Sequence[SpotModel], settings: SpotSettings, batch_size: int,
                device: str, progress: bool) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Stream the video's frames once into every model's windows; the ensemble mean of their raw scores,
    the times (s), the video's duration (s) and its frames taken."""
    from comedian.data.frames import VideoJpegStream
    from comedian.inference.ensemble import check_same_grid
    from comedian.inference.windows import StreamScorer, input_size

    stream = VideoJpegStream(video, fps=settings.fps)
    scorers = [StreamScorer(m.model, settings.fps, m.window_frames, m.ignore_s, m.merge, batch_size, device)
               for m in models]
    sizes = [input_size(m.model) for m in models]
    bar = _Progress(video.name, progress)
    try:
        with contextlib.closing(stream.jpegs()) as jpegs:  # closing it early stops ffmpeg
            pending: list[bytes] = []
            for jpeg in jpegs:
                pending.append(jpeg)
                if len(pending) == CHUNK_FRAMES:
                    _push(pending, scorers, sizes)
                    bar.update(scorers[0].frames / settings.fps, stream.stated_duration_s())
                    pending = []
        if pending:
            _push(pending, scorers, sizes)
        bar.update(stream.count / settings.fps, stream.count / settings.fps)
        results = [s.finish() for s in scorers]
    finally:
        for s in scorers:
            s.close()
        bar.close()
    ref_times = results[0][1]
    total = np.zeros_like(results[0][0], dtype=np.float64)
    for model, (scores, times) in zip(models, results):
        check_same_grid(times, ref_times, f"{video}: {model.path}", str(models[0].path))
        total += scores
    # the ensemble's mean, in float64, kept as float32 as its raw-score files keep it (NMS then sees the same)
    return (total / len(models)).astype(np.float32), ref_times, float(stream.duration_s), int(stream.count)


def _push(jpegs: list[bytes], scorers: Sequence[Any], sizes: Sequence[Any]) -> None:
    """Decode the JPEGs once per input size (as ``comedian predict`` reads frames) and push them."""
    from comedian.data.frames import decode_jpegs

    decoded: dict[Any, np.ndarray] = {}
    for scorer, size in zip(scorers, sizes):
        if size not in decoded:
            decoded[size] = decode_jpegs(jpegs, size=size)
        scorer.push(decoded[size])


def _write_outputs(folder: Path, video: Path, models: Sequence[SpotModel], settings: SpotSettings,
                   scores: np.ndarray, times_s: np.ndarray) -> int:
    """Write the outputs of one video into ``folder``; the number of spots. The spots are written as NMS
    gives them (the JSON and CSV rows streamed, only their time, class and confidence kept, for the
    figure), so a long video's outputs are never all held as Python objects."""
    import h5py

    from comedian.postprocess import spotting_predictions, results_document
    from comedian.report import timeline_figure

    classes = settings.classes
    index = {c: i for i, c in enumerate(classes)}
    pred_times, pred_classes, pred_confidence = array("d"), array("q"), array("d")
    # the document of comedian postprocess, byte for byte, its prediction list written entry by entry
    head, tail = json.dumps(results_document(video.name, _MARK), separators=_SEPARATORS).split(json.dumps(_MARK))
    with open(folder / RESULTS_FILE, "w") as results, open(folder / "spots.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time_s", "label", "confidence"])
        results.write(head + "[")
        for k, p in enumerate(spotting_predictions(scores, times_s, classes, settings.nms,
                                                        settings.nms_window_s, settings.nms_threshold, half=1)):
            results.write(("," if k else "") + json.dumps(p, separators=_SEPARATORS))
            writer.writerow([f"{int(p['position']) / 1000:g}", p["label"], p["confidence"]])
            pred_times.append(int(p["position"]) / 1000)
            pred_classes.append(index[p["label"]])
            pred_confidence.append(float(p["confidence"]))
        results.write("]" + tail + "\n")
    with h5py.File(folder / "scores.h5", "w") as h5:
        h5.create_dataset("scores", data=scores.astype(np.float32))
        h5.create_dataset("times_s", data=times_s.astype(np.float64))
        h5.attrs.update(
            classes=json.dumps(classes), video=str(video), checkpoints=json.dumps([str(m.path) for m in models]),
            fps=settings.fps, nms=settings.nms, nms_window_s=settings.nms_window_s,
            nms_threshold=settings.nms_threshold,
            models=json.dumps([{"window_frames": m.window_frames, "ignore_s": m.ignore_s, "merge": m.merge}
                               for m in models]),
        )
    none = np.zeros(0)
    n_spots = len(pred_times)
    figure = timeline_figure(
        classes, none, none.astype(np.int64), none.astype(bool),
        np.asarray(pred_times), np.asarray(pred_classes, dtype=np.int64), np.asarray(pred_confidence),
        f"{video.name}: {n_spots} spots ({settings.nms} NMS, {settings.nms_window_s:g} s, "
        f"threshold {settings.nms_threshold:g})",
        raw=(scores, times_s),
    )
    figure.savefig(folder / "timeline.png", dpi=110)
    return n_spots


def spot_video(video: str | Path, models: Sequence[SpotModel], settings: SpotSettings, output: str | Path,
               batch_size: int = 8, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Spot one video into ``output/<stem>/`` (see the module docstring); nothing is left there on failure.

    Returns ``spots`` (count), ``duration_s`` (video), ``frames`` (taken at the models' fps), ``seconds``
    (taken) and ``folder``.

    Raises:
        InputError: a missing, truncated or corrupt file, or one without video frames, naming it.
    """
    from comedian.io import replace_dir

    video, output = Path(video), Path(output)
    t0 = time.perf_counter()
    scores, times_s, duration_s, frames = _raw_scores(video, models, settings, batch_size, device, progress)
    target = output / video.stem
    tmp = output / f".{video.stem}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        n_spots = _write_outputs(tmp, video, models, settings, scores, times_s)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"spots": n_spots, "duration_s": duration_s, "frames": frames, "seconds": time.perf_counter() - t0,
            "folder": target}


def main(argv: list[str] | None = None) -> int:
    from comedian.inference.predict import DEVICES
    from comedian.postprocess import NMS_KINDS

    parser = argparse.ArgumentParser(
        prog="comedian spot",
        description="Spot actions in your own videos with fine-tuned checkpoints: per video, DIR/<stem>/ with "
        "results_spotting.json, spots.csv, timeline.png and the raw per-token scores (scores.h5).",
    )
    parser.add_argument("videos", nargs="+", type=Path, metavar="VIDEO", help="video files (anything ffmpeg reads)")
    parser.add_argument("--checkpoint", required=True, action="append", type=Path,
                        help="fine-tuned checkpoint (.pt); give it several times to average the models' raw scores")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output folder (default spots/)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto = cuda (bf16) when available")
    parser.add_argument("--nms", choices=NMS_KINDS, default=None, help="NMS kind (default: the checkpoint's)")
    parser.add_argument("--window-s", type=float, default=None,
                        help="NMS window in seconds, whole width (default: the checkpoint's)")
    parser.add_argument("--threshold", type=float, default=None, help="NMS threshold (default: the checkpoint's)")
    parser.add_argument("--ignore-s", type=float, default=None,
                        help="seconds dropped at each inner window edge (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise InputError(f"--batch-size: must be >= 1, got {args.batch_size}")
    stems: dict[str, Path] = {}
    for video in args.videos:
        if video.stem in stems:
            raise InputError(f"{video}: same name as {stems[video.stem]}: both would be written to "
                             f"{args.output / video.stem}")
        stems[video.stem] = video

    from comedian.inference.predict import _device

    device = _device(args.device)
    models = load_models(args.checkpoint, device, args.ignore_s)
    settings = spot_settings(models, args.nms, args.window_s, args.threshold)
    failed = 0
    for video in args.videos:
        try:
            info = spot_video(video, models, settings, args.output, args.batch_size, device, not args.no_progress)
        except InputError as err:
            message = str(err) if str(video) in str(err) else f"{video}: {err}"
            print(f"comedian spot: error: {message}", file=sys.stderr)
            failed += 1
            continue
        print(f"{video}: {info['spots']} spots in {info['duration_s']:.1f} s of video ({info['frames']} frames at "
              f"{settings.fps:g} fps, {info['seconds']:.1f} s taken) -> {info['folder']}/")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
