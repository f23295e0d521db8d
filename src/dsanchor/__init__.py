"""dsanchor: Dynamic Semantic Anchoring (DSA) for fine-grained image-text alignment.

A controller reads the text and image features and picks a granularity g in [0, 1]; the visual
embedding becomes ``V' = g * V_fine + (1 - g) * V_coarse``.

Use a trained DSA on new images and text::

    import dsanchor

    pipe = dsanchor.load("runs/demo/pipeline")
    index = pipe.index("photos/", out="runs/photos-index")     # or dsanchor.load_index("runs/photos-index")
    for hit in pipe.search("a large green metal sphere", index, k=5):
        print(hit.rank, hit.path, hit.score, hit.g)
    print(pipe.choose_g(text="a large green metal sphere").describe())
    print(pipe.caption("photos/a.png"))

Importing this package is cheap: the names below load their modules (and torch) on first use.
"""

from __future__ import annotations

from dsanchor.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "load": "dsanchor.pipeline", "DSAPipeline": "dsanchor.pipeline", "GChoice": "dsanchor.pipeline",
    "Hit": "dsanchor.pipeline", "save_pipeline": "dsanchor.pipeline",
    "ImageIndex": "dsanchor.index", "build_index": "dsanchor.index", "load_index": "dsanchor.index",
    "anchor": "dsanchor.anchoring",
}

__all__ = ["__version__", *_LAZY]
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
