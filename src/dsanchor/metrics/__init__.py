"""Evaluation metrics, each after its reference definition (DESIGN.md "Metrics").

* :mod:`~dsanchor.metrics.captioning`: BLEU-1..4 and CIDEr-D (raw scale) through pycocoevalcap's scorers.
* :mod:`~dsanchor.metrics.chair`: CHAIR_i / CHAIR_s object hallucination (Rohrbach et al. 2018).
* :mod:`~dsanchor.metrics.pope`: POPE accuracy, precision, recall, F1 and yes-ratio (Li et al. 2023).
* :mod:`~dsanchor.metrics.retrieval`: Recall@K and median rank as CLIP_benchmark defines them.
* :mod:`~dsanchor.metrics.tokenize`: the PTB tokenisers and the singulariser these use.
"""

from dsanchor.errors import MetricInputError
from dsanchor.metrics.captioning import CaptionMetrics, bleu, caption_metrics, cider
from dsanchor.metrics.chair import (
    CaptionChair,
    ChairResult,
    Mention,
    Vocabulary,
    caption_objects,
    chair,
    get_vocabulary,
    gt_objects_from_coco,
    list_vocabularies,
)
from dsanchor.metrics.pope import PopeMetrics, pope_metrics
from dsanchor.metrics.retrieval import median_rank, ranks_of_first_positive, recall_at_k
from dsanchor.metrics.tokenize import caption_tokens, ptb_tokenize, singularize

__all__ = [
    "MetricInputError",
    "CaptionMetrics", "bleu", "cider", "caption_metrics",
    "Mention", "CaptionChair", "ChairResult", "Vocabulary", "chair", "caption_objects", "gt_objects_from_coco",
    "get_vocabulary", "list_vocabularies",
    "PopeMetrics", "pope_metrics",
    "recall_at_k", "median_rank", "ranks_of_first_positive",
    "ptb_tokenize", "caption_tokens", "singularize",
]
