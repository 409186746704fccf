"""Training clips: window sampling, keyed determinism, DDP sharding, clip-consistent augmentation, reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from comedian.data.clips import (
    AugmentSpec,
    ClipAugment,
    ClipParams,
    EpochSampler,
    FrameStore,
    HalfVideo,
    SubVideoPairs,
    WindowClips,
    collate_samples,
    decode_size,
    list_halves,
    sample_windows,
    subvideo_starts,
)
from comedian.data.soccernet import game_slug
from comedian.data.targets import token_targets
from comedian.errors import InputError
from comedian.preprocess import PARAM_KEYS, augment, batch_frames
from comedian.train.finetune import SpotTargets
from packed_frames import write_packed

GAMES = ["lg/2020-2021/2020-09-01 - 20-00 A 1 - 0 B", "lg/2020-2021/2020-09-02 - 20-00 C 2 - 2 D"]
COUNTS = {(0, 1): 40, (0, 2): 33, (1, 1): 36, (1, 2): 12}  # frames per half; the last is shorter than a window


def index_frames(count: int, height: int = 24, width: int = 40) -> np.ndarray:
    """Frames whose flat grey level is 6 x index (survives JPEG and resizing within a few levels)."""
    return np.repeat((6 * np.arange(count, dtype=np.uint8))[:, None, None, None], height * width * 3).reshape(
        count, height, width, 3)


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    for (g, h), n in COUNTS.items():
        write_packed(root / game_slug(GAMES[g]) / f"{h}.h5", index_frames(n))
    return root


@pytest.fixture(scope="module")
def halves(frames_dir) -> list[HalfVideo]:
    return list_halves(frames_dir, GAMES)


def _level(clip: np.ndarray | torch.Tensor) -> np.ndarray:
    """The frame index each frame of a uint8 (T, H, W, 3) clip shows."""
    return np.round(np.asarray(clip, dtype=np.float64).mean(axis=(1, 2, 3)) / 6).astype(int)


# --------------------------------------------------------------------------------------------------
# Halves and reading


def test_list_halves_reads_headers_and_names_missing_files(frames_dir, halves, tmp_path):
    assert [(h.game, h.half, h.count) for h in halves] == [(GAMES[g], s, n) for (g, s), n in COUNTS.items()]
    assert halves[0].duration_s == pytest.approx(20.0)
    with pytest.raises(InputError, match="not found"):
        list_halves(tmp_path, GAMES[:1])


@pytest.mark.parametrize("cache_mb", [0, 1])
def test_frame_store_reads_ranges_and_pads_short_halves(halves, cache_mb):
    store = FrameStore(halves, cache_mb)
    for _ in range(2):  # the second pass is served from the cache when there is one
        assert _level(store.read([(0, 5, 4, 1)])["clip"][0]).tolist() == [5, 6, 7, 8]
        short = store.read([(3, 4, 16, 1)], (8, 8))["clip"][0]
        assert short.shape == (16, 3, 8, 8) and _level(short).tolist() == list(range(4, 12)) + [11] * 8
        run = store.read([(0, 5, 2, 3), (1, 30, 2, 2)])["clip"]  # 3 clips of 2 frames, then 2 (half of 33 frames)
        assert run.shape == (5, 2, 3, 24, 40)
        assert _level(run.flatten(0, 1)).tolist() == [5, 6, 7, 8, 9, 10, 30, 31, 32, 32]
    assert bool(store._cache) == bool(cache_mb)


def test_decode_size_keeps_enough_pixels_for_crops():
    assert decode_size((224, 398), 64, crops=False) == (64, 64)
    assert decode_size((224, 398), 224, crops=False, resize=False) is None  # the GPU resizes
    assert decode_size((224, 398), 32, crops=False, resize=False) == (128, 128)
    assert decode_size((224, 398), 224, crops=True) is None  # SoccerNet: native frames
    assert decode_size((224, 398), 32, crops=True) == (128, 128)
    assert decode_size((224, 398), 64, crops=True) == (224, 256)


def test_subvideos_are_every_second_of_every_half(halves):
    starts = subvideo_starts(halves, 2)
    assert len(starts) == sum(n // 2 for n in COUNTS.values())
    first = starts[starts[:, 0] == 0, 1]
    assert first.tolist() == list(range(0, 40, 2))


# --------------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("mode", ["segments", "random", "uniform"])
def test_windows_are_deterministic_given_seed_and_epoch(halves, mode):
    a = sample_windows(halves, 6, 16, seed=3, epoch=2, mode=mode)
    assert np.array_equal(a, sample_windows(halves, 6, 16, seed=3, epoch=2, mode=mode))
    if mode != "segments":  # these halves are too short for 3 disjoint windows: segments spreads them evenly
        assert not np.array_equal(a, sample_windows(halves, 6, 16, seed=3, epoch=3, mode=mode))
        assert not np.array_equal(a, sample_windows(halves, 6, 16, seed=4, epoch=2, mode=mode))
    assert a.shape == (12, 2)
    for half, start in a:  # windows lie inside their half (start 0 for a half shorter than the window)
        assert 0 <= start <= max(halves[half].count - 16, 0)
    games = [halves[h].game for h in a[:, 0]]
    assert games == [GAMES[0]] * 6 + [GAMES[1]] * 6


def test_uniform_windows_take_both_edges_and_do_not_overlap():
    half = [HalfVideo("g", 1, Path("x"), 400, 2.0)]
    for epoch in range(5):
        starts = np.sort(sample_windows(half, 5, 64, seed=0, epoch=epoch, mode="uniform")[:, 1])
        assert starts[0] == 0 and starts[-1] == 400 - 64
        assert np.all(np.diff(starts[1:-1]) >= 64)  # the inner windows are disjoint
        assert np.all((starts[1:-1] >= 32) & (starts[1:-1] <= 400 - 64 - 32))  # half a window from the edges


def test_uniform_windows_overlap_only_when_they_must():
    half = [HalfVideo("g", 1, Path("x"), 100, 2.0)]
    starts = sample_windows(half, 10, 64, seed=0, epoch=0, mode="uniform")[:, 1]
    assert len(starts) == 10 and starts.min() >= 0 and starts.max() <= 36


def test_segment_windows_are_one_per_segment_jittered_inside_it():
    # 400 frames, 4 windows of 64: segments of 100 frames, window i starts in [100 i, 100 i + 36].
    half = [HalfVideo("g", 1, Path("x"), 400, 2.0)]
    seen = []
    for epoch in range(30):
        starts = sample_windows(half, 4, 64, seed=0, epoch=epoch, mode="segments")[:, 1]
        assert np.all((starts >= [0, 100, 200, 300]) & (starts <= [36, 136, 236, 336]))
        seen.append(starts)
    seen = np.array(seen)
    assert (seen.min(axis=0) <= [6, 106, 206, 306]).all() and (seen.max(axis=0) >= [30, 130, 230, 330]).all()


def test_segment_windows_cover_a_half_without_overlap_at_the_paper_settings():
    # The authors' step 2 at 64-s windows: 76 windows per game = 38 per 45-min half (5,400 frames at 2 fps).
    halves = [HalfVideo("g", 1, Path("x"), 5400, 2.0), HalfVideo("g", 2, Path("y"), 5520, 2.0)]
    for epoch in range(5):
        windows = sample_windows(halves, 76, 128, seed=1, epoch=epoch, mode="segments")
        for h, half in enumerate(halves):
            starts = np.sort(windows[windows[:, 0] == h, 1])
            assert len(starts) == 38 and starts.min() >= 0 and starts.max() <= half.count - 128
            assert np.all(np.diff(starts) >= 128)  # no two windows overlap
            covered = np.zeros(half.count, dtype=bool)
            for s in starts:
                covered[s:s + 128] = True
            assert covered.mean() >= 0.85  # 38 x 128 / 5400 = 90% of the half, every epoch


def test_segment_windows_are_spread_evenly_when_they_must_overlap():
    half = [HalfVideo("g", 1, Path("x"), 100, 2.0)]
    starts = sample_windows(half, 4, 64, seed=0, epoch=0, mode="segments")[:, 1]
    assert starts.tolist() == [0, 12, 24, 36]  # 0 .. 100 - 64 in 3 equal steps


@pytest.mark.parametrize("mode", ["segments", "uniform"])
def test_fewer_windows_than_halves_leave_the_later_halves_without(mode):
    halves = [HalfVideo("g", 1, Path("x"), 300, 2.0), HalfVideo("g", 2, Path("y"), 300, 2.0)]
    windows = sample_windows(halves, 1, 64, seed=0, epoch=0, mode=mode)
    assert windows.shape == (1, 2) and windows[0, 0] == 0 and 0 <= windows[0, 1] <= 300 - 64


def test_random_windows_cover_the_timeline_uniformly():
    halves = [HalfVideo("g", 1, Path("x"), 300, 2.0), HalfVideo("g", 2, Path("y"), 100, 2.0)]
    w = np.concatenate([sample_windows(halves, 200, 20, seed=0, epoch=e) for e in range(20)])
    share_first = np.mean(w[:, 0] == 0)
    assert share_first == pytest.approx(281 / (281 + 81), abs=0.03)  # proportional to the valid starts


def test_epoch_sampler_is_deterministic_and_shards_like_one_process():
    single = EpochSampler(12, seed=5)
    single.set_epoch(4)
    keys = list(single)
    assert keys == list(single) and sorted(i for _, i in keys) == list(range(12))
    assert all(e == 4 for e, _ in keys)
    single.set_epoch(5)
    assert [i for _, i in single] != [i for _, i in keys]
    ranks = [EpochSampler(12, seed=5, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(4)
    shards = [list(r) for r in ranks]
    # batch b of 2 per rank holds the keys of batch b of 4 of the single process
    for b in range(3):
        together = sorted(shards[0][2 * b : 2 * b + 2] + shards[1][2 * b : 2 * b + 2])
        assert together == sorted(keys[4 * b : 4 * b + 4])


def test_epoch_sampler_pads_to_a_multiple_of_the_world_size():
    ranks = [EpochSampler(5, seed=0, rank=r, world_size=2) for r in range(2)]
    shards = [list(r) for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 3
    assert {i for s in shards for _, i in s} == set(range(5))


def _run_lengths(epoch: int) -> np.ndarray:
    return np.array([3, 1, 4, 2, 2] if epoch % 2 else [4, 4, 2, 2])  # 12 indices either way


def test_epoch_sampler_keeps_runs_together_and_shards_like_one_process():
    single = EpochSampler(12, seed=5, runs=_run_lengths, block=4)
    for epoch in (2, 3):
        single.set_epoch(epoch)
        order = [i for _, i in single]
        assert order == [i for _, i in single] and sorted(order) == list(range(12))
        lengths = _run_lengths(epoch)
        firsts = np.cumsum(lengths) - lengths
        for first, n in zip(firsts, lengths):  # each run's indices appear consecutive, in order
            at = order.index(int(first))
            assert order[at : at + n] == list(range(first, first + n))
    single.set_epoch(2)
    keys = list(single)
    assert [i for _, i in single] != [i for _, i in EpochSampler(12, seed=6, runs=_run_lengths, block=4)]
    ranks = [EpochSampler(12, seed=5, rank=r, world_size=2, runs=_run_lengths, block=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    shards = [list(r) for r in ranks]
    for b in range(3):  # batch b of 2 per rank: the keys of batch b of 4 of the single process, in order
        assert shards[0][2 * b : 2 * b + 2] + shards[1][2 * b : 2 * b + 2] == keys[4 * b : 4 * b + 4]
    ranks[1].set_epoch(2, skip=2)
    assert list(ranks[1]) == shards[1][2:]  # resumed mid-epoch: the rest of the same shard
    padded = [EpochSampler(5, seed=0, rank=r, world_size=2, runs=lambda e: np.array([2, 3]), block=2)
              for r in range(2)]
    assert [len(list(r)) for r in padded] == [3, 3] and {i for r in padded for _, i in r} == set(range(5))
    with pytest.raises(ValueError, match="do not cut"):
        list(EpochSampler(5, seed=0, runs=lambda e: np.array([2, 2])))


def test_without_runs_the_sampler_shuffles_as_before():
    plain, none = EpochSampler(12, seed=5, rank=1, world_size=2), EpochSampler(12, seed=5, rank=1, world_size=2,
                                                                               runs=lambda e: None, block=3)
    for s in (plain, none):
        s.set_epoch(4)
    assert list(plain) == list(none)


# --------------------------------------------------------------------------------------------------
# Augmentation


def _strong(**overrides) -> AugmentSpec:
    values = dict(crop_scale=(0.3, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=1.0, grayscale_p=0.3,
                  blur_p=0.5, solarize_p=0.5)
    return AugmentSpec(**{**values, **overrides})


def _augmented(clip: np.ndarray | torch.Tensor, params: ClipParams, size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (T, size, size, 3) augmented on the CPU as the training step does."""
    frames = torch.as_tensor(clip).movedim(-1, -3)[None]
    return augment(frames, ClipParams.stack([params]), size)[0].movedim(-3, -1).to(torch.uint8)


