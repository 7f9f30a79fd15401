"""CBQ — Cross-Block Quantization for LLMs (arXiv 2312.07950, ICLR 2025), as a paperops recipe.

Train (tiny) or load (small: SmolLM2-135M, full: a local checkpoint) a LLaMA decoder, quantize it with CBQ at the
configured setting, and compare — in one run, on the same held-out text — every method × setting of the paper's
tables: RTN, GPTQ, SmoothQuant, CBQ and CBQ without its outlier preprocessing, at W4A16 / W2A16 / W4A8 / W4A4.
The registered compressed model stores bit-packed integer weights + scales (quant.PackedQuantLinear), so its size
on disk is the real quantized size and loading it needs none of the calibration code.
"""
from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files for MLflow, never windows
import matplotlib.pyplot as plt
import numpy as np
import torch
from pydantic import Field, model_validator
from tokenizers import Tokenizer
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from models.cbq import CBQConfig, check_fits, decoder_linears
from models.common.lm import (
    LMConfig, LMTrainConfig, TokenizedLM, architecture, build_lm, calibration_segments, eval_windows, generate,
    perplexity, train_bpe_tokenizer, train_lm,
)
from models.common.profiling import measure_latency, size_on_disk
from recipes.base import (
    CompressionResult, Evaluation, Headline, PaperFigure, Recipe, RecipeConfig, RunModels, Section, VariantResult,
    compare_to_parent, TrainResult, register_recipe, seed_everything,
)
from models.common.reporting import Reporter
from models.equivalent_transforms import inject_activation_outliers
from models.ptq import METHODS, PTQ_METHODS, Compress, keeps_full_precision, smoothquant
from models.quant import QuantSetting, install_packed_linears, pack_quantized_linears
from data.text import TextDataset, load_text_dataset
from data.views import DatasetViews

EVAL_SETS = {"shakespeare": "eval_shakespeare", "milton": "eval_milton"}   # WikiText-2 role, C4 role
VAL_SETS = {"val": "val"}  # held-out documents of the training works: what train and compress measure on
# the CBQ knobs a reviewer filters registered versions by (every knob is in the record's compression.knobs)
RECORDED_CBQ_KNOBS = ("rank", "window", "overlap", "epochs", "calib_segments", "calib_seq_len", "cfp")


class LMEvaluateSection(Section):
    seq_len: int = Field(256, ge=8, description="perplexity context (non-overlapping windows)")
    max_windows: int | None = Field(40, ge=1, description="windows per held-out set; None = all of it")
    methods: tuple[str, ...] = Field(METHODS, description="every method runs at every setting in one run")
    settings: tuple[QuantSetting, ...] = (
        QuantSetting("W4A16", w_bits=4),
        QuantSetting("W2A16g64", w_bits=2, w_granularity="per_group", group_size=64),
        QuantSetting("W4A8", w_bits=4, a_bits=8),
        QuantSetting("W4A4", w_bits=4, a_bits=4),
    )
    smoothquant_alpha: float = Field(0.5, ge=0, le=1)
    latency_batch: int = Field(4, ge=1)
    latency_runs: int = Field(5, ge=1)
    latency_warmup: int = Field(1, ge=0)
    prompts: tuple[str, ...] = ("ROMEO:\n", "To be, or not to be,")
    max_new_tokens: int = Field(24, ge=1)

    @model_validator(mode="after")
    def _check_methods(self) -> LMEvaluateSection:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {list(METHODS)}")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"setting names must be distinct, got {names}")
        return self


class CBQRecipeConfig(RecipeConfig):
    model: LMConfig = LMConfig()
    train: LMTrainConfig = LMTrainConfig()
    compress: CBQConfig = CBQConfig()
    evaluate: LMEvaluateSection = LMEvaluateSection()


