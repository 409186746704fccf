"""The spotting model: spatial transformer -> temporal transformer -> per-token classifier.

``build_model("vivit_tiny", frames=64, ...)`` returns a :class:`SpottingTransformer`; ``ARCHS`` lists the
architectures. The helpers here act on a built model: fused attention on/off, ``torch.compile``,
trunk freezing, weight-decay exclusions, and step 2's hand-off ``init_temporal_from_spatial``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from comedian.errors import InputError
from comedian.models.heads import SpottingHead
from comedian.models.temporal import TemporalTransformer
from comedian.models.viswin import viswin_demo, viswin_tiny
from comedian.models.vivit import ViViTSpatial, vivit_demo, vivit_small, vivit_tiny

__all__ = [
    "ARCHS", "ArchSpec", "SpottingTransformer", "build_model", "build_model_from_arch",
    "set_fused_attention", "compile_model", "set_trunk_trainable", "init_temporal_from_spatial",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: its spatial factory, the temporal heads, the frame side it is made for."""

    spatial: Callable[..., nn.Module]
    temporal_heads: int
    default_size: int
    patch_multiple: int
    description: str


#: name -> architecture. Temporal heads follow the authors' configs (3 for ViViT-T and ViSwin-T, 6 for ViViT-S).
ARCHS: dict[str, ArchSpec] = {
    "vivit_tiny": ArchSpec(vivit_tiny, 3, 224, 16, "ViViT-T: ViT-Ti/16 on 2-frame tubelets, D 192"),
    "vivit_small": ArchSpec(vivit_small, 6, 224, 16, "ViViT-S: ViT-S/16 on 2-frame tubelets, D 384"),
    "viswin_tiny": ArchSpec(viswin_tiny, 3, 224, 4, "ViSwin-T: Swin-T on 2-frame tubelets, D 768"),
    "vivit_demo": ArchSpec(vivit_demo, 2, 64, 16, "demo ViViT: D 64, 4 blocks, 2 heads (CPU-sized)"),
    "viswin_demo": ArchSpec(viswin_demo, 2, 64, 4, "demo ViSwin: dim 16, depths 1-1-1-1, D 128 (CPU-sized)"),
}


class SpottingTransformer(nn.Module):
    """Clip (B, T, 3, H, W) -> per-token logits (B, T / Ts, C), Ts = 2 frames per token.

    Submodules (their names are the checkpoint key prefixes): ``spatial`` (ViViTSpatial or
    ViSwinSpatial: one token per tubelet), ``temporal`` (:class:`TemporalTransformer`), ``head``
    (:class:`SpottingHead`, logits; apply the sigmoid in the loss / at inference).

    Attributes:
        arch: ``{"name": str, "config": dict}``, the ``build_model`` arguments that rebuild it.
        dim: token width D.
        tubelet_size: frames per token (Ts).
        num_tokens: tokens of a full clip (frames / Ts), the length of the time embedding.
    """

    def __init__(self, spatial: nn.Module, temporal: TemporalTransformer, head: SpottingHead,
                 arch: dict[str, Any]) -> None:
        super().__init__()
        self.spatial = spatial
        self.temporal = temporal
        self.head = head
        self.arch = arch
        self.dim = temporal.dim
        self.tubelet_size = spatial.tubelet_size
        self.num_tokens = temporal.num_tokens

    def spatial_tokens(self, clip: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, 3, H, W) [+ (B, T / Ts) bool mask, True = masked] -> (B, T / Ts, D): the spatial
        transformer's token per tubelet.

        Masked tubelets are never computed: only the kept ones enter the spatial transformer (as one-tubelet
        clips, so a compiled transformer stays the one that runs), as the authors' ``ViViT.forward`` drops
        them; their rows are zeros, for the temporal transformer to replace by its mask token. Any mask
        works (clips may mask different numbers of tokens).
        """
        if mask is None:
            return self.spatial(clip)
        b, t = clip.shape[:2]
        length = t // self.tubelet_size
        if mask.shape != (b, length) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool of shape {(b, length)}, got {mask.dtype} {tuple(mask.shape)}")
        kept = (~mask).reshape(-1).nonzero().squeeze(1)
        if kept.numel() == 0:
            return clip.new_zeros(b, length, self.dim)
        tubelets = clip.reshape(b * length, self.tubelet_size, *clip.shape[2:]).index_select(0, kept)
        tokens = self.spatial(tubelets)[:, 0]  # (kept, D)
        rows = tokens.new_zeros(b * length, tokens.shape[-1]).index_copy(0, kept, tokens)
        return rows.view(b, length, -1)

    def temporal_tokens(self, clip: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, 3, H, W) [+ (B, T / Ts) bool mask, True = replaced by the mask token] -> (B, T / Ts, D).
        Masked tubelets skip the spatial transformer (:meth:`spatial_tokens`)."""
        return self.temporal(self.spatial_tokens(clip, mask), mask)

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, D) temporal tokens -> (B, L, C) logits."""
        return self.head(tokens)

    def forward(self, clip: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, 3, H, W) [+ (B, T / Ts) bool mask] -> (B, T / Ts, C) logits (no sigmoid)."""
        return self.head(self.temporal_tokens(clip, mask))

    def no_weight_decay(self) -> set[str]:
        """Names of parameters usually kept out of weight decay: biases, norms, embeddings and tokens."""
        special = ("pos_embed", "cls_token", "time_embed", "mask_token", "relative_position_bias_table")
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n.rsplit(".", 1)[-1] in special}


def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise InputError(f"model.{field}: {message}")