def test_augmentation_is_clip_consistent():
    """The same draw for every frame: augmenting a clip = augmenting each frame alone with its parameters."""
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, size=(6, 24, 40, 3), dtype=np.uint8)
    spec = ClipAugment(_strong(), 16)
    for k in range(10):
        params = spec.draw(np.random.default_rng(k))
        whole = _augmented(clip, params, 16)
        assert whole.shape == (6, 16, 16, 3)
        for t in range(6):
            assert torch.equal(whole[t], _augmented(clip[t : t + 1], params, 16)[0])
    # identical frames stay identical
    out = _augmented(np.repeat(clip[:1], 4, axis=0), spec.draw(np.random.default_rng(1)), 16)
    assert all(torch.equal(out[0], out[t]) for t in range(4))


def test_augmentation_draws_are_reproducible_and_vary():
    augment = ClipAugment(_strong(), 16)
    a = augment.draw(np.random.default_rng([1, 2, 3]))
    assert a == augment.draw(np.random.default_rng([1, 2, 3]))
    draws = [augment.draw(np.random.default_rng(k)) for k in range(40)]
    assert len({d.flip for d in draws}) == 2 and len({d.crop for d in draws}) == 40
    assert all(0.3 - 1e-9 <= d.crop[2] * d.crop[3] <= 1.0 + 1e-9 for d in draws)  # area fraction in range


