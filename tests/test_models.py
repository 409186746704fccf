"""Tests of comedian.models: shapes, masking, checkpoints between steps, attention paths, model-summary."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
import torch

from comedian.errors import InputError
from comedian.models import (
    ARCHS,
    build_model,
    compile_model,
    init_temporal_from_spatial,
    load_step_checkpoint,
    make_checkpoint,
    predictor,
    projector,
    read_checkpoint,
    save_checkpoint,
    set_fused_attention,
    set_trunk_trainable,
    tube_mask,
)
from comedian.models.summary import count_macs, count_macs_hooks, main as summary_main

# Small real-weight configurations of every arch (the big ones at tiny frame sizes).
SMALL = {"vivit_tiny": 32, "vivit_small": 32, "viswin_tiny": 64, "vivit_demo": 64, "viswin_demo": 64}
WIDTH = {"vivit_tiny": 192, "vivit_small": 384, "viswin_tiny": 768, "vivit_demo": 64, "viswin_demo": 128}


def _clip(batch: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@lru_cache(maxsize=None)
def _small_model(arch: str):
    """One real-weight model per arch (8 frames, small frames, 5 classes), built once: init is the slow part."""
    return build_model(arch, frames=8, size=SMALL[arch], classes=5).eval()


def test_every_arch_is_covered():
    assert set(SMALL) == set(ARCHS)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_paper_sized_shapes_on_meta(arch):
    """64 frames at the arch's own size (224 for the paper's archs): (B, 32, D) tokens, (B, 32, 17) logits."""
    with torch.device("meta"):
        model = build_model(arch, frames=64).eval()
        size = model.arch["config"]["size"]
        clip = torch.empty(2, 64, 3, size, size)
        assert model.spatial_tokens(clip).shape == (2, 32, WIDTH[arch])
        assert model.temporal_tokens(clip).shape == (2, 32, WIDTH[arch])
        assert model(clip).shape == (2, 32, 17)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("frames", [2, 6])
def test_small_shapes_real_weights(arch, frames):
    model = _small_model(arch)
    with torch.no_grad():
        logits = model(_clip(2, frames, SMALL[arch]))
    assert logits.shape == (2, frames // 2, 5)
    assert torch.isfinite(logits).all()


def test_frames_must_fit_the_model():
    model = build_model("vivit_demo", frames=8).eval()
    with pytest.raises(ValueError, match="not a multiple"):
        model(_clip(1, 3, 64))
    with pytest.raises(ValueError, match="more than the 4"):
        model(_clip(1, 10, 64))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"arch": "vivit_huge"}, "model.arch"), ({"arch": "vivit_demo", "frames": 7}, "model.frames"),
     ({"arch": "vivit_tiny", "size": 100}, "model.size"), ({"arch": "vivit_demo", "classes": 0}, "model.classes"),
     ({"arch": "vivit_demo", "temporal_depth": 0}, "model.temporal_depth")],
)
def test_build_model_rejects_bad_config(kwargs, field):
    with pytest.raises(InputError, match=field):
        build_model(**kwargs)


def test_mask_replaces_exactly_the_chosen_tokens():
    model = build_model("vivit_demo", frames=8, drop_path=0.0).eval()
    torch.nn.init.normal_(model.temporal.mask_token)
    clip = _clip(2, 8, 64)
    mask = torch.tensor([[False, True, False, False], [True, False, False, True]])
    with torch.no_grad():
        tokens = model.spatial_tokens(clip)
        replaced = model.temporal.apply_mask(tokens, mask)
        assert torch.equal(replaced[mask], model.temporal.mask_token[0].expand(int(mask.sum()), -1))
        assert torch.equal(replaced[~mask], tokens[~mask])
        # The output no longer depends on what the masked tubelets showed...
        out = model(clip, mask)
        changed = clip.clone()
        changed[0, 2:4] = torch.randn(2, 3, 64, 64)  # tubelet 1 of clip 0: masked
        assert torch.allclose(model(changed, mask), out, atol=1e-6)
        # ...but does on unmasked ones, and an all-False mask is no mask.
        changed[0, 0:2] = torch.randn(2, 3, 64, 64)  # tubelet 0 of clip 0: not masked
        assert not torch.allclose(model(changed, mask), out, atol=1e-4)
        assert torch.equal(model(clip, torch.zeros_like(mask)), model(clip))


@pytest.mark.parametrize("arch", ["vivit_demo", "viswin_demo"])
def test_masked_tubelets_are_not_computed_and_the_output_is_unchanged(arch):
    """Dropping masked tubelets before the spatial transformer = computing them and replacing their tokens
    (the forward and the gradients), for masks of any shape, with fewer spatial inputs."""
    model = build_model(arch, frames=8, size=64, classes=3, drop_path=0.0)
    torch.nn.init.normal_(model.temporal.mask_token)
    clip = _clip(3, 8, 64, seed=1)
    mask = torch.tensor([[False, True, True, False], [True, False, False, False], [False] * 4])  # 3, 1, 0 masked
    seen = []
    hook = model.spatial.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0] * args[0].shape[1]))
    out = model(clip, mask)
    hook.remove()
    assert seen == [2 * int((~mask).sum())]  # only the kept tubelets' frames entered the spatial transformer
    old = model.head(model.temporal(model.spatial(clip), mask))  # compute every tubelet, then replace
    torch.testing.assert_close(out, old, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), list(model.spatial.parameters()) + [model.temporal.mask_token])
    want = torch.autograd.grad(old.square().sum(), list(model.spatial.parameters()) + [model.temporal.mask_token])
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    everything = torch.ones_like(mask)
    with torch.no_grad():
        assert torch.allclose(model(clip, everything), model.head(model.temporal(model.spatial(clip), everything)),
                              atol=1e-6)


def test_train_mode_does_not_mask():
    model = build_model("vivit_demo", frames=8, drop_path=0.0)
    torch.nn.init.normal_(model.temporal.mask_token)
    clip = _clip(2, 8, 64)
    with torch.no_grad():
        train_out = model.train()(clip)
        eval_out = model.eval()(clip)
    assert torch.allclose(train_out, eval_out, atol=1e-6)


def test_bad_mask_rejected():
    model = build_model("vivit_demo", frames=8).eval()
    with pytest.raises(ValueError, match="mask must be bool"):
        model(_clip(1, 8, 64), torch.zeros(1, 3, dtype=torch.bool))


@pytest.mark.parametrize(("num_tokens", "ratio"), [(32, 0.5), (32, 0.25), (7, 0.5), (64, 0.3), (10, 0.0), (10, 1.0)])
def test_tube_mask_count(num_tokens, ratio):
    mask = tube_mask(5, num_tokens, ratio, generator=torch.Generator().manual_seed(1))
    assert mask.shape == (5, num_tokens) and mask.dtype == torch.bool
    assert (mask.sum(1) == int(ratio * num_tokens)).all()


def test_tube_mask_tubes_and_determinism():
    mask = tube_mask(50, 32, 0.5, tube_length=2, generator=torch.Generator().manual_seed(3))
    pairs = mask.view(50, 16, 2)
    assert (pairs[..., 0] == pairs[..., 1]).all()  # whole tubes of 2 tokens, aligned on even tokens
    same = tube_mask(50, 32, 0.5, tube_length=2, generator=torch.Generator().manual_seed(3))
    other = tube_mask(50, 32, 0.5, tube_length=2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(mask, same) and not torch.equal(mask, other)
    assert not all(torch.equal(mask[0], row) for row in mask[1:])  # each clip draws its own mask
    fours = tube_mask(20, 32, 0.5, tube_length=4, generator=torch.Generator().manual_seed(0)).view(20, 8, 4)
    assert (fours.all(-1) | ~fours.any(-1)).all()
    with pytest.raises(ValueError):
        tube_mask(1, 8, 1.5)


def _spatial_only(arch="vivit_demo", **kwargs):
    model = build_model(arch, frames=8, **kwargs)
    return model, make_checkpoint(model, "spatial_pretrain", parts=["spatial"], extra={"epoch": 3})


def test_checkpoint_handoff_reports_missing_keys(tmp_path, caplog):
    step1, checkpoint = _spatial_only()
    path = save_checkpoint(tmp_path / "step1.pt", checkpoint)
    assert read_checkpoint(path)["arch"] == step1.arch and read_checkpoint(path)["extra"] == {"epoch": 3}
    step2 = build_model("vivit_demo", frames=8)
    with caplog.at_level("INFO", logger="comedian.models.checkpoint"):
        report = load_step_checkpoint(step2, path, "temporal_pretrain")
    expected_missing = sorted(k for k in step2.state_dict() if not k.startswith("spatial."))
    assert report.missing == expected_missing and report.source_step == "spatial_pretrain"
    assert report.loaded == sorted(k for k in step2.state_dict() if k.startswith("spatial."))
    assert "missing" in caplog.text and "temporal.blocks" in caplog.text
    for key, value in step1.state_dict().items():
        if key.startswith("spatial."):
            assert torch.equal(step2.state_dict()[key], value)
    full = load_step_checkpoint(build_model("vivit_demo", frames=8), make_checkpoint(step2, "x"), "finetune")
    assert full.missing == []


def test_checkpoint_refuses_other_arch(tmp_path):
    _, checkpoint = _spatial_only("viswin_demo")
    path = save_checkpoint(tmp_path / "swin.pt", checkpoint)
    with pytest.raises(InputError, match=r"swin\.pt: arch: checkpoint is 'viswin_demo'"):
        load_step_checkpoint(build_model("vivit_demo", frames=8), path, "temporal_pretrain")


def test_checkpoint_refuses_unexpected_and_mismatched_keys():
    deep = make_checkpoint(build_model("vivit_demo", frames=8, temporal_depth=6), "temporal_pretrain")
    with pytest.raises(InputError, match=r"unexpected keys.*temporal\.blocks\.4"):
        load_step_checkpoint(build_model("vivit_demo", frames=8, temporal_depth=4), deep, "finetune")
    other_classes = make_checkpoint(build_model("vivit_demo", frames=8, classes=5), "finetune")
    with pytest.raises(InputError, match=r"head\.fc\.weight \(5, 64\) vs model \(17, 64\)"):
        load_step_checkpoint(build_model("vivit_demo", frames=8), other_classes, "finetune")
    bare_bad = {"spatial.not_a_weight": torch.zeros(1)}
    with pytest.raises(InputError, match="spatial.not_a_weight"):
        load_step_checkpoint(build_model("vivit_demo", frames=8), bare_bad, "finetune")


def test_checkpoint_time_embed_resize_is_opt_in():
    short = make_checkpoint(build_model("vivit_demo", frames=8), "temporal_pretrain")
    with pytest.raises(InputError, match=r"temporal\.time_embed \(1, 4, 64\) vs model \(1, 8, 64\)"):
        load_step_checkpoint(build_model("vivit_demo", frames=16), short, "finetune")
    long_model = build_model("vivit_demo", frames=16)
    report = load_step_checkpoint(long_model, short, "finetune", resize_time_embed=True)
    assert report.resized == ["temporal.time_embed (1, 4, 64)->(1, 8, 64)"]
    assert long_model.temporal.time_embed.shape == (1, 8, 64)


def test_bare_state_dict_and_bad_files(tmp_path):
    source = build_model("vivit_demo", frames=8)
    target = build_model("vivit_demo", frames=8)
    report = load_step_checkpoint(target, source.state_dict(), "finetune")
    assert report.missing == [] and report.source_step is None
    assert torch.equal(target.head.fc.weight, source.head.fc.weight)
    with pytest.raises(InputError, match="checkpoint not found"):
        load_step_checkpoint(target, tmp_path / "nope.pt", "finetune")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: cannot read checkpoint"):
        load_step_checkpoint(target, tmp_path / "junk.pt", "finetune")


def test_init_temporal_from_spatial_copies_blocks():
    model = build_model("vivit_demo", frames=8, temporal_depth=2)
    copied = init_temporal_from_spatial(model)
    for i in range(2):
        for (name, t), (_, s) in zip(model.temporal.blocks[i].named_parameters(),
                                     model.spatial.blocks[i].named_parameters()):
            assert torch.equal(t, s), name
    assert torch.equal(model.temporal.norm.weight, model.spatial.norm.weight)
    assert "temporal.blocks.1.attn.qkv.weight" in copied and "temporal.norm.bias" in copied
    assert not any(k.startswith("temporal.blocks.2") for k in copied)
    assert not torch.equal(model.temporal.blocks[0].attn.qkv.weight, model.spatial.blocks[2].attn.qkv.weight)

    swin = build_model("viswin_demo", frames=8)
    before = {k: v.clone() for k, v in swin.temporal.state_dict().items()}
    assert init_temporal_from_spatial(swin) == []
    assert all(torch.equal(v, before[k]) for k, v in swin.temporal.state_dict().items())


def test_tiny_config_forward_backward_and_activation_checkpointing():
    torch.manual_seed(0)
    plain = build_model("vivit_demo", frames=16, drop_path=0.0)
    ckpt = build_model("vivit_demo", frames=16, drop_path=0.0, checkpoint_activations=True)
    ckpt.load_state_dict(plain.state_dict())
    clip = _clip(4, 16, 64)
    mask = tube_mask(4, 8, 0.25, generator=torch.Generator().manual_seed(0))
    grads = []
    for model in (plain, ckpt):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(clip, mask), torch.zeros(4, 8, 17))
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(g is not None and torch.isfinite(g).all() for g in grads[0].values())
    assert grads[0]["temporal.mask_token"].abs().sum() > 0
    assert grads[0]["spatial.patch_embed.proj.weight"].abs().sum() > 0
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-5), name


@pytest.mark.parametrize(("arch", "size"), [("vivit_demo", 64), ("viswin_demo", 64), ("vivit_tiny", 32)])
def test_fused_and_explicit_attention_agree(arch, size):
    model = _small_model(arch)
    clip = _clip(2, 4, size)
    with torch.no_grad():
        assert set_fused_attention(model, True) > 0
        fused = model(clip)
        set_fused_attention(model, False)
        explicit = model(clip)
        set_fused_attention(model, True)
    assert torch.allclose(fused, explicit, atol=1e-4)


def test_works_under_bf16_autocast():
    model = build_model("viswin_demo", frames=4).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(_clip(2, 4, 64), torch.tensor([[True, False], [False, False]]))
    assert logits.shape == (2, 2, 17) and torch.isfinite(logits.float()).all()


def test_heads_shapes_and_logits():
    tokens = torch.randn(3, 5, 192)
    assert projector(192).forward(tokens).shape == (3, 5, 256)
    assert projector(192, out_dim=512).forward(tokens).shape == (3, 5, 512)
    assert predictor().forward(torch.randn(4, 256)).shape == (4, 256)
    assert predictor().layers[-1].bias is None
    model = build_model("vivit_demo", frames=4)
    torch.nn.init.normal_(model.head.fc.weight, std=10.0)
    logits = model.classify(torch.randn(2, 2, 64))
    assert (logits < 0).any() and (logits > 1).any()  # logits, no sigmoid inside


def test_freezing_and_weight_decay_sets():
    model = build_model("vivit_demo", frames=4)
    set_trunk_trainable(model, False)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.fc.weight", "head.fc.bias"}
    no_wd = model.no_weight_decay()
    assert {"spatial.pos_embed", "spatial.cls_token", "temporal.time_embed", "temporal.mask_token",
            "head.fc.bias"} <= no_wd
    assert "head.fc.weight" not in no_wd and "temporal.blocks.0.attn.qkv.weight" not in no_wd
    assert json.loads(json.dumps(model.arch)) == model.arch


def test_mac_counters_agree_and_see_attention():
    with torch.device("meta"):
        model = build_model("vivit_demo", frames=4)
    macs = count_macs(model, frames=4, size=64)
    assert macs["total"] == count_macs_hooks(model, frames=4, size=64)
    # Spatial: 2 tubelets x 4 blocks, 17 tokens of width 64 -> QK^T + AV = 2 * 17^2 * 64 per block.
    attention = 2 * 4 * 2 * 17 * 17 * 64
    linear = 2 * 4 * 17 * 64 * (3 * 64 + 64 + 2 * 4 * 64)
    patch = 2 * 16 * 64 * (3 * 2 * 16 * 16)
    assert macs["spatial"] == attention + linear + patch


def test_model_summary_matches_paper(capsys):
    assert summary_main(["--arch", "vivit_tiny", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["params"] == pytest.approx(7.5e6, rel=0.02)
    assert summary["gmacs"] == pytest.approx(41.2, rel=0.02)
    assert summary["gmacs_hooks"] == pytest.approx(summary["gmacs"], rel=1e-9)
    assert summary["paper"] == {"params_m": 7.5, "gflops": 41.2}
    assert summary_main(["--arch", "vivit_demo"]) == 0
    assert "vivit_demo: 64 frames at 64x64" in capsys.readouterr().out


@pytest.mark.slow
def test_compile_keeps_names_and_outputs():
    model = build_model("vivit_demo", frames=4).eval()
    clip = _clip(1, 4, 64)
    with torch.no_grad():
        expected = model(clip)
        keys = list(model.state_dict())
        compiled = compile_model(model, backend="aot_eager")
        assert list(compiled.state_dict()) == keys
        assert torch.allclose(compiled(clip), expected, atol=1e-5)
