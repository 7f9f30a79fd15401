"""MI-SegNet — mutual-information disentanglement for ultrasound segmentation (Bi, Jiang, Clarenbach, Ghotbi, Karlas,
Navab, MICCAI 2023, arXiv 2303.12649), in plain PyTorch. The official code is yuan-12138/MI-SegNet (MI_SegNet.py for
the networks, train_MI_SegNet.py for the losses and the update order); layer for layer this file follows it.

    E_a  anatomy encoder   ResNet-like: 7x7/2 conv, 3x3/2 max-pool, 4 residual layers (2 basic blocks each)  -> z_a
    D_s  seg. decoder      [2x2/2 transposed conv + BN + ReLU + residual layer] per upsampling, 1x1 conv     -> logits
    E_d  domain encoder    conv + GroupNorm + ReLU stack, one stride-2 conv and avg-pools, a last conv        -> z_d
    D_r  recon. decoder    concat(z_a, z_d), transposed-conv upsampling with GroupNorm, 1x1 conv, sigmoid   -> image
    T    MINE critic       one conv branch each for z_a and z_d, the two vectors summed, Linear -> Linear   -> scalar
z_a and z_d are both 8x8 maps. Segmentation reads z_a only; the serving path (`MISegNet.forward`) is D_s(E_a(x)).

    L_seg(x, y)   = BCE(p, y) + 1 - (2 sum p*y + 2) / (sum p + sum y + 2),   p = sigmoid(D_s(E_a(x))), whole batch
    L_rec(x)      = mean |D_r(E_a(x), E_d(x)) - x|
    L_cross       = mean |D_r(E_a(x2), E_d(x1)) - x12|  (and the same with 1 <-> 2 against x21)
    I^(z_a; z_d)  = mean T(z_a, z_d) - log mean exp T(z_a, z~_d),  z~_d = z_d shuffled over the batch (Donsker-Varadhan)
                    (with the official affine critic head I^ <= 0 on every batch: see MineCritic)
    L_MI          = ELU(I^), minimised by E_a and E_d; the critic maximises I^ with MINE's bias-corrected gradient.

One training step (`MISegNetTrainer.step`) runs the official schedule, each line its own forward, backward and Adam
steps of the modules named: L_seg(x1), L_seg(x2) -> E_a, D_s; L_rec(x1), L_rec(x2) -> E_a, E_d, D_r; L_cross to x12,
L_cross to x21 -> E_a, E_d, D_r; L_MI(x1), L_MI(x2) -> E_a, E_d; 5 x [critic(x1), critic(x2)] -> T.

Images everywhere in this file's public API are raw intensities in [0, 1], (B, C, S, S). The normalisation
(x - 0.5) / 0.5 of the official script lives in `MISegNet.encode_anatomy` / `encode_domain`, so the served input, the
training inputs and the reconstruction targets are the same [0, 1] tensors and no caller can forget it.

Widths: the default config is the spec's quarter-width miniature at 128 px (E_a base 16 -> z_a 256 channels, E_d base
8 -> z_d 64 channels, critic width 32). image_size 256 with anatomy_base 64, domain_base 16, critic_width 64 is the
official network (the tests check its parameter counts). Smaller images drop downsamplings so z stays 8x8.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.common.checks import at_least, positive

LATENT_SIZE = 8  # z_a and z_d are LATENT_SIZE x LATENT_SIZE maps, as in the original at 256 px
SUPPORTED_IMAGE_SIZES = (32, 64, 128, 256)  # LATENT_SIZE * 2**n for the n = 2..5 downsamplings E_a can make


@dataclass(frozen=True)
class MISegNetConfig:
    image_size: int = 128  # square images; z is 8x8, so 128 px makes four downsamplings where the original made five
    in_channels: int = 1
    anatomy_base: int = 16  # E_a stem width; its residual layers are 2x, 4x, 8x, 16x this (z_a has 16 * base channels)
    domain_base: int = 8  # E_d first width, doubled per block; z_d has 2x the last block's width (64 at 128 px)
    critic_width: int = 32  # MINE critic: the width of each branch's output vector and of the Linear layers
    # ASSUMED option, not in the official code: a ReLU between the critic's two Linear layers. The official head is
    # affine, so T(z_a, z_d) = F(z_a) + G(z_d) and its DV bound is <= 0 on every batch (see MineCritic); only the
    # nonlinear head can register dependence between z_a and z_d.
    critic_nonlinear_head: bool = False

    def __post_init__(self) -> None:
        at_least(self, 1, "in_channels", "anatomy_base", "domain_base", "critic_width")
        if self.image_size not in SUPPORTED_IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {SUPPORTED_IMAGE_SIZES} (8 * 2**n, n = 2..5, so that z is "
                             f"{LATENT_SIZE}x{LATENT_SIZE}), got {self.image_size!r}")

    @property
    def downsamplings(self) -> int:
        """Halvings from the image to z: 5 at 256 px (the original), 4 at 128 px."""
        return int(math.log2(self.image_size // LATENT_SIZE))

    @property
    def anatomy_channels(self) -> int:
        return 16 * self.anatomy_base

    @property
    def domain_channels(self) -> int:
        return self.domain_base * 2 ** (self.downsamplings - 1)


# ---------------------------------------------------------------------------------------------------------------------
# Networks


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the (projected) input, ReLU. The 3x3 convs
    keep their bias, as in the official Res_block."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, c_out, H/stride, W/stride)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def residual_layer(c_in: int, c_out: int, stride: int = 1, blocks: int = 2) -> nn.Sequential:
    """`blocks` basic blocks; only the first changes width and resolution."""
    return nn.Sequential(BasicBlock(c_in, c_out, stride), *(BasicBlock(c_out, c_out) for _ in range(blocks - 1)))


class AnatomyEncoder(nn.Module):
    """E_a: (B, C, S, S) normalised image -> z_a (B, 16*base, 8, 8)."""

    def __init__(self, cfg: MISegNetConfig) -> None:
        super().__init__()
        b = cfg.anatomy_base
        # The stem halves twice; of layers 2-4 the first (downsamplings - 2) halve again. The original (256 px)
        # halves in all three. ASSUMED: at smaller images the last layers keep their resolution (layer 4 at 128 px).
        strides = [2 if i < cfg.downsamplings - 2 else 1 for i in range(3)]
        self.net = nn.Sequential(
            nn.Conv2d(cfg.in_channels, b, 7, stride=2, padding=3, bias=False),  # (B, b, S/2, S/2)
            nn.BatchNorm2d(b),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),  # (B, b, S/4, S/4)
            residual_layer(b, 2 * b),
            residual_layer(2 * b, 4 * b, strides[0]),
            residual_layer(4 * b, 8 * b, strides[1]),
            residual_layer(8 * b, 16 * b, strides[2]),  # (B, 16b, 8, 8)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SegmentationDecoder(nn.Module):
    """D_s: z_a (B, 16*base, 8, 8) -> mask logits (B, 1, S, S). The official decoder ends in a sigmoid; this one
    returns logits, and `segmentation_loss` applies the sigmoid (BCE on logits is the same value, computed stably)."""

    def __init__(self, cfg: MISegNetConfig) -> None:
        super().__init__()
        b = cfg.anatomy_base
        # The original's five stages end at widths 8b, 4b, 2b, b, b. ASSUMED: with fewer downsamplings the last
        # stages are dropped (at 128 px: 8b, 4b, 2b, b).
        widths = [8 * b, 4 * b, 2 * b, b, b][: cfg.downsamplings]
        stages: list[nn.Module] = []
        c_in = 16 * b
        for c_out in widths:  # each stage doubles the resolution
            stages += [nn.ConvTranspose2d(c_in, c_out, 2, stride=2), nn.BatchNorm2d(c_out), nn.ReLU(),
                       residual_layer(c_out, c_out)]
            c_in = c_out
        self.net = nn.Sequential(*stages, nn.Conv2d(c_in, 1, 1))

    def forward(self, z_a: torch.Tensor) -> torch.Tensor:
        return self.net(z_a)  # (B, 1, S, S)


def conv_gn_relu(c_in: int, c_out: int, groups: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=1), nn.GroupNorm(groups, c_out), nn.ReLU()]


class DomainEncoder(nn.Module):
    """E_d: (B, C, S, S) normalised image -> z_d (B, domain_channels, 8, 8).

    Block k (width base * 2**k, 2**k GroupNorm groups as in the official code at base 16) is three conv-GN-ReLU
    and a 2x2 average pool; block 0's second conv is the 4x4 stride-2 one. The original at 256 px has 4 blocks;
    each missing downsampling drops the last block (3 at 128 px). A final 3x3 conv doubles the width."""

    def __init__(self, cfg: MISegNetConfig) -> None:
        super().__init__()
        b = cfg.domain_base
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        for k in range(cfg.downsamplings - 1):
            c, g = b * 2**k, 2**k
            middle = conv_gn_relu(c, c, g, kernel=4, stride=2) if k == 0 else conv_gn_relu(c, c, g)
            layers += [*conv_gn_relu(c_in, c, g), *middle, *conv_gn_relu(c, c, g), nn.AvgPool2d(2)]
            c_in = c
        self.net = nn.Sequential(*layers, nn.Conv2d(c_in, 2 * c_in, 3, padding=1))  # no norm/ReLU on z_d, as official

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ReconstructionDecoder(nn.Module):
    """D_r: z_a (B, Ca, 8, 8), z_d (B, Cd, 8, 8) -> image (B, C, S, S) in [0, 1]. Mirrors E_d's blocks: a transposed
    conv (x2, the last x4: E_d's stride-2 conv plus its first pool) + GN + ReLU, then conv3x3 + GN + ReLU."""

    def __init__(self, cfg: MISegNetConfig) -> None:
        super().__init__()
        b = cfg.domain_base
        layers: list[nn.Module] = []
        c_in = cfg.anatomy_channels + cfg.domain_channels
        for k in reversed(range(cfg.downsamplings - 1)):
            c, g, up = b * 2**k, 2**k, 4 if k == 0 else 2
            layers += [nn.ConvTranspose2d(c_in, c, up, stride=up), nn.GroupNorm(g, c), nn.ReLU(),
                       *conv_gn_relu(c, c, g)]
            c_in = c
        self.net = nn.Sequential(*layers, nn.Conv2d(c_in, cfg.in_channels, 1), nn.Sigmoid())

    def forward(self, z_a: torch.Tensor, z_d: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z_a, z_d], dim=1))  # (B, C, S, S)


