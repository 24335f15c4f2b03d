"""Record, in each PBC reference model's card, what the default run (`tokenred compare` with no
arguments) measures on the bundled 800-image test sample: top-1 and agreement of every default
method. The test suite checks the default run's rows against these numbers.

    python training/card_sample.py
"""
from __future__ import annotations

import fcntl
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tokenred  # noqa: E402
from tokenred import reference  # noqa: E402
from tokenred.presets import PRESETS  # noqa: E402


def main() -> int:
    preset = PRESETS["default"]
    names = [n for n in preset["backbones"] if n in reference.REFERENCE_MODELS]
    df = tokenred.compare(names, preset["methods"], pretrained=True,
                          data={n: reference.PBC_SAMPLE_DIR for n in names},
                          warmup=0, iters=1, rounds=1, eval_batch_size=64)
    with open(reference.CARDS_FILE + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cards = reference.load_cards()
        for name in names:
            rows = df[df["backbone"] == name]
            cards[name]["sample_eval"] = {
                "images": int(rows["eval_images"].iloc[0]),
                # random_drop draws per batch: its numbers hold for this evaluation batch size
                "eval_batch_size": 64,
                "methods": {(m + (":" + p if p else "")): {"top1": round(t, 4), "agreement": round(a, 4)}
                            for m, p, t, a in zip(rows["method"], rows["params"], rows["top1"],
                                                  rows["agreement"], strict=True)}}
            print(name, json.dumps(cards[name]["sample_eval"]))
        tmp = reference.CARDS_FILE + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(cards, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, reference.CARDS_FILE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
