"""vitkit.evaluation: its numbers against scikit-learn's, and the confusion-matrix PNG."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix, top_k_accuracy_score
from torch.utils.data import TensorDataset

from vitkit import VisionTransformer
from vitkit.evaluation import evaluate, save_confusion_matrix

CLASS_NAMES = ["cat", "dog", "bird", "fish", "frog", "horse", "ship"]


@pytest.fixture
def model(tiny_classifier) -> VisionTransformer:
    return tiny_classifier(CLASS_NAMES)


@pytest.fixture
def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(45, 1, 8, 8, generator=generator)
    # Class 6 ("ship") never occurs: its accuracy is undefined, not 0.
    labels = torch.randint(0, len(CLASS_NAMES) - 1, (45,), generator=generator)
    return TensorDataset(images, labels)


def test_metrics_match_sklearn(model: VisionTransformer, dataset: TensorDataset) -> None:
    images, labels = dataset.tensors
    with torch.no_grad():
        logits = model.eval()(images)
    expected_cm = confusion_matrix(labels, logits.argmax(1), labels=range(len(CLASS_NAMES)))

    model.train()
    metrics = evaluate(model, dataset, batch_size=8)

    assert model.training, "evaluate must give the model back in the mode it found it"
    assert metrics["num_samples"] == 45
    assert metrics["top1"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert metrics["top5"] == pytest.approx(top_k_accuracy_score(labels, logits, k=5, labels=range(len(CLASS_NAMES))))
    assert metrics["confusion_matrix"] == expected_cm.tolist()
    assert metrics["class_names"] == CLASS_NAMES
    assert metrics["per_class"]["ship"] is None
    for i, name in enumerate(CLASS_NAMES[:-1]):
        assert metrics["per_class"][name] == pytest.approx(expected_cm[i, i] / expected_cm[i].sum())
    assert metrics == evaluate(model, dataset, batch_size=64), "batching must not change the result"


def test_top5_with_fewer_than_five_classes_counts_every_class() -> None:
    model = VisionTransformer(
        image_size=4, patch_size=2, in_channels=1, num_classes=3, hidden_dim=8, depth=1, num_heads=2, mlp_dim=8
    )
    data = TensorDataset(torch.randn(10, 1, 4, 4), torch.randint(0, 3, (10,)))
    metrics = evaluate(model, data)
    assert metrics["top5"] == 1.0
    assert metrics["class_names"] == ["0", "1", "2"]


def test_bad_data_sets_are_errors(model: VisionTransformer) -> None:
    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, empty)
    wrong_labels = TensorDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\].*got labels from 0 to 7"):
        evaluate(model, wrong_labels)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, wrong_labels, batch_size=0)


def test_confusion_matrix_png(tmp_path, model: VisionTransformer, dataset: TensorDataset) -> None:
    metrics = evaluate(model, dataset)
    path = save_confusion_matrix(
        metrics["confusion_matrix"], metrics["class_names"], tmp_path / "plots" / "cm.png", title="test"
    )
    assert path == tmp_path / "plots" / "cm.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) > 200
    assert [p.name for p in path.parent.iterdir()] == ["cm.png"], "no temporary file may be left behind"
