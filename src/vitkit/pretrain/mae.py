"""Masked-autoencoder pre-training (He et al. 2021): hide most patches, encode the rest, reconstruct the hidden ones.

The encoder is a :class:`~vitkit.model.VisionTransformer` used through its public parts (patch embedding, position
vectors, CLS token, blocks, final norm) on the visible patches only: 25 % of them at the paper's mask ratio of 0.75,
so an encoder pass costs a quarter of a full one. A light decoder (narrower and shallower, the same encoder block)
gets the encoded visible tokens with a shared learned mask token in each hidden place, adds fixed 2-D sine-cosine
position vectors, and predicts every patch's pixels. The loss is the mean squared error on the hidden patches
only, against each patch's pixels normalised by their own mean and variance (the paper's normalised-pixel target),
or against the pixels themselves: a patch of a few pixels (2x2 on 8x8 digits) has too few for a mean and a spread
that mean much, and normalising it throws away the patch's brightness, most of what it holds.
After pre-training the encoder alone is kept: fine-tune it with ``vitkit train --init-from``.
"""

from __future__ import annotations

import typing

import torch
from torch import Tensor, nn

from vitkit.model import VisionTransformer
from vitkit.model.functional import patchify, sincos_position_vectors
from vitkit.model.vit import EncoderBlock, trunc_normal_init

MASK_RATIO = 0.75


def random_masking(tokens: Tensor, mask_ratio: float, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a random ``1 - mask_ratio`` share of each image's tokens (those of lowest ``noise``).

    Returns (the kept tokens (B, keep, D) in order of their noise, the mask (B, N) with 1 where a token is hidden,
    the permutation that puts shuffled tokens back in place (B, N)).
    """
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    batch, count, dim = tokens.shape
    keep = int(count * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch, count, device=tokens.device)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    kept = tokens.gather(1, shuffle[:, :keep, None].expand(-1, -1, dim))
    mask = torch.ones(batch, count, device=tokens.device)
    mask[:, :keep] = 0
    return kept, mask.gather(1, restore), restore


def patch_statistics(patches: Tensor) -> tuple[Tensor, Tensor]:
    """Each patch's (mean, standard deviation) over its pixels (B, N, 1): what the normalised-pixel target removes."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()


def unpatchify(patches: Tensor, patch_size: tuple[int, int], grid_size: tuple[int, int]) -> Tensor:
    """The inverse of :func:`~vitkit.model.patchify`: flattened patches (B, gh*gw, C*P*P) back to (B, C, H, W)."""
    (ph, pw), (gh, gw) = patch_size, grid_size
    channels = patches.shape[-1] // (ph * pw)
    images = patches.reshape(patches.shape[0], gh, gw, channels, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return images.reshape(patches.shape[0], channels, gh * ph, gw * pw)


def normalised_pixel_loss(
    images: Tensor, predictions: Tensor, mask: Tensor, patch_size: tuple[int, int], normalise: bool = True
) -> Tensor:
    """Mean squared error on the hidden patches (``mask`` 1), against per-patch normalised pixels (B, N, C*P*P), or
    against the pixels as they are when ``normalise`` is false."""
    target = patchify(images, patch_size)
    if normalise:
        mean, std = patch_statistics(target)
        target = (target - mean) / std
    per_patch = (predictions - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MaskedAutoencoder(nn.Module):
    """An encoder (a VisionTransformer, whose head is not used) and a light decoder that reconstructs pixels."""

    decoder_pos_embed: Tensor  # a buffer: fixed 2-D sine-cosine position vectors

    def __init__(
        self, encoder: VisionTransformer, decoder_dim: int = 128, decoder_depth: int = 2, decoder_heads: int = 4,
        mask_ratio: float = MASK_RATIO, norm_pix_loss: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        config = encoder.config
        self.encoder, self.mask_ratio, self.norm_pix_loss = encoder, mask_ratio, norm_pix_loss
        decoder_config = config.replace(
            hidden_dim=decoder_dim, num_heads=decoder_heads, mlp_dim=4 * decoder_dim, depth=decoder_depth,
            locality_attention=False, dropout=0.0, attention_dropout=0.0, drop_path=0.0,
        )  # fmt: skip
        self.decoder_embed = nn.Linear(config.hidden_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer(
            "decoder_pos_embed", sincos_position_vectors(config.grid_size, decoder_dim, config.num_prefix_tokens)
        )
        self.decoder_blocks = nn.ModuleList(EncoderBlock(decoder_config, 0.0) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(decoder_dim, config.patch_size[0] * config.patch_size[1] * config.in_channels)
        for module in (self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()):
            if isinstance(module, nn.Linear):
                trunc_normal_init(module.weight)
                nn.init.zeros_(module.bias)
        trunc_normal_init(self.mask_token)

    def encode(self, images: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(encoded prefix + visible tokens, mask, restore permutation) as :func:`random_masking` gives them."""
        encoder, prefix = self.encoder, self.encoder.config.num_prefix_tokens
        encoder.check_input(images)
        pos_embed = typing.cast(Tensor, encoder.pos_embed)  # a parameter or a buffer
        patches = encoder.patch_embed(images) + pos_embed[:, prefix:]
        kept, mask, restore = random_masking(patches, self.mask_ratio, noise)
        if encoder.config.class_token:
            cls = (encoder.cls_token + pos_embed[:, :1]).expand(kept.shape[0], -1, -1)
            kept = torch.cat([cls, kept], dim=1)
        x = encoder.pos_dropout(kept)
        for block in encoder.blocks:
            x = block(x)
        return encoder.norm(x), mask, restore

    def decode(self, encoded: Tensor, restore: Tensor) -> Tensor:
        """Pixel predictions for every patch (B, N, C*P*P) from the encoded visible tokens."""
        prefix = self.encoder.config.num_prefix_tokens
        x = self.decoder_embed(encoded)
        batch, count = restore.shape
        hidden = self.mask_token.expand(batch, count - (x.shape[1] - prefix), -1)
        shuffled = torch.cat([x[:, prefix:], hidden], dim=1)
        patches = shuffled.gather(1, restore[:, :, None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :prefix], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, prefix:]

    def forward(self, images: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, predictions (B, N, C*P*P), mask (B, N), 1 where hidden)."""
        encoded, mask, restore = self.encode(images, noise)
        predictions = self.decode(encoded, restore)
        loss = normalised_pixel_loss(images, predictions, mask, self.encoder.config.patch_size, self.norm_pix_loss)
        return loss, predictions, mask

    @torch.no_grad()
    def reconstruct(self, images: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(the images with their hidden patches blanked, the visible patches with the decoder's predictions in the
        hidden places), both (B, C, H, W) in the images' scale: under the normalised-pixel loss each prediction takes
        its patch's own mean and spread back, as the paper's pictures do."""
        _, predictions, mask = self(images, noise)
        config = self.encoder.config
        patches = patchify(images, config.patch_size)
        if self.norm_pix_loss:
            mean, std = patch_statistics(patches)
            predictions = predictions * std + mean
        hidden = mask[..., None]
        visible = patches * (1 - hidden)
        pasted = visible + predictions * hidden
        return (
            unpatchify(visible, config.patch_size, config.grid_size),
            unpatchify(pasted, config.patch_size, config.grid_size),
        )
