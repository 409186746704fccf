"""The report stage: results/metrics.json, the per-class AP table, PR curves, timelines, MLflow."""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from comedian import provenance, report, scoring
from comedian.data.soccernet import SOCCERNET_V2_CLASSES, game_slug
from comedian.errors import InputError
from comedian.data.targets import token_times_s
from comedian.inference.predict import RawScoreWriter

GAMES = ["league/2021-2022/2021-10-01 - 20-00 A 1 - 0 B", "league/2021-2022/2021-10-02 - 20-00 C 0 - 3 D"]
HALF_S = 600


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("COMEDIAN_TRACKING", "0")


def _game_time(half: int, ms: int) -> str:
    return f"{half} - {ms // 60000:02d}:{ms // 1000 % 60:02d}"


def _write_split(root: Path, seed: int, jitter_ms: int = 1500) -> None:
    """Labels of every class but 'Red card' (always the same), and predictions ``pred<seed>`` near
    them plus false alarms, for GAMES."""
    label_rng, rng = np.random.default_rng(0), np.random.default_rng(100 + seed)
    for game in GAMES:
        annotations, predictions = [], []
        for half in (1, 2):
            for c, name in enumerate(SOCCERNET_V2_CLASSES):
                if name == "Red card":
                    continue
                for ms in sorted(label_rng.integers(5_000, HALF_S * 1000 - 5_000, size=3).tolist()):
                    visibility = "not shown" if label_rng.random() < 0.3 else "visible"
                    annotations.append({"gameTime": _game_time(half, ms), "label": name, "position": str(ms),
                                        "team": "home", "visibility": visibility})
                    if rng.random() < 0.8:
                        p = max(0, ms + int(rng.integers(-jitter_ms, jitter_ms)))
                        predictions.append({"gameTime": _game_time(half, p), "label": name, "position": str(p),
                                            "half": str(half), "confidence": f"{rng.uniform(0.3, 1):.4f}"})
                for ms in rng.integers(0, HALF_S * 1000, size=4).tolist():  # false alarms
                    predictions.append({"gameTime": _game_time(half, ms), "label": name, "position": str(ms),
                                        "half": str(half), "confidence": f"{rng.uniform(0, 0.6):.4f}"})
        labels_dir = root / "labels" / game
        labels_dir.mkdir(parents=True, exist_ok=True)
        (labels_dir / "Labels-v2.json").write_text(json.dumps({"UrlLocal": game, "annotations": annotations}))
        pred_dir = root / f"pred{seed}" / game
        pred_dir.mkdir(parents=True, exist_ok=True)
        (pred_dir / "results_spotting.json").write_text(json.dumps({"UrlLocal": game, "predictions": predictions}))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    _write_split(root, seed=0)
    _write_split(root, seed=1)  # other predictions of the same labels
    (root / "test.txt").write_text("\n".join(GAMES) + "\n")
    for metric in ("tight", "loose"):
        scoring.main(["--labels", str(root / "labels"), "--predictions", str(root / "pred0"), "--games",
                      str(root / "test.txt"), "--metric", metric, "--json", str(root / f"test_{metric}.json")])
    scoring.main(["--labels", str(root / "labels"), "--predictions", str(root / "pred1"), "--games",
                  str(root / "test.txt"), "--metric", "tight", "--json", str(root / "stale_tight.json")])
    scoring.main(["--labels", str(root / "labels"), "--predictions", str(root / "pred0"), "--games",
                  str(root / "test.txt"), "--metric", "tight", "--json", str(root / "valid_tight.json")])
    return root


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--metrics", "test", str(data / "test_tight.json"), "--metrics", "test", str(data / "test_loose.json"),
        "--output-metrics", str(out / "metrics.json"), "--split", "test", "--labels", str(data / "labels"),
        "--predictions", str(data / "pred0"), "--games", str(data / "test.txt"),
        "--ap-table", str(out / "ap.html"), "--ap-csv", str(out / "ap.csv"), "--pr-curves", str(out / "pr.png"),
        "--timelines", str(out / "timelines"), "--timeline-games", "2", *extra,
    ]


