import copy
import re

import numpy as np
import pytest
import torch

from recipes import available_recipes, get_recipe
from models.common.vit import ViTConfig, build_vit, images_to_input, random_translate
from recipes import load_config


def test_images_to_input_pads_centred_and_scales_to_unit_range():
    images = np.zeros((1, 2, 2), dtype=np.uint8)
    images[0, 0, 1] = 255
    x = images_to_input(images, img_size=4)
    assert x.shape == (1, 1, 4, 4)
    expected = -torch.ones(4, 4)
    expected[1, 2] = 1.0  # the 255 pixel at (0, 1) lands at (1, 2) after one pixel of padding
    assert torch.equal(x[0, 0], expected)


def test_images_to_input_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        images_to_input(np.zeros((4,), dtype=np.uint8), img_size=8)


def test_random_translate_moves_content_without_changing_it():
    x = -torch.ones(3, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    shifted = random_translate(x, torch.Generator().manual_seed(0), max_shift=2)
    assert torch.equal((shifted == 1.0).sum(dim=(1, 2, 3)), torch.full((3,), 4))


def test_recipe_is_registered_and_builds_the_configured_vit():
    assert "ppt" in available_recipes()
    recipe = get_recipe("ppt")
    cfg = load_config("ppt", "tiny", ["model.embed_dim=24"]).config
    model = recipe.build_model(cfg)
    assert model.patch_embed.num_patches == 64 and len(model.blocks) == 12
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_build_vit_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="not divisible"):
        build_vit(ViTConfig(embed_dim=50, num_heads=3))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
    ({"img_size": 4}, "img_size must be >= 8, got 4"),
    ({"drop_path_rate": 1.0}, "drop_path_rate must be < 1, got 1.0"),
    ({"mlp_ratio": float("nan")}, "mlp_ratio must be > 0, got nan"),
])
def test_vit_config_names_the_bad_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ViTConfig(**kwargs)


SMALL_VIT = {"img_size": 8, "patch_size": 4, "embed_dim": 8, "depth": 2, "num_heads": 2, "drop_path_rate": 0.0}


