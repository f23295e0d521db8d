"""POPE metrics (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models").

POPE asks yes/no questions "Is there a <object> in the image?"; "yes" is the positive class. The
metrics are the usual binary ones over all questions, plus the yes-ratio (share of "yes" answers),
which shows a model's bias towards answering yes.

Edge cases are defined, never NaN: with no "yes" prediction, precision is 0; with no positive label,
recall is 0; F1 is 0 when precision + recall is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from dsanchor.errors import MetricInputError

__all__ = ["PopeMetrics", "pope_metrics"]


class PopeMetrics(NamedTuple):
    """POPE scores, fractions in [0, 1], with the confusion counts behind them."""

    accuracy: float
    precision: float  # TP / (TP + FP); 0 when nothing is predicted "yes"
    recall: float  # TP / (TP + FN); 0 when no label is "yes"
    f1: float  # harmonic mean of precision and recall; 0 when both are 0
    yes_ratio: float  # share of "yes" predictions
    tp: int
    fp: int
    tn: int
    fn: int

    def as_dict(self) -> dict[str, float]:
        """The five metrics (without the counts), keyed as in results.json."""
        return {"accuracy": self.accuracy, "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "yes_ratio": self.yes_ratio}


def _tensor(values: Sequence[bool | int | float] | torch.Tensor) -> torch.Tensor:
    """A flat bool tensor (kept as is) or float64 tensor."""
    t = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.tensor(list(values))
    t = t.reshape(-1)
    return t if t.dtype == torch.bool else t.double()


def _predictions(values: Sequence[bool | int | float] | torch.Tensor, threshold: float) -> torch.Tensor:
    t = _tensor(values)
    if t.dtype == torch.bool:
        return t
    if torch.isnan(t).any() or ((t < 0) | (t > 1)).any():
        raise MetricInputError("POPE predictions must be booleans, 0/1 or probabilities in [0, 1]")
    return t >= threshold


def _labels(values: Sequence[bool | int] | torch.Tensor) -> torch.Tensor:
    t = _tensor(values)
    if t.dtype == torch.bool:
        return t
    if ((t != 0) & (t != 1)).any():
        raise MetricInputError("POPE labels must be booleans or 0/1")
    return t == 1


def pope_metrics(predictions: Sequence[bool | int | float] | torch.Tensor,
                 labels: Sequence[bool | int] | torch.Tensor, threshold: float = 0.5) -> PopeMetrics:
    """Accuracy, precision, recall, F1 and yes-ratio of yes/no answers.

    Args:
        predictions: one answer per question: booleans (True = "yes"), 0/1, or P(yes) in [0, 1].
        labels: the true answers, booleans or 0/1.
        threshold: a prediction >= ``threshold`` is "yes" (ignored for booleans).

    Returns:
        The metrics and the confusion counts.
    """
    pred = _predictions(predictions, threshold)
    lab = _labels(labels)
    if pred.numel() == 0:
        raise MetricInputError("POPE got no predictions; pass one answer per question")
    if pred.numel() != lab.numel():
        raise MetricInputError(f"POPE needs one label per prediction; got {pred.numel()} predictions "
                               f"and {lab.numel()} labels")
    tp = int((pred & lab).sum())
    fp = int((pred & ~lab).sum())
    tn = int((~pred & ~lab).sum())
    fn = int((~pred & lab).sum())
    n = pred.numel()
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeMetrics(accuracy=(tp + tn) / n, precision=precision, recall=recall, f1=f1, yes_ratio=(tp + fp) / n,
                       tp=tp, fp=fp, tn=tn, fn=fn)
