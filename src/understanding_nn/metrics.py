"""Quality measures of explanations.

Chapters compare relevance maps with these: 2.5 and 3.5 measure how rough a map is, 3.1 to 3.3
how much two maps agree. Part IV (class activation maps) measures how well a map points at the
digits of a cluttered-MNIST canvas: the share of its positive mass inside the digits' boxes and
the pointing game (is its maximum inside a box?).

Part V (Montavon et al. 2018, §7) judges explanations against the model they explain:

* **selectivity** (§7.2, chapter 5.2): :func:`pixel_flipping` removes the patches of an input in
  the order of their relevance and follows the logit (Bach et al. 2015; Samek et al. 2017), with
  five ways of removing (:data:`FILLS`, among them the neighbour imputation of Rong et al. 2022);
  :func:`area_under_curve`, :func:`aopc` and :func:`abpc` summarise the curves;
* **continuity** (§7.1, chapter 5.1): :func:`continuity` is the largest rate of change of an
  explanation along a sequence of nearby inputs, :func:`translation_continuity` along a digit
  moved pixel by pixel;
* **sanity checks** (chapter 5.3): :func:`cascading_randomization` (Adebayo et al. 2018) and
  :func:`random_logit_test` (Sixt et al. 2020), with the similarities :func:`rank_correlation`
  and :func:`structural_similarity`;
* :func:`bootstrap_interval`, the seeded confidence intervals of every table of Part V, and
  :func:`auroc_interval`, the area under the ROC curve with its interval (Part VI).

Map measures take batches of maps, shape ``(N, ...)``, and return one value per map; the model
measures take the model, the inputs and the target as :func:`understanding_nn.explain` does, and
push all perturbed copies of a batch through the model together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .attribution import (
    Target,
    UnsupportedModelError,
    batch_checker,
    check_stream_target,
    compile_function,
    explain,
    gaussian_blur,
    class_scores,
    n_classes,
    resolve_reference,
    resolve_target,
    validate_input,
    validate_model,
)
from .streaming import BatchError, checked_batches, is_stream, progress_bar, progress_setting, stream_length

__all__ = [
    "FILLS",
    "ORDERS",
    "SIMILARITIES",
    "Interval",
    "RandomLogit",
    "Randomization",
    "abpc",
    "aopc",
    "area_under_curve",
    "auroc_interval",
    "bootstrap_interval",
    "box_mask",
    "cascading_randomization",
    "continuity",
    "impute",
    "map_correlation",
    "median_seconds",
    "parametrized_layers",
    "patch_index",
    "pixel_flipping",
    "pointing_game",
    "positive_mass_in_boxes",
    "positive_mass_per_box",
    "random_logit_test",
    "random_other_class",
    "randomized_copy",
    "relative_cost",
    "rank_correlation",
    "removal_order",
    "roughness",
    "structural_similarity",
    "translation_continuity",
    "translations",
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


# --------------------------------------------------------------------------------------------
# Selectivity (Part V, §7.2): pixel flipping and the scores of its curves
# --------------------------------------------------------------------------------------------

FILLS = ("zero", "mean", "uniform", "blur", "impute")
"""The names of the ways :func:`pixel_flipping` removes a patch (its ``fill``); an array is
accepted too."""

ORDERS = ("morf", "lerf", "random")
"""The orders in which :func:`pixel_flipping` removes the patches (see :func:`removal_order`)."""

# Perturbed inputs per forward pass in pixel_flipping (all steps of a chunk of samples together).
_FLIP_INPUTS_PER_PASS = 1024


def _spatial_shape(sample_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes that patches tile: every axis of a sample but the last (the channels), or the
    only axis of a flat feature vector."""
    return sample_shape if len(sample_shape) == 1 else sample_shape[:-1]


