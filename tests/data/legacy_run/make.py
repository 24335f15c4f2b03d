"""How ``tests/data/legacy_run`` was made: a run directory written by tokenred at commit 5ef22de,
whose store keys concatenate the weights and protocol JSON documents. ``test_measure`` proves
today's code still reports it and resumes it without measuring again. Not run by the tests."""
import os
import sys

import numpy as np
from PIL import Image

import tokenred

HERE = os.path.dirname(os.path.abspath(__file__))
MTIME_NS = 1_700_000_000 * 10**9   # the test restores it: git checkouts set their own mtimes
TINY = dict(patch_size=8, embed_dim=48, num_heads=3, depth=2, num_classes=3)
SETTINGS = dict(input_size=32, batch_size=2, warmup=1, iters=2, rounds=1, backbone_kwargs=TINY,
                eval_batch_size=4)


def make_images(root: str) -> None:
    rng = np.random.default_rng(0)
    for c in range(3):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
        for i in range(2):
            path = os.path.join(root, f"class{c}", f"{i}.png")
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
            os.utime(path, ns=(MTIME_NS, MTIME_NS))


if __name__ == "__main__":
    images, run = os.path.join(HERE, "images"), os.path.join(HERE, "run")
    make_images(images)
    tokenred.compare(["vit_tiny_patch16_224"], ["none", "tome:r=2", "quartermap", "random_drop"],
                     data=images, store=run, **SETTINGS)
    tokenred.compare(["vit_tiny_patch16_224"], ["none", "tome", "random_drop"], match="keep=0.7",
                     data=images, store=run, **SETTINGS)
    sys.exit(0)
