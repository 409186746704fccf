"""Training throughput of the three steps of ViViT-T at 224 px in bf16, and their MFU, in one command (< 10 min).

Measures, on one device:

1. ``matmul``: the card's measured dense matrix-product rate in the training dtype (bf16 on CUDA: square
   8192 x 8192 products; fp32 on CPU), FLOP/s;
2. ``decode``: JPEG decoding of the script's frames, frames/s: one CPU thread (libjpeg-turbo, what one loader
   worker does) and, on CUDA, batched nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``);

then for each step of ``--steps`` (``finetune``: 64-frame clips, :class:`comedian.train.finetune.SpottingModule`;
``pretrain_temporal``: 64-frame clips, :class:`comedian.train.pretrain_temporal.SCEModule` with random teacher
rows; ``pretrain_spatial``: 2-frame sub-videos in two views, :class:`comedian.train.pretrain_spatial.MoCoModule`,
read in runs of ``--subvideos-per-run``), one JSON object each:

3. ``model``: the training step alone (bf16 autocast, the step's loss with its masking / EMA target / queue,
   backward, gradient clipping, fused AdamW, ``after_step``) on synthetic inputs already on the device and
   already augmented: clips/s and MFU;
4. ``augment``: the batched device augmentation with every op of the step's set on + normalisation
   (:func:`comedian.preprocess.prepare_clips`; step 1: both views), ms per clip;
5. ``loader``: the real data loader alone (the step's dataset over packed frames this script writes: 398x224
   JPEGs; ``--decode`` as the training steps' flag: ``auto`` = nvJPEG on CUDA, the ``--workers`` processes
   reading bytes only): clips/s;
6. ``train``: the step fed by that loader (decode where chosen, augmentation and normalisation on the
   device, :meth:`StepModule.prepare`): clips/s, MFU and the share of time spent waiting for data.

MFU = achieved FLOP/s / the measured matmul rate. FLOPs of one sample's training step, from the forward
multiply-adds of ``comedian model-summary`` (2 FLOPs per MAC, backward = 2 x forward): fine-tuning and step 2,
3 x 2 x the clip's spatial + temporal (+ head) MACs, masked tubelets counted as computed (nominal: skipping
them does less work); step 1, 2 views x (3 for the online branch + 1 for the EMA target) x 2 x the spatial
MACs of one 2-frame sub-video (projector and predictor not counted).

Usage: ``python bench/gpu_finetune.py`` on a GPU machine; ``python bench/gpu_finetune.py --device cpu --quick``
is a smoke run of the same code on CPU (small clips, a few steps).
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
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image

from comedian.data.clips import (
    AugmentSpec,
    ClipAugment,
    ClipParams,
    EpochSampler,
    SubVideoPairs,
    WindowClips,
    collate_samples,
    list_halves,
)
from comedian.data.frames import FORMAT, PackedFrames, decode_into
from comedian.data.soccernet import game_slug
from comedian.models import build_model
from comedian.models.summary import count_macs
from comedian.preprocess import decode_batch, normalise, prepare_clips
from comedian.train import finetune, pretrain_spatial, pretrain_temporal
from comedian.train.loop import DistContext, Phase, _to_device, frame_loading, param_groups

CLASSES = [f"class{c}" for c in range(17)]
STEPS = ("finetune", "pretrain_temporal", "pretrain_spatial")
#: Width of the teacher bank rows of step 2 (the PCA'd Baidu features).
BANK_DIM = 512


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


class RandomTeacher:
    """``extras`` hook of step 2: random teacher bank rows, one per token."""

    def __call__(self, half, start_s: float, n_frames: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(int(start_s * 2))
        return {"teacher": rng.standard_normal((n_frames // 2, BANK_DIM)).astype(np.float32)}


def train_steps(module, optimizer, params, batches, device, steps: int, autocast,
                prepare: bool = True) -> tuple[float, float]:
    """Run ``steps`` optimiser steps on ``batches`` (an iterator), each batch prepared on the device first
    (:meth:`StepModule.prepare`) unless ``prepare`` is False; return (seconds, seconds waiting for data)."""
    wait = 0.0
    t0 = time.perf_counter()
    for step in range(steps):
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
        module.after_step(step + 1, steps)
    sync(device)
    return time.perf_counter() - t0, wait


def decode_rates(frames: PackedFrames, device: torch.device, clip: int, batch: int) -> dict[str, float]:
    """Frames/s of JPEG decoding on one CPU thread (as the loader's workers decode: into a clip's frame array,
    :func:`comedian.data.frames.decode_into`) and, on CUDA, of batched nvJPEG (``batch`` clips at once)."""
    jpegs = frames.read_jpegs(0, clip)
    out = torch.empty((clip, *frames.size, 3), dtype=torch.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    decode_into(jpegs, out)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 2.0:
        decode_into(jpegs, out)
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
    params = ClipParams.stack([augment.draw(np.random.default_rng(k)) for k in range(batch)])
    x = torch.randint(0, 256, (batch, frames, 3, 224, 398), dtype=torch.uint8).to(device)
    prepare_clips(x, params, augment.size)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(3):
        prepare_clips(x, params, augment.size)
    sync(device)
    return (time.perf_counter() - t0) / (3 * batch)


def step_setup(step: str, args: argparse.Namespace) -> dict[str, Any]:
    """What one step's measurement needs: its module, FLOPs per sample, batch size, a synthetic prepared batch
    on the CPU, the augmentations with every op on (for ``augment``), and a function making its dataset."""
    size, frames = args.size, args.frames
    g = torch.Generator().manual_seed(0)

    def clips(n: int, t: int) -> torch.Tensor:
        return normalise(torch.randint(0, 256, (n, t, 3, size, size), dtype=torch.uint8, generator=g))

    def every_op(defaults: dict[str, Any], view: int | None = None) -> ClipAugment:
        values = {k: (v[view] if view is not None and isinstance(v, (list, tuple)) and k.endswith("_p") else v)
                  for k, v in defaults.items()}
        on = {k: (1.0 if k.endswith("_p") and v > 0 else v) for k, v in values.items()}
        return ClipAugment(AugmentSpec.from_config(on), size)

    keys = lambda n: torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(n)], 1)  # noqa: E731
    torch.manual_seed(0)
    if step == "pretrain_spatial":
        batch = args.spatial_batch_size
        with torch.device("meta"):
            meta = build_model(args.arch, frames=2, size=size, classes=1, drop_path=0.0)
        flops = 2 * (3 + 1) * 2 * count_macs(meta, 2, size)["spatial"]
        model = build_model(args.arch, frames=frames, size=size, classes=1)
        module = pretrain_spatial.MoCoModule(model, pretrain_spatial.SpatialSettings(batch_size=batch))
        synthetic = {"view1": clips(batch, 2), "view2": clips(batch, 2)}
        views = pretrain_spatial.view_augments(None, size)
        strong = [every_op(pretrain_spatial.DEFAULT_AUGMENT, v) for v in (0, 1)]

        def dataset(halves, loading):
            return SubVideoPairs(halves, views, seed=0, frames=2, per_run=args.subvideos_per_run, **loading)

        return {"module": module, "flops": flops, "batch": batch, "synthetic": synthetic, "strong": strong,
                "frames": 2, "dataset": dataset}
    with torch.device("meta"):
        meta = build_model(args.arch, frames=frames, size=size, classes=17, drop_path=0.0)
    macs = count_macs(meta, frames, size)
    batch = args.batch_size
    synthetic = {"clip": clips(batch, frames), "key": keys(batch)}
    if step == "finetune":
        model = build_model(args.arch, frames=frames, size=size, classes=17)
        module = finetune.SpottingModule(model, finetune.FinetuneSettings(init="scratch", batch_size=batch), CLASSES)
        synthetic["targets"] = (torch.rand(batch, frames // 2, 17, generator=g) < 0.01).float()
        flops, defaults, sampling, extras = 3 * 2 * macs["total"], finetune.DEFAULT_AUGMENT, "random", RandomTargets(17)
    else:
        model = build_model(args.arch, frames=frames, size=size, classes=1)
        settings = pretrain_temporal.TemporalSettings(batch_size=batch)
        module = pretrain_temporal.SCEModule(model, settings, BANK_DIM)
        synthetic["teacher"] = torch.randn(batch, frames // 2, BANK_DIM, generator=g)
        flops = 3 * 2 * (macs["spatial"] + macs["temporal"])
        defaults, sampling, extras = pretrain_temporal.DEFAULT_AUGMENT, settings.sampling, RandomTeacher()
    augment = ClipAugment(AugmentSpec.from_config(defaults), size)

    def dataset(halves, loading):
        per_game = -(-batch * (2 * args.steps + 6) // len({h.game for h in halves}))
        return WindowClips(halves, frames, per_game, augment, seed=0, sampling=sampling, extras=extras, **loading)

    return {"module": module, "flops": flops, "batch": batch, "synthetic": synthetic,
            "strong": [every_op(defaults)], "frames": frames, "dataset": dataset}


def keys_for(dataset: Any, batch: int, batches: int) -> list[tuple[int, int]]:
    """Enough keys for ``batches`` batches, epoch after epoch as the training loop draws them (runs kept)."""
    sampler = EpochSampler(len(dataset), seed=0, runs=getattr(dataset, "runs", None), block=batch)
    keys: list[tuple[int, int]] = []
    epoch = 0
    while len(keys) < batch * batches:
        sampler.set_epoch(epoch)
        mine = list(sampler)
        keys += mine[: len(mine) // batch * batch]
        epoch += 1
    return keys


def measure_step(step: str, args: argparse.Namespace, device: torch.device, peak: float, halves: list,
                 autocast: Any) -> dict[str, Any]:
    """Figures 3-6 of the module docstring for one step."""
    cuda = device.type == "cuda"
    setup = step_setup(step, args)
    module, batch, flops = setup["module"].to(device), setup["batch"], setup["flops"]
    if args.compile:
        module.model.spatial.compile()
        module.model.temporal.compile()
    module.start_phase(Phase("full", 1, 1e-3))
    module.train_mode()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(module, 0.05), lr=1e-4, fused=True)
    out: dict[str, Any] = {"batch_size": batch, "frames": setup["frames"], "gflop_per_clip": flops / 1e9}
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    # 3. the step alone on synthetic device-resident batches, already augmented and normalised
    synthetic = _to_device(setup["synthetic"], device)

    def repeat():
        while True:
            yield synthetic

    it = repeat()
    train_steps(module, optimizer, params, it, device, 3, autocast, prepare=False)  # warm-up (and compilation)
    seconds, _ = train_steps(module, optimizer, params, it, device, args.steps, autocast, prepare=False)
    rate = args.steps * batch / seconds
    out.update(model_clips_per_s=rate, model_mfu=rate * flops / peak)
    if cuda:
        out["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

    # 4. device augmentation, every op on
    out["augment_ms_per_clip"] = 1000 * sum(augment_time(a, device, min(batch, args.batch_size * 8), setup["frames"])
                                            for a in setup["strong"])

    # 5-6. the real loader alone, then feeding the step
    loading = frame_loading(args.decode, DistContext(device=device), f"bench {step}")
    out["decode_place"] = loading["decode"]
    dataset = setup["dataset"](halves, loading)
    keys = keys_for(dataset, batch, 2 * args.steps + 1)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, sampler=keys, num_workers=args.workers, pin_memory=cuda, drop_last=True,
        prefetch_factor=4 if args.workers else None, persistent_workers=args.workers > 0, collate_fn=collate_samples)
    batches = iter(loader)
    next(batches)  # worker start-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        next(batches)
    out["loader_clips_per_s"] = args.steps * batch / (time.perf_counter() - t0)
    seconds, wait = train_steps(module, optimizer, params, batches, device, args.steps, autocast)
    rate = args.steps * batch / seconds
    out.update(train_clips_per_s=rate, train_mfu=rate * flops / peak, train_data_wait=wait / seconds,
               workers=args.workers)
    if step == "pretrain_spatial":
        out["subvideos_per_run"] = args.subvideos_per_run
    del batches, loader
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="small clips and few steps (a CPU smoke run)")
    parser.add_argument("--arch", default="vivit_tiny")
    parser.add_argument("--frames", type=int, default=64, help="frames per clip of fine-tuning and step 2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32, help="clips per batch of fine-tuning and step 2")
    parser.add_argument("--spatial-batch-size", type=int, default=1024, help="sub-videos per batch of step 1")
    parser.add_argument("--subvideos-per-run", type=int, default=16, help="step 1's subvideos_per_run")
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps per measurement")
    parser.add_argument("--only", nargs="+", default=list(STEPS), choices=STEPS, help="steps to measure (default all)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="DataLoader workers")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformers")
    parser.add_argument("--decode", default="auto", choices=("auto", "worker", "device"),
                        help="where the loader's JPEGs are decoded, as the training steps' --decode")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.size, args.batch_size, args.spatial_batch_size, args.steps = 8, 32, 2, 8, 3
        args.workers = min(args.workers, 2)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu --quick for a smoke run")
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "arch": args.arch,
                              "size": args.size, "dtype": str(dtype).removeprefix("torch.")}

    # 1. the device's matrix-product rate
    peak = matmul_rate(device, dtype, 8192 if cuda else (512 if args.quick else 2048), 3.0 if cuda else 1.0)
    report["matmul_tflops"] = peak / 1e12

    with tempfile.TemporaryDirectory() as tmp:
        # packed frames shared by the steps: 2 to 16 halves of 8 clips each
        n_halves = 2 * max(1, min(8, args.batch_size * (2 * args.steps + 6) // 16))  # whole games
        half_frames = (4 if args.quick else 8) * args.frames
        t0 = time.perf_counter()
        games = write_frames(Path(tmp), n_halves, half_frames)
        report["write_frames_s"] = time.perf_counter() - t0
        halves = list_halves(tmp, games)
        # 2. decoding
        report.update(decode_rates(PackedFrames(halves[0].path), device, args.frames, args.batch_size))
        for step in args.only:
            report[step] = measure_step(step, args, device, peak, halves, autocast)

    print(f"{report['device']}: {args.arch} at {args.size}x{args.size}, {report['dtype']}; "
          f"matmul rate {report['matmul_tflops']:.1f} TFLOP/s")
    print(f"  JPEG decoding    {report['decode_cpu_frames_per_s']:8.1f} frames/s on one CPU thread"
          + (f", {report['decode_nvjpeg_frames_per_s']:.1f} frames/s with nvJPEG" if cuda else ""))
    for step in args.only:
        r = report[step]
        print(f"{step}: batch {r['batch_size']} of {r['frames']} frames, {r['gflop_per_clip']:.1f} GFLOP per clip")
        print(f"  step alone       {r['model_clips_per_s']:8.2f} clips/s   MFU {100 * r['model_mfu']:5.1f}%")
        print(f"  augmentation     {r['augment_ms_per_clip']:8.3f} ms per clip on the device (every op on)")
        print(f"  loader alone     {r['loader_clips_per_s']:8.2f} clips/s   ({r['workers']} workers, JPEG decoding "
              f"in the {r['decode_place']})")
        print(f"  with the loader  {r['train_clips_per_s']:8.2f} clips/s   MFU {100 * r['train_mfu']:5.1f}%   "
              f"data wait {100 * r['train_data_wait']:.0f}%")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
