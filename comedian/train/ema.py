"""Exponential moving average of the online branch into the target branch (MoCo, step 1).

    theta_target <- m * theta_target + (1 - m) * theta_online,

with the momentum m rising from m0 = 0.99 to 1 along a cosine over the K optimiser steps of training
(the BYOL/SCE schedule used by the authors): ``m(k) = 1 - (1 - m0) * (cos(pi k / K) + 1) / 2``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def ema_momentum(step: int, total_steps: int, base: float = 0.99) -> float:
    """m(k) = 1 - (1 - base) * (cos(pi k / K) + 1) / 2 with k = ``step`` clipped to [0, K = total_steps].

    m(0) = base, m(K) = 1; ``total_steps`` counts optimiser steps, not samples.
    """
    if total_steps <= 0:
        raise ValueError(f"ema_momentum: total_steps must be > 0, got {total_steps}")
    k = min(max(step, 0), total_steps)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: ``target = momentum * target + (1 - momentum) * online``, parameter by parameter.

    Floating-point buffers (e.g. normalisation statistics) are averaged the same way; other buffers
    (integer counters, index tables) are copied, unless momentum is 1. Momentum 0 copies, 1 keeps.
    ``target`` and ``online`` must have the same parameter and buffer names and shapes, e.g. the target
    transformer + projector and the online ones (without the predictor; pass ``ddp_model.module``, not
    the DDP wrapper, whose names start with ``module.``).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update: momentum must be in [0, 1], got {momentum}")
    target_state = dict(target.named_parameters()) | dict(target.named_buffers())
    online_state = dict(online.named_parameters()) | dict(online.named_buffers())
    if target_state.keys() != online_state.keys():
        differ = sorted(target_state.keys() ^ online_state.keys())
        raise ValueError(f"ema_update: target and online differ in names, e.g. {differ[:5]}")
    averaged_t, averaged_o = [], []
    for name, t in target_state.items():
        o = online_state[name]
        if t.shape != o.shape:
            raise ValueError(f"ema_update: {name} has shape {tuple(t.shape)} in target, {tuple(o.shape)} in online")
        if t.is_floating_point():
            averaged_t.append(t)
            averaged_o.append(o.to(t.dtype))
        elif momentum < 1.0:
            t.copy_(o)
    if averaged_t:
        torch._foreach_lerp_(averaged_t, averaged_o, 1.0 - momentum)