def critic_branch(c_in: int, width: int) -> nn.Sequential:
    """(B, c_in, 8, 8) -> (B, width): two conv-BN-ReLU-avgpool stages (8 -> 4 -> 2), a conv-BN to `width` (no ReLU, as
    official) and a pool to 1x1 (the official AvgPool2d(2, stride 1) on the 2x2 map is the same)."""
    c1, c2 = max(c_in // 2, width), max(c_in // 4, width)
    return nn.Sequential(
        nn.Conv2d(c_in, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(c2, width, 3, padding=1), nn.BatchNorm2d(width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


class MineCritic(nn.Module):
    """T: (z_a, z_d) -> (B,) scores. The two branch vectors are summed, then Linear -> Linear.

    The official Mine_Conv has no nonlinearity between the two Linear layers, so T(a, d) = F(a) + G(d) is additively
    separable. Shuffling d over a batch keeps the mean of such scores (and BatchNorm's batch statistics), so
    mean T(joint) = mean T(marginal) <= log mean exp T(marginal) (Jensen): the DV bound is <= 0 for every batch
    and permutation, whatever the dependence, and the critic's best is a constant T (bound 0).
    `nonlinear_head=True` puts a ReLU between the layers (ASSUMED, not official), which removes that limit."""

    def __init__(self, channels_a: int, channels_d: int, width: int, nonlinear_head: bool = False) -> None:
        super().__init__()
        self.branch_a = critic_branch(channels_a, width)
        self.branch_d = critic_branch(channels_d, width)
        between = [nn.ReLU()] if nonlinear_head else []
        self.head = nn.Sequential(nn.Linear(width, width), *between, nn.Linear(width, 1))

    def forward(self, z_a: torch.Tensor, z_d: torch.Tensor) -> torch.Tensor:
        return self.head(self.branch_a(z_a) + self.branch_d(z_d)).squeeze(-1)  # (B,)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] image -> [-1, 1] network input: the official transforms.Normalize(0.5, 0.5)."""
    return (x - 0.5) / 0.5


class MISegNet(nn.Module):
    """E_a, D_s, E_d, D_r and the critic. All methods take raw [0, 1] images (B, C, S, S)."""

    def __init__(self, cfg: MISegNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.anatomy_encoder = AnatomyEncoder(cfg)
        self.seg_decoder = SegmentationDecoder(cfg)
        self.domain_encoder = DomainEncoder(cfg)
        self.rec_decoder = ReconstructionDecoder(cfg)
        self.critic = MineCritic(cfg.anatomy_channels, cfg.domain_channels, cfg.critic_width,
                                 cfg.critic_nonlinear_head)

    def _check(self, x: torch.Tensor) -> None:
        expected = (self.cfg.in_channels, self.cfg.image_size, self.cfg.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected images shaped (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")

    def encode_anatomy(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.anatomy_encoder(normalise(x))  # (B, Ca, 8, 8)

    def encode_domain(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.domain_encoder(normalise(x))  # (B, Cd, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The served path: mask logits (B, 1, S, S) = D_s(E_a(x)); E_d, D_r and the critic are not used."""
        return self.seg_decoder(self.encode_anatomy(x))

    def reconstruct(self, x_anatomy: torch.Tensor, x_domain: torch.Tensor) -> torch.Tensor:
        """D_r(E_a(x_anatomy), E_d(x_domain)): the anatomy of one image in the appearance of another, in [0, 1]."""
        return self.rec_decoder(self.encode_anatomy(x_anatomy), self.encode_domain(x_domain))


# ---------------------------------------------------------------------------------------------------------------------
# Losses and the mutual-information estimate

Critic = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z_a, z_d) -> (B,) or (B, 1) scores


def soft_dice_loss(p: torch.Tensor, y: torch.Tensor, smooth: float = 2.0) -> torch.Tensor:
    """1 - (2 sum p*y + smooth) / (sum p + sum y + smooth), summed over the whole batch (not per image)."""
    return 1 - (2 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth)


def segmentation_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_seg = BCE + soft Dice (smooth 2) on p = sigmoid(logits); y is the 0/1 mask, shaped like logits."""
    return F.binary_cross_entropy_with_logits(logits, y) + soft_dice_loss(torch.sigmoid(logits), y)


def reconstruction_loss(model: MISegNet, x: torch.Tensor) -> torch.Tensor:
    """L_rec(x) = mean |D_r(E_a(x), E_d(x)) - x|."""
    return F.l1_loss(model.reconstruct(x, x), x)


def cross_reconstruction_loss(model: MISegNet, x_anatomy: torch.Tensor, x_domain: torch.Tensor,
                              target: torch.Tensor) -> torch.Tensor:
    """One L_cross term: mean |D_r(E_a(x_anatomy), E_d(x_domain)) - target|, target = x_domain's appearance with
    x_anatomy's geometry (x12 for x_anatomy = x2, x_domain = x1)."""
    return F.l1_loss(model.reconstruct(x_anatomy, x_domain), target)


def _joint_and_marginal(critic: Critic, z_a: torch.Tensor, z_d: torch.Tensor,
                        permutation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) scores on the joint pairs (z_a_i, z_d_i) and on product-of-marginals pairs (z_a_i, z_d_perm(i))."""
    return critic(z_a, z_d).reshape(-1), critic(z_a, z_d[permutation]).reshape(-1)


def _log_mean_exp(t: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(t, dim=0) - math.log(t.numel())  # log mean exp t without overflowing exp


def dv_bound(critic: Critic, z_a: torch.Tensor, z_d: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Donsker-Varadhan lower bound on I(z_a; z_d): mean T(joint) - log mean exp T(z_a, z_d[permutation])."""
    joint, marginal = _joint_and_marginal(critic, z_a, z_d, permutation)
    return joint.mean() - _log_mean_exp(marginal)


def mi_loss(critic: Critic, z_a: torch.Tensor, z_d: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """L_MI = ELU(I^): the encoders' penalty (the ELU keeps a gradient, shrinking, when the estimate goes negative)."""
    return F.elu(dv_bound(critic, z_a, z_d, permutation))


@dataclass
class MineAverage:
    """MINE's moving average m of mean exp T over product-of-marginals batches, the denominator of the
    bias-corrected gradient. Like the official `ma_et`, it starts at the first batch's value."""

    rate: float = 0.001
    value: float | None = None

    def update(self, batch_mean: float) -> float:
        """m <- m + rate * (batch_mean - m) (m <- batch_mean on the first call); returns the new m."""
        self.value = batch_mean if self.value is None else self.value + self.rate * (batch_mean - self.value)
        return self.value


def critic_loss(critic: Critic, z_a: torch.Tensor, z_d: torch.Tensor, permutation: torch.Tensor,
                average: MineAverage) -> torch.Tensor:
    """-(mean T(joint) - log(e) * e.detach() / m), e = mean exp T(marginal), after updating m with e: the value is
    near -I^, and the gradient of the log term is grad(e) / m, MINE's bias-corrected estimate of grad log E exp T."""
    joint, marginal = _joint_and_marginal(critic, z_a, z_d, permutation)
    log_e = _log_mean_exp(marginal)
    e = log_e.detach().exp()
    m = average.update(e.item())
    return -(joint.mean() - log_e * e / m)


# ---------------------------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-4  # Adam of E_a, D_s, E_d, D_r (one optimiser each)
    critic_lr: float = 1e-4
    critic_steps: int = 5  # rounds of [critic(x1), critic(x2)] per minibatch
    ma_rate: float = 0.001  # MINE moving-average rate
    use_mi: bool = True  # False: no L_MI steps (the critic is still trained, so I^ can be measured)
    use_cross: bool = True  # False: no cross-reconstruction steps
    segmentation_only: bool = False  # True: only the L_seg steps (E_a + D_s), the baseline; overrides the other two

    def __post_init__(self) -> None:
        positive(self, "lr", "critic_lr", "ma_rate")
        at_least(self, 1, "critic_steps")


MODULES = ("anatomy_encoder", "seg_decoder", "domain_encoder", "rec_decoder", "critic")


class MISegNetTrainer:
    """One Adam per module and MINE's moving average; `step` is one minibatch of the official schedule. The models
    stay in train mode throughout, as in the official script: the encoders' BatchNorm statistics also move in the
    critic steps and the critic's in the L_MI steps (parameters move only where the schedule says)."""

    def __init__(self, model: MISegNet, cfg: TrainConfig = TrainConfig(),
                 generator: torch.Generator | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.generator = generator  # CPU generator for the batch shuffles; None = torch's global one
        self.optimisers = {name: torch.optim.Adam(getattr(model, name).parameters(),
                                                  lr=cfg.critic_lr if name == "critic" else cfg.lr)
                           for name in MODULES}
        self.average = MineAverage(cfg.ma_rate)

    def _update(self, loss: torch.Tensor, *modules: str) -> float:
        """Backward `loss` and step only `modules`' optimisers. All gradients are cleared first, so nothing of an
        earlier line (e.g. the critic's gradient from L_MI) leaks into this one."""
        for optimiser in self.optimisers.values():
            optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for name in modules:
            self.optimisers[name].step()
        return loss.item()

    def _permutation(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator).to(device)

    def seg_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return self._update(segmentation_loss(self.model(x), y), "anatomy_encoder", "seg_decoder")

    def rec_step(self, x: torch.Tensor) -> float:
        return self._update(reconstruction_loss(self.model, x), "anatomy_encoder", "domain_encoder", "rec_decoder")

    def cross_step(self, x_anatomy: torch.Tensor, x_domain: torch.Tensor, target: torch.Tensor) -> float:
        loss = cross_reconstruction_loss(self.model, x_anatomy, x_domain, target)
        return self._update(loss, "anatomy_encoder", "domain_encoder", "rec_decoder")

    def mi_step(self, x: torch.Tensor) -> float:
        z_a, z_d = self.model.encode_anatomy(x), self.model.encode_domain(x)
        loss = mi_loss(self.model.critic, z_a, z_d, self._permutation(len(x), x.device))
        return self._update(loss, "anatomy_encoder", "domain_encoder")

    def critic_step(self, x: torch.Tensor) -> float:
        with torch.no_grad():  # the encoders are frozen for the critic
            z_a, z_d = self.model.encode_anatomy(x), self.model.encode_domain(x)
        loss = critic_loss(self.model.critic, z_a, z_d, self._permutation(len(x), x.device), self.average)
        return self._update(loss, "critic")

    def step(self, x1: torch.Tensor, x2: torch.Tensor, x12: torch.Tensor, x21: torch.Tensor, y1: torch.Tensor,
             y2: torch.Tensor) -> dict[str, float]:
        """One paired minibatch, all [0, 1] images (B, C, S, S) and 0/1 masks (B, 1, S, S): x1 = style 1 on
        geometry 1, x2 = style 2 on geometry 2, x12 = style 1 on geometry 2, x21 = style 2 on geometry 1, y1 / y2 the
        masks of geometry 1 / 2. Returns each line's loss; critic_1 / critic_2 are means over the critic rounds."""
        self.model.train()
        losses = {"seg_1": self.seg_step(x1, y1), "seg_2": self.seg_step(x2, y2)}
        if self.cfg.segmentation_only:
            return losses
        losses["rec_1"], losses["rec_2"] = self.rec_step(x1), self.rec_step(x2)
        if self.cfg.use_cross:
            losses["cross_12"] = self.cross_step(x2, x1, x12)
            losses["cross_21"] = self.cross_step(x1, x2, x21)
        if self.cfg.use_mi:
            losses["mi_1"], losses["mi_2"] = self.mi_step(x1), self.mi_step(x2)
        critic = [(self.critic_step(x1), self.critic_step(x2)) for _ in range(self.cfg.critic_steps)]
        losses["critic_1"] = sum(c[0] for c in critic) / len(critic)
        losses["critic_2"] = sum(c[1] for c in critic) / len(critic)
        return losses


@torch.no_grad()
def mutual_information_estimate(model: MISegNet, x: torch.Tensor, batch_size: int = 64,
                                generator: torch.Generator | None = None) -> float:
    """I^(z_a; z_d) on held-out [0, 1] images x (N, C, S, S): the DV bound of the trained critic over all N images,
    with one random shuffle of z_d over the whole set. Every module runs in eval mode (BatchNorm running statistics,
    so batching is exact) and the train/eval mode is restored afterwards. ASSUMED: the official script never switches
    to eval mode and has no held-out I^; this is the evaluation protocol's estimate, not a number from the paper."""
    if len(x) < 2:
        raise ValueError(f"the estimate needs at least 2 images to shuffle, got {len(x)}")
    was_training = model.training
    model.eval()
    try:
        chunks = x.split(batch_size)
        z_a = torch.cat([model.encode_anatomy(c) for c in chunks])  # (N, Ca, 8, 8)
        z_d = torch.cat([model.encode_domain(c) for c in chunks])  # (N, Cd, 8, 8)
        shuffled = z_d[torch.randperm(len(x), generator=generator).to(z_d.device)]
        joint = torch.cat([model.critic(a, d) for a, d in zip(z_a.split(batch_size), z_d.split(batch_size))])
        marginal = torch.cat([model.critic(a, d) for a, d in zip(z_a.split(batch_size), shuffled.split(batch_size))])
        return float(joint.mean() - _log_mean_exp(marginal))
    finally:
        model.train(was_training)
