"""The one PPT config section of the ViT recipes (recipes/ppt_section.py): its conversion to the model config, the
knobs the registry records, and that ppt, w2s and ovor all configure PPT through it."""
import json

import pytest
from pydantic import ValidationError

from models import ppt
from recipes import load_config
from recipes.ppt_section import FinetunedPPTSection, PPTSection, ppt_knobs, ppt_record


def test_tau_follows_the_cv_rule_unless_set():
    section = FinetunedPPTSection(r=4, blocks=[1, 3], tau_cv=1.64, finetune_tau_cv=1.52)
    off_the_shelf = section.reduction_config(64)
    assert off_the_shelf == ppt.TokenReductionConfig("ppt", r=4, blocks=(1, 3), tau=(1.64 / 64) ** 2, tau_cv=1.64)
    finetune = section.finetune_reduction_config(64)
    assert (finetune.tau, finetune.tau_cv) == ((1.52 / 64) ** 2, 1.52)
    assert section.reduction_config(64, method="tome").method == "tome"
    # proportional attention follows the section for the methods whose tokens carry a size; EViT's never do
    assert [section.reduction_config(64, method=m).prop_attn for m in ("ppt", "tome", "evit")] == [True, True, False]
    fixed = FinetunedPPTSection(r=4, blocks=[1, 3], tau=7e-5)
    assert fixed.reduction_config(64).tau == fixed.finetune_reduction_config(64).tau == 7e-5


def test_knobs_are_json_and_rebuild_the_model_config():
    trc = PPTSection(r=14, blocks=(3, 6, 9), prop_attn=False).reduction_config(196, method="evit")
    knobs = json.loads(json.dumps(ppt_knobs(trc)))
    assert ppt.TokenReductionConfig(**knobs) == trc
    assert ppt_record(knobs) == {"strategy": "evit", "r": "14", "blocks": "3,6,9"}


def test_r_and_blocks_have_no_default_and_bounds_hold():
    with pytest.raises(ValidationError, match="blocks\n  Field required"):
        PPTSection.model_validate({"r": 4})
    with pytest.raises(ValidationError, match="tau_cv\n  Input should be greater than 0"):
        PPTSection.model_validate({"r": 4, "blocks": [1], "tau_cv": 0})


@pytest.mark.parametrize("paper, finetuned", [("ppt", True), ("w2s", True), ("ovor", False)])
def test_every_vit_recipe_configures_ppt_through_the_one_section(paper, finetuned):
    compress = load_config(paper, "tiny").config.compress
    assert isinstance(compress, PPTSection)
    assert isinstance(compress, FinetunedPPTSection) == finetuned