def test_a_checkpoint_gives_every_weight_but_the_head(tmp_path):
    """A pre-trained ViT with another head (10 classes) into a 3-class model: the body is the checkpoint's, the head
    the fresh model's own; safetensors and a torch file holding {"model": state} load the same."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    pretrained = build_vit(ViTConfig(**SMALL_VIT, num_classes=10)).state_dict()
    save_file(pretrained, str(tmp_path / "vit.safetensors"))
    torch.save({"model": pretrained}, tmp_path / "vit.pth")
    torch.manual_seed(0)
    fresh_head = build_vit(ViTConfig(**SMALL_VIT, num_classes=3)).head.weight.detach().clone()
    for name in ("vit.safetensors", "vit.pth"):
        torch.manual_seed(0)
        model = build_vit(ViTConfig(**SMALL_VIT, num_classes=3, checkpoint=str(tmp_path / name)))
        body = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
        assert body.keys() == {k for k in pretrained if not k.startswith("head.")}
        assert all(torch.equal(v, pretrained[k]) for k, v in body.items())
        assert torch.equal(model.head.weight, fresh_head)


def test_a_checkpoint_of_another_architecture_or_path_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file(build_vit(ViTConfig(**SMALL_VIT)).state_dict(), str(tmp_path / "two_blocks.safetensors"))
    deeper = ViTConfig(**SMALL_VIT | {"depth": 3}, checkpoint=str(tmp_path / "two_blocks.safetensors"))
    with pytest.raises(ValueError, match=r"does not fit the model: missing=\['blocks\.2\."):
        build_vit(deeper)
    with pytest.raises(FileNotFoundError, match="nope.safetensors does not exist"):
        build_vit(ViTConfig(**SMALL_VIT, checkpoint=str(tmp_path / "nope.safetensors")))


def test_compression_round_trips_through_recorded_knobs():
    """What the registry stores (knobs) rebuilds the same compressed model: same outputs on the same input."""
    recipe = get_recipe("ppt")
    cfg = load_config("ppt", "tiny", ["model.embed_dim=24"]).config
    dense = recipe.build_model(cfg)
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    knobs = {"method": "ppt", "r": 16, "blocks": [3, 6, 9], "tau": 1e-3, "tau_cv": 1.64, "prop_attn": True}
    compressed = recipe.restore_compression(dense, knobs)
    rebuilt = recipe.build_model(cfg)
    rebuilt.load_state_dict(state)
    rebuilt = recipe.restore_compression(rebuilt, knobs)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(compressed(x), rebuilt(x), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# compress and evaluate on a 24-wide ViT and a handful of random images


FAST = ["model.embed_dim=24", "compress.finetune.epochs=2", "compress.finetune.batch_size=8",
        "compress.finetune.warmup_epochs=0.5", "compress.finetune.lr=1e-3", "evaluate.latency_batch=4",
        "evaluate.latency_runs=1", "evaluate.latency_warmup=0"]


@pytest.fixture(scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _splits(test) -> "TensorSplits":
    from recipes.ppt import TensorSplits

    g = torch.Generator().manual_seed(0)
    images = torch.randn(28, 1, 32, 32, generator=g)
    labels = torch.randint(0, 10, (28,), generator=g)
    x_test, y_test = test if test is not None else (images[16:], labels[16:])
    return TensorSplits(images[:12], labels[:12], images[12:16], labels[12:16], x_test, y_test, raw=None)


@pytest.fixture(scope="module")
def compressed_run(_one_thread):
    from data.views import Withheld
    from models.common.reporting import RecordingReporter

    recipe = get_recipe("ppt")
    cfg = load_config("ppt", "tiny", FAST).config
    parent = recipe.build_model(cfg)
    withheld = Withheld("test", "data", "compress")
    result = recipe.compress(copy.deepcopy(parent), _splits((withheld, withheld)), cfg, RecordingReporter())
    return recipe, cfg, parent, result


def test_compress_fine_tunes_each_companion_from_the_parent_with_ppts_own_fine_tune(compressed_run):
    """Equal budgets: ToMe and EViT at PPT's r and blocks, and the dense parent itself, each get exactly PPT's
    fine-tune; without test images (withheld: any read raises)."""
    from models.common.classifier import train_classifier
    from models.common.reporting import RecordingReporter
    from models.common.vit import random_translate
    from recipes.base import seed_everything

    recipe, cfg, parent, result = compressed_run
    assert set(result.companions) == {"tome_equal_budget", "evit_equal_budget", "dense_same_finetune"}
    knobs = {name: c.knobs for name, c in result.companions.items()}
    assert knobs["dense_same_finetune"] is None
    for method in ("tome", "evit"):
        k = knobs[f"{method}_equal_budget"]
        assert (k["method"], k["r"], k["blocks"]) == (method, result.knobs["r"], result.knobs["blocks"])
        assert k["prop_attn"] == (method == "tome")  # EViT's fused token has no size
    steps = {result.metrics[f"{n}_finetune_steps"] for n in ("ppt", *result.companions)}
    assert steps == {4.0}  # 2 epochs of 12 images in batches of 8
    # the dense companion is exactly the parent under PPT's fine-tune: same generator state, same batches
    expected = copy.deepcopy(parent)
    data = _splits(None)
    train_classifier(expected, data.x_train, data.y_train, cfg.compress.finetune, RecordingReporter(),
                     seed_everything(cfg.seed + 1), augment=random_translate)
    dense_tuned = result.companions["dense_same_finetune"].module.state_dict()
    assert all(torch.equal(v, dense_tuned[k]) for k, v in expected.state_dict().items())
    assert not torch.equal(dense_tuned["head.weight"], parent.state_dict()["head.weight"])


def test_evaluate_scores_every_variant_per_item_on_the_same_test_images(compressed_run):
    from models.common.reporting import RecordingReporter
    from recipes.base import RunModels

    recipe, cfg, parent, result = compressed_run
    companions = {name: c.module for name, c in result.companions.items()}
    data = _splits(None)
    evaluation = recipe.evaluate(RunModels(parent, result.model, companions, {}), data, cfg, RecordingReporter())
    roles = {v.name: v.role for v in evaluation.variants}
    assert roles == {"dense": "parent", "dense_same_finetune": "baseline", "ppt": "method",
                     "tome_equal_budget": "baseline", "evit_equal_budget": "baseline",
                     "ppt_offtheshelf": "ablation", "tome_offtheshelf": "ablation", "evit_offtheshelf": "ablation"}
    for v in evaluation.variants:
        scores = v.per_item["top1"]
        assert scores.shape == (len(data.y_test),) and set(np.unique(scores)) <= {0.0, 100.0}
        assert scores.mean() == pytest.approx(v.metrics["top1"])
    by_name = {v.name: v for v in evaluation.variants}
    # the fine-tuned dense companion is the reference for PPT's accuracy change
    assert recipe.our_figures(evaluation)["top1_drop_pts"] == pytest.approx(
        by_name["dense_same_finetune"].metrics["top1"] - by_name["ppt"].metrics["top1"])


def test_top1_per_item_scores_each_image_100_or_0_and_averages_to_top1():
    from models.common.classifier import top1_accuracy, top1_per_item

    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])
    labels = torch.tensor([1, 1, 0])
    assert top1_per_item(logits, labels).tolist() == [100.0, 0.0, 0.0]
    assert top1_per_item(logits, labels).mean() == pytest.approx(top1_accuracy(logits, labels))
