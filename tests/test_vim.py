"""Vision Mamba (Vim) backbone: the official code's golden outputs (vim_mini.pt), official
kwargs and state_dicts, released names and parameter counts, FLOPs of both scan directions."""
import pytest
import torch

import tokenred
from tokenred.backbones import vim
from tokenred.checkpoint import load_checkpoint

from conftest import shared_file


@pytest.fixture(scope="module")
def fx():
    return torch.load(shared_file("fixtures/vim_mini.pt"), weights_only=True)


def _model(fx, **overrides):
    model = vim.from_official_config(fx["official_kwargs"], **overrides).eval()
    model.load_state_dict(fx["state_dict"], strict=True)
    return model


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_golden_logits_features_and_block_outputs(fx, backend):
    model = _model(fx, scan_backend=backend)
    x = fx["input"]
    with torch.inference_mode():
        torch.testing.assert_close(model(x), fx["logits"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model(x, return_features=True), fx["features"],
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.patch_embed.proj(x).flatten(2).transpose(1, 2),
                                   fx["patch_embed_output"], atol=1e-5, rtol=1e-5)
        hidden = model.embed(x)
        torch.testing.assert_close(hidden, fx["embed_output"], atol=1e-5, rtol=1e-5)
        residual = None
        for layer, want in zip(model.layers, fx["block_outputs"], strict=True):
            hidden, residual = layer(hidden, residual)
            torch.testing.assert_close(hidden, want["hidden_states"], atol=2e-3, rtol=1e-4)
            torch.testing.assert_close(residual, want["residual"], atol=2e-3, rtol=1e-4)


def test_structure_is_the_official_one(fx):
    model = _model(fx)
    derived = fx["derived"]
    assert model.cls_position == fx["cls_position"] == derived["cls_position"]
    assert model.num_patches == derived["num_patches"] and list(model.grid) == derived["grid"]
    mixer = model.layers[0].mixer
    assert (mixer.d_inner, mixer.dt_rank, mixer.d_conv) == (derived["d_inner"], derived["dt_rank"],
                                                            derived["d_conv"])
    assert sum(p.numel() for p in model.parameters()) == derived["num_params"]
    assert sorted(model.state_dict()) == sorted(fx["state_dict"])   # exactly the official keys


def test_odd_grid_puts_the_class_token_at_m_over_2():
    model = vim.VisionMamba(img_size=56, patch_size=8, stride=8, embed_dim=32, depth=1,
                            num_classes=3)
    assert model.num_patches == 49 and model.cls_position == 24     # not L // 2 = 25
    x = torch.randn(1, 3, 56, 56)
    with torch.inference_mode():
        t = model.embed(x) - model.pos_embed
    torch.testing.assert_close(t[0, 24], model.cls_token[0, 0])
    # grid = (img - patch) // stride + 1: patch 16, stride 8 at 64 px is a 7x7 grid
    assert vim.VisionMamba(img_size=64, patch_size=16, stride=8, embed_dim=32, depth=1).grid == (7, 7)


def test_the_backward_branch_is_computed():
    """The official slow path drops the backward scan; this one must not: zeroing the backward
    branch's D and its in-scan contribution changes the output."""
    torch.manual_seed(0)
    model = vim.VisionMamba(img_size=32, patch_size=8, stride=8, embed_dim=32, depth=2,
                            num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        before = model(x)
        for layer in model.layers:
            layer.mixer.x_proj_b.weight.zero_()
            layer.mixer.D_b.zero_()
        after = model(x)
    assert (before - after).abs().max() > 1e-3


def test_official_checkpoint_container_loads_strictly(fx, tmp_path):
    path = tmp_path / "vim_mini.pth"
    torch.save({"model": fx["state_dict"], "epoch": 299}, path)
    model = vim.from_official_config(fx["official_kwargs"]).eval()
    assert load_checkpoint(model, path).ok
    with torch.inference_mode():
        torch.testing.assert_close(model(fx["input"]), fx["logits"], atol=1e-4, rtol=1e-4)


def test_factory_kwargs_and_refused_configurations(fx):
    assert fx["official_factory"] in tokenred.list_backbones()
    with torch.device("meta"):
        model = vim.from_official_config(fx["official_factory_kwargs"])
    assert model.embed_dim == 192 and len(model.layers) == 24
    for bad, message in (({"if_rope": True}, "if_rope"), ({"bimamba_type": "v1"}, "bimamba_type"),
                         ({"use_middle_cls_token": False}, "use_middle_cls_token"),
                         ({"rms_norm": False}, "rms_norm"), ({"not_a_kwarg": 1}, "not_a_kwarg")):
        with pytest.raises(ValueError, match=message):
            vim.from_official_config({**fx["official_kwargs"], **bad})
    with pytest.raises(tokenred.CheckpointError, match="checkpoint=PATH"):
        tokenred.create_backbone("vim_tiny", pretrained=True)


#: parameter counts of the released models (the papers' 7M / 26M / 98M), from the structure the
#: fixture pins (465,738 parameters and a strict load of the official state_dict)
PARAMS = {"vim_tiny": 7_148_008, "vim_small": 25_796_584, "vim_base": 97_598_440,
          "vim_tiny_stride8": 7_250_344, "vim_small_stride8": 26_001_256}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_released_names_and_parameter_counts(name):
    with torch.device("meta"):
        model = tokenred.create_backbone(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    official = vim.CONFIGS[name][0]
    with torch.device("meta"):
        same = tokenred.create_backbone(official)
    assert sum(p.numel() for p in same.parameters()) == PARAMS[name]


def test_flops_count_both_scan_directions(fx):
    model = _model(fx)
    count = tokenred.count_flops(model, 64)
    assert not count.uncounted
    # the scan op alone: 2 directions x depth blocks x VMamba's formula with the D skip and the
    # z gate (9 L E N + E L + E L): the papers' figures count one direction
    from tokenred.kernels.selective_scan import scan_macs

    scans = 2 * 11 * scan_macs(1, 65, 128, 16, with_d=True, with_z=True)
    assert count.by_operator["selective_scan"] == scans == 26_723_840
    assert count.total == sum(count.by_operator.values())
