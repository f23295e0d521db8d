"""dsanchor: Dynamic Semantic Anchoring (DSA) for fine-grained image-text alignment.

A controller reads the text and image features and picks a granularity g in [0, 1]; the visual
embedding becomes ``V' = g * V_fine + (1 - g) * V_coarse``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