def test_report_outputs(data, tmp_path):
    assert report.main(_args(data, tmp_path, "--metrics", "valid", str(data / "valid_tight.json"))) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert sorted(metrics) == ["provenance", "test", "valid"] and sorted(metrics["test"]) == ["loose", "tight"]
    assert len(metrics["provenance"]["commit"]) == 40 and isinstance(metrics["provenance"]["dirty"], bool)
    for metric in ("tight", "loose"):
        evaluated = json.loads((data / f"test_{metric}.json").read_text())
        assert metrics["test"][metric] == {k: evaluated[k] for k in scoring.RESULT_KEYS}
        assert list(metrics["test"][metric]) == list(scoring.RESULT_KEYS)
    tight = metrics["test"]["tight"]
    assert 0.3 < tight["a_mAP"] < 1 and tight["a_mAP_per_class"][SOCCERNET_V2_CLASSES.index("Red card")] == 0.0
    assert metrics["test"]["loose"]["a_mAP"] > tight["a_mAP"]

    # the CSV table: one row per class + the a-mAP row, numbers from the metrics, counts from the labels
    with open(tmp_path / "ap.csv") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    assert header[:3] == ["class", "labels visible", "labels not shown"]
    assert header[3:] == [f"{m} {v} (%)" for m in ("tight", "loose") for v in ("all", "visible", "unshown")]
    assert [r[0] for r in body] == [*SOCCERNET_V2_CLASSES, "a-mAP"]
    counts = {"visible": np.zeros(17, int), "not shown": np.zeros(17, int)}
    for game in GAMES:
        for a in json.loads((data / "labels" / game / "Labels-v2.json").read_text())["annotations"]:
            counts[a["visibility"]][SOCCERNET_V2_CLASSES.index(a["label"])] += 1
    for c, row in enumerate(body[:-1]):
        assert int(row[1]) == counts["visible"][c] and int(row[2]) == counts["not shown"][c]
        for k, (m, suffix) in enumerate((m, s) for m in ("tight", "loose") for s in ("", "_visible", "_unshown")):
            assert float(row[3 + k]) == round(100 * metrics["test"][m][f"a_mAP_per_class{suffix}"][c], 2)
    total = body[-1]
    assert float(total[3]) == round(100 * tight["a_mAP"], 2) and float(total[5]) == round(100 * tight["a_mAP_unshown"], 2)
    assert int(total[1]) == counts["visible"].sum()
    page = (tmp_path / "ap.html").read_text()
    assert "<table>" in page and "Yellow-&gt;red card" in page and f"{100 * tight['a_mAP']:.2f}" in page

    # figures are real PNGs; one timeline per half of the 2 games
    with Image.open(tmp_path / "pr.png") as img:
        assert img.format == "PNG" and img.size[0] > 800
    names = sorted(p.name for p in (tmp_path / "timelines").iterdir())
    assert names == sorted(f"{game_slug(g)}_{h}.png" for g in GAMES for h in (1, 2))
    for name in names:
        with Image.open(tmp_path / "timelines" / name) as img:
            assert img.format == "PNG" and img.size[0] > 800
    assert not list(tmp_path.glob(".*partial"))


def _interpolated_at(recall, precision, r):
    """Interpolated precision at recall r, by its definition: the best precision at any recall >= r."""
    return max((p for q, p in zip(recall, precision) if q >= r), default=0.0)


def test_pr_curves_are_the_scorers_interpolated_step_curves(data):
    labels, predictions = scoring.read_tables(data / "labels", data / "pred0", GAMES, SOCCERNET_V2_CLASSES)
    curves = scoring.precision_recall_curves(labels, predictions, metric="tight")
    figure = report.pr_figure(curves, SOCCERNET_V2_CLASSES, "tight")
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert len(axes) == 17 and axes[0].get_ylabel() == "interpolated precision"
    goal = SOCCERNET_V2_CLASSES.index("Goal")
    lines = axes[goal].get_lines()
    assert len(lines) == 5  # one per tight tolerance
    assert lines[2].get_drawstyle() == "steps-pre"
    recall, precision = lines[2].get_data()
    points_r, points_p = curves["recall"][2, :, goal], curves["precision"][2, :, goal]
    # the curve's corners: recall 0, then each distinct recall of the scorer's points, once, rising
    np.testing.assert_array_equal(recall, [0.0, *np.unique(points_r)])
    # the value on (recall[i-1], recall[i]] is the interpolated precision at recall[i]; at 0 that at 0
    expected = [_interpolated_at(points_r, points_p, r) for r in recall]
    np.testing.assert_array_equal(precision, expected)
    assert np.all(np.diff(precision) <= 0)  # non-increasing, as an interpolated curve is
    assert np.unique(points_p).size > np.unique(precision).size  # the raw points zig-zag, the curve does not
    assert f"{100 * curves['ap'][0, goal]:.1f}%" in axes[goal].get_title()


