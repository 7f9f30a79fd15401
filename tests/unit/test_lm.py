"""models/common/lm.py: tokenizer, training, perplexity, generation and the pretrained SmolLM2 source."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from models.common.lm import (
    LMConfig, LMTrainConfig, OutlierConfig, TokenizedLM, build_lm, calibration_segments, eval_windows, generate,
    load_pretrained, perplexity, train_bpe_tokenizer, train_lm, window_nll,
)
from models.common.profiling import size_on_disk
from models.common.reporting import RecordingReporter

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 40


class UniformLM(nn.Module):
    """Zero logits everywhere: every next token has probability 1 / vocab."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def micro_config(**overrides: object) -> LMConfig:
    fields = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LMConfig(**(fields | overrides))


def test_bpe_tokenizer_is_deterministic_and_lossless() -> None:
    first, second = train_bpe_tokenizer(TEXT, 300), train_bpe_tokenizer(TEXT, 300)
    assert first.to_str() == second.to_str()
    assert first.get_vocab_size() == 300 and first.token_to_id("<|endoftext|>") == 0
    sample = "Whether 'tis nobler — unseen bytes: ü\n"
    assert first.decode(first.encode(sample).ids) == sample
    assert len(first.encode("To be, or not to be").ids) < len("To be, or not to be") / 2   # merges learned


def test_perplexity_of_uniform_predictions_is_the_vocabulary_size() -> None:
    windows = torch.randint(0, 50, (5, 9), generator=torch.Generator().manual_seed(0))
    assert perplexity(UniformLM(50), windows, batch_size=2) == pytest.approx(50.0, rel=1e-6)


