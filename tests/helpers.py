"""Small timm ViTs built quickly for tests."""
import timm
import torch


def tiny_vit(**overrides):
    kwargs = dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3, num_classes=7)
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()
    # timm zero-inits some tensors; give them values so every path carries information
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("cls_token", "pos_embed", "reg_token", "dist_token")) or "head" in name:
                p.add_(0.5 * torch.randn_like(p))
    return model
