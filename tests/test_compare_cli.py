import os
import subprocess
import sys

import pandas as pd
import pytest

import tokenred
from tokenred.cli import main

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3)


def test_compare_table():
    df = tokenred.compare(["vit_tiny_patch16_224"], ["tome:r=2", "random_drop:keep=0.5"],
                          input_size=32, batch_size=2, warmup=1, iters=3, rounds=3,
                          backbone_kwargs=TINY)
    assert list(df["method"]) == ["none", "tome", "random_drop"]   # baseline added first
    assert list(df["params"]) == ["", "r=2", "keep=0.5"]
    base = df.iloc[0]
    assert base["speedup"] == 1.0 and base["flop_reduction_pct"] == 0.0
    assert (df["gflops"].iloc[1:] < base["gflops"]).all()
    assert df["flop_reduction_pct"].iloc[1] == pytest.approx(100 * (1 - df["gflops"].iloc[1]
                                                                    / base["gflops"]))
    assert list(df["tokens_out"]) == [17, 9, 3]  # random_drop default: 3 of 4 blocks
    assert df["n_params"].nunique() == 1 and df["device"].iloc[0] == "cpu"
    for col in ("images_per_s", "latency_median_ms", "latency_iqr_ms"):
        assert (df[col] >= 0).all()


def test_compare_rejects_bad_specs_before_measuring():
    with pytest.raises(KeyError, match="did you mean tome"):
        tokenred.compare(["vit_tiny_patch16_224"], ["tomme"])
    with pytest.raises(tokenred.ParameterError, match="'r'"):
        tokenred.compare(["vit_tiny_patch16_224"], ["tome:r=-3"])


def test_cli_compare_writes_reports(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compare", "--backbones", "vit_tiny_patch16_224", "--methods",
                 "none,tome:r=[2,2],random_drop:r=4,where=[1]", "--input-size", "224",
                 "--batch-size", "1", "--warmup", "0", "--iters", "2", "--rounds", "1",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| tome | r=[2,2] |" in printed and "| none | – |" in printed
    assert "### vit_tiny_patch16_224" in printed
    df = pd.read_csv(out / "results.csv")
    assert list(df["method"]) == ["none", "tome", "random_drop"]
    assert (out / "results.md").read_text().startswith("### vit_tiny_patch16_224")
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]


@pytest.mark.parametrize("argv,message", [
    (["compare", "--methods", "tome:r=abc"], "parameter 'r' got 'abc'"),
    (["compare", "--backbones", "resnet18"], "no site adapter"),
    (["compare", "--device", "tpu"], "allowed are cpu, cuda"),
    (["compare", "--methods", "tomme"], "did you mean tome"),
])
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_cli_bad_numbers(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--batch-size", "0"])
    assert "--batch-size must be >= 1" in capsys.readouterr().err


def test_list_and_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "tokenred", "list"], capture_output=True,
                            text=True, check=True)
    assert "tome" in result.stdout and "prop_attn=True" in result.stdout
    assert "random_drop" in result.stdout and "VisionTransformer" in result.stdout


