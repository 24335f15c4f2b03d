"""`tokenred visualize` on a real photograph (scikit-image's astronaut)."""
import numpy as np
import pytest
import torch
from PIL import Image

import tokenred
from tokenred.cli import main
from tokenred.visualize import render, token_groups

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) not installed")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


def test_tome_groups_match_the_recorded_sources(photo):
    groups = token_groups("deit_small_patch16_224", "tome:r=13", str(photo))
    assert groups.groups.shape == (14, 14) and groups.image.shape == (224, 224, 3)
    assert (groups.groups >= 0).all()                       # merging keeps every patch
    # independently: the same model and method with ToMe's own source tracking
    torch.manual_seed(0)
    model = tokenred.create_backbone("deit_small_patch16_224")
    from tokenred.evaluate import eval_transform
    transform, _ = eval_transform(model, 224)
    x = transform(Image.open(photo).convert("RGB"))[None]
    with tokenred.apply(model, "tome", r=13, trace_source=True) as handle, torch.no_grad():
        model(x)
        source = handle.state.source[0, 1:, 1:]            # final patch tokens x patches
    assert groups.num_tokens == source.shape[0] == 196 - 12 * 13
    expected = source.float().argmax(0).reshape(14, 14).numpy()
    # the same partition (token ids may be numbered the same; compare as partitions anyway)
    pairs = set(zip(groups.groups.ravel().tolist(), expected.ravel().tolist(), strict=True))
    assert len(pairs) == len(np.unique(expected)) == len(np.unique(groups.groups))


def test_render_fills_groups_with_their_mean_colour(photo):
    groups = token_groups("deit_small_patch16_224", "tome:r=8", str(photo))
    out = render(groups)
    pixel_groups = np.kron(groups.groups, np.ones((16, 16), dtype=np.int64))
    g = groups.groups[7, 7]
    mask = pixel_groups == g
    inner = out[mask]
    assert np.isclose(inner, groups.image[mask].mean(0), atol=1e-6).all(-1).mean() > 0.5
    assert out.shape == groups.image.shape


def test_random_drop_marks_dropped_patches(photo):
    groups = token_groups("deit_small_patch16_224", "random_drop:keep=0.5,where=[0]", str(photo))
    assert (groups.groups < 0).sum() == 196 - 98 and groups.num_tokens == 98


def test_cli_writes_a_png(photo, tmp_path, capsys):
    out = tmp_path / "vis.png"
    assert main(["visualize", "--method", "tome:r=13", "--image", str(photo),
                 "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == (800, 430)
    assert "40 tokens from 196 patches" in capsys.readouterr().out
    assert main(["visualize", "--backbone", "vmamba_tiny_s1l8", "--method", "none",
                 "--image", str(photo), "--out", str(tmp_path / "x.png")]) == 2
    assert "sequence (ViT) backbones" in capsys.readouterr().err
