"""AdaptConf / AugConf / KD losses on hand-computed inputs, α's range and stop-gradient, the disjoint splits, and
the w2s recipe end to end at micro size."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recipes import available_recipes, get_recipe, load_config
from recipes.base import Evaluation, RunModels, VariantResult
from models.common.reporting import RecordingReporter
from models.w2s.losses import adapt_conf_alpha, aug_conf_alpha, kd_loss, kd_per_sample, self_ce_per_sample, w2s_loss
from models.w2s.model import WeakConfig, noisy_labels, w2s_split
from models.w2s.train import LossConfig, StudentTrainConfig
from recipes.w2s import alpha_histogram, pgr, student_jobs, variant_knobs
from data import build, image_digests
from data.views import TestSplitAccessError, step_views

LN3, LN43 = math.log(3.0), math.log(4.0 / 3.0)


def two_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0: student p = (3/4, 1/4), teacher p = (1/4, 3/4) (they disagree); row 1: both (3/4, 1/4) (agree)."""
    s = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    t = torch.tensor([[0.0, LN3], [LN3, 0.0]])
    return s, t


# ---------------------------------------------------------------------------------------------- the losses


def test_kd_is_the_kl_from_teacher_to_student_times_t_squared():
    s, t = two_rows()
    # KL((1/4, 3/4) || (3/4, 1/4)) = 1/4 ln(1/3) + 3/4 ln 3 = ln(3)/2; identical distributions give 0.
    assert torch.allclose(kd_per_sample(s, t), torch.tensor([LN3 / 2, 0.0]), atol=1e-6)
    assert kd_loss(s, t).item() == pytest.approx(LN3 / 4, abs=1e-6)
    # At T = 2 the logits are halved, then the KL is multiplied by T² = 4.
    assert kd_per_sample(2 * s, 2 * t, temperature=2.0)[0].item() == pytest.approx(4 * LN3 / 2, abs=1e-5)


def test_self_ce_is_minus_log_of_the_students_top_probability():
    s, _ = two_rows()
    assert torch.allclose(self_ce_per_sample(s), torch.tensor([LN43, LN43]), atol=1e-6)


def test_adaptconf_alpha_by_hand():
    s, t = two_rows()
    # Row 0: σ((CE(s, ŝ) − CE(s, t̂))/τ) = σ((ln 4/3 − ln 4)/1) = σ(ln 1/3) = (1/3)/(4/3) = 1/4. Row 1 agrees: 1/2.
    assert torch.allclose(adapt_conf_alpha(s, t, tau=1.0), torch.tensor([0.25, 0.5]), atol=1e-6)
    # τ = 0.5 doubles the exponent: σ(2 ln 1/3) = (1/9)/(10/9) = 0.1.
    assert adapt_conf_alpha(s, t, tau=0.5)[0].item() == pytest.approx(0.1, abs=1e-6)
    # The assumed paper-text variant compares with the teacher's own confidence CE(t, t̂) = ln 4/3: α = 1/2.
    assert torch.allclose(adapt_conf_alpha(s, t, 1.0, mode="teacher_conf"), torch.tensor([0.5, 0.5]), atol=1e-6)
    with pytest.raises(ValueError, match="tau"):
        adapt_conf_alpha(s, t, tau=0.0)


def test_the_three_w2s_losses_by_hand():
    s, t = two_rows()
    y = torch.tensor([1, 0])
    kd, _ = w2s_loss(s, t, None, "kd", w_gt=0.0)
    assert kd.item() == pytest.approx(LN3 / 4, abs=1e-6)
    # AugConf, α = 0.5: mean((1 − α)·KD) + α·mean(CE(s, ŝ)) = 0.5·ln3/4 + 0.5·ln(4/3).
    aug, parts = w2s_loss(s, t, None, "augconf", w_gt=0.0, aug_alpha=0.5)
    assert aug.item() == pytest.approx(0.5 * LN3 / 4 + 0.5 * LN43, abs=1e-6)
    assert torch.equal(parts["alpha"], torch.tensor([0.5, 0.5]))
    # AdaptConf, τ = 1, α = (1/4, 1/2): [(3/4·ln3/2 + 1/4·ln4/3) + (0 + 1/2·ln4/3)] / 2.
    adapt, parts = w2s_loss(s, t, None, "adaptconf", w_gt=0.0, tau=1.0)
    assert adapt.item() == pytest.approx((0.375 * LN3 + 0.75 * LN43) / 2, abs=1e-6)
    assert torch.allclose(parts["alpha"], torch.tensor([0.25, 0.5]), atol=1e-6)
    # w_gt = 1 adds the batch-mean CE on the labels: row 0 label 1 has p = 1/4, row 1 label 0 has p = 3/4.
    with_gt, parts = w2s_loss(s, t, y, "adaptconf", w_gt=1.0, tau=1.0)
    assert parts["gt"].item() == pytest.approx((math.log(4) + LN43) / 2, abs=1e-6)
    assert with_gt.item() == pytest.approx(adapt.item() + parts["gt"].item(), abs=1e-6)
    gt_only, _ = w2s_loss(s, t, y, "gt", w_gt=1.0)
    assert gt_only.item() == pytest.approx(F.cross_entropy(s, y).item(), abs=1e-7)
    with pytest.raises(ValueError, match="unknown loss kind"):
        w2s_loss(s, t, y, "dkd")  # type: ignore[arg-type]


