"""CPU training throughput of the three steps with the demo model, and data loading vs model consumption.

For each step (pretrain_spatial, pretrain_temporal, finetune), on synthetic packed frames (398x224 JPEGs,
as extracted from SoccerNet) with the demo config's settings:

- ``model``:   clips/s of the step's on-device preprocessing (augmentation, normalisation) + forward +
               backward + AdamW step (+ EMA / queue updates) on batches already in memory (what the
               training process can consume);
- ``loader``:  clips/s of the DataLoader alone (JPEG decoding, resizing, augmentation parameters, targets) with
               ``--workers`` processes; ``cold`` = first pass (decoding), ``warm`` = second pass (served by
               the step's frame cache when its ``frame_cache_mb`` > 0);
- ``trainer``: clips/s of two real epochs (the step's main phase) of :class:`comedian.train.loop.Trainer`,
               with the share of time the trainer waited for data.

Clips are the step's samples: 2-frame sub-videos (two views each) for step 1, windows of ``model.frames``
frames for steps 2-3. Run: ``python bench/bench_train.py [--workers 1] [--threads 1] [--config config/config.yaml]``.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import yaml
from PIL import Image

from comedian.data.clips import collate_samples
from comedian.data.frames import FORMAT
from comedian.data.soccernet import SOCCERNET_V2_CLASSES, game_slug
from comedian.train import finetune, pretrain_spatial, pretrain_temporal
from comedian.train.loop import DistContext, Trainer, _to_device, param_groups, seed_everything

#: The demo config's training sections (config/config.yaml), used unless --config names another file.
DEMO: dict[str, Any] = {
    "model": {"arch": "vivit_demo", "frames": 64, "size": 32, "temporal_depth": 2, "drop_path": 0.0},
    "pretrain_spatial": {"epochs": 4, "warmup_epochs": 1, "batch_size": 64, "lr": 0.0012, "final_lr_ratio": 0.01,
                         "queue_size": 2048, "proj_dim": 64, "proj_hidden": 256, "pred_hidden": 256,
                         "augment": {"crop_scale": [0.5, 1.0], "flip_p": 0.0}},
    "pretrain_temporal": {"epochs": 5, "warmup_epochs": 1, "batch_size": 8, "lr": 0.0096, "final_lr_ratio": 0.01,
                          "windows_per_game": 80, "queue_size": 2048, "proj_hidden": 256, "mask_ratio": 0.25,
                          "frame_cache_mb": 64, "augment": {"flip_p": 0.0}},
    "finetune": {"head_epochs": 2, "head_lr": 0.064, "epochs": 40, "lr": 0.016, "warmup_epochs": 1, "batch_size": 8,
                 "windows_per_game": 100, "mixup_alpha": 0.0, "mask_ratio": 0.0, "frame_cache_mb": 64,
                 "augment": {"flip_p": 0.0}, "validate_every": 10, "ignore_s": 6},
}
GAMES = [f"bench/2024-2025/2024-08-0{k} - 18-00 H{k} 1 - 0 A{k}" for k in (1, 2, 3)]
HALF_S = 120  # seconds per half, as the demo


def make_data(base: Path, seed: int = 0) -> None:
    """Synthetic demo-like data: packed 2-fps frames (398x224, a panning pitch with noise and glyphs),
    Labels-v2.json with an event every ~10 s, a 512-d bank; split list train.txt."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:224, 0:800]
    pitch = np.stack([40 + 10 * np.sin(xx / 25.0), 110 + 25 * np.sin(xx / 40.0), 40 + 0 * xx], -1)
    with h5py.File(base / "bank.h5", "w") as bank:
        for game in GAMES:
            annotations = []
            for half in (1, 2):
                events = [(t + rng.uniform(0, 4), int(rng.integers(0, 17))) for t in range(4, HALF_S - 8, 10)]
                blobs = []
                for f in range(2 * HALF_S + 1):
                    x0 = int(200 + 150 * np.sin(f / 40.0))
                    frame = pitch[:, x0 : x0 + 398] + rng.normal(0, 6, size=(224, 398, 1))
                    for t, c in events:
                        if abs(f / 2 - t) <= 0.5:
                            r, col = divmod(c, 6)
                            box = (slice(20 + 70 * r, 70 + 70 * r), slice(20 + 62 * col, 70 + 62 * col))
                            frame[box] = (255, 15 * c, 255 - 15 * c)
                    buf = io.BytesIO()
                    Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
                    blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
                path = base / "frames" / game_slug(game) / f"{half}.h5"
                path.parent.mkdir(parents=True, exist_ok=True)
                offsets = np.concatenate([[0], np.cumsum([b.size for b in blobs])]).astype(np.int64)
                with h5py.File(path, "w") as h5:
                    h5.create_dataset("jpeg", data=np.concatenate(blobs))
                    h5.create_dataset("offsets", data=offsets)
                    h5.attrs.update(format=FORMAT, fps=2.0, count=len(blobs), duration_s=HALF_S + 0.5, width=398,
                                    height=224, source="bench.mkv", quality=3, complete=True)
                bank.create_dataset(f"halves/{game_slug(game)}/{half}",
                                    data=rng.normal(size=(HALF_S, 512)).astype(np.float32))
                annotations += [{"gameTime": f"{half} - {int(t) // 60}:{int(t) % 60:02d}",
                                 "label": SOCCERNET_V2_CLASSES[c], "position": str(int(t * 1000)),
                                 "team": "home", "visibility": "visible"} for t, c in events]
            folder = base / "root" / game
            folder.mkdir(parents=True)
            (folder / "Labels-v2.json").write_text(json.dumps({"UrlLocal": game, "annotations": annotations}))
    (base / "train.txt").write_text("\n".join(GAMES) + "\n")


