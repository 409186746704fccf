"""SCE distillation loss of step 2 (paper Sec. 3.3, Eq. 3-6): temporal tokens learn the relations of
their teacher bank rows.

Eq. 3-4 sum over the complete bank P (M_P rows). As in the authors' code
(``eztorch.losses.sce_token_loss`` with ``use_keys: True, use_all_keys: False``, the setting of their
SoccerNet configs), the bank is approximated, for token i of clip b, by the *candidate set*

    K_i = [ P^X of the T tokens of clip b ; the queue of M bank rows ]      (T + M rows)

where the queue (:class:`~comedian.losses.moco.FeatureQueue`) holds the teacher rows of the tokens of
earlier steps. With ``within="batch"`` the first block is instead the P^X of all B*T tokens of the batch
(the authors' ``use_all_keys`` variant, on the local batch). Then, with z_i the student output of
token i and p_i = P^X_i its teacher row (both L2-normalised inside, float32 at least):

    s1_ik = softmax_k(z_i . K_ik / tau)                                   over all of K_i      (Eq. 3)
    s2_ik = softmax_k(p_i . K_ik / tau_m) over K_i without the positive, 0 at the positive (Eq. 4)
    w2_ik = lam * 1[k = positive] + (1 - lam) * s2_ik                                         (Eq. 5)
    L     = -mean_i sum_k w2_ik log s1_ik      (mean over the B*T tokens of the batch)        (Eq. 6)

"The positive" is token i's own entry of the first block, identified by position, as in the authors'
code; a copy of the same bank row elsewhere in K_i (a neighbouring token clipped to a half's last row,
or an old copy in the queue) counts as a negative. Masked tokens (replaced by the mask token before the
temporal transformer) are trained like the others: predicting their teacher row from context is what
masking is for. The teacher rows get no gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def sce_loss(
    z: Tensor,
    teacher: Tensor,
    queue: Tensor,
    lam: float = 0.5,
    temperature: float = 0.1,
    temperature_m: float = 0.05,
    within: Literal["clip", "batch"] = "clip",
) -> Tensor:
    """SCE distillation loss (Eq. 3-6), a scalar; see the module docstring for the candidate set.

    Args:
        z: student outputs, the projector's output of each temporal token, (B, T, D).
        teacher: the bank row P^X paired with each token, (B, T, D); detached here.
        queue: (M, D) bank rows of earlier steps, e.g. ``FeatureQueue.features`` (M may be 0).
        lam: lambda of Eq. 5, weight of the one-hot positive (0.5).
        temperature: tau of Eq. 3 (0.1).
        temperature_m: tau_m of Eq. 4 (0.05).
        within: ``"clip"`` (authors' setting): the in-batch candidates of a token are the tokens of
            its own clip; ``"batch"``: all tokens of the batch.
    """
    if z.ndim != 3 or z.shape != teacher.shape:
        raise ValueError(
            f"sce_loss: z and teacher must share one (B, T, D) shape, got {tuple(z.shape)}, {tuple(teacher.shape)}"
        )
    if queue.ndim != 2 or queue.shape[1] != z.shape[2]:
        raise ValueError(f"sce_loss: queue must be (M, {z.shape[2]}), got {tuple(queue.shape)}")
    if within not in ("clip", "batch"):
        raise ValueError(f"sce_loss: within must be 'clip' or 'batch', got {within!r}")
    b, t, d = z.shape
    if (t if within == "clip" else b * t) + queue.shape[0] < 2:
        raise ValueError("sce_loss: no negatives (one token per candidate set and an empty queue)")
    dtype = torch.promote_types(z.dtype, torch.float32)  # float16/bfloat16 -> float32
    with torch.autocast(device_type=z.device.type, enabled=False):  # no float16 matmuls under AMP
        z = F.normalize(z.to(dtype), dim=-1)
        p = F.normalize(teacher.detach().to(dtype), dim=-1)
        q = F.normalize(queue.detach().to(dtype), dim=-1)

        if within == "clip":
            # Candidates of token (b, i): the T rows of clip b, then the queue. Positive at column i.
            sim_q_keys = torch.einsum("bid,bkd->bik", z, p)  # (B, T, T)
            sim_k_keys = torch.einsum("bid,bkd->bik", p, p)
            z, p = z.reshape(b * t, d), p.reshape(b * t, d)
            sim_q_keys, sim_k_keys = sim_q_keys.reshape(b * t, t), sim_k_keys.reshape(b * t, t)
            positive = torch.arange(t, device=z.device).repeat(b)  # (B*T,)
        else:
            # Candidates of token n: the B*T rows of the batch, then the queue. Positive at column n.
            z, p = z.reshape(b * t, d), p.reshape(b * t, d)
            sim_q_keys, sim_k_keys = z @ p.T, p @ p.T  # (B*T, B*T)
            positive = torch.arange(b * t, device=z.device)

        logits_q = torch.cat([sim_q_keys, z @ q.T], dim=1) / temperature  # (B*T, K + M)
        logits_k = torch.cat([sim_k_keys, p @ q.T], dim=1) / temperature_m
        onehot = F.one_hot(positive, logits_q.shape[1]).to(logits_q.dtype)
        s2 = torch.softmax(logits_k.masked_fill(onehot.bool(), float("-inf")), dim=1)  # 0 at the positive
        w2 = lam * onehot + (1.0 - lam) * s2
        log_s1 = torch.log_softmax(logits_q, dim=1)
        return -(w2 * log_s1).sum(dim=1).mean()