def test_adaptconf_alpha_lies_in_zero_half_and_is_half_exactly_on_agreement():
    g = torch.Generator().manual_seed(0)
    s = 4 * torch.randn(2000, 10, generator=g)
    t = 4 * torch.randn(2000, 10, generator=g)
    t[:500] = s[:500] + 0.1  # same argmax for the first 500 rows
    for tau in (0.25, 0.5, 4.0):
        alpha = adapt_conf_alpha(s, t, tau)
        assert alpha.min() >= 0.0 and alpha.max() <= 0.5
        agree = s.argmax(-1) == t.argmax(-1)
        assert torch.equal(alpha[agree], torch.full((int(agree.sum()),), 0.5))
        assert (alpha[~agree] < 0.5).all()
    # The paper-text variant is not bounded by 0.5 (that is what makes it a different loss).
    assert adapt_conf_alpha(s, t, 0.5, mode="teacher_conf").max() > 0.5


def test_no_gradient_flows_through_alpha():
    """The loss's gradient equals the one with α frozen to a constant; letting α carry a gradient changes it."""
    g = torch.Generator().manual_seed(1)
    s0, t = torch.randn(16, 5, generator=g), torch.randn(16, 5, generator=g)
    s = s0.clone().requires_grad_(True)
    loss, parts = w2s_loss(s, t, None, "adaptconf", w_gt=0.0, tau=0.5)
    assert not parts["alpha"].requires_grad
    (grad,) = torch.autograd.grad(loss, s)

    def reference(alpha_fn):
        s_ref = s0.clone().requires_grad_(True)
        alpha = alpha_fn(s_ref)
        ref = ((1 - alpha) * kd_per_sample(s_ref, t) + alpha * self_ce_per_sample(s_ref)).mean()
        return torch.autograd.grad(ref, s_ref)[0]

    constant = adapt_conf_alpha(s0, t, 0.5).clone()
    assert torch.allclose(grad, reference(lambda _: constant), atol=1e-7)
    live = lambda x: torch.sigmoid((self_ce_per_sample(x) - F.cross_entropy(x, t.argmax(-1), reduction="none")) / 0.5)
    assert not torch.allclose(grad, reference(live), atol=1e-4)


def test_augconf_alpha_ramps_then_holds():
    assert [aug_conf_alpha(e, 10, 0.5, 0.3) for e in range(5)] == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5, 0.5])
    assert aug_conf_alpha(0, 10, 0.5, 0.0) == 0.5


def test_pgr_and_alpha_histogram_by_hand():
    assert pgr(80.0, 70.0, 90.0) == pytest.approx(0.5)
    assert pgr(65.0, 70.0, 90.0) == pytest.approx(-0.25)
    assert math.isnan(pgr(80.0, 70.0, 70.0))
    agree_counts, disagree_counts = alpha_histogram(torch.tensor([0.5, 0.5, 0.01, 0.26, 0.49]),
                                                    torch.tensor([True, True, False, False, False]), bins=2)
    assert agree_counts.tolist() == [0, 2] and disagree_counts.tolist() == [1, 2]


