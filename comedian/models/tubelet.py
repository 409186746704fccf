"""Tubelet embedding: a 3-D patch embedding (Conv3d) that turns ``t`` frames into one grid of tokens.

It is a drop-in ``embed_layer`` for timm's ``VisionTransformer`` and ``SwinTransformer``: it accepts
their constructor keywords and exposes ``grid_size`` / ``num_patches`` as timm's ``PatchEmbed`` does.
The clip layout conversion lives here too, so that the spatial models share it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import to_2tuple
from torch import nn

__all__ = ["TubeletEmbed", "clip_to_tubelets"]


def clip_to_tubelets(clip: torch.Tensor, tubelet_size: int) -> torch.Tensor:
    """Cut a clip into consecutive non-overlapping tubelets of ``tubelet_size`` frames.

    Args:
        clip: (B, T, C, H, W), T frames in time order; T must be a multiple of ``tubelet_size``.
        tubelet_size: frames per tubelet (Ts).

    Returns:
        (B * T / Ts, C, Ts, H, W), tubelet ``i`` of clip ``b`` at row ``b * T / Ts + i``
        (Conv3d's channels-then-time layout).
    """
    if clip.ndim != 5:
        raise ValueError(f"expected a clip of shape (B, T, C, H, W), got {tuple(clip.shape)}")
    b, t, c, h, w = clip.shape
    if t % tubelet_size:
        raise ValueError(f"clip has {t} frames, not a multiple of the tubelet size {tubelet_size}")
    return clip.reshape(b * (t // tubelet_size), tubelet_size, c, h, w).transpose(1, 2)


class TubeletEmbed(nn.Module):
    """Embed a tubelet of ``tubelet_size`` frames as a grid of patch tokens with one Conv3d.

    The kernel is ``(tubelet_size, patch, patch)`` with the same stride, so each output token sees one
    ``patch x patch`` square of every frame of the tubelet (ViViT's "tubelet embedding").

    Input: (N, C, tubelet_size, H, W). Output: (N, H/p * W/p, D) for ``output_fmt="NLC"`` (ViT) or
    (N, H/p, W/p, D) for ``output_fmt="NHWC"`` (Swin).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        tubelet_size: int = 2,
        norm_layer: Callable[[int], nn.Module] | None = None,
        bias: bool = True,
        output_fmt: str = "NLC",
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dynamic_img_pad:
            raise ValueError("TubeletEmbed does not pad images; use a size divisible by the patch size")
        if output_fmt not in ("NLC", "NHWC"):
            raise ValueError(f"output_fmt must be 'NLC' or 'NHWC', got {output_fmt!r}")
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"image size {self.img_size} is not a multiple of the patch size {self.patch_size}")
        self.tubelet_size = tubelet_size
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.output_fmt = output_fmt
        self.strict_img_size = strict_img_size
        kernel = (tubelet_size, *self.patch_size)
        self.proj = nn.Conv3d(
            in_chans, embed_dim, kernel_size=kernel, stride=kernel, bias=bias, device=device, dtype=dtype
        )
        self.norm = norm_layer(embed_dim, device=device, dtype=dtype) if norm_layer else nn.Identity()

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        """Spatial reduction of the embedding (the patch size), as timm's PatchEmbed reports it."""
        return max(self.patch_size) if as_scalar else self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, Ts, H, W) -> (N, L, D) or (N, H/p, W/p, D)."""
        if x.ndim != 5 or x.shape[2] != self.tubelet_size:
            raise ValueError(f"expected tubelets (N, C, {self.tubelet_size}, H, W), got {tuple(x.shape)}")
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input size {tuple(x.shape[-2:])} does not match the model's {self.img_size}")
        x = self.proj(x).squeeze(2)  # (N, D, H/p, W/p)
        x = x.flatten(2).transpose(1, 2) if self.output_fmt == "NLC" else x.permute(0, 2, 3, 1)
        return self.norm(x)
