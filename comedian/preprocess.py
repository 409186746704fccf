"""On-device preprocessing of frames for the model: JPEG decoding, batched clip augmentation, normalisation.

Training and inference share this module. The data loader's workers only read (and, unless the device
decodes, decode) frames and draw each clip's augmentation parameters (:class:`comedian.data.clips.ClipAugment`,
from the sample's key); the training step then runs, on its device and for the whole batch at once:

1. :func:`decode_batch` (only when the workers send JPEG bytes): ``torchvision.io.decode_jpeg`` on the
   device, batched (nvJPEG on CUDA);
2. :func:`augment`: one batched operation per augmentation op, each clip with its own parameters, in the
   order crop + resize, flip, colour jitter (per clip in its drawn order), grayscale, blur, solarise;
3. :func:`normalise`: ``(x / 255 - INPUT_MEAN) / INPUT_STD`` per channel.

Semantics are those of torchvision's ``transforms.v2.functional`` ops on uint8 frames, applied to each clip
alone (``resized_crop`` bilinear antialiased, ``horizontal_flip``, ``adjust_brightness / contrast /
saturation / hue``, ``rgb_to_grayscale``, ``gaussian_blur`` with kernel ``2 ceil(3 sigma) + 1``,
``solarize(128)``): frames are held as float32 holding whole numbers 0..255, and after every op they are
brought back to whole numbers the way torchvision's uint8 conversion does (truncation for the colour ops,
rounding for resize and blur), so each op matches torchvision's within uint8 rounding
(``tests/test_preprocess.py`` checks op by op). The same code runs on CPU and CUDA, outside autocast.

Augmentation parameters arrive as a batch of tensors (keys of :data:`PARAM_KEYS`, made by
:meth:`comedian.data.clips.ClipParams.stack`): they stay on the CPU (:data:`HOST_KEYS`),
where the per-op selections of clips are computed without a device synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "INPUT_MEAN", "INPUT_STD", "JITTER_OPS", "PARAM_KEYS", "HOST_KEYS", "frames_to_input", "normalise",
    "to_channels_first", "decode_batch", "batch_frames", "resample", "flip", "brightness", "contrast", "saturation", "hue",
    "grayscale", "blur", "solarize", "augment", "prepare_clips", "prepare_batch", "nvjpeg_available", "is_host_key",
]

#: Per-channel (RGB) mean and standard deviation of the input normalisation, on [0, 1] pixel values
#: (the authors': 0.45 / 0.225 on every channel, eztorch ``configs/transform/soccernet/normalize.yaml``).
INPUT_MEAN: tuple[float, float, float] = (0.45, 0.45, 0.45)
INPUT_STD: tuple[float, float, float] = (0.225, 0.225, 0.225)

#: Colour-jitter operations, by the id that the ``jitter_op`` parameter holds (-1 = no op in that slot).
JITTER_OPS: tuple[str, ...] = ("brightness", "contrast", "saturation", "hue")
#: One clip's augmentation parameters (each a tensor; a batch stacks them):
#: ``crop`` float64 (4,) top, left, height, width as fractions of the frame; ``flip`` bool; ``jitter_op`` int64
#: (4,) ids of :data:`JITTER_OPS` in the order applied, -1 padded; ``jitter_factor`` float64 (4,);
#: ``grayscale`` bool; ``blur_sigma`` float64, pixels at the output side, 0 = none; ``solarize`` bool.
PARAM_KEYS: tuple[str, ...] = ("crop", "flip", "jitter_op", "jitter_factor", "grayscale", "blur_sigma", "solarize")
#: Batch entries that stay on the CPU when a batch moves to the training device (a key equal to one of these
#: or starting with it and ``_``): augmentation parameters and JPEG bytes (``decode_jpeg`` reads them there).
HOST_KEYS: tuple[str, ...] = ("augment", "jpeg")

def is_host_key(key: str) -> bool:
    """Whether a batch entry stays on the CPU (:data:`HOST_KEYS`)."""
    return any(key == k or key.startswith(k + "_") for k in HOST_KEYS)


_GREY = (0.2989, 0.587, 0.114)  # torchvision's luma weights
_SOLARIZE_THRESHOLD = 128.0


# --------------------------------------------------------------------------------------------------
# Layout and normalisation


def normalise(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Frames (..., 3, H, W) of values 0..255 (any dtype) -> ``(x / 255 - INPUT_MEAN) / INPUT_STD``, float."""
    dtype = torch.float32 if dtype is None else dtype
    shape = (3, 1, 1)
    mean = torch.tensor(INPUT_MEAN, dtype=dtype, device=x.device).view(shape) * 255.0
    scale = 1.0 / (torch.tensor(INPUT_STD, dtype=dtype, device=x.device).view(shape) * 255.0)
    return (x.to(dtype) - mean) * scale


