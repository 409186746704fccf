"""`comedian spot`: streamed windows equal the pipeline's, frame timing on videos at 25/30/50 fps, outputs,
ensembles, bad input, checkpoint metadata; and (slow) a demo-trained checkpoint on a demo video it never saw."""

from __future__ import annotations

import csv
import itertools
import json
import math
import subprocess
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from comedian import spot
from comedian.data import demo
from comedian.data.frames import VideoJpegStream, extract_frames, ffmpeg_binary
from comedian.data.soccernet import SOCCERNET_V2_CLASSES
from comedian.errors import InputError
from comedian.inference.windows import INPUT_MEAN, INPUT_STD, StreamScorer, sliding_window_scores
from comedian.models import build_model, make_checkpoint, read_checkpoint, save_checkpoint
from comedian.scoring import read_prediction_file, score
from comedian.train import finetune
from test_frames import _make_video  # tests/ is on sys.path (rootdir conftest, no package)
from test_inference import IndexFrames, WindowProbe, index_frames
from test_train import FINETUNE, _finetune_args, data  # noqa: F401  (data: the tiny training set fixture)

CLASSES = ["Goal", "Corner", "Foul"]
INFERENCE = {"fps": 2.0, "window_frames": 16, "input_mean": list(INPUT_MEAN), "input_std": list(INPUT_STD),
             "ignore_s": 2.0, "merge": "max", "nms": "soft", "nms_window_s": 4.0, "nms_threshold": 0.01}


