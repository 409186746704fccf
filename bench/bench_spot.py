"""Benchmark: peak memory of ``comedian spot`` does not grow with the video's length.

Generates two demo-style videos (the demo generator's pitch, noise and glyphs, 398x224 at 25 fps) of
``--short-min`` and ``--long-min`` minutes, and spots each in a fresh process (``python -m comedian spot``,
a random vivit_demo checkpoint: the network's cost does not depend on its weights) while sampling
that process's resident set size (RSS, /proc/<pid>/status VmHWM, its peak); ffmpeg's own RSS
(a child process, fixed by the codec) is reported apart. Prints one JSON object: per video its
minutes, frames, seconds taken, x real time and peak RSS (MiB), and ``rss_ratio`` = long / short peak
(bounded memory: ~1.0, where holding every frame would grow it with the length).

Usage: ``python bench/bench_spot.py [--short-min 5] [--long-min 20] [--size 64] [--frames 64] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def spot_peak(video: Path, checkpoint: Path, out: Path, device: str) -> dict:
    """Run ``comedian spot`` on ``video`` in a child process; its peak RSS and ffmpeg's, sampled."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COMEDIAN_TRACKING": "0"}
    cmd = [sys.executable, "-m", "comedian", "spot", str(video), "--checkpoint", str(checkpoint), "--output", str(out),
           "--device", device, "--no-progress"]
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
    return {"seconds": time.perf_counter() - t0, "peak_rss_mib": peak / 1024, "ffmpeg_peak_rss_mib": ffmpeg_peak / 1024,
            "output": stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-min", type=float, default=5.0)
    parser.add_argument("--long-min", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=64, help="model input side (px)")
    parser.add_argument("--frames", type=int, default=64, help="window length (frames at 2 fps)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = build_model("vivit_demo", frames=args.frames, size=args.size, classes=17, drop_path=0.0)
        extra = {"classes": list(demo.SOCCERNET_V2_CLASSES),
                 "inference": {"fps": 2.0, "window_frames": args.frames, "ignore_s": 6.0, "merge": "max",
                               "nms": "soft", "nms_window_s": 10.0, "nms_threshold": 0.001}}
        save_checkpoint(tmp / "ckpt.pt", make_checkpoint(model, "finetune", extra=extra))
        result: dict = {"size": args.size, "window_frames": args.frames, "device": args.device}
        for name, minutes in (("short", args.short_min), ("long", args.long_min)):
            video = tmp / f"{name}.mkv"
            make_video(video, minutes)
            run = spot_peak(video, tmp / "ckpt.pt", tmp / "out", args.device)
            video_s = 60 * minutes
            result[name] = {"minutes": minutes, "seconds": round(run["seconds"], 1),
                            "x_real_time": round(video_s / run["seconds"], 1),
                            "peak_rss_mib": round(run["peak_rss_mib"], 1),
                            "ffmpeg_peak_rss_mib": round(run["ffmpeg_peak_rss_mib"], 1)}
            video.unlink()
        result["rss_ratio"] = round(result["long"]["peak_rss_mib"] / result["short"]["peak_rss_mib"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
