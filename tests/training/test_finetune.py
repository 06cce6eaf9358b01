"""Fine-tuning: --init-from (new head for other classes, position embeddings resized for another image size), layer-wise
learning-rate decay, frozen blocks, linear probes and LoRA runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_helpers import TINY, tiny_config, write_digit_folder

from vitkit import cli
from vitkit.io import load_safetensors, read_json
from vitkit.model import VisionTransformer
from vitkit.model.weights import resize_position_vectors
from vitkit.training import TrainConfig, finetune, load_run, train
from vitkit.training.optim import build_optimizer

NO_ARCHITECTURE = {name: None for name in TINY}  # take the architecture from the weights' config.json


@pytest.fixture
def source_run(tiny):
    return train(tiny("source", epochs=1))


@pytest.mark.parametrize("init_file", ["best.safetensors", None])
def test_fine_tune_on_other_classes_at_another_size(tiny, tmp_path: Path, source_run, init_file: str | None) -> None:
    folder = write_digit_folder(tmp_path / "three", classes=[0, 1, 2], per_class=40, size=16)
    init_from = source_run.run_dir / init_file if init_file else source_run.run_dir
    source = load_safetensors(source_run.run_dir / (init_file or "model.safetensors"))
    # lr so small that the trained weights are still the loaded ones, up to 1e-6.
    config = tiny(
        "tuned", data_dir=str(folder), image_size=16, init_from=str(init_from), lr=1e-9, min_lr=0.0,
        weight_decay=0.0, batch_size=16, epochs=1, ema_decay=0.0, **NO_ARCHITECTURE,
    )  # fmt: skip
    result = train(config)
    model, saved_config = load_run(result.run_dir)
    assert saved_config.init_from == str(init_from)
    assert model.config.hidden_dim == 32 and model.config.depth == 2  # the source's architecture
    assert model.num_classes == 3 and model.config.class_names == ["one", "two", "zero"]
    assert model.image_size == (16, 16) and model.pos_embed.shape == (1, 1 + 8 * 8, 32)
    tuned = model.state_dict()
    for key in (
        "patch_embed.proj.weight",
        "blocks.0.attn.q.weight",
        "blocks.1.mlp.fc2.bias",
        "cls_token",
        "norm.weight",
    ):
        torch.testing.assert_close(tuned[key], source[key], atol=1e-6, rtol=0)
    resized = resize_position_vectors(source["pos_embed"], (4, 4), (8, 8), num_prefix_tokens=1)
    torch.testing.assert_close(tuned["pos_embed"], resized, atol=1e-6, rtol=0)
    assert tuned["head.weight"].shape == (3, 32)


def test_init_from_a_missing_path_is_explained(tiny, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--init-from .*no such folder or file"):
        train(tiny(init_from=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        train(tiny(init_from=str(tmp_path / "empty")))


# --- layer-wise learning-rate decay, freezing, linear probe, LoRA runs (vitkit.training.finetune) ------------------


def tiny_model() -> VisionTransformer:
    """A 2-block ViT on 8x8 images of 4x4 patches, 3 classes."""
    return VisionTransformer(image_size=8, patch_size=4, in_channels=1, num_classes=3, **TINY)


def one_step(model: VisionTransformer, optimizer: torch.optim.Optimizer) -> None:
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()


def test_layer_decay_and_head_scale_give_each_parameter_the_learning_rate_of_the_table() -> None:
    model = tiny_model()
    optimizer = build_optimizer(model, lr=1.0, weight_decay=0.05, layer_decay=0.5, head_lr_scale=10.0)
    # Hand-computed for depth 2, decay 0.5: embeddings 0.5^3, block 0 0.5^2, block 1 0.5^1, final norm 1, head 10.
    table = {"patch_embed.": 0.125, "cls_token": 0.125, "pos_embed": 0.125, "blocks.0.": 0.25, "blocks.1.": 0.5,
             "norm.": 1.0, "head.": 10.0}  # fmt: skip
    lr_of = {id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]}
    names = [name for name, _ in model.named_parameters()]
    assert len(lr_of) == len(names)  # every parameter in exactly one group
    for name, param in model.named_parameters():
        lr, decay = lr_of[id(param)]
        assert lr == next(value for prefix, value in table.items() if name.startswith(prefix)), name
        # the decay / no-decay split is the model's own: matrices decay; vectors, position vectors and CLS do not
        assert decay == (0.05 if param.ndim > 1 and name not in ("pos_embed", "cls_token") else 0.0), name
    assert max(len(group["params"]) for group in optimizer.param_groups) < len(names)
    plain = build_optimizer(model, lr=1.0, weight_decay=0.05)
    assert [len(group["params"]) for group in plain.param_groups] == [
        len(group["params"]) for group in model.param_groups(0.05)
    ]  # without layer decay: the model's two groups as they are


@pytest.mark.parametrize(
    ("settings", "trained"),
    [({"freeze_blocks": 1}, ("blocks.1.", "norm.", "head.")), ({"linear_probe": True}, ("head.",))],
)
def test_frozen_parameters_do_not_change_in_a_step(settings: dict, trained: tuple[str, ...]) -> None:
    model = tiny_model()
    finetune.prepare_model(model, TrainConfig.from_dict(settings))
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    one_step(model, build_optimizer(model, lr=0.1, weight_decay=0.05))
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == name.startswith(trained), name


def test_freezing_more_blocks_than_the_model_has_is_explained() -> None:
    with pytest.raises(ValueError, match="freeze_blocks=3 is invalid: expected at most the depth \\(2\\)"):
        finetune.prepare_model(tiny_model(), TrainConfig.from_dict({"freeze_blocks": 3}))
    with pytest.raises(ValueError, match="linear_probe and lora_rank exclude each other"):
        TrainConfig.from_dict({"linear_probe": True, "lora_rank": 2, "init_from": "x"})
    with pytest.raises(ValueError, match="lora_rank needs init_from"):
        TrainConfig.from_dict({"lora_rank": 2})
    with pytest.raises(ValueError, match="lora_targets='q,x' is invalid"):
        TrainConfig.from_dict({"lora_targets": "q,x"})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source run, LoRA run on it) trained through the command line: rank 2 adapters on q, v and fc2."""
    with pytest.MonkeyPatch.context() as patch:
        # The run's pictures and plots (tested in test_run_pictures and test_metrics) are most of a tiny run's time.
        patch.setattr("vitkit.explain.report.write_run_pictures", lambda *args: None)
        patch.setattr("vitkit.training.metrics.MetricsLog._plot", lambda *args: None)
        root = tmp_path_factory.mktemp("lora")
        folder = write_digit_folder(root / "digits", classes=[0, 1, 2], per_class=16, size=8)
        small = dict(data_dir=str(folder), epochs=1, batch_size=16, ema_decay=0.0)
        source = train(tiny_config(root / "source", **small)).run_dir
        flags = ["--data-dir", str(folder), "--epochs", "1", "--batch-size", "16", "--no-progress",
                 "--no-tensorboard", "--lr", "0.01", "--warmup-epochs", "0", "--init-from", source]  # fmt: skip
        lora = ["--lora-rank", "2", "--lora-alpha", "4", "--lora-targets", "q,v,fc2", "--layer-decay", "0.8"]
        assert cli.main(["train", *map(str, flags), *lora, "--out", str(root / "lora")]) == 0
        return source, root / "lora"


