"""Heads on top of the tokens: the per-token action classifier and the pretraining MLPs.

All heads act on the last dimension, so they take (..., D) tokens: (B, D) for step 1's one token per
sub-video, (B, L, D) for steps 2-3's temporal tokens.

Choice of normalisation: the MLPs have NO BatchNorm, as in the authors' configs for COMEDIAN
(``projector_tiny_vit_mlp3``: 3 layers, GELU, ``norm_layer: null``; ``predictor_tiny_vit_mlp2``:
2 layers, GELU, no norm, no last bias). This also keeps them independent of how many tokens a batch has.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

__all__ = ["SpottingHead", "MLPHead", "projector", "predictor"]


def _init_linear(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SpottingHead(nn.Module):
    """Linear classifier applied to every temporal token: (..., D) -> (..., C) logits.

    Returns logits: the sigmoid (one independent probability per class) belongs to the loss
    (``binary_cross_entropy_with_logits``) and to inference (``torch.sigmoid``), not to this module.
    Initialised as the authors' classifier: weights normal(0, 0.01), bias 0.
    """

    def __init__(self, dim: int, num_classes: int = 17) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(tokens)


class MLPHead(nn.Module):
    """Linear -> GELU -> ... -> Linear on the last dimension: (..., in_dim) -> (..., out_dim).

    Args:
        in_dim: input width.
        hidden_dims: widths of the hidden layers (each followed by GELU).
        out_dim: output width.
        last_bias: whether the last Linear has a bias.
    """

    def __init__(self, in_dim: int, hidden_dims: tuple[int, ...], out_dim: int, last_bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, out_dim, bias=last_bias))
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim
        _init_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def projector(in_dim: int, out_dim: int = 256, hidden_dim: int = 1024) -> MLPHead:
    """Projector: D -> 1024 -> 1024 -> out_dim, GELU (256 for step 1's MoCo, 512 for step 2's SCE)."""
    return MLPHead(in_dim, (hidden_dim, hidden_dim), out_dim, last_bias=True)


def predictor(dim: int = 256, hidden_dim: int = 1024) -> MLPHead:
    """Step 1's online predictor: 256 -> 1024 -> 256, GELU, no bias on the last layer."""
    return MLPHead(dim, (hidden_dim,), dim, last_bias=False)
