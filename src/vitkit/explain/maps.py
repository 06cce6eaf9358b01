"""What a ViT looks at, as arrays: the ViT paper's figures 6 and 7 before any drawing (figures.py draws them).

Every function takes a model and preprocessed images (B, C, H, W), as the model's forward does, and returns a
detached float tensor on the CPU. The functions that work from attention probabilities also exist in a form
that takes them (``rollout``, ``head_attention_of``, ``attention_distance``, ``attribution``), so one forward pass
can serve them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from vitkit.model import VisionTransformer, ViTConfig
from vitkit.model.small_data import ShiftedPatchEmbedding

HEAD_FUSIONS = ("mean", "max", "min")


@contextlib.contextmanager
def evaluating(model: VisionTransformer) -> Iterator[VisionTransformer]:
    """The model in eval mode (no dropout, no stochastic depth) for the block, then back as it was."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _classifier_view(matrix: Tensor, config: ViTConfig) -> Tensor:
    """(B, N, N) token-to-token weights -> (B, gh, gw): what the classifier's input draws from each patch.

    The classifier reads the CLS token (``pool="cls"``) or the mean of the patch tokens (``pool="mean"``); the
    map is that row (or the mean of those rows) over the patch columns, renormalised to sum to 1. Sequence
    pooling (``pool="seq"``) reads a weighted mean of the patch tokens whose weights depend on the image and are
    not among the attention probabilities; its maps use the plain mean, every patch token counted alike.
    """
    prefix = config.num_prefix_tokens
    if config.pool == "cls":
        source = matrix[:, 0, prefix:]
    else:
        source = matrix[:, prefix:, prefix:].mean(dim=1)
    # A row with no weight on any patch (possible for gradient-weighted attention) stays a map of zeros.
    source = source / source.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(source.dtype).tiny)
    return source.reshape(matrix.shape[0], *config.grid_size).float().cpu()


def _check_attentions(attentions: Sequence[Tensor], config: ViTConfig) -> None:
    n = config.num_prefix_tokens + config.num_patches
    if not attentions:
        raise ValueError("expected the attention probabilities of at least one block, got none")
    for i, attention in enumerate(attentions):
        if attention.ndim != 4 or attention.shape[-2:] != (n, n):
            raise ValueError(
                f"attention of block {i} has shape {tuple(attention.shape)}; expected (batch, heads, {n}, {n}) "
                f"for this model's {n} tokens"
            )


def rollout(
    attentions: Sequence[Tensor], config: ViTConfig, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) of per-block attention probabilities (B, h, N, N) -> (B, gh, gw).

    Each block's heads are fused (mean, max or min); with ``discard_ratio`` the weakest fraction of each row's
    weights is set to zero (less noise); the identity is added for the residual connection and rows are
    renormalised; the blocks' matrices are multiplied, last block first. The map is the classifier's row of
    the product over the patches (see ``_classifier_view``) and sums to 1.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1) (the fraction of weights to drop), got {discard_ratio!r}")
    _check_attentions(attentions, config)

    def mixing(attention: Tensor) -> Tensor:
        """One block's fused, thinned, residual-mixed and renormalised attention: (B, N, N)."""
        attention = attention.detach().double()
        if head_fusion == "mean":
            fused = attention.mean(dim=1)
        elif head_fusion == "max":
            fused = attention.amax(dim=1)
        else:
            fused = attention.amin(dim=1)
        num_tokens = fused.shape[-1]
        num_discarded = int(num_tokens * discard_ratio)
        if num_discarded:
            weakest = fused.topk(num_discarded, dim=-1, largest=False).indices
            fused = fused.scatter(-1, weakest, 0.0)
        mixed = fused + torch.eye(num_tokens, dtype=fused.dtype, device=fused.device)  # the residual path
        return mixed / mixed.sum(dim=-1, keepdim=True)

    product = mixing(attentions[0])
    for attention in attentions[1:]:
        product = mixing(attention) @ product
    return _classifier_view(product, config)


