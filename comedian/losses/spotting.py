"""Spotting loss of step 3 (paper Sec. 3.4, Eq. 7) and mixup of clips (Zhang et al., 2018).

Eq. 7 writes only the positive term; the loss is the full binary cross-entropy of a sigmoid per class
and token: ``-[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))]``, averaged over batch, tokens and
classes, computed from logits (``binary_cross_entropy_with_logits``, stable under AMP).

Mixup draws ONE lambda ~ Beta(alpha, alpha) per batch and pairs each clip with the clip at a random
permutation of the batch (the original mixup recipe, timm's ``mode="batch"``); the loss is mixed with the
same weight: ``lam * BCE(logits, y_a) + (1 - lam) * BCE(logits, y_b)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def spotting_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token BCE (Eq. 7), a scalar: mean over every (sample, token, class).

    ``logits`` (B, T, C) raw classifier outputs (no sigmoid); ``targets`` (B, T, C) in [0, 1].
    Computed in float32 at least (float64 inputs stay float64).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"spotting_loss: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    dtype = torch.promote_types(logits.dtype, torch.float32)  # float16/bfloat16 -> float32
    return F.binary_cross_entropy_with_logits(logits.to(dtype), targets.to(dtype), reduction="mean")


def mixup_spotting_loss(logits: Tensor, targets_a: Tensor, targets_b: Tensor, lam: float) -> Tensor:
    """``lam * spotting_loss(logits, targets_a) + (1 - lam) * spotting_loss(logits, targets_b)``.

    ``targets_a`` are the clips' own targets, ``targets_b`` those of the clips mixed into them, as
    returned by :func:`mixup`.
    """
    return lam * spotting_loss(logits, targets_a) + (1.0 - lam) * spotting_loss(logits, targets_b)


def sample_mixup_lambda(alpha: float, generator: torch.Generator | None = None) -> float:
    """One draw of lambda ~ Beta(alpha, alpha), reproducible from ``generator``.

    torch's Beta distribution takes no generator, so a NumPy generator is seeded from one 63-bit draw
    of ``generator`` (the global torch RNG when None).
    """
    if alpha <= 0:
        raise ValueError(f"mixup: alpha must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(
    clips: Tensor, targets: Tensor, alpha: float = 0.1, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Mix each clip of the batch with another one: ``lam * clips + (1 - lam) * clips[perm]``.

    Args:
        clips: floating inputs (B, ...), e.g. (B, T_frames, C, H, W) normalised frames.
        targets: per-token targets (B, T, C).
        alpha: Beta(alpha, alpha) parameter (0.1 in the authors' setting: lambda is near 0 or 1 mostly).
        generator: a CPU ``torch.Generator`` for the permutation and lambda (the global RNG when None).

    Returns:
        ``(mixed_clips, targets_a, targets_b, lam)``: mixed clips (B, ...), ``targets_a = targets``,
        ``targets_b = targets[perm]``, and lam, a float in [0, 1], one per batch.
    """
    if clips.shape[0] != targets.shape[0]:
        raise ValueError(f"mixup: clips ({clips.shape[0]}) and targets ({targets.shape[0]}) differ in batch size")
    if not clips.is_floating_point():
        raise ValueError(f"mixup: clips must be floating point, got {clips.dtype}")
    lam = sample_mixup_lambda(alpha, generator)
    perm = torch.randperm(clips.shape[0], generator=generator).to(clips.device)
    mixed = clips.mul(lam).add_(clips[perm], alpha=1.0 - lam)
    return mixed, targets, targets[perm.to(targets.device)], lam
