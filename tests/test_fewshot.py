"""vitkit.fewshot: the closed-form few-shot classifier against scikit-learn's RidgeClassifier, and `vitkit fewshot`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.linear_model import RidgeClassifier
from torch.utils.data import TensorDataset

from vitkit import VisionTransformer, cli
from vitkit.fewshot import draw_support, few_shot_evaluation, head_inputs

CLASSES = ["ant", "bee", "cow"]


def labelled_images(count: int, seed: int) -> TensorDataset:
    """Noise images whose brightness and a bright corner depend on the class: features a linear fit can separate."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(CLASSES)
    images = torch.randn(count, 1, 8, 8, generator=generator)
    images[:, :, :4, :4] += labels.view(-1, 1, 1, 1)
    return TensorDataset(images, labels)


def test_accuracies_equal_sklearn_ridge_classifier_on_the_same_features_and_draws(tiny_classifier) -> None:
    model = tiny_classifier(["x", "y"])  # frozen features; its own classes play no part
    train, val = labelled_images(30, seed=1), labelled_images(24, seed=2)
    shots, draws, alpha = [1, 3, 8], 3, 0.5
    results = few_shot_evaluation(model, train, train.tensors[1].tolist(), val, val.tensors[1].tolist(), shots,
                                  draws=draws, seed=7, alpha=alpha, batch_size=16)  # fmt: skip
    features = head_inputs(model, train).double().numpy()
    val_features = head_inputs(model, val).double().numpy()
    with torch.no_grad():  # the features are what the head sees
        torch.testing.assert_close(model.head(head_inputs(model, val)), model.eval()(val.tensors[0]))
    labels = train.tensors[1]
    for n, result in zip(shots, results):
        expected = []
        for d in range(draws):
            support = draw_support(labels, len(CLASSES), n, seed=7, draw=d).numpy()
            assert sorted(labels[support].tolist()) == sorted(list(range(len(CLASSES))) * n)
            reference = RidgeClassifier(alpha=alpha, fit_intercept=True).fit(features[support], labels[support])
            expected.append(reference.score(val_features, val.tensors[1].numpy()))
        assert result.shots == n and result.accuracies == pytest.approx(expected, abs=1e-12)
    assert results[-1].mean > 1 / len(CLASSES)  # the features do carry the class
    assert len({tuple(r.accuracies) for r in results}) > 1
    first, again = draw_support(labels, 3, 2, seed=7, draw=0), draw_support(labels, 3, 2, seed=7, draw=0)
    assert torch.equal(first, again) and not torch.equal(first, draw_support(labels, 3, 2, seed=7, draw=1))


def test_too_few_images_of_a_class_is_explained(tiny_classifier) -> None:
    labels = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="2-shot needs 2 training images of every class; class 1 has 1"):
        draw_support(labels, 2, 2, seed=0, draw=0)


def test_the_command_prints_mean_and_spread_per_shot_count(tiny_classifier, tmp_path: Path, capsys) -> None:
    model: VisionTransformer = tiny_classifier(["x", "y"])
    model.save_pretrained(tmp_path / "run")
    for split, count, seed in (("train", 12, 3), ("val", 6, 4)):
        images, labels = labelled_images(count, seed).tensors
        for i, (image, label) in enumerate(zip(images, labels)):
            path = tmp_path / "data" / split / CLASSES[label] / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = (image[0].clamp(-2, 2) * 60 + 128).to(torch.uint8).numpy()
            Image.fromarray(pixels, "L").save(path)
    argv = ["fewshot", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"), "--shots", "1", "2"]
    assert cli.main([*argv, "--draws", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == CLASSES and report["val_images"] == 6 and report["draws"] == 3
    assert [r["shots"] for r in report["results"]] == [1, 2]
    for result in report["results"]:
        assert len(result["accuracies"]) == 3
        assert all(abs(a * 6 - round(a * 6)) < 1e-9 for a in result["accuracies"])  # a share of the 6 val images
        assert result["mean"] == pytest.approx(sum(result["accuracies"]) / 3)
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "3 classes, 6 val images" in text and "1-shot:" in text and "2-shot:" in text
