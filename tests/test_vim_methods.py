"""Vim's order-aware sequence sites and the Vim methods: R-MeeTo and ToP-ViM against their
official code (``vim_methods_mini.pt``), both in their default (paper-intent, per image) and
``official=true`` forms, and the other sequence methods running through the same contract."""
import math
from pathlib import Path

import pytest
import torch

import tokenred
from tokenred.backbones import vim
from tokenred.sites import SiteQuantityError

from conftest import shared_file


@pytest.fixture(scope="module")
def fixtures():
    backbone = torch.load(shared_file("fixtures/vim_mini.pt"), weights_only=True)
    methods = torch.load(shared_file("fixtures/vim_methods_mini.pt"), weights_only=True)
    return backbone, methods


@pytest.fixture()
def model(fixtures):
    backbone, _ = fixtures
    m = vim.from_official_config(backbone["official_kwargs"]).eval()
    m.load_state_dict(backbone["state_dict"], strict=True)
    return m


def run_with_block_outputs(model, x, method, **params):
    """Logits, the handle and each block's (mixer output, residual) as the official fixture
    stores them."""
    outputs = []
    hooks = [layer.register_forward_hook(lambda mod, inp, out: outputs.append(out))
             for layer in model.layers]
    try:
        handle = tokenred.apply(model, method, **params)
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, handle, outputs


def check_block_outputs(outputs, want):
    assert len(outputs) == len(want)
    for i, ((hidden, residual), ref) in enumerate(zip(outputs, want)):
        assert hidden.shape == ref["hidden_states"].shape, i
        torch.testing.assert_close(hidden, ref["hidden_states"], rtol=1e-4, atol=2e-3, msg=str(i))
        torch.testing.assert_close(residual, ref["residual"], rtol=1e-4, atol=2e-3, msg=str(i))


# -- R-MeeTo --------------------------------------------------------------------------------
def test_rmeeto_official_matches_the_official_eval_path(fixtures, model):
    _, fx = fixtures
    ref = fx["rmeeto"]
    para = ref["merge_para"]
    logits, handle, outputs = run_with_block_outputs(
        model, fx["input"], "rmeeto", r=para["num_prune"], interval=para["merge_interval"],
        compare=para["compare"], official=True)
    torch.testing.assert_close(logits, ref["logits"], rtol=1e-4, atol=1e-4)
    assert [s.block + 1 for s in handle.sites] == ref["merge_layers"]
    assert [o[0].shape[1] for o in outputs] == ref["tokens_per_layer"]
    merges = handle.reducer.last_merges
    for got, want in zip(merges, ref["merges"], strict=True):
        assert got["r"] == want["r"]
        for key in ("src_idx", "dst_idx", "unm_idx"):
            assert torch.equal(got[key], want[key]), (want["layer"], key)
    slots = [handle.state.class_slots[s.name] for s in handle.sites]
    assert slots == [m["token_position_out"] for m in ref["merges"]]
    assert handle.state.class_slot == ref["final_token_position"]
    check_block_outputs(outputs, ref["block_outputs"])
    handle.remove()


def test_rmeeto_tracks_sizes_and_sources_like_the_official_code(fixtures, model):
    _, fx = fixtures
    ref = fx["rmeeto"]
    handle = tokenred.apply(model, "rmeeto", r=4, compare=15, official=True)
    handle.reducer.trace_source = True
    with torch.no_grad():
        model(fx["input"])
    assert torch.equal(handle.state.size, ref["final_size"])
    assert torch.equal(handle.state.source.bool(), ref["source"])
    handle.remove()


