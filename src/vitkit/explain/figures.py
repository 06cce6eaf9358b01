"""Pictures of the arrays that ``maps`` computes, as bare matplotlib Figures (no pyplot state: headless, thread-safe).

Images come in as the model saw them, un-normalised for display by :func:`display_image`; heat maps are drawn
over them at the patch grid's resolution, so each coloured square is one token.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from vitkit.explain.faithfulness import RANDOM_ORDER, Curves
from vitkit.io import atomic_path

HEAT = "inferno"


def display_image(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A preprocessed (C, H, W) image back in [0, 1] as (H, W) or (H, W, 3), the way imshow takes it."""
    pixels = image.detach().float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    array = pixels.clamp(0, 1).numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def save_png(fig: Figure, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _overlay(
    fig: Figure, ax, image: np.ndarray, heat: np.ndarray, label: str | None = None, vmax: float | None = None
) -> Any:
    """``heat`` (gh, gw) over ``image``, one square per patch (colours from 0 to ``vmax``, default the map's
    largest value), with a colour bar when ``label`` is given; returns the drawn map."""
    _show(ax, image)
    height, width = image.shape[:2]
    drawn = ax.imshow(heat, cmap=HEAT, alpha=0.6, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                      interpolation="nearest", vmin=0, vmax=vmax)  # fmt: skip
    if label is not None:
        fig.colorbar(drawn, ax=ax, shrink=0.8, label=label)
    return drawn


def _square_layout(count: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def patch_grid_figure(image: np.ndarray, patch_size: Sequence[int], class_token: bool = True) -> Figure:
    """Step 1 of the seed as a picture: the image cut into patches, each with its token's index."""
    height, width = image.shape[:2]
    ph, pw = patch_size
    gh, gw = height // ph, width // pw
    fig = Figure(figsize=(6, 6.4), layout="constrained")
    ax = fig.subplots()
    _show(ax, image)
    for row in range(gh + 1):
        ax.axhline(row * ph - 0.5, color="tab:cyan", linewidth=1)
    for col in range(gw + 1):
        ax.axvline(col * pw - 0.5, color="tab:cyan", linewidth=1)
    first = 1 if class_token else 0
    size = max(5, min(12, 160 / max(gh, gw)))
    for index in range(gh * gw):
        row, col = divmod(index, gw)
        label = dict(boxstyle="round,pad=0.1", fc="black", alpha=0.5, lw=0)
        ax.text(col * pw + pw / 2 - 0.5, row * ph + ph / 2 - 0.5, str(first + index), ha="center", va="center",
                fontsize=size, color="white", bbox=label)  # fmt: skip
    cls = "token 0 is the CLS token, so patches start at 1" if class_token else "no CLS token: patches start at 0"
    ax.set_title(f"{gh} x {gw} patches of {ph} x {pw} pixels, read row by row\n({cls})")
    return fig


def rollout_figure(image: np.ndarray, rollout: np.ndarray, predictions: Sequence[tuple[str, float]],
                   title: str = "attention rollout") -> Figure:  # fmt: skip
    """The image, the rollout over it, and the top predictions beside it."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, middle, right = fig.subplots(1, 3, width_ratios=[1, 1.2, 1])
    _show(left, image)
    left.set_title("input (as the model sees it)")
    _overlay(fig, middle, image, rollout, label="share of the classifier's input")
    middle.set_title(title)
    rows = np.arange(len(predictions))[::-1]  # the best at the top
    right.barh(rows, [100 * p for _, p in predictions], color="tab:blue")
    right.set_yticks(rows, [name for name, _ in predictions])
    right.set(xlim=(0, 100), xlabel="probability (%)", title=f"top {len(predictions)} predictions")
    return fig


def heat_figure(image: np.ndarray, heat: np.ndarray, title: str, label: str) -> Figure:
    """One heat map over the image, with a colour bar: Grad-CAM and the like."""
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    _overlay(fig, ax, image, heat, label=label)
    ax.set_title(title)
    return fig


def head_attention_figure(image: np.ndarray, maps: np.ndarray, title: str, label: str = "attention weight") -> Figure:
    """One small overlay per head: (heads, gh, gw), all on one colour scale (0 to the largest weight of any head)
    shown by one colour bar, so that the heads' maps compare."""
    rows, cols = _square_layout(len(maps))
    fig = Figure(figsize=(max(5.0, 2.4 * cols + 1.4), max(3.5, 2.4 * rows + 0.6)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    vmax = float(np.max(maps)) or 1.0
    for head, (ax, heat) in enumerate(zip(axes, maps)):
        drawn = _overlay(fig, ax, image, heat, vmax=vmax)
        ax.set_title(f"head {head}", fontsize=9)
    for ax in axes[len(maps) :]:
        ax.set_axis_off()
    fig.colorbar(drawn, ax=axes.tolist(), shrink=0.8, label=label)
    fig.suptitle(title)
    return fig


def reconstruction_figure(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], mask_ratio: float) -> Figure:
    """One row per image: the image, what the masked autoencoder's encoder sees, and its reconstruction."""
    fig = Figure(figsize=(6, 2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    titles = ("held-out image", f"{round(100 * mask_ratio)} % of patches hidden", "reconstruction")
    for row, images in zip(axes, rows):
        for ax, image in zip(row, images):
            _show(ax, image)
    for ax, title in zip(axes[0], titles):
        ax.set_title(title)
    return fig


def distinct_colors(count: int) -> list[tuple[float, ...]]:
    """``count`` RGBA colours that all differ: tab10's, tab20's, else evenly spaced along turbo."""
    from matplotlib import colormaps

    if count <= 10:
        colors = colormaps["tab10"](np.arange(count))  # integers index a listed colormap's table exactly
    elif count <= 20:
        colors = colormaps["tab20"](np.arange(count))
    else:
        colors = colormaps["turbo"](np.linspace(0, 1, count))
    return [tuple(color) for color in colors]


def position_similarity_figure(similarity: np.ndarray) -> Figure:
    """For each patch position, its embedding's cosine similarity with every other position (ViT figure 7, centre)."""
    gh, gw = similarity.shape[:2]
    fig = Figure(figsize=(min(12, 1.0 * gw + 1.5), min(12, 1.0 * gh + 1.0)), layout="constrained")
    axes = fig.subplots(gh, gw, squeeze=False, gridspec_kw=dict(wspace=0.02, hspace=0.02))
    for (row, col), ax in np.ndenumerate(axes):
        drawn = ax.imshow(similarity[row, col], cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if col == 0:
            ax.set_ylabel(str(row + 1), fontsize=8)
        if row == gh - 1:
            ax.set_xlabel(str(col + 1), fontsize=8)
    fig.colorbar(drawn, ax=axes, shrink=0.6, label="cosine similarity")
    fig.suptitle("position embedding similarity (input patch row, column)")
    return fig


def attention_distance_figure(distances: np.ndarray, image_size: Sequence[int]) -> Figure:
    """Mean attention distance of every head per block, in pixels (ViT figure 7, right)."""
    depth, heads = distances.shape
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for head, color in enumerate(distinct_colors(heads)):
        ax.scatter(np.arange(depth), distances[:, head], s=18, color=color, label=f"head {head}")
    ax.set(xlabel="block (network depth)", ylabel="mean attention distance (pixels)",
           title="how far each head looks", ylim=(0, math.hypot(*image_size)))  # fmt: skip
    ax.set_xticks(np.arange(depth))
    ax.grid(alpha=0.3)
    if heads <= 12:
        ax.legend(fontsize=7, ncols=2)
    return fig


def embedding_filters_figure(filters: np.ndarray) -> Figure:
    """Principal components of the patch projection's filters as small images (ViT figure 7, left)."""
    count, channels = filters.shape[:2]
    rows, cols = _square_layout(count)
    fig = Figure(figsize=(max(5.0, 1.2 * cols + 0.4), max(3.5, 1.2 * rows + 0.8)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for index, ax in enumerate(axes):
        ax.set_axis_off()
        if index < count:
            component = filters[index]
            spread = np.abs(component).max() or 1.0
            pixels = (component / spread + 1) / 2  # each component scaled into [0, 1], grey 0.5 for zero
            ax.imshow(pixels[0] if channels == 1 else pixels.transpose(1, 2, 0).clip(0, 1),
                      cmap="gray" if channels == 1 else None, vmin=0, vmax=1, interpolation="nearest")  # fmt: skip
            ax.set_title(str(index + 1), fontsize=8)
    fig.suptitle(f"patch-embedding filters:\nfirst {count} principal components")
    return fig


def _encoded_png(pixels: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 pixels as PNG bytes, in memory."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def heatmap_png(values: Tensor, size: tuple[int, int]) -> bytes:
    """A (gh, gw) map as a PNG of the model's input size (h, w), one square per patch, in the colour map of the
    figures (from 0 to the map's largest value): the overlay of `vitkit serve`'s ?explain=1."""
    from matplotlib import colormaps

    values = values.detach().float().cpu()
    scaled = values / values.max().clamp_min(1e-12)
    squares = torch.nn.functional.interpolate(scaled[None, None], size=size, mode="nearest")[0, 0]
    return _encoded_png(colormaps[HEAT](squares.clamp(0, 1).numpy(), bytes=True)[..., :3])


def model_view_png(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> bytes:
    """A preprocessed (C, H, W) image as a PNG of what the model sees (resized, cropped), normalisation undone."""
    return _encoded_png(np.rint(display_image(image, mean, std) * 255).astype(np.uint8))


def faithfulness_figure(curves: Mapping[str, Curves]) -> Figure:
    """Deletion and insertion curves per method, averaged over the images, with the mean area under each in the
    legend; the random order dashed, as the yardstick."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for side, (ax, title) in enumerate(zip(axes, ("deletion (lower is better)", "insertion (higher is better)"))):
        for name, c in curves.items():
            probabilities, areas = (c.deletion, c.deletion_auc) if side == 0 else (c.insertion, c.insertion_auc)
            style = dict(color="grey", linestyle="--") if name == RANDOM_ORDER else {}
            ax.plot(c.fractions.numpy(), probabilities.mean(dim=0).numpy(), label=f"{name}: AUC {areas.mean():.3f}",
                    **style)  # fmt: skip
        ax.set(xlabel="share of patches " + ("removed" if side == 0 else "revealed"), title=title, xlim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("probability of the explained class")
    return fig
