"""Published comparisons as one-command presets (``tokenred compare --preset NAME --data DIR``).

Each preset fixes backbones, methods and the measurement protocol of the paper it reproduces;
``published`` holds the paper's numbers for the columns they should be compared with. Flags given
on the command line override a preset's values.
"""
from __future__ import annotations

from typing import Any

from .reference import PBC_SAMPLE_DIR, REFERENCE_MODELS

_PBC_MODELS = [n for n, m in REFERENCE_MODELS.items() if m.dataset == "pbc64"]
_CIFAR_MODELS = [n for n, m in REFERENCE_MODELS.items() if m.dataset == "cifar10"]
#: every method at its default (sequence-only ones are "not run" gaps on the grid models)
_ALL_METHODS = ["none", "quartermap", "tome", "random_drop", "evit", "topk", "ats", "pitome",
                "kmedoids", "kmedoids_weighted", "dpc_knn"]

PRESETS: dict[str, dict[str, Any]] = {
    # what `tokenred compare` runs with no arguments: ImageNet-size speed rows (random weights,
    # synthetic input) and real-accuracy rows (the PBC reference models on the bundled sample)
    "default": {
        "doc": "random-init DeiT-S and VMamba-T at 224 px (speed, FLOPs) and the PBC reference "
               "models with their bundled weights on the bundled 800-image PBC test sample "
               "(real accuracy), CPU",
        "backbones": ["deit_small_patch16_224", "vmamba_tiny_s1l8", *_PBC_MODELS],
        "methods": ["none", "quartermap", "tome:r=13", "random_drop"],
        "pretrained": _PBC_MODELS, "data": {name: PBC_SAMPLE_DIR for name in _PBC_MODELS},
        "published": {},
    },
    "pbc64": {
        "doc": "every PBC reference model x every method at its default, bundled weights; --data "
               "the extracted PBC test split (default: the bundled 800-image test sample)",
        "backbones": _PBC_MODELS, "methods": _ALL_METHODS, "pretrained": True,
        "data": PBC_SAMPLE_DIR, "published": {},
    },
    "cifar10": {
        "doc": "every CIFAR-10 reference model x every method at its default, bundled weights; "
               "--data the extracted CIFAR-10 test split (required)",
        "backbones": _CIFAR_MODELS, "methods": _ALL_METHODS, "pretrained": True,
        "needs_data": True, "published": {},
    },
    "quartermap-paper": {
        "doc": "QuarterMap vs ToMe and random drop on VMamba-T/S/B (ImageNet-1k val, batch 128, "
               "fp32, GPU; VMamba's throughput protocol: 50 warm-up + 30 timed)",
        "backbones": ["vmamba_tiny_s1l8", "vmamba_small_s2l15", "vmamba_base_s2l15"],
        "methods": ["none", "quartermap", "tome", "random_drop"],
        "batch_size": 128, "dtype": "float32", "device": "cuda", "pretrained": True,
        "published": {
            # VMamba README (A100, batch 128, fp32): the unreduced rows
            "vmamba_tiny_s1l8 none": {"top1": 82.6, "gflops": 4.9, "images_per_s": 1686},
            "vmamba_small_s2l15 none": {"top1": 83.6, "gflops": 8.7, "images_per_s": 877},
            "vmamba_base_s2l15 none": {"top1": 83.9, "gflops": 15.4, "images_per_s": 646},
            # QuarterMap abstract: up to 1.11x speedup at < 0.9 pt top-1 loss (rows not public)
            "quartermap": {"speedup": "up to 1.11", "delta_top1": "> -0.9"},
        },
    },
    "tome-paper": {
        "doc": "ToMe r=13 off the shelf on timm ViT-S/16 and ViT-B/16 (AugReg) and DeiT-S "
               "(ImageNet-1k val, batch 256, fp32, GPU)",
        "backbones": ["vit_small_patch16_224.augreg_in21k_ft_in1k",
                      "vit_base_patch16_224.augreg_in21k_ft_in1k", "deit_small_patch16_224"],
        "methods": ["none", "tome:r=13"],
        "batch_size": 256, "dtype": "float32", "device": "cuda", "pretrained": True,
        "published": {
            # ToMe README, V100: off-the-shelf AugReg models
            "vit_small_patch16_224.augreg_in21k_ft_in1k": {"top1": (81.41, 79.30),
                                                           "images_per_s": (953, 1564)},
            "vit_base_patch16_224.augreg_in21k_ft_in1k": {"top1": (84.57, 82.60),
                                                          "images_per_s": (309, 511)},
            # ToMe README: DeiT-S *trained with* ToMe (79.8 -> 79.36, 1.67x); off-the-shelf
            # DeiT-S weights (what timm ships) are expected to lose more
            "deit_small_patch16_224": {"top1": (79.8, 79.36), "speedup": 1.67,
                                       "note": "ToMe-trained checkpoint, not timm's"},
        },
    },
    "vit-methods-deit-s": {
        "doc": "the training-free catalogue on timm's DeiT-S at the operating points their papers "
               "and READMEs report (ImageNet-1k val, batch 256, fp32, GPU); EViT/Top-K/K-Medoids/"
               "DPC-KNN at keep 0.7 at blocks 3/6/9, ATS from block 3, PiToMe 0.9, ToMe r=13",
        "backbones": ["deit_small_patch16_224"],
        "methods": ["none", "evit:keep=0.7", "topk:keep=0.7", "ats", "pitome:ratio=0.9",
                    "kmedoids:keep=0.7", "dpc_knn:keep=0.7", "tome:r=13"],
        "batch_size": 256, "dtype": "float32", "device": "cuda", "pretrained": True,
        "published": {
            "none": {"top1": 79.8, "gflops": 4.6, "source": "DeiT paper"},
            # youweiliang/evit README, Model Zoo: models *fine-tuned* with the reduction
            "evit:keep=0.7": {"top1": 79.5, "gflops": 3.0, "note": "fine-tuned EViT model, "
                                                                    "not off the shelf"},
            "topk:keep=0.7": {"top1": 79.4, "gflops": 3.0, "note": "fine-tuned (EViT README, "
                                                                    "without fusion)"},
            # ATS: paper Table 1 via the ATS repo's issues #1/#2; a user's off-the-shelf rerun
            "ats": {"gflops": 2.9, "top1_off_the_shelf_by_a_user": 79.13,
                    "gflops_measured_by_that_user": 3.4, "note": "training-free"},
            "pitome:ratio=0.9": {"note": "DeiT-S table values not public in the stored sources; "
                                         "the official DeiT evaluation runs ratios 0.9-0.975"},
            "kmedoids:keep=0.7": {"note": "published only after 30-epoch fine-tuning (Haurum et "
                                          "al. 2023): no off-the-shelf number"},
            "dpc_knn:keep=0.7": {"note": "as K-Medoids: fine-tuned only"},
            "tome:r=13": {"top1": 79.36, "speedup": 1.67, "note": "ToMe-trained DeiT-S; "
                                                                  "off-the-shelf loses more"},
        },
    },
}


def get_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    preset = PRESETS[name]
    from .registry import get_method, list_methods

    missing = []
    for spec in preset["methods"]:
        method = spec.partition(":")[0]
        try:
            get_method(method)
        except KeyError:
            missing.append(method)
    if missing:
        raise ValueError(f"preset {name!r} needs method(s) {missing}, which are not registered in "
                         f"this tokenred (available: {list_methods()})")
    return preset
