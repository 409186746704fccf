"""The data loader's CPU cost per clip against the JPEG-decode floor of the same frames, per training step.

For each step (``pretrain_spatial``, ``pretrain_temporal``, ``finetune``) at the paper's settings (224-px
model input, 64-frame windows for steps 2-3, 2-frame two-view sub-videos for step 1) with EVERY
augmentation of the step's set on (each op whose probability is > 0 in the step's defaults gets
probability 1), on packed frames made the way ``comedian extract`` makes them (a noisy 398x224 25-fps
H.264 video extracted at 2 fps, MJPEG q:v 3):

- ``loader_cpu_ms_per_clip``: CPU time of one loader worker building one sample (``dataset[key]``: HDF5
  read, JPEG decode at the size augmentation needs, drawing the augmentation parameters) and its share of
  collating a batch (:func:`comedian.data.clips.collate_samples`), one thread;
- ``decode_floor_ms_per_clip``: CPU time of decoding the same frames' JPEGs alone (``torchvision.io.
  decode_jpeg``, bytes already in memory, native size, no resize);
- ``ratio``: the two, measured interleaved clip by clip (goal <= 1.3);
- ``device_augment_ms_per_clip``: what the training step does on its device per clip before the model
  (:func:`comedian.preprocess.prepare_batch`: [decode,] augment, normalise; wall time per clip over a batch,
  synchronised), on ``device``.

The loader is set up as the training steps set it up for CUDA training (``--loader-for cuda``: the workers
decode at the native size, the device resizes; ``cpu``: the workers also resize, see
:func:`comedian.data.clips.decode_size`). With ``--decode device`` the workers only read JPEG bytes and the
device part decodes them too (nvJPEG on CUDA). Usage: ``python bench/bench_loader.py [--json] [--clips 12] [--device cpu] [--decode worker]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from comedian.data.clips import (
    AugmentSpec,
    ClipAugment,
    SubVideoPairs,
    WindowClips,
    collate_samples,
    frames_path,
    list_halves,
)
from comedian.data.frames import PackedFrames, extract_frames, ffmpeg_binary
from comedian.preprocess import prepare_batch
from comedian.train import finetune, pretrain_spatial, pretrain_temporal
from comedian.train.loop import _to_device

GAME = "bench/2024-2025/2024-08-01 - 18-00 Home 1 - 0 Away"
SIZE = 224
WINDOW_FRAMES = 64
PROBABILITIES = ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p")


def make_frames(base: Path, seconds: float) -> Path:
    """frames_dir with one game (two identical halves) of 398x224 q:v 3 JPEGs at 2 fps."""
    import subprocess

    exe = ffmpeg_binary()
    video = base / "video.mkv"
    subprocess.run(
        [exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size=398x224:rate=25:duration={seconds},noise=alls=12:allf=t+u",
         "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", str(video)],
        check=True,
    )
    frames_dir = base / "frames"
    first = frames_path(frames_dir, GAME, 1)
    first.parent.mkdir(parents=True)
    extract_frames(video, first, quality=3, ffmpeg=exe)
    shutil.copy(first, frames_path(frames_dir, GAME, 2))
    return frames_dir


def all_on(values: dict[str, Any]) -> dict[str, Any]:
    """Every op of an augmentation set with probability > 0 set to probability 1 (per view where listed)."""
    out = dict(values)
    for key in PROBABILITIES:
        v = out.get(key, 0.0)
        out[key] = [1.0 if p > 0 else 0.0 for p in v] if isinstance(v, (list, tuple)) else (1.0 if v > 0 else 0.0)
    return out


def datasets(frames_dir: Path, decode: str, worker_resize: bool) -> dict[str, Any]:
    """The three steps' datasets at the paper's settings, every augmentation on."""
    halves = list_halves(frames_dir, [GAME])
    views = pretrain_spatial.view_augments(all_on(pretrain_spatial.DEFAULT_AUGMENT), SIZE)
    temporal = ClipAugment(AugmentSpec.from_config(all_on(pretrain_temporal.DEFAULT_AUGMENT)), SIZE)
    tune = ClipAugment(AugmentSpec.from_config(all_on(finetune.DEFAULT_AUGMENT)), SIZE)
    return {
        "pretrain_spatial": SubVideoPairs(halves, views, seed=0, frames=2, decode=decode,
                                          worker_resize=worker_resize),
        "pretrain_temporal": WindowClips(halves, WINDOW_FRAMES, 64, temporal, seed=0, sampling="random",
                                         decode=decode, worker_resize=worker_resize),
        "finetune": WindowClips(halves, WINDOW_FRAMES, 64, tune, seed=0, sampling="uniform", decode=decode,
                                worker_resize=worker_resize),
    }


def sample_frames(dataset: Any, index: int) -> tuple[int, int, int]:
    """(half index, start frame, frames) that sample ``(0, index)`` reads."""
    if isinstance(dataset, SubVideoPairs):
        half, start = dataset.subvideos(0)[index]
        return int(half), int(start), dataset.frames
    half, start = dataset.windows(0)[index]
    return int(half), int(start), dataset.window_frames


def decode_floor(jpegs: list[torch.Tensor]) -> None:
    decode_jpeg(jpegs, mode=ImageReadMode.RGB)


def device_part(batch: dict[str, Any], device: torch.device) -> float:
    """Wall seconds of what the training step does to a batch on its device before the model."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    moved = _to_device(batch, device)
    sync()
    t0 = time.perf_counter()
    prepare_batch(moved, device, SIZE)
    sync()
    return time.perf_counter() - t0


