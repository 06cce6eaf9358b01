"""An explanation folder: every picture as a PNG, and an index.html that shows them together.

`vitkit explain` writes one for the images it is given (with ``--faithfulness``, also the deletion and insertion
scores of each map, in index.html and faithfulness.json); a training run writes a small one (patch grid and
rollout of a few validation images) at its end, and a pre-training run a picture of its reconstructions.
"""

from __future__ import annotations

import html
import logging
import os
import re
from collections.abc import Mapping, Sequence, Sized
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vitkit.evaluation import class_names_of
from vitkit.explain import figures, maps
from vitkit.explain.faithfulness import Curves, summary
from vitkit.io import atomic_path, write_json
from vitkit.model import VisionTransformer
from vitkit.pretrain.mae import MaskedAutoencoder

logger = logging.getLogger(__name__)

INDEX_FILE = "index.html"
FAITHFULNESS_FILE = "faithfulness.json"
RUN_PICTURES = "explain"  # the folder of a run's pictures, beside its weights


def load_images(model: VisionTransformer, paths: Sequence[str | os.PathLike]) -> Tensor:
    """Image files preprocessed as the model's weights expect them: (B, C, H, W)."""
    from vitkit.data import eval_transform, load_image

    if not paths:
        raise ValueError("no images to explain: give at least one image file")
    transform = eval_transform(model.config)
    return torch.stack([transform(load_image(Path(path), model.in_channels)) for path in paths])


def _normalisation(model: VisionTransformer) -> tuple[Sequence[float], Sequence[float]]:
    # As eval_transform normalises: a model saved without mean/std gets pixels in [0, 1].
    config = model.config
    return config.mean or (0.0,) * config.in_channels, config.std or (1.0,) * config.in_channels


def _file_stem(index: int, name: str) -> str:
    # Numbered, so two images called "cat.png" in different folders do not overwrite each other.
    return f"{index:02d}-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem) or "image")


class _Report:
    """Collects the PNGs of one folder and writes index.html listing them by section."""

    def __init__(self, out: Path, title: str) -> None:
        self.out, self.title = out, title
        self.sections: list[tuple[str, list[str]]] = []  # (heading, HTML of each item)

    def section(self, heading: str) -> None:
        self.sections.append((heading, []))

    def add(self, fig: figures.Figure, file_name: str, caption: str) -> None:
        figures.save_png(fig, self.out / file_name)
        self.sections[-1][1].append(
            f'<figure><img src="{html.escape(file_name)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def add_table(self, header: Sequence[str], rows: Sequence[Sequence[str]], caption: str) -> None:
        cells = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
        cells += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        self.sections[-1][1].append(f"<table><caption>{html.escape(caption)}</caption>{''.join(cells)}</table>")

    def write_index(self) -> Path:
        parts = [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title>",
            "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:0 1em 1em 0;"
            "vertical-align:top}img{max-width:100%;border:1px solid #ddd}figcaption{max-width:40em}"
            "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ddd;padding:.3em .6em}"
            "caption{text-align:left;max-width:40em}</style>",
            f"</head><body><h1>{html.escape(self.title)}</h1>",
        ]
        for heading, items in self.sections:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
            parts.extend(items)
        parts.append("</body></html>\n")
        path = self.out / INDEX_FILE
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(parts), encoding="utf-8")
        return path


def _top_k(model: VisionTransformer, images: Tensor, k: int) -> list[list[tuple[str, float]]]:
    names = class_names_of(model)
    with maps.evaluating(model), torch.no_grad():
        probabilities = model(images).float().softmax(dim=1).cpu()
    values, indices = probabilities.topk(min(k, model.num_classes), dim=1)
    return [[(names[i], p) for p, i in zip(v.tolist(), ix.tolist())] for v, ix in zip(values, indices)]


