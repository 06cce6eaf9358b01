"""The bad-input corpus, tried for real: the decoder, `vitkit predict`, and `vitkit train`/`evaluate` on a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from corpus import BAD_REASONS, GOOD, bad_reason, write_bad, write_corpus, write_good
from PIL import Image

from vitkit import cli
from vitkit.data import BadImageFilesError, ImageLoadError, build_data, check_image, find_image_files, load_image

TINY_TRAIN = ["--hidden-dim", "16", "--depth", "1", "--num-heads", "2", "--mlp-dim", "32", "--batch-size", "4",
              "--image-size", "8", "--epochs", "1", "--no-progress", "--no-tensorboard"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    folder = tmp_path_factory.mktemp("corpus") / "mixed"
    good, bad = write_corpus(folder)
    return folder, good, bad


def test_awkward_but_valid_files_decode_as_a_viewer_shows_them(corpus) -> None:
    _, good, _ = corpus
    assert set(good) == set(GOOD)
    stored = np.asarray(Image.open(good["exif_rotated.jpg"]).convert("RGB"))  # the pixels as stored, 8 x 16
    upright = np.asarray(load_image(good["exif_rotated.jpg"], 3))
    np.testing.assert_array_equal(upright, np.rot90(stored, k=-1))  # EXIF 6: turn 90 degrees clockwise
    grey = np.asarray(load_image(good["grey16.png"], 1))
    expected = np.rint(np.arange(80).reshape(8, 10) * 829 / 257.0)  # 65535 -> 255, scaled, not clipped at 255
    np.testing.assert_array_equal(grey, expected)
    assert load_image(good["animated.gif"], 3).getpixel((0, 0)) == (255, 0, 0)  # the first frame
    palette = Image.open(good["palette_transparent.png"])
    transparent = [xy for xy in np.ndindex(10, 12) if palette.getpixel(xy[::-1]) == 0]
    assert transparent, "the noise uses palette entry 0 somewhere"
    rgb = load_image(good["palette_transparent.png"], 3)
    assert {rgb.getpixel(xy[::-1]) for xy in transparent} == {(255, 255, 255)}  # composited on white
    cmyk = Image.new("CMYK", (2, 2), (255, 0, 0, 0))  # pure cyan
    cmyk.save(good["cmyk.jpg"].with_name("cyan.jpg"), quality=100)
    assert np.allclose(load_image(good["cmyk.jpg"].with_name("cyan.jpg"), 3).getpixel((0, 0)), (0, 255, 255), atol=2)
    good["cmyk.jpg"].with_name("cyan.jpg").unlink()
    assert load_image(good["huge.jpg"], 3).size == (4000, 3000)
    for path in good.values():
        assert check_image(path)[0] in (1, 3)


@pytest.mark.parametrize("check", [load_image, check_image], ids=["load_image", "check_image"])
def test_every_bad_file_is_refused_naming_the_file_and_the_reason(corpus, check) -> None:
    _, _, bad = corpus
    for name, path in bad.items():
        with pytest.raises(ImageLoadError) as info:
            check(path, 3) if check is load_image else check(path)
        assert str(path) in str(info.value) and bad_reason(name) in str(info.value), str(info.value)
        assert info.value.path == path and bad_reason(name) in info.value.reason


def test_folder_walk_skips_non_images_and_survives_a_folder_loop(corpus) -> None:
    folder, good, bad = corpus
    images, others = find_image_files(folder)
    assert images == sorted({*good.values(), *bad.values()}), "each image-named entry once, loop or not"
    assert others == 2  # notes.txt and labels.csv; .DS_Store is hidden


def test_predict_reports_each_bad_file_and_predicts_every_good_one(corpus, tiny_classifier, tmp_path, capsys) -> None:
    folder, good, bad = corpus
    run_dir = tiny_classifier(["cat", "dog"], channels=3).save_pretrained(tmp_path / "run")
    code = cli.main(["predict", str(run_dir), str(folder), "--top-k", "1"])
    out, err = capsys.readouterr()
    assert code == 1, "non-zero exit when any file failed"
    results = {Path(r["path"]): r for r in map(json.loads, out.splitlines())}
    assert set(results) == {*good.values(), *bad.values()}
    for path in good.values():
        assert results[path]["top_k"][0]["class"] in ("cat", "dog"), results[path]
    error_lines = err.splitlines()[:-1]
    assert len(error_lines) == len(bad), "one error line per bad file"
    for name, path in bad.items():
        (line,) = [line for line in error_lines if f"{path} " in line]
        assert line.startswith("vitkit: error: ") and bad_reason(name) in line
        assert bad_reason(name) in results[path]["error"]
    assert (
        err.splitlines()[-1] == f"vitkit: error: {len(bad)} of {len(results)} paths could not be predicted "
        '(see their "error" lines)'
    )


def _data_folder(root: Path) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    """train/cat: the corpus (good and bad), train/dog: plain images, train/bird: empty."""
    good = write_good(root / "train" / "cat")
    bad = write_bad(root / "train" / "cat")
    (root / "train" / "dog").mkdir()
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "train" / "dog" / f"{i}.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "bird").mkdir()
    return root, good, bad


def test_train_and_evaluate_fail_before_starting_with_every_bad_file_or_skip_them(tmp_path, capsys, caplog) -> None:
    data, good, bad = _data_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    code = cli.main(["train", "--data-dir", str(data), "--out", str(run_dir), *TINY_TRAIN])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{len(bad) + 1} bad file(s) or folder(s), found before starting" in err and "--skip-bad-files" in err
    for name, path in bad.items():
        assert f"\n  {path}: " in err and bad_reason(name) in err
    assert f"\n  {data / 'train' / 'bird'}: class folder holds no image files" in err
    assert "Traceback" not in err and not (run_dir / "last.safetensors").exists(), "failed before any training"

    code = cli.main(["-q", "train", "--data-dir", str(data), "--out", str(run_dir), "--skip-bad-files", *TINY_TRAIN])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"skipping {len(bad) + 1} bad file(s) or folder(s)" in caplog.text  # a logged warning
    assert json.loads((run_dir / "config.json").read_text())["class_names"] == ["cat", "dog"], "empty class left out"

    evaluation = tmp_path / "eval"
    write_good(evaluation / "cat")
    write_bad(evaluation / "dog")
    code = cli.main(["evaluate", str(run_dir), "--data-dir", str(evaluation), "--json"])
    err = capsys.readouterr().err
    assert code == 2 and f"{len(bad)} bad file(s)" in err
    assert all(f"\n  {path}: " in err for path in evaluation.glob("dog/*.png") if path.name in BAD_REASONS)
    code = cli.main(["-q", "evaluate", str(run_dir), "--data-dir", str(evaluation), "--json", "--skip-bad-files"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["num_samples"] == len(GOOD) and f"skipping {len(bad)} bad file(s)" in caplog.text


def _paths(split) -> list[str]:
    """The files of a split of a folder, in the split's order."""
    return [split.base.dataset.samples[index][0] for index in split.base.indices]


