"""Quality measures of explanations.

Chapters compare relevance maps with these: 2.5 and 3.5 measure how rough a map is, 3.1 to 3.3
how much two maps agree (the same input explained for two classes, or by a trained and an
untrained network, as in the sanity checks of Adebayo et al. 2018). Part V (Montavon et al.
2018, §7: continuity and selectivity of explanations) adds its measures here.

Every function takes batches of maps, shape ``(N, ...)``, and returns one value per map.
"""

from __future__ import annotations

import numpy as np

__all__ = ["map_correlation", "roughness"]


def _flat(maps: np.ndarray, what: str) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim < 2:
        raise ValueError(f"{what} must be a batch of maps, shape (N, ...), got shape {maps.shape}")
    return maps.reshape(len(maps), -1)


def map_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation between corresponding maps of two batches, one value per pair:

    .. math:: \\rho_n = \\frac{\\sum_i (a_{ni} - \\bar a_n)(b_{ni} - \\bar b_n)}
              {\\sqrt{\\sum_i (a_{ni} - \\bar a_n)^2 \\sum_i (b_{ni} - \\bar b_n)^2}}

    +1 for maps equal up to a positive scale and offset, 0 for unrelated maps. A constant map
    has no defined correlation: its value is NaN.
    """
    a, b = _flat(a, "a"), _flat(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"the two batches differ in shape: {a.shape} and {b.shape}")
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    products = (a * b).sum(axis=1)
    return np.divide(products, norms, out=np.full(len(a), np.nan), where=norms > 0)


def roughness(relevance: np.ndarray) -> np.ndarray:
    """How much each image-shaped map ``(N, H, W[, C])`` changes between neighbouring pixels,
    relative to its size:

    .. math:: \\text{roughness}(R) = \\frac{\\sum_{i,j} |R_{i+1,j} - R_{i,j}| + |R_{i,j+1} - R_{i,j}|}
              {\\sum_{i,j} |R_{i,j}|}

    It does not change when the map is scaled; an all-zero map has roughness 0.
    """
    relevance = np.asarray(relevance, dtype=np.float64)
    if relevance.ndim not in (3, 4):
        raise ValueError(f"roughness needs maps of shape (N, H, W) or (N, H, W, C), got {relevance.shape}")
    axes = tuple(range(1, relevance.ndim))
    steps = np.abs(np.diff(relevance, axis=1)).sum(axis=axes) + np.abs(np.diff(relevance, axis=2)).sum(axis=axes)
    size = np.abs(relevance).sum(axis=axes)
    return np.divide(steps, size, out=np.zeros(len(relevance)), where=size > 0)
