"""The synthetic demo tree: layout, formats, determinism, and that its events are visible and learnable."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from comedian.data import demo
from comedian.data.soccernet import (
    SOCCERNET_V2_CLASSES,
    baidu_path,
    labels_path,
    read_game_list,
    read_labels,
    video_path,
)
from comedian.errors import InputError

SEED, HALF_S = 7, 20.0
COUNTS = (1, 1, 1)  # train, valid, test games
GAME_NAME = re.compile(r"demo_league/\d{4}-\d{4}/\d{4}-\d{2}-\d{2} - \d{2}-\d{2} [A-Za-z ]+ \d+ - \d+ [A-Za-z ]+")


def _generate(base: Path, seed: int = SEED) -> tuple[Path, Path]:
    root, splits = base / "data", base / "splits"
    argv = ["--root", str(root), "--splits-dir", str(splits), "--seed", str(seed), "--half-duration", str(HALF_S)]
    argv += ["--train-games", str(COUNTS[0]), "--valid-games", str(COUNTS[1]), "--test-games", str(COUNTS[2])]
    assert demo.main(argv) == 0
    return root, splits


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, Path]:
    return _generate(tmp_path_factory.mktemp("demo"))


def _games() -> list[str]:
    return [g for names in demo.demo_games(SEED, *COUNTS).values() for g in names]


def _decode(path: Path) -> np.ndarray:
    """(n, 224, 398, 3) uint8 frames of a video.

    Not through ``imageio_ffmpeg.read_frames``: iterated to the end, it leaves ffmpeg's stdin pipe
    open (a ResourceWarning).
    """
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(path)]
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, 224, 398, 3)


def _meta(path: Path) -> dict:
    """imageio-ffmpeg's description of a video (size, fps, codec, pix_fmt, ...)."""
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        return next(reader)
    finally:
        reader.close()


def _downscale64(frame: np.ndarray) -> np.ndarray:
    """Area-average a 224x398 frame to 64x64 (what a tiny model sees)."""
    rows = np.linspace(0, frame.shape[0], 65).astype(int)
    cols = np.linspace(0, frame.shape[1], 65).astype(int)
    f = np.add.reduceat(np.add.reduceat(frame.astype(np.float64), rows[:-1], 0), cols[:-1], 1)
    return f / np.outer(np.diff(rows), np.diff(cols))[..., None]


