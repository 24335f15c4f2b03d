"""VMamba (v0, v2) and MedMamba: golden outputs of the official code, official configs, parameter
and FLOP counts of the released models, checkpoint loading, scan backends and sites."""
import pytest
import torch

import tokenred
from tokenred.apply import UnsupportedSiteKindError
from tokenred.backbones import medmamba, vmamba
from tokenred.checkpoint import CheckpointError, load_checkpoint

from conftest import shared_file

FIXTURES = {"vmamba_v2_mini": vmamba, "vmamba_v0_mini": vmamba, "medmamba_mini": medmamba}


def load_fixture(name):
    return torch.load(shared_file(f"fixtures/{name}.pt"), weights_only=True)


def build_from_fixture(name, **overrides):
    fx = load_fixture(name)
    model = FIXTURES[name].from_official_config(dict(fx["official_kwargs"]), **overrides)
    model.load_state_dict(fx["state_dict"], strict=True)
    return fx, model.eval()


@pytest.mark.parametrize("name", sorted(FIXTURES))
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_golden_logits_and_stage_outputs(name, backend):
    fx, model = build_from_fixture(name, scan_backend=backend)
    with torch.no_grad():
        logits = model(fx["input"])
        stages = model.forward_stages(fx["input"])
    torch.testing.assert_close(logits, fx["logits"], atol=1e-4, rtol=1e-4)
    assert len(stages) == len(fx["stage_outputs"])
    for ours, official in zip(stages, fx["stage_outputs"], strict=True):
        torch.testing.assert_close(ours, official, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["vmamba_v2_mini", "vmamba_v0_mini"])
def test_stem_and_block_outputs(name):
    fx, model = build_from_fixture(name)
    seen = []
    hooks = [model.patch_embed.register_forward_hook(lambda m, i, o: seen.append(o))]
    hooks += [layer.blocks.register_forward_hook(lambda m, i, o: seen.append(o))
              for layer in model.layers]
    with torch.no_grad():
        model(fx["input"])
    for h in hooks:
        h.remove()
    expected = [fx["patch_embed_output"]] + list(fx["stage_block_outputs"])
    for ours, official in zip(seen, expected, strict=True):
        torch.testing.assert_close(ours, official, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["vmamba_v2_mini", "vmamba_v0_mini"])
def test_official_yaml_config_dict_and_file(name, tmp_path):
    fx = load_fixture(name)
    path = tmp_path / "config.yaml"
    path.write_text(fx["yaml_text"])
    for cfg in (fx["yaml_config"], str(path)):
        model = vmamba.from_official_config(cfg).eval()
        model.load_state_dict(fx["state_dict"], strict=True)
        with torch.no_grad():
            torch.testing.assert_close(model(fx["input"]), fx["logits"], atol=1e-4, rtol=1e-4)


def test_yaml_without_structural_keys_is_refused():
    with pytest.raises(ValueError, match="MODEL.VSSM lacks .*DEPTHS"):
        vmamba.from_official_config({"MODEL": {"TYPE": "vssm", "VSSM": {"EMBED_DIM": 96}}})
    with pytest.raises(ValueError, match="unknown MODEL.VSSM key"):
        vmamba.from_official_config({"MODEL": {"VSSM": {"EMBED_DIMS": 96}}})


@pytest.mark.parametrize("bad, message", [
    (dict(forward_type="v4"), "forward_type='v4' is not implemented"),
    (dict(downsample_version="v2"), "downsample_version"),
    (dict(norm_layer="bn"), "norm_layer"),
    (dict(posembed=True), "posembed"),
    (dict(dims=[96, 192], depths=[2, 2, 2]), "3 depths but 2 dims"),
    (dict(scan_backend="cudnn"), "unknown selective-scan backend"),
])
def test_unsupported_configs_fail_clearly(bad, message):
    with pytest.raises(Exception, match=message):
        vmamba.from_official_config({**vmamba.CONFIGS["vmamba_tiny_s1l8"], **bad})


def test_unknown_official_kwargs_are_refused():
    with pytest.raises(ValueError, match="unknown VSSM argument"):
        vmamba.from_official_config({"depth": [2, 2, 2, 2]})
    with pytest.raises(ValueError, match="unknown MedMamba argument"):
        medmamba.from_official_config({"depth": [2, 2, 2, 2]})


