"""Losses of the three steps against direct transcriptions of the paper's equations, the queue, mixup
and the EMA update."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from comedian.losses.moco import FeatureQueue, all_gather, moco_loss
from comedian.losses.sce import sce_loss
from comedian.losses.spotting import mixup, mixup_spotting_loss, spotting_loss
from comedian.train.ema import ema_momentum, ema_update


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# --- MoCo (Eq. 1-2) -------------------------------------------------------------------------------


def paper_moco(z1s, z2s, z1t, z2t, queue, tau):
    """Eq. 1-2 written out with loops; vectors normalised first, the loss averaged over the batch."""

    def l_m(z, k):
        pos = math.exp(float(z @ k) / tau)
        neg = 0.0
        for j in range(queue.shape[0]):
            neg += math.exp(float(z @ unit(queue[j])) / tau)
        return math.log(pos / (pos + neg))

    n = z1s.shape[0]
    total = 0.0
    for i in range(n):
        total += -0.5 * (l_m(unit(z1s[i]), unit(z2t[i])) + l_m(unit(z2s[i]), unit(z1t[i])))
    return total / n


def test_moco_equals_paper_equations():
    g = torch.Generator().manual_seed(0)
    z1s, z2s, z1t, z2t = (torch.randn(5, 8, generator=g, dtype=torch.float64) for _ in range(4))
    queue = torch.randn(7, 8, generator=g, dtype=torch.float64)
    for tau in (0.1, 0.5):
        got = moco_loss(z1s, z2s, z1t, z2t, queue, temperature=tau)
        assert float(got) == pytest.approx(paper_moco(z1s, z2s, z1t, z2t, queue, tau), abs=1e-6)


def test_moco_gradients_reach_online_only_and_survive_enqueue():
    g = torch.Generator().manual_seed(1)
    z1s, z2s = (torch.randn(4, 6, generator=g, requires_grad=True) for _ in range(2))
    z1t, z2t = (torch.randn(4, 6, generator=g, requires_grad=True) for _ in range(2))
    queue = FeatureQueue(size=8, dim=6, generator=g)
    loss = moco_loss(z1s, z2s, z1t, z2t, queue.features, temperature=0.1)
    assert loss.requires_grad
    queue.enqueue(torch.cat([z1t, z2t]))  # in place, before backward, as a training step does
    loss.backward()
    for z in (z1s, z2s):
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert z1t.grad is None and z2t.grad is None


def test_losses_computed_in_float32_under_half_inputs_and_autocast():
    g = torch.Generator().manual_seed(2)
    z = [torch.randn(3, 4, generator=g) for _ in range(4)]
    queue = torch.randn(5, 4, generator=g)
    full = moco_loss(*z, queue, temperature=0.1)
    half = moco_loss(*(x.half() for x in z), queue.half(), temperature=0.1)
    assert half.dtype == torch.float32
    assert float(half) == pytest.approx(float(full), abs=1e-2)
    tokens, teacher = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    sce_full = sce_loss(tokens, teacher, queue)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the losses switch autocast off inside
        assert float(moco_loss(*z, queue, temperature=0.1)) == pytest.approx(float(full), abs=1e-6)
        assert float(sce_loss(tokens, teacher, queue)) == pytest.approx(float(sce_full), abs=1e-6)


# --- queue ----------------------------------------------------------------------------------------


def test_queue_fifo_with_wraparound_and_state_dict():
    queue = FeatureQueue(size=5, dim=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(queue.features.norm(dim=1), torch.ones(5))
    key = lambda a: unit(torch.tensor([[math.cos(v), math.sin(v)] for v in a], dtype=torch.float32))  # noqa: E731

    queue.enqueue(key([0, 1, 2]) * 3.0)  # stored normalised
    assert int(queue.ptr) == 3
    assert torch.allclose(queue.features[:3], key([0, 1, 2]))
    queue.enqueue(key([3, 4, 5]))  # rows 3, 4, then wraps to row 0
    assert int(queue.ptr) == 1
    assert torch.allclose(queue.features, key([5, 1, 2, 3, 4]))
    queue.enqueue(key([10, 11, 12, 13, 14, 15, 16]))  # more than size: the last 5 keys survive
    assert int(queue.ptr) == (1 + 7) % 5
    # FIFO: reading from the pointer onwards gives the keys oldest first.
    order = [(int(queue.ptr) + i) % 5 for i in range(5)]
    assert torch.allclose(queue.features[order], key([12, 13, 14, 15, 16]))

    state = queue.state_dict()
    assert set(state) == {"features", "ptr"}
    restored = FeatureQueue(size=5, dim=2)
    restored.load_state_dict(state)
    assert torch.equal(restored.features, queue.features) and int(restored.ptr) == int(queue.ptr)

    with pytest.raises(ValueError):
        queue.enqueue(torch.randn(3, 4))


def test_all_gather_without_distributed_is_identity():
    x = torch.randn(3, 4, requires_grad=True)
    y = all_gather(x)
    assert torch.equal(y, x) and not y.requires_grad


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    queue = FeatureQueue(size=6, dim=2, generator=torch.Generator().manual_seed(rank))  # different inits
    dist.broadcast(queue.features, src=0)  # as DDP does for buffers at wrap time
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]]) * (rank + 1)
    queue.enqueue(all_gather(keys))
    torch.save({"gathered": all_gather(keys), "queue": queue.state_dict()}, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_queue_stays_identical_across_ranks_with_all_gather(tmp_path):
    """Two forked gloo processes (fork: no second import of torch): gathered keys in rank order,
    identical queues."""
    import torch.multiprocessing as mp

    if "fork" not in mp.get_all_start_methods() or not dist.is_available():
        pytest.skip("needs the fork start method and torch.distributed")
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="fork")
    out = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 2.0]])
    for result in out:
        assert torch.equal(result["gathered"], expected)
        assert int(result["queue"]["ptr"]) == 4
        assert torch.allclose(result["queue"]["features"][:4], unit(expected))
    assert torch.equal(out[0]["queue"]["features"], out[1]["queue"]["features"])


# --- SCE (Eq. 3-6) --------------------------------------------------------------------------------


def paper_sce(z, teacher, queue, lam, tau, tau_m, within):
    """Eq. 3-6 written out with loops; the "complete bank" of token i is the set sce_loss uses: the teacher
    rows of the tokens of its clip (within="clip") or of the batch (within="batch"), then the queue."""
    b, t, _ = z.shape
    tokens = [(c, i) for c in range(b) for i in range(t)]
    total = 0.0
    for c, i in tokens:
        zi, pi = unit(z[c, i]), unit(teacher[c, i])
        if within == "clip":
            bank = [unit(teacher[c, k]) for k in range(t)]
        else:
            bank = [unit(teacher[cc, k]) for cc, k in tokens]
        bank += [unit(queue[j]) for j in range(queue.shape[0])]
        denom1 = sum(math.exp(float(zi @ pj) / tau) for pj in bank)
        denom2 = sum(math.exp(float(pi @ pj) / tau_m) for pj in bank if not torch.equal(pi, pj))
        loss_i = 0.0
        for pk in bank:
            s1 = math.exp(float(zi @ pk) / tau) / denom1  # Eq. 3
            s2 = (0.0 if torch.equal(pi, pk) else 1.0) * math.exp(float(pi @ pk) / tau_m) / denom2  # Eq. 4
            w2 = lam * (1.0 if torch.equal(pi, pk) else 0.0) + (1 - lam) * s2  # Eq. 5
            loss_i += -w2 * math.log(s1)  # Eq. 6
        total += loss_i
    return total / len(tokens)


@pytest.mark.parametrize("within", ["clip", "batch"])
def test_sce_equals_paper_equations(within):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    queue = torch.randn(5, 8, generator=g, dtype=torch.float64)
    for lam, tau, tau_m in [(0.5, 0.1, 0.05), (0.2, 0.3, 0.2)]:
        got = sce_loss(z, teacher, queue, lam=lam, temperature=tau, temperature_m=tau_m, within=within)
        want = paper_sce(z, teacher, queue, lam, tau, tau_m, within)
        assert float(got) == pytest.approx(want, abs=1e-6)


def test_sce_clip_scope_ignores_other_clips_and_empty_queue_works():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    teacher = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    empty = torch.zeros(0, 6, dtype=torch.float64)
    joint = sce_loss(z, teacher, empty, within="clip")
    per_clip = torch.stack([sce_loss(z[c : c + 1], teacher[c : c + 1], empty, within="clip") for c in range(3)])
    assert float(joint) == pytest.approx(float(per_clip.mean()), abs=1e-12)
    assert float(joint) == pytest.approx(paper_sce(z, teacher, empty, 0.5, 0.1, 0.05, "clip"), abs=1e-6)
    with pytest.raises(ValueError):
        sce_loss(z[:1, :1], teacher[:1, :1], empty)  # no negatives at all


def test_sce_gradients_reach_student_only():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 4, 8, generator=g, requires_grad=True)
    teacher = torch.randn(2, 4, 8, generator=g, requires_grad=True)
    queue = FeatureQueue(size=6, dim=8, generator=g)
    loss = sce_loss(z, teacher, queue.features)
    queue.enqueue(teacher.reshape(-1, 8))
    loss.backward()
    assert torch.isfinite(loss) and z.grad is not None and torch.isfinite(z.grad).all()
    assert (z.grad.abs().sum(dim=-1) > 0).all()  # every token, masked or not, is trained
    assert teacher.grad is None


def test_sce_minimum_when_student_matches_teacher_relations():
    """With lam = 1 the loss is InfoNCE towards the own teacher row: lower when z equals it."""
    g = torch.Generator().manual_seed(6)
    teacher = torch.randn(1, 4, 8, generator=g)
    queue = torch.randn(6, 8, generator=g)
    aligned = sce_loss(teacher.clone(), teacher, queue, lam=1.0)
    shuffled = sce_loss(teacher[:, [1, 2, 3, 0]], teacher, queue, lam=1.0)
    assert aligned < shuffled


# --- spotting BCE (Eq. 7) and mixup ---------------------------------------------------------------


def manual_bce(logits, targets):
    p = torch.sigmoid(logits.double())
    y = targets.double()
    return float(-(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean())


def test_spotting_loss_equals_manual_bce():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, 17, generator=g)
    targets = (torch.rand(2, 5, 17, generator=g) > 0.8).float()
    assert float(spotting_loss(logits, targets)) == pytest.approx(manual_bce(logits, targets), abs=1e-6)
    with pytest.raises(ValueError):
        spotting_loss(logits, targets[:, :4])


def test_mixup_loss_limits_and_formula():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(3, 4, 5, generator=g, requires_grad=True)
    ya = (torch.rand(3, 4, 5, generator=g) > 0.7).float()
    yb = (torch.rand(3, 4, 5, generator=g) > 0.7).float()
    ones, zeros = torch.ones(3), torch.zeros(3)
    with torch.no_grad():
        assert float(mixup_spotting_loss(logits, ya, yb, ones)) == pytest.approx(float(spotting_loss(logits, ya)))
        assert float(mixup_spotting_loss(logits, ya, yb, zeros)) == pytest.approx(float(spotting_loss(logits, yb)))
        # one weight for every clip: the batch formula
        same = mixup_spotting_loss(logits, ya, yb, torch.full((3,), 0.3))
        assert float(same) == pytest.approx(0.3 * manual_bce(logits, ya) + 0.7 * manual_bce(logits, yb), abs=1e-6)
    # Each clip weighted by its own lambda (hand-computed per clip, then the mean over clips).
    lam = torch.tensor([0.9, 0.2, 0.5])
    loss = mixup_spotting_loss(logits, ya, yb, lam)
    x = logits.detach()
    want = sum(float(lam[b]) * manual_bce(x[b:b + 1], ya[b:b + 1]) + (1 - float(lam[b])) * manual_bce(x[b:b + 1], yb[b:b + 1])
               for b in range(3)) / 3
    assert float(loss.detach()) == pytest.approx(want, abs=1e-6)
    # BCE is linear in the target: the same as BCE against each clip's mixed target.
    mixed_target = lam.view(3, 1, 1) * ya + (1 - lam.view(3, 1, 1)) * yb
    assert float(loss.detach()) == pytest.approx(manual_bce(x, mixed_target), abs=1e-6)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="one weight per clip"):
        mixup_spotting_loss(logits, ya, yb, torch.ones(1))


def test_mixup_mixes_each_clip_with_its_own_lambda():
    b = 6
    clips = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1, 1).expand(b, 4, 3, 2, 2).contiguous()
    targets = torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, 2, 17).contiguous()
    mixed, ya, yb, lam = mixup(clips, targets, alpha=1.0, generator=torch.Generator().manual_seed(9))
    assert lam.shape == (b,) and bool(((lam >= 0) & (lam <= 1)).all())
    assert len(set(lam.tolist())) == b  # one draw per clip, not one per batch
    assert torch.equal(ya, targets)
    perm = yb[:, 0, 0].long()
    assert sorted(perm.tolist()) == list(range(b))
    assert torch.equal(yb, targets[perm])
    # clip k is lam_k * k + (1 - lam_k) * perm(k), everywhere in the clip
    want = lam * torch.arange(b) + (1 - lam) * perm.float()
    assert torch.allclose(mixed, want.view(b, 1, 1, 1, 1).expand_as(clips), atol=1e-6)
    again = mixup(clips, targets, alpha=1.0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(again[3], lam) and torch.equal(again[2], yb)
    # Beta(0.1, 0.1) puts most of its mass near 0 and 1.
    lams = mixup(clips.repeat(50, 1, 1, 1, 1), targets.repeat(50, 1, 1), 0.1, torch.Generator().manual_seed(10))[3]
    assert ((lams < 0.1) | (lams > 0.9)).float().mean() > 0.6
    with pytest.raises(ValueError):
        mixup(clips, targets, alpha=0.0)


# --- EMA ------------------------------------------------------------------------------------------


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    net.train()
    net(torch.randn(8, 3))  # moves the running statistics and num_batches_tracked
    return net


def test_ema_update_momentum_limits_and_formula():
    online, target = small_net(0), small_net(1)
    online(torch.randn(8, 3))  # online has seen two batches, target one

    keep = small_net(1)
    ema_update(keep, online, momentum=1.0)
    for a, b in zip(keep.state_dict().values(), target.state_dict().values()):
        assert torch.equal(a, b)

    before = {k: v.clone() for k, v in target.state_dict().items()}
    ema_update(target, online, momentum=0.9)
    online_state = online.state_dict()
    for name, value in target.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * before[name] + 0.1 * online_state[name], atol=1e-7), name
        else:  # num_batches_tracked is copied
            assert torch.equal(value, online_state[name]), name

    ema_update(target, online, momentum=0.0)
    for a, b in zip(target.state_dict().values(), online_state.values()):
        assert torch.equal(a, b)

    with pytest.raises(ValueError):
        ema_update(nn.Linear(3, 4), online, 0.5)


def test_ema_momentum_schedule():
    assert ema_momentum(0, 100) == pytest.approx(0.99)
    assert ema_momentum(100, 100) == pytest.approx(1.0)
    assert ema_momentum(50, 100) == pytest.approx(0.995)
    assert ema_momentum(500, 100) == pytest.approx(1.0) and ema_momentum(-3, 100) == pytest.approx(0.99)
    values = [ema_momentum(k, 100, base=0.996) for k in range(101)]
    assert values[0] == pytest.approx(0.996) and all(a <= b for a, b in zip(values, values[1:]))
