"""Sliding-window inference over one half: per-token class probabilities on the half's token grid.

A half of N frames at ``fps`` is cut into tokens of Ts frames (one tubelet; Ts = 2 at 2 fps, so one
token per second). Token j holds frames ``j*Ts .. j*Ts + Ts - 1`` and its prediction is placed at
:func:`comedian.data.targets.token_times_s` (the mean time of its frames, ``j + 0.25`` s at 2 fps),
the same definition the training targets use. Output row j is token j.

Windows (:func:`window_plan`)
-----------------------------
Each window is ``L = window_frames / Ts`` tokens (Tg frames). Windows start on token boundaries
(even frames for Ts = 2, so the model sees the tubelets it was trained on) every ``S`` tokens,
``S = L // 2`` (half overlap); the last window is aligned to the end of the half, so no second is
left unscored (it overlaps the previous one by more than half when the half's length is not a
multiple of ``S``).

In each window, the first and last ``k`` tokens are dropped (their predictions lack past or
future context), ``k = ceil(ignore_s / d)`` with ``d = Ts / fps`` the token duration: a token is
dropped when its tubelet starts less than ``ignore_s`` after the window's start or ends less than
``ignore_s`` before the window's end (``ignore_s = 6`` at 1 token/s drops 6 tokens each side). The
window that starts at the half's start keeps its first tokens, and the window that ends at the
half's end keeps its last tokens. Every token of the half is then kept by at least one window as
long as ``L - S >= 2k``; when ``ignore_s`` is so large that half overlap would leave gaps, the
stride is reduced to ``S = L - 2k`` (with a warning), and ``2k >= L`` (nothing left of a window)
is an error.

Overlapping kept predictions of a token are merged per class, by ``max`` (the paper's default) or
``mean``.

Ends of a half
--------------
When N is not a multiple of Ts, the last token is completed by repeating the half's last frame
(so the token grid has ``ceil(N / Ts)`` rows and the last frame is scored). A half shorter than
one window is scored by ONE window starting at frame 0, completed to Tg frames by repeating the
half's last frame (sample and hold, as a frozen last picture); only the rows of real tokens are
returned. Padded frames never produce rows of their own.

Input normalisation
-------------------
:func:`comedian.preprocess.frames_to_input` is the one conversion of uint8 RGB frames to the model's input,
for training and inference alike (:mod:`comedian.preprocess` holds its constants).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from comedian.data.targets import token_times_s
from comedian.errors import InputError
from comedian.preprocess import INPUT_MEAN, INPUT_STD, frames_to_input  # re-exported: inference reads them here

if TYPE_CHECKING:
    from comedian.data.frames import PackedFrames

__all__ = [
    "INPUT_MEAN", "INPUT_STD", "MERGES", "WindowPlan", "frames_to_input", "input_size", "window_plan",
    "score_halves", "sliding_window_scores", "StreamScorer",
]

log = logging.getLogger(__name__)

MERGES: tuple[str, ...] = ("max", "mean")
#: Tolerance when converting seconds to whole tokens (so 6.0 s at 1 s per token is 6 tokens, not 7).
_EPS = 1e-9


# ----------------------------------------------------------------------------------------------
# The window plan (pure arithmetic, tokens)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of one half lie and which of their tokens are kept. Units: tokens.

    Attributes:
        n_frames: N, frames of the half.
        n_tokens: T = ceil(N / Ts), rows of the output.
        tokens_per_window: L = Tg / Ts.
        frames_per_token: Ts.
        stride: S, tokens between consecutive window starts (except the last window's).
        ignore_tokens: k, tokens dropped at each inner window edge.
        starts: (W,) int64, first token of each window; window w covers tokens
            ``starts[w] .. starts[w] + L - 1`` (some may be padding when T < L).
        keep_lo, keep_hi: (W,) int64, window w keeps its tokens ``keep_lo[w] <= i < keep_hi[w]``
            (offsets within the window), i.e. half tokens ``starts[w] + keep_lo[w] ..``.
    """

    n_frames: int
    n_tokens: int
    tokens_per_window: int
    frames_per_token: int
    stride: int
    ignore_tokens: int
    starts: np.ndarray
    keep_lo: np.ndarray
    keep_hi: np.ndarray

    @property
    def n_windows(self) -> int:
        return int(self.starts.size)

    @property
    def window_frames(self) -> int:
        return self.tokens_per_window * self.frames_per_token

    @property
    def padded_frames(self) -> int:
        """Frames the windows cover: ``max(T, L) * Ts`` (>= N; the rest repeat the last frame)."""
        return max(self.n_tokens, self.tokens_per_window) * self.frames_per_token

    def coverage(self) -> np.ndarray:
        """(T,) int64: how many windows keep each token of the half (>= 1 for every token)."""
        counts = np.zeros(self.n_tokens + 1, dtype=np.int64)
        lo = np.minimum(self.starts + self.keep_lo, self.n_tokens)
        hi = np.minimum(self.starts + self.keep_hi, self.n_tokens)
        np.add.at(counts, lo, 1)
        np.add.at(counts, hi, -1)
        return np.cumsum(counts)[:-1]


