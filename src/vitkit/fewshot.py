"""Few-shot linear evaluation of a model's frozen features, as the ViT paper measures it.

For each shot count n and each of several seeded draws, n training images per class are chosen at random; a linear
classifier is fitted to their features in closed form (regularised least squares onto targets in {-1, 1}, one
column per class, with an intercept: features and targets are centred, then ``(X^T X + alpha I) W = X^T Y`` is
solved with torch.linalg), and its accuracy is measured on every validation image. The features are what the
model's head sees (the pooled, normalised token); they are computed once per image, for the images some draw uses.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from vitkit.data import ClassFolder, TransformedDataset, eval_transform
from vitkit.model import VisionTransformer


@dataclass
class FewShotResult:
    """Accuracy of the fitted classifier on the validation images for one shot count, one value per draw."""

    shots: int
    accuracies: list[float]

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def std(self) -> float:
        """Sample standard deviation over the draws (0 for a single draw)."""
        if len(self.accuracies) < 2:
            return 0.0
        return torch.tensor(self.accuracies, dtype=torch.float64).std().item()

    def to_dict(self) -> dict[str, object]:
        return {"shots": self.shots, "mean": self.mean, "std": self.std, "accuracies": self.accuracies}


@torch.inference_mode()
def head_inputs(model: VisionTransformer, dataset: Dataset, batch_size: int = 256) -> Tensor:
    """The features the model's head takes (B, head_input_dim) for every image of ``dataset``, in float32."""
    device = next(model.parameters()).device
    captured: list[Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].float().cpu()))
    was_training = model.training
    model.eval()
    try:
        for images, _ in DataLoader(dataset, batch_size=batch_size):
            model(images.to(device))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured) if captured else torch.empty(0, model.head_input_dim)


def draw_support(labels: Tensor, num_classes: int, shots: int, seed: int, draw: int) -> Tensor:
    """Indices of ``shots`` images per class, chosen at random as a function of (seed, shots, draw)."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{shots}/{draw}".encode()))
    chosen = []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        if len(members) < shots:
            raise ValueError(
                f"{shots}-shot needs {shots} training images of every class; class {label} has {len(members)}"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(chosen)


def fit_ridge(features: Tensor, labels: Tensor, num_classes: int, alpha: float) -> tuple[Tensor, Tensor]:
    """(weights (D, K), bias (K,)) of the least-squares fit onto {-1, 1} targets with an L2 penalty ``alpha``."""
    x = features.double()
    targets = -torch.ones(len(labels), num_classes, dtype=torch.float64)
    targets[torch.arange(len(labels)), labels] = 1.0
    x_mean, y_mean = x.mean(dim=0), targets.mean(dim=0)
    xc, yc = x - x_mean, targets - y_mean
    gram = xc.T @ xc + alpha * torch.eye(x.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, xc.T @ yc)
    return weights, y_mean - x_mean @ weights


def predict_ridge(features: Tensor, weights: Tensor, bias: Tensor) -> Tensor:
    """The class with the largest score for each row of ``features``."""
    return (features.double() @ weights + bias).argmax(dim=1)


def few_shot_evaluation(
    model: VisionTransformer,
    train: Dataset,
    train_labels: Sequence[int],
    val: Dataset,
    val_labels: Sequence[int],
    shots: Sequence[int],
    draws: int = 5,
    seed: int = 0,
    alpha: float = 1.0,
    batch_size: int = 256,
) -> list[FewShotResult]:
    """Mean and spread of few-shot accuracy on ``val`` for each shot count, over ``draws`` draws from ``train``."""
    if draws < 1 or alpha <= 0 or not shots or min(shots) < 1:
        raise ValueError(f"expected draws >= 1, alpha > 0 and shot counts >= 1; got {draws}, {alpha}, {list(shots)}")
    labels = torch.as_tensor(list(train_labels))
    num_classes = int(max(labels.max().item(), max(val_labels)) + 1)
    supports = {(n, d): draw_support(labels, num_classes, n, seed, d) for n in shots for d in range(draws)}
    used = torch.unique(torch.cat(list(supports.values())))  # sorted: the images some draw needs, each once
    features = torch.zeros(len(labels), model.head_input_dim)
    features[used] = head_inputs(model, Subset(train, used.tolist()), batch_size)
    val_features = head_inputs(model, val, batch_size)
    val_targets = torch.as_tensor(list(val_labels))
    results = []
    for n in shots:
        accuracies = []
        for d in range(draws):
            support = supports[(n, d)]
            weights, bias = fit_ridge(features[support], labels[support], num_classes, alpha)
            accuracies.append((predict_ridge(val_features, weights, bias) == val_targets).double().mean().item())
        results.append(FewShotResult(n, accuracies))
    return results


@dataclass
class FewShotData:
    """A few-shot task's images, prepared as the model expects, with their labels and class names."""

    train: Dataset
    train_labels: list[int]
    val: Dataset
    val_labels: list[int]
    class_names: list[str]


def few_shot_folders(
    data_dir: str | os.PathLike, model: VisionTransformer, skip_bad_files: bool = False
) -> FewShotData:
    """DIR/train/<class>/ (drawn from) and DIR/val/<class>/ (measured on); the classes are the folder's own."""
    data_dir = Path(data_dir)
    if not (data_dir / "train").is_dir() or not (data_dir / "val").is_dir():
        raise FileNotFoundError(
            f"{data_dir} needs train/ and val/ folders of classes: expected {data_dir}/train/<class>/<images> "
            f"and {data_dir}/val/<class>/<images>"
        )
    channels, transform = model.in_channels, eval_transform(model.config)
    train = ClassFolder(data_dir / "train", channels, skip_bad_files=skip_bad_files)
    val = ClassFolder(data_dir / "val", channels, train.classes, skip_bad_files=skip_bad_files)
    if len(val) == 0:
        raise FileNotFoundError(f"{data_dir / 'val'} holds no images; expected {data_dir}/val/<class>/<images>")
    return FewShotData(
        TransformedDataset(train, transform), list(train.targets), TransformedDataset(val, transform),
        list(val.targets), list(train.classes),
    )  # fmt: skip