@dataclass(frozen=True)
class TextSplits:
    """The dataset's text, and the token ids of each split per tokenizer (encoding is cached per tokenizer)."""

    raw: TextDataset
    _ids: dict[str, list[tuple[Tokenizer, torch.Tensor]]] = field(default_factory=dict, repr=False, compare=False)

    def ids(self, model: TokenizedLM, split: str) -> torch.Tensor:
        # matched by identity (kept alive here), so a new tokenizer never reuses another's cached ids
        for tokenizer, ids in self._ids.setdefault(split, []):
            if tokenizer is model.tokenizer:
                return ids
        ids = model.encode(self.raw.split(split))
        self._ids[split].append((model.tokenizer, ids))
        return ids


def _ptq_methods(cfg: CBQRecipeConfig) -> dict[str, Compress]:
    """The compared methods by name, SmoothQuant at the migration strength the evaluate section sets."""
    return PTQ_METHODS | {"smoothquant": functools.partial(smoothquant, alpha=cfg.evaluate.smoothquant_alpha)}


def _knobs(cfg: CBQRecipeConfig) -> dict[str, Any]:
    """What made the registered model: its setting (as restore_compression reads it), the rest of the CBQ config,
    and the seed that drew its calibration segments and LoRA factors."""
    cbq = {f.name: getattr(cfg.compress, f.name) for f in fields(cfg.compress) if f.name != "setting"}
    return {"method": "cbq", **cfg.compress.setting.knobs(), **cbq, "seed": cfg.seed}


def _prompts(model_input: Any) -> list[str]:
    """Prompts from what MLflow hands a pyfunc: a list, a 1-D array, or a one-column DataFrame of strings."""
    if hasattr(model_input, "iloc"):
        if model_input.shape[1] != 1:
            raise ValueError(f"expected one column of prompts, got columns {list(model_input.columns)}")
        model_input = model_input.iloc[:, 0].tolist()
    prompts = [str(p) for p in np.asarray(model_input, dtype=object).reshape(-1)]
    if not prompts:
        raise ValueError("no prompts given")
    return prompts


