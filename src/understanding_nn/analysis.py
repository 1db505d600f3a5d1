"""What explanations are for: validating a model and analysing the data (Part VI).

Montavon et al. (2018), §8, end the tutorial with two uses of explanations, and chapters 6.1
and 6.2 run both:

* **Model validation** (§8.1, chapter 6.1). :func:`spray` is the spectral relevance analysis of
  Lapuschkin et al. (2019), *Unmasking Clever Hans predictors and assessing what machines really
  learn*: it clusters the explanations of one class, so that a strategy shared by some of the
  class's images (a shortcut such as a watermark) shows up as a cluster of its own, without being
  told where to look. :func:`purity` scores clusters against known groups.
* **Analysing data** (§8.2, chapter 6.2). :func:`group_means` averages normalised maps per class
  or per cluster; :func:`explain_contrast` explains why a sample is class :math:`c` *rather than*
  :math:`c'` (the score :math:`S_c - S_{c'}`) with any method of
  :func:`~understanding_nn.explain`; :func:`outlier_scores` ranks the samples whose explanation
  is unlike those of their class, candidates for ambiguous or mislabelled digits; :func:`embed`
  places maps in the plane (t-SNE) for a figure.

Clustering and embeddings are scikit-learn's (spectral clustering, nearest neighbours, t-SNE).

References: Lapuschkin, Wäldchen, Binder, Montavon, Samek and Müller, *Nature Communications*
10, 1096 (2019); von Luxburg, *A tutorial on spectral clustering*, Statistics and Computing 17
(2007), for the graph Laplacian and the eigengap heuristic.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from .attribution import (
    Target,
    UnsupportedModelError,
    class_indices,
    explain,
    predict_logits,
    validate_input,
    validate_model,
)

__all__ = [
    "Spray",
    "contrastive_copy",
    "embed",
    "explain_contrast",
    "group_means",
    "normalized_maps",
    "outlier_scores",
    "purity",
    "runner_up",
    "spray",
]


# --------------------------------------------------------------------------------------------
# Maps as feature vectors
# --------------------------------------------------------------------------------------------


def _as_array(relevance: Any) -> np.ndarray:
    """The maps as one float64 array, with a clear error for a list of maps of different shapes."""
    if isinstance(relevance, (list, tuple)):
        shapes = [np.shape(m) for m in relevance]
        odd = next((i for i, shape in enumerate(shapes) if shape != shapes[0]), None)
        if odd is not None:
            raise ValueError(f"the maps have different shapes: map {odd} has shape {shapes[odd]}, map 0 has {shapes[0]}")
    return np.asarray(relevance, dtype=np.float64)


def _block_means(maps: np.ndarray, size: int) -> np.ndarray:
    """Means over ``size``×``size`` blocks of maps ``(N, H, W)``; blocks at the bottom and right
    edges that the image does not fill are averaged over the pixels they hold."""
    n, height, width = maps.shape
    rows, cols = -(-height // size) * size, -(-width // size) * size
    padded = np.full((n, rows, cols), np.nan)
    padded[:, :height, :width] = maps
    blocks = padded.reshape(n, rows // size, size, cols // size, size)
    counts = np.isfinite(blocks).sum(axis=(2, 4))
    return np.nansum(blocks, axis=(2, 4)) / counts


def normalized_maps(relevance: Any, *, downsample: int = 1) -> np.ndarray:
    """Maps as comparable feature vectors: channels summed, pooled, scaled to unit length.

    Each map is summed over its channels (relevance is additive), averaged over
    ``downsample``×``downsample`` blocks (SpRAy's downsampling, which makes the comparison
    tolerant to small shifts; blocks at the edges that the map does not fill average the pixels
    they hold), flattened and divided by its Euclidean norm, so that maps are compared by their
    shape and not by the size of the score they explain. An all-zero map stays zero.

    Parameters
    ----------
    relevance
        Maps ``(N, H, W)`` or ``(N, H, W, C)``, or relevance vectors ``(N, D)`` (of tabular
        features, pooled in runs of ``downsample``), finite.
    downsample
        The side of the pooling blocks, from 1 (no pooling) to the side of the maps.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(N, ceil(H / downsample) * ceil(W / downsample))``.
    """
    maps = _as_array(relevance)
    if maps.ndim == 4:
        maps = maps.sum(axis=-1)
    if maps.ndim == 2:
        maps = maps[:, None, :]
    if maps.ndim != 3:
        raise ValueError(f"relevance must have shape (N, D), (N, H, W) or (N, H, W, C), got {maps.shape}")
    if len(maps) == 0:
        raise ValueError("relevance is empty (0 maps)")
    if not np.isfinite(maps).all():
        raise ValueError("relevance contains NaN or infinite values")
    longest = max(maps.shape[1:])
    if isinstance(downsample, (bool, np.bool_)) or not isinstance(downsample, (int, np.integer)) or not 1 <= downsample <= longest:
        raise ValueError(f"downsample must be an int from 1 to {longest} (the side of the maps), got {downsample!r}")
    pooled = _block_means(maps, int(downsample)) if downsample > 1 else maps
    flat = pooled.reshape(len(maps), -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)


def _groups(groups: Any, n: int, what: str = "groups") -> np.ndarray:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"{what} has shape {groups.shape}; it needs one entry per map, shape ({n},)")
    return groups


# --------------------------------------------------------------------------------------------
# Spectral relevance analysis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spray:
    """The result of :func:`spray`.

    Attributes
    ----------
    labels
        int64, shape ``(N,)``: the cluster of every map, ``0 .. n_clusters - 1``, numbered by
        decreasing size (cluster 0 is the largest).
    n_clusters
        The number of clusters, chosen by the eigengap unless it was given.
    eigenvalues
        The smallest eigenvalues of the normalised graph Laplacian, ascending,
        :math:`0 = \\lambda_1 \\le \\lambda_2 \\le \\dots`; the eigengap choice is the ``k`` with
        the largest :math:`\\lambda_{k+1} - \\lambda_k`.
    features
        The normalised, downsampled maps the graph was built from (:func:`normalized_maps`).
    affinity
        The graph: a sparse symmetric ``(N, N)`` matrix (SciPy), 1 where two maps are joined.
    """

    labels: np.ndarray
    n_clusters: int
    eigenvalues: np.ndarray
    features: np.ndarray
    affinity: Any

    def sizes(self) -> np.ndarray:
        """The number of maps in each cluster."""
        return np.bincount(self.labels, minlength=self.n_clusters)


def _affinity(features: np.ndarray, n_neighbors: int) -> Any:
    """The symmetric k-nearest-neighbour graph of the features (a sparse 0/1 matrix)."""
    from sklearn.neighbors import kneighbors_graph

    graph = kneighbors_graph(features, n_neighbors, mode="connectivity", include_self=False)
    return graph.maximum(graph.T)


_NEIGHBOURS = 10  # the affinity graph's neighbours per map, for 100 maps or more
_MAX_CLUSTERS = 8
_DENSE_EIGENSOLVE = 1500  # up to this many maps a dense solve is quicker and exact


def _laplacian_eigenvalues(affinity: Any, count: int) -> np.ndarray:
    """The ``count`` smallest eigenvalues of :math:`L = I - D^{-1/2} A D^{-1/2}`, ascending.

    For many maps they are found as the largest eigenvalues :math:`\\mu` of the sparse
    :math:`D^{-1/2} A D^{-1/2}` (Lanczos iterations), :math:`\\lambda = 1 - \\mu`.
    """
    from scipy.sparse import diags
    from scipy.sparse.csgraph import laplacian
    from scipy.sparse.linalg import eigsh

    affinity = affinity.astype(np.float64)
    if affinity.shape[0] <= _DENSE_EIGENSOLVE:
        eigenvalues = np.linalg.eigvalsh(laplacian(affinity, normed=True).toarray())[:count]
    else:
        scaling = diags(1.0 / np.sqrt(np.asarray(affinity.sum(axis=1)).ravel()))
        largest = eigsh(scaling @ affinity @ scaling, k=count, which="LA", return_eigenvectors=False,
                        v0=np.ones(affinity.shape[0]))
        eigenvalues = np.sort(1.0 - largest)
    return np.clip(eigenvalues, 0.0, None)


def spray(
    relevance: Any,
    *,
    n_clusters: int | None = None,
    max_clusters: int | None = None,
    downsample: int = 2,
    n_neighbors: int | None = None,
    seed: int = 0,
) -> Spray:
    """Spectral relevance analysis (SpRAy; Lapuschkin et al. 2019): cluster the explanations of
    one class to find the strategies the model uses for it.

    The steps follow the recipe of Lapuschkin et al.; the settings (a binary, symmetrised graph of
    10 nearest neighbours, 2×2 pooling) are this package's defaults:

    1. every map is downsampled and normalised (:func:`normalized_maps`);
    2. the maps are joined in a graph with an edge between each map and its ``n_neighbors``
       nearest neighbours (Euclidean), symmetrised: affinity :math:`A_{ij} \\in \\{0, 1\\}`;
    3. the eigenvalues :math:`\\lambda_1 \\le \\lambda_2 \\le \\dots` of the normalised Laplacian
       :math:`L = I - D^{-1/2} A D^{-1/2}` (:math:`D` the degrees) are computed: a graph of
       :math:`k` groups with few edges between them has :math:`k` eigenvalues near 0 and then a
       jump, so the number of clusters is the :math:`k \\le` ``max_clusters`` with the largest
       gap :math:`\\lambda_{k+1} - \\lambda_k` (the eigengap heuristic), unless ``n_clusters``
       is given;
    4. spectral clustering of the graph (scikit-learn's ``SpectralClustering`` on the
       precomputed affinity, labels assigned by its deterministic QR method) splits the maps.

    Parameters
    ----------
    relevance
        The maps of one class, ``(N, H, W)`` or ``(N, H, W, C)``.
    n_clusters
        The number of clusters; ``None`` chooses it by the eigengap.
    max_clusters
        The largest number the eigengap may choose, at most ``N - 1``; ``None`` takes 8 (or
        ``N - 1``). Raise it to look for more groups, and check the spectrum: on maps that vary
        continuously, a late gap can be the largest by chance (chapter 6.1 shows one).
    downsample
        Passed to :func:`normalized_maps`.
    n_neighbors
        The neighbours of each map in the affinity graph; ``None`` takes 10, or a tenth of the
        maps (at least 3) when there are fewer than 100. A group of fewer maps than this is
        joined to its neighbours by most of its edges and cannot come out as a cluster of its
        own: lower ``n_neighbors`` to look for small groups.
    seed
        Seeds the eigenvector solver of the clustering, so that a call is reproducible.

    Returns
    -------
    Spray
        The cluster of every map, the number of clusters and the eigenvalues.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> left, right = np.zeros((8, 8)), np.zeros((8, 8))
    >>> left[:, :4], right[:, 4:] = 1.0, 1.0
    >>> maps = np.stack([left] * 20 + [right] * 20) + 0.05 * rng.random((40, 8, 8))
    >>> result = spray(maps, n_neighbors=5)
    >>> result.n_clusters, purity(result.labels, [0] * 20 + [1] * 20)
    (2, 1.0)
    """
    from sklearn.cluster import SpectralClustering

    features = normalized_maps(relevance, downsample=downsample)
    n = len(features)
    if n < 3:
        raise ValueError(f"spray needs at least 3 maps, got {n}")
    if n_neighbors is None:
        n_neighbors = min(_NEIGHBOURS, max(3, n // 10), n - 1)
    if max_clusters is None:
        max_clusters = min(_MAX_CLUSTERS, n - 1)
    if not isinstance(n_neighbors, (int, np.integer)) or not 1 <= n_neighbors < n:
        raise ValueError(f"n_neighbors must be an int from 1 to {n - 1} (one less than the maps), got {n_neighbors!r}")
    if not isinstance(max_clusters, (int, np.integer)) or not 2 <= max_clusters < n:
        raise ValueError(f"max_clusters must be an int from 2 to {n - 1}, got {max_clusters!r}")
    if n_clusters is not None and (not isinstance(n_clusters, (int, np.integer)) or not 1 <= n_clusters < n):
        raise ValueError(f"n_clusters must be None or an int from 1 to {n - 1}, got {n_clusters!r}")
    affinity = _affinity(features, int(n_neighbors))
    eigenvalues = _laplacian_eigenvalues(affinity, int(max_clusters) + 1)
    if n_clusters is None:
        n_clusters = int(np.argmax(np.diff(eigenvalues))) + 1
    if n_clusters == 1:
        labels = np.zeros(n, dtype=np.int64)
    else:
        clustering = SpectralClustering(
            n_clusters=int(n_clusters), affinity="precomputed", assign_labels="cluster_qr", random_state=seed
        )
        with warnings.catch_warnings():
            # A graph of well-separated groups falls apart into components: the case the
            # eigengap is made for, not a reason to warn.
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            labels = clustering.fit_predict(affinity)
        by_size = np.argsort(-np.bincount(labels, minlength=n_clusters), kind="stable")
        labels = np.argsort(by_size)[labels].astype(np.int64)
    return Spray(labels, int(n_clusters), eigenvalues, features, affinity)


def purity(clusters: Any, truth: Any) -> float:
    """The purity of a clustering against known groups: the share of samples that belong to the
    most common true group of their cluster,

    .. math:: \\text{purity} = \\frac{1}{N} \\sum_{\\text{clusters } k} \\max_{g} \\abs{C_k \\cap G_g} .

    1 means every cluster holds one group only (a group may still be split over several
    clusters: compare the numbers of clusters and groups too).

    >>> purity([0, 0, 1, 1], ["a", "a", "b", "b"]), purity([0, 0, 0, 0], ["a", "a", "b", "b"])
    (1.0, 0.5)
    """
    clusters = np.asarray(clusters)
    truth = _groups(truth, len(clusters), "truth")
    if clusters.ndim != 1 or len(clusters) == 0:
        raise ValueError(f"clusters must be a non-empty 1-D array, got shape {clusters.shape}")
    agreeing = 0
    for cluster in np.unique(clusters):
        _, counts = np.unique(truth[clusters == cluster], return_counts=True)
        agreeing += counts.max()
    return float(agreeing / len(clusters))


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def group_means(relevance: Any, groups: Any, *, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The mean map of every group (a class, a cluster), channels summed.

    With ``normalize`` each map is first divided by its sum of absolute values, so that every
    sample counts alike whatever the size of its score.

    Parameters
    ----------
    relevance
        Maps ``(N, H, W)`` or ``(N, H, W, C)``.
    groups
        The group of every map, shape ``(N,)``.

    Returns
    -------
    tuple of numpy.ndarray
        ``(names, means)``: the groups in sorted order and their mean maps ``(G, H, W)``.
    """
    maps = _as_array(relevance)
    if maps.ndim == 4:
        maps = maps.sum(axis=-1)
    if maps.ndim != 3:
        raise ValueError(f"relevance must have shape (N, H, W) or (N, H, W, C), got {maps.shape}")
    groups = _groups(groups, len(maps))
    if normalize:
        totals = np.abs(maps).sum(axis=(1, 2), keepdims=True)
        maps = np.divide(maps, totals, out=np.zeros_like(maps), where=totals > 0)
    names = np.unique(groups)
    return names, np.stack([maps[groups == name].mean(axis=0) for name in names])


