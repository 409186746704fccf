"""The data loader's CPU cost per clip against the JPEG-decode floor of the same frames, per training step.

For each step (``pretrain_spatial``, ``pretrain_temporal``, ``finetune``) at the paper's settings (224-px
model input, 64-frame windows for steps 2-3, 2-frame two-view sub-videos for step 1) with EVERY
augmentation of the step's set on (each op whose probability is > 0 in the step's defaults gets
probability 1), on packed frames made the way ``comedian extract`` makes them (a noisy 398x224 25-fps
H.264 video extracted at 2 fps, MJPEG q:v 3):

- ``loader_cpu_ms_per_clip``: CPU time per clip of one loader worker building a batch as a DataLoader
  worker does (``dataset.__getitems__(keys)``: HDF5 reads, JPEG decoding at the size augmentation needs
  straight into the batch's frame array, drawing the augmentation parameters; then the collate function,
  :func:`comedian.data.clips.collate_samples`; the batch then dropped, freeing its memory), in one DataLoader
  worker (one thread; the frame array in shared memory, as in training);
- ``decode_floor_ms_per_clip``: CPU time of decoding the same frames' JPEGs alone (``torchvision.io.
  decode_jpeg``, bytes already in memory, native size, no resize), in the same worker;
- ``ratio``: the two, measured interleaved batch by batch (goal <= 1.3);
- ``fresh_memory_ms_per_clip`` (worker decoding): of the loader's figure, what writing the batch's frame array
  alone costs, per clip (:func:`comedian.data.clips.new_frames` filled once, freed): memory that no process
  has used yet, whose pages the kernel hands over (zeroed) at the first write, a cost the decoding floor
  (decoder output in memory the allocator reuses) does not have and a worker cannot avoid (its batches go to
  the training process in fresh shared memory);
- ``device_augment_ms_per_clip``: what the training step does on its device per clip before the model
  (:func:`comedian.preprocess.prepare_batch`: [decode,] augment, normalise; wall time per clip over a batch,
  synchronised), on ``device``.

The batches of the plain figures are random keys of epoch 0 (for step 1: each sub-video read on its own, an
HDF5 read per sample). Step 1 is also measured with its run reader, side by side in the same run
(``pretrain_spatial`` gets ``runs_loader_cpu_ms_per_clip``, ``runs_decode_floor_ms_per_clip``, ``runs_ratio``,
``runs_fresh_memory_ms_per_clip`` and ``subvideos_per_run``): the batches the training loop draws with
``subvideos_per_run`` (:class:`comedian.data.clips.EpochSampler` with runs, one HDF5 read per run of
consecutive seconds), against the floor of the same sub-videos decoded one by one, as for the plain figures.

The loader is set up as the training steps set it up for CUDA training (``--loader-for cuda``: the workers
decode at the native size, the device resizes; ``cpu``: the workers also resize, see
:func:`comedian.data.clips.decode_size`). With ``--decode device`` the workers only read JPEG bytes and the
device part decodes them too (nvJPEG on CUDA). Usage: ``python bench/bench_loader.py [--json] [--clips 24] [--device cpu] [--decode worker]
[--only pretrain_spatial] [--subvideos-per-run 16]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from comedian.data.clips import (
    AugmentSpec,
    ClipAugment,
    EpochSampler,
    SubVideoPairs,
    WindowClips,
    collate_samples,
    frames_path,
    list_halves,
    new_frames,
)
from comedian.data.frames import PackedFrames, extract_frames, ffmpeg_binary
from comedian.preprocess import prepare_batch
from comedian.train import finetune, pretrain_spatial, pretrain_temporal
from comedian.train.loop import _to_device

GAME = "bench/2024-2025/2024-08-01 - 18-00 Home 1 - 0 Away"
SIZE = 224
WINDOW_FRAMES = 64
STEPS = ("pretrain_spatial", "pretrain_temporal", "finetune")
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


def step_one_runs(frames_dir: Path, decode: str, worker_resize: bool, per_run: int) -> SubVideoPairs:
    """Step 1's dataset read in runs of ``per_run`` consecutive sub-videos (``subvideos_per_run``)."""
    views = pretrain_spatial.view_augments(all_on(pretrain_spatial.DEFAULT_AUGMENT), SIZE)
    return SubVideoPairs(list_halves(frames_dir, [GAME]), views, seed=0, frames=2, decode=decode,
                         worker_resize=worker_resize, per_run=per_run)


