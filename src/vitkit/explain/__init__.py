"""Look inside a ViT: attention rollout, Grad-CAM, transformer attribution, position-embedding similarity,
attention distance, filters; and whether a map is faithful to the model (deletion and insertion curves).

``maps`` computes arrays; ``faithfulness`` scores them; ``figures`` draws them (matplotlib, imported only when
drawing).
"""

from vitkit.explain.faithfulness import Curves, deletion_insertion
from vitkit.explain.maps import (
    HEAD_FUSIONS,
    attention_attribution,
    attention_distance,
    attention_rollout,
    attribution,
    embedding_filters,
    grad_cam,
    head_attention,
    head_attention_of,
    last_block_attention,
    mean_attention_distance,
    position_similarity,
    rollout,
)

__all__ = [
    "HEAD_FUSIONS",
    "Curves",
    "attention_attribution",
    "attention_distance",
    "attention_rollout",
    "attribution",
    "deletion_insertion",
    "embedding_filters",
    "grad_cam",
    "head_attention",
    "head_attention_of",
    "last_block_attention",
    "mean_attention_distance",
    "position_similarity",
    "rollout",
]
