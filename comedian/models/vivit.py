"""ViViT spatial transformer (ViViT "model 2", factorised encoder, spatial part) on timm's ViT.

Each tubelet of ``tubelet_size`` frames (Ts = 2, one second at 2 fps) is embedded by a Conv3d of kernel
(Ts, 16, 16) (:class:`~comedian.models.tubelet.TubeletEmbed`), a CLS token and learned position
embeddings are added, timm ``Block`` s run over the patch tokens, and the CLS output (after the final
LayerNorm) is the tubelet's token. Everything except the tubelet embedding is timm's
``VisionTransformer``; this class only reshapes the clip and returns the CLS tokens.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from comedian.models.tubelet import TubeletEmbed, clip_to_tubelets

__all__ = ["ViViTSpatial", "vivit_tiny", "vivit_small", "vivit_demo"]


class ViViTSpatial(VisionTransformer):
    """ViT over tubelets: clip (B, T, 3, H, W) -> one token per tubelet (B, T / Ts, D).

    Args:
        img_size: frame side in pixels (square frames, H = W = img_size).
        patch_size: spatial patch side in pixels.
        tubelet_size: frames per tubelet (Ts); a clip's T must be a multiple of it.
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / D.
        drop_path: stochastic depth rate of the last block (timm's linear rule over depth).
        layer_norm_eps: epsilon of every LayerNorm (1e-6 as in the authors' code).

    Attributes:
        out_dim: D, the width of the tokens it returns.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        layer_norm_eps: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=3,
            num_classes=0,
            global_pool="token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            class_token=True,
            drop_path_rate=drop_path,
            embed_layer=partial(TubeletEmbed, tubelet_size=tubelet_size),
            norm_layer=partial(nn.LayerNorm, eps=layer_norm_eps),
            **kwargs,
        )
        self.tubelet_size = tubelet_size
        self.out_dim = embed_dim

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, T / Ts, D): the CLS output of each tubelet."""
        b = clip.shape[0]
        x = self.forward_features(clip_to_tubelets(clip, self.tubelet_size))  # (B*L, 1 + P, D)
        x = self.forward_head(x, pre_logits=True)  # CLS token, (B*L, D)
        return x.reshape(b, -1, x.shape[-1])


def _vivit(img_size: int, drop_path: float, **sizes: Any) -> ViViTSpatial:
    return ViViTSpatial(img_size=img_size, drop_path=drop_path, patch_size=16, tubelet_size=2, **sizes)


def vivit_tiny(img_size: int = 224, drop_path: float = 0.1) -> ViViTSpatial:
    """ViViT-T spatial part: ViT-Ti/16 (D 192, 12 blocks, 3 heads), tubelets of 2 frames."""
    return _vivit(img_size, drop_path, embed_dim=192, depth=12, num_heads=3)


def vivit_small(img_size: int = 224, drop_path: float = 0.1) -> ViViTSpatial:
    """ViViT-S spatial part: ViT-S/16 (D 384, 12 blocks, 6 heads), tubelets of 2 frames."""
    return _vivit(img_size, drop_path, embed_dim=384, depth=12, num_heads=6)


def vivit_demo(img_size: int = 64, drop_path: float = 0.1) -> ViViTSpatial:
    """A CPU-sized ViViT (D 64, 4 blocks, 2 heads, patch 16, tubelets of 2 frames) for demos and tests."""
    return _vivit(img_size, drop_path, embed_dim=64, depth=4, num_heads=2)
