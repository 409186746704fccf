"""Checkpoints that carry a model from one training step to the next.

Format (a dict saved with ``torch.save``; :func:`make_checkpoint` builds it)::

    {
        "format": "comedian-checkpoint/1",
        "step": "spatial_pretrain",            # the step that wrote it (free text)
        "arch": {"name": "vivit_tiny",         # SpottingTransformer.arch: build_model's arguments
                 "config": {"frames": 64, "size": 224, "classes": 17, "temporal_depth": 4, "drop_path": 0.1}},
        "parts": ["spatial"],                  # which submodules "model" holds
        "model": {"spatial.pos_embed": tensor, ...},   # state dict of those parts (CPU tensors)
        "extra": {...},                        # optional: the step's own heads, optimiser, epoch, metrics
    }

Step N writes only the parts it trained (step 1: ``spatial``; step 2: ``spatial`` + ``temporal``;
step 3: all), so loading it into step N+1's model reports the untrained parts as missing keys.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comedian.errors import InputError
from comedian.io import atomic_path

__all__ = ["CHECKPOINT_FORMAT", "LoadReport", "make_checkpoint", "save_checkpoint", "read_checkpoint",
           "load_step_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "comedian-checkpoint/1"
PARTS = ("spatial", "temporal", "head")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile / DistributedDataParallel wrappers


@dataclass
class LoadReport:
    """What :func:`load_step_checkpoint` did.

    Attributes:
        step: the step loading the checkpoint.
        source_step: the step that wrote it (None for a bare state dict).
        loaded: model keys set from the checkpoint.
        missing: model keys the checkpoint did not have (they keep their current values).
        resized: keys whose tensor was resampled to the model's shape (only ``temporal.time_embed``).
    """

    step: str
    source_step: str | None
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, and the missing keys grouped by submodule."""
        groups = Counter(".".join(k.split(".")[:2]) for k in self.missing)
        missing = ", ".join(f"{g}.* ({n})" for g, n in sorted(groups.items())) or "none"
        text = (f"step {self.step!r} loaded {len(self.loaded)} tensors from step {self.source_step!r}; "
                f"missing {len(self.missing)}: {missing}")
        return text + (f"; resized {', '.join(self.resized)}" if self.resized else "")


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile's OptimizedModule / DistributedDataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _listing(keys: Iterable[str], limit: int = 6) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def make_checkpoint(model: nn.Module, step: str, parts: Iterable[str] | None = None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build a checkpoint dict of ``model`` (a SpottingTransformer, possibly compiled or wrapped).

    Args:
        model: the model; its ``arch`` attribute is stored.
        step: name of the step writing it.
        parts: submodules to store, among ``spatial``, ``temporal``, ``head``; None = all.
        extra: anything else the step wants to keep (its projector's state dict, optimiser...).
    """
    model = _unwrap(model)
    parts = sorted(PARTS if parts is None else set(parts))
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown checkpoint parts {unknown}; choose among {PARTS}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.split(".", 1)[0] in parts}
    checkpoint: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "step": step, "arch": copy.deepcopy(model.arch),
                                  "parts": parts, "model": state}
    if extra is not None:
        checkpoint["extra"] = dict(extra)
    return checkpoint


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested structure of dicts, lists and tuples (a checkpoint's size, nearly)."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def save_checkpoint(path: str | Path, checkpoint: Mapping[str, Any]) -> Path:
    """Write a checkpoint (or any state dict) atomically: nothing at ``path`` unless the whole file was
    written, and an older file there stays until then. A full disk or quota is a one-line
    :class:`~comedian.errors.NoSpaceError` with the bytes needed (written through a Python file, so that
    the OS error reaches :func:`~comedian.io.atomic_path` instead of torch's "unexpected pos")."""
    path = Path(path)
    with atomic_path(path, needed_bytes=tensor_bytes(checkpoint)) as tmp, open(tmp, "wb") as f:
        torch.save(dict(checkpoint), f)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file onto the CPU (tensors and plain Python values only).

    Raises:
        InputError: the file is missing, unreadable, or not a comedian checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt or foreign file
        raise InputError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "arch" not in checkpoint:
        raise InputError(f"{path}: not a comedian checkpoint (expected a dict with 'arch' and 'model')")
    return checkpoint


def _resize_time_embed(value: torch.Tensor, length: int) -> torch.Tensor:
    """(1, L0, D) -> (1, length, D) by linear interpolation along time."""
    resized = torch.nn.functional.interpolate(value.transpose(1, 2).float(), size=length, mode="linear",
                                              align_corners=False)
    return resized.transpose(1, 2).to(value.dtype)


@torch.no_grad()
def load_step_checkpoint(
    model: nn.Module,
    source: str | Path | Mapping[str, Any],
    step_name: str,
    resize_time_embed: bool = False,
) -> LoadReport:
    """Load a previous step's weights into ``model`` (step N -> step N+1) and report what happened.

    Args:
        model: the SpottingTransformer of the step that starts (possibly compiled or wrapped).
        source: a checkpoint path, a checkpoint dict (see the module docstring), or a bare state dict
            (then no architecture check is possible; a warning is logged).
        step_name: the step loading it, for the messages.
        resize_time_embed: when only the clip length differs (e.g. 64-frame pretraining, 128-frame
            fine-tuning), interpolate ``temporal.time_embed`` to the model's length instead of failing.

    Returns:
        A :class:`LoadReport`; its summary (missing keys grouped by submodule) is also logged.

    Raises:
        InputError: the checkpoint is of another architecture, or has keys the model lacks
            (unexpected), or tensors of other shapes; the message names the keys.
    """
    where = str(source) if isinstance(source, (str, Path)) else "checkpoint"
    checkpoint = read_checkpoint(source) if isinstance(source, (str, Path)) else dict(source)
    target = _unwrap(model)
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        state, source_step = checkpoint["model"], checkpoint.get("step")
        arch, model_arch = checkpoint.get("arch") or {}, getattr(target, "arch", {})
        if arch.get("name") != model_arch.get("name"):
            raise InputError(f"{where}: arch: checkpoint is {arch.get('name')!r} but step {step_name!r} "
                             f"builds {model_arch.get('name')!r}; use a checkpoint of the same architecture")
        diffs = {k: (v, model_arch.get("config", {}).get(k)) for k, v in arch.get("config", {}).items()
                 if model_arch.get("config", {}).get(k) != v}
        if diffs:
            log.info("%s: config differs from step %r's model (checkpoint, model): %s", where, step_name, diffs)
    else:
        state, source_step = checkpoint, None
        log.warning("%s: bare state dict, architecture not checked", where)

    state = {_strip(k): v for k, v in state.items()}
    own = target.state_dict()
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise InputError(f"{where}: {len(unexpected)} unexpected keys for step {step_name!r}'s "
                         f"{getattr(target, 'arch', {}).get('name', 'model')}: {_listing(unexpected)}")
    resized: list[str] = []
    mismatched = []
    for key, value in state.items():
        if value.shape == own[key].shape:
            continue
        if key == "temporal.time_embed" and resize_time_embed and value.shape[2:] == own[key].shape[2:]:
            state[key] = _resize_time_embed(value, own[key].shape[1])
            resized.append(f"{key} {tuple(value.shape)}->{tuple(own[key].shape)}")
        else:
            mismatched.append(f"{key} {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    if mismatched:
        raise InputError(f"{where}: {len(mismatched)} tensors of another shape for step {step_name!r}: "
                         f"{_listing(mismatched, 4)}")
    result = target.load_state_dict(state, strict=False)
    report = LoadReport(step=step_name, source_step=source_step, loaded=sorted(state),
                        missing=sorted(result.missing_keys), resized=resized)
    log.info("%s: %s", where, report.summary())
    if report.missing:
        log.debug("missing keys: %s", report.missing)
    return report
