"""Benchmark of frame extraction and of the packed-frame reader, measured side by side.

(a) extraction of one half vs ffmpeg decoding the same video alone (``ffmpeg -i X -f null -``),
    same decoder threads; goal: ratio <= 1.1.
(b) reader throughput, clips of 64 consecutive frames at random starts (HDF5 read + JPEG decode)
    vs decoding the same JPEG bytes already in memory; goal: ratio >= 0.8.
(c) the JPEG decoders of ``decode_jpegs`` on CPU (torch threads 1): torchvision vs PIL.

Usage: ``python bench/bench_frames.py [--video X.mkv] [--seconds 60] [--threads 1] [--repeats 7]``.
Timings are interleaved and reported as min and median, wall and CPU time (CPU time is the
steadier measure on a shared machine).
Without ``--video`` it makes a noisy 398x224 25-fps H.264 video of ``--seconds`` s.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from comedian.data.frames import PackedFrames, decode_jpegs, extract_frames, ffmpeg_binary


def make_noisy_video(path: Path, seconds: float, exe: str) -> Path:
    """A 398x224 25-fps H.264 Matroska video of moving test pattern plus temporal noise."""
    subprocess.run(
        [exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size=398x224:rate=25:duration={seconds},noise=alls=25:allf=t+u",
         "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return path


def _cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process and its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def time_null_decode(video: Path, exe: str, threads: int) -> tuple[float, float]:
    """(wall s, CPU s) of ``ffmpeg -i video -f null -``."""
    c0, t0 = _cpu_s(), time.perf_counter()
    subprocess.run([exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
                    "-threads", str(threads), "-i", str(video), "-map", "0:v:0", "-f", "null", "-"],
                   check=True)
    return time.perf_counter() - t0, _cpu_s() - c0


def time_extract(video: Path, out: Path, exe: str, threads: int, quality: int) -> tuple[float, float, dict]:
    """(wall s, CPU s of ffmpeg + this process, attributes) of one extraction."""
    c0, t0 = _cpu_s(), time.perf_counter()
    info = extract_frames(video, out, ffmpeg=exe, threads=threads, quality=quality)
    return time.perf_counter() - t0, _cpu_s() - c0, info


def bench_reader(packed: Path, clip: int, n_clips: int, size, seed: int = 0) -> tuple[float, float]:
    """Frames/s of PackedFrames.read vs decode_jpegs on in-memory bytes, same random clips."""
    pf = PackedFrames(packed)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, pf.count - clip + 1, size=n_clips)
    in_memory = [[bytes(b) for b in pf.read_jpegs(int(s), clip)] for s in starts]
    pf.close()
    pf = PackedFrames(packed)  # fresh handle: the first read opens the file
    decode_jpegs(in_memory[0], size=size)  # warm-up (imports)
    t_mem = t_file = 0.0
    for s, jpegs in zip(starts, in_memory):  # interleaved, so both see the same machine state
        t0 = time.perf_counter()
        decode_jpegs(jpegs, size=size)
        t1 = time.perf_counter()
        pf.read(int(s), clip, size=size)
        t2 = time.perf_counter()
        t_mem += t1 - t0
        t_file += t2 - t1
    n = clip * n_clips
    return n / t_file, n / t_mem


def bench_decoders(packed: Path, clip: int, repeats: int = 5) -> dict[str, float]:
    """Frames/s of the two decoders of decode_jpegs on the first ``clip`` frames, best of ``repeats``."""
    pf = PackedFrames(packed)
    clip = min(clip, pf.count)
    jpegs = pf.read_jpegs(0, clip)
    cases = {f"{dec}, {label}": (dec, size) for dec in ("torchvision", "pil")
             for label, size in (("native", None), ("224x224", (224, 224)))}
    best = {name: float("inf") for name in cases}
    for dec, size in cases.values():
        decode_jpegs(jpegs, size=size, decoder=dec)  # warm-up
    for _ in range(repeats):  # interleaved
        for name, (dec, size) in cases.items():
            t0 = time.perf_counter()
            decode_jpegs(jpegs, size=size, decoder=dec)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: clip / t for name, t in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_frames", description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=1, help="ffmpeg decoder threads, both sides")
    parser.add_argument("--quality", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clip", type=int, default=64)
    parser.add_argument("--clips", type=int, default=40)
    args = parser.parse_args(argv)
    exe = ffmpeg_binary()
    torch.set_num_threads(1)  # as in a DataLoader worker

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = args.video or make_noisy_video(tmp / "noisy.mkv", args.seconds, exe)
        out = tmp / "frames.h5"
        time_null_decode(video, exe, args.threads)  # warm-up: page cache, imports
        time_extract(video, out, exe, args.threads, args.quality)
        nulls, extracts = [], []
        for _ in range(args.repeats):  # interleaved
            nulls.append(time_null_decode(video, exe, args.threads))
            *t, info = time_extract(video, out, exe, args.threads, args.quality)
            extracts.append(t)
        nulls, extracts = np.array(nulls), np.array(extracts)  # (repeats, [wall, CPU])
        n_in = info["duration_s"] * 25
        print(f"video: {video.name}, {info['duration_s']:.1f} s, {info['width']}x{info['height']}, "
              f"decoder threads {args.threads}, q:v {args.quality}, {args.repeats} interleaved repeats; "
              f"CPU = user + system of all processes")
        for stat, fn in (("min", np.min), ("median", np.median)):
            (w_null, c_null), (w_ext, c_ext) = fn(nulls, axis=0), fn(extracts, axis=0)
            print(f"(a) {stat}: ffmpeg -f null decode: wall {w_null:6.3f} s, CPU {c_null:6.3f} s "
                  f"({n_in / w_null:4.0f} input frames/s)")
            print(f"    {stat}: extraction        : wall {w_ext:6.3f} s, CPU {c_ext:6.3f} s "
                  f"({info['count']} frames, {info['bytes'] / info['count'] / 1024:.1f} KiB/frame)")
            print(f"    {stat}: ratio extract / decode: wall {w_ext / w_null:.3f}, CPU {c_ext / c_null:.3f}"
                  f"   (goal <= 1.1)")

        clip = min(args.clip, info["count"])
        for size in (None, (224, 224)):
            r_file, r_mem = bench_reader(out, clip, args.clips, size)
            label = "native" if size is None else f"resized to {size[0]}x{size[1]}"
            print(f"(b) reader, {args.clips} clips of {clip} frames, {label}:")
            print(f"    PackedFrames.read     : {r_file:7.0f} frames/s")
            print(f"    in-memory decode      : {r_mem:7.0f} frames/s")
            print(f"    ratio read / in-memory: {r_file / r_mem:7.3f}   (goal >= 0.8)")
        print(f"(c) JPEG decoders, {clip} frames to (N, H, W, 3) uint8, CPU, torch threads 1:")
        for name, rate in bench_decoders(out, clip).items():
            print(f"    {name:<22}: {rate:7.0f} frames/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
