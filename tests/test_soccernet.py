"""SoccerNet-v2 layout helpers and Labels-v2.json parsing."""

import json
import warnings

import pytest

from comedian.data import soccernet
from comedian.errors import InputError

GAME = "england_epl/2014-2015/2015-05-17 - 18-00 Manchester United 1 - 1 Arsenal"


def write_labels(root, annotations, game=GAME):
    path = soccernet.labels_path(root, game)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"UrlLocal": game, "annotations": annotations}))
    return path


def ann(game_time, label, position=None, visibility="visible", team="home"):
    item = {"gameTime": game_time, "label": label, "team": team, "visibility": visibility}
    if position is not None:
        item["position"] = str(position)
    return item


def test_table_columns_units_and_order(tmp_path):
    write_labels(tmp_path, [
        ann("2 - 01:05", "Goal", 65432, team="away"),
        ann("1 - 16:39", "Indirect free-kick", 999583, visibility="not shown"),
        ann("1 - 00:07", "Kick-off"),  # no position: gameTime is used
    ])
    table = soccernet.read_labels(tmp_path, GAME)
    assert list(table.columns) == list(soccernet.LABEL_COLUMNS)
    rows = table.to_dict("records")
    assert rows[0] == {"game": GAME, "half": 2, "time_s": 65.432, "class_index": 2, "label": "Goal",
                       "visibility": "visible", "team": "away"}
    assert rows[1]["time_s"] == 999.583 and rows[1]["class_index"] == 11 and rows[1]["visibility"] == "not shown"
    assert rows[2]["time_s"] == 7.0 and rows[2]["class_index"] == 1
    assert soccernet.read_split_labels(tmp_path, [GAME])["time_s"].tolist() == [7.0, 999.583, 65.432]


def test_unknown_label_skipped_with_one_warning_per_file(tmp_path):
    write_labels(tmp_path, [ann("1 - 00:10", "Goal", 10000), ann("1 - 00:20", "Dive", 20000),
                            ann("1 - 00:30", "Dive", 30000), ann("1 - 00:40", "Corner", 40000)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = soccernet.read_labels(tmp_path, GAME, classes=("Goal", "Penalty"))
    assert table["label"].tolist() == ["Goal"]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "Labels-v2.json" in message and "skipped 3 labels" in message and "'Dive' x2" in message


@pytest.mark.parametrize(
    "content, field",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"annotations": {}}), "'annotations'"),
        (json.dumps({"annotations": [{"label": "Goal"}]}), r"annotations\[0\]: field 'gameTime'"),
        (json.dumps({"annotations": [{"gameTime": "3 - 00:01", "label": "Goal"}]}), "gameTime"),
        (json.dumps({"annotations": [{"gameTime": "1 - 00:01", "label": "Goal", "position": "abc"}]}),
         "field 'position'"),
        (json.dumps({"annotations": [{"gameTime": "1 - 00:01", "label": "Goal", "visibility": "maybe"}]}),
         "field 'visibility'"),
    ],
)
def test_malformed_labels_name_file_and_field(tmp_path, content, field):
    path = soccernet.labels_path(tmp_path, GAME)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(InputError, match=field) as err:
        soccernet.read_labels(tmp_path, GAME)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_position_beyond_the_half(tmp_path):
    write_labels(tmp_path, [ann("2 - 45:10", "Goal", 2710000)])
    assert len(soccernet.read_labels(tmp_path, GAME, half_durations={1: 2800.0, 2: 2720.0})) == 1
    with pytest.raises(InputError, match=r"annotations\[0\]: field 'position' = 2710.000 s is beyond"):
        soccernet.read_labels(tmp_path, GAME, half_durations={1: 2800.0, 2: 2700.0})


def test_missing_labels_file(tmp_path):
    with pytest.raises(InputError, match="cannot read labels"):
        soccernet.read_labels(tmp_path, GAME)


def test_game_slugs_are_unique_and_safe(tmp_path):
    assert soccernet.game_slug(GAME) == "england_epl_2014-2015_2015-05-17_-_18-00_Manchester_United_1_-_1_Arsenal"
    with pytest.raises(InputError, match="share the file name"):
        soccernet.slug_table(["a/b/c d", "a/b/c_d"])


def test_split_lists(tmp_path):
    text = tmp_path / "train.txt"
    text.write_text(f"# comment\n{GAME}\n\n")
    assert soccernet.read_game_list(text) == [GAME]
    as_json = tmp_path / "valid.json"
    as_json.write_text(json.dumps([GAME]))
    assert soccernet.read_game_list(as_json) == [GAME]
    text.write_text(f"{GAME}\n{GAME}\n")
    with pytest.raises(InputError, match="listed twice"):
        soccernet.read_game_list(text)
    with pytest.raises(InputError, match="cannot read split list"):
        soccernet.read_game_list(tmp_path / "nope.txt")


def test_split_labels_checked_against_what_the_frames_cover(tmp_path):
    write_labels(tmp_path, [ann("1 - 00:10", "Goal", 10000), ann("2 - 01:40", "Corner", 100000)])
    ok = {(GAME, 1): 60.0, (GAME, 2): 120.0}
    assert len(soccernet.read_split_labels(tmp_path, [GAME], durations=ok)) == 2
    with pytest.raises(InputError, match=r"annotations\[1\]: field 'position' = 100.000 s is beyond the end of half 2"):
        soccernet.read_split_labels(tmp_path, [GAME], durations={(GAME, 1): 60.0, (GAME, 2): 90.0})


def test_late_labels_within_the_tolerance_are_kept_with_one_warning(tmp_path):
    write_labels(tmp_path, [ann("1 - 00:10", "Goal", 10000), ann("2 - 01:31", "Corner", 91000),
                            ann("2 - 01:32", "Foul", 92000)])
    durations = {(GAME, 1): 60.0, (GAME, 2): 90.0}
    with pytest.warns(UserWarning, match=r"Labels-v2.json: 2 labels lie past the end of their half's video "
                                         r"\(within 3 s\), kept: 2 - 01:31 Corner, 2 - 01:32 Foul") as record:
        table = soccernet.read_split_labels(tmp_path, [GAME], durations=durations, tolerance_s=3.0)
    assert len(record) == 1 and len(table) == 3 and table["time_s"].max() == 92.0
    with pytest.raises(InputError, match=r"annotations\[2\]: .* 92.000 s is beyond the end of half 2 \(90.000 s\) "
                                         r"by more than 1.5 s"):
        soccernet.read_split_labels(tmp_path, [GAME], durations=durations, tolerance_s=1.5)
