"""Benchmark of sliding-window inference over one half, measured side by side in one run.

(a) the frame reading of :func:`comedian.inference.windows.sliding_window_scores`, which decodes the
    union of a batch's overlapping windows once, vs decoding every window on its own (half overlap:
    each frame twice); goal: ratio (per-window time / union time) >= 1.5.
(b) the whole of ``sliding_window_scores`` (decode + model) with frame decoding in 0 vs ``--workers``
    DataLoader processes; on a GPU run, decoding is the bottleneck that workers remove.
(c) the share of (b)'s time that the model alone takes (the same windows, frames already in memory).

Usage: ``python bench/bench_predict.py [--frames 1200] [--window 64] [--arch vivit_demo] [--size 64]
[--batch 8] [--workers 2] [--device auto]``. The half is a packed file of ``--frames`` random
398x224 JPEG frames (2 fps) written to a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from comedian.data.frames import FORMAT, PackedFrames
from comedian.inference.windows import sliding_window_scores, window_plan
from comedian.models import build_model
from comedian.preprocess import frames_to_input


def make_packed(path: Path, n: int, seed: int = 0) -> Path:
    """A packed file of ``n`` 398x224 frames: a smooth moving pattern plus noise, JPEG q 90."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:224, 0:398]
    blobs = []
    for i in range(n):
        base = 128 + 60 * np.sin((xx + 7 * i) / 23.0) * np.cos((yy - 3 * i) / 17.0)
        frame = np.clip(base[..., None] + rng.normal(0, 12, (224, 398, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=90)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([b.size for b in blobs])]).astype(np.int64)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("jpeg", data=np.concatenate(blobs))
        h5.create_dataset("offsets", data=offsets)
        h5.attrs.update(format=FORMAT, fps=2.0, count=n, duration_s=n / 2.0, width=398, height=224,
                        source="bench.mkv", quality=3)
        h5.attrs["complete"] = True
    return path


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1200, help="frames of the half (2 fps)")
    parser.add_argument("--window", type=int, default=64, help="frames per window Tg")
    parser.add_argument("--ignore-s", type=float, default=6.0)
    parser.add_argument("--arch", default="vivit_demo")
    parser.add_argument("--size", type=int, default=64, help="model input side")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    with tempfile.TemporaryDirectory() as tmp:
        path = make_packed(Path(tmp) / "half.h5", args.frames)
        frames = PackedFrames(path)
        size = (args.size, args.size)
        plan = window_plan(frames.count, args.window, args.ignore_s, frames.fps, 2)
        starts = plan.starts * 2
        print(f"half: {frames.count} frames, {plan.n_windows} windows of {args.window} frames, device {device}, "
              f"torch threads {torch.get_num_threads()}")

        # (a) decoding: union of a batch's windows vs each window on its own
        from comedian.inference.windows import _read_windows

        def union():
            for w in range(0, plan.n_windows, args.batch):
                _read_windows(frames, plan, w, min(args.batch, plan.n_windows - w), size)

        def per_window():
            for s in starts:
                n = min(args.window, frames.count - int(s))
                frames.read(int(s), n, size=size)

        t_union, t_each = best_of(args.repeats, union), best_of(args.repeats, per_window)
        print(f"(a) decode: union per batch {t_union:.2f} s, per window {t_each:.2f} s, "
              f"ratio {t_each / t_union:.2f} (goal >= 1.5)")

        # (b) whole inference, 0 vs N decoding workers
        model = build_model(args.arch, frames=args.window, size=args.size, classes=17).to(device).eval()

        def run(workers):
            return lambda: sliding_window_scores(model, frames, args.window, args.ignore_s, batch_size=args.batch,
                                                 device=device, workers=workers)

        run(0)()  # warm-up
        t0w, tnw = best_of(args.repeats, run(0)), best_of(args.repeats, run(args.workers))
        print(f"(b) inference: workers 0 {t0w:.2f} s ({frames.count / t0w:.0f} frames/s), workers {args.workers} "
              f"{tnw:.2f} s ({frames.count / tnw:.0f} frames/s), ratio {t0w / tnw:.2f}")

        # (c) the model alone on the same windows, frames in memory
        blocks = [_read_windows(frames, plan, w, min(args.batch, plan.n_windows - w), size)
                  for w in range(0, plan.n_windows, args.batch)]
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
                    else torch.autocast("cpu", enabled=False))

        def model_only():
            with torch.inference_mode(), autocast:
                for block in blocks:
                    torch.sigmoid(model(frames_to_input(block, device=device)).float()).cpu()

        t_model = best_of(args.repeats, model_only)
        print(f"(c) model alone {t_model:.2f} s = {100 * t_model / t0w:.0f} % of (b) with workers 0")


if __name__ == "__main__":
    main()
