"""comedian.scoring against the official SoccerNet scorer itself, field by field (to 1e-9)."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comedian import scoring
from comedian.data.soccernet import SOCCERNET_V2_CLASSES, read_labels
from comedian.errors import InputError

try:
    import SoccerNet.Evaluation.ActionSpotting as official
    from SoccerNet.Evaluation.utils import EVENT_DICTIONARY_V2
except ImportError:  # the comparisons skip; the tests of our own behaviour still run
    official = EVENT_DICTIONARY_V2 = None
needs_official = pytest.mark.skipif(
    official is None, reason="the official scorer is missing: pip install --no-deps SoccerNet==0.2.0 tqdm"
)

CLASSES = list(SOCCERNET_V2_CLASSES)
HALF_MS = 45 * 60 * 1000


# ----------------------------------------------------------------------------------------------
# Writing games and running both scorers
# ----------------------------------------------------------------------------------------------


def game_time(half: int, ms: int) -> str:
    seconds = max(ms, 0) // 1000
    return f"{half} - {seconds // 60:02d}:{seconds % 60:02d}"


def write_game(root: Path, game: str, labels: list[dict], predictions: list[dict] | None) -> None:
    (root / "labels" / game).mkdir(parents=True, exist_ok=True)
    (root / "labels" / game / "Labels-v2.json").write_text(json.dumps({"UrlLocal": game, "annotations": labels}))
    if predictions is not None:
        (root / "preds" / game).mkdir(parents=True, exist_ok=True)
        doc = {"UrlLocal": game, "predictions": predictions}
        (root / "preds" / game / "results_spotting.json").write_text(json.dumps(doc))


def run_official(root: Path, metric: str, classes: list[str] = CLASSES) -> dict:
    """The official scorer on ``root/labels`` and ``root/preds`` (its cost: ~0.01-0.05 s per class and
    tolerance, so most cases here use a few classes through its ``EVENT_DICTIONARY``)."""
    dictionary = EVENT_DICTIONARY_V2 if classes == CLASSES else {name: i for i, name in enumerate(classes)}
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return official.evaluate(
            SoccerNet_path=str(root / "labels"),
            Predictions_path=str(root / "preds"),
            prediction_file="results_spotting.json",
            split=None,
            version=2,
            framerate=2,
            metric=metric,
            label_files="Labels-v2.json",
            dataset=None,
            EVENT_DICTIONARY=dictionary,
        )


def run_ours(root: Path, metric: str, classes: list[str] = CLASSES) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scoring.score_files(root / "labels", root / "preds", metric=metric, classes=classes)


def assert_equal_results(ours: dict, theirs: dict, names: list[str] | None = None) -> None:
    """Every official field equal to 1e-9; ``names`` name the classes in a failure message."""
    assert list(ours) == list(scoring.RESULT_KEYS)
    for key in scoring.RESULT_KEYS:
        expected = np.asarray(theirs[key], dtype=np.float64)
        got = np.asarray(ours[key], dtype=np.float64)
        assert got.shape == expected.shape, key
        if names is not None and got.ndim == 1:
            off = np.flatnonzero(np.abs(got - expected) > 1e-9)
            wrong = [f"{names[c]}: {got[c]!r} != {expected[c]!r}" for c in off]
            assert not wrong, f"{key}: " + "; ".join(wrong)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9, err_msg=key)


def compare(root: Path, metrics, classes: list[str] = CLASSES, names: list[str] | None = None) -> None:
    for metric in metrics:
        assert_equal_results(run_ours(root, metric, classes), run_official(root, metric, classes), names)


# ----------------------------------------------------------------------------------------------
# Random games with every quirk in them
# ----------------------------------------------------------------------------------------------


def random_labels(rng: np.random.Generator, half: int, n: int, classes: list[str]) -> list[dict]:
    out = []
    for _ in range(n):
        ms = int(rng.integers(0, HALF_MS))
        if rng.random() < 0.05:
            ms = int(rng.integers(120 * 60 * 1000 - 2000, 130 * 60 * 1000))  # past the 2-hour grid: clipped
        label = {"gameTime": game_time(half, ms), "label": str(rng.choice(classes)), "position": str(ms),
                 "team": "home", "visibility": "not shown" if rng.random() < 0.15 else "visible"}
        if rng.random() < 0.1:
            del label["position"]  # the official falls back to gameTime
        if rng.random() < 0.05:
            del label["visibility"]  # visible by default
        out.append(label)
        if rng.random() < 0.1:  # a second label of the class on the same frame (same 500-ms bin)
            twin = dict(label, position=str(ms - ms % 500 + int(rng.integers(0, 500))))
            twin["visibility"] = str(rng.choice(["visible", "not shown"]))
            out.append(twin)
    if rng.random() < 0.3:
        out.append({"gameTime": game_time(half, 1000), "label": "Drop ball", "position": "1000"})
    return out


def random_predictions(
    rng: np.random.Generator, half: int, labels: list[dict], classes: list[str], dense: bool
) -> list[dict]:
    out = []
    n = int(rng.integers(100, 400)) if dense else int(rng.integers(0, 30))
    for _ in range(n):
        ms = int(rng.integers(0, HALF_MS + 20 * 60 * 1000))  # some beyond the end of a 45-min half
        name = str(rng.choice(classes if rng.random() < 0.9 else CLASSES))  # some outside the scored classes
        out.append({"label": name, "position": ms})
    for label in labels:  # predictions near labels, some inside every tolerance
        if rng.random() < 0.7:
            ms = int(label.get("position", 0)) + int(rng.normal(0, 3000))
            out.append({"label": label["label"], "position": max(ms, 0)})
    for item in out:
        conf = float(rng.random())
        roll = rng.random()
        if roll < 0.3:
            conf = round(conf, 1)  # ties in confidence
        elif roll < 0.35:
            conf = -float(rng.random())  # ignored
        elif roll < 0.37:
            conf = 0.0
        elif roll < 0.39:
            conf = 1.0
        item["confidence"] = str(conf) if rng.random() < 0.5 else conf
        item["half"] = str(half) if rng.random() < 0.5 else half
        if rng.random() < 0.5:
            item["position"] = str(item["position"])
        item["gameTime"] = game_time(half, int(item["position"]))
    rng.shuffle(out)
    for k in range(0, len(out) - 1, 7):  # collisions: a second prediction on the frame of another
        if rng.random() < 0.3:
            twin = dict(out[k], confidence=float(rng.random() * 2 - 0.5))
            out.insert(k + 1 + int(rng.integers(0, 3)), twin)
    return out


def random_case(root: Path, seed: int, n_games: int = 3, n_classes: int = 17) -> list[str]:
    """Random games under ``root``; returns the scored classes (a random subset of ``n_classes``)."""
    rng = np.random.default_rng(seed)
    classes = CLASSES if n_classes == 17 else [CLASSES[i] for i in sorted(rng.choice(17, n_classes, replace=False))]
    present = [c for c in classes if rng.random() < 0.7] or classes[:1]  # the others have no labels at all
    for g in range(n_games):
        labels, predictions = [], []
        dense = bool(rng.random() < 0.5)
        for half in (1, 2):
            half_labels = random_labels(rng, half, int(rng.integers(0, 40)), present)
            labels += half_labels
            predictions += random_predictions(rng, half, half_labels, classes, dense)
        rng.shuffle(labels)
        write_game(root, f"league/2020-2021/game {seed}-{g}", labels, predictions)
    return classes


@pytest.mark.parametrize("seed", range(10))
@needs_official
def test_random_cases_equal_official(tmp_path, seed):
    classes = random_case(tmp_path, seed, n_classes=4)
    compare(tmp_path, ("tight", "at2", "loose") if seed % 4 == 0 else ("tight", "at2"), classes)


@needs_official
def test_random_case_all_classes_equal_official(tmp_path):
    random_case(tmp_path, 99, n_games=4)
    compare(tmp_path, ("tight",))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 124))
@needs_official
def test_random_sweep_equal_official(tmp_path, seed):
    if seed % 2:
        classes = random_case(tmp_path, seed, n_games=1 + seed % 6, n_classes=5)
        compare(tmp_path, ("loose", "tight", "at2", "at3", "at5"), classes)
    else:
        random_case(tmp_path, seed, n_games=1 + seed % 6)
        compare(tmp_path, ("tight", "at1", "at4"))


# ----------------------------------------------------------------------------------------------
# Crafted edge cases
# ----------------------------------------------------------------------------------------------


def lab(half, ms, label, visibility="visible"):
    return {"gameTime": game_time(half, ms), "label": label, "position": str(ms), "visibility": visibility}


def pred(half, ms, conf, label):
    return {"gameTime": game_time(half, ms), "label": label, "position": str(ms), "half": str(half),
            "confidence": str(conf)}


#: name -> (labels, predictions) of one game, given the one class the case uses.
CRAFTED = {
    "tie_takes_earliest": lambda c: (
        [lab(1, 10_000, c), lab(1, 11_000, c)], [pred(1, 9_500, 0.5, c), pred(1, 10_500, 0.5, c)]
    ),
    "greedy_first_label_takes_best": lambda c: (
        [lab(1, 10_000, c), lab(1, 11_000, c)], [pred(1, 11_000, 0.9, c), pred(1, 9_000, 0.3, c)]
    ),
    "greedy_steals": lambda c: (
        [lab(1, 10_000, c), lab(1, 12_000, c)], [pred(1, 11_000, 0.9, c), pred(1, 12_500, 0.3, c)]
    ),
    "later_negative_hides": lambda c: ([lab(1, 10_000, c)], [pred(1, 10_000, 0.9, c), pred(1, 10_400, -0.2, c)]),
    "later_label_wins": lambda c: (
        [lab(1, 10_000, c), lab(1, 10_300, c, "not shown"), lab(2, 5_000, c, "not shown"), lab(2, 5_200, c, "")],
        [pred(1, 10_000, 0.9, c), pred(1, 60_000, 0.4, c), pred(2, 5_000, 0.3, c)],
    ),
    "adjacent_labels_midpoint": lambda c: (
        [lab(1, 10_000, c), lab(1, 10_500, c, "not shown"), lab(1, 20_000, c)],
        [pred(1, 10_000, 0.8, c), pred(1, 15_000, 0.6, c), pred(1, 15_500, 0.7, c)],
    ),
    "clip_last_frame": lambda c: (
        [lab(2, 7_199_900, c), lab(2, 9_000_000, c, "not shown"), lab(1, 7_000_000, c)],
        [pred(2, 7_300_000, 0.7, c), pred(2, 7_199_500, 0.2, c), pred(1, 7_400_000, 0.5, c)],
    ),
    "negative_position_wraps": lambda c: (
        [lab(1, 7_199_500, c), lab(2, -600, c)], [pred(1, -700, 0.9, c), pred(2, 7_199_999, 0.8, c)]
    ),
    "float_and_int_positions": lambda c: (
        [lab(1, 11_000, c)],
        [
            {"label": c, "position": 10_999.9, "half": 1, "confidence": 0.4},
            {"label": c, "position": 13_000, "half": 1.0, "confidence": 0.6},
        ],
    ),
    "no_labels_in_class": lambda c: ([], [pred(1, 1_000, 0.5, c), pred(2, 3_000, 0.9, c)]),
    "no_predictions": lambda c: ([lab(1, 1_000, c), lab(2, 2_000, c, "not shown")], []),
    "zero_and_one_confidence": lambda c: (
        [lab(1, 5_000, c), lab(1, 50_000, c)], [pred(1, 5_000, 0.0, c), pred(1, 50_000, 1.0, c)]
    ),
    "other_halves_and_unknown_class": lambda c: (
        [lab(1, 5_000, c), {**lab(1, 6_000, c), "gameTime": "3 - 00:06"}, lab(1, 7_000, "Drop ball")],
        [pred(1, 5_000, 0.5, c), pred(3, 5_000, 0.9, c), pred(1, 7_000, 0.9, "Drop ball")],
    ),
    "gametime_fallback": lambda c: (
        [{"gameTime": "1 - 16:39", "label": c, "visibility": "visible"}, {"gameTime": "2 - 5:07", "label": c}],
        [pred(1, 999_000, 0.6, c), pred(1, 999_900, 0.7, c), pred(2, 307_000, 0.1, c)],
    ),
    "threshold_boundaries": lambda c: (
        [lab(1, 1_000 * k, c) for k in range(1, 30)],
        [pred(1, 1_000 * k, float(np.linspace(0, 1, 200)[k * 6]), c) for k in range(1, 30)],
    ),
}


@needs_official
def test_crafted_cases_equal_official(tmp_path):
    """Each case is one game using its own class, so each per-class value checks one case."""
    names = sorted(CRAFTED)
    for c, name in enumerate(names):
        write_game(tmp_path, f"crafted/cases/{name}", *CRAFTED[name](CLASSES[c]))
    classes = CLASSES[: len(names)]
    compare(tmp_path, ("tight", "at1", "at3"), classes, names)


def test_crafted_values_are_what_the_rules_say(tmp_path):
    """Hand-checked numbers, independent of the official code."""
    write_game(tmp_path, "l/s/g", *CRAFTED["greedy_first_label_takes_best"]("Goal"))
    result = run_ours(tmp_path, "at5")  # +-2.5 s: the label at 10 s takes 0.9 (11 s), the one at 11 s 0.3 (9 s)
    assert result["a_mAP_per_class"][2] == pytest.approx(1.0)
    assert result["a_mAP"] == pytest.approx(1 / 17)
    result = run_ours(tmp_path, "at2")  # +-1 s: the label at 10 s takes 0.9; 11 s has nothing left
    # thresholds <= 0.3: P = 1/2, R = 1/2; (0.3, 0.9]: P = 1, R = 1/2 -> AP = (6 levels x 1) / 11
    assert result["a_mAP_per_class"][2] == pytest.approx(6 / 11)
    # tight: 6/11 at 1, 2, 3 s (at 1 s the label at 11 s takes 0.9 itself; 9 s is too far), 1 at 4, 5 s
    result = run_ours(tmp_path, "tight")
    assert result["a_mAP_per_class"][2] == pytest.approx((6 / 11 + 6 / 11 + (6 / 11 + 1) / 2 + 1) / 4)
    assert result["a_mAP_visible"] == pytest.approx(result["a_mAP"])
    assert result["a_mAP_unshown"] == 0.0


def test_in_memory_tables_equal_files(tmp_path):
    random_case(tmp_path, 7, n_games=2)
    games = scoring.find_games(tmp_path / "labels")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels, predictions = scoring.read_tables(tmp_path / "labels", tmp_path / "preds", games, CLASSES)
        expected = scoring.score_files(tmp_path / "labels", tmp_path / "preds", games, metric="tight")
    assert scoring.score(labels, predictions, metric="tight") == expected
    # game names instead of indices, times in seconds (= ms / 1000), read_labels' table for labels
    by_name = dict(predictions, game=np.array(games)[predictions["game"]], time_s=predictions["position_ms"] / 1000)
    del by_name["position_ms"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        label_table = pd.concat([read_labels(tmp_path / "labels", g) for g in games])
    assert scoring.score(label_table, by_name, metric="tight") == expected
    curves = scoring.precision_recall_curves(labels, predictions, metric="tight")
    assert curves["precision"].shape == (5, 200, 17) and curves["recall_unshown"].shape == (5, 200, 17)
    assert np.all(np.diff(curves["recall"], axis=1) <= 0)  # recall falls as the threshold rises
    assert curves["ap"].mean(axis=1).tolist() != [0.0] * 5


def test_games_argument_restricts_and_extra_games_count(tmp_path):
    labels = {"game": ["a", "a"], "half": [1, 2], "class_index": [2, 2], "position_ms": [10_000, 20_000]}
    preds = {"game": ["a", "a", "b"], "half": [1, 2, 1], "class_index": [2, 2, 2],
             "position_ms": [10_000, 20_000, 5_000], "confidence": [0.9, 0.8, 0.95]}
    only_a = scoring.score(labels, preds, metric="at1", games=["a"])
    assert only_a["a_mAP_per_class"][2] == pytest.approx(1.0)
    with_b = scoring.score(labels, preds, metric="at1")  # b's prediction is a false positive
    assert with_b["a_mAP_per_class"][2] < 1.0


# ----------------------------------------------------------------------------------------------
# Bad input and the CLI
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"label": "Goal", "half": "1", "confidence": "0.5"}, "predictions[1]: field 'position' is missing"),
        ({"label": "Goal", "position": "1000", "confidence": "0.5"}, "predictions[1]: field 'half' is missing"),
        ({"label": "Goal", "position": "1000", "half": 1}, "predictions[1]: field 'confidence' is missing"),
        ({"label": "Goal", "position": "1.5", "half": 1, "confidence": 0.5}, "predictions[1]: field 'position'"),
        ({"label": "Goal", "position": "10", "half": "x", "confidence": 0.5}, "predictions[1]: field 'half'"),
        ({"label": "Goal", "position": "10", "half": 1, "confidence": "high"}, "predictions[1]: field 'confidence'"),
        ({"label": "Goal", "position": "10", "half": 1, "confidence": None}, "predictions[1]: field 'confidence'"),
        ({"position": "10", "half": 1, "confidence": 0.5}, "predictions[1]: field 'label' is missing"),
        ("not an object", "predictions[1] is not an object"),
    ],
)
def test_bad_prediction_entries(tmp_path, entry, message):
    write_game(tmp_path, "l/s/g", [lab(1, 1000, "Goal")], [pred(1, 1000, 0.5, "Goal"), entry])
    with pytest.raises(InputError, match=r"results_spotting\.json: " + message.replace("[", r"\[").replace("]", r"\]")):
        run_ours(tmp_path, "tight")


def test_bad_files(tmp_path):
    write_game(tmp_path, "l/s/g", [lab(1, 1000, "Goal")], [])
    path = tmp_path / "preds" / "l/s/g" / "results_spotting.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="results_spotting.json: not valid JSON"):
        run_ours(tmp_path, "tight")
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(InputError, match="field 'predictions' is missing"):
        run_ours(tmp_path, "tight")
    (tmp_path / "labels" / "l/s/g" / "Labels-v2.json").write_text(json.dumps({"annotations": [{"label": "Goal"}]}))
    with pytest.raises(InputError, match=r"Labels-v2.json: annotations\[0\]: field 'gameTime' is missing"):
        run_ours(tmp_path, "tight")


@needs_official
def test_documents_outside_the_fast_parser_equal_official(tmp_path):
    """What msgspec rejects (NaN / Infinity literals, a lone surrogate, huge integers, a later
    duplicate key) is read by the stdlib path, which the official reads the same way."""
    predictions = [pred(1, 1000, 0.5, "Goal"), pred(1, 5000, 0.7, "Goal"), pred(2, 3000, 0.4, "Goal")]
    text = json.dumps({"UrlLocal": "g", "predictions": predictions})
    text = text.replace('"confidence": "0.7"', '"confidence": NaN', 1)
    text = text.replace('"confidence": "0.4"', '"confidence": Infinity, "confidence": 0.9', 1)
    text = text.replace('"UrlLocal": "g"', '"UrlLocal": "\\ud800", "n": 1%s' % ("0" * 400))
    write_game(tmp_path, "l/s/g", [lab(1, 1000, "Goal"), lab(2, 3000, "Goal")], [])
    (tmp_path / "preds" / "l/s/g" / "results_spotting.json").write_text(text)
    assert scoring._fast_prediction_columns(text.encode()) is None
    compare(tmp_path, ["tight", "at1"], ["Goal"], ["Goal"])


def test_fast_parser_reads_plain_integers_and_lax_floats_as_the_official(tmp_path):
    """The fast path's own conversions: integers quoted or not, later duplicate keys winning,
    confidences as numbers or strings (incl. "nan"/"Infinity", which ``float()`` takes), a
    confidence "-0" read as +0.0 (equal to the official's -0.0)."""
    predictions = [
        {**pred(1, 1000, 0.5, "Goal"), "position": 1000, "half": 1, "confidence": 0.5},
        {**pred(1, 5000, 0.7, "Goal"), "confidence": "nan"},
        {**pred(1, 7000, 0.7, "Goal"), "confidence": "-0"},
        {**pred(2, 3000, 0.4, "Goal"), "confidence": "Infinity"},
        {**pred(2, 8000, 0.6, "Goal"), "confidence": "1e-3"},
        {**pred(2, 9000, 0.2, "Goal"), "position": "-5"},
    ]
    text = json.dumps({"UrlLocal": "g", "predictions": predictions})
    text = text.replace('"position": 1000, ', '"position": "77", "position": 1000, ', 1)
    write_game(tmp_path, "l/s/g", [lab(1, 1000, "Goal"), lab(2, 3000, "Goal")], [])
    (tmp_path / "preds" / "l/s/g" / "results_spotting.json").write_text(text)
    columns = scoring._fast_prediction_columns(text.encode())
    assert columns is not None
    position, half, confidence, _ = columns
    assert position == [1000, 5000, 7000, 3000, 8000, -5] and half == [1, 1, 1, 2, 2, 2]
    assert np.isnan(confidence[1]) and confidence[2:5] == [0.0, float("inf"), 1e-3]
    compare(tmp_path, ["tight", "at1"], ["Goal"], ["Goal"])


@pytest.mark.parametrize("value", ['"1e3"', '"1.0"', '"1E3"', '" 5"', '"+5"', '"007"', '"5_000"', "1.5", "true"])
@pytest.mark.parametrize("field", ["position", "half"])
def test_integers_that_lax_parsing_would_bend_go_to_the_stdlib_path(tmp_path, field, value):
    """msgspec's lax int takes "1e3" and "1.0", which the official's ``int()`` refuses, and refuses
    what ``int()`` takes (" 5", "+5", "007", 1.5): all of them are read by the stdlib path."""
    entry = {**pred(1, 1000, 0.5, "Goal"), field: "VALUE"}
    text = json.dumps({"predictions": [pred(1, 2000, 0.5, "Goal"), entry]}).replace('"VALUE"', value)
    assert scoring._fast_prediction_columns(text.encode()) is None
    path = tmp_path / "results_spotting.json"
    path.write_text(text)
    try:
        official = int(json.loads(value))
    except ValueError:
        with pytest.raises(InputError, match=rf"predictions\[1\]: field '{field}'"):
            scoring.read_prediction_file(path, ["Goal"])
    else:
        column = {"position": "position_ms", "half": "half"}[field]
        assert scoring.read_prediction_file(path, ["Goal"])[column][1] == official


def test_invalid_utf8_in_a_skipped_field_is_bad_json(tmp_path):
    write_game(tmp_path, "l/s/g", [lab(1, 1000, "Goal")], [])
    doc = json.dumps({"UrlLocal": "XX", "predictions": [pred(1, 1000, 0.5, "Goal")]}).encode()
    (tmp_path / "preds" / "l/s/g" / "results_spotting.json").write_bytes(doc.replace(b"XX", b"\xff\xfe"))
    with pytest.raises(InputError, match="results_spotting.json: not valid JSON"):
        run_ours(tmp_path, "tight")


def test_cli_prints_one_line_for_bad_input(tmp_path, capsys):
    from comedian.cli import main as comedian

    write_game(tmp_path, "l/s/g", [lab(1, 1000, "Goal")], [pred(1, 1000, 0.5, "Goal"), {"label": "Goal", "half": 1}])
    assert comedian(["evaluate", "--labels", str(tmp_path / "labels"), "--predictions", str(tmp_path / "preds")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("comedian evaluate: error: ")
    assert err[0].endswith("results_spotting.json: predictions[1]: field 'position' is missing")


def test_unknown_classes_warn_once_per_file(tmp_path):
    labels = [lab(1, 1000, "Goal"), lab(1, 2000, "Drop ball"), lab(1, 3000, "Drop ball")]
    predictions = [pred(1, 1000, 0.5, "Goal"), pred(1, 2000, 0.5, "Nonsense")]
    write_game(tmp_path, "l/s/g", labels, predictions)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scoring.score_files(tmp_path / "labels", tmp_path / "preds", metric="tight")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "Labels-v2.json: skipped 2 entries outside the class list: 'Drop ball' x2" in messages[0]
    assert "results_spotting.json: skipped 1 entries outside the class list: 'Nonsense' x1" in messages[1]


def test_cli(tmp_path, capsys):
    random_case(tmp_path, 3, n_games=2)
    write_game(tmp_path, "other/season/no predictions", [lab(1, 5_000, "Goal")], None)
    out = tmp_path / "out" / "score.json"
    assert scoring.main(["--labels", str(tmp_path / "labels"), "--predictions", str(tmp_path / "preds"),
                         "--metric", "at4", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "no predictions" in captured.err and "scored as a game without predictions" in captured.err
    document = json.loads(out.read_text())
    assert document["metric"] == "at4" and document["num_games"] == 3
    assert f"a-mAP {100 * document['a_mAP']:6.2f} %" in captured.out
    assert "Yellow->red card" in captured.out
    # --games restricts to a list
    games_file = tmp_path / "games.txt"
    games_file.write_text("other/season/no predictions\n")
    assert scoring.main(["--labels", str(tmp_path / "labels"), "--predictions", str(tmp_path / "preds"),
                         "--games", str(games_file), "--metric", "at1"]) == 0
    assert "over 1 games" in capsys.readouterr().out


@needs_official
def test_cli_matches_official(tmp_path):
    random_case(tmp_path, 3, n_games=2)
    write_game(tmp_path, "other/season/no predictions", [lab(1, 5_000, "Goal")], None)
    out = tmp_path / "score.json"
    args = ["--labels", str(tmp_path / "labels"), "--predictions", str(tmp_path / "preds"), "--metric", "at4"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert scoring.main([*args, "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    # the same games with an empty prediction file, scored by the official
    (tmp_path / "preds" / "other/season/no predictions").mkdir(parents=True)
    (tmp_path / "preds" / "other/season/no predictions" / "results_spotting.json").write_text('{"predictions": []}')
    assert_equal_results({k: document[k] for k in scoring.RESULT_KEYS}, run_official(tmp_path, "at4"))


def test_cli_bad_arguments(tmp_path):
    games_file = tmp_path / "games.txt"
    games_file.write_text("l/s/missing\n")
    (tmp_path / "labels").mkdir()
    args = ["--labels", str(tmp_path / "labels"), "--predictions", str(tmp_path)]
    with pytest.raises(InputError, match="missing/Labels-v2.json: cannot read labels"):
        scoring.main([*args, "--games", str(games_file)])
    games_file.write_text("# nothing\n")
    with pytest.raises(InputError, match="the game list is empty"):
        scoring.main([*args, "--games", str(games_file)])
    with pytest.raises(InputError, match="no Labels-v2.json under this folder"):
        scoring.main(args)
    write_game(tmp_path, "l/s/g", [lab(1, 1000, "Goal")], None)
    with pytest.raises(InputError, match="predictions folder does not exist"):
        scoring.main(["--labels", str(tmp_path / "labels"), "--predictions", str(tmp_path / "nowhere")])
