"""Benchmark: peak memory of ``comedian spot`` does not grow with the video's length.

Generates two demo-style videos (the demo generator's pitch, noise and glyphs, 398x224 at 25 fps) of
``--short-min`` and ``--long-min`` minutes, and spots each in a fresh process (``python -m comedian spot``,
a random vivit_demo checkpoint: the network's cost does not depend on its weights) while sampling
that process's peak resident set size (/proc/<pid>/status VmHWM); ffmpeg's own (a child process, fixed by
the codec) is reported apart. Each video is spotted twice: as users run it, and with glibc's mmap
threshold fixed (``MALLOC_MMAP_THRESHOLD_``, so that large freed blocks go back to the system at once
instead of being kept in the heap by glibc's dynamic threshold): the difference between the two is the
allocator's retained memory (glibc arenas of torch's threads), which varies from run to run by up to
~100 MiB whatever the length: each run is repeated (``--repeat``) and the median peak compared.

Prints one JSON object: per video ``minutes``, ``frames`` (taken at 2 fps), ``tokens``, ``spots``,
``seconds``, ``x_realtime``, ``peak_rss_mib`` (median of the runs; ``peak_rss_runs_mib`` each),
``peak_rss_fixed_mmap_mib`` (``peak_rss_fixed_mmap_runs_mib``), ``ffmpeg_peak_rss_mib``;
``rss_ratio`` and ``rss_ratio_fixed_mmap`` (long / short peak: bounded memory ~1.0, where holding every
frame would grow it with the length), ``rss_growth_mib_per_min`` ((long - short) / (long - short minutes));
and ``bound_mib``, what the streaming holds at once by the code's own sizes (none of it depends on the
length): ``frame_tail`` (the frames of the windows not yet scored, at most ``batch x stride + window +
chunk`` frames at the model's size, twice while a chunk is appended), ``chunk_native`` (one chunk of
frames decoded at the video's size before the resize), ``window_batch`` (a batch of windows, uint8, and the
model's float32 input), ``total``; and ``per_token_bytes`` x ``tokens`` = ``per_video_length_mib`` of
the long video: what does grow with it (the (T, C) scores: the merge's float64 sum and count, the
ensemble's mean, their times, NMS's float32 copies; an estimate), some tens of KiB per minute of video.

Usage: ``python bench/bench_spot.py [--short-min 5] [--long-min 20] [--repeat 3] [--size 64] [--frames 64]
[--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import torch

from comedian.data import demo
from comedian.models import build_model, make_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def make_video(path: Path, minutes: float, seed: int = 0) -> None:
    """A demo-style video of ``minutes`` (the test split's game 0, first half, at that length)."""
    game = demo.demo_game_specs(seed, 0, 0, 1)[0]
    plan = demo.plan_game(seed, game, minutes * 60)
    demo.encode_video(path, demo.half_frames(seed, plan, 1), demo.find_ffmpeg(), crf=demo.DEFAULT_CRF, threads=2)


def _peak_kib(pid: int, key: str = "VmHWM") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


#: glibc's mmap threshold for the fixed-threshold runs (its default start, 128 KiB, kept from moving).
FIXED_MMAP_THRESHOLD = 128 * 1024
NATIVE = (demo.FRAME_HEIGHT, demo.FRAME_WIDTH)  # the generated videos' frame size


def spot_peak(video: Path, checkpoint: Path, out: Path, device: str, batch_size: int, env: dict | None = None) -> dict:
    """Run ``comedian spot`` on ``video`` in a child process; its peak RSS and ffmpeg's, sampled."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COMEDIAN_TRACKING": "0", **(env or {})}
    cmd = [sys.executable, "-m", "comedian", "spot", str(video), "--checkpoint", str(checkpoint), "--output", str(out),
           "--device", device, "--batch-size", str(batch_size), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, ffmpeg_peak = 0, 0
    while proc.poll() is None:
        peak = max(peak, _peak_kib(proc.pid))
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        for child in (children.read_text().split() if children.exists() else []):
            ffmpeg_peak = max(ffmpeg_peak, _peak_kib(int(child)))
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"comedian spot failed: {stderr.strip()[-2000:]}")
    with h5py.File(out / video.stem / "scores.h5", "r") as h5:
        tokens = int(h5["times_s"].shape[0])
    with open(out / video.stem / "spots.csv") as f:
        spots = sum(1 for _ in f) - 1
    frames = int(stdout.split(" frames at ")[0].rsplit("(", 1)[1])  # "... (F frames at 2 fps, ...)"
    return {"seconds": time.perf_counter() - t0, "peak_rss_mib": peak / 1024, "ffmpeg_peak_rss_mib": ffmpeg_peak / 1024,
            "frames": frames, "tokens": tokens, "spots": spots}


def held_bound(model, window_frames: int, batch_size: int, ignore_s: float, fps: float, classes: int) -> dict:
    """What the streaming holds at once, from the code's sizes (see the module docstring), in MiB; and the
    bytes held per token of the video."""
    import numpy as np

    from comedian.inference.windows import input_size, window_plan
    from comedian.spot import CHUNK_FRAMES

    ts = int(model.tubelet_size)
    plan = window_plan(1 << 16, window_frames, ignore_s, fps, ts)
    stride_frames = int(np.diff(plan.starts).max()) * ts
    h, w = input_size(model)
    frame = h * w * 3
    mib = 1 / 2**20
    tail = 2 * (batch_size * stride_frames + window_frames + CHUNK_FRAMES) * frame
    native = CHUNK_FRAMES * NATIVE[0] * NATIVE[1] * 3
    batch = batch_size * window_frames * frame * (1 + 4)  # uint8 windows + the float32 input
    # per token and class: the merge's float64 maximum or sum, its float32 result, the ensemble's float64 sum
    # and float32 mean, NMS's three float32 rows; per token: the merge's count, the times, the positions in ms
    per_token = classes * (8 + 4 + 8 + 4 + 3 * 4) + 3 * 8
    return {"frame_tail": round(tail * mib, 1), "chunk_native": round(native * mib, 1),
            "window_batch": round(batch * mib, 1), "total": round((tail + native + batch) * mib, 1),
            "stride_frames": stride_frames}, per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-min", type=float, default=5.0)
    parser.add_argument("--long-min", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=64, help="model input side (px)")
    parser.add_argument("--frames", type=int, default=64, help="window length (frames at 2 fps)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each video and allocator setting")
    args = parser.parse_args()
    fps, ignore_s, classes = 2.0, 6.0, len(demo.SOCCERNET_V2_CLASSES)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = build_model("vivit_demo", frames=args.frames, size=args.size, classes=classes, drop_path=0.0)
        extra = {"classes": list(demo.SOCCERNET_V2_CLASSES),
                 "inference": {"fps": fps, "window_frames": args.frames, "ignore_s": ignore_s, "merge": "max",
                               "nms": "soft", "nms_window_s": 10.0, "nms_threshold": 0.001}}
        save_checkpoint(tmp / "ckpt.pt", make_checkpoint(model, "finetune", extra=extra))
        bound, per_token = held_bound(model, args.frames, args.batch_size, ignore_s, fps, classes)
        result: dict = {"size": args.size, "window_frames": args.frames, "batch_size": args.batch_size,
                        "device": args.device}
        for name, minutes in (("short", args.short_min), ("long", args.long_min)):
            video = tmp / f"{name}.mkv"
            make_video(video, minutes)
            fixed_env = {"MALLOC_MMAP_THRESHOLD_": str(FIXED_MMAP_THRESHOLD)}
            runs = [spot_peak(video, tmp / "ckpt.pt", tmp / "out", args.device, args.batch_size, env)
                    for _ in range(args.repeat) for env in (None, fixed_env)]
            plain, fixed = runs[0::2], runs[1::2]
            run = plain[0]
            result[name] = {"minutes": minutes, "frames": run["frames"], "tokens": run["tokens"],
                            "spots": run["spots"], "seconds": round(run["seconds"], 1),
                            "x_realtime": round(60 * minutes / run["seconds"], 1),
                            "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in plain), 1),
                            "peak_rss_runs_mib": [round(r["peak_rss_mib"], 1) for r in plain],
                            "peak_rss_fixed_mmap_mib": round(statistics.median(r["peak_rss_mib"] for r in fixed), 1),
                            "peak_rss_fixed_mmap_runs_mib": [round(r["peak_rss_mib"], 1) for r in fixed],
                            "ffmpeg_peak_rss_mib": round(run["ffmpeg_peak_rss_mib"], 1)}
            video.unlink()
        short, long = result["short"], result["long"]
        result["rss_ratio"] = round(long["peak_rss_mib"] / short["peak_rss_mib"], 3)
        result["rss_ratio_fixed_mmap"] = round(long["peak_rss_fixed_mmap_mib"] / short["peak_rss_fixed_mmap_mib"], 3)
        result["rss_growth_mib_per_min"] = round(
            (long["peak_rss_mib"] - short["peak_rss_mib"]) / (args.long_min - args.short_min), 2)
        result["bound_mib"] = bound
        result["per_token_bytes"] = per_token
        result["per_video_length_mib"] = round(per_token * long["tokens"] / 2**20, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