def patch_index(sample_shape: tuple[int, ...], patch_size: int) -> np.ndarray:
    """The patch of every position of a sample, an int array of the sample's spatial shape.

    Patches are the cells of a regular grid of ``patch_size`` positions along every spatial axis
    (see :func:`pixel_flipping`), numbered in row-major order: on a 28×28 image with
    ``patch_size=4`` the 7×7 patches are numbered 0 to 48, left to right and top to bottom.
    """
    spatial = _spatial_shape(tuple(int(s) for s in sample_shape))
    if isinstance(patch_size, (bool, np.bool_)) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
    if any(length % patch_size for length in spatial):
        raise ValueError(
            f"patch_size {patch_size} does not fit inputs of spatial shape {spatial}: every spatial "
            f"side must be a multiple of it (divisors of {spatial[0]}: "
            f"{', '.join(str(d) for d in range(1, spatial[0] + 1) if spatial[0] % d == 0)})"
        )
    grid = tuple(length // patch_size for length in spatial)
    cells = np.indices(spatial) // patch_size  # the grid cell of every position, per axis
    return np.ravel_multi_index(tuple(cells), grid)


def _check_relevance(relevance: Any, x: np.ndarray) -> np.ndarray:
    if isinstance(relevance, tf.Tensor):
        relevance = relevance.numpy()
    relevance = np.asarray(relevance)
    if relevance.dtype.kind not in "fiu":
        raise TypeError(f"relevance must be numeric, got dtype {relevance.dtype}")
    if relevance.shape != x.shape:
        raise ValueError(f"relevance has shape {relevance.shape} but x has shape {x.shape}; they must match")
    finite = np.isfinite(relevance)
    if not finite.all():
        raise ValueError(f"relevance contains {int((~finite).sum())} NaN or infinite values")
    return relevance.astype(np.float64)


def removal_order(
    patch_relevance: np.ndarray, order: str = "morf", *, seed: int | Sequence[int] = 0
) -> np.ndarray:
    """The order in which :func:`pixel_flipping` removes the patches of each sample.

    ``patch_relevance`` has shape ``(N, P)``, the summed relevance of every patch. Returns, for
    every sample, the patch indices in removal order, shape ``(N, P)``: by decreasing relevance
    for ``"morf"`` (most relevant first), by increasing relevance for ``"lerf"`` (least
    relevant first), ties broken by the patch's number in both; a uniformly random permutation
    per sample for ``"random"``, drawn with ``seed``.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))}, got {order!r}")
    if order == "random":
        rng = np.random.default_rng(seed)
        return rng.permuted(np.tile(np.arange(patch_relevance.shape[1]), (len(patch_relevance), 1)), axis=1)
    key = -patch_relevance if order == "morf" else patch_relevance
    return np.argsort(key, axis=1, kind="stable")


def _neighbour_offsets(dimensions: int) -> list[tuple[tuple[int, ...], float]]:
    """The neighbours of a grid position and their weights :math:`1 / \\lVert o \\rVert^2`:
    1 for a side, 1/2 for a diagonal (the 2:1 ratio of Rong et al. 2022)."""
    offsets = np.stack(np.meshgrid(*[[-1, 0, 1]] * dimensions, indexing="ij"), axis=-1).reshape(-1, dimensions)
    return [(tuple(int(v) for v in o), 1.0 / float(np.square(o).sum())) for o in offsets if np.any(o)]


def _neighbour_sum(values: tf.Tensor, spatial: tuple[int, ...]) -> tf.Tensor:
    """:math:`\\sum_{j \\sim i} w_{ij} v_j` at every position :math:`i` of a batch of grids
    ``(B, *spatial)``, with the neighbours outside the grid left out (a convolution with zero
    padding)."""
    offsets = _neighbour_offsets(len(spatial))
    kernel = np.zeros((3,) * len(spatial))
    for offset, weight in offsets:
        kernel[tuple(1 + o for o in offset)] = weight
    if len(spatial) in (1, 2, 3):
        convolve = {1: tf.nn.conv1d, 2: tf.nn.conv2d, 3: tf.nn.conv3d}[len(spatial)]
        strides = 1 if len(spatial) < 3 else [1] * 5
        filters = tf.constant(kernel.reshape(*kernel.shape, 1, 1), values.dtype)
        return convolve(values[..., None], filters, strides, "SAME")[..., 0]
    padded = tf.pad(values, [[0, 0]] + [[1, 1]] * len(spatial))
    total = tf.zeros_like(values)
    for offset, weight in offsets:
        window = tuple(slice(1 + o, 1 + o + length) for o, length in zip(offset, spatial))
        total += weight * padded[(slice(None), *window)]
    return total


_IMPUTERS: dict[tuple[int, ...], Any] = {}


def _imputer(spatial: tuple[int, ...]) -> Any:
    """The compiled conjugate-gradient solver of the imputation equations on grids of shape ``spatial``."""
    if spatial in _IMPUTERS:
        return _IMPUTERS[spatial]
    degree = _neighbour_sum(tf.ones((1, *spatial), tf.float32), spatial)
    axes = list(range(1, len(spatial) + 1))
    size = int(np.prod(spatial))

    def dot(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(a * b, axis=axes, keepdims=True)

    def solve(x: tf.Tensor, removed: tf.Tensor) -> tf.Tensor:
        # For the removed positions U: D_i v_i - sum_{j in U} w_ij v_j = sum_{j not in U} w_ij x_j,
        # a symmetric positive definite system (whenever something is kept), solved by conjugate
        # gradients for all grids of the batch at once.
        def operator(v: tf.Tensor) -> tf.Tensor:
            return removed * (degree * v - _neighbour_sum(removed * v, spatial))

        b = removed * _neighbour_sum((1 - removed) * x, spatial)
        tolerance = 1e-12 * tf.maximum(dot(b, b), 1e-30)

        def not_done(i, v, r, p, rr):
            return tf.logical_and(i < size, tf.reduce_any(rr > tolerance))

        def iterate(i, v, r, p, rr):
            ap = operator(p)
            alpha = tf.math.divide_no_nan(rr, dot(p, ap))
            v, r = v + alpha * p, r - alpha * ap
            rr_next = dot(r, r)
            p = r + tf.math.divide_no_nan(rr_next, rr) * p
            return i + 1, v, r, p, rr_next

        _, v, *_ = tf.while_loop(not_done, iterate, (tf.constant(0), tf.zeros_like(b), b, b, dot(b, b)))
        return (1 - removed) * x + removed * v

    signature = [tf.TensorSpec((None, *spatial), tf.float32)] * 2
    _IMPUTERS[spatial] = compile_function(solve, signature)
    return _IMPUTERS[spatial]


def impute(x: Any, removed: Any) -> np.ndarray:
    """Fill the ``removed`` positions of each sample from their neighbours (linear imputation).

    Every removed value :math:`v_i` becomes the weighted mean of its grid neighbours, removed or
    not, with weight 1 for a side and 1/2 for a diagonal neighbour:

    .. math:: v_i = \\frac{\\sum_{j \\sim i} w_{ij} v_j}{\\sum_{j \\sim i} w_{ij}}
              \\quad \\text{for every removed } i, \\qquad v_j = x_j \\text{ otherwise},

    a linear system per sample and channel, solved (to a relative residual of 1e-6) by
    conjugate gradients for the whole batch at once. It is the linear imputation of ROAD (Rong
    et al. 2022, without their added noise): the removed region is filled by a smooth
    continuation of what surrounds it, so that the filled input stays close to the data and its
    shape does not show where the removed values were. A sample with every position removed has
    nothing to continue from and is filled with its mean.

    Parameters
    ----------
    x
        Inputs ``(N, ...)`` in the layout of :func:`pixel_flipping` (the last axis holds the
        channels, except for flat feature vectors).
    removed
        Boolean ``(N, *spatial)``: the positions to fill, the same for every channel.

    Returns
    -------
    numpy.ndarray
        The filled inputs, float64, shaped like ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of inputs, shape (N, ...), got shape {x.shape}")
    spatial = _spatial_shape(x.shape[1:])
    removed = np.asarray(removed, dtype=bool)
    if removed.shape != (len(x), *spatial):
        raise ValueError(f"removed has shape {removed.shape}; it must be {(len(x), *spatial)}")
    channels = x.reshape(len(x), *spatial, -1)
    n_channels = channels.shape[-1]
    grids = np.moveaxis(channels, -1, 1).reshape(-1, *spatial)  # one grid per sample and channel
    masks = np.repeat(removed, n_channels, axis=0).astype(np.float32)
    filled = _imputer(spatial)(tf.constant(grids, tf.float32), tf.constant(masks, tf.float32)).numpy().astype(np.float64)
    filled[masks == 0] = grids[masks == 0]  # kept values exactly as they were
    everything = masks.reshape(len(masks), -1).all(axis=1)
    filled[everything] = grids[everything].mean(axis=tuple(range(1, grids.ndim)), keepdims=True)
    filled = np.moveaxis(filled.reshape(len(x), n_channels, *spatial), 1, -1)
    return filled.reshape(x.shape)


def _fill_values(x: np.ndarray, fill: Any, *, value_range: tuple[float, float], blur_sigma: float, seed: int) -> np.ndarray | None:
    """What replaces a removed position, per sample: an array shaped like ``x``, or ``None`` for
    ``"impute"``, whose values depend on what else is removed."""
    if isinstance(fill, str):
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(map(repr, FILLS))} or an array, got {fill!r}")
        if fill == "zero":
            return np.zeros_like(x)
        if fill == "mean":
            axes = tuple(range(1, x.ndim - 1)) if x.ndim > 2 else (1,)
            return np.broadcast_to(x.mean(axis=axes, keepdims=True), x.shape)
        if fill == "uniform":
            low, high = (float(v) for v in value_range)
            if not low < high:
                raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
            return np.random.default_rng(seed).uniform(low, high, size=x.shape)
        if fill == "blur":
            if x.ndim != 4:
                raise ValueError(f"fill='blur' needs images shaped (N, H, W, C), got shape {x.shape}")
            return gaussian_blur(x.astype(np.float32), blur_sigma).astype(np.float64)
        return None
    return resolve_reference(x.astype(np.float32), fill, name="fill").astype(np.float64)