STEPS = {"pretrain_spatial": pretrain_spatial, "pretrain_temporal": pretrain_temporal, "finetune": finetune}


def step_args(name: str, base: Path, config: dict[str, Any], workers: int, work: Path) -> argparse.Namespace:
    step = dict(config[name])
    if name == "finetune":
        step.update(init="scratch", validate_every=0)
    elif name == "pretrain_temporal":
        step.update(init="scratch")
    argv = ["--root", str(base / "root"), "--frames-dir", str(base / "frames"), "--train-list", str(base / "train.txt"),
            "--model", json.dumps(config["model"]), "--step", json.dumps(step), "--workdir", str(work / "work"),
            "--output", str(work / "out.pt"), "--workers", str(workers), "--quiet"]
    if name == "pretrain_temporal":
        argv += ["--bank", str(base / "bank.h5")]
    if name == "finetune":
        argv += ["--classes", json.dumps(list(SOCCERNET_V2_CLASSES))]
    return STEPS[name].parser().parse_args(argv)


def loader_rate(dataset, batch: int, workers: int, batches: int) -> tuple[float, float, list[Any]]:
    """(cold, warm) clips/s of the DataLoader alone over ``batches`` batches, and the batches read."""
    keys = [(0, i % len(dataset)) for i in range(batch * (batches + 1))]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=keys, num_workers=workers,
                                         persistent_workers=workers > 0, collate_fn=collate_samples)
    rates, kept = [], []
    for _ in range(2):
        it = iter(loader)
        kept = [next(it)]  # worker start-up and the first batch are not timed
        t0 = time.perf_counter()
        for b in it:
            kept.append(b)
        rates.append(batches * batch / (time.perf_counter() - t0))
    return rates[0], rates[1], kept


def model_rate(module, batches: list[Any], steps: int) -> float:
    """clips/s of forward + backward + AdamW + after_step on in-memory batches."""
    module.start_phase(module_phase(module))
    module.train_mode()
    optimizer = torch.optim.AdamW(param_groups(module, 0.05), lr=1e-4, fused=True)
    params = [p for p in module.parameters() if p.requires_grad]
    n = batches[0]["clip"].shape[0]

    def step(k: int) -> None:
        cpu = torch.device("cpu")
        with torch.no_grad():
            batch = module.prepare(_to_device(batches[k % len(batches)], cpu), cpu)
        loss, _ = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        module.after_step(k + 1, steps + 2)

    step(0)
    t0 = time.perf_counter()
    for k in range(1, steps + 1):
        step(k)
    return steps * n / (time.perf_counter() - t0)


def module_phase(module):
    from comedian.train.loop import Phase

    return Phase("full", 1, 1e-4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="YAML holding model + step sections (default: demo)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process (default 1)")
    parser.add_argument("--steps", type=int, default=15, help="timed optimiser steps for the model rate")
    parser.add_argument("--batches", type=int, default=15, help="timed batches for the loader rate")
    parser.add_argument("--step", action="append", choices=sorted(STEPS), help="steps to run (default all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text()) if args.config else DEMO
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        make_data(base)
        print(f"synthetic data: {len(GAMES)} games x 2 halves x {HALF_S} s in {time.perf_counter() - t0:.1f} s; "
              f"model {config['model']}, workers {args.workers}, threads {args.threads}")
        for name in args.step or list(STEPS):
            seed_everything(0)
            ns = step_args(name, base, config, args.workers, base / name)
            prepared = STEPS[name].prepare(ns, DistContext())
            batch = prepared.loop.batch_size
            cold, warm, batches = loader_rate(prepared.dataset, batch, args.workers, args.batches)
            model = model_rate(prepared.module, batches, args.steps)
            seed_everything(0)
            prepared = STEPS[name].prepare(ns, DistContext())
            loop = prepared.loop
            loop = type(loop)(**{**loop.__dict__, "phases": tuple(
                type(p)(**{**p.__dict__, "epochs": 1}) for p in loop.phases[-1:]) * 2})  # the main phase
            history = Trainer(loop, prepared.module, prepared.dataset, base / name / "work", base / name / "out.pt",
                              print_fn=lambda _: None).fit()["history"]
            frames = prepared.dataset[(0, 0)]
            per_clip = len(frames["clip"]) * (2 if "augment_view1" in frames else 1)
            rows.append({"step": name, "batch": batch, "frames_per_clip": per_clip, "model": model,
                         "loader_cold": cold, "loader_warm": warm, "trainer_epoch1": history[0]["clips_per_s"],
                         "trainer_epoch2": history[1]["clips_per_s"], "data_wait": history[1]["data_wait"]})
            r = rows[-1]
            print(f"{name:18s} model {r['model']:7.1f} clips/s | loader cold {r['loader_cold']:7.1f} warm "
                  f"{r['loader_warm']:7.1f} clips/s | loader/model cold {r['loader_cold'] / r['model']:5.2f} warm "
                  f"{r['loader_warm'] / r['model']:5.2f} | trainer {r['trainer_epoch1']:6.1f} / "
                  f"{r['trainer_epoch2']:6.1f} "
                  f"clips/s (data wait {100 * r['data_wait']:.0f}%) | {per_clip} frames per clip", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
