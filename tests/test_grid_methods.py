"""Grid sites (VMamba/MedMamba SS2D) and the methods on them: the scan on reduced grids and token
subsets, QuarterMap, ToMe merge -> scan -> unmerge and random drop, and their FLOP counts."""
import pytest
import torch
import torch.nn.functional as F

import tokenred
from tokenred.backbones.vmamba import SS2D
from tokenred.methods.quartermap import kept_positions, subsample_grid, upsample_nearest
from tokenred.methods.random_drop import fill_index
from tokenred.methods.tome import stride_grid_destinations, stride_grid_matching
from tokenred.sites import GridContext, ReducedGrid, Site

TINY_VMAMBA = dict(depths=(1, 1, 2, 1), dims=16)     # 4 stages, maps 56/28/14/7 at 224


def tiny_vmamba(**kw):
    torch.manual_seed(0)
    return tokenred.create_backbone("vmamba_tiny_s1l8", **{**TINY_VMAMBA, **kw}).eval()


def small_ss2d(gate=False, d_state=2):
    torch.manual_seed(1)
    m = SS2D(8, d_state=d_state, ssm_ratio=1.0, dt_rank="auto", gate=gate).eval()
    with torch.no_grad():   # non-trivial decays so that the scan order matters
        m.A_logs.copy_(torch.rand_like(m.A_logs))
        m.dt_projs_bias.add_(1.0)
    return m


def grid_positions(h, w):
    return torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).view(-1, 2)


# --------------------------------------------------------------------------------------------
# the scan on token subsets
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def test_scan_of_a_permuted_full_subset_equals_the_cross_scan():
    m = small_ss2d()
    x = torch.randn(2, 5, 7, 8)
    ref = m.scan_2d(x).reshape(2, 35, 8)
    pos = grid_positions(5, 7)
    shared = torch.randperm(35)
    out = m.scan_tokens(x.reshape(2, 35, 8)[:, shared], pos[shared], 5, 7)
    torch.testing.assert_close(out, ref[:, shared], rtol=0, atol=1e-6)
    per_image = torch.stack([torch.randperm(35), torch.randperm(35)])
    idx = per_image[..., None].expand(-1, -1, 8)
    out = m.scan_tokens(x.reshape(2, 35, 8).gather(1, idx), pos[per_image], 5, 7)
    torch.testing.assert_close(out, ref.gather(1, idx), rtol=0, atol=1e-6)


