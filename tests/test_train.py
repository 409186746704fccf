"""The training loop and the three steps: schedule, parameter groups, resume (SIGKILL), DDP (gloo, 2 processes),
divergence, architecture checks, phases, the step-to-step hand-off, validation and the output checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from comedian.data.soccernet import game_slug
from comedian.errors import InputError
from comedian.models import build_model, make_checkpoint, read_checkpoint, save_checkpoint
from comedian.train import finetune, pretrain_spatial, pretrain_temporal
from comedian.train.loop import (
    DistContext,
    Interrupted,
    LoopConfig,
    Phase,
    StepModule,
    Trainer,
    TrainingDiverged,
    fingerprint,
    frame_loading,
    lr_multiplier,
    mask_tube_tokens,
    param_groups,
    sample_masks,
    scaled_lr,
)
from test_clips import write_packed  # tests/ is on sys.path (rootdir conftest, no package)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Goal", "Foul", "Corner"]
TRAIN = [f"lg/2020-2021/2020-09-0{k} - 20-00 T{k} 1 - 0 U{k}" for k in (1, 2)]
VALID = ["lg/2020-2021/2020-09-05 - 20-00 V 0 - 0 W"]
HALF_FRAMES = 24  # 12 s per half at 2 fps
MODEL = {"arch": "vivit_demo", "frames": 8, "size": 32, "temporal_depth": 1, "drop_path": 0.1}
FINETUNE = {"init": "scratch", "head_epochs": 0, "epochs": 2, "lr": 0.05, "batch_size": 4, "windows_per_game": 4,
            "head_validate_every": 0, "validate_every": 0, "mixup_alpha": 0.1, "mask_ratio": 0.25, "augment": {"blur_p": 0.0},
            "ignore_s": 1.0}


# --------------------------------------------------------------------------------------------------
# A tiny data set: packed frames, labels, teacher bank


def _event_frames(rng: np.random.Generator, events: list[tuple[float, int]]) -> np.ndarray:
    frames = rng.integers(60, 120, size=(HALF_FRAMES, 32, 48, 3), dtype=np.uint8)
    for time_s, cls in events:
        for f in range(HALF_FRAMES):
            if abs(f / 2 - time_s) <= 0.5:
                frames[f, 4 + 8 * cls : 12 + 8 * cls, 8:20] = (255, 40 * cls, 0)
    return frames


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``root`` (Labels-v2.json per game), ``frames`` (packed), ``bank.h5``, ``train.txt``, ``valid.txt``."""
    base = tmp_path_factory.mktemp("train_data")
    rng = np.random.default_rng(0)
    with h5py.File(base / "bank.h5", "w") as bank:
        bank.attrs["dims"] = 16
        for game in TRAIN + VALID:
            annotations = []
            for half in (1, 2):
                events = [(float(rng.uniform(1, 11)), int(rng.integers(0, 3))) for _ in range(3)]
                write_packed(base / "frames" / game_slug(game) / f"{half}.h5", _event_frames(rng, events))
                bank.create_dataset(f"halves/{game_slug(game)}/{half}",
                                    data=rng.normal(size=(HALF_FRAMES // 2, 16)).astype(np.float32))
                for time_s, cls in events:
                    ms = int(time_s * 1000)
                    annotations.append({"gameTime": f"{half} - 0:{ms // 1000:02d}", "label": CLASSES[cls],
                                        "position": str(ms), "team": "home", "visibility": "visible"})
            folder = base / "root" / game
            folder.mkdir(parents=True)
            (folder / "Labels-v2.json").write_text(json.dumps({"UrlLocal": game, "annotations": annotations}))
    (base / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (base / "valid.txt").write_text("\n".join(VALID) + "\n")
    return base


def _common(data: Path, work: Path, model: dict | None = None, seed: int = 0) -> list[str]:
    return ["--root", str(data / "root"), "--frames-dir", str(data / "frames"), "--train-list",
            str(data / "train.txt"), "--model", json.dumps(model or MODEL), "--seed", str(seed),
            "--workdir", str(work / "work"), "--output", str(work / "out.pt"), "--workers", "0", "--quiet"]


def _finetune_args(data: Path, work: Path, step: dict, *extra: str, model: dict | None = None) -> list[str]:
    return _common(data, work, model) + ["--step", json.dumps(step), "--classes", json.dumps(CLASSES),
                                         "--valid-list", str(data / "valid.txt"), *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=lambda m: f"{key}: {m}")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COMEDIAN_TRACKING": "0", "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------------
# Schedule and parameter groups


def test_lr_is_scaled_with_the_global_batch():
    assert scaled_lr(1e-3, 64) == pytest.approx(2.5e-4)
    assert scaled_lr(5e-4, 1024) == pytest.approx(2e-3)


def test_warmup_then_cosine():
    total, warmup = 100, 10
    values = [lr_multiplier(s, total, warmup, 0.01) for s in range(total + 5)]
    assert values[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert values[9] == pytest.approx(1.0) and values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.01 + 0.99 * 0.5)  # half-way through the cosine
    assert values[100] == pytest.approx(0.01) and values[104] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # never rises after the warm-up
    assert lr_multiplier(0, 10, 0) == 1.0
    # A warm-up from the authors' warmup_start_lr (here 1% of the peak): linear from it to the peak.
    started = [lr_multiplier(s, total, warmup, 0.01, start_ratio=0.01) for s in range(12)]
    assert started[0] == pytest.approx(0.01 + 0.099) and started[4] == pytest.approx(0.01 + 0.99 * 0.5)
    assert started[9] == pytest.approx(1.0) and started[10] == pytest.approx(1.0)


def test_no_weight_decay_on_biases_norms_embeddings_and_tokens():
    model = build_model("vivit_demo", frames=8, size=32, classes=3)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"temporal.time_embed", "temporal.mask_token", "spatial.pos_embed", "spatial.cls_token"} <= skipped
    assert all(n.endswith(("bias", "weight")) for n in skipped if "norm" in n)
    assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    model.head.requires_grad_(False)
    assert not any(names[id(p)].startswith("head") for g in param_groups(model, 0.05) for p in g["params"])


def test_token_masks_depend_on_the_sample_key_only():
    keys = torch.tensor([[0, 3], [0, 4], [1, 3]])
    masks = sample_masks(keys, 16, 0.25, 2, seed=5)
    assert masks.shape == (3, 16) and masks.dtype == torch.bool and masks.sum(1).tolist() == [4, 4, 4]
    assert torch.equal(sample_masks(keys[[2, 0]], 16, 0.25, 2, seed=5), masks[[2, 0]])  # batch-independent
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    assert not torch.equal(sample_masks(keys, 16, 0.25, 2, seed=6), masks)
    tubes = masks.view(3, 8, 2)
    assert torch.equal(tubes[..., 0], tubes[..., 1])  # whole tubes of 2 tokens


# --------------------------------------------------------------------------------------------------
# The loop on a toy step (fast)


class ToyData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, key):
        epoch, index = key
        g = torch.Generator().manual_seed(1000 * epoch + index)
        return {"x": torch.randn(4, generator=g), "y": torch.randn(1, generator=g)}


class ToyStep(StepModule):
    """A linear regression whose loss turns NaN from optimiser step ``nan_from`` on (None: never)."""

    def __init__(self, nan_from: int | None = None) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Dropout(0.2), nn.Linear(8, 1))
        self.model.arch = {"name": "toy"}
        self.calls, self.nan_from = 0, nan_from

    def forward(self, batch):
        self.calls += 1
        loss = ((self.model(batch["x"]) - batch["y"]) ** 2).mean()
        if self.nan_from is not None and self.calls >= self.nan_from:
            loss = loss * float("nan")
        return loss, {}

    def output_checkpoint(self):
        return {"format": "toy", "model": {k: v.clone() for k, v in self.model.state_dict().items()}}


class SignalledToyStep(ToyStep):
    """The toy step that sends itself ``signum`` during optimiser step ``at`` (1-based, counted in this run)."""

    def __init__(self, at: int, signum: int) -> None:
        super().__init__()
        self.at, self.signum = at, signum

    def forward(self, batch):
        if self.calls + 1 == self.at:
            os.kill(os.getpid(), self.signum)
        return super().forward(batch)


def _toy_trainer(tmp: Path, module: ToyStep, epochs: int = 4, fingerprint: str = "f",
                 checkpoint_every_s: float = 0.0, print_fn=lambda _: None) -> Trainer:
    config = LoopConfig(step="toy", phases=(Phase("train", epochs, 0.5, warmup_epochs=1, final_lr_ratio=0.1),),
                        batch_size=4, seed=3, workers=0, fingerprint=fingerprint,
                        checkpoint_every_s=checkpoint_every_s)
    return Trainer(config, module, ToyData(), tmp / "work", tmp / "out.pt", print_fn=print_fn)


def test_toy_run_writes_state_and_output(tmp_path):
    torch.manual_seed(0)
    summary = _toy_trainer(tmp_path, ToyStep()).fit()
    assert summary["epochs"] == 4 and len(summary["history"]) == 4
    state = torch.load(tmp_path / "work" / "last.pt", weights_only=True)
    assert state["epoch"] == 4 and state["global_step"] == 16
    assert {"module", "optimizer", "scheduler", "scaler", "rng", "best", "history", "fingerprint"} <= set(state)
    assert {"python", "numpy", "torch"} <= set(state["rng"][0])
    history = summary["history"]
    assert history[-1]["lr_end"] == pytest.approx(0.1 * scaled_lr(0.5, 4))  # the end of the cosine
    assert (tmp_path / "out.pt").is_file()


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    """Stop a run during epoch 3 (a NaN raised there), rerun with a fresh module: the same final weights."""
    torch.manual_seed(0)
    _toy_trainer(tmp_path / "a", ToyStep()).fit()
    torch.manual_seed(0)
    with pytest.raises(TrainingDiverged):
        _toy_trainer(tmp_path / "b", ToyStep(nan_from=10)).fit()  # steps 9-12 are epoch 3
    assert torch.load(tmp_path / "b" / "work" / "last.pt", weights_only=True)["epoch"] == 2
    torch.manual_seed(123)  # another initialisation: the resumed run must not depend on it
    _toy_trainer(tmp_path / "b", ToyStep()).fit()
    a = torch.load(tmp_path / "a" / "out.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "out.pt", weights_only=True)["model"]
    _assert_same_weights(a, b)


def _uninterrupted(tmp: Path) -> tuple[dict, list]:
    torch.manual_seed(0)
    summary = _toy_trainer(tmp, ToyStep()).fit()
    return torch.load(tmp / "out.pt", weights_only=True)["model"], summary["history"]


def _same_history(a: list, b: list) -> None:
    """Every epoch's metrics but the timings are equal (mid-epoch checkpoints keep the running sums)."""
    timing = {"epoch_s", "clips_per_s", "data_wait"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in a] == \
        [{k: v for k, v in h.items() if k not in timing} for h in b]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_checkpoints_mid_epoch_and_the_rerun_resumes_bitwise(tmp_path, signum):
    weights, history = _uninterrupted(tmp_path / "a")
    torch.manual_seed(0)
    handler = signal.getsignal(signum)
    with pytest.raises(Interrupted) as stopped:
        _toy_trainer(tmp_path / "b", SignalledToyStep(at=10, signum=signum)).fit()  # epoch 3, iteration 2
    assert signal.getsignal(signum) is handler  # the loop's handler is gone again
    assert stopped.value.exit_code == 128 + signum
    assert f"{signal.Signals(signum).name} received; stopped in epoch 3/4 after iteration 2/4" in str(stopped.value)
    state = torch.load(tmp_path / "b" / "work" / "last.pt", weights_only=True)
    assert (state["epoch"], state["iteration"], state["global_step"]) == (2, 2, 10)
    lines: list[str] = []
    torch.manual_seed(123)
    summary = _toy_trainer(tmp_path / "b", ToyStep(), print_fn=lines.append).fit()
    assert any("resumed from" in line and "in epoch 3/4 after iteration 2/4" in line for line in lines), lines
    _assert_same_weights(weights, torch.load(tmp_path / "b" / "out.pt", weights_only=True)["model"])
    _same_history(history, summary["history"])


def test_a_signal_in_an_epochs_last_iteration_stops_after_that_epoch(tmp_path):
    weights, _ = _uninterrupted(tmp_path / "a")
    torch.manual_seed(0)
    with pytest.raises(Interrupted, match="stopped after epoch 2/4"):
        _toy_trainer(tmp_path / "b", SignalledToyStep(at=8, signum=signal.SIGTERM)).fit()
    state = torch.load(tmp_path / "b" / "work" / "last.pt", weights_only=True)
    assert (state["epoch"], state["iteration"]) == (2, 0)
    _toy_trainer(tmp_path / "b", ToyStep()).fit()
    _assert_same_weights(weights, torch.load(tmp_path / "b" / "out.pt", weights_only=True)["model"])


def test_periodic_checkpoints_bound_what_a_crash_loses(tmp_path):
    """checkpoint_every_s: a crash (here a NaN in step 10) loses at most the iterations since the last write;
    the rerun, with another period (not part of the run's identity), ends with the same weights."""
    weights, history = _uninterrupted(tmp_path / "a")
    torch.manual_seed(0)
    with pytest.raises(TrainingDiverged, match=r"last\.pt \(epoch 2, iteration 1\) is kept"):
        _toy_trainer(tmp_path / "b", ToyStep(nan_from=10), checkpoint_every_s=1e-9).fit()
    state = torch.load(tmp_path / "b" / "work" / "last.pt", weights_only=True)
    assert (state["epoch"], state["iteration"]) == (2, 1)
    summary = _toy_trainer(tmp_path / "b", ToyStep(), checkpoint_every_s=3600).fit()
    _assert_same_weights(weights, torch.load(tmp_path / "b" / "out.pt", weights_only=True)["model"])
    _same_history(history, summary["history"])
    assert fingerprint(pretrain_spatial.SpatialSettings(checkpoint_every_s=1)) == \
        fingerprint(pretrain_spatial.SpatialSettings(checkpoint_every_s=2))
    assert fingerprint(pretrain_spatial.SpatialSettings(epochs=1)) != fingerprint(pretrain_spatial.SpatialSettings())


def test_nan_loss_stops_with_step_and_epoch_and_keeps_the_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(TrainingDiverged) as err:
        _toy_trainer(tmp_path, ToyStep(nan_from=7)).fit()
    message = str(err.value)
    assert "\n" not in message
    assert "toy: the loss is nan at epoch 2/4, iteration 3/4" in message
    assert "last.pt (epoch 1) is kept" in message
    assert isinstance(err.value, InputError)  # `comedian <stage>` prints it as one line and exits 1
    assert torch.load(tmp_path / "work" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "out.pt").exists()


def test_a_state_of_another_configuration_is_not_resumed(tmp_path):
    torch.manual_seed(0)
    _toy_trainer(tmp_path, ToyStep(), epochs=2, fingerprint="old").fit()
    summary = _toy_trainer(tmp_path, ToyStep(), epochs=2, fingerprint="new").fit()
    assert [h["epoch"] for h in summary["history"]] == [1, 2]  # trained again from epoch 1
    assert (tmp_path / "work" / "last.pt.stale").is_file()


def test_a_finished_run_is_not_trained_again(tmp_path):
    torch.manual_seed(0)
    _toy_trainer(tmp_path, ToyStep(), epochs=2).fit()
    (tmp_path / "out.pt").unlink()  # e.g. killed while writing the output
    module = ToyStep()
    _toy_trainer(tmp_path, module, epochs=2).fit()
    assert module.calls == 0 and (tmp_path / "out.pt").is_file()


def test_batch_larger_than_an_epoch_is_refused(tmp_path):
    config = LoopConfig(step="toy", phases=(Phase("train", 1, 0.1),), batch_size=32, workers=0)
    with pytest.raises(InputError, match="fewer than one batch"):
        Trainer(config, ToyStep(), ToyData(), tmp_path / "w", tmp_path / "o.pt")


# --------------------------------------------------------------------------------------------------
# The three steps on the tiny data set


def test_three_steps_hand_off_and_write_their_parts(data, tmp_path):
    spatial = {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 0.01, "queue_size": 64, "proj_dim": 16,
               "proj_hidden": 32, "pred_hidden": 32}
    assert pretrain_spatial.main(_common(data, tmp_path / "s1") + ["--step", json.dumps(spatial)]) == 0
    s1 = read_checkpoint(tmp_path / "s1" / "out.pt")
    assert s1["parts"] == ["spatial"] and s1["step"] == "pretrain_spatial"
    state = torch.load(tmp_path / "s1" / "work" / "last.pt", weights_only=True)
    assert "queue.features" in state["module"] and "target.spatial.cls_token" in state["module"]

    temporal = {"epochs": 1, "warmup_epochs": 0, "batch_size": 4, "lr": 0.01, "windows_per_game": 4,
                "queue_size": 32, "proj_hidden": 32}
    args = _common(data, tmp_path / "s2") + ["--step", json.dumps(temporal), "--bank", str(data / "bank.h5"),
                                             "--init", str(tmp_path / "s1" / "out.pt")]
    assert pretrain_temporal.main(args) == 0
    s2 = read_checkpoint(tmp_path / "s2" / "out.pt")
    assert s2["parts"] == ["spatial", "temporal"]

    step = {**FINETUNE, "init": "pretrain_temporal", "head_epochs": 1, "epochs": 1, "head_validate_every": 1,
            "validate_every": 1, "select": "best_valid"}
    assert finetune.main(_finetune_args(data, tmp_path / "s3", step, "--init", str(tmp_path / "s2" / "out.pt"))) == 0
    s3 = read_checkpoint(tmp_path / "s3" / "out.pt")
    assert s3["parts"] == ["head", "spatial", "temporal"] and s3["extra"]["classes"] == CLASSES
    training = s3["extra"]["training"]
    assert training["best"]["epoch"] in (1, 2) and 0.0 <= training["best"]["score"] <= 1.0
    assert s3["extra"]["epoch"] == training["best"]["epoch"]  # the output is the best validated checkpoint
    assert {"valid_tight_amap", "valid_loose_amap"} <= set(s3["extra"]["valid"])
    # the output is what inference loads
    from comedian.inference.predict import load_spotting_model

    model, _ = load_spotting_model(tmp_path / "s3" / "out.pt")
    assert model.head.num_classes == 3


def test_classifier_phase_trains_the_head_only(data, tmp_path):
    torch.manual_seed(1)
    trunk = build_model("vivit_demo", frames=8, size=32, classes=3, temporal_depth=1)
    save_checkpoint(tmp_path / "step2.pt", make_checkpoint(trunk, "pretrain_temporal", parts=["spatial", "temporal"]))
    step = {**FINETUNE, "init": "pretrain_temporal", "head_epochs": 2, "epochs": 0, "mask_ratio": 0.0}
    assert finetune.main(_finetune_args(data, tmp_path, step, "--init", str(tmp_path / "step2.pt"))) == 0
    out = _weights(tmp_path / "out.pt")
    before = trunk.state_dict()
    for key, value in out.items():
        if key.startswith(("spatial.", "temporal.")):
            assert torch.equal(value, before[key]), key
    assert not torch.equal(out["head.fc.weight"], before["head.fc.weight"])


def test_head_starts_as_the_authors_or_at_the_class_priors(data, tmp_path):
    step = {**FINETUNE, "epochs": 1, "lr": 1e-12, "mixup_alpha": 0.0}
    assert finetune.main(_finetune_args(data, tmp_path / "plain", step)) == 0
    head = _weights(tmp_path / "plain" / "out.pt")
    assert torch.all(head["head.fc.bias"].abs() < 1e-9)  # the authors: bias 0 (lr 1e-12 leaves it there)
    assert float(head["head.fc.weight"].std()) == pytest.approx(0.01, rel=0.25)  # normal(0, 0.01)
    assert finetune.main(_finetune_args(data, tmp_path / "prior", {**step, "head_prior": True})) == 0
    bias = _weights(tmp_path / "prior" / "out.pt")["head.fc.bias"]
    assert torch.all(bias < -0.5)  # log-odds of rare positives, not 0


def test_a_checkpoint_of_another_architecture_is_refused(data, tmp_path):
    other = build_model("viswin_demo", frames=8, size=32, classes=3)
    save_checkpoint(tmp_path / "swin.pt", make_checkpoint(other, "pretrain_temporal", parts=["spatial", "temporal"]))
    step = {**FINETUNE, "init": "pretrain_temporal"}
    with pytest.raises(InputError, match="arch: checkpoint is 'viswin_demo' but step 'finetune' builds 'vivit_demo'"):
        finetune.main(_finetune_args(data, tmp_path, step, "--init", str(tmp_path / "swin.pt")))


def test_validation_windows_are_checked_before_training(data, tmp_path):
    step = {**FINETUNE, "validate_every": 1, "ignore_s": 12.0}
    with pytest.raises(InputError, match="ignore_s: 12 s drops 12 tokens"):
        finetune.main(_finetune_args(data, tmp_path, step))
    assert not (tmp_path / "work").exists()


def test_init_switch_is_checked(data, tmp_path):
    with pytest.raises(InputError, match="no checkpoint was given"):
        finetune.main(_finetune_args(data, tmp_path, {**FINETUNE, "init": "pretrain_spatial"}))
    with pytest.raises(InputError, match="no checkpoint is expected"):
        finetune.main(_finetune_args(data, tmp_path, FINETUNE, "--init", str(tmp_path / "x.pt")))
    with pytest.raises(InputError, match="unknown keys"):
        finetune.main(_finetune_args(data, tmp_path, {**FINETUNE, "learning_rate": 1.0}))


def test_finetune_from_step_one_copies_the_spatial_blocks(data, tmp_path):
    torch.manual_seed(2)
    spatial = build_model("vivit_demo", frames=8, size=32, classes=1, temporal_depth=1)
    save_checkpoint(tmp_path / "step1.pt", make_checkpoint(spatial, "pretrain_spatial", parts=["spatial"]))
    step = {**FINETUNE, "init": "pretrain_spatial", "epochs": 1, "lr": 1e-12}
    assert finetune.main(_finetune_args(data, tmp_path, step, "--init", str(tmp_path / "step1.pt"))) == 0
    out = _weights(tmp_path / "out.pt")
    source = spatial.state_dict()["spatial.blocks.0.attn.qkv.weight"]
    torch.testing.assert_close(out["temporal.blocks.0.attn.qkv.weight"], source, atol=1e-6, rtol=0)


def test_jpeg_decoding_on_the_device_trains_like_decoding_in_the_workers(data, tmp_path, capsys):
    """--decode device (the workers read bytes, the step decodes on its device: CPU here, nvJPEG on CUDA) gives
    the weights of --decode worker: step 1 crops, so both decode at the native size; the log says which runs."""
    spatial = {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "lr": 0.01, "queue_size": 64, "proj_dim": 16,
               "proj_hidden": 32, "pred_hidden": 32}
    for place in ("worker", "device"):
        argv = [a for a in _common(data, tmp_path / place) if a != "--quiet"]
        assert pretrain_spatial.main(argv + ["--step", json.dumps(spatial), "--decode", place]) == 0
    log = capsys.readouterr().out
    assert "JPEG decoding in the loader workers" in log and "JPEG decoding on cpu (libjpeg-turbo)" in log
    _assert_same_weights(_weights(tmp_path / "worker" / "out.pt"), _weights(tmp_path / "device" / "out.pt"))
    # no CUDA here: the workers decode, and resize since the CPU trains
    assert frame_loading("auto", DistContext(), "x", quiet=True) == {"decode": "worker", "worker_resize": True}


SPATIAL_RUNS = {"epochs": 2, "warmup_epochs": 0, "batch_size": 8, "lr": 0.01, "queue_size": 64, "proj_dim": 16,
                "proj_hidden": 32, "pred_hidden": 32, "subvideos_per_run": 4}


def test_step_one_in_runs_trains_the_same_for_any_worker_count(data, tmp_path):
    """subvideos_per_run: batches of runs of consecutive seconds, read a run at once; 0 or 2 loader workers
    give the same weights, and the runs change which samples share a batch (other weights than per sample)."""
    for name, step, workers in (("w0", SPATIAL_RUNS, "0"), ("w2", SPATIAL_RUNS, "2"),
                                ("single", {**SPATIAL_RUNS, "subvideos_per_run": 1}, "0")):
        argv = _common(data, tmp_path / name)
        argv[argv.index("--workers") + 1] = workers
        assert pretrain_spatial.main(argv + ["--step", json.dumps(step)]) == 0
    _assert_same_weights(_weights(tmp_path / "w0" / "out.pt"), _weights(tmp_path / "w2" / "out.pt"))
    runs, single = _weights(tmp_path / "w0" / "out.pt"), _weights(tmp_path / "single" / "out.pt")
    assert any(not torch.equal(runs[k], single[k]) for k in runs)


@pytest.mark.slow
def test_step_one_in_runs_on_two_processes_matches_one_process(data, tmp_path):
    """With runs, each rank takes a contiguous half of the single process's batch (and the queue gathers the
    keys in that order): two DDP processes reach the single process's weights up to float rounding."""
    model = {**MODEL, "drop_path": 0.0}  # drop path draws per rank: off for the comparison
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])):
        argv = _common(data, tmp_path / name, model) + ["--step", json.dumps(SPATIAL_RUNS)]
        subprocess.run([sys.executable, *launcher, "-m", "comedian.train.pretrain_spatial", *argv], check=True,
                       env=_env(), timeout=300)
    _assert_same_weights(_weights(tmp_path / "one" / "out.pt"), _weights(tmp_path / "two" / "out.pt"), atol=5e-5)


