"""POPE metrics against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from dsanchor.metrics import MetricInputError
from dsanchor.metrics.pope import PopeMetrics, pope_metrics


def test_hand_computed_values():
    # TP = 3, FP = 1, TN = 4, FN = 2 over 10 questions
    pred = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    lab = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    m = pope_metrics(pred, lab)
    assert (m.tp, m.fp, m.tn, m.fn) == (3, 1, 4, 2)
    assert m.accuracy == pytest.approx(0.7)
    assert m.precision == pytest.approx(0.75)
    assert m.recall == pytest.approx(0.6)
    assert m.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert m.yes_ratio == pytest.approx(0.4)
    assert m.as_dict() == {"accuracy": m.accuracy, "precision": m.precision, "recall": m.recall, "f1": m.f1,
                           "yes_ratio": m.yes_ratio}


def test_probabilities_use_the_threshold_and_inputs_may_be_tensors():
    probs = torch.tensor([0.9, 0.5, 0.49, 0.1])
    labels = torch.tensor([True, False, True, False])
    m = pope_metrics(probs, labels)  # 0.5 counts as "yes"
    assert (m.tp, m.fp, m.tn, m.fn) == (1, 1, 1, 1)
    strict = pope_metrics(probs, labels, threshold=0.95)
    assert (strict.tp, strict.fp, strict.yes_ratio) == (0, 0, 0.0)
    assert pope_metrics([True, False], [1, 0]) == pope_metrics([1.0, 0.0], [True, False])


def test_no_yes_prediction_gives_zero_precision_and_f1():
    m = pope_metrics([False] * 4, [True, False, True, False])
    assert (m.precision, m.recall, m.f1, m.yes_ratio, m.accuracy) == (0.0, 0.0, 0.0, 0.0, 0.5)


def test_no_positive_label_gives_zero_recall():
    m = pope_metrics([True, False], [False, False])
    assert (m.precision, m.recall, m.f1, m.accuracy, m.yes_ratio) == (0.0, 0.0, 0.0, 0.5, 0.5)


def test_all_correct():
    m = pope_metrics([True, False, True], [True, False, True])
    assert m[:5] == (1.0, 1.0, 1.0, 1.0, pytest.approx(2 / 3))
    assert isinstance(m, PopeMetrics)


@pytest.mark.parametrize("pred, lab, match", [
    ([], [], "no predictions"),
    ([1, 0], [1], "one label per prediction"),
    ([1.5, 0], [1, 0], "probabilities in"),
    ([float("nan")], [1], "probabilities in"),
    ([1, 0], [2, 0], "labels must be"),
])
def test_bad_inputs_raise(pred, lab, match):
    with pytest.raises(MetricInputError, match=match):
        pope_metrics(pred, lab)
