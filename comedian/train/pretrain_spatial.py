"""Step 1, ``comedian pretrain-spatial``: MoCo pretraining of the spatial transformer (paper Sec. 3.2, Eq. 1-2).

Samples: every 1-s sub-video (2 frames, one tubelet) of every training half, or ``subvideos_per_half`` of
each half's drawn afresh every epoch (:class:`~comedian.data.clips.SubVideoPairs`), shuffled one by one or in
runs of ``subvideos_per_run`` consecutive seconds of a half (each run read at once); two views each,
augmented clip-consistently (the same crop, flip, colour jitter, grayscale, blur and solarisation for both
frames of a view) from two distributions A1, A2 that differ in blur and solarisation probabilities (SPEC.md §3).

Branches (:class:`MoCoModule`):

- online: spatial transformer f_s -> projector (D -> 1024 -> 1024 -> 256, GELU) -> predictor
  (256 -> 1024 -> 256): z^v_s = g_s(f_s(X^v));
- target: an EMA copy of the spatial transformer and projector, z^v_t, no gradient; its momentum rises
  from ``momentum`` to 1 along a cosine over the optimiser steps (:mod:`comedian.train.ema`); it runs in
  train mode as the authors' (drop path in the keys too; ``target_mode: eval`` turns it off).

Loss: the symmetric MoCo loss (Eq. 1) ``-1/2 (l_M(z1s, z2t) + l_M(z2s, z1t))`` with temperature tau, the
negatives being a FIFO queue of earlier target embeddings (both views' keys are enqueued after each step,
gathered over all ranks under DDP) (:func:`comedian.losses.moco.moco_loss`).

Output: a checkpoint with the ``spatial`` part (the online transformer), plus the projector in ``extra``.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from comedian.data.clips import AugmentSpec, ClipAugment, SubVideoPairs, list_halves
from comedian.data.soccernet import read_game_lists
from comedian.errors import InputError
from comedian.losses.moco import FeatureQueue, all_gather, moco_loss
from comedian.models import make_checkpoint, predictor, projector
from comedian.train.ema import ema_momentum, ema_update
from comedian.train.loop import (
    DistContext,
    LoopConfig,
    ModelSettings,
    Phase,
    Prepared,
    StepModule,
    add_common_arguments,
    build_step_model,
    config_params,
    frame_loading,
    fingerprint,
    maybe_compile,
    parse_json_arg,
    run_step,
    settings_from,
)

STEP = "pretrain_spatial"

#: SPEC.md §3 step 1 augmentations; ``blur_p`` and ``solarize_p`` are per view (A1, A2).
DEFAULT_AUGMENT: dict[str, Any] = {
    "crop_scale": [0.2, 1.0], "crop_ratio": [0.75, 4 / 3], "flip_p": 0.5, "jitter": [0.4, 0.4, 0.2, 0.1],
    "jitter_p": 0.8, "grayscale_p": 0.2, "blur_p": [1.0, 0.1], "blur_sigma": [0.1, 2.0], "solarize_p": [0.0, 0.2],
}


@dataclass(frozen=True)
class SpatialSettings:
    """The config's ``pretrain_spatial`` section (``--step`` JSON); defaults = the authors' settings.

    Attributes:
        epochs: training epochs (one epoch = every 1-s sub-video of the train split once).
        warmup_epochs: linear lr warm-up, epochs.
        batch_size: global batch of sub-videos.
        lr: base lr per 256 samples.
        final_lr_ratio: lr at the end of the cosine / peak lr.
        warmup_start_ratio: lr of the first warm-up step / peak lr (the authors' warmup_start_lr: 0).
        weight_decay: AdamW weight decay.
        grad_clip: gradient clipping norm (0 = off).
        temperature: tau of Eq. 2.
        queue_size: negatives kept in the queue (M).
        momentum: EMA momentum at the start (rises to 1).
        subvideos_per_half: sub-videos of each half per epoch, drawn afresh every epoch; None = every one
            (the authors').
        subvideos_per_run: the epoch is shuffled in runs of up to this many consecutive sub-videos of a half
            (seconds), each run read at once and kept in one batch (:class:`~comedian.data.clips.SubVideoPairs`);
            1 = every sub-video shuffled on its own (the authors').
        target_mode: ``train`` (the authors: the EMA target runs in train mode, drop path on, as a
            submodule of their Lightning module) or ``eval``.
        proj_dim, proj_hidden, pred_hidden: projector output / hidden widths, predictor hidden width.
        frame_cache_mb: decoded frames kept in memory per data process, MB (0 = none; see
            :class:`comedian.data.clips.FrameStore`).
        augment: the augmentation set (keys of :class:`~comedian.data.clips.AugmentSpec`; ``blur_p`` and
            ``solarize_p`` are [view 1, view 2]).
        precision: CUDA autocast precision (bf16, fp16, fp32).
        checkpoint_every_s: also write the training state mid-epoch every this many seconds (0 = at
            epoch ends and on SIGTERM/SIGUSR1 only); not part of the run's identity.
    """

    epochs: int = 200
    warmup_epochs: float = 10
    batch_size: int = 1024
    lr: float = 5e-4
    final_lr_ratio: float = 0.0
    warmup_start_ratio: float = 0.0
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    temperature: float = 0.1
    queue_size: int = 65536
    momentum: float = 0.99
    target_mode: str = "train"
    subvideos_per_half: int | None = None
    subvideos_per_run: int = 1
    proj_dim: int = 256
    proj_hidden: int = 1024
    pred_hidden: int = 1024
    augment: Any = None
    precision: str = "bf16"
    checkpoint_every_s: float = 1800.0
    frame_cache_mb: float = 0.0


def view_augments(config: dict[str, Any] | None, size: int) -> tuple[ClipAugment, ClipAugment]:
    """The two views' augmentations A1, A2 from the ``augment`` setting (per-view blur and solarise)."""
    values = {**DEFAULT_AUGMENT, **dict(config or {})}
    specs = []
    for view in (0, 1):
        per_view = {k: (v[view] if k in ("blur_p", "solarize_p") and isinstance(v, (list, tuple)) else v)
                    for k, v in values.items()}
        specs.append(ClipAugment(AugmentSpec.from_config(per_view), size))
    return specs[0], specs[1]


class MoCoModule(StepModule):
    """Online spatial transformer + projector + predictor, EMA target, queue; see the module docstring.

    ``prepare`` augments the sub-videos' frames twice on the device (``augment_view1``, ``augment_view2``);
    ``forward({"view1", "view2"})``: each normalised (N, 2, 3, S, S) -> the MoCo loss. Only ``model.spatial``, the
    projector and the predictor train; the model's temporal transformer and head stay frozen and unused.
    """

    def __init__(self, model: Any, settings: SpatialSettings) -> None:
        super().__init__()
        self.model = model
        self.frame_size = model.arch["config"]["size"]
        self.settings = settings
        self.projector = projector(model.dim, settings.proj_dim, settings.proj_hidden)
        self.predictor = predictor(settings.proj_dim, settings.pred_hidden)
        self.target = nn.ModuleDict({"spatial": copy.deepcopy(model.spatial),
                                     "projector": copy.deepcopy(self.projector)})
        self.target.requires_grad_(False)
        self.queue = FeatureQueue(settings.queue_size, settings.proj_dim)
        self._keys: torch.Tensor | None = None

    def start_phase(self, phase: Phase) -> None:
        self.model.requires_grad_(False)
        self.model.spatial.requires_grad_(True)

    def train_mode(self) -> None:
        self.train()
        if self.settings.target_mode == "eval":
            self.target.eval()

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        views = torch.cat([batch["view1"], batch["view2"]])  # (2N, 2, 3, S, S) float
        n = batch["view1"].shape[0]
        online = self.predictor(self.projector(self.model.spatial(views)[:, 0]))  # (2N, P)
        with torch.no_grad():
            keys = self.target["projector"](self.target["spatial"](views)[:, 0])
        z1s, z2s = online[:n], online[n:]
        z1t, z2t = keys[:n], keys[n:]
        loss = moco_loss(z1s, z2s, z1t, z2t, self.queue.features, self.settings.temperature)
        self._keys = keys.detach()
        with torch.no_grad():
            cos = torch.nn.functional.cosine_similarity(online.float(), keys.roll(n, 0).float(), dim=1).mean()
        return loss, {"positive_cos": cos}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        momentum = ema_momentum(step, total_steps, self.settings.momentum)
        ema_update(self.target["spatial"], self.model.spatial, momentum)
        ema_update(self.target["projector"], self.projector, momentum)
        if self._keys is not None:
            self.queue.enqueue(all_gather(self._keys))
            self._keys = None

    def output_checkpoint(self) -> dict[str, Any]:
        return make_checkpoint(self.model, STEP, parts=["spatial"], extra={
            "projector": {k: v.detach().cpu() for k, v in self.projector.state_dict().items()},
        })


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comedian pretrain-spatial",
        description="Step 1: MoCo pretraining of the spatial transformer on every 1-s sub-video of the train "
        "split. Resumes from <workdir>/last.pt; runs under torchrun for several GPUs/processes.",
    )
    add_common_arguments(parser)
    return parser


def prepare(args: argparse.Namespace, ctx: DistContext) -> Prepared:
    """Settings, model, MoCo module and data of step 1 from the parsed command line."""
    model_settings = settings_from(ModelSettings, parse_json_arg(args.model, "--model"), "--model")
    settings = settings_from(SpatialSettings, parse_json_arg(args.step, "--step"), "--step (pretrain_spatial)")
    if args.init is not None:
        raise InputError("--init: step 1 starts from scratch; it takes no checkpoint")
    if settings.target_mode not in ("train", "eval"):
        raise InputError(f"--step: target_mode: {settings.target_mode!r} is not one of ['train', 'eval']")
    games = read_game_lists(args.train_list)
    model = build_step_model(model_settings, classes=1)  # the head is unused in this step
    module = MoCoModule(model, settings)
    maybe_compile(model, model_settings)
    size = model.arch["config"]["size"]
    halves = list_halves(args.frames_dir, games)
    dataset = SubVideoPairs(halves, view_augments(settings.augment, size), args.seed, model.tubelet_size,
                            settings.frame_cache_mb, settings.subvideos_per_half,
                            per_run=settings.subvideos_per_run, **frame_loading(args.decode, ctx, STEP, args.quiet))
    loop = LoopConfig(
        step=STEP,
        phases=(Phase("train", settings.epochs, settings.lr, settings.warmup_epochs, settings.final_lr_ratio,
                      warmup_start_ratio=settings.warmup_start_ratio),),
        batch_size=settings.batch_size, weight_decay=settings.weight_decay, grad_clip=settings.grad_clip,
        seed=args.seed, workers=args.workers, precision=settings.precision,
        checkpoint_every_s=settings.checkpoint_every_s,
        fingerprint=fingerprint(STEP, model_settings, settings, args.seed, games),
    )
    params = config_params(model=model_settings, step=settings, seed=args.seed, world_size=ctx.world_size,
                           samples_per_epoch=len(dataset))
    return Prepared(loop, module, dataset, params)


def main(argv: list[str] | None = None) -> int:
    return run_step(STEP, parser().parse_args(argv), prepare)


if __name__ == "__main__":
    raise SystemExit(main())