# --------------------------------------------------------------------------------------------------
# Resume after SIGKILL and DDP equivalence, in subprocesses


def _finetune_cmd(data: Path, work: Path, step: dict, workers: int = 0) -> list[str]:
    args = _finetune_args(data, work, step)
    args[args.index("--workers") + 1] = str(workers)
    return [sys.executable, "-m", "comedian.train.finetune", *args]


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_weights_of_an_uninterrupted_run(data, tmp_path):
    """Run A uninterrupted (no data workers); run B (2 workers) killed at a random point after its first
    epoch checkpoint, then rerun (1 worker, with progress lines): B's weights equal A's, bit for bit."""
    step = {**FINETUNE, "head_epochs": 2, "epochs": 6, "windows_per_game": 16, "validate_every": 3,
            "select": "best_valid"}
    subprocess.run(_finetune_cmd(data, tmp_path / "a", step), check=True, env=_env(), timeout=300)

    last = tmp_path / "b" / "work" / "last.pt"
    proc = subprocess.Popen(_finetune_cmd(data, tmp_path / "b", step, workers=2), env=_env())
    try:
        deadline = time.monotonic() + 240
        while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.is_file(), "no checkpoint appeared"
        time.sleep(random.uniform(0.0, 1.0))  # a random point after the first epoch's checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= done < 8 and not (tmp_path / "b" / "out.pt").exists()

    loud = [arg for arg in _finetune_cmd(data, tmp_path / "b", step, workers=1) if arg != "--quiet"]
    rerun = subprocess.run(loud, env=_env(), timeout=300, capture_output=True, text=True, check=True)
    assert f"resumed from {last} after epoch {done}/8" in rerun.stdout
    _assert_same_weights(_weights(tmp_path / "a" / "out.pt"), _weights(tmp_path / "b" / "out.pt"))
    state_a = torch.load(tmp_path / "a" / "work" / "last.pt", weights_only=True)
    state_b = torch.load(last, weights_only=True)
    _assert_same_weights(state_a["module"], state_b["module"])
    assert state_a["best"] == state_b["best"]