def test_layout_matches_demo_games_and_files(tree):
    root, splits = tree
    expected = demo.demo_games(SEED, *COUNTS)
    for split in demo.DEMO_SPLITS:
        assert read_game_list(demo.split_list_path(splits, split)) == expected[split]
    games = _games()
    assert len(set(games)) == len(games) == sum(COUNTS)
    for game in games:
        assert GAME_NAME.fullmatch(game), game
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert written == sorted(demo.demo_files(SEED, *COUNTS))
    assert [p.name for p in root.iterdir()] == [demo.DEMO_LEAGUE]
    assert sorted(p.name for p in splits.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    assert not list(root.rglob(".*.partial"))


def test_demo_games_are_cheap_stable_and_checked():
    more = demo.demo_games(SEED, 3, 2, 2)
    fewer = demo.demo_games(SEED, 2, 1, 1)
    for split in demo.DEMO_SPLITS:  # a game depends on (seed, split, index) only
        assert more[split][: len(fewer[split])] == fewer[split]
    assert demo.demo_games(SEED + 1, 2, 1, 1) != fewer
    many = [g for names in demo.demo_games(0, 150, 60, 60).values() for g in names]
    assert len(set(many)) == len(many)
    with pytest.raises(InputError, match="train"):
        demo.demo_games(0, -1, 1, 1)
    with pytest.raises(InputError, match="at least one game"):
        demo.demo_games(0, 0, 0, 0)


def test_videos_decode_with_the_soccernet_format(tree):
    root, _ = tree
    for game in _games():
        for half in (1, 2):
            path = video_path(root, game, half)
            n_frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
            assert HALF_S <= n_frames / demo.FPS < HALF_S + 1
            assert seconds == pytest.approx(n_frames / demo.FPS, abs=0.05)
            meta = _meta(path)
            assert tuple(meta["size"]) == (398, 224)
            assert meta["fps"] == 25
            assert meta["codec"] == "h264"
            assert meta["pix_fmt"].startswith("yuv420p")
            features = np.load(baidu_path(root, game, half))
            assert features.dtype == np.float32
            assert features.shape == (n_frames // demo.FPS, 8576)
            assert np.isfinite(features).all()


def test_labels_follow_the_official_schema_with_every_class(tree):
    root, _ = tree
    not_shown = 0
    for game in _games():
        durations = {h: imageio_ffmpeg.count_frames_and_secs(str(video_path(root, game, h)))[0] / 25 for h in (1, 2)}
        document = json.loads(labels_path(root, game).read_text())
        assert document["UrlLocal"].rstrip("/") == game
        for item in document["annotations"]:
            assert set(item) == {"gameTime", "label", "position", "team", "visibility"}
            assert isinstance(item["position"], str) and item["position"].isdigit()
            seconds = int(item["position"]) // 1000
            assert item["gameTime"].endswith(f" - {seconds // 60:02d}:{seconds % 60:02d}")
        table = read_labels(root, game, half_durations=durations)
        assert set(table["label"]) == set(SOCCERNET_V2_CLASSES)
        assert set(table["team"]) <= {"home", "away", "not applicable"}
        not_shown += int((table["visibility"] == "not shown").sum())
        for half, events in table.groupby("half"):
            times = np.sort(events["time_s"].to_numpy())
            assert times[0] >= demo.EDGE_MARGIN_S and times[-1] <= durations[half] - demo.EDGE_MARGIN_S
            assert np.diff(times).min() >= demo.MIN_EVENT_GAP_S - 0.002
        positions = np.rint(table["time_s"].to_numpy() * 1000).astype(int)
        assert (positions % 500 != 0).all()  # off the 2-fps grid, like real labels
        assert not_shown >= 1


def test_default_plan_spaces_events_eight_seconds_apart():
    game = demo.demo_game_specs(0)[0]
    plan = demo.plan_game(0, game, 120.0)
    assert sorted({e.class_index for e in plan.events}) == list(range(17))
    for half in (1, 2):
        times = np.array([e.time_s for e in plan.half_events(half)])
        assert np.diff(times).min() >= demo.EVENT_GAP_S - 0.002
    with pytest.raises(InputError, match="half_duration_s"):
        demo.plan_game(0, game, 10.0)


def test_same_seed_same_bytes(tree, tmp_path):
    root, splits = tree
    again, again_splits = _generate(tmp_path / "again")
    for rel in demo.demo_files(SEED, *COUNTS):  # labels, features and (bit-exact) videos
        assert (again / rel).read_bytes() == (root / rel).read_bytes(), rel
    for split in demo.DEMO_SPLITS:
        assert demo.split_list_path(again_splits, split).read_text() == demo.split_list_path(splits, split).read_text()


def test_glyphs_are_visible_on_2fps_frames_after_downscaling(tree):
    """Every 2-fps frame within 0.5 s of an event shows its class's glyph in that class's cell at 64x64.

    Score of class c on a decoded frame: the share of cell c's pixels, at 64x64, that differ by more
    than 20 grey levels from the same frame rendered without glyphs (same camera path and noise).
    """
    root, _ = tree
    game = demo.demo_game_specs(SEED, *COUNTS)[0]
    plan = demo.plan_game(SEED, game, HALF_S)
    table = read_labels(root, game.name)
    cells = [tuple(round(v * 64 / s) for v, s in zip(demo.glyph_cell(c), (224, 398, 224, 398))) for c in range(17)]

    def scores(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
        changed = np.abs(_downscale64(frame) - _downscale64(background)).mean(-1) > 20
        return np.array([changed[top:bottom, left:right].mean() for top, left, bottom, right in cells])

    checked = 0
    for half in (1, 2):
        frames = _decode(video_path(root, game.name, half))
        background = np.concatenate([b.copy() for b in demo.half_frames(SEED, plan, half, draw_events=False)])
        assert background.shape == frames.shape
        events = table[table["half"] == half]
        times = events["time_s"].to_numpy()
        grid = np.arange(0, len(frames) / 25, 0.5)  # the 2-fps frame times
        for t_event, c in zip(times, events["class_index"]):
            for t in grid[np.abs(grid - t_event) <= 0.5]:
                # whichever 25-fps frame an extractor takes for the 2-fps time t
                for i in {int(np.floor(t * 25)), min(int(np.ceil(t * 25)), len(frames) - 1)}:
                    s = scores(frames[i], background[i])
                    assert s[c] >= 0.06 and s.argmax() == c, (t_event, c, s.round(2))
                    checked += 1
        far = [t for t in grid if np.abs(times - t).min() > 1.0]
        assert far
        for t in far:
            i = round(t * 25)
            assert scores(frames[i], background[i]).max() < 0.03, t
    assert checked >= 2 * 17


def test_features_at_events_separate_the_classes(tree):
    """Nearest class mean (cosine, standardised features) of the test game's events, means from the others."""
    root, _ = tree
    splits = demo.demo_games(SEED, *COUNTS)
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for game in _games():
        table = read_labels(root, game)
        features = {h: np.load(baidu_path(root, game, h)).astype(np.float64) for h in (1, 2)}
        x = np.stack([features[h][int(t)] for h, t in zip(table["half"], table["time_s"])])
        rows[game] = (x, table["class_index"].to_numpy())
    everything = np.concatenate([np.load(baidu_path(root, g, h)) for g in _games() for h in (1, 2)])
    mean, std = everything.mean(0), everything.std(0)

    def unit(x: np.ndarray) -> np.ndarray:
        z = (x - mean) / std
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    test_game = splits["test"][0]
    x_ref = np.concatenate([rows[g][0] for g in _games() if g != test_game])
    y_ref = np.concatenate([rows[g][1] for g in _games() if g != test_game])
    means = np.stack([unit(x_ref[y_ref == c]).mean(0) for c in range(17)])
    x_test, y_test = rows[test_game]
    accuracy = (np.argmax(unit(x_test) @ means.T, axis=1) == y_test).mean()
    assert accuracy >= 0.8  # chance: 1/17

    # Rows far from every event carry no class code: their best class similarity is much lower.
    table = read_labels(root, test_game)
    quiet = [i for i in range(int(HALF_S)) if np.abs(table[table["half"] == 1]["time_s"] - (i + 0.5)).min() > 3]
    if quiet:
        background = unit(np.load(baidu_path(root, test_game, 1))[quiet].astype(np.float64))
        assert (background @ means.T).max() < np.sort(unit(x_test) @ means.T, axis=1)[:, -1].mean() / 2


def test_failed_encoding_leaves_no_complete_file(tmp_path):
    root = tmp_path / "data"
    argv = ["--root", str(root), "--splits-dir", str(tmp_path / "splits"), "--half-duration", "20"]
    argv += ["--train-games", "1", "--valid-games", "0", "--test-games", "0", "--ffmpeg", "false"]
    with pytest.raises(RuntimeError, match="failed"):
        demo.main(argv)
    assert not list(root.rglob("*.mkv")) and not list(root.rglob(".*.partial"))
    assert not (tmp_path / "splits").exists()


def test_bad_arguments_are_input_errors(tmp_path):
    base = ["--root", str(tmp_path / "d"), "--splits-dir", str(tmp_path / "s")]
    with pytest.raises(InputError, match="half_duration_s"):
        demo.main(base + ["--half-duration", "10"])
    with pytest.raises(InputError, match="--ffmpeg"):
        demo.main(base + ["--ffmpeg", str(tmp_path / "no-such-ffmpeg")])
    assert not (tmp_path / "d").exists()
