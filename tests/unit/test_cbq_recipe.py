"""recipes/cbq.py: the config schema is the pure configs of models/ (LMConfig, LMTrainConfig, CBQConfig), bad values
are named where they are, and the registered compression carries every CBQ knob that made it."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from data.text import TextDataset
from models.cbq import CBQConfig
from models.common.lm import LMConfig, LMTrainConfig, train_bpe_tokenizer
from models.ptq import smoothquant
from models.common.reporting import RecordingReporter
from models.quant import PackedQuantLinear
from recipes import get_recipe, load_config
from recipes.cbq import TextSplits, _ptq_methods
from settings.config import ConfigError

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 40
MICRO = ["model.vocab_size=300", "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
         "model.num_attention_heads=2", "model.num_key_value_heads=2", "model.max_position_embeddings=64",
         "compress.calib_segments=4", "compress.calib_seq_len=32", "compress.epochs=1", "compress.rank=2",
         "compress.batch_size=2", "evaluate.seq_len=32", "evaluate.max_windows=2",
         # the reproduction's comparison (tiny itself compares W4A16 only): the W4A4 companions are exercised too
         "compress.comparison_settings=[{name: W4A16, w_bits: 4}, {name: W4A4, w_bits: 4, a_bits: 4}]"]


def test_every_profile_validates_to_the_configs_of_models() -> None:
    for profile in ("tiny", "small", "full"):
        cfg = load_config("cbq", profile).config
        assert (type(cfg.model), type(cfg.train)) == (LMConfig, LMTrainConfig)
        assert isinstance(cfg.compress, CBQConfig)  # CBQ's own knobs, plus the comparison beside it
    tiny = load_config("cbq", "tiny").config
    assert (tiny.compress.epochs, tiny.compress.window, tiny.compress.setting.weight.bits) == (5, 2, 4)
    assert tiny.model.inject_outliers.factor == 30.0


@pytest.mark.parametrize("override, message", [
    ("model.hidden_size=250", r"model: Value error, hidden_size \(250\) must be a multiple of num_attention_heads"),
    ("model.inject_outliers.channels=0", "model.inject_outliers: Value error, channels must be >= 1, got 0"),
    ("train.seq_len=4", "train: Value error, seq_len must be >= 8, got 4"),
    ("compress.rank=0", "compress: Value error, rank must be >= 1, got 0"),
    ("compress.rnk=4", "compress.rnk: Unexpected keyword argument"),
    ("compress.setting.w_bits=9", "compress.setting: Value error, w_bits must be <= 8, got 9"),
    ("model.num_hidden_layers=two", "model.num_hidden_layers: Input should be a valid integer"),
    ("compress.comparison_methods=[rtn, awq]", "compress: Value error, comparison_methods: unknown methods \\['awq'\\]"),
    ("compress.comparison_settings=[{name: W4A16, w_bits: 3}]",
     "compress: Value error, comparison_settings: 'W4A16' names the registered setting but differs from it"),
])
def test_a_bad_value_is_named_with_its_section(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("cbq", "tiny", [override])


@pytest.fixture(scope="module")
def micro():
    recipe = get_recipe("cbq")
    cfg = load_config("cbq", "tiny", MICRO).config
    data = TextSplits(TextDataset(train=TEXT, calib=TEXT, val=TEXT[3000:6000], eval_shakespeare=TEXT[:3000],
                                  eval_milton=TEXT[-3000:], meta={}))
    model = recipe.build_model(cfg)
    model.tokenizer = train_bpe_tokenizer(TEXT, 300)
    return recipe, cfg, data, model


def test_compression_patches_the_model_and_records_every_cbq_knob(micro) -> None:
    recipe, cfg, data, dense = micro
    model = copy.deepcopy(dense)
    result = recipe.compress(model, data, cfg, reporter=RecordingReporter())
    assert result.model is model and result.method == "cbq"
    assert sum(isinstance(m, PackedQuantLinear) for m in model.lm.modules()) == 7 * 2
    knobs = result.knobs
    assert (knobs["rank"], knobs["window"], knobs["overlap"], knobs["epochs"]) == (2, 2, 1, 1)
    assert (knobs["calib_segments"], knobs["calib_seq_len"], knobs["cfp"], knobs["seed"]) == (4, 32, True, 0)
    assert knobs["setting"] == "W4A16" and knobs["weight"]["bits"] == 4 and knobs["act"] is None
    compress_fields = set(CBQConfig.__dataclass_fields__) - {"setting"}
    assert compress_fields <= knobs.keys()
    record = recipe.compression_record(knobs)
    assert {k: record[k] for k in ("rank", "window", "overlap", "epochs", "calib_segments", "cfp")} == {
        "rank": "2", "window": "2", "overlap": "1", "epochs": "1", "calib_segments": "4", "cfp": "true"}
    assert (record["setting"], record["weight_bits"], record["act_bits"]) == ("W4A16", "4", "fp32")
    # the knobs alone rebuild the registered model from its files and weights
    restored = recipe.module_for_loading(cfg, recipe.model_files(model), knobs)
    restored.load_state_dict(model.state_dict())
    ids = data.ids(model, "eval_shakespeare")[None, :32]
    with torch.no_grad():
        assert torch.equal(restored(ids), model(ids))


def test_smoothquant_runs_at_the_configured_migration_strength(micro) -> None:
    _, _, data, dense = micro
    cfg = load_config("cbq", "tiny", MICRO + ["compress.smoothquant_alpha=0.2"]).config
    calib = data.ids(dense, "calib")[:64].view(2, 32)
    weights = {alpha: smoothquant(copy.deepcopy(dense.lm), cfg.compress, calib, alpha=alpha).state_dict()
               for alpha in (0.2, 0.5)}
    configured = _ptq_methods(cfg)["smoothquant"](copy.deepcopy(dense.lm), cfg.compress, calib).state_dict()
    assert all(torch.equal(configured[k], weights[0.2][k]) for k in configured)
    assert not all(torch.equal(configured[k], weights[0.5][k]) for k in configured)



def test_companions_round_trip_and_every_variant_is_scored_on_the_same_windows(micro, tmp_path) -> None:
    """Compress quantizes every method x setting beside CBQ; saved and rebuilt as the platform does (safetensors,
    `companion_module`, strict load), they score exactly as the in-memory ones, and every variant's per-item scores
    are the mean NLL of the same windows, whose exp(mean) is the variant's perplexity."""
    from safetensors.torch import load_model, save_model

    from recipes.base import RunModels

    recipe, cfg, data, dense = micro
    result = recipe.compress(copy.deepcopy(dense), data, cfg, reporter=RecordingReporter())
    expected = {f"{m}_{s}" for m in ("rtn", "gptq", "smoothquant", "cbq", "cbq_no_cfp") for s in ("W4A16", "W4A4")}
    assert set(result.companions) == expected - {"cbq_W4A16"}  # CBQ at the registered setting is the model itself
    rebuilt = {}
    for name, companion in result.companions.items():
        path = tmp_path / f"{name}.safetensors"
        save_model(companion.module, str(path))
        module = recipe.companion_module(name, cfg, companion.knobs)
        load_model(module, str(path), strict=True)
        rebuilt[name] = module.eval()
    in_memory = {name: companion.module for name, companion in result.companions.items()}
    scores = [recipe.evaluate(RunModels(dense, result.model, companions, {}), data, cfg, RecordingReporter())
              for companions in (in_memory, rebuilt)]
    variants = {v.name: v for v in scores[1].variants}
    assert set(variants) == expected | {"fp"}
    for before, after in zip(scores[0].variants, scores[1].variants):
        assert before.name == after.name and before.metrics["ppl_shakespeare"] == after.metrics["ppl_shakespeare"]
    windows = cfg.evaluate.max_windows
    for v in variants.values():
        for metric in ("ppl_shakespeare", "ppl_milton"):
            nll = v.per_item[metric]
            assert nll.shape == (windows,)
            assert v.metrics[metric] == pytest.approx(float(recipe.per_item_transforms[metric](nll.mean())), rel=1e-12)
    # the companions really are the compared quantizations: W4A4 quantizes activations too, so it scores differently
    assert not np.array_equal(variants["rtn_W4A16"].per_item["ppl_shakespeare"],
                              variants["rtn_W4A4"].per_item["ppl_shakespeare"])
    assert variants["cbq_W4A16"].role == "method" and variants["gptq_W4A16"].role == "baseline"
    assert variants["cbq_no_cfp_W4A4"].role == "ablation"
