"""Models: spatial transformers (ViViT, ViSwin), the temporal transformer and heads, built on timm."""
