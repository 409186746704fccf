"""The one training loop and the three steps that use it."""