def to_channels_first(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> a (..., 3, H, W) view."""
    if frames.dtype != torch.uint8 or frames.ndim < 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (..., T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    return frames.movedim(-1, -3)


def frames_to_input(frames: Any, device: Any = None, dtype: Any = None) -> torch.Tensor:
    """uint8 RGB frames -> the model's normalised float input (no augmentation).

    Args:
        frames: uint8 array or tensor (..., T, H, W, 3), RGB (as :meth:`PackedFrames.read` returns);
            e.g. (T, H, W, 3) for one clip or (B, T, H, W, 3) for a batch.
        device: where to put the result (the uint8 data is moved first: 4x less to copy); None =
            where ``frames`` is (CPU for an array).
        dtype: floating dtype of the result; default float32.

    Returns:
        float tensor (..., T, 3, H, W): :func:`normalise` of the frames.
    """
    x = to_channels_first(torch.as_tensor(frames))
    if device is not None:
        x = x.to(device, non_blocking=True)
    return normalise(x, dtype).contiguous()


# --------------------------------------------------------------------------------------------------
# Decoding on the device


def nvjpeg_available(device: torch.device) -> bool:
    """Whether ``torchvision.io.decode_jpeg`` decodes on ``device`` (a CUDA device with nvJPEG): one tiny
    JPEG is decoded there to find out."""
    if device.type != "cuda":
        return False
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    try:
        _decode(data, [[data.numel()]], device)
    except RuntimeError:
        return False
    return True


def _decode(jpeg: torch.Tensor, lengths: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    flat = [n for clip in lengths for n in clip]
    pieces = list(torch.split(jpeg, flat))
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image decoding (see comedian.data.frames)
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(pieces, mode=ImageReadMode.RGB, device=device)
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        raise ValueError(f"frames of one batch differ in size: {sorted(shapes)}")
    return torch.stack(images).view(len(lengths), len(lengths[0]), *images[0].shape)


def decode_batch(jpeg: torch.Tensor, lengths: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Decode a batch of clips' JPEGs on ``device``: uint8 (B, T, 3, H, W) there.

    Args:
        jpeg: uint8 (N,) on the CPU, every frame's JPEG back to back, clip by clip, frame by frame.
        lengths: int64 (B, T), each JPEG's length in bytes.
        device: where to decode (``torchvision.io.decode_jpeg``: nvJPEG on CUDA, libjpeg-turbo on CPU).
    """
    return _decode(jpeg.cpu(), lengths.tolist(), device)


def batch_frames(batch: Mapping[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """A batch's frames as uint8 (B, T, 3, H, W) on ``device``: ``batch["clip"]`` (decoded by the loader's
    workers) or, when the workers sent JPEG bytes (``jpeg``, ``jpeg_lengths``), decoded on ``device`` by
    :func:`decode_batch`.

    The workers' frames are a channels-first view of one (B, T, H, W, 3) array
    (:class:`comedian.data.clips.FrameStore`): that array is moved as one contiguous block and seen channels
    first again on the device (:func:`augment` makes it contiguous there)."""
    if "jpeg" in batch:
        return decode_batch(batch["jpeg"], batch["jpeg_lengths"], device)
    frames = batch["clip"]
    channels_last = frames.movedim(-3, -1)
    if channels_last.is_contiguous():
        return channels_last.to(device, non_blocking=True).movedim(-1, -3)
    return frames.to(device, non_blocking=True)


# --------------------------------------------------------------------------------------------------
# The ops. Each takes float frames (n, T, 3, H, W) of whole numbers 0..255 and per-clip parameters (n,),
# and returns whole numbers 0..255.


def _per_clip(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n,) parameters -> (n, 1, 1, 1, 1) in ``like``'s dtype and device."""
    return values.to(device=like.device, dtype=like.dtype, non_blocking=True).view(-1, *([1] * (like.ndim - 1)))


def _to_uint8_values(x: torch.Tensor) -> torch.Tensor:
    """torchvision's float -> uint8 of its colour ops: clamp to [0, 255], then truncate."""
    return x.clamp_(0.0, 255.0).trunc_()


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(n, T, 3, H, W) -> (n, T, 1, H, W) float luma (torchvision's weights, unrounded)."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(_GREY[0]).add_(g, alpha=_GREY[1]).add_(b, alpha=_GREY[2]).unsqueeze(-3)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``x * f + other * (1 - f)`` per clip, then back to uint8 values (torchvision's ``_blend``)."""
    f = _per_clip(factor, x)
    rest = _per_clip(1.0 - factor.double(), x)
    return _to_uint8_values(x.mul(f).add_(other.mul(rest)))


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``adjust_brightness``: ``x * f``."""
    return _to_uint8_values(x.mul(_per_clip(factor, x)))


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``adjust_contrast``: blend with each frame's mean (floored) luma."""
    mean = _luma(x).floor_().mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``adjust_saturation``: blend with the (floored) luma."""
    return _blend(x, _luma(x).floor_(), factor)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (torchvision's formulas, after Pillow's)."""
    r, g, _ = rgb.unbind(dim=-3)
    minc, maxc = torch.aminmax(rgb, dim=-3)
    flat = maxc == minc
    ones = torch.ones_like(maxc)
    span = maxc - minc
    s = span / torch.where(flat, ones, maxc)
    rc, gc, bc = ((maxc.unsqueeze(-3) - rgb) / torch.where(flat, ones, span).unsqueeze(-3)).unbind(dim=-3)
    not_r = maxc != r
    is_g = maxc == g
    h = (bc - gc) * ~not_r + (rc + 2.0 - bc) * (is_g & not_r) + (gc + 4.0 - rc) * (not_r & ~is_g)
    h = h.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv` (torchvision's formulas; each channel picks one of v, p, q, t by the
    hue's sector, with selections rather than torchvision's int64 gather, which needs 24 bytes per pixel)."""
    h, s, v = hsv.unbind(dim=-3)
    h6 = h.mul(6)
    sector = torch.floor(h6)
    frac = h6.sub_(sector)
    sector = sector.remainder_(6)
    sxf = s * frac
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(1.0 - s).mul_(v).clamp_(0.0, 1.0)
    p = (1.0 - s).mul_(v).clamp_(0.0, 1.0)
    is_k = [sector == k for k in range(6)]
    # sectors 0..5: r = v q p p t v, g = t v v q p p, b = p p t v v q
    r = torch.where(is_k[0] | is_k[5], v, torch.where(is_k[1], q, torch.where(is_k[4], t, p)))
    g = torch.where(is_k[1] | is_k[2], v, torch.where(is_k[0], t, torch.where(is_k[3], q, p)))
    b = torch.where(is_k[3] | is_k[4], v, torch.where(is_k[2], t, torch.where(is_k[5], q, p)))
    return torch.stack((r, g, b), dim=-3)


def hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``adjust_hue``: shift the hue by ``f`` (a fraction of the colour circle) in HSV."""
    hsv = _rgb_to_hsv(x.mul(1.0 / 255))
    h, s, v = hsv.unbind(dim=-3)
    h = h.add(_per_clip(factor, x).squeeze(-3)).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return rgb.mul_(255.0 + 1.0 - 1e-3).trunc_()  # torchvision's float -> uint8 (to_dtype, scale=True)


_JITTER = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """``rgb_to_grayscale(num_output_channels=3)``: the truncated luma in all three channels."""
    return _luma(x).trunc_().expand_as(x).contiguous()


def solarize(x: torch.Tensor) -> torch.Tensor:
    """``solarize(x, 128)``: values >= 128 inverted (255 - x)."""
    return torch.where(x >= _SOLARIZE_THRESHOLD, 255.0 - x, x)


def flip(x: torch.Tensor) -> torch.Tensor:
    """``horizontal_flip``."""
    return x.flip(-1)


def _gaussian_taps(sigma: torch.Tensor, taps: int, device: torch.device) -> torch.Tensor:
    """(n,) sigmas -> (n, taps) normalised 1-D Gaussian kernels of ``2 ceil(3 sigma) + 1`` taps each, centred
    in ``taps`` (zeros outside): torchvision's ``_get_gaussian_kernel1d``."""
    sigma = sigma.to(torch.float64)
    half = (2 * torch.ceil(3 * sigma) + 1 - 1) / 2  # each kernel's half width
    offsets = torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2
    logits = -(offsets / math.sqrt(2.0) / sigma[:, None]) ** 2
    logits = logits.masked_fill(offsets.abs()[None] > half[:, None], -math.inf)
    return torch.softmax(logits.float(), dim=1).to(device, non_blocking=True)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``gaussian_blur`` with each clip's sigma (kernel ``2 ceil(3 sigma) + 1`` per side, reflect padding),
    as two depthwise 1-D convolutions (kernels of the batch zero-padded to the largest), then rounded."""
    n, t, c, height, width = x.shape
    taps = int(2 * math.ceil(3 * float(sigma.max())) + 1)
    kernels = _gaussian_taps(sigma, taps, x.device).repeat_interleave(t * c, dim=0)  # (n*t*c, taps)
    pad = taps // 2
    y = x.reshape(1, n * t * c, height, width)
    y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernels.view(-1, 1, 1, taps), groups=n * t * c)  # along the width
    y = F.conv2d(y, kernels.view(-1, 1, taps, 1), groups=n * t * c)  # along the height
    return y.view(n, t, c, height, width).round_()


def _crop_boxes(crop: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(n, 4) fractional crops -> (n, 4) int64 pixel boxes (top, left, height, width), rounded as
    ``ClipAugment`` always has (half to even), height and width at least 1."""
    scale = torch.tensor([height, width, height, width], dtype=torch.float64)
    box = torch.round(crop.to(torch.float64) * scale).to(torch.int64)
    box[:, 2:] = box[:, 2:].clamp_(min=1)
    return box


def _aa_weights(offset: torch.Tensor, length: torch.Tensor, size: int, source: int) -> torch.Tensor:
    """(n, size, source) weights of an antialiased bilinear resize of ``source[offset : offset + length]`` to
    ``size`` samples (torch's ``interpolate(mode="bilinear", antialias=True, align_corners=False)``); source
    positions outside ``[0, source)`` get weight 0 (torchvision's crop pads with zeros)."""
    scale = length.to(torch.float64)[:, None] / size  # (n, 1)
    support = torch.clamp(scale, min=1.0)  # the triangle's half width, in source pixels
    center = scale * (torch.arange(size, dtype=torch.float64)[None] + 0.5)  # (n, size), crop coordinates
    j = torch.arange(source, dtype=torch.float64)[None, None] - offset.to(torch.float64)[:, None, None]
    w = (1.0 - ((j + 0.5 - center[..., None]) / support[..., None]).abs()).clamp_(min=0.0)
    w = w * ((j >= 0) & (j < length[:, None, None]))  # the crop window
    w = w / w.sum(dim=-1, keepdim=True)
    inside = (j + offset[:, None, None] >= 0) & (j + offset[:, None, None] < source)
    return (w * inside).float()


def resample(x: torch.Tensor, crop: torch.Tensor, size: int) -> torch.Tensor:
    """``resized_crop`` of each clip's box to ``size x size`` (bilinear, antialiased), rounded.

    Clips whose boxes are all the same take one ``F.interpolate`` over the batch (torchvision's own
    resize); otherwise each axis is one batched matrix product with per-clip antialiasing weights. Nothing
    is done where the box is the whole frame and the frame is already ``size x size``.
    """
    n, t, c, height, width = x.shape
    boxes = _crop_boxes(crop, height, width)
    if (boxes == boxes[0]).all():
        top, left, h, w = (int(v) for v in boxes[0])
        if (top, left, h, w) == (0, 0, height, width) and (height, width) == (size, size):
            return x
        if top >= 0 and left >= 0 and top + h <= height and left + w <= width:
            y = x[..., top : top + h, left : left + w].reshape(n * t, c, h, w)
            y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            return y.view(n, t, c, size, size).round_()
    wy = _aa_weights(boxes[:, 0], boxes[:, 2], size, height).to(x.device, non_blocking=True)  # (n, S, H)
    wx = _aa_weights(boxes[:, 1], boxes[:, 3], size, width).to(x.device, non_blocking=True)  # (n, S, W)
    y = torch.bmm(x.reshape(n, t * c * height, width), wx.transpose(1, 2))  # (n, t*c*H, S): along the width
    y = torch.bmm(wy, y.view(n, t * c, height, size).transpose(1, 2).reshape(n, height, t * c * size))
    return y.view(n, size, t * c, size).transpose(1, 2).reshape(n, t, c, size, size).round_()


# --------------------------------------------------------------------------------------------------
# The whole augmentation


def _apply(x: torch.Tensor, which: torch.Tensor, op: Any, *params: torch.Tensor) -> torch.Tensor:
    """``op`` on the clips where ``which`` (CPU bool (n,)) is True, the others unchanged."""
    if not bool(which.any()):
        return x
    if bool(which.all()):
        return op(x, *params)
    index = which.nonzero().squeeze(1).to(x.device, non_blocking=True)
    x[index] = op(x[index], *(p[which] for p in params))
    return x


def augment(x: torch.Tensor, params: Mapping[str, torch.Tensor], size: int) -> torch.Tensor:
    """Augment a batch of clips, each with its own parameters (see the module docstring).

    Args:
        x: (B, T, 3, H, W) frames, uint8 or float of whole numbers 0..255, on the training device, of any
            memory layout (the loader's are channels-first views of (B, T, H, W, 3) arrays: the conversion
            to float makes them contiguous).
        params: the batch's parameters (:data:`PARAM_KEYS`, leading dimension B), on the CPU.
        size: the output side S.

    Returns:
        float32 (B, T, 3, S, S) of whole numbers 0..255.
    """
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise ValueError(f"augmentation parameters lack {missing}")
    p = {k: params[k].cpu() for k in PARAM_KEYS}
    with torch.autocast(x.device.type, enabled=False):
        # a contiguous float32 copy, in one pass (the ops below write in place)
        x = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        x = resample(x, p["crop"], size)
        x = _apply(x, p["flip"], flip)
        ops, factors = p["jitter_op"], p["jitter_factor"]
        for slot in range(ops.shape[1]):
            for op_id, name in enumerate(JITTER_OPS):
                x = _apply(x, ops[:, slot] == op_id, _JITTER[name], factors[:, slot])
        x = _apply(x, p["grayscale"], grayscale)
        x = _apply(x, p["blur_sigma"] > 0, blur, p["blur_sigma"])
        x = _apply(x, p["solarize"], solarize)
    return x


def prepare_clips(frames: torch.Tensor, params: Mapping[str, torch.Tensor], size: int,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Training input of a batch: :func:`augment` then :func:`normalise`.

    Args:
        frames: uint8 (B, T, 3, H, W) on the training device (:func:`batch_frames`).
        params: the batch's augmentation parameters, on the CPU.
        size: the model's frame side S.

    Returns:
        (B, T, 3, S, S) float, the model's input.
    """
    with torch.autocast(frames.device.type, enabled=False):
        return normalise(augment(frames, params, size), dtype).contiguous()


def prepare_batch(batch: Mapping[str, Any], device: torch.device, size: int) -> dict[str, Any]:
    """A training batch's model input, made on ``device``: the frames (:func:`batch_frames`) augmented and
    normalised once per augmentation entry (:func:`prepare_clips`): ``augment`` becomes ``clip``,
    ``augment_<name>`` becomes ``<name>`` (e.g. step 1's two views); the other entries that are not
    :data:`HOST_KEYS` are kept as they are."""
    frames = batch_frames(batch, device)
    out = {k: v for k, v in batch.items() if not is_host_key(k) and k != "clip"}
    for key, params in batch.items():
        if key == "augment" or key.startswith("augment_"):
            out["clip" if key == "augment" else key.removeprefix("augment_")] = prepare_clips(frames, params, size)
    return out
