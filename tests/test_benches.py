"""The GPU benchmark's CPU smoke path (``bench/gpu_finetune.py --device cpu --quick``): it runs the same code as on
a GPU (decoding, device augmentation, the loader, the fed step, for each of the three training steps) and reports
every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_finetune_smoke_run_on_cpu_reports_every_figure():
    env = {**os.environ, "PYTHONPATH": str(REPO), "COMEDIAN_TRACKING": "0"}
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_finetune.py"), "--device", "cpu", "--quick",
                          "--arch", "vivit_demo", "--workers", "1"],
                         check=True, capture_output=True, text=True, env=env, timeout=600).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["matmul_tflops"] > 0 and report["decode_cpu_frames_per_s"] > 0
    assert "decode_nvjpeg_frames_per_s" not in report  # no CUDA here
    for step in ("finetune", "pretrain_temporal", "pretrain_spatial"):
        figures = report[step]
        for key in ("gflop_per_clip", "model_clips_per_s", "model_mfu", "augment_ms_per_clip", "loader_clips_per_s",
                    "train_clips_per_s", "train_mfu", "train_data_wait"):
            assert figures[key] > 0, (step, key)
        assert figures["decode_place"] == "worker"
    assert report["pretrain_spatial"]["frames"] == 2 and report["pretrain_spatial"]["subvideos_per_run"] > 1
