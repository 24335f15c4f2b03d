"""Reference models: small official-family backbones trained here on real images (PBC blood cells,
CIFAR-10), shipped with the package, so that accuracy under token reduction is measured on real
data out of the box.

Each entry names a registered base backbone and the arguments that shrink it to 64-px inputs
(the family's own code, only fewer/narrower blocks), the data it was trained on and the data
config its evaluation uses. ``create_backbone(name, pretrained=True)`` loads the bundled
safetensors file (fp16 on disk, float32 in memory) offline; the recipe that produced each file is
``training/train_reference.py`` and its model card is ``tokenred/weights/cards.json``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from .checkpoint import CheckpointError, load_checkpoint
from .registry import get_backbone, register_backbone

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
CARDS_FILE = os.path.join(WEIGHTS_DIR, "cards.json")
#: the evaluation sample of PBC test images bundled with the package (CC BY 4.0, see its README)
PBC_SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "data", "pbc64_sample")

PBC_CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
               "neutrophil", "platelet")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: tuple[str, ...]
    source_px: int              # the images' own size (CIFAR-10: 32, upsampled to the input size)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    where: str                  # where users get it


#: per-channel mean/std of each training split (after the resize to 64 px), computed by
#: ``training/train_reference.py --stats``
DATASETS = {
    "pbc64": Dataset("pbc64", PBC_CLASSES, 64, (0.7956, 0.6596, 0.6963), (0.2257, 0.2581, 0.0962),
                     "PBC (Acevedo et al., Data in Brief 2020, CC BY 4.0), 64-px BloodMNIST-style "
                     "crops; train/val/test split of tokenred's shared data"),
    "cifar10": Dataset("cifar10", CIFAR10_CLASSES, 32, (0.4913, 0.4821, 0.4466),
                       (0.2436, 0.2411, 0.2590),
                       "CIFAR-10 (Krizhevsky 2009): torchvision.datasets.CIFAR10 or the original "
                       "site, as an ImageFolder tree"),
}


@dataclass(frozen=True)
class ReferenceModel:
    name: str
    base: str                               # registered backbone (or timm name) it is built from
    dataset: str
    arch: dict = field(default_factory=dict)  # arguments of the base factory
    input_px: int = 64
    note: str = ""

    @property
    def data(self) -> Dataset:
        return DATASETS[self.dataset]

    @property
    def weights_file(self) -> str:
        return os.path.join(WEIGHTS_DIR, f"{self.name}.safetensors")

    def data_config(self) -> dict:
        """timm's data-config vocabulary, as ``--data`` evaluation reads it: resize the short side
        to the input size (bicubic; CIFAR-10's 32 px are upsampled), no crop, the data's mean/std."""
        return {"input_size": (3, self.input_px, self.input_px), "interpolation": "bicubic",
                "crop_pct": 1.0, "crop_mode": "center", "mean": self.data.mean,
                "std": self.data.std, "num_classes": len(self.data.classes)}


_VIT = dict(img_size=64, patch_size=8, embed_dim=192, num_heads=3, depth=6)
_VMAMBA = dict(dims=48, depths=[2, 2, 4, 2])
_MEDMAMBA = dict(dims=[32, 64, 128, 256], depths=[1, 1, 2, 1])
_VIM = dict(img_size=64, patch_size=8, stride=8, embed_dim=192, depth=6)

REFERENCE_MODELS: dict[str, ReferenceModel] = {m.name: m for m in [
    ReferenceModel("deit_tiny_pbc64", "deit_tiny_patch16_224", "pbc64", dict(_VIT),
                   note="DeiT-Ti width/heads, 6 of 12 blocks, patch 8: 8x8 = 64 patches + class token"),
    ReferenceModel("deit_tiny_cifar10", "deit_tiny_patch16_224", "cifar10", dict(_VIT),
                   note="DeiT-Ti width/heads, 6 of 12 blocks, patch 8 on CIFAR-10 upsampled to 64 px"),
    ReferenceModel("vmamba_tiny_pbc64", "vmamba_tiny_s1l8", "pbc64", dict(_VMAMBA),
                   note="VMamba-T[s1l8] v2 blocks (d_state 1), half width, depths 2-2-4-2: "
                        "16x16 stage-0 map"),
    ReferenceModel("vmamba_tiny_cifar10", "vmamba_tiny_s1l8", "cifar10", dict(_VMAMBA),
                   note="VMamba-T[s1l8] v2 blocks, half width, depths 2-2-4-2, CIFAR-10 at 64 px"),
    ReferenceModel("vim_tiny_cifar10", "vim_tiny", "cifar10", dict(_VIM),
                   note="Vim-Ti width (bimamba v2, d_state 16, middle class token), 6 of 24 "
                        "blocks, patch 8: 8x8 = 64 patches + class token, CIFAR-10 at 64 px"),
    ReferenceModel("medmamba_tiny_pbc64", "medmamba_tiny", "pbc64", dict(_MEDMAMBA),
                   note="MedMamba-T blocks (SS-Conv-SSM, d_state 16), a third of the width, depths 1-1-2-1"),
]}


def get_reference(name: str) -> Optional[ReferenceModel]:
    return REFERENCE_MODELS.get(name)


def build(spec: ReferenceModel, **overrides: Any) -> nn.Module:
    """The architecture of ``spec`` with random weights and its data config attached."""
    entry = get_backbone(spec.base)
    kwargs = {**spec.arch, "num_classes": len(spec.data.classes), **overrides}
    if entry is not None:
        model = entry.factory(pretrained=False, **kwargs)
    else:
        import timm

        model = timm.create_model(spec.base, pretrained=False, **kwargs)
    model.pretrained_cfg = {**dict(getattr(model, "pretrained_cfg", None) or {}),
                            **spec.data_config(), "tokenred_reference": spec.name}
    return model


def load_cards() -> dict[str, dict]:
    if not os.path.isfile(CARDS_FILE):
        return {}
    with open(CARDS_FILE) as fh:
        return json.load(fh)


def _make_factory(spec: ReferenceModel):
    def factory(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        model = build(spec, **kwargs)
        if pretrained:
            if not os.path.isfile(spec.weights_file):
                raise CheckpointError(f"{spec.name}: bundled weights {spec.weights_file} are "
                                      f"missing; re-run training/train_reference.py --model "
                                      f"{spec.name} or reinstall tokenred")
            load_checkpoint(model, spec.weights_file)
        return model

    factory.__name__ = spec.name
    factory.__doc__ = f"reference model trained on {spec.dataset}: {spec.note}"
    return factory


def register_reference_models() -> None:
    for spec in REFERENCE_MODELS.values():
        if get_backbone(spec.name) is None:
            register_backbone(spec.name, family=f"reference ({spec.dataset})",
                              doc=_make_factory(spec).__doc__)(_make_factory(spec))