class BigramLM(nn.Module):
    """Puts all its mass on token (previous + 1) % vocab: a window that counts up is predicted perfectly."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        logits = torch.full((*input_ids.shape, self.vocab), -1e4)
        logits.scatter_(-1, ((input_ids + 1) % self.vocab)[..., None], 0.0)
        return SimpleNamespace(logits=logits)


def test_window_nll_scores_each_window_and_perplexity_is_exp_of_their_mean() -> None:
    counting = torch.arange(8)[None, :]                                  # every next token predicted
    missing = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])                   # 3 -> 0 is a miss: 1 of 7 predictions
    windows = torch.cat([counting, missing, counting])                   # (3, 8)
    nll = window_nll(BigramLM(8), windows, batch_size=2)
    assert nll.shape == (3,) and nll.dtype == torch.float64
    assert nll[0].item() == pytest.approx(0.0, abs=1e-6) and nll[2].item() == pytest.approx(0.0, abs=1e-6)
    assert nll[1].item() == pytest.approx(1e4 / 7, rel=1e-5)            # one miss costs 1e4 nats, over 7 positions
    assert perplexity(BigramLM(8), windows[[0, 2]]) == pytest.approx(1.0, abs=1e-6)
    uniform = torch.randint(0, 50, (5, 9), generator=torch.Generator().manual_seed(0))
    assert window_nll(UniformLM(50), uniform).tolist() == pytest.approx([math.log(50)] * 5, rel=1e-6)


def test_eval_windows_drop_the_remainder_and_reject_short_text() -> None:
    windows = eval_windows(torch.arange(10), 3)
    assert windows.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert eval_windows(torch.arange(10), 3, max_windows=2).shape == (2, 3)
    with pytest.raises(ValueError, match="fewer than one window"):
        eval_windows(torch.arange(2), 3)


def test_calibration_segments_are_slices_of_the_stream() -> None:
    ids = torch.arange(1000)
    segments = calibration_segments(ids, 4, 16, torch.Generator().manual_seed(0))
    assert segments.shape == (4, 16)
    assert all(torch.equal(row, torch.arange(int(row[0]), int(row[0]) + 16)) for row in segments)


def test_training_lowers_held_out_perplexity_and_generation_is_deterministic() -> None:
    torch.manual_seed(0)
    model = build_lm(micro_config())
    with pytest.raises(RuntimeError, match="no tokenizer"):
        model.encode("x")
    model.tokenizer = train_bpe_tokenizer(TEXT, 300)
    ids = model.encode(TEXT)
    windows = eval_windows(ids[-600:], 32)
    before = perplexity(model.lm, windows)
    reporter = RecordingReporter()
    metrics = train_lm(model, ids[:-600], LMTrainConfig(steps=40, batch_size=8, seq_len=32, warmup_steps=4,
                                                         lr=3e-3), reporter, torch.Generator().manual_seed(0))
    after = perplexity(model.lm, windows)
    assert after < before / 3 and metrics["train_steps"] == 40
    assert len(reporter.series("train_loss")) == 40 and reporter.last_progress[:2] == (40, 40)
    first = generate(model, ["To be, or"], 8)
    assert first == generate(model, ["To be, or"], 8) and isinstance(first[0], str)
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, [""], 4)


def test_tied_embeddings_are_stored_once() -> None:
    tied, untied = build_lm(micro_config()), build_lm(micro_config(tie_word_embeddings=False))
    embedding_bytes = 300 * 32 * 4
    assert size_on_disk(untied) - size_on_disk(tied) == pytest.approx(embedding_bytes, abs=200)


@pytest.mark.parametrize("make, message", [
    (lambda: LMConfig(source="full"), "source 'full' needs checkpoint"),
    (lambda: LMConfig(checkpoint="/some/dir"), "checkpoint is only read for source 'full', not 'tiny'"),
    (lambda: LMConfig(source="hub"), "source must be one of"),
    (lambda: micro_config(num_key_value_heads=3, num_attention_heads=2),
     r"num_attention_heads \(2\) must be a multiple of num_key_value_heads \(3\)"),
    (lambda: micro_config(hidden_size=33), r"hidden_size \(33\) must be a multiple of num_attention_heads \(2\)"),
    (lambda: micro_config(vocab_size=100), "vocab_size must be >= 256, got 100"),
    (lambda: micro_config(max_position_embeddings=8), "max_position_embeddings must be >= 16, got 8"),
    (lambda: OutlierConfig(factor=1.0), "factor must be > 1, got 1.0"),
    (lambda: OutlierConfig(channels=0), "channels must be >= 1, got 0"),
    (lambda: LMTrainConfig(lr=0.0), "lr must be > 0, got 0.0"),
    (lambda: LMTrainConfig(steps=-1), "steps must be >= 0, got -1"),
    (lambda: LMTrainConfig(seq_len=4), "seq_len must be >= 8, got 4"),
])
def test_config_checks_name_the_field_and_value(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_a_missing_checkpoint_directory_is_named() -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained("full", "/nonexistent/checkpoint")


def test_full_source_loads_a_local_checkpoint_directory(tmp_path) -> None:
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    original = build_lm(micro_config())
    original.tokenizer = train_bpe_tokenizer(TEXT, 300)
    original.lm.save_pretrained(tmp_path)
    PreTrainedTokenizerFast(tokenizer_object=original.tokenizer, eos_token="<|endoftext|>").save_pretrained(tmp_path)
    loaded = build_lm(micro_config(source="full", checkpoint=str(tmp_path)))
    tokens = original.encode("To be, or not to be")
    assert torch.equal(loaded.encode("To be, or not to be"), tokens) and loaded.eos_token_id == 0
    with torch.no_grad():
        assert torch.allclose(loaded(tokens[None]), original(tokens[None]), atol=1e-6)


def test_smollm2_loads_offline_as_a_pretrained_llama() -> None:
    pytest.importorskip("gguf")
    try:
        model = load_pretrained("small", None)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert isinstance(model, TokenizedLM) and model.lm.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.lm.parameters()) == pytest.approx(134.5e6, rel=0.01)
    text = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
            "in want of a wife. However little known the feelings or views of such a man may be on his first "
            "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that "
            "he is considered the rightful property of some one or other of their daughters.")
    ids = model.encode(text)
    ppl = perplexity(model.lm, ids[None])
    assert ppl < 30, f"a pretrained model should know Austen's opening, got perplexity {ppl:.1f}"
    assert math.isfinite(ppl)