def run_batches(dataset: SubVideoPairs, clips: int, batch: int) -> list[list[tuple[int, int]]]:
    """The first batches of epoch 0 as the training loop draws them with runs (:class:`EpochSampler`)."""
    sampler = EpochSampler(len(dataset), seed=1, runs=dataset.runs, block=batch)
    keys = list(sampler)[:clips]
    return [keys[first : first + batch] for first in range(0, len(keys), batch)]


@dataclass
class Reader:
    """One way of building a step's batches: the dataset and the batches of keys."""

    dataset: Any
    key_batches: list[list[tuple[int, int]]]


class WorkerJobs(torch.utils.data.Dataset):
    """The measurements of :func:`measure`, one item per (batch, reader), made in a DataLoader worker: the
    decoding floor of the batch's samples one by one, then the reader building the batch (and dropping it,
    which frees its memory), then the fresh memory of its frames alone; CPU seconds each. The first batch of
    each reader comes back too (for the device part)."""

    def __init__(self, readers: list[Reader], files: list[PackedFrames]) -> None:
        self.readers, self.files = readers, files
        self.jobs = [(b, r) for b in range(max(len(x.key_batches) for x in readers))
                     for r, x in enumerate(readers) if b < len(x.key_batches)]
        self.warm: set[int] = set()

    def __len__(self) -> int:
        return len(self.jobs)

    def floor_of(self, dataset: Any, key: tuple[int, int]) -> float:
        h, start, count = sample_frames(dataset, key[1])
        jpegs = [torch.from_numpy(j.copy()) for j in self.files[h].read_jpegs(start, count)]
        t0 = time.process_time()
        decode_floor(jpegs)
        return time.process_time() - t0

    def __getitem__(self, job: int) -> dict[str, Any]:
        b, r = self.jobs[job]
        reader = self.readers[r]
        keys = reader.key_batches[b]
        if r not in self.warm:  # imports, file handles
            collate_samples(reader.dataset.__getitems__(keys[:1]))
            self.warm.add(r)
        floor = sum(self.floor_of(reader.dataset, key) for key in keys)
        t0 = time.process_time()
        batch = collate_samples(reader.dataset.__getitems__(keys))
        first = batch if b == 0 else None
        shape = batch["clip"].movedim(-3, -1).shape if "clip" in batch else None
        del batch
        loader = time.process_time() - t0
        fresh = 0.0
        if shape is not None:
            t0 = time.process_time()
            new_frames(shape).fill_(0)
            fresh = time.process_time() - t0
        return {"reader": r, "clips": len(keys), "floor": floor, "loader": loader, "fresh": fresh, "batch": first}


def as_is(item: Any) -> Any:
    return item


def measure(readers: list[Reader], files: list[PackedFrames], device: torch.device) -> list[dict[str, Any]]:
    """The figures of one step (module docstring) for each reader, measured in ONE DataLoader worker (one
    thread, as a training loader's worker; its frame arrays in shared memory), interleaved batch by batch
    (reader after reader) so that all see the same machine state (:class:`WorkerJobs`)."""
    jobs = torch.utils.data.DataLoader(WorkerJobs(readers, files), batch_size=None, num_workers=1, collate_fn=as_is)
    totals = [{"clips": 0, "floor": 0.0, "loader": 0.0, "fresh": 0.0} for _ in readers]
    firsts: list[Any] = [None] * len(readers)
    for item in jobs:
        for key in totals[item["reader"]]:
            totals[item["reader"]][key] += item[key]
        if item["batch"] is not None:
            firsts[item["reader"]] = item["batch"]
    out = []
    for t, batch, r in zip(totals, firsts, readers):
        device_part(batch, device)  # warm-up
        seconds = min(device_part(batch, device) for _ in range(3))
        out.append({
            "loader_cpu_ms_per_clip": 1000 * t["loader"] / t["clips"],
            "decode_floor_ms_per_clip": 1000 * t["floor"] / t["clips"],
            "ratio": t["loader"] / t["floor"],
            "device_augment_ms_per_clip": 1000 * seconds / len(r.key_batches[0]),
            "device": str(device),
            **({"fresh_memory_ms_per_clip": 1000 * t["fresh"] / t["clips"]} if t["fresh"] else {}),
        })
    return out


