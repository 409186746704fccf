"""Spotting loss of step 3 (paper Sec. 3.4, Eq. 7) and mixup of clips (Zhang et al., 2018).

Eq. 7 writes only the positive term; the loss is the full binary cross-entropy of a sigmoid per class
and token: ``-[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))]``, averaged over batch, tokens and
classes, computed from logits (``binary_cross_entropy_with_logits``, stable under AMP).

Mixup (the authors' ``SpottingMixup``) draws ONE lambda ~ Beta(alpha, alpha) PER CLIP (a vector of batch
size) and pairs each clip with the clip at a random permutation of the batch: clip b becomes
``lam_b * x_b + (1 - lam_b) * x_perm(b)`` and its loss ``lam_b * BCE_b(y_b) + (1 - lam_b) * BCE_b(y_perm(b))``,
BCE_b the mean over clip b's tokens and classes; the batch loss is the mean over clips.
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


def mixup_spotting_loss(logits: Tensor, targets_a: Tensor, targets_b: Tensor, lam: Tensor) -> Tensor:
    """Per-clip mixed BCE: ``mean_b [lam_b * BCE_b(targets_a) + (1 - lam_b) * BCE_b(targets_b)]``.

    ``logits``, ``targets_a`` (the clips' own targets) and ``targets_b`` (those of the clips mixed into them,
    as returned by :func:`mixup`) are (B, T, C); ``lam`` (B,) holds each clip's own weight. With every
    ``lam_b`` equal this is ``lam * spotting_loss(logits, targets_a) + (1 - lam) * spotting_loss(logits, targets_b)``.
    """
    if logits.shape != targets_a.shape or logits.shape != targets_b.shape:
        raise ValueError(f"mixup_spotting_loss: logits {tuple(logits.shape)} and targets "
                         f"{tuple(targets_a.shape)} / {tuple(targets_b.shape)} differ")
    if lam.shape != logits.shape[:1]:
        raise ValueError(f"mixup_spotting_loss: lam {tuple(lam.shape)} must be one weight per clip ({logits.shape[0]})")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    x = logits.to(dtype)
    per_clip_a = F.binary_cross_entropy_with_logits(x, targets_a.to(dtype), reduction="none").flatten(1).mean(1)
    per_clip_b = F.binary_cross_entropy_with_logits(x, targets_b.to(dtype), reduction="none").flatten(1).mean(1)
    w = lam.to(device=x.device, dtype=dtype)
    return (w * per_clip_a + (1.0 - w) * per_clip_b).mean()


def sample_mixup_lambdas(alpha: float, count: int, generator: torch.Generator | None = None) -> Tensor:
    """``count`` draws of lambda ~ Beta(alpha, alpha) (float32, CPU), reproducible from ``generator``.

    torch's Beta distribution takes no generator, so a NumPy generator is seeded from one 63-bit draw
    of ``generator`` (the global torch RNG when None).
    """
    if alpha <= 0:
        raise ValueError(f"mixup: alpha must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=count).astype(np.float32))


def mixup(
    clips: Tensor, targets: Tensor, alpha: float = 0.1, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mix each clip of the batch with another one, each with its own weight:
    ``lam_b * clips[b] + (1 - lam_b) * clips[perm[b]]``.

    Args:
        clips: floating inputs (B, ...), e.g. (B, T_frames, C, H, W) normalised frames.
        targets: per-token targets (B, T, C).
        alpha: Beta(alpha, alpha) parameter (0.1 in the authors' setting: lambda is near 0 or 1 mostly).
        generator: a CPU ``torch.Generator`` for the permutation and lambdas (the global RNG when None).

    Returns:
        ``(mixed_clips, targets_a, targets_b, lam)``: mixed clips (B, ...), ``targets_a = targets``,
        ``targets_b = targets[perm]``, and lam (B,) float32 in [0, 1] on the clips' device, one per clip.
    """
    if clips.shape[0] != targets.shape[0]:
        raise ValueError(f"mixup: clips ({clips.shape[0]}) and targets ({targets.shape[0]}) differ in batch size")
    if not clips.is_floating_point():
        raise ValueError(f"mixup: clips must be floating point, got {clips.dtype}")
    n = clips.shape[0]
    lam = sample_mixup_lambdas(alpha, n, generator).to(clips.device)
    perm = torch.randperm(n, generator=generator).to(clips.device)
    w = lam.to(clips.dtype).view(n, *([1] * (clips.ndim - 1)))
    mixed = clips * w + clips[perm] * (1.0 - w)
    return mixed, targets, targets[perm.to(targets.device)], lam
