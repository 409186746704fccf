"""Step 3, ``comedian finetune``: fine-tuning to action spotting (paper Sec. 3.4, Eq. 7), validated with t-AmAP.

Samples: windows of Tg frames, ``windows_per_game`` per game per epoch, spread over each half without
overlap with both edges included (the authors' "uniform" sampler, :func:`comedian.data.clips.sample_windows`),
augmented clip-consistently. Targets (:func:`comedian.data.targets.token_targets`): a frame is positive for
class c when an action of c lies within ``radius_s`` (0.5 s) of it, a token when either of its frames is.

Loss: per-token, per-class binary cross-entropy on the head's logits (Eq. 7); with ``mixup_alpha`` > 0 each
clip is mixed with another clip of the batch (a permutation) with its OWN lambda ~ Beta(alpha, alpha), and
its loss mixed with that weight (:func:`comedian.losses.spotting.mixup`, the authors' ``SpottingMixup``).

Phases: first the classifier alone (``head_epochs``; spatial and temporal transformers frozen, in eval
mode, so no token is masked), then the whole model (``epochs``), each with its own AdamW, warm-up and
cosine. In the whole-model phase a ratio ``mask_ratio`` (alpha2) of the tokens, in tubes of
``mask_tube_frames`` frames, is replaced by the learned mask token (each clip's mask drawn from its sample
key, so reproducible).

Training games: the split lists given by ``--train-list`` (``train_splits``: train for the ablations,
train + valid for the test split, every annotated split for the challenge). Labels past the end of a
half's frames by at most ``label_tolerance_s`` give positives only to the frames within their radius that
exist; further past is an error.

Initialisation (``init``, the paper's Table 5 ablation through one DAG): ``pretrain_temporal`` (step 2's
spatial + temporal weights), ``pretrain_spatial`` (step 1's spatial weights; temporal copied from the first
spatial blocks as step 2 would), or ``scratch``; ``--init`` names the checkpoint.

Validation (every ``head_validate_every`` epochs of the classifier phase and ``validate_every`` of the
whole-model phase, and at each phase's end; the authors: 15 and 5): the valid split's halves are scored by
sliding windows (:func:`comedian.inference.windows.score_halves`, ``ignore_s``, ``merge``), each rank
taking its share of halves; NMS (``nms``, ``nms_window_s``, ``nms_threshold``, as ``comedian postprocess``
does) turns scores into predictions, scored with the project's official-equivalent t-AmAP
(:func:`comedian.scoring.score`, tight and loose). The output is the last weights (``select: last``, the
only honest choice when valid is trained on or evaluated) or those of the best validation tight t-AmAP
(``select: best_valid``).

Every checkpoint written carries, besides ``extra["classes"]``, ``extra["inference"]``
(:func:`inference_settings`): what inference on a new video needs beyond the weights (``comedian spot``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from comedian.data.clips import AugmentSpec, ClipAugment, HalfVideo, WindowClips, list_halves
from comedian.data.soccernet import read_game_list, read_game_lists, read_split_labels
from comedian.data.targets import half_events, token_targets
from comedian.errors import InputError
from comedian.inference.windows import INPUT_MEAN, INPUT_STD, score_halves, window_plan
from comedian.losses.spotting import mixup, mixup_spotting_loss, spotting_loss
from comedian.models import init_temporal_from_spatial, load_step_checkpoint, make_checkpoint, set_trunk_trainable
from comedian.postprocess import NMS_KINDS, apply_nms, grid_step_s, window_steps
from comedian.scoring import score
from comedian.train.loop import (
    DistContext,
    LoopConfig,
    ModelSettings,
    Phase,
    Prepared,
    StepModule,
    add_common_arguments,
    build_step_model,
    check_init,
    config_params,
    frame_loading,
    file_identity,
    fingerprint,
    mask_tube_tokens,
    maybe_compile,
    parse_json_arg,
    run_step,
    sample_masks,
    settings_from,
)

STEP = "finetune"
INITS = ("pretrain_temporal", "pretrain_spatial", "scratch")
SCORE_KEY = "valid_tight_amap"
SELECTIONS = ("last", "best_valid")

#: The authors' fine-tuning augmentations (resize, colour jitter without hue, blur, flip).
DEFAULT_AUGMENT: dict[str, Any] = {
    "crop_scale": [1.0, 1.0], "flip_p": 0.5, "jitter": [0.4, 0.4, 0.4, 0.0], "jitter_p": 0.8,
    "grayscale_p": 0.0, "blur_p": 0.5, "blur_sigma": [0.1, 2.0], "solarize_p": 0.0,
}


@dataclass(frozen=True)
class FinetuneSettings:
    """The config's ``finetune`` section (``--step`` JSON); defaults = the paper's / authors' settings.

    Attributes:
        init: ``pretrain_temporal``, ``pretrain_spatial`` (both need ``--init``) or ``scratch``.
        head_epochs, head_lr, head_warmup_epochs: the classifier-only phase (trunk frozen); 0 epochs = none.
        epochs, lr, warmup_epochs: the whole-model phase.
        final_lr_ratio: lr at the end of each cosine / peak lr.
        batch_size: global clips per optimiser step; lr per 256 clips.
        weight_decay, grad_clip, precision: the optimisation.
        checkpoint_every_s: also write the training state mid-epoch every this many seconds (0 = at
            epoch ends and on SIGTERM/SIGUSR1 only); not part of the run's identity.
        windows_per_game: windows per game per epoch.
        sampling: ``uniform`` (authors) or ``random`` windows.
        radius_s: label radius in seconds (a frame is positive within it of an action).
        mixup_alpha: Beta(alpha, alpha) of mixup (one lambda per clip); 0 = no mixup.
        mask_ratio, mask_tube_frames: alpha2 and the tube length of token masking in FRAMES (2 = one token),
            in the whole-model phase only.
        frame_cache_mb: decoded frames kept in memory per data process, MB (0 = none; see
            :class:`comedian.data.clips.FrameStore`).
        augment: augmentation set (keys of :class:`~comedian.data.clips.AugmentSpec`).
        head_prior: initialise the classifier's bias to the log-odds of each class's share of positive tokens
            in the first epoch's windows (RetinaNet's prior initialisation) instead of the authors' 0: the BCE
            then starts at the class priors instead of 0.5. Off in the paper's configs.
        train_splits: the splits whose lists ``--train-list`` names (recorded; the rule passes the lists).
        label_tolerance_s: labels this far past the end of their half's frames are kept, with a warning.
        head_validate_every, validate_every: validate every this many epochs of the classifier / whole-model
            phase (and at the phase's end); 0 = never in that phase.
        select: ``last`` (the last weights) or ``best_valid`` (the weights of the best validation tight t-AmAP).
        ignore_s, merge, nms, nms_window_s, nms_threshold, valid_batch_size: validation inference and NMS.
    """

    init: str = "pretrain_temporal"
    head_epochs: int = 30
    head_lr: float = 1e-3
    head_warmup_epochs: float = 0
    epochs: int = 20
    lr: float = 1e-3
    warmup_epochs: float = 0
    final_lr_ratio: float = 0.01
    batch_size: int = 64
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    precision: str = "bf16"
    checkpoint_every_s: float = 1800.0
    frame_cache_mb: float = 0.0
    windows_per_game: int = 100
    sampling: str = "uniform"
    radius_s: float = 0.5
    mixup_alpha: float = 0.1
    mask_ratio: float = 0.25
    mask_tube_frames: int = 2
    augment: Any = None
    head_prior: bool = False
    train_splits: tuple[str, ...] = ("train",)
    label_tolerance_s: float = 5.0
    head_validate_every: int = 15
    validate_every: int = 5
    select: str = "last"
    ignore_s: float = 12.0
    merge: str = "max"
    nms: str = "soft"
    nms_window_s: float = 10.0
    nms_threshold: float = 0.001
    valid_batch_size: int = 8


class SpotTargets:
    """Per-token targets of a window, the :class:`~comedian.data.clips.WindowClips` ``extras`` hook:
    ``targets(half, start_s, n_frames)`` -> ``{"targets": (L, C) float32}``."""

    def __init__(self, labels: pd.DataFrame, num_classes: int, radius_s: float, frames_per_token: int = 2) -> None:
        self.events = {(g, h): half_events(labels, g, h) for g, h in labels[["game", "half"]].drop_duplicates()
                       .itertuples(index=False)}
        self.num_classes, self.radius_s, self.frames_per_token = num_classes, radius_s, frames_per_token
        self._none = (np.zeros(0), np.zeros(0, dtype=np.int64))

    def __call__(self, half: HalfVideo, start_s: float, n_frames: int) -> dict[str, np.ndarray]:
        times, classes = self.events.get((half.game, half.half), self._none)
        return {"targets": token_targets(times, classes, start_s, n_frames, self.num_classes, half.fps,
                                         self.frames_per_token, self.radius_s)}


@torch.no_grad()
def init_head_prior(model: Any, dataset: WindowClips, floor: float = 1e-4) -> np.ndarray:
    """Set the head's bias to ``log(p_c / (1 - p_c))``, p_c = the share of positive tokens of class c in
    the windows of epoch 0 (targets only: no frame is read), clipped to [floor, 0.5]. Returns p (C,)."""
    windows = dataset.windows(0)
    targets = [dataset.extras(dataset.halves[h], s / dataset.halves[h].fps, dataset.window_frames)["targets"]
               for h, s in windows]
    p = np.clip(np.concatenate(targets).mean(axis=0), floor, 0.5)
    model.head.fc.bias.copy_(torch.from_numpy(np.log(p / (1 - p))).to(model.head.fc.bias))
    return p


def predictions_table(game: str, half: int, scores: np.ndarray, times_s: np.ndarray, nms: str, window_s: float,
                      threshold: float) -> dict[str, np.ndarray]:
    """NMS of one half's (T, C) scores -> prediction rows (the columns :func:`comedian.scoring.score` reads),
    with the positions and NMS windows ``comedian postprocess`` uses (ms rounded to nearest; window in steps)."""
    window = window_steps(window_s, grid_step_s(times_s)) if times_s.size >= 2 else 0
    kept = apply_nms(scores, nms, window, threshold)
    rows, cols = np.nonzero(kept)
    return {
        "game": np.full(rows.size, game, dtype=object), "half": np.full(rows.size, half, dtype=np.int64),
        "class_index": cols.astype(np.int64),
        "position_ms": np.floor(times_s[rows] * 1000.0 + 0.5).astype(np.int64),
        "confidence": kept[rows, cols].astype(np.float64),
    }


class SpottingModule(StepModule):
    """The spotting model under BCE (+ mixup) and token masking, with validation; see the module docstring.

    ``prepare`` augments and normalises the clips on the device;
    ``forward({"clip": (B, T, 3, S, S), "key": (B, 2), "targets": (B, L, C)})`` -> the loss; the
    token mask of each clip is drawn from its key (:func:`comedian.train.loop.sample_masks`) when the whole
    model trains. ``score_key`` is the validation metric that picks the output (None with ``select: last``).
    """

    def __init__(self, model: Any, settings: FinetuneSettings, classes: Sequence[str],
                 valid: tuple[list[HalfVideo], pd.DataFrame] | None = None, seed: int = 0,
                 inference: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.inference = inference
        self.model = model
        self.frame_size = model.arch["config"]["size"]
        self.settings = settings
        self.score_key = SCORE_KEY if settings.select == "best_valid" else None
        self.tube_tokens = mask_tube_tokens(settings.mask_tube_frames, model.tubelet_size, "--step: mask_tube_frames")
        self.seed = seed
        self.classes = list(classes)
        self.valid = valid
        self.trunk_frozen = False

    def start_phase(self, phase: Phase) -> None:
        self.trunk_frozen = phase.trunk_frozen
        set_trunk_trainable(self.model, not phase.trunk_frozen)
        self.model.temporal.mask_token.requires_grad_(not phase.trunk_frozen and self.settings.mask_ratio > 0)

    def train_mode(self) -> None:
        self.train()
        if self.trunk_frozen:  # no drop path in a frozen trunk
            self.model.spatial.eval()
            self.model.temporal.eval()

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        clip, targets = batch["clip"], batch["targets"]
        s = self.settings
        masking = s.mask_ratio > 0 and not self.trunk_frozen  # a frozen trunk runs in eval mode: no mask
        mask = sample_masks(batch["key"], targets.shape[1], s.mask_ratio, self.tube_tokens, self.seed) if masking else None
        if self.settings.mixup_alpha > 0:
            clip, targets_a, targets_b, lam = mixup(clip, targets, self.settings.mixup_alpha)
            logits = self.model(clip, mask)
            loss = mixup_spotting_loss(logits, targets_a, targets_b, lam)
        else:
            logits = self.model(clip, mask)
            loss = spotting_loss(logits, targets)
        return loss, {}

    @torch.no_grad()
    def validate(self, epoch: int, ctx: DistContext) -> dict[str, float]:
        """Tight and loose t-AmAP on the valid split; each rank scores every world_size-th half."""
        if self.valid is None:
            return {}
        from comedian.data.frames import PackedFrames

        halves, labels = self.valid
        s = self.settings
        mine = list(range(ctx.rank, len(halves), ctx.world_size))
        files = [PackedFrames(halves[i].path) for i in mine]
        tables = []
        for k, scores, times_s in score_halves(self.model, files, self.model.arch["config"]["frames"], s.ignore_s,
                                               s.merge, s.valid_batch_size, device=ctx.device):
            h = halves[mine[k]]
            tables.append(predictions_table(h.game, h.half, scores, times_s, s.nms, s.nms_window_s, s.nms_threshold))
        for f in files:
            f.close()
        if ctx.distributed:
            gathered: list[Any] = [None] * ctx.world_size
            dist.all_gather_object(gathered, tables)
            tables = [t for part in gathered for t in part]
        predictions = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
        games = sorted({h.game for h in halves})
        out = {}
        for metric in ("tight", "loose"):
            result = score(labels, predictions, metric, num_classes=len(self.classes), games=games)
            out[f"valid_{metric}_amap"] = float(result["a_mAP"])
        out["valid_predictions"] = float(predictions["class_index"].size)
        return out

    def _checkpoint(self, extra: dict[str, Any]) -> dict[str, Any]:
        extra = {"classes": self.classes, **({"inference": self.inference} if self.inference else {}), **extra}
        return make_checkpoint(self.model, STEP, extra=extra)

    def best_checkpoint(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return self._checkpoint({"epoch": epoch, "valid": {k: float(v) for k, v in metrics.items()}})

    def output_checkpoint(self) -> dict[str, Any]:
        return self._checkpoint({})


def initialise(model: Any, settings: FinetuneSettings, init: Path | None) -> None:
    """Load the previous step's weights (see the module docstring)."""
    if not check_init("finetune", settings.init, INITS, init):
        return
    report = load_step_checkpoint(model, init, STEP, resize_time_embed=True)
    if settings.init == "pretrain_temporal" and any(k.startswith("temporal.") for k in report.missing):
        raise InputError(f"{init}: finetune.init is 'pretrain_temporal' but the checkpoint has no temporal "
                         f"weights (written by step {report.source_step!r})")
    if settings.init == "pretrain_spatial":
        init_temporal_from_spatial(model)


def inference_settings(s: FinetuneSettings, window_frames: int, halves: Sequence[HalfVideo]) -> dict[str, Any]:
    """The checkpoint's ``extra["inference"]``: the frame rate of the training frames (fps), the window
    (window_frames, frames), the input normalisation (input_mean, input_std), and the sliding-window and NMS
    settings that validation scored the model with (ignore_s, merge, nms, nms_window_s, nms_threshold)."""
    rates = sorted({h.fps for h in halves})
    if len(rates) != 1:
        raise InputError(f"--frames-dir: the training halves have several frame rates {rates}")
    return {"fps": float(rates[0]), "window_frames": int(window_frames), "input_mean": list(INPUT_MEAN),
            "input_std": list(INPUT_STD), "ignore_s": float(s.ignore_s), "merge": s.merge, "nms": s.nms,
            "nms_window_s": float(s.nms_window_s), "nms_threshold": float(s.nms_threshold)}


def check_settings(s: FinetuneSettings) -> None:
    """Range checks the schema also makes, for hand-written ``--step`` values."""
    if s.nms not in NMS_KINDS:
        raise InputError(f"--step: nms: {s.nms!r} is not one of {list(NMS_KINDS)}")
    if not (s.radius_s >= 0 and math.isfinite(s.radius_s)):
        raise InputError(f"--step: radius_s: {s.radius_s} must be a finite number of seconds >= 0")
    if s.mixup_alpha < 0:
        raise InputError(f"--step: mixup_alpha: {s.mixup_alpha} must be >= 0")
    if s.select not in SELECTIONS:
        raise InputError(f"--step: select: {s.select!r} is not one of {list(SELECTIONS)}")
    if s.select == "best_valid" and not (s.validate_every > 0 or s.head_validate_every > 0):
        raise InputError("--step: select is 'best_valid' but validate_every and head_validate_every are 0")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comedian finetune",
        description="Step 3: fine-tune the spotting model (classifier alone, then the whole model) with BCE, "
        "mixup and token masking; keep the checkpoint of best validation tight t-AmAP. Resumes from "
        "<workdir>/last.pt; runs under torchrun.",
    )
    add_common_arguments(parser)
    parser.add_argument("--valid-list", type=Path, default=None, help="split list of the validation games")
    parser.add_argument("--classes", required=True, help="class names in index order, as a JSON list")
    return parser


