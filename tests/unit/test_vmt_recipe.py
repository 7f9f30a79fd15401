"""The VMT-Adapter recipe's protocol pieces on a small built ShapesMT and proxy set: what each model of the comparison
is, the per-image Δm whose mean is the Δm of the image-averaged metrics, the quantized served model and its reload,
and the served format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.scenes import SceneParams, build_proxy, build_scenes
from data.views import step_views
from models.common.reporting import RecordingReporter
from models.vmt import SHAPES_MT_TASKS, delta_m, lower_is_better
from recipes import get_recipe, load_config
from recipes.vmt import VMTRecipeConfig, trained_variants, variant_config
from settings.config import ConfigError

SMALL = ["decoder_width=4", "backbone.embed_dim=8", "backbone.num_heads=[1,1,1,1]", "train.max_train_images=8"]


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {"data": build_scenes(root / "shapes_mt", {"train": 8, "val": 4, "test": 4, "ood": 4}, SceneParams()),
            "pretrain": build_proxy(root / "proxy", 2, 1, 1, SceneParams())}


@pytest.fixture(scope="module")
def cfg() -> VMTRecipeConfig:
    return load_config("vmt", "tiny", SMALL).config


def test_each_model_of_the_comparison_is_what_its_name_says(cfg) -> None:
    assert trained_variants(cfg) == ["vmt", "vmt_lite", "per_task_adapters", "multitask_ft", "single_semseg",
                                     "single_parts", "single_saliency", "single_normals"]
    assert variant_config("vmt", cfg).mode == "vmt" and variant_config("vmt_lite", cfg).mode == "vmt_lite"
    single = variant_config("single_normals", cfg)
    assert single.mode == "single_task" and [t.name for t in single.tasks] == ["normals"]


def test_the_per_image_delta_m_averages_to_the_delta_m_of_image_averaged_metrics(cfg) -> None:
    recipe = get_recipe("vmt")
    rng = np.random.default_rng(0)
    reference = {split: {"split": {t.name: 50.0 for t in SHAPES_MT_TASKS},
                         "items": {t.name: rng.uniform(20, 80, 6) for t in SHAPES_MT_TASKS}} for split in ("test", "ood")}
    ours = {split: {"split": {t.name: 55.0 for t in SHAPES_MT_TASKS},
                    "items": {t.name: v + rng.normal(0, 5, 6) for t, v in
                              zip(SHAPES_MT_TASKS, reference[split]["items"].values())}} for split in ("test", "ood")}
    variant = recipe._variant("vmt", "parent", ours, reference, cfg)
    lower = lower_is_better(SHAPES_MT_TASKS)
    image_averaged = delta_m({t: float(np.mean(v)) for t, v in ours["test"]["items"].items()},
                             {t: float(np.mean(v)) for t, v in reference["test"]["items"].items()}, lower)
    assert variant.metrics["delta_m"] == pytest.approx(image_averaged, abs=1e-9)
    assert variant.per_item["delta_m"].mean() == pytest.approx(image_averaged, abs=1e-9)
    assert variant.metrics["delta_m_split"] == pytest.approx(100 * (3 * 0.1 - 0.1) / 4)  # normals: an error


def test_the_quantized_model_reloads_bit_exact_and_serves_four_maps(data_dirs, cfg) -> None:
    recipe = get_recipe("vmt")
    data = recipe.load_data(step_views(data_dirs, "compress"), cfg)
    model = recipe.build_model(cfg)
    result = recipe.compress(model, data, cfg, RecordingReporter())
    keys = set(result.model.state_dict())
    assert result.knobs["bits"] == 8
    assert not any(k.endswith((".qkv.weight", ".fc1.weight", ".lateral.0.weight")) for k in keys)  # packed codes
    assert any(k.endswith(".qkv.qweight") for k in keys) and any(k.endswith(".adapters.0.down.qweight") for k in keys)
    reloaded = recipe.module_for_loading(cfg, {}, result.knobs)
    reloaded.load_state_dict(result.model.state_dict())
    batch = recipe.input_example(data, 2)
    assert batch.shape == (2, 64, 64, 3) and batch.dtype == np.uint8
    served = recipe.predict(result.model, batch)
    assert np.array_equal(recipe.predict(reloaded, batch), served)
    assert served.shape == (2, 64, 64, 6) and served.dtype == np.float32
    assert set(np.unique(served[..., 0])) <= set(range(5)) and set(np.unique(served[..., 2])) <= {0.0, 1.0}
    assert np.allclose(np.linalg.norm(served[..., 3:], axis=-1), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match=r"\(n, H, W, 3\)"):
        recipe.predict(result.model, batch[..., 0])


def test_a_bad_knob_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="experiment.baselines"):
        load_config("vmt", "tiny", ["experiment.baselines=[single_task]"])
    with pytest.raises(ConfigError, match="pretrain.data"):
        load_config("vmt", "tiny", ["pretrain.data=null"])