@pytest.mark.slow
def test_signal_at_a_random_iteration_then_rerun_gives_the_weights_of_an_uninterrupted_run(data, tmp_path):
    """Run B (2 data workers) gets SIGTERM (Slurm's; SIGUSR1: the in-process test above) at a random point
    after its first epoch, every process of it: its loader workers too, as Slurm signals a job step (torch
    would end a worker on it, but comedian.train.loop.init_worker takes it). B writes a mid-epoch last.pt
    within seconds and exits 128 + signal; the rerun resumes there and ends with A's weights
    (uninterrupted, no workers), bit for bit."""
    step = {**FINETUNE, "head_epochs": 2, "epochs": 6, "windows_per_game": 16, "validate_every": 3}
    subprocess.run(_finetune_cmd(data, tmp_path / "a", step), check=True, env=_env(), timeout=300)

    last = tmp_path / "b" / "work" / "last.pt"
    signum = signal.SIGTERM
    proc = subprocess.Popen(_finetune_cmd(data, tmp_path / "b", step, workers=2), env=_env(),
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.is_file(), "no checkpoint appeared"
        time.sleep(random.uniform(0.0, 1.0))
        os.killpg(proc.pid, signum)  # its process group: the stage and its loader workers
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        stop_s = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr
    state = torch.load(last, weights_only=True)
    print(f"\n{signal.Signals(signum).name}: stopped in {stop_s:.2f} s at epoch {state['epoch']} + "
          f"iteration {state['iteration']}")
    assert stop_s < 10
    assert f"{signal.Signals(signum).name} received; stopped" in stderr
    assert not (tmp_path / "b" / "out.pt").exists()

    loud = [arg for arg in _finetune_cmd(data, tmp_path / "b", step, workers=1) if arg != "--quiet"]
    rerun = subprocess.run(loud, env=_env(), timeout=300, capture_output=True, text=True, check=True)
    assert f"resumed from {last}" in rerun.stdout
    if state["iteration"]:
        assert f"in epoch {state['epoch'] + 1}/8 after iteration {state['iteration']}/" in rerun.stdout
    _assert_same_weights(_weights(tmp_path / "a" / "out.pt"), _weights(tmp_path / "b" / "out.pt"))


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(data, tmp_path):
    model = {**MODEL, "drop_path": 0.0}  # drop path draws per rank: off for the comparison
    step = {**FINETUNE, "init": "scratch", "head_epochs": 1, "epochs": 2, "batch_size": 4, "windows_per_game": 8,
            "mixup_alpha": 0.0}
    single = [*_finetune_args(data, tmp_path / "one", step, model=model)]
    subprocess.run([sys.executable, "-m", "comedian.train.finetune", *single], check=True, env=_env(), timeout=300)
    double = [*_finetune_args(data, tmp_path / "two", step, model=model)]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "comedian.train.finetune", *double], check=True, env=_env(), timeout=300)
    # float rounding only: the ranks' spatial transformers run on other numbers of (kept) tubelets than the
    # single process's, so their matrix products round differently
    _assert_same_weights(_weights(tmp_path / "one" / "out.pt"), _weights(tmp_path / "two" / "out.pt"), atol=5e-5)
    assert torch.load(tmp_path / "two" / "work" / "last.pt", weights_only=True)["world_size"] == 2


