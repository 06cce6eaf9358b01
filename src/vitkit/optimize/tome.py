"""Token Merging (ToMe; Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023), training-free.

Between the attention and the MLP of every block, the ``r`` most similar pairs of tokens are merged, so
each block works on fewer tokens than the one before. Similarity is the cosine of the tokens' keys (mean
over heads); matching is bipartite: tokens alternate between sets A and B, each A token picks its most
similar B token, and the r A tokens with the best matches are averaged into their partners (weighted by
how many image patches each already stands for). The CLS token is never merged and stays first.
A merged token stands for several patches, so attention counts it that many times: log(size) is added
to the attention logits ("proportional attention").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitkit.model.vit import EncoderBlock, VisionTransformer
from vitkit.optimize.fuse import FusedSelfAttention


def merge_tokens(x: Tensor, sizes: Tensor, metric: Tensor, r: int, protect_first: bool) -> tuple[Tensor, Tensor]:
    """Bipartite soft matching: merge the ``r`` most similar A->B pairs of tokens.

    x (B, N, D) tokens, sizes (B, N, 1) patches each token stands for, metric (B, N, C) what similarity is
    measured on. Returns the merged tokens (B, N - r, D) and their sizes; kept A tokens come first, in
    their original order (so a protected first token stays first), then the B tokens.
    """
    b, n, d = x.shape
    r = min(r, (n - int(protect_first)) // 2)
    if r <= 0:
        return x, sizes
    metric = F.normalize(metric.float(), dim=-1)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (B, |A|, |B|) cosine similarities
    if protect_first:
        scores[:, 0] = -math.inf  # the CLS token (first of set A) is never merged away
    best, partner = scores.max(dim=-1)  # each A token's most similar B token
    order = best.argsort(dim=-1, descending=True)
    merged, kept = order[:, :r], order[:, r:].sort(dim=-1).values
    # Average by size: add up size-weighted tokens and sizes together, divide at the end.
    weighted = torch.cat([x * sizes, sizes], dim=-1)
    set_a, set_b = weighted[:, ::2], weighted[:, 1::2]
    width = d + 1
    moved = set_a.gather(1, merged[..., None].expand(-1, -1, width))
    set_b = set_b.scatter_add(1, partner.gather(1, merged)[..., None].expand(-1, -1, width), moved)
    out = torch.cat([set_a.gather(1, kept[..., None].expand(-1, -1, width)), set_b], dim=1)
    new_sizes = out[..., d:]
    return out[..., :d] / new_sizes, new_sizes


class TokenSizes:
    """How many patches each token of the pass in progress stands for, shared by a model's merging blocks.

    A block reads the sizes the previous block left only when they fit its input's (batch, tokens); a
    fresh pass enters the first block with all tokens, which never fits the merged sizes of a finished
    pass, so no explicit reset is needed.
    """

    def __init__(self) -> None:
        self.sizes: Tensor | None = None

    def current(self, x: Tensor) -> Tensor | None:
        if self.sizes is not None and self.sizes.shape[:2] == x.shape[:2]:
            return self.sizes
        return None

    def attention_bias(self, x: Tensor) -> Tensor | None:
        """log(size) for each key, shaped to add to attention logits (B, 1, 1, N); None when all sizes are 1."""
        sizes = self.current(x)
        return None if sizes is None else sizes.log().to(x.dtype).transpose(1, 2)[:, None]


class ProportionalAttention(FusedSelfAttention):
    """Fused attention that weights each key by the number of patches its token stands for."""

    def __init__(self, attention: FusedSelfAttention, sizes: TokenSizes) -> None:
        nn.Module.__init__(self)
        self.num_heads, self.head_dim = attention.num_heads, attention.head_dim
        self.qkv, self.proj, self.locality = attention.qkv, attention.proj, attention.locality
        self.token_sizes = sizes

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        out, _, attention = self.attend(x, self.token_sizes.attention_bias(x), return_attention)
        return out if attention is None else (out, attention.float())


class MergingBlock(nn.Module):
    """An encoder block that merges ``r`` tokens between its attention and its MLP (inference only)."""

    def __init__(self, block: EncoderBlock, r: int, sizes: TokenSizes, protect_first: bool) -> None:
        super().__init__()
        if not isinstance(block.attn, FusedSelfAttention):
            raise ValueError("token merging needs fused q/k/v attention: apply fuse_qkv first")
        self.norm1, self.norm2, self.mlp = block.norm1, block.norm2, block.mlp
        self.attn = ProportionalAttention(block.attn, sizes)
        self.r, self.token_sizes, self.protect_first = r, sizes, protect_first

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, N, D) -> (B, N - r, D), and the attention probabilities (B, h, N, N) with ``return_attention``."""
        sizes = self.token_sizes.current(x)
        out, keys, attention = self.attn.attend(self.norm1(x), self.token_sizes.attention_bias(x), return_attention)
        x = x + out  # LayerNorm -> MSA -> residual
        if sizes is None:
            sizes = x.new_ones(x.shape[0], x.shape[1], 1)
        x, self.token_sizes.sizes = merge_tokens(x, sizes, keys.mean(dim=1), self.r, self.protect_first)
        del out, keys  # not held through the MLP, as in EncoderBlock
        x = x + self.mlp(self.norm2(x))  # LayerNorm -> MLP -> residual
        return x if attention is None else (x, attention.float())


def apply_tome(model: VisionTransformer, r: int) -> VisionTransformer:
    """Merge ``r`` tokens in every block (in place); the blocks' attention must be fused first.

    With mean pooling the head averages merged tokens without their sizes, an approximation; CLS pooling
    (the default) is unaffected. ``r=0`` merges nothing and gives the plain model's logits.
    """
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        raise ValueError(f"tome must be a whole number of tokens to merge per block (>= 0), got {r!r}")
    sizes = TokenSizes()
    protect_first = model.config.class_token
    merging = []
    for block in model.blocks:
        if not isinstance(block, EncoderBlock):
            raise ValueError(f"token merging replaces the model's EncoderBlocks, got a {type(block).__name__}")
        merging.append(MergingBlock(block, r, sizes, protect_first))
    model.blocks = nn.ModuleList(merging)
    return model
