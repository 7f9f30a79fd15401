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