def outlier_scores(relevance: Any, groups: Any, *, n_neighbors: int = 10, downsample: int = 2) -> np.ndarray:
    """How unlike the other explanations of its group each map is.

    The score of a map is its mean Euclidean distance to its ``n_neighbors`` nearest neighbours
    among the maps of its own group (as :func:`normalized_maps`, so between 0 and 2), divided by
    the median of that distance in the group: about 1 for a typical map, large for a map the
    group has nothing like. Chapter 6.2 ranks test digits by it, with the class the model was
    given as the group, to find digits that may be ambiguous or mislabelled; a high score is a
    reason to look, not a verdict.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(N,)``.
    """
    from sklearn.neighbors import NearestNeighbors

    features = normalized_maps(relevance, downsample=downsample)
    groups = _groups(groups, len(features))
    scores = np.empty(len(features))
    for name in np.unique(groups):
        members = np.flatnonzero(groups == name)
        if len(members) <= n_neighbors:
            raise ValueError(f"group {np.asarray(name).item()!r} has {len(members)} maps; outlier_scores needs more than n_neighbors = {n_neighbors}")
        distances, _ = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(features[members]).kneighbors(features[members])
        mean_distance = distances[:, 1:].mean(axis=1)  # column 0 is the map itself
        median = np.median(mean_distance)
        scores[members] = mean_distance / median if median > 0 else np.where(mean_distance > 0, np.inf, 1.0)
    return scores