def measure(dataset: Any, files: list[PackedFrames], clips: int, device: torch.device, batch: int) -> dict[str, Any]:
    keys = [(0, int(i)) for i in np.random.default_rng(1).permutation(len(dataset))[:clips]]
    collate_samples([dataset[keys[0]]])  # warm-up: imports, file handles
    loader = floor = 0.0
    batches = []
    for first in range(0, clips, batch):
        samples = []
        for key in keys[first : first + batch]:  # interleaved, so both see the same machine state
            h, start, count = sample_frames(dataset, key[1])
            jpegs = [torch.from_numpy(j.copy()) for j in files[h].read_jpegs(start, count)]
            t0 = time.process_time()
            decode_floor(jpegs)
            t1 = time.process_time()
            samples.append(dataset[key])
            t2 = time.process_time()
            floor += t1 - t0
            loader += t2 - t1
        t0 = time.process_time()
        batches.append(collate_samples(samples))
        loader += time.process_time() - t0
    device_part(batches[0], device)  # warm-up
    seconds = min(device_part(batches[0], device) for _ in range(3))
    return {
        "loader_cpu_ms_per_clip": 1000 * loader / clips,
        "decode_floor_ms_per_clip": 1000 * floor / clips,
        "ratio": loader / floor,
        "device_augment_ms_per_clip": 1000 * seconds / len(keys[:batch]),
        "device": str(device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--clips", type=int, default=12, help="clips per step for steps 2-3 (step 1: 8x)")
    parser.add_argument("--batch", type=int, default=8, help="clips per batch for the device part")
    parser.add_argument("--device", default="cpu", help="device of the training step's part (default cpu)")
    parser.add_argument("--seconds", type=float, default=120.0, help="seconds of synthetic video (default 120)")
    parser.add_argument("--decode", default="worker", choices=("worker", "device"),
                        help="where JPEGs are decoded (default worker)")
    parser.add_argument("--loader-for", default="cuda", choices=("cuda", "cpu"),
                        help="the loader as the training steps set it up for this training device: for cuda "
                             "(default, the paper's) the device resizes, for cpu the workers resize")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        frames_dir = make_frames(Path(tmp), args.seconds)
        data = datasets(frames_dir, args.decode, worker_resize=args.loader_for == "cpu")
        files = [PackedFrames(h.path) for h in data["finetune"].halves]
        mean_bytes = float(np.diff(files[0].offsets).mean())
        for name, dataset in data.items():
            clips = 8 * args.clips if name == "pretrain_spatial" else args.clips
            out[name] = measure(dataset, files, clips, device, 8 * args.batch if name == "pretrain_spatial"
                                else args.batch)
            if not args.json:
                r = out[name]
                print(f"{name:18s} loader {r['loader_cpu_ms_per_clip']:8.2f} ms/clip  decode floor "
                      f"{r['decode_floor_ms_per_clip']:7.2f} ms/clip  ratio {r['ratio']:6.2f}  device part "
                      f"{r['device_augment_ms_per_clip']:7.2f} ms/clip on {r['device']}", flush=True)
    if not args.json:
        print(f"frames: 398x224 JPEGs of {mean_bytes / 1024:.1f} KiB on average (q:v 3)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
