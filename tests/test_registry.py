import sys
import types
from importlib import metadata

import pytest
from torch import nn

import tokenred
from tokenred import Reducer, registry
from tokenred.params import Int


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    monkeypatch.setattr(registry, "_BACKBONES", dict(registry._BACKBONES))
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", False)
    yield


def test_builtins_listed():
    assert {"none", "tome", "random_drop", "evit", "topk", "ats", "pitome", "kmedoids",
            "kmedoids_weighted", "dpc_knn", "quartermap", "rmeeto", "topvim"
            } <= set(tokenred.list_methods())
    assert tokenred.list_methods("t*") == ["tome", "topk", "topvim"]
    assert tokenred.list_methods("kmedoids*") == ["kmedoids", "kmedoids_weighted"]


def test_register_and_duplicate(clean_registry):
    @tokenred.register_method("my_identity")
    class MyIdentity(Reducer):
        kinds = frozenset({"sequence"})
        params = {"k": Int(1, "a knob", min=0)}

        def reduce_sequence(self, tokens, ctx):
            return tokens

    assert "my_identity" in tokenred.list_methods()
    assert tokenred.get_method("my_identity")(k=3).params == {"k": 3}
    with pytest.raises(ValueError, match="'my_identity' is already registered"):
        tokenred.register_method("my_identity")(MyIdentity)
    with pytest.raises(ValueError, match="already registered"):
        tokenred.register_method("tome")(MyIdentity)
    with pytest.raises(TypeError, match="Reducer subclass"):
        tokenred.register_method("not_a_reducer")(object)

    @tokenred.register_backbone("my_net", family="test")
    def my_net(pretrained=False, **kwargs):
        return nn.Linear(2, 2)

    assert "my_net" in tokenred.list_backbones()
    with pytest.raises(ValueError, match="backbone 'my_net' is already registered"):
        tokenred.register_backbone("my_net")(my_net)


def test_unknown_names_list_close_matches():
    with pytest.raises(KeyError, match="unknown method 'tomee'; did you mean tome"):
        tokenred.get_method("tomee")
    with pytest.raises(KeyError, match="did you mean .*deit_small_patch16_224"):
        tokenred.create_backbone("deit_smal_patch16_224")


def test_non_vit_timm_model_is_refused():
    with pytest.raises(tokenred.sites.UnsupportedModelError, match="no site adapter"):
        tokenred.create_backbone("resnet18")


def test_entry_point_plugins(clean_registry, monkeypatch):
    plugin = types.ModuleType("tokenred_test_plugin")

    class Plugged(Reducer):
        kinds = frozenset({"sequence"})

        def reduce_sequence(self, tokens, ctx):
            return tokens

    plugin.Plugged = Plugged
    plugin.factory = lambda pretrained=False, **kw: nn.Identity()
    monkeypatch.setitem(sys.modules, "tokenred_test_plugin", plugin)
    eps = {
        "tokenred.methods": [metadata.EntryPoint("plugged", "tokenred_test_plugin:Plugged",
                                                 "tokenred.methods")],
        "tokenred.backbones": [metadata.EntryPoint("plugged_net", "tokenred_test_plugin:factory",
                                                   "tokenred.backbones")],
    }
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: eps.get(group, []))
    assert "plugged" in tokenred.list_methods()
    assert tokenred.get_method("plugged") is Plugged and Plugged.name == "plugged"
    assert "plugged_net" in tokenred.list_backbones()
    assert isinstance(tokenred.create_backbone("plugged_net"), nn.Identity)