def test_a_file_that_breaks_after_the_check_is_substituted_when_met_and_named(tmp_path, caplog) -> None:
    data, good, _ = _data_folder(tmp_path / "data")
    bundle = build_data("folder", data_dir=data, image_size=8, val_fraction=0.3, skip_bad_files=True, cache="off")
    path = good["huge.jpg"]  # a large JPEG: its bytes 60-90 are quantisation tables, not what the check reads
    part = next(name for name in ("train", "val") if str(path) in _paths(getattr(bundle, name)))
    at = _paths(getattr(bundle, part)).index(str(path))
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[60:90] = bytes(30)  # the header and the end marker still read; decoding fails
    path.write_bytes(bytes(damaged))
    again = build_data("folder", data_dir=data, image_size=8, val_fraction=0.3, skip_bad_files=True, cache="off")
    assert _paths(getattr(again, part)) == _paths(getattr(bundle, part)), "the start-up check passes the file"
    image, label = getattr(again, part)[at]  # met during an epoch: the next sample takes its place, the run goes on
    assert image.shape == (3, 8, 8) and label == getattr(again, part)[at + 1][1]
    assert f"cannot read {path} as an image" in caplog.text and "substituting the next sample" in caplog.text
    path.write_bytes(original[:-30])  # cut short: the next start finds it, naming it
    with pytest.raises(BadImageFilesError, match=f"{path}: truncated"):
        build_data("folder", data_dir=data, image_size=8, val_fraction=0.3)