def attention_rollout(
    model: VisionTransformer, images: Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> Tensor:
    """Attention rollout maps (B, gh, gw), each summing to 1: where the classifier's information comes from."""
    with evaluating(model):
        attentions = model.get_attention_maps(images)
    return rollout(attentions, model.config, head_fusion, discard_ratio)


def head_attention_of(attentions: Sequence[Tensor], config: ViTConfig) -> Tensor:
    """The last block's attention from the classifier's token, per head: (B, heads, gh, gw), each summing to 1."""
    _check_attentions(attentions, config)
    last = attentions[-1].detach().double()
    b, heads, n, _ = last.shape
    return _classifier_view(last.reshape(b * heads, n, n), config).reshape(b, heads, *config.grid_size)


def head_attention(model: VisionTransformer, images: Tensor) -> Tensor:
    """Per-head attention of the classifier's token in the last block: (B, heads, gh, gw)."""
    with evaluating(model):
        attentions = model.get_attention_maps(images)
    return head_attention_of(attentions, model.config)


def grad_cam(model: VisionTransformer, images: Tensor, target: int | Sequence[int] | Tensor | None = None) -> Tensor:
    """Grad-CAM (Selvaraju et al., 2017) for class ``target`` (default: the predicted one) -> (B, gh, gw), >= 0.

    The activations are the last block's first LayerNorm output on the patch tokens: what its attention reads
    (keys and values), and pytorch-grad-cam's layer for ViTs. The last block's output patch tokens cannot be
    used, since a CLS-token classifier's score does not depend on them. Each feature is weighted by its gradient
    averaged over the patches; the weighted sum per patch, clipped at zero, is the map (in units of the class
    score). The features are signed, so on random weights the sign of that sum, and with it whether the map
    lights the pen strokes or the blank paper, is a coin toss: do not read much into a poorly trained model's map.
    """
    config = model.config
    last = model.blocks[-1]
    read: list[Tensor] = []

    def as_leaf(module: torch.nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        read.append(output.detach().requires_grad_(True))  # (B, N, D): the gradient is taken with respect to it
        return read[-1]

    with evaluating(model):
        with torch.no_grad():
            tokens = model.embed(images)
            for block in model.blocks[:-1]:
                tokens = block(tokens)
        handle = last.norm1.register_forward_hook(as_leaf)
        try:
            with torch.enable_grad():
                logits = model.forward_head(model.norm(last(tokens)))
                targets = _targets(target, logits)
                (gradients,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), read[0])
        finally:
            handle.remove()
    prefix = config.num_prefix_tokens
    patches, patch_gradients = read[0].detach()[:, prefix:], gradients[:, prefix:]  # (B, P, D)
    weights = patch_gradients.mean(dim=1, keepdim=True)  # (B, 1, D): how much each feature raises the score
    cam = (weights * patches).sum(dim=-1).clamp_min(0)
    return cam.reshape(images.shape[0], *config.grid_size).float().cpu()


def attribution(attentions: Sequence[Tensor], gradients: Sequence[Tensor], config: ViTConfig) -> Tensor:
    """Transformer attribution (Chefer, Gur & Wolf, 2021) from per-block attention probabilities and their gradients.

    Each block's attention (B, h, N, N) is weighted by the gradient of the class score with respect to it, the
    positive part kept and the heads averaged: Abar = mean_h((grad * A)^+). Relevance starts as the identity
    (each token is itself) and is propagated through the blocks, first to last, with the residual connection:
    R <- R + Abar @ R. The map is the classifier's row of R over the patches (see ``_classifier_view``), summing to 1.
    Unlike the rollout, heads and links that lower the class score count for nothing.
    """
    _check_attentions(attentions, config)
    if len(gradients) != len(attentions):
        raise ValueError(f"expected one gradient per block's attention ({len(attentions)}), got {len(gradients)}")
    batch, _, n, _ = attentions[0].shape
    relevance = torch.eye(n, dtype=torch.float64, device=attentions[0].device).expand(batch, n, n)  # each token itself
    for i, (attention, gradient) in enumerate(zip(attentions, gradients)):
        if gradient.shape != attention.shape:
            raise ValueError(
                f"gradient of block {i} has shape {tuple(gradient.shape)}; "
                f"expected the attention's {tuple(attention.shape)}"
            )
        weighted = (gradient.detach().double() * attention.detach().double()).clamp_min(0).mean(dim=1)  # (B, N, N)
        relevance = relevance + weighted @ relevance
    return _classifier_view(relevance, config)


def attention_attribution(
    model: VisionTransformer, images: Tensor, target: int | Sequence[int] | Tensor | None = None
) -> Tensor:
    """Transformer attribution maps (B, gh, gw) for class ``target`` (default: the predicted one), each summing to 1.

    One forward pass that keeps every block's attention probabilities in the autograd graph (the blocks'
    ``return_attention``), one backward pass from the class score to them; see :func:`attribution`.
    """
    with evaluating(model), torch.enable_grad():
        tokens = model.embed(images)
        attentions = []
        for block in model.blocks:
            tokens, attention = block(tokens, return_attention=True)
            attentions.append(attention)
        logits = model.forward_head(model.norm(tokens))
        targets = _targets(target, logits)
        gradients = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), attentions)
    return attribution(attentions, gradients, model.config)


def last_block_attention(model: VisionTransformer, images: Tensor) -> Tensor:
    """The last block's attention from the classifier's token, heads averaged: (B, gh, gw), each summing to 1."""
    with evaluating(model):
        attentions = model.get_attention_maps(images)
    return head_attention_of(attentions, model.config).mean(dim=1)


