"""Hallucination detection (DESIGN.md "Hallucination detector"): P(object present | image features).

Trained on annotated objects and POPE-style negatives, evaluated POPE-style; its presence estimates give
the RL reward's hallucination penalty through :func:`hallucination_share`.
"""

from dsanchor.hallucination.detector import DetectorConfig, HallucinationDetector, ObjectVocabulary
from dsanchor.hallucination.mentions import caption_objects, hallucination_share, hallucination_shares
from dsanchor.hallucination.negatives import (
    SAMPLINGS,
    ObjectStats,
    PresencePairs,
    build_pairs,
    object_rows,
    sample_negatives,
)
from dsanchor.hallucination.train import (
    DetectorTrainConfig,
    PopeConfig,
    dataset_stats,
    evaluate_pope,
    holdout,
    train_detector,
)

__all__ = [
    "DetectorConfig", "HallucinationDetector", "ObjectVocabulary",
    "caption_objects", "hallucination_share", "hallucination_shares",
    "SAMPLINGS", "ObjectStats", "PresencePairs", "build_pairs", "object_rows", "sample_negatives",
    "DetectorTrainConfig", "PopeConfig", "dataset_stats", "evaluate_pope", "holdout", "train_detector",
]
