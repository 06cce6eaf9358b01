"""The `vitkit` command end to end: train a tiny model, evaluate it, predict with it, list models, and errors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import vitkit
from vitkit import cli, training
from vitkit.training.checkpoint import LAST_WEIGHTS
from vitkit.training.metrics import read_metrics

# A model small enough that two epochs on the 1,437 training digits take a few seconds.
TINY = ["--hidden-dim", "16", "--depth", "1", "--num-heads", "2", "--mlp-dim", "32", "--batch-size", "128"]
QUIET = ["--no-tensorboard", "--no-progress"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One tiny training run on the digits shared by the tests below: (run folder, what `vitkit train` printed)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["train", "--epochs", "2", *TINY, *QUIET, "--out", str(run_dir)])
    assert code == 0
    return run_dir, printed.getvalue()


def test_train_prints_one_line_per_epoch_and_writes_the_run(trained: tuple[Path, str]) -> None:
    run_dir, printed = trained
    lines = printed.splitlines()
    assert [line.split("  ")[0] for line in lines[:2]] == ["epoch 1/2", "epoch 2/2"]
    for word in ("loss", "val acc", "lr", "img/s"):
        assert word in lines[0]
    assert lines[2].startswith(f"run folder: {run_dir}")
    for name in ("config.json", "model.safetensors", "train_config.json", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert [record["epoch"] for record in read_metrics(run_dir)] == [1, 2]


def test_evaluate_prints_accuracies_and_writes_the_confusion_matrix(
    trained: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = trained
    code, out, err = run_cli(capsys, "evaluate", run_dir)
    assert code == 0, err
    assert "on the test split of digits: 360 images" in out
    assert "top-1 accuracy: " in out and "top-5 accuracy: " in out
    per_class = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert [row[0] for row in per_class] == [str(digit) for digit in range(10)]
    assert all(row[1].endswith("%") for row in per_class)
    with Image.open(run_dir / "confusion_matrix.png") as image:
        assert image.format == "PNG"


def test_evaluate_json_rebuilds_the_runs_own_held_out_split(
    trained: tuple[Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_dir, _ = trained
    code, out, err = run_cli(capsys, "evaluate", run_dir, "--json", "--plot", tmp_path / "cm.png")
    assert code == 0, err
    result = json.loads(out)
    assert result["num_samples"] == 360
    assert 0 <= result["top1"] <= result["top5"] <= 1
    assert set(result["per_class"]) == {str(digit) for digit in range(10)}
    assert all(0 <= accuracy <= 1 for accuracy in result["per_class"].values())
    assert sum(map(sum, result["confusion_matrix"])) == 360
    # model.safetensors holds the EMA weights; training measured them on the same split.
    assert result["top1"] == pytest.approx(read_metrics(run_dir)[-1]["ema_val_acc"], abs=1.5 / 360)
    with Image.open(tmp_path / "cm.png") as image:
        assert image.format == "PNG"


def test_evaluate_on_an_image_folder(
    trained: tuple[Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_dir, _ = trained
    digits = load_digits()
    folder = tmp_path / "my_digits"
    for index in range(20):
        label = int(digits.target[index])
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, "L").resize((32, 32)).save(folder / str(label) / f"{index}.png")
    code, out, err = run_cli(capsys, "evaluate", run_dir, "--data-dir", folder, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["num_samples"] == 20
    assert result["plot"] == str(run_dir / "confusion_matrix_my_digits.png")
    assert Path(result["plot"]).is_file()


def test_evaluate_shows_top_5_only_for_more_than_5_classes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from vitkit import VisionTransformer

    model = VisionTransformer(image_size=8, patch_size=4, in_channels=1, num_classes=2, hidden_dim=8, depth=1,
                              num_heads=1, mlp_dim=8, class_names=["no", "yes"], mean=(0.5,), std=(0.5,))  # fmt: skip
    model.save_pretrained(tmp_path / "run")
    for name in ("no", "yes"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        pixels = np.full((8, 8), 40 if name == "no" else 200, np.uint8)
        Image.fromarray(pixels, "L").save(tmp_path / "photos" / name / "0.png")
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "run", "--data-dir", tmp_path / "photos", "--device", "cpu")
    assert code == 0, err
    assert "top-1 accuracy: " in out and "top-5" not in out  # every label of 2 classes is among the best 5


def write_image(path: Path, mode: str, size: tuple[int, int]) -> Path:
    pixels = np.random.default_rng(len(mode) + size[0]).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    image = image.convert("RGB").quantize(16) if mode == "P" else image.convert(mode)
    image.save(path)
    return path


def test_predict_prints_one_json_line_per_image_and_fails_for_bad_files(
    trained: tuple[Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_dir, _ = trained
    folder = tmp_path / "images"
    folder.mkdir()
    good = [
        write_image(folder / "gray.png", "L", (8, 8)),
        write_image(folder / "rgba.png", "RGBA", (40, 30)),
        write_image(folder / "palette.png", "P", (16, 16)),
        write_image(folder / "big.jpg", "RGB", (1024, 768)),
    ]
    truncated = folder / "truncated.png"
    truncated.write_bytes(write_image(tmp_path / "whole.png", "RGB", (64, 64)).read_bytes()[:150])
    text = folder / "notes.txt"
    text.write_text("not an image")

    code, out, err = run_cli(capsys, "predict", run_dir, folder, text, tmp_path / "missing.png", "--top-k", "3")

    assert code == 1
    errors = err.splitlines()
    assert errors[-1].startswith("vitkit: error: 3 of 7 paths could not be predicted")
    assert len(errors) == 4, "one line per bad path, then the count"
    for line, path in zip(errors, (truncated, text, tmp_path / "missing.png")):
        assert line.startswith("vitkit: error: ") and str(path) in line
    results = {Path(result["path"]): result for result in map(json.loads, out.splitlines())}
    assert set(results) == {*good, truncated, text, tmp_path / "missing.png"}
    for path in good:
        top = results[path]["top_k"]
        assert [sorted(entry) for entry in top] == [["class", "probability"]] * 3
        assert {entry["class"] for entry in top} <= {str(digit) for digit in range(10)}
        assert all(0 <= entry["probability"] <= 1 for entry in top)
    for path in (truncated, text):
        assert str(path) in results[path]["error"] and "image" in results[path]["error"]
    assert "no such file" in results[tmp_path / "missing.png"]["error"]


def test_predict_caps_top_k_and_exits_0_when_all_files_are_images(
    trained: tuple[Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_dir, _ = trained
    image = write_image(tmp_path / "one.png", "L", (8, 8))
    code, out, err = run_cli(capsys, "predict", run_dir, image, "--top-k", "50")
    assert code == 0, err
    (result,) = map(json.loads, out.splitlines())
    assert len(result["top_k"]) == 10
    assert sum(entry["probability"] for entry in result["top_k"]) == pytest.approx(1, abs=1e-4)


def test_models_lists_every_named_configuration_with_its_parameter_count(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert sorted(rows) == vitkit.list_models()
    assert rows["vit_base_patch16_224"][1:3] == ["86.6M", "86,567,656"]
    assert rows["vit_digits"][2] == f"{sum(p.numel() for p in vitkit.create_model('vit_digits').parameters()):,}"


def test_help_and_models_do_not_import_torch() -> None:
    """`vitkit --help` and `vitkit models` start fast because they never load torch (a property, not a timing);
    the huge-pages switch, which torch reads once, is set before any command could import it."""
    program = (
        "import contextlib, io, os, sys\n"
        "from vitkit import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert cli.main(['models']) == 0\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0\n"
        "print(sorted(name for name in ('torch', 'torchvision') if name in sys.modules))\n"
        f"print(os.environ['{cli.HUGE_PAGES_ENV}'])\n"
    )
    source = str(Path(vitkit.__file__).parents[1])  # the vitkit under test, also when another one is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    env.pop(cli.HUGE_PAGES_ENV, None)
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["[]", "1"]


def test_a_huge_pages_setting_the_user_made_wins(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv(cli.HUGE_PAGES_ENV, "0")
    assert run_cli(capsys, "models")[0] == 0
    assert os.environ[cli.HUGE_PAGES_ENV] == "0"


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_path_that_is_not_a_run_is_a_clear_error(
    command: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    extra = [tmp_path] if command == "predict" else []
    code, out, err = run_cli(capsys, command, tmp_path / "nowhere", *extra)
    assert (code, out) == (2, "")
    assert err == (
        f"vitkit: error: run folder not found: {tmp_path / 'nowhere'} (expected a vitkit run folder holding "
        "config.json and model.safetensors, as `vitkit train` writes)\n"
    )
    code, _, err = run_cli(capsys, command, tmp_path, *extra)
    assert code == 2
    assert err.startswith(f"vitkit: error: {tmp_path} has no model.safetensors")
    # An interrupted run: the error says how to finish it.
    vitkit.create_model("vit_digits").save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / LAST_WEIGHTS)
    code, _, err = run_cli(capsys, command, tmp_path, *extra)
    assert code == 2
    assert "has no model.safetensors" in err and f"vitkit train --resume {tmp_path}" in err


def test_evaluate_a_saved_model_without_training_config_needs_data_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    vitkit.create_model("vit_digits").save_pretrained(tmp_path)
    code, _, err = run_cli(capsys, "evaluate", tmp_path)
    assert code == 2
    assert "has no train_config.json" in err and "--data-dir" in err


def test_training_errors_are_messages_not_tracebacks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_cli(capsys, "train", "--epochs", "0")
    assert (code, err) == (2, "vitkit: error: epochs=0 is invalid: expected an integer >= 1\n")

    def diverge(config: training.TrainConfig, **callbacks: object) -> None:
        raise training.NonFiniteLossError("training stopped: the loss became nan at epoch 1", epoch=1, step=3)

    monkeypatch.setattr(training, "train", diverge)
    code, _, err = run_cli(capsys, "train")
    assert (code, err) == (1, "vitkit: error: training stopped: the loss became nan at epoch 1\n")


def test_console_script_and_python_m(tmp_path: Path) -> None:
    """The installed `vitkit` script and `python -m vitkit` both run the CLI (as `make train` and torchrun use them);
    the two run side by side."""
    commands = [[sys.executable, "-m", "vitkit", "models"],
                [Path(sys.executable).with_name("vitkit"), "evaluate", tmp_path / "missing"]]  # fmt: skip
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    (listing, listing_err), (_, failed_err) = (process.communicate(timeout=120) for process in processes)
    assert processes[0].returncode == 0, listing_err
    assert "vit_base_patch16_224" in listing and "86,567,656" in listing
    assert processes[1].returncode == 2
    assert failed_err.startswith("vitkit: error: run folder not found") and "Traceback" not in failed_err


def test_train_builds_a_multi_node_torchrun_command_that_torchrun_reads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.run import config_from_args, get_args_parser

    from vitkit.cli.launch import torchrun_command

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # torchrun's reading sets it

    argv = ["train", "--nnodes", "2:4", "--node-rank", "1", "--rdzv-endpoint", "node0:29400", "--max-restarts", "3",
            "--nproc", "8", "--out", "runs/big"]  # fmt: skip
    command = torchrun_command(cli.build_parser().parse_args(argv), Path("settings.json"), "big")
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    launch, script, script_args = config_from_args(get_args_parser().parse_args(command[3:]))
    assert (launch.min_nodes, launch.max_nodes, launch.nproc_per_node, launch.max_restarts) == (2, 4, 8, 3)
    assert (launch.rdzv_backend, launch.rdzv_endpoint, launch.run_id) == ("c10d", "node0:29400", "vitkit-big")
    assert launch.rdzv_configs["is_host"] == "false"  # node 1 joins the store node 0 hosts
    assert [script, *script_args] == [sys.executable, "-u", "-m", "vitkit", "train", "--config", "settings.json"]


def test_train_nproc_builds_a_standalone_torchrun_command_that_torchrun_reads_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--nproc N` on one machine: what differs from the several machines' command that
    tests/training/test_distributed.py runs end to end (`vitkit train --nnodes 2`)."""
    from torch.distributed.run import config_from_args, get_args_parser

    from vitkit.cli.launch import torchrun_command

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # torchrun's reading sets it
    command = torchrun_command(cli.build_parser().parse_args(["train", "--nproc", "2"]), Path("settings.json"), "r")
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    args = get_args_parser().parse_args(command[3:])
    assert args.standalone and args.rdzv_endpoint == ""
    launch, script, script_args = config_from_args(args)
    assert (launch.min_nodes, launch.max_nodes, launch.nproc_per_node, launch.max_restarts) == (1, 1, 2, 0)
    assert [script, *script_args] == [sys.executable, "-u", "-m", "vitkit", "train", "--config", "settings.json"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
        (["--nnodes", "2", "--rdzv-endpoint", "node0"], "--rdzv-endpoint must be HOST:PORT, got 'node0'"),
        (["--nnodes", "2", "--rdzv-endpoint", "node0:29400"], "needs --out DIR"),
        (["--nnodes", "3", "--rdzv-endpoint", "node0:29400", "--out", "x", "--batch-size", "64"],
         "batch_size 64 does not split evenly between 3 processes"),
    ],
)  # fmt: skip
def test_multi_node_settings_that_cannot_work_are_refused_before_anything_starts(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, "train", *argv)
    assert code != 0 and message in err and "starting" not in err
