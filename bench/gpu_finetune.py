"""Fine-tuning throughput of ViViT-T on 64-frame 224x224 clips in bf16, and its MFU, in one command (< 5 min).

Measures, on one device:

1. ``matmul``: the card's measured dense matrix-product rate in the training dtype (bf16 on CUDA: square
   8192 x 8192 products; fp32 on CPU), FLOP/s;
2. ``model``: the fine-tuning step alone (:class:`comedian.train.finetune.SpottingModule`: bf16 autocast,
   mixup, token masking with masked tubelets skipped, BCE, backward, gradient clipping, fused AdamW) on
   synthetic clips already on the device and already augmented: clips/s and MFU;
3. ``decode``: JPEG decoding of the script's frames, frames/s: one CPU thread (libjpeg-turbo, what one loader
   worker does) and, on CUDA, batched nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``);
4. ``augment``: the batched device augmentation with every fine-tuning op on + normalisation
   (:func:`comedian.preprocess.prepare_clips`), ms per clip;
5. ``loader``: the real data loader alone (:class:`comedian.data.clips.WindowClips` over packed frames this
   script writes: 398x224 JPEGs; ``--decode`` as the training steps' flag: ``auto`` = nvJPEG on CUDA, the
   ``--workers`` processes reading bytes only): clips/s;
6. ``train``: the step fed by that loader (decode where chosen, augmentation and normalisation on the
   device, :meth:`StepModule.prepare`): clips/s, MFU and the share of time spent waiting for data.

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

from comedian.data.clips import AugmentSpec, ClipAugment, WindowClips, collate_samples, list_halves
from comedian.data.frames import FORMAT, PackedFrames, decode_frames
from comedian.data.soccernet import game_slug
from comedian.models import build_model
from comedian.models.summary import count_macs
from comedian.preprocess import decode_batch, normalise, prepare_clips
from comedian.train.finetune import DEFAULT_AUGMENT, FinetuneSettings, SpottingModule
from comedian.train.loop import DistContext, Phase, _to_device, frame_loading, param_groups

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


def train_steps(module, optimizer, params, batches, device, steps: int, autocast,
                prepare: bool = True) -> tuple[float, float]:
    """Run ``steps`` optimiser steps on ``batches`` (an iterator), each batch prepared on the device first
    (:meth:`StepModule.prepare`) unless ``prepare`` is False; return (seconds, seconds waiting for data)."""
    wait = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        t1 = time.perf_counter()
        batch = _to_device(next(batches), device)
        wait += time.perf_counter() - t1
        if prepare:
            with torch.no_grad():
                batch = module.prepare(batch, device)
        with autocast():
            loss, _ = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
    sync(device)
    return time.perf_counter() - t0, wait


def decode_rates(frames: PackedFrames, device: torch.device, clip: int, batch: int) -> dict[str, float]:
    """Frames/s of JPEG decoding on one CPU thread and, on CUDA, of batched nvJPEG (``batch`` clips at once)."""
    jpegs = frames.read_jpegs(0, clip)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    decode_frames(jpegs)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 2.0:
        decode_frames(jpegs)
        n += clip
    torch.set_num_threads(threads)
    out = {"decode_cpu_frames_per_s": n / (time.perf_counter() - t0)}
    if device.type == "cuda":
        data = torch.from_numpy(np.concatenate(jpegs * batch))
        lengths = torch.tensor([[j.size for j in jpegs]] * batch)
        decode_batch(data, lengths, device)
        sync(device)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 2.0:
            decode_batch(data, lengths, device)
            n += clip * batch
        sync(device)
        out["decode_nvjpeg_frames_per_s"] = n / (time.perf_counter() - t0)
    return out


def augment_time(augment: ClipAugment, device: torch.device, batch: int, frames: int) -> float:
    """Seconds per clip of :func:`comedian.preprocess.prepare_clips` on 398x224 frames (resize included)."""
    params = collate_samples([augment.draw(np.random.default_rng(k)).tensors() for k in range(batch)])
    x = torch.randint(0, 256, (batch, frames, 3, 224, 398), dtype=torch.uint8).to(device)
    prepare_clips(x, params, augment.size)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(3):
        prepare_clips(x, params, augment.size)
    sync(device)
    return (time.perf_counter() - t0) / (3 * batch)


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
    parser.add_argument("--decode", default="auto", choices=("auto", "worker", "device"),
                        help="where the loader's JPEGs are decoded, as the training steps' --decode")
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

    # 2. the model alone on synthetic device-resident batches, already augmented and normalised
    g = torch.Generator().manual_seed(0)
    synthetic = {
        "clip": normalise(torch.randint(0, 256, (args.batch_size, args.frames, 3, args.size, args.size),
                                        dtype=torch.uint8, generator=g).to(device)),
        "key": torch.stack([torch.zeros(args.batch_size, dtype=torch.long), torch.arange(args.batch_size)], 1)
        .to(device),
        "targets": (torch.rand(args.batch_size, tokens, 17, generator=g) < 0.01).float().to(device),
    }

    def repeat():
        while True:
            yield synthetic

    it = repeat()
    train_steps(module, optimizer, params, it, device, 3, autocast, prepare=False)  # warm-up (and compilation)
    seconds, _ = train_steps(module, optimizer, params, it, device, args.steps, autocast, prepare=False)
    rate = args.steps * args.batch_size / seconds
    report["model_clips_per_s"] = rate
    report["model_mfu"] = rate * flops_per_clip / peak
    if cuda:
        report["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

    # 3-6. decoding, augmentation, the real data loader alone and feeding the step
    with tempfile.TemporaryDirectory() as tmp:
        n_clips = args.batch_size * (2 * args.steps + 6)
        half_frames = 8 * args.frames if not args.quick else 4 * args.frames
        n_halves = 2 * max(1, min(8, n_clips // 16))  # whole games
        t0 = time.perf_counter()
        games = write_frames(Path(tmp), n_halves, half_frames)
        report["write_frames_s"] = time.perf_counter() - t0
        halves = list_halves(tmp, games)
        report.update(decode_rates(PackedFrames(halves[0].path), device, args.frames, args.batch_size))
        all_on = {k: (1.0 if k.endswith("_p") and v > 0 else v) for k, v in DEFAULT_AUGMENT.items()}
        strong = ClipAugment(AugmentSpec.from_config(all_on), args.size)
        report["augment_ms_per_clip"] = augment_time(strong, device, args.batch_size, args.frames) * 1000
        augment = ClipAugment(AugmentSpec.from_config(DEFAULT_AUGMENT), args.size)
        per_game = -(-n_clips // len({h.game for h in halves}))
        loading = frame_loading(args.decode, DistContext(device=device), "bench")
        report["decode_place"] = loading["decode"]
        dataset = WindowClips(halves, args.frames, per_game, augment, seed=0, sampling="random",
                              extras=RandomTargets(17), **loading)
        keys = [(0, i) for i in range(len(dataset))]
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=args.batch_size, sampler=keys, num_workers=args.workers, pin_memory=cuda,
            drop_last=True, prefetch_factor=4 if args.workers else None, persistent_workers=args.workers > 0,
            collate_fn=collate_samples)
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
    print(f"  JPEG decoding    {report['decode_cpu_frames_per_s']:8.1f} frames/s on one CPU thread"
          + (f", {report['decode_nvjpeg_frames_per_s']:.1f} frames/s with nvJPEG" if cuda else ""))
    print(f"  augmentation     {report['augment_ms_per_clip']:8.3f} ms per clip on the device (every op on)")
    print(f"  loader alone     {report['loader_clips_per_s']:8.2f} clips/s   ({args.workers} workers, JPEG decoding "
          f"in the {report['decode_place']})")
    print(f"  with the loader  {report['train_clips_per_s']:8.2f} clips/s   MFU {100 * report['train_mfu']:5.1f}%   "
          f"data wait {100 * report['train_data_wait']:.0f}%")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
