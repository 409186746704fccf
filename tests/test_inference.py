"""Sliding-window inference, the predict stage's raw-score file, and seed ensembles."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from comedian.data.frames import PackedFrames
from comedian.data.soccernet import game_slug
from comedian.data.targets import token_times_s
from comedian.errors import InputError
from packed_frames import write_packed
from comedian.inference import ensemble, predict
from comedian.inference.windows import score_halves, sliding_window_scores, window_plan
from comedian.models import build_model, make_checkpoint, save_checkpoint
from comedian.postprocess import read_raw_scores
from comedian.preprocess import INPUT_MEAN, INPUT_STD, frames_to_input

FPS = 2.0
CLASSES = ["Goal", "Corner", "Foul"]


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("COMEDIAN_TRACKING", "0")


# ----------------------------------------------------------------------------------------------
# Helpers: frames that encode their index, a model that reports what it saw
# ----------------------------------------------------------------------------------------------


def index_frames(start: int, count: int, size=(4, 4)) -> np.ndarray:
    """uint8 (count, H, W, 3): frame f has R = f % 256, G = f // 256, B = 7 everywhere."""
    idx = np.arange(start, start + count)
    out = np.empty((count, *size, 3), dtype=np.uint8)
    out[..., 0] = (idx % 256)[:, None, None]
    out[..., 1] = (idx // 256)[:, None, None]
    out[..., 2] = 7
    return out


class IndexFrames:
    """Duck-typed PackedFrames: frame f encodes f exactly (no JPEG); records every read."""

    def __init__(self, count: int, fps: float = FPS) -> None:
        self.count, self.fps, self.reads = count, fps, []

    def read(self, start: int, count: int, size=None) -> np.ndarray:
        assert 0 <= start and count >= 1 and start + count <= self.count, (start, count, self.count)
        self.reads.append((start, count))
        return index_frames(start, count, size or (4, 4))


def _prob_logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p) - torch.log1p(-p)


