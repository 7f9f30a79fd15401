"""FEAT's model and loss pieces on small exact inputs, its invariants, the episode machinery, the served layout and
the glyph dataset builder."""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recipes import available_recipes, get_recipe
from models.common.reporting import RecordingReporter
from models.feat.model import (
    QUERY_LABEL, ConvNet4, FEATConfig, FewShotModel, SetAttention, euclidean_logits, prototypes,
)
from recipes.feat import (
    FewShotData, episode_rows, per_setting_rows, score_on_episodes, seeded_episodes, variants,
)
from models.feat.train import (
    MetaTrainConfig, PretrainConfig, Split, embed_all, mean_ci95, meta_train, pretrain,
    sample_episode, sample_episodes, score_episodes,
)
from recipes import load_config
from data.fewshot import (
    SPLITS, build_glyphs, glyph_classes, hanzi_root, load_fewshot_dataset, render_glyph,
)
from data.dataset_dir import DatasetSourceMissingError


def _model(adapter: str = "feat", hidden: int = 8) -> FewShotModel:
    torch.manual_seed(0)
    return FewShotModel(FEATConfig(hidden=hidden, adapter=adapter, num_classes_pretrain=4)).eval()


# ------------------------------------------------------------------------------------------ exact pieces


def test_euclidean_logits_are_negative_squared_distances_over_tau():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    c = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    expected = torch.tensor([[0.0, -1.0], [-25.0, -20.0]]) / 4.0
    assert torch.equal(euclidean_logits(x, c, temperature=4.0), expected)