def _video(path: Path, seconds: float, rate: float, size: str = "398x224", source: str = "testsrc") -> Path:
    cmd = [ffmpeg_binary(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
           f"{source}=size={size}:rate={rate}:duration={seconds}", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Random tiny fine-tuned checkpoints (with and without inference settings), a step-1 one, videos."""
    base = tmp_path_factory.mktemp("spot")
    for seed, name in ((0, "a.pt"), (1, "b.pt")):
        torch.manual_seed(seed)
        model = build_model("vivit_demo", frames=16, size=32, classes=3, temporal_depth=1, drop_path=0.0)
        extra = {"classes": CLASSES, "inference": INFERENCE}
        save_checkpoint(base / name, make_checkpoint(model, "finetune", extra=extra))
    save_checkpoint(base / "old.pt", make_checkpoint(model, "finetune", extra={"classes": CLASSES}))
    save_checkpoint(base / "step1.pt", make_checkpoint(model, "pretrain_spatial", parts=["spatial"]))
    _video(base / "clip.mp4", 21, 30, "640x360")
    _video(base / "short.mkv", 3, 25, "320x240")  # shorter than one 8-s window
    return base


def _spot(out: Path, *args: str) -> int:
    return spot.main([*args, "--output", str(out), "--device", "cpu", "--no-progress"])


# ----------------------------------------------------------------------------------------------
# The streamed windows and the frame stream are the pipeline's
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("merge", ["max", "mean"])
def test_streamed_windows_equal_sliding_windows(merge):
    """Any half length, window, edge rule, batch and chunk size: the same scores as comedian predict's."""
    warnings.simplefilter("ignore")  # the plan's warning for ignore_s > window / 4
    for n, window, ignore_s, batch, chunk in itertools.product(
        [1, 8, 9, 33, 131], [2, 8, 16], [0.0, 1.0, 3.0], [1, 3], [1, 7, 64]
    ):
        if 2 * math.ceil(ignore_s) >= window // 2 and math.ceil(n / 2) > window // 2:
            continue  # refused by window_plan (tested in test_inference)
        model = WindowProbe(window // 2)
        expected = sliding_window_scores(model, IndexFrames(n), window, ignore_s, merge, batch)
        scorer = StreamScorer(model, 2.0, window, ignore_s, merge, batch)
        for start in range(0, n, chunk):
            scorer.push(index_frames(start, min(chunk, n - start)))
        scores, times = scorer.finish()
        where = (n, window, ignore_s, batch, chunk)
        np.testing.assert_array_equal(scores, expected[0], err_msg=str(where))
        np.testing.assert_array_equal(times, expected[1], err_msg=str(where))


def test_streamed_windows_hold_a_bounded_number_of_frames():
    model = WindowProbe(8)
    scorer = StreamScorer(model, 2.0, 16, 2.0, "max", 4)
    held = []
    for start in range(0, 2000, 10):
        scorer.push(index_frames(start, 10))
        held.append(scorer._tail.count - scorer._tail.first)
    assert max(held) <= 16 + 4 * 8 + 10 + 16  # a window, a batch of strides, a chunk, one more stride
    scores, _ = scorer.finish()
    assert scores.shape == (1000, 3)


def test_frame_stream_is_the_extraction(tmp_path):
    """VideoJpegStream.jpegs() yields the JPEGs comedian extract stores, byte for byte."""
    video = _make_video(tmp_path / "v.mkv")
    extract_frames(video, tmp_path / "v.h5")
    with h5py.File(tmp_path / "v.h5", "r") as h5:
        data, offsets = h5["jpeg"][:], h5["offsets"][:]
    stream = VideoJpegStream(video)
    jpegs = list(stream.jpegs())
    assert [bytes(data[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)] == jpegs
    assert stream.count == len(jpegs) == 8 and stream.duration_s == pytest.approx(4.0, abs=0.05)


# ----------------------------------------------------------------------------------------------
# Timing: videos whose frames show their own timestamp, at 25, 30 and 50 fps
# ----------------------------------------------------------------------------------------------

BITS, EVENTS_S = 12, (4.3, 9.8, 13.1)


def _stamp(index: int) -> np.ndarray:
    """A 398x224 frame showing ``index`` in 12 black/white blocks (2 rows of 6, LSB first)."""
    img = np.full((224, 398, 3), 128, dtype=np.uint8)
    for bit in range(BITS):
        row, col = divmod(bit, 6)
        img[20 + 100 * row : 100 + 100 * row, 10 + 64 * col : 66 + 64 * col] = 255 if (index >> bit) & 1 else 0
    return img


def _stamped_video(path: Path, rate: int, seconds: float) -> Path:
    cmd = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", "398x224", "-r", str(rate), "-i", "-", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "10",
           "-pix_fmt", "yuv420p", str(path)]
    raw = b"".join(_stamp(j).tobytes() for j in range(round(rate * seconds)))
    subprocess.run(cmd, input=raw, check=True)
    return path


class StampReader(nn.Module):
    """Fake spotting model at 128 px: reads each frame's stamp (its input frame index j, time j / rate) and
    returns per token (a) p = 0.9 when one of its frames shows a time within 0.25 s of an event, else 0.01;
    (b) p encoding the first frame's input index, to check the timing rule exactly."""

    tubelet_size, num_tokens = 2, 8

    def __init__(self, rate: int) -> None:
        super().__init__()
        self.rate = rate
        self.arch = {"config": {"size": 128}}
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(INPUT_MEAN).view(3, 1, 1) * 255
        std = torch.tensor(INPUT_STD).view(3, 1, 1) * 255
        pixels = (clip * std + mean).mean(dim=2)  # (B, T, 128, 128) grey
        index = torch.zeros(pixels.shape[:2])
        for bit in range(BITS):
            row, col = divmod(bit, 6)
            y = round((60 + 100 * row) * 128 / 224)
            x = round((38 + 64 * col) * 128 / 398)
            index += (pixels[:, :, y - 4 : y + 4, x - 4 : x + 4].mean(dim=(2, 3)) > 128).float() * 2**bit
        shown_s = index / self.rate  # (B, T): the time each frame shows
        near = torch.stack([(shown_s - e).abs() <= 0.25 for e in EVENTS_S]).any(dim=0)
        near = near[:, 0::2] | near[:, 1::2]  # a token sees the event in either of its frames
        probs = torch.stack([torch.where(near, 0.9, 0.01), (index[:, 0::2] + 1) / 4096], dim=-1)
        return (torch.log(probs) - torch.log1p(-probs)) + 0 * self.anchor


@pytest.mark.parametrize("rate", [25, 30, 50])
def test_frames_are_taken_at_their_time_and_spots_land_on_the_right_second(tmp_path, rate):
    video = _stamped_video(tmp_path / f"stamped_{rate}.mp4", rate, 16.0)
    model = spot.SpotModel(Path("fake.pt"), StampReader(rate), ["event", "index"], 2.0, 16, 2.0, "max",
                           "hard", 2.0, 0.5)
    settings = spot.spot_settings([model])
    info = spot.spot_video(video, [model], settings, tmp_path / "out", batch_size=3, progress=False)
    folder = info["folder"]
    with h5py.File(folder / "scores.h5", "r") as h5:
        scores, times = h5["scores"][:], h5["times_s"][:]
    # token j's first frame (at j s) is the input frame on screen at j s: index floor(j * rate)
    shown = np.rint(scores[:, 1] * 4096 - 1).astype(int)
    np.testing.assert_array_equal(shown, np.floor(np.arange(len(times)) * rate + 1e-9).astype(int))
    np.testing.assert_allclose(times, np.arange(len(times)) + 0.25)
    with open(folder / "spots.csv") as f:
        rows = list(csv.DictReader(f))
    spotted = sorted(float(r["time_s"]) for r in rows if r["label"] == "event")
    assert len(spotted) == len(EVENTS_S)
    for event, time_s in zip(EVENTS_S, spotted):
        assert abs(time_s - event) <= 0.5 + 1e-9, (event, spotted)


# ----------------------------------------------------------------------------------------------
# Outputs, ensembles, older checkpoints, bad input
# ----------------------------------------------------------------------------------------------


def test_outputs_of_a_video(files, tmp_path):
    assert _spot(tmp_path, str(files / "clip.mp4"), "--checkpoint", str(files / "a.pt")) == 0
    folder = tmp_path / "clip"
    assert sorted(p.name for p in folder.iterdir()) == ["results_spotting.json", "scores.h5", "spots.csv",
                                                        "timeline.png"]
    document = json.loads((folder / "results_spotting.json").read_text())
    assert document["UrlLocal"] == "clip.mp4"
    preds = document["predictions"]
    assert preds and {p["half"] for p in preds} == {"1"} and {p["label"] for p in preds} <= set(CLASSES)
    assert all(p["gameTime"].startswith("1 - 0:") for p in preds)
    with h5py.File(folder / "scores.h5", "r") as h5:
        scores, times = h5["scores"][:], h5["times_s"][:]
        assert json.loads(h5.attrs["classes"]) == CLASSES and h5.attrs["fps"] == 2.0
        assert json.loads(h5.attrs["models"]) == [{"window_frames": 16, "ignore_s": 2.0, "merge": "max"}]
    assert scores.shape == (21, 3) and np.allclose(times, np.arange(21) + 0.25)  # 42 frames at 2 fps
    with open(folder / "spots.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["time_s"]), r["label"], r["confidence"]) for r in rows] == [
        (int(p["position"]) / 1000, p["label"], p["confidence"]) for p in preds]
    # the checkpoint's NMS settings are used: soft NMS over 4 s at 0.01, as comedian postprocess does
    from comedian.postprocess import results_document, spotting_predictions

    assert preds == list(spotting_predictions(scores, times, CLASSES, "soft", 4.0, 0.01, half=1))
    # written entry by entry, the document is byte for byte the one json.dumps gives (comedian postprocess's)
    assert (folder / "results_spotting.json").read_text() == json.dumps(
        results_document("clip.mp4", preds), separators=(",", ":")) + "\n"
    assert (folder / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nms_overrides(files, tmp_path):
    args = [str(files / "clip.mp4"), "--checkpoint", str(files / "a.pt"), "--nms", "hard", "--window-s", "6",
            "--threshold", "0.3"]
    assert _spot(tmp_path, *args) == 0
    with h5py.File(tmp_path / "clip" / "scores.h5", "r") as h5:
        scores, times = h5["scores"][:], h5["times_s"][:]
    from comedian.postprocess import spotting_predictions

    preds = json.loads((tmp_path / "clip" / "results_spotting.json").read_text())["predictions"]
    assert preds == list(spotting_predictions(scores, times, CLASSES, "hard", 6.0, 0.3, half=1))


def test_ensemble_averages_the_raw_scores(files, tmp_path):
    raw = {}
    for name in ("a", "b"):
        assert _spot(tmp_path / name, str(files / "clip.mp4"), "--checkpoint", str(files / f"{name}.pt")) == 0
        with h5py.File(tmp_path / name / "clip" / "scores.h5", "r") as h5:
            raw[name] = h5["scores"][:].astype(np.float64)
    args = [str(files / "clip.mp4"), "--checkpoint", str(files / "a.pt"), "--checkpoint", str(files / "b.pt")]
    assert _spot(tmp_path / "ab", *args) == 0
    with h5py.File(tmp_path / "ab" / "clip" / "scores.h5", "r") as h5:
        np.testing.assert_allclose(h5["scores"][:], (raw["a"] + raw["b"]) / 2, rtol=0, atol=1e-6)
        assert len(json.loads(h5.attrs["checkpoints"])) == 2


def test_older_checkpoint_uses_the_pipeline_defaults_and_says_so(files, tmp_path, capsys):
    from comedian.cli import main

    args = ["spot", str(files / "clip.mp4"), "--checkpoint", str(files / "old.pt"), "--output", str(tmp_path),
            "--no-progress"]
    assert main(args) == 1  # ignore_s 12 (the default) leaves nothing of the 8-s window of this checkpoint
    err = capsys.readouterr().err.strip().splitlines()
    assert "old.pt: the checkpoint records no inference settings" in err[0] and "ignore_s 12" in err[0]
    assert len(err) == 2 and "old.pt: ignore_s: 12 s" in err[1] and "--ignore-s" in err[1]
    assert main([*args, "--ignore-s", "2"]) == 0
    models = spot.load_models([files / "old.pt"], "cpu", ignore_s=2.0)
    assert (models[0].fps, models[0].window_frames, models[0].nms, models[0].nms_window_s) == (2.0, 16, "soft", 10.0)
    with h5py.File(tmp_path / "clip" / "scores.h5", "r") as h5:
        assert json.loads(h5.attrs["models"]) == [{"window_frames": 16, "ignore_s": 2.0, "merge": "max"}]
        assert (h5.attrs["nms"], h5.attrs["nms_window_s"], h5.attrs["nms_threshold"]) == ("soft", 10.0, 0.001)


def test_mismatched_checkpoints_are_refused(files, tmp_path):
    torch.manual_seed(2)
    model = build_model("vivit_demo", frames=16, size=32, classes=3, temporal_depth=1)
    other = {**INFERENCE, "nms_threshold": 0.2}
    save_checkpoint(tmp_path / "c.pt", make_checkpoint(model, "finetune", extra={"classes": CLASSES, "inference": other}))
    save_checkpoint(tmp_path / "d.pt", make_checkpoint(model, "finetune",
                                                       extra={"classes": ["x", "y", "z"], "inference": INFERENCE}))
    a = spot.load_models([files / "a.pt"], "cpu")
    with pytest.raises(InputError, match="c.pt: nms_threshold 0.2 differs .*a.pt.*--threshold"):
        spot.spot_settings(a + spot.load_models([tmp_path / "c.pt"], "cpu"))
    assert spot.spot_settings(a + spot.load_models([tmp_path / "c.pt"], "cpu"), threshold=0.1).nms_threshold == 0.1
    with pytest.raises(InputError, match="d.pt: classes"):
        spot.spot_settings(a + spot.load_models([tmp_path / "d.pt"], "cpu"))
    renorm = {**INFERENCE, "input_mean": [m + 0.1 for m in INPUT_MEAN]}  # another normalisation than ours
    save_checkpoint(tmp_path / "e.pt", make_checkpoint(model, "finetune", extra={"classes": CLASSES, "inference": renorm}))
    with pytest.raises(InputError, match="e.pt: trained with input mean"):
        spot.load_models([tmp_path / "e.pt"], "cpu")


def test_bad_videos_fail_alone_and_leave_nothing(files, tmp_path, capsys):
    cut = tmp_path / "cut.mkv"
    whole = _video(tmp_path / "whole.mkv", 20, 25)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    videos = [tmp_path / "missing.mkv", cut, text, files / "short.mkv", files / "clip.mp4"]
    out = tmp_path / "out"
    assert _spot(out, *map(str, videos), "--checkpoint", str(files / "a.pt")) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 3
    for line, name in zip(errors, ("missing.mkv", "cut.mkv", "notes.mp4")):
        assert line.startswith("comedian spot: error: ") and name in line
    assert "truncated" in errors[1]
    assert sorted(p.name for p in out.iterdir()) == ["clip", "short"]  # no partial folder left behind
    with h5py.File(out / "short" / "scores.h5", "r") as h5:
        assert h5["scores"].shape == (3, 3)  # shorter than one window: one padded window


def test_a_checkpoint_that_is_not_fine_tuned_stops_the_call(files, tmp_path, capsys):
    from comedian.cli import main

    rc = main(["spot", str(files / "clip.mp4"), "--checkpoint", str(files / "step1.pt"), "--output",
               str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "step1.pt: not a fine-tuned model" in err
    assert not (tmp_path / "out").exists()


def test_two_videos_with_one_name_are_refused(files, tmp_path):
    other = tmp_path / "clip.mkv"
    other.write_bytes(b"")
    with pytest.raises(InputError, match="same name"):
        _spot(tmp_path / "out", str(files / "clip.mp4"), str(other), "--checkpoint", str(files / "a.pt"))


def test_progress_line_on_stderr(files, tmp_path, capsys):
    assert spot.main([str(files / "clip.mp4"), "--checkpoint", str(files / "a.pt"), "--output", str(tmp_path),
                      "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "clip.mp4: [" in err and "100%" in err and "ETA" in err


# ----------------------------------------------------------------------------------------------
# Checkpoints carry what inference needs
# ----------------------------------------------------------------------------------------------


def test_finetune_checkpoints_carry_the_inference_settings(data, tmp_path):  # noqa: F811
    step = {**FINETUNE, "epochs": 1, "nms": "hard", "nms_window_s": 6.0, "nms_threshold": 0.05}
    assert finetune.main(_finetune_args(data, tmp_path, step)) == 0
    extra = read_checkpoint(tmp_path / "out.pt")["extra"]
    assert extra["inference"] == {"fps": 2.0, "window_frames": 8, "input_mean": list(INPUT_MEAN),
                                  "input_std": list(INPUT_STD), "ignore_s": 1.0, "merge": "max", "nms": "hard",
                                  "nms_window_s": 6.0, "nms_threshold": 0.05}
    (model,) = spot.load_models([tmp_path / "out.pt"], "cpu")
    assert (model.window_frames, model.ignore_s, model.nms, model.nms_threshold) == (8, 1.0, "hard", 0.05)


# ----------------------------------------------------------------------------------------------
# A demo-trained checkpoint on a demo video it never saw (slow: the demo DAG up to fine-tuning)
# ----------------------------------------------------------------------------------------------

UNSEEN_INDEX = 1  # the demo tree's test split holds game 0 only: game 1 of that split is in no split list


@pytest.fixture(scope="module")
def demo_checkpoint(demo_run) -> Path:
    """The README demo's fine-tuned checkpoint: ``config/config.yaml`` (3 train games, steps 1-3) as the demo run
    of the session (``conftest.py::demo_run``) trained it, the default experiment's seed 0, found through its
    manifest."""
    from test_workflow import product_file

    return demo_run / product_file(demo_run, "finetune", "seed0.pt")


def _unseen_demo_video(path: Path, half_duration_s: float = 120.0) -> list:
    """The first half of a demo game in no split (same seed, test split index UNSEEN_INDEX); its events."""
    game = demo.demo_game_specs(0, 0, 0, UNSEEN_INDEX + 1)[UNSEEN_INDEX]
    plan = demo.plan_game(0, game, half_duration_s)
    demo.encode_video(path, demo.half_frames(0, plan, 1), demo.find_ffmpeg())
    return plan.half_events(1)


def _visible_tight_ap(events: list, predictions: Path) -> tuple[float, list[int]]:
    """Mean tight AP (visible labels, official rules) over the classes with a visible event in the video."""
    labels = {"game": np.zeros(len(events), dtype=np.int64), "half": np.ones(len(events), dtype=np.int64),
              "class_index": np.array([e.class_index for e in events]),
              "position_ms": np.array([e.position_ms for e in events]),
              "visible": np.array([e.visibility == "visible" for e in events])}
    preds = read_prediction_file(predictions, SOCCERNET_V2_CLASSES)
    preds["game"] = np.zeros(preds["half"].size, dtype=np.int64)
    result = score(labels, preds, "tight", len(SOCCERNET_V2_CLASSES))
    present = sorted({e.class_index for e in events if e.visibility == "visible"})
    return float(np.mean(np.array(result["a_mAP_per_class_visible"])[present])), present


@pytest.mark.slow
def test_demo_checkpoint_spots_an_unseen_video_and_its_720p_reencoding(demo_checkpoint, tmp_path):
    events = _unseen_demo_video(tmp_path / "unseen.mkv")
    reencoded = tmp_path / "unseen_720p.mp4"
    subprocess.run([ffmpeg_binary(), "-loglevel", "error", "-i", str(tmp_path / "unseen.mkv"), "-vf",
                    "scale=1280:720", "-r", "30", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                    str(reencoded)], check=True)
    out = tmp_path / "spots"
    videos = [str(tmp_path / "unseen.mkv"), str(reencoded)]
    assert _spot(out, *videos, "--checkpoint", str(demo_checkpoint)) == 0
    ap, present = _visible_tight_ap(events, out / "unseen" / "results_spotting.json")
    ap_720, _ = _visible_tight_ap(events, out / "unseen_720p" / "results_spotting.json")
    print(f"tight AP (visible, {len(present)} classes present): {ap:.3f}; re-encoded 1280x720 30 fps: {ap_720:.3f}")
    assert ap >= 0.4
    assert abs(ap_720 - ap) <= 0.1
    # nearly the same spots: the confident spots of one are (mostly) the other's, same class, within 1 s
    spots = {}
    for name in ("unseen", "unseen_720p"):
        with open(out / name / "spots.csv") as f:
            spots[name] = [(float(r["time_s"]), r["label"]) for r in csv.DictReader(f) if float(r["confidence"]) >= 0.5]
    for a, b in (("unseen", "unseen_720p"), ("unseen_720p", "unseen")):
        assert spots[a], a
        matched = [any(lb == la and abs(tb - ta) <= 1.0 for tb, lb in spots[b]) for ta, la in spots[a]]
        assert np.mean(matched) >= 0.8, (a, spots[a], spots[b])
