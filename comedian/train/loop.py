"""The one training loop of the three steps: optimiser, schedule, precision, checkpoints, resume, DDP.

A step (``pretrain_spatial``, ``pretrain_temporal``, ``finetune``) supplies a :class:`StepModule` — an
``nn.Module`` holding everything it trains and keeps (the model, its heads, an EMA target, feature queues)
whose ``forward(batch)`` returns the loss — a dataset keyed by ``(epoch, index)``
(:mod:`comedian.data.clips`), and a :class:`LoopConfig`. :class:`Trainer` does the rest:

- **Optimiser**: AdamW, weight decay (0.05) on weights only — not on biases, norms (1-D parameters),
  position / time embeddings, class and mask tokens (:func:`param_groups`).
- **Schedule** (:func:`lr_multiplier`), per optimiser step: linear warm-up to the peak, then a cosine to
  ``final_lr_ratio`` x peak. Peak lr = base lr x global batch / 256 (:func:`scaled_lr`). A step may run in
  several :class:`Phase` s (fine-tuning: classifier alone, then the whole model), each with its own
  optimiser, schedule and trainable parameters.
- **Precision**: bf16 autocast on CUDA (fp16 with a gradient scaler, or fp32, on request); fp32 on CPU.
  Gradients are clipped to a global L2 norm (1.0).
- **Reproducibility**: Python, NumPy and torch (and CUDA) RNGs are seeded from the run's seed (the same on
  every rank for the model's initialisation, then ``seed + rank`` for training-time randomness such as
  drop path and mixup); DataLoader workers are seeded from the run's seed, rank and worker id; samples are
  a function of ``(seed, epoch, index)`` alone (see :mod:`comedian.data.clips`).
- **Checkpoints**: at the end of EVERY epoch ``<workdir>/last.pt`` is written atomically (temp file +
  rename) by rank 0 with the step module's state (model, heads, target, queues), the optimiser, scheduler
  and gradient-scaler states, every rank's RNG states (Python, NumPy, torch, CUDA), the epoch, the global
  step, the best validation score and the per-epoch history.
  Also in the middle of an epoch, with the iteration reached and the epoch's running metric sums: every
  ``checkpoint_every_s`` seconds of training (bounds what a SIGKILL loses), and on SIGTERM or SIGUSR1.
- **Signals** (:data:`STOP_SIGNALS`: a Slurm time limit or preemption, ``scancel --signal``, ``kill``): the
  iteration under way finishes, every rank agrees (the flag rides on the per-iteration all-reduce), the
  mid-epoch ``last.pt`` is written, and the process exits with 128 + the signal number, a failure that
  Snakemake resubmits (``retries``). A signal during the last iteration lets the run finish. DataLoader
  workers ignore these signals (:func:`init_worker`): Slurm sends them to every process of the job step.
- **Resume**: when ``last.pt`` exists and was written by the same run configuration (same fingerprint:
  step, configs but ``checkpoint_every_s``, seed, games, initial checkpoint), training restarts where it
  stopped — after its epoch, or mid-epoch skipping the epoch's keys already consumed (the samples are keyed
  by (seed, epoch, index), so nothing else of the data depends on where it stopped) — and reaches the same
  final weights as an uninterrupted run, bit for bit on CPU with the same number of processes. A
  ``last.pt`` of another configuration is set aside (renamed ``last.pt.stale``) and training starts over.
- **DDP**: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised (NCCL on CUDA, gloo on
  CPU), every rank reads its share of each epoch's samples (:class:`~comedian.data.clips.EpochSampler`; a
  dataset with ``runs``, step 1's, has its runs of consecutive samples kept together, a rank's batch a
  contiguous chunk of the single-process batch),
  the trainable module is wrapped in ``DistributedDataParallel``; the global batch is split evenly over
  the ranks; rank 0 writes the checkpoints and the output, and logs.
- **Divergence**: a NaN or infinite loss (or gradient norm) on any rank stops every rank with
  :class:`TrainingDiverged`, a one-line message naming the step, epoch and iteration; the last good
  ``last.pt`` (previous epoch) stays, and no output is written.
- **Output**: the step's checkpoint (:mod:`comedian.models.checkpoint` format) is written atomically, by
  :meth:`StepModule.output_checkpoint`, only once training completed. With validation (fine-tuning), the
  module's best checkpoint by validation score is kept as ``<workdir>/best.pt`` and becomes the output.

Each epoch prints one progress line (loss, lr, clips/s, share of time waiting for data, ETA) and logs the
same figures, and the validation metrics, to the MLflow run passed as ``tracker``
(:func:`comedian.tracking.stage_run`), with ``step`` = epoch number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from comedian.data.clips import (
    DECODE_PLACES,
    STREAM_MASK,
    EpochSampler,
    collate_samples,
    sample_rng,
    seed_worker,
    torch_generator,
)
from comedian.errors import InputError
from comedian.models.checkpoint import save_checkpoint
from comedian.preprocess import is_host_key, nvjpeg_available, prepare_batch

__all__ = [
    "Phase", "LoopConfig", "DistContext", "StepModule", "Trainer", "TrainingDiverged", "lr_multiplier",
    "scaled_lr", "param_groups", "setup_distributed", "teardown_distributed", "seed_everything",
    "fingerprint", "resolve_device", "STATE_FORMAT", "ModelSettings", "build_step_model", "add_common_arguments",
    "settings_from", "sample_masks", "maybe_stage_run", "config_params", "parse_json_arg", "apply_threads",
    "Prepared", "run_step", "Interrupted", "STOP_SIGNALS", "frame_loading",
]

log = logging.getLogger(__name__)

STATE_FORMAT = "comedian-train-state/1"
#: Parameter names (last component) kept out of weight decay whatever their shape.
NO_DECAY_NAMES = ("pos_embed", "cls_token", "time_embed", "mask_token", "relative_position_bias_table")
PRECISIONS = ("bf16", "fp16", "fp32")
#: Signals on which a step checkpoints mid-epoch and exits (Slurm sends SIGTERM at a time limit or a
#: preemption, and the signal of ``sbatch --signal`` before the limit).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: Step settings that change when checkpoints are written, not what is trained: kept out of fingerprints.
RUN_ONLY_SETTINGS = ("checkpoint_every_s",)


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: :func:`~comedian.data.clips.seed_worker`, then the
    :data:`STOP_SIGNALS` taken by a thread of the worker (:func:`_stop_signals_of_worker`). Slurm
    signals every process of a job step, loader workers included, and torch ends a worker on SIGTERM,
    which would crash the step instead of letting its main process checkpoint."""
    seed_worker(worker_id)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # threads started from here on inherit it
    threading.Thread(target=_stop_signals_of_worker, args=(os.getppid(),), daemon=True).start()


