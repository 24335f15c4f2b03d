"""Evaluation on image folders: ImageFolder and unlabeled layouts, top-1/top-5, agreement and KL
against the unreduced model, undecodable images, and the compare / CLI columns."""
import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import tokenred
from tokenred.cli import main
from tokenred.evaluate import DataError, evaluate, eval_transform, scan_folder
from tokenred.report import markdown_table

TINY = dict(patch_size=8, embed_dim=48, num_heads=3, depth=2, num_classes=3)


def write_images(folder, count, seed, size=(40, 36)):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:02d}.png")


@pytest.fixture
def labeled(tmp_path):
    root = tmp_path / "val"
    for k, name in enumerate(["cat", "dog", "eel"]):
        write_images(root / name, 4, seed=k)
    (root / "dog" / "broken.jpg").write_bytes(b"not an image at all")
    (root / "cat" / "notes.txt").write_text("ignored: not an image")
    return root


def tiny_model():
    torch.manual_seed(0)
    return tokenred.create_backbone("vit_tiny_patch16_224", img_size=32, **TINY)


def test_scan_folder_layouts(labeled, tmp_path):
    found = scan_folder(labeled)
    assert found.classes == ["cat", "dog", "eel"] and found.labeled
    assert len(found.paths) == 13 and found.labels.count(1) == 5
    flat = tmp_path / "flat"
    write_images(flat, 3, seed=9)
    assert not scan_folder(flat).labeled and len(scan_folder(flat).paths) == 3
    with pytest.raises(DataError, match="no image files"):
        scan_folder(_empty(tmp_path))
    with pytest.raises(DataError, match="not found"):
        scan_folder(tmp_path / "missing")
    write_images(labeled, 1, seed=3)
    with pytest.raises(DataError, match="both class folders"):
        scan_folder(labeled)


def _empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_metrics_match_a_manual_computation(labeled):
    model = tiny_model()
    reduced = copy.deepcopy(model)
    tokenred.apply(reduced, "tome", r=4)
    images = scan_folder(labeled)
    result = evaluate({"none": model, "tome": reduced}, "none", images, 32, 4,
                      torch.device("cpu"))
    assert result.n_images == 12 and len(result.failed) == 1
    assert result.failed[0][0].endswith("broken.jpg")

    transform, _ = eval_transform(model, 32)
    xs, ys = [], []
    for path, label in zip(images.paths, images.labels, strict=True):
        if path.endswith("broken.jpg"):
            continue
        xs.append(transform(Image.open(path).convert("RGB")))
        ys.append(label)
    x, y = torch.stack(xs), torch.tensor(ys)
    with torch.no_grad():
        p_ref = model(x).log_softmax(-1)
        p_red = reduced(x).log_softmax(-1)
    none, tome = result.counts["none"].metrics(True), result.counts["tome"].metrics(True)
    assert none["agreement"] == 100.0 and none["kl"] == pytest.approx(0.0, abs=1e-7)
    assert none["top1"] == pytest.approx(100.0 * (p_ref.argmax(-1) == y).float().mean().item())
    assert none["top5"] == 100.0                       # 3 classes: top-5 covers them all
    assert tome["top1"] == pytest.approx(100.0 * (p_red.argmax(-1) == y).float().mean().item())
    assert tome["agreement"] == pytest.approx(
        100.0 * (p_red.argmax(-1) == p_ref.argmax(-1)).float().mean().item())
    kl = (p_ref.exp() * (p_ref - p_red)).sum(-1).mean().item()
    assert tome["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-7) and tome["kl"] > 0


def test_unlabeled_folder_gives_fidelity_only(tmp_path):
    flat = tmp_path / "flat"
    write_images(flat, 5, seed=4)
    model = tiny_model()
    result = evaluate({"none": model}, "none", scan_folder(flat).head(3), 32, 2, torch.device("cpu"))
    m = result.counts["none"].metrics(result.labeled)
    assert result.n_images == 3 and m["agreement"] == 100.0 and math.isnan(m["top1"])


def test_no_readable_image_is_an_error(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"xx")
    with pytest.raises(DataError, match="no readable image .*a.jpg"):
        tokenred.compare(["vit_tiny_patch16_224"], ["none"], input_size=32, batch_size=2,
                         warmup=0, iters=1, rounds=1, backbone_kwargs=TINY, data=str(bad))


def test_too_many_classes_for_the_model(labeled):
    model = tokenred.create_backbone("vit_tiny_patch16_224", img_size=32,
                                     **{**TINY, "num_classes": 2})
    with pytest.raises(DataError, match="3 classes but the model predicts 2"):
        evaluate({"none": model}, "none", scan_folder(labeled), 32, 4, torch.device("cpu"))


def test_vmamba_eval_transform_is_the_official_protocol():
    with torch.device("meta"):
        model = tokenred.create_backbone("vmamba_tiny_s1l8")
    transform, config = eval_transform(model, 224)
    assert config["interpolation"] == "bicubic" and config["crop_pct"] == pytest.approx(0.875)
    out = transform(Image.new("RGB", (500, 300)))
    assert out.shape == (3, 224, 224)
    names = [type(t).__name__ for t in transform.transforms]
    assert names[:2] == ["Resize", "CenterCrop"] and transform.transforms[0].size == 256


def test_cli_data_flags(labeled, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compare", "--backbones", "vit_tiny_patch16_224", "--methods", "none,tome:r=1",
                 "--input-size", "32", "--batch-size", "4", "--warmup", "0", "--iters", "1",
                 "--rounds", "1", "--data", str(labeled), "--limit", "9", "--crop-pct", "1.0",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    df = pd.read_csv(out / "results.csv")
    # the first 9 files in sorted order: 4 cats, then dog/broken.jpg (skipped) and 4 dogs
    assert list(df["eval_images"]) == [8, 8] and list(df["eval_failed"]) == [1, 1]
    assert df["top1"].notna().all()
    assert "agreement %" in capsys.readouterr().out
    assert main(["compare", "--data", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "data folder not found" in capsys.readouterr().err


def test_compare_adds_accuracy_columns(labeled):
    df = tokenred.compare(["vit_tiny_patch16_224"], ["none", "tome:r=4"], input_size=32,
                          batch_size=4, warmup=0, iters=1, rounds=1, backbone_kwargs=TINY,
                          data=str(labeled), limit=4)
    # class-balanced: cat/img_00, dog/broken.jpg (sorted first, undecodable), eel/img_00, cat/img_01
    assert list(df["eval_images"]) == [3, 3] and list(df["eval_failed"]) == [1, 1]
    assert df["agreement"].iloc[0] == 100.0 and df["delta_top1"].iloc[0] == 0.0
    assert df["delta_top1"].iloc[1] == pytest.approx(df["top1"].iloc[1] - df["top1"].iloc[0])
    table = markdown_table(df)
    assert "top-1 %" in table and "agreement %" in table and "Evaluated on 3 images" in table
    full = tokenred.compare(["vit_tiny_patch16_224"], ["none"], input_size=32, batch_size=4,
                            warmup=0, iters=1, rounds=1, backbone_kwargs=TINY, data=str(labeled))
    assert full["eval_failed"].iloc[0] == 1
    assert "broken.jpg" in markdown_table(full)
    assert isinstance(full, pd.DataFrame)