def build_model(
    arch: str,
    frames: int = 64,
    size: int | None = None,
    classes: int = 17,
    temporal_depth: int = 4,
    drop_path: float = 0.1,
    fused_attn: bool = True,
    checkpoint_activations: bool = False,
) -> SpottingTransformer:
    """Build a spotting model.

    Args:
        arch: a name of ``ARCHS``.
        frames: frames per clip (Tg); tokens per clip = frames / 2. The time embedding has that many rows.
        size: frame side in pixels (square input); None = the architecture's (224, demos 64).
        classes: number of action classes C of the head (17 for SoccerNet-v2).
        temporal_depth: blocks of the temporal transformer.
        drop_path: stochastic depth rate of both transformers (timm's linear rule, max at the last block).
        fused_attn: attention through ``F.scaled_dot_product_attention`` (also for Swin's window attention,
            which timm leaves unfused by default); False = explicit softmax(QK^T)V.
        checkpoint_activations: recompute the spatial blocks in the backward pass (timm's
            ``set_grad_checkpointing``, ``torch.utils.checkpoint``) to save memory.

    Raises:
        InputError: an unknown arch or an invalid size / frame count / depth / class count.
    """
    _check(arch in ARCHS, "arch", f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    size = spec.default_size if size is None else size
    _check(frames >= 2 and frames % 2 == 0, "frames", f"{frames} is not a positive multiple of 2 (frames per token)")
    _check(size > 0 and size % spec.patch_multiple == 0, "size",
           f"{size} is not a positive multiple of {spec.patch_multiple} (the patch size of {arch})")
    _check(classes >= 1, "classes", f"{classes} must be >= 1")
    _check(temporal_depth >= 1, "temporal_depth", f"{temporal_depth} must be >= 1")
    _check(0.0 <= drop_path < 1.0, "drop_path", f"{drop_path} must be in [0, 1)")
    config = dict(frames=frames, size=size, classes=classes, temporal_depth=temporal_depth, drop_path=drop_path)
    spatial = spec.spatial(img_size=size, drop_path=drop_path)
    temporal = TemporalTransformer(
        spatial.out_dim, depth=temporal_depth, num_heads=spec.temporal_heads,
        num_tokens=frames // spatial.tubelet_size, drop_path=drop_path,
    )
    model = SpottingTransformer(spatial, temporal, SpottingHead(spatial.out_dim, classes),
                                arch={"name": arch, "config": config})
    set_fused_attention(model, fused_attn)
    spatial.set_grad_checkpointing(checkpoint_activations)
    return model


def build_model_from_arch(arch: dict[str, Any], **overrides: Any) -> SpottingTransformer:
    """Rebuild a model from a checkpoint's ``arch`` entry (``{"name", "config"}``), with overrides."""
    return build_model(arch["name"], **{**arch.get("config", {}), **overrides})


def set_fused_attention(model: nn.Module, enabled: bool) -> int:
    """Switch every timm attention module of ``model`` to SDPA (True) or explicit matmuls (False).

    timm reads its global flag (``timm.layers.set_fused_attn``) once, when each attention module is
    built, into the module's ``fused_attn`` attribute; this sets that attribute on built modules.
    Returns the number of attention modules switched.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = enabled
            count += 1
    return count


def compile_model(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """Compile ``model`` in place with ``torch.compile`` (``nn.Module.compile``) and return it.

    Compiling in place keeps the parameter names (no ``_orig_mod.`` prefix), so checkpoints of a compiled
    model load into an uncompiled one and back. ``compile_kwargs`` go to ``torch.compile`` (``mode``,
    ``dynamic``, ``backend``...). The first forward pays the compilation.
    """
    model.compile(**compile_kwargs)
    return model


def set_trunk_trainable(model: SpottingTransformer, trainable: bool) -> None:
    """(Un)freeze the spatial and temporal transformers; the head stays trainable.

    For the classifier-only phase of fine-tuning. A frozen trunk should also be put in eval mode by the
    trainer (``model.spatial.eval(); model.temporal.eval()``) so that drop path is off.
    """
    for part in (model.spatial, model.temporal):
        for p in part.parameters():
            p.requires_grad_(trainable)


@torch.no_grad()
def init_temporal_from_spatial(model: SpottingTransformer) -> list[str]:
    """Copy the first ``temporal_depth`` spatial blocks (and the final norm) into the temporal transformer.

    This is how the authors start step 2 from step 1 (``copy_strategy: repeat``). Only ViViT can do it:
    its spatial blocks are ViT blocks of the temporal width. For ViSwin nothing is copied (Swin blocks
    have other widths and window attention; the authors' ViSwin config copies nothing either) and the
    temporal transformer keeps its initialisation. When the temporal transformer is deeper than the
    spatial one, the extra blocks keep theirs.

    Returns:
        The temporal parameter names that were overwritten (empty for ViSwin).
    """
    spatial, temporal = model.spatial, model.temporal
    if not isinstance(spatial, ViViTSpatial):
        log.info("init_temporal_from_spatial: %s has no ViT blocks of width %d; temporal weights kept",
                 type(spatial).__name__, temporal.dim)
        return []
    copied: list[str] = []
    pairs = [(f"blocks.{i}", temporal.blocks[i], spatial.blocks[i])
             for i in range(min(len(temporal.blocks), len(spatial.blocks)))]
    pairs.append(("norm", temporal.norm, spatial.norm))
    for prefix, target, source in pairs:
        target.load_state_dict(source.state_dict())
        copied += [f"temporal.{prefix}.{name}" for name in target.state_dict()]
    if len(temporal.blocks) > len(spatial.blocks):
        log.info("init_temporal_from_spatial: temporal blocks %d..%d keep their initialisation",
                 len(spatial.blocks), len(temporal.blocks) - 1)
    log.info("init_temporal_from_spatial: copied %d tensors from the spatial transformer", len(copied))
    return copied
