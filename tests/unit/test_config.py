import pytest

from recipes import get_recipe, load_config
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
    trained_longer = load_config("ppt", "tiny", ["train.epochs=3"])
    train_sections = ("compress", "evaluate", "promote")
    assert knob.digest(excluding=train_sections) == base.digest(excluding=train_sections)
    assert knob.digest(excluding=("evaluate", "promote")) != base.digest(excluding=("evaluate", "promote"))
    assert trained_longer.digest(excluding=train_sections) != base.digest(excluding=train_sections)


@pytest.mark.parametrize("override, fragment", [
    ("train.epochz=2", "train.epochz"),             # unknown key
    ("train.epochs=-1", "train.epochs"),             # out of range
    ("train.epochs", "expected key=value"),          # not key=value
    ("model.embed_dim.x=3", "model.embed_dim is a value"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config("ppt", "tiny", [override])


def test_unknown_profile_and_paper():
    with pytest.raises(ConfigError, match="no profile 'huge'"):
        load_config("ppt", "huge")
    with pytest.raises(KeyError, match="unknown paper 'nope'"):
        load_config("nope")


def test_built_dataset_path_names_the_stage_to_build() -> None:
    from recipes import built_dataset_path

    with pytest.raises(ConfigError, match=r"data/miniimagenet is not built: .*dvc repro miniimagenet"):
        built_dataset_path(load_config("feat", "full").config)
