"""Train one of tokenred's reference models (``tokenred.reference.REFERENCE_MODELS``) on its real
data set, write its bundled weights (fp16 safetensors) and its model-card entry.

    python training/train_reference.py --model deit_tiny_pbc64 --data /data/pbc64 \
        --epochs 8 --threads 1 --time-budget 1500

``--data`` is a folder holding ``train/`` and ``test/`` ImageFolder trees (``val/`` is used for
progress reports when present), as ``../shared/data``'s tarballs extract. Images are decoded once
with the model's own evaluation resize (``--cache`` keeps the uint8 arrays), so training and
evaluation see the same pixels; augmentation runs on batches of uint8 tensors.

Recipe (all of it in the card): AdamW (timm's optimizer factory, no weight decay on norms/biases),
cosine schedule with linear warm-up (timm's scheduler, per step), label smoothing, random crop with
reflect padding and horizontal flip (PBC: also vertical flips and 90-degree rotations — blood
cells have no orientation), seeded. ``--time-budget``: when the epochs measured so far say the
run would pass it, the remaining schedule is shortened (the cosine is re-laid over the epochs
that fit, so the learning rate still anneals) and the card records it. ``--init FILE`` starts
from earlier weights (a second, low-learning-rate stage); the card then keeps the first stage's
recipe and history under ``init``.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tokenred  # noqa: E402
from tokenred import reference  # noqa: E402
from tokenred.backbone import runs_selective_scan  # noqa: E402
from tokenred.evaluate import eval_transform, scan_folder  # noqa: E402

#: test images whose predictions the card records (the tests re-check them offline)
RECORDED = 16


def decode_split(folder: str, model, input_px: int, classes: tuple, cache: str | None):
    """uint8 [N, H, W, 3] images (the model's eval resize/crop, no normalisation) and labels."""
    key = None
    if cache:
        os.makedirs(cache, exist_ok=True)
        key = os.path.join(cache, folder.strip("/").replace("/", "_") + f"_{input_px}.npz")
        if os.path.isfile(key):
            z = np.load(key)
            return torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
    from tokenred.images import open_rgb

    images = scan_folder(folder)
    if tuple(images.classes) != tuple(classes):
        raise SystemExit(f"{folder}: classes {images.classes} differ from the model's {classes}")
    transform, _ = eval_transform(model, input_px)
    geometric = [t for t in transform.transforms if type(t).__name__ in ("Resize", "CenterCrop")]
    xs = np.empty((len(images.paths), input_px, input_px, 3), dtype=np.uint8)
    for i, path in enumerate(images.paths):
        img = open_rgb(path)        # decoded the way evaluation decodes it
        for t in geometric:
            img = t(img)
        xs[i] = np.asarray(img)
    ys = np.asarray(images.labels, dtype=np.int64)
    if key:
        np.savez(key, x=xs, y=ys)
    return torch.from_numpy(xs), torch.from_numpy(ys)


def normalise(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    x = x_uint8.permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def augment(x: torch.Tensor, gen: torch.Generator, pad: int, rotate: bool) -> torch.Tensor:
    """Per-image random crop (reflect padding), horizontal flip; with ``rotate`` also vertical
    flips and 90-degree rotations. x: float [B, C, H, W]."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    if rotate:
        vflip = torch.rand(b, generator=gen) < 0.5
        out[vflip] = out[vflip].flip(-2)
        quarter = torch.rand(b, generator=gen) < 0.5
        out[quarter] = out[quarter].transpose(-1, -2)
    return out.contiguous()


@torch.no_grad()
def predict(model, x_uint8, mean, std, batch: int = 256) -> torch.Tensor:
    model.eval()
    out = [model(normalise(x_uint8[i:i + batch], mean, std)).argmax(-1)
           for i in range(0, len(x_uint8), batch)]
    return torch.cat(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=sorted(reference.REFERENCE_MODELS))
    p.add_argument("--data", required=True, help="folder with train/ and test/ (and val/)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=0.3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--pad", type=int, default=None, help="crop padding (default input/8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--time-budget", type=float, default=None, help="seconds; stop early past it")
    p.add_argument("--cache", default=os.path.join(ROOT, ".cache", "arrays"))
    p.add_argument("--out", default=reference.WEIGHTS_DIR)
    p.add_argument("--stats", action="store_true", help="print the training split's mean/std")
    p.add_argument("--init", default=None, help="start from these weights (safetensors)")
    p.add_argument("--scan-backend", default=None,
                   help="selective-scan backend of SSM models (cpp: the compiled CPU kernel)")
    args = p.parse_args(argv)

    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    spec = reference.REFERENCE_MODELS[args.model]
    kwargs = {"drop_path_rate": args.drop_path}
    model = reference.build(spec, **kwargs)
    if args.scan_backend is not None:
        if not runs_selective_scan(model):
            p.error(f"--scan-backend: {spec.name} has no selective scan")
        model.set_scan_backend(args.scan_backend)
    init_card = None
    if args.init:
        from tokenred.checkpoint import load_checkpoint

        load_checkpoint(model, args.init)
        cards_file = os.path.join(args.out, "cards.json")
        if os.path.isfile(cards_file):
            with open(cards_file) as fh:
                init_card = json.load(fh).get(spec.name)
    px, classes, mean, std = spec.input_px, spec.data.classes, spec.data.mean, spec.data.std
    t0 = time.time()
    xtr, ytr = decode_split(os.path.join(args.data, "train"), model, px, classes, args.cache)
    xte, yte = decode_split(os.path.join(args.data, "test"), model, px, classes, args.cache)
    val_dir = os.path.join(args.data, "val")
    xva, yva = (decode_split(val_dir, model, px, classes, args.cache) if os.path.isdir(val_dir)
                else (xte[:0], yte[:0]))
    print(f"{spec.name}: decoded {len(xtr)} train / {len(xva)} val / {len(xte)} test images in "
          f"{time.time() - t0:.0f} s", flush=True)
    if args.stats:
        f = xtr.float().div(255)
        print("mean", f.mean((0, 1, 2)).tolist(), "std", f.std((0, 1, 2)).tolist())
        return 0

    opt = create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(xtr) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    sched = CosineLRScheduler(opt, t_initial=total, warmup_t=warmup, warmup_lr_init=args.lr / 100,
                              lr_min=args.lr / 100, t_in_epochs=False)
    gen = torch.Generator().manual_seed(args.seed)
    pad = args.pad if args.pad is not None else px // 8
    rotate = spec.dataset == "pbc64"
    history, step, stopped_early = [], 0, False
    epochs, step_offset = args.epochs, 0     # the schedule's length and where it started
    start = time.time()
    for epoch in range(args.epochs):
        if epoch >= epochs:
            break
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        running, seen = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"{spec.name} epoch {epoch + 1}/{epochs}",
                   mininterval=30, file=sys.stdout)
        for i in bar:
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = augment(normalise(xtr[idx], mean, std), gen, pad, rotate)
            loss = F.cross_entropy(model(x), ytr[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step - step_offset)
            running += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{running / seen:.3f}", lr=f"{opt.param_groups[0]['lr']:.2e}",
                            refresh=False)
        elapsed = time.time() - start
        val_acc = (float((predict(model, xva, mean, std) == yva).float().mean()) * 100
                   if len(xva) else float("nan"))
        history.append({"epoch": epoch + 1, "train_loss": running / max(seen, 1),
                        "val_top1": val_acc, "elapsed_s": round(elapsed)})
        print(json.dumps(history[-1]), flush=True)
        per_epoch = elapsed / (epoch + 1)
        fit = epoch + 1 + int(max(0.0, args.time_budget - elapsed) // per_epoch) \
            if args.time_budget else epochs
        if fit < epochs:
            # re-lay the cosine over the epochs that fit, from the current step on
            stopped_early, epochs = True, max(fit, epoch + 2)
            sched = CosineLRScheduler(opt, t_initial=steps_per_epoch * (epochs - epoch - 1),
                                      warmup_t=0, lr_min=args.lr / 100, t_in_epochs=False)
            sched.base_values = [g["lr"] for g in opt.param_groups]
            step_offset = step
            print(f"time budget {args.time_budget:.0f} s: {epochs} epochs fit; the schedule "
                  f"anneals over the rest", flush=True)

    train_s = time.time() - start
    pred = predict(model, xte, mean, std)
    top1 = float((pred == yte).float().mean()) * 100
    print(f"{spec.name}: test top-1 {top1:.2f}% on {len(xte)} images after {train_s / 60:.1f} min",
          flush=True)
    save(model, spec, args, top1, pred, len(xte), history, train_s, stopped_early, kwargs,
         init_card)
    return 0


def save(model, spec, args, top1, pred, n_test, history, train_s, stopped_early, kwargs,
         init_card=None) -> None:
    from safetensors.torch import save_file

    os.makedirs(args.out, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    path = os.path.join(args.out, f"{spec.name}.safetensors")
    tmp = path + ".tmp"
    save_file(state, tmp, metadata={"tokenred_reference": spec.name})
    os.replace(tmp, path)
    # the card: what a user needs to trust (and reproduce) the file
    model.eval()
    half = reference.build(spec)
    half.load_state_dict({k: v.float() for k, v in state.items()})
    xte, yte = decode_split(os.path.join(args.data, "test"), half, spec.input_px,
                            spec.data.classes, args.cache)
    pred16 = predict(half, xte, spec.data.mean, spec.data.std)
    card = {
        "name": spec.name, "base": spec.base, "arch": spec.arch, "dataset": spec.dataset,
        "note": spec.note, "input_px": spec.input_px,
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs": round(tokenred.count_flops(half, spec.input_px).total / 1e9, 4),
        "test_images": n_test,
        "test_top1": round(float((pred16 == yte).float().mean()) * 100, 2),
        "test_top1_fp32_weights": round(top1, 2),
        "recorded_predictions": pred16[:RECORDED].tolist(),
        "recipe": {k: v for k, v in vars(args).items() if k not in ("out", "cache", "data")},
        "build_kwargs": kwargs, "epochs_run": len(history), "schedule_shortened": stopped_early,
        "history": history, "train_minutes": round(train_s / 60, 1),
        "total_train_minutes": round(train_s / 60 + (init_card or {}).get("total_train_minutes",
                                     (init_card or {}).get("train_minutes", 0.0)), 1),
        "init": None if init_card is None else {
            k: init_card.get(k) for k in ("recipe", "history", "epochs_run", "train_minutes",
                                          "test_top1", "machine", "init")},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{args.threads} thread(s); torch {torch.__version__}",
        "weights_bytes": os.path.getsize(path),
    }
    cards_file = os.path.join(args.out, "cards.json")
    with open(cards_file + ".lock", "w") as lock:   # trainings may finish at the same time
        fcntl.flock(lock, fcntl.LOCK_EX)
        cards = {}
        if os.path.isfile(cards_file):
            with open(cards_file) as fh:
                cards = json.load(fh)
        cards[spec.name] = card
        tmp = cards_file + f".{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(cards, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, cards_file)
    print(f"wrote {path} ({card['weights_bytes'] / 1e6:.1f} MB) and its card", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
