"""Sliding-window inference to raw per-token scores, and seed ensembles."""
