"""On-device preprocessing: the batched augmentation equals torchvision's per-clip ops (the augmentation the loader
workers applied before), op by op, within uint8 rounding; flip, crop and colour on clips of known content;
JPEG decoding on the device; normalisation."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from comedian.data.clips import AugmentSpec, ClipAugment, ClipParams, collate_samples, first_sample
from comedian import preprocess as P

SIZE = 16


def reference(frames: torch.Tensor, p: ClipParams, size: int, float_resize: bool = False) -> torch.Tensor:
    """One clip augmented alone with torchvision's uint8 ops: uint8 (T, 3, H, W) -> uint8 (T, 3, size, size).
    ``float_resize``: resize float frames, then round (torchvision's path on CUDA) instead of its uint8 kernel."""
    x = frames
    height, width = x.shape[-2:]
    top, left, h, w = p.crop
    box = (round(top * height), round(left * width), max(1, round(h * height)), max(1, round(w * width)))
    if box != (0, 0, height, width) or (height, width) != (size, size):
        if float_resize:
            x = F.resized_crop(x.float(), *box, [size, size], antialias=True).round().to(torch.uint8)
        else:
            x = F.resized_crop(x, *box, [size, size], antialias=True)
    if p.flip:
        x = F.horizontal_flip(x)
    for op, factor in p.jitter:
        x = getattr(F, f"adjust_{op}")(x, factor)
    if p.grayscale:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if p.blur_sigma > 0:
        kernel = 2 * math.ceil(3 * p.blur_sigma) + 1
        x = F.gaussian_blur(x, [kernel, kernel], [p.blur_sigma, p.blur_sigma])
    if p.solarize:
        x = F.solarize(x, 128)
    return x


def batch_params(params: list[ClipParams]) -> dict[str, torch.Tensor]:
    return ClipParams.stack(params)


def natural_clips(n: int, t: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, t, 3, H, W): smooth colour gradients plus noise and a few saturated blocks (every hue and
    level occurs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    out = np.empty((n, t, 3, height, width))
    for i in range(n):
        for f in range(t):
            phase = rng.uniform(0, 2 * np.pi, 3)
            base = np.stack([127 + 120 * np.sin(4 * xx + 3 * yy + ph) for ph in phase])
            out[i, f] = base + rng.normal(0, 20, size=base.shape)
            r, c = rng.integers(0, height - 4), rng.integers(0, width - 4)
            out[i, f, :, r : r + 4, c : c + 4] = rng.choice([0, 255], size=(3, 1, 1))
    return torch.from_numpy(np.clip(out, 0, 255).round().astype(np.uint8))


def assert_within_rounding(got: torch.Tensor, want: torch.Tensor, max_diff: int = 1, share: float = 0.02) -> None:
    """Equal within one grey level everywhere, and exactly equal on all but ``share`` of the values."""
    diff = (got.float() - want.float()).abs()
    assert diff.max() <= max_diff, f"max difference {diff.max()}"
    assert (diff > 0).float().mean() <= share, f"{(diff > 0).float().mean():.4f} of the values differ"


def check_op(params: list[ClipParams], frames: torch.Tensor, size: int = SIZE, float_resize: bool = False,
             **tolerance) -> None:
    got = P.augment(frames, batch_params(params), size)
    assert got.dtype == torch.float32 and torch.equal(got, got.round())
    want = torch.stack([reference(frames[i], p, size, float_resize) for i, p in enumerate(params)])
    assert_within_rounding(got, want, **tolerance)


def check_resample(params: list[ClipParams], frames: torch.Tensor) -> None:
    """Within one grey level of torchvision's uint8 resize (which rounds between its two passes), and equal to
    its float resize but for a few values on a rounding edge."""
    check_op(params, frames, share=1.0)
    check_op(params, frames, float_resize=True, share=0.01)


# --------------------------------------------------------------------------------------------------
# Op by op, each clip with its own parameters, against torchvision on each clip alone


def test_resize_without_crop_equals_torchvision():
    check_resample([ClipParams()] * 3, natural_clips(3, 2, 24, 40))


def test_per_clip_crops_equal_torchvision_resized_crop():
    frames = natural_clips(4, 2, 30, 44, seed=1)
    crops = [(0.0, 0.0, 1.0, 1.0), (0.1, 0.2, 0.6, 0.5), (0.35, 0.05, 0.3, 0.9), (0.5, 0.5, 0.5, 0.5)]
    check_resample([ClipParams(crop=c) for c in crops], frames)
    upscale = natural_clips(2, 2, 12, 12, seed=2)  # crops smaller than the output: interpolation, no antialias
    check_resample([ClipParams(crop=(0.2, 0.1, 0.5, 0.6)), ClipParams(crop=(0.0, 0.3, 0.7, 0.7))], upscale)


@pytest.mark.parametrize("op,factors", [("brightness", [0.6, 1.0, 1.4]), ("contrast", [0.6, 1.2, 1.4]),
                                        ("saturation", [0.0, 0.6, 1.4]), ("hue", [-0.1, 0.05, 0.2])])
def test_each_jitter_op_equals_torchvision(op, factors):
    frames = natural_clips(len(factors), 3, SIZE, SIZE, seed=3)
    check_op([ClipParams(jitter=[(op, f)]) for f in factors], frames)


def test_jitter_in_each_clips_drawn_order():
    frames = natural_clips(3, 2, SIZE, SIZE, seed=4)
    orders = [[("hue", 0.1), ("brightness", 1.3), ("contrast", 0.7), ("saturation", 1.2)],
              [("saturation", 0.7), ("contrast", 1.3), ("brightness", 0.8), ("hue", -0.05)],
              [("contrast", 1.2), ("brightness", 0.9)]]
    check_op([ClipParams(jitter=o) for o in orders], frames, max_diff=2)


def test_grayscale_solarize_flip_equal_torchvision():
    frames = natural_clips(4, 2, SIZE, SIZE, seed=5)
    check_op([ClipParams(grayscale=g, solarize=s, flip=f) for g, s, f in
              [(True, False, False), (False, True, False), (False, False, True), (True, True, True)]], frames,
             share=0.0, max_diff=0)


def test_blur_with_each_clips_sigma_equals_torchvision():
    frames = natural_clips(4, 2, 24, 24, seed=6)
    check_op([ClipParams(blur_sigma=s) for s in (0.0, 0.3, 1.0, 2.2)], frames, size=24)


def test_whole_drawn_augmentation_equals_torchvision():
    spec = AugmentSpec(crop_scale=(0.3, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8,
                       grayscale_p=0.2, blur_p=0.5, solarize_p=0.2)
    augment = ClipAugment(spec, SIZE)
    params = [augment.draw(np.random.default_rng([5, k])) for k in range(12)]
    frames = natural_clips(12, 2, 28, 50, seed=7)
    # a one-level rounding difference of an early op can grow by a later contrast factor (up to 1.4)
    check_op(params, frames, float_resize=True, max_diff=2, share=0.01)


# --------------------------------------------------------------------------------------------------
# Known content


def test_flip_crop_and_colour_on_a_clip_of_known_content():
    x = torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8)
    x[..., 0, :, :4] = 200  # red left half
    x[..., 2, :, 4:] = 100  # blue right half
    flipped = P.augment(x, batch_params([ClipParams(flip=True)]), 8)
    assert (flipped[..., 0, :, 4:] == 200).all() and (flipped[..., 0, :, :4] == 0).all()
    assert (flipped[..., 2, :, :4] == 100).all()
    crop = P.augment(x, batch_params([ClipParams(crop=(0.0, 0.0, 1.0, 0.5))]), 8)  # the left half, stretched
    assert (crop[..., 0, :, :] == 200).all() and (crop[..., 2, :, :] == 0).all()
    bright = P.augment(x, batch_params([ClipParams(jitter=[("brightness", 1.2)])]), 8)
    assert (bright[..., 0, :, :4] == 240).all() and (bright[..., 2, :, 4:] == 120).all()
    grey = P.augment(x, batch_params([ClipParams(grayscale=True)]), 8)
    assert (grey[..., :, :, :4] == int(200 * 0.2989)).all() and (grey[..., :, :, 4:] == int(100 * 0.114)).all()
    solar = P.augment(x, batch_params([ClipParams(solarize=True)]), 8)
    assert (solar[..., 0, :, :4] == 55).all() and (solar[..., 2, :, 4:] == 100).all()


def test_clips_are_augmented_independently_and_frames_alike():
    frames = natural_clips(1, 4, SIZE, SIZE).expand(3, 4, 3, SIZE, SIZE)
    params = [ClipParams(), ClipParams(flip=True, jitter=[("hue", 0.2)]), ClipParams(grayscale=True)]
    out = P.augment(frames, batch_params(params), SIZE)
    assert torch.equal(out[0], frames[0].float())
    for i, p in enumerate(params):  # one clip alone = the same clip in a batch
        assert torch.equal(P.augment(frames[i : i + 1], batch_params([p]), SIZE)[0], out[i])
    same = P.augment(natural_clips(1, 1, SIZE, SIZE).expand(1, 3, 3, SIZE, SIZE), batch_params([params[1]]), SIZE)
    assert torch.equal(same[0, 0], same[0, 2])  # every frame of a clip gets the same draw


# --------------------------------------------------------------------------------------------------
# Normalisation, the batch as the steps see it, device decoding


def test_prepare_batch_augments_each_view_and_normalises():
    frames = natural_clips(2, 2, 20, 30)
    views = [[ClipParams(), ClipParams(flip=True)], [ClipParams(grayscale=True), ClipParams(solarize=True)]]
    batch = {"clip": frames, "augment_view1": batch_params(views[0]),
             "augment_view2": batch_params(views[1]), "key": torch.zeros(2, 2)}
    out = P.prepare_batch(batch, torch.device("cpu"), SIZE)
    assert set(out) == {"view1", "view2", "key"}
    for name, params in zip(("view1", "view2"), views):
        want = P.normalise(P.augment(frames, batch_params(params), SIZE))
        assert out[name].shape == (2, 2, 3, SIZE, SIZE) and torch.equal(out[name], want)
    assert torch.allclose(P.normalise(torch.full((3, 1, 1), 255.0)).flatten(),
                          torch.tensor([(1 - m) / s for m, s in zip(P.INPUT_MEAN, P.INPUT_STD)]))


def _jpeg(frame: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def test_jpeg_batches_decode_on_the_device_like_the_workers():
    from comedian.data.frames import decode_jpegs

    frames = natural_clips(2, 3, 24, 40).movedim(-3, -1).numpy()
    samples = []
    for clip in frames:
        jpegs = [_jpeg(f) for f in clip]
        samples.append({"jpeg": torch.from_numpy(np.concatenate(jpegs)),
                        "jpeg_lengths": torch.tensor([j.size for j in jpegs]),
                        "augment": first_sample(ClipParams.stack([ClipParams()])), "key": torch.zeros(2)})
    batch = collate_samples(samples)
    assert batch["jpeg_lengths"].shape == (2, 3) and batch["jpeg"].numel() == batch["jpeg_lengths"].sum()
    decoded = P.batch_frames(batch, torch.device("cpu"))
    for b, clip in enumerate(frames):
        want = decode_jpegs([_jpeg(f) for f in clip])
        assert torch.equal(decoded[b], torch.from_numpy(want).movedim(-1, -3))
    assert not P.nvjpeg_available(torch.device("cpu"))
