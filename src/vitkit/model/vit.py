"""The Vision Transformer, step by step as the seed tells it.

image -> patches -> linear projection (patch embeddings) -> + position vectors, CLS token first
-> encoder blocks [LayerNorm -> multi-head self-attention -> residual -> LayerNorm -> MLP -> residual]
-> LayerNorm -> classification head on the CLS token (or on the mean of the patch tokens).

Options for small data sets, each a small module below and off by default: a convolutional stem before the
patches (ConvStem), shifted patch tokenization (ShiftedPatchEmbedding), locality self-attention
(LocalityAttention) and sequence pooling (SequencePooling).
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

from vitkit.model import weights
from vitkit.model.config import Pair, ViTConfig


def trunc_normal_init(tensor: Tensor, std: float = 0.02) -> None:
    """ViT-paper initialisation: normal with ``std``, truncated at two standard deviations."""
    nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def patchify(images: Tensor, patch_size: Pair) -> Tensor:
    """Step 1: cut (B, C, H, W) images into flattened patches (B, num_patches, P*P*C), row by row.

    The model does this and step 2 in one strided convolution; this function spells step 1 out.
    """
    b, c, h, w = images.shape
    ph, pw = patch_size
    patches = images.reshape(b, c, h // ph, ph, w // pw, pw)  # (B, C, gh, ph, gw, pw)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, ph, pw)
    return patches.reshape(b, (h // ph) * (w // pw), c * ph * pw)


class ConvStem(nn.Module):
    """Early convolutions (Xiao et al., 2021, "Early Convolutions Help Transformers See Better"), for small images.

    ``conv_stem`` 3x3 convolutions, each normalised and followed by a ReLU, turn the pixels into local features
    before the patches are cut: a convolution's bias towards nearby pixels is what a ViT lacks on little data.
    Stride 1 keeps the image size, so the patch grid (and with it the position vectors and every map drawn over
    the grid) is unchanged. The paper's stem normalises with BatchNorm; this one with GroupNorm of one group, each
    image by its own statistics, so that splitting a batch between processes or accumulation steps changes nothing.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.width = config.conv_stem_width  # half the token width
        layers: list[nn.Module] = []
        for i in range(config.conv_stem):
            channels = config.in_channels if i == 0 else self.width
            conv = nn.Conv2d(channels, self.width, kernel_size=3, padding=1, bias=False)
            layers += [conv, nn.GroupNorm(1, self.width), nn.ReLU()]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)  # (B, C, H, W) -> (B, width, H, W)


def stem_and_channels(config: ViTConfig) -> tuple[nn.Module, int]:
    """The convolutional stem (or nothing) and the channels the patches are then cut from."""
    if config.conv_stem:
        stem = ConvStem(config)
        return stem, stem.width
    return nn.Identity(), config.in_channels