def test_protocol_a_is_primary_and_every_student_is_named_by_protocol():
    cfg = load_config("w2s", "tiny").config
    assert cfg.experiment.primary_protocol == "A"
    assert [(j.name, j.protocol, j.kind) for j in student_jobs(cfg.experiment)] == [
        ("kd", "A", "kd"), ("augconf", "A", "augconf"), ("adaptconf", "A", "adaptconf"),
        ("B_kd", "B", "kd"), ("B_augconf", "B", "augconf"), ("B_adaptconf", "B", "adaptconf")]
    assert variant_knobs("kd", cfg) == {"protocol": "A", "w_gt": 1.0, "loss": "kd", "alpha_mode": "code"}
    assert variant_knobs("B_adaptconf", cfg)["w_gt"] == 0.0
    # The PPT copy and the dense student fine-tuned beside it carry the registered student's training.
    assert variant_knobs("adaptconf_ppt", cfg) == variant_knobs("adaptconf_same_finetune", cfg) == \
        variant_knobs("adaptconf", cfg)
    assert variant_knobs("weak_teacher", cfg) == variant_knobs("ceiling_gt", cfg) == {}
    ablation = load_config("w2s", "tiny", ["experiment.teacher_conf_ablation=true",
                                           "experiment.protocols=[B,A]", "experiment.primary_protocol=B"]).config
    names = [j.name for j in student_jobs(ablation.experiment)]
    assert names == ["kd", "augconf", "adaptconf", "A_kd", "A_augconf", "A_adaptconf", "adaptconf_teacher_conf"]
    assert variant_knobs("adaptconf_teacher_conf", ablation) == {"protocol": "B", "w_gt": 0.0, "loss": "adaptconf",
                                                                 "alpha_mode": "teacher_conf"}


def test_one_seed_per_run_and_each_protocol_once():
    with pytest.raises(Exception, match="experiment.seeds"):
        load_config("w2s", "tiny", ["experiment.seeds=3"])
    with pytest.raises(Exception, match="name a protocol twice"):
        load_config("w2s", "tiny", ["experiment.protocols=[A,A]"])


def test_paper_figures_come_from_protocol_a_only():
    def variant(name, loss, protocol, top1, alpha_mode="code", role="baseline"):
        return VariantResult(name, role, name, {"protocol": protocol, "loss": loss, "alpha_mode": alpha_mode},
                             {"top1": top1})

    recipe = get_recipe("w2s")
    a = [variant("adaptconf", "adaptconf", "A", 90.0, role="parent"), variant("kd", "kd", "A", 89.0),
         variant("augconf", "augconf", "A", 89.5), variant("B_adaptconf", "adaptconf", "B", 80.0),
         variant("B_kd", "kd", "B", 70.0), variant("x", "adaptconf", "A", 10.0, alpha_mode="teacher_conf")]
    figures = recipe.our_figures(Evaluation(a))
    assert figures["adaptconf_minus_kd_top1_pts"] == pytest.approx(1.0)
    assert figures["adaptconf_minus_augconf_top1_pts"] == pytest.approx(0.5)
    assert recipe.our_figures(Evaluation([v for v in a if v.knobs["protocol"] == "B"])) == {}


