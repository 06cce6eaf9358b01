"""Is a map faithful to the model? Deletion and insertion curves (Petsiuk, Das & Saenko, 2018, "RISE").

A map ranks the patches. Deletion replaces them with a baseline in that order, most important first, and
records the probability of the target class after each step: a faithful map makes it fall fast (a small area
under the curve). Insertion starts from the baseline and reveals the patches in the same order: a faithful map
makes the probability rise fast (a large area). A random order, seeded, is the yardstick: a map that does no
better than it says nothing about the model, however plausible it looks.

What a removed patch shows is the baseline. RISE's own protocol, the default here ("rise"), gives each curve its
own: deletion replaces a patch with the data's mean colour, which holds nothing of the image, and insertion
starts from the blurred image, whose colours the model has seen, and reveals the sharp patches on it. A blur
keeps each region's average colour, so deleting to it removes only the detail; on small images, where a
patch is a large part of the object, that average can still tell the class, and the deletion curve then
measures what the blur leaves rather than what the map ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vitkit.explain import maps as explain_maps
from vitkit.explain.maps import _targets, evaluating
from vitkit.model import VisionTransformer, ViTConfig

BASELINES = ("rise", "blur", "mean")
DEFAULT_BASELINE = "rise"  # deletion to the data's mean colour, insertion from the blurred image
RANDOM_ORDER = "random order"
PATCH_CONTRAST = "patch contrast (model-free)"
DEFAULT_STEPS = 16  # or one per patch, for models with fewer patches
SINGLE_MAP = "map"  # the name of the curves when one map tensor (not a mapping of them) is given


@dataclass(frozen=True)
class Curves:
    """Target-class probability after each step, per image: ``deletion`` and ``insertion`` (B, steps + 1).

    ``fractions`` (steps + 1,) is the share of the patches removed (deletion) or revealed (insertion) at each step,
    from 0 to 1; the areas under the curves are taken over it, so they lie in [0, 1].
    """

    fractions: Tensor
    deletion: Tensor
    insertion: Tensor

    @property
    def deletion_auc(self) -> Tensor:
        """(B,): area under each deletion curve (lower is better)."""
        return torch.trapezoid(self.deletion, self.fractions, dim=-1)

    @property
    def insertion_auc(self) -> Tensor:
        """(B,): area under each insertion curve (higher is better)."""
        return torch.trapezoid(self.insertion, self.fractions, dim=-1)


def baseline_images(
    images: Tensor, patch_size: Sequence[int], baseline: str = "blur", normalised: bool = False
) -> Tensor:
    """What a removed patch shows: the image blurred (Gaussian, sigma one patch) or the data's mean colour.

    The blur keeps each region's average colour and removes the detail a patch holds. The mean is one flat value
    per channel: zero for images ``normalised`` by the data's mean and std (the model's preprocessing), so that
    every image is compared with the same baseline, else the mean of the given images.
    """
    if baseline not in ("blur", "mean"):
        raise ValueError(f"baseline must be 'blur' or 'mean', got {baseline!r}")
    if baseline == "mean":
        if normalised:
            return torch.zeros_like(images)
        return images.mean(dim=(0, 2, 3), keepdim=True).expand_as(images).clone()
    from torchvision.transforms.functional import gaussian_blur

    sigma = float(max(patch_size))
    # Reflection padding needs a half-width below the image's side: the kernel is cut to fit small images.
    half = min(math.ceil(2 * sigma), min(images.shape[-2:]) - 1)
    return gaussian_blur(images, kernel_size=[2 * half + 1] * 2, sigma=[sigma] * 2)


def patch_contrast(model: VisionTransformer, images: Tensor, target: Tensor | None = None) -> Tensor:
    """(B, gh, gw): each patch's root-mean-square distance from the mean colour that deletion puts in its place.

    A yardstick from the image alone: it ranks first the patches whose deletion changes the model's input most,
    whatever the model has learned, so what a map gains over it is what the map knows of the model beyond the image.
    The mean colour is zero in a normalised input (the model's ``mean`` and ``std`` given), else the mean of
    ``images``, as in :func:`baseline_images`. ``model`` gives the patch grid; ``target`` is ignored.
    """
    config = model.config
    normalised = config.mean is not None and config.std is not None
    distance = (images - baseline_images(images, config.patch_size, "mean", normalised)).pow(2).mean(dim=1)
    (gh, gw), (ph, pw) = config.grid_size, config.patch_size
    patches = distance[:, : gh * ph, : gw * pw].reshape(len(images), gh, ph, gw, pw)  # whole patches only
    return patches.mean(dim=(2, 4)).sqrt().float().cpu()


# A map method: (model, images (B, C, H, W), target classes (B,)) -> (B, gh, gw) patch scores.
Method = Callable[[VisionTransformer, Tensor, Tensor], Tensor]
# The maps compared, by the name the report and the JSON file give them.
METHODS: dict[str, Method] = {
    "last-block attention": lambda model, images, target: explain_maps.last_block_attention(model, images),
    "attention rollout": lambda model, images, target: explain_maps.attention_rollout(model, images),
    "Grad-CAM": explain_maps.grad_cam,
    "transformer attribution": explain_maps.attention_attribution,
    PATCH_CONTRAST: patch_contrast,
}


def _ranks(ranking: Tensor) -> Tensor:
    """(B, gh, gw) scores -> (B, P): each patch's place in the order, 0 for the highest (ties in reading order)."""
    order = ranking.flatten(1).argsort(dim=1, descending=True, stable=True)
    return order.argsort(dim=1)


def _patch_mask(ranks: Tensor, count: int, config: ViTConfig) -> Tensor:
    """(..., P) ranks -> (..., 1, H, W) booleans: true on the pixels of the first ``count`` patches of the order."""
    chosen = (ranks < count).reshape(*ranks.shape[:-1], 1, *config.grid_size)
    ph, pw = config.patch_size
    pixels = chosen.repeat_interleave(ph, dim=-2).repeat_interleave(pw, dim=-1)
    # Pixels past the last whole patch (an image size not divisible by the patch size) are never changed.
    pad_h, pad_w = config.image_size[0] - pixels.shape[-2], config.image_size[1] - pixels.shape[-1]
    return F.pad(pixels, (0, pad_w, 0, pad_h), value=False)


def deletion_insertion(
    model: VisionTransformer,
    images: Tensor,
    maps: Tensor | Mapping[str, Tensor],
    steps: int | None = None,
    baseline: str = DEFAULT_BASELINE,
    target: int | Sequence[int] | Tensor | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    random_orders: int = 1,
) -> dict[str, Curves]:
    """Deletion and insertion curves of each map (B, gh, gw) and of a random patch order, per image.

    ``maps``: one tensor (its curves are named ``"map"``) or maps by method name. The patches are removed or
    revealed in ``steps`` equal steps (at most the number of patches; default 16 or one per patch), replaced by
    ``baseline``: "rise" (deletion to the data's mean colour, insertion from the blurred image), "blur" or "mean"
    for both curves (see :func:`baseline_images`; the mean is zero when the model's config has the data's mean
    and std, which normalised the images). ``target`` is the class whose probability is recorded (default: the
    one predicted on the whole image). The random order's curves are the mean of ``random_orders`` permutations
    per image, drawn from ``seed``: more of them estimate the yardstick with less noise. Every step is one forward
    pass for all images, maps and orders together (``batch_size`` images at a time if given). Returns the curves
    by name, ``"random order"`` last.
    """
    config = model.config
    named = {SINGLE_MAP: maps} if isinstance(maps, Tensor) else dict(maps)
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if not isinstance(random_orders, int) or random_orders < 1:
        raise ValueError(f"random_orders must be an int of at least 1, got {random_orders!r}")
    if RANDOM_ORDER in named:
        raise ValueError(f"{RANDOM_ORDER!r} is the name of the random order's curves; give the map another name")
    batch, patches = images.shape[0], config.num_patches
    for name, ranking in named.items():
        if ranking.shape != (batch, *config.grid_size):
            raise ValueError(
                f"map {name!r} has shape {tuple(ranking.shape)}; expected (batch, gh, gw) = "
                f"{(batch, *config.grid_size)} for these {batch} images and this model's patch grid"
            )
    steps = min(DEFAULT_STEPS, patches) if steps is None else steps
    if not isinstance(steps, int) or not 1 <= steps <= patches:
        raise ValueError(f"steps must be an int from 1 to the number of patches ({patches}), got {steps!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (or None for all images at once), got {batch_size}")
    device = next(model.parameters()).device
    images = images.to(device)
    generator = torch.Generator().manual_seed(seed)
    # A random permutation is its own ranks: (random_orders, B, P).
    random_ranks = torch.rand(random_orders, batch, patches, generator=generator).argsort(dim=-1)
    ranks = torch.cat([*(_ranks(ranking.cpu())[None] for ranking in named.values()), random_ranks]).to(device)
    normalised = config.mean is not None and config.std is not None
    deleted_to = baseline_images(images, config.patch_size, "mean" if baseline == "rise" else baseline, normalised)
    inserted_on = baseline_images(images, config.patch_size, "blur", normalised) if baseline == "rise" else deleted_to
    counts = [round(s * patches / steps) for s in range(steps + 1)]
    chunk = batch_size or batch
    deletion, insertion = [], []
    with evaluating(model), torch.no_grad():
        targets = _targets(target, torch.cat([model(images[i : i + chunk]) for i in range(0, batch, chunk)]))
        for start in range(0, batch, chunk):
            part = slice(start, start + chunk)
            probabilities = _curves(model, images[part], deleted_to[part], inserted_on[part], ranks[:, part], counts,
                                    targets[part])  # fmt: skip
            deletion.append(probabilities[0])
            insertion.append(probabilities[1])
    fractions = torch.tensor(counts, dtype=torch.float64) / patches
    deleted, inserted = torch.cat(deletion, dim=1), torch.cat(insertion, dim=1)  # (orders, B, S + 1)
    curves = {name: Curves(fractions, deleted[i], inserted[i]) for i, name in enumerate(named)}
    randoms = slice(len(named), None)
    curves[RANDOM_ORDER] = Curves(fractions, deleted[randoms].mean(dim=0), inserted[randoms].mean(dim=0))
    return curves


def _curves(model: VisionTransformer, images: Tensor, deleted_to: Tensor, inserted_on: Tensor, ranks: Tensor,
            counts: list[int], targets: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(orders, B, S + 1) deletion and insertion probabilities for one chunk of images; ``ranks`` is (orders, B, P).

    Deletion puts ``deleted_to`` in place of the patches, insertion puts the patches on ``inserted_on``."""
    num_orders, batch = ranks.shape[:2]
    index = targets.repeat(2 * num_orders)[:, None]
    deletion, insertion = [], []
    for count in counts:
        mask = _patch_mask(ranks, count, model.config)  # (orders, B, 1, H, W)
        deleted = torch.where(mask, deleted_to, images)  # the first patches of the order gone
        inserted = torch.where(mask, images, inserted_on)  # only the first patches of the order there
        both = torch.cat([deleted.flatten(0, 1), inserted.flatten(0, 1)])  # (2 * orders * B, C, H, W)
        probabilities = model(both).float().softmax(dim=1).gather(1, index).squeeze(1).double().cpu()
        deletion.append(probabilities[: num_orders * batch].reshape(num_orders, batch))
        insertion.append(probabilities[num_orders * batch :].reshape(num_orders, batch))
    return torch.stack(deletion, dim=-1), torch.stack(insertion, dim=-1)


def compare_methods(
    model: VisionTransformer,
    images: Tensor,
    steps: int | None = None,
    baseline: str = DEFAULT_BASELINE,
    target: int | Sequence[int] | Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
    random_orders: int = 1,
) -> dict[str, Curves]:
    """Deletion and insertion curves of every map in :data:`METHODS` and of a random order, on the same images.

    The maps explain ``target`` (default: the predicted class), and the curves record its probability. Maps and
    curves are computed ``batch_size`` images at a time. Besides the random order, the model-free
    :func:`patch_contrast` is among the maps: a yardstick for how much of a map's gain the image alone explains.
    """
    device = next(model.parameters()).device
    with evaluating(model), torch.no_grad():
        logits = torch.cat([model(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)])
    targets = _targets(target, logits)  # fixed here, so that the maps and the curves explain the same class
    named = {
        name: torch.cat(
            [
                method(model, images[i : i + batch_size].to(device), targets[i : i + batch_size])
                for i in range(0, len(images), batch_size)
            ]
        )  # fmt: skip
        for name, method in METHODS.items()
    }
    return deletion_insertion(model, images, named, steps, baseline, targets, seed, batch_size, random_orders)


def summary(curves: Mapping[str, Curves]) -> dict[str, dict[str, float]]:
    """Mean deletion and insertion AUC over the images, by method: what the report and the JSON file show."""
    return {
        name: {
            "deletion_auc": c.deletion_auc.mean().item(),
            "insertion_auc": c.insertion_auc.mean().item(),
            "images": int(c.deletion.shape[0]),
        }  # fmt: skip
        for name, c in curves.items()
    }
