"""Deletion and insertion curves on a model whose right order is known, and the baselines they replace patches with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from vitkit import VisionTransformer
from vitkit.explain import deletion_insertion
from vitkit.explain.faithfulness import (
    METHODS,
    PATCH_CONTRAST,
    RANDOM_ORDER,
    baseline_images,
    patch_contrast,
    summary,
)

PATCH = 4  # the one patch the model reads: row 1, column 1 of a 2 x 3 grid of 2 x 2 patches


class OnePatchModel(VisionTransformer):
    """Two classes; logit 0 is the sum of patch ``PATCH``'s pixels, logit 1 is 0: nothing else matters."""

    def forward(self, images: Tensor) -> Tensor:
        patch = images[:, 0, 2:4, 2:4].sum(dim=(1, 2))
        return torch.stack([patch, torch.zeros_like(patch)], dim=1)


def one_patch_model(**preprocessing: tuple[float, ...]) -> OnePatchModel:
    return OnePatchModel(image_size=(4, 6), patch_size=2, in_channels=1, num_classes=2, hidden_dim=8, depth=1,
                         num_heads=1, mlp_dim=8, **preprocessing).eval()  # fmt: skip


def images_with_a_bright_patch(batch: int = 4) -> Tensor:
    torch.manual_seed(0)
    images = torch.rand(batch, 1, 4, 6) * 0.5
    images[:, :, 2:4, 2:4] += 1.0
    return images


def test_deleting_the_patch_the_model_reads_drops_the_probability_at_once() -> None:
    model, images = one_patch_model(), images_with_a_bright_patch()
    first = torch.zeros(4, 2, 3)
    first[:, 1, 1] = 1.0  # the right patch first, the rest in reading order
    last = 1.0 - first  # the right patch last
    curves = deletion_insertion(model, images, {"first": first, "last": last}, steps=6, baseline="mean", seed=3)
    assert list(curves) == ["first", "last", RANDOM_ORDER]
    # By hand: the probability of class 0 is sigmoid(sum of the patch's pixels); removed, the patch holds the images'
    # mean pixel in all four places.
    whole = torch.sigmoid(images[:, 0, 2:4, 2:4].sum(dim=(1, 2))).double()
    gone = torch.sigmoid(4 * images.mean()).double().expand(4)
    deleted, inserted = curves["first"].deletion, curves["first"].insertion
    torch.testing.assert_close(curves["first"].fractions, torch.arange(7, dtype=torch.float64) / 6)
    torch.testing.assert_close(deleted, torch.stack([whole] + [gone] * 6, dim=1))
    torch.testing.assert_close(inserted, torch.stack([gone] + [whole] * 6, dim=1))
    torch.testing.assert_close(curves["last"].deletion, torch.stack([whole] * 6 + [gone], dim=1))
    # Areas by the trapezoid rule over steps of 1/6: half a step at the start value, the rest at the end value.
    torch.testing.assert_close(curves["first"].deletion_auc, (whole + 11 * gone) / 12)
    torch.testing.assert_close(curves["first"].insertion_auc, (gone + 11 * whole) / 12)
    torch.testing.assert_close(curves["last"].deletion_auc, (11 * whole + gone) / 12)
    # The random order removes the patch at some step: one drop, between the best and the worst order.
    random = curves[RANDOM_ORDER]
    assert ((random.deletion[:, :-1] - random.deletion[:, 1:]).abs() > 1e-9).sum(dim=1).tolist() == [1] * 4
    assert bool((random.deletion_auc >= curves["first"].deletion_auc - 1e-12).all())
    assert bool((random.deletion_auc <= curves["last"].deletion_auc + 1e-12).all())
    again = deletion_insertion(model, images, first, steps=6, baseline="mean", seed=3, batch_size=3)
    torch.testing.assert_close(again[RANDOM_ORDER].deletion, random.deletion)  # seeded, and batching changes nothing
    torch.testing.assert_close(again["map"].insertion, inserted)
    scores = summary(curves)
    assert scores["first"]["deletion_auc"] == pytest.approx(curves["first"].deletion_auc.mean().item())
    assert scores["first"]["images"] == 4


def test_patch_contrast_is_each_patchs_distance_from_the_mean_colour() -> None:
    # A normalised input (the model has a mean and std): the mean colour is 0. Patch (0, 2) alternates +-1, patch
    # (1, 0) is 2 everywhere, the rest 0: root-mean-square distances 1 and 2, whatever the target.
    images = torch.zeros(1, 1, 4, 6)
    images[0, 0, 0:2, 4:6] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    images[0, 0, 2:4, 0:2] = 2.0
    expected = torch.tensor([[[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]]])
    torch.testing.assert_close(patch_contrast(one_patch_model(mean=(0.5,), std=(0.25,)), images), expected)
    # Without normalisation, the distance is from the images' mean colour, 8 / 24 = 1/3 here (and shifting every
    # pixel changes nothing): (+-1 - 1/3) squared averages 10/9, (2 - 1/3) is 5/3, the flat patches are 1/3 away.
    third = 1 / 3
    unnormalised = torch.tensor([[[third, third, 10**0.5 * third], [5 * third, third, third]]])
    torch.testing.assert_close(patch_contrast(one_patch_model(), images), unnormalised)
    torch.testing.assert_close(patch_contrast(one_patch_model(), images + 0.75), unnormalised)
    assert METHODS[PATCH_CONTRAST] is patch_contrast  # scored beside the maps by compare_methods


