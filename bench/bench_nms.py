"""Soft and hard NMS of `comedian.postprocess` against plain-loop references, side by side.

Realistic sizes: halves of T = 2,700 one-second steps x 17 classes, scores shaped like a network's
sigmoid output (low noisy background, bumps of a few seconds around events). The references
implement the rules as the authors' code does: soft NMS loops over the kept peaks with an argmax
over the whole half each time; hard NMS loops over every step. Every result is checked equal
(bit for bit) before the times are printed.

    python bench/bench_nms.py [--halves 10] [--window 10] [--threshold 0.001]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from comedian.postprocess import hard_nms, soft_nms


def loop_soft_nms(scores: np.ndarray, window: float, threshold: float) -> np.ndarray:
    """The rule as a loop over kept peaks (argmax over the half per peak): quadratic in T."""
    n_steps, n_classes = scores.shape
    half = window / 2
    distance = np.arange(n_steps)
    out = np.zeros_like(scores)
    for c in range(n_classes):
        current = scores[:, c].copy()
        remaining = np.ones(n_steps, dtype=bool)
        while remaining.any():
            masked = np.where(remaining, current, -np.inf)
            best = int(np.argmax(masked))  # first index on ties
            if masked[best] < threshold:
                break
            out[best, c] = current[best]
            remaining[best] = False
            if half > 0:
                factor = np.minimum(1.0, np.abs(distance - best) / half).astype(scores.dtype)
                current[remaining] = current[remaining] * factor[remaining]
    return out


def loop_hard_nms(scores: np.ndarray, window: float, threshold: float) -> np.ndarray:
    n_steps, n_classes = scores.shape
    radius = math.floor(window / 2)
    out = np.zeros_like(scores)
    for c in range(n_classes):
        column = scores[:, c]
        for t in range(n_steps):
            value = column[t]
            if value >= threshold and value >= column[max(0, t - radius) : t + radius + 1].max():
                out[t, c] = value
    return out


def synthetic_half(rng: np.random.Generator, n_steps: int = 2700, n_classes: int = 17) -> np.ndarray:
    """(T, C) float32 sigmoid scores: smoothed background logits ~ -5 plus event bumps."""
    t = np.arange(n_steps)
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    kernel /= kernel.sum()
    logits = np.empty((n_steps, n_classes))
    for c in range(n_classes):
        logits[:, c] = np.convolve(rng.normal(-5.0, 1.0, n_steps), kernel, mode="same")
        for event in rng.integers(0, n_steps, rng.integers(1, 40)):
            width = rng.uniform(1.0, 4.0)
            logits[:, c] += rng.uniform(3.0, 9.0) * np.exp(-0.5 * ((t - event) / width) ** 2)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def timed(function, halves, window, threshold):
    start = time.perf_counter()
    results = [function(scores, window, threshold) for scores in halves]
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--halves", type=int, default=10, help="number of 2,700 x 17 halves")
    parser.add_argument("--window", type=float, default=10.0, help="NMS window in steps (= s on a 1-s grid)")
    parser.add_argument("--threshold", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    halves = [synthetic_half(rng) for _ in range(args.halves)]
    print(f"{args.halves} halves of {halves[0].shape[0]} steps x {halves[0].shape[1]} classes (float32), "
          f"window {args.window:g} steps, threshold {args.threshold:g}")
    for name, fast, loop in (("soft", soft_nms, loop_soft_nms), ("hard", hard_nms, loop_hard_nms)):
        fast(halves[0], args.window, args.threshold)  # warm-up
        fast_s, fast_out = timed(fast, halves, args.window, args.threshold)
        loop_s, loop_out = timed(loop, halves, args.window, args.threshold)
        assert all(np.array_equal(a, b) for a, b in zip(fast_out, loop_out)), f"{name}: results differ"
        kept = sum(int(np.count_nonzero(a)) for a in fast_out) / len(halves)
        print(f"{name}: vectorised {1000 * fast_s / len(halves):8.2f} ms/half   loop {1000 * loop_s / len(halves):8.1f}"
              f" ms/half   ratio {loop_s / fast_s:7.1f}x   ({kept:.0f} kept per half, results equal)")


if __name__ == "__main__":
    main()
