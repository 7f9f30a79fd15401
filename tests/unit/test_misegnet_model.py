"""MI-SegNet (models/misegnet.py): shapes, the official layer sizes, the losses and the DV / MINE estimates on
hand-computed cases, and which modules each line of the training schedule moves."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.misegnet import (
    MineAverage,
    MineCritic,
    MISegNet,
    MISegNetConfig,
    MISegNetTrainer,
    TrainConfig,
    critic_loss,
    cross_reconstruction_loss,
    dv_bound,
    mi_loss,
    mutual_information_estimate,
    reconstruction_loss,
    segmentation_loss,
    soft_dice_loss,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MODULES = ("anatomy_encoder", "seg_decoder", "domain_encoder", "rec_decoder", "critic")
SMALL = MISegNetConfig(image_size=32, anatomy_base=4, domain_base=4, critic_width=8)


def small_model(seed: int = 0, cfg: MISegNetConfig = SMALL) -> MISegNet:
    torch.manual_seed(seed)
    return MISegNet(cfg)


def paired_batch(b: int = 2, size: int = 32, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = {k: torch.rand(b, 1, size, size, generator=g) for k in ("x1", "x2", "x12", "x21")}
    masks = {k: (torch.rand(b, 1, size, size, generator=g) > 0.7).float() for k in ("y1", "y2")}
    return images | masks


def parameters_of(model: MISegNet) -> dict[str, list[torch.Tensor]]:
    return {name: [p.detach().clone() for p in getattr(model, name).parameters()] for name in MODULES}


def moved(before: dict[str, list[torch.Tensor]], model: MISegNet) -> set[str]:
    """The modules any of whose parameters differ from `before`."""
    return {name for name in MODULES
            if any(not torch.equal(a, b) for a, b in zip(before[name], getattr(model, name).parameters()))}


# --- shapes and configuration -----------------------------------------------------------------------------------------


def test_default_config_is_the_quarter_width_miniature_at_128_px():
    torch.manual_seed(0)
    model = MISegNet(MISegNetConfig())
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        z_a, z_d = model.encode_anatomy(x), model.encode_domain(x)
        logits, recon = model(x), model.reconstruct(x, x)
        scores = model.critic(z_a, z_d)
    assert z_a.shape == (2, 256, 8, 8) and z_d.shape == (2, 64, 8, 8)
    assert logits.shape == (2, 1, 128, 128)
    assert recon.shape == (2, 1, 128, 128) and float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    assert scores.shape == (2,)
    # logits, not probabilities: a random-init decoder has values outside [0, 1]
    assert float(logits.min()) < 0.0 or float(logits.max()) > 1.0


def test_full_width_256_px_config_has_the_official_parameter_counts():
    # counted on the official MI_SegNet.py: Seg_encoder_LM(1, 64, 2), Seg_decoder_LM(1, 64, 2), Recon_encoder_LM(1, 16),
    # Recon_decoder_LM(1024, 256, 1, 16), Mine_Conv(1024, 256, 64)
    model = MISegNet(MISegNetConfig(image_size=256, anatomy_base=64, domain_base=16, critic_width=64))
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in MODULES}
    assert counts == {"anatomy_encoder": 44_594_624, "seg_decoder": 15_498_305, "domain_encoder": 787_712,
                      "rec_decoder": 901_809, "critic": 6_458_689}


@pytest.mark.parametrize("size, domain_channels", [(32, 16), (64, 32)])
def test_smaller_images_keep_z_at_8x8(size, domain_channels):
    cfg = MISegNetConfig(image_size=size, anatomy_base=4)  # domain_base 8: z_d doubles per extra block
    model = small_model(cfg=cfg)
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        assert model.encode_anatomy(x).shape == (2, 64, 8, 8)
        assert model.encode_domain(x).shape == (2, cfg.domain_channels, 8, 8) == (2, domain_channels, 8, 8)
        assert model(x).shape == model.reconstruct(x, x).shape == (2, 1, size, size)


@pytest.mark.parametrize("kwargs, field", [({"image_size": 100}, "image_size"), ({"image_size": 512}, "image_size"),
                                           ({"anatomy_base": 0}, "anatomy_base"), ({"domain_base": 0}, "domain_base"),
                                           ({"critic_width": 0}, "critic_width"), ({"in_channels": 0}, "in_channels")])
def test_bad_model_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MISegNetConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field", [({"lr": 0.0}, "lr"), ({"critic_lr": -1.0}, "critic_lr"),
                                           ({"critic_steps": 0}, "critic_steps"), ({"ma_rate": 0.0}, "ma_rate")])
def test_bad_train_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_images_of_the_wrong_size_are_refused():
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        small_model()(torch.rand(2, 1, 64, 64))


def test_inputs_are_normalised_inside_the_model():
    model = small_model().eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode_anatomy(x), model.anatomy_encoder(2 * x - 1))
        assert torch.equal(model.encode_domain(x), model.domain_encoder(2 * x - 1))


def test_reconstruct_takes_anatomy_from_the_first_image_and_domain_from_the_second():
    model = small_model().eval()
    xa, xd = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = model.rec_decoder(model.encode_anatomy(xa), model.encode_domain(xd))
        assert torch.equal(model.reconstruct(xa, xd), expected)
        assert not torch.allclose(model.reconstruct(xd, xa), expected)
        assert torch.allclose(cross_reconstruction_loss(model, xa, xd, xd), (expected - xd).abs().mean())
        assert torch.allclose(reconstruction_loss(model, xa), (model.reconstruct(xa, xa) - xa).abs().mean())


def test_segmentation_never_sees_the_domain_branch():
    model = small_model()
    x, y = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    segmentation_loss(model(x), y).backward()
    assert all(p.grad is None for name in ("domain_encoder", "rec_decoder", "critic")
               for p in getattr(model, name).parameters())
    assert all(p.grad is not None for p in model.anatomy_encoder.parameters())
    model.eval()
    with torch.no_grad():
        before = model(x)
        for p in [*model.domain_encoder.parameters(), *model.rec_decoder.parameters(), *model.critic.parameters()]:
            p.normal_()
        assert torch.equal(model(x), before)


# --- losses -----------------------------------------------------------------------------------------------------------


def test_soft_dice_exact_and_pooled_over_the_batch():
    p = torch.tensor([0.9, 0.2, 0.1, 0.6]).view(2, 1, 1, 2)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(2, 1, 1, 2)
    # sum p*y = 1.5, sum p = 1.8, sum y = 2
    assert soft_dice_loss(p, y).item() == pytest.approx(1 - (2 * 1.5 + 2) / (1.8 + 2 + 2))
    per_image = torch.stack([soft_dice_loss(p[i], y[i]) for i in range(2)]).mean()
    assert soft_dice_loss(p, y).item() != pytest.approx(per_image.item())


def test_segmentation_loss_exact():
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    y = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # BCE = log 2 per pixel; Dice: 1 - (2 * 0.5 + 2) / (2 + 1 + 2) = 0.4
    assert segmentation_loss(logits, y).item() == pytest.approx(math.log(2) + 0.4)
    confident = segmentation_loss(torch.full((1, 1, 2, 2), 30.0), torch.ones(1, 1, 2, 2))
    assert confident.item() == pytest.approx(0, abs=1e-6)


def dot_critic(scale: float = 1.0):
    """T(a, b) = scale * <a, b>, per row."""
    return lambda a, b: scale * (a * b).flatten(1).sum(1)


def test_dv_bound_exact_on_a_hand_computed_case():
    z_a = torch.tensor([[1.0], [2.0]])
    z_d = torch.tensor([[1.0], [0.0]])
    # joint: T = [1, 0]; marginal with the swap: T = [1*0, 2*1] = [0, 2]
    expected = 0.5 - math.log((1 + math.e**2) / 2)
    assert dv_bound(dot_critic(), z_a, z_d, torch.tensor([1, 0])).item() == pytest.approx(expected)
    assert mi_loss(dot_critic(), z_a, z_d, torch.tensor([1, 0])).item() == pytest.approx(math.exp(expected) - 1)
    # the identity permutation pairs joint with joint: mean T - log mean exp T
    assert dv_bound(dot_critic(), z_a, z_d, torch.tensor([0, 1])).item() == pytest.approx(
        0.5 - math.log((math.e + 1) / 2))


def test_dv_bound_is_stable_for_large_scores():
    z = torch.tensor([[1.0], [2.0]])
    value = dv_bound(dot_critic(500.0), z, z, torch.tensor([1, 0]))  # exp(2000) overflows float32
    # joint [500, 2000], marginal [1000, 1000]: 1250 - 1000
    assert value.item() == pytest.approx(250.0)


def test_dv_bound_on_gaussians_near_zero_when_independent_positive_when_dependent():
    g = torch.Generator().manual_seed(0)
    n = 20_000
    a, noise, other = (torch.randn(n, 1, generator=g) for _ in range(3))
    perm = torch.randperm(n, generator=g)
    critic = dot_critic(0.2)  # log E exp(0.2 a b) = -log(1 - 0.04) / 2 for independent unit Gaussians
    independent = dv_bound(critic, a, other, perm).item()
    dependent = dv_bound(critic, a, a + 0.1 * noise, perm).item()  # ~ 0.2 - 0.0204
    assert independent == pytest.approx(0.5 * math.log(1 - 0.04), abs=0.02)
    assert dependent == pytest.approx(0.2 - 0.5 * -math.log(1 - 0.04), abs=0.03)


def test_mine_moving_average_update():
    average = MineAverage(rate=0.1)
    assert average.update(2.0) == 2.0  # starts at the first batch's value, like the official ma_et
    assert average.update(4.0) == pytest.approx(2.2)
    assert average.update(1.0) == pytest.approx(2.08)
    assert average.value == pytest.approx(2.08)


def test_critic_loss_value_and_bias_corrected_gradient():
    w = torch.tensor(0.5, requires_grad=True)
    critic = lambda a, b: w * (a * b).flatten(1).sum(1)  # noqa: E731
    z_a, z_d, perm = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [0.0]]), torch.tensor([1, 0])
    average = MineAverage(rate=0.5, value=3.0)
    # joint ab = [1, 0], marginal ab = [0, 2]; e = mean exp(w * [0, 2]) = (1 + e) / 2; m = 3 + 0.5 * (e - 3)
    e = (1 + math.e) / 2
    m = 3 + 0.5 * (e - 3)
    loss = critic_loss(critic, z_a, z_d, perm, average)
    assert average.value == pytest.approx(m)
    assert loss.item() == pytest.approx(-(0.5 * 0.5 - math.log(e) * e / m))
    loss.backward()
    # d/dw: -(mean joint ab - mean(exp(w * ab_marg) * ab_marg) / m) = -(0.5 - (e^1 * 2 / 2) / m)
    assert w.grad.item() == pytest.approx(-(0.5 - math.e / m))


def test_official_critic_cannot_see_dependence():
    """The official head is affine, so T(a, d) = F(a) + G(d) and the DV bound is <= 0 for any batch and shuffle."""
    torch.manual_seed(0)
    critic = MineCritic(8, 8, 8)
    z = torch.randn(16, 8, 8, 8)
    for mode in (True, False):  # BatchNorm on batch statistics and on running statistics
        critic.train(mode)
        for seed in range(3):
            perm = torch.randperm(16, generator=torch.Generator().manual_seed(seed))
            assert dv_bound(critic, z, z, perm).item() <= 1e-6  # identical z_a and z_d


def train_critic(nonlinear_head: bool, dependent: bool, steps: int = 150) -> float:
    torch.manual_seed(0)
    critic = MineCritic(4, 4, 8, nonlinear_head)
    optimiser = torch.optim.Adam(critic.parameters(), lr=3e-3)
    average = MineAverage(rate=0.01)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.randn(n, 4, 8, 8)
        return a, (a + 0.3 * torch.randn(n, 4, 8, 8)) if dependent else torch.randn(n, 4, 8, 8)

    for _ in range(steps):
        a, d = sample(64)
        optimiser.zero_grad()
        critic_loss(critic, a, d, torch.randperm(64), average).backward()
        optimiser.step()
    critic.eval()
    a, d = sample(512)
    with torch.no_grad():
        return dv_bound(critic, a, d, torch.randperm(512)).item()


def test_trained_nonlinear_critic_separates_dependent_from_independent_features():
    assert train_critic(True, dependent=True) > 0.4
    assert abs(train_critic(True, dependent=False)) < 0.05
    assert train_critic(False, dependent=True) < 0.01  # the official head: at most ~0 however dependent


# --- training schedule ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    ("seg", {"anatomy_encoder", "seg_decoder"}),
    ("rec", {"anatomy_encoder", "domain_encoder", "rec_decoder"}),
    ("cross", {"anatomy_encoder", "domain_encoder", "rec_decoder"}),
    ("mi", {"anatomy_encoder", "domain_encoder"}),
    ("critic", {"critic"}),
])
def test_each_schedule_line_moves_only_its_modules(line, expected):
    model = small_model()
    trainer = MISegNetTrainer(model, TrainConfig(lr=1e-3, critic_lr=1e-3), torch.Generator().manual_seed(0))
    b = paired_batch(4)
    run = {"seg": lambda: trainer.seg_step(b["x1"], b["y1"]), "rec": lambda: trainer.rec_step(b["x1"]),
           "cross": lambda: trainer.cross_step(b["x2"], b["x1"], b["x12"]), "mi": lambda: trainer.mi_step(b["x1"]),
           "critic": lambda: trainer.critic_step(b["x1"])}
    before = parameters_of(model)
    loss = run[line]()
    assert math.isfinite(loss)
    assert moved(before, model) == expected


def recorded_schedule(cfg: TrainConfig) -> tuple[list[tuple[str, ...]], set[str]]:
    trainer = MISegNetTrainer(small_model(), cfg)
    b = paired_batch()
    names = {id(v): k for k, v in b.items()}
    calls: list[tuple[str, ...]] = []

    def recorder(line: str):
        return lambda *xs: calls.append((line, *(names[id(x)] for x in xs))) or 0.0

    for line in ("seg", "rec", "cross", "mi", "critic"):
        setattr(trainer, f"{line}_step", recorder(line))
    losses = trainer.step(**b)
    return calls, set(losses)


def test_step_follows_the_official_order():
    calls, keys = recorded_schedule(TrainConfig(critic_steps=2))
    assert calls == [("seg", "x1", "y1"), ("seg", "x2", "y2"), ("rec", "x1"), ("rec", "x2"),
                     ("cross", "x2", "x1", "x12"), ("cross", "x1", "x2", "x21"), ("mi", "x1"), ("mi", "x2"),
                     ("critic", "x1"), ("critic", "x2"), ("critic", "x1"), ("critic", "x2")]
    assert keys == {"seg_1", "seg_2", "rec_1", "rec_2", "cross_12", "cross_21", "mi_1", "mi_2", "critic_1", "critic_2"}


@pytest.mark.parametrize("cfg, dropped", [
    (TrainConfig(use_mi=False), {"mi"}),
    (TrainConfig(use_cross=False), {"cross"}),
    (TrainConfig(use_mi=False, use_cross=False), {"mi", "cross"}),
    (TrainConfig(segmentation_only=True), {"rec", "cross", "mi", "critic"}),
])
def test_ablation_switches_drop_their_lines(cfg, dropped):
    full, _ = recorded_schedule(TrainConfig())
    calls, keys = recorded_schedule(cfg)
    assert calls == [c for c in full if c[0] not in dropped]
    assert not any(k.startswith(tuple(dropped)) for k in keys)


def test_segmentation_only_step_leaves_the_other_modules_untouched():
    model = small_model()
    states = {name: {k: v.clone() for k, v in getattr(model, name).state_dict().items()} for name in MODULES}
    losses = MISegNetTrainer(model, TrainConfig(segmentation_only=True)).step(**paired_batch())
    assert set(losses) == {"seg_1", "seg_2"}
    for name in MODULES:  # buffers too: the unused modules are not even run
        same = all(torch.equal(v, getattr(model, name).state_dict()[k]) for k, v in states[name].items())
        assert same == (name in ("domain_encoder", "rec_decoder", "critic")), name


def test_full_step_moves_every_module_and_keeps_the_moving_average():
    model = small_model()
    trainer = MISegNetTrainer(model, TrainConfig(critic_steps=1), torch.Generator().manual_seed(0))
    before = parameters_of(model)
    losses = trainer.step(**paired_batch())
    assert moved(before, model) == set(MODULES)
    assert all(math.isfinite(v) for v in losses.values())
    assert trainer.average.value is not None and trainer.average.value > 0


# --- evaluation -------------------------------------------------------------------------------------------------------


def test_mutual_information_estimate_is_exact_dv_in_eval_mode_and_restores_the_mode():
    model = small_model(cfg=MISegNetConfig(image_size=32, anatomy_base=4, domain_base=4, critic_width=8,
                                           critic_nonlinear_head=True))
    x = torch.rand(10, 1, 32, 32)
    estimate = mutual_information_estimate(model, x, batch_size=3, generator=torch.Generator().manual_seed(5))
    assert model.training
    model.eval()
    with torch.no_grad():
        perm = torch.randperm(10, generator=torch.Generator().manual_seed(5))
        expected = dv_bound(model.critic, model.encode_anatomy(x), model.encode_domain(x), perm).item()
    assert estimate == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        mutual_information_estimate(model, x[:1])


def test_losses_match_their_formulas_on_the_model():
    model = small_model().eval()
    x, y = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    with torch.no_grad():
        logits = model(x)
        p = torch.sigmoid(logits)
        expected = F.binary_cross_entropy(p, y) + 1 - (2 * (p * y).sum() + 2) / (p.sum() + y.sum() + 2)
        assert segmentation_loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-5)
