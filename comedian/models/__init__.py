"""Models: spatial transformers (ViViT, ViSwin), the temporal transformer and heads, built on timm.

A clip (B, T, 3, H, W) of T frames is cut into tubelets of Ts = 2 frames; the spatial transformer turns
each into one token (B, T/2, D); the temporal transformer (learned time embedding, optional caller-drawn
mask) returns as many tokens; a linear head gives per-token logits (B, T/2, C).

- ``tubelet.py``   3-D patch embedding (Conv3d (2, p, p)), clip -> tubelets
- ``vivit.py``     ViViTSpatial (timm VisionTransformer, CLS token per tubelet): vivit_tiny/small/demo
- ``viswin.py``    ViSwinSpatial (timm SwinTransformer, mean token per tubelet): viswin_tiny/demo
- ``temporal.py``  TemporalTransformer, tube_mask
- ``heads.py``     SpottingHead (logits), projector / predictor MLPs of the pretraining steps
- ``spotting.py``  SpottingTransformer, ARCHS, build_model, attention / compile / freezing helpers,
  init_temporal_from_spatial
- ``checkpoint.py`` the checkpoint format and the step-to-step hand-off (load_step_checkpoint)
- ``summary.py``   `comedian model-summary`: parameters and GMACs per clip
"""

from comedian.models.checkpoint import (
    CHECKPOINT_FORMAT,
    LoadReport,
    load_step_checkpoint,
    make_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from comedian.models.heads import MLPHead, SpottingHead, predictor, projector
from comedian.models.spotting import (
    ARCHS,
    SpottingTransformer,
    build_model,
    build_model_from_arch,
    compile_model,
    init_temporal_from_spatial,
    set_fused_attention,
    set_trunk_trainable,
)
from comedian.models.temporal import TemporalTransformer, tube_mask

__all__ = [
    "ARCHS", "CHECKPOINT_FORMAT", "LoadReport", "MLPHead", "SpottingHead", "SpottingTransformer",
    "TemporalTransformer", "build_model", "build_model_from_arch", "compile_model",
    "init_temporal_from_spatial", "load_step_checkpoint", "make_checkpoint", "predictor", "projector",
    "read_checkpoint", "save_checkpoint", "set_fused_attention", "set_trunk_trainable", "tube_mask",
]
