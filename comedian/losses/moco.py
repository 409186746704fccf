"""MoCo loss of step 1 (paper Sec. 3.2, Eq. 1-2) and the FIFO queue of embeddings it draws negatives from.

The queue (:class:`FeatureQueue`) is shared with the SCE distillation of step 2, which keeps a queue of
teacher bank rows in it.

Usage in a training step (shapes: N samples per rank, D embedding dims)::

    queue = FeatureQueue(size=65536, dim=256)           # a submodule, so checkpoints hold it
    loss = moco_loss(z1s, z2s, z1t, z2t, queue.features, temperature=0.1)
    loss.backward()
    queue.enqueue(all_gather(torch.cat([z1t, z2t])))    # after the loss: the current keys are not
                                                        # their own negatives
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def all_gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` (N, ...) of every rank along dim 0, rank order, without gradient.

    Returns ``x`` detached when ``torch.distributed`` is not available or not initialised, so that
    single-process code calls it unconditionally. Every rank must pass the same shape.
    """
    x = x.detach()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class FeatureQueue(nn.Module):
    """A FIFO memory of ``size`` embeddings of ``dim`` dims (MoCo's Q, SCE's queue of bank rows).

    State is two buffers, so ``state_dict`` and checkpoints hold it: ``features`` (size, dim),
    float32, rows L2-normalised, initialised with random unit vectors as in MoCo (and the authors'
    code); ``ptr``, a 0-d int64 tensor, the row the next enqueued embedding overwrites.

    Under DDP each rank keeps its own copy; the copies stay identical when every rank enqueues the
    same keys, i.e. the caller passes the :func:`all_gather` of its keys.
    """

    features: Tensor
    ptr: Tensor

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"FeatureQueue needs size > 0 and dim > 0, got size={size}, dim={dim}")
        self.size = size
        self.dim = dim
        self.register_buffer("features", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (n, dim) at the pointer, wrapping around the end; advance the pointer by n.

        Keys are detached and L2-normalised. When n > size only the last ``size`` keys are kept.
        The in-place write does not break a pending ``backward()`` of a loss built on ``features``:
        :func:`moco_loss` and :func:`~comedian.losses.sce.sce_loss` normalise the queue into a new
        tensor first.
        """
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"FeatureQueue.enqueue: keys must be (n, {self.dim}), got {tuple(keys.shape)}")
        keys = F.normalize(keys.detach().to(self.features.dtype), dim=1)
        n = keys.shape[0]
        ptr = int(self.ptr)
        if n >= self.size:
            # The last `size` keys fill the queue; key n-1 ends just before the new pointer.
            keys = keys[n - self.size :]
            rows = (ptr + (n - self.size) + torch.arange(self.size, device=keys.device)) % self.size
        else:
            rows = (ptr + torch.arange(n, device=keys.device)) % self.size
        self.features[rows.to(self.features.device)] = keys.to(self.features.device)
        self.ptr.fill_((ptr + n) % self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"


def moco_contrastive_term(z: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Eq. 2 for a batch: ``l_M(z_n, k_n)`` (N,), the log-probability of the positive key.

    ``z`` (N, D) online predictions, ``k`` (N, D) target keys (no gradient flows into them),
    ``queue`` (M, D) negatives. All three are L2-normalised here (float32 at least), so the dot products are
    cosine similarities; only the pair (z_n, k_n) is positive: the other keys of the batch are not
    negatives (Eq. 2; ``use_keys: False`` in the authors' MoCo config).
    """
    dtype = torch.promote_types(z.dtype, torch.float32)  # float16/bfloat16 -> float32
    with torch.autocast(device_type=z.device.type, enabled=False):  # no float16 matmuls under AMP
        z = F.normalize(z.to(dtype), dim=1)
        k = F.normalize(k.detach().to(dtype), dim=1)
        q = F.normalize(queue.detach().to(dtype), dim=1)
        positive = (z * k).sum(dim=1, keepdim=True)  # (N, 1)
        negatives = z @ q.T  # (N, M)
        logits = torch.cat([positive, negatives], dim=1) / temperature
        return logits[:, 0] - torch.logsumexp(logits, dim=1)


def moco_loss(
    z1s: Tensor, z2s: Tensor, z1t: Tensor, z2t: Tensor, queue: Tensor, temperature: float = 0.1
) -> Tensor:
    """Symmetric MoCo loss (Eq. 1), a scalar: ``-1/2 (l_M(z1s, z2t) + l_M(z2s, z1t))`` averaged over N.

    Args:
        z1s, z2s: online predictions g_s(f_s(X^1)), g_s(f_s(X^2)) of the two views, (N, D).
        z1t, z2t: target projections of the two views, (N, D); detached here (the target branch is
            the EMA copy and gets no gradient).
        queue: (M, D) negatives, e.g. ``FeatureQueue.features``, holding keys of earlier steps.
        temperature: tau of Eq. 2 (0.1 in the authors' setting).

    Every input is L2-normalised inside (float32 at least), so callers may pass raw projector/predictor outputs.
    """
    if not (z1s.shape == z2s.shape == z1t.shape == z2t.shape) or z1s.ndim != 2:
        raise ValueError(
            "moco_loss: z1s, z2s, z1t, z2t must share one (N, D) shape, got "
            f"{tuple(z1s.shape)}, {tuple(z2s.shape)}, {tuple(z1t.shape)}, {tuple(z2t.shape)}"
        )
    if queue.ndim != 2 or queue.shape[1] != z1s.shape[1]:
        raise ValueError(f"moco_loss: queue must be (M, {z1s.shape[1]}), got {tuple(queue.shape)}")
    l12 = moco_contrastive_term(z1s, z2t, queue, temperature)
    l21 = moco_contrastive_term(z2s, z1t, queue, temperature)
    return -0.5 * (l12 + l21).mean()
