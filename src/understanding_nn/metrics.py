"""Quality measures of explanations.

Chapters compare relevance maps with these: 2.5 and 3.5 measure how rough a map is, 3.1 to 3.3
how much two maps agree (the same input explained for two classes, or by a trained and an
untrained network, as in the sanity checks of Adebayo et al. 2018). Part IV (class activation
maps) measures how well a map points at the digits of a cluttered-MNIST canvas: the share of its
positive mass inside the digits' boxes and the pointing game (is its maximum inside a box?).
Part V (Montavon et al. 2018, §7: continuity and selectivity of explanations) adds its measures
here.

Every function takes batches of maps, shape ``(N, ...)``, and returns one value per map.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "box_mask",
    "map_correlation",
    "pointing_game",
    "positive_mass_in_boxes",
    "positive_mass_per_box",
    "roughness",
]


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


# --------------------------------------------------------------------------------------------
# Localisation (Part IV): does a map point at the object?
# --------------------------------------------------------------------------------------------


def box_mask(boxes: np.ndarray, shape: tuple[int, int], select: np.ndarray | None = None) -> np.ndarray:
    """Boolean masks ``(N, H, W)`` of the union of each sample's boxes.

    Parameters
    ----------
    boxes
        Integer boxes ``(top, left, bottom, right)`` in pixels, bottom and right exclusive (as in
        :class:`~understanding_nn.data.ClutteredMNIST`), one per sample ``(N, 4)`` or several
        ``(N, k, 4)``.
    shape
        ``(H, W)``, the size of the images.
    select
        Optional boolean array ``(N, k)``: which boxes count (for example the digits of the
        target class); every box counts when ``None``.
    """
    boxes = np.asarray(boxes)
    if boxes.ndim == 2:
        boxes = boxes[:, None, :]
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) or (N, k, 4), got {boxes.shape}")
    if boxes.dtype.kind not in "iu":
        raise TypeError(f"boxes must hold integer pixel coordinates, got dtype {boxes.dtype}")
    if len(shape) != 2:
        raise ValueError(f"shape must be (height, width), got {shape!r}")
    height, width = (int(s) for s in shape)
    top, left, bottom, right = np.moveaxis(boxes, -1, 0)
    if (top < 0).any() or (left < 0).any() or (bottom > height).any() or (right > width).any():
        raise ValueError(f"boxes reach outside the {height}×{width} image")
    if (bottom < top).any() or (right < left).any():
        raise ValueError("boxes must have bottom >= top and right >= left")
    if select is None:
        select = np.ones(boxes.shape[:2], dtype=bool)
    select = np.asarray(select)
    if select.shape != boxes.shape[:2] or select.dtype != bool:
        raise ValueError(f"select must be a boolean array of shape {boxes.shape[:2]}, got {select.dtype} {select.shape}")
    rows = np.arange(height)[None, None, :]
    cols = np.arange(width)[None, None, :]
    in_rows = (rows >= top[..., None]) & (rows < bottom[..., None]) & select[..., None]  # (N, k, H)
    in_cols = (cols >= left[..., None]) & (cols < right[..., None])  # (N, k, W)
    return (in_rows[..., :, None] & in_cols[..., None, :]).any(axis=1)


def _maps_and_masks(maps: np.ndarray, boxes: np.ndarray, select: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 4:
        maps = maps.sum(axis=-1)  # relevance is additive over channels
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W) or (N, H, W, C), got {maps.shape}")
    if len(np.asarray(boxes)) != len(maps):
        raise ValueError(f"got {len(maps)} maps but boxes for {len(np.asarray(boxes))} samples")
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")
    return maps, box_mask(boxes, maps.shape[1:], select)


def positive_mass_in_boxes(maps: np.ndarray, boxes: np.ndarray, select: np.ndarray | None = None) -> np.ndarray:
    """The share of each map's positive mass that lies inside its boxes, one value in [0, 1] per map:

    .. math:: \\text{mass}(R, B) = \\frac{\\sum_{p \\in B} \\max(R_p, 0)}{\\sum_p \\max(R_p, 0)} .

    Only evidence *for* the class counts (negative relevance is left out). A map with no
    positive value points nowhere and scores 0. ``boxes`` and ``select`` as in :func:`box_mask`.
    """
    maps, mask = _maps_and_masks(maps, boxes, select)
    positive = np.maximum(maps, 0.0)
    total = positive.sum(axis=(1, 2))
    inside = (positive * mask).sum(axis=(1, 2))
    return np.divide(inside, total, out=np.zeros(len(maps)), where=total > 0)


def positive_mass_per_box(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The share of each map's positive mass inside each of its boxes, shape ``(N, k)``.

    Column ``j`` is :func:`positive_mass_in_boxes` with only box ``j`` selected: on a canvas with
    several objects it shows how a map divides its mass among them (boxes that overlap count
    their common pixels in both). ``boxes`` has shape ``(N, k, 4)``.
    """
    boxes = np.asarray(boxes)
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, k, 4), got {boxes.shape}")
    columns = []
    for j in range(boxes.shape[1]):
        only_j = np.zeros(boxes.shape[:2], dtype=bool)
        only_j[:, j] = True
        columns.append(positive_mass_in_boxes(maps, boxes, only_j))
    return np.stack(columns, axis=1)


def pointing_game(maps: np.ndarray, boxes: np.ndarray, select: np.ndarray | None = None) -> np.ndarray:
    """The pointing game: whether each map's maximum falls inside its boxes, one bool per map.

    A hit needs a positive maximum attained at a pixel inside a box (a tie with a pixel outside
    still counts as a hit); a map with no positive value is a miss. The mean over maps is the hit
    rate. ``boxes`` and ``select`` as in :func:`box_mask`.
    """
    maps, mask = _maps_and_masks(maps, boxes, select)
    peak = maps.max(axis=(1, 2))
    peak_inside = np.where(mask, maps, -np.inf).max(axis=(1, 2))
    return (peak > 0) & (peak_inside == peak)
