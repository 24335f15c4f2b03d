"""`torchrun --nproc_per_node=2 -m tokenred compare ... --data DIR` on CPU (gloo) gives exactly
the single-process evaluation numbers: every image evaluated once, counts summed."""
import subprocess
import sys

import numpy as np
import pandas as pd
from PIL import Image

ARGS = ["compare", "--backbones", "vit_tiny_patch16_224", "--methods", "none,tome:r=1",
        "--input-size", "32", "--batch-size", "3", "--warmup", "0", "--iters", "1", "--rounds", "1",
        "--threads", "1", "--no-progress"]


def _images(root):
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(7):   # 14 images: not a multiple of world size x batch size
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png")
    (root / "b" / "zz_broken.png").write_bytes(b"broken")
    return root


def test_torchrun_gloo_matches_single_process(tmp_path):
    data = _images(tmp_path / "data")
    single, multi = tmp_path / "single", tmp_path / "multi"
    run = dict(capture_output=True, text=True, timeout=600)
    one = subprocess.run([sys.executable, "-m", "tokenred", *ARGS, "--data", str(data),
                          "--out", str(single)], **run)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "tokenred", *ARGS, "--data", str(data),
                          "--out", str(multi)], **run)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = pd.read_csv(single / "results.csv"), pd.read_csv(multi / "results.csv")
    assert list(b["eval_images"]) == [14, 14] and list(b["eval_failed"]) == [1, 1]
    for column in ("eval_images", "eval_failed", "top1", "top5", "agreement", "delta_top1", "gflops"):
        assert a[column].tolist() == b[column].tolist(), column
    # KL is a float32 mean over images batched differently (3 per batch vs shards of 7):
    # the logits themselves differ by float32 rounding, so equal to rounding, not bit for bit
    np.testing.assert_allclose(a["kl"], b["kl"], rtol=1e-4, atol=1e-9)
    assert "zz_broken.png" in (multi / "results.md").read_text()
