"""Temporal transformer over the spatial tokens of a clip, and the tube mask its caller draws.

Masking is never switched on by train mode: the caller draws a mask (e.g. with :func:`tube_mask` and
its own ``torch.Generator``) and passes it to :meth:`TemporalTransformer.forward`; no mask, no masking.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from timm.layers import calculate_drop_path_rates, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

__all__ = ["TemporalTransformer", "tube_mask"]


class TemporalTransformer(nn.Module):
    """ViT blocks over a clip's token sequence: (B, L, D) -> (B, L, D), one output per input token.

    Steps: masked tokens are replaced by a learned mask token; a learned time embedding (one vector per
    token position) is added; ``depth`` timm ``Block`` s run (no class token); a final LayerNorm.

    Args:
        dim: token width D (the spatial transformer's output width).
        depth: number of blocks (4 in the paper's baseline; 6 and 8 in its Table 2).
        num_heads: attention heads.
        num_tokens: the longest sequence accepted, = frames per clip / Ts; the time embedding has this
            many rows and a shorter sequence uses its first L rows.
        mlp_ratio: MLP hidden width / D.
        drop_path: stochastic depth rate of the last block (timm's linear rule over depth).
        norm_layer: normalisation layer factory (LayerNorm, eps 1e-6).
    """

    def __init__(
        self,
        dim: int,
        depth: int = 4,
        num_heads: int = 3,
        num_tokens: int = 32,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_tokens = num_tokens
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        dpr = calculate_drop_path_rates(drop_path, depth)
        self.blocks = nn.Sequential(*[
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=norm_layer)
            for i in range(depth)
        ])
        self.norm = norm_layer(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm ViT init: truncated normal (std 0.02) for Linear weights and the time embedding."""
        trunc_normal_(self.time_embed, std=0.02)
        nn.init.zeros_(self.mask_token)  # as the authors' code
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def apply_mask(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Replace the tokens where ``mask`` is True by the mask token.

        Args:
            tokens: (B, L, D).
            mask: (B, L) bool, True = masked; None = no masking.
        """
        if mask is None:
            return tokens
        if mask.shape != tokens.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool of shape {tuple(tokens.shape[:2])}, got {mask.dtype} "
                             f"{tuple(mask.shape)}")
        return torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, D) spatial tokens [+ (B, L) bool mask, True = masked] -> (B, L, D) temporal tokens."""
        length = tokens.shape[1]
        if length > self.num_tokens:
            raise ValueError(f"{length} tokens, more than the {self.num_tokens} the time embedding was built for")
        x = self.apply_mask(tokens, mask) + self.time_embed[:, :length].to(tokens.dtype)
        x = self.blocks(x)
        return self.norm(x)


def tube_mask(
    batch_size: int,
    num_tokens: int,
    ratio: float,
    tube_length: int = 2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw a random mask of ``floor(ratio * num_tokens)`` tokens per clip, in tubes of consecutive tokens.

    The sequence is cut into tubes of ``tube_length`` tokens starting at 0 (the last one shorter when
    ``num_tokens`` is not a multiple); the tubes are shuffled and taken in that order until exactly
    ``floor(ratio * num_tokens)`` tokens are masked (the last tube taken may be cut short), as the
    authors' tube masking does. Each clip of the batch gets its own draw.

    Args:
        batch_size: B.
        num_tokens: L, tokens per clip.
        ratio: fraction of tokens to mask, in [0, 1].
        tube_length: TOKENS per tube (1 = independent tokens, the authors' setting: their
            ``temporal_mask_tube = 2`` counts frames, i.e. one 2-frame tubelet).
        generator: CPU ``torch.Generator``; the same seed gives the same mask.
        device: device of the returned mask (drawn on CPU, then moved).

    Returns:
        (B, L) bool tensor, True = masked.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    if tube_length < 1:
        raise ValueError(f"tube length must be >= 1, got {tube_length}")
    num_masked = int(ratio * num_tokens)
    num_tubes = -(-num_tokens // tube_length)
    offsets = torch.arange(tube_length)
    mask = torch.zeros(batch_size, num_tokens, dtype=torch.bool)
    for row in mask:
        starts = torch.randperm(num_tubes, generator=generator) * tube_length
        order = (starts[:, None] + offsets).flatten()
        order = order[order < num_tokens]
        row[order[:num_masked]] = True
    return mask.to(device) if device is not None else mask