def test_interpolated_curve_gives_the_official_11_point_ap(data):
    """Read at recall 0, 0.1, ..., 1 the step curve gives each class's AP as the scorer computes it."""
    labels, predictions = scoring.read_tables(data / "labels", data / "pred0", GAMES, SOCCERNET_V2_CLASSES)
    curves = scoring.precision_recall_curves(labels, predictions, metric="loose")
    for d in range(len(curves["deltas_s"])):
        for c in range(len(SOCCERNET_V2_CLASSES)):
            recall, precision = report.interpolated_precision(curves["recall"][d, :, c], curves["precision"][d, :, c])
            at = [precision[np.searchsorted(recall, level, side="left")] if level <= recall[-1] else 0.0
                  for level in np.arange(11) / 10]
            assert np.mean(at) == pytest.approx(curves["ap"][d, c], abs=1e-12)


def test_interpolated_precision_small_case():
    recall = np.array([0.5, 0.25, 0.5, 0.75, 0.0])
    precision = np.array([0.4, 0.9, 0.6, 0.3, 0.0])
    r, p = report.interpolated_precision(recall, precision)
    np.testing.assert_array_equal(r, [0.0, 0.0, 0.25, 0.5, 0.75])
    np.testing.assert_array_equal(p, [0.9, 0.9, 0.9, 0.6, 0.3])


def test_timeline_with_raw_scores(data, tmp_path):
    raw_path = tmp_path / "scores.h5"
    with RawScoreWriter(raw_path, SOCCERNET_V2_CLASSES) as out:
        for game in GAMES:
            for half in (1, 2):
                out.add(game, half, np.random.default_rng(half).random((HALF_S, 17), dtype=np.float32),
                        token_times_s(0.0, HALF_S))
    out_dir = tmp_path / "out"
    report.main(_args(data, out_dir, "--scores", str(raw_path), "--timeline-games", "1", "--min-confidence", "0.5"))
    assert sorted(p.name for p in (out_dir / "timelines").iterdir()) == [f"{game_slug(GAMES[0])}_{h}.png" for h in (1, 2)]
    # a raw-score file lacking a game is refused
    with RawScoreWriter(tmp_path / "other.h5", SOCCERNET_V2_CLASSES) as out:
        for half in (1, 2):
            out.add(GAMES[1], half, np.zeros((3, 17)), token_times_s(0.0, 3))
    with pytest.raises(InputError, match="games missing from the raw-score file"):
        report.main(_args(data, tmp_path / "x", "--scores", str(tmp_path / "other.h5")))


def test_report_refuses_bad_inputs(data, tmp_path):
    # metrics of other predictions than the ones the figures are drawn from
    args = _args(data, tmp_path)
    args[args.index(str(data / "test_tight.json"))] = str(data / "stale_tight.json")
    with pytest.raises(InputError, match=r"stale_tight\.json: field 'a_mAP' does not match the predictions"):
        report.main(args)
    assert not (tmp_path / "metrics.json").exists()
    # two files for one split and metric
    with pytest.raises(InputError, match="a second 'tight' metrics file for split 'test'"):
        report.main(["--metrics", "test", str(data / "test_tight.json"), "--metrics", "test",
                     str(data / "valid_tight.json"), "--output-metrics", str(tmp_path / "m.json")])
    # a metrics file without the official keys
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"metric": "tight", "a_mAP": 0.5}))
    with pytest.raises(InputError, match=r"broken\.json: field 'a_mAP_per_class' is missing"):
        report.main(["--metrics", "test", str(broken), "--output-metrics", str(tmp_path / "m.json")])
    # figures without their inputs
    with pytest.raises(InputError, match="figures need"):
        report.main(["--metrics", "test", str(data / "test_tight.json"), "--output-metrics",
                     str(tmp_path / "m.json"), "--pr-curves", str(tmp_path / "pr.png")])