def embed(relevance: Any, *, downsample: int = 2, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """A 2-D t-SNE embedding of the normalised maps (scikit-learn's ``TSNE``, PCA initialisation),
    for figures: nearby points have similar explanations. Returns float64, shape ``(N, 2)``."""
    from sklearn.manifold import TSNE

    features = normalized_maps(relevance, downsample=downsample)
    perplexity = min(perplexity, (len(features) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


# --------------------------------------------------------------------------------------------
# Contrastive explanations
# --------------------------------------------------------------------------------------------


def _logit_layer(model: keras.Model) -> keras.layers.Dense:
    validate_model(model)
    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense):
        raise UnsupportedModelError(
            f"a contrastive copy folds S_c - S_c' into the model's last layer, which must be a Dense "
            f"layer of class scores; {model.name!r} ends in {last.name!r} ({type(last).__name__})"
        )
    return last


# One copy per model and class c', kept while the model lives, so that repeated contrasts reuse
# the copy's compiled functions; its weights are refreshed from the model on every use.
_CONTRAST_COPIES: weakref.WeakKeyDictionary[keras.Model, dict[int, keras.Model]] = weakref.WeakKeyDictionary()


def contrastive_copy(model: keras.Model, versus: int) -> keras.Model:
    """A copy of ``model`` whose class score :math:`k` is :math:`S_k(x) - S_{c'}(x)`, with
    :math:`c'` = ``versus``.

    The difference is folded into the last Dense layer, :math:`w'_k = w_k - w_{c'}` and
    :math:`b'_k = b_k - b_{c'}`, so the copy has the same layers as the model and every method
    of :func:`~understanding_nn.explain` applies to it exactly as to the model (CAM included:
    its weights are the last layer's). The model is not changed. The copy is made once per model
    and class and its weights are set from the model's current weights on every call, so a model
    trained further in between is never explained with stale weights.
    """
    last = _logit_layer(model)
    n_classes = int(model.outputs[0].shape[-1])
    versus = int(class_indices(versus, 1, n_classes)[0])
    copies = _CONTRAST_COPIES.setdefault(model, {})
    if versus not in copies:
        copies[versus] = keras.models.clone_model(model)
    copy = copies[versus]
    copy.set_weights(model.get_weights())
    kernel = np.asarray(last.kernel)
    copied = copy.layers[-1]
    copied.kernel.assign(kernel - kernel[:, versus : versus + 1])
    if last.use_bias:
        bias = np.asarray(last.bias)
        copied.bias.assign(bias - bias[versus])
    return copy


def runner_up(model: keras.Model, x: Any, target: Target = None, *, batch_size: int = 256) -> np.ndarray:
    """The strongest rival of ``target`` for each sample of ``x``: the class with the highest
    score other than ``target`` (int32, shape ``(N,)``).

    With ``target=None`` (the predicted class) it is the class with the second-highest score.
    """
    x = validate_input(validate_model(model), x)
    logits = predict_logits(model, x, batch_size=batch_size)
    target = np.argmax(logits, axis=1) if target is None else class_indices(target, len(x), logits.shape[1])
    logits[np.arange(len(x)), target] = -np.inf
    return np.argmax(logits, axis=1).astype(np.int32)


def explain_contrast(
    model: keras.Model,
    x: Any,
    method: str,
    target: Target = None,
    versus: Target = None,
    **params: Any,
) -> np.ndarray:
    """Explain why each sample is ``target`` *rather than* ``versus``: the explanation of the
    score difference :math:`S_c(x) - S_{c'}(x)` by ``method``.

    For a method that is linear in the score it starts from (the gradient, gradient × input,
    integrated gradients, DeepLIFT, LRP-0 and the LRP presets whose rule at the last layer is
    LRP-0 such as ``lrp.composite``, CAM, Grad-CAM without its ReLU), this is the difference of
    the two classes' explanations; for the others (LRP-ε's stabiliser at the last layer, the
    squared or absolute gradients, the ReLU of Grad-CAM) it is the method applied to the
    difference, which is what "why :math:`c` and not :math:`c'`" asks. Conservation,
    :math:`\\sum_i R_i = S_c - S_{c'}`, needs a method and a network that conserve. It runs
    :func:`~understanding_nn.explain` on :func:`contrastive_copy` once per class ``versus``
    takes.

    Parameters
    ----------
    model, x, method, **params
        As in :func:`~understanding_nn.explain`.
    target
        The class :math:`c` (an int, one per sample, or ``None`` for the predicted class).
    versus
        The class :math:`c'` (an int, one per sample, or ``None`` for the strongest rival of
        ``target``, the highest-scoring other class: :func:`runner_up`). It must differ from
        ``target`` for every sample.

    Returns
    -------
    numpy.ndarray
        The relevance of :math:`S_c - S_{c'}`, shaped like ``x``.
    """
    _logit_layer(model)
    x = validate_input(model, x)
    n_classes = int(model.outputs[0].shape[-1])
    batch_size = params.get("batch_size", 256)
    if target is None:
        target = np.argmax(predict_logits(model, x, batch_size=batch_size), axis=1)
    target = class_indices(target, len(x), n_classes)
    versus = runner_up(model, x, target, batch_size=batch_size) if versus is None else class_indices(versus, len(x), n_classes)
    same = np.flatnonzero(target == versus)
    if len(same):
        raise ValueError(
            f"target and versus are the same class ({int(target[same[0]])}) for {len(same)} samples, "
            f"the first at index {int(same[0])}; a contrast needs two different classes"
        )
    relevance: np.ndarray | None = None
    for other in np.unique(versus):
        rows = np.flatnonzero(versus == other)
        part = explain(contrastive_copy(model, int(other)), x[rows], method, target[rows], **params)
        if relevance is None:
            relevance = np.zeros((len(x), *part.shape[1:]), dtype=part.dtype)
        relevance[rows] = part
    assert relevance is not None
    return relevance

