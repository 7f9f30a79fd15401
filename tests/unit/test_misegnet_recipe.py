"""The MI-SegNet recipe's protocol pieces on a small built USDevices dataset and a narrow network: the paired batches
every model shares, the compressed serving path and its reload, the served format, and the two disentanglement
measurements (fresh-critic I, device-id probe) on features whose answer is known."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data.ultrasound import UltrasoundParams, build_ultrasound
from data.views import step_views
from models.common.profiling import size_on_disk
from models.misegnet import MISegNet
from recipes import get_recipe, load_config
from settings.config import ConfigError
from recipes.misegnet import (
    EvaluateSection, MISegNetRecipeConfig, epoch_batches, fresh_critic_mi, linear_probe_accuracy, serving_path,
)

COUNTS = {"train": 6, "val": 4, "test_convex": 4, "test_phased": 4, "test_linear_smooth": 4}
SMALL = ["model.image_size=32", "model.anatomy_base=2", "model.domain_base=2", "model.critic_width=4"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ultrasound(tmp_path_factory.mktemp("data") / "us_devices", COUNTS, UltrasoundParams(size=32))


@pytest.fixture(scope="module")
def cfg() -> MISegNetRecipeConfig:
    return load_config("misegnet", "tiny", SMALL).config


def test_every_model_gets_the_same_paired_batches_and_each_epoch_its_own(data_dir: Path, cfg) -> None:
    recipe = get_recipe("misegnet")
    data = recipe.load_data(step_views({"data": data_dir}, "train"), cfg)
    first, again, other = (epoch_batches(data.train, 4, 0, e) for e in (0, 0, 1))
    assert [len(b[0]) for b in first] == [4, 2]
    assert all(torch.equal(a, b) for batch, same in zip(first, again) for a, b in zip(batch, same))
    assert not torch.equal(first[0][0], other[0][0])
    x1, x2, x12, x21, y1, y2 = first[0]
    assert x1.shape == (4, 1, 32, 32) and y1.shape == (4, 1, 32, 32) and set(y1.unique().tolist()) <= {0.0, 1.0}
    assert 0 <= float(x12.min()) and float(x12.max()) <= 1


def test_the_compressed_serving_path_reloads_bit_exact_and_drops_the_training_modules(data_dir: Path, cfg) -> None:
    recipe = get_recipe("misegnet")
    data = recipe.load_data(step_views({"data": data_dir}, "compress"), cfg)
    model = recipe.build_model(cfg)
    from models.common.reporting import RecordingReporter

    result = recipe.compress(model, data, cfg, RecordingReporter())
    compressed = result.model
    assert compressed.domain_encoder is None and compressed.rec_decoder is None and compressed.critic is None
    assert not any(key.startswith(("domain_encoder", "rec_decoder", "critic")) for key in compressed.state_dict())
    assert result.knobs == {"bits": 8, "granularity": "per_channel", "symmetric": False,
                            "layers": "anatomy_encoder+seg_decoder"}
    assert set(result.companions) == {"misegnet_w4"}
    reloaded = recipe.module_for_loading(cfg, {}, result.knobs)
    reloaded.load_state_dict(compressed.state_dict())
    x = data.x_val
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), compressed(x))
        dense_logits = model.eval()(x)
        assert (compressed(x) - dense_logits).abs().max() < 0.1 * dense_logits.abs().max()
    w8 = size_on_disk(serving_path(compressed)) / size_on_disk(serving_path(model))
    w4 = size_on_disk(serving_path(result.companions["misegnet_w4"].module)) / size_on_disk(serving_path(model))
    assert w4 < w8 < 0.5  # 8-bit codes + float BatchNorm and grids vs float32 weights


def test_predict_answers_one_binary_mask_per_image_and_refuses_bad_requests(data_dir: Path, cfg) -> None:
    recipe = get_recipe("misegnet")
    data = recipe.load_data(step_views({"data": data_dir}, "train"), cfg)
    model = recipe.build_model(cfg)
    batch = recipe.input_example(data, 3)
    assert batch.shape == (3, 32, 32) and batch.dtype == np.float32 and batch.max() > 1  # raw 0-255 pixels
    masks = recipe.predict(model, batch)
    assert masks.shape == (3, 32, 32) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    everything = recipe.predict(model, batch, {"threshold": 1e-6})
    assert everything.sum() >= masks.sum()
    with pytest.raises(ValueError, match="threshold must lie in"):
        recipe.predict(model, batch, {"threshold": 1.5})
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        recipe.predict(model, batch[0])


def test_the_fresh_critic_finds_dependence_only_where_there_is_some() -> None:
    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(256, 4, 8, 8, generator=generator)  # z is 8x8, as the critic's pooling expects
    dependent = z_a[:, :2] * 2.0  # z_d a function of z_a
    independent = torch.randn(256, 2, 8, 8, generator=generator)
    section = EvaluateSection(mi_critic_steps=300, mi_critic_batch=64, mi_critic_lr=3e-3)

    def estimate(z_d: torch.Tensor) -> float:
        chunks = [(z_a[s:s + 64], z_d[s:s + 64]) for s in range(128, 256, 64)]  # estimated on rows not fitted on
        return float(fresh_critic_mi((z_a[:128], z_d[:128]), chunks, 16, section, seed=0, mine_rate=0.01).mean())

    high, low = estimate(dependent), estimate(independent)
    # held out, a critic fitted to independent features finds nothing (its bound is at or below 0: a DV bound of a
    # fitted critic on new rows is loose, never inflated), while the dependence stays clearly visible
    assert low < 0.1 and high > 0.3 and high > low + 0.5


def test_the_device_probe_reads_a_device_signal_and_is_at_chance_without_one() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(400) // 100  # four devices in blocks, as evaluate stacks them
    noise = torch.randn(400, 8, generator=generator)
    signal = noise.clone()
    signal[:, 0] += 4.0 * labels  # the device id written into one feature
    fit = torch.arange(400) % 2 == 0
    assert linear_probe_accuracy(signal, labels, fit, steps=300, seed=0) > 95
    assert linear_probe_accuracy(noise, labels, fit, steps=300, seed=0) < 40  # chance is 25


def test_a_bad_knob_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="also_bits"):
        load_config("misegnet", "tiny", ["compress.also_bits=[1]"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config("misegnet", "tiny", ["train.batch_size=1"])
    with pytest.raises(ConfigError, match="image_size must be one of"):
        load_config("misegnet", "tiny", ["model.image_size=48"])


def test_the_served_path_never_reads_the_domain_encoder(cfg) -> None:
    model = MISegNet(cfg.model).eval()
    x = torch.rand(2, 1, 32, 32)
    before = model(x)
    for p in model.domain_encoder.parameters():
        torch.nn.init.normal_(p)
    assert torch.equal(model(x), before)