PARAMS = {
    "vmamba_tiny_s1l8": 30_249_064, "vmamba_small_s1l20": 49_012_840,
    "vmamba_base_s1l20": 86_614_504, "vmamba_tiny_s2l5": 30_705_832,
    "vmamba_small_s2l15": 50_147_752, "vmamba_base_s2l15": 88_557_800,
    "vmamba_tiny_v0": 22_893_448, "vmamba_small_v0": 44_417_416, "vmamba_base_v0": 76_254_056,
    "medmamba_tiny": 14_457_222, "medmamba_small": 18_625_158, "medmamba_base": 39_864_838,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_released_models_have_the_official_parameter_count(name):
    with torch.device("meta"):
        model = tokenred.create_backbone(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


def test_medmamba_class_count_override():
    with torch.device("meta"):
        model = tokenred.create_backbone("medmamba_tiny", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == 15_221_608


# official counts (fvcore, selective scan as one op with 9·B·L·D·N + B·D·L), research/vmamba.md
GFLOPS = {"vmamba_tiny_s1l8": 4.905609984, "vmamba_tiny_s2l5": 4.85774208,
          "vmamba_tiny_v0": 5.62689504, "medmamba_tiny": 3.0015}
GFLOPS_LARGE = {"vmamba_small_s1l20": 8.612, "vmamba_base_s1l20": 15.221,
                "vmamba_small_s2l15": 8.716, "vmamba_base_s2l15": 15.359,
                "vmamba_small_v0": 11.232, "vmamba_base_v0": 18.020,
                "medmamba_small": 3.9719, "medmamba_base": 8.1698}


def _check_flops(name, expected):
    count = tokenred.count_flops(tokenred.create_backbone(name), 224)
    assert not count.uncounted
    assert abs(count.gflops / expected - 1) < 0.005, (name, count.gflops, expected)
    return count


@pytest.mark.parametrize("name", sorted(GFLOPS))
def test_flops_match_official_counts(name):
    count = _check_flops(name, GFLOPS[name])
    assert count.by_operator.get("selective_scan", 0) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GFLOPS_LARGE))
def test_flops_match_official_counts_small_and_base(name):
    _check_flops(name, GFLOPS_LARGE[name])


def test_flop_counter_agrees_with_fvcore_on_vmamba():
    """torch.utils.flop_counter counts 2 per multiply-add and no LayerNorm/pooling: our total minus
    those must be half its count."""
    from torch.utils.flop_counter import FlopCounterMode

    fx, model = build_from_fixture("vmamba_v2_mini")
    ours = tokenred.count_flops(model, (1, 3, 64, 64))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    not_in_flop_counter = sum(v for k, v in ours.by_operator.items()
                              if k in ("layer_norm", "adaptive_avg_pool2d"))
    assert counter.get_total_flops() == 2 * (ours.total - not_in_flop_counter)


def _old_v0_names(state):
    renames = [("patch_embed.0.", "patch_embed.proj."), ("patch_embed.2.", "patch_embed.norm."),
               (".norm.", ".ln_1."), (".op.", ".self_attention."),
               ("classifier.norm.", "norm."), ("classifier.head.", "head.")]
    out = {}
    for key, value in state.items():
        for new, old in renames:
            if key.startswith("layers.") and new in (".norm.", ".op.") and ".blocks." in key:
                key = key.replace(new, old, 1) if new in key and "downsample" not in key else key
            elif not new.startswith(".") and key.startswith(new):
                key = old + key[len(new):]
        out[key] = value
    return out


def test_official_checkpoint_container_with_config_and_old_names(tmp_path):
    from yacs.config import CfgNode

    fx = load_fixture("vmamba_v0_mini")
    old = _old_v0_names(fx["state_dict"])
    assert "layers.0.blocks.0.self_attention.A_logs" in old and "head.weight" in old
    # 1x1 conv weights as the official Linear2d may store them
    old["layers.0.blocks.0.self_attention.in_proj.weight"] = \
        old["layers.0.blocks.0.self_attention.in_proj.weight"][:, :, None, None]
    config = CfgNode({"MODEL": CfgNode({"NAME": "vssm_mini"})})
    path = tmp_path / "ckpt_epoch_1.pth"
    torch.save({"model": old, "optimizer": {"state": {}}, "epoch": 1, "max_accuracy": 1.0,
                "config": config}, path)
    model = vmamba.from_official_config(dict(fx["official_kwargs"])).eval()
    report = load_checkpoint(model, path)
    assert report.ok
    with torch.no_grad():
        torch.testing.assert_close(model(fx["input"]), fx["logits"], atol=1e-4, rtol=1e-4)


def test_checkpoint_mismatch_names_keys_and_shapes(tmp_path):
    fx = load_fixture("vmamba_v2_mini")
    state = dict(fx["state_dict"])
    del state["layers.0.blocks.0.op.Ds"]
    state["layers.0.blocks.0.op.A_logs"] = torch.zeros(32, 16)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    model = vmamba.from_official_config(dict(fx["official_kwargs"]))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    text = str(info.value)
    assert "layers.0.blocks.0.op.Ds" in text and "extra.weight" in text
    assert "layers.0.blocks.0.op.A_logs" in text and "[32, 16]" in text


def test_medmamba_raw_state_dict_through_create_backbone(tmp_path):
    fx = load_fixture("medmamba_mini")
    path = tmp_path / "medmamba.pth"
    torch.save(fx["state_dict"], path)
    model = medmamba.from_official_config(dict(fx["official_kwargs"]))
    load_checkpoint(model, path)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(fx["input"]), fx["logits"], atol=1e-4, rtol=1e-4)


