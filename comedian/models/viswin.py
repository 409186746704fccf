"""ViSwin spatial transformer: timm's Swin Transformer over 2-frame tubelets.

How the tubelet enters Swin: Swin's own 2-D patch embedding (Conv2d 4x4 + LayerNorm) is replaced by a
3-D one, :class:`~comedian.models.tubelet.TubeletEmbed` with kernel (Ts=2, 4, 4) followed by the same
LayerNorm (as in the authors' ViSwin), so the two frames are fused at the first layer and the rest of
Swin (shifted-window stages, patch merging) runs unchanged on the (H/4, W/4) grid. The tubelet's token
is the average of the last stage's tokens after Swin's final LayerNorm (timm's ``avg`` pool), of width
``embed_dim * 2 ** (stages - 1)`` (768 for Swin-T).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from comedian.models.tubelet import TubeletEmbed, clip_to_tubelets

__all__ = ["ViSwinSpatial", "viswin_tiny", "viswin_demo"]


class ViSwinSpatial(SwinTransformer):
    """Swin over tubelets: clip (B, T, 3, H, W) -> one token per tubelet (B, T / Ts, D).

    Args:
        img_size: frame side in pixels (square frames); a multiple of ``patch_size``.
        patch_size: side of the first-stage patches in pixels (4 for Swin).
        tubelet_size: frames per tubelet (Ts).
        embed_dim: width of the first stage; D = embed_dim * 2 ** (len(depths) - 1).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window side, in tokens (timm shrinks it for stages smaller than it).
        drop_path: stochastic depth rate (timm's stage-wise linear rule).
        layer_norm_eps: epsilon of every LayerNorm (1e-6 as in the authors' code).

    Attributes:
        out_dim: D, the width of the tokens it returns.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        tubelet_size: int = 2,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        drop_path: float = 0.0,
        layer_norm_eps: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=3,
            num_classes=0,
            global_pool="avg",
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window_size=window_size,
            mlp_ratio=4.0,
            qkv_bias=True,
            drop_path_rate=drop_path,
            embed_layer=partial(TubeletEmbed, tubelet_size=tubelet_size),
            norm_layer=partial(nn.LayerNorm, eps=layer_norm_eps),
            **kwargs,
        )
        self.tubelet_size = tubelet_size
        self.out_dim = self.num_features

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, T / Ts, D): the mean last-stage token of each tubelet."""
        b = clip.shape[0]
        x = self.forward_features(clip_to_tubelets(clip, self.tubelet_size))  # (B*L, h, w, D)
        x = self.forward_head(x, pre_logits=True)  # (B*L, D)
        return x.reshape(b, -1, x.shape[-1])


def viswin_tiny(img_size: int = 224, drop_path: float = 0.1) -> ViSwinSpatial:
    """ViSwin-T spatial part: Swin-T (patch 4, window 7, dim 96, depths 2-2-6-2, heads 3-6-12-24), D 768."""
    return ViSwinSpatial(
        img_size=img_size, drop_path=drop_path, patch_size=4, tubelet_size=2, embed_dim=96,
        depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
    )


def viswin_demo(img_size: int = 64, drop_path: float = 0.1) -> ViSwinSpatial:
    """A CPU-sized ViSwin (dim 16, depths 1-1-1-1, heads 1-2-4-4, window 4), D 128, for demos and tests."""
    return ViSwinSpatial(
        img_size=img_size, drop_path=drop_path, patch_size=4, tubelet_size=2, embed_dim=16,
        depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 4), window_size=4,
    )
