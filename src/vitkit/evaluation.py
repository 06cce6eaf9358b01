"""Accuracy of a trained model on a labelled data set: top-1, top-5, per class, and a confusion matrix.

One evaluation loop (:func:`tally`) serves `vitkit evaluate`, notebooks and the trainer's per-epoch validation:
its sums stay on the model's device until the caller reads them, so a GPU is never stalled per batch, and a
distributed run all-reduces them as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vitkit.io import atomic_path
from vitkit.model import VisionTransformer

# Above this many classes the numbers in the cells are unreadable; the colours still tell the story.
_MAX_CLASSES_WITH_VALUES = 20


def class_names_of(model: VisionTransformer) -> list[str]:
    """The model's class names, or "0".."N-1" when it was built without any (e.g. create_model)."""
    return model.config.labels


@dataclass
class Tally:
    """Sums over a labelled data set, on the device they were computed on."""

    loss: Tensor  # summed cross-entropy (float64 scalar)
    topk_hits: Tensor  # samples whose label is among the best k guesses (int64 scalar)
    confusion: Tensor  # (num_classes, num_classes) int64 counts, rows true class, columns top-1 guess

    @property
    def count(self) -> Tensor:
        return self.confusion.sum()

    @property
    def correct(self) -> Tensor:
        return self.confusion.trace()


@torch.inference_mode()
def tally(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    device: torch.device,
    *,
    k: int = 5,
    bf16: bool = False,
) -> Tally:
    """Run ``model`` (in eval mode) over (images, labels) batches; labels are checked on the host, before the copy."""
    k = min(k, num_classes)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    topk_hits = torch.zeros((), dtype=torch.int64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    try:
        for images, labels in batches:
            labels = torch.as_tensor(labels, dtype=torch.int64)
            if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(
                    f"data set labels must lie in [0, {num_classes - 1}] for this {num_classes}-class "
                    f"model, got labels from {labels.min().item()} to {labels.max().item()}"
                )
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(images).float()
            loss += F.cross_entropy(logits, labels, reduction="sum")
            guesses = logits.topk(k, dim=1).indices  # (B, k), best first
            topk_hits += (guesses == labels[:, None]).any(dim=1).sum()
            # (true, predicted) as one index into the flat matrix
            confusion += torch.bincount(labels * num_classes + guesses[:, 0], minlength=num_classes**2)
    finally:
        model.train(was_training)
    return Tally(loss, topk_hits, confusion.view(num_classes, num_classes))


def counted(batches: Iterable[tuple[Tensor, Tensor]], bar: tqdm) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches, advancing a progress bar by each one's size."""
    for images, labels in batches:
        bar.update(len(labels))
        yield images, labels


def evaluate(
    model: VisionTransformer,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    workers: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the model over a data set of (image, label) pairs and return its accuracy.

    Returns a JSON-ready dict: `top1` and `top5` (fractions in [0, 1]; top-5 counts the best
    min(5, num_classes) guesses), `num_samples`, `class_names`, `per_class` (class name -> top-1
    accuracy, None for a class with no samples), `confusion_matrix` (rows: true class, columns:
    predicted class, counts). Only the counts are kept, so memory does not grow with the data set; ``progress``
    shows a bar with the rate (on a terminal).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not isinstance(dataset, Sized):
        raise ValueError(f"evaluation needs a data set with a length, got {type(dataset).__name__}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    bar = tqdm(total=len(dataset), desc="evaluating", unit="img", leave=False, disable=None if progress else True)
    try:
        sums = tally(model, counted(loader, bar), model.num_classes, device)
    finally:
        bar.close()
    confusion = sums.confusion.cpu()
    total = int(confusion.sum())
    if total == 0:
        raise ValueError("cannot evaluate on an empty data set: it holds no images")
    names = class_names_of(model)
    support = confusion.sum(dim=1)
    per_class = {
        name: (confusion[i, i].item() / support[i].item() if support[i] else None) for i, name in enumerate(names)
    }
    return {
        "top1": int(confusion.trace()) / total,
        "top5": int(sums.topk_hits) / total,
        "num_samples": total,
        "class_names": names,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def save_confusion_matrix(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, *, title: str | None = None
) -> Path:
    """Write the confusion matrix as a PNG (rows: true class, columns: predicted) and return its path.

    Uses a bare matplotlib Figure (Agg canvas, no pyplot state), so it works headless and in threads.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(class_names)
    side = min(max(6.0, 0.45 * n + 2.0), 40.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(torch.as_tensor(confusion).numpy(), display_labels=list(class_names))
    display.plot(
        ax=ax,
        include_values=n <= _MAX_CLASSES_WITH_VALUES,
        cmap="Blues",
        xticks_rotation="vertical" if max(map(len, class_names), default=0) > 3 else "horizontal",
        colorbar=True,
    )
    if title:
        ax.set_title(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path