@torch.no_grad()
def test_scan_of_a_subset_visits_row_major_column_major_and_reversed():
    """A real subset, checked against orders built with Python's sorted()."""
    m = small_ss2d()
    h, w = 4, 6
    keep = [0, 3, 5, 7, 8, 13, 14, 19, 22, 23]
    pos = [(k // w, k % w) for k in keep]
    x = torch.randn(1, len(keep), 8)
    out = m.scan_tokens(x, torch.tensor(pos), h, w)
    row_order = sorted(range(len(pos)), key=lambda i: (pos[i][0], pos[i][1]))
    col_order = sorted(range(len(pos)), key=lambda i: (pos[i][1], pos[i][0]))
    seqs = [row_order, col_order, row_order[::-1], col_order[::-1]]
    xs = torch.stack([x[0, s] for s in seqs], dim=1)[:, None]        # [L, 1, K, D]
    y = m.scan_directions(xs)[:, 0]                                  # [L, K, D]
    expected = torch.zeros(len(keep), 8)
    for k, order in enumerate(seqs):
        for t, i in enumerate(order):
            expected[i] += y[t, k]
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-6)


class _Wrap(tokenred.Reducer):
    """Runs another reducer but can hide that its restore only copies."""

    name = "wrap"
    kinds = frozenset({"grid"})

    def __init__(self, inner, copies):
        super().__init__()
        self.inner, self.copies = inner, copies

    def reduce_grid(self, x, ctx):
        red = self.inner.reduce_grid(x, ctx)
        return ReducedGrid(red.x, red.restore, red.positions, copies=self.copies and red.copies)


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("method", ["quartermap", "tome", "random_drop"])
@torch.no_grad()
def test_copy_restores_let_per_token_layers_run_first_with_the_same_result(method, gate):
    m = small_ss2d(gate=gate)
    x = torch.randn(2, 9, 7, 8)
    ctx = GridContext(Site("layers.0.blocks.0", "grid", 0, 0, 0), 0, 1)
    outs = []
    for copies in (True, False):
        reducer = _Wrap(tokenred.get_method(method)(), copies)
        reducer.inner.begin_forward()
        m.grid_hook = lambda t, r=reducer: r.reduce_grid(t, ctx)
        outs.append(m(x))
    m.grid_hook = None
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_bad_reductions_are_clear_errors():
    m = small_ss2d()
    x = torch.randn(1, 4, 4, 8)
    m.grid_hook = lambda t: t[:, ::2, ::2]
    with pytest.raises(RuntimeError, match="must come as a tokenred.sites.ReducedGrid"):
        m(x)
    m.grid_hook = lambda t: ReducedGrid(t[:, ::2, ::2], lambda y: y)
    with pytest.raises(RuntimeError, match="restore returned"):
        m(x)
    m.grid_hook = lambda t: ReducedGrid(t.reshape(1, 16, -1)[:, :3], lambda y: y,
                                        positions=torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="positions must be"):
        m(x)


# --------------------------------------------------------------------------------------------
# QuarterMap
# --------------------------------------------------------------------------------------------
def test_kept_positions_cover_partial_blocks():
    assert kept_positions(7, 2, 0) == [0, 2, 4, 6]
    assert kept_positions(7, 2, 1) == [1, 3, 5, 6]       # the partial last block keeps what it has
    assert kept_positions(8, 2, 1) == [1, 3, 5, 7]
    assert kept_positions(7, 3, 2) == [2, 5, 6]


@pytest.mark.parametrize("size,offset", [(56, (0, 0)), (56, (1, 0)), (7, (0, 0)), (7, (1, 1)),
                                         (6, (0, 1))])
def test_subsample_and_upsample_restore_the_exact_size(size, offset):
    x = torch.randn(2, size, size, 3)
    small = subsample_grid(x, 2, offset)
    n = -(-size // 2)
    assert small.shape == (2, n, n, 3)
    rows, cols = kept_positions(size, 2, offset[0]), kept_positions(size, 2, offset[1])
    torch.testing.assert_close(small, x[:, rows][:, :, cols], rtol=0, atol=0)
    up = upsample_nearest(small, 2, size, size)
    assert up.shape == x.shape
    for i in range(size):
        for j in (0, size - 1, size // 2):
            assert torch.equal(up[:, i, j], small[:, i // 2, j // 2])
    if size % 2 == 0:   # the same as torch's nearest interpolation where that applies
        ref = F.interpolate(small.permute(0, 3, 1, 2), scale_factor=2, mode="nearest")
        torch.testing.assert_close(up, ref.permute(0, 2, 3, 1), rtol=0, atol=0)


def test_avg_mode_averages_each_block_including_partial_ones():
    x = torch.arange(49.0).view(1, 7, 7, 1)
    small = subsample_grid(x, 2, mode="avg")[0, ..., 0]
    assert small[0, 0] == (0 + 1 + 7 + 8) / 4
    assert small[0, 3] == (6 + 13) / 2          # right-hand partial block
    assert small[3, 3] == 48                    # corner block of one position


@torch.no_grad()
def test_quartermap_on_ss2d_is_scan_of_the_quarter_map_then_nearest_upsampling():
    m = small_ss2d()
    x = torch.randn(2, 7, 7, 8)
    handle_free = m(x)
    reducer = tokenred.get_method("quartermap")()
    ctx = GridContext(Site("layers.0.blocks.0", "grid", 0, 0, 0), 0, 1)
    m.grid_hook = lambda t: reducer.reduce_grid(t, ctx)
    out = m(x)
    m.grid_hook = None
    # by hand: in_proj -> conv -> act, scan of rows/cols 0,2,4,6, upsample, out_norm, out_proj
    inner = m.act(m.conv2d(m.in_proj(x).permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
    y = m.scan_2d(inner[:, ::2, ::2])
    y = y.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :7, :7]
    expected = m.out_proj(m.out_norm(y))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, handle_free)


def test_quartermap_parameters_are_checked():
    with pytest.raises(tokenred.ParameterError, match="offset .* inside the 2x2 block"):
        tokenred.get_method("quartermap")(offset=(0, 2))
    with pytest.raises(tokenred.ParameterError, match="offset only applies to mode='pick'"):
        tokenred.get_method("quartermap")(mode="avg", offset=1)
    with pytest.raises(tokenred.ParameterError, match="'mode'"):
        tokenred.get_method("quartermap")(mode="max")


def test_grid_only_method_on_a_vit_says_so():
    vit = tokenred.create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
    with pytest.raises(tokenred.apply.__globals__["UnsupportedSiteKindError"],
                       match="'quartermap' serves \\['grid'\\] sites but VisionTransformer only has "
                             "\\['sequence'\\]"):
        tokenred.apply(vit, "quartermap")


# --------------------------------------------------------------------------------------------
# ToMe on grids
# --------------------------------------------------------------------------------------------
def test_stride_grid_destinations():
    top_left = stride_grid_destinations(4, 6, 2, 2)
    assert top_left.tolist() == [0, 2, 4, 12, 14, 16]
    g = torch.Generator().manual_seed(3)
    rand = stride_grid_destinations(5, 5, 2, 2, g)       # 2x2 cells; row/col 4 left over
    assert len(rand) == 4
    for k, flat in enumerate(rand.tolist()):
        cy, cx = divmod(k, 2)
        r, c = divmod(flat, 5)
        assert r // 2 == cy and c // 2 == cx and r < 4 and c < 4


def test_stride_grid_matching_against_a_brute_force_reference():
    torch.manual_seed(0)
    h, w, c, r = 5, 6, 4, 12
    metric = torch.randn(2, h * w, c)
    x = torch.randn(2, h * w, 3)
    m = stride_grid_matching(metric, h, w, r)        # top-left destinations
    merged, back = m.merge(x), m.unmerge(m.merge(x))
    dst = stride_grid_destinations(h, w, 2, 2).tolist()
    src = [p for p in range(h * w) if p not in dst]
    for b in range(2):
        unit = metric[b] / metric[b].norm(dim=-1, keepdim=True)
        best = {s: max(dst, key=lambda d: float(unit[s] @ unit[d])) for s in src}
        score = {s: float(unit[s] @ unit[best[s]]) for s in src}
        moved = sorted(src, key=lambda s: -score[s])[:r]
        kept_src = [s for s in src if s not in moved]
        flat = (m.positions[b, :, 0] * w + m.positions[b, :, 1]).tolist()
        assert sorted(flat) == sorted(kept_src + dst) and len(flat) == h * w - r
        for t, p in enumerate(flat):
            members = [p] + [s for s in moved if best[s] == p] if p in dst else [p]
            torch.testing.assert_close(merged[b, t], x[b, members].mean(0))
        for p in range(h * w):         # unmerge: own value, or the destination's
            owner = best[p] if p in moved else p
            assert torch.equal(back[b, p], merged[b, flat.index(owner)])


def test_tome_grid_ratio_is_checked_not_silently_capped():
    with pytest.raises(tokenred.ParameterError, match="exceeds 1 - 1/\\(sx\\*sy\\) = 0.75"):
        tokenred.get_method("tome")(ratio=0.8)
    tokenred.get_method("tome")(ratio=0.8, sx=3, sy=2)          # 1 - 1/6 = 0.83


# --------------------------------------------------------------------------------------------
# random drop on grids
# --------------------------------------------------------------------------------------------
def test_fill_index_takes_the_closest_kept_position_before():
    kept = torch.tensor([[2, 3, 7], [0, 4, 5]])
    assert fill_index(kept, 9).tolist() == [[0, 0, 0, 1, 1, 1, 1, 2, 2], [0, 0, 0, 0, 1, 2, 2, 2, 2]]


@torch.no_grad()
def test_random_drop_grid_fills_and_rejects_r():
    reducer = tokenred.get_method("random_drop")(keep=0.5, fill="zero")
    ctx = GridContext(Site("layers.0.blocks.0", "grid", 0, 0, 0), 0, 1)
    reducer.begin_forward()
    x = torch.randn(2, 4, 4, 3)
    red = reducer.reduce_grid(x, ctx)
    assert red.x.shape == (2, 8, 3) and not red.copies
    back = red.restore(red.x)
    kept = red.positions[..., 0] * 4 + red.positions[..., 1]
    for b in range(2):
        for p in range(16):
            expected = x[b].view(16, 3)[p] if p in kept[b].tolist() else torch.zeros(3)
            assert torch.equal(back[b].view(16, 3)[p], expected)
    with pytest.raises(tokenred.ParameterError, match="r \\(tokens dropped per block\\) applies "
                                                      "to sequence sites"):
        tokenred.apply(tiny_vmamba(), "random_drop", r=3)
    # in a comparison that is a gap in the VMamba table, not a failed run
    df = tokenred.compare(["vmamba_tiny_s1l8"], ["random_drop:r=3"], input_size=64, batch_size=1,
                          warmup=0, iters=1, rounds=1, backbone_kwargs=TINY_VMAMBA)
    assert list(df["method"]) == ["none"]
    assert "applies to sequence sites" in df.attrs["skipped"][0]["reason"]


# --------------------------------------------------------------------------------------------
# on the whole backbone: sites, tokens, FLOPs
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def test_methods_on_vmamba_default_sites_tokens_and_determinism():
    model = tiny_vmamba()
    x = torch.randn(2, 3, 224, 224)
    ref = model(x)
    for method in ("quartermap", "tome", "random_drop"):
        with tokenred.apply(model, method) as h:
            assert [s.name for s in h.sites] == ["layers.0.blocks.0"]
            out = model(x)
            assert h.state.tokens_out == "784/784/196/49"
            assert h.state.per_stage() == [784, 784, 196, 49]
            torch.testing.assert_close(model(x), out, rtol=0, atol=0)    # seeded, repeatable
            assert out.shape == ref.shape and not torch.allclose(out, ref)
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)            # removed exactly
    with tokenred.apply(model, "quartermap", where="stages:0-3") as h:
        model(x)
        assert h.state.tokens_out == "784/196/49/16"                     # 7x7 -> 4x4


def _op_macs(count, block):
    return count.by_module[f"layers.{block}.blocks.0.op"]


def test_count_flops_reflects_each_reduction_exactly():
    """Everything after the grid site is per token, so a site scanning L' of L tokens costs
    in_proj + conv at L plus (L'/L) of the rest; ToMe adds its similarity matmul; data movement
    (gather, nearest upsampling, unmerge) counts 0 and average pooling one per element."""
    model = tiny_vmamba()
    full = tokenred.count_flops(model, 224)
    op = full.by_module["layers.0.blocks.0.op"]
    fixed = (full.by_module["layers.0.blocks.0.op.in_proj"]
             + full.by_module["layers.0.blocks.0.op.conv2d"])
    rest = op - fixed
    d_inner, L = 16, 56 * 56
    for spec, extra in [("quartermap", 0), ("random_drop", 0),
                        ("tome", (L - L // 4) * (L // 4) * d_inner),    # sources x destinations
                        ("quartermap:mode=avg", L * d_inner)]:
        name, params = tokenred.params.parse_method_spec(spec)
        with tokenred.apply(model, name, where="stage:0", **params):
            count = tokenred.count_flops(model, 224)
        assert count.by_module["layers.0.blocks.0.op"] == fixed + rest // 4 + extra, spec
        assert count.by_module["layers.1.blocks.0.op"] == full.by_module["layers.1.blocks.0.op"]
        assert count.total == full.total - 3 * rest // 4 + extra, spec
        assert not count.uncounted, spec


@torch.no_grad()
def test_medmamba_gated_ss2d_takes_grid_methods():
    torch.manual_seed(0)
    model = tokenred.create_backbone("medmamba_tiny", depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)).eval()
    x = torch.randn(1, 3, 224, 224)
    ref = model(x)
    for method in ("quartermap", "tome", "random_drop"):
        with tokenred.apply(model, method) as h:
            out = model(x)
            assert h.state.per_stage()[:2] == [784, 784]
            assert out.shape == ref.shape and torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["quartermap", "quartermap:mode=avg", "tome", "random_drop"])
@torch.no_grad()
def test_grid_methods_on_cuda_match_cpu(method):
    model = tiny_vmamba()
    x = torch.randn(2, 3, 224, 224)
    name, params = tokenred.params.parse_method_spec(method)
    with tokenred.apply(model, name, **params):
        cpu = model(x)
        cuda = model.cuda()(x.cuda()).cpu()
    # random destinations and drops are drawn on the CPU, so both devices reduce alike
    torch.testing.assert_close(cuda, cpu, rtol=1e-3, atol=1e-3)


def test_compare_evaluates_grid_methods_on_data(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (80, 72), (40 * i, 90, 200 if label == "a" else 10)).save(
                tmp_path / label / f"{i}.png")
    df = tokenred.compare(["vmamba_tiny_s1l8"], ["none", "quartermap", "tome", "random_drop"],
                          input_size=64, batch_size=2, warmup=0, iters=1, rounds=1,
                          backbone_kwargs=TINY_VMAMBA, data=str(tmp_path))
    assert list(df["method"]) == ["none", "quartermap", "tome", "random_drop"]
    assert (df["eval_images"] == 4).all() and df["agreement"].iloc[0] == 100.0
    assert df["agreement"].notna().all() and df["kl"].notna().all()
    assert list(df["tokens_out"]) == ["256/64/16/4"] + ["64/64/16/4"] * 3