def _stop_signals_of_worker(parent: int) -> None:
    """A loader worker's STOP_SIGNALS: from its main process (``terminate()``, how torch and
    multiprocessing end workers at exit) the worker exits at once, as torch's own handler does; from
    anyone else (Slurm, ``kill``) nothing: the main process acts on it and shuts its workers down."""
    while True:
        if signal.sigwaitinfo(STOP_SIGNALS).si_pid == parent:
            os._exit(0)


class TrainingDiverged(InputError):
    """The loss (or the gradient norm) became NaN or infinite; the message names the step and epoch."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a mid-epoch ``last.pt``; the process exits with
    ``exit_code`` (128 + the signal number), which Snakemake treats as a failure to resubmit. A
    KeyboardInterrupt, so that ``except Exception`` passes it on and MLflow marks the run KILLED."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one optimiser and one schedule.

    Attributes:
        name: shown in the progress line (``"train"``, ``"head"``, ``"full"``).
        epochs: number of epochs (0 = skipped).
        lr: base learning rate for a global batch of 256 clips (scaled, :func:`scaled_lr`).
        warmup_epochs: linear warm-up length, in epochs (fractions allowed; counted in optimiser steps).
        final_lr_ratio: lr at the end of the cosine, as a fraction of the peak.
        trunk_frozen: the step module freezes its trunk in this phase (fine-tuning's classifier phase).
        validate_every: validate every this many epochs of the phase and at its end; 0 = never.
        warmup_start_ratio: lr of the first warm-up step, as a fraction of the peak (the authors'
            ``warmup_start_lr`` / peak; see :func:`lr_multiplier`).
    """

    name: str
    epochs: int
    lr: float
    warmup_epochs: float = 0.0
    final_lr_ratio: float = 0.0
    trunk_frozen: bool = False
    validate_every: int = 0
    warmup_start_ratio: float = 0.0


@dataclass(frozen=True)
class LoopConfig:
    """What :class:`Trainer` needs besides the module and the data.

    Attributes:
        step: the step's name (checkpoints, messages, MLflow).
        phases: the phases, in order.
        batch_size: GLOBAL batch (clips per optimiser step, all ranks together); split evenly over ranks.
        weight_decay: AdamW decoupled weight decay of the weights (0.05).
        betas: AdamW betas.
        grad_clip: max global L2 norm of the gradients; 0 = no clipping.
        seed: the run's seed.
        workers: DataLoader worker processes per rank (0 = load in the training process).
        precision: ``bf16`` / ``fp16`` autocast or ``fp32``, on CUDA; CPU always runs fp32.
        prefetch: batches prefetched per worker.
        checkpoint_every_s: also write ``last.pt`` mid-epoch after this many seconds of training since the
            last write (0 = at epoch ends and on signals only).
        fingerprint: identity of the run configuration (see :func:`fingerprint`); a ``last.pt`` with another
            fingerprint is not resumed.
    """

    step: str
    phases: tuple[Phase, ...]
    batch_size: int
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    seed: int = 0
    workers: int = 2
    precision: str = "bf16"
    prefetch: int = 2
    checkpoint_every_s: float = 0.0
    fingerprint: str = ""

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (configs, seed, game lists...), to recognise a run.

    Dataclass parts count without their :data:`RUN_ONLY_SETTINGS` (a new checkpoint period resumes)."""
    parts = tuple({k: v for k, v in asdict(p).items() if k not in RUN_ONLY_SETTINGS}
                  if hasattr(p, "__dataclass_fields__") else p for p in parts)
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Schedule and parameter groups


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """Peak learning rate: ``base_lr x global_batch / 256`` (the linear scaling rule)."""
    return base_lr * global_batch / 256.0


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, final_ratio: float = 0.0,
                  start_ratio: float = 0.0) -> float:
    """Learning rate of optimiser step ``step`` (0-based) as a fraction of the peak.

    Warm-up: linear from ``start_ratio`` (the authors' ``warmup_start_lr`` / peak) to 1,
    ``start + (1 - start) (step + 1) / W`` for ``step < W = warmup_steps`` (the first update is one
    increment above the start, so never at lr 0; the authors' first update is at the start itself, a
    difference of one step in W); then a cosine from 1 at ``warmup_steps`` to ``final_ratio`` at
    ``total_steps``: ``final + (1 - final) (1 + cos(pi (step - W) / (K - W))) / 2``. Steps past the end stay
    at ``final``.
    """
    if step < warmup_steps:
        return start_ratio + (1.0 - start_ratio) * (step + 1) / warmup_steps
    span = total_steps - warmup_steps
    if span <= 0:
        return 1.0
    progress = min((step - warmup_steps) / span, 1.0)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of ``module``'s trainable parameters: weights decayed; biases, norms (any parameter of
    at most one dimension) and the names of :data:`NO_DECAY_NAMES` not."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------------
# Processes, devices, seeds


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, device. ``world_size == 1`` without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``; CUDA picks the device of ``local_rank``."""
    if name not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device: {name!r} is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); with more than one process,
    initialise the default process group: NCCL for CUDA, gloo for CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, dev)


