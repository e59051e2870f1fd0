"""A recipe's `method` section is parsed into the chosen method's own dataclass."""

from dataclasses import dataclass

import pytest
import yaml

from aptune.config import LEGACY_METHOD_DEFAULTS, config_from_dict, load_config, save_config
from aptune.errors import ConfigError
from aptune.methods import METHODS, register
from aptune.methods.lora import LoRA
from aptune.methods.vpt import VPTDeep


def method_of(section: dict):
    return config_from_dict({"method": section}).method


def test_a_section_becomes_that_methods_dataclass_and_is_saved_as_it(tmp_path):
    method = method_of({"name": "lora", "lora_rank": 4, "prompt_end": 1})
    assert isinstance(method, LoRA) and (method.lora_rank, method.prompt_end, method.lora_alpha) == (4, 1, 16.0)
    path = tmp_path / "config.yaml"
    save_config(config_from_dict({"method": {"name": "lora", "lora_rank": 4}}), path)
    saved = yaml.safe_load(path.read_text())["method"]
    assert saved == {"name": "lora", "lora_rank": 4, "lora_alpha": 16.0, "prompt_start": 0, "prompt_end": None}
    assert load_config(path).method == LoRA(lora_rank=4)


def test_each_method_takes_its_own_defaults():
    assert isinstance(method_of({"name": "vpt-deep"}), VPTDeep)
    assert method_of({"name": "vpt-deep"}).num_prompts == VPTDeep().num_prompts == 50  # not APT's 400
    assert method_of({}).name == "apt" and method_of({}).num_prompts == 400


@pytest.mark.parametrize(
    "section, words",
    [
        ({"name": "lora", "rank": 4}, "unknown key 'method.rank' for method lora (valid: name, lora_rank, lora_alpha"),
        ({"name": "lora", "num_prompts": 50}, "method.num_prompts=50 needs a prompt method (apt, vpt-shallow"),
        ({"name": "apt", "lora_rank": 4}, "method.lora_rank=4 needs method lora, not apt"),
        ({"name": "linear", "reparam": False}, "method.reparam=False needs method apt, not linear"),
        ({"name": "apt", "lora_rank": 0}, "method.lora_rank must be in [1, 4096], got 0"),  # a bad value first
        ({"name": "lora", "lora_rank": "four"}, "method.lora_rank expects an integer"),
        ({"name": "lora", "prompt_start": 2, "prompt_end": 1}, "method.prompt_end=1 is before method.prompt_start=2"),
        ({"name": 7}, "method.name='7' is not one of"),
    ],
)
def test_bad_sections_are_one_line_errors(section, words):
    with pytest.raises(ConfigError) as caught:
        method_of(section)
    assert words in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_keys_of_the_old_flat_section_still_load():
    # at their 0.1.0 defaults, the other methods' keys never did anything: dropped
    assert method_of({"name": "lora", "num_prompts": 400, "reparam": True, "adapter_dim": 64}) == LoRA()
    # a 0.1.0 run folder's config.yaml held every key; what it held for other methods is dropped
    old = {**LEGACY_METHOD_DEFAULTS, "name": "lora", "num_prompts": 16, "lora_rank": 4}
    assert method_of(old) == LoRA(lora_rank=4)


def test_set_method_name_replaces_the_recipes_method(tmp_path):
    recipe = tmp_path / "apt.yaml"
    recipe.write_text(yaml.safe_dump({"method": {"name": "apt", "num_prompts": 200, "prompt_end": 1}}))
    switched = load_config(recipe, ["method.name=lora"]).method
    assert switched == LoRA(prompt_end=1)  # the shared layer range carries over, the prompt count does not
    assert load_config(recipe, ["method.name=vpt-deep"]).method.num_prompts == 200
    with pytest.raises(ConfigError, match="method.num_prompts=5 needs a prompt method"):
        load_config(recipe, ["method.num_prompts=5", "method.name=lora"])  # what --set asks for is kept


def test_a_method_added_later_owns_its_section():
    @register("width-test-only")
    @dataclass
    class WidthOnly:
        width: int = 3

        def attach(self, model) -> None:
            pass

        def trainable_prefixes(self) -> tuple[str, ...]:
            return ("head.",)

    try:
        assert method_of({"name": "width-test-only", "width": 5}).width == 5
        with pytest.raises(ConfigError, match="method.width expects an integer"):
            method_of({"name": "width-test-only", "width": "wide"})
        with pytest.raises(ConfigError, match="method.width=5 needs method width-test-only, not apt"):
            method_of({"name": "apt", "width": 5})
    finally:
        METHODS.pop("width-test-only")
