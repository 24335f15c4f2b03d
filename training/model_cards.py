"""Print the reference models' cards (``tokenred/weights/cards.json``) as the README's table."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tokenred import reference  # noqa: E402


def recipe_text(card: dict) -> str:
    r = card["recipe"]
    text = (f"{card['epochs_run']} ep, AdamW lr {r['lr']:g}, wd {r['weight_decay']:g}, batch "
            f"{r['batch_size']}, cosine, ls {r['label_smoothing']:g}, seed {r['seed']}")
    if card.get("schedule_shortened"):
        text += " (budget-shortened)"
    stages = []
    init = card.get("init")
    while init:                     # earlier stages, latest first
        stages.insert(0, f"{init['epochs_run']} ep at lr {init['recipe']['lr']:g}")
        init = init.get("init")
    if stages:
        text = f"{', then '.join(stages)}, then {text} from them"
    return text


def main() -> int:
    cards = reference.load_cards()
    print("| model | family / shape | params | GMACs | input | recipe | train time | test top-1 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, spec in reference.REFERENCE_MODELS.items():
        card = cards.get(name)
        if card is None:
            print(f"| `{name}` | {spec.note} | – | – | – | not trained | – | – |")
            continue
        minutes = card.get("total_train_minutes", card["train_minutes"])
        print(f"| `{name}` | {spec.note} | {card['params'] / 1e6:.2f} M | {card['gmacs']:.3f} | "
              f"{spec.input_px}² ({spec.data.name}) | {recipe_text(card)} | {minutes:.0f} min, "
              f"{card['machine']} | **{card['test_top1']:.2f}%** of {card['test_images']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