def teardown_distributed() -> None:
    """Destroy the default process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device's) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """This process's RNG states, in types ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------
# What a step plugs in


class StepModule(nn.Module):
    """Base class of a step's training module (everything the step trains and keeps, as submodules and
    buffers, so that ``state_dict`` is the whole training state besides the optimiser).

    Subclasses implement :meth:`forward`, :meth:`output_checkpoint`, and, when needed, the hooks below.
    ``forward`` runs inside ``DistributedDataParallel`` under DDP: only the parameters it uses may require
    gradients (freeze the others in :meth:`start_phase`).
    """

    #: name of the validation metric that selects the best checkpoint (higher is better); None = none.
    score_key: str | None = None
    #: side of the frames the step's model takes; when set, :meth:`prepare` makes the model's input from the
    #: batch's frames and augmentation parameters (:func:`comedian.preprocess.prepare_batch`).
    frame_size: int | None = None

    def prepare(self, batch: Mapping[str, Any], device: torch.device) -> Mapping[str, Any]:
        """The batch's on-device preprocessing before :meth:`forward` (the steps': decode, augment and
        normalise the frames, :func:`comedian.preprocess.prepare_batch`); called without autograd and
        outside autocast, the batch on the device except its :data:`~comedian.preprocess.HOST_KEYS`.
        Without :attr:`frame_size`, the batch as it is."""
        if self.frame_size is None:
            return batch
        return prepare_batch(batch, device, self.frame_size)

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One prepared batch (:meth:`prepare`) -> (scalar loss, extra scalar metrics to average)."""
        raise NotImplementedError

    def start_phase(self, phase: Phase) -> None:
        """Set ``requires_grad`` for ``phase`` (called before its optimiser is built, and on resume)."""

    def train_mode(self) -> None:
        """Put the module in training mode for an epoch (frozen parts may stay in eval mode)."""
        self.train()

    def after_step(self, step: int, total_steps: int) -> None:
        """After each optimiser step (EMA update, queue update). ``step`` counts from 1 to ``total_steps``."""

    def validate(self, epoch: int, ctx: DistContext) -> dict[str, float]:
        """Validation metrics after ``epoch`` (1-based); called on EVERY rank (shard the work)."""
        return {}

    def best_checkpoint(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        """The checkpoint to keep when ``metrics[score_key]`` is the best so far."""
        return self.output_checkpoint()

    def output_checkpoint(self) -> dict[str, Any]:
        """The step's output checkpoint (:func:`comedian.models.make_checkpoint`) of the current weights."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# The loop


