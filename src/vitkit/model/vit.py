"""The Vision Transformer, step by step as the seed tells it.

image -> patches -> linear projection (patch embeddings) -> + position vectors, CLS token first
-> encoder blocks [LayerNorm -> multi-head self-attention -> residual -> LayerNorm -> MLP -> residual]
-> LayerNorm -> classification head on the CLS token (or on the mean of the patch tokens).

The options for small data sets (conv stem, shifted patches, locality attention, sequence pooling) live in
``small_data.py``, the weightless tensor steps in ``functional.py``, loading and saving in ``weights.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from vitkit.model import small_data, weights
from vitkit.model.config import Pair, ViTConfig
from vitkit.model.functional import cast_once_for_autocast, chosen_blocks, sincos_position_vectors


def trunc_normal_init(tensor: Tensor, std: float = 0.02) -> None:
    """ViT-paper initialisation: normal with ``std``, truncated at two standard deviations."""
    nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


class PatchEmbedding(nn.Module):
    """Steps 1-2: patches through a trainable linear projection to ``hidden_dim``: the patch embeddings.

    A convolution whose kernel and stride equal the patch size applies one shared linear layer to each
    non-overlapping patch: the same operation as ``patchify`` followed by ``nn.Linear``, only faster.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.stem, channels = small_data.stem_and_channels(config)  # a conv stem before the patches, or none
        self.proj = nn.Conv2d(channels, config.hidden_dim, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(self.stem(images)).flatten(2).transpose(1, 2)  # (B, D, gh, gw) -> (B, num_patches, D)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention: q, k, v from three distinct linear layers, h heads, concatenated, projected."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_dim // config.num_heads
        self.q = nn.Linear(config.hidden_dim, config.hidden_dim, bias=config.qkv_bias)
        self.k = nn.Linear(config.hidden_dim, config.hidden_dim, bias=config.qkv_bias)
        self.v = nn.Linear(config.hidden_dim, config.hidden_dim, bias=config.qkv_bias)
        self.locality = small_data.locality_attention(config)
        self.attention_dropout = config.attention_dropout
        self.proj = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.proj_dropout = nn.Dropout(config.dropout)

    def split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, N, D) -> (B, N, D). With ``return_attention`` the softmax is spelled out, and its probabilities
        (B, h, N, N), each row summing to 1, come back too: read from this pass, not computed a second time."""
        x = cast_once_for_autocast(x)
        q, k, v = self.split_heads(self.q(x)), self.split_heads(self.k(x)), self.split_heads(self.v(x))
        mask = None
        if self.locality is not None:
            q, mask = self.locality(q)  # LSA: logits q k^T / tau, none for a token and itself
        dropout = self.attention_dropout if self.training else 0.0
        if return_attention:
            logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            attention = (logits if mask is None else logits + mask).softmax(dim=-1)  # (B, h, N, N)
            heads = F.dropout(attention, dropout) @ v
        else:  # softmax(q k^T / sqrt(d) + mask) v, fused
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        b, _, n, _ = heads.shape
        concatenated = heads.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)  # (B, N, D)
        out = self.proj_dropout(self.proj(concatenated))
        return (out, attention) if return_attention else out


class MLP(nn.Module):
    """The block's feed-forward part: Linear -> GELU -> Linear, applied to each token on its own."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_dim, config.mlp_dim)
        self.act: nn.Module = nn.GELU()  # inference transforms replace it (in place, or inside a product)
        self.fc2 = nn.Linear(config.mlp_dim, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(x)))))


