"""The backbone's one extension protocol: methods add BlockExtension modules, vit.py names none."""

import ast
from pathlib import Path

import pytest
import torch
from helpers import randomize_, tiny_clip, tiny_model
from torch import nn

import aptune
from aptune.methods import method_names
from aptune.models.vit import BlockExtension

MODELS = Path(aptune.__file__).parent / "models"


class ShiftAfterMLP(BlockExtension):
    """A test-only method module: adds a learnable vector beside the MLP of its blocks."""

    def __init__(self, first_layer: int, num_layers: int, dim: int) -> None:
        super().__init__(first_layer, num_layers)
        self.shift = nn.Parameter(torch.zeros(dim))

    def block_inputs(self, layer: int) -> dict:
        return {"mlp_side": lambda x: self.shift.expand_as(x)}


def _code_words(path: Path) -> set[str]:
    """Identifiers, attributes and string constants of ``path``, docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None:
            docstrings.add(id(node.body[0].value))
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.add(node.value)
    return {w.lower() for w in words}


@pytest.mark.parametrize("module", ["vit.py", "attention.py"])
def test_the_backbone_code_names_no_method(module):
    words = _code_words(MODELS / module)
    parts = {part for word in words for part in word.replace("-", "_").replace(".", "_").split("_")}
    # "linear" and "full" are torch's own words too (nn.Linear, torch.full): only whole names count
    methods = {m.replace("-", "_") for m in method_names()} - {"linear", "full"}
    named = sorted(m for m in methods if m in parts or any(m in w for w in words))
    slots = {"kv_prompts", "token_prompts", "qkv_adapters", "mlp_adapters"} & words
    assert not named and not slots, (named, slots)


def test_an_extension_changes_only_its_blocks_and_starts_the_graph_there():
    model = tiny_model("linear").eval()
    randomize_(model)
    x = tiny_clip()
    plain = model(x)
    shift = ShiftAfterMLP(first_layer=2, num_layers=1, dim=model.config.embed_dim)
    model.add_extension("shift", shift)
    assert model.first_block_needing_grad() == 2
    torch.testing.assert_close(model(x), plain, rtol=0, atol=0)  # a zero shift is the backbone
    with torch.no_grad():
        shift.shift.copy_(torch.linspace(-1, 1, shift.shift.numel()))  # not constant: fc_norm cancels that
    assert not torch.allclose(model(x), plain)
    assert "shift.shift" in model.state_dict()
    with model.extensions_disabled():
        torch.testing.assert_close(model(x), plain, rtol=0, atol=0)
    assert model.extension("shift") is shift
    model.remove_extension("shift")
    assert model.extension("shift") is None and "shift.shift" not in model.state_dict()
    torch.testing.assert_close(model(x), plain, rtol=0, atol=0)


def test_extensions_are_checked_when_added_and_when_they_collide():
    model = tiny_model("adaptformer")  # its mlp_adapters already use the mlp_side hook
    with pytest.raises(TypeError, match="not a BlockExtension"):
        model.add_extension("plain", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="already has an attribute or extension called 'head'"):
        model.add_extension("head", ShiftAfterMLP(0, 1, model.config.embed_dim))
    model.add_extension("shift", ShiftAfterMLP(0, 1, model.config.embed_dim))
    with pytest.raises(ValueError, match="extension 'shift' sets block input 'mlp_side'"):
        model(tiny_clip())
    with pytest.raises(KeyError, match="no extension 'nope'"):
        model.remove_extension("nope")
