"""Masked-autoencoder pre-training (vitkit.pretrain.mae): masking, the normalised-pixel loss, and learning."""

from __future__ import annotations

import pytest
import torch

from vitkit.model import VisionTransformer
from vitkit.pretrain.mae import MaskedAutoencoder, normalised_pixel_loss, random_masking


def test_masking_keeps_the_tokens_of_lowest_noise_and_marks_the_rest() -> None:
    tokens = torch.arange(8.0).view(1, 8, 1).expand(1, 8, 3)  # token i holds the value i
    noise = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.8, 0.7, 0.6, 0.95]])
    kept, mask, restore = random_masking(tokens, 0.75, noise)
    # 8 * (1 - 0.75) = 2 tokens kept: those of noise 0.1 (token 1) and 0.3 (token 3), in that order.
    assert kept[0, :, 0].tolist() == [1.0, 3.0]
    assert mask.tolist() == [[1, 0, 1, 0, 1, 1, 1, 1]]
    shuffled = tokens.gather(1, noise.argsort(dim=1)[:, :, None].expand(-1, -1, 3))
    assert torch.equal(shuffled.gather(1, restore[:, :, None].expand(-1, -1, 3)), tokens)  # restore undoes it


def test_the_loss_counts_only_hidden_patches_against_normalised_pixels() -> None:
    # Four 2x2 patches, each [0, 2 / 0, 2]: mean 1, unbiased variance 4/3, so normalised pixels are +-sqrt(3)/2.
    images = torch.tensor([[0.0, 2.0], [0.0, 2.0]]).repeat(2, 2).view(1, 1, 4, 4)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    predictions = torch.zeros(1, 4, 4)
    predictions[0, 1:3] = 100.0  # visible patches: any prediction, no loss
    expected = 1 / (4 / 3 + 1e-6)  # the squared normalised pixel, averaged
    assert normalised_pixel_loss(images, predictions, mask, (2, 2)).item() == pytest.approx(expected, rel=1e-6)
    # Against the pixels themselves: (0 + 4 + 0 + 4) / 4 per hidden patch.
    assert normalised_pixel_loss(images, predictions, mask, (2, 2), normalise=False).item() == pytest.approx(2.0)


def test_the_autoencoder_learns_to_reconstruct_and_trains_the_encoder() -> None:
    torch.manual_seed(0)
    encoder = VisionTransformer(image_size=8, patch_size=2, in_channels=1, num_classes=0, hidden_dim=32, depth=2,
                                num_heads=2, mlp_dim=64)  # fmt: skip
    mae = MaskedAutoencoder(encoder, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    images = torch.randn(8, 1, 8, 8).cumsum(dim=3)  # smooth rows: hidden pixels follow from their neighbours
    noise = torch.rand(8, 16)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, predictions, mask = mae(images, noise)
        optimizer.zero_grad()
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert predictions.shape == (8, 16, 4) and mask.sum().item() == 8 * 12  # 75 % of 16 patches hidden
    assert encoder.patch_embed.proj.weight.grad.abs().sum() > 0 and encoder.blocks[0].attn.q.weight.grad is not None
    assert losses[-1] < 0.85 * losses[0]  # (predicting zeros scores 0.75: the targets' variance)


def test_reconstruction_keeps_visible_patches_and_gives_hidden_ones_their_own_mean_and_spread() -> None:
    images = torch.tensor([[0.0, 2.0], [0.0, 2.0]]).repeat(2, 2).view(1, 1, 4, 4)  # four 2x2 patches [0, 2 / 0, 2]
    encoder = VisionTransformer(image_size=4, patch_size=2, in_channels=1, num_classes=0, hidden_dim=16, depth=1,
                                num_heads=2, mlp_dim=32)  # fmt: skip
    mae = MaskedAutoencoder(encoder, decoder_dim=16, decoder_depth=1, decoder_heads=2, mask_ratio=0.5).eval()
    noise = torch.tensor([[0.9, 0.1, 0.2, 0.8]])  # patches 0 and 3 (top left, bottom right) hidden
    with torch.no_grad():
        mae.decoder_pred.weight.zero_()
        mae.decoder_pred.bias.zero_()  # predicts normalised pixels of 0: each hidden patch at its own mean, 1
        masked, pasted = mae.reconstruct(images, noise)
        expected = images.clone()
        expected[..., :2, :2] = expected[..., 2:, 2:] = 1.0
        torch.testing.assert_close(pasted, expected, atol=1e-6, rtol=0)
        blanked = images.clone()
        blanked[..., :2, :2] = blanked[..., 2:, 2:] = 0.0
        assert torch.equal(masked, blanked)
        # The pixels of the normalised target itself come back as the image, up to the variance's 1e-6.
        mae.decoder_pred.bias.copy_(torch.tensor([-1.0, 1.0, -1.0, 1.0]) / (4 / 3) ** 0.5)
        torch.testing.assert_close(mae.reconstruct(images, noise)[1], images, atol=1e-5, rtol=0)


def test_without_normalised_pixels_the_decoder_predicts_and_is_scored_on_the_pixels_themselves() -> None:
    images = torch.tensor([[0.0, 2.0], [0.0, 2.0]]).repeat(2, 2).view(1, 1, 4, 4)  # four 2x2 patches [0, 2 / 0, 2]
    encoder = VisionTransformer(image_size=4, patch_size=2, in_channels=1, num_classes=0, hidden_dim=16, depth=1,
                                num_heads=2, mlp_dim=32)  # fmt: skip
    mae = MaskedAutoencoder(encoder, decoder_dim=16, decoder_depth=1, decoder_heads=2, mask_ratio=0.5,
                            norm_pix_loss=False).eval()  # fmt: skip
    noise = torch.tensor([[0.9, 0.1, 0.2, 0.8]])  # patches 0 and 3 hidden
    with torch.no_grad():
        mae.decoder_pred.weight.zero_()
        mae.decoder_pred.bias.copy_(torch.tensor([1.0, 1.0, 1.0, 3.0]))  # every patch predicted [1, 1 / 1, 3]
        loss, _, mask = mae(images, noise)
        assert mask.tolist() == [[1, 0, 0, 1]]
        assert loss.item() == pytest.approx((1 + 1 + 1 + 1) / 4)  # each pixel off by 1, in the images' scale
        expected = images.clone()
        expected[..., :2, :2] = expected[..., 2:, 2:] = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
        torch.testing.assert_close(mae.reconstruct(images, noise)[1], expected, atol=1e-6, rtol=0)
