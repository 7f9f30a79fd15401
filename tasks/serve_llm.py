"""Load a registered language model for the APIServe engine (`paperops serve-llm`): the alias is resolved once
with `paperops serve`'s resolver, and the pinned version is rebuilt from its logged artifacts (config, tokenizer
and safetensors weights, with the recorded compression such as packed quantized linears) without unpickling."""
from __future__ import annotations

from pathlib import Path

from transformers import LlamaForCausalLM

from models.common.lm import TokenizedLM
from settings import project_root
from tasks.refs import ServedModel
from tasks.serve import ServingError, resolve_served_model
from tasks.tracking import configure_tracking, load_paper_model


def load_language_model(paper: str, alias: str) -> tuple[ServedModel, TokenizedLM]:
    """The version `models:/paperops-<paper>@<alias>` names, as a TokenizedLM with a LLaMA model inside."""
    served = resolve_served_model(paper, alias)
    module = load_paper_model(served.model_uri)
    if not isinstance(module, TokenizedLM) or not isinstance(module.lm, LlamaForCausalLM):
        inner = type(module.lm).__name__ if isinstance(module, TokenizedLM) else type(module).__name__
        raise ServingError(f"{served.model_name} v{served.version} (@{alias}) is a {inner}, not a LLaMA language "
                           "model: serve-llm serves the models of language papers; use `paperops serve` "
                           "for the others")
    if module.tokenizer is None:
        raise ServingError(f"{served.model_name} v{served.version} was logged without a tokenizer")
    return served, module.eval()


def training_corpus(served: ServedModel) -> Path | None:
    """The train split of the text dataset the version was trained on (its DVC stage's output), which the engine's
    retrieval tool searches; None when the version records no dataset."""
    stage = configure_tracking().get_model_version(served.model_name, served.version).tags.get("dataset.stage")
    return project_root() / "data" / stage / "train.txt" if stage else None
