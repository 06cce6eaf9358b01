"""Look inside a ViT: attention rollout, Grad-CAM, position-embedding similarity, attention distance, filters.

``maps`` computes arrays; ``figures`` draws them (matplotlib, imported only when drawing).
"""

from vitkit.explain.maps import (
    HEAD_FUSIONS,
    attention_distance,
    attention_rollout,
    embedding_filters,
    grad_cam,
    head_attention,
    head_attention_of,
    mean_attention_distance,
    position_similarity,
    rollout,
)

__all__ = [
    "HEAD_FUSIONS",
    "attention_distance",
    "attention_rollout",
    "embedding_filters",
    "grad_cam",
    "head_attention",
    "head_attention_of",
    "mean_attention_distance",
    "position_similarity",
    "rollout",
]
