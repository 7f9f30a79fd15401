"""VMT-Adapter (models/vmt.py): step 0 equals the frozen backbone, one backbone pass whatever T (T passes for
per-task adapters), what trains and how much, the losses' ignore handling, and exact metrics and Δm on hand-made
cases."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from models.vmt import (
    MODES,
    SHAPES_MT_TASKS,
    SWIN_TINY,
    AdaptedSwinBlock,
    AdapterConfig,
    MultiTaskConfig,
    MultiTaskMeter,
    MultiTaskModel,
    SwinConfig,
    TaskSpec,
    VMTAdapter,
    angular_errors,
    apply_per_task_adapters,
    apply_vmt_adapters,
    build_swin,
    count_trainable,
    delta_m,
    lower_is_better,
    mean_angular_error,
    mean_iou,
    multitask_features,
    multitask_loss,
    normals_loss,
    saliency_loss,
    segmentation_loss,
    stage_features,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MINI = SwinConfig()
BLOCK_DIMS = [32, 32, 64, 64, 128, 128, 256, 256]  # the miniature's blocks: depths (2, 2, 2, 2), dims 32 * 2**i


def images(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def swin(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_swin(MINI).eval()


def model(mode: str, tasks: tuple[TaskSpec, ...] = SHAPES_MT_TASKS, seed: int = 0) -> MultiTaskModel:
    return MultiTaskModel(swin(seed), MultiTaskConfig(mode=mode, tasks=tasks))


def extra_task(name: str) -> TaskSpec:
    return TaskSpec(name, "segmentation", 5, 1.0)


def targets(b: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    normals = F.normalize(torch.randn(b, 64, 64, 3, generator=g), dim=-1)
    normals[:, :4] = 0.0  # invalid rows
    semseg = torch.randint(0, 5, (b, 64, 64), generator=g)
    semseg[:, :, :3] = 255
    return {"semseg": semseg, "parts": torch.randint(0, 4, (b, 64, 64), generator=g),
            "saliency": torch.randint(0, 2, (b, 64, 64), generator=g), "normals": normals}


# ---------------------------------------------------------------------------------------------------------------------
# Backbone and adapters


def test_stage_features_are_nchw_stage_outputs() -> None:
    net, x = swin(), images()
    maps = stage_features(net, x)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)]
    with torch.no_grad():
        nhwc = net.layers(net.patch_embed(x))  # timm's own stage stack, NHWC
    torch.testing.assert_close(maps[-1].permute(0, 2, 3, 1), nhwc, rtol=0, atol=0)


@pytest.mark.parametrize("patch", ["vmt", "vmt_lite", "per_task_adapters"])
def test_step_zero_equals_the_frozen_backbone(patch: str) -> None:
    frozen = swin()
    adapted = copy.deepcopy(frozen)
    if patch == "per_task_adapters":
        apply_per_task_adapters(adapted, 3, AdapterConfig())
    else:
        apply_vmt_adapters(adapted, 3, AdapterConfig(), lite=patch == "vmt_lite")
    x = images()
    with torch.no_grad():
        reference = stage_features(frozen, x)
        per_task = multitask_features(adapted, x)
        generic = adapted.forward_features(x)
        expected_generic = frozen.forward_features(x)
    assert len(per_task) == 3
    for maps in per_task:
        for got, want in zip(maps, reference, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(generic, expected_generic, rtol=0, atol=1e-6)


def test_task_features_differ_once_task_modules_do() -> None:
    net = apply_vmt_adapters(swin(), 2, AdapterConfig())
    torch.manual_seed(3)
    for module in net.modules():
        if isinstance(module, VMTAdapter):
            torch.nn.init.normal_(module.up_weight, std=0.1)
            torch.nn.init.normal_(module.task_shift, std=0.5)
    with torch.no_grad():
        (a1, *_, a4), (b1, *_, b4) = multitask_features(net, images())
    assert not torch.allclose(a1, b1) and not torch.allclose(a4, b4)


def attention_calls(net: torch.nn.Module) -> list[int]:
    counts = []
    for stage in net.layers:
        for blk in stage.blocks:
            counts.append(0)
            i = len(counts) - 1
            blk.attn.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


@pytest.mark.parametrize("tasks", [1, 2, 4])
def test_vmt_runs_the_backbone_once_per_task_adapters_once_per_task(tasks: int) -> None:
    task_set = tuple(extra_task(f"t{i}") for i in range(tasks))
    for mode, passes in (("vmt", 1), ("vmt_lite", 1), ("per_task_adapters", tasks)):
        net = model(mode, task_set)
        calls = attention_calls(net.backbone)
        with torch.no_grad():
            out = net(images())
        assert len(out) == tasks
        assert calls == [passes] * len(BLOCK_DIMS), mode


@pytest.mark.parametrize("mode", ["vmt", "vmt_lite", "per_task_adapters"])
def test_frozen_backbone_gets_no_gradient_adapters_and_decoders_do(mode: str) -> None:
    net = model(mode).train()
    total, _ = multitask_loss(SHAPES_MT_TASKS, net(images()), targets())
    total.backward()
    adapter_params = {id(p) for m in net.backbone.modules() if isinstance(m, VMTAdapter) for p in m.parameters()}
    for name, p in net.backbone.named_parameters():
        if id(p) in adapter_params:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert all(p.grad is not None for p in net.decoders.parameters())
    assert any(p.grad.abs().sum() > 0 for p in net.backbone.parameters() if p.grad is not None)


def test_full_finetune_trains_the_whole_backbone() -> None:
    net = model("full_finetune").train()
    multitask_loss(SHAPES_MT_TASKS, net(images()), targets())[0].backward()
    assert all(p.requires_grad and p.grad is not None for p in net.backbone.parameters())
    assert count_trainable(net.backbone) == sum(p.numel() for p in net.backbone.parameters())


@pytest.mark.parametrize("mode", ["vmt", "vmt_lite"])
def test_a_new_task_adds_2k_per_block_plus_its_decoder(mode: str) -> None:
    four, five = model(mode), model(mode, SHAPES_MT_TASKS + (extra_task("extra"),))
    task_module = sum(2 * (c // 4) for c in BLOCK_DIMS)  # g_t and e_t, k = C / gamma
    assert count_trainable(five.backbone) - count_trainable(four.backbone) == task_module
    decoder = count_trainable(five.decoders["extra"])
    assert count_trainable(five) - count_trainable(four) == task_module + decoder


def test_lite_has_about_half_the_adapter_parameters() -> None:
    vmt, lite = count_trainable(model("vmt").backbone), count_trainable(model("vmt_lite").backbone)
    shared = sum(2 * c * (c // 4) for c in BLOCK_DIMS)  # W_down and W_up
    assert vmt - lite == shared // 2  # exactly the tied W_up
    assert 0.45 < lite / vmt < 0.6


def test_per_task_adapters_cost_t_adapter_sets() -> None:
    one_set = count_trainable(model("vmt", SHAPES_MT_TASKS[:1]).backbone)
    assert count_trainable(model("per_task_adapters").backbone) == 4 * one_set


def test_swin_tiny_adapter_weights_are_2c2_over_gamma_per_block() -> None:
    torch.manual_seed(0)
    net = apply_vmt_adapters(build_swin(SWIN_TINY), 4, AdapterConfig(reduction=4))
    weights = sum(m.down.weight.numel() + m.up_weight.numel() for m in net.modules() if isinstance(m, VMTAdapter))
    assert weights == 4_313_088 // 4  # sum over Swin-T's 12 blocks of 2 C^2 / gamma


def test_patching_twice_is_refused() -> None:
    net = apply_vmt_adapters(swin(), 2, AdapterConfig())
    assert all(isinstance(b, AdaptedSwinBlock) for s in net.layers for b in s.blocks)
    with pytest.raises(TypeError, match="already adapted"):
        apply_vmt_adapters(net, 2, AdapterConfig())
    with pytest.raises(ValueError, match="no adapters"):
        multitask_features(swin(), images())


@pytest.mark.parametrize("mode", MODES)
def test_every_task_output_has_its_shape(mode: str) -> None:
    tasks = SHAPES_MT_TASKS[3:] if mode == "single_task" else SHAPES_MT_TASKS
    with torch.no_grad():
        out = model(mode, tasks)(images())
    channels = {"semseg": 5, "parts": 4, "saliency": 1, "normals": 3}
    assert {k: tuple(v.shape) for k, v in out.items()} == {t.name: (2, channels[t.name], 64, 64) for t in tasks}


def test_configs_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="single_task"):
        MultiTaskConfig(mode="single_task")
    with pytest.raises(ValueError, match="unique"):
        MultiTaskConfig(tasks=(extra_task("a"), extra_task("a")))
    with pytest.raises(ValueError, match="3 output"):
        TaskSpec("normals", "normals", 2, 1.0)
    with pytest.raises(ValueError, match="mode"):
        MultiTaskConfig(mode="hyperformer")


# ---------------------------------------------------------------------------------------------------------------------
# Losses


def test_losses_ignore_255_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    seg_t = torch.tensor([[[0, 1, 255], [2, 255, 1]]])
    seg_p = torch.randn(1, 3, 2, 3, generator=g)
    seg_q = seg_p.clone()
    seg_q[..., 0, 2] += 5.0
    seg_q[..., 1, 1] -= 3.0
    assert segmentation_loss(seg_p, seg_t) == segmentation_loss(seg_q, seg_t)
    torch.testing.assert_close(segmentation_loss(seg_p, seg_t), F.cross_entropy(seg_p, seg_t, ignore_index=255))

    sal_t = torch.tensor([[[1, 0, 255], [0, 255, 0]]])
    sal_p = torch.randn(1, 1, 2, 3, generator=g)
    sal_q = sal_p.clone()
    sal_q[..., 0, 2] = 9.0
    assert saliency_loss(sal_p, sal_t) == saliency_loss(sal_q, sal_t)
    sal_q[..., 0, 0] = 9.0  # a valid pixel does count
    assert saliency_loss(sal_p, sal_t) != saliency_loss(sal_q, sal_t)

    nrm_t = F.normalize(torch.randn(1, 2, 3, 3, generator=g), dim=-1)
    nrm_t[0, 1, 1] = 0.0  # invalid pixel
    nrm_p = torch.randn(1, 3, 2, 3, generator=g)
    nrm_q = nrm_p.clone()
    nrm_q[0, :, 1, 1] = torch.tensor([5.0, -2.0, 1.0])
    assert normals_loss(nrm_p, nrm_t) == normals_loss(nrm_q, nrm_t)


def test_balanced_bce_and_normals_loss_values() -> None:
    target = torch.tensor([[[1, 0], [0, 0], [255, 255]]])  # 1 positive, 3 negatives, 2 ignored
    # zero logits: every pixel's BCE is log 2; w = 3/4 negatives -> (3/4 * 1 + 1/4 * 3) log 2 / 4 valid pixels
    assert saliency_loss(torch.zeros(1, 1, 3, 2), target).item() == pytest.approx(0.375 * math.log(2))

    gt = torch.tensor([[[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]])  # (1, 1, 3, 3): last pixel invalid
    pred = torch.tensor([[0.0, 0.0, 7.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]).t().reshape(1, 3, 1, 3)
    # pixel 0 exact after normalising (|0|); pixel 1: (0, 1, 0) vs (1, 0, 0) -> 2; over 2 valid pixels x 3 comps
    assert normals_loss(pred, gt).item() == pytest.approx(2 / 6)


def test_multitask_loss_uses_mtlora_weights() -> None:
    net = model("vmt")
    with torch.no_grad():
        preds = net(images())
    tgt = targets()
    total, parts = multitask_loss(SHAPES_MT_TASKS, preds, tgt)
    expected = (parts["semseg"] + 2 * parts["parts"] + 5 * parts["saliency"] + 10 * parts["normals"])
    torch.testing.assert_close(total, expected)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics and Δm


def test_mean_iou_on_a_hand_made_map() -> None:
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 3]]])  # the 3 sits on an ignored pixel
    # class 0: 1 / 2; class 1: 2 / 3; class 2: 1 / 1; class 3 absent from both -> not averaged
    assert mean_iou(pred, target, classes=4) == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)


def test_mean_angular_error_on_hand_made_normals() -> None:
    gt = torch.tensor([[[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]])  # (1, 1, 4, 3)
    pred = torch.tensor([[0.0, 0.0, 2.0], [3.0, 0.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]).t().reshape(1, 3, 1, 4)
    torch.testing.assert_close(angular_errors(pred, gt), torch.tensor([0.0, 90.0, 180.0]), rtol=0, atol=1e-4)
    assert mean_angular_error(pred, gt) == pytest.approx(90.0, abs=1e-4)


def test_meter_accumulates_over_the_split() -> None:
    net = model("vmt")
    meter = MultiTaskMeter(SHAPES_MT_TASKS)
    with torch.no_grad():
        batches = [(net(images(2, seed)), targets(2, seed + 10)) for seed in range(2)]
    for preds, tgt in batches:
        meter.update(preds, tgt)
    whole = MultiTaskMeter(SHAPES_MT_TASKS)
    whole.update({k: torch.cat([p[k] for p, _ in batches]) for k in batches[0][0]},
                 {k: torch.cat([t[k] for _, t in batches]) for k in batches[0][1]})
    assert meter.compute() == pytest.approx(whole.compute())
    assert list(meter.compute()) == ["semseg", "parts", "saliency", "normals"]


def test_delta_m_on_a_hand_made_table() -> None:
    baseline = {"semseg": 50.0, "parts": 40.0, "saliency": 60.0, "normals": 20.0}
    method = {"semseg": 55.0, "parts": 38.0, "saliency": 60.0, "normals": 18.0}
    # (+10 % - 5 % + 0 % + 10 %) / 4; normals is an error, so lower counts as a gain
    assert delta_m(method, baseline, lower_is_better(SHAPES_MT_TASKS)) == pytest.approx(3.75)
    assert delta_m(baseline, baseline, {"normals"}) == 0.0
    with pytest.raises(ValueError, match="same tasks"):
        delta_m({"semseg": 1.0}, baseline, {"normals"})