def _to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a batch moved to ``device``, except the entries of :data:`comedian.preprocess.HOST_KEYS`
    (augmentation parameters, JPEG bytes), which the on-device preprocessing reads on the CPU."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: v if is_host_key(k) else _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Trainer:
    """Runs a :class:`StepModule` over a keyed dataset (see the module docstring for what it guarantees).

    Args:
        config: the :class:`LoopConfig`.
        module: the step module, on CPU or already on ``ctx.device``.
        dataset: map-style dataset indexed by ``(epoch, index)`` keys.
        workdir: folder for ``last.pt`` / ``best.pt`` (created); resumed from when it holds a matching
            ``last.pt``.
        output: the step's output checkpoint, written at the end.
        ctx: the process's :class:`DistContext` (:func:`setup_distributed`).
        tracker: an MLflow run (``log_metrics(dict, step=)``) on rank 0, or None.
        print_fn: where progress lines go (rank 0 only).
    """

    def __init__(
        self,
        config: LoopConfig,
        module: StepModule,
        dataset: Dataset,
        workdir: str | Path,
        output: str | Path,
        ctx: DistContext | None = None,
        tracker: Any = None,
        print_fn: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.ctx = ctx or DistContext()
        self.module = module.to(self.ctx.device)
        self.dataset = dataset
        self.workdir = Path(workdir)
        self.output = Path(output)
        self.tracker = tracker if self.ctx.is_main else None
        self.print = print_fn if self.ctx.is_main else (lambda _: None)
        if config.precision not in PRECISIONS:
            raise InputError(f"precision: {config.precision!r} is not one of {list(PRECISIONS)}")
        if config.batch_size % self.ctx.world_size:
            raise InputError(f"batch_size: the global batch {config.batch_size} does not split evenly over "
                             f"{self.ctx.world_size} processes")
        self.local_batch = config.batch_size // self.ctx.world_size
        if not any(p.epochs > 0 for p in config.phases):
            raise InputError(f"{config.step}: no epochs to train (every phase has 0 epochs)")
        self.sampler = EpochSampler(len(dataset), config.seed, True, self.ctx.rank, self.ctx.world_size,
                                    runs=getattr(dataset, "runs", None), block=self.local_batch)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch < 1:
            raise InputError(
                f"{config.step}: an epoch has {len(dataset)} samples, fewer than one batch of {config.batch_size}; "
                "lower batch_size or add data"
            )
        self.total_steps = config.epochs * self.steps_per_epoch
        self.loader = self._loader()
        cuda = self.ctx.device.type == "cuda"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.wrapped: nn.Module = self.module
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.phase_index = -1
        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.best: dict[str, Any] = {"score": None, "epoch": None}
        self.history: list[dict[str, float]] = []
        # The epoch under way: iterations done, running sums of its metrics, data wait and seconds so far.
        self.iteration = 0
        self.partial: dict[str, Any] = {"sums": {}, "wait": 0.0, "seconds": 0.0}
        self.signal_seen: int | None = None  # a STOP_SIGNALS signal received by this process
        self.stop_agreed = False  # some rank had received one at the last all-reduce
        self.last_save = time.monotonic()

    # -- paths --------------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.workdir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.workdir / "best.pt"

    # -- building blocks ----------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        workers = max(0, self.config.workers)
        generator = torch.Generator().manual_seed(self.config.seed * 1009 + self.ctx.rank)
        return DataLoader(
            self.dataset, batch_size=self.local_batch, sampler=self.sampler, num_workers=workers,
            pin_memory=self.ctx.device.type == "cuda", drop_last=True, persistent_workers=workers > 0,
            collate_fn=collate_samples,
            worker_init_fn=init_worker if workers > 0 else None, generator=generator,
            prefetch_factor=self.config.prefetch if workers > 0 else None,
        )

    def _phase_of(self, epoch: int) -> int:
        """Index of the phase that epoch ``epoch`` (0-based) belongs to."""
        end = 0
        for i, phase in enumerate(self.config.phases):
            end += phase.epochs
            if epoch < end:
                return i
        raise IndexError(epoch)

    def _phase_start(self, index: int) -> int:
        return sum(p.epochs for p in self.config.phases[:index])

    def _enter_phase(self, index: int) -> None:
        """Freeze/unfreeze for the phase, (re)wrap in DDP, build its optimiser and schedule."""
        phase = self.config.phases[index]
        self.phase_index = index
        self.module.start_phase(phase)
        if self.ctx.distributed:
            self.wrapped = None  # drop the previous reducer (and its hooks) before building a new one
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids,
                                                               broadcast_buffers=False)
        else:
            self.wrapped = self.module
        groups = param_groups(self.module, self.config.weight_decay)
        peak = scaled_lr(phase.lr, self.config.batch_size)
        # fused: one kernel for all parameters, on CPU too (the per-parameter default costs more than
        # the demo model's forward pass on CPU).
        self.optimizer = torch.optim.AdamW(groups, lr=peak, betas=self.config.betas, fused=True)
        total = phase.epochs * self.steps_per_epoch
        warmup = int(round(phase.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, total, warmup, phase.final_lr_ratio, phase.warmup_start_ratio))

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.ctx.distributed:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.ctx.world_size
        return values

    def _barrier(self) -> None:
        if self.ctx.distributed:
            dist.barrier()

    # -- checkpoints --------------------------------------------------------------------------------
    def _gather_rng(self) -> list[dict[str, Any]]:
        state = rng_state()
        if not self.ctx.distributed:
            return [state]
        states: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(states, state)
        return states

    def state_dict(self) -> dict[str, Any]:
        """The full training state written to ``last.pt`` (see the module docstring)."""
        return {
            "format": STATE_FORMAT,
            "step": self.config.step,
            "fingerprint": self.config.fingerprint,
            "arch": getattr(getattr(self.module, "model", None), "arch", None),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "partial": {"sums": {k: v.detach().cpu() for k, v in self.partial["sums"].items()},
                        "wait": self.partial["wait"], "seconds": self.partial["seconds"]},
            "global_step": self.global_step,
            "phase": self.phase_index,
            "world_size": self.ctx.world_size,
            "module": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
            if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": self._gather_rng(),
            "best": dict(self.best),
            "history": list(self.history),
        }

    def _save_last(self) -> None:
        """Write ``last.pt`` (atomic: a failed write, a full disk too, keeps the previous one)."""
        state = self.state_dict()  # every rank takes part (RNG gather)
        if self.ctx.is_main:
            save_checkpoint(self.last_path, state)
        self._barrier()
        self.last_save = time.monotonic()

    def _read_last(self) -> dict[str, Any] | None:
        """``last.pt`` when it exists and belongs to this run configuration, else None (set aside)."""
        if not self.last_path.is_file():
            return None
        try:
            state = torch.load(self.last_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a corrupt file is set aside, not fatal
            reason = f"unreadable ({type(err).__name__}: {err})"
            state = None
        else:
            reason = None
            if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
                reason = "not a training state"
            elif state.get("step") != self.config.step:
                reason = f"written by step {state.get('step')!r}"
            elif state.get("fingerprint") != self.config.fingerprint:
                reason = "written by another configuration (model, step settings, seed, games or init)"
        if reason is None:
            return state
        self._barrier()  # every rank has read it before rank 0 moves it
        if self.ctx.is_main:
            stale = self.last_path.with_name(self.last_path.name + ".stale")
            os.replace(self.last_path, stale)
            self.print(f"{self.config.step}: {self.last_path} is {reason}; moved to {stale.name}, starting over")
            self.best_path.unlink(missing_ok=True)
        self._barrier()
        return None

    def _resume(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.iteration = int(state["iteration"])
        partial = state["partial"]
        self.partial = {"sums": {k: v.to(self.ctx.device) for k, v in partial["sums"].items()},
                        "wait": float(partial["wait"]), "seconds": float(partial["seconds"])}
        self.best, self.history = dict(state["best"]), list(state["history"])
        self.scaler.load_state_dict(state["scaler"])
        if self.epoch < self.config.epochs:
            index = self._phase_of(self.epoch)
            self._enter_phase(index)
            if int(state["phase"]) == index and state["optimizer"] is not None:
                self.optimizer.load_state_dict(state["optimizer"])
                scheduler = dict(state["scheduler"])
                scheduler["lr_lambdas"] = [None] * len(self.optimizer.param_groups)
                self.scheduler.load_state_dict(scheduler)
        rng = state["rng"]
        if len(rng) == self.ctx.world_size:
            set_rng_state(rng[self.ctx.rank])
        else:
            log.warning("resumed with %d processes instead of %d: RNGs reseeded", self.ctx.world_size, len(rng))
            seed_everything(self.config.seed + 7919 * self.epoch + self.ctx.rank)
        self.print(f"{self.config.step}: resumed from {self.last_path} {self._position()}")

    # -- one epoch ----------------------------------------------------------------------------------
    def _diverged(self, what: str, value: float, iteration: int) -> TrainingDiverged:
        kept = "no checkpoint was written yet"
        if self.last_path.is_file():
            state = torch.load(self.last_path, map_location="cpu", weights_only=True)
            at = f"epoch {state['epoch']}" + (f", iteration {state['iteration']}" if state["iteration"] else "")
            kept = f"the last good checkpoint {self.last_path} ({at}) is kept"
        return TrainingDiverged(
            f"{self.config.step}: {what} is {value} at epoch {self.epoch + 1}/{self.config.epochs}, iteration "
            f"{iteration}/{self.steps_per_epoch} (global step {self.global_step + 1}); training stopped and "
            f"{kept}; lower the learning rate or check the inputs"
        )

    def _stop_flags(self) -> list[float]:
        """This rank's [signal received, periodic checkpoint due] (each 0 or 1), for the all-reduce."""
        every = self.config.checkpoint_every_s
        due = every > 0 and time.monotonic() - self.last_save >= every
        return [float(self.signal_seen is not None), float(due)]

    def _train_epoch(self) -> dict[str, float] | None:
        """Train the epoch ``self.epoch`` from iteration ``self.iteration`` on; its metrics, or None when a
        signal stopped it (after the mid-epoch checkpoint)."""
        cfg, module = self.config, self.module
        self.sampler.set_epoch(self.epoch, skip=self.iteration * self.local_batch)
        module.train_mode()
        params = [p for p in module.parameters() if p.requires_grad]
        sums: dict[str, torch.Tensor] = self.partial["sums"]
        wait = self.partial["wait"]
        start = time.perf_counter() - self.partial["seconds"]
        batches = iter(self.loader)
        for i in range(self.iteration + 1, self.steps_per_epoch + 1):
            t0 = time.perf_counter()
            batch = _to_device(next(batches), self.ctx.device)
            wait += time.perf_counter() - t0
            with torch.no_grad():
                batch = module.prepare(batch, self.ctx.device)
            lr = self.optimizer.param_groups[0]["lr"]
            with self._autocast():
                loss, metrics = self.wrapped(batch)
            # One all-reduce per iteration: [loss, loss not finite, signal received, checkpoint due].
            flag = self._reduce_mean(torch.cat([
                torch.stack([loss.detach().float(), (~torch.isfinite(loss.detach())).float()]),
                torch.tensor(self._stop_flags(), device=self.ctx.device)]))
            if flag[1] > 0 or not torch.isfinite(flag[0]):
                raise self._diverged("the loss", float(loss.detach()), i)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            grad_norm = torch.zeros((), device=self.ctx.device)
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
                if not self.scaler.is_enabled() and not torch.isfinite(grad_norm):
                    raise self._diverged("the gradient norm", float(grad_norm), i)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.global_step += 1
            module.after_step(self.global_step, self.total_steps)
            for name, value in {"loss": flag[0], "grad_norm": grad_norm, "lr": torch.tensor(lr), **metrics}.items():
                value = value.detach().float().to(self.ctx.device)
                sums[name] = sums[name] + value if name in sums else value
            self.stop_agreed, due = bool(flag[2] > 0), bool(flag[3] > 0)  # the same on every rank
            if (self.stop_agreed or due) and i < self.steps_per_epoch:
                self.iteration = i
                self.partial = {"sums": sums, "wait": wait, "seconds": time.perf_counter() - start}
                self._save_last()
                if self.stop_agreed:
                    del batches
                    return None
        del batches
        self.iteration = 0
        self.partial = {"sums": {}, "wait": 0.0, "seconds": 0.0}
        seconds = time.perf_counter() - start
        names = sorted(sums)
        means = self._reduce_mean(torch.stack([sums[n] for n in names]) / self.steps_per_epoch).tolist()
        out = dict(zip(names, means))
        out["lr_end"] = self.optimizer.param_groups[0]["lr"]
        out["epoch_s"] = seconds
        out["clips_per_s"] = self.steps_per_epoch * cfg.batch_size / seconds
        out["data_wait"] = wait / seconds
        return out

    # -- the run ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train (or resume) to the end, write the output checkpoint; return a summary."""
        cfg = self.config
        if self.ctx.is_main:
            self.workdir.mkdir(parents=True, exist_ok=True)
        self._barrier()
        state = self._read_last()
        if state is not None:
            self._resume(state)
            del state
        else:
            if self.ctx.is_main:
                self.best_path.unlink(missing_ok=True)  # a best.pt without last.pt is of an older run
            seed_everything(cfg.seed + self.ctx.rank)  # training-time randomness, distinct per rank
        run_start, trained = time.perf_counter(), 0
        self.last_save = time.monotonic()
        with self._catch_stop_signals():
            while self.epoch < cfg.epochs:
                index = self._phase_of(self.epoch)
                if index != self.phase_index:
                    self._enter_phase(index)
                metrics = self._train_epoch()
                if metrics is None:
                    raise self._interrupted()
                self._end_epoch(metrics)
                trained += 1
                elapsed = time.perf_counter() - run_start
                self._report(metrics, elapsed / trained * (cfg.epochs - self.epoch))
                if self.stop_agreed and self.epoch < cfg.epochs:  # signalled in the epoch's last iteration
                    raise self._interrupted()
        self._write_output()
        return {"epochs": self.epoch, "best": dict(self.best), "history": self.history}

    @contextmanager
    def _catch_stop_signals(self) -> Iterator[None]:
        """While training, a :data:`STOP_SIGNALS` signal only sets ``signal_seen`` (acted on at the next
        iteration's all-reduce); the previous handlers come back afterwards."""
        def note(signum: int, frame: Any) -> None:
            self.signal_seen = signum

        try:
            previous = {s: signal.signal(s, note) for s in STOP_SIGNALS}
        except ValueError:  # not the main thread: no handlers
            yield
            return
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _interrupted(self) -> Interrupted:
        signum = self.signal_seen or signal.SIGTERM  # another rank's signal: exit as for SIGTERM
        return Interrupted(signum, f"{self.config.step}: {signal.Signals(signum).name} received; stopped "
                                   f"{self._position()} and wrote {self.last_path}; a rerun resumes from there")

    def _position(self) -> str:
        """Where training stands: ``after epoch E/N`` or ``in epoch E/N after iteration I/S``."""
        if self.iteration:
            return (f"in epoch {self.epoch + 1}/{self.config.epochs} after iteration "
                    f"{self.iteration}/{self.steps_per_epoch}")
        return f"after epoch {self.epoch}/{self.config.epochs}"

    def _end_epoch(self, metrics: dict[str, float]) -> None:
        """After an epoch's last iteration: validation, history, ``last.pt``."""
        self.epoch += 1
        if self._validation_due():
            metrics.update(self._validate())
        self.history.append({"epoch": self.epoch, **metrics})
        self._save_last()

    def _validation_due(self) -> bool:
        """After the epoch just trained: every ``validate_every`` epochs of its phase, and at the phase's end."""
        phase = self.config.phases[self.phase_index]
        done = self.epoch - self._phase_start(self.phase_index)
        return phase.validate_every > 0 and (done % phase.validate_every == 0 or done == phase.epochs)

    def _validate(self) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics = dict(self.module.validate(self.epoch, self.ctx))
        metrics["valid_s"] = time.perf_counter() - t0
        key = self.module.score_key
        if key is not None and key in metrics:
            score = float(metrics[key])
            if self.best["score"] is None or score > self.best["score"]:
                self.best = {"score": score, "epoch": self.epoch}
                if self.ctx.is_main:
                    save_checkpoint(self.best_path, self.module.best_checkpoint(self.epoch, metrics))
            metrics["best_" + key] = float(self.best["score"])
        self._barrier()
        return metrics

    def _report(self, metrics: Mapping[str, float], eta: float) -> None:
        phase = self.config.phases[self.phase_index]
        extras = "".join(f" {k} {v:.4f}" for k, v in metrics.items() if k.startswith("valid_") and k.endswith("_amap"))
        self.print(
            f"{self.config.step} epoch {self.epoch}/{self.config.epochs} [{phase.name}] loss {metrics['loss']:.4f} "
            f"lr {metrics['lr']:.2e} clips/s {metrics['clips_per_s']:.1f} data-wait {100 * metrics['data_wait']:.0f}% "
            f"epoch {metrics['epoch_s']:.1f}s{extras} ETA {_duration(eta)}"
        )
        sys.stdout.flush()
        if self.tracker is not None:
            self.tracker.log_metrics(dict(metrics), step=self.epoch)

    def _write_output(self) -> None:
        if self.ctx.is_main:
            if self.best_path.is_file() and self.module.score_key is not None:
                checkpoint = torch.load(self.best_path, map_location="cpu", weights_only=True)
            else:
                checkpoint = self.module.output_checkpoint()
            checkpoint.setdefault("extra", {})["training"] = {
                "epochs": self.epoch, "best": dict(self.best), "history": self.history,
            }
            save_checkpoint(self.output, checkpoint)
            if self.tracker is not None:
                if self.best["score"] is not None:
                    self.tracker.log_metrics({f"best_{self.module.score_key}": self.best["score"],
                                              "best_epoch": self.best["epoch"]})
                epoch = self.best["epoch"] or self.epoch  # the output's epoch: the best one, or the last
                chosen = next((h for h in self.history if h["epoch"] == epoch), {"epoch": epoch})
                self.tracker.log_checkpoint(self.output, {k: v for k, v in chosen.items()
                                                          if k == "epoch" or k.startswith(("valid_", "best_"))})
            self.print(f"{self.config.step}: wrote {self.output}")
        self._barrier()


@contextmanager
def maybe_stage_run(ctx: DistContext, stage: str, params: Mapping[str, Any]) -> Iterator[Any]:
    """:func:`comedian.tracking.stage_run` on rank 0; nothing on the other ranks."""
    if not ctx.is_main:
        yield None
        return
    from comedian.tracking import stage_run

    with stage_run(stage, params=params, system_metrics=True) as run:
        yield run


def config_params(**sections: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Sections (dicts or dataclasses) -> one flat dict for MLflow params (``section.key``)."""
    out: dict[str, Any] = {}
    for name, value in sections.items():
        if hasattr(value, "__dataclass_fields__"):
            value = asdict(value)
        if isinstance(value, Mapping):
            for k, v in value.items():
                out[f"{name}.{k}"] = json.dumps(v) if isinstance(v, (list, dict, tuple)) else v
        else:
            out[name] = value
    return out


def parse_json_arg(text: str, flag: str) -> Any:
    """A JSON command-line value (``--model``, ``--step``, ``--classes``), or InputError naming the flag."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{flag}: not valid JSON ({err.msg} at char {err.pos})") from None


def sample_masks(keys: torch.Tensor, num_tokens: int, ratio: float, tube_tokens: int, seed: int) -> torch.Tensor:
    """Token masks of a batch, each drawn from its sample's key (the ``key`` of
    :class:`~comedian.data.clips.WindowClips`: epoch, index) and the run's seed: the same sample gets the same
    mask whatever the batch, rank or worker (:func:`comedian.models.tube_mask`, tubes of ``tube_tokens`` tokens).

    Args:
        keys: (B, 2) int64 (epoch, index), on any device.
        num_tokens: L, tokens per clip.
        ratio: share of tokens masked.
        tube_tokens: tokens per tube (see :func:`mask_tube_tokens`).
        seed: the run's seed.

    Returns:
        (B, L) bool on ``keys``' device, True = replaced by the mask token.
    """
    from comedian.models import tube_mask

    rows = [tube_mask(1, num_tokens, ratio, tube_tokens, generator=torch_generator(sample_rng(seed, STREAM_MASK, e, i)))
            for e, i in keys.tolist()]
    return torch.cat(rows).to(keys.device)


def mask_tube_tokens(tube_frames: int, frames_per_token: int, field: str) -> int:
    """Tokens per mask tube from a setting counted in frames (``mask_tube_frames``, as the authors'
    ``temporal_mask_tube``): 2 frames = one 2-frame tubelet = one token. InputError naming ``field`` when
    the frames do not make whole tokens."""
    if tube_frames < frames_per_token or tube_frames % frames_per_token:
        raise InputError(f"{field}: {tube_frames} frames is not a whole number of {frames_per_token}-frame tokens")
    return tube_frames // frames_per_token


def settings_from(cls: type, values: Mapping[str, Any] | None, where: str) -> Any:
    """Build the dataclass ``cls`` from a config mapping: unknown keys are an InputError naming ``where``,
    JSON lists become tuples, absent keys take the dataclass defaults."""
    values = dict(values or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"{where}: unknown keys {unknown}; known: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# --------------------------------------------------------------------------------------------------
# The model section and the command line shared by the three steps


@dataclass(frozen=True)
class ModelSettings:
    """The config's ``model`` section (``--model`` JSON); see :func:`comedian.models.build_model`.

    Attributes:
        arch: architecture name (``comedian.models.ARCHS``).
        frames: Tg, frames per clip of steps 2-3 and of inference windows (2 per token).
        size: frame side in pixels fed to the model; None = the architecture's (224, demos 64).
        temporal_depth: temporal transformer blocks.
        drop_path: stochastic depth rate of both transformers.
        fused_attn: attention through SDPA.
        checkpoint_activations: recompute the spatial blocks in the backward pass (saves memory).
        compile: ``torch.compile`` the spatial and temporal transformers (in place: names unchanged).
    """

    arch: str = "vivit_tiny"
    frames: int = 64
    size: int | None = None
    temporal_depth: int = 4
    drop_path: float = 0.1
    fused_attn: bool = True
    checkpoint_activations: bool = False
    compile: bool = False


def build_step_model(settings: ModelSettings, classes: int) -> Any:
    """The :class:`~comedian.models.SpottingTransformer` of ``settings`` with ``classes`` outputs."""
    from comedian.models import build_model

    return build_model(settings.arch, frames=settings.frames, size=settings.size, classes=classes,
                       temporal_depth=settings.temporal_depth, drop_path=settings.drop_path,
                       fused_attn=settings.fused_attn, checkpoint_activations=settings.checkpoint_activations)


def maybe_compile(model: Any, settings: ModelSettings) -> None:
    """Compile the model's spatial and temporal transformers in place when ``settings.compile``."""
    if settings.compile:
        model.spatial.compile()
        model.temporal.compile()


def check_init(section: str, choice: str, choices: Any, init: Path | None) -> bool:
    """Check a step's ``init`` switch against its ``--init`` checkpoint; True when weights are to be loaded.

    ``scratch`` takes no checkpoint; every other choice needs one. Errors name the section's key.
    """
    if choice not in choices:
        raise InputError(f"--step: init: {choice!r} is not one of {list(choices)}")
    if choice == "scratch":
        if init is not None:
            raise InputError(f"--init: {section}.init is 'scratch', so no checkpoint is expected")
        return False
    if init is None:
        raise InputError(f"--init: {section}.init is {choice!r} but no checkpoint was given")
    return True


def add_common_arguments(parser: Any) -> None:
    """The flags of every training step (see each step's ``main``)."""
    parser.add_argument("--root", required=True, type=Path, help="SoccerNet-v2 data root (labels)")
    parser.add_argument("--frames-dir", required=True, type=Path, help="packed frames: <dir>/<game_slug>/<half>.h5")
    parser.add_argument("--train-list", required=True, type=Path, action="append",
                        help="split list of training games (repeat for several splits, e.g. train and valid)")
    parser.add_argument("--model", required=True, help="the config's model section, as JSON")
    parser.add_argument("--step", required=True, help="the config's section of this step, as JSON")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--workdir", required=True, type=Path,
                        help="folder of the per-epoch checkpoint last.pt (resumed from when present)")
    parser.add_argument("--output", required=True, type=Path, help="output checkpoint, written when training ends")
    parser.add_argument("--init", type=Path, default=None, help="checkpoint of the previous step to start from")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per process (default 2)")
    parser.add_argument("--decode", default="auto", choices=("auto", *DECODE_PLACES),
                        help="where JPEGs are decoded: in the loader workers, on the training device (nvJPEG on "
                             "CUDA; the workers only read bytes), or auto: the device on CUDA where nvJPEG works, "
                             "else the workers (default auto)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads of each training process (0 = torch's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def frame_loading(requested: str, ctx: DistContext, step: str, quiet: bool = False) -> dict[str, Any]:
    """How the step's loader hands over frames (keywords of the datasets of :mod:`comedian.data.clips`):

    - ``decode`` (``--decode``, :data:`~comedian.data.clips.DECODE_PLACES`): ``auto`` = on the device when
      it is CUDA and nvJPEG decodes there (the workers then only read bytes), else in the workers;
    - ``worker_resize``: the workers resize frames to the model's side (when no crop is drawn) only when
      the training device is the CPU; a GPU resizes them itself (:func:`comedian.data.clips.decode_size`).

    Rank 0 says which path runs."""
    if requested not in ("auto", *DECODE_PLACES):
        raise InputError(f"--decode: {requested!r} is not one of auto, {', '.join(DECODE_PLACES)}")
    nvjpeg = nvjpeg_available(ctx.device)
    place = ("device" if nvjpeg else "worker") if requested == "auto" else requested
    if place == "device" and ctx.device.type == "cuda" and not nvjpeg:
        raise InputError(f"--decode device: torchvision cannot decode JPEGs on {ctx.device} (no nvJPEG)")
    if ctx.is_main and not quiet:
        where = (f"on {ctx.device} ({'nvJPEG' if ctx.device.type == 'cuda' else 'libjpeg-turbo'}), the loader "
                 "workers read bytes only" if place == "device" else "in the loader workers (libjpeg-turbo)")
        print(f"{step}: JPEG decoding {where}; resizing and augmentation on {ctx.device}")
    return {"decode": place, "worker_resize": ctx.device.type == "cpu"}


def apply_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` when ``threads`` > 0."""
    if threads > 0:
        torch.set_num_threads(threads)


@dataclass
class Prepared:
    """What a step's ``prepare(args, ctx)`` builds for :func:`run_step`."""

    loop: LoopConfig
    module: StepModule
    dataset: Dataset
    params: dict[str, Any]


def run_step(stage: str, args: Any, prepare: Callable[[Any, DistContext], Prepared]) -> int:
    """The body of every step's ``main``: threads, process group, seeds (the same initial weights on every
    rank), ``prepare``, an MLflow child run (rank 0), :meth:`Trainer.fit`, teardown. Returns the exit
    status: 0, or 128 + the signal number when a signal stopped training (:class:`Interrupted`)."""
    apply_threads(args.threads)
    ctx = setup_distributed(args.device)
    try:
        seed_everything(args.seed)
        prepared = prepare(args, ctx)
        with maybe_stage_run(ctx, stage, prepared.params) as run:  # an Interrupted ends it KILLED
            trainer = Trainer(prepared.loop, prepared.module, prepared.dataset, args.workdir, args.output, ctx, run,
                              print_fn=(lambda _: None) if args.quiet else print)
            summary = trainer.fit()
            if run is not None:
                run.log_dict(summary["history"], "history.json")
    except Interrupted as stopped:
        if ctx.is_main:
            print(f"comedian {stage}: {stopped}", file=sys.stderr)
        return stopped.exit_code
    finally:
        teardown_distributed()
    return 0


def file_identity(path: Path | None) -> list[Any] | None:
    """(name, size, mtime) of a file, for run fingerprints (an --init checkpoint rewritten = a new run)."""
    if path is None:
        return None
    stat = Path(path).stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]