def test_no_augmentation_is_a_plain_resize():
    out = _augmented(index_frames(3), ClipAugment(AugmentSpec(), 8).draw(np.random.default_rng(0)), 8)
    assert out.shape == (3, 8, 8, 3) and _level(out).tolist() == [0, 1, 2]


def test_zero_strength_jitter_is_skipped():
    augment = ClipAugment(AugmentSpec(jitter=(0.4, 0.0, 0.0, 0.0), jitter_p=1.0), 8)
    assert [op for op, _ in augment.draw(np.random.default_rng(0)).jitter] == ["brightness"]


def test_augment_spec_rejects_unknown_keys():
    with pytest.raises(InputError, match="unknown keys"):
        AugmentSpec.from_config({"flip": 0.5})
    assert AugmentSpec.from_config({"crop_scale": [0.5, 1.0]}).crop_scale == (0.5, 1.0)


# --------------------------------------------------------------------------------------------------
# Datasets


LABELS = pd.DataFrame({
    "game": [GAMES[0], GAMES[0], GAMES[1]], "half": [1, 1, 1], "time_s": [5.3, 5.9, 12.0],
    "class_index": [2, 2, 0], "visibility": ["visible"] * 3,
})


def test_window_clips_deliver_frames_labels_and_keys(halves):
    targets = SpotTargets(LABELS, 3, radius_s=0.5)
    data = WindowClips(halves, 16, 4, ClipAugment(AugmentSpec(), 8), seed=1, extras=targets)
    windows = data.windows(0)
    for index in range(len(data)):
        item = collate_samples([data[(0, index)]])
        half, start = windows[index]
        assert item["clip"].shape == (1, 16, 3, 8, 8)
        expected = [min(start + j, halves[half].count - 1) for j in range(16)]
        assert _level(item["clip"][0]).tolist() == expected
        assert item["key"].tolist() == [[0, index]]
        assert set(item["augment"]) == set(PARAM_KEYS)
        assert float(item["start_s"]) == start / 2.0
        h = halves[half]
        rows = LABELS[(LABELS.game == h.game) & (LABELS.half == h.half)]
        want = token_targets(rows.time_s.to_numpy(), rows.class_index.to_numpy(), start / 2.0, 16, 3)
        assert np.array_equal(item["targets"][0].numpy(), want)


