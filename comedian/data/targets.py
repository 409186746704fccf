"""Per-token targets (step 3), token times (steps 3 and inference) and teacher bank rows (step 2).

A window is ``n_frames`` frames sampled at ``fps`` from ``start_s`` (seconds within the half): frame j
is at ``start_s + j / fps``. Consecutive groups of ``frames_per_token`` frames (a tubelet, Ts) form one
temporal token. Every function here takes and returns seconds; frame indices stay inside.

- :func:`token_targets`: a frame is positive for class c when an action of c lies within ``radius_s``
  of it (inclusive); a token is positive when any of its frames is (paper Sec. 3.4).
- :func:`token_times_s`: a token's time is the mean time of its frames. Training targets, inference
  placement and the teacher rows all use this one definition.
- :func:`bank_rows`: the Baidu bank row (1 per second, row i = second i) paired with each token.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Tolerance (seconds) of the inclusive comparisons, so that float rounding of frame times such as
#: ``0.1 + 0.2`` cannot flip a boundary case. Label positions are whole milliseconds, far above it.
TIME_EPS_S = 1e-6


def _check_window(n_frames: int, fps: float, frames_per_token: int) -> int:
    if fps <= 0 or frames_per_token <= 0 or n_frames <= 0:
        raise ValueError(f"need fps, frames_per_token, n_frames > 0, got {fps}, {frames_per_token}, {n_frames}")
    if n_frames % frames_per_token:
        raise ValueError(f"n_frames = {n_frames} is not a multiple of frames_per_token = {frames_per_token}")
    return n_frames // frames_per_token


def frame_times_s(start_s: float, n_frames: int, fps: float = 2.0) -> np.ndarray:
    """Times of the window's frames, float64 (n_frames,): ``start_s + j / fps``."""
    return start_s + np.arange(n_frames, dtype=np.float64) / fps


def token_times_s(start_s: float, n_tokens: int, fps: float = 2.0, frames_per_token: int = 2) -> np.ndarray:
    """Time of each token, the mean time of its frames, float64 (n_tokens,).

    Token i holds frames i*Ts .. i*Ts + Ts - 1, so its time is ``start_s + (i*Ts + (Ts - 1)/2) / fps``;
    at 2 fps with Ts = 2: ``start_s + i + 0.25``.
    """
    _check_window(n_tokens * frames_per_token, fps, frames_per_token)
    first = np.arange(n_tokens, dtype=np.float64) * frames_per_token
    return start_s + (first + (frames_per_token - 1) / 2.0) / fps


def bank_rows(
    start_s: float, n_tokens: int, fps: float = 2.0, frames_per_token: int = 2, n_rows: int | None = None
) -> np.ndarray:
    """Row of the 1-per-second teacher bank paired with each token, int64 (n_tokens,).

    Row = floor(token time) (row i holds second i; a time within 1e-6 s below an integer counts as that
    integer), clipped to [0, n_rows - 1] so that tokens past the bank's end take its last row.
    ``n_rows`` is the bank's length for the half (None: no upper clip).
    """
    times = token_times_s(start_s, n_tokens, fps, frames_per_token)
    rows = np.floor(times + TIME_EPS_S).astype(np.int64)
    if n_rows is not None:
        if n_rows <= 0:
            raise ValueError(f"bank_rows: n_rows must be > 0, got {n_rows}")
        rows = np.minimum(rows, n_rows - 1)
    return np.maximum(rows, 0)


def token_targets(
    times_s: np.ndarray,
    class_index: np.ndarray,
    start_s: float,
    n_frames: int,
    num_classes: int,
    fps: float = 2.0,
    frames_per_token: int = 2,
    radius_s: float = 0.5,
) -> np.ndarray:
    """Multi-label targets of a window's tokens, float32 (n_frames // frames_per_token, num_classes).

    Args:
        times_s: action times (seconds within the half), (E,); any actions, in or out of the window.
        class_index: class of each action, ints in [0, num_classes), (E,).
        start_s: time of the window's first frame.
        n_frames: frames in the window (a multiple of ``frames_per_token``).
        num_classes: C (17 for SoccerNet-v2).
        fps: frame rate of the window (frames per second).
        frames_per_token: frames per temporal token (Ts).
        radius_s: a frame at time t is positive for class c when an action of c is at time a with
            ``|t - a| <= radius_s`` (plus a tolerance of :data:`TIME_EPS_S`: exactly 0.5 s counts,
            0.501 s does not). Actions before or after the window reach into it by up to ``radius_s``.

    A token is 1 for class c when any of its frames is positive for c, else 0.
    """
    n_tokens = _check_window(n_frames, fps, frames_per_token)
    times = np.asarray(times_s, dtype=np.float64).reshape(-1)
    classes = np.asarray(class_index).reshape(-1)
    if times.shape != classes.shape:
        raise ValueError(f"token_targets: {times.size} times but {classes.size} class indices")
    if classes.size and (
        not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() >= num_classes
    ):
        raise ValueError(f"token_targets: class indices must be integers in [0, {num_classes})")
    frames = frame_times_s(start_s, n_frames, fps)
    reach = radius_s + TIME_EPS_S
    keep = (times >= frames[0] - reach) & (times <= frames[-1] + reach)
    times, classes = times[keep], classes[keep]
    hits = np.abs(frames[None, :] - times[:, None]) <= reach  # (E, n_frames)
    # positive[c, j] = any action of class c hits frame j: a (C, E) x (E, F) product of counts.
    onehot = np.zeros((num_classes, times.size), dtype=np.int64)
    onehot[classes, np.arange(times.size)] = 1
    positive = (onehot @ hits.astype(np.int64)) > 0  # (C, n_frames)
    tokens = positive.T.reshape(n_tokens, frames_per_token, num_classes).any(axis=1)
    return tokens.astype(np.float32)


def half_events(labels: pd.DataFrame, game: str, half: int) -> tuple[np.ndarray, np.ndarray]:
    """The actions of one half from a :func:`comedian.data.soccernet.read_labels` table.

    Returns ``(times_s float64 (E,), class_index int64 (E,))`` sorted by time, ready for
    :func:`token_targets`. Both visibilities ("visible", "not shown") are actions.
    """
    rows = labels[(labels["game"] == game) & (labels["half"] == half)].sort_values("time_s", kind="stable")
    return rows["time_s"].to_numpy(np.float64), rows["class_index"].to_numpy(np.int64)