def test_pretrained_without_network_says_what_to_do(monkeypatch, tmp_path):
    def offline(url, dst, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with torch.device("meta"):
        with pytest.raises(CheckpointError, match="vssm1_tiny_0230s_ckpt_epoch_264.pth.*checkpoint=PATH"):
            tokenred.create_backbone("vmamba_tiny_s1l8", pretrained=True)
        with pytest.raises(CheckpointError, match="Baidu"):
            tokenred.create_backbone("medmamba_tiny", pretrained=True)


def test_scan_backend_per_model():
    model = tokenred.create_backbone("vmamba_tiny_s1l8", scan_backend="reference", depths=[1, 1, 1, 1])
    mixers = [m for m in model.modules() if isinstance(m, vmamba.SS2D)]
    assert mixers and all(m.scan_backend == "reference" for m in mixers)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model.set_scan_backend("torch")
        torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["vmamba_tiny_s1l8", "vmamba_tiny_v0", "medmamba_tiny"])
def test_odd_input_sizes_run(name):
    model = tokenred.create_backbone(name, depths=[1, 1, 1, 1])
    with torch.no_grad():
        out = model(torch.randn(1, 3, 100, 84))
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()


def test_grid_sites_none_is_exact_and_sequence_methods_are_refused():
    fx, model = build_from_fixture("vmamba_v2_mini")
    with torch.no_grad():
        plain = model(fx["input"])
        with tokenred.apply(model, "none") as handle:
            assert [s.name for s in handle.sites] == ["layers.0.blocks.0", "layers.1.blocks.0",
                                                      "layers.2.blocks.0", "layers.2.blocks.1",
                                                      "layers.3.blocks.0"]
            assert all(s.kind == "grid" for s in handle.sites)
            assert torch.equal(model(fx["input"]), plain)
            assert handle.state.tokens["layers.0.blocks.0"] == 16 * 16
        assert all(m.grid_hook is None for m in model.modules() if isinstance(m, vmamba.SS2D))
        with tokenred.apply(model, "none", where="stage:2") as handle:
            assert [s.block for s in handle.sites] == [2, 3]

    class SequenceOnly(tokenred.Reducer):
        name = "sequence_only"
        kinds = frozenset({"sequence"})

    with pytest.raises(UnsupportedSiteKindError, match="'sequence_only' serves \\['sequence'\\]"):
        tokenred.apply(model, SequenceOnly())


def test_medmamba_sites():
    fx, model = build_from_fixture("medmamba_mini")
    with tokenred.apply(model, "none") as handle, torch.no_grad():
        assert [s.name for s in handle.sites][0] == "layers.0.blocks.0"
        torch.testing.assert_close(model(fx["input"]), fx["logits"], atol=1e-4, rtol=1e-4)


def test_state_dict_is_untouched_by_apply():
    model = tokenred.create_backbone("vmamba_tiny_s1l8", depths=[1, 1, 1, 1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with tokenred.apply(model, "none"):
        assert list(model.state_dict()) == list(before)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_golden_logits_on_cuda(name):
    fx, model = build_from_fixture(name, scan_backend="torch")
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False      # compare in full fp32
    try:
        with torch.no_grad():
            logits = model.cuda()(fx["input"].cuda()).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    torch.testing.assert_close(logits, fx["logits"], atol=1e-4, rtol=1e-4)
