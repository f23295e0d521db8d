"""Evaluation (DESIGN.md "Evaluation and report"): every retrieval method on the same features, and paired
comparisons between them with a bootstrap over test images.

The names load their module on first use (:mod:`dsanchor.lazy`).
"""

from dsanchor.lazy import lazy_exports

_WHERE = {
    "EvalConfig": "dsanchor.eval.methods",
    "MethodG": "dsanchor.eval.methods",
    "retrieval_metrics": "dsanchor.eval.methods",
    "fixed_g": "dsanchor.eval.methods",
    "controller_g": "dsanchor.eval.methods",
    "oracle_g": "dsanchor.eval.methods",
    "select_fixed_g": "dsanchor.eval.methods",
    "SplitView": "dsanchor.eval.views",
    "prepare_view": "dsanchor.eval.views",
    "subset": "dsanchor.eval.views",
    "split_halves": "dsanchor.eval.views",
    "RetrievalEval": "dsanchor.eval.run",
    "evaluate_retrieval": "dsanchor.eval.run",
    "compare_methods": "dsanchor.eval.compare",
    "cluster_bootstrap": "dsanchor.eval.compare",
    "save_hits": "dsanchor.eval.compare",
    "load_hits": "dsanchor.eval.compare",
}

__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