def test_cli_checkpoint_flag(tmp_path, capsys):
    import torch

    torch.manual_seed(5)
    src = tokenred.create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8,
                                   embed_dim=48, depth=2, num_heads=3)
    ckpt = tmp_path / "w.pth"
    torch.save({"model": src.state_dict()}, ckpt)
    df = tokenred.compare(["vit_tiny_patch16_224"], ["none"], input_size=32, batch_size=1,
                          warmup=0, iters=1, rounds=1, checkpoints={"vit_tiny_patch16_224": ckpt},
                          backbone_kwargs=dict(patch_size=8, embed_dim=48, depth=2, num_heads=3))
    assert df["n_params"].iloc[0] == sum(p.numel() for p in src.parameters())
    # a local checkpoint replaces the pretrained download (this machine is offline)
    df = tokenred.compare(["vit_tiny_patch16_224"], ["none"], input_size=32, batch_size=1,
                          warmup=0, iters=1, rounds=1, pretrained=True,
                          checkpoints={"vit_tiny_patch16_224": ckpt},
                          backbone_kwargs=dict(patch_size=8, embed_dim=48, depth=2, num_heads=3))
    assert len(df) == 1
    # a checkpoint that does not fit is a one-line error naming the keys
    code = main(["compare", "--backbones", "vit_tiny_patch16_224", "--methods", "none",
                 "--checkpoint", f"vit_tiny_patch16_224={ckpt}", "--iters", "1", "--warmup", "0",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert "shape mismatch" in capsys.readouterr().err
    assert main(["compare", "--checkpoint", "nonsense", "--no-progress"]) == 2
    assert "write BACKBONE=PATH" in capsys.readouterr().err
    with pytest.raises(tokenred.ParameterError, match="not among the backbones"):
        tokenred.compare(["vit_tiny_patch16_224"], ["none"], checkpoints={"other": ckpt})


def test_embedded_default_end_to_end(tmp_path, capsys):
    """`tokenred compare` with no arguments: DeiT-S and VMamba-T[s1l8] at 224 px with none /
    quartermap / tome:r=13 / random_drop (QuarterMap is grid-only and reported as not run on the
    ViTs), then the PBC reference models with their bundled weights on the bundled sample, CPU."""
    from tokenred.reference import load_cards

    assert main(["compare", "--out", str(tmp_path), "--no-progress"]) == 0
    df = pd.read_csv(tmp_path / "results.csv", keep_default_na=False, na_values=[""])
    speed = df[df["input_size"] == 224]
    assert list(speed["backbone"]) == ["deit_small_patch16_224"] * 3 + ["vmamba_tiny_s1l8"] * 4
    assert list(speed["method"]) == ["none", "tome", "random_drop",
                                     "none", "quartermap", "tome", "random_drop"]
    # ToMe on a grid pays for its similarity matmul: more MACs than the unreduced model
    assert speed["gflops"].round(2).tolist() == [4.61, 2.71, 2.99, 4.91, 4.82, 5.17, 4.82]
    assert speed["n_params"].tolist()[-1] == 30_249_064
    assert speed["tokens_out"].astype(str).tolist() == ["197", "41", "68", "3136/784/196/49"] + \
        ["784/784/196/49"] * 3
    assert speed["top1"].isna().all()             # random weights: no accuracy claimed
    assert (df["batch_size"] == 8).all() and (df["device"] == "cpu").all()
    assert df["speedup"].notna().all()
    # real accuracy: the PBC reference models on the bundled 800-image test sample, each row as
    # its model card recorded it (one image of slack for float rounding across machines)
    real = df[df["input_size"] == 64]
    cards = load_cards()
    assert list(dict.fromkeys(real["backbone"])) == ["deit_tiny_pbc64", "vmamba_tiny_pbc64",
                                                     "medmamba_tiny_pbc64"]
    for _, row in real.iterrows():
        spec = row["method"] + (":" + row["params"] if isinstance(row["params"], str) else "")
        recorded = cards[row["backbone"]]["sample_eval"]["methods"][spec]
        assert row["eval_images"] == 800
        assert abs(row["top1"] - recorded["top1"]) <= 100 / 800 + 1e-9, (row["backbone"], spec)
        assert row["top1"] > 50                  # trained weights: far above chance (12.5%)
        if row["method"] != "none":
            assert row["delta_top1_ci_low"] <= row["delta_top1"] <= row["delta_top1_ci_high"]
    out = capsys.readouterr().out
    assert "| tome | r=13 |" in out and "| quartermap | – |" in out
    assert "Not run: `quartermap` on deit_small_patch16_224" in out
    assert "95% paired-bootstrap interval" in out
    assert "Tokens out, on grid backbones" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "vmamba_tiny_pbc64.png").is_file()


@pytest.fixture
def seen_by_compare(monkeypatch):
    """Replace tokenred.compare by a stub recording what the CLI hands it (then failing)."""
    seen = {}

    def fake_compare(backbones, specs, **kwargs):
        seen.update(kwargs, backbones=backbones, methods=[s.text for s in specs])
        raise ValueError("stop here")

    monkeypatch.setattr(tokenred, "compare", fake_compare)
    return seen


def test_presets_fill_unset_flags(seen_by_compare, tmp_path):
    seen = seen_by_compare
    assert main(["compare", "--preset", "tome-paper", "--batch-size", "16", "--no-progress",
                 "--out", str(tmp_path / "x")]) == 2
    assert seen["backbones"][0] == "vit_small_patch16_224.augreg_in21k_ft_in1k"
    assert seen["methods"] == ["none", "tome:r=13"]
    assert seen["batch_size"] == 16 and seen["dtype"] == "float32" and seen["pretrained"] is True
    assert seen["device"] == "cuda"


def test_quartermap_preset_runs_its_methods(seen_by_compare, monkeypatch, tmp_path):
    from tokenred import presets

    seen = seen_by_compare
    assert main(["compare", "--preset", "quartermap-paper", "--no-progress",
                 "--out", str(tmp_path / "x")]) == 2
    assert seen["methods"] == ["none", "quartermap", "tome", "random_drop"]
    assert seen["backbones"][0] == "vmamba_tiny_s1l8" and seen["batch_size"] == 128
    assert seen["pretrained"] is True
    assert main(["compare", "--preset", "quartermap-paper", "--no-pretrained", "--no-progress",
                 "--out", str(tmp_path / "y")]) == 2
    assert seen["pretrained"] is False            # random init even under a preset
    # a preset naming a method this install lacks says which one
    monkeypatch.setitem(presets.PRESETS, "needs-more", {"doc": "", "backbones": ["x"],
                                                        "methods": ["none", "vmeanba"]})
    with pytest.raises(ValueError, match="needs method\\(s\\) \\['vmeanba'\\]"):
        presets.get_preset("needs-more")


def test_reference_presets(seen_by_compare, tmp_path, capsys):
    from tokenred.reference import PBC_SAMPLE_DIR

    seen = seen_by_compare
    assert main(["compare", "--preset", "pbc64", "--no-progress", "--out", str(tmp_path / "a")]) == 2
    assert seen["backbones"] == ["deit_tiny_pbc64", "vmamba_tiny_pbc64", "medmamba_tiny_pbc64"]
    assert seen["methods"][:4] == ["none", "quartermap", "tome", "random_drop"]
    assert {"evit", "topk", "ats", "pitome", "kmedoids", "dpc_knn"} <= set(seen["methods"])
    assert seen["pretrained"] is True and seen["data"] == PBC_SAMPLE_DIR
    assert seen["input_size"] is None                   # each model's own (64 px)
    # cifar10 has no bundled sample: --data is required, and named
    assert main(["compare", "--preset", "cifar10", "--no-progress", "--out", str(tmp_path / "b")]) == 2
    assert "needs --data DIR" in capsys.readouterr().err
    assert main(["compare", "--preset", "cifar10", "--data", str(tmp_path), "--no-progress",
                 "--out", str(tmp_path / "c")]) == 2
    assert seen["backbones"] == ["deit_tiny_cifar10", "vmamba_tiny_cifar10", "vim_tiny_cifar10"]
    assert seen["data"] == str(tmp_path)


def test_no_arguments_runs_the_default_preset(seen_by_compare, tmp_path):
    from tokenred.reference import PBC_SAMPLE_DIR

    seen = seen_by_compare
    assert main(["compare", "--no-progress", "--out", str(tmp_path / "a")]) == 2
    pbc = ["deit_tiny_pbc64", "vmamba_tiny_pbc64", "medmamba_tiny_pbc64"]
    assert seen["backbones"] == ["deit_small_patch16_224", "vmamba_tiny_s1l8"] + pbc
    assert seen["pretrained"] == pbc and seen["data"] == {n: PBC_SAMPLE_DIR for n in pbc}
    # naming backbones leaves the preset out entirely
    assert main(["compare", "--backbones", "deit_tiny_patch16_224", "--no-progress",
                 "--out", str(tmp_path / "b")]) == 2
    assert seen["backbones"] == ["deit_tiny_patch16_224"] and seen["data"] is None
    assert seen["pretrained"] is False
