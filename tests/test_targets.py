"""Per-token spotting targets, token times and teacher bank rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from comedian.data.soccernet import SOCCERNET_V2_CLASSES, read_labels
from comedian.data.targets import bank_rows, frame_times_s, half_events, token_targets, token_times_s

C = 17


def targets(times, classes, start_s=100.0, n_frames=8, **kw):
    return token_targets(np.array(times, dtype=float), np.array(classes, dtype=np.int64), start_s, n_frames, C, **kw)


def test_shape_dtype_and_empty():
    y = targets([], [])
    assert y.shape == (4, C) and y.dtype == np.float32 and not y.any()
    with pytest.raises(ValueError):
        targets([], [], n_frames=7)
    with pytest.raises(ValueError):
        targets([101.0], [17])


def test_radius_is_inclusive_at_half_a_second():
    # Frames at 100.0, 100.5, ..., 103.5; tokens = (100.0, 100.5), (101.0, 101.5), ...
    # 104.0 is exactly 0.5 s after the last frame 103.5: the last token is positive.
    y = targets([104.0], [3])
    assert y[:, 3].tolist() == [0, 0, 0, 1]
    # 104.001 is 0.501 s away: nothing.
    assert not targets([104.001], [3]).any()
    # Float times that are not exact binary fractions, exactly 0.5 s away in decimal.
    y = token_targets(np.array([0.1 + 0.2 + 0.5 + 0.5]), np.array([0]), 0.3, 2, C)
    assert y[0, 0] == 1
    assert not token_targets(np.array([1.301]), np.array([0]), 0.3, 2, C).any()


def test_action_between_tokens_marks_both():
    # 101.75 is 0.25 s from 101.5 (token 1) and 102.0 (token 2), 0.75 s from 101.0 and 102.5.
    y = targets([101.75], [0])
    assert y[:, 0].tolist() == [0, 1, 1, 0]
    # 101.0 is within 0.5 s of 100.5 (token 0) and of 101.0 and 101.5 (token 1).
    assert targets([101.0], [0])[:, 0].tolist() == [1, 1, 0, 0]


def test_two_actions_of_one_class_in_one_token_and_several_classes():
    # Frames 100.0 100.5 | 101.0 101.5 | 102.0 102.5 | 103.0 103.5
    y = targets([101.1, 101.4, 102.9, 100.2], [5, 5, 9, 16])
    assert y[:, 5].tolist() == [0, 1, 0, 0]  # both hit only 101.0 / 101.5: one token, still 1
    assert y[:, 9].tolist() == [0, 0, 1, 1]  # 102.9: 102.5 (token 2) and 103.0 (token 3)
    assert y[:, 16].tolist() == [1, 0, 0, 0]  # 100.2: 100.0 and 100.5 (token 0)
    assert y.sum() == 1 + 2 + 1
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_action_before_the_window_reaches_into_it():
    assert targets([99.5], [2])[:, 2].tolist() == [1, 0, 0, 0]
    assert targets([99.6], [2])[:, 2].tolist() == [1, 0, 0, 0]
    assert not targets([99.49], [2]).any()
    assert not targets([10.0, 500.0], [2, 2]).any()


def test_other_rates_and_tubelet_sizes():
    # 4 fps, 4 frames per token: frames at 10.0, 10.25, ..., 11.75; tokens (10.0-10.75), (11.0-11.75).
    y = token_targets(np.array([10.9]), np.array([1]), 10.0, 8, C, fps=4.0, frames_per_token=4, radius_s=0.1)
    assert y[:, 1].tolist() == [0, 1]  # 11.0 is the only frame within 0.1 s
    y = token_targets(np.array([10.875]), np.array([1]), 10.0, 8, C, fps=4.0, frames_per_token=4, radius_s=0.1)
    assert y[:, 1].tolist() == [0, 0]


def test_token_times_are_the_mean_of_their_frames():
    times = token_times_s(100.0, 4)
    assert times.tolist() == [100.25, 101.25, 102.25, 103.25]
    frames = frame_times_s(100.0, 8)
    assert np.allclose(times, frames.reshape(4, 2).mean(axis=1))
    assert np.allclose(token_times_s(3.0, 2, fps=4.0, frames_per_token=4), [3.375, 4.375])


def test_bank_rows_floor_of_token_time_clipped():
    assert bank_rows(100.0, 4, n_rows=2700).tolist() == [100, 101, 102, 103]
    assert bank_rows(100.5, 4, n_rows=2700).tolist() == [100, 101, 102, 103]  # times 100.75, ...
    assert bank_rows(0.0, 3).tolist() == [0, 1, 2]
    assert bank_rows(101.0, 4, n_rows=103).tolist() == [101, 102, 102, 102]  # past the end: last row
    # A token time a hair below an integer (float error) takes that integer's row.
    assert bank_rows(np.nextafter(0.75, 0.0), 1).tolist() == [1]  # token time 1.0 - 1e-16
    assert bank_rows(0.74, 1).tolist() == [0]  # token time 0.99


def test_half_events_from_the_label_table(tmp_path):
    game = "england_epl/2014-2015/demo"
    (tmp_path / game).mkdir(parents=True)
    annotations = [
        {"gameTime": "1 - 0:31", "label": "Goal", "position": "31500", "team": "home", "visibility": "visible"},
        {"gameTime": "1 - 0:10", "label": "Foul", "position": "10000", "team": "away", "visibility": "not shown"},
        {"gameTime": "2 - 0:05", "label": "Corner", "position": "5000", "team": "home", "visibility": "visible"},
    ]
    (tmp_path / game / "Labels-v2.json").write_text(json.dumps({"annotations": annotations}))
    table = read_labels(tmp_path, game)
    times, classes = half_events(table, game, 1)
    assert times.tolist() == [10.0, 31.5]
    assert classes.tolist() == [SOCCERNET_V2_CLASSES.index("Foul"), SOCCERNET_V2_CLASSES.index("Goal")]
    y = token_targets(times, classes, 30.0, 4, C)
    # Frames 30.0 30.5 | 31.0 31.5: the goal at 31.5 hits 31.0 (0.5 s) and 31.5, both token 1.
    assert y[:, SOCCERNET_V2_CLASSES.index("Goal")].tolist() == [0, 1]
    assert y.sum() == 1
