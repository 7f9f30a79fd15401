"""Uniform fake quantization shared by every post-training quantization method (RTN, GPTQ, SmoothQuant and CBQ for
LLMs, weight-only RTN for CNNs), plus the round-to-nearest baseline and GPTQ for one linear layer. The quantized
layers cover nn.Linear, nn.Conv2d and nn.ConvTranspose2d, each as fake-quant (float, for calibration) and packed
(bit-packed integer codes, for deployment) forms.

Every method goes through the same integer grid: `quantize_to_codes` maps a tensor to integer codes with a
(scale, zero point), `dequantize_codes` maps them back. Fake quantization is the composition of the two, with a
straight-through estimator for the rounding, so a quantized model runs in floating point while being numerically
equal to its integer export (`export_integer_weights` / `dequantize_weights`).

Conventions: weights are quantized as matrices with one row per output channel: a linear's (out_features,
in_features) weight itself, a conv's viewed as (out_channels, in_channels / groups · kH · kW) (see
`QuantizedLayer.weight_matrix`); activations are (..., features). Scales and zero points are shaped to broadcast
against the tensor *as grouped by `grouped`*: per_channel / per_token (rows, 1), per_group (rows, n_groups, 1),
per_tensor all ones. Asymmetric grids always contain 0.0, as in the reference GPTQ quantizer, so the zero point is
itself a code in [0, 2^bits - 1] and can be stored as an unsigned integer.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple, Self

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.common.checks import at_least, at_most, one_of

__all__ = [
    "QuantSpec", "QuantSetting", "code_range", "grouped", "quant_params", "quantize_to_codes", "dequantize_codes",
    "fake_quantize", "fake_quantize_activation", "QuantizedLayer", "QuantizedLinear", "ConvGeometry", "QuantizedConv",
    "QuantizedConv2d", "QuantizedConvTranspose2d", "FakeQuantLayer", "FakeQuantLinear", "FakeQuantConv2d",
    "FakeQuantConvTranspose2d", "export_integer_weights", "dequantize_weights", "pack_codes", "unpack_codes",
    "PackedQuantLayer", "PackedQuantLinear", "PackedQuantConv2d", "PackedQuantConvTranspose2d", "LayerKind",
    "LAYER_KINDS", "QUANTIZABLE", "layer_kinds", "replace_modules", "quantize_layers", "quantize_linears",
    "rtn_quantize", "pack_quantized_layers", "pack_quantized_linears", "install_packed_layers",
    "install_packed_linears", "accumulate_hessian", "GPTQResult", "gptq_quantize",
]

GRANULARITIES = ("per_channel", "per_group", "per_token", "per_tensor")
SCALE_FLOOR = 1e-8  # a constant (e.g. all-zero) row has max == min; the floor keeps x / scale finite


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    granularity: str                # "per_channel" | "per_group" | "per_token" | "per_tensor"
    group_size: int | None = None   # contiguous input columns per (scale, zero); per_group only
    symmetric: bool = False         # True: zero point 0 and signed codes; False: min/max grid, unsigned codes

    def __post_init__(self) -> None:
        # 2..8: a symmetric 1-bit grid has no positive level, and codes are exported as (u)int8
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be an int in [2, 8], got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "per_group":
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise ValueError(f"group_size must be a positive int for per_group, got {self.group_size!r}")
        elif self.group_size is not None:
            raise ValueError(f"group_size is only meaningful for per_group, got {self.group_size!r} "
                             f"with granularity {self.granularity!r}")


@dataclass(frozen=True)
class QuantSetting:
    """A row of an LLM quantization table, e.g. W4A16 = 4-bit per-channel weights and floating-point activations,
    W2A16g64 = 2-bit weights in groups of 64 input columns. Weights are asymmetric min/max grids; activations are
    quantized dynamically and asymmetrically (OmniQuant's convention)."""

    name: str                                                   # label in tables, e.g. W4A16 or W2A16g64
    w_bits: int
    w_granularity: Literal["per_channel", "per_group"] = "per_channel"
    group_size: int | None = None                               # input columns per group (per_group only)
    a_bits: int | None = None                                   # None: activations stay floating point
    a_granularity: Literal["per_token", "per_tensor"] = "per_token"

    def __post_init__(self) -> None:
        at_least(self, 2, "w_bits", "a_bits")
        at_most(self, 8, "w_bits", "a_bits")
        one_of(self, "w_granularity", ("per_channel", "per_group"))
        one_of(self, "a_granularity", ("per_token", "per_tensor"))
        at_least(self, 1, "group_size")
        if self.w_granularity == "per_group" and self.group_size is None:
            raise ValueError("w_granularity 'per_group' needs a group_size, got None")
        if self.w_granularity != "per_group" and self.group_size is not None:
            raise ValueError(f"group_size is only read for w_granularity 'per_group', got group_size="
                             f"{self.group_size} with {self.w_granularity!r}")

    @property
    def weight(self) -> QuantSpec:
        return QuantSpec(self.w_bits, self.w_granularity, self.group_size)

    @property
    def act(self) -> QuantSpec | None:
        return QuantSpec(self.a_bits, self.a_granularity) if self.a_bits is not None else None

    def knobs(self) -> dict[str, Any]:
        return {"setting": self.name, "weight": dataclasses.asdict(self.weight),
                "act": dataclasses.asdict(self.act) if self.act else None}

    @classmethod
    def from_knobs(cls, knobs: dict[str, Any]) -> QuantSetting:
        weight, act = knobs["weight"], knobs["act"]
        return cls(knobs["setting"], weight["bits"], weight["granularity"], weight["group_size"],
                   act["bits"] if act else None, act["granularity"] if act else "per_token")

    def check_fits(self, in_features: set[int]) -> None:
        """Raises ValueError when weight groups of `group_size` do not divide every input width in `in_features` (of
        the linears the setting quantizes); grouped() would fail on them in the middle of a run."""
        if self.group_size is None:
            return
        misfits = sorted(width for width in in_features if width % self.group_size)
        if misfits:
            raise ValueError(f"group_size={self.group_size} does not divide the input width of the model's linears "
                             f"({', '.join(map(str, misfits))} of {', '.join(map(str, sorted(in_features)))})")


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest integer code: signed for symmetric grids, unsigned otherwise."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def grouped(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View (..., in) as (..., in // group_size, group_size) for per_group specs; other specs unchanged."""
    if spec.granularity != "per_group":
        return x
    assert spec.group_size is not None
    if x.shape[-1] % spec.group_size != 0:
        raise ValueError(f"group_size={spec.group_size} does not divide the last dimension ({x.shape[-1]})")
    return x.unflatten(-1, (x.shape[-1] // spec.group_size, spec.group_size))


@torch.no_grad()
def quant_params(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max (scale, zero point) of `x` for `spec`, broadcastable against `grouped(x, spec)`.

    Statistics only, no gradient: learnable step sizes are initialised from them, dynamic activation grids are
    recomputed from them at every call.
    """
    if spec.granularity == "per_tensor":
        lo = x.min().reshape([1] * x.dim())
        hi = x.max().reshape([1] * x.dim())
    else:
        values = grouped(x, spec)
        lo = values.amin(dim=-1, keepdim=True)
        hi = values.amax(dim=-1, keepdim=True)
    # widening the range to contain 0.0 keeps the zero point a valid code (exact zeros stay exact, e.g. padding)
    lo = lo.clamp(max=0.0)
    hi = hi.clamp(min=0.0)
    if spec.symmetric:
        scale = (torch.maximum(-lo, hi) / (2 ** (spec.bits - 1) - 1)).clamp(min=SCALE_FLOOR)
        zero = torch.zeros_like(scale)
    else:
        scale = ((hi - lo) / (2 ** spec.bits - 1)).clamp(min=SCALE_FLOOR)
        zero = torch.round(-lo / scale)
    return scale, zero


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, identity in the backward pass. (round(x) - x) + x is exactly round(x) in
    floating point (the difference is at most 0.5, so Sterbenz's lemma makes both operations exact)."""
    return (torch.round(x) - x).detach() + x


def quantize_to_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                      symmetric: bool) -> torch.Tensor:
    """Integer codes clamp(round(x / scale) + zero) as floats; differentiable by the straight-through estimator."""
    qmin, qmax = code_range(bits, symmetric)
    codes = round_ste(x / scale) + zero
    # not torch.clamp: its gradient is 0 *at* the bounds, which would freeze every weight rounded to an end code
    return torch.where(codes < qmin, qmin, torch.where(codes > qmax, qmax, codes))


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (codes - zero) * scale


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                  symmetric: bool) -> torch.Tensor:
    """Quantize then dequantize. Gradient w.r.t. x: 1 inside the clamp range, 0 outside. Gradient w.r.t. a
    learnable scale (LSQ): round(x/s) - x/s inside the range, (clamped code - zero) outside."""
    return dequantize_codes(quantize_to_codes(x, scale, zero, bits, symmetric), scale, zero)


def fake_quantize_activation(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Dynamic activation fake-quantization: the grid comes from x's own min/max (per token or per tensor).

    The grid is a statistic of x, not a function to differentiate: gradients pass straight through, as for weights.
    """
    scale, zero = quant_params(x.detach(), spec)
    return fake_quantize(grouped(x, spec), scale, zero, spec.bits, spec.symmetric).reshape(x.shape)


class QuantizedLayer(nn.Module):
    """What every quantized layer shares: activations fake-quantized dynamically (when an act spec is set), then the
    layer's own op (`op`, from the kind subclasses QuantizedLinear, QuantizedConv2d, QuantizedConvTranspose2d) with
    `quantized_weight()`, which each storage (FakeQuantLayer, PackedQuantLayer, CBQ's learned rounding) computes from
    what it holds.

    Weight grids are computed on the weight as a matrix with one row per output channel (`weight_matrix`), so that
    per_channel, per_group and per_tensor weight specs mean the same thing for every kind of layer."""

    weight_spec: QuantSpec | None
    act_spec: QuantSpec | None
    bias: torch.Tensor | None
    # activation granularities whose grids mean something for this kind's input (fake_quantize_activation takes
    # per-row and per-group grids over the input's last dimension)
    act_granularities: tuple[str, ...] = GRANULARITIES

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the float weight, in PyTorch's layout for this kind."""
        raise NotImplementedError

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(output channels, weights per output channel): the shape of `weight_matrix`."""
        return self.weight_shape[0], math.prod(self.weight_shape[1:])

    def weight_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as (output channels, weights per output channel), the matrix its grids are computed on."""
        return weight.flatten(1)

    def weight_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """Inverse of `weight_matrix`."""
        return matrix.reshape(self.weight_shape)

    def copy_geometry(self, source: nn.Module) -> None:
        """Take the shape and op arguments of `source`: a float layer of this kind or a quantized one."""
        raise NotImplementedError

    def geometry_repr(self) -> str:
        raise NotImplementedError

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def quantized_weight(self) -> torch.Tensor:
        """The weight the op uses, in `weight_shape`."""
        raise NotImplementedError

    def set_specs(self, weight_spec: QuantSpec | None, act_spec: QuantSpec | None) -> None:
        if act_spec is not None and act_spec.granularity not in self.act_granularities:
            raise ValueError(f"{type(self).__name__} takes {' / '.join(self.act_granularities)} activation grids, "
                             f"got {act_spec.granularity!r}")
        self.weight_spec, self.act_spec = weight_spec, act_spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_spec is not None:
            x = fake_quantize_activation(x, self.act_spec)
        return self.op(x, self.quantized_weight())

    def extra_repr(self) -> str:
        return f"{self.geometry_repr()}, weight_spec={self.weight_spec}, act_spec={self.act_spec}"


class QuantizedLinear(QuantizedLayer):
    """A quantized nn.Linear: its (out_features, in_features) weight is its own weight matrix."""

    in_features: int
    out_features: int

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return self.out_features, self.in_features

    def copy_geometry(self, source: nn.Module) -> None:
        self.in_features, self.out_features = source.in_features, source.out_features

    def geometry_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:    # x: (..., in) -> (..., out)
        return F.linear(x, weight, self.bias)


@dataclass(frozen=True)
class ConvGeometry:
    """What a quantized conv keeps of its float nn.Conv2d / nn.ConvTranspose2d besides the weight values: the weight
    shape in PyTorch's layout and the op's arguments."""

    weight_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str          # nn.Conv2d also takes "same" / "valid"
    dilation: tuple[int, ...]
    groups: int
    output_padding: tuple[int, ...]         # read by transposed convs only

    @classmethod
    def of(cls, conv: nn.Conv2d | nn.ConvTranspose2d) -> ConvGeometry:
        if conv.padding_mode != "zeros":
            # nn.Conv2d pads reflect / replicate / circular itself before calling F.conv2d; the quantized layers call
            # F.conv2d / F.conv_transpose2d directly, whose padding is zeros
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported by the quantized convs, only "
                             f"'zeros'")
        return cls(tuple(conv.weight.shape), conv.stride, conv.padding, conv.dilation, conv.groups,
                   conv.output_padding)


class QuantizedConv(QuantizedLayer):
    """What the quantized conv kinds share: their float conv's geometry."""

    geometry: ConvGeometry
    # the input is (N, C, H, W), whose last dimension is the image width: per-row and per-group grids over it would
    # be grids per image row
    act_granularities = ("per_tensor",)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return self.geometry.weight_shape

    def copy_geometry(self, source: nn.Module) -> None:
        self.geometry = source.geometry if isinstance(source, QuantizedConv) else ConvGeometry.of(source)

    def geometry_repr(self) -> str:
        return str(self.geometry)


class QuantizedConv2d(QuantizedConv):
    """A quantized nn.Conv2d: weight (out_channels, in_channels / groups, kH, kW), one matrix row per output channel."""

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        return F.conv2d(x, weight, self.bias, g.stride, g.padding, g.dilation, g.groups)


class QuantizedConvTranspose2d(QuantizedConv):
    """A quantized nn.ConvTranspose2d. PyTorch lays its weight out as (in_channels, out_channels / groups, kH, kW);
    its matrix rows are nevertheless the output channels (output channel o = group · out_channels / groups + j gets
    the weights [group's input channels, j]), i.e. the weight permuted to the equivalent conv's layout. So per_channel
    means one grid per output map, as for Conv2d and Linear, and each grid's scale multiplies a whole output sum,
    which an integer kernel applies once after accumulating; per-input-channel grids would scale every term of it
    differently."""

    @property
    def matrix_shape(self) -> tuple[int, int]:
        in_channels, out_per_group, kernel_h, kernel_w = self.weight_shape
        groups = self.geometry.groups
        return out_per_group * groups, in_channels // groups * kernel_h * kernel_w

    def weight_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        # (in, out/g, kH, kW) -> (g, in/g, out/g, kH, kW) -> (g, out/g, in/g, kH, kW) -> (out, in/g · kH · kW)
        grouped_weight = weight.unflatten(0, (self.geometry.groups, -1)).transpose(1, 2)
        return grouped_weight.reshape(self.matrix_shape)

    def weight_from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        in_channels, out_per_group, kernel_h, kernel_w = self.weight_shape
        groups = self.geometry.groups
        grouped_weight = matrix.reshape(groups, out_per_group, in_channels // groups, kernel_h, kernel_w)
        return grouped_weight.transpose(1, 2).reshape(self.weight_shape)

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        return F.conv_transpose2d(x, weight, self.bias, g.stride, g.padding, g.output_padding, g.groups, g.dilation)


class FakeQuantLayer(QuantizedLayer):
    """A float layer computing op(fake_quant(input), fake_quant(weight)).

    Shares (does not copy) the wrapped layer's weight and bias. The weight grid is fixed at wrap time from the
    weight's min/max (a buffer, or a learnable Parameter with `learn_scale=True`) so that later edits of the
    weight (GPTQ updates, CBQ compensation) are quantized onto a stable, exportable grid; its zero point stays a
    buffer. Activations are quantized dynamically: a fresh grid per call from the input's own min/max.
    """

    def __init__(self, layer: nn.Module, weight_spec: QuantSpec | None, act_spec: QuantSpec | None,
                 learn_scale: bool = False) -> None:
        super().__init__()
        if learn_scale and weight_spec is None:
            raise ValueError("learn_scale=True needs a weight_spec: there is no weight step size to learn")
        self.copy_geometry(layer)
        self.set_specs(weight_spec, act_spec)
        self.weight = layer.weight      # weight_shape
        self.bias = layer.bias          # (out,) or None
        if weight_spec is None:
            self.register_buffer("weight_scale", None)
            self.register_buffer("weight_zero", None)
            return
        scale, zero = quant_params(self.weight_matrix(layer.weight.detach()), weight_spec)
        if learn_scale:
            self.weight_scale = nn.Parameter(scale)
        else:
            self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero", zero)

    def weight_grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero) in use; a learned scale is floored because an optimiser step can push it to <= 0."""
        assert self.weight_scale is not None and self.weight_zero is not None
        return self.weight_scale.clamp(min=SCALE_FLOOR), self.weight_zero

    def quantized_weight(self) -> torch.Tensor:
        if self.weight_spec is None:
            return self.weight
        scale, zero = self.weight_grid()
        spec = self.weight_spec
        matrix = fake_quantize(grouped(self.weight_matrix(self.weight), spec), scale, zero, spec.bits, spec.symmetric)
        return self.weight_from_matrix(matrix.reshape(self.matrix_shape))


class FakeQuantLinear(FakeQuantLayer, QuantizedLinear):
    """A fake-quantized nn.Linear."""


class FakeQuantConv2d(FakeQuantLayer, QuantizedConv2d):
    """A fake-quantized nn.Conv2d."""


class FakeQuantConvTranspose2d(FakeQuantLayer, QuantizedConvTranspose2d):
    """A fake-quantized nn.ConvTranspose2d."""


def export_integer_weights(layer: FakeQuantLayer) -> dict[str, torch.Tensor]:
    """Integer codes + grid of a quantized layer: {"qweight", "scale", "zero"[, "bias"]}, the codes in the layer's
    weight matrix layout ((out, in) for a linear). Codes and zero points are uint8 for asymmetric specs and int8 for
    symmetric ones; the scale keeps its grouped shape, which is how `dequantize_weights` recovers the group layout."""
    spec = layer.weight_spec
    if spec is None:
        raise ValueError("layer has no weight_spec: its weight is not quantized")
    with torch.no_grad():
        scale, zero = layer.weight_grid()
        codes = quantize_to_codes(grouped(layer.weight_matrix(layer.weight), spec), scale, zero, spec.bits,
                                  spec.symmetric)
    integer_dtype = torch.int8 if spec.symmetric else torch.uint8
    packed = {
        "qweight": codes.reshape(layer.matrix_shape).to(integer_dtype),
        "scale": scale.detach().clone(),
        "zero": zero.to(integer_dtype),
    }
    if layer.bias is not None:
        packed["bias"] = layer.bias.detach().clone()
    return packed


def dequantize_weights(packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """Floating-point weight matrix of `export_integer_weights` output ((out, in) for a linear); bit-equal to the
    fake-quantized weight matrix."""
    qweight, scale = packed["qweight"], packed["scale"]
    codes = qweight.to(scale.dtype)
    if scale.dim() == qweight.dim() + 1:                        # per_group: (out, n_groups, 1)
        codes = codes.unflatten(-1, (scale.shape[-2], -1))
    return dequantize_codes(codes, scale, packed["zero"].to(scale.dtype)).reshape(qweight.shape)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes (any shape, values < 2^bits) as a dense little-endian bit stream: (ceil(n·bits/8),) uint8.
    A 4-bit weight takes half a byte and a 3-bit one three eighths, so the file size is the real size."""
    flat = codes.flatten().to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2 ** bits):
        raise ValueError(f"codes must lie in [0, {2 ** bits - 1}] to pack into {bits} bits")
    stream = ((flat[:, None] >> torch.arange(bits, device=flat.device)) & 1).flatten()  # (n·bits,) LSB first
    stream = F.pad(stream, (0, (-stream.numel()) % 8))
    return (stream.view(-1, 8) << torch.arange(8, device=flat.device)).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: the first `numel` codes as (numel,) int64."""
    stream = ((packed.to(torch.int64)[:, None] >> torch.arange(8, device=packed.device)) & 1).flatten()
    values = stream[: numel * bits].view(numel, bits)
    return (values << torch.arange(bits, device=packed.device)).sum(dim=1)


class PackedQuantLayer(QuantizedLayer):
    """The deployable form of a quantized layer: bit-packed integer codes, per-grid scale and zero point, the
    bias, and the activation spec; no floating-point copy of the weight is stored (the state dict is what goes
    to disk). The dequantized weight is rebuilt once, on first use after loading, and kept in memory only.
    Outputs are bit-equal to the FakeQuantLayer it was packed from."""

    weight_spec: QuantSpec

    def __init__(self, layer: nn.Module, weight_spec: QuantSpec, act_spec: QuantSpec | None) -> None:
        """An empty shell shaped like `layer` (a float layer of this kind, or a quantized one), to be filled by
        `from_fake_quant` or by `load_state_dict` of a packed layer's tensors."""
        super().__init__()
        self.copy_geometry(layer)
        self.set_specs(weight_spec, act_spec)
        rows, columns = self.matrix_shape
        if weight_spec.granularity == "per_tensor":
            grid_shape: tuple[int, ...] = (1, 1)
        elif weight_spec.granularity == "per_group":
            assert weight_spec.group_size is not None
            grid_shape = (rows, columns // weight_spec.group_size, 1)
        else:
            grid_shape = (rows, 1)
        self.register_buffer("qweight", torch.zeros(math.ceil(rows * columns * weight_spec.bits / 8),
                                                    dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(grid_shape))
        self.register_buffer("zero", torch.zeros(grid_shape, dtype=torch.int16))
        self.register_buffer("bias", torch.zeros(rows) if layer.bias is not None else None)
        self._weight: torch.Tensor | None = None

    @classmethod
    def from_fake_quant(cls, layer: FakeQuantLayer) -> Self:
        exported = export_integer_weights(layer)
        spec = layer.weight_spec
        assert spec is not None
        qmin, _ = code_range(spec.bits, spec.symmetric)
        packed = cls(layer, spec, layer.act_spec)
        packed.qweight = pack_codes(exported["qweight"].to(torch.int64) - qmin, spec.bits)
        packed.scale = exported["scale"].to(torch.float32)
        packed.zero = exported["zero"].to(torch.int16)
        if layer.bias is not None:
            packed.bias = exported["bias"]
        return packed

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._weight = None

    def quantized_weight(self) -> torch.Tensor:
        if self._weight is None or self._weight.device != self.scale.device:
            spec = self.weight_spec
            qmin, _ = code_range(spec.bits, spec.symmetric)
            rows, columns = self.matrix_shape
            codes = unpack_codes(self.qweight, spec.bits, rows * columns) + qmin
            codes = codes.view(rows, columns).to(self.scale.dtype)
            matrix = dequantize_codes(grouped(codes, spec), self.scale, self.zero.to(self.scale.dtype))
            self._weight = self.weight_from_matrix(matrix.reshape(rows, columns))
        return self._weight


class PackedQuantLinear(PackedQuantLayer, QuantizedLinear):
    """A packed nn.Linear."""


class PackedQuantConv2d(PackedQuantLayer, QuantizedConv2d):
    """A packed nn.Conv2d."""


class PackedQuantConvTranspose2d(PackedQuantLayer, QuantizedConvTranspose2d):
    """A packed nn.ConvTranspose2d."""


class LayerKind(NamedTuple):
    """A float layer type and its two quantized forms."""
    float_type: type[nn.Module]
    fake_quant: type[FakeQuantLayer]
    packed: type[PackedQuantLayer]


LAYER_KINDS = (
    LayerKind(nn.Linear, FakeQuantLinear, PackedQuantLinear),
    LayerKind(nn.Conv2d, FakeQuantConv2d, PackedQuantConv2d),
    LayerKind(nn.ConvTranspose2d, FakeQuantConvTranspose2d, PackedQuantConvTranspose2d),
)
QUANTIZABLE: tuple[type[nn.Module], ...] = tuple(kind.float_type for kind in LAYER_KINDS)


def layer_kinds(float_types: Iterable[type[nn.Module]]) -> list[LayerKind]:
    """The LAYER_KINDS of `float_types`; a type with no quantized form is a ValueError (its layers would silently
    stay floating point)."""
    wanted = tuple(float_types)
    unsupported = [t.__name__ for t in wanted if t not in QUANTIZABLE]
    if unsupported:
        raise ValueError(f"no quantized form for {', '.join(unsupported)}; quantizable: "
                         f"{', '.join(t.__name__ for t in QUANTIZABLE)}")
    return [kind for kind in LAYER_KINDS if kind.float_type in wanted]


def replace_modules(model: nn.Module, kind: type | tuple[type, ...], convert: Callable[[nn.Module], nn.Module],
                    skip: Callable[[str], bool] = lambda name: False) -> int:
    """In place: every submodule of type `kind` whose qualified name is not skipped becomes convert(module).
    Returns how many were replaced."""
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, kind) and not skip(name)]
    for name, module in targets:
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child_name, convert(module))
    return len(targets)


def quantize_layers(model: nn.Module, weight_spec: QuantSpec | None, act_spec: QuantSpec | None,
                    kinds: Iterable[type[nn.Module]] = QUANTIZABLE, skip: Callable[[str], bool] = lambda name: False,
                    learn_scale: bool = False) -> nn.Module:
    """Replace, in place, every layer of the float types `kinds` whose qualified name is not skipped (e.g. "lm_head")
    by its FakeQuantLayer, sharing its parameters. Returns the model."""
    for kind in layer_kinds(kinds):
        replace_modules(model, kind.float_type, functools.partial(kind.fake_quant, weight_spec=weight_spec,
                                                                  act_spec=act_spec, learn_scale=learn_scale), skip)
    return model


def quantize_linears(model: nn.Module, weight_spec: QuantSpec | None, act_spec: QuantSpec | None,
                     skip: Callable[[str], bool] = lambda name: False, learn_scale: bool = False) -> nn.Module:
    """`quantize_layers` of the nn.Linear layers only."""
    return quantize_layers(model, weight_spec, act_spec, (nn.Linear,), skip, learn_scale)


def rtn_quantize(model: nn.Module, weight_spec: QuantSpec, act_spec: QuantSpec | None = None,
                 skip: Callable[[str], bool] = lambda name: False) -> nn.Module:
    """Round-to-nearest baseline: min/max grids, nothing learned or compensated."""
    return quantize_linears(model, weight_spec, act_spec, skip, learn_scale=False)


def pack_quantized_layers(model: nn.Module, kinds: Iterable[type[nn.Module]] = QUANTIZABLE) -> nn.Module:
    """Replace, in place, every weight-quantized FakeQuantLayer of the float types `kinds` by its PackedQuantLayer
    (an activation-only one has no codes to pack and stays). Returns the model."""
    for kind in layer_kinds(kinds):
        replace_modules(model, kind.fake_quant,
                        lambda layer, packed=kind.packed: packed.from_fake_quant(layer) if layer.weight_spec else layer)
    return model


def pack_quantized_linears(model: nn.Module) -> nn.Module:
    """`pack_quantized_layers` of the quantized linears only."""
    return pack_quantized_layers(model, (nn.Linear,))


def install_packed_layers(model: nn.Module, weight_spec: QuantSpec, act_spec: QuantSpec | None,
                          kinds: Iterable[type[nn.Module]] = QUANTIZABLE,
                          skip: Callable[[str], bool] = lambda name: False) -> nn.Module:
    """Replace every non-skipped layer of the float types `kinds` by an empty PackedQuantLayer shell of the same
    shape, ready for `load_state_dict` of a packed model's tensors (how a saved quantized model is loaded without
    any of the calibration code). Returns the model."""
    selected = layer_kinds(kinds)
    count = sum(replace_modules(model, kind.float_type, functools.partial(kind.packed, weight_spec=weight_spec,
                                                                          act_spec=act_spec), skip)
                for kind in selected)
    if count == 0:
        names = " / ".join(f"nn.{kind.float_type.__name__}" for kind in selected)
        raise ValueError(f"no {names} to install packed layers into (already quantized, or all skipped)")
    return model


def install_packed_linears(model: nn.Module, weight_spec: QuantSpec, act_spec: QuantSpec | None,
                           skip: Callable[[str], bool] = lambda name: False) -> nn.Module:
    """`install_packed_layers` into the nn.Linear layers only."""
    return install_packed_layers(model, weight_spec, act_spec, (nn.Linear,), skip)


# ---------------------------------------------------------------------------------------------------------------
# GPTQ (Frantar et al., 2022): quantize one column at a time and spread each column's error over the columns not
# yet quantized, weighted by the inverse Hessian of the layer-output loss ||X W^T - X Q^T||^2.


def accumulate_hessian(hessian: torch.Tensor | None, inputs: torch.Tensor,
                       n_seen: int) -> tuple[torch.Tensor, int]:
    """Running mean H = 2/n * sum_rows x x^T over all rows (tokens) of `inputs` (..., in) seen so far.

    The reference code counts sequences rather than tokens in n; GPTQ is invariant to that constant factor
    (the dampening is relative to mean(diag H)).
    """
    x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32)   # (rows, in)
    if hessian is None:
        hessian = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
    n_total = n_seen + x.shape[0]
    hessian = hessian * (n_seen / n_total)
    x = x * math.sqrt(2.0 / n_total)
    return hessian + x.T @ x, n_total