def window_plan(
    n_frames: int,
    window_frames: int,
    ignore_s: float,
    fps: float = 2.0,
    frames_per_token: int = 2,
) -> WindowPlan:
    """The windows of a half of ``n_frames`` frames (see the module docstring for the rules).

    Args:
        n_frames: N >= 1, frames in the half.
        window_frames: Tg, frames per window, a multiple of ``frames_per_token``.
        ignore_s: seconds dropped at each inner window edge (>= 0).
        fps: frames per second of the half.
        frames_per_token: Ts, frames per tubelet / token.

    Raises:
        InputError: a window that is not whole tokens, or ``ignore_s`` that leaves nothing of a window.
    """
    if n_frames < 1:
        raise InputError(f"a half needs at least one frame, got {n_frames}")
    if frames_per_token < 1 or window_frames < frames_per_token or window_frames % frames_per_token:
        raise InputError(
            f"window_frames: {window_frames} is not a positive multiple of the {frames_per_token} frames per token"
        )
    if not (math.isfinite(ignore_s) and ignore_s >= 0):
        raise InputError(f"ignore_s: must be a finite number of seconds >= 0, got {ignore_s!r}")
    if not fps > 0:
        raise InputError(f"fps: must be > 0, got {fps!r}")
    token_s = frames_per_token / fps
    n_tokens = -(-n_frames // frames_per_token)
    length = window_frames // frames_per_token
    ignore = math.ceil(ignore_s / token_s - _EPS) if ignore_s > 0 else 0
    if 2 * ignore >= length and n_tokens > length:
        raise InputError(
            f"ignore_s: {ignore_s:g} s drops {ignore} tokens at each edge of a {length}-token "
            f"({length * token_s:g} s) window, leaving none; use ignore_s < {length * token_s / 2:g} s"
        )
    stride = max(1, length // 2)
    if n_tokens > length and length - stride < 2 * ignore:
        stride = length - 2 * ignore
        warnings.warn(
            f"ignore_s = {ignore_s:g} s is more than a quarter of the {length * token_s:g}-s window: windows "
            f"overlap by more than half (stride {stride * token_s:g} s) so that every second stays covered",
            stacklevel=2,
        )
    if n_tokens <= length:
        starts = np.zeros(1, dtype=np.int64)
    else:
        starts = np.append(np.arange(0, n_tokens - length, stride, dtype=np.int64), n_tokens - length)
    keep_lo = np.where(starts == 0, 0, ignore).astype(np.int64)
    keep_hi = np.where(starts + length >= n_tokens, length, length - ignore).astype(np.int64)
    return WindowPlan(
        n_frames=int(n_frames), n_tokens=int(n_tokens), tokens_per_window=int(length),
        frames_per_token=int(frames_per_token), stride=int(stride), ignore_tokens=int(ignore),
        starts=starts, keep_lo=keep_lo, keep_hi=keep_hi,
    )


# ----------------------------------------------------------------------------------------------
# Reading the windows' frames
# ----------------------------------------------------------------------------------------------


def _read_windows(
    frames: PackedFrames, plan: WindowPlan, first: int, count: int, size: tuple[int, int] | None
) -> np.ndarray:
    """uint8 (count, Tg, H, W, 3): the frames of windows ``first .. first + count - 1``.

    The union of the windows' frame ranges is decoded once (consecutive windows overlap); frames
    past the half's end repeat its last frame.
    """
    ts, tg = plan.frames_per_token, plan.window_frames
    lo = int(plan.starts[first]) * ts
    hi = int(plan.starts[first + count - 1]) * ts + tg  # exclusive, may pass the half's end
    real_hi = min(hi, plan.n_frames)
    block = frames.read(lo, real_hi - lo, size=size)  # (n, H, W, 3)
    if real_hi < hi:
        block = np.concatenate([block, np.repeat(block[-1:], hi - real_hi, axis=0)], axis=0)
    out = np.empty((count, tg, *block.shape[1:]), dtype=np.uint8)
    for b in range(count):
        s = int(plan.starts[first + b]) * ts - lo
        out[b] = block[s : s + tg]
    return out


class _WindowBatches:
    """A map-style dataset: item k = (half index, first window, uint8 frames of its windows).

    Batches never straddle two halves. Safe to use in DataLoader workers (PackedFrames reopens its
    file in each process).
    """

    def __init__(self, halves: Sequence[PackedFrames], plans: Sequence[WindowPlan], batch_size: int,
                 size: tuple[int, int] | None) -> None:
        self.halves, self.plans, self.size = list(halves), list(plans), size
        self.items = [(h, w, min(batch_size, p.n_windows - w))
                      for h, p in enumerate(plans) for w in range(0, p.n_windows, batch_size)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[int, int, np.ndarray]:
        h, w, count = self.items[k]
        return h, w, _read_windows(self.halves[h], self.plans[h], w, count, self.size)


def _batches(dataset: _WindowBatches, workers: int) -> Iterator[tuple[int, int, Any]]:
    """Items of ``dataset`` in order: in this process, or from a DataLoader with ``workers`` processes."""
    if workers <= 0:
        for k in range(len(dataset)):
            yield dataset[k]
        return
    import torch

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=torch.cuda.is_available(),
        prefetch_factor=4, persistent_workers=False,
    )
    for h, w, block in loader:
        yield int(h), int(w), block


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


class _Merger:
    """Accumulates the kept window predictions of one half: (T, C) by max or by mean.

    Rows are added as windows come (the array grows when a later plan has more tokens, for a half that
    is still being read); :meth:`result` checks the final plan's coverage.
    """

    def __init__(self, num_classes: int, merge: str) -> None:
        self.merge, self.fill = merge, (-np.inf if merge == "max" else 0.0)
        self.acc = np.full((0, num_classes), self.fill, dtype=np.float64)
        self.count = np.zeros(0, dtype=np.int64)
        self.done = 0

    def _grow(self, n_tokens: int) -> None:
        if n_tokens > self.acc.shape[0]:
            extra = n_tokens - self.acc.shape[0]
            self.acc = np.concatenate([self.acc, np.full((extra, self.acc.shape[1]), self.fill)])
            self.count = np.concatenate([self.count, np.zeros(extra, dtype=np.int64)])

    def add(self, plan: WindowPlan, window: int, probs: np.ndarray) -> None:
        """``probs`` (L, C): the per-token probabilities of window ``window`` of ``plan``."""
        self._grow(plan.n_tokens)
        s, lo = int(plan.starts[window]), int(plan.keep_lo[window])
        hi = min(int(plan.keep_hi[window]), plan.n_tokens - s)  # padding tokens are never kept
        rows = slice(s + lo, s + hi)
        if self.merge == "max":
            np.maximum(self.acc[rows], probs[lo:hi], out=self.acc[rows])
        else:
            self.acc[rows] += probs[lo:hi]
        self.count[rows] += 1
        self.done += 1

    def result(self, plan: WindowPlan) -> np.ndarray:
        self._grow(plan.n_tokens)
        if self.done != plan.n_windows or self.acc.shape[0] != plan.n_tokens or self.count.min() < 1:
            raise RuntimeError("sliding windows: a token of the half was not scored")  # the plan guarantees it
        out = self.acc if self.merge == "max" else self.acc / self.count[:, None]
        return out.astype(np.float32)


def input_size(model: Any, size: int | Sequence[int] | None = None) -> tuple[int, int] | None:
    """Frame ``(height, width)`` fed to ``model``: ``size`` (a side or a pair) if given, else the
    model's ``arch["config"]["size"]`` (square), else None (the native size)."""
    if size is None:
        size = getattr(model, "arch", {}).get("config", {}).get("size")
        if size is None:
            return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class _Scorer:
    """The model's forward pass over batches of windows, for :func:`score_halves` and :func:`score_stream`:
    checks, eval mode (restored by :meth:`close`), ``inference_mode``, bf16 autocast on CUDA (float32 on CPU)."""

    def __init__(self, model: Any, window_frames: int, merge: str, batch_size: int, device: Any) -> None:
        import torch

        if merge not in MERGES:
            raise InputError(f"merge: must be one of {list(MERGES)}, got {merge!r}")
        if batch_size < 1:
            raise InputError(f"batch_size: must be >= 1, got {batch_size}")
        self.ts = int(getattr(model, "tubelet_size", 2))
        max_tokens = getattr(model, "num_tokens", None)
        if max_tokens is not None and window_frames // self.ts > max_tokens:
            raise InputError(
                f"window_frames: {window_frames} frames = {window_frames // self.ts} tokens, more than the "
                f"{max_tokens} the model's time embedding was trained for"
            )
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.was_training = model.training
        model.eval()

    def probs(self, block: Any) -> np.ndarray:
        """uint8 (B, Tg, H, W, 3) -> float32 (B, L, C) per-token probabilities."""
        import torch

        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                    else torch.autocast("cpu", enabled=False))
        with torch.inference_mode(), autocast:  # entered per batch: nothing leaks past a yield
            clip = frames_to_input(block, device=self.device)  # (B, Tg, 3, H, W)
            return torch.sigmoid(self.model(clip).float()).cpu().numpy()

    def close(self) -> None:
        self.model.train(self.was_training)


def score_halves(
    model: Any,
    halves: Sequence[PackedFrames],
    window_frames: int,
    ignore_s: float,
    merge: str = "max",
    batch_size: int = 8,
    size: int | Sequence[int] | None = None,
    device: Any = None,
    workers: int = 0,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Sliding-window scores of several halves, yielded as each half completes, in order.

    Same arguments as :func:`sliding_window_scores`, with ``halves`` a list of packed frame files
    and ``workers`` DataLoader processes decoding frames (0 = decode in this process).

    Yields:
        ``(index into halves, scores (T, C) float32, times_s (T,) float64)`` per half.
    """
    scorer = _Scorer(model, window_frames, merge, batch_size, device)
    ts = scorer.ts
    plans = [window_plan(f.count, window_frames, ignore_s, f.fps, ts) for f in halves]
    dataset = _WindowBatches(halves, plans, batch_size, input_size(model, size))
    mergers: dict[int, _Merger] = {}
    try:
        for h, first, block in _batches(dataset, workers):
            probs = scorer.probs(block)  # (B, L, C)
            if h not in mergers:
                mergers[h] = _Merger(probs.shape[-1], merge)
            merger = mergers[h]
            for b in range(probs.shape[0]):
                merger.add(plans[h], first + b, probs[b])
            if merger.done == plans[h].n_windows:
                times = token_times_s(0.0, plans[h].n_tokens, halves[h].fps, ts)
                yield h, mergers.pop(h).result(plans[h]), times
    finally:
        scorer.close()


class _FrameTail:
    """The frames of a half being read, from frame :attr:`first` to the last one received (:attr:`count`):
    ``read(start, count)`` as :meth:`PackedFrames.read` (frames already at the model's size)."""

    def __init__(self, fps: float) -> None:
        self.fps, self.first, self.count = fps, 0, 0
        self.frames: np.ndarray | None = None

    def append(self, frames: np.ndarray) -> None:
        self.frames = frames.copy() if self.frames is None else np.concatenate([self.frames, frames])
        self.count += len(frames)

    def drop_before(self, frame: int) -> None:
        if frame > self.first:
            self.frames = self.frames[frame - self.first :].copy()
            self.first = frame

    def read(self, start: int, count: int, size: tuple[int, int] | None = None) -> np.ndarray:
        if start < self.first or start + count > self.count:
            raise RuntimeError(f"frames [{start}, {start + count}) not held (held: [{self.first}, {self.count}))")
        return self.frames[start - self.first : start - self.first + count]


class StreamScorer:
    """:func:`sliding_window_scores` of a half whose frames arrive in chunks (e.g. decoded from ffmpeg as
    it runs), holding only the frames of the windows not yet scored: memory does not grow with the half.

    ``push(frames)`` each chunk in order, then ``finish()`` -> ``(scores, times_s)``, equal to what
    :func:`sliding_window_scores` gives on the same frames: a window that starts before
    ``ceil(N_so_far / Ts) - L`` tokens is in the plan of the whole half, whatever its length
    (:func:`window_plan`'s regular windows of a longer half start with those of a shorter one, with the
    same kept tokens), so such windows are scored as soon as a batch of them is complete; the rest (the
    window aligned to the end, or the one padded window of a short half) when the stream ends. The model
    is in eval mode from construction to :meth:`finish` or :meth:`close` (then its mode is restored).

    Args:
        model, window_frames, ignore_s, merge, batch_size, device: see :func:`sliding_window_scores`.
        fps: frames per second of the stream; frame i is at ``i / fps`` s.

    Pushed frames are uint8 (n, H, W, 3) RGB at the model's input size (:func:`input_size`).
    """

    def __init__(self, model: Any, fps: float, window_frames: int, ignore_s: float, merge: str = "max",
                 batch_size: int = 8, device: Any = None) -> None:
        self._scorer = _Scorer(model, window_frames, merge, batch_size, device)
        self.fps, self.window_frames, self.ignore_s = fps, window_frames, ignore_s
        self.merge, self.batch_size = merge, batch_size
        self._tail, self._merger, self._scored = _FrameTail(fps), None, 0

    @property
    def frames(self) -> int:
        """Frames pushed so far."""
        return self._tail.count

    def _plan(self) -> WindowPlan:
        return window_plan(self._tail.count, self.window_frames, self.ignore_s, self.fps, self._scorer.ts)

    def _run(self, plan: WindowPlan, first: int, count: int) -> None:
        probs = self._scorer.probs(_read_windows(self._tail, plan, first, count, None))
        self._merger = self._merger or _Merger(probs.shape[-1], self.merge)
        for b in range(count):
            self._merger.add(plan, first + b, probs[b])

    def push(self, frames: np.ndarray) -> None:
        """Add the next frames; score the windows that are complete, a batch at a time."""
        tail, ts = self._tail, self._scorer.ts
        tail.append(np.asarray(frames, dtype=np.uint8))
        if -(-tail.count // ts) <= self.window_frames // ts:
            return
        plan = self._plan()
        regular = plan.n_windows - 1  # all but the last window are windows of any longer half too
        while regular - self._scored >= self.batch_size:
            self._run(plan, self._scored, self.batch_size)
            self._scored += self.batch_size
        # still needed: the next regular window, or the last window (it starts after every regular one)
        scored = self._scored
        keep_from = int(plan.starts[scored]) if scored < regular else int(plan.starts[regular - 1]) + 1
        tail.drop_before(keep_from * ts)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Score the remaining windows; ``(scores (T, C) float32, times_s (T,) float64)``.

        Raises:
            InputError: no frames were pushed.
        """
        try:
            if self._tail.count == 0:
                raise InputError("no frames to score")
            plan = self._plan()
            for first in range(self._scored, plan.n_windows, self.batch_size):
                self._run(plan, first, min(self.batch_size, plan.n_windows - first))
            return self._merger.result(plan), token_times_s(0.0, plan.n_tokens, self.fps, self._scorer.ts)
        finally:
            self.close()

    def close(self) -> None:
        """Restore the model's mode and drop the held frames."""
        self._scorer.close()
        self._tail = _FrameTail(self.fps)


def sliding_window_scores(
    model: Any,
    frames: PackedFrames,
    window_frames: int,
    ignore_s: float,
    merge: str = "max",
    batch_size: int = 8,
    size: int | Sequence[int] | None = None,
    device: Any = None,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token class probabilities of one half by sliding windows (rules in the module docstring).

    Args:
        model: a spotting model, clip (B, Tg, 3, H, W) float -> logits (B, Tg / Ts, C); its
            ``tubelet_size`` (Ts, default 2) sets the token grid. Put in eval mode for the call
            (its mode is restored after), run under ``torch.inference_mode`` with bf16 autocast on
            CUDA (float32 on CPU); the sigmoid is applied here.
        frames: the half's packed frames (:class:`comedian.data.frames.PackedFrames`, or any object
            with ``read(start, count, size) -> uint8 (n, H, W, 3)``, ``fps`` and ``count``).
        window_frames: Tg, frames per window (a multiple of Ts, at most the model's clip length).
        ignore_s: seconds dropped at each inner window edge.
        merge: ``"max"`` or ``"mean"`` of the overlapping kept predictions, per class.
        batch_size: windows per forward pass.
        size: frame ``(height, width)`` (or a side) fed to the model; None = the model's
            ``arch["config"]["size"]`` (square), or the native size without one.
        device: where the model runs; None = where its parameters are.
        workers: DataLoader processes decoding frames (0 = in this process).

    Returns:
        ``(scores, times_s)``: float32 (T, C) probabilities and float64 (T,) seconds within the half,
        row j = token j at :func:`comedian.data.targets.token_times_s`, T = ceil(N / Ts).
    """
    results = list(score_halves(model, [frames], window_frames, ignore_s, merge, batch_size, size, device,
                                workers))
    (_, scores, times_s), = results
    return scores, times_s