@register_recipe
class CBQRecipe(Recipe):
    name = "cbq"
    title = "CBQ: Cross-Block Quantization for Large Language Models"
    compression = "cbq"
    config_model = CBQRecipeConfig
    primary_metric = "ppl_shakespeare"
    higher_is_better = False
    cost_metric = "size_ratio"
    serving_params = {"max_new_tokens": 32}
    # The registered setting (compress.setting, W4A16 in every profile): its variants are the ones a pipeline run
    # evaluates side by side; the other settings live in the method_by_setting table.
    headline = Headline("ppl_shakespeare", "cbq_W4A16", "gptq_W4A16", None,
                        "W4A16: 0.1-0.3 perplexity below GPTQ on LLaMA/OPT, WikiText2 (arXiv 2312.07950)")
    paper_figures = (
        PaperFigure("w4a16_ppl_gain_vs_gptq", 0.2, "arXiv 2312.07950 abstract",
                    "W4A16 perplexity 0.1-0.3 lower than GPTQ (LLaMA/OPT, WikiText2)"),
        PaperFigure("w4a4_ppl_ratio_vs_fp", 11.26 / 5.68, "OmniQuant (ICLR 2024), LLaMA-1-7B WikiText2",
                    "OmniQuant W4A4 11.26 vs FP16 5.68; CBQ claims to be below it", higher_is_better=False),
        PaperFigure("w2a16g64_ppl_ratio_vs_fp", 9.72 / 5.68, "OmniQuant (ICLR 2024), LLaMA-1-7B WikiText2",
                    "OmniQuant W2A16g128 9.72 vs FP16 5.68; CBQ claims to be below it", higher_is_better=False),
    )
    summary_columns = (("ppl_shakespeare", "ppl Shakespeare", 1.0), ("ppl_milton", "ppl Milton", 1.0),
                       ("size_ratio", "size ×", 1.0), ("tokens_per_s", "tokens/s", 1.0))
    weight_bits_knob = "weight.bits"
    smoke_overrides = (
        "model.vocab_size=512", "model.hidden_size=64", "model.intermediate_size=128", "model.num_hidden_layers=2",
        "model.num_attention_heads=2", "model.num_key_value_heads=2", "model.inject_outliers.channels=2",
        "train.steps=30", "train.batch_size=8", "train.seq_len=64", "train.warmup_steps=5",
        "compress.calib_segments=8", "compress.calib_seq_len=64", "compress.epochs=1",
        "evaluate.seq_len=64", "evaluate.max_windows=4", "evaluate.latency_batch=2", "evaluate.latency_runs=1",
        "evaluate.latency_warmup=0", "evaluate.max_new_tokens=4",
        "evaluate.settings=[{name: W4A16, w_bits: 4}, {name: W4A4, w_bits: 4, a_bits: 4}]",
        "promote.max_metric_drop=1000",
    )
    deployment_description = "CBQ (cross-block quantization) of a LLaMA decoder, with RTN/GPTQ/SmoothQuant baselines"
    deployment_tags = ("language",)

    def load_data(self, datasets: DatasetViews, cfg: CBQRecipeConfig) -> TextSplits:
        return TextSplits(load_text_dataset(datasets["data"]))

    def build_model(self, cfg: CBQRecipeConfig) -> nn.Module:
        seed_everything(cfg.seed)
        return build_lm(cfg.model)

    def train(self, model: TokenizedLM, data: TextSplits, cfg: CBQRecipeConfig,
              reporter: Reporter) -> TrainResult:
        generator = seed_everything(cfg.seed)
        metrics: dict[str, float] = {}
        if cfg.model.source == "tiny":
            model.tokenizer = train_bpe_tokenizer(data.raw.train, cfg.model.vocab_size)
        if cfg.train.steps:
            metrics |= train_lm(model, data.ids(model, "train"), cfg.train, reporter, generator)
        metrics |= self._perplexities(model.lm, model, data, cfg, VAL_SETS)  # val, not test: CONTRACT19 §1
        if cfg.model.inject_outliers is not None:
            inject = cfg.model.inject_outliers
            inject_activation_outliers(model.lm, inject.channels, inject.factor, cfg.seed)
            after = self._perplexities(model.lm, model, data, cfg, VAL_SETS)  # val, not test: CONTRACT19 §1
            metrics["outlier_injection_ppl_change"] = max(abs(after[k] - metrics[k]) for k in after)
            metrics |= after
        return TrainResult(metrics)

    def _perplexities(self, lm: nn.Module, model: TokenizedLM, data: TextSplits, cfg: CBQRecipeConfig,
                      sets: dict[str, str] = EVAL_SETS) -> dict[str, float]:
        """ppl_<name> on the split of every (name, split) of `sets`: the test sets unless a step says otherwise."""
        return {f"ppl_{name}": perplexity(lm, eval_windows(data.ids(model, split), cfg.evaluate.seq_len,
                                                           cfg.evaluate.max_windows))
                for name, split in sets.items()}

    def _calibration(self, model: TokenizedLM, data: TextSplits, cfg: CBQRecipeConfig) -> torch.Tensor:
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        return calibration_segments(data.ids(model, "calib"), cfg.compress.calib_segments,
                                    cfg.compress.calib_seq_len, generator)

    def _quantize(self, model: TokenizedLM, method: str, setting: QuantSetting, calib: torch.Tensor,
                  cfg: CBQRecipeConfig, reporter: Reporter | None) -> TokenizedLM:
        quantize = _ptq_methods(cfg)[method]
        quantize(model.lm, replace(cfg.compress, setting=setting), calib, seed=cfg.seed, reporter=reporter)
        pack_quantized_linears(model.lm)
        return model

    def compress(self, model: TokenizedLM, data: TextSplits, cfg: CBQRecipeConfig,
                 reporter: Reporter) -> CompressionResult:
        self._quantize(model, "cbq", cfg.compress.setting, self._calibration(model, data, cfg), cfg, reporter)
        metrics = self._perplexities(model.lm, model, data, cfg, VAL_SETS)  # val, not test: CONTRACT19 §1
        return CompressionResult(model=model, method="cbq", knobs=_knobs(cfg), metrics=metrics)

    def restore_compression(self, model: TokenizedLM, knobs: dict[str, Any]) -> nn.Module:
        setting = QuantSetting.from_knobs(knobs)
        install_packed_linears(model.lm, setting.weight, setting.act, skip=keeps_full_precision)
        return model

    def compression_record(self, knobs: dict[str, Any]) -> dict[str, str]:
        setting = QuantSetting.from_knobs(knobs)
        return {"setting": setting.name, "weight_bits": str(setting.weight.bits),
                "weight_granularity": setting.weight.granularity,
                "group_size": str(setting.weight.group_size or ""),
                "act_bits": str(setting.act.bits) if setting.act else "fp32",
                "act_granularity": setting.act.granularity if setting.act else "",
                **{name: json.dumps(knobs[name]) for name in RECORDED_CBQ_KNOBS}}

    def model_files(self, model: TokenizedLM) -> dict[str, str]:
        assert model.tokenizer is not None
        return {"lm_config.json": model.lm.config.to_json_string(),
                "tokenizer.json": model.tokenizer.to_str(),
                "eos_token_id.json": json.dumps(model.eos_token_id)}

    def module_for_loading(self, cfg: CBQRecipeConfig, files: dict[str, str], knobs: dict[str, Any] | None) -> nn.Module:
        """The architecture from the saved config (no pretrained source needed), empty until the weights load."""
        lm = LlamaForCausalLM(LlamaConfig.from_dict(json.loads(files["lm_config.json"]))).eval()
        model = TokenizedLM(lm, Tokenizer.from_str(files["tokenizer.json"]), json.loads(files["eos_token_id.json"]))
        return self.restore_compression(model, knobs) if knobs else model

    def _measure(self, model: TokenizedLM, data: TextSplits, cfg: CBQRecipeConfig) -> dict[str, float]:
        ev = cfg.evaluate
        metrics = self._perplexities(model.lm, model, data, cfg)
        metrics["size_bytes"] = float(size_on_disk(model))
        batch = eval_windows(data.ids(model, "eval_shakespeare"), ev.seq_len, ev.latency_batch)
        timing = measure_latency(model, batch, runs=ev.latency_runs, warmup=ev.latency_warmup)
        metrics |= timing | {"tokens_per_s": timing["throughput_per_s"] * ev.seq_len}
        return metrics

    def evaluate(self, models: RunModels, data: TextSplits, cfg: CBQRecipeConfig, reporter: Reporter) -> Evaluation:
        dense, compressed = models.dense, models.compressed
        ev = cfg.evaluate
        setting = cfg.compress.setting
        calib = self._calibration(dense, data, cfg)
        parent = self._measure(dense, data, cfg)
        variants = [VariantResult("fp", "parent", "fp", {}, parent)]
        grid: list[dict[str, Any]] = []
        settings = {s.name: s for s in ev.settings} | {setting.name: setting}
        total = len(settings) * len(ev.methods)
        for s_index, current in enumerate(settings.values()):
            for m_index, method in enumerate(ev.methods):
                at_compress_setting = current.name == setting.name
                if method == "cbq" and at_compress_setting:
                    model = compressed          # the registered model itself, not a re-run
                else:
                    copied = TokenizedLM(copy.deepcopy(dense.lm), dense.tokenizer, dense.eos_token_id)
                    model = self._quantize(copied, method, current, calib, cfg, None)
                metrics = (self._measure(model, data, cfg) if at_compress_setting
                           else self._perplexities(model.lm, model, data, cfg)
                           | {"size_bytes": float(size_on_disk(model))})
                metrics["size_ratio"] = metrics["size_bytes"] / parent["size_bytes"]
                metrics["w_bits"] = float(current.weight.bits)
                grid.append({"setting": current.name, "method": method,
                             **{k: metrics[k] for k in ("ppl_shakespeare", "ppl_milton", "size_bytes", "size_ratio")}})
                if at_compress_setting:
                    role = {"cbq": "method", "cbq_no_cfp": "ablation"}.get(method, "baseline")
                    variants.append(VariantResult(f"{method}_{current.name}", role, method,
                                                  {"method": method, **current.knobs()}, metrics))
                reporter.progress(s_index * len(ev.methods) + m_index + 1, total, "quantize method x setting")
        compare_to_parent(variants, self.primary_metric)
        for row in grid:
            for name in EVAL_SETS:
                row[f"ppl_{name}_ratio_vs_fp"] = row[f"ppl_{name}"] / parent[f"ppl_{name}"]
        samples = [{"variant": label, "prompt": prompt, "completion": completion}
                   for label, model in (("fp", dense), (f"cbq_{setting.name}", compressed))
                   for prompt, completion in zip(ev.prompts, generate(model, list(ev.prompts), ev.max_new_tokens))]
        table = [{"variant": v.name, "role": v.role, **{k: round(float(m), 6) for k, m in v.metrics.items()}}
                 for v in variants]
        return Evaluation(variants=variants,
                          tables={"comparison": table, "method_by_setting": grid, "samples": samples},
                          figures={"ppl_by_setting": _ppl_by_setting_figure(grid, parent)})

    def our_figures(self, evaluation: Evaluation) -> dict[str, float]:
        grid = {(r["setting"], r["method"]): r for r in evaluation.tables["method_by_setting"]}
        figures = {}
        if ("W4A16", "cbq") in grid and ("W4A16", "gptq") in grid:
            figures["w4a16_ppl_gain_vs_gptq"] = (grid["W4A16", "gptq"]["ppl_shakespeare"]
                                                 - grid["W4A16", "cbq"]["ppl_shakespeare"])
        for setting in ("W4A4", "W2A16g64"):
            if (setting, "cbq") in grid:
                figures[f"{setting.lower()}_ppl_ratio_vs_fp"] = grid[setting, "cbq"]["ppl_shakespeare_ratio_vs_fp"]
        return figures

    def input_example(self, data: TextSplits, n: int = 2) -> list[str]:
        return ["ROMEO:\n", "To be, or not to be,"][:n]

    def predict(self, model: TokenizedLM, batch: Any, params: dict[str, Any] | None = None) -> list[str]:
        max_new_tokens = int((params or {}).get("max_new_tokens", self.serving_params["max_new_tokens"]))
        if not 1 <= max_new_tokens <= 1024:
            raise ValueError(f"max_new_tokens must be in [1, 1024], got {max_new_tokens}")
        return generate(model, _prompts(batch), max_new_tokens)

    def check_config(self, cfg: CBQRecipeConfig) -> None:
        """The CBQ knobs, every setting's weight groups and the sequence lengths against the LLaMA `cfg.model` builds."""
        try:
            model = architecture(cfg.model)
        except (OSError, TypeError) as exc:  # no checkpoint or package where the config says; not a LLaMA
            raise ValueError(str(exc)) from exc
        try:
            check_fits(model, cfg.compress)
        except ValueError as exc:
            raise ValueError(f"compress.{exc}") from exc
        in_features = {linear.in_features for linear in decoder_linears(model)}
        for i, setting in enumerate(cfg.evaluate.settings):
            try:
                setting.check_fits(in_features)
            except ValueError as exc:
                raise ValueError(f"evaluate.settings[{i}] ({setting.name}): {exc}") from exc
        context = model.config.max_position_embeddings
        lengths = {"train.seq_len": cfg.train.seq_len, "compress.calib_seq_len": cfg.compress.calib_seq_len,
                   "evaluate.seq_len": cfg.evaluate.seq_len}
        for key, length in lengths.items():
            if length > context:
                raise ValueError(f"{key}={length} exceeds the model's context of {context} positions")


def _ppl_by_setting_figure(grid: list[dict[str, Any]], parent: dict[str, float]) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    settings = list(dict.fromkeys(r["setting"] for r in grid))
    for ax, name in zip(axes, ("shakespeare", "milton")):
        for method in dict.fromkeys(r["method"] for r in grid):
            rows = {r["setting"]: r for r in grid if r["method"] == method}
            ax.plot(settings, [rows[s][f"ppl_{name}"] if s in rows else math.nan for s in settings],
                    marker="o", label=method)
        ax.axhline(parent[f"ppl_{name}"], color="black", linestyle="--", label="fp")
        ax.set_yscale("log")
        ax.set_title(f"perplexity on held-out {name}")
        ax.set_xlabel("setting")
        ax.set_ylabel("perplexity (log)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