class WindowProbe(nn.Module):
    """Fake model: per token, probabilities that encode (window's first frame, token's first frame,
    token position in the window), read back from the normalised input pixels."""

    tubelet_size = 2

    def __init__(self, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.anchor = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert not torch.is_grad_enabled()
        b, t = clip.shape[:2]
        pix = clip[:, :, :2, 0, 0].double()  # (B, T, 2) normalised R, G
        mean = torch.tensor(INPUT_MEAN[:2], dtype=torch.float64) * 255
        std = torch.tensor(INPUT_STD[:2], dtype=torch.float64) * 255
        rg = torch.round(pix * std + mean)
        frame = rg[..., 0] + 256 * rg[..., 1]  # (B, T) frame index of each input frame
        first = frame[:, 0:1].expand(b, t // 2)
        token_frame = frame[:, 0::2]
        position = torch.arange(t // 2, dtype=torch.float64).expand(b, -1)
        probs = torch.stack([(first + 1) / 4096, (token_frame + 1) / 4096, (position + 1) / 256], dim=-1)
        return _prob_logit(probs).float() + 0 * self.anchor


def reference_rows(n_frames: int, window_frames: int, ignore_s: float, fps: float = FPS):
    """Brute force, in frames and seconds: for each token, the (window first frame, position) pairs
    that keep it. Windows every window_frames/2 frames (rounded down to even) from frame 0, the last one
    ending at the padded end of the half; the stride shrinks only when ignore_s > window/4."""
    d = 2 / fps  # token duration, s
    n_tokens = math.ceil(n_frames / 2)
    padded = max(n_tokens * 2, window_frames)
    ignore_tok = math.ceil(ignore_s / d - 1e-9)
    length = window_frames // 2
    stride_tok = length // 2
    if n_tokens > length and length - stride_tok < 2 * ignore_tok:
        stride_tok = length - 2 * ignore_tok
    starts, s = [], 0
    while s + window_frames < padded:
        starts.append(s)
        s += 2 * stride_tok
    starts.append(padded - window_frames)
    half_end_s = n_tokens * d
    rows = [[] for _ in range(n_tokens)]
    for w0f in starts:
        w0, w1 = w0f / fps, (w0f + window_frames) / fps
        for i in range(length):
            j = w0f // 2 + i
            if j >= n_tokens:
                continue
            t_start, t_end = j * d, (j + 1) * d
            keep_head = w0 == 0 or t_start - w0 >= ignore_s - 1e-9
            keep_tail = w1 >= half_end_s - 1e-9 or w1 - t_end >= ignore_s - 1e-9
            if keep_head and keep_tail:
                rows[j].append((w0f, i))
    return rows


# ----------------------------------------------------------------------------------------------
# Window plan: coverage and edges
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window_frames", [2, 4, 6, 8, 16, 64, 128])
@pytest.mark.parametrize("ignore_s", [0.0, 0.5, 1.0, 2.0, 3.0, 6.0, 12.0, 15.9])
def test_every_token_is_covered(window_frames, ignore_s):
    length = window_frames // 2
    for n_frames in list(range(1, 3 * window_frames + 5)) + [5399, 5400, 5401]:
        k = math.ceil(ignore_s - 1e-9)
        if 2 * k >= length and math.ceil(n_frames / 2) > length:
            with pytest.raises(InputError, match="ignore_s"):
                window_plan(n_frames, window_frames, ignore_s, FPS, 2)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = window_plan(n_frames, window_frames, ignore_s, FPS, 2)
        assert plan.n_tokens == math.ceil(n_frames / 2)
        assert plan.coverage().min() >= 1, (n_frames, window_frames, ignore_s)
        # windows lie in the padded half, start on token (even-frame) boundaries, and the last one
        # ends at the half's end (or the single window starts at frame 0)
        assert plan.starts[0] == 0
        assert plan.starts[-1] == max(plan.n_tokens - length, 0)
        assert np.all(np.diff(plan.starts) > 0)
        assert np.all(np.diff(plan.starts)[:-1] == plan.stride)
        if 4 * k <= length:
            assert plan.stride == max(1, length // 2)  # half overlap
        # inner edges drop k tokens; the half's own edges keep theirs
        inner_start = plan.starts > 0
        inner_end = plan.starts + length < plan.n_tokens
        assert np.all(plan.keep_lo[inner_start] == k) and np.all(plan.keep_lo[~inner_start] == 0)
        assert np.all(plan.keep_hi[inner_end] == length - k) and np.all(plan.keep_hi[~inner_end] == length)


def test_plan_matches_brute_force_reference():
    for window_frames, ignore_s in [(64, 6.0), (128, 12.0), (16, 2.0), (12, 1.5), (32, 6.0), (8, 0.0)]:
        for n_frames in (1, 7, 63, 64, 65, 100, 129, 240, 241, 997):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = window_plan(n_frames, window_frames, ignore_s, FPS, 2)
            ref = reference_rows(n_frames, window_frames, ignore_s)
            got = [[] for _ in range(plan.n_tokens)]
            for s, lo, hi in zip(plan.starts, plan.keep_lo, plan.keep_hi):
                for i in range(lo, hi):
                    if s + i < plan.n_tokens:
                        got[s + i].append((2 * int(s), int(i)))
            assert got == ref, (n_frames, window_frames, ignore_s)


def test_plan_rejects_bad_arguments():
    with pytest.raises(InputError, match="window_frames"):
        window_plan(100, 7, 0.0)
    with pytest.raises(InputError, match="ignore_s"):
        window_plan(100, 16, -1.0)
    with pytest.raises(InputError, match="ignore_s"):
        window_plan(200, 16, 4.0)  # 4 tokens each side of an 8-token window: nothing left
    with pytest.warns(UserWarning, match="overlap by more than half"):
        plan = window_plan(200, 32, 6.0)  # 16 tokens, ignore 6 > 16/4: stride 4
    assert plan.stride == 4 and plan.coverage().min() >= 1
    # a half shorter than a window is fine whatever ignore_s is: one window, nothing dropped
    plan = window_plan(5, 16, 100.0)
    assert plan.starts.tolist() == [0] and plan.keep_lo.tolist() == [0] and plan.keep_hi.tolist() == [8]


# ----------------------------------------------------------------------------------------------
# Scores: which window each row came from, max vs mean
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("merge", ["max", "mean"])
@pytest.mark.parametrize(
    "n_frames,window_frames,ignore_s,batch_size",
    [(241, 32, 4.0, 3), (240, 32, 4.0, 1), (64, 16, 2.0, 4), (9, 16, 2.0, 2), (1, 4, 0.0, 1), (333, 64, 6.0, 2)],
)
def test_rows_come_from_the_right_windows(merge, n_frames, window_frames, ignore_s, batch_size):
    frames = IndexFrames(n_frames)
    model = WindowProbe(window_frames // 2)
    model.train()
    scores, times = sliding_window_scores(model, frames, window_frames, ignore_s, merge=merge,
                                          batch_size=batch_size, size=(4, 4), device="cpu")
    n_tokens = math.ceil(n_frames / 2)
    assert model.training  # mode restored
    assert scores.dtype == np.float32 and times.dtype == np.float64
    assert scores.shape == (n_tokens, 3) and times.shape == (n_tokens,)
    np.testing.assert_array_equal(times, token_times_s(0.0, n_tokens, FPS, 2))
    np.testing.assert_allclose(times[:2], [0.25, 1.25][: n_tokens])
    # column 1: row j shows frames 2j, 2j+1, whichever windows kept it
    np.testing.assert_array_equal(np.round(scores[:, 1] * 4096 - 1), 2 * np.arange(n_tokens))
    ref = reference_rows(n_frames, window_frames, ignore_s)
    reduce = np.max if merge == "max" else np.mean
    want_window = np.array([reduce([w0 + 1 for w0, _ in r]) for r in ref]) / 4096
    want_position = np.array([reduce([i + 1 for _, i in r]) for r in ref]) / 256
    np.testing.assert_allclose(scores[:, 0], want_window, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores[:, 2], want_position, rtol=1e-5, atol=1e-7)
    # batched: ceil(windows / batch) forward passes; frames read once per batch (union range)
    plan = window_plan(n_frames, window_frames, ignore_s, FPS, 2)
    assert model.calls == -(-plan.n_windows // batch_size)
    assert len(frames.reads) == model.calls
    assert all(s + c <= n_frames for s, c in frames.reads)


def test_max_and_mean_differ_where_windows_overlap():
    frames = IndexFrames(200)
    model = WindowProbe(16)
    top, _ = sliding_window_scores(model, frames, 32, 0.0, merge="max", size=(4, 4))
    avg, _ = sliding_window_scores(model, frames, 32, 0.0, merge="mean", size=(4, 4))
    # token 10 lies in windows starting at frames 0 (position 10) and 16 (position 2)
    assert round(top[10, 2] * 256) == 11 and avg[10, 2] * 256 == pytest.approx((11 + 3) / 2, rel=1e-5)
    assert round(top[10, 0] * 4096) == 17 and avg[10, 0] * 4096 == pytest.approx((1 + 17) / 2, rel=1e-5)
    # token 3 is only in the first window
    assert top[3, 0] == avg[3, 0]


def test_score_halves_yields_each_half_as_alone():
    halves = [IndexFrames(n) for n in (70, 9, 33)]
    got = list(score_halves(WindowProbe(8), halves, 16, 2.0, merge="mean", batch_size=3, size=(4, 4)))
    assert [h for h, _, _ in got] == [0, 1, 2]
    for h, scores, times in got:
        alone, alone_times = sliding_window_scores(WindowProbe(8), IndexFrames(halves[h].count), 16, 2.0,
                                                   merge="mean", batch_size=1, size=(4, 4))
        np.testing.assert_allclose(scores, alone, rtol=1e-6)  # batch composition: 1-ulp differences
        np.testing.assert_array_equal(times, alone_times)


def test_short_half_is_padded_with_its_last_frame():
    seen = []

    class Recorder(WindowProbe):
        def forward(self, clip):
            seen.append(clip.clone())
            return super().forward(clip)

    frames = IndexFrames(5)  # 3 tokens (the last one padded by one frame), window of 8 tokens
    scores, times = sliding_window_scores(Recorder(8), frames, 16, 6.0, size=(4, 4))
    assert scores.shape == (3, 3) and times.tolist() == [0.25, 1.25, 2.25]
    (clip,) = seen
    assert clip.shape == (1, 16, 3, 4, 4)
    expect = frames_to_input(index_frames(0, 5)[[0, 1, 2, 3, 4] + [4] * 11])
    torch.testing.assert_close(clip[0], expect)


def test_frames_to_input_normalises():
    frames = np.zeros((2, 3, 5, 6, 3), dtype=np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 0, 128, 255
    x = frames_to_input(frames)
    assert x.shape == (2, 3, 3, 5, 6) and x.dtype == torch.float32
    for c, v in enumerate((0, 128, 255)):
        assert torch.allclose(x[:, :, c], torch.tensor((v / 255 - INPUT_MEAN[c]) / INPUT_STD[c]))
    with pytest.raises(ValueError):
        frames_to_input(frames.astype(np.float32))


def test_window_longer_than_model_is_refused():
    with pytest.raises(InputError, match="time embedding"):
        sliding_window_scores(WindowProbe(8), IndexFrames(100), 32, 0.0, size=(4, 4))


# ----------------------------------------------------------------------------------------------
# The predict stage on real packed files and a tiny model
# ----------------------------------------------------------------------------------------------


GAMES = ["league/2020-2021/2020-09-01 - 20-00 A 1 - 0 B", "league/2020-2021/2020-09-02 - 20-00 C 2 - 2 D"]
HALF_FRAMES = {(0, 1): 37, (0, 2): 6, (1, 1): 24, (1, 2): 19}  # 6 frames: shorter than one window


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """A 2-game split of packed frames, a fine-tuned tiny checkpoint and a step-2 one (no head)."""
    root = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(0)
    for (g, h), n in HALF_FRAMES.items():
        frames = rng.integers(0, 256, size=(n, 24, 40, 3), dtype=np.uint8)
        write_packed(root / "frames" / game_slug(GAMES[g]) / f"{h}.h5", frames)
    (root / "test.txt").write_text("\n".join(GAMES) + "\n")
    torch.manual_seed(0)
    model = build_model("vivit_demo", frames=8, size=32, classes=3, drop_path=0.0)
    save_checkpoint(root / "finetune.pt", make_checkpoint(model, "finetune", extra={"classes": CLASSES}))
    save_checkpoint(root / "step2.pt", make_checkpoint(model, "distill", parts=["spatial", "temporal"]))
    return root


def _predict(split: Path, out: Path, *extra: str) -> int:
    return predict.main([
        "--checkpoint", str(split / "finetune.pt"), "--frames-dir", str(split / "frames"),
        "--games", str(split / "test.txt"), "--output", str(out), "--ignore-s", "1", "--batch-size", "2",
        "--device", "cpu", *extra,
    ])


def test_predict_writes_the_raw_score_format(split, tmp_path):
    out = tmp_path / "scores" / "test.h5"
    assert _predict(split, out) == 0
    with h5py.File(out, "r") as h5:
        assert json.loads(h5.attrs["classes"]) == CLASSES
        assert sorted(h5.keys()) == sorted(game_slug(g) for g in GAMES)
        for g, game in enumerate(GAMES):
            group = h5[game_slug(game)]
            assert group.attrs["game"] == game and sorted(group.keys()) == ["1", "2"]
            for half in (1, 2):
                scores, times = group[str(half)]["scores"], group[str(half)]["times_s"]
                n_tokens = math.ceil(HALF_FRAMES[(g, half)] / 2)
                assert scores.dtype == np.float32 and scores.shape == (n_tokens, 3)
                assert times.dtype == np.float64
                np.testing.assert_array_equal(times[()], token_times_s(0.0, n_tokens, FPS, 2))
                assert np.all((scores[()] > 0) & (scores[()] < 1))
    classes, raw = read_raw_scores(out)  # the NMS stage's reader accepts it
    assert classes == CLASSES and sorted(raw) == sorted(GAMES)
    assert not list(tmp_path.glob("scores/.*partial"))

    # the same numbers as sliding_window_scores on the loaded model
    model, _ = predict.load_spotting_model(split / "finetune.pt", "cpu")
    with PackedFrames(split / "frames" / game_slug(GAMES[0]) / "1.h5") as frames:
        scores, times = sliding_window_scores(model, frames, 8, 1.0, batch_size=3)
    np.testing.assert_allclose(raw[GAMES[0]][1][0], scores, rtol=1e-5, atol=1e-6)

    # a half of exactly one window: the raw scores are the model's sigmoid on that window
    with PackedFrames(split / "frames" / game_slug(GAMES[0]) / "1.h5") as frames:
        block = frames.read(0, 8, size=(32, 32))
    with torch.no_grad():
        direct = torch.sigmoid(model(frames_to_input(block[None])))[0].numpy()
    short = PackedFramesSlice(split / "frames" / game_slug(GAMES[0]) / "1.h5", 8)
    scores, _ = sliding_window_scores(model, short, 8, 1.0)
    np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-6)


class PackedFramesSlice(PackedFrames):
    """The first ``n`` frames of a packed file, as a shorter half."""

    def __init__(self, path, n):
        super().__init__(path)
        self.count = n


def test_predict_with_workers_and_mean_matches(split, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    _predict(split, a, "--merge", "mean")
    _predict(split, b, "--merge", "mean", "--workers", "2", "--batch-size", "1")
    (_, ra), (_, rb) = read_raw_scores(a), read_raw_scores(b)
    for game in GAMES:
        for half in (1, 2):
            np.testing.assert_allclose(ra[game][half][0], rb[game][half][0], rtol=1e-5, atol=1e-6)


def test_predict_refuses_a_checkpoint_without_head(split, tmp_path):
    with pytest.raises(InputError, match="not a fine-tuned model"):
        predict.main(["--checkpoint", str(split / "step2.pt"), "--frames-dir", str(split / "frames"),
                      "--games", str(split / "test.txt"), "--output", str(tmp_path / "x.h5")])
    assert not (tmp_path / "x.h5").exists()


def test_predict_names_missing_frame_files(split, tmp_path):
    games = tmp_path / "games.txt"
    games.write_text(GAMES[0] + "\nleague/2020-2021/2020-09-03 - 20-00 E 0 - 0 F\n")
    missing = tmp_path / "frames_missing"
    with pytest.raises(InputError, match=r"2 packed frame files missing: .*E_0_-_0_F/1\.h5.*E_0_-_0_F/2\.h5"):
        predict.main(["--checkpoint", str(split / "finetune.pt"), "--frames-dir", str(split / "frames"),
                      "--games", str(games), "--output", str(tmp_path / "x.h5")])
    assert not (tmp_path / "x.h5").exists() and not missing.exists()


def test_predict_class_names(split, tmp_path):
    with pytest.raises(InputError, match="2 class names but the model's head has 3"):
        _predict(split, tmp_path / "x.h5", "--classes", '["a", "b"]')
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["x", "y", "z"]))
    _predict(split, tmp_path / "y.h5", "--classes", str(names))
    assert read_raw_scores(tmp_path / "y.h5")[0] == ["x", "y", "z"]


def test_predict_refuses_a_window_longer_than_the_model(split, tmp_path):
    with pytest.raises(InputError, match="time embedding"):
        _predict(split, tmp_path / "x.h5", "--window-frames", "16")


# ----------------------------------------------------------------------------------------------
# Ensembles
# ----------------------------------------------------------------------------------------------


def _raw_file(path: Path, games: dict[str, dict[int, int]], seed: int, classes=CLASSES, shift_s=0.0) -> dict:
    rng = np.random.default_rng(seed)
    data = {}
    with predict.RawScoreWriter(path, classes, {"merge": "max"}) as out:
        for game, halves in games.items():
            for half, n in halves.items():
                scores = rng.random((n, len(classes)), dtype=np.float32)
                times = token_times_s(shift_s, n, FPS, 2)
                out.add(game, half, scores, times)
                data[(game, half)] = scores
    return data


SMALL = {GAMES[0]: {1: 5, 2: 4}, GAMES[1]: {1: 3, 2: 6}}


def test_ensemble_averages(tmp_path):
    parts = [_raw_file(tmp_path / f"s{k}.h5", SMALL, seed=k) for k in range(3)]
    (tmp_path / "games.txt").write_text("\n".join(GAMES))
    assert ensemble.main(["--inputs", *(str(tmp_path / f"s{k}.h5") for k in range(3)),
                          "--output", str(tmp_path / "ens.h5"), "--games", str(tmp_path / "games.txt")]) == 0
    classes, raw = read_raw_scores(tmp_path / "ens.h5")
    assert classes == CLASSES and sorted(raw) == sorted(GAMES)
    for (game, half), _ in parts[0].items():
        want = (parts[0][(game, half)].astype(np.float64) + parts[1][(game, half)] + parts[2][(game, half)]) / 3
        np.testing.assert_allclose(raw[game][half][0], want, rtol=1e-6)
        assert raw[game][half][0].dtype == np.float32
        np.testing.assert_array_equal(raw[game][half][1], token_times_s(0.0, SMALL[game][half], FPS, 2))
    # one input: a copy
    ensemble.main(["--inputs", str(tmp_path / "s1.h5"), "--output", str(tmp_path / "one.h5")])
    _, one = read_raw_scores(tmp_path / "one.h5")
    np.testing.assert_array_equal(one[GAMES[1]][2][0], parts[1][(GAMES[1], 2)])


def test_ensemble_refuses_mismatches(tmp_path):
    _raw_file(tmp_path / "a.h5", SMALL, 0)
    _raw_file(tmp_path / "game.h5", {GAMES[0]: SMALL[GAMES[0]], "x/y/z": {1: 5, 2: 4}}, 1)
    _raw_file(tmp_path / "len.h5", {GAMES[0]: {1: 5, 2: 4}, GAMES[1]: {1: 3, 2: 7}}, 1)
    _raw_file(tmp_path / "time.h5", SMALL, 1, shift_s=0.5)
    _raw_file(tmp_path / "cls.h5", SMALL, 1, classes=["Goal", "Foul", "Corner"])
    cases = {
        "game.h5": rf"game\.h5: lacks 1 games of .*a\.h5: {GAMES[1]}; has 1 games not in .*a\.h5: x/y/z",
        "len.h5": rf"len\.h5: game '{GAMES[1]}' half 2: 7 rows but .*a\.h5 has 6",
        "time.h5": rf"time\.h5: game '{GAMES[0]}' half 1: times_s differ",
        "cls.h5": r"cls\.h5: classes .* differ",
    }
    for name, pattern in cases.items():
        with pytest.raises(InputError, match=pattern):
            ensemble.main(["--inputs", str(tmp_path / "a.h5"), str(tmp_path / name), "--output", str(tmp_path / "e.h5")])
        assert not (tmp_path / "e.h5").exists()
    (tmp_path / "games.txt").write_text(GAMES[0] + "\n")
    with pytest.raises(InputError, match=rf"a\.h5: has 1 games not in the game list: {GAMES[1]}"):
        ensemble.main(["--inputs", str(tmp_path / "a.h5"), "--output", str(tmp_path / "e.h5"),
                       "--games", str(tmp_path / "games.txt")])
    with pytest.raises(InputError, match="listed twice"):
        ensemble.main(["--inputs", str(tmp_path / "a.h5"), str(tmp_path / "a.h5"), "--output", str(tmp_path / "e.h5")])
