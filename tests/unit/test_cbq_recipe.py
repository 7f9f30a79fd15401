"""recipes/cbq.py: the config schema is the pure configs of models/ (LMConfig, LMTrainConfig, CBQConfig), bad values
are named where they are, and the registered compression carries every CBQ knob that made it."""
from __future__ import annotations

import copy

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
         "compress.batch_size=2", "evaluate.seq_len=32", "evaluate.max_windows=2"]


def test_every_profile_validates_to_the_configs_of_models() -> None:
    for profile in ("tiny", "small", "full"):
        cfg = load_config("cbq", profile).config
        assert (type(cfg.model), type(cfg.train), type(cfg.compress)) == (LMConfig, LMTrainConfig, CBQConfig)
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
    ("evaluate.methods=[rtn, awq]", "unknown methods \\['awq'\\]"),
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
    cfg = load_config("cbq", "tiny", MICRO + ["evaluate.smoothquant_alpha=0.2"]).config
    calib = data.ids(dense, "calib")[:64].view(2, 32)
    weights = {alpha: smoothquant(copy.deepcopy(dense.lm), cfg.compress, calib, alpha=alpha).state_dict()
               for alpha in (0.2, 0.5)}
    configured = _ptq_methods(cfg)["smoothquant"](copy.deepcopy(dense.lm), cfg.compress, calib).state_dict()
    assert all(torch.equal(configured[k], weights[0.2][k]) for k in configured)
    assert not all(torch.equal(configured[k], weights[0.5][k]) for k in configured)

