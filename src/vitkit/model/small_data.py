"""Options for small data sets, each off by default and chosen by a factory that the model calls.

A convolutional stem before the patches (ConvStem), shifted patch tokenization (ShiftedPatchEmbedding), locality
self-attention (LocalityAttention) and sequence pooling (SequencePooling): each gives a ViT trained on few images
some of the locality bias a convolutional network has built in. A factory returns its option's module when the
config asks for it, else the plain step (or None), so that ``vit.py`` keeps the seed's steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitkit.model.config import ViTConfig
from vitkit.model.functional import patchify


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


def shifted_patch_embedding(config: ViTConfig) -> ShiftedPatchEmbedding | None:
    """Shifted patch tokenization when ``config.patch_embed == "shifted"``, else None (the seed's projection)."""
    return ShiftedPatchEmbedding(config) if config.patch_embed == "shifted" else None


def locality_attention(config: ViTConfig) -> LocalityAttention | None:
    """Locality self-attention's temperature and mask when ``config.locality_attention``, else None."""
    return LocalityAttention(config) if config.locality_attention else None


def sequence_pooling(config: ViTConfig) -> SequencePooling | None:
    """Sequence pooling when ``config.pool == "seq"``, else None (CLS token or plain mean)."""
    return SequencePooling(config) if config.pool == "seq" else None
