"""The explanation figures read correctly: one colour scale for all heads, a distinct colour for every head."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import to_hex

from vitkit.explain.figures import attention_distance_figure, head_attention_figure


def test_every_head_is_drawn_on_one_colour_scale_with_a_colour_bar() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((4, 3, 3)) * np.array([1.0, 0.5, 0.2, 0.1])[:, None, None]  # heads of very different peaks
    fig = head_attention_figure(rng.random((12, 12, 3)), maps, "title")
    heads = [ax for ax in fig.axes if ax.get_title().startswith("head")]
    overlays = [ax.images[-1] for ax in heads]
    assert len(overlays) == 4 and {image.get_clim() for image in overlays} == {(0.0, maps.max())}
    colour_bars = [ax for ax in fig.axes if ax not in heads]
    assert len(colour_bars) == 1 and colour_bars[0].get_ylabel() == "attention weight"


def test_the_attention_distance_legend_gives_every_head_its_own_colour() -> None:
    heads = 12  # tab10 alone would repeat heads 0 and 1 for heads 10 and 11
    fig = attention_distance_figure(np.random.default_rng(0).random((3, heads)) * 10, (32, 32))
    (ax,) = fig.axes
    colours = [to_hex(points.get_facecolor()[0]) for points in ax.collections]
    legend = [to_hex(handle.get_facecolor()[0]) for handle in ax.get_legend().legend_handles]
    assert len(set(colours)) == heads and legend == colours
