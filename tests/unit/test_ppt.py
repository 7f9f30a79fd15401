"""models/ppt.py: PPT / ToMe / EViT token reduction on a small timm ViT (64 patches + cls, 12 blocks)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from models import ppt
from models.common.profiling import count_macs

EMBED, HEADS, DEPTH, PATCHES = 48, 3, 12, 64


def _vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=EMBED, depth=DEPTH,
                             num_heads=HEADS).eval()


def _images(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The models are tiny: one thread is as fast, and immune to OpenMP spin-waiting when the machine is busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dense() -> VisionTransformer:
    return _vit()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return _images()


def _compressed(dense: VisionTransformer, method: str, r: int = 16, blocks=(3, 6, 9), **kw) -> VisionTransformer:
    kw.setdefault("prop_attn", method in ppt.METHODS_WITH_TOKEN_SIZES)
    return ppt.compress(copy.deepcopy(dense), ppt.TokenReductionConfig(method=method, r=r, blocks=blocks, **kw))


def _forward_recording(model: VisionTransformer, x: torch.Tensor, blocks) -> tuple[dict, dict]:
    """Run forward_features; return token count and token sizes after each given block."""
    lengths, sizes = {}, {}
    hooks = []
    for i in blocks:
        def hook(module, inputs, output, i=i):
            lengths[i] = output.shape[1]
            size = model._token_reduction.size
            sizes[i] = None if size is None else size.clone()
        hooks.append(model.blocks[i].register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return lengths, sizes


def _score_variance_at(model: VisionTransformer, x: torch.Tensor, block: int) -> torch.Tensor:
    """Per-image variance of PPT's normalised significance scores entering `block`, computed independently on
    the dense model (identical to the compressed one up to the first reduction)."""
    with torch.no_grad():
        h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for blk in model.blocks[:block]:
            h = blk(h)
        blk = model.blocks[block]
        y = blk.norm1(h)
        B, N, C = y.shape
        q, k, v = blk.attn.qkv(y).reshape(B, N, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        probs = ((q * blk.attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        value_norm = v.permute(0, 2, 1, 3).reshape(B, N, C).norm(dim=-1)  # (B, N)
        scores = probs[:, :, 0, 1:].sum(dim=1) * value_norm[:, 1:]
        scores = scores / scores.sum(dim=-1, keepdim=True)
        return scores.var(dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# schedule and token counts


@pytest.mark.parametrize("method,tau", [("ppt", None), ("ppt", 0.0), ("ppt", math.inf), ("tome", None),
                                        ("evit", None)])
def test_token_counts_follow_the_schedule(dense, images, method, tau):
    model = _compressed(dense, method, tau=tau)
    lengths, _ = _forward_recording(model, images, range(DEPTH))
    assert [lengths[i] for i in range(DEPTH)] == [65] * 3 + [49] * 3 + [33] * 3 + [17] * 3
    stats = ppt.reduction_stats(model)
    assert [(s["block"], s["tokens_in"], s["tokens_out"]) for s in stats] == [(3, 65, 49), (6, 49, 33), (9, 33, 17)]
    assert all(s["pooled_images"] + s["pruned_images"] == len(images) for s in stats)


def test_tome_native_schedule_reduces_every_block_and_clamps_r(dense, images):
    model = _compressed(dense, "tome", r=8, blocks=())
    lengths, _ = _forward_recording(model, images, range(DEPTH))
    # r_eff = min(8, (N - 1) // 2)
    assert [lengths[i] for i in range(DEPTH)] == [57, 49, 41, 33, 25, 17, 9, 5, 3, 2, 2, 2]
    assert [s["block"] for s in ppt.reduction_stats(model)] == list(range(DEPTH))
    stats = ppt.reduction_stats(model)
    assert all(s["pool_fraction"] == 1.0 for s in stats[:10])
    # with 2 tokens left (cls + 1) there is nothing to merge: no decision was made, so no fraction either
    assert all(s["pooled_images"] == 0 and math.isnan(s["pool_fraction"]) for s in stats[10:])


def test_evit_prunes_every_image(dense, images):
    model = _compressed(dense, "evit")
    with torch.no_grad():
        model(images)
    assert all(s["pool_fraction"] == 0.0 and s["pruned_images"] == len(images) for s in ppt.reduction_stats(model))


# ---------------------------------------------------------------------------------------------------------------
# PPT's prune/pool decision


def test_tau_rule():
    assert ppt.tau_for_tokens(196) == pytest.approx(7.0e-5, rel=0.01)
    assert ppt.tau_for_tokens(196, cv=1.52) == pytest.approx(6.0e-5, rel=0.01)
    assert ppt.tau_for_tokens(64) == pytest.approx(6.57e-4, rel=0.01)


def test_default_tau_comes_from_the_patch_count(dense):
    model = _compressed(dense, "ppt", tau=None, tau_cv=1.52)
    assert ppt.current_config(model).tau == pytest.approx(ppt.tau_for_tokens(PATCHES, 1.52))
    assert ppt.current_config(dense) is None


@pytest.mark.parametrize("tau,pooled", [(0.0, False), (math.inf, True)])
def test_tau_extremes_force_one_path(dense, images, tau, pooled):
    model = _compressed(dense, "ppt", tau=tau)
    _, sizes = _forward_recording(model, images, (3, 6, 9))
    for s in ppt.reduction_stats(model):
        assert s["pooled_images"] == (len(images) if pooled else 0)
        assert s["pool_fraction"] == (1.0 if pooled else 0.0)
    for i, kept in zip((3, 6, 9), (49, 33, 17)):
        size = sizes[i][..., 0]  # (B, N)
        assert torch.all(size[:, 0] == 1), "cls must stay at index 0 and never absorb another token"
        if pooled:  # merged tokens carry their patches: nothing is lost
            assert torch.all(size[:, 1:].sum(dim=1) == PATCHES)
            assert size.max() > 1
        else:  # pruned tokens are gone, the kept ones are still single patches
            assert torch.all(size == 1)
            assert torch.all(size.sum(dim=1) == kept)


def test_mixed_batch_splits_by_each_images_variance(dense, images):
    variance = _score_variance_at(dense, images, 3)  # (B,)
    ordered = variance.sort().values
    tau = float(ordered[3] + ordered[4]) / 2
    expect_pool = variance < tau
    assert 0 < int(expect_pool.sum()) < len(images)

    mixed = _compressed(dense, "ppt", blocks=(3,), tau=tau)
    all_pool = _compressed(dense, "ppt", blocks=(3,), tau=math.inf)
    all_prune = _compressed(dense, "ppt", blocks=(3,), tau=0.0)
    with torch.no_grad():
        out_mixed, out_pool, out_prune = mixed(images), all_pool(images), all_prune(images)
    (stats,) = ppt.reduction_stats(mixed)
    assert stats["pooled_images"] == int(expect_pool.sum())
    assert stats["pruned_images"] == len(images) - int(expect_pool.sum())
    assert (out_pool - out_prune).abs().amax(dim=1).min() > 1e-4, "the two paths must be distinguishable"
    # each image went down the path its own variance chose, and came back to its own slot in the batch
    expected = torch.where(expect_pool[:, None], out_pool, out_prune)
    torch.testing.assert_close(out_mixed, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# cls protection, parameters, equivalence


@pytest.mark.parametrize("method,tau", [("ppt", 0.0), ("ppt", math.inf), ("tome", None), ("evit", None)])
def test_cls_token_is_kept_intact(dense, images, method, tau):
    # Reducing only in the last block leaves the cls path identical to the dense model's: attention still sees
    # every token, and the MLP is per token. Any merge into / drop / move of cls would change the output.
    model = _compressed(dense, method, blocks=(DEPTH - 1,), tau=tau)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images)[:, 0], dense.forward_features(images)[:, 0],
                                   atol=1e-5, rtol=1e-5)
        assert model.forward_features(images).shape[1] == 65 - 16


def test_tome_sizes_account_for_every_patch(dense, images):
    _, sizes = _forward_recording(_compressed(dense, "tome"), images, (3, 6, 9))
    for i in (3, 6, 9):
        assert torch.all(sizes[i][:, 0, 0] == 1)
        torch.testing.assert_close(sizes[i][:, 1:, 0].sum(dim=1), torch.full((len(images),), float(PATCHES)))


def test_evit_tokens_carry_no_size(dense, images):
    _, sizes = _forward_recording(_compressed(dense, "evit"), images, range(DEPTH))
    assert all(size is None for size in sizes.values())


def _evit_reference(model: VisionTransformer, x: torch.Tensor, r: int, blocks) -> torch.Tensor:
    """EViT's forward as the official code (youweiliang/evit, evit.py) computes it, written out on the dense model's
    weights: plain softmax attention everywhere; at a reduction block the top N-2-r patch tokens by head-averaged cls
    attention are kept, in attention order, and the rest are summed, weighted by that attention, into one token."""
    with torch.no_grad():
        h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for i, blk in enumerate(model.blocks):
            y = blk.norm1(h)
            B, N, C = y.shape
            q, k, v = blk.attn.qkv(y).reshape(B, N, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
            probs = ((q * blk.attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
            h = h + blk.attn.proj((probs @ v).transpose(1, 2).reshape(B, N, C))
            if i in blocks:
                cls_attention = probs[:, :, 0, 1:].mean(dim=1)  # (B, N-1)
                top = cls_attention.topk(N - 2 - r, dim=1).indices  # (B, N-2-r), most attended first
                patches = h[:, 1:]
                dropped = torch.ones_like(cls_attention, dtype=torch.bool).scatter(1, top, False)
                fused = (patches * (cls_attention * dropped)[..., None]).sum(dim=1, keepdim=True)  # (B, 1, C)
                h = torch.cat([h[:, :1], patches.gather(1, top[..., None].expand(-1, -1, C)), fused], dim=1)
            h = h + blk.mlp(blk.norm2(h))
        return model.forward_head(model.norm(h))


def test_evit_matches_the_official_forward(dense, images):
    model = _compressed(dense, "evit")
    with torch.no_grad():
        out = model(images)
    torch.testing.assert_close(out, _evit_reference(dense, images, 16, (3, 6, 9)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, dense(images), atol=1e-3)


def test_evit_refuses_proportional_attention():
    with pytest.raises(ValueError, match="prop_attn must be False for method 'evit'"):
        ppt.TokenReductionConfig(method="evit", r=2, blocks=(1,), prop_attn=True)


@pytest.mark.parametrize("explicit", [False, True])
def test_proportional_attention_equals_attention_over_duplicated_tokens(dense, explicit):
    # a token of size s must weigh in attention like s identical copies of it, on both attention paths
    attn = copy.deepcopy(dense.blocks[0].attn)
    x = torch.randn(2, 5, EMBED, generator=torch.Generator().manual_seed(3))
    size = torch.tensor([1, 2, 1, 3, 1])
    with torch.no_grad():
        duplicated = dense.blocks[0].attn(x.repeat_interleave(size, dim=1))  # timm's own attention
        first_copy = torch.cumsum(size, 0) - size
        attn.__class__ = ppt.TokenReductionAttention
        out, info = attn(x, size=size[None, :, None].float().expand(2, -1, -1), need_cls_attention=explicit)
    torch.testing.assert_close(out, duplicated[:, first_copy], atol=1e-5, rtol=1e-5)
    assert (info.cls_attention is not None) == explicit


def test_no_parameters_added(dense):
    model = _compressed(dense, "ppt")
    assert list(model.state_dict()) == list(dense.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in dense.parameters())
    for key, value in dense.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize("method", ["ppt", "tome", "evit"])
def test_r_zero_equals_the_dense_model(dense, images, method):
    model = _compressed(dense, method, r=0)
    with torch.no_grad():
        torch.testing.assert_close(model(images), dense(images), atol=1e-5, rtol=1e-5)


def test_uncompress_restores_exact_dense_outputs(dense, images):
    model = _compressed(dense, "ppt")
    with torch.no_grad():
        reference = dense(images)
        assert not torch.allclose(model(images), reference, atol=1e-5)
        ppt.uncompress(model)
        assert torch.equal(model(images), reference)
    assert all(type(b) is Block and type(b.attn) is Attention for b in model.blocks)
    assert not hasattr(model, "_token_reduction")


def test_compress_again_reconfigures(dense, images):
    model = _compressed(dense, "ppt")
    ppt.compress(model, ppt.TokenReductionConfig(method="tome", r=8, blocks=(2,)))
    with torch.no_grad():
        out = model.forward_features(images)
    assert out.shape[1] == 57
    assert [s["block"] for s in ppt.reduction_stats(model)] == [2]


def test_stats_reset_and_copies_are_independent(dense, images):
    model = _compressed(dense, "ppt", tau=0.0)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        model(images)
        model(images[:3])
    assert ppt.reduction_stats(model)[0]["pruned_images"] == len(images) + 3
    assert ppt.reduction_stats(twin)[0]["pruned_images"] == 0
    ppt.reset_reduction_stats(model)
    assert math.isnan(ppt.reduction_stats(model)[0]["pool_fraction"])


def test_gradients_flow_through_a_mixed_batch(dense, images):
    variance = _score_variance_at(dense, images, 3)
    model = _compressed(dense, "ppt", tau=float(variance.median()))
    model.train()
    model(images).square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert 0 < ppt.reduction_stats(model)[0]["pooled_images"] < len(images)


def test_rejects_unpatchable_models():
    with pytest.raises(ValueError, match="cls"):
        ppt.compress(VisionTransformer(img_size=32, patch_size=8, in_chans=1, embed_dim=16, depth=2, num_heads=2,
                                       class_token=False, global_pool="avg"),
                     ppt.TokenReductionConfig(method="ppt", r=2, blocks=(1,)))
    with pytest.raises(ValueError, match="do not exist"):
        ppt.compress(_vit(), ppt.TokenReductionConfig(method="ppt", r=2, blocks=(12,)))
    with pytest.raises(ValueError, match="method"):
        ppt.TokenReductionConfig(method="dynamicvit", r=2, blocks=(1,))


# ---------------------------------------------------------------------------------------------------------------
# the building blocks on hand-made cases


def test_significance_scores_hand_case():
    cls_attention = torch.tensor([[[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]])  # (B=1, H=2, N=3)
    values = torch.zeros(1, 2, 3, 2)  # (B, H, N, hd); token 1 = [3, 0 | 0, 4] (norm 5), token 2 = [1, 0 | 0, 0]
    values[0, 0, 1] = torch.tensor([3.0, 0.0])
    values[0, 1, 1] = torch.tensor([0.0, 4.0])
    values[0, 0, 2] = torch.tensor([1.0, 0.0])
    raw = torch.tensor([(0.3 + 0.2) * 5.0, (0.2 + 0.6) * 1.0])
    torch.testing.assert_close(ppt.significance_scores(cls_attention, values), (raw / raw.sum())[None])


def test_merge_weighted_by_size_hand_case():
    # A = tokens 0 (cls), 2, 4; B = tokens 1, 3. Token 2 is nearly parallel to token 1 (cos 0.995) and is the
    # best-matched A token; token 4 is orthogonal to its best partner 3. With r=1 only 2 -> 1 merges.
    metric = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 1.0], [1.0, -1.0]]])
    x = torch.tensor([[[10.0], [1.0], [4.0], [7.0], [5.0]]])
    size = torch.tensor([[[1.0], [1.0], [2.0], [1.0], [3.0]]])
    merged_x, merged_size = ppt.merge_weighted_by_size(ppt.bipartite_soft_matching(metric, 1), x, size)
    # unmerged A in order (cls, 4), then B (1 absorbed 2: (1*1 + 2*4) / 3 = 3, size 3), 3
    assert merged_x[0, :, 0].tolist() == [10.0, 5.0, 3.0, 7.0]
    assert merged_size[0, :, 0].tolist() == [1.0, 3.0, 3.0, 1.0]


def test_bipartite_matching_never_merges_cls():
    # cls is the most similar token to everything; it must still not move
    metric = torch.ones(2, 7, 4) + 0.01 * torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(0))
    x = torch.arange(2 * 7, dtype=torch.float32).reshape(2, 7, 1)
    merged_x, merged_size = ppt.merge_weighted_by_size(ppt.bipartite_soft_matching(metric, 3), x, torch.ones(2, 7, 1))
    assert merged_x.shape == (2, 4, 1)
    assert torch.equal(merged_x[:, 0], x[:, 0])
    assert torch.all(merged_size[:, 0] == 1) and torch.all(merged_size.sum(dim=1) == 7)


def test_prune_lowest_scores_hand_case():
    x = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1) * 10  # tokens 0 (cls) .. 5
    size = torch.tensor([[[1.0], [2.0], [1.0], [4.0], [1.0], [3.0]]])
    scores = torch.tensor([[0.3, 0.1, 0.25, 0.05, 0.3]])  # patch tokens 1..5; lowest two are tokens 2 and 4
    kept_x, kept_size = ppt.prune_lowest_scores(x, size, scores, 2)
    assert kept_x[0, :, 0].tolist() == [0.0, 10.0, 30.0, 50.0]
    assert kept_size[0, :, 0].tolist() == [1.0, 2.0, 4.0, 3.0]


def test_evit_fused_token_is_the_cls_attention_weighted_sum_of_the_dropped():
    x = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [4.0, 4.0]]])  # (1, 5, 2), token 0 = cls
    cls_attention = torch.tensor([[0.4, 0.1, 0.3, 0.05]])  # patches 1..4; r=1 keeps 5 - 2 - 1 = 2 of them
    out_x = ppt.keep_top_and_fuse_rest(x, cls_attention, 1)
    # dropped tokens 2 and 4, weights not renormalised: 0.1 * [0, 2] + 0.05 * [4, 4]
    torch.testing.assert_close(out_x[0], torch.tensor([[9.0, 9.0], [1.0, 0.0], [3.0, 1.0], [0.2, 0.4]]))


# ---------------------------------------------------------------------------------------------------------------
# cost


def _analytic_macs(attention_tokens: list[int], mlp_tokens: list[int]) -> int:
    """12 N D^2 + 2 N^2 D per block (qkv + proj at the attention's N, MLP at the reduced N) + embed + head."""
    d = EMBED
    total = PATCHES * (4 * 4 * 1) * d + d * 10
    for na, nm in zip(attention_tokens, mlp_tokens):
        total += 4 * na * d * d + 2 * na * na * d + 8 * nm * d * d
    return total


def test_macs_drop_by_the_analytic_ratio(dense):
    x = _images(2)
    dense_macs = count_macs(dense, x[:1])
    assert dense_macs == _analytic_macs([65] * 12, [65] * 12)
    attn = [65] * 4 + [49] * 3 + [33] * 3 + [17] * 2
    mlp = [65] * 3 + [49] * 3 + [33] * 3 + [17] * 3
    prune_macs = count_macs(_compressed(dense, "ppt", tau=0.0), x) / 2
    assert prune_macs == _analytic_macs(attn, mlp)  # pruning adds no matmul
    pool_macs = count_macs(_compressed(dense, "ppt", tau=math.inf), x) / 2
    assert pool_macs == pytest.approx(_analytic_macs(attn, mlp), rel=0.01)  # + the similarity matmuls
    assert pool_macs / dense_macs == pytest.approx(_analytic_macs(attn, mlp) / _analytic_macs([65] * 12, [65] * 12),
                                                   rel=0.01)
    assert prune_macs / dense_macs < 0.7


def test_check_fits_bounds_r_by_the_first_reduction_block_and_blocks_by_the_depth(dense):
    # 65 tokens enter: at most (65 - 1) // 2 = 32 can go at the first block; later blocks cap r at half theirs
    ppt.check_fits(dense, ppt.TokenReductionConfig("ppt", r=32, blocks=(3, 6, 9)))
    with pytest.raises(ValueError, match=r"^r=33 exceeds 32, the most tokens block 3 can remove \(65 tokens"):
        ppt.check_fits(dense, ppt.TokenReductionConfig("ppt", r=33, blocks=(9, 3, 6)))
    with pytest.raises(ValueError, match=r"^r=100000 exceeds 32, the most tokens block 0 can remove"):
        ppt.check_fits(dense, ppt.TokenReductionConfig("tome", r=100000, blocks=()))  # every block: block 0 first
    with pytest.raises(ValueError, match=r"^blocks \[12, 15\] do not exist in a model with 12 blocks"):
        ppt.check_fits(dense, ppt.TokenReductionConfig("ppt", r=1, blocks=(3, 12, 15)))
    assert [ppt.removable_tokens(n) for n in (65, 51, 2, 1)] == [32, 25, 0, 0]
