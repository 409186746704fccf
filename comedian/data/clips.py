"""Training clips: which windows to read, datasets over the packed frame files, clip-consistent augmentation.

Samples of the three training steps (paper Sec. 3.2-3.4, SPEC.md §3):

- step 1 (MoCo): every 1-s sub-video of 2 frames of every training half, non-overlapping, from frame 0
  (:func:`subvideo_starts`), two augmented views each (:class:`SubVideoPairs`);
- steps 2 and 3: windows of Tg frames drawn afresh every epoch, ``windows_per_game`` per game: random
  over the game's timeline (step 2), or spread over each half without overlap, edges included (step 3)
  (:func:`sample_windows`, :class:`WindowClips`).

Determinism. A sample is addressed by a key ``(epoch, index)`` that :class:`EpochSampler` yields (the
DataLoader hands the key to the dataset, which returns it with the sample). Everything random about a
sample (its window, its augmentation; the training step draws its token mask the same way from the key) is
drawn from generators seeded by ``(seed, stream, epoch, index)`` (:func:`sample_rng`), so a sample does not
depend on the worker that builds it, on the number of workers, on the number of DDP ranks, or on what ran
before: a run is reproducible and a resumed run sees exactly the samples of an uninterrupted one. The
workers' global RNGs are seeded as well (:func:`seed_worker`).

Frames are read with :class:`~comedian.data.frames.PackedFrames`, one instance per half, opened lazily in
each worker process (HDF5 handles are never shared across a fork). Workers only read and decode: the
datasets build a whole batch at once (``__getitems__``, which the DataLoader calls with a batch's keys; the
collate function passes it on), its frames decoded straight into one uint8 (B, T, H, W, 3) array at the size
augmentation needs (:func:`decode_size`, :class:`FrameStore`), or only their JPEG bytes when the training
device decodes them (``decode="device"``), with each clip's augmentation *parameters* (:meth:`ClipAugment.draw`,
from the sample's key). The training step augments and normalises the whole batch on its device
(:mod:`comedian.preprocess`, the module inference shares), so the loader's CPU cost is that of reading and
decoding. ``dataset[key]`` is the batch of that one key (without its leading dimension), so a sample is the
same whatever batch it is read in.

Geometry: the model sees a square S x S frame. Without cropping, the whole native frame (398 x 224 for
SoccerNet) is resized to S x S (aspect ratio not kept), as at inference. A random resized crop is drawn in
*relative* coordinates of the frame (area fraction ``scale``, aspect ratio ``ratio`` of the relative
width to the relative height), so that scale 1 and ratio 1 give exactly the inference view.

Times are seconds at every interface; frame indices stay inside this module.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from comedian.data.frames import PackedFrames
from comedian.data.soccernet import HALVES, game_slug
from comedian.errors import InputError
from comedian.preprocess import JITTER_OPS

__all__ = [
    "HalfVideo", "list_halves", "frames_path", "sample_rng", "seed_worker",
    "subvideo_starts", "sample_windows", "EpochSampler", "AugmentSpec", "ClipAugment", "SubVideoPairs",
    "WindowClips", "FrameStore", "Span", "new_frames", "decode_size", "collate_samples", "first_sample",
    "DECODE_PLACES",
]

#: Streams of :func:`sample_rng`, so that the draws of different purposes never share a generator
#: (STREAM_MASK: the token masks the training steps draw, :func:`comedian.train.loop.sample_masks`).
STREAM_WINDOWS, STREAM_AUGMENT, STREAM_MASK, STREAM_ORDER = 1, 2, 3, 4

#: Side (pixels) the blur sigmas of :class:`AugmentSpec` refer to (the paper's 224-px frames).
REFERENCE_SIDE = 224
#: With random crops, frames are decoded at no more than this many times the model's side per dimension
#: before cropping (see :func:`decode_size`).
CROP_SOURCE_FACTOR = 4


# --------------------------------------------------------------------------------------------------
# Halves and their frame files


@dataclass(frozen=True)
class HalfVideo:
    """One half's packed frame file and what the samplers need to know of it.

    Attributes:
        game: ``<league>/<season>/<game>``.
        half: 1 or 2.
        path: the packed frame file ``<frames_dir>/<game_slug>/<half>.h5``.
        count: number of frames.
        fps: frames per second (frame i is at ``i / fps`` s).
    """

    game: str
    half: int
    path: Path
    count: int
    fps: float

    @property
    def duration_s(self) -> float:
        """Seconds covered by the frames: ``count / fps``."""
        return self.count / self.fps


def frames_path(frames_dir: str | Path, game: str, half: int) -> Path:
    """``<frames_dir>/<game_slug>/<half>.h5``, the packed frame file of a half."""
    return Path(frames_dir) / game_slug(game) / f"{half}.h5"


def list_halves(frames_dir: str | Path, games: Sequence[str], fps: float | None = None) -> list[HalfVideo]:
    """The halves of ``games`` in order (game, then half 1, 2), reading each frame file's header.

    Raises:
        InputError: a frame file is missing or unreadable, or its frame rate differs from ``fps``
            (when given) or from the other files'.
    """
    halves: list[HalfVideo] = []
    for game in games:
        for half in HALVES:
            path = frames_path(frames_dir, game, half)
            frames = PackedFrames(path)
            if fps is None:
                fps = frames.fps
            if abs(frames.fps - fps) > 1e-9:
                raise InputError(f"{path}: fps {frames.fps:g}, but the other frame files are at {fps:g} fps")
            halves.append(HalfVideo(game, half, path, frames.count, frames.fps))
    if not halves:
        raise InputError("no games to train on: the split list is empty")
    return halves


# --------------------------------------------------------------------------------------------------
# Seeds


def sample_rng(seed: int, stream: int, epoch: int, index: int) -> np.random.Generator:
    """The NumPy generator of one sample's draws: a function of (seed, stream, epoch, index) only."""
    return np.random.default_rng([int(seed), int(stream), int(epoch), int(index)])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from one 63-bit draw of ``rng``."""
    return torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python's and NumPy's global RNGs from the worker's torch seed.

    torch seeds each worker with ``base_seed + worker_id``, ``base_seed`` drawn from the DataLoader's
    generator (seeded by the training loop from the run's seed and rank), so these seeds are reproducible
    too. Sample content does not use them (see the module docstring); this guards third-party code that does.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


# --------------------------------------------------------------------------------------------------
# Sampling


def subvideo_starts(halves: Sequence[HalfVideo], frames: int = 2) -> np.ndarray:
    """Every non-overlapping sub-video of ``frames`` frames of every half: (N, 2) int64 (half index, start frame).

    Sub-video k of half h starts at frame ``k * frames`` (time ``k * frames / fps`` s, 1 s for 2 frames at
    2 fps); a last incomplete one is dropped.
    """
    rows = [np.stack([np.full(h.count // frames, i), np.arange(h.count // frames) * frames], axis=1)
            for i, h in enumerate(halves) if h.count >= frames]
    if not rows:
        raise InputError(f"no half has {frames} frames")
    return np.concatenate(rows).astype(np.int64)


WINDOW_SAMPLINGS: tuple[str, ...] = ("segments", "random", "uniform")


def _segment_starts(count: int, window_frames: int, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` start frames in a half of ``count`` frames, the authors' step-2 rule
    (eztorch ``RandomWindowSoccerNetClipSampler``): the half is cut into ``k`` equal segments of
    ``count / k`` frames and window i starts uniformly inside segment i so that it ends inside it too
    (``i * seg + (seg - W) * (1 - u)``, floored to a frame): no two windows overlap. When the half cannot
    hold ``k`` disjoint windows (``count / W < k``), the starts are instead spread evenly from 0 to the last
    possible start, as theirs are.
    """
    last = max(count - window_frames, 0)
    if count < k * window_frames:
        step = last / max(k - 1, 1)
        return [int(math.floor(i * step)) for i in range(k)]
    seg = count / k
    jitter = 1.0 - rng.random(k)  # in (0, 1], as the authors' 1 - rand
    return [min(int(math.floor(i * seg + (seg - window_frames) * u)), last) for i, u in enumerate(jitter)]