def _targets(target: int | Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
    batch, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    targets = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(batch)
    if targets.numel() != batch:
        raise ValueError(f"target has {targets.numel()} classes for {batch} images; give one class, or one per image")
    if not bool(((targets >= 0) & (targets < num_classes)).all()):
        raise ValueError(f"target classes {targets.tolist()} out of range: the model has {num_classes} classes")
    return targets


def position_similarity(model: VisionTransformer) -> Tensor:
    """Cosine similarity of each patch position's embedding with every other's: (gh, gw, gh, gw).

    ``[r, c]`` is a map over the grid for the patch in row r, column c (the ViT paper's figure 7, centre).
    """
    config = model.config
    table = model.pos_embed.detach()[0, config.num_prefix_tokens :].double()  # (P, D)
    unit = torch.nn.functional.normalize(table, dim=-1)
    return (unit @ unit.T).reshape(*config.grid_size, *config.grid_size).float().cpu()


def attention_distance(attentions: Sequence[Tensor], config: ViTConfig) -> Tensor:
    """Mean attention distance in pixels per block and head, (depth, heads), averaged over images and queries.

    For each query patch, the distance between patch centres weighted by the attention it pays to the other
    patches (the CLS token has no place in the image, so it is left out and the rows renormalised).
    """
    _check_attentions(attentions, config)
    gh, gw = config.grid_size
    ph, pw = config.patch_size
    rows, cols = torch.meshgrid(torch.arange(gh) * ph, torch.arange(gw) * pw, indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).double()  # (P, 2) in pixels
    distances = torch.cdist(centres, centres)  # (P, P)
    prefix = config.num_prefix_tokens
    per_block = []
    for attention in attentions:
        patches = attention.detach().double().cpu()[:, :, prefix:, prefix:]  # (B, h, P, P)
        patches = patches / patches.sum(dim=-1, keepdim=True)
        per_block.append((patches * distances).sum(dim=-1).mean(dim=(0, 2)))  # (h,)
    return torch.stack(per_block).float()


def mean_attention_distance(model: VisionTransformer, images: Tensor) -> Tensor:
    """How far each block's heads look, in pixels: (depth, heads) (the ViT paper's figure 7, right)."""
    with evaluating(model):
        attentions = model.get_attention_maps(images)
    return attention_distance(attentions, model.config)


def embedding_filters(model: VisionTransformer, k: int = 28) -> Tensor:
    """The first ``k`` principal components of the patch projection's filters: (k, C, ph, pw).

    Each row of the projection is a filter over one patch; their principal components show what the model
    measures in a patch (the ViT paper's figure 7, left, shows 28). With shifted patch tokenization a token reads
    its patch and four copies shifted by half a patch: its five filters add up to one filter over a window twice
    the patch's size, (k, C, 2 ph, 2 pw), each weight scaled by the LayerNorm's gain on the normalised patch. A
    convolutional stem (``conv_stem``) leaves no filter over pixels to show: that is a ValueError.
    """
    weight = _pixel_filters(model)  # (D, C, fh, fw)
    filters = weight.flatten(1)  # (D, C * ph * pw)
    most = min(filters.shape)
    if not 1 <= k <= most:
        raise ValueError(f"k must be between 1 and {most} (the number of filters or of values in one), got {k}")
    _, _, components = torch.linalg.svd(filters - filters.mean(dim=0), full_matrices=False)
    return components[:k].reshape(k, *weight.shape[1:]).float()


def _pixel_filters(model: VisionTransformer) -> Tensor:
    """(D, C, fh, fw): each embedding feature's linear filter over the pixels around one patch."""
    embed, config = model.patch_embed, model.config
    if config.conv_stem:
        raise ValueError(
            f"this model cuts its patches from the features of a convolutional stem (conv_stem={config.conv_stem}), "
            "not from pixels: its patch projection has no filters over pixels to show"
        )
    if not isinstance(embed, ShiftedPatchEmbedding):
        return embed.proj.weight.detach().double().cpu()  # (D, C, ph, pw)
    (ph, pw), channels = config.patch_size, config.in_channels
    weight = (embed.proj.weight * embed.norm.weight).detach().double().cpu()
    views = weight.reshape(weight.shape[0], 5, channels, ph, pw)  # the image, then its shifted copies
    half_h, half_w = ph // 2, pw // 2
    window = views.new_zeros(weight.shape[0], channels, ph + 2 * half_h, pw + 2 * half_w)
    for view, (dy, dx) in zip(views.unbind(dim=1), [(0, 0), *embed.shifts]):
        # the copy holds the image (dy, dx) away: its filter covers the window moved by that much
        window[:, :, half_h + dy : half_h + dy + ph, half_w + dx : half_w + dx + pw] += view
    return window
