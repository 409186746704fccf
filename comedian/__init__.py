"""COMEDIAN action spotting (self-supervised + distillation pretraining of a spatio-temporal
transformer, then fine-tuning) for SoccerNet-v2, as a Snakemake pipeline.

Time is in seconds (floats) at every interface of this package.
"""

__version__ = "0.1.0"
