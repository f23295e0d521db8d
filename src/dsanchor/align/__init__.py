"""Alignment heads (DESIGN.md "Alignment heads"): projections of coarse, regions and text into one joint
space, trained contrastively (InfoNCE both ways), scoring coarse and text-pooled fine.

The names load their module on first use (:mod:`dsanchor.lazy`).
"""

from dsanchor.lazy import lazy_exports

_WHERE = {
    "AlignConfig": "dsanchor.align.heads",
    "AlignmentHeads": "dsanchor.align.heads",
    "JointFeatures": "dsanchor.align.heads",
    "multi_positive_infonce": "dsanchor.align.loss",
    "symmetric_multi_positive_infonce": "dsanchor.align.loss",
    "Relevance": "dsanchor.align.positives",
    "AlignTrainConfig": "dsanchor.align.train",
    "train_heads": "dsanchor.align.train",
    "embed_images": "dsanchor.align.train",
    "evaluate_heads": "dsanchor.align.train",
    "evaluate_by_granularity": "dsanchor.align.train",
}

__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
