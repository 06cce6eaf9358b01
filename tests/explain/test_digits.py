"""On a model trained on the digits, the rollout points at the pen strokes, and the maps are faithful to the model;
on random weights neither holds."""

from __future__ import annotations

import torch

from vitkit.explain import attention_rollout
from vitkit.explain.faithfulness import RANDOM_ORDER, compare_methods


def stroke_share(maps: torch.Tensor, ink: torch.Tensor) -> float:
    """Mean over images of the share of each map's mass on patches with pen strokes."""
    maps = maps / maps.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return (maps * ink).sum(dim=(1, 2)).mean().item()


def test_the_trained_model_classifies_the_held_out_digits(digits_and_model) -> None:
    digits, model, _ = digits_and_model
    with torch.no_grad():
        accuracy = (model(digits.images).argmax(dim=1) == digits.labels).float().mean().item()
    assert accuracy >= 0.75  # a model worth explaining (chance is 0.1)


def test_rollout_mass_lies_mostly_on_the_pen_strokes(digits_and_model) -> None:
    digits, model, randoms = digits_and_model
    ink = digits.ink()
    area = ink.float().mean().item()  # what a uniform map gives: about 0.28 of the patches carry strokes
    assert 0.2 < area < 0.35
    trained = stroke_share(attention_rollout(model, digits.images), ink)
    untrained = [stroke_share(attention_rollout(m, digits.images), ink) for m in randoms]
    # Measured: trained 0.57 (0.41 to 0.78 over other seeds and pools); random weights give the area share, 0.28.
    assert trained > 0.5
    assert max(untrained) < 0.35
    assert stroke_share(attention_rollout(model, digits.images, head_fusion="max"), ink) > 0.45
    # Dropping the weakest half of each attention row sharpens the map towards the strokes.
    assert stroke_share(attention_rollout(model, digits.images, discard_ratio=0.5), ink) > trained - 0.02


def faithfulness_gains(model, images) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per map, how much it beats the random order on each image: (deletion AUC gain, insertion AUC gain)."""
    curves = compare_methods(model, images, steps=4)
    random = curves.pop(RANDOM_ORDER)
    return {name: (random.deletion_auc - c.deletion_auc, c.insertion_auc - random.insertion_auc)
            for name, c in curves.items()}  # fmt: skip


def standard_error(gains: torch.Tensor) -> float:
    return (gains.std() / len(gains) ** 0.5).item()


def test_faithfulness_tells_the_trained_model_from_random_weights(digits_and_model) -> None:
    """Where the picture could not (Grad-CAM lit the pen strokes for anywhere between 2 % and 98 % of its mass on
    random weights), deletion and insertion scores can: a map of the trained model beats the random order by more
    than the noise of the measurement; on random weights no map does."""
    digits, model, randoms = digits_and_model
    trained = faithfulness_gains(model, digits.images)
    # Measured on the 200 held-out digits (deletion gain, insertion gain, standard errors): rollout 0.16 (0.013) /
    # 0.21 (0.017), transformer attribution 0.09 (0.016) / 0.12 (0.020), Grad-CAM -0.004 (0.018) / 0.045 (0.020),
    # last block -0.035 (0.022) / 0.026 (0.018).
    for name in ("attention rollout", "transformer attribution"):
        for gain in trained[name]:
            assert gain.mean() > 3 * standard_error(gain), name
    # Grad-CAM (issue 10 asked for its mass on the strokes; faithfulness settles it): on insertion it beats the
    # random order by more than twice its standard error; on deletion it does not on this model, as the guide says.
    cam_insertion = trained["Grad-CAM"][1]
    assert cam_insertion.mean() > 2 * standard_error(cam_insertion)
    noise = {name: min(standard_error(gain) for gain in gains) for name, gains in trained.items()}
    for untrained in randoms[:2]:
        # The probability of a class hardly depends on the image: every gain is far inside the noise with which
        # the trained model's gains are measured (measured: at most 0.0004, against standard errors above 0.01).
        for name, gains in faithfulness_gains(untrained, digits.images[:50]).items():
            assert max(gain.mean().abs().item() for gain in gains) < noise[name], name
