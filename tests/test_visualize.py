"""`tokenred visualize` on a real photograph (scikit-image's astronaut)."""
import numpy as np
import pytest
import torch
from PIL import Image

import tokenred
from tokenred.cli import main
from tokenred.visualize import grid_groups, render, render_grid, token_groups

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
    grid_png = tmp_path / "grid.png"
    assert main(["visualize", "--backbone", "vmamba_tiny_s1l8", "--method", "quartermap",
                 "--image", str(photo), "--out", str(grid_png)]) == 0
    with Image.open(grid_png) as img:
        assert img.size == (1200, 430)          # input + one panel per site of stage 0
    assert "layers.0.blocks.0 784/3136" in capsys.readouterr().out


def test_quartermap_panels_show_2x2_blocks_and_the_kept_grid(photo):
    groups = grid_groups("vmamba_tiny_s1l8", "quartermap:offset=(1,0),where=stages:0-1", str(photo))
    assert [s.site for s in groups.sites] == ["layers.0.blocks.0", "layers.0.blocks.1",
                                              "layers.1.blocks.0", "layers.1.blocks.1"]
    first = groups.sites[0]
    rows, cols = np.meshgrid(np.arange(56), np.arange(56), indexing="ij")
    assert (first.groups == (rows // 2) * 28 + cols // 2).all()
    assert first.kept == [(2 * a + 1, 2 * b) for a in range(28) for b in range(28)]
    assert groups.sites[2].groups.shape == (28, 28) and groups.sites[2].num_tokens == 196
    out = render_grid(groups.image, first)
    assert out.shape == groups.image.shape
    avg = grid_groups("vmamba_tiny_s1l8", "quartermap:mode=avg,where=stage:1", str(photo))
    assert avg.sites[0].kept is None                 # an average has no single kept position


def test_tome_and_random_drop_panels(photo):
    tome = grid_groups("vmamba_tiny_s1l8", "tome:where=layers.0.blocks.0", str(photo)).sites[0]
    assert len(np.unique(tome.groups)) == len(tome.kept) == 784
    for t, (r, c) in enumerate(tome.kept):
        assert tome.groups[r, c] == t                # a kept token shows itself
    drop = grid_groups("vmamba_tiny_s1l8", "random_drop:fill=zero,where=layers.0.blocks.0",
                       str(photo)).sites[0]
    assert (drop.groups < 0).sum() == 3136 - 784
    assert all(drop.groups[r, c] >= 0 for r, c in drop.kept)


def test_tome_grid_panel_matches_an_independent_matching(photo):
    """The drawn groups equal ToMe's own unmerge map, recomputed from the map entering the scan."""
    from tokenred.evaluate import eval_transform
    from tokenred.methods.tome import stride_grid_matching
    from tokenred.sites import GridContext

    drawn = grid_groups("vmamba_tiny_s1l8", "tome", str(photo)).sites[0]   # seeded by conftest
    torch.manual_seed(0)
    model = tokenred.create_backbone("vmamba_tiny_s1l8")
    transform, _ = eval_transform(model, 224)
    x = transform(Image.open(photo).convert("RGB"))[None]
    captured = {}

    class Capture(tokenred.Reducer):
        name, kinds = "capture", frozenset({"grid"})

        def reduce_grid(self, t, ctx: GridContext):
            captured["map"] = t.clone()
            return t

    with tokenred.apply(model, Capture(), where="layers.0.blocks.0"), torch.no_grad():
        model(x)
    flat = captured["map"].reshape(1, 56 * 56, -1)
    m = stride_grid_matching(flat, 56, 56, int(56 * 56 * 0.75), generator=torch.Generator().manual_seed(0))
    ids = m.unmerge(torch.arange(m.positions.shape[1], dtype=torch.float32).view(1, -1, 1))
    expected = ids.view(56, 56).long().numpy()
    pairs = set(zip(drawn.groups.ravel().tolist(), expected.ravel().tolist(), strict=True))
    assert len(pairs) == len(np.unique(expected)) == len(np.unique(drawn.groups)) == 784


@pytest.mark.parametrize("method,fused", [("evit", True), ("topk", False), ("kmedoids", True),
                                          ("dpc_knn", True), ("pitome", True), ("ats", False)])
def test_catalogue_methods_draw_their_kept_fused_and_merged_tokens(photo, tmp_path, method, fused):
    """Every catalogue method is drawn from the sources its sites record: kept patches alone,
    fused (EViT) / clustered (K-Medoids, DPC-KNN) / merged (PiToMe) patches as one group, pruned
    patches (Top-K, ATS) grey."""
    groups = token_groups("deit_tiny_patch16_224", method, str(photo), input_size=64)
    ids = groups.groups[groups.groups >= 0]
    assert len(np.unique(ids)) <= groups.num_tokens < 64
    if fused:
        assert (groups.groups >= 0).all()            # every patch is in some token
    else:
        assert (groups.groups < 0).any()             # pruned patches: drawn grey
    out = tmp_path / f"{method}.png"
    assert main(["visualize", "--backbone", "deit_tiny_patch16_224", "--method", method,
                 "--image", str(photo), "--input-size", "64", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
