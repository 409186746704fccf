"""Soft/hard NMS against plain-loop references, window conversion, and `comedian postprocess`."""

from __future__ import annotations

import json
import math
import zipfile

import h5py
import numpy as np
import pytest

from comedian.data.soccernet import SOCCERNET_V2_CLASSES, game_slug
from comedian.errors import InputError
from comedian.postprocess import (
    game_time,
    grid_step_s,
    hard_nms,
    main,
    soft_nms,
    spotting_predictions,
    window_steps,
)

# ---------------------------------------------------------------------------------------------
# Plain-loop references of the two rules (deliberately naive; the package must equal them)
# ---------------------------------------------------------------------------------------------


def reference_soft_nms(scores: np.ndarray, window: float, threshold: float) -> np.ndarray:
    """The rule as written: per class, take the max (first on ties), keep, remove, decay the rest."""
    n_steps, n_classes = scores.shape
    dtype = scores.dtype.type
    half = window / 2
    out = np.zeros_like(scores)
    for c in range(n_classes):
        current = scores[:, c].copy()
        remaining = list(range(n_steps))
        while remaining:
            best = remaining[0]
            for j in remaining:
                if current[j] > current[best]:
                    best = j
            if current[best] < threshold:
                break
            out[best, c] = current[best]
            remaining.remove(best)
            for j in remaining:
                d = abs(j - best)
                factor = 1.0 if half <= 0 else min(1.0, d / half)  # window 0: d / 0 -> no decay
                current[j] = current[j] * dtype(factor)
    return out


def reference_hard_nms(scores: np.ndarray, window: float, threshold: float) -> np.ndarray:
    n_steps, n_classes = scores.shape
    radius = math.floor(window / 2)
    out = np.zeros_like(scores)
    for c in range(n_classes):
        for t in range(n_steps):
            lo, hi = max(0, t - radius), min(n_steps, t + radius + 1)
            if scores[t, c] >= threshold and scores[t, c] >= max(scores[lo:hi, c]):
                out[t, c] = scores[t, c]
    return out


def random_case(rng: np.random.Generator):
    n_steps = int(rng.integers(0, 70))
    n_classes = int(rng.integers(1, 4))
    dtype = rng.choice([np.float32, np.float64])
    kind = rng.integers(4)
    if kind == 0:  # continuous
        scores = rng.random((n_steps, n_classes))
    elif kind == 1:  # few levels: ties, plateaus, values equal to the threshold
        scores = rng.integers(0, 5, (n_steps, n_classes)) / 4
    elif kind == 2:  # smooth bumps, like a network's output
        t = np.arange(n_steps)[:, None]
        scores = 0.02 * rng.random((n_steps, n_classes))
        for _ in range(int(rng.integers(1, 6))):
            centre, width = rng.uniform(0, n_steps + 1), rng.uniform(0.5, 6)
            scores = scores + rng.random(n_classes) * np.exp(-0.5 * ((t - centre) / width) ** 2)
    else:  # plateaus of random length
        scores = np.repeat(rng.random((n_steps, n_classes)), rng.integers(1, 6), axis=0)[:n_steps]
        scores = np.round(scores, 1)
    window = float(rng.choice([0, 1, 2, 2.5, 3, 4, 5, 6, 7, 8.5, 10, 11, 20, 200]))
    threshold = float(rng.choice([0.0, 0.001, 0.1, 0.25, 0.5, 0.75, 1.0]))
    return scores.astype(dtype), window, threshold


@pytest.mark.parametrize("seed", range(4))
def test_soft_nms_equals_reference(seed):
    rng = np.random.default_rng(seed)
    for _ in range(250):
        scores, window, threshold = random_case(rng)
        expected = reference_soft_nms(scores, window, threshold)
        got = soft_nms(scores, window, threshold)
        assert got.dtype == scores.dtype and got.shape == scores.shape
        assert np.array_equal(got, expected), (scores.tolist(), window, threshold)