class PatchEmbedding(nn.Module):
    """Steps 1-2: patches through a trainable linear projection to ``hidden_dim``: the patch embeddings.

    A convolution whose kernel and stride equal the patch size applies one shared linear layer to each
    non-overlapping patch: the same operation as ``patchify`` followed by ``nn.Linear``, only faster.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.stem, channels = stem_and_channels(config)
        self.proj = nn.Conv2d(channels, config.hidden_dim, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(self.stem(images)).flatten(2).transpose(1, 2)  # (B, D, gh, gw) -> (B, num_patches, D)


class ShiftedPatchEmbedding(nn.Module):
    """Shifted patch tokenization (Lee, Lee & Song, 2021, "Vision Transformer for Small-Size Datasets").

    A patch also sees half a patch of its neighbours: the image and four copies of it shifted diagonally by half
    a patch (zeros where a copy reads outside the image) are stacked on the channels, cut into patches, flattened,
    layer-normalised and projected linearly to ``hidden_dim``. Each token then covers twice the patch's width and
    height, more context per token for a model that has to learn locality from few images.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.stem, channels = stem_and_channels(config)
        self.patch_size = config.patch_size
        half_h, half_w = config.patch_size[0] // 2, config.patch_size[1] // 2
        # (dy, dx): the copy at (y, x) holds the image at (y + dy, x + dx): up-left, up-right, down-left, down-right.
        self.shifts = [(dy, dx) for dy in (-half_h, half_h) for dx in (-half_w, half_w)]
        features = 5 * channels * config.patch_size[0] * config.patch_size[1]
        self.norm = nn.LayerNorm(features, eps=config.layer_norm_eps)
        self.proj = nn.Linear(features, config.hidden_dim)

    def shifted_views(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 5C, H, W): the image, then its four diagonally shifted copies."""
        height, width = images.shape[-2:]
        half_h, half_w = self.patch_size[0] // 2, self.patch_size[1] // 2
        padded = F.pad(images, (half_w, half_w, half_h, half_h))  # zeros around the image
        copies = [
            padded[..., half_h + dy : half_h + dy + height, half_w + dx : half_w + dx + width] for dy, dx in self.shifts
        ]
        return torch.cat([images, *copies], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        patches = patchify(self.shifted_views(self.stem(images)), self.patch_size)  # (B, num_patches, 5C * ph * pw)
        return self.proj(self.norm(patches))  # (B, num_patches, D)


def sincos_position_vectors(grid_size: Pair, dim: int, num_prefix_tokens: int) -> Tensor:
    """Step 3, fixed variant: 2-D sine-cosine position vectors (1, prefix + gh*gw, dim).

    Half the features encode the row, half the column, each as sines and cosines of geometric
    frequencies; prefix (CLS) positions get zeros.
    """
    rows, cols = torch.meshgrid(
        torch.arange(grid_size[0], dtype=torch.float64), torch.arange(grid_size[1], dtype=torch.float64), indexing="ij"
    )
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    angles_row = rows.flatten()[:, None] * freqs[None, :]
    angles_col = cols.flatten()[:, None] * freqs[None, :]
    table = torch.cat([angles_row.sin(), angles_row.cos(), angles_col.sin(), angles_col.cos()], dim=1)
    table = torch.cat([torch.zeros(num_prefix_tokens, dim, dtype=torch.float64), table])
    return table.float().unsqueeze(0)


class LocalityAttention(nn.Module):
    """Locality self-attention (Lee, Lee & Song, 2021, "Vision Transformer for Small-Size Datasets").

    Two changes that sharpen the attention of a ViT trained on little data: a learned temperature per head takes
    the place of the fixed sqrt(d), softmax(q k^T / tau), and each token's logit for itself is masked out, so its
    attention goes to the other tokens (the residual connection already carries the token itself). The temperature
    starts at sqrt(d): at initialisation only the mask differs from plain attention.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.head_dim = config.hidden_dim // config.num_heads
        self.temperature = nn.Parameter(torch.full((config.num_heads,), math.sqrt(self.head_dim)))

    def forward(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """Queries (B, h, N, d) rescaled so that the usual q k^T / sqrt(d) becomes q k^T / tau, and the (N, N)
        mask to add to the logits: -inf on the diagonal, 0 elsewhere (a fused kernel takes both as they are)."""
        n = q.shape[-2]
        q = q * (math.sqrt(self.head_dim) / self.temperature).to(q.dtype)[:, None, None]
        itself = torch.eye(n, dtype=torch.bool, device=q.device)
        return q, torch.zeros(n, n, dtype=q.dtype, device=q.device).masked_fill(itself, float("-inf"))


def cast_once_for_autocast(x: Tensor) -> Tensor:
    """``x`` in autocast's dtype when autocast is on, else as it is.

    Each of the three q, k, v layers would otherwise cast its input on its own, and keep its own bf16 copy for
    the backward pass: two more (B, N, D) tensors a block than one fused qkv layer keeps (measured on an H200,
    ViT-B/16, batch 128: 10 % more training memory than timm). Cast here, the three share one copy.
    """
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention: q, k, v from three distinct linear layers, h heads, concatenated, projected."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_dim // config.num_heads
        self.q = nn.Linear(config.hidden_dim, config.hidden_dim, bias=config.qkv_bias)
        self.k = nn.Linear(config.hidden_dim, config.hidden_dim, bias=config.qkv_bias)
        self.v = nn.Linear(config.hidden_dim, config.hidden_dim, bias=config.qkv_bias)
        self.locality = LocalityAttention(config) if config.locality_attention else None
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


class SequencePooling(nn.Module):
    """Sequence pooling (Hassani et al., 2021, "Escaping the Big Data Paradigm with Compact Transformers").

    The classifier reads a weighted mean of the patch tokens whose weights the model learns to give: a linear
    layer scores each token, a softmax over the sequence turns the scores into weights. No CLS token is needed,
    and unlike the plain mean the tokens that matter can count more.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.score = nn.Linear(config.hidden_dim, 1)

    def weights(self, tokens: Tensor) -> Tensor:
        """(B, N, D) -> (B, N): each token's weight, every row summing to 1."""
        return self.score(tokens).squeeze(-1).softmax(dim=-1)

    def forward(self, tokens: Tensor) -> Tensor:
        return (self.weights(tokens).unsqueeze(1) @ tokens).squeeze(1)  # (B, 1, N) @ (B, N, D) -> (B, D)


class MLP(nn.Module):
    """The block's feed-forward part: Linear -> GELU -> Linear, applied to each token on its own."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_dim, config.mlp_dim)
        self.act = nn.GELU()
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
        # Freed here, not when the block returns: held through the MLP, this (B, N, D) tensor was the training
        # step's peak memory (+9 MiB in ViT-S/16 at batch 32, the last block's forward).
        del attended
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
        self.patch_embed = ShiftedPatchEmbedding(config) if config.patch_embed == "shifted" else PatchEmbedding(config)
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
        self.seq_pool = SequencePooling(config) if config.pool == "seq" else None
        self.head = nn.Linear(self.head_input_dim, config.num_classes) if config.num_classes else nn.Identity()
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
            raise ValueError(f"expected images of shape (batch, channels, height, width), got shape {tuple(images.shape)}")
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
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # (B, 1 + num_patches, D)
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
        chosen = self._block_indices(indices)
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

    def _block_indices(self, indices: int | Sequence[int] | None) -> set[int]:
        depth = self.config.depth
        if indices is None:
            return set(range(depth))
        if isinstance(indices, int):
            if not 0 <= indices <= depth:
                raise ValueError(f"indices={indices} asks for the last {indices} blocks; the model has {depth}")
            return set(range(depth - indices, depth))
        bad = [i for i in indices if not -depth <= i < depth]
        if bad:
            raise ValueError(f"block indices {bad} are out of range for {depth} blocks: use -{depth}..{depth - 1}")
        return {i % depth for i in indices}

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
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    # --- changing size and classes, files (the fitting lives in model/weights.py) -------------------
    def set_image_size(self, image_size: int | Pair) -> None:
        """Use the model at another image size: learned position vectors are resized, sin-cos ones recomputed."""
        weights.set_image_size(self, image_size)

    def reset_head(self, num_classes: int, class_names: list[str] | None = None) -> None:
        """A fresh classification head, e.g. to fine-tune on a data set with other classes."""
        self.config = self.config.replace(num_classes=num_classes, class_names=class_names)
        device = self.patch_embed.proj.weight.device
        self.head = nn.Linear(self.head_input_dim, num_classes).to(device) if num_classes else nn.Identity()
        if num_classes:
            trunc_normal_init(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def load_weights(self, state_dict: dict[str, Tensor], source_grid: Pair | None = None, strict_head: bool = True) -> None:
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
        return weights.from_pretrained(path, **overrides)
