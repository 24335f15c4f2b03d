import pickle

import pytest
import torch
from safetensors.torch import save_file

import tokenred
from tokenred.checkpoint import CheckpointError

KW = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5)


def _source_model(**overrides):
    torch.manual_seed(1)
    return tokenred.create_backbone("vit_tiny_patch16_224", **{**KW, **overrides})


def _same_weights(a, b):
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("container", ["raw", "model", "state_dict", "ddp"])
def test_torch_checkpoint_containers(tmp_path, container):
    src = _source_model()
    sd = src.state_dict()
    obj = {"raw": sd, "model": {"model": sd, "epoch": 3}, "state_dict": {"state_dict": sd},
           "ddp": {"module." + k: v for k, v in sd.items()}}[container]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = tokenred.create_backbone("vit_tiny_patch16_224", checkpoint=path, **KW)
    assert _same_weights(src, model)
    assert not model.training


def test_safetensors_and_timm_filter_resizes_pos_embed(tmp_path):
    src = _source_model(img_size=64)   # 64 patch tokens; the target has 16
    path = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"resampled to fit the model: pos_embed \[1, 65, 48\] "
                                              r"-> \[1, 17, 48\]"):
        tokenred.create_backbone("vit_tiny_patch16_224", checkpoint=path, **KW)
    model = tokenred.create_backbone("vit_tiny_patch16_224", checkpoint=path, allow_resample=True,
                                     **KW)
    assert model.pos_embed.shape == (1, 17, 48)
    assert torch.equal(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_mismatch_report_names_every_key(tmp_path):
    sd = _source_model().state_dict()
    sd.pop("norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["head.weight"] = torch.zeros(9, 48)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        tokenred.create_backbone("vit_tiny_patch16_224", checkpoint=path, **KW)
    text = str(info.value)
    assert "missing in checkpoint (1): norm.weight" in text
    assert "unexpected in checkpoint (1): extra.weight" in text
    assert "shape mismatch head.weight: model [5, 48] vs checkpoint [9, 48]" in text
    with pytest.warns(UserWarning, match="norm.weight"):
        tokenred.create_backbone("vit_tiny_patch16_224", checkpoint=path, strict=False, **KW)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        tokenred.create_backbone("vit_tiny_patch16_224", checkpoint=path, **KW)
    with pytest.raises(FileNotFoundError, match="not found"):
        tokenred.create_backbone("vit_tiny_patch16_224", checkpoint=tmp_path / "nope.pth", **KW)
