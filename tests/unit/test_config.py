import re

import numpy as np
import pytest
import torch

from recipes import check_config, get_recipe, load_config
from settings import project_root
from settings.config import ConfigError, profiles

EVERY_PROFILE = [(path.stem, profile) for path in sorted((project_root() / "configs").glob("*.yaml"))
                 for profile in profiles(path)]


def test_every_config_file_has_profiles():
    assert {paper for paper, _ in EVERY_PROFILE} == {path.stem for path in (project_root() / "configs").glob("*.yaml")}


@pytest.mark.parametrize("paper, profile", EVERY_PROFILE, ids=[f"{p}-{q}" for p, q in EVERY_PROFILE])
def test_every_profile_of_every_config_validates_against_its_recipe_schema(paper, profile):
    resolved = load_config(paper, profile)  # configs/<paper>.yaml needs the recipe registered as <paper>
    assert type(resolved.config) is get_recipe(paper).config_model
    assert resolved.profile == profile and len(resolved.digest()) == 16


def test_tiny_profile_validates_and_overrides_apply():
    resolved = load_config("ppt", "tiny", ["train.epochs=2", "compress.blocks=[1, 2]"])
    assert resolved.config.train.epochs == 2
    assert resolved.config.compress.blocks == (1, 2)
    assert resolved.config.model.depth == 12


def test_digest_excludes_later_steps_sections():
    base = load_config("ppt", "tiny")
    knob = load_config("ppt", "tiny", ["compress.r=8"])
    trained_longer = load_config("ppt", "tiny", [f"train.epochs={base.config.train.epochs + 1}"])
    train_sections = ("compress", "evaluate", "promote")
    assert knob.digest(excluding=train_sections) == base.digest(excluding=train_sections)
    assert knob.digest(excluding=("evaluate", "promote")) != base.digest(excluding=("evaluate", "promote"))
    assert trained_longer.digest(excluding=train_sections) != base.digest(excluding=train_sections)


@pytest.mark.parametrize("override, fragment", [
    ("train.epochz=2", "train.epochz"),             # unknown key
    ("train.epochs=-1", "train: Value error, epochs must be > 0, got -1.0"),  # out of range: section and field
    ("train.epochs", "expected key=value"),          # not key=value
    ("model.embed_dim.x=3", "model.embed_dim is a value"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config("ppt", "tiny", [override])


@pytest.mark.parametrize("paper, override, message", [
    # The sections are the models' own config dataclasses: pydantic checks their types and unknown keys, their
    # __post_init__ the bounds, and the error names the section and the field.
    ("ppt", "compress.finetune.epochz=1", "compress.finetune.epochz: Unexpected keyword argument"),
    ("ppt", "train.batch_size=2.5", "train.batch_size: Input should be a valid integer"),
    ("ppt", "model.num_classes=1", "model: Value error, num_classes must be >= 2, got 1"),
    ("ppt", "compress.r=-1", "compress.r: Input should be greater than or equal to 0"),
    ("w2s", "loss.aug_rate=2", "loss: Value error, aug_rate must be <= 1, got 2.0"),
    ("w2s", "loss.alpha_mode=paper", "loss.alpha_mode: Input should be 'code' or 'teacher_conf'"),
    ("w2s", "weak.label_noise=1", "weak: Value error, label_noise must be < 1, got 1.0"),
    ("w2s", "compress.finetune.epochs=0", "compress.finetune: Value error, epochs must be >= 1, got 0"),
    ("ovor", "vor.wieght=1", "vor.wieght: Unexpected keyword argument"),
    ("ovor", "vor.ablations=[{name: Bad}]", "vor.ablations.0: Value error, name must be lower-case"),
    ("ovor", "prompt.g_length=3", "prompt: Value error, g_length and e_length count keys + values and must be even"),
    ("ovor", "vor.head_schedules=[{passes: 0}]", "vor.head_schedules.0: Value error, passes must be >= 1, got 0"),
    ("ovor", "pretrain.train.label_smoothing=1", "pretrain.train: Value error, label_smoothing must be < 1, got 1.0"),
    ("feat", "meta.one_shot.gamma=2", "meta.one_shot: Value error, gamma must be <= 1, got 2.0"),
    ("feat", "model.adapter=protonet", "model: Value error, adapter must be one of ('feat', 'none'), got 'protonet'"),
])
def test_bad_values_and_unknown_keys_in_vision_sections_name_section_and_field(paper, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(paper, "tiny", [override])


def test_unknown_profile_and_paper():
    with pytest.raises(ConfigError, match="no profile 'huge'"):
        load_config("ppt", "huge")
    with pytest.raises(KeyError, match="unknown paper 'nope'"):
        load_config("nope")


def test_built_dataset_views_name_the_stage_to_build() -> None:
    from recipes import built_dataset_views, get_recipe

    with pytest.raises(ConfigError, match=r"data/miniimagenet is not built: .*dvc repro miniimagenet"):
        built_dataset_views(get_recipe("feat"), load_config("feat", "full").config, "train")


@pytest.mark.parametrize("paper, profile", EVERY_PROFILE, ids=[f"{p}-{q}" for p, q in EVERY_PROFILE])
def test_every_profile_fits_the_model_it_builds(paper, profile):
    # recipes.check_config: each dataset's `expect` fits its suite, each knob the model it bounds. cbq's full profile
    # names a placeholder checkpoint path, which the check reports before anything runs.
    resolved = load_config(paper, profile)
    if (paper, profile) == ("cbq", "full"):
        with pytest.raises(ConfigError, match="model.checkpoint /path/to/a/local/llama/checkpoint is not a Hugging "
                                              "Face checkpoint directory"):
            check_config(resolved)
    else:
        check_config(resolved)


@pytest.mark.parametrize("paper, override, message", [
    ("ppt", "compress.r=33", "compress.r=33 exceeds 32, the most tokens block 3 can remove (65 tokens enter it"),
    ("ovor", "compress.r=9", "compress.r=9 exceeds 8, the most tokens block 1 can remove (17 tokens enter it"),
    ("ovor", "prompt.e_blocks=[2, 9]", "prompt block 9 does not exist in a ViT with 6 blocks"),
    ("cbq", "compress.setting={name: W2g128, w_bits: 2, w_granularity: per_group, group_size: 128}",
     "compress.setting.group_size=128 does not divide the input width of the model's linears (704 of 256, 704)"),
    ("cbq", "compress.comparison_settings=[{name: W4g96, w_bits: 4, w_granularity: per_group, group_size: 96}]",
     "compress.comparison_settings[0] (W4g96): group_size=96 does not divide the input width"),
    ("cbq", "evaluate.seq_len=1024", "evaluate.seq_len=1024 exceeds the model's context of 512 positions"),
    ("ppt", "data.suite=tabular", "data.suite 'tabular' is unknown; suites: image_classification"),
    ("ovor", "pretrain.data.expect.height=0", "dataset 'pretrain': data.expect does not fit suite "
     "'image_classification': height: Input should be greater than 0"),
])
def test_knobs_the_model_cannot_take_are_refused_naming_key_and_bound(paper, override, message):
    resolved = load_config(paper, "tiny", [override])  # the schema alone accepts each of these
    with pytest.raises(ConfigError, match=re.escape(f"profile 'tiny': {message}")):
        check_config(resolved)


def test_the_knob_check_leaves_the_global_random_state_alone():
    torch.manual_seed(7)
    np.random.seed(7)
    expected = torch.rand(3), np.random.rand(3)
    torch.manual_seed(7)
    np.random.seed(7)
    check_config(load_config("ppt", "tiny"))  # builds the ViT (seeding it) on the meta device
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
