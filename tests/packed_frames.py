"""Test helper: write a packed frame file (comedian.data.frames layout) straight from arrays."""

import io
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from comedian.data.frames import FORMAT


def write_packed(path: Path, frames: np.ndarray, fps: float = 2.0) -> None:
    """A packed frame file of uint8 (N, H, W, 3) frames, JPEG quality 95, marked complete."""
    blobs = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([b.size for b in blobs])]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("jpeg", data=np.concatenate(blobs))
        h5.create_dataset("offsets", data=offsets)
        h5.attrs.update(format=FORMAT, fps=fps, count=len(frames), duration_s=len(frames) / fps,
                        width=frames.shape[2], height=frames.shape[1], source="synthetic.mkv", quality=2)
        h5.attrs["complete"] = True
