"""Fine-tuning throughput of ViViT-T on 64-frame 224x224 clips in bf16, and its MFU, in one command (< 5 min).

Measures, on one device:

1. ``matmul``: the card's measured dense matrix-product rate in the training dtype (bf16 on CUDA: square
   8192 x 8192 products; fp32 on CPU), FLOP/s;
2. ``model``: the fine-tuning step alone (:class:`comedian.train.finetune.SpottingModule`: bf16 autocast,
   mixup, token masking, BCE, backward, gradient clipping, fused AdamW) on synthetic clips already on the
   device: clips/s and MFU;
3. ``loader``: the real data loader alone (:class:`comedian.data.clips.WindowClips` over packed frames this
   script writes: 398x224 JPEGs, decoding + resizing + augmentation in ``--workers`` processes): clips/s;
4. ``train``: the step fed by that loader (uint8 clips copied to the device, normalised there): clips/s, MFU
   and the share of time spent waiting for data.

MFU = achieved FLOP/s / the measured matmul rate, with the FLOPs of one clip's training step counted as
3 x 2 x the forward multiply-adds of ``comedian model-summary`` (fwd + bwd = 3 x fwd; 2 FLOPs per MAC).

Usage: ``python bench/gpu_finetune.py`` on a GPU machine; ``python bench/gpu_finetune.py --device cpu --quick``
is a smoke run of the same code on CPU (a small clip, a few steps).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from comedian.data.clips import AugmentSpec, ClipAugment, WindowClips, list_halves
from comedian.data.frames import FORMAT
from comedian.data.soccernet import game_slug
from comedian.models import build_model
from comedian.models.summary import count_macs
from comedian.train.finetune import DEFAULT_AUGMENT, FinetuneSettings, SpottingModule
from comedian.train.loop import Phase, _to_device, param_groups

CLASSES = [f"class{c}" for c in range(17)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 3.0) -> float:
    """Dense ``n x n`` matrix products per second x 2 n^3: the device's achievable FLOP/s in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        count += 10
        sync(device)
    return 2 * n**3 * count / (time.perf_counter() - t0)


