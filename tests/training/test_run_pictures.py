"""Every finished run draws what it learned: the patch grid and rollout of a few validation images."""

from __future__ import annotations

import pytest
from PIL import Image

from vitkit.explain.report import RUN_PICTURES
from vitkit.training import train

pytestmark = pytest.mark.pictures


def test_a_run_ends_with_pictures_of_what_it_learned(tiny) -> None:
    result = train(tiny(epochs=1))
    pictures = result.run_dir / RUN_PICTURES
    names = sorted(p.name for p in pictures.glob("*.png"))
    assert names == [f"{i:02d}-{kind}.png" for i in range(3) for kind in ("patch-grid", "rollout")]
    for name in names:
        with Image.open(pictures / name) as image:
            image.verify()
    index = (pictures / "index.html").read_text(encoding="utf-8")
    assert all(f'src="{name}"' in index for name in names)
    assert "validation image 0, labelled" in index


def test_a_failure_to_draw_never_loses_the_run(tiny, monkeypatch, caplog) -> None:
    from vitkit.explain import figures

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no more ink")

    monkeypatch.setattr(figures, "patch_grid_figure", broken)
    result = train(tiny(epochs=1))
    assert (result.run_dir / "model.safetensors").is_file() and result.final["val_acc"] is not None
    assert "could not draw the run's explanation pictures" in caplog.text and "no more ink" in caplog.text
