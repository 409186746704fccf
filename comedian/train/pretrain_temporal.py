"""Step 2, ``comedian pretrain-temporal``: spatio-temporal distillation of the teacher bank with SCE
(paper Sec. 3.3, Eq. 3-6).

Samples: windows of Tg frames, ``windows_per_game`` per game per epoch, by default the authors' sampler
(``sampling: segments``: each half gets ``windows_per_game / 2`` windows, one jittered window inside each of
as many equal segments, never overlapping; :func:`comedian.data.clips.sample_windows`), augmented
clip-consistently. Training games: the split lists given by ``--train-list`` (``train_splits``).
Each token (a 2-frame tubelet, 1 s at 2 fps) is paired with the bank row of its tubelet's middle second
(:func:`comedian.data.targets.bank_rows`: row floor(token time), row i = second i of the half), read from
the PCA'd Baidu bank written by ``comedian pca``.

Model (:class:`SCEModule`): the spatial transformer turns each tubelet into a token; a ratio ``mask_ratio``
(alpha1) of the tokens, in tubes of ``mask_tube_frames`` frames (2 = one token, the authors'), is replaced by the learned mask token (each
clip's mask drawn from its sample key, so it is reproducible); the temporal transformer contextualises
the tokens; a projector (D -> 1024 -> 1024 -> 512, GELU) maps every temporal token to the bank's space.

Loss: :func:`comedian.losses.sce.sce_loss` with lambda, tau, tau_m. The paper's sums over the complete
bank (Eq. 3-4) are approximated, as the authors' code does, by a candidate set per token: the teacher rows
of the tokens of the same clip (``negatives: clip``; ``batch`` = of every clip of the local batch) plus a
FIFO queue of ``queue_size`` teacher rows of earlier batches (gathered over all ranks under DDP); the
positive is the token's own row, identified by position.

Initialisation: the spatial transformer from step 1's checkpoint (``init: pretrain_spatial``, ``--init``)
and, as in the authors' code, the temporal blocks copied from the first spatial blocks
(:func:`comedian.models.init_temporal_from_spatial`, ``copy_spatial_blocks``); or from scratch
(``init: scratch``). Output: a checkpoint with the ``spatial`` and ``temporal`` parts.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comedian.data.clips import AugmentSpec, ClipAugment, HalfVideo, WindowClips, list_halves
from comedian.data.soccernet import game_slug, read_game_lists
from comedian.data.targets import bank_rows
from comedian.errors import InputError
from comedian.losses.moco import FeatureQueue, all_gather
from comedian.losses.sce import sce_loss
from comedian.models import init_temporal_from_spatial, load_step_checkpoint, make_checkpoint, projector
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

STEP = "pretrain_temporal"
INITS = ("pretrain_spatial", "scratch")

#: The authors' step-2 augmentations (resize, colour jitter, grayscale, blur, solarise, flip).
DEFAULT_AUGMENT: dict[str, Any] = {
    "crop_scale": [1.0, 1.0], "flip_p": 0.5, "jitter": [0.8, 0.8, 0.4, 0.2], "jitter_p": 0.8,
    "grayscale_p": 0.2, "blur_p": 0.5, "blur_sigma": [0.1, 2.0], "solarize_p": 0.2,
}


@dataclass(frozen=True)
class TemporalSettings:
    """The config's ``pretrain_temporal`` section (``--step`` JSON); defaults = the authors' settings.

    Attributes:
        init: ``pretrain_spatial`` (needs ``--init``, step 1's checkpoint) or ``scratch``.
        copy_spatial_blocks: start the temporal blocks as copies of the first spatial blocks (ViViT only).
        epochs, warmup_epochs, batch_size, lr, final_lr_ratio, weight_decay, grad_clip, precision: the
            optimisation (batch = global clips per step; lr per 256 clips).
        checkpoint_every_s: also write the training state mid-epoch every this many seconds (0 = at
            epoch ends and on SIGTERM/SIGUSR1 only); not part of the run's identity.
        windows_per_game: windows per game per epoch.
        warmup_start_ratio: lr of the first warm-up step / peak (the authors' warmup_start_lr: 1%).
        sampling: ``segments`` (authors), ``random`` or ``uniform`` windows (:func:`comedian.data.clips.sample_windows`).
        mask_ratio: alpha1, share of tokens replaced by the mask token.
        mask_tube_frames: FRAMES per mask tube (a multiple of the tubelet's 2 frames; 2 = one token).
        train_splits: the splits whose lists ``--train-list`` names (recorded; the rule passes the lists).
        lam, temperature, temperature_m: lambda, tau, tau_m of Eq. 3-5.
        negatives: ``clip`` or ``batch`` (see the module docstring).
        queue_size: teacher rows kept as negatives.
        proj_hidden: projector hidden width (its output width is the bank's).
        frame_cache_mb: decoded frames kept in memory per data process, MB (0 = none; see
            :class:`comedian.data.clips.FrameStore`).
        augment: augmentation set (keys of :class:`~comedian.data.clips.AugmentSpec`).
    """

    init: str = "pretrain_spatial"
    copy_spatial_blocks: bool = True
    epochs: int = 100
    warmup_epochs: float = 10
    batch_size: int = 32
    lr: float = 4e-3
    final_lr_ratio: float = 0.01
    warmup_start_ratio: float = 0.01
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    precision: str = "bf16"
    checkpoint_every_s: float = 1800.0
    frame_cache_mb: float = 0.0
    windows_per_game: int = 150
    sampling: str = "segments"
    mask_ratio: float = 0.5
    mask_tube_frames: int = 2
    train_splits: tuple[str, ...] = ("train",)
    lam: float = 0.5
    temperature: float = 0.1
    temperature_m: float = 0.05
    negatives: str = "clip"
    queue_size: int = 65536
    proj_hidden: int = 1024
    augment: Any = None


class TeacherBank:
    """Teacher rows of the PCA'd bank (``comedian pca`` layout: ``/halves/<slug>/<half>`` (T, K) float32).

    The HDF5 file is opened lazily in the process that reads (one handle per DataLoader worker); a window's
    rows are ONE contiguous read. Call it as ``bank(half, start_s, n_frames)`` -> ``{"teacher": (L, K)}``,
    the :class:`~comedian.data.clips.WindowClips` ``extras`` hook.

    Raises:
        InputError: the bank lacks a half of ``halves``.
    """

    def __init__(self, path: str | Path, halves: Sequence[HalfVideo], frames_per_token: int = 2) -> None:
        import h5py

        self.path = Path(path)
        self.frames_per_token = frames_per_token
        if not self.path.is_file():
            raise InputError(f"{self.path}: teacher bank not found")
        self.rows: dict[tuple[str, int], int] = {}
        with h5py.File(self.path, "r", locking=False) as h5:
            for h in halves:
                key = self._key(h.game, h.half)
                if key not in h5:
                    raise InputError(f"{self.path}: no features for {h.game!r} half {h.half} ({key})")
                self.rows[(h.game, h.half)] = int(h5[key].shape[0])
                self.dim = int(h5[key].shape[1])
        self._h5: Any = None
        self._pid: int | None = None

    @staticmethod
    def _key(game: str, half: int) -> str:
        return f"halves/{game_slug(game)}/{half}"

    def _file(self) -> Any:
        if self._h5 is None or self._pid != os.getpid():
            import h5py

            self._h5, self._pid = h5py.File(self.path, "r", locking=False), os.getpid()
        return self._h5

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None, "_pid": None}

    def teacher(self, half: HalfVideo, start_s: float, n_frames: int) -> np.ndarray:
        """(L, K) float32: the bank row of each token of the window (row floor(token time), clipped)."""
        n_rows = self.rows[(half.game, half.half)]
        rows = bank_rows(start_s, n_frames // self.frames_per_token, half.fps, self.frames_per_token, n_rows)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        block = self._file()[self._key(half.game, half.half)][lo:hi]
        return np.asarray(block[rows - lo], dtype=np.float32)

    def __call__(self, half: HalfVideo, start_s: float, n_frames: int) -> dict[str, np.ndarray]:
        return {"teacher": self.teacher(half, start_s, n_frames)}


class SCEModule(StepModule):
    """Spotting model trunk + projector + queue of teacher rows; see the module docstring.

    ``prepare`` augments and normalises the clips on the device;
    ``forward({"clip": (B, T, 3, S, S), "key": (B, 2), "teacher": (B, L, K)})`` -> SCE loss; the
    token mask of each clip is drawn from its key (:func:`comedian.train.loop.sample_masks`).
    The classifier head is frozen and unused; so is the mask token when ``mask_ratio`` is 0.
    """

    def __init__(self, model: Any, settings: TemporalSettings, bank_dim: int, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.frame_size = model.arch["config"]["size"]
        self.settings = settings
        self.seed = seed
        self.projector = projector(model.dim, bank_dim, settings.proj_hidden)
        self.queue = FeatureQueue(settings.queue_size, bank_dim)
        self.tube_tokens = mask_tube_tokens(settings.mask_tube_frames, model.tubelet_size, "--step: mask_tube_frames")
        self._keys: torch.Tensor | None = None

    def start_phase(self, phase: Phase) -> None:
        self.model.requires_grad_(True)
        self.model.head.requires_grad_(False)
        self.model.temporal.mask_token.requires_grad_(self.settings.mask_ratio > 0)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        teacher = batch["teacher"]
        mask = (sample_masks(batch["key"], teacher.shape[1], s.mask_ratio, self.tube_tokens, self.seed)
                if s.mask_ratio > 0 else None)
        z = self.projector(self.model.temporal_tokens(batch["clip"], mask))  # (B, L, K)
        loss = sce_loss(z, teacher, self.queue.features, s.lam, s.temperature, s.temperature_m, s.negatives)
        self._keys = teacher.reshape(-1, teacher.shape[-1]).detach()
        with torch.no_grad():
            cos = torch.nn.functional.cosine_similarity(z.float(), teacher.float(), dim=-1).mean()
        return loss, {"teacher_cos": cos}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        if self._keys is not None:
            self.queue.enqueue(all_gather(self._keys))
            self._keys = None

    def output_checkpoint(self) -> dict[str, Any]:
        return make_checkpoint(self.model, STEP, parts=["spatial", "temporal"], extra={
            "projector": {k: v.detach().cpu() for k, v in self.projector.state_dict().items()},
        })


def initialise(model: Any, settings: TemporalSettings, init: Path | None) -> None:
    """Load step 1's spatial weights and copy the first spatial blocks into the temporal transformer."""
    if not check_init("pretrain_temporal", settings.init, INITS, init):
        return
    load_step_checkpoint(model, init, STEP, resize_time_embed=True)
    if settings.copy_spatial_blocks:
        init_temporal_from_spatial(model)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comedian pretrain-temporal",
        description="Step 2: distil the PCA'd Baidu bank into the spatial + temporal transformers with the "
        "SCE loss and token masking. Resumes from <workdir>/last.pt; runs under torchrun.",
    )
    add_common_arguments(parser)
    parser.add_argument("--bank", required=True, type=Path, help="teacher bank (HDF5 of comedian pca)")
    return parser


def prepare(args: argparse.Namespace, ctx: DistContext) -> Prepared:
    """Settings, model (initialised from step 1), SCE module and data of step 2 from the parsed command line."""
    model_settings = settings_from(ModelSettings, parse_json_arg(args.model, "--model"), "--model")
    settings = settings_from(TemporalSettings, parse_json_arg(args.step, "--step"), "--step (pretrain_temporal)")
    games = read_game_lists(args.train_list)
    model = build_step_model(model_settings, classes=1)  # the head is unused in this step
    initialise(model, settings, args.init)
    halves = list_halves(args.frames_dir, games)
    bank = TeacherBank(args.bank, halves, model.tubelet_size)
    module = SCEModule(model, settings, bank.dim, args.seed)
    maybe_compile(model, model_settings)
    size = model.arch["config"]["size"]
    augment = ClipAugment(AugmentSpec.from_config({**DEFAULT_AUGMENT, **dict(settings.augment or {})}), size)
    dataset = WindowClips(halves, model_settings.frames, settings.windows_per_game, augment, args.seed,
                          model.tubelet_size, settings.sampling, extras=bank, cache_mb=settings.frame_cache_mb,
                          **frame_loading(args.decode, ctx, STEP, args.quiet))
    loop = LoopConfig(
        step=STEP,
        phases=(Phase("train", settings.epochs, settings.lr, settings.warmup_epochs, settings.final_lr_ratio,
                      warmup_start_ratio=settings.warmup_start_ratio),),
        batch_size=settings.batch_size, weight_decay=settings.weight_decay, grad_clip=settings.grad_clip,
        seed=args.seed, workers=args.workers, precision=settings.precision,
        checkpoint_every_s=settings.checkpoint_every_s,
        fingerprint=fingerprint(STEP, model_settings, settings, args.seed, games, file_identity(args.init),
                                file_identity(args.bank)),
    )
    params = config_params(model=model_settings, step=settings, seed=args.seed, world_size=ctx.world_size,
                           samples_per_epoch=len(dataset), init=str(args.init), bank=str(args.bank))
    return Prepared(loop, module, dataset, params)


def main(argv: list[str] | None = None) -> int:
    return run_step(STEP, parser().parse_args(argv), prepare)


if __name__ == "__main__":
    raise SystemExit(main())