def test_prototypes_are_class_means_and_need_every_class():
    support = torch.tensor([[1.0, 1.0], [3.0, 5.0], [10.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    assert torch.equal(prototypes(support, labels, 2), torch.tensor([[2.0, 3.0], [10.0, 0.0]]))
    with pytest.raises(ValueError, match="at least one support"):
        prototypes(support, labels, 3)


def test_set_attention_matches_the_formula_by_hand():
    torch.manual_seed(0)
    att = SetAttention(4).eval()
    x = torch.randn(1, 3, 4)
    q, k, v = x @ att.w_q.weight.T, x @ att.w_k.weight.T, x @ att.w_v.weight.T
    a = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1)  # sqrt(d) = 2
    expected = F.layer_norm(x + (a @ v) @ att.w_o.weight.T + att.w_o.bias, (4,), att.norm.weight, att.norm.bias)
    assert torch.allclose(att(x), expected, atol=1e-6)


def test_set_attention_has_the_stated_parameters_and_init():
    torch.manual_seed(0)
    att = SetAttention(64)
    assert att.w_q.bias is None and att.w_k.bias is None and att.w_v.bias is None and att.w_o.bias is not None
    assert att.attn_dropout.p == 0.1 and att.out_dropout.p == 0.5
    assert not any(isinstance(m, torch.nn.Sequential) for m in att.modules())  # no feed-forward sub-layer
    # N(0, sqrt(2 / (d + d_k))) = std 0.125 at d = 64: 4,096 draws land within 5 % of it
    assert abs(att.w_q.weight.std().item() - 0.125) < 0.00625


def test_adaptation_is_permutation_equivariant_over_the_prototypes():
    model = _model(hidden=16)
    protos = torch.randn(5, 16)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        assert torch.allclose(model.adapt(protos[perm]), model.adapt(protos)[perm], atol=1e-5)
        assert not torch.allclose(model.adapt(protos), protos, atol=1e-3)  # it does change them


def test_protonet_adaptation_is_the_identity():
    protos = torch.randn(5, 8)
    assert torch.equal(_model("none").adapt(protos), protos)


def test_convnet4_embeds_32px_images_into_64_dimensions():
    assert ConvNet4(64)(torch.zeros(3, 1, 32, 32)).shape == (3, 64)


@pytest.mark.parametrize("make, message", [
    (lambda: FEATConfig(adapter="protonet"), "adapter must be one of ('feat', 'none'), got 'protonet'"),
    (lambda: FEATConfig(out_dropout=1.0), "out_dropout must be < 1, got 1.0"),
    (lambda: FEATConfig(img_size=8), "img_size must be >= 16, got 8"),
    (lambda: MetaTrainConfig(gamma=1.5), "gamma must be <= 1, got 1.5"),
    (lambda: MetaTrainConfig(way=1), "way must be >= 2, got 1"),
    (lambda: MetaTrainConfig(balance=-0.1), "balance must be >= 0, got -0.1"),
    (lambda: PretrainConfig(max_epochs=-1), "max_epochs must be >= 0, got -1"),
    (lambda: PretrainConfig(patience=0), "patience must be >= 1, got 0"),
])
def test_feat_configs_name_the_bad_field_and_value(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_mean_ci95_is_196_std_over_sqrt_n():
    mean, ci = mean_ci95(np.array([0.0, 100.0, 0.0, 100.0]))
    assert mean == 50.0 and ci == pytest.approx(1.96 * 50.0 / 2.0)


# --------------------------------------------------------------------------------- episode and the loss


def test_sample_episode_is_shot_major_with_distinct_classes():
    by_class = {c: np.arange(10 * c, 10 * c + 10) for c in range(8)}
    idx = sample_episode(by_class, way=3, shot=2, query=4, rng=np.random.default_rng(0))
    assert len(idx) == 3 * 6 and len(set(idx.tolist())) == 18
    cls = idx // 10
    assert len(set(cls[:3].tolist())) == 3
    assert (cls.reshape(6, 3) == cls[:3]).all()  # position i belongs to episode class i % way


def test_regulariser_logits_use_unadapted_instances_against_adapted_class_centres():
    model = _model(hidden=8).train()
    model.adapter.eval()  # no dropout, so the centres can be recomputed exactly
    torch.manual_seed(1)
    images = torch.randn(2 * (1 + 2), 1, 32, 32)  # way 2, shot 1, query 2, shot-major
    out = model.episode(images, n_way=2, k_shot=1, n_query=2, temperature2=4.0)
    emb = model.embed(images)
    centres = torch.stack([model.adapter(emb[c::2][None])[0].mean(0) for c in range(2)])
    assert torch.allclose(out.reg_logits, euclidean_logits(emb, centres, 4.0), atol=1e-5)
    assert out.logits.shape == (4, 2)
    model.eval()
    assert model.episode(images, 2, 1, 2, temperature2=4.0).reg_logits is None  # training only


def test_meta_training_takes_the_transformer_at_ten_times_the_lr_and_keeps_the_best_val_epoch():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (6, 1, 32, 32)).astype(np.float32)
    y = np.repeat(np.arange(6), 8)
    x = torch.as_tensor(centres[y] + 0.3 * rng.normal(0, 1, (48, 1, 32, 32)).astype(np.float32))
    split = Split(x, y)
    model = _model(hidden=8)
    cfg = MetaTrainConfig(shot=1, way=3, query=2, epochs=2, episodes_per_epoch=3, lr=1e-3, lr_mul=10,
                           val_episodes=5, val_query=2, step_size=1, gamma=0.5)
    reporter = RecordingReporter()
    metrics = meta_train(model, split, split, cfg, reporter, seed=0, prefix="feat")
    assert metrics["feat.episodes"] == 6.0
    assert metrics["feat.best_val_acc"] == max(reporter.series("feat.val_acc") + [metrics["feat.best_val_acc"]])
    assert float(model.temperature) == 64.0
    assert reporter.series("feat.lr_encoder") == [1e-3, 5e-4]  # StepLR every epoch here
    assert reporter.series("feat.lr_transformer") == [1e-2, 5e-3]


def test_sampled_episodes_are_seeded_rows_of_sample_episode():
    labels = np.repeat(np.arange(6), 7)
    episodes = sample_episodes(labels, way=3, shot=2, query=1, episodes=4, seed=9)
    rng = np.random.default_rng(9)
    by_class = {c: np.flatnonzero(labels == c) for c in range(6)}
    assert np.array_equal(episodes, np.stack([sample_episode(by_class, 3, 2, 1, rng) for _ in range(4)]))
    assert not np.array_equal(episodes, sample_episodes(labels, 3, 2, 1, 4, seed=10))


@pytest.mark.parametrize("adapter", ["feat", "none"])
def test_batched_episode_scores_match_one_episode_at_a_time(adapter):
    model = _model(adapter, hidden=8)
    torch.manual_seed(3)
    embeddings = torch.randn(60, 8)  # 6 classes x 10 items
    labels = np.repeat(np.arange(6), 10)
    way, shot, query = 3, 2, 4
    episodes = sample_episodes(labels, way, shot, query, episodes=7, seed=1)
    stats = score_episodes(model, embeddings, episodes, way, shot, query, chunk=3)  # chunks of 3, 3, 1
    support_labels, query_labels = torch.arange(way).repeat(shot), torch.arange(way).repeat(query)
    for i, idx in enumerate(episodes):
        e = embeddings[torch.as_tensor(idx)]
        with torch.no_grad():
            logits = model.classify(e[: way * shot], support_labels, e[way * shot :], way)
        assert stats.accuracies[i] == pytest.approx(100.0 * (logits.argmax(-1) == query_labels).float().mean().item())
    if adapter == "none":  # nothing adapts the prototypes: the spread is the same before and after
        assert np.allclose(stats.spread_raw, stats.spread_adapted)
    with pytest.raises(ValueError, match="3-way 2-shot with 5 queries needs 21"):
        score_episodes(model, embeddings, episodes, way, shot, 5)


def _pretrain_data() -> tuple[Split, Split]:
    """4 base classes of 8 random images and 5 val classes (ids 10..14) of 16 (pre-training's val episodes have 15
    queries per class)."""
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(0, 1, (4 * 8 + 5 * 16, 1, 32, 32)).astype(np.float32))
    return Split(x[:32], np.repeat(np.arange(4), 8)), Split(x[32:], np.repeat(np.arange(10, 15), 16))


@pytest.mark.parametrize("val_accuracies, max_epochs, patience, epochs, best_epoch, plateau", [
    ([50, 60, 60, 55, 70], 10, 2, 3, 1, 1.0),  # epochs 2 and 3 bring no new best (a tie is none): stop after 3
    ([50, 60, 61, 62, 63], 3, 2, 3, 3, 0.0),  # still rising at the cap
    ([50, 40, 45, 49, 70], 10, 3, 3, 0, 1.0),  # never above the untrained encoder: its weights come back
])
def test_pretraining_runs_to_its_val_plateau_and_keeps_the_best_epoch(monkeypatch, val_accuracies, max_epochs,
                                                                       patience, epochs, best_epoch, plateau):
    import models.feat.train as feat_train

    base, val = _pretrain_data()
    model = _model(hidden=8)
    states = []

    def scripted_val(model_, embeddings, episodes, way, shot, query):  # one val accuracy per epoch, from the script
        states.append({k: v.clone() for k, v in model.encoder.state_dict().items()})
        acc = np.array([float(val_accuracies[len(states) - 1])])
        return feat_train.EpisodeStats(acc, acc, acc)

    monkeypatch.setattr(feat_train, "score_episodes", scripted_val)
    cfg = PretrainConfig(max_epochs=max_epochs, patience=patience, batch_size=8, lr=1e-2, val_way=3, val_episodes=4)
    reporter = RecordingReporter()
    metrics = pretrain(model, base, val, cfg, reporter, torch.Generator().manual_seed(0), seed=0)
    assert metrics == {"pretrain.best_val_acc": max(val_accuracies[: epochs + 1]), "pretrain.best_epoch": best_epoch,
                       "pretrain.epochs": epochs, "pretrain.steps": epochs * 4, "pretrain.plateau": plateau}
    assert reporter.series("pretrain_val_protonet_acc") == val_accuracies[1 : epochs + 1]
    assert len(states) == epochs + 1  # the untrained encoder, then once per epoch
    # the best epoch's weights are the ones kept (BatchNorm statistics included)
    assert all(torch.equal(states[best_epoch][k], v) for k, v in model.encoder.state_dict().items())
    assert not all(torch.equal(states[-1][k], v) for k, v in model.encoder.state_dict().items()) or \
        best_epoch == epochs


# ------------------------------------------------------------------------------------ serving and recipe


def test_served_rows_classify_queries_against_the_support(glyph_dir):
    raw = load_fewshot_dataset(glyph_dir)
    rows = episode_rows(raw, "novel", way=3, shot=1, query=2, seed=0)
    assert rows.shape == (3 + 6, 1 + 32 * 32) and rows.dtype == np.float32
    assert rows[:3, 0].tolist() == [0, 1, 2] and (rows[3:, 0] == QUERY_LABEL).all()
    recipe = get_recipe("feat")
    probs = recipe.predict(_model(hidden=16), rows)
    assert probs.shape == (9, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # a support row is its own 1-shot ProtoNet prototype: distance 0, the highest probability
    proto_probs = recipe.predict(_model("none", hidden=16), rows)
    assert (proto_probs[:3].argmax(1) == np.arange(3)).all()
    with pytest.raises(ValueError, match="support rows labelled"):
        recipe.predict(_model(), rows[3:])  # queries only
    with pytest.raises(ValueError, match="episode rows shaped"):
        recipe.predict(_model(), rows[:, :100])


def test_recipe_is_registered_without_compression_and_says_why():
    assert "feat" in available_recipes()
    recipe = get_recipe("feat")
    assert recipe.compression is None and "ViT" in recipe.compression_skip_reason
    with pytest.raises(NotImplementedError, match="not a ViT"):
        recipe.compress(None, None, None, None)
    cfg = load_config("feat", "tiny").config
    model = recipe.build_model(cfg)
    base_classes = cfg.data.expect["classes_per_split"]["base"]  # what the dataset suite expects
    assert model.adapter is not None and model.pretrain_head.out_features == base_classes == 120


def test_per_setting_table_prefers_the_5shot_model_when_there_is_one():
    cfg = load_config("feat", "tiny").config
    by_variant = {"feat": {"acc_5w1s": 70.0, "ci95_5w1s": 0.5, "acc_5w5s": 80.0, "ci95_5w5s": 0.3},
                  "feat_5shot": {"acc_5w1s": 69.0, "ci95_5w1s": 0.5, "acc_5w5s": 85.0, "ci95_5w5s": 0.2},
                  "pretrain_protonet": {"acc_5w1s": 60.0, "ci95_5w1s": 0.6, "acc_5w5s": 75.0, "ci95_5w5s": 0.4}}
    pre, feat = per_setting_rows(by_variant, cfg)
    assert feat["5-way 1-shot"] == "70.00 ± 0.50" and feat["5-way 5-shot"] == "85.00 ± 0.20"
    assert feat["acc_5w1s_model"] == "feat" and feat["acc_5w5s_model"] == "feat_5shot"
    assert pre["5-way 5-shot"] == "75.00 ± 0.40" and pre["acc_5w5s_model"] == "pretrain_protonet"


def test_every_profile_trains_separate_5shot_models_with_the_papers_5shot_settings():
    for profile in ("tiny", "hanzi", "full"):
        cfg = load_config("feat", profile).config
        by_name = {v.name: v for v in variants(cfg)}
        assert list(by_name) == ["feat", "protonet", "feat_lambda0", "feat_5shot", "protonet_5shot",
                                 "feat_lambda0_5shot", "pretrain_protonet"]
        assert by_name["feat"].role == "parent" and by_name["pretrain_protonet"].meta is None
        one, five = by_name["feat"].meta, by_name["feat_5shot"].meta
        assert (one.shot, one.balance, one.temperature, one.temperature2) == (1, 1.0, 64, 16)  # README, ConvNet 1-shot
        assert (five.shot, five.balance, five.temperature, five.temperature2) == (5, 0.1, 32, 64)  # ConvNet 5-shot
        assert by_name["protonet_5shot"].meta == five and by_name["protonet_5shot"].adapter == "none"
        assert by_name["feat_lambda0_5shot"].meta == dataclasses.replace(five, balance=0.0)
        assert by_name["feat_lambda0"].meta == dataclasses.replace(one, balance=0.0)


def _tiny_run_config():
    overrides = ["model.hidden=8", "model.num_classes_pretrain=4", "pretrain.max_epochs=1", "pretrain.batch_size=8",
                 "pretrain.val_way=3", "pretrain.val_episodes=4", "evaluate.episodes=6", "evaluate.query=2"]
    for setting in ("one_shot", "five_shot"):
        overrides += [f"meta.{setting}.way=3", f"meta.{setting}.query=1", f"meta.{setting}.epochs=1",
                      f"meta.{setting}.episodes_per_epoch=2", f"meta.{setting}.val_episodes=2",
                      f"meta.{setting}.val_query=1"]
    return load_config("feat", "tiny", overrides).config


def test_train_reads_no_test_classes_and_returns_every_other_model_as_a_companion():
    base, val = _pretrain_data()
    cfg = _tiny_run_config()
    recipe = get_recipe("feat")
    data = FewShotData(base=base, val=val, novel=None, raw=None)  # novel None: any use of it would fail
    model = recipe.build_model(cfg)
    result = recipe.train(model, data, cfg, RecordingReporter())
    assert set(result.companions) == {"protonet", "feat_lambda0", "feat_5shot", "protonet_5shot",
                                      "feat_lambda0_5shot", "pretrain_protonet"}
    modules = {"feat": model} | {name: c.module for name, c in result.companions.items()}
    assert {name for name, m in modules.items() if m.adapter is None} == {"protonet", "protonet_5shot",
                                                                          "pretrain_protonet"}
    assert {name: float(m.temperature) for name, m in modules.items()} == {
        "feat": 64.0, "protonet": 64.0, "feat_lambda0": 64.0, "pretrain_protonet": 64.0,
        "feat_5shot": 32.0, "protonet_5shot": 32.0, "feat_lambda0_5shot": 32.0}
    assert result.metrics["pretrain.epochs"] == 1 and "feat_lambda0_5shot.best_val_acc" in result.metrics
    assert not any("acc_" in k for k in result.metrics)  # no test figure comes out of train
    # every companion is rebuilt with its own architecture and takes its saved tensors strictly
    for name, companion in result.companions.items():
        recipe.companion_module(name, cfg, None).load_state_dict(companion.module.state_dict(), strict=True)
    with pytest.raises(KeyError, match="not a model of this FEAT run"):
        recipe.companion_module("matchnet", cfg, None)


def test_every_model_is_scored_per_episode_on_the_same_seeded_episodes():
    _, val = _pretrain_data()
    cfg = _tiny_run_config()
    episodes = seeded_episodes(val, cfg)
    assert {shot: e.shape for shot, e in episodes.items()} == {1: (6, 5 * 3), 5: (6, 5 * 7)}  # 5-way, 2 queries
    assert np.array_equal(episodes[5], sample_episodes(val.y, 5, 5, 2, 6, cfg.evaluate.seed + 5))
    feat_metrics, feat_items = score_on_episodes(_model(hidden=8), val, episodes, cfg)
    proto = _model("none", hidden=8)
    _, proto_items = score_on_episodes(proto, val, episodes, cfg)
    assert set(feat_items) == {"acc_5w1s", "acc_5w5s"} == set(proto_items)
    for shot in (1, 5):
        key = f"acc_5w{shot}s"
        assert feat_items[key].shape == (6,) and feat_metrics[key] == pytest.approx(feat_items[key].mean())
        assert feat_metrics[f"ci95_5w{shot}s"] == pytest.approx(mean_ci95(feat_items[key])[1])
        again = score_episodes(proto, embed_all(proto, val.x), episodes[shot], 5, shot, 2)
        assert np.array_equal(again.accuracies, proto_items[key])


def test_full_profile_names_the_miniimagenet_stage():
    cfg = load_config("feat", "full").config
    assert cfg.data.stage == "miniimagenet" and cfg.model.img_size == 84
    assert cfg.meta.one_shot.balance == 1.0 and cfg.meta.five_shot.temperature == 32


# ------------------------------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def glyph_dir(tmp_path_factory):
    return build_glyphs(tmp_path_factory.mktemp("data") / "glyphs", {"base": 6, "val": 3, "novel": 4},
                        images_per_class=6, seed=0)


def test_glyph_classes_are_distinct_real_characters():
    chars = glyph_classes(32)
    assert len(chars) >= 150  # enough for 64/16/20 with room to spare
    assert len(set(chars)) == len(chars)
    assert "A" in chars and "\u0391" not in chars and "\u0410" not in chars  # Greek/Cyrillic A look like Latin A
    assert "é" not in chars  # accented forms are left out


def test_glyph_builder_writes_disjoint_splits_reproducibly(glyph_dir, tmp_path):
    data = load_fewshot_dataset(glyph_dir)
    classes = [set(data.classes(s).tolist()) for s in SPLITS]
    assert [len(c) for c in classes] == [6, 3, 4]
    assert not (classes[0] & classes[1] or classes[0] & classes[2] or classes[1] & classes[2])
    assert data.x["base"].shape == (36, 32, 32) and data.x["base"].dtype == np.uint8
    assert data.meta["source"]["package"] == "matplotlib" and "DejaVuSans.ttf" in data.meta["source"]["fonts"]
    assert len(data.meta["class_names"]["novel"]) == 4
    again = build_glyphs(tmp_path / "again", {"base": 6, "val": 3, "novel": 4}, images_per_class=6, seed=0)
    assert (again / "fewshot.npz").read_bytes() == (glyph_dir / "fewshot.npz").read_bytes()


def test_jittered_instances_differ_but_stay_closer_to_their_class():
    from PIL import ImageFont

    from data.fewshot import GLYPH_FACES, _font_dir

    font = ImageFont.truetype(str(_font_dir() / GLYPH_FACES[0]), size=89)
    rng = np.random.default_rng(0)
    a1, a2 = (render_glyph("A", font, 32, rng).astype(float) for _ in range(2))
    b = render_glyph("W", font, 32, rng).astype(float)
    assert not np.array_equal(a1, a2)
    cos = lambda u, v: float((u * v).sum() / math.sqrt((u * u).sum() * (v * v).sum()))  # noqa: E731
    assert cos(a1, a2) > cos(a1, b)


def test_occlusion_erases_a_rectangle_but_never_most_of_the_glyph():
    from PIL import ImageFont

    from data.fewshot import GLYPH_FACES, GlyphJitter, _font_dir

    font = ImageFont.truetype(str(_font_dir() / GLYPH_FACES[0]), size=89)
    clean, blotted = GlyphJitter(noise_std=0.0), GlyphJitter(noise_std=0.0, occlusion=1.0)
    for char in "W.":
        plain = [render_glyph(char, font, 32, np.random.default_rng(i), clean).astype(float) for i in range(20)]
        occluded = [render_glyph(char, font, 32, np.random.default_rng(i), blotted).astype(float) for i in range(20)]
        kept = [o.sum() / p.sum() for p, o in zip(plain, occluded, strict=True)]
        assert min(kept) >= 0.5  # an erasure that would hide most of the ink is skipped
        assert all(((o == p) | (o == 0)).all() for p, o in zip(plain, occluded, strict=True))  # only erases
        if char == "W":
            assert sum(k < 0.99 for k in kept) >= 10  # a big glyph is blotted most of the time


def test_occlude_erases_one_rectangle_of_the_given_size_and_spares_a_small_character():
    from data.fewshot import occlude

    full = np.full((32, 32), 200.0)
    for seed in range(10):
        erased = occlude(full, np.random.default_rng(seed), 1.0) == 0.0  # (32, 32) bool
        rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
        assert erased.sum() == len(rows) * len(cols)  # one solid rectangle
        assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16  # sides 25-50 % of 32 px
        assert np.ptp(rows) == len(rows) - 1 and np.ptp(cols) == len(cols) - 1
    rng = np.random.default_rng(0)
    assert occlude(full, rng, 0.0) is full  # probability 0: untouched, and no draw (hanzi renders stay as before)
    assert rng.random() == np.random.default_rng(0).random()
    dots = np.zeros((32, 32))
    dots[15:17, 10:12] = dots[15:17, 20:22] = 255.0  # two 2x2 dots, like 丷, 10 px apart
    kept = [occlude(dots, np.random.default_rng(seed), 1.0).sum() / dots.sum() for seed in range(200)]
    assert min(kept) == 0.5 and 0.5 in kept  # a blot over one dot stays (half the ink is left) ...
    assert 0.0 not in kept  # ... a blot over both is skipped


def test_hanzi_source_missing_names_the_npm_command(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PAPEROPS_HANZI_ROOT", raising=False)
    with pytest.raises(DatasetSourceMissingError, match=r"npm pack hanzi-writer-data@2\.0\.1"):
        hanzi_root(fetch=False)
    monkeypatch.setenv("PAPEROPS_HANZI_ROOT", str(tmp_path))
    with pytest.raises(DatasetSourceMissingError, match="no <character>.json"):
        hanzi_root()


def test_hanzi_builder_renders_real_characters_when_the_npm_package_is_present(tmp_path):
    from data.fewshot import build_hanzi

    try:
        hanzi_root(fetch=False)
    except DatasetSourceMissingError as exc:
        pytest.skip(f"npm package not unpacked here: {exc}")
    data = load_fewshot_dataset(build_hanzi(tmp_path / "hanzi", {"base": 3, "val": 2, "novel": 2},
                                            images_per_class=4, seed=0))
    assert data.meta["source"]["package"] == "npm:hanzi-writer-data"
    assert int(data.meta["source"]["candidate_classes"]) > 9000
    assert data.x["novel"].shape == (8, 32, 32)
    ink = (data.x["base"] > 127.5).mean(axis=(1, 2))
    assert (ink > 0.02).all() and (ink < 0.6).all()
    assert not np.array_equal(data.x["base"][0], data.x["base"][1])  # per-stroke jitter: instances differ