def write_frames(base: Path, halves: int, frames: int, seed: int = 0) -> list[str]:
    """Packed 2-fps frame files of ``halves`` halves (games of 2 halves), 398x224 JPEGs of a panning texture."""
    rng = np.random.default_rng(seed)
    games = [f"bench/2024-2025/2024-08-{k + 1:02d} - 18-00 H{k} 1 - 0 A{k}" for k in range((halves + 1) // 2)]
    yy, xx = np.mgrid[0:224, 0:1200]  # a pitch-like smooth texture with sensor noise, as broadcast frames
    smooth = np.stack([40 + 10 * np.sin(xx / 25.0), 110 + 25 * np.sin(xx / 40.0) + 10 * np.cos(yy / 30.0),
                       40 + 0 * xx], axis=-1)
    texture = np.clip(smooth + rng.normal(0, 6, size=smooth.shape), 0, 255).astype(np.uint8)
    written = 0
    for game in games:
        for half in (1, 2):
            if written == halves:
                break
            blobs = []
            for f in range(frames):
                x0 = (7 * f) % 800
                img = texture[:, x0 : x0 + 398]
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=90)
                blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
            path = base / game_slug(game) / f"{half}.h5"
            path.parent.mkdir(parents=True, exist_ok=True)
            offsets = np.concatenate([[0], np.cumsum([b.size for b in blobs])]).astype(np.int64)
            with h5py.File(path, "w") as h5:
                h5.create_dataset("jpeg", data=np.concatenate(blobs))
                h5.create_dataset("offsets", data=offsets)
                h5.attrs.update(format=FORMAT, fps=2.0, count=frames, duration_s=frames / 2.0, width=398,
                                height=224, source="bench.mkv", quality=3, complete=True)
            written += 1
    return games


class RandomTargets:
    """``extras`` hook: sparse random per-token targets (the loss's cost does not depend on their content)."""

    def __init__(self, classes: int) -> None:
        self.classes = classes

    def __call__(self, half, start_s: float, n_frames: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(int(start_s * 2))
        return {"targets": (rng.random((n_frames // 2, self.classes)) < 0.01).astype(np.float32)}


def train_steps(module, optimizer, params, batches, device, steps: int, autocast) -> tuple[float, float]:
    """Run ``steps`` optimiser steps on ``batches`` (an iterator); return (seconds, seconds waiting for data)."""
    wait = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        t1 = time.perf_counter()
        batch = _to_device(next(batches), device)
        wait += time.perf_counter() - t1
        with autocast():
            loss, _ = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
    sync(device)
    return time.perf_counter() - t0, wait


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="small clips and few steps (a CPU smoke run)")
    parser.add_argument("--arch", default="vivit_tiny")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps per measurement")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="DataLoader workers")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformers")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.size, args.batch_size, args.steps = 8, 32, 2, 3
        args.workers = min(args.workers, 2)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu --quick for a smoke run")
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
    report: dict[str, float | int | str] = {"device": torch.cuda.get_device_name(device) if cuda else "cpu",
                                           "arch": args.arch, "frames": args.frames, "size": args.size,
                                           "batch_size": args.batch_size, "dtype": str(dtype).removeprefix("torch.")}

    # 1. the device's matrix-product rate
    peak = matmul_rate(device, dtype, 8192 if cuda else (512 if args.quick else 2048), 3.0 if cuda else 1.0)
    report["matmul_tflops"] = peak / 1e12

    # FLOPs per clip: 3 x 2 x forward MACs
    with torch.device("meta"):
        meta = build_model(args.arch, frames=args.frames, size=args.size, classes=17, drop_path=0.0)
    macs = count_macs(meta, args.frames, args.size)["total"]
    flops_per_clip = 3 * 2 * macs
    report["gmacs_per_clip_fwd"] = macs / 1e9

    torch.manual_seed(0)
    model = build_model(args.arch, frames=args.frames, size=args.size, classes=17)
    settings = FinetuneSettings(init="scratch", batch_size=args.batch_size)
    module = SpottingModule(model, settings, CLASSES).to(device)
    if args.compile:
        model.spatial.compile()
        model.temporal.compile()
    module.start_phase(Phase("full", 1, 1e-3))
    module.train_mode()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(module, 0.05), lr=1e-4, fused=True)
    tokens = args.frames // 2

    # 2. the model alone on synthetic device-resident batches
    g = torch.Generator().manual_seed(0)
    synthetic = {
        "clip": torch.randint(0, 256, (args.batch_size, args.frames, args.size, args.size, 3), dtype=torch.uint8,
                              generator=g).to(device),
        "key": torch.stack([torch.zeros(args.batch_size, dtype=torch.long), torch.arange(args.batch_size)], 1)
        .to(device),
        "targets": (torch.rand(args.batch_size, tokens, 17, generator=g) < 0.01).float().to(device),
    }

    def repeat():
        while True:
            yield synthetic

    it = repeat()
    train_steps(module, optimizer, params, it, device, 3, autocast)  # warm-up (and compilation)
    seconds, _ = train_steps(module, optimizer, params, it, device, args.steps, autocast)
    rate = args.steps * args.batch_size / seconds
    report["model_clips_per_s"] = rate
    report["model_mfu"] = rate * flops_per_clip / peak
    if cuda:
        report["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

    # 3-4. the real data loader, alone and feeding the step
    with tempfile.TemporaryDirectory() as tmp:
        n_clips = args.batch_size * (2 * args.steps + 6)
        half_frames = 8 * args.frames if not args.quick else 4 * args.frames
        n_halves = 2 * max(1, min(8, n_clips // 16))  # whole games
        t0 = time.perf_counter()
        games = write_frames(Path(tmp), n_halves, half_frames)
        report["write_frames_s"] = time.perf_counter() - t0
        halves = list_halves(tmp, games)
        augment = ClipAugment(AugmentSpec.from_config(DEFAULT_AUGMENT), args.size)
        per_game = -(-n_clips // len({h.game for h in halves}))
        dataset = WindowClips(halves, args.frames, per_game, augment, seed=0, sampling="random",
                              extras=RandomTargets(17))
        keys = [(0, i) for i in range(len(dataset))]
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=args.batch_size, sampler=keys, num_workers=args.workers, pin_memory=cuda,
            drop_last=True, prefetch_factor=4 if args.workers else None, persistent_workers=args.workers > 0)
        batches = iter(loader)
        next(batches)  # worker start-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            next(batches)
        report["loader_clips_per_s"] = args.steps * args.batch_size / (time.perf_counter() - t0)
        seconds, wait = train_steps(module, optimizer, params, batches, device, args.steps, autocast)
        rate = args.steps * args.batch_size / seconds
        report["train_clips_per_s"] = rate
        report["train_mfu"] = rate * flops_per_clip / peak
        report["train_data_wait"] = wait / seconds
        report["workers"] = args.workers

    print(f"{report['device']}: {args.arch}, {args.frames} frames at {args.size}x{args.size}, batch {args.batch_size}, "
          f"{report['dtype']}; {report['gmacs_per_clip_fwd']:.1f} GMACs per clip forward")
    print(f"  matmul rate      {report['matmul_tflops']:8.1f} TFLOP/s ({report['dtype']})")
    print(f"  model alone      {report['model_clips_per_s']:8.2f} clips/s   MFU {100 * report['model_mfu']:5.1f}%")
    print(f"  loader alone     {report['loader_clips_per_s']:8.2f} clips/s   ({args.workers} workers)")
    print(f"  with the loader  {report['train_clips_per_s']:8.2f} clips/s   MFU {100 * report['train_mfu']:5.1f}%   "
          f"data wait {100 * report['train_data_wait']:.0f}%")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
