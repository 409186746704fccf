"""Losses of the three steps: MoCo (step 1), SCE distillation (step 2), spotting BCE (step 3)."""