def pixel_flipping(
    model: keras.Model,
    x: Any,
    relevance: Any,
    target: Target = None,
    *,
    patch_size: int = 4,
    fill: Any = "zero",
    order: str = "morf",
    steps: int | None = None,
    seed: int | Sequence[int] = 0,
    value_range: tuple[float, float] = (0.0, 1.0),
    blur_sigma: float = 2.0,
    batch_size: int = _FLIP_INPUTS_PER_PASS,
    progress: bool | None = None,
) -> np.ndarray:
    """The target logit as the patches of each input are removed one by one, in the order of
    their relevance (Bach et al. 2015; Samek et al. 2017; Montavon et al. 2018, §7.2).

    The input is cut into patches :math:`\\mathcal P_1, \\dots, \\mathcal P_P` of
    ``patch_size`` positions along each spatial axis, and each patch is ranked by its summed
    relevance :math:`R(\\mathcal P) = \\sum_{i \\in \\mathcal P} R_i` (over its channels too). With
    :math:`\\pi` the removal order and :math:`x^{(k)}` the input with the first :math:`k` patches
    :math:`\\mathcal P_{\\pi(1)}, \\dots, \\mathcal P_{\\pi(k)}` replaced by the ``fill``, the curve is

    .. math:: f_k = S_c\\bigl(x^{(k)}\\bigr), \\qquad k = 0, 1, \\dots, K .

    An explanation is *selective* when removing its most relevant patches first (MoRF) makes the
    score fall fast; removing the least relevant first (LeRF) should keep it high; a random
    order is the baseline every ranking must beat. :func:`area_under_curve`, :func:`aopc` and
    :func:`abpc` summarise the curves. The relevance is computed once, on the intact input (the
    original tutorial recomputed it after every step, which measures another procedure).

    Parameters
    ----------
    model
        As in :func:`understanding_nn.explain`; a final softmax or sigmoid is left out.
    x
        The inputs ``(N, ...)``: images ``(N, H, W, C)`` are tiled in squares, signals
        ``(N, L, C)`` and flat features ``(N, D)`` in segments (the last axis holds the channels,
        except for flat features). Or a stream of batches, ``x`` or ``(x, y)``, as
        :func:`understanding_nn.explain` takes them; each batch is flipped in turn, and random
        orders and fills are then drawn per batch (so they differ from those of one array).
    relevance
        One explanation per input, shaped like ``x``, finite (for example from
        :func:`understanding_nn.explain`); for a stream of inputs, an array or memory map of
        them all (such as ``explain(..., out=...)`` returns) or a stream of batches in step.
    target
        The class whose logit is followed: an int, one per sample, or ``None`` for the class
        the model predicts for the intact input (for a stream of pairs ``(x, y)``, ``y``).
    patch_size
        Side of a patch in positions (1 flips single pixels); it must divide every spatial side.
    fill
        What a removed patch becomes: ``"zero"`` (0, the MNIST background), ``"mean"`` (the
        sample's mean, per channel), ``"uniform"`` (uniform noise on ``value_range``, drawn once
        per sample with ``seed``, as in Samek et al. 2017), ``"blur"`` (the sample blurred with
        a Gaussian of ``blur_sigma`` pixels), ``"impute"`` (a continuation of the remaining
        input into the removed patches, see :func:`impute`), or an array: one input (for example
        the mean training image) or one per sample.
    order
        ``"morf"``, ``"lerf"`` or ``"random"`` (see :func:`removal_order`; the random order is
        drawn per sample with ``seed``).
    steps
        :math:`K`, the number of patches removed, at most the number of patches :math:`P`;
        ``None`` removes every patch.
    seed
        Seed of the random order and of the uniform fill (an int, or a sequence of ints as
        ``numpy.random.default_rng`` takes). Random draws are made for the whole of ``x`` at
        once, so they depend on a sample's position in ``x``, never on ``batch_size``.
    value_range
        ``(low, high)`` of the uniform fill; the book's inputs lie in [0, 1].
    blur_sigma
        Standard deviation in pixels of the blur fill.
    batch_size
        Perturbed inputs per forward pass: all :math:`K + 1` steps of a chunk of samples go
        through the model together.
    progress
        Show a progress bar over the samples (``True``), never (``False``), or where a person is
        watching (``None``, see :func:`understanding_nn.streaming.watching`).

    Returns
    -------
    numpy.ndarray
        The curves, float64, shape ``(N, K + 1)``; column 0 is the logit of the intact input.

    Examples
    --------
    >>> R = unn.explain(model, x, "lrp.epsilon", y)                        # doctest: +SKIP
    >>> morf = unn.metrics.pixel_flipping(model, x, R, y)                  # doctest: +SKIP
    >>> lerf = unn.metrics.pixel_flipping(model, x, R, y, order="lerf")    # doctest: +SKIP
    >>> unn.metrics.abpc(morf, lerf).mean()                                # doctest: +SKIP
    """
    validate_model(model)
    if is_stream(x):
        check_stream_target(target)
        settings = dict(patch_size=patch_size, fill=fill, order=order, steps=steps, value_range=value_range,
                        blur_sigma=blur_sigma, batch_size=batch_size)
        return _pixel_flipping_stream(model, x, relevance, target, seed, progress, settings)
    x = validate_input(model, x)
    relevance = _check_relevance(relevance, x)
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    patches = patch_index(x.shape[1:], patch_size)
    n_patches = int(patches.max()) + 1
    if steps is None:
        steps = n_patches
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) or not 0 <= steps <= n_patches:
        raise ValueError(
            f"steps must be an integer from 0 to the number of patches, {n_patches} "
            f"(patch_size {patch_size} on inputs of shape {x.shape[1:]}), or None; got {steps!r}"
        )
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(map(repr, ORDERS))}, got {order!r}")
    fill_values = _fill_values(x.astype(np.float64), fill, value_range=value_range, blur_sigma=blur_sigma, seed=seed)
    targets = resolve_target(model, x, target)

    spatial = _spatial_shape(x.shape[1:])
    by_position = relevance.reshape(len(x), int(np.prod(spatial)), -1).sum(axis=2)
    patch_relevance = by_position @ np.eye(n_patches)[patches.ravel()]
    removal = removal_order(patch_relevance, order, seed=seed)
    # rank[n, p]: at which step patch p of sample n is removed; a position goes at the step of its patch.
    rank = np.empty_like(removal)
    np.put_along_axis(rank, removal, np.arange(n_patches)[None, :], axis=1)
    position_rank = rank[:, patches]  # (N, *spatial)
    if len(spatial) < x.ndim - 1:
        position_rank = position_rank[..., None]  # broadcast over the channels

    ks = np.arange(steps + 1)
    per_chunk = max(1, batch_size // len(ks))
    curves = np.empty((len(x), len(ks)))
    with progress_setting(progress), progress_bar(len(x)) as bar:
        for start in range(0, len(x), per_chunk):
            rows = slice(start, start + per_chunk)
            removed = position_rank[rows][:, None] < ks.reshape((1, -1) + (1,) * (x.ndim - 1))  # (b, K+1, ...)
            if fill_values is None:
                masks = removed if len(spatial) == x.ndim - 1 else removed[..., 0]
                repeated = np.repeat(x[rows], len(ks), axis=0)
                perturbed = impute(repeated, masks.reshape(-1, *spatial))
            else:
                perturbed = np.where(removed, fill_values[rows][:, None], x[rows][:, None])
            scores = class_scores(model, perturbed.reshape(-1, *x.shape[1:]).astype(np.float32), batch_size=batch_size)
            chunk_targets = np.repeat(targets[rows], len(ks))
            curves[rows] = scores[np.arange(len(chunk_targets)), chunk_targets].reshape(-1, len(ks))
            bar.update(len(chunk_targets) // len(ks))
    return curves


def _pixel_flipping_stream(
    model: keras.Model, data: Any, relevance: Any, target: Target, seed: int, progress: bool | None, settings: dict
) -> np.ndarray:
    """:func:`pixel_flipping` of a stream: batch by batch, each with its rows of ``relevance``
    (an array or memory map, or a stream of batches in step with ``data``)."""
    relevance_batches = iter(relevance) if is_stream(relevance) else None
    curves = []
    with progress_setting(progress), progress_bar(stream_length(data), unit="batch") as bar:
        for number, (position, start, xb, tb) in enumerate(checked_batches(data, batch_checker(model, target)), start=1):
            if relevance_batches is not None:
                rb = next(relevance_batches, None)
                if rb is None:
                    raise BatchError(f"{position}: the stream of relevance ended before the stream of inputs")
            else:
                rb = relevance[start : start + len(xb)]
            try:
                # Random orders and fills are drawn per batch, from (seed, batch number).
                curves.append(pixel_flipping(model, xb, np.asarray(rb), tb, seed=(seed, number), progress=False, **settings))
            except ValueError as error:
                raise BatchError(f"{position}: {error}") from error
            bar.update()
    return np.concatenate(curves, axis=0)


def _curves(curves: Any, what: str = "curves") -> np.ndarray:
    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim != 2 or curves.shape[1] < 2:
        raise ValueError(f"{what} must have shape (N, steps + 1) with at least one step, got {curves.shape}")
    if not np.isfinite(curves).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return curves


def area_under_curve(curves: Any, *, normalize: bool = True) -> np.ndarray:
    """The area under each pixel-flipping curve, one value per sample (lower is better for MoRF).

    The curve :math:`f_0, \\dots, f_K` is integrated with the trapezoidal rule over the fraction
    of removed patches :math:`k / K \\in [0, 1]`; with ``normalize`` (the default) it is first
    divided by the intact score :math:`f_0`, so the area is a fraction of the original logit
    and comparable across samples:

    .. math:: \\mathrm{AUC} = \\frac{1}{K} \\sum_{k=1}^{K} \\frac{f_{k-1} + f_k}{2 f_0} .

    A sample whose intact logit is not positive has no meaningful normalised area: its value is
    NaN (with the predicted class as target, the logit is the largest and rarely negative).
    """
    curves = _curves(curves)
    if normalize:
        start = curves[:, :1]
        curves = np.divide(curves, start, out=np.full_like(curves, np.nan), where=start > 0)
    return (curves[:, 1:] + curves[:, :-1]).sum(axis=1) / (2 * (curves.shape[1] - 1))


def aopc(curves: Any) -> np.ndarray:
    """The area over the MoRF perturbation curve (AOPC, Samek et al. 2017), per sample:

    .. math:: \\mathrm{AOPC} = \\frac{1}{K + 1} \\sum_{k=0}^{K} \\bigl(f_0 - f_k\\bigr) ,

    the average drop of the logit over the steps, in logit units; higher is better.
    """
    curves = _curves(curves)
    return (curves[:, :1] - curves).mean(axis=1)


def abpc(morf: Any, lerf: Any) -> np.ndarray:
    """The area between the LeRF and the MoRF curves (ABPC), per sample:

    .. math:: \\mathrm{ABPC} = \\frac{1}{K + 1} \\sum_{k=0}^{K} \\bigl(f^{\\mathrm{LeRF}}_k - f^{\\mathrm{MoRF}}_k\\bigr),

    in logit units; higher is better. Unlike :func:`aopc` it rewards an explanation both for
    finding the patches that matter and for knowing which do not, and a fill that changes the
    score by itself (out-of-distribution inputs) shifts both curves and cancels.
    """
    morf, lerf = _curves(morf, "morf curves"), _curves(lerf, "lerf curves")
    if morf.shape != lerf.shape:
        raise ValueError(f"the MoRF and LeRF curves differ in shape: {morf.shape} and {lerf.shape}")
    return (lerf - morf).mean(axis=1)


# --------------------------------------------------------------------------------------------
# Statistics and costs for the tables of Part V
# --------------------------------------------------------------------------------------------


def median_seconds(call: Any, repeats: int = 3) -> float:
    """The median wall-clock time of ``call()`` over ``repeats`` runs, after one warm-up run
    (which traces compiled functions and fills caches, and is not counted)."""
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def relative_cost(model: keras.Model, x: Any, method: str, target: Target = None, *, repeats: int = 3, **params: Any) -> float:
    """The time of one :func:`understanding_nn.explain` call of ``method`` on the batch ``x``, as a
    multiple of the time of one plain ``"gradient"`` call on the same batch (one forward and one
    backward pass): the median of ``repeats`` runs of each, after a warm-up call of each, the two
    timed in turn so that a machine that slows down or speeds up meanwhile affects both alike.
    Ratios, unlike seconds, compare across machines; they still depend on the model and the
    batch size."""
    x = validate_input(validate_model(model), x)
    targets = resolve_target(model, x, target)
    batch = len(x)
    calls = {
        "gradient": lambda: explain(model, x, "gradient", targets, batch_size=batch),
        "method": lambda: explain(model, x, method, targets, batch_size=batch, **params),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for name, call in calls.items():
        median_seconds(call, 1)  # warm-up: traces the compiled functions
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return float(np.median(times["method"]) / np.median(times["gradient"]))


@dataclass(frozen=True)
class Interval:
    """An estimate with a confidence interval: ``estimate``, ``low`` and ``high`` (floats, or
    arrays with one value per column of the data)."""

    estimate: Any
    low: Any
    high: Any
    confidence: float

    def __str__(self) -> str:
        return "; ".join(self.cells(".3g"))

    def cells(self, number_format: str = ".2f") -> list[str]:
        """The interval as table cells ``"estimate [low, high]"``, one per column (a single one
        for a scalar interval), each number formatted with ``number_format``."""
        columns = zip(*(np.atleast_1d(np.asarray(part)) for part in (self.estimate, self.low, self.high)))
        return [f"{e:{number_format}} [{lo:{number_format}}, {hi:{number_format}}]" for e, lo, hi in columns]


def bootstrap_interval(
    values: Any, *, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Interval:
    """The mean of ``values`` and its percentile bootstrap confidence interval (Efron & Tibshirani 1993).

    The samples (rows) are drawn with replacement ``n_resamples`` times; the interval holds the
    central ``confidence`` share of the resampled means. For ``values`` of shape ``(N, M)``, for
    example one column per method, the same rows are drawn for every column, so the intervals
    of differences between columns (paired comparisons) can be read from the same resamples:
    pass the differences themselves to get their interval. NaN values are refused.

    Returns
    -------
    Interval
        ``estimate`` (the sample mean), ``low``, ``high``: floats for 1-D ``values``, arrays of
        length ``M`` for 2-D ``values``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (1, 2) or len(values) < 2:
        raise ValueError(f"values must have shape (N,) or (N, M) with N >= 2, got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values contain NaN or infinite values; drop or explain them first")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an integer of at least 100, got {n_resamples!r}")
    rng = np.random.default_rng(seed)
    means = np.empty((n_resamples, *values.shape[1:]))
    for start in range(0, n_resamples, 1000):  # bounded memory: 1,000 resamples at a time
        count = min(1000, n_resamples - start)
        rows = rng.integers(0, len(values), size=(count, len(values)))
        means[start : start + count] = values[rows].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail], axis=0)
    estimate = values.mean(axis=0)
    if values.ndim == 1:
        return Interval(float(estimate), float(low), float(high), confidence)
    return Interval(estimate, low, high, confidence)


def auroc_interval(
    scores: Any, positive: Any, *, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Interval:
    """The area under the ROC curve of ``scores`` for telling ``positive`` samples from the others,
    with a stratified percentile bootstrap interval (chapter 6.1).

    The AUROC is the probability that a positive sample scores higher than a negative one, ties
    counting one half (the Mann-Whitney form, equal to scikit-learn's ``roc_auc_score``):

    .. math:: \\text{AUROC} = \\frac{1}{n_+ n_-} \\sum_{i \\in +} \\sum_{j \\in -}
        \\Bigl( [s_i > s_j] + \\tfrac12 [s_i = s_j] \\Bigr) .

    Each resample draws the positives and the negatives with replacement separately, so every
    resample keeps both groups at their sizes.

    Parameters
    ----------
    scores
        One score per sample, shape ``(N,)``, finite.
    positive
        Booleans, shape ``(N,)``: which samples are positive; both groups must be non-empty.
    confidence, n_resamples, seed
        As in :func:`bootstrap_interval`.

    Examples
    --------
    >>> auroc_interval([0.9, 0.8, 0.3, 0.1], [True, True, False, False]).estimate
    1.0
    >>> auroc_interval([0.5, 0.5, 0.5, 0.5], [True, True, False, False]).estimate
    0.5
    """
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive)
    if scores.ndim != 1 or positive.shape != scores.shape or positive.dtype != bool:
        raise ValueError(
            f"scores must have shape (N,) and positive be booleans of the same shape; got {scores.shape} "
            f"and {positive.dtype} {positive.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"need positive and negative samples, got {n_pos} positive and {n_neg} negative")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")

    def area(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
        together = np.concatenate([positives, negatives], axis=-1)
        rank_sum = rankdata(together, axis=-1)[..., :n_pos].sum(axis=-1)
        return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)

    rng = np.random.default_rng(seed)
    pos_scores, neg_scores = scores[positive], scores[~positive]
    areas = np.concatenate([
        area(pos_scores[rng.integers(0, n_pos, (count, n_pos))], neg_scores[rng.integers(0, n_neg, (count, n_neg))])
        for count in [min(1000, n_resamples - start) for start in range(0, n_resamples, 1000)]
    ])
    tail = (1 - confidence) / 2
    low, high = np.quantile(areas, [tail, 1 - tail])
    return Interval(float(area(pos_scores, neg_scores)), float(low), float(high), confidence)


# --------------------------------------------------------------------------------------------
# Continuity (Part V, §7.1)
# --------------------------------------------------------------------------------------------


def translations(x: Any, shifts: Sequence[int], *, axis: int = 2) -> np.ndarray:
    """Copies of every input moved by whole positions along ``axis``, the uncovered side filled
    with 0 (the MNIST background), shape ``(N, len(shifts), ...)``.

    ``axis`` counts the batch axis, so for images ``(N, H, W, C)`` 1 moves down and 2 (the
    default) moves right; a shift of ``s`` moves the content ``s`` positions towards higher
    indices (negative: lower).
    """
    x = np.asarray(x.numpy() if isinstance(x, tf.Tensor) else x)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch of inputs, shape (N, ...), got shape {x.shape}")
    if not 1 <= axis < x.ndim:
        raise ValueError(f"axis must be one of the sample's axes, 1 to {x.ndim - 1}, got {axis}")
    shifts = [int(s) for s in shifts]
    if not shifts:
        raise ValueError("shifts must hold at least one shift")
    moved = np.zeros((len(x), len(shifts), *x.shape[1:]), dtype=x.dtype)
    length = x.shape[axis]
    for t, shift in enumerate(shifts):
        if abs(shift) >= length:
            continue  # moved out entirely: all background
        source = [slice(None)] * x.ndim
        target = [slice(None), t] + [slice(None)] * (x.ndim - 1)
        source[axis] = slice(max(0, -shift), length - max(0, shift))
        target[axis + 1] = slice(max(0, shift), length - max(0, -shift))
        moved[tuple(target)] = x[tuple(source)]
    return moved


def continuity(inputs: Any, relevances: Any, *, normalize: bool = True) -> np.ndarray:
    """How much an explanation jumps along a sequence of nearby inputs (Montavon et al. 2018, §7.1).

    For the inputs :math:`x_1, \\dots, x_T` of a sequence (for example a digit moved pixel by
    pixel, :func:`translations`) and their explanations :math:`R(x_t)`, the largest rate of
    change between neighbours in the sequence,

    .. math:: C = \\max_{t} \\frac{\\lVert \\tilde R(x_{t+1}) - \\tilde R(x_t) \\rVert_1}
              {\\lVert x_{t+1} - x_t \\rVert_2} ,

    the paper's measure restricted to the pairs :math:`x \\ne x'` of the sequence. Lower is more
    continuous. With ``normalize`` (the default) the explanations of a sequence are first
    divided by their mean L1 norm, :math:`\\tilde R = R \\big/ \\tfrac1T \\sum_t \\lVert R(x_t)
    \\rVert_1`, so that methods whose maps have different units (a squared gradient, a share of
    the logit) can be compared: :math:`C` is then the largest change per unit of input change,
    as a fraction of the typical size of the map. With ``normalize=False`` it is the paper's
    unnormalised ratio. Neighbours with equal inputs are skipped (if their explanations differ,
    :math:`C = \\infty`); a sequence whose maps are all zero has :math:`C = 0`.

    Parameters
    ----------
    inputs
        Sequences ``(N, T, ...)`` with ``T >= 2``.
    relevances
        Their explanations, the same shape.

    Returns
    -------
    numpy.ndarray
        :math:`C` for every sequence, shape ``(N,)``.
    """
    inputs = np.asarray(inputs, dtype=np.float64)
    relevances = np.asarray(relevances, dtype=np.float64)
    if inputs.ndim < 3 or inputs.shape[1] < 2:
        raise ValueError(f"inputs must be sequences, shape (N, T, ...) with T >= 2, got {inputs.shape}")
    if relevances.shape != inputs.shape:
        raise ValueError(f"relevances have shape {relevances.shape} but inputs have shape {inputs.shape}; they must match")
    if not (np.isfinite(inputs).all() and np.isfinite(relevances).all()):
        raise ValueError("inputs and relevances must be finite (no NaN or infinite values)")
    n, steps = inputs.shape[:2]
    inputs, relevances = inputs.reshape(n, steps, -1), relevances.reshape(n, steps, -1)
    if normalize:
        scale = np.abs(relevances).sum(axis=2).mean(axis=1)
        relevances = np.divide(relevances, scale[:, None, None], out=np.zeros_like(relevances), where=scale[:, None, None] > 0)
    map_change = np.abs(np.diff(relevances, axis=1)).sum(axis=2)
    input_change = np.linalg.norm(np.diff(inputs, axis=1), axis=2)
    rate = np.divide(map_change, input_change, out=np.where(map_change > 0, np.inf, 0.0), where=input_change > 0)
    return rate.max(axis=1)


def translation_continuity(
    model: keras.Model,
    x: Any,
    method: str,
    target: Target = None,
    *,
    shifts: Sequence[int] = tuple(range(-3, 4)),
    axis: int = 2,
    normalize: bool = True,
    **params: Any,
) -> np.ndarray:
    """:func:`continuity` of ``method`` along translations of every input (§7.1), shape ``(N,)``.

    Each input is moved by every shift in ``shifts`` (:func:`translations`; by default 3 pixels
    either way, one pixel at a time), every copy is explained with
    :func:`understanding_nn.explain` for the same class, the target resolved once on the
    unmoved input, and :func:`continuity` measures the largest jump of the maps along the
    sequence. ``params`` go to the method.
    """
    x = validate_input(validate_model(model), x)
    targets = resolve_target(model, x, target)
    moved = translations(x, shifts, axis=axis)
    flat = moved.reshape(-1, *x.shape[1:])
    relevance = explain(model, flat, method, np.repeat(targets, moved.shape[1]), **params)
    return continuity(moved, relevance.reshape(moved.shape), normalize=normalize)


# --------------------------------------------------------------------------------------------
# Sanity checks (Part V, beyond the paper): randomised models and random logits
# --------------------------------------------------------------------------------------------


def _weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers with weights, from the input to the output, looking inside nested models."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _weighted_layers(layer)
        elif layer.weights:
            found.append(layer)
    return found


def parametrized_layers(model: keras.Model) -> list[str]:
    """The names of the layers of ``model`` that have weights, from the input to the output
    (nested models are looked into): the layers that :func:`cascading_randomization` re-initialises."""
    return [layer.name for layer in _weighted_layers(model)]


def _reinitialize(layer: keras.layers.Layer, seed: int) -> None:
    """Draw every weight of ``layer`` afresh from its own initializer (``kernel_initializer``
    for ``kernel``, and so on), seeded."""
    for index, variable in enumerate(layer.weights):
        name = variable.name.split("/")[-1]
        initializer = getattr(layer, f"{name}_initializer", None)
        if initializer is None:
            raise UnsupportedModelError(
                f"layer {layer.name!r} ({type(layer).__name__}) has a weight {name!r} without an "
                f"initializer attribute ({name}_initializer), so it cannot be re-initialised; "
                "leave the layer out with layers=[...]"
            )
        config = initializer.get_config()
        if "seed" in config:
            initializer = type(initializer).from_config({**config, "seed": seed + index})
        variable.assign(keras.ops.cast(initializer(tuple(variable.shape), dtype=variable.dtype), variable.dtype))


def _checked_layer_names(model: keras.Model, layers: Sequence[str]) -> list[str]:
    """Every layer with weights of ``model``, after checking that ``layers`` name only such layers."""
    names = parametrized_layers(model)
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise ValueError(
            f"model {model.name!r} has no layer with weights named {', '.join(map(repr, unknown))}; "
            f"its layers with weights are: {', '.join(names)}"
        )
    return names


def _trained_copy(model: keras.Model) -> keras.Model:
    try:
        copy = keras.models.clone_model(model)
    except Exception as error:  # subclassed models cannot always be cloned
        raise UnsupportedModelError(
            f"model {model.name!r} cannot be copied with keras.models.clone_model ({error}); "
            "randomisation needs a Sequential or functional model"
        ) from error
    copy.set_weights(model.get_weights())
    return copy


def randomized_copy(model: keras.Model, layers: Sequence[str], *, seed: int = 0) -> keras.Model:
    """A copy of ``model`` with the weights of the named ``layers`` drawn afresh from their own
    Keras initializers (Adebayo et al. 2018); ``model`` itself is never changed.

    The copy is made with ``keras.models.clone_model`` and the trained weights, then each named
    layer is re-initialised with seeds derived from ``seed`` and the layer's position, so the
    same call gives the same copy.
    """
    validate_model(model)
    names = _checked_layer_names(model, layers)
    copy = _trained_copy(model)
    by_name = {layer.name: layer for layer in _weighted_layers(copy)}
    for name in layers:
        _reinitialize(by_name[name], seed + 1000 * names.index(name))
    return copy


@dataclass(frozen=True)
class Randomization:
    """The explanations of :func:`cascading_randomization`.

    ``layers`` lists the re-initialised layers in the order of the cascade (the output layer
    first); ``relevance[k]`` explains the inputs with the top ``k`` of them re-initialised
    (``relevance[0]`` is the trained model), shape ``(len(layers) + 1, N, ...)``; ``target`` is
    the class explained, resolved on the trained model.
    """

    layers: list[str]
    relevance: np.ndarray
    target: np.ndarray

    def similarity(self, measure: str = "spearman_abs", stage: int | None = None) -> np.ndarray:
        """The similarity of every stage's explanations to the trained model's, shape
        ``(len(layers) + 1, N)``, or of one ``stage``'s, shape ``(N,)``; ``measure`` is a key of
        :data:`SIMILARITIES`."""
        function = _similarity(measure)
        if stage is not None:
            if not 0 <= stage <= len(self.layers):
                raise ValueError(f"stage must be between 0 and {len(self.layers)} (layers randomised), got {stage}")
            return function(self.relevance[0], self.relevance[stage])
        return np.stack([function(self.relevance[0], maps) for maps in self.relevance])

    def still_similar(self, stage: int, threshold: float = 0.5, *, seed: int = 0) -> bool:
        """Whether the maps after ``stage`` layers are randomised are still clearly similar to
        the trained model's: the lower ends of the 95 % bootstrap intervals
        (:func:`bootstrap_interval`, ``seed``) of the mean SSIM *and* of the mean Spearman
        correlation of :math:`|R|` both lie above ``threshold``. A pair with a constant map (a
        randomised class activation map can be all zero) has no rank correlation; it counts as
        0, no shared order."""
        return all(
            bootstrap_interval(np.nan_to_num(self.similarity(measure, stage), nan=0.0), seed=seed).low > threshold
            for measure in ("ssim", "spearman_abs")
        )

    def fails(self, threshold: float = 0.5, *, seed: int = 0) -> bool:
        """The verdict of chapter 5.3: a method fails the cascading test when its maps are
        still similar (:meth:`still_similar`) after the top layer alone is randomised, or after
        every layer is. Needs at least two explained inputs (for the intervals)."""
        return self.still_similar(1, threshold, seed=seed) or self.still_similar(len(self.layers), threshold, seed=seed)


def cascading_randomization(
    model: keras.Model,
    x: Any,
    method: str,
    target: Target = None,
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    **params: Any,
) -> Randomization:
    """The cascading model-parameter randomisation test (Adebayo et al. 2018, *Sanity checks for
    saliency maps*).

    An explanation that explains the *model* must change when the model's weights are destroyed.
    Starting from the output, the layers with weights are re-initialised one after the other,
    cumulatively, each from its own Keras initializer (:func:`randomized_copy`), and the inputs
    are explained after every step for the same target (resolved on the trained model). All of
    it happens on one copy of ``model``: the trained model is never changed. A method that
    passes gives maps that lose their similarity to the trained model's as soon as the top layer
    is randomised; maps that stay similar show the input, not what the model learnt.

    Parameters
    ----------
    layers
        The layers to randomise, in cascade order; by default every layer with weights
        (:func:`parametrized_layers`) from the output down.
    seed
        Seed of the re-initialisation (the same seed gives the same cascade).
    **params
        The method's parameters, passed to :func:`understanding_nn.explain`.
    """
    validate_model(model)
    x = validate_input(model, x)
    targets = resolve_target(model, x, target)
    cascade = list(layers) if layers is not None else parametrized_layers(model)[::-1]
    names = _checked_layer_names(model, cascade)
    copy = _trained_copy(model)
    by_name = {layer.name: layer for layer in _weighted_layers(copy)}
    stages = [explain(copy, x, method, targets, **params)]
    for name in cascade:
        # In place on the copy: its compiled explanation functions read the weights at every call.
        _reinitialize(by_name[name], seed + 1000 * names.index(name))
        stages.append(explain(copy, x, method, targets, **params))
    return Randomization(cascade, np.stack(stages), targets)


def random_other_class(target: Any, n_classes: int, *, seed: int = 0) -> np.ndarray:
    """For every class index in ``target``, a class drawn uniformly from the *other*
    ``n_classes - 1`` classes, with ``seed``."""
    target = np.asarray(target)
    if n_classes < 2:
        raise ValueError(f"a random other class needs at least 2 classes, got {n_classes}")
    offset = np.random.default_rng(seed).integers(1, n_classes, size=target.shape)
    return ((target + offset) % n_classes).astype(np.int32)


@dataclass(frozen=True)
class RandomLogit:
    """The explanations of :func:`random_logit_test`: of the ``target`` class (``relevance``) and
    of a random ``other`` class (``other_relevance``)."""

    target: np.ndarray
    other: np.ndarray
    relevance: np.ndarray
    other_relevance: np.ndarray

    def similarity(self, measure: str = "ssim") -> np.ndarray:
        """The similarity of the two explanations of every input, shape ``(N,)``; ``measure`` is
        a key of :data:`SIMILARITIES`."""
        return _similarity(measure)(self.relevance, self.other_relevance)


def random_logit_test(
    model: keras.Model, x: Any, method: str, target: Target = None, *, seed: int = 0, **params: Any
) -> RandomLogit:
    """The random-logit test (Sixt, Granz & Landgraf 2020, *When explanations lie*).

    Every input is explained twice: for the target class (by default the predicted one) and for
    a class drawn at random among the others (:func:`random_other_class`). An explanation of the
    decision must depend on the class it explains; a method whose two maps are nearly the same
    shows the input, whatever the question.
    """
    validate_model(model)
    x = validate_input(model, x)
    targets = resolve_target(model, x, target)
    others = random_other_class(targets, n_classes(model), seed=seed)
    return RandomLogit(
        targets, others, explain(model, x, method, targets, **params), explain(model, x, method, others, **params)
    )


def rank_correlation(a: Any, b: Any, *, absolute: bool = False) -> np.ndarray:
    """Spearman's rank correlation between corresponding maps, one value per pair: the Pearson
    correlation (:func:`map_correlation`) of their ranks (ties get their mean rank). With
    ``absolute``, the maps' absolute values are ranked (Adebayo et al. 2018 report both: the
    sign of a map is often arbitrary for gradients)."""
    from scipy.stats import rankdata

    a, b = _flat(a, "a"), _flat(b, "b")
    if absolute:
        a, b = np.abs(a), np.abs(b)
    return map_correlation(rankdata(a, axis=1), rankdata(b, axis=1))


def structural_similarity(a: Any, b: Any) -> np.ndarray:
    """The structural similarity index (SSIM, Wang et al. 2004) between corresponding maps, one
    value per pair, as computed by scikit-image (``skimage.metrics.structural_similarity``, a
    7×7 window).

    As in Adebayo et al. 2018 the maps are compared by magnitude: each map ``(H, W)`` (channels
    summed) is replaced by its absolute value divided by its largest absolute value, so both lie
    in [0, 1] (``data_range=1``). Identical maps score 1; an all-zero map stays zero.
    """
    from skimage.metrics import structural_similarity as ssim

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the two batches differ in shape: {a.shape} and {b.shape}")
    if a.ndim == 4:
        a, b = a.sum(axis=-1), b.sum(axis=-1)
    if a.ndim != 3:
        raise ValueError(f"structural_similarity needs maps of shape (N, H, W) or (N, H, W, C), got {a.shape}")

    def unit(maps: np.ndarray) -> np.ndarray:
        peak = np.abs(maps).max(axis=(1, 2), keepdims=True)
        return np.divide(np.abs(maps), peak, out=np.zeros_like(maps), where=peak > 0)

    return np.array([ssim(u, v, data_range=1.0) for u, v in zip(unit(a), unit(b))])


SIMILARITIES: dict[str, Any] = {
    "spearman": rank_correlation,
    "spearman_abs": lambda a, b: rank_correlation(a, b, absolute=True),
    "ssim": structural_similarity,
}
"""The similarity measures of the sanity checks, by name. ``"spearman"`` and ``"spearman_abs"``
are Spearman's rank correlation of the signed maps and of their absolute values, ``"ssim"`` the
structural similarity of the absolute maps."""


def _similarity(measure: str) -> Any:
    if measure not in SIMILARITIES:
        raise ValueError(f"measure must be one of {', '.join(map(repr, SIMILARITIES))}, got {measure!r}")
    return SIMILARITIES[measure]
