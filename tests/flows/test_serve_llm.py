"""`paperops serve-llm`'s loader on a real MLflow registry: a registered CBQ language model comes back by alias,
weights and tokenizer intact, and runs in the APIServe engine; a missing alias or a non-language model is refused
with a message that says what to do."""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM
from typer.testing import CliRunner

from models.apiserve.costs import IterationTimeModel
from models.common.lm import TokenizedLM, llama_config, train_bpe_tokenizer
from recipes import get_recipe
from paperops.cli import app
from recipes import load_config
from paperops.serve_llm import EngineOptions, engine_for_model
from tasks.serve import ServingError
from tasks.serve_llm import load_language_model
from tasks.tracking import configure_tracking, ensure_experiment, log_paper_model

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40
ALIAS = "serve-llm-test"


def register(paper: str, overrides: list[str], module: torch.nn.Module, example: object) -> TokenizedLM:
    client = configure_tracking()
    recipe = get_recipe(paper)
    cfg = load_config(paper, "tiny", overrides).config
    run = client.create_run(ensure_experiment(client, paper), run_name=ALIAS)
    uri = log_paper_model(recipe, cfg, module, example, None, run.info.run_id)
    client.set_terminated(run.info.run_id)
    version = mlflow.register_model(uri, f"paperops-{paper}").version
    client.set_registered_model_alias(f"paperops-{paper}", ALIAS, version)
    return module


@pytest.fixture(scope="module")
def cbq_model() -> TokenizedLM:
    overrides = ["model.vocab_size=300", "model.hidden_size=32", "model.intermediate_size=64",
                 "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.num_key_value_heads=1",
                 "model.max_position_embeddings=128"]
    torch.manual_seed(0)
    section = load_config("cbq", "tiny", overrides).config.model
    model = TokenizedLM(LlamaForCausalLM(llama_config(section)).eval(), train_bpe_tokenizer(TEXT, 300), 0)
    return register("cbq", overrides, model, ["To be"])


def test_the_registered_lm_comes_back_by_alias_and_serves(cbq_model) -> None:
    served, loaded = load_language_model("cbq", ALIAS)
    assert served.model_name == "paperops-cbq" and served.alias == ALIAS
    original, restored = cbq_model.lm.state_dict(), loaded.lm.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert loaded.tokenizer.to_str() == cbq_model.tokenizer.to_str()
    engine, notes = engine_for_model(loaded, EngineOptions(
        gpu_blocks=16, host_blocks=16, block_size=8, max_returned_tokens=8, swap_bytes_per_s=1e9,
        time_model=IterationTimeModel(a_ms_per_token=0.05, c_ms=2.0, saturation_tokens=32)))
    assert any("retrieval tool off" in note for note in notes)
    handle = engine.submit("To be", 5, [])
    engine.run_until_done(timeout_s=60)
    assert len(handle.result(timeout_s=0).summary["generated_ids"]) == 5


def test_a_missing_alias_or_model_is_refused_clearly(cbq_model) -> None:
    with pytest.raises(ServingError, match="no version with alias @nonexistent"):
        load_language_model("cbq", "nonexistent")
    with pytest.raises(ServingError, match="no registered model paperops-nosuchpaper"):
        load_language_model("nosuchpaper", ALIAS)
    result = CliRunner().invoke(app, ["serve-llm", "cbq", "--alias", "nonexistent"])
    assert result.exit_code == 5 and "no version with alias @nonexistent" in result.output
    result = CliRunner().invoke(app, ["serve-llm", "cbq", "--alias", ALIAS, "--a-ms", "0.1"])
    assert result.exit_code == 2 and "--a-ms, --c-ms and --saturation go together" in result.output


def test_a_vision_model_is_not_served_as_a_language_model() -> None:
    recipe = get_recipe("ppt")
    overrides = ["model.embed_dim=24", "model.depth=2"]
    register("ppt", overrides, recipe.build_model(load_config("ppt", "tiny", overrides).config),
             np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ServingError, match="not a LLaMA language model"):
        load_language_model("ppt", ALIAS)
