"""The weight-quantization config section of every recipe that compresses a model with the project's quantizer
(models/quant.py: round to nearest on a min/max grid, packed integer codes) rather than with a paper's own method
(misegnet, vmt), and the knobs it records. Shared schema, not a paper: recipes/__init__.py lists it in _NOT_PAPERS."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from torch import nn

from models.quant import QuantSpec, install_packed_layers, pack_quantized_layers, quantize_layers
from recipes.base import Section


class WeightQuantSection(Section):
    bits: int = Field(8, ge=2, le=8, description="weight bits of the registered compressed version")
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"
    symmetric: bool = False

    def spec(self, bits: int | None = None) -> QuantSpec:
        return QuantSpec(bits=self.bits if bits is None else bits, granularity=self.granularity,
                         symmetric=self.symmetric)

    def knobs(self, layers: str, bits: int | None = None) -> dict[str, Any]:
        """What a version records: the grid and which layers carry it."""
        return {"bits": self.bits if bits is None else bits, "granularity": self.granularity,
                "symmetric": self.symmetric, "layers": layers}


def quantize_weights(model: nn.Module, spec: QuantSpec, kinds: tuple[type[nn.Module], ...]) -> nn.Module:
    """In place: every layer of `kinds` weight-quantized and packed (weights only, no activation grid)."""
    quantize_layers(model, spec, None, kinds=kinds)
    return pack_quantized_layers(model, kinds=kinds)


def restore_weights(model: nn.Module, knobs: dict[str, Any], kinds: tuple[type[nn.Module], ...]) -> nn.Module:
    """Empty packed shells of the recorded grid in every layer of `kinds`, for the saved tensors to fill."""
    spec = QuantSpec(bits=int(knobs["bits"]), granularity=knobs["granularity"], symmetric=bool(knobs["symmetric"]))
    return install_packed_layers(model, spec, None, kinds=kinds)


def quant_record(knobs: dict[str, Any]) -> dict[str, str]:
    """The registry tags a reviewer filters quantized versions by."""
    return {"bits": str(knobs["bits"]), "granularity": str(knobs["granularity"]),
            "symmetric": str(knobs["symmetric"]).lower(), "layers": str(knobs["layers"])}