def test_a_lora_run_saves_adapters_and_a_merged_model_equal_to_the_adapted_one(lora_run: tuple[Path, Path]) -> None:
    source_dir, run_dir = lora_run
    adapters = load_safetensors(run_dir / finetune.ADAPTERS_FILE)
    expected = {f"blocks.{i}.{layer}.{ab}" for i in (0, 1) for layer in ("attn.q", "attn.v", "mlp.fc2")
                for ab in ("lora_A", "lora_B")} | {"head.weight", "head.bias"}  # fmt: skip
    assert set(adapters) == expected and adapters["blocks.0.attn.q.lora_A"].shape == (2, 32)
    assert any(adapters[key].abs().max() > 0 for key in expected if key.endswith("lora_B"))  # the adapters trained
    settings = read_json(run_dir / finetune.LORA_FILE)
    assert settings["rank"] == 2 and settings["alpha"] == 4.0 and settings["targets"] == ["q", "v", "fc2"]
    assert Path(settings["base_weights"]) == (source_dir / "model.safetensors").resolve()
    merged, _ = load_run(run_dir)  # a plain model: what evaluate, predict and serve load
    source = load_safetensors(source_dir / "model.safetensors")
    tuned = merged.state_dict()
    assert set(tuned) == set(source)
    for key in ("patch_embed.proj.weight", "blocks.0.attn.k.weight", "blocks.1.mlp.fc1.bias", "norm.weight"):
        assert torch.equal(tuned[key], source[key]), key  # not adapted, frozen
    assert not torch.allclose(tuned["blocks.1.attn.q.weight"], source["blocks.1.attn.q.weight"])
    adapted = finetune.load_lora_model(run_dir)
    images = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(images), adapted(images), atol=1e-5, rtol=0)