def test_fewer_steps_than_patches_remove_several_at_a_time() -> None:
    model, images = one_patch_model(), images_with_a_bright_patch(2)
    ranking = torch.arange(6.0).flip(0).reshape(1, 2, 3).expand(2, -1, -1)  # reading order: the patch is 5th
    curves = deletion_insertion(model, images, ranking, steps=3, baseline="mean")["map"]
    torch.testing.assert_close(curves.fractions, torch.tensor([0, 1 / 3, 2 / 3, 1], dtype=torch.float64))
    dropped = curves.deletion[:, :-1] - curves.deletion[:, 1:]
    assert bool((dropped[:, 2] > 0.1).all()) and bool((dropped[:, :2].abs() < 1e-9).all())  # gone with the 3rd pair


def test_the_blur_baseline_is_scipys_gaussian_filter() -> None:
    from scipy.ndimage import gaussian_filter

    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 20)
    ours = baseline_images(images, (3, 2), "blur").numpy()
    # sigma of one patch's longer side, cut at two sigmas; torch's reflection is scipy's "mirror".
    expected = gaussian_filter(images.numpy(), sigma=(0, 0, 3, 3), mode="mirror", truncate=2.0)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    flat = baseline_images(images, (3, 2), "mean")
    torch.testing.assert_close(flat[1, :, 5, 7], images.mean(dim=(0, 2, 3)))
    # Images normalised by the data's statistics: the data's mean colour is zero, whichever images are explained.
    torch.testing.assert_close(baseline_images(images, (3, 2), "mean", normalised=True), torch.zeros_like(images))


def test_rise_protocol_deletes_to_the_data_mean_and_inserts_on_the_blurred_image() -> None:
    from scipy.ndimage import gaussian_filter

    model, images = one_patch_model(mean=(0.5,), std=(0.25,)), images_with_a_bright_patch()
    first = torch.zeros(4, 2, 3)
    first[:, 1, 1] = 1.0
    curves = deletion_insertion(model, images, first, steps=6)["map"]  # baseline="rise" is the default
    # By hand: the model normalises with the data's statistics, so the deleted patch holds zeros, logit 0 is 0 and
    # the probability of class 0 is one half; insertion starts from the blur (scipy's, as above) of each image, its
    # kernel cut to a half-width of 3 pixels (1.5 sigmas) to fit the 4-pixel-high images.
    blurred = gaussian_filter(images.numpy(), sigma=(0, 0, 2, 2), mode="mirror", truncate=1.5)
    start = torch.sigmoid(torch.from_numpy(blurred[:, 0, 2:4, 2:4].sum(axis=(1, 2)))).double()
    torch.testing.assert_close(curves.deletion[:, -1], torch.full((4,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(curves.insertion[:, 0], start, atol=1e-6, rtol=1e-6)
    whole = torch.sigmoid(images[:, 0, 2:4, 2:4].sum(dim=(1, 2))).double()
    torch.testing.assert_close(curves.insertion[:, 1], whole)  # the patch revealed first


def test_the_random_order_is_the_mean_of_several_permutations() -> None:
    model, images = one_patch_model(), images_with_a_bright_patch()
    orders = 5
    random = deletion_insertion(model, images, {}, steps=6, baseline="mean", random_orders=orders)[RANDOM_ORDER]
    whole = torch.sigmoid(images[:, 0, 2:4, 2:4].sum(dim=(1, 2))).double()[:, None]
    gone = torch.sigmoid(4 * images.mean()).double()
    # Each permutation removes the one patch that matters at one step: after each step, the share of the orders
    # that have removed it is a multiple of 1/5, rising to 1, and it is not the same step for every order.
    share = (whole - random.deletion) / (whole - gone)
    torch.testing.assert_close(share * orders, (share * orders).round())
    assert bool((share[:, -1] == 1).all()) and bool(((share > 0) & (share < 1)).any())
    assert bool((share[:, 1:] >= share[:, :-1] - 1e-12).all())


def test_bad_arguments_are_named() -> None:
    model, images = one_patch_model(), images_with_a_bright_patch(2)
    ranking = torch.rand(2, 2, 3)
    with pytest.raises(ValueError, match=r"expected \(batch, gh, gw\) = \(2, 2, 3\)"):
        deletion_insertion(model, images, torch.rand(2, 3, 2))
    with pytest.raises(ValueError, match="steps must be an int from 1 to the number of patches \\(6\\)"):
        deletion_insertion(model, images, ranking, steps=7)
    with pytest.raises(ValueError, match="baseline must be one of"):
        deletion_insertion(model, images, ranking, baseline="zeros")
    with pytest.raises(ValueError, match="random_orders must be an int of at least 1, got 0"):
        deletion_insertion(model, images, ranking, random_orders=0)
    with pytest.raises(ValueError, match="the random order's curves"):
        deletion_insertion(model, images, {RANDOM_ORDER: ranking})