def test_rmeeto_default_rules(fixtures, model):
    _, fx = fixtures
    x = fx["input"]
    # the compare rule on the real token count: 65 tokens, 5 merges -> 65 - 5*compare at the end
    with tokenred.apply(model, "rmeeto", r=2, compare=6) as h, torch.no_grad():
        model(x)
        counts = [h.state.tokens[s.name] for s in h.sites]
    assert counts == [63, 61, 59, 57, 65 - 5 * 6]
    # the class token goes to the middle of the patches; the official rescaling drifts from it
    with tokenred.apply(model, "rmeeto", r=9) as h, torch.no_grad():
        model(x)
        middle = [h.state.class_slots[s.name] for s in h.sites]
        lengths = [h.state.tokens[s.name] for s in h.sites]
    assert middle == [(n - 1) // 2 for n in lengths]
    with tokenred.apply(model, "rmeeto", r=9, official=True) as h, torch.no_grad():
        model(x)
        official = [h.state.class_slots[s.name] for s in h.sites]
    slot, expected = 32, []
    for before, after in zip([65] + lengths[:-1], lengths):
        slot = slot * after // before
        expected.append(slot)
    assert official == expected and official != middle


# -- ToP-ViM --------------------------------------------------------------------------------
def test_topvim_official_matches_the_official_code_run_per_image(fixtures, model):
    _, fx = fixtures
    ref = fx["topvim"]
    per_image = ref["per_image_batch1"]
    logits, handle, outputs = run_with_block_outputs(model, fx["input"], "topvim",
                                                     keep=ref["keep_ratio"], official=True)
    assert [s.block for s in handle.sites] == ref["prune_after_layers"]
    torch.testing.assert_close(logits, per_image["logits"], rtol=1e-4, atol=1e-4)
    assert [o[0].shape[1] for o in outputs] == ref["tokens_per_layer"]
    assert handle.state.class_slot == ref["final_token_position"]
    for got, want in zip(handle.reducer.last_prunes, per_image["prunes"], strict=True):
        # kept indices in the official sequence numbering (the class token at N // 2)
        n = got["score"].shape[1] + 1
        kept = got["kept"] - 1
        kept = kept + (kept >= n // 2).long()
        assert torch.equal(kept, want["kept_indices"]), want["after_layer"]
        c = n // 2
        official_score = torch.cat([want["score"][:, :c], want["score"][:, c + 1:]], dim=1)
        torch.testing.assert_close(got["score"], official_score, rtol=1e-4, atol=1e-3)
    # image 0 of the batch-2 official run agrees too (the batch quirk touches the others only)
    torch.testing.assert_close(logits[0], ref["logits"][0], rtol=1e-4, atol=1e-4)
    handle.remove()


def test_topvim_default_reads_the_score_in_token_order_and_is_per_image(fixtures, model):
    _, fx = fixtures
    x = fx["input"]
    outputs = {}
    for official in (False, True):
        with tokenred.apply(model, "topvim", keep=0.8, official=official,
                            where=[4, 9]) as h, torch.no_grad():
            outputs[official] = (model(x), [p["kept"].clone() for p in h.reducer.last_prunes])
    assert not torch.equal(outputs[False][1][0], outputs[True][1][0])
    # the unflipped score: the backward output of token j ranks token j
    mixer = model.layers[4].mixer
    with tokenred.apply(model, "topvim", keep=0.8, where=[4]) as h, torch.no_grad():
        model(x)
        score = mixer.backward_output.sum(1)                        # [B, N] sequence order
        patches = torch.cat([score[:, :32], score[:, 33:]], dim=1)
        want = patches.topk(52, dim=1).indices.sort(dim=1).values + 1
        assert torch.equal(h.reducer.last_prunes[0]["kept"], want)
    # per image: a batch gives each image what it gets alone
    with tokenred.apply(model, "topvim") as h, torch.no_grad():
        both = model(x)
        alone = torch.cat([model(x[:1]), model(x[1:])])
    torch.testing.assert_close(both, alone, rtol=1e-5, atol=1e-5)


def test_topvim_schedules_and_counts():
    from tokenred.methods.topvim import kept_patches, official_sites, scaled_sites

    assert official_sites(24) == [4, 9, 14] and official_sites(11) == [4, 9]
    assert scaled_sites(24) == [4, 9, 14] and scaled_sites(12) == [1, 4, 7]
    assert kept_patches(65, 0.8) == 52 and kept_patches(53, 0.8) == 42
    for n in range(3, 200):
        k = kept_patches(n, 0.7)
        assert k % 2 == 0 and k >= math.ceil((n - 1) * 0.7) - 1


def test_topvim_official_refuses_an_even_token_count():
    m = tokenred.create_backbone("vim_tiny", img_size=56, patch_size=8, stride=8, embed_dim=32,
                                 depth=6, num_classes=3).eval()   # 7x7 = 49 patches: N = 50
    with tokenred.apply(m, "topvim", official=True):
        with pytest.raises(SiteQuantityError, match="even token count"):
            with torch.no_grad():
                m(torch.randn(1, 3, 56, 56))


# -- the order-aware contract with the other methods ------------------------------------------
@pytest.mark.parametrize("method,params", [
    ("tome", {"r": 4}), ("random_drop", {}), ("pitome", {}), ("kmedoids", {}),
    ("dpc_knn", {}), ("rmeeto", {}), ("topvim", {})])
def test_sequence_methods_leave_tokens_in_order_with_the_class_token_in_the_middle(method, params):
    torch.manual_seed(0)
    m = tokenred.create_backbone("vim_tiny", img_size=64, patch_size=8, stride=8, embed_dim=32,
                                 depth=8, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = m(x)
        with tokenred.apply(m, method, **params) as h:
            y = m(x)
            pos = h.state.positions
            slot = h.state.class_slot
            assert h.state.tokens_out < 65
        after = m(x)
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    assert torch.equal(before, after)                     # remove() restores the forward
    assert (pos[:, slot] == -1).all()
    patches = torch.cat([pos[:, :slot], pos[:, slot + 1:]], dim=1)
    assert (patches >= 0).all() and (patches.diff(dim=1) > 0).all()
    assert slot == patches.shape[1] // 2


def test_none_on_vim_is_the_plain_forward_and_attention_methods_are_refused():
    m = tokenred.create_backbone("vim_tiny", img_size=32, patch_size=8, stride=8, embed_dim=32,
                                 depth=3, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    from tokenred.sites import adapter_for

    sites = adapter_for(m).sites()
    assert [s.name for s in sites] == ["layers.0", "layers.1"] and all(
        s.order_sensitive and s.num_prefix_tokens == 1 for s in sites)
    vit = tokenred.create_backbone("deit_tiny_patch16_224", img_size=32, depth=2)
    assert not any(s.order_sensitive for s in adapter_for(vit).sites())
    with torch.no_grad():
        plain = m(x)
        with tokenred.apply(m, "none"):
            assert torch.equal(m(x), plain)
    for method in ("evit", "ats"):
        with pytest.raises(SiteQuantityError, match="cls_attention"):
            tokenred.apply(m, method)


@pytest.mark.parametrize("method", ["rmeeto:r=3", "topvim", "tome:r=2"])
def test_visualize_draws_which_patches_each_vim_token_holds(method, tmp_path):
    from tokenred.visualize import token_groups, visualize

    from tokenred.reference import PBC_SAMPLE_DIR

    image = sorted(Path(PBC_SAMPLE_DIR).glob("*/*.jpg"))[0]
    groups = token_groups("vim_tiny", method, str(image), input_size=96)   # 6x6 patches
    assert groups.groups.shape == (6, 6) and groups.patch == 16
    held = groups.groups[groups.groups >= 0]
    assert len(set(held.tolist())) == groups.num_tokens < 36
    if method.startswith("topvim"):       # pruning: dropped patches, the rest their own token
        assert (groups.groups < 0).any() and len(held) == groups.num_tokens
    else:                                 # merging: every patch still held, some together
        assert (groups.groups >= 0).all()
    out = tmp_path / "vim.png"
    visualize("vim_tiny", method, str(image), str(out), input_size=96)
    assert out.stat().st_size > 0