def digit_png(path: Path) -> Path:
    """One 8x8 grey digit image file."""
    from PIL import Image
    from sklearn.datasets import load_digits

    Image.fromarray((load_digits().images[7] * 255 / 16).astype("uint8"), "L").save(path)
    return path


def test_export_merge_lora_writes_a_plain_model_with_the_adapted_logits(
    lora_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_dir, run_dir = lora_run
    out = tmp_path / "merged"
    assert cli.main(["export", str(run_dir), "--merge-lora", "--out", str(out)]) == 0
    assert "max abs difference of logits" in capsys.readouterr().out
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "model.safetensors"]
    merged = VisionTransformer.from_pretrained(out).eval()
    assert set(merged.state_dict()) == set(load_safetensors(source_dir / "model.safetensors"))  # no adapters
    images = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(merged(images), finetune.load_lora_model(run_dir)(images), atol=1e-5, rtol=0)
    assert cli.main(["export", str(source_dir), "--merge-lora", "--out", str(tmp_path / "no")]) == 2
    assert "is not a LoRA run (it has no lora.json" in capsys.readouterr().err


def test_evaluate_predict_and_serve_load_a_lora_run_as_the_adapted_model(
    lora_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapi.testclient import TestClient

    from vitkit.cli.common import run_held_out_split
    from vitkit.data import decode_image, eval_transform
    from vitkit.serve import create_app

    _, run_dir = lora_run
    adapted = finetune.load_lora_model(run_dir)
    image = digit_png(tmp_path / "digit.png")
    with torch.no_grad():
        expected = adapted(eval_transform(adapted.config)(decode_image(image.read_bytes(), 1))[None]).softmax(1)[0]
    expected_by_class = dict(zip(adapted.config.labels, expected.tolist()))

    assert cli.main(["predict", str(run_dir), str(image), "--top-k", "3", "--device", "cpu"]) == 0
    for entry in json.loads(capsys.readouterr().out)["top_k"]:
        assert entry["probability"] == pytest.approx(expected_by_class[entry["class"]], abs=1e-5)
    with TestClient(create_app(run_dir)) as client:
        response = client.post("/predict?top_k=3", files=[("files", ("digit.png", image.read_bytes(), "image/png"))])
    assert response.status_code == 200, response.text
    for entry in response.json()["predictions"][0]["top_k"]:
        assert entry["probability"] == pytest.approx(expected_by_class[entry["class"]], abs=1e-5)

    assert cli.main(["evaluate", str(run_dir), "--json", "--device", "cpu", "--plot", str(tmp_path / "cm.png")]) == 0
    held_out, _ = run_held_out_split(run_dir, adapted, instead="")
    batch = torch.stack([held_out[i][0] for i in range(len(held_out))])
    labels = torch.tensor([held_out[i][1] for i in range(len(held_out))])
    with torch.no_grad():
        accuracy = (adapted(batch).argmax(1) == labels).double().mean().item()
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(accuracy)