# ------------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("make, message", [
    (lambda: WeakConfig(label_noise=1.0), "label_noise must be < 1, got 1.0"),
    (lambda: WeakConfig(hidden=-1), "hidden must be >= 0, got -1"),
    (lambda: StudentTrainConfig(epochs=0), "epochs must be >= 1, got 0"),
    (lambda: StudentTrainConfig(lr=0.0), "lr must be > 0, got 0.0"),
    (lambda: LossConfig(aug_threshold=1.5), "aug_threshold must be <= 1, got 1.5"),
    (lambda: LossConfig(alpha_warmup=1.0), "alpha_warmup must be < 1, got 1.0"),
    (lambda: LossConfig(alpha_mode="paper"), "alpha_mode must be one of ('code', 'teacher_conf'), got 'paper'"),
])
def test_w2s_configs_name_the_bad_field_and_value(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_w2s_split_is_disjoint_complete_stratified_and_deterministic():
    labels = np.repeat(np.arange(10), 40)
    a = w2s_split(labels, 0.375, seed=3)
    assert np.intersect1d(a.weak, a.w2s).size == 0
    assert np.array_equal(np.sort(np.concatenate([a.weak, a.w2s])), np.arange(400))
    assert np.bincount(labels[a.weak]).tolist() == [15] * 10  # round(0.375 * 40) per class
    b = w2s_split(labels, 0.375, seed=3)
    assert np.array_equal(a.weak, b.weak) and np.array_equal(a.w2s, b.w2s)
    assert not np.array_equal(a.weak, w2s_split(labels, 0.375, seed=4).weak)
    with pytest.raises(ValueError, match="weak_fraction"):
        w2s_split(labels, 1.0, seed=0)


def test_noisy_labels_changes_exactly_the_requested_share_to_other_classes():
    y = torch.arange(10).repeat(20)
    noisy = noisy_labels(y, 10, 0.3, torch.Generator().manual_seed(0))
    assert int((noisy != y).sum()) == 60
    assert noisy.min() >= 0 and noisy.max() <= 9
    assert torch.equal(noisy_labels(y, 10, 0.0, torch.Generator()), y)


# ---------------------------------------------------------------------------------------- the recipe


MICRO = ["model.embed_dim=32", "model.depth=3", "compress.blocks=[1,2]", "train.epochs=1",
         "train.max_train_images=128", "experiment.teacher_conf_ablation=true", "weak.epochs=2", "evaluate.max_test_images=100", "compress.finetune.epochs=1",
         "compress.finetune.max_train_images=64", "evaluate.latency_runs=1", "evaluate.latency_warmup=0",
         "evaluate.latency_batch=8"]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("mnist5k", tmp_path_factory.mktemp("data") / "mnist5k", test_fraction=0.2, seed=0)


def test_load_data_gives_four_disjoint_splits_of_the_configured_sizes(mnist_dir: Path):
    recipe = get_recipe("w2s")
    cfg = load_config("w2s", "tiny").config
    data = recipe.load_data(step_views({"data": mnist_dir}, "evaluate"), cfg)
    # 3,500 training images cut 0.375 / 0.625 per class into weak-train and w2s-train; val and test as stored.
    assert (len(data.x_weak), len(data.x_w2s), len(data.x_val), len(data.x_test)) == (1310, 2190, 500, 1000)
    assert data.x_w2s.shape[1:] == data.x_val.shape[1:] == (1, 28, 28)
    raw = data.raw
    weak = set(image_digests(raw.x_train[data.splits.weak]))
    w2s = set(image_digests(raw.x_train[data.splits.w2s]))
    val, test = set(image_digests(raw.x_val)), set(image_digests(raw.x_test))
    parts = (weak, w2s, val, test)
    assert all(not parts[i] & parts[j] for i in range(4) for j in range(i + 1, 4))
    # Stored by class in the source; the recipe's fixed shuffle puts every class into any smoke-size prefix.
    assert len(set(data.y_w2s[:100].tolist())) == 10 and len(set(data.y_test[:100].tolist())) == 10
    assert sorted(data.y_w2s.tolist()) == sorted(raw.y_train[data.splits.w2s].tolist())
    # Training sees the same weak-train and w2s-train, in the same order, and no test image.
    fit = recipe.load_data(step_views({"data": mnist_dir}, "train"), cfg)
    assert torch.equal(fit.x_weak, data.x_weak) and torch.equal(fit.y_w2s, data.y_w2s)
    assert torch.equal(fit.x_val, data.x_val)
    with pytest.raises(TestSplitAccessError, match="split 'test' of dataset 'data' is withheld from the train step"):
        fit.x_test[:10]


def test_recipe_trains_every_variant_and_evaluates_them(mnist_dir: Path):
    assert "w2s" in available_recipes()
    recipe = get_recipe("w2s")
    cfg = load_config("w2s", "tiny", MICRO).config
    data = recipe.load_data(step_views({"data": mnist_dir}, "train"), cfg)  # test split withheld
    model = recipe.build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reporter = RecordingReporter()
    trained = recipe.train(model, data, cfg, reporter)
    metrics = trained.metrics
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # trained in place
    students = ["kd", "augconf", "B_kd", "B_augconf", "B_adaptconf", "adaptconf_teacher_conf"]
    assert set(trained.companions) == {"weak_teacher", "ceiling_gt", *students}
    for name in ["weak_teacher", "ceiling_gt", "adaptconf", *students]:
        assert 0.0 <= metrics[f"{name}.val_top1"] <= 100.0
    assert not any("test" in k for k in metrics)  # train reports val figures only
    assert metrics["val_top1"] == metrics["adaptconf.val_top1"]
    assert metrics["kd.val_pgr"] == pytest.approx(
        pgr(metrics["kd.val_top1"], metrics["weak_teacher.val_top1"], metrics["ceiling_gt.val_top1"]))
    assert 0.0 <= metrics["adaptconf.alpha_min"] and metrics["adaptconf.alpha_max"] <= 0.5
    assert metrics["adaptconf_teacher_conf.alpha_max"] <= 1.0
    hist = sum(metrics[k] for k in metrics if k.startswith("alpha_hist."))
    assert hist == 128  # every w2s-train sample of the last epoch, registered student only
    assert "alpha_histogram" in reporter.figures and reporter.tables["corrected_share_by_epoch"]
    # Companions are rebuilt from their tensors as the platform does: strict load into companion_module.
    rebuilt = {}
    for name, companion in trained.companions.items():
        module = recipe.companion_module(name, cfg, companion.knobs)
        module.load_state_dict(companion.module.state_dict(), strict=True)
        rebuilt[name] = module.eval()

    dense = model
    compressed = recipe.compress(__import__("copy").deepcopy(model), data, cfg, reporter)
    assert compressed.method == "ppt" and compressed.knobs["r"] == cfg.compress.r
    assert set(compressed.companions) == {"adaptconf_same_finetune"}
    assert not torch.equal(compressed.companions["adaptconf_same_finetune"].module.state_dict()["head.weight"],
                           dense.state_dict()["head.weight"])  # the dense student fine-tuned too
    rebuilt["adaptconf_same_finetune"] = compressed.companions["adaptconf_same_finetune"].module
    data = recipe.load_data(step_views({"data": mnist_dir}, "evaluate"), cfg)
    evaluation = recipe.evaluate(RunModels(dense, compressed.model, rebuilt, metrics), data, cfg, reporter)
    roles = {v.name: v.role for v in evaluation.variants}
    assert roles == {"adaptconf": "parent", "adaptconf_ppt": "method", "weak_teacher": "baseline",
                     "ceiling_gt": "baseline", "kd": "baseline", "augconf": "baseline", "B_kd": "baseline",
                     "B_augconf": "baseline", "B_adaptconf": "ablation", "adaptconf_teacher_conf": "ablation",
                     "adaptconf_same_finetune": "baseline"}
    by_name = {v.name: v for v in evaluation.variants}
    for v in evaluation.variants:
        # Per-image top-1 on the same 100 test images for every model; its mean is the variant's top-1.
        assert v.per_item["top1"].shape == (100,) and set(np.unique(v.per_item["top1"])) <= {0.0, 100.0}
        assert v.metrics["top1"] == pytest.approx(v.per_item["top1"].mean())
    weak_logits = rebuilt["weak_teacher"](data.x_test)
    assert np.array_equal(by_name["weak_teacher"].per_item["top1"],
                          100.0 * (weak_logits.argmax(-1) == data.y_test).numpy())
    weak, ceiling = by_name["weak_teacher"].metrics["top1"], by_name["ceiling_gt"].metrics["top1"]
    assert by_name["B_kd"].metrics["pgr"] == pytest.approx(pgr(by_name["B_kd"].metrics["top1"], weak, ceiling))
    method = by_name["adaptconf_ppt"].metrics
    assert method["macs_ratio"] < 1.0 and "delta_vs_parent" in method
    assert by_name["adaptconf_ppt"].knobs["protocol"] == "A" and by_name["adaptconf_ppt"].knobs["r"] == 4
    assert "alpha_histogram" in evaluation.figures
    figures = recipe.our_figures(evaluation)
    assert figures["adaptconf_minus_kd_top1_pts"] == pytest.approx(
        by_name["adaptconf"].metrics["top1"] - by_name["kd"].metrics["top1"])
    probs = recipe.predict(compressed.model, recipe.input_example(data, 3))
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_compression_round_trips_through_recorded_knobs():
    recipe = get_recipe("w2s")
    cfg = load_config("w2s", "tiny", ["model.embed_dim=32"]).config
    dense = recipe.build_model(cfg)
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    knobs = {"method": "ppt", "r": 4, "blocks": [1, 2], "tau": 1e-2, "tau_cv": 1.52, "prop_attn": True}
    compressed = recipe.restore_compression(dense, knobs)
    rebuilt = recipe.build_model(cfg)
    rebuilt.load_state_dict(state)
    rebuilt = recipe.restore_compression(rebuilt, knobs)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(compressed(x), rebuilt(x), atol=1e-6)


def test_config_rejects_a_primary_protocol_that_is_not_run():
    with pytest.raises(Exception, match="primary_protocol"):
        load_config("w2s", "tiny", ["experiment.protocols=[B]"])
