"""The models of a comparison, built the same way for every library, and how each library's training code trains.

Every model is built at the same registered size and in eval mode: vitkit plain, vitkit optimized (exact, fast,
ONNX Runtime int8) and the peers timm, transformers, torchvision and vit-pytorch. Peers are optional (the `bench`
extra): a missing one is skipped with a note.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from vitkit.model import VisionTransformer, get_config
from vitkit.model.config import ViTConfig

logger = logging.getLogger(__name__)

FP32_PEERS = ("timm", "transformers", "torchvision", "vit-pytorch")
VITKIT_VARIANTS = ("vitkit", "vitkit exact", "vitkit fast")


def _timm(config: ViTConfig, name: str) -> nn.Module:
    import timm

    return timm.create_model(name, img_size=config.image_size, num_classes=config.num_classes)


def _transformers(config: ViTConfig, name: str) -> nn.Module:
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    # transformers 5's configs take num_labels and attn_implementation through the **kwargs that their
    # dataclass-generated signature does not show
    hf = HFConfig(  # type: ignore[call-arg]
        hidden_size=config.hidden_dim, num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim, image_size=config.image_size[0], patch_size=config.patch_size[0],
        num_labels=config.num_classes, layer_norm_eps=config.layer_norm_eps, attn_implementation="sdpa",
    )  # fmt: skip
    model = ViTForImageClassification(hf).eval()
    return _Logits(model)


class _Logits(nn.Module):
    """transformers returns an output object: take its logits, as a user would."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(pixel_values=images).logits


def _torchvision(config: ViTConfig, name: str) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

    return TorchvisionViT(
        image_size=config.image_size[0], patch_size=config.patch_size[0], num_layers=config.depth,
        num_heads=config.num_heads, hidden_dim=config.hidden_dim, mlp_dim=config.mlp_dim,
        num_classes=config.num_classes,
    )  # fmt: skip


def _vit_pytorch(config: ViTConfig, name: str) -> nn.Module:
    from vit_pytorch import ViT

    return ViT(
        image_size=config.image_size[0], patch_size=config.patch_size[0], num_classes=config.num_classes,
        dim=config.hidden_dim, depth=config.depth, heads=config.num_heads, mlp_dim=config.mlp_dim,
    )  # fmt: skip


def _vitkit(config: ViTConfig, name: str, **options: Any) -> nn.Module:
    import vitkit

    torch.manual_seed(0)
    model = VisionTransformer(config)
    return vitkit.optimize(model, **options) if options else model


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "vitkit": _vitkit,
    "vitkit exact": lambda config, name: _vitkit(config, name, exact=True),
    "vitkit fast": lambda config, name: _vitkit(config, name, exact=False),
    "timm": _timm,
    "transformers": _transformers,
    "torchvision": _torchvision,
    "vit-pytorch": _vit_pytorch,
    "onnxruntime int8": lambda config, name: _vitkit(config, name, onnxruntime=True, int8=True),
}

# What each builder imports, imported before a memory baseline: peak memory is the model's, not its library's import.
LIBRARY_MODULES = {
    "vitkit": "vitkit.training.loop",  # the training row's forward context (inference rows import no more)
    "timm": "timm",
    "transformers": "transformers.models.vit.modeling_vit",
    "torchvision": "torchvision.models.vision_transformer",
    "vit-pytorch": "vit_pytorch",
    "onnxruntime int8": "onnxruntime",
}


def build(label: str, name: str, image_size: int) -> nn.Module | None:
    """The model ``label`` at the named size, in eval mode; None (logged) when its library is not installed."""
    config = get_config(name, image_size=image_size)
    try:
        return BUILDERS[label](config, name).eval()
    except ImportError as err:
        logger.warning("%s skipped: %s", label, err)
        return None


def _adamw_settings() -> tuple[float, float]:
    """vitkit train's default learning rate and weight decay, given to both libraries' AdamW."""
    from vitkit.training.config import TrainConfig

    defaults = TrainConfig()
    return cast(float, defaults.lr), defaults.weight_decay  # TrainConfig's __post_init__ fills in the default lr


def _vitkit_adamw(model: nn.Module) -> torch.optim.Optimizer:
    from vitkit.training.optim import build_optimizer

    lr, weight_decay = _adamw_settings()
    return build_optimizer(model, lr, weight_decay)


def _timm_adamw(model: nn.Module, **options: Any) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    lr, weight_decay = _adamw_settings()
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay, **options)


ForwardContext = Callable[[nn.Module, Tensor], contextlib.AbstractContextManager]


def no_context(model: nn.Module, images: Tensor) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def vitkit_training_forward(model: nn.Module, images: Tensor) -> contextlib.AbstractContextManager:
    """What `vitkit train` (``cpu_kernels="auto"``) runs a forward pass of ``model`` on ``images`` in: the trainer's
    own decision, :func:`vitkit.training.cpu_kernels.choose`."""
    from vitkit.training import cpu_kernels

    return cpu_kernels.choose("auto", images.device, cast(VisionTransformer, model), images.shape[0]).forward()


@dataclass(frozen=True)
class TrainingRecipe:
    """How a library's training code trains: the model it builds, its AdamW, what its forward passes run in."""

    model: str
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    forward_context: ForwardContext = no_context


# The training comparison's rows, each as its library's training code trains: vitkit's trainer updates with fused
# AdamW and runs its forward as `cpu_kernels.choose` decides (GELU outputs recomputed in the backward pass, linear
# layers multiplied by oneDNN); timm's train.py builds AdamW with create_optimizer_v2 (on the CPU torch's
# per-tensor loop). The third row gives timm's model the fused update.
TRAINERS: dict[str, TrainingRecipe] = {
    "vitkit": TrainingRecipe("vitkit", _vitkit_adamw, vitkit_training_forward),
    "timm": TrainingRecipe("timm", _timm_adamw),
    "timm, fused AdamW": TrainingRecipe("timm", lambda model: _timm_adamw(model, fused=True)),
}


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    autocast: torch.dtype | None = None,
    forward_context: ForwardContext = no_context,
) -> Callable[[], None]:
    """One training step of ``model`` on ``images`` (forward, cross-entropy, backward, ``optimizer``), the forward
    in ``forward_context(model, images)`` and under autocast to ``autocast`` when given."""
    labels = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)

    def step() -> None:
        context = forward_context(model, images)
        with context, torch.autocast(images.device.type, autocast, enabled=autocast is not None):
            loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