def _disjoint_starts(count: int, window_frames: int, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` start frames in a half of ``count`` frames, the authors' "uniform without overlap" rule.

    With k >= 2 the first window starts at frame 0 and the second ends at the half's end (so actions at
    the edges are seen every epoch), and the other starts are drawn from the frames at least half a
    window away from both edges. Each further start is drawn uniformly among the candidates that keep it
    at least a window away from every start drawn so far (edges excepted); when none is left (the half
    cannot hold that many disjoint windows), the remaining starts are drawn uniformly among all.
    """
    last = max(count - window_frames, 0)
    if k <= 1:
        return [int(rng.integers(0, last + 1)) for _ in range(k)]
    starts = [0, last]
    pool = np.arange(last + 1)
    pool = pool[(pool >= math.ceil(window_frames / 2)) & (pool <= last - window_frames // 2)]
    for _ in range(k - 2):
        if pool.size:
            start = int(pool[rng.integers(0, pool.size)])
            pool = pool[np.abs(pool - start) >= window_frames]
        else:
            start = int(rng.integers(0, last + 1))
        starts.append(start)
    return starts


def sample_windows(halves: Sequence[HalfVideo], per_game: int, window_frames: int, seed: int,
                   epoch: int, mode: str = "random") -> np.ndarray:
    """Draw an epoch's windows of ``window_frames`` frames: ``per_game`` per game. Deterministic given
    (seed, epoch).

    Modes:

    - ``segments`` (the authors' step-2 sampler): the game's windows are split evenly over its halves (the
      earlier halves take the remainder), and each half's k windows are one jittered window per equal
      segment of the half (:func:`_segment_starts`): they never overlap, and at 64-s windows and 38 per
      half about 90% of a 45-min half is seen every epoch.
    - ``random``: each window is one uniform draw among all of the game's candidate windows (every start
      frame ``s`` of each half with ``s + window_frames <= count``), so a longer half gets proportionally
      more; windows may overlap (about 40% of a half goes unseen per epoch at the paper's settings).
    - ``uniform`` (the authors' step-3 sampler): the game's windows are split evenly over its halves (the earlier halves take the
      remainder), and each half's are spread by :func:`_disjoint_starts`: both edges, then windows that
      do not overlap (step 3's "uniformly sampled" windows).

    A half shorter than the window has the single start 0 (the clip is then padded, see :meth:`FrameStore.frames_into`).

    Returns:
        (games * per_game, 2) int64: (index into ``halves``, start frame), grouped by game in ``halves``
        order.
    """
    if per_game < 1:
        raise ValueError(f"windows per game must be >= 1, got {per_game}")
    if mode not in WINDOW_SAMPLINGS:
        raise InputError(f"sampling: {mode!r} is not one of {list(WINDOW_SAMPLINGS)}")
    rng = sample_rng(seed, STREAM_WINDOWS, epoch, 0)
    by_game: dict[str, list[int]] = {}
    for i, h in enumerate(halves):
        by_game.setdefault(h.game, []).append(i)
    out = []
    for indices in by_game.values():
        if mode == "random":
            starts = np.array([max(halves[i].count - window_frames + 1, 1) for i in indices], dtype=np.int64)
            ends = np.cumsum(starts)
            flat = rng.integers(0, ends[-1], per_game)
            which = np.searchsorted(ends, flat, side="right")
            out.append(np.stack([np.asarray(indices)[which], flat - (ends - starts)[which]], axis=1))
        else:
            spread = _segment_starts if mode == "segments" else _disjoint_starts
            shares = [per_game // len(indices) + (j < per_game % len(indices)) for j in range(len(indices))]
            for i, k in zip(indices, shares):
                if k == 0:  # fewer windows than halves: the later halves get none
                    continue
                begin = spread(halves[i].count, window_frames, k, rng)
                out.append(np.stack([np.full(k, i), np.asarray(begin, dtype=np.int64)], axis=1))
    return np.concatenate(out).astype(np.int64)


class EpochSampler(Sampler):
    """Yields keys ``(epoch, index)`` of one rank's share of an epoch, like ``DistributedSampler``.

    Each epoch the indices ``0 .. n - 1`` are shuffled by a permutation drawn from (seed, epoch) (or kept in
    order), padded by wrapping to a multiple of ``world_size``, and rank r takes every ``world_size``-th
    index from r on. Hence the ranks' b-th batches of B / world_size keys together hold exactly the keys of
    the b-th batch of B of a single process. Call :meth:`set_epoch` before each epoch; ``skip`` there
    leaves out the rank's first keys of the epoch (those a mid-epoch checkpoint had already consumed).

    With ``runs`` (a function of the epoch returning run lengths that cut ``0 .. n - 1`` into consecutive
    runs, in index order, or None for no runs that epoch; :meth:`SubVideoPairs.runs`), the keys of a run stay
    together: the permutation is over the runs, and the ranks take the order in chunks of ``block`` keys (the
    local batch), chunk j going to rank ``j % world_size`` (the end of the epoch that makes no whole round of
    chunks is shared as without runs, every rank getting less than a batch of it), so that the ranks' b-th
    batches still hold exactly the keys of the single process's b-th batch while a run is cut only where a
    batch boundary falls.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 runs: Callable[[int], np.ndarray | None] | None = None, block: int = 1) -> None:
        if n < 1:
            raise ValueError("EpochSampler needs at least one sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.runs, self.block = runs, block
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size) - self.skip

    def _order(self, lengths: np.ndarray | None) -> np.ndarray:
        """The epoch's indices in order: shuffled (or not), run by run when there are runs."""
        rng = sample_rng(self.seed, STREAM_ORDER, self.epoch, 0)
        if lengths is None:
            return rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.sum() != self.n or (lengths < 1).any():
            raise ValueError(f"runs of lengths summing to {int(lengths.sum())} do not cut {self.n} samples")
        firsts = np.cumsum(lengths) - lengths
        which = rng.permutation(len(lengths)) if self.shuffle else np.arange(len(lengths))
        chosen = lengths[which]
        within = np.arange(self.n) - np.repeat(np.cumsum(chosen) - chosen, chosen)
        return np.repeat(firsts[which], chosen) + within

    def __iter__(self) -> Iterator[tuple[int, int]]:
        lengths = self.runs(self.epoch) if self.runs is not None else None
        order = self._order(lengths)
        total = math.ceil(self.n / self.world_size) * self.world_size
        order = np.resize(order, total)  # wraps around to pad
        if lengths is None:
            mine = order[self.rank :: self.world_size]
        else:  # whole rounds of one block per rank, then the rest (less than a block each) as without runs
            head = total // (self.block * self.world_size) * self.block * self.world_size
            mine = np.concatenate([order[:head][(np.arange(head) // self.block) % self.world_size == self.rank],
                                   order[head + self.rank :: self.world_size]])
        for index in mine[self.skip :]:
            yield self.epoch, int(index)


# --------------------------------------------------------------------------------------------------
# Augmentation


@dataclass(frozen=True)
class AugmentSpec:
    """One distribution of clip augmentations (the defaults change nothing).

    Attributes:
        crop_scale: (min, max) area fraction of the random resized crop; (1, 1) = no crop.
        crop_ratio: (min, max) aspect ratio of the crop, relative width over relative height, drawn
            log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter: colour jitter strengths (brightness, contrast, saturation, hue), as torchvision's
            ``ColorJitter``: factors uniform in [1 - s, 1 + s] (hue: shift in [-h, h]), in random order.
        jitter_p: probability of applying the colour jitter.
        grayscale_p: probability of converting to grey (3 equal channels).
        blur_p: probability of a Gaussian blur.
        blur_sigma: (min, max) blur sigma in pixels of a :data:`REFERENCE_SIDE`-pixel frame, scaled to the
            output side; the kernel spans +-3 sigma.
        solarize_p: probability of solarising (values >= 128 of 255 inverted).
    """

    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.0
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, **overrides: Any) -> AugmentSpec:
        """Build from a config mapping (keys = field names; lists become tuples), with overrides."""
        values = {**dict(config or {}), **overrides}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"augment: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @property
    def crops(self) -> bool:
        return tuple(self.crop_scale) != (1.0, 1.0)


@dataclass
class ClipParams:
    """The augmentation drawn for one clip, applied identically to every frame of it."""

    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # top, left, height, width (fractions)
    flip: bool = False
    jitter: list[tuple[str, float]] = field(default_factory=list)  # (operation, factor) in order
    grayscale: bool = False
    blur_sigma: float = 0.0  # pixels at the output side; 0 = none
    solarize: bool = False

    @staticmethod
    def stack(params: Sequence[ClipParams]) -> dict[str, torch.Tensor]:
        """Clips' parameters as one batch of tensors (:data:`comedian.preprocess.PARAM_KEYS`, leading dimension
        ``len(params)``), for the training step to apply (:func:`comedian.preprocess.augment`)."""
        ops = np.full((len(params), len(JITTER_OPS)), -1, dtype=np.int64)
        factors = np.zeros((len(params), len(JITTER_OPS)), dtype=np.float64)
        for row, p in enumerate(params):
            for slot, (op, factor) in enumerate(p.jitter):
                ops[row, slot], factors[row, slot] = JITTER_OPS.index(op), factor
        return {
            "crop": torch.tensor([p.crop for p in params], dtype=torch.float64).view(len(params), 4),
            "flip": torch.tensor([p.flip for p in params], dtype=torch.bool),
            "jitter_op": torch.from_numpy(ops), "jitter_factor": torch.from_numpy(factors),
            "grayscale": torch.tensor([p.grayscale for p in params], dtype=torch.bool),
            "blur_sigma": torch.tensor([p.blur_sigma for p in params], dtype=torch.float64),
            "solarize": torch.tensor([p.solarize for p in params], dtype=torch.bool),
        }


class ClipAugment:
    """Clip-consistent augmentation: ONE draw of parameters per clip, applied to all its frames.

    ``draw(rng)`` draws a clip's :class:`ClipParams`; the training step applies them on its device to the
    whole batch (:func:`comedian.preprocess.augment`): crop + resize to ``size x size``, flip, colour
    jitter, grayscale, blur, solarise (as the authors' pipelines), then normalisation.
    """

    def __init__(self, spec: AugmentSpec, size: int) -> None:
        self.spec = spec
        self.size = size
        # jitter: (operation, lowest, highest factor) in the drawing order; strength 0 = identity, skipped
        # (hue costs an RGB <-> HSV round trip)
        b, c, sat, hue = spec.jitter
        self._jitter = (("brightness", max(0.0, 1 - b), 1 + b), ("contrast", max(0.0, 1 - c), 1 + c),
                        ("saturation", max(0.0, 1 - sat), 1 + sat), ("hue", -hue, hue))
        self._jitter_kept = tuple(strength > 0 for strength in spec.jitter)
        self._log_ratio = (math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]))

    def draw(self, rng: np.random.Generator) -> ClipParams:
        """Draw one clip's parameters from ``rng`` (a fixed number of draws per call and spec)."""
        s = self.spec
        p = ClipParams()
        if s.crops:
            p.crop = self._draw_crop(rng)
        p.flip = bool(rng.random() < s.flip_p)
        if rng.random() < s.jitter_p and any(s.jitter):
            factors = [(op, _uniform(rng, lo, hi)) for op, lo, hi in self._jitter]
            p.jitter = [factors[k] for k in rng.permutation(4) if self._jitter_kept[k]]
        p.grayscale = bool(rng.random() < s.grayscale_p)
        if rng.random() < s.blur_p:
            p.blur_sigma = _uniform(rng, *s.blur_sigma) * self.size / REFERENCE_SIDE
        p.solarize = bool(rng.random() < s.solarize_p)
        return p

    def _draw_crop(self, rng: np.random.Generator) -> tuple[float, float, float, float]:
        """A crop (top, left, height, width) in fractions of the frame, torchvision's RandomResizedCrop rule
        in relative coordinates: 10 tries of (scale, log-ratio), else the whole frame."""
        lo, hi = self.spec.crop_scale
        for _ in range(10):
            area = _uniform(rng, lo, hi)
            ratio = math.exp(_uniform(rng, *self._log_ratio))
            w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
            if w <= 1.0 and h <= 1.0:
                return _uniform(rng, 0.0, 1 - h), _uniform(rng, 0.0, 1 - w), h, w
        return 0.0, 0.0, 1.0, 1.0


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """``rng.uniform(low, high)``, the same number (NumPy computes ``low + (high - low) * rng.random()``) at
    half the cost of the call."""
    return low + (high - low) * rng.random()


# --------------------------------------------------------------------------------------------------
# Reading


def decode_size(native: tuple[int, int], size: int, crops: bool, resize: bool = True) -> tuple[int, int] | None:
    """The (height, width) to decode frames at before augmentation; None = native.

    Without crops and with ``resize``, the model's ``size x size`` directly (the decoder resizes: the choice
    when the training device is the CPU, which would resize anyway, and whose frame cache then holds small
    frames). Otherwise at most :data:`CROP_SOURCE_FACTOR` x ``size`` per dimension, the training device
    resizing (on a GPU the resize is nearly free, while in a worker it costs some 70% of the JPEG decode
    of a 398 x 224 frame, ``bench/bench_loader.py``): crops are drawn in relative coordinates, so a smaller
    source only costs resolution where a crop is smaller than 1 / CROP_SOURCE_FACTOR of the frame side; for
    SoccerNet (398 x 224 frames, 224-px model) this is the native size.
    """
    if not crops and resize:
        return (size, size)
    side = CROP_SOURCE_FACTOR * size
    height, width = native
    if height <= side and width <= side:
        return None
    return (min(height, side), min(width, side))


#: Where a clip's JPEGs are decoded: in the loader's workers (``worker``), or on the training device
#: (``device``: the workers only read the bytes; :func:`comedian.preprocess.decode_batch`).
DECODE_PLACES: tuple[str, ...] = ("worker", "device")


#: A stretch of clips read at once: (half index, first frame, frames per clip, clips); clip k holds frames
#: ``first + k * frames ..`` of the half (frames past its end repeat its last frame).
Span = tuple[int, int, int, int]


def new_frames(shape: Sequence[int]) -> torch.Tensor:
    """An uninitialised uint8 tensor for a batch's frames: in shared memory inside a DataLoader worker (where
    ``default_collate`` puts a worker's batches, so that the batch goes to the training process without
    another copy), in ordinary memory elsewhere."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(tuple(shape), dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(tuple(shape))


class FrameStore:
    """Frames of the halves: one :class:`PackedFrames` per half, opened on first use in the process that
    reads, and an optional in-memory cache of decoded frames.

    ``read(spans, size)`` is what a batch holds of its frames, for clips of T frames each:

    - ``decode="worker"``: ``{"clip": uint8 (B, T, 3, H, W)}`` decoded here, a channels-first VIEW of one
      (B, T, H, W, 3) array (the decoder's own layout, so that each frame is decoded straight into its slot
      with one plain copy, :func:`~comedian.data.frames.decode_into`; the training device's augmentation makes
      it contiguous, :func:`comedian.preprocess.augment`), allocated by :func:`new_frames`;
    - ``decode="device"``: ``{"jpeg": uint8 (bytes,), "jpeg_lengths": int64 (B, T)}``, the frames' JPEGs back
      to back, clip by clip, for the training device to decode.

    The cache keeps a copy of every frame it decodes, at the size it was asked for, until ``cache_mb``
    megabytes are used (then it only serves what it holds): on a data set that fits (the demo), every epoch
    after the first skips JPEG decoding; on a large one it saves a share. Each DataLoader worker has its own.

    Args:
        halves: the halves, indexed like the samplers' half indices.
        cache_mb: cache budget in MB per process; 0 = no cache (JPEG bytes are never cached).
        decode: one of :data:`DECODE_PLACES`.
    """

    def __init__(self, halves: Sequence[HalfVideo], cache_mb: float = 0.0, decode: str = "worker") -> None:
        if decode not in DECODE_PLACES:
            raise InputError(f"decode: {decode!r} is not one of {list(DECODE_PLACES)}")
        self.halves = list(halves)
        self.cache_bytes = int(cache_mb * 2**20)
        self.decode = decode
        self._open: dict[int, PackedFrames] = {}
        self._cache: dict[tuple[int, int, tuple[int, int] | None], torch.Tensor] = {}
        self._used = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}, "_cache": {}, "_used": 0}

    def file(self, index: int) -> PackedFrames:
        if index not in self._open:
            self._open[index] = PackedFrames(self.halves[index].path)
        return self._open[index]

    def read(self, spans: Sequence[Span], size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """The frames of the clips of ``spans``, in order, as a batch holds them (see the class docstring);
        ``size`` = the decoding size (``decode="worker"`` only; None = native). Each span is ONE contiguous
        read of its frames.

        Raises:
            InputError: the spans' halves have frames of different native sizes (and ``size`` is None).
        """
        count = int(spans[0][2])
        if any(int(s[2]) != count for s in spans):
            raise ValueError(f"clips of one batch differ in length: {sorted({int(s[2]) for s in spans})} frames")
        clips = sum(int(s[3]) for s in spans)
        if self.decode == "device":
            return self._read_jpegs(spans, count)
        height, width = size if size is not None else self.file(int(spans[0][0])).size
        if size is None:
            for index, *_ in spans:
                if self.file(int(index)).size != (height, width):
                    raise InputError(f"{self.halves[int(index)].path}: frames of {self.file(int(index)).size} "
                                     f"pixels, other frames of the batch have {(height, width)}")
        out = new_frames((clips, count, height, width, 3))
        row = 0
        for index, start, _, n in spans:
            frames = out[row : row + n].view(n * count, height, width, 3)
            self.frames_into(int(index), int(start), n * count, frames, size)
            row += n
        return {"clip": out.movedim(-1, -3)}

    def _read_jpegs(self, spans: Sequence[Span], count: int) -> dict[str, torch.Tensor]:
        jpegs: list[np.ndarray] = []
        for index, start, _, n in spans:
            frames, total = self.file(int(index)), count * int(n)
            available = min(total, frames.count - int(start))
            run = frames.read_jpegs(int(start), available)
            jpegs += run + [run[-1]] * (total - available)
        lengths = torch.tensor([j.size for j in jpegs], dtype=torch.int64).view(-1, count)
        return {"jpeg": torch.from_numpy(np.concatenate(jpegs)), "jpeg_lengths": lengths}

    def frames_into(self, index: int, start: int, count: int, out: torch.Tensor,
                    size: tuple[int, int] | None = None) -> None:
        """Frames ``start .. start + count - 1`` of half ``index`` decoded at ``size`` (None = native) into ``out``,
        uint8 (count, H, W, 3); frames past the end of the half repeat its last frame."""
        frames = self.file(index)
        stop = min(start + count, frames.count)
        keys = [(index, f, size) for f in range(start, stop)]
        if self.cache_bytes and all(k in self._cache for k in keys):
            for slot, key in zip(out, keys):
                slot.copy_(self._cache[key])
        else:
            frames.read_into(start, stop - start, out[: stop - start], size)
            for slot, key in zip(out, keys):
                if self.cache_bytes and key not in self._cache and self._used + slot.nbytes <= self.cache_bytes:
                    self._cache[key] = slot.clone()
                    self._used += slot.nbytes
        out[stop - start :] = out[stop - start - 1]


def collate_samples(samples: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> dict[str, Any]:
    """The DataLoader's ``collate_fn``.

    The training datasets build a whole batch at once (their ``__getitems__``, which the DataLoader calls
    with the batch's keys): such a batch (a mapping) is returned as it is. A list of samples (each
    ``dataset[key]``: the batch of that one key without its leading dimension) is collated into the batch
    that ``__getitems__`` gives for the same keys: ``default_collate``, except the clips' JPEG bytes (``jpeg``,
    of different lengths), concatenated in sample order (``jpeg_lengths`` (B, T) says where each lies)."""
    if isinstance(samples, Mapping):
        return dict(samples)
    batch = default_collate([{k: v for k, v in s.items() if k != "jpeg"} for s in samples])
    if "jpeg" in samples[0]:
        batch["jpeg"] = torch.cat([s["jpeg"] for s in samples])
    return batch


def first_sample(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A batch of one key as that key's sample: every entry without its leading dimension (``jpeg``, which has
    none, as it is)."""
    return {k: first_sample(v) if isinstance(v, Mapping) else v if k == "jpeg" else v[0] for k, v in batch.items()}


# --------------------------------------------------------------------------------------------------
# Datasets (keys come from EpochSampler)


class SubVideoPairs(Dataset):
    """Step 1's samples: every 1-s sub-video of the halves (or ``per_half`` of each half's, drawn afresh
    every epoch from (seed, epoch): :meth:`subvideos`), as two augmented views.

    ``dataset.__getitems__(keys)`` -> the batch: the sub-videos' frames (:meth:`FrameStore.read`: ``clip``
    uint8 (B, frames, 3, H, W) at :func:`decode_size` (``worker_resize``), or their JPEGs) and the two views'
    augmentation parameters ``augment_view1``, ``augment_view2`` (:meth:`ClipParams.stack`; one draw per view
    and key, the same for both frames of the view), which the training step applies
    (:func:`comedian.preprocess.augment`); ``dataset[key]`` is the batch of one key without its leading
    dimension.

    Runs. A 2-frame sample costs a loader about as much in per-sample work (an HDF5 read, a decoding call,
    Python) as in JPEG decoding, so samples are read in runs: :meth:`__getitems__` (what the DataLoader calls
    with a batch's keys) reads each stretch of keys that are consecutive sub-videos of one half with ONE
    contiguous read (a span of :meth:`FrameStore.read`); and with ``per_run`` > 1, :meth:`runs`
    cuts the epoch into runs of up to ``per_run`` consecutive sub-videos of a half, which
    :class:`EpochSampler` keeps together in a batch. Each sample's frames and augmentation stay those of its
    own key (``dataset[key]`` returns the same as reading it in a run), so only which samples share a batch
    changes; a run's sub-videos are neighbouring seconds, never negatives of one another in the MoCo loss
    (its negatives are the queue's earlier keys).
    """

    def __init__(self, halves: Sequence[HalfVideo], augments: tuple[ClipAugment, ClipAugment], seed: int,
                 frames: int = 2, cache_mb: float = 0.0, per_half: int | None = None, decode: str = "worker",
                 worker_resize: bool = True, per_run: int = 1) -> None:
        if per_run < 1:
            raise InputError(f"subvideos_per_run: must be >= 1, got {per_run}")
        self.files = FrameStore(halves, cache_mb, decode)
        self.worker_resize = worker_resize
        self.starts = subvideo_starts(halves, frames)
        self.augments = augments
        self.seed, self.frames, self.per_run = seed, frames, int(per_run)
        counts = np.bincount(self.starts[:, 0], minlength=len(halves))
        self.per_half = None if per_half is None or per_half >= counts.max() else int(per_half)
        self._epoch_starts: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.starts) if self.per_half is None else len(self.subvideos(0))

    def subvideos(self, epoch: int) -> np.ndarray:
        """The epoch's sub-videos, (N, 2) (half index, start frame): all of them, or ``per_half`` of each
        half's drawn without replacement (a half with fewer keeps all of its own), in half order."""
        if self.per_half is None:
            return self.starts
        if self._epoch_starts is None or self._epoch_starts[0] != epoch:
            rng = sample_rng(self.seed, STREAM_WINDOWS, epoch, 0)
            rows = []
            for h in np.unique(self.starts[:, 0]):
                own = self.starts[self.starts[:, 0] == h]
                rows.append(own[np.sort(rng.choice(len(own), min(self.per_half, len(own)), replace=False))])
            self._epoch_starts = (epoch, np.concatenate(rows))
        return self._epoch_starts[1]

    def _follows(self, subvideos: np.ndarray, a: Any, b: Any) -> Any:
        """Whether sub-video(s) ``b`` come right after ``a`` in the same half (index arrays or ints)."""
        return (subvideos[b, 0] == subvideos[a, 0]) & (subvideos[b, 1] == subvideos[a, 1] + self.frames)

    def runs(self, epoch: int) -> np.ndarray | None:
        """The epoch's runs for :class:`EpochSampler`: lengths (int64) cutting the indices ``0 .. len - 1``
        into stretches of at most ``per_run`` consecutive sub-videos of one half; None when ``per_run`` is 1
        (every sample on its own). With ``per_half``, only sub-videos drawn next to each other form runs."""
        if self.per_run == 1:
            return None
        subvideos = self.subvideos(epoch)
        new = np.ones(len(subvideos), dtype=bool)
        new[1:] = ~self._follows(subvideos, np.arange(len(subvideos) - 1), np.arange(1, len(subvideos)))
        first = np.flatnonzero(new)
        position = np.arange(len(subvideos)) - first[np.cumsum(new) - 1]  # within its stretch
        first = np.flatnonzero(new | (position % self.per_run == 0))
        return np.diff(np.append(first, len(subvideos)))

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return first_sample(self.__getitems__([key]))

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """The batch of ``keys``, in order (each key's sample is ``dataset[key]``); keys that follow each other in
        the list and are consecutive sub-videos of one half (same epoch) are read as one run."""
        crops = self.augments[0].spec.crops or self.augments[1].spec.crops
        spans: list[Span] = []
        views: tuple[list[ClipParams], list[ClipParams]] = ([], [])
        k = 0
        while k < len(keys):
            epoch = int(keys[k][0])
            subvideos = self.subvideos(epoch)
            rows = [int(keys[k][1])]
            while (k + len(rows) < len(keys) and int(keys[k + len(rows)][0]) == epoch
                   and self._follows(subvideos, rows[-1], int(keys[k + len(rows)][1]))):
                rows.append(int(keys[k + len(rows)][1]))
            half, start = (int(v) for v in subvideos[rows[0]])
            spans.append((half, start, self.frames, len(rows)))
            for index in rows:
                rng = sample_rng(self.seed, STREAM_AUGMENT, epoch, index)
                views[0].append(self.augments[0].draw(rng))
                views[1].append(self.augments[1].draw(rng))
            k += len(rows)
        size = decode_size(self.files.file(spans[0][0]).size, self.augments[0].size, crops, self.worker_resize)
        batch: dict[str, Any] = self.files.read(spans, size)
        batch["augment_view1"], batch["augment_view2"] = ClipParams.stack(views[0]), ClipParams.stack(views[1])
        return batch


class WindowClips(Dataset):
    """Steps 2-3's samples: windows of ``window_frames`` frames, ``per_game`` per game, redrawn every epoch
    (``sampling``: see :func:`sample_windows`).

    ``dataset.__getitems__(keys)`` -> the batch, a dict with the windows' frames (:meth:`FrameStore.read`:
    ``clip`` uint8 (B, T, 3, H, W) at :func:`decode_size` (``worker_resize``), or their JPEGs), ``augment``
    (their augmentation parameters, :meth:`ClipParams.stack`, which the training step applies,
    :func:`comedian.preprocess.augment`), ``key`` int64 (B, 2) (epoch, index: the training step seeds the
    sample's token mask with it), ``start_s`` (float64 (B,), time of the first frame within the half) and
    ``half_index`` (int64 (B,), into ``halves``), plus whatever ``extras(half, start_s, window_frames)``
    returns (e.g. per-token targets or teacher rows), stacked as tensors; ``dataset[key]`` is the batch of
    one key without its leading dimension.
    """

    def __init__(
        self,
        halves: Sequence[HalfVideo],
        window_frames: int,
        per_game: int,
        augment: ClipAugment,
        seed: int,
        frames_per_token: int = 2,
        sampling: str = "random",
        extras: Callable[[HalfVideo, float, int], Mapping[str, np.ndarray]] | None = None,
        cache_mb: float = 0.0,
        decode: str = "worker",
        worker_resize: bool = True,
    ) -> None:
        if window_frames % frames_per_token:
            raise InputError(f"window of {window_frames} frames is not a multiple of {frames_per_token} frames "
                             "per token")
        self.halves = list(halves)
        self.files = FrameStore(halves, cache_mb, decode)
        self.worker_resize = worker_resize
        self.window_frames, self.per_game = window_frames, per_game
        self.augment, self.seed = augment, seed
        self.tokens = window_frames // frames_per_token
        self.extras = extras
        self.sampling = sampling
        self.n_games = len({h.game for h in self.halves})
        self._epoch_windows: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.n_games * self.per_game

    def windows(self, epoch: int) -> np.ndarray:
        """The epoch's windows, (len, 2) int64 (half index, start frame): :func:`sample_windows`."""
        if self._epoch_windows is None or self._epoch_windows[0] != epoch:
            self._epoch_windows = (epoch, sample_windows(self.halves, self.per_game, self.window_frames,
                                                         self.seed, epoch, self.sampling))
        return self._epoch_windows[1]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        return first_sample(self.__getitems__([key]))

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """The batch of ``keys``, in order (each key's sample is ``dataset[key]``)."""
        keys = [(int(epoch), int(index)) for epoch, index in keys]
        windows = [tuple(int(v) for v in self.windows(epoch)[index]) for epoch, index in keys]
        size = decode_size(self.files.file(windows[0][0]).size, self.augment.size, self.augment.spec.crops,
                           self.worker_resize)
        batch: dict[str, Any] = self.files.read([(h, start, self.window_frames, 1) for h, start in windows], size)
        batch["augment"] = ClipParams.stack([self.augment.draw(sample_rng(self.seed, STREAM_AUGMENT, epoch, index))
                                             for epoch, index in keys])
        batch["key"] = torch.tensor(keys, dtype=torch.int64)
        starts_s = [start / self.halves[h].fps for h, start in windows]
        batch["start_s"] = torch.tensor(starts_s, dtype=torch.float64)
        batch["half_index"] = torch.tensor([h for h, _ in windows], dtype=torch.int64)
        if self.extras is not None:
            extras = [self.extras(self.halves[h], start_s, self.window_frames)
                      for (h, _), start_s in zip(windows, starts_s)]
            for name in extras[0]:
                batch[name] = torch.from_numpy(np.stack([np.asarray(e[name]) for e in extras]))
        return batch