def explain_images(
    model: VisionTransformer,
    images: Tensor,
    names: Sequence[str],
    out: str | os.PathLike,
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    top_k: int = 3,
    target: int | None = None,
    num_filters: int = 28,
    faithfulness: Mapping[str, Curves] | None = None,
    faithfulness_settings: Mapping[str, object] | None = None,
) -> Path:
    """Write every picture of ``images`` (preprocessed, named ``names``) and of the model into ``out``.

    Per image: the patch grid, the attention rollout beside the top-k predictions, Grad-CAM and transformer
    attribution for ``target`` (default: the predicted class) and the last block's attention per head. For the
    model: position-embedding similarity, mean attention distance over the images, patch-embedding filters.
    With ``faithfulness`` (deletion and insertion curves by method, see ``faithfulness.compare_methods``): their
    figure, a table of the mean areas, and faithfulness.json holding those areas and ``faithfulness_settings``.
    Returns index.html's path.
    """
    if len(names) != len(images):
        raise ValueError(f"got {len(images)} images but {len(names)} names")
    if model.num_classes < 1:
        raise ValueError("this model has no classification head (num_classes is 0); there is nothing to explain")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = images.to(next(model.parameters()).device)
    config = model.config
    class_names = class_names_of(model)
    mean, std = _normalisation(model)
    with maps.evaluating(model):
        attentions = model.get_attention_maps(images)
    rollouts = maps.rollout(attentions, config, head_fusion, discard_ratio).numpy()
    heads = maps.head_attention_of(attentions, config).numpy()
    cams = maps.grad_cam(model, images, target).numpy()
    attributions = maps.attention_attribution(model, images, target).numpy()
    predictions = _top_k(model, images, top_k)
    source = "the CLS token" if config.pool == "cls" else "the mean of the patch tokens"
    fusion = f"heads fused by {head_fusion}" + (f", weakest {discard_ratio:.0%} discarded" if discard_ratio else "")

    report = _Report(out, f"What the model looks at: {len(images)} image(s)")
    for index, (image, name) in enumerate(zip(images, names)):
        stem, shown, top = _file_stem(index, name), figures.display_image(image, mean, std), predictions[index]
        cam_class = top[0][0] if target is None else class_names[target]
        report.section(f"{name}: predicted {top[0][0]} ({top[0][1]:.1%})")
        grid = figures.patch_grid_figure(shown, config.patch_size, config.class_token)
        report.add(grid, f"{stem}-patch-grid.png", "the image as the model sees it, cut into its patches (tokens)")
        rolled = figures.rollout_figure(shown, rollouts[index], top, f"attention rollout ({fusion})")
        report.add(rolled, f"{stem}-rollout.png", f"attention rollout from {source} ({fusion}), beside the predictions")
        cam = figures.heat_figure(shown, cams[index], f"Grad-CAM for class {cam_class}", "class evidence")
        cam_caption = f"Grad-CAM for class {cam_class} on what the last block's attention reads"
        report.add(cam, f"{stem}-grad-cam.png", cam_caption)
        attributed = figures.heat_figure(shown, attributions[index], f"transformer attribution for class {cam_class}",
                                         "share of the class evidence")  # fmt: skip
        report.add(attributed, f"{stem}-attribution.png",
                   f"transformer attribution for class {cam_class}: attention weighted by its gradient, through every "
                   "block")  # fmt: skip
        attended = figures.head_attention_figure(shown, heads[index], f"last block: attention from {source}")
        report.add(attended, f"{stem}-heads.png", f"the last block's attention from {source}, one map per head")

    report.section("The model")
    similarity = figures.position_similarity_figure(maps.position_similarity(model).numpy())
    report.add(similarity, "position-similarity.png",
               "cosine similarity of each patch position's embedding with every other position's")  # fmt: skip
    distance = maps.attention_distance(attentions, config).numpy()
    report.add(figures.attention_distance_figure(distance, config.image_size), "attention-distance.png",
               "mean attention distance of each head per block, over the given images")  # fmt: skip
    most = min(num_filters, config.hidden_dim, config.in_channels * config.patch_size[0] * config.patch_size[1])
    if config.conv_stem:  # patches of the stem's features: no filters over pixels (see maps.embedding_filters)
        logger.info("no patch-embedding filters drawn: the patches are cut from a convolutional stem's features")
    else:
        report.add(
            figures.embedding_filters_figure(maps.embedding_filters(model, most).numpy()),
            "embedding-filters.png",
            "principal components of the patch-embedding filters: what the model measures in a patch",
        )
    if faithfulness is not None:
        _faithfulness_section(report, faithfulness, faithfulness_settings or {})
    return report.write_index()