def test_metrics_only(data, tmp_path):
    report.main(["--metrics", "test", str(data / "test_tight.json"), "--output-metrics", str(tmp_path / "m.json")])
    assert list(json.loads((tmp_path / "m.json").read_text())) == ["test", "provenance"]


def test_seed_metrics_give_each_seed_their_mean_std_and_the_ensemble(data, tmp_path):
    # Seed 0's model scored as pred0, seed 1's as pred1 (the stale file is pred1's tight score).
    seeds = ["--seed-metrics", "0", "test", str(data / "test_tight.json"),
             "--seed-metrics", "1", "test", str(data / "stale_tight.json")]
    out = ["--output-metrics", str(tmp_path / "m.json"), "--seed-table", str(tmp_path / "seeds.html"),
           "--seed-csv", str(tmp_path / "seeds.csv")]
    assert report.main(["--metrics", "test", str(data / "test_tight.json"), *seeds, *out]) == 0
    tight = json.loads((tmp_path / "m.json").read_text())["test"]["tight"]
    a = json.loads((data / "test_tight.json").read_text())["a_mAP"]
    b = json.loads((data / "stale_tight.json").read_text())["a_mAP"]
    assert a != b and list(tight["seeds"]) == ["0", "1"]
    assert tight["seeds"]["1"]["a_mAP"] == b and tight["a_mAP"] == a  # the ensemble is the --metrics file
    assert tight["seed_mean"]["a_mAP"] == pytest.approx((a + b) / 2, abs=1e-15)
    assert tight["seed_std"]["a_mAP"] == pytest.approx(abs(a - b) / np.sqrt(2), abs=1e-15)  # sample std (ddof 1)
    rows = list(csv.reader((tmp_path / "seeds.csv").open()))
    assert rows[0] == ["split", "metric", "seed 0", "seed 1", "seed mean", "seed std", "ensemble"]
    assert rows[1][:2] == ["test", "tight"] and float(rows[1][4]) == pytest.approx(100 * (a + b) / 2)
    assert "seed mean" in (tmp_path / "seeds.html").read_text()
    with pytest.raises(InputError, match="no --metrics file for that split and metric"):
        report.main(["--metrics", "test", str(data / "test_tight.json"),
                     "--seed-metrics", "0", "test", str(data / "test_loose.json"), *out])


def test_report_logs_to_mlflow(data, tmp_path, monkeypatch):
    monkeypatch.setenv("COMEDIAN_TRACKING", "1")
    monkeypatch.setenv("COMEDIAN_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("COMEDIAN_TRACKING_FALLBACK_URI", f"sqlite:///{tmp_path / 'fallback.db'}")
    monkeypatch.setenv("COMEDIAN_EXPERIMENT", "report-test")
    monkeypatch.delenv("COMEDIAN_PIPELINE_RUN_ID", raising=False)
    out = tmp_path / "out"
    report.main(_args(data, out))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("report-test").experiment_id])
    tight = json.loads((data / "test_tight.json").read_text())
    assert run.data.metrics["test.tight.a_mAP"] == pytest.approx(tight["a_mAP"])
    assert run.data.metrics["test.tight.a_mAP_per_class.Goal"] == pytest.approx(tight["a_mAP_per_class"][2])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "metrics.json" in artifacts
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/ap.html", "report/ap.csv", "report/pr.png"} <= logged
    assert any(p.endswith("_1.png") for p in logged)


@pytest.mark.parametrize("end_s,unit,name", [(120.0, 1.0, "seconds"), (2700.0, 60.0, "minutes")])
def test_timeline_time_axis(end_s, unit, name):
    classes = ["Goal", "Corner"]
    labels_t, labels_c, visible = np.array([10.0, end_s]), np.array([0, 1]), np.array([True, False])
    preds_t, preds_c, conf = np.array([11.0, 50.0, 60.0]), np.array([0, 1, 1]), np.array([0.9, 0.1, 0.5])
    figure = report.timeline_figure(classes, labels_t, labels_c, visible, preds_t, preds_c, conf, "g - half 1",
                                    min_confidence=0.2)
    ax = figure.axes[0]
    assert ax.get_xlabel() == f"time in the half ({name})"
    points, visible_labels, hidden_labels = ax.collections[:3]
    # predictions above the threshold, drawn by increasing confidence
    np.testing.assert_allclose(points.get_offsets(), [[60.0 / unit, 1], [11.0 / unit, 0]])
    np.testing.assert_allclose(visible_labels.get_offsets(), [[10.0 / unit, 0]])
    np.testing.assert_allclose(hidden_labels.get_offsets(), [[end_s / unit, 1]])
    assert ax.get_xlim()[1] == pytest.approx(end_s / unit * 1.01)