def test_label_window_of_two_actions_in_one_token(halves):
    """Class 2 at 5.3 s and 5.9 s: frames 10-12 (5.0, 5.5, 6.0 s) and 11-13 are positive (radius 0.5 s)."""
    targets = SpotTargets(LABELS, 3, radius_s=0.5)(halves[0], 4.0, 8)["targets"]
    assert targets[:, 2].tolist() == [0, 1, 1, 0]  # tokens at 4-5 s, 5-6 s, 6-7 s, 7-8 s
    assert not targets[:, [0, 1]].any()


def test_samples_do_not_depend_on_workers_or_instances(halves):
    """The same key gives the same sample in a fresh dataset, in 0 or 2 DataLoader workers."""
    def make():
        return WindowClips(halves, 16, 4, ClipAugment(_strong(), 8), seed=7, extras=SpotTargets(LABELS, 3, 0.5))

    keys = [(1, i) for i in range(8)]
    direct = [collate_samples([make()[k]]) for k in keys]
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(make(), batch_size=4, sampler=keys, num_workers=workers,
                                             collate_fn=collate_samples)
        batches = list(loader)
        for b, batch in enumerate(batches):
            for j in range(4):
                want = direct[4 * b + j]
                for name in ("clip", "key", "targets"):
                    assert torch.equal(batch[name][j], want[name][0])
                for name, value in want["augment"].items():
                    assert torch.equal(batch["augment"][name][j], value[0])