# --------------------------------------------------------------------------------------------------
# Token masking: the tube unit, and no mask while the trunk is frozen


def _runs(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of consecutive masked tokens of each row."""
    out = []
    for row in mask.tolist():
        run = 0
        for masked in row + [False]:
            if masked:
                run += 1
            elif run:
                out.append(run)
                run = 0
    return out


def test_mask_tubes_are_counted_in_frames():
    assert mask_tube_tokens(2, 2, "x") == 1 and mask_tube_tokens(4, 2, "x") == 2  # 2 frames = one tubelet
    with pytest.raises(InputError, match="mask_tube_frames: 3 frames is not a whole number of 2-frame tokens"):
        mask_tube_tokens(3, 2, "mask_tube_frames")
    keys = torch.stack([torch.zeros(400, dtype=torch.long), torch.arange(400)], dim=1)
    one = sample_masks(keys, 32, 0.25, mask_tube_tokens(2, 2, "x"), seed=0)
    two = sample_masks(keys, 32, 0.25, mask_tube_tokens(4, 2, "x"), seed=0)
    assert (one.sum(1) == 8).all() and (two.sum(1) == 8).all()  # floor(0.25 x 32) tokens, whatever the tube
    # The authors' 2-frame tubes are single tokens, so masked runs are short (about 1.3 tokens on average
    # for 8 tokens of 32 drawn at random, as the issue measured on theirs); 4-frame tubes give runs of 2 at least.
    assert 1.15 < np.mean(_runs(one)) < 1.5
    assert min(_runs(two)) >= 2 and np.mean(_runs(two)) > 2.3


def test_no_token_is_masked_while_the_trunk_is_frozen():
    model = build_model("vivit_demo", frames=8, size=32, classes=3, temporal_depth=1)
    module = finetune.SpottingModule(model, finetune.FinetuneSettings(mask_ratio=0.5, mixup_alpha=0.0), CLASSES)
    masks = []
    forward = model.forward
    model.forward = lambda clip, mask=None: (masks.append(mask), forward(clip, mask))[1]
    batch = {"clip": torch.zeros(2, 8, 3, 32, 32), "key": torch.tensor([[0, 0], [0, 1]]),  # a prepared batch
             "targets": torch.zeros(2, 4, 3)}
    module.start_phase(Phase("head", 1, 1e-3, trunk_frozen=True))
    module.forward(batch)
    module.start_phase(Phase("full", 1, 1e-3))
    module.forward(batch)
    assert masks[0] is None  # the classifier phase: frozen trunk in eval mode, as the authors'
    assert masks[1].sum(1).tolist() == [2, 2]  # the whole-model phase: alpha2 of the 4 tokens


def test_a_finetuning_run_holds_its_checkpoint_and_system_metrics(data, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("COMEDIAN_TRACKING", "1")
    monkeypatch.setenv("COMEDIAN_TRACKING_URI", uri)
    monkeypatch.setenv("COMEDIAN_TRACKING_FALLBACK_URI", uri)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    step = {**FINETUNE, "epochs": 2, "validate_every": 1}
    assert finetune.main(_finetune_args(data, tmp_path, step)) == 0
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("comedian").experiment_id])
    names = {info.path for info in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert names == {"checkpoint/out.pt", "checkpoint/metrics.json"}
    logged = Path(client.download_artifacts(run.info.run_id, "checkpoint/out.pt", str(tmp_path / "dl")))
    assert logged.read_bytes() == (tmp_path / "out.pt").read_bytes()
    chosen = json.loads(Path(client.download_artifacts(run.info.run_id, "checkpoint/metrics.json",
                                                       str(tmp_path / "dl"))).read_text())
    training = read_checkpoint(tmp_path / "out.pt")["extra"]["training"]
    assert chosen["epoch"] == (training["best"]["epoch"] or training["epochs"])  # the epoch the output holds
    validated = {k: v for k, v in training["history"][chosen["epoch"] - 1].items() if k.startswith("valid_")}
    assert validated and {k: chosen[k] for k in validated} == validated
    assert any(key.startswith("system/") for key in run.data.metrics)
