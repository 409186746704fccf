"""`comedian model-summary`: parameters and multiply-adds of one clip's forward pass.

Multiply-adds (MACs) count every matrix product: linear layers, the tubelet Conv3d, Swin's patch
merging, and attention's QK^T and AV. "GMACs" = MACs / 1e9 — what the paper's Table 1 calls GFLOPs.
Norms, softmax, GELU and additions are not counted; ``gmacs_fvcore_style`` adds fvcore's 5 operations
per LayerNorm element, which is how the paper's figures come out (see :func:`model_summary`).

Two independent counters, both run on the meta device (no memory, a second or so for ViViT-S at
64 frames x 224 px):
- :func:`count_macs` — torch's ``FlopCounterMode`` (FLOPs / 2) with fused attention switched off, so that
  attention runs as explicit matmuls (the counter does not see every SDPA kernel on CPU);
- :func:`count_macs_hooks` — forward hooks on Linear / Conv layers plus 2 x N^2 x width per attention call.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from comedian.models.spotting import ARCHS, SpottingTransformer, build_model, set_fused_attention

__all__ = ["count_params", "count_macs", "count_macs_hooks", "model_summary", "PAPER_FIGURES", "main"]

#: (arch, temporal depth) -> (params in millions, GFLOPs) of the paper's Tables 1-2 (64 frames, 224x224).
PAPER_FIGURES: dict[tuple[str, int], tuple[float, float]] = {
    ("vivit_tiny", 4): (7.5, 41.2),
    ("vivit_tiny", 6): (8.3, 41.3),
    ("vivit_tiny", 8): (9.2, 41.3),
    ("vivit_small", 4): (29.1, 149.5),
    ("viswin_tiny", 4): (55.9, 145.6),
}


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


@contextmanager
def _unfused(model: nn.Module) -> Iterator[None]:
    flags = {m: m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    set_fused_attention(model, False)
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.fused_attn = flag


def _clip(model: SpottingTransformer, batch: int, frames: int, size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.zeros(batch, frames, 3, size, size, device=device)


@torch.no_grad()
def count_macs(model: SpottingTransformer, frames: int, size: int, batch: int = 1) -> dict[str, int]:
    """MACs of the forward pass of ``batch`` clips of ``frames`` frames at ``size`` px, per part.

    Counted with ``FlopCounterMode`` (matrix products and convolutions; FLOPs / 2), attention unfused.
    Returns ``{"spatial", "temporal", "head", "total"}`` in MACs.
    """
    was_training = model.training
    model.eval()
    counts: dict[str, int] = {}
    with _unfused(model):
        clip = _clip(model, batch, frames, size)
        steps = [("spatial", lambda: model.spatial_tokens(clip))]
        tokens = model.spatial_tokens(clip)
        steps += [("temporal", lambda: model.temporal(tokens)), ("head", lambda: model.classify(tokens))]
        for name, run in steps:
            counter = FlopCounterMode(display=False)
            with counter:
                run()
            counts[name] = counter.get_total_flops() // 2
    model.train(was_training)
    counts["total"] = counts["spatial"] + counts["temporal"] + counts["head"]
    return counts


@torch.no_grad()
def count_macs_hooks(model: SpottingTransformer, frames: int, size: int, batch: int = 1,
                     norm_cost: int = 0) -> int:
    """MACs counted from layer shapes with forward hooks (independent cross-check of :func:`count_macs`).

    Linear: output elements x in_features. Conv: output elements x (in_channels / groups) x kernel volume.
    Attention (a timm module with ``qkv`` and ``num_heads``): QK^T and AV, 2 x windows x N^2 x width.
    LayerNorm: ``norm_cost`` x input elements (0 = not counted; fvcore, which timm's and many papers'
    FLOP figures come from, counts 5 per element of an affine norm).
    """
    total = 0

    def norm(m: nn.LayerNorm, inputs: tuple[torch.Tensor, ...], _: Any) -> None:
        nonlocal total
        total += norm_cost * inputs[0].numel()

    def linear(m: nn.Linear, _: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    def conv(m: nn.modules.conv._ConvNd, _: Any, out: torch.Tensor) -> None:
        nonlocal total
        kernel = 1
        for k in m.kernel_size:
            kernel *= k
        total += out.numel() * (m.in_channels // m.groups) * kernel

    def attention(m: nn.Module, inputs: tuple[torch.Tensor, ...], _: Any) -> None:
        nonlocal total
        windows, tokens, _ = inputs[0].shape
        total += 2 * windows * tokens * tokens * (m.qkv.out_features // 3)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.LayerNorm) and norm_cost:
            handles.append(m.register_forward_hook(norm))
        elif isinstance(getattr(m, "qkv", None), nn.Linear) and hasattr(m, "num_heads"):
            handles.append(m.register_forward_hook(attention))
    was_training = model.training
    model.eval()
    try:
        model(_clip(model, batch, frames, size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def model_summary(arch: str, frames: int = 64, size: int | None = None, classes: int = 17,
                  temporal_depth: int = 4) -> dict[str, Any]:
    """Parameters and GMACs per clip of a model built on the meta device (no weights allocated).

    Returns a JSON-ready dict: ``params`` (int, whole SpottingTransformer including the C-class head;
    the pretraining projector / predictor are not part of it), ``gmacs`` (float, one clip), their
    spatial / temporal / head split, ``gmacs_hooks`` (the cross-check), ``gmacs_fvcore_style`` (the
    same plus 5 operations per LayerNorm input element, as fvcore counts them), and the paper's figures
    when the configuration is one of its Tables 1-2.
    """
    with torch.device("meta"):
        model = build_model(arch, frames=frames, size=size, classes=classes, temporal_depth=temporal_depth,
                            drop_path=0.0)
    size = model.arch["config"]["size"]
    macs = count_macs(model, frames, size)
    summary: dict[str, Any] = {
        "arch": arch, "frames": frames, "size": size, "classes": classes, "temporal_depth": temporal_depth,
        "tokens": frames // model.tubelet_size, "dim": model.dim,
        "params": count_params(model), "params_spatial": count_params(model.spatial),
        "params_temporal": count_params(model.temporal), "params_head": count_params(model.head),
        "gmacs": macs["total"] / 1e9, "gmacs_spatial": macs["spatial"] / 1e9,
        "gmacs_temporal": macs["temporal"] / 1e9, "gmacs_head": macs["head"] / 1e9,
        "gmacs_hooks": count_macs_hooks(model, frames, size) / 1e9,
        "gmacs_fvcore_style": count_macs_hooks(model, frames, size, norm_cost=5) / 1e9,
    }
    paper = PAPER_FIGURES.get((arch, temporal_depth))
    if paper and frames == 64 and size == 224:
        summary["paper"] = {"params_m": paper[0], "gflops": paper[1]}
    return summary


def _format(s: dict[str, Any]) -> str:
    lines = [
        f"{s['arch']}: {s['frames']} frames at {s['size']}x{s['size']} -> {s['tokens']} tokens of width {s['dim']}, "
        f"temporal depth {s['temporal_depth']}, {s['classes']} classes",
        f"  params  {s['params'] / 1e6:8.2f} M   (spatial {s['params_spatial'] / 1e6:.2f} M, temporal "
        f"{s['params_temporal'] / 1e6:.2f} M, head {s['params_head'] / 1e3:.1f} k)",
        f"  GMACs   {s['gmacs']:8.2f}     (spatial {s['gmacs_spatial']:.2f}, temporal {s['gmacs_temporal']:.3f}, "
        f"head {s['gmacs_head']:.6f}; hook count {s['gmacs_hooks']:.2f}) per clip",
        f"  GMACs   {s['gmacs_fvcore_style']:8.2f}     with LayerNorms counted as fvcore does (5 per element)",
    ]
    if "paper" in s:
        lines.append(f"  paper   {s['paper']['params_m']:8.1f} M / {s['paper']['gflops']:.1f} GFLOPs (multiply-adds)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="comedian model-summary",
        description="Parameter count and multiply-adds (GMACs, incl. attention) of one clip's forward pass.",
    )
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
    parser.add_argument("--temporal-depth", type=int, default=4, help="temporal blocks (default 4)")
    parser.add_argument("--frames", type=int, default=64, help="frames per clip, 2 per token (default 64)")
    parser.add_argument("--size", type=int, default=None, help="frame side in pixels (default: the arch's)")
    parser.add_argument("--classes", type=int, default=17, help="classes of the head (default 17)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    summary = model_summary(args.arch, frames=args.frames, size=args.size, classes=args.classes,
                            temporal_depth=args.temporal_depth)
    print(json.dumps(summary) if args.json else _format(summary))
    return 0