def _same_sample(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        _same_sample(a[k], b[k]) if isinstance(a[k], dict) else torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("decode", ["worker", "device"])
def test_a_window_batch_is_its_keys_samples(halves, decode):
    """__getitems__ (what a DataLoader worker calls) builds the batch whose rows are dataset[key], key by key
    (keys of two epochs and one repeated); its frames are one (B, T, H, W, 3) array seen channels first."""
    data = WindowClips(halves, 16, 4, ClipAugment(_strong(), 8), seed=7, extras=SpotTargets(LABELS, 3, 0.5),
                       decode=decode)
    keys = [(1, 5), (0, 2), (1, 0), (1, 5)]
    batch = data.__getitems__(keys)
    assert _same_sample(batch, collate_samples([data[k] for k in keys]))
    assert collate_samples(batch)["augment"] is batch["augment"]  # the collate function passes a batch on
    assert batch["key"].tolist() == [list(k) for k in keys] and batch["targets"].shape == (4, 8, 3)
    if decode == "worker":
        frames = batch["clip"]
        assert frames.shape == (4, 16, 3, 24, 32)  # crops: at most 4 x 8 px per side
        assert frames.movedim(-3, -1).is_contiguous() and torch.equal(batch_frames(batch, torch.device("cpu")), frames)
        half, start = data.windows(0)[2]
        assert _level(frames[1]).tolist() == [min(start + j, halves[half].count - 1) for j in range(16)]


def test_subvideo_pairs_are_reproducible_views_of_one_second(halves):
    augments = (ClipAugment(_strong(blur_p=1.0, solarize_p=0.0), 8), ClipAugment(_strong(blur_p=0.1), 8))
    data = SubVideoPairs(halves, augments, seed=0)
    item = collate_samples([data[(0, 3)]])  # half 0, frames 6 and 7, at most 4 x 8 px per side (crops)
    assert item["clip"].shape == (1, 2, 3, 24, 32) and _level(item["clip"][0]).tolist() == [6, 7]
    assert set(item) == {"clip", "augment_view1", "augment_view2"}
    assert _same_sample(item, collate_samples([SubVideoPairs(halves, augments, seed=0)[(0, 3)]]))
    other_epoch = collate_samples([data[(1, 3)]])
    assert not torch.equal(item["augment_view1"]["crop"], other_epoch["augment_view1"]["crop"])
    assert not torch.equal(item["augment_view1"]["crop"], item["augment_view2"]["crop"])  # two views differ
    plain = collate_samples([SubVideoPairs(halves, (ClipAugment(AugmentSpec(), 8),) * 2, seed=0)[(0, 3)]])
    assert plain["clip"].shape == (1, 2, 3, 8, 8) and _level(plain["clip"][0]).tolist() == [6, 7]


def test_workers_send_jpeg_bytes_when_the_device_decodes(halves):
    """decode="device": the same sample but the frames' JPEGs; decoded on the device they are the workers'
    frames (crops: both at the native size, so exactly)."""
    augments = (ClipAugment(_strong(), 16),) * 2
    worker, device = (SubVideoPairs(halves, augments, seed=0, decode=d) for d in ("worker", "device"))
    keys = [(0, i) for i in (0, 5, 19)]
    batch = collate_samples([device[k] for k in keys])
    assert "clip" not in batch and batch["jpeg_lengths"].shape == (3, 2)
    frames = batch_frames(batch, torch.device("cpu"))
    want = collate_samples([worker[k] for k in keys])
    assert torch.equal(frames, want["clip"])
    assert _same_sample(batch["augment_view1"], want["augment_view1"])
    short = FrameStore(halves, decode="device").read([(3, 0, 16, 1)])  # a half of 12 frames: the last repeats
    decoded = batch_frames(short, torch.device("cpu"))[0]
    assert _level(decoded).tolist() == list(range(12)) + [11] * 4
    with pytest.raises(InputError, match="decode"):
        FrameStore(halves, decode="gpu")


def test_subvideos_per_half_are_drawn_afresh_every_epoch(halves):
    views = (ClipAugment(AugmentSpec(), 16), ClipAugment(AugmentSpec(), 16))
    every = SubVideoPairs(halves, views, seed=1)
    some = SubVideoPairs(halves, views, seed=1, per_half=2)
    counts = np.bincount(every.starts[:, 0])
    assert len(every) == counts.sum() and len(some) == 2 * len(counts)
    a, b = some.subvideos(0), some.subvideos(1)
    assert np.bincount(a[:, 0]).tolist() == [2] * len(counts)  # per_half of each half, in half order
    assert {tuple(r) for r in a} <= {tuple(r) for r in every.starts}
    assert np.array_equal(a, SubVideoPairs(halves, views, seed=1, per_half=2).subvideos(0))  # from (seed, epoch)
    assert not np.array_equal(a, b)
    assert np.array_equal(SubVideoPairs(halves, views, seed=1, per_half=10_000).subvideos(3), every.starts)


def test_runs_are_consecutive_seconds_of_one_half(halves):
    views = (ClipAugment(AugmentSpec(), 8),) * 2
    assert SubVideoPairs(halves, views, seed=0).runs(0) is None  # per_run 1: every sample on its own
    data = SubVideoPairs(halves, views, seed=0, per_run=8)
    lengths = data.runs(0)
    per_half = [n // 2 for n in COUNTS.values()]  # 20, 16, 18, 6 sub-videos
    assert lengths.tolist() == [8, 8, 4, 8, 8, 8, 8, 2, 6] and lengths.sum() == sum(per_half) == len(data)
    sparse = SubVideoPairs(halves, views, seed=0, per_half=3, per_run=8)
    for epoch in range(3):  # with per_half, only sub-videos drawn next to each other share a run
        sub, firsts = sparse.subvideos(epoch), np.cumsum(sparse.runs(epoch)) - sparse.runs(epoch)
        for first, n in zip(firsts, sparse.runs(epoch)):
            rows = sub[first : first + n]
            assert (rows[:, 0] == rows[0, 0]).all() and (np.diff(rows[:, 1]) == 2).all()
    with pytest.raises(InputError, match="subvideos_per_run"):
        SubVideoPairs(halves, views, seed=0, per_run=0)


@pytest.mark.parametrize("decode", ["worker", "device"])
def test_a_run_is_one_read_and_gives_each_key_its_own_sample(halves, decode, monkeypatch):
    """__getitems__ over a batch with runs equals dataset[key] key by key (frames and both views'
    augmentation), with one contiguous read per run (keys consecutive in one half)."""
    augments = (ClipAugment(_strong(blur_p=1.0, solarize_p=0.0), 8), ClipAugment(_strong(blur_p=0.1), 8))
    data = SubVideoPairs(halves, augments, seed=4, decode=decode, per_run=4)
    keys = [(2, 3), (2, 4), (2, 5), (2, 6), (2, 19), (2, 20), (2, 0), (3, 1), (3, 2)]  # 19|20: another half
    single = [SubVideoPairs(halves, augments, seed=4, decode=decode)[k] for k in keys]
    from comedian.data.frames import PackedFrames

    reads = []
    original = PackedFrames.read_jpegs
    monkeypatch.setattr(PackedFrames, "read_jpegs",
                        lambda self, start, count: reads.append((start, count)) or original(self, start, count))
    batch = data.__getitems__(keys)
    assert reads == [(6, 8), (38, 2), (0, 2), (0, 2), (2, 4)]  # runs: 3-6, 19, 20 (half 1), 0, then epoch 3
    assert _same_sample(batch, collate_samples(single))
    if decode == "worker":
        assert _level(batch["clip"][:4].flatten(0, 1)).tolist() == list(range(6, 14))


def test_step_one_batches_do_not_depend_on_workers(halves):
    """The Trainer's sampler with runs and 0 or 2 DataLoader workers: the same batches, run by run."""
    def loader(workers: int):
        data = SubVideoPairs(halves, (ClipAugment(_strong(), 8),) * 2, seed=3, per_run=4)
        sampler = EpochSampler(len(data), seed=3, runs=data.runs, block=6)
        sampler.set_epoch(1)
        return torch.utils.data.DataLoader(data, batch_size=6, sampler=sampler, num_workers=workers,
                                           collate_fn=collate_samples, drop_last=True)

    first, second = (list(loader(w)) for w in (0, 2))
    assert len(first) == len(second) == 60 // 6
    for a, b in zip(first, second):
        assert _same_sample(a, b)
