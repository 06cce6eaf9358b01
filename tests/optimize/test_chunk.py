"""The MLP in chunks of rows: the same float32 numbers, in the chunk sizes worked out by hand."""

from __future__ import annotations

import torch

import vitkit
from vitkit.optimize.chunk import MAX_CHUNK_BYTES, ChunkedMLP, chunk_mlps


def small_model() -> vitkit.VisionTransformer:
    torch.manual_seed(0)
    return vitkit.VisionTransformer(image_size=8, patch_size=4, in_channels=1, num_classes=3, hidden_dim=16,
                                    depth=2, num_heads=2, mlp_dim=64).eval()  # fmt: skip


def test_chunks_of_rows_give_the_same_numbers_in_hand_worked_sizes() -> None:
    model = small_model()
    mlp = model.blocks[0].mlp
    # 64 hidden float32 values are 256 bytes a row: 1,024 bytes hold 4 rows, so 2 x 5 = 10 rows run as 4, 4 and 2.
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        expected = mlp(x)
    chunked = ChunkedMLP(mlp, max_bytes=1024)
    seen = []
    chunked.fc1.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape)))
    with torch.inference_mode():
        out = chunked(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert seen == [(4, 16), (4, 16), (2, 16)]
    assert out.shape == (2, 5, 16)
    # Below the budget the MLP runs once, on the tensor as it is.
    seen.clear()
    with torch.inference_mode():
        chunked(x[:1, :4])
    assert seen == [(1, 4, 16)]
    # The layers are the MLP's own, under their own names (checkpoint keys and quantization see them as before).
    assert chunked.fc1 is mlp.fc1 and chunked.fc2 is mlp.fc2
    assert list(chunked.state_dict()) == list(mlp.state_dict())


def test_chunked_model_keeps_logits_and_gradients() -> None:
    model, images = small_model(), torch.randn(6, 1, 8, 8)
    chunked = chunk_mlps(small_model(), max_bytes=3 * 64 * 4)  # 3 rows a chunk: 6 images x 5 tokens -> 10 chunks
    assert all(isinstance(block.mlp, ChunkedMLP) for block in chunked.blocks)
    torch.testing.assert_close(chunked(images), model(images), atol=1e-6, rtol=0)
    chunked(images).sum().backward()
    model(images).sum().backward()
    torch.testing.assert_close(chunked.blocks[0].mlp.fc1.weight.grad, model.blocks[0].mlp.fc1.weight.grad)


def test_optimize_chunks_on_the_cpu_with_a_budget_below_the_mmap_threshold() -> None:
    fast = vitkit.optimize(small_model())
    assert all(isinstance(block.mlp, ChunkedMLP) for block in fast.blocks)
    assert not isinstance(fast.blocks[0].mlp.fc1, torch.nn.Linear)  # quantized inside the chunked MLP
    # glibc's largest dynamic mmap threshold is 32 MiB (4 * 1024 * 1024 * sizeof(long) on 64-bit systems)
    assert MAX_CHUNK_BYTES <= 32 * 2**20 // 2