def _faithfulness_section(report: _Report, curves: Mapping[str, Curves], settings: Mapping[str, object]) -> None:
    """The curves' figure and a table of the areas in index.html; the same areas in faithfulness.json."""
    scores = summary(curves)
    images = next(iter(scores.values()))["images"]
    report.section(f"Faithfulness: which map ranks the patches the way the model uses them ({images} images)")
    report.add(figures.faithfulness_figure(curves), "faithfulness.png",
               "probability of the explained class as patches are removed (deletion) or revealed (insertion) in "
               "each map's order; a map is faithful to the model only where it beats the random order")  # fmt: skip
    rows = [[name, f"{s['deletion_auc']:.3f}", f"{s['insertion_auc']:.3f}"] for name, s in scores.items()]
    report.add_table(["map", "deletion AUC (lower is better)", "insertion AUC (higher is better)"], rows,
                     f"mean over {images} images; the file {FAITHFULNESS_FILE} holds the same figures")  # fmt: skip
    write_json({**settings, "images": images, "methods": scores}, report.out / FAITHFULNESS_FILE)


def write_run_pictures(
    model: VisionTransformer, dataset: Dataset, out: str | os.PathLike, count: int = 3
) -> Path | None:
    """The patch grid and attention rollout of the first ``count`` images of ``dataset`` (validation (image, label)
    pairs, preprocessed), drawn at the end of a training run so that every run shows what it learned.

    Drawing must never cost a run: any failure is logged as a warning and None returned.
    """
    try:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if not isinstance(dataset, Sized):
            raise ValueError(f"drawing needs a data set with a length, got {type(dataset).__name__}")
        samples = [dataset[i] for i in range(min(count, len(dataset)))]
        images = torch.stack([image for image, _ in samples])
        names = class_names_of(model)
        mean, std = _normalisation(model)
        images = images.to(next(model.parameters()).device)
        rollouts = maps.attention_rollout(model, images).numpy()
        predictions = _top_k(model, images, 3)
        report = _Report(out, "What the trained model looks at: validation images")
        for index, image in enumerate(images):
            shown = figures.display_image(image, mean, std)
            report.section(f"validation image {index}, labelled {names[int(samples[index][1])]}")
            report.add(figures.patch_grid_figure(shown, model.config.patch_size, model.config.class_token),
                       f"{index:02d}-patch-grid.png", "the image cut into patches")  # fmt: skip
            report.add(figures.rollout_figure(shown, rollouts[index], predictions[index]),
                       f"{index:02d}-rollout.png", "attention rollout beside the top predictions")  # fmt: skip
        return report.write_index()
    except Exception as err:  # noqa: BLE001 - a picture is not worth a finished run
        logger.warning("could not draw the run's explanation pictures into %s: %s", out, err)
        return None


def write_reconstructions(
    mae: MaskedAutoencoder, dataset: Dataset, path: str | os.PathLike, count: int = 4, seed: int = 0
) -> Path | None:
    """The first ``count`` images of ``dataset`` (held-out (image, label) pairs, preprocessed), masked with masks
    drawn from ``seed`` and reconstructed, as one PNG at the end of a pre-training run.

    Drawing must never cost a run: any failure is logged as a warning and None returned.
    """
    try:
        if not isinstance(dataset, Sized):
            raise ValueError(f"drawing needs a data set with a length, got {type(dataset).__name__}")
        device = next(mae.parameters()).device
        images = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))]).to(device)
        noise = torch.rand(len(images), mae.encoder.config.num_patches, generator=torch.Generator().manual_seed(seed))
        mae.eval()
        masked, reconstructed = mae.reconstruct(images, noise.to(device))
        mean, std = _normalisation(mae.encoder)
        rows = [
            (figures.display_image(image, mean, std), figures.display_image(hidden, mean, std),
             figures.display_image(rebuilt, mean, std))
            for image, hidden, rebuilt in zip(images, masked, reconstructed)
        ]  # fmt: skip
        path = Path(path)
        figures.save_png(figures.reconstruction_figure(rows, mae.mask_ratio), path)
        return path
    except Exception as err:  # noqa: BLE001 - a picture is not worth a finished run
        logger.warning("could not draw the reconstructions into %s: %s", path, err)
        return None