class EncoderBlock(nn.Module):
    """One transformer encoder layer, pre-norm, with stochastic depth on each residual branch."""

    def __init__(self, config: ViTConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_dim, eps=config.layer_norm_eps)
        self.attn = MultiHeadSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_dim, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, N, D) -> (B, N, D), and the attention probabilities (B, h, N, N) with ``return_attention``."""
        if return_attention:
            attended, attention = self.attn(self.norm1(x), return_attention=True)
        else:
            attended = self.attn(self.norm1(x))
        x = x + self.drop_path(attended)  # LayerNorm -> MSA -> residual
        del attended  # freed before the MLP: held through it, it was the training step's peak memory
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # LayerNorm -> MLP -> residual
        return (x, attention) if return_attention else x


class VisionTransformer(nn.Module):
    """A ViT image classifier. Build it from a :class:`ViTConfig` or from its fields as keywords."""

    def __init__(self, config: ViTConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = ViTConfig(**kwargs)
        elif kwargs:
            config = config.replace(**kwargs)
        self.config = config
        # Steps 1-2, or shifted patch tokenization in their place (small_data) when the config asks for it.
        # nn.Module: inference transforms may wrap it (vitkit.optimize's bf16 casts the images on the way in)
        self.patch_embed: nn.Module = small_data.shifted_patch_embedding(config) or PatchEmbedding(config)
        num_positions = config.num_prefix_tokens + config.num_patches
        if config.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_dim))
        if config.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, config.hidden_dim))
        else:
            self.register_buffer(
                "pos_embed", sincos_position_vectors(config.grid_size, config.hidden_dim, config.num_prefix_tokens)
            )
        self.pos_dropout = nn.Dropout(config.dropout)
        # Stochastic depth grows linearly with depth, as in DeiT.
        drop_rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(EncoderBlock(config, rate) for rate in drop_rates)
        # The final LayerNorm: on every token, or (timm's fc_norm) on the pooled token only.
        final_norm = nn.LayerNorm(config.hidden_dim, eps=config.layer_norm_eps)
        self.norm = nn.Identity() if config.fc_norm else final_norm
        self.fc_norm = final_norm if config.fc_norm else nn.Identity()
        # The original ViT's optional pre-logits layer: Linear -> tanh between the pooled token and the head.
        self.pre_logits = (
            nn.Sequential(nn.Linear(config.hidden_dim, config.pre_logits_dim), nn.Tanh())
            if config.pre_logits_dim
            else nn.Identity()
        )
        self.seq_pool = small_data.sequence_pooling(config)
        head = nn.Linear(self.head_input_dim, config.num_classes) if config.num_classes else nn.Identity()
        self.head: nn.Module = head
        self.reset_parameters()

    # --- what the model is --------------------------------------------------------------------
    @property
    def image_size(self) -> Pair:
        return self.config.image_size

    @property
    def patch_size(self) -> Pair:
        return self.config.patch_size

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def head_input_dim(self) -> int:
        return self.config.pre_logits_dim or self.config.hidden_dim

    def reset_parameters(self) -> None:
        """ViT-paper initialisation: truncated normal (std 0.02) for linear layers and embeddings."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                trunc_normal_init(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.config.class_token:
            trunc_normal_init(self.cls_token)
        if isinstance(self.pos_embed, nn.Parameter):
            trunc_normal_init(self.pos_embed)

    # --- the forward pass, as the seed tells it -----------------------------------------------
    def check_input(self, images: Tensor) -> None:
        """Raise a ValueError that says expected vs. got, instead of a shape error deep inside."""
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (batch, channels, height, width), got {tuple(images.shape)}")
        channels, height, width = images.shape[1:]
        if channels != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {channels}")
        if (height, width) != self.image_size:
            raise ValueError(
                f"expected images of size {self.image_size[0]}x{self.image_size[1]} (height x width), "
                f"got {height}x{width}; resize them, or load the model with image_size=({height}, {width})"
            )

    def embed(self, images: Tensor) -> Tensor:
        """Patch embeddings, CLS token first, plus position vectors: the encoder's input sequence."""
        self.check_input(images)
        tokens = self.patch_embed(images)  # (B, num_patches, D)
        if self.config.class_token:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # CLS token first
        return self.pos_dropout(tokens + self.pos_embed)

    def forward_features(self, images: Tensor) -> Tensor:
        """The final token sequence (B, N, D), normalised unless ``fc_norm``: features for any downstream task."""
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, tokens: Tensor) -> Tensor:
        """Logits from the CLS token, or from the mean of the patch tokens (``pool='mean'``), or from their learned
        weighted mean (``pool='seq'``)."""
        patches = tokens[:, self.config.num_prefix_tokens :]
        if self.config.pool == "cls":
            pooled = tokens[:, 0]
        elif self.seq_pool is not None:
            pooled = self.seq_pool(patches)
        else:
            pooled = patches.mean(dim=1)
        return self.head(self.pre_logits(self.fc_norm(pooled)))

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))

    def forward_intermediates(
        self, images: Tensor, indices: int | Sequence[int] | None = None, output_fmt: str = "NCHW", norm: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        """The final features (as :meth:`forward_features`) and chosen blocks' outputs, from one pass, no hooks.

        ``indices``: None for every block, n for the last n blocks, or block numbers (negative ones count from
        the end). ``output_fmt="NLC"`` gives each block's whole token sequence (B, N, D); ``"NCHW"`` its patch
        tokens as a grid (B, D, gh, gw), the layout dense-prediction heads take. ``norm`` applies the final
        LayerNorm to them too.
        """
        chosen = chosen_blocks(indices, self.config.depth)
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        x = self.embed(images)
        intermediates = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in chosen:
                intermediates.append(self.norm(x) if norm else x)
        if output_fmt == "NCHW":
            gh, gw = self.config.grid_size
            patches = [t[:, self.config.num_prefix_tokens :] for t in intermediates]  # (B, gh*gw, D)
            intermediates = [t.transpose(1, 2).reshape(t.shape[0], -1, gh, gw) for t in patches]
        return self.norm(x), intermediates

    @torch.no_grad()
    def get_attention_maps(self, images: Tensor) -> list[Tensor]:
        """Attention probabilities of every block, read from one forward pass: a list of (B, num_heads, N, N)."""
        maps = []
        x = self.embed(images)
        for block in self.blocks:
            x, attention = block(x, return_attention=True)
            maps.append(attention)
        return maps

    # --- training helpers ---------------------------------------------------------------------
    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay the weight matrices only, not norms, biases, position vectors or the CLS token."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if param.ndim <= 1 or name in ("pos_embed", "cls_token"):
                no_decay.append(param)
            else:
                decay.append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # --- changing size and classes, files (the fitting lives in model/weights.py) -------------------
    def set_image_size(self, image_size: int | Pair) -> None:
        """Use the model at another image size: learned position vectors are resized, sin-cos ones recomputed."""
        weights.set_image_size(self, image_size)

    def reset_head(self, num_classes: int, class_names: list[str] | None = None) -> None:
        """A fresh classification head, e.g. to fine-tune on a data set with other classes."""
        self.config = self.config.replace(num_classes=num_classes, class_names=class_names)
        device = next(self.parameters()).device
        if num_classes:
            head = nn.Linear(self.head_input_dim, num_classes).to(device)
            trunc_normal_init(head.weight)
            nn.init.zeros_(head.bias)
            self.head = head
        else:
            self.head = nn.Identity()

    def load_weights(
        self, state_dict: dict[str, Tensor], source_grid: Pair | None = None, strict_head: bool = True
    ) -> None:
        """Load weights, fitting position vectors and (``strict_head=False``) the head: see ``weights.load_weights``."""
        weights.load_weights(self, state_dict, source_grid=source_grid, strict_head=strict_head)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        return weights.save_pretrained(self, directory)

    def save_config(self, directory: str | os.PathLike) -> Path:
        """Write only ``config.json``."""
        return weights.save_config(self, directory)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> VisionTransformer:
        """A saved model (folder or .safetensors file) with config ``overrides``: see ``weights.from_pretrained``."""
        return weights.from_pretrained(cls, path, **overrides)
