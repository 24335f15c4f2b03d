"""timm Vision Transformers as tokenred backbones.

Every block of a ``timm.models.vision_transformer.VisionTransformer`` is a ``sequence`` site. At a
site the block runs attention, hands the tokens to the reducer, then runs the MLP on what is left
(ToMe's placement: "merge between attention and MLP"). Blocks after the first reduction also add
log(size) to the attention logits when the reducer asks for proportional attention; that bias goes
through ``F.scaled_dot_product_attention`` as an additive float mask, so timm's fused attention is
kept. Prefix tokens (class, distillation, registers) sit at the front and are never reduced.

Blocks before the first selected site, and blocks that neither reduce nor need the bias, run timm's
own forward unchanged; removing the installation restores each patched attribute exactly.

Pooling: 'avg' and 'avgmax' global pools weight each token by its size (a merged token counts for
every patch it holds); 'token' pooling reads the class token, which is never reduced; attention
pooling heads (MAP) run unweighted.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from tokenred.checkpoint import register_checkpoint_filter
from tokenred.sites import (SEQUENCE_PLACEMENTS, SequenceContext, SequenceState, SequenceTokens,
                            Site, SiteQuantityError, UnsupportedModelError, register_site_adapter,
                            reset_every_forward)

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
_ATTN_PARTS = ("qkv", "num_heads", "head_dim", "q_norm", "k_norm", "attn_drop", "proj", "proj_drop",
               "fused_attn", "scale")


def attention_with_keys(attn: nn.Module) -> Callable:
    """A function running timm's ``Attention.forward`` step for step (so outputs are bit-identical
    when bias is None), with an optional additive bias, that also returns the queries, keys and
    values ([B, H, T, head_dim]; q and k after qk-norm, unscaled) the sites' attention quantities
    are computed from. Optional parts are looked up once here, not on every call."""
    gate = getattr(attn, "gate", None)
    out_norm = getattr(attn, "norm", None)
    attn_dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)

    def run(x: torch.Tensor, bias: Optional[torch.Tensor]):
        B, N, _ = x.shape
        g = gate(x).sigmoid() if gate is not None else None
        qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if bias is not None:
            bias = bias.to(q.dtype)
        if attn.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=attn.attn_drop.p if attn.training else 0.0)
        else:
            q = q * attn.scale
            a = q @ k.transpose(-2, -1)
            if bias is not None:
                a = a + bias
            a = attn.attn_drop(a.softmax(dim=-1))
            x = a @ v
        x = x.transpose(1, 2).reshape(B, N, attn_dim)
        if out_norm is not None:
            x = out_norm(x)
        if g is not None:
            x = x * g
        x = attn.proj_drop(attn.proj(x))
        return x, q, k, v

    return run


def class_attention_row(q: torch.Tensor, k: torch.Tensor, scale: float,
                        bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Post-softmax attention of the class token's query (position 0) over all keys, per head:
    [B, H, T], from q_cls and the keys only (O(T·d) per head; no [T, T] matrix)."""
    logits = (q[:, :, :1] * scale) @ k.transpose(-2, -1)             # [B, H, 1, T]
    if bias is not None:
        logits = logits + bias[..., :1, :].to(logits.dtype)
    return logits.softmax(dim=-1)[:, :, 0]