def prepare(args: argparse.Namespace, ctx: DistContext) -> Prepared:
    """Settings, model (initialised per ``init``), spotting module and data of step 3 from the command line."""
    model_settings = settings_from(ModelSettings, parse_json_arg(args.model, "--model"), "--model")
    settings = settings_from(FinetuneSettings, parse_json_arg(args.step, "--step"), "--step (finetune)")
    check_settings(settings)
    classes = parse_json_arg(args.classes, "--classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise InputError("--classes: must be a non-empty JSON list of class names")
    validating = settings.validate_every > 0 or settings.head_validate_every > 0
    if validating and args.valid_list is None:
        raise InputError("--valid-list: finetune.validate_every / head_validate_every > 0 needs the validation split")
    games = read_game_lists(args.train_list)
    valid_games = read_game_list(args.valid_list) if validating else []
    model = build_step_model(model_settings, classes=len(classes))
    initialise(model, settings, args.init)
    halves = list_halves(args.frames_dir, games)
    labels = read_split_labels(args.root, games, tuple(classes), covered_seconds(halves), settings.label_tolerance_s)
    valid = None
    if validating:
        valid_halves = list_halves(args.frames_dir, valid_games)
        valid = (valid_halves, read_split_labels(args.root, valid_games, tuple(classes), covered_seconds(valid_halves)))
        for half in valid[0]:  # bad ignore_s / window settings fail now, not after the first epochs
            window_plan(half.count, model_settings.frames, settings.ignore_s, half.fps, model.tubelet_size)
    module = SpottingModule(model, settings, classes, valid, args.seed,
                            inference_settings(settings, model_settings.frames, halves))
    maybe_compile(model, model_settings)
    size = model.arch["config"]["size"]
    augment = ClipAugment(AugmentSpec.from_config({**DEFAULT_AUGMENT, **dict(settings.augment or {})}), size)
    dataset = WindowClips(halves, model_settings.frames, settings.windows_per_game, augment, args.seed,
                          model.tubelet_size, settings.sampling,
                          extras=SpotTargets(labels, len(classes), settings.radius_s, model.tubelet_size),
                          cache_mb=settings.frame_cache_mb, **frame_loading(args.decode, ctx, STEP, args.quiet))
    if settings.head_prior:
        init_head_prior(model, dataset)
    phases = tuple(p for p in (
        Phase("head", settings.head_epochs, settings.head_lr, settings.head_warmup_epochs,
              settings.final_lr_ratio, trunk_frozen=True, validate_every=settings.head_validate_every),
        Phase("full", settings.epochs, settings.lr, settings.warmup_epochs, settings.final_lr_ratio,
              validate_every=settings.validate_every),
    ) if p.epochs > 0)
    loop = LoopConfig(
        step=STEP, phases=phases, batch_size=settings.batch_size, weight_decay=settings.weight_decay,
        grad_clip=settings.grad_clip, seed=args.seed, workers=args.workers, precision=settings.precision,
        checkpoint_every_s=settings.checkpoint_every_s,
        fingerprint=fingerprint(STEP, model_settings, settings, args.seed, games, valid_games, classes,
                                file_identity(args.init)),
    )
    params = config_params(model=model_settings, step=settings, seed=args.seed, world_size=ctx.world_size,
                           samples_per_epoch=len(dataset), init=str(args.init), classes=len(classes))
    return Prepared(loop, module, dataset, params)


def covered_seconds(halves: list) -> dict[tuple[str, int], float]:
    """(game, half) -> seconds its frames cover (count / fps, plus one frame's worth of slack)."""
    return {(h.game, h.half): (h.count + 1) / h.fps for h in halves}


def main(argv: list[str] | None = None) -> int:
    return run_step(STEP, parser().parse_args(argv), prepare)


if __name__ == "__main__":
    raise SystemExit(main())