def test_run_page_holds_the_provenance_and_the_config(data, tmp_path, monkeypatch):
    summary = {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": True, "diff_sha256": "d" * 64,
               "config_sha256": "c" * 64}
    monkeypatch.setenv(provenance.ENV_SUMMARY, json.dumps(summary))
    monkeypatch.setenv("COMEDIAN_PIPELINE_RUN_ID", "parentrun42")
    monkeypatch.setenv("COMEDIAN_TRACKING_URI", "https://alice:secret@mlflow.example:5000")
    config = {"model": {"arch": "vivit_demo", "frames": 64}, "postprocess": {"nms": "soft", "window_s": 10},
              "note": "<b>escaped</b>"}
    out = tmp_path / "out"
    report.main(_args(data, out, "--run-page", str(out / "run.html"), "--experiment", "nms_hard",
                      "--config-json", json.dumps(config)))
    page = (out / "run.html").read_text()
    assert json.loads((out / "metrics.json").read_text())["provenance"] == summary  # the same record
    for value in summary.values():
        assert f"<td>{value}</td>" in page
    assert "<td>parentrun42</td>" in page and "https://mlflow.example:5000" in page and "secret" not in page
    assert "Config of experiment &#x27;nms_hard&#x27;" in page
    shown = page.split("<pre>")[1].split("</pre>")[0]
    assert yaml.safe_load(html.unescape(shown)) == config and "&lt;b&gt;escaped&lt;/b&gt;" in shown
    stack = provenance.stack_versions()
    assert f"<td>stack.torch</td><td>{stack['torch']}</td>" in page and f"<td>{stack['python']}</td>" in page
    with pytest.raises(InputError, match="--run-page needs --config-json"):
        report.main(_args(data, tmp_path / "y", "--run-page", str(tmp_path / "y" / "run.html")))


def test_table_page_for_the_report(data, tmp_path):
    from comedian import tables

    seeds = ["--seed-metrics", "0", "test", str(data / "test_tight.json"),
             "--seed-metrics", "1", "test", str(data / "stale_tight.json")]
    report.main(["--metrics", "test", str(data / "test_tight.json"), *seeds, "--output-metrics",
                 str(tmp_path / "metrics.json")])
    spec = {"caption": "NMS <variants> & co", "decimals": 1, "rows": [
        {"label": "soft NMS", "experiment": "default", "split": "test", "metric": "tight", "paper": 68.0,
         "ensemble": True}]}
    out = [str(tmp_path / f"t.{ext}") for ext in ("csv", "md", "html")]
    tables.main(["--name", "table8", "--spec", json.dumps(spec), "--metrics", "default", str(tmp_path / "metrics.json"),
                 "--csv", out[0], "--markdown", out[1], "--html", out[2]])
    page = (tmp_path / "t.html").read_text()
    tight = json.loads((tmp_path / "metrics.json").read_text())["test"]["tight"]
    assert "<h3>table8</h3>" in page and "<p>NMS &lt;variants&gt; &amp; co</p>" in page
    assert "".join(f"<th>{c}</th>" for c in tables.COLUMNS) in page
    cells = [f"<td>{v}</td>" for v in ("soft NMS", "default", "68.0", f"{100 * tight['seed_mean']['a_mAP']:.1f}",
                                        f"{100 * tight['seed_std']['a_mAP']:.1f}", f"{100 * tight['a_mAP']:.1f}")]
    assert all(cell in page for cell in cells)
    # the page shows what the Markdown twin shows
    markdown_row = (tmp_path / "t.md").read_text().strip().splitlines()[-1]
    row = re.search(r"<tr><td>soft NMS.*?</tr>", page).group(0)
    assert [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)] == \
        [c.strip() for c in markdown_row.strip("|").split("|")]