def received_attention(q: torch.Tensor, k: torch.Tensor, scale: float,
                       bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Attention each token received, summed over heads and queries: [B, T] (O(T²))."""
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    return logits.softmax(dim=-1).sum(dim=(1, 2))


class ViTAdapter:
    def __init__(self, model: VisionTransformer):
        self.model = model
        for i, blk in enumerate(model.blocks):
            missing = [p for p in _BLOCK_PARTS if not hasattr(blk, p)]
            missing += [f"attn.{p}" for p in _ATTN_PARTS if not hasattr(getattr(blk, "attn", None), p)]
            if missing:
                raise UnsupportedModelError(f"blocks.{i} is a {type(blk).__name__} with attention "
                                f"{type(getattr(blk, 'attn', None)).__name__}; tokenred needs a timm "
                                f"pre-norm Block with Attention (missing: {', '.join(missing)})")

    def sites(self) -> list[Site]:
        prefix = int(self.model.num_prefix_tokens)
        return [Site(name=f"blocks.{i}", kind="sequence", stage=0, block=i, index_in_stage=i,
                     num_prefix_tokens=prefix) for i in range(len(self.model.blocks))]

    def install(self, reducer: Any, sites: Sequence[Site]) -> "ViTInstallation":
        return ViTInstallation(self.model, reducer, list(sites))


class ViTInstallation:
    def __init__(self, model: VisionTransformer, reducer: Any, sites: list[Site]):
        self.model = model
        self.reducer = reducer
        self.state = SequenceState()
        self._restore: list[Callable[[], None]] = []
        self._class_token = getattr(model, "cls_token", None) is not None
        self._prop_attn = bool(reducer.proportional_attention)
        self._distill_token = getattr(model, "dist_token", None) is not None
        try:
            self._install(sites)
        except Exception:
            self.remove()
            raise

    # -- patching helpers: instance attributes shadow the class methods; undo puts back exactly
    #    what was in the instance __dict__ before (usually nothing)
    def _patch(self, obj: Any, attr: str, value: Any) -> None:
        had, old = attr in obj.__dict__, obj.__dict__.get(attr)
        obj.__dict__[attr] = value

        def undo() -> None:
            if had:
                obj.__dict__[attr] = old
            else:
                obj.__dict__.pop(attr, None)

        self._restore.append(undo)

    def _install(self, sites: list[Site]) -> None:
        model = self.model
        placement = getattr(self.reducer, "sequence_placement", "attention")
        if placement not in SEQUENCE_PLACEMENTS:
            raise ValueError(f"{self.reducer.name}: sequence_placement={placement!r}; "
                             f"one of {SEQUENCE_PLACEMENTS}")
        self._check_requirements(sites, placement)
        at_block = {s.block: (i, s) for i, s in enumerate(sites)}
        # at a block's input the previous block's attention is what a reducer can read
        capture = {s.block - 1 for s in sites if s.block > 0} if placement == "block_input" else set()
        first = min(set(at_block) | capture)
        for b in range(first, len(model.blocks)):
            blk = model.blocks[b]
            index, site = at_block.get(b, (None, None))
            self._patch(blk, "forward", self._block_forward(blk, site, index, len(sites),
                                                            placement, b in capture))
        self._restore.append(reset_every_forward(model.patch_embed, self.state, self.reducer,
                                                 self._record_patches))
        if hasattr(model, "pool"):
            self._patch(model, "pool", self._weighted_pool(type(model).pool.__get__(model)))
        elif getattr(model, "global_pool", "token") in ("avg", "avgmax"):
            raise UnsupportedModelError("this timm version's VisionTransformer has no pool(), "
                                        "which size-weighted average pooling replaces; upgrade timm")

    def _record_patches(self) -> None:
        prefix, grid = int(self.model.num_prefix_tokens), self.model.patch_embed.grid_size
        self.state.patch_grid = tuple(grid) if grid is not None else None
        self.state.patch_columns = torch.arange(prefix, prefix + int(self.model.patch_embed.num_patches))

    def _check_requirements(self, sites: list[Site], placement: str) -> None:
        needs = set(getattr(self.reducer, "requires", ()))
        if placement == "attention":
            given = {"metric", "values"} | ({"cls_attention"} if self._class_token else set())
        else:
            given = {"received_attention"} if all(s.block > 0 for s in sites) else set()
        missing = sorted(needs - given)
        if missing:
            why = ("this ViT has no class token" if "cls_attention" in missing and placement == "attention"
                   else f"the {placement} placement gives {sorted(given) or 'nothing'} at "
                        f"{[s.name for s in sites]}")
            raise SiteQuantityError(f"{self.reducer.name} needs {', '.join(missing)}: {why}")

    def _block_forward(self, blk: nn.Module, site: Optional[Site], index: Optional[int],
                       num_sites: int, placement: str, capture: bool) -> Callable:
        original = type(blk).forward.__get__(blk)
        state = self.state
        attention = attention_with_keys(blk.attn)
        scale = float(blk.attn.head_dim ** -0.5)
        at_input, after_attention = (site is not None and placement == "block_input",
                                     site is not None and placement == "attention")

        def forward(x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                    is_causal: bool = False) -> torch.Tensor:
            if site is None and not capture and not self._bias_needed():
                return original(x, attn_mask=attn_mask, is_causal=is_causal)
            if attn_mask is not None or is_causal:
                raise NotImplementedError("tokenred: attention masks cannot be combined with token "
                                          "reduction (the token count changes inside the network)")
            if at_input:
                x = self._reduce(x, site, index, num_sites, None, placement)
            bias = self._attention_bias() if self._bias_needed() else None
            y, q, k, v = attention(blk.norm1(x), bias)
            if capture:
                state.last_attention = (q, k, bias, scale)
            x = x + blk.drop_path1(blk.ls1(y))
            if after_attention:
                x = self._reduce(x, site, index, num_sites, (q, k, v, bias, scale), placement)
            return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))

        return forward

    def _bias_needed(self) -> bool:
        state = self.state
        return state.mask is not None or (self._prop_attn and state.size is not None)

    def _attention_bias(self) -> torch.Tensor:
        """Additive attention bias [B, 1, 1, T]: log(size) (proportional attention) and -inf on
        padded keys (per-image token counts)."""
        state = self.state
        bias = state.size.log()[:, None, None, :, 0] if (self._prop_attn and state.size is not None) else None
        if state.mask is not None:
            pad = torch.zeros(state.mask.shape, dtype=torch.float32, device=state.mask.device)
            pad = pad.masked_fill(~state.mask, float("-inf"))[:, None, None, :]
            bias = pad if bias is None else bias + pad
        return bias

    def _providers(self, attn: Optional[tuple]) -> dict:
        if attn is None:   # block input: only what the previous block's attention left
            if self.state.last_attention is None:
                return {}
            q0, k0, bias0, scale0 = self.state.last_attention
            return {"received_attention": lambda: received_attention(q0, k0, scale0, bias0)}
        q, k, v, bias, scale = attn
        out = {"metric": lambda: k.mean(1),
               "values": lambda: v.transpose(1, 2).reshape(v.shape[0], v.shape[2], -1)}
        if self._class_token:
            out["cls_attention"] = lambda: class_attention_row(q, k, scale, bias)
        return out

    def _reduce(self, x: torch.Tensor, site: Site, index: int, num_sites: int,
                attn: Optional[tuple], placement: str) -> torch.Tensor:
        state, reducer = self.state, self.reducer
        if reducer.trace_source and state.source is None:
            B, T, _ = x.shape
            state.source = torch.eye(T, device=x.device, dtype=x.dtype)[None].expand(B, T, T)
        ctx = SequenceContext(site, index, num_sites, class_token=self._class_token,
                              distill_token=self._distill_token, trace_source=reducer.trace_source,
                              providers=self._providers(attn), placement=placement,
                              depth=len(self.model.blocks),
                              num_patches=int(self.model.patch_embed.num_patches))
        out = reducer.reduce_sequence(SequenceTokens(x, state.size, state.source, state.mask), ctx)
        state.record(site, out)
        return out.x

    def _weighted_pool(self, original: Callable) -> Callable:
        model, state = self.model, self.state

        def pool(x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
            kind = model.global_pool if pool_type is None else pool_type
            attention_pool = getattr(model, "attn_pool", None) is not None
            reduced = state.size is not None or state.mask is not None
            if not reduced or attention_pool or kind not in ("avg", "avgmax"):
                return original(x, pool_type)
            start = 0 if getattr(model, "pool_include_prefix", False) else model.num_prefix_tokens
            w = (state.size if state.size is not None else x.new_ones(x.shape[:2] + (1,)))
            if state.mask is not None:   # padding counts for nothing
                w = w * state.mask[..., None]
            xs, w = x[:, start:], w[:, start:].to(x.dtype)
            mean = (xs * w).sum(dim=1) / w.sum(dim=1)
            if kind == "avg":
                return mean
            if state.mask is not None:
                xs = xs.masked_fill(~state.mask[:, start:, None], float("-inf"))
            return 0.5 * (xs.amax(dim=1) + mean)

        return pool

    def remove(self) -> None:
        while self._restore:
            self._restore.pop()()


register_site_adapter(VisionTransformer, ViTAdapter)
register_checkpoint_filter(VisionTransformer, checkpoint_filter_fn)
