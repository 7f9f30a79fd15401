"""OVOR: OnePrompt's prefix prompts, the frozen backbone, masked CE, the energy/Huber VOR loss, NPOS synthesis,
the CIL metrics, PPT on the prompted ViT, and the recipe's config and round trip."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import Attention

from models import ppt
from recipes import available_recipes, get_recipe
from models.common.reporting import RecordingReporter
from models.ovor.cil import (
    HeadSchedule, Stream, StreamConfig, VORAblation, VORConfig, average_accuracy, average_forgetting, class_order,
    cross_task_confusion, final_scores, run_stream, split_tasks,
)
from models.ovor.model import (
    BackboneConfig, OnePromptViT, PromptConfig, PromptedAttention, TwoPassPromptViT, prompts_disabled,
)
from models.ovor.vor import (
    boundary_points, energy, kth_nn_distance, masked_cross_entropy, synthesize_outliers, vor_loss,
)
from recipes import load_config

SMALL = BackboneConfig(img_size=16, patch_size=4, embed_dim=16, depth=4, num_heads=2)
PROMPTS = PromptConfig(g_length=2, g_blocks=(0,), e_length=4, e_blocks=(2,))


def small_model(seed: int = 0) -> OnePromptViT:
    torch.manual_seed(seed)
    return OnePromptViT(SMALL, PROMPTS, num_classes=4, generator=torch.Generator().manual_seed(seed)).eval()


# ------------------------------------------------------------------------------------------- prompts


def test_prompts_sit_in_the_chosen_blocks_only():
    model = small_model()
    assert model.prompted_blocks() == [0, 2]
    assert [type(b.attn) for b in model.backbone.blocks] == [PromptedAttention, Attention, PromptedAttention,
                                                             Attention]
    assert [tuple(p.shape) for p in model.prompt_parameters()] == [(2, 16), (4, 16)]


def test_prompted_attention_equals_explicit_prefix_attention():
    """The re-implemented forward = softmax(q [pk; k]^T / sqrt(d)) [pv; v], the prefix split over heads."""
    attn = small_model().backbone.blocks[2].attn
    x = torch.randn(3, 5, 16)
    B, N, C, H, hd = 3, 5, 16, 2, 8
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
    pk = attn.prompt[:2].reshape(2, H, hd).permute(1, 0, 2).expand(B, -1, -1, -1)
    pv = attn.prompt[2:].reshape(2, H, hd).permute(1, 0, 2).expand(B, -1, -1, -1)
    probs = (q @ torch.cat([pk, k], 2).transpose(-1, -2) / math.sqrt(hd)).softmax(-1)  # (B, H, N, 2 + N)
    expected = attn.proj((probs @ torch.cat([pv, v], 2)).transpose(1, 2).reshape(B, N, C))
    with torch.no_grad():
        assert torch.allclose(attn(x), expected, atol=1e-5)
        with prompts_disabled(attn):
            plain = Attention.forward(attn, x)
            assert torch.allclose(attn(x), plain, atol=1e-6)  # switched off = timm's attention


def test_a_prompt_changes_its_own_block_and_nothing_before_it():
    model = small_model()
    x = torch.randn(2, 1, 16, 16)
    outputs: dict[int, torch.Tensor] = {}
    hooks = [b.register_forward_hook(lambda m, i, o, idx=idx: outputs.__setitem__(idx, o.clone()))
             for idx, b in enumerate(model.backbone.blocks)]
    with torch.no_grad():
        model(x)
        before = dict(outputs)
        model.backbone.blocks[2].attn.prompt.add_(1.0)
        model(x)
    for h in hooks:
        h.remove()
    assert torch.equal(before[0], outputs[0]) and torch.equal(before[1], outputs[1])
    assert not torch.allclose(before[2], outputs[2])


def test_frozen_backbone_gets_no_gradient_and_every_prompt_does():
    model = small_model()
    model.freeze_backbone()
    model.train()
    loss = model(torch.randn(4, 1, 16, 16)).logsumexp(-1).sum()
    loss.backward()
    prompts = {id(p) for p in model.prompt_parameters()}
    for name, p in model.backbone.named_parameters():
        if id(p) in prompts:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name
    assert model.head.weight.grad is not None


def test_two_pass_variant_costs_a_query_pass_more():
    from models.common.profiling import count_macs

    model = small_model()
    x = torch.randn(2, 1, 16, 16)
    one, two = count_macs(model, x), count_macs(TwoPassPromptViT(model), x)
    with prompts_disabled(model):
        query = count_macs(model.backbone, x)
    assert two == one + query
    assert 0.45 < one / two < 0.55
    assert torch.allclose(TwoPassPromptViT(model)(x), model(x))


# ------------------------------------------------------------------------------------------- losses


def test_masked_cross_entropy_uses_only_the_current_task_logits():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [9.0, 0.0, 0.5, -1.0]], requires_grad=True)
    loss = masked_cross_entropy(logits, torch.tensor([3, 2]), torch.tensor([2, 3]))
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-1.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.equal(logits.grad[:, :2], torch.zeros(2, 2))  # earlier classes get nothing (masked to -inf)
    with pytest.raises(ValueError, match="not a class of the current task"):
        masked_cross_entropy(logits, torch.tensor([0, 2]), torch.tensor([2, 3]))


def test_energy_is_minus_logsumexp_over_the_task():
    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0), 100.0]])
    assert energy(logits, torch.tensor([0, 1, 2])).item() == pytest.approx(-math.log(6.0))


def test_vor_loss_on_exact_values():
    # ID: relu([-16, -14] + 15) = [0, 1] -> Huber [0, 0.5], mean 0.25.
    # OOD: relu(-3 - [-5, -2.5]) = [2, 0] -> Huber [1.5, 0], mean 0.75. lambda 0.1 -> 0.1.
    loss = vor_loss(torch.tensor([-16.0, -14.0]), torch.tensor([-5.0, -2.5]), tau_id=-15.0, tau_ood=-3.0, weight=0.1)
    assert loss.item() == pytest.approx(0.1)
    assert vor_loss(torch.tensor([-20.0]), torch.tensor([0.0]), -15.0, -3.0).item() == 0.0


# ---------------------------------------------------------------------------------------------- NPOS


def test_kth_nn_distance_exact():
    index = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    assert kth_nn_distance(torch.tensor([[0.0, 0.0]]), index, k=2).item() == pytest.approx(1.0)
    assert kth_nn_distance(index, index, k=1, exclude_self=True).tolist() == pytest.approx([1.0, 1.0, 4.0])


def test_boundary_points_are_the_farthest_kth_neighbours():
    g = torch.Generator().manual_seed(0)
    cluster = F.normalize(torch.tensor([1.0, 0.0, 0.0]) + 0.01 * torch.randn(20, 3, generator=g), dim=-1)
    far = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    feats = torch.cat([cluster, far]) * 5.0  # boundary search runs on normalised features
    assert set(boundary_points(feats, k=3, select=2).tolist()) == {20, 21}


def test_boundary_outliers_lie_around_boundary_points_and_outside_the_id_set():
    g = torch.Generator().manual_seed(0)
    feats = 3.0 * F.normalize(torch.randn(60, 8, generator=g), dim=-1)
    out = synthesize_outliers(feats, num_outliers=15, k=5, select=5, sample_from=40, cov=0.1, center="boundary",
                              generator=torch.Generator().manual_seed(1))
    assert out.shape == (15, 8)
    normed = F.normalize(feats, dim=-1)
    boundary = normed[boundary_points(feats, 5, 5)]
    # each outlier (back in unit scale) is within a few sigma of some boundary point
    assert (torch.cdist(out / 3.0, boundary).min(-1).values < 0.1 * 8 ** 0.5 * 2).all()
    # kept candidates are farther from the ID set than the typical ID point is from its neighbours
    assert kth_nn_distance(out / 3.0, normed, 5).min() > kth_nn_distance(normed, normed, 5, True).median()


def test_origin_outliers_reproduce_the_official_code():
    g = torch.Generator().manual_seed(0)
    feats = 3.0 * F.normalize(torch.randn(60, 8, generator=g), dim=-1)
    out = synthesize_outliers(feats, num_outliers=30, k=5, select=5, sample_from=10, cov=0.1, center="origin",
                              generator=torch.Generator().manual_seed(1))
    assert out.norm(dim=-1).max() < 2.0  # around the origin, not on the ID sphere of radius 3
    # the same 10 offsets are repeated for each of the 5 boundary points, so the 30 kept are 6 offsets x 5 copies
    distinct, counts = torch.unique(out, dim=0, return_counts=True)
    assert len(distinct) == 6 and counts.tolist() == [5] * 6
    with pytest.raises(ValueError, match="boundary' or 'origin"):
        synthesize_outliers(feats, 5, 5, 5, 10, 0.1, "elsewhere")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- metrics


def test_cil_metrics_on_a_hand_matrix():
    m = np.array([[90.0, np.nan, np.nan], [70.0, 80.0, np.nan], [60.0, 75.0, 85.0]])
    assert average_accuracy(m) == pytest.approx((60 + 75 + 85) / 3)
    # step 1: 90-70 = 20; step 2: mean(90-60, 80-75) = 17.5 -> F_N = 18.75
    assert average_forgetting(m) == pytest.approx(18.75)
    share, rate = cross_task_confusion(np.array([0, 2, 1, 3]), np.array([0, 1, 0, 2]), {0: 0, 1: 0, 2: 1, 3: 1})
    # errors: 2 for 1 (other task), 1 for 0 and 3 for 2 (same task) -> 1 of 3 errors, 1 of 4 samples
    assert share == pytest.approx(100 / 3) and rate == pytest.approx(25.0)


def test_class_order_and_tasks():
    assert class_order(10, 0) == list(range(10))
    assert sorted(class_order(10, 3)) == list(range(10)) and class_order(10, 3) != list(range(10))
    assert split_tasks(list(range(6)), 3, 2) == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="need 8 classes"):
        split_tasks(list(range(6)), 4, 2)


def test_final_scores_per_image_keep_the_order_and_average_to_the_metrics():
    tasks = [[0, 1], [2, 3]]
    target = np.array([0, 1, 1, 2, 3, 3, 3, 2])  # task 0: 3 images, task 1: 5 images
    pred = np.array([0, 0, 2, 2, 3, 0, 3, 3])
    metrics, per_item = final_scores(pred, target, tasks)
    # task 0: 1 of 3 right; task 1: 3 of 5 right -> A_N = (33.3 + 60) / 2; top-1 4 of 8
    assert metrics["a_n"] == pytest.approx((100 / 3 + 60) / 2) and metrics["top1"] == 50.0
    assert per_item["top1"].tolist() == [100, 0, 0, 100, 100, 0, 100, 0]
    # each image weighs N / (T * n_task): 8 / 6 in task 0, 8 / 10 in task 1
    assert per_item["a_n"] == pytest.approx([800 / 6, 0, 0, 80, 80, 0, 80, 0])
    assert per_item["a_n"].mean() == pytest.approx(metrics["a_n"])
    # into another task: image 2 (1 -> 2) and image 5 (3 -> 0)
    assert per_item["inter_task_error"].tolist() == [0, 0, 100, 0, 0, 100, 0, 0]
    assert per_item["inter_task_error"].mean() == pytest.approx(metrics["inter_task_error"])
    # equal tasks: the A_N score of an image is its 100 * correct (what McNemar needs)
    _, equal = final_scores(np.array([0, 1, 3, 3]), np.array([0, 0, 2, 3]), tasks)
    assert equal["a_n"].tolist() == equal["top1"].tolist() == [100, 0, 0, 100]
    with pytest.raises(ValueError, match=r"tasks \[1\] have no evaluation items"):
        final_scores(np.array([0]), np.array([0]), tasks)


class StepRecorder(RecordingReporter):
    """Snapshots the prompts and the head at every logged optimizer step of the prompt phase."""

    def __init__(self, model):
        super().__init__()
        self.model, self.snapshots = model, []

    def log_metrics(self, metrics, step=None):
        super().log_metrics(metrics, step)
        self.snapshots.append(([p.detach().clone() for p in self.model.prompt_parameters()],
                               self.model.head.weight.detach().clone()))


def _tiny_stream():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(16)
    x = torch.randn(64, 1, 16, 16, generator=g) + y[:, None, None, None].float()  # separable classes
    return Stream([[0, 1], [2, 3]], x, y, x[:16], y[:16])


STREAM_CFG = StreamConfig(num_tasks=2, classes_per_task=2, prompt_epochs=1, vor_epochs=1, batch_size=16)


def test_oneprompt_schedule_trains_prompt_and_head_together_for_every_epoch_of_the_task():
    """The official OnePrompt (--epochs 0 E1+E2 0): every step of all E1 + E2 epochs updates prompts and head;
    there is no head-only phase."""
    model = small_model()
    recorder = StepRecorder(model)
    result = run_stream(model, _tiny_stream(), STREAM_CFG, None, recorder, torch.Generator().manual_seed(0), None)
    traces = result.traces
    assert set(traces) == {"oneprompt"} and result.schedule is None and result.schedule_a_n == []
    # 32 images per task at batch 16 = 2 steps per epoch; E1 + E2 = 2 epochs; 2 tasks
    assert len(recorder.series("prompt_loss")) == 8
    before = ([p.detach().clone() for p in small_model().prompt_parameters()], small_model().head.weight.clone())
    for (p0, h0), (p1, h1) in zip([before, *recorder.snapshots], recorder.snapshots):
        assert all(not torch.equal(a, b) for a, b in zip(p0, p1))  # the prompts moved in this step
        assert not torch.equal(h0, h1)  # and so did the head
    assert torch.equal(traces["oneprompt"].head.weight, model.head.weight)
    assert traces["oneprompt"].thresholds == []  # no VOR


def test_ovor_stream_trains_only_prompts_and_head_and_shares_phase_a_across_variants():
    model = small_model()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items() if not k.endswith("prompt")}
    recorder = StepRecorder(model)
    vor = VORConfig(k=3, select=4, sample_from=8, num_per_class=4, thresholds="calibrate",
                    ablations=(VORAblation(name="ovor_origin", outlier_center="origin"),
                               VORAblation(name="ovor_lambda0", weight=0.0)))
    traces = run_stream(model, _tiny_stream(), STREAM_CFG, vor, recorder, torch.Generator().manual_seed(0),
                        None).traces
    assert set(traces) == {"ovor", "ovor_origin", "ovor_lambda0"}
    assert len(recorder.series("prompt_loss")) == 4  # phase (a): E1 = 1 epoch of 2 steps per task, 2 tasks
    for k, v in model.backbone.state_dict().items():
        if not k.endswith("prompt"):
            assert torch.equal(v, backbone_before[k]), k
    # phase (d) leaves the prompts as phase (a) of the last task left them
    assert all(torch.equal(a, b) for a, b in zip(recorder.snapshots[-1][0], model.prompt_parameters()))
    assert torch.equal(model.head.weight, traces["ovor"].head.weight)
    assert not torch.equal(traces["ovor_lambda0"].head.weight, traces["ovor"].head.weight)
    for trace in traces.values():
        assert trace.matrix.shape == (2, 2) and np.isnan(trace.matrix[0, 1]) and not np.isnan(trace.matrix[1, 0])
    # thresholds calibrated once, after the first task's phase (a), then kept; none without VOR
    assert traces["ovor"].thresholds[0] == traces["ovor"].thresholds[1]
    assert traces["ovor_lambda0"].thresholds == []


def test_the_kept_phase_d_schedule_is_the_one_with_the_best_eval_a_n_and_holds_for_every_variant():
    model = small_model()
    schedules = (HeadSchedule(1, None), HeadSchedule(1, 1e-2), HeadSchedule(10, 1e-2))
    vor = VORConfig(k=3, select=4, sample_from=8, num_per_class=4, thresholds="calibrate", head_schedules=schedules,
                    ablations=(VORAblation(name="ovor_lambda0", weight=0.0),))
    recorder = StepRecorder(model)
    result = run_stream(model, _tiny_stream(), STREAM_CFG, vor, recorder, torch.Generator().manual_seed(0), None)
    assert len(recorder.series("prompt_loss")) == 4  # one phase (a) for all candidates
    assert len(result.schedule_a_n) == 3
    kept = int(np.argmax(result.schedule_a_n))
    assert result.schedule == schedules[kept]
    assert average_accuracy(result.traces["ovor"].matrix) == pytest.approx(max(result.schedule_a_n))
    assert torch.equal(model.head.weight, result.traces["ovor"].head.weight)
    with pytest.raises(ValueError, match="head_schedules must hold at least one schedule"):
        VORConfig(head_schedules=())
    with pytest.raises(ValueError, match="passes must be >= 1, got 0"):
        HeadSchedule(passes=0)


def test_more_head_passes_move_the_head_further_and_leave_the_prompts():
    def head_after(passes):
        model = small_model()
        vor = VORConfig(k=3, select=4, sample_from=8, num_per_class=4, thresholds="calibrate",
                        head_schedules=(HeadSchedule(passes, 1e-2),))
        one_task = _tiny_stream()
        one_task.tasks = one_task.tasks[:1]  # a later task's phase (a) would draw after phase (d)'s draws
        run_stream(model, one_task, STREAM_CFG, vor, RecordingReporter(), torch.Generator().manual_seed(0), None)
        return model

    one, ten = head_after(1), head_after(10)
    assert all(torch.equal(a, b) for a, b in zip(one.prompt_parameters(), ten.prompt_parameters()))
    assert not torch.equal(one.head.weight, ten.head.weight)


def test_an_ablation_overrides_only_what_it_sets_and_is_checked_like_the_method():
    vor = VORConfig(weight=0.1, thresholds="auto", outlier_center="boundary", k=3)
    resolved = vor.resolved(VORAblation(name="ovor_lambda1", weight=1.0, thresholds="paper"))
    assert (resolved.weight, resolved.thresholds, resolved.outlier_center, resolved.k) == (1.0, "paper", "boundary", 3)
    assert resolved.ablations == vor.ablations and vor.weight == 0.1  # the method's config is untouched
    with pytest.raises(ValueError, match="outlier_center must be one of"):
        VORAblation(name="ovor_centre", outlier_center="centre")
    with pytest.raises(ValueError, match="name must be lower-case"):
        VORAblation(name="OVOR-origin")
    with pytest.raises(ValueError, match="'oneprompt' is the OnePrompt baseline's"):
        VORAblation(name="oneprompt")
    with pytest.raises(ValueError, match="VOR ablation name 'ovor' is taken"):
        VORConfig(ablations=(VORAblation(name="ovor"),)).variants()


@pytest.mark.parametrize("kwargs, message", [
    ({"g_length": 3}, "g_length and e_length count keys + values and must be even, got 3 and 8"),
    ({"g_blocks": (0, 2)}, "g_blocks (0, 2) and e_blocks (2, 3) overlap"),
    ({"init": "zeros"}, "init must be one of"),
])
def test_prompt_config_rejects_odd_lengths_overlapping_blocks_and_unknown_init(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PromptConfig(**kwargs)


def test_a_plain_vit_checkpoint_loads_into_the_backbone_and_leaves_the_prompts(tmp_path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    from models.common.vit import load_vit_checkpoint

    torch.manual_seed(1)
    plain = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=7, embed_dim=16, depth=4,
                              num_heads=2, class_token=True, global_pool="token")
    save_file(plain.state_dict(), str(tmp_path / "vit.safetensors"))
    model = small_model()
    prompts = [p.detach().clone() for p in model.prompt_parameters()]
    model.load_backbone(str(tmp_path / "vit.safetensors"))
    for k, v in plain.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(model.backbone.state_dict()[k], v), k
    assert all(torch.equal(a, b) for a, b in zip(prompts, model.prompt_parameters()))
    # The prompts are what a plain checkpoint lacks: without naming them, the load is refused.
    with pytest.raises(ValueError, match=r"missing=\['blocks.0.attn.prompt', 'blocks.2.attn.prompt'\]"):
        load_vit_checkpoint(small_model().backbone, tmp_path / "vit.safetensors")


# --------------------------------------------------------------------------------------- PPT on OVOR


def test_ppt_keeps_the_prefix_and_prunes_only_image_tokens():
    model = small_model()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        dense = model(x)
        ppt.compress(model.backbone, ppt.TokenReductionConfig("ppt", r=0, blocks=(1,), tau=0.0))
        assert torch.allclose(model(x), dense, atol=1e-5)  # r = 0: identical, prompts included
        ppt.compress(model.backbone, ppt.TokenReductionConfig("ppt", r=4, blocks=(1,), tau=0.0))
        pruned = model(x)
        stats = ppt.reduction_stats(model.backbone)
        assert (stats[0]["tokens_in"], stats[0]["tokens_out"]) == (17, 13)
        assert type(model.backbone.blocks[2].attn).__name__ == "TokenReductionPromptedAttention"
        model.backbone.blocks[2].attn.prompt.add_(1.0)  # block 2 runs after the pruning: its prefix still counts
        assert not torch.allclose(model(x), pruned)
    ppt.uncompress(model.backbone)
    assert [type(b.attn) for b in model.backbone.blocks] == [PromptedAttention, Attention, PromptedAttention,
                                                             Attention]


# -------------------------------------------------------------------------------------------- recipe


def test_recipe_is_registered_with_a_tiny_and_full_profile():
    assert "ovor" in available_recipes()
    recipe = get_recipe("ovor")
    assert recipe.primary_metric == "a_n" and recipe.compression == "ppt"
    cfg = load_config("ovor", "tiny").config
    assert cfg.vor.outlier_center == "boundary"
    assert (VORConfig().weight, VORConfig().tau_id, VORConfig().tau_ood, VORConfig().outlier_center) == (
        0.1, -15.0, -3.0, "boundary")  # the paper's defaults; the tiny profile's deviations are in its YAML
    assert load_config("ovor", "full").config.data.stage == "imagenet_r"
    model = recipe.build_model(cfg)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_compression_round_trips_through_recorded_knobs():
    recipe = get_recipe("ovor")
    cfg = load_config("ovor", "tiny").config
    dense = recipe.build_model(cfg)
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    knobs = {"method": "ppt", "r": 4, "blocks": [1, 3], "tau": 1e-3, "tau_cv": 1.64, "prop_attn": True}
    compressed = recipe.restore_compression(dense, knobs)
    rebuilt = recipe.build_model(cfg)
    rebuilt.load_state_dict(state)
    rebuilt = recipe.restore_compression(rebuilt, knobs)
    assert set(rebuilt.state_dict()) == set(state)  # PPT adds no tensor; the prompts are still there
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(compressed(x), rebuilt(x), atol=1e-6)