def random_batches(dataset: Any, clips: int, batch: int) -> list[list[tuple[int, int]]]:
    """``clips`` keys of epoch 0 in random order (no runs), in batches of ``batch``."""
    keys = [(0, int(i)) for i in np.random.default_rng(1).permutation(len(dataset))[:clips]]
    return [keys[first : first + batch] for first in range(0, len(keys), batch)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--clips", type=int, default=24, help="clips per step for steps 2-3 (step 1: 8x)")
    parser.add_argument("--batch", type=int, default=8, help="clips per batch for the device part")
    parser.add_argument("--device", default="cpu", help="device of the training step's part (default cpu)")
    parser.add_argument("--seconds", type=float, default=120.0, help="seconds of synthetic video (default 120)")
    parser.add_argument("--decode", default="worker", choices=("worker", "device"),
                        help="where JPEGs are decoded (default worker)")
    parser.add_argument("--loader-for", default="cuda", choices=("cuda", "cpu"),
                        help="the loader as the training steps set it up for this training device: for cuda "
                             "(default, the paper's) the device resizes, for cpu the workers resize")
    parser.add_argument("--subvideos-per-run", type=int, default=16,
                        help="step 1's run reader: consecutive 1-s sub-videos per run (default 16)")
    parser.add_argument("--only", nargs="+", default=list(STEPS), choices=STEPS, help="steps to measure (default all)")
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
            if name not in args.only:
                continue
            one = name == "pretrain_spatial"
            clips, batch = (8 * args.clips, 8 * args.batch) if one else (args.clips, args.batch)
            readers = [Reader(dataset, random_batches(dataset, clips, batch))]
            if one:  # the run reader side by side: the batches the loop draws with runs, each read at once
                runs = step_one_runs(frames_dir, args.decode, args.loader_for == "cpu", args.subvideos_per_run)
                readers.append(Reader(runs, run_batches(runs, clips, batch)))
            figures = measure(readers, files, device)
            out[name] = figures[0]
            if one:
                by_run = figures[1]
                out[name].update({f"runs_{k}": by_run[k] for k in ("loader_cpu_ms_per_clip", "decode_floor_ms_per_clip",
                                                                  "ratio", "fresh_memory_ms_per_clip") if k in by_run})
                out[name]["subvideos_per_run"] = args.subvideos_per_run
            if not args.json:
                r = out[name]
                def fresh(key: str) -> str:
                    return f"  (fresh memory {r[key]:.2f})" if key in r else ""

                print(f"{name:18s} loader {r['loader_cpu_ms_per_clip']:8.2f} ms/clip{fresh('fresh_memory_ms_per_clip')}"
                      f"  decode floor {r['decode_floor_ms_per_clip']:7.2f} ms/clip  ratio {r['ratio']:6.2f}  device "
                      f"part {r['device_augment_ms_per_clip']:7.2f} ms/clip on {r['device']}", flush=True)
                if one:
                    print(f"{'  in runs of ' + str(args.subvideos_per_run):18s} loader "
                          f"{r['runs_loader_cpu_ms_per_clip']:8.2f} ms/clip{fresh('runs_fresh_memory_ms_per_clip')}"
                          f"  decode floor {r['runs_decode_floor_ms_per_clip']:7.2f} ms/clip  ratio "
                          f"{r['runs_ratio']:6.2f}", flush=True)
    if not args.json:
        print(f"frames: 398x224 JPEGs of {mean_bytes / 1024:.1f} KiB on average (q:v 3)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
