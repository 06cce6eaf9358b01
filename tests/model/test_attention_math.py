"""The seed's math, checked against a hand-written reference."""

import torch
from attention_reference import reference_attention

from vitkit import VisionTransformer
from vitkit.model import patchify


def test_multi_head_attention_matches_reference():
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=8, patch_size=2, in_channels=1, num_classes=3, hidden_dim=24, depth=1, num_heads=3, mlp_dim=48
    )
    attn = model.blocks[0].attn.eval()
    for layer in (attn.q, attn.k, attn.v, attn.proj):
        torch.nn.init.normal_(layer.bias)  # non-zero biases, so they are checked too
    x = torch.randn(2, 17, 24)
    expected_out, expected_p = reference_attention(attn, x)
    torch.testing.assert_close(attn(x), expected_out, atol=1e-5, rtol=1e-5)
    out, probabilities = attn(x, return_attention=True)  # the spelled-out softmax gives the same output
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probabilities, expected_p, atol=1e-6, rtol=1e-5)


def test_q_k_v_are_three_distinct_learnable_layers():
    model = VisionTransformer(
        image_size=8, patch_size=4, in_channels=1, num_classes=2, hidden_dim=16, depth=1, num_heads=2, mlp_dim=32
    )
    attn = model.blocks[0].attn
    layers = [attn.q, attn.k, attn.v]
    assert all(isinstance(layer, torch.nn.Linear) for layer in layers)
    assert len({id(layer.weight) for layer in layers}) == 3
    assert not torch.equal(attn.q.weight, attn.k.weight)
    assert all(layer.weight.requires_grad for layer in layers)


def test_patch_embedding_is_a_linear_projection_of_flattened_patches():
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=(8, 12), patch_size=(4, 2), num_classes=2, hidden_dim=16, depth=1, num_heads=2, mlp_dim=32
    )  # three channels, the default
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, (4, 2))
    assert patches.shape == (2, 2 * 6, 3 * 4 * 2)
    # The top-left patch is the first row of the sequence, flattened channel by channel.
    torch.testing.assert_close(patches[0, 0], images[0, :, :4, :2].flatten())
    proj = model.patch_embed.proj
    linear = patches @ proj.weight.flatten(1).T + proj.bias
    torch.testing.assert_close(model.patch_embed(images), linear, atol=1e-5, rtol=1e-5)


def test_encoder_block_is_pre_norm_with_residuals():
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=8, patch_size=4, in_channels=1, num_classes=2, hidden_dim=16, depth=1, num_heads=2, mlp_dim=32
    ).eval()
    block = model.blocks[0]
    x = torch.randn(3, 5, 16)
    after_attention = x + block.attn(block.norm1(x))
    expected = after_attention + block.mlp(block.norm2(after_attention))
    torch.testing.assert_close(block(x), expected)
    mlp = block.mlp
    torch.testing.assert_close(mlp(x), mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x))))