class GPTQResult(NamedTuple):
    weight: torch.Tensor    # (out, in), dequantized: every value lies on its grid
    scale: torch.Tensor     # grid per row (out, 1), per group (out, n_groups, 1), or per tensor (1, 1)
    zero: torch.Tensor      # same shape as scale


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, block_size: int = 128,
                  percdamp: float = 0.01) -> GPTQResult:
    """GPTQ for one (out, in) weight given the (in, in) Hessian from `accumulate_hessian`; returns the quantized
    weight with the grids it lies on (to install into a FakeQuantLinear or export as integers)."""
    if spec.granularity == "per_token":
        raise ValueError("per_token is an activation granularity; GPTQ quantizes weights")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    n_out, n_in = weight.shape
    if hessian.shape != (n_in, n_in):
        raise ValueError(f"hessian must be ({n_in}, {n_in}) for a weight with {n_in} input columns, "
                         f"got {tuple(hessian.shape)}")
    W = weight.detach().clone().to(torch.float32)
    H = hessian.detach().clone().to(torch.float32)

    per_group = spec.granularity == "per_group"
    if per_group:
        group_size = spec.group_size
        assert group_size is not None
        grouped(W, spec)  # raises if group_size does not divide in_features
        column_grid = QuantSpec(spec.bits, "per_channel", symmetric=spec.symmetric)
        scales = W.new_zeros(n_out, n_in // group_size, 1)
        zeros = W.new_zeros(n_out, n_in // group_size, 1)
    else:
        # per row or per tensor: one grid from the original weight, before any update (as the reference code)
        scale, zero = quant_params(W, spec)

    # Inputs that never fire carry no information: any value is optimal, so zero them and keep H invertible.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    # Upper Cholesky factor of H^-1: row j holds the inverse-Hessian entries GPTQ needs once columns < j are
    # fixed, so the sequential updates need no re-inversion.
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.zeros_like(W)
    for start in range(0, n_in, block_size):
        end = min(start + block_size, n_in)
        W_block = W[:, start:end].clone()                       # (out, b), updated column by column
        Q_block = torch.zeros_like(W_block)
        Err_block = torch.zeros_like(W_block)
        Hinv_block = Hinv[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if per_group and column % group_size == 0:
                # The group's grid is fixed when its first column is reached, from the weights as updated by
                # every error so far; the reference reads W, which lacks this block's errors (in-block updates
                # live in W_block, and those beyond the block are applied lazily after it).
                beyond = column + group_size - end                # group columns past this block
                current = W_block[:, i:i + group_size]
                if beyond > 0:
                    pending = Err_block[:, :i] @ Hinv[start:column, end:end + beyond]
                    current = torch.cat([current, W[:, end:end + beyond] - pending], dim=1)
                scale, zero = quant_params(current, column_grid)
                scales[:, column // group_size] = scale
                zeros[:, column // group_size] = zero
            w = W_block[:, i:i + 1]                              # (out, 1)
            q = fake_quantize(w, scale, zero, spec.bits, spec.symmetric)
            Q_block[:, i:i + 1] = q
            err = (w - q) / Hinv_block[i, i]
            W_block[:, i:] -= err @ Hinv_block[i:i + 1, i:]
            Err_block[:, i:i + 1] = err
        Q[:, start:end] = Q_block
        # lazy batch update: the block's accumulated error reaches later columns in one matmul
        W[:, end:] -= Err_block @ Hinv[start:end, end:]

    if per_group:
        scale, zero = scales, zeros
    return GPTQResult(Q.to(weight.dtype), scale, zero)

