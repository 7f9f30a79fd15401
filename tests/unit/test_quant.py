"""models/quant.py: the shared fake-quantization core, RTN, integer export, packed layers (linear and conv) and
GPTQ."""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.quant import (
    FakeQuantConv2d, FakeQuantConvTranspose2d, FakeQuantLayer, FakeQuantLinear, GPTQResult, PackedQuantConv2d,
    PackedQuantConvTranspose2d, PackedQuantLayer, PackedQuantLinear, QuantSetting, QuantSpec, accumulate_hessian,
    code_range, dequantize_weights, export_integer_weights, fake_quantize, gptq_quantize, grouped,
    install_packed_layers, install_packed_linears, pack_codes, pack_quantized_layers, pack_quantized_linears,
    quant_params, quantize_layers, quantize_linears, rtn_quantize, unpack_codes,
)

GRID_SPECS = [
    QuantSpec(4, "per_channel"),
    QuantSpec(3, "per_channel", symmetric=True),
    QuantSpec(4, "per_group", group_size=8),
    QuantSpec(2, "per_group", group_size=16, symmetric=True),
    QuantSpec(8, "per_tensor"),
]


def on_grid_weight(spec: QuantSpec, out_features: int, in_features: int,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A weight whose every value is scale * (code - zero), each grid's extreme codes present so that min/max
    statistics recover the grid."""
    qmin, qmax = code_range(spec.bits, spec.symmetric)
    low_code = -qmax if spec.symmetric else qmin   # symmetric grids are scaled by absmax / qmax
    if spec.granularity == "per_tensor":
        grid_shape, rows = (1, 1), 1
    elif spec.granularity == "per_group":
        grid_shape, rows = (out_features, in_features // spec.group_size, 1), out_features
    else:
        grid_shape, rows = (out_features, 1), out_features
    scale = 0.01 + 0.1 * torch.rand(grid_shape, generator=gen)
    zero = (torch.zeros(grid_shape) if spec.symmetric
            else torch.randint(1, qmax, grid_shape, generator=gen).float())
    codes = torch.randint(low_code, qmax + 1, (out_features, in_features), generator=gen).float()
    codes = grouped(codes, spec) if spec.granularity == "per_group" else codes.reshape(rows, -1)
    codes[..., 0], codes[..., 1] = low_code, qmax
    weight = ((codes - zero) * scale).reshape(out_features, in_features)
    return weight, scale, zero


@pytest.mark.parametrize("spec", GRID_SPECS, ids=lambda s: f"{s.granularity}-{s.bits}b-sym{s.symmetric}")
def test_weight_on_the_grid_is_reproduced_exactly(spec: QuantSpec) -> None:
    gen = torch.Generator().manual_seed(0)
    weight, scale, zero = on_grid_weight(spec, 12, 32, gen)
    w = grouped(weight, spec)
    assert torch.equal(fake_quantize(w, scale, zero, spec.bits, spec.symmetric), w)

    found_scale, found_zero = quant_params(weight, spec)
    assert torch.equal(found_zero, zero)
    torch.testing.assert_close(found_scale, scale, rtol=1e-6, atol=0)

    linear = nn.Linear(32, 12)
    with torch.no_grad():
        linear.weight.copy_(weight)
    x = torch.randn(5, 7, 32, generator=gen)
    expected = linear(x)
    quantized = FakeQuantLinear(linear, spec, act_spec=None)
    torch.testing.assert_close(quantized(x), expected, atol=1e-6, rtol=0)


def test_grid_shapes_per_granularity() -> None:
    weight, acts = torch.randn(6, 32), torch.randn(2, 5, 32)
    cases = [
        (weight, QuantSpec(4, "per_channel"), (6, 1)),
        (weight, QuantSpec(4, "per_group", group_size=8), (6, 4, 1)),
        (weight, QuantSpec(4, "per_tensor"), (1, 1)),
        (acts, QuantSpec(8, "per_token"), (2, 5, 1)),
        (acts, QuantSpec(8, "per_tensor"), (1, 1, 1)),
    ]
    for x, spec, grid_shape in cases:
        scale, zero = quant_params(x, spec)
        assert scale.shape == zero.shape == grid_shape, spec
        y = fake_quantize(grouped(x, spec), scale, zero, spec.bits, spec.symmetric).reshape(x.shape)
        assert y.shape == x.shape
        assert (y - x).abs().max() <= scale.max() / 2 + 1e-6  # the grid covers x: at most half a step off


def test_group_size_must_divide_in_features() -> None:
    spec = QuantSpec(4, "per_group", group_size=12)
    with pytest.raises(ValueError, match="group_size=12 does not divide"):
        quant_params(torch.randn(4, 32), spec)
    with pytest.raises(ValueError, match="group_size"):
        FakeQuantLinear(nn.Linear(32, 4), spec, None)


@pytest.mark.parametrize("kwargs, field", [
    (dict(bits=1, granularity="per_channel"), "bits"),
    (dict(bits=9, granularity="per_channel"), "bits"),
    (dict(bits=4, granularity="per_row"), "granularity"),
    (dict(bits=4, granularity="per_group"), "group_size"),
    (dict(bits=4, granularity="per_group", group_size=0), "group_size"),
    (dict(bits=4, granularity="per_channel", group_size=8), "group_size"),
])
def test_quant_spec_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        QuantSpec(**kwargs)


def test_setting_specs_and_knobs_round_trip() -> None:
    grouped_w2 = QuantSetting("W2A16g64", w_bits=2, w_granularity="per_group", group_size=64)
    assert (grouped_w2.weight, grouped_w2.act) == (QuantSpec(2, "per_group", 64), None)
    w4a4 = QuantSetting("W4A4", w_bits=4, a_bits=4)
    assert (w4a4.weight, w4a4.act) == (QuantSpec(4, "per_channel"), QuantSpec(4, "per_token"))
    assert w4a4.knobs() == {"setting": "W4A4",
                            "weight": {"bits": 4, "granularity": "per_channel", "group_size": None, "symmetric": False},
                            "act": {"bits": 4, "granularity": "per_token", "group_size": None, "symmetric": False}}
    assert QuantSetting.from_knobs(grouped_w2.knobs()) == grouped_w2
    assert QuantSetting.from_knobs(w4a4.knobs()) == w4a4


@pytest.mark.parametrize("kwargs, message", [
    (dict(w_bits=1), "w_bits must be >= 2, got 1"),
    (dict(w_bits=4, a_bits=9), "a_bits must be <= 8, got 9"),
    (dict(w_bits=4, w_granularity="per_token"), "w_granularity must be one of"),
    (dict(w_bits=4, a_bits=4, a_granularity="per_channel"), "a_granularity must be one of"),
    (dict(w_bits=4, w_granularity="per_group"), "needs a group_size"),
    (dict(w_bits=4, group_size=64), "group_size is only read for w_granularity 'per_group', got group_size=64"),
])
def test_setting_validation_names_the_field_and_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantSetting("bad", **kwargs)


def test_constant_rows_do_not_give_nan() -> None:
    weight = torch.stack([torch.zeros(16), torch.full((16,), 0.3), torch.full((16,), -2.0)])
    for spec in (QuantSpec(4, "per_channel"), QuantSpec(4, "per_channel", symmetric=True)):
        scale, zero = quant_params(weight, spec)
        y = fake_quantize(weight, scale, zero, spec.bits, spec.symmetric)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, weight, atol=1e-6, rtol=0)  # constants (and 0) lie on their own grid


def rtn_error(weight: torch.Tensor, spec: QuantSpec) -> float:
    scale, zero = quant_params(weight, spec)
    w = grouped(weight, spec)
    return (fake_quantize(w, scale, zero, spec.bits, spec.symmetric) - w).pow(2).sum().item()


def test_rtn_error_falls_with_bits_and_with_groups() -> None:
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    errors = [rtn_error(weight, QuantSpec(bits, "per_channel")) for bits in (2, 3, 4, 8)]
    assert errors[0] > errors[1] > errors[2] > errors[3] > 0
    assert rtn_error(weight, QuantSpec(3, "per_group", group_size=32)) < errors[1]


def test_straight_through_gradient_is_one_inside_the_range_and_zero_outside() -> None:
    x = torch.linspace(-2.0, 2.0, 401, requires_grad=True)
    scale, zero, bits = torch.tensor(0.1), torch.tensor(8.0), 4      # codes [0, 15] cover [-0.8, 0.7]
    fake_quantize(x, scale, zero, bits, symmetric=False).sum().backward()
    code = torch.round(x.detach() / scale) + zero
    inside = (code >= 0) & (code <= 15)
    assert inside.any() and (~inside).any()
    assert torch.equal(x.grad, inside.float())


def test_learnable_scale_gets_the_lsq_gradient() -> None:
    x = torch.tensor([0.26, -0.13, 0.049, 5.0, -5.0])
    scale = torch.tensor(0.1, requires_grad=True)
    zero, bits = torch.tensor(0.0), 4                                 # symmetric codes [-8, 7]
    fake_quantize(x, scale, zero, bits, symmetric=True).sum().backward()
    v = x / 0.1
    inside_grad = (torch.round(v) - v)[:3].sum()
    outside_grad = 7.0 + (-8.0)                                       # clamped codes minus zero
    torch.testing.assert_close(scale.grad, inside_grad + outside_grad)

    gen = torch.Generator().manual_seed(2)
    layer = FakeQuantLinear(nn.Linear(32, 8), QuantSpec(3, "per_channel"), None, learn_scale=True)
    inputs = torch.randn(16, 32, generator=gen)
    (layer(inputs) - torch.randn(16, 8, generator=gen)).pow(2).sum().backward()
    assert torch.isfinite(layer.weight_scale.grad).all() and layer.weight_scale.grad.abs().sum() > 0


def test_activation_quantization_is_per_token_and_keeps_the_ste() -> None:
    gen = torch.Generator().manual_seed(3)
    linear = nn.Linear(16, 4)
    layer = FakeQuantLinear(linear, None, QuantSpec(8, "per_token"))
    x = torch.randn(2, 3, 16, generator=gen, requires_grad=True)
    y = layer(x)
    scale, zero = quant_params(x, QuantSpec(8, "per_token"))
    torch.testing.assert_close(y, linear(fake_quantize(x, scale, zero, 8, False)), atol=0, rtol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, linear.weight.sum(0).expand(2, 3, 16))  # every x inside its own grid


def correlated_inputs(n_rows: int, in_features: int, gen: torch.Generator) -> torch.Tensor:
    mixing = torch.randn(in_features, in_features, generator=gen)
    return torch.randn(n_rows, in_features, generator=gen) @ mixing


def output_error(x: torch.Tensor, weight: torch.Tensor, quantized: torch.Tensor) -> float:
    return (x @ weight.T - x @ quantized.T).pow(2).sum().item()


def assert_on_grid(result: GPTQResult, spec: QuantSpec) -> None:
    w = grouped(result.weight, spec)
    codes = w / result.scale + result.zero
    qmin, qmax = code_range(spec.bits, spec.symmetric)
    assert (codes - codes.round()).abs().max() < 1e-3
    assert codes.round().min() >= qmin and codes.round().max() <= qmax
    torch.testing.assert_close(fake_quantize(w, result.scale, result.zero, spec.bits, spec.symmetric), w,
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("spec, block_size", [
    (QuantSpec(3, "per_channel"), 16),
    (QuantSpec(4, "per_group", group_size=16), 32),
    (QuantSpec(4, "per_group", group_size=16), 24),   # groups straddle blocks
])
def test_gptq_beats_rtn_on_the_layer_output_and_stays_on_grid(spec: QuantSpec, block_size: int) -> None:
    gen = torch.Generator().manual_seed(4)
    x = correlated_inputs(512, 64, gen)
    weight = torch.randn(32, 64, generator=gen)
    hessian, _ = accumulate_hessian(None, x, 0)
    result = gptq_quantize(weight, hessian, spec, block_size=block_size)

    scale, zero = quant_params(weight, spec)
    rtn = fake_quantize(grouped(weight, spec), scale, zero, spec.bits, spec.symmetric).reshape(weight.shape)
    # about half the RTN error over seeds 0-9 for all three cases; 0.8 leaves room without accepting a near-RTN
    assert output_error(x, weight, result.weight) < 0.8 * output_error(x, weight, rtn)
    assert_on_grid(result, spec)
    if spec.granularity == "per_channel":                  # one grid per row, from the unmodified weight
        assert torch.equal(result.scale, scale) and torch.equal(result.zero, zero)


def reference_gptq(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, percdamp: float) -> torch.Tensor:
    """The optimal-brain-surgeon update with an explicit inverse of the remaining columns' Hessian at every
    step, in float64: what the Cholesky and lazy-batch machinery must compute."""
    w, h = weight.double().clone(), hessian.double().clone()
    h += percdamp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    scale, zero = (t.double() for t in quant_params(weight, spec))
    quantized = torch.zeros_like(w)
    for j in range(w.shape[1]):
        hinv = torch.linalg.inv(h[j:, j:])
        quantized[:, j:j + 1] = fake_quantize(w[:, j:j + 1], scale, zero, spec.bits, spec.symmetric)
        err = (w[:, j] - quantized[:, j]) / hinv[0, 0]
        w[:, j:] -= err[:, None] * hinv[0][None, :]
    return quantized.float()


def test_gptq_matches_the_explicit_inverse_update_for_any_block_size() -> None:
    gen = torch.Generator().manual_seed(5)
    x = correlated_inputs(256, 40, gen)
    weight = torch.randn(12, 40, generator=gen)
    hessian, _ = accumulate_hessian(None, x, 0)
    spec = QuantSpec(3, "per_channel")
    expected = reference_gptq(weight, hessian, spec, percdamp=0.01)
    for block_size in (1, 7, 16, 128):
        torch.testing.assert_close(gptq_quantize(weight, hessian, spec, block_size).weight, expected,
                                   atol=1e-5, rtol=0)


def test_gptq_group_grids_do_not_depend_on_block_size() -> None:
    gen = torch.Generator().manual_seed(6)
    x = correlated_inputs(256, 48, gen)
    weight = torch.randn(8, 48, generator=gen)
    hessian, _ = accumulate_hessian(None, x, 0)
    spec = QuantSpec(4, "per_group", group_size=8)
    results = [gptq_quantize(weight, hessian, spec, block_size) for block_size in (1, 5, 8, 48)]
    for result in results[1:]:
        torch.testing.assert_close(result.weight, results[0].weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(result.scale, results[0].scale, atol=1e-6, rtol=1e-5)


def test_gptq_zeroes_dead_input_columns() -> None:
    gen = torch.Generator().manual_seed(7)
    x = correlated_inputs(128, 32, gen)
    x[:, [3, 17]] = 0.0
    weight = torch.randn(8, 32, generator=gen)
    hessian, _ = accumulate_hessian(None, x, 0)
    quantized = gptq_quantize(weight, hessian, QuantSpec(4, "per_channel"), block_size=8).weight
    assert torch.isfinite(quantized).all()
    assert torch.equal(quantized[:, [3, 17]], torch.zeros(8, 2))


def test_accumulated_hessian_equals_the_batch_hessian() -> None:
    gen = torch.Generator().manual_seed(8)
    first, second = torch.randn(3, 10, 16, generator=gen), torch.randn(5, 16, generator=gen)
    hessian, n_seen = accumulate_hessian(None, first, 0)
    hessian, n_seen = accumulate_hessian(hessian, second, n_seen)
    rows = torch.cat([first.reshape(-1, 16), second])
    assert n_seen == rows.shape[0] == 35
    torch.testing.assert_close(hessian, 2.0 / 35 * rows.T @ rows, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec, learn_scale", [
    (QuantSpec(4, "per_channel"), False),
    (QuantSpec(3, "per_group", group_size=8), False),
    (QuantSpec(4, "per_channel", symmetric=True), False),
    (QuantSpec(2, "per_group", group_size=16), True),
])
def test_integer_export_round_trip_is_exact(spec: QuantSpec, learn_scale: bool) -> None:
    torch.manual_seed(9)
    layer = FakeQuantLinear(nn.Linear(32, 6), spec, None, learn_scale=learn_scale)
    if learn_scale:
        with torch.no_grad():
            layer.weight_scale.mul_(0.8)                   # a trained step size, off the min/max grid
    packed = export_integer_weights(layer)
    qmin, qmax = code_range(spec.bits, spec.symmetric)
    assert packed["qweight"].dtype == (torch.int8 if spec.symmetric else torch.uint8)
    assert packed["qweight"].shape == (6, 32)
    assert qmin <= packed["qweight"].min() and packed["qweight"].max() <= qmax
    with torch.no_grad():
        assert torch.equal(dequantize_weights(packed), layer.quantized_weight())
    assert torch.equal(packed["bias"], layer.bias)


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16, bias=False)) for _ in range(2))
        self.lm_head = nn.Linear(16, 20, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for block in self.blocks:
            h = h + block(h)
        return self.lm_head(h)


@pytest.mark.parametrize("learn_scale", [False, True])
def test_quantize_linears_replaces_all_but_skipped_and_copies_no_weight(learn_scale: bool) -> None:
    model = TinyLM()
    original = {name: p for name, p in model.named_parameters()}
    spec = QuantSpec(4, "per_group", group_size=8)
    quantize_linears(model, spec, QuantSpec(8, "per_token"), skip=lambda name: name == "lm_head",
                     learn_scale=learn_scale)

    quantized = [m for m in model.modules() if isinstance(m, FakeQuantLinear)]
    assert len(quantized) == 4
    assert type(model.lm_head) is nn.Linear
    assert not any(type(m) is nn.Linear for name, m in model.named_modules() if name != "lm_head")
    assert model.blocks[0][0].weight is original["blocks.0.0.weight"]
    extra = sum(m.weight_scale.numel() for m in quantized) if learn_scale else 0
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in original.values()) + extra
    tokens = torch.randint(0, 20, (2, 5))
    assert model(tokens).shape == (2, 5, 20)


def test_rtn_quantize_on_a_transformers_llama() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    torch.manual_seed(10)
    model = transformers.LlamaForCausalLM(config).eval()
    tokens = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        reference = model(tokens).logits
        n_linears = sum(isinstance(m, nn.Linear) for m in model.modules())
        rtn_quantize(model, QuantSpec(8, "per_channel"), skip=lambda name: name == "lm_head")
        logits = model(tokens).logits
    assert sum(isinstance(m, FakeQuantLinear) for m in model.modules()) == n_linears - 1 == 14
    assert not torch.equal(logits, reference)
    torch.testing.assert_close(logits, reference, atol=0.05, rtol=0)   # 8-bit weights barely move the logits


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pack_codes_round_trip_and_size(bits: int) -> None:
    codes = torch.randint(0, 2 ** bits, (37, 11), generator=torch.Generator().manual_seed(bits))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-37 * 11 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, codes.numel()).view(37, 11), codes)


def test_pack_codes_hand_computed_and_range_check() -> None:
    # 2-bit codes 1, 2, 3, 0 little-endian in one byte: 0b00_11_10_01 = 57
    assert pack_codes(torch.tensor([1, 2, 3, 0]), 2).tolist() == [57]
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        pack_codes(torch.tensor([4]), 2)


@pytest.mark.parametrize("spec", GRID_SPECS, ids=lambda s: f"{s.granularity}-{s.bits}b-sym{s.symmetric}")
def test_packed_linear_equals_fake_quant_and_reloads_without_calibration(spec: QuantSpec) -> None:
    gen = torch.Generator().manual_seed(3)
    linear = nn.Linear(32, 8)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(8, 32, generator=gen))
    fake = FakeQuantLinear(linear, spec, QuantSpec(8, "per_token"))
    packed = PackedQuantLinear.from_fake_quant(fake)
    x = torch.randn(3, 5, 32, generator=gen)
    assert torch.equal(packed(x), fake(x))
    assert "weight" not in packed.state_dict()
    # a shell of the same shape, filled from the state dict alone, gives the same outputs
    model = nn.Sequential(nn.Linear(32, 8))
    install_packed_linears(model, spec, QuantSpec(8, "per_token"))
    model.load_state_dict({f"0.{k}": v for k, v in packed.state_dict().items()})
    assert torch.equal(model(x), fake(x))


def test_pack_quantized_linears_shrinks_the_state_dict() -> None:
    model = nn.Sequential(nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False))
    fp_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    rtn_quantize(model, QuantSpec(4, "per_channel"))
    pack_quantized_linears(model)
    packed_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # 4-bit codes are 1/8 of fp32; each row adds a 4-byte scale and a 2-byte zero point
    assert packed_bytes == 2 * (64 * 64 // 2 + 64 * 6)
    assert packed_bytes < fp_bytes / 6
    with pytest.raises(ValueError, match="no nn.Linear"):
        install_packed_linears(model, QuantSpec(4, "per_channel"), None)


# ---------------------------------------------------------------------------------------------------------------
# Convolutions: the same grids on the weight viewed per output channel, the layer's own op on the quantized weight

Conv = nn.Conv2d | nn.ConvTranspose2d


def make_conv(transposed: bool, seed: int, **kwargs) -> Conv:  # type: ignore[no-untyped-def]
    """A conv whose output channels have weight ranges 100x apart, so that grids along the wrong axis (a transposed
    conv's dim 0 is its input channel) show in the output."""
    torch.manual_seed(seed)
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(**{"in_channels": 4, "out_channels": 6, "kernel_size": 3,
                                                                "padding": 1, **kwargs})
    per_output = torch.logspace(-2, 0, conv.out_channels)
    with torch.no_grad():
        if transposed:      # (in, out / groups, kH, kW): output channel o = group · out / groups + j
            conv.weight.mul_(per_output.view(conv.groups, -1).repeat_interleave(conv.in_channels // conv.groups, 0)
                             .view(conv.in_channels, -1, 1, 1))
        else:               # (out, in / groups, kH, kW)
            conv.weight.mul_(per_output.view(-1, 1, 1, 1))
    return conv


def hand_dequantized_weight(conv: Conv, bits: int) -> torch.Tensor:
    """Asymmetric min/max round-to-nearest of each output channel's weights, found channel by channel from PyTorch's
    layout (not through the quantizer's matrix view)."""
    weight = conv.weight.detach().clone()
    qmax = 2 ** bits - 1
    out_per_group = conv.out_channels // conv.groups
    in_per_group = conv.in_channels // conv.groups
    for channel in range(conv.out_channels):
        if isinstance(conv, nn.ConvTranspose2d):
            group, j = divmod(channel, out_per_group)
            index: tuple = (slice(group * in_per_group, (group + 1) * in_per_group), j)
        else:
            index = (channel,)
        w = weight[index]
        lo, hi = w.min().clamp(max=0.0), w.max().clamp(min=0.0)
        scale = (hi - lo) / qmax
        zero = torch.round(-lo / scale)
        weight[index] = (torch.clamp(torch.round(w / scale) + zero, 0, qmax) - zero) * scale
    return weight


def conv_with_weight(conv: Conv, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(conv, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, weight, conv.bias, conv.stride, conv.padding, conv.output_padding, conv.groups,
                                  conv.dilation)
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


CONV_CASES = [
    pytest.param(False, {}, id="conv2d"),
    pytest.param(True, {}, id="conv_transpose2d"),
    pytest.param(False, dict(out_channels=8, stride=2, padding=2, dilation=2, groups=2), id="conv2d-strided-groups"),
    pytest.param(True, dict(stride=2, padding=1, output_padding=1, groups=2), id="conv_transpose2d-strided-groups"),
]


@pytest.mark.parametrize("transposed, kwargs", CONV_CASES)
def test_conv_fake_quant_at_8_bits_is_the_conv_of_the_hand_dequantized_weight(transposed: bool, kwargs: dict) -> None:
    conv = make_conv(transposed, seed=11, **kwargs)
    x = torch.randn(2, 4, 9, 7, generator=torch.Generator().manual_seed(11))
    layer = (FakeQuantConvTranspose2d if transposed else FakeQuantConv2d)(conv, QuantSpec(8, "per_channel"), None)
    assert layer.weight is conv.weight and layer.weight_scale.shape == (conv.out_channels, 1)

    expected_weight = hand_dequantized_weight(conv, 8)
    with torch.no_grad():
        assert torch.equal(layer.quantized_weight(), expected_weight)
        y, reference = layer(x), conv(x)
    assert y.shape == reference.shape        # the module's stride, padding, output_padding, dilation and groups
    torch.testing.assert_close(y, conv_with_weight(conv, expected_weight, x), atol=1e-6, rtol=0)
    assert not torch.equal(y, reference)
    torch.testing.assert_close(y, reference, atol=0.02, rtol=0)       # 8 bits per output channel barely move it


@pytest.mark.parametrize("transposed, kwargs", CONV_CASES)
def test_conv_4_bit_error_exceeds_8_bit_error(transposed: bool, kwargs: dict) -> None:
    conv = make_conv(transposed, seed=12, **kwargs)
    x = torch.randn(2, 4, 9, 7, generator=torch.Generator().manual_seed(12))
    fake_quant = FakeQuantConvTranspose2d if transposed else FakeQuantConv2d
    with torch.no_grad():
        reference = conv(x)
        errors = {bits: (fake_quant(conv, QuantSpec(bits, "per_channel"), None)(x) - reference).pow(2).mean().item()
                  for bits in (4, 8)}
    assert errors[4] > 10 * errors[8] > 0


CONV_SPECS = [
    QuantSpec(4, "per_channel"),
    QuantSpec(3, "per_channel", symmetric=True),
    QuantSpec(4, "per_group", group_size=8),            # 4 / 2 input channels · 2 · 2 = 8 weights per group
    QuantSpec(8, "per_tensor"),
]


@pytest.mark.parametrize("spec", CONV_SPECS, ids=lambda s: f"{s.granularity}-{s.bits}b-sym{s.symmetric}")
@pytest.mark.parametrize("transposed, kwargs", [
    pytest.param(False, dict(kernel_size=2, stride=2, groups=2), id="conv2d"),
    pytest.param(True, dict(kernel_size=2, stride=2, output_padding=1, groups=2), id="conv_transpose2d"),
])
def test_packed_conv_equals_fake_quant_and_stores_only_the_codes(transposed: bool, kwargs: dict,
                                                                 spec: QuantSpec) -> None:
    conv = make_conv(transposed, seed=13, **kwargs)
    fake = (FakeQuantConvTranspose2d if transposed else FakeQuantConv2d)(conv, spec, QuantSpec(8, "per_tensor"))
    packed = (PackedQuantConvTranspose2d if transposed else PackedQuantConv2d).from_fake_quant(fake)
    x = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        assert torch.equal(packed(x), fake(x))
    state = packed.state_dict()
    assert set(state) == {"qweight", "scale", "zero", "bias"}
    assert state["qweight"].dtype == torch.uint8
    assert state["qweight"].numel() == math.ceil(conv.weight.numel() * spec.bits / 8)


class TinySegNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.decoder = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Conv2d(4, 2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


def test_packed_conv_model_reloads_into_fresh_shells() -> None:
    torch.manual_seed(14)
    model = TinySegNet()
    spec = QuantSpec(4, "per_channel")
    quantize_layers(model, spec, None, skip=lambda name: name == "head")
    assert type(model.head) is nn.Conv2d
    assert [type(m) for m in (model.encoder[0], model.encoder[2], model.decoder)] == \
        [FakeQuantConv2d, FakeQuantConv2d, FakeQuantConvTranspose2d]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        pack_quantized_layers(model)
        assert torch.equal(model(x), expected)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)

    torch.manual_seed(15)                                   # different float weights: nothing comes from them
    fresh = install_packed_layers(TinySegNet(), spec, None, skip=lambda name: name == "head")
    assert [type(m) for m in (fresh.encoder[0], fresh.encoder[2], fresh.decoder)] == \
        [PackedQuantConv2d, PackedQuantConv2d, PackedQuantConvTranspose2d]
    fresh.load_state_dict(torch.load(buffer))
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


def test_quantize_layers_takes_only_the_asked_kinds_and_linear_functions_stay_linear() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    quantize_layers(model, QuantSpec(8, "per_channel"), None, kinds=(nn.Conv2d,))
    assert (type(model[0]), type(model[2])) == (FakeQuantConv2d, nn.Linear)
    quantize_linears(model, QuantSpec(8, "per_channel"), None)
    assert isinstance(model[2], FakeQuantLinear) and isinstance(model[2], FakeQuantLayer)
    pack_quantized_linears(model)
    assert (type(model[0]), type(model[2])) == (FakeQuantConv2d, PackedQuantLinear)
    assert isinstance(model[2], PackedQuantLayer)
    with pytest.raises(ValueError, match="no quantized form for Conv1d"):
        quantize_layers(model, QuantSpec(8, "per_channel"), None, kinds=(nn.Conv1d,))
    with pytest.raises(ValueError, match="no nn.Conv2d / nn.ConvTranspose2d to install"):
        install_packed_layers(nn.Sequential(nn.Linear(2, 2)), QuantSpec(8, "per_channel"), None,
                              kinds=(nn.Conv2d, nn.ConvTranspose2d))


def test_conv_rejects_padding_modes_other_than_zeros_and_row_activation_grids() -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        FakeQuantConv2d(conv, QuantSpec(8, "per_channel"), None)
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        install_packed_layers(nn.Sequential(conv), QuantSpec(8, "per_channel"), None)
    with pytest.raises(ValueError, match="per_tensor activation grids, got 'per_token'"):
        FakeQuantConv2d(nn.Conv2d(4, 6, 3), QuantSpec(8, "per_channel"), QuantSpec(8, "per_token"))