@pytest.mark.parametrize("seed", range(4))
def test_hard_nms_equals_reference(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(250):
        scores, window, threshold = random_case(rng)
        got = hard_nms(scores, window, threshold)
        assert got.dtype == scores.dtype and got.shape == scores.shape
        assert np.array_equal(got, reference_hard_nms(scores, window, threshold)), (window, threshold)


def test_soft_nms_long_half_equals_reference():
    """A half-length input, where the fast path's incremental rounds are exercised."""
    rng = np.random.default_rng(7)
    t = np.arange(900)[:, None]
    scores = 0.01 * rng.random((900, 2))
    for centre in rng.uniform(0, 900, 40):
        scores = scores + rng.random(2) * np.exp(-0.5 * ((t - centre) / rng.uniform(1, 5)) ** 2)
    scores = scores.astype(np.float32)
    for window in (10, 13):
        assert np.array_equal(soft_nms(scores, window, 0.001), reference_soft_nms(scores, window, 0.001))
    ramp = np.linspace(0.01, 1.0, 300, dtype=np.float64)[:, None]  # one pick per round
    assert np.array_equal(soft_nms(ramp, 10, 0.001), reference_soft_nms(ramp, 10, 0.001))


def test_soft_nms_hand_made():
    scores = np.array([[0.9], [0.8], [0.7], [0.1], [0.95]])
    # window 4 -> half 2: d=1 halves a score, d>=2 leaves it. Picks: 0.95@4 (0.1 -> 0.05),
    # 0.9@0 (0.8 -> 0.4), 0.7@2 (0.4 -> 0.2, 0.05 -> 0.025), 0.2@1, then 0.025 < 0.1 stops.
    expected = np.array([[0.9], [0.2], [0.7], [0.0], [0.95]])
    assert np.array_equal(soft_nms(scores, 4, 0.1), expected)
    # ties: the first index wins; threshold is inclusive
    assert soft_nms(np.array([[0.5], [0.5]]), 4, 0.25)[:, 0].tolist() == [0.5, 0.25]
    assert soft_nms(np.array([[0.5], [0.5]]), 4, 0.3)[:, 0].tolist() == [0.5, 0.0]
    # window 3 -> half 1.5: neighbours decay by 2/3 (computed in float64, rounded to the dtype)
    got = soft_nms(np.array([[0.6], [1.0], [0.6]], dtype=np.float32), 3, 0.0)[:, 0]
    assert got[1] == 1.0 and got[0] == got[2] == np.float32(0.6) * np.float32(2 / 3)
    # classes are independent
    two = np.array([[1.0, 0.2], [0.9, 0.3]])
    assert np.array_equal(soft_nms(two, 4, 0.0), np.array([[1.0, 0.1], [0.45, 0.3]]))


@pytest.mark.parametrize("window", [0, 0.5, 1, 2])
def test_small_windows_suppress_nothing(window):
    """window / 2 <= 1: every other step is >= window / 2 away (window 0: d / 0 is no decay)."""
    scores = np.array([[0.2], [0.9], [0.9], [0.05]], dtype=np.float32)
    above = np.where(scores >= 0.1, scores, 0)
    assert np.array_equal(soft_nms(scores, window, 0.1), above)
    # hard: radius floor(window / 2) is 0 below window 2; at 2 it is 1 and 0.2 loses to 0.9
    expected = above if window < 2 else np.where(scores >= 0.9, scores, 0)
    assert np.array_equal(hard_nms(scores, window, 0.1), expected)


def test_hard_nms_hand_made():
    scores = np.array([[0.1], [0.7], [0.7], [0.3], [0.2], [0.25], [0.6]])
    # radius 1: plateau ties both kept; 0.25 loses to 0.6; the last step is kept (window cut at the edge)
    assert hard_nms(scores, 2, 0.0)[:, 0].tolist() == [0, 0.7, 0.7, 0, 0, 0, 0.6]
    assert hard_nms(scores, 3, 0.7)[:, 0].tolist() == [0, 0.7, 0.7, 0, 0, 0, 0]  # inclusive threshold
    # radius 3 (window 7): 0.6 at step 6 sees 0.3..0.6, keeps
    assert hard_nms(scores, 7, 0.5)[:, 0].tolist() == [0, 0.7, 0.7, 0, 0, 0, 0.6]
    assert hard_nms(scores, 11, 0.5)[:, 0].tolist() == [0, 0.7, 0.7, 0, 0, 0, 0]


def test_negative_scores_with_positive_threshold():
    scores = np.array([[-0.5], [0.9], [-2.0], [0.4]])
    assert np.array_equal(soft_nms(scores, 4, 0.1), reference_soft_nms(scores, 4, 0.1))
    with pytest.raises(ValueError, match="negative"):
        soft_nms(scores, 4, 0.0)


@pytest.mark.parametrize("nms", [soft_nms, hard_nms])
def test_empty_and_bad_arrays(nms):
    for dtype in (np.float32, np.float64):
        empty = nms(np.zeros((0, 17), dtype=dtype), 10, 0.5)
        assert empty.shape == (0, 17) and empty.dtype == dtype
    assert nms(np.full((1, 3), 0.5), 10, 0.5).tolist() == [[0.5] * 3]
    with pytest.raises(ValueError, match="NaN"):
        nms(np.array([[0.1], [np.nan]]), 4, 0.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        nms(np.array([[0.1], [np.inf]]), 4, 0.0)
    with pytest.raises(ValueError, match=r"\(T, C\)"):
        nms(np.zeros(5), 4, 0.0)
    with pytest.raises(TypeError):
        nms(np.zeros((5, 2), dtype=np.int64), 4, 0.0)
    for window in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="window"):
            nms(np.zeros((5, 2)), window, 0.0)
    with pytest.raises(ValueError, match="threshold"):
        nms(np.zeros((5, 2)), 4, float("nan"))


# ---------------------------------------------------------------------------------------------
# Seconds -> steps, prediction entries
# ---------------------------------------------------------------------------------------------


def test_window_in_seconds_to_steps():
    assert window_steps(10.0, 1.0) == 10
    assert window_steps(10.0, 0.5) == 20
    assert window_steps(5.0, 2.0) == 3  # 2.5 steps: halves round up
    assert window_steps(4.9, 2.0) == 2
    third = grid_step_s(np.arange(100) / 3)  # spacing not exactly representable
    assert window_steps(10.0, third) == 30
    assert grid_step_s(np.arange(5, dtype=np.float32) + np.float32(0.5)) == 1.0
    with pytest.raises(ValueError, match="regular"):
        grid_step_s(np.array([0.0, 1.0, 2.5]))
    with pytest.raises(ValueError, match="regular"):
        grid_step_s(np.array([2.0, 1.0, 0.0]))


def test_spotting_predictions_uses_seconds():
    rng = np.random.default_rng(3)
    scores = rng.random((40, 3)).astype(np.float32)
    classes = ["A", "B", "C"]
    # the same 5-s window is 10 steps on a 0.5-s grid and 5 steps on a 1-s grid
    for step, steps in ((0.5, 10), (1.0, 5)):
        times = 0.25 + step * np.arange(40)
        predictions = list(spotting_predictions(scores, times, classes, "soft", 5.0, 0.2, half=2))
        kept = soft_nms(scores, steps, 0.2)
        rows, cols = np.nonzero(kept)
        assert [(p["label"], p["position"]) for p in predictions] == [
            (classes[c], str(round(1000 * times[r]))) for r, c in zip(rows, cols)
        ]
        assert [np.float32(p["confidence"]) for p in predictions] == kept[rows, cols].tolist()
        assert {p["half"] for p in predictions} == {"2"}
    with pytest.raises(ValueError, match="shapes"):
        spotting_predictions(scores, np.arange(39.0), classes, "hard", 5.0, 0.2, half=1)
    with pytest.raises(ValueError, match="nms"):
        spotting_predictions(scores, np.arange(40.0), classes, "median", 5.0, 0.2, half=1)


def test_game_time_format():
    assert game_time(1, 31500) == "1 - 0:31"
    assert game_time(1, 999) == "1 - 0:00"
    assert game_time(2, 2707000) == "2 - 45:07"
    assert game_time(2, 3 * 3600 * 1000) == "2 - 180:00"


# ---------------------------------------------------------------------------------------------
# The stage, end to end on a small HDF5 file
# ---------------------------------------------------------------------------------------------

GAMES = (
    "england_epl/2014-2015/2015-05-17 - 18-00 Manchester United 1 - 1 Arsenal",
    "spain_laliga/2016-2017/2017-04-02 - 21-45 Granada CF 1 - 4 Real Madrid",
)


def make_scores_file(path, games=GAMES, steps=120, step_s=1.0, classes=SOCCERNET_V2_CLASSES, seed=0):
    rng = np.random.default_rng(seed)
    raw = {}
    with h5py.File(path, "w") as handle:
        handle.attrs["classes"] = json.dumps(list(classes))
        for game in games:
            group = handle.create_group(game_slug(game))
            group.attrs["game"] = game
            for half in ("1", "2"):
                scores = (rng.random((steps, len(classes))) ** 4).astype(np.float32)
                times = step_s / 2 + step_s * np.arange(steps, dtype=np.float64)
                group.create_dataset(f"{half}/scores", data=scores)
                group.create_dataset(f"{half}/times_s", data=times)
                raw[(game, int(half))] = (scores, times)
    return raw


def test_cli_end_to_end(tmp_path):
    raw = make_scores_file(tmp_path / "raw.h5")
    games_file = tmp_path / "games.txt"
    games_file.write_text("\n".join(reversed(GAMES)) + "\n")
    out, archive = tmp_path / "results", tmp_path / "submission.zip"
    argv = ["--scores", str(tmp_path / "raw.h5"), "--output", str(out), "--nms", "soft",
            "--window-s", "10", "--threshold", "0.05", "--zip", str(archive), "--games", str(games_file)]
    assert main(argv) == 0
    for game in GAMES:
        document = json.loads((out / game / "results_spotting.json").read_text())
        assert document["UrlLocal"] == game
        predictions = document["predictions"]
        assert predictions and set(predictions[0]) == {"gameTime", "label", "position", "half", "confidence"}
        assert all(isinstance(v, str) for p in predictions for v in p.values())
        for half in (1, 2):
            scores, times = raw[(game, half)]
            kept = soft_nms(scores, 10, 0.05)  # 10 s on a 1-s grid
            mine = [p for p in predictions if p["half"] == str(half)]
            assert len(mine) == np.count_nonzero(kept)
            for p in mine:
                row = int(p["position"]) // 1000  # rows sit at k + 0.5 s
                assert p["position"] == str(1000 * row + 500)
                assert p["gameTime"] == f"{half} - {row // 60}:{row % 60:02d}"
                column = SOCCERNET_V2_CLASSES.index(p["label"])
                assert np.float32(p["confidence"]) == kept[row, column] > 0
    with zipfile.ZipFile(archive) as z:
        names = sorted(z.namelist())
        assert names == sorted(f"{game}/results_spotting.json" for game in GAMES)
        for name in names:
            assert z.read(name) == (out / name).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["games.txt", "raw.h5", "results", "submission.zip"]

    # a second run (hard NMS) replaces the folder, and the zip is byte-identical for equal input
    first_zip = archive.read_bytes()
    (out / "stale.txt").write_text("old")
    assert main([*argv[:5], "hard", *argv[6:]]) == 0
    assert not (out / "stale.txt").exists()
    hard = json.loads((out / GAMES[0] / "results_spotting.json").read_text())["predictions"]
    assert len(hard) == sum(np.count_nonzero(hard_nms(raw[(GAMES[0], h)][0], 10, 0.05)) for h in (1, 2))
    assert main(argv) == 0 and archive.read_bytes() == first_zip


def test_results_are_read_by_the_official_devkit(tmp_path):
    action_spotting = pytest.importorskip("SoccerNet.Evaluation.ActionSpotting")
    utils = pytest.importorskip("SoccerNet.Evaluation.utils")
    raw = make_scores_file(tmp_path / "raw.h5", games=GAMES[:1], step_s=0.5)
    main(["--scores", str(tmp_path / "raw.h5"), "--output", str(tmp_path / "out"), "--nms", "hard",
          "--window-s", "4", "--threshold", "0.3"])
    document = json.loads((tmp_path / "out" / GAMES[0] / "results_spotting.json").read_text())
    half1, half2 = action_spotting.predictions2vector(document, EVENT_DICTIONARY=utils.EVENT_DICTIONARY_V2)
    for half, vector in ((1, half1), (2, half2)):
        scores, times = raw[(GAMES[0], half)]
        kept = hard_nms(scores, 8, 0.3)  # 4 s on a 0.5-s grid
        rows, cols = np.nonzero(kept)
        frames = (2 * times[rows]).astype(int)  # the scorer's 2-fps frame of each row
        assert np.array_equal(vector[frames, cols].astype(np.float32), kept[rows, cols])
        assert np.count_nonzero(vector != -1) == rows.size


def run_bad(tmp_path, *extra):
    out = tmp_path / "results"
    argv = ["--scores", str(tmp_path / "raw.h5"), "--output", str(out), "--nms", "soft",
            "--window-s", "10", "--threshold", "0.05", "--zip", str(tmp_path / "s.zip"), *extra]
    with pytest.raises(InputError) as err:
        main(argv)
    assert not out.exists() and not (tmp_path / "s.zip").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers
    return str(err.value)


def test_bad_input_missing_dataset(tmp_path):
    make_scores_file(tmp_path / "raw.h5")
    with h5py.File(tmp_path / "raw.h5", "a") as handle:
        del handle[f"{game_slug(GAMES[1])}/2/times_s"]
    message = run_bad(tmp_path)
    assert "raw.h5" in message and f"/{game_slug(GAMES[1])}/2/times_s" in message


def test_bad_input_shapes_and_values(tmp_path):
    make_scores_file(tmp_path / "raw.h5")
    slug = game_slug(GAMES[0])
    with h5py.File(tmp_path / "raw.h5", "a") as handle:
        times = handle[f"{slug}/1/times_s"][()]
        del handle[f"{slug}/1/times_s"]
        handle[f"{slug}/1/times_s"] = times[:-1]
    assert "times_s" in run_bad(tmp_path) and "shape" in run_bad(tmp_path)

    make_scores_file(tmp_path / "raw.h5", classes=SOCCERNET_V2_CLASSES[:5])
    with h5py.File(tmp_path / "raw.h5", "a") as handle:
        handle.attrs["classes"] = json.dumps(list(SOCCERNET_V2_CLASSES))
    assert "'classes'" in run_bad(tmp_path)

    make_scores_file(tmp_path / "raw.h5")
    with h5py.File(tmp_path / "raw.h5", "a") as handle:
        handle[f"{slug}/2/scores"][7, 3] = np.nan
    message = run_bad(tmp_path)
    assert f"/{slug}/2/scores" in message and "NaN" in message and "row 7" in message

    make_scores_file(tmp_path / "raw.h5")
    with h5py.File(tmp_path / "raw.h5", "a") as handle:
        handle[f"{slug}/2/times_s"][50] += 0.3
    assert "regular" in run_bad(tmp_path)

    make_scores_file(tmp_path / "raw.h5")
    with h5py.File(tmp_path / "raw.h5", "a") as handle:
        del handle.attrs["classes"]
    assert "'classes'" in run_bad(tmp_path)

    make_scores_file(tmp_path / "raw.h5", games=["../../etc/x"])
    assert "'game'" in run_bad(tmp_path)


def test_bad_input_games_list(tmp_path):
    make_scores_file(tmp_path / "raw.h5")
    games_file = tmp_path / "games.txt"
    other = "italy_serie-a/2016-2017/2016-08-20 - 18-00 Juventus 2 - 1 Fiorentina"
    games_file.write_text(f"{GAMES[0]}\n{other}\n")
    message = run_bad(tmp_path, "--games", str(games_file))
    assert other in message and GAMES[1] in message


def test_bad_arguments(tmp_path):
    make_scores_file(tmp_path / "raw.h5")
    assert "window" in run_bad(tmp_path, "--window-s", "-1")
    assert "threshold" in run_bad(tmp_path, "--threshold", "nan")
    with pytest.raises(SystemExit):
        main(["--scores", str(tmp_path / "raw.h5"), "--output", str(tmp_path / "o"), "--nms", "median",
              "--window-s", "10", "--threshold", "0.1"])
    (tmp_path / "raw.h5").write_text("not hdf5")
    assert "cannot open" in run_bad(tmp_path)
