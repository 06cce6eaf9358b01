"""Original ViT .npz checkpoints: written with numpy from a model of known weights, read by vitkit and by timm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from interop_helpers import TOLERANCE, max_logit_difference, random_images, randomise, write_original_npz

from vitkit import VisionTransformer
from vitkit.interop import load_jax_npz, to_timm
from vitkit.model import get_config

SMALL = dict(image_size=32, patch_size=8, hidden_dim=32, depth=2, num_heads=4, mlp_dim=64, num_classes=5)


def test_npz_loads_exactly_and_timm_reads_the_same_file_to_the_same_logits(tmp_path: Path) -> None:
    import timm
    from timm.models.vision_transformer import _load_weights

    torch.manual_seed(0)
    known = randomise(VisionTransformer(**SMALL))
    write_original_npz(known, tmp_path / "vit.npz")
    images = random_images(3, 32, 32)
    loaded = load_jax_npz(tmp_path / "vit.npz")
    assert (loaded.config.crop_mode, loaded.config.mean) == ("squash", (0.5,) * 3)  # the JAX code's preprocessing
    assert max_logit_difference(loaded, known, images) <= TOLERANCE
    peer = timm.create_model("vit_base_patch16_224", pretrained=False, **to_timm(known)[1])
    _load_weights(peer, str(tmp_path / "vit.npz"))
    assert max_logit_difference(peer, loaded, images) <= TOLERANCE


@pytest.mark.parametrize(
    "options", [dict(pre_logits_dim=16), dict(class_token=False, pool="mean"), dict(image_size=48, patch_size=16)]
)
def test_npz_with_pre_logits_global_pooling_or_other_sizes(tmp_path: Path, options: dict) -> None:
    torch.manual_seed(0)
    known = randomise(VisionTransformer(**{**SMALL, **options}))
    write_original_npz(known, tmp_path / "vit.npz")
    size = known.image_size
    assert max_logit_difference(load_jax_npz(tmp_path / "vit.npz"), known, random_images(2, *size)) <= TOLERANCE


def test_fixed_sincos_positions_are_big_visions_own_table(tmp_path: Path) -> None:
    from vit_pytorch.simple_vit import posemb_sincos_2d  # big_vision's layout, written independently

    config = get_config("vit_nano_patch4_32", pos_embed="sincos")
    known = randomise(VisionTransformer(config))
    table = torch.cat([torch.zeros(1, config.hidden_dim), posemb_sincos_2d(8, 8, config.hidden_dim)]).unsqueeze(0)
    assert not torch.allclose(table, known.pos_embed, atol=1e-3)  # vitkit's own table is another one
    known.pos_embed = table
    write_original_npz(known, tmp_path / "vit.npz", with_positions=False)
    with pytest.raises(ValueError, match="pass name="):
        load_jax_npz(tmp_path / "vit.npz")
    loaded = load_jax_npz(tmp_path / "vit.npz", name="vit_nano_patch4_32")  # the name gives the image size
    torch.testing.assert_close(loaded.pos_embed, table, atol=1e-6, rtol=0)
    assert max_logit_difference(loaded, known, random_images(2, 32, 32)) <= TOLERANCE
    with pytest.raises(ValueError, match="no 'Transformer/encoderblock_9/.*a 12-block ViT needs"):
        load_jax_npz(tmp_path / "vit.npz", name="vit_small_patch16_224")  # a file wrong for the named architecture


def test_truncated_or_wrong_files_are_explained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    write_original_npz(VisionTransformer(**SMALL), tmp_path / "vit.npz")
    data = (tmp_path / "vit.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz is not a readable .npz checkpoint"):
        load_jax_npz(tmp_path / "cut.npz")
    arrays = dict(np.load(tmp_path / "vit.npz"))
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    arrays["Transformer/encoderblock_0/LayerScale_0/scale"] = np.ones(32, np.float32)
    np.savez(tmp_path / "odd.npz", **arrays)
    with pytest.raises(ValueError, match="no 'Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias'"):
        load_jax_npz(tmp_path / "odd.npz")
