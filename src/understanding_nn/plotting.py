"""Figures for relevance maps: one heatmap, a heatmap over its digit, and grids of them.

Every chapter draws its explanations with these functions, so that all maps in the book follow
one convention:

* **signed** relevance (positive and negative evidence) uses a diverging colormap centred at zero
  with symmetric limits :math:`[-m, m]`, :math:`m = \\max_i |R_i|`: red for evidence for the
  class, blue for evidence against it, white for none;
* **non-negative** maps (sensitivity, saliency, class activation maps) use a sequential colormap
  from white (zero) to dark;
* every heatmap has a colorbar that says what it shows, and every panel a title;
* a class activation map is drawn *over* its canvas (:func:`plot_overlay`), transparent where it
  is zero so that the digits stay visible, with the digits' boxes on top;
* a measure of every method (Part V) is drawn as means with their confidence intervals, one row
  per method (:func:`interval_chart`);
* clusters of explanations (Part VI) are drawn as a gallery, one row per cluster with its mean
  map first (:func:`cluster_gallery`), next to the spectrum that chose their number
  (:func:`spectrum_chart`) and a 2-D embedding of the maps (:func:`embedding_scatter`).

Whether a map is signed is decided from its values unless ``signed`` is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.patches import Rectangle
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

__all__ = [
    "DIVERGING",
    "SEQUENTIAL",
    "cluster_gallery",
    "comparison_grid",
    "embedding_scatter",
    "heatmap_grid",
    "image_grid",
    "interval_chart",
    "overlay_grid",
    "plot_heatmap",
    "plot_overlay",
    "scale",
    "spectrum_chart",
]

DIVERGING = "RdBu_r"
SEQUENTIAL = "Reds"


def _as_2d(array: np.ndarray, what: str) -> np.ndarray:
    """Drop a trailing channel axis of size 1; sum several channels (relevance is additive)."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 3:
        array = array.sum(axis=-1)
    if array.ndim != 2:
        raise ValueError(f"{what} must be an image of shape (H, W) or (H, W, C), got shape {array.shape}")
    return array


def scale(relevance: np.ndarray, signed: bool | None = None) -> tuple[str, float, float]:
    """The colormap name and limits ``(cmap, vmin, vmax)`` for a relevance map.

    ``signed=None`` decides from the values: any negative value makes the map signed.
    """
    relevance = np.asarray(relevance)
    if signed is None:
        signed = bool((relevance < 0).any())
    peak = float(np.abs(relevance).max()) if relevance.size else 0.0
    peak = peak if peak > 0 else 1.0  # an all-zero map still gets a valid colour scale
    if signed:
        return DIVERGING, -peak, peak
    return SEQUENTIAL, 0.0, peak


def plot_heatmap(
    relevance: np.ndarray,
    image: np.ndarray | None = None,
    *,
    ax: Axes | None = None,
    signed: bool | None = None,
    title: str | None = None,
    colorbar: bool = True,
    label: str = "relevance",
    limits: tuple[float, float] | None = None,
) -> AxesImage:
    """Draw one relevance map, with the outline of its input ``image`` on top if given.

    Parameters
    ----------
    relevance
        The map, shape ``(H, W)`` or ``(H, W, C)`` (channels are summed).
    image
        The explained input, same height and width; drawn as a grey contour at half its maximum,
        so the heatmap's colours stay exact.
    ax
        Axes to draw in (default: the current axes).
    signed
        Force the diverging (``True``) or sequential (``False``) colormap; decided from the
        values when ``None``.
    title, colorbar, label
        Panel title, whether to add a colorbar, and the colorbar's label.
    limits
        ``(vmin, vmax)`` to share one scale between panels; from the map itself when ``None``.
    """
    ax = ax or plt.gca()
    relevance = _as_2d(relevance, "relevance")
    cmap, vmin, vmax = scale(relevance, signed)
    if limits is not None:
        vmin, vmax = limits
    shown = ax.imshow(relevance, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if image is not None:
        image = _as_2d(image, "image")
        if image.shape != relevance.shape:
            raise ValueError(f"image has shape {image.shape} but relevance has shape {relevance.shape}")
        if image.max() > image.min():
            level = image.min() + 0.5 * (image.max() - image.min())
            ax.contour(image, levels=[level], colors="0.35", linewidths=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        bar = ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label(label, fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return shown


def _grid(count: int, ncols: int, panel: float) -> tuple[Figure, np.ndarray]:
    if count < 1:
        raise ValueError("nothing to plot: the batch is empty")
    ncols = max(1, min(ncols, count))
    nrows = -(-count // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel * ncols, panel * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat[:count]


def heatmap_grid(
    relevance: np.ndarray,
    images: np.ndarray | None = None,
    *,
    titles: Sequence[str] | None = None,
    ncols: int = 5,
    signed: bool | None = None,
    shared_scale: bool = False,
    label: str = "relevance",
    suptitle: str | None = None,
    panel_size: float = 2.1,
) -> Figure:
    """A grid of relevance maps, one per sample, each over its input's outline.

    Parameters
    ----------
    relevance
        A batch of maps, shape ``(N, H, W)`` or ``(N, H, W, C)``.
    images
        The explained inputs, same leading shape, or ``None``.
    titles
        One title per panel (for example ``"digit 3"``).
    ncols
        Panels per row; the book's 10-digit figures use 5 (two rows).
    signed
        Colormap choice as in :func:`plot_heatmap`; decided once for the whole batch, so every
        panel uses the same kind of colormap.
    shared_scale
        ``True`` gives every panel the same limits, so magnitudes compare across panels;
        ``False`` (default) scales each panel to its own maximum, so shapes compare.
    label, suptitle, panel_size
        Colorbar label, figure title, and the size of one panel in inches.
    """
    relevance = np.asarray(relevance)
    if images is not None and len(images) != len(relevance):
        raise ValueError(f"got {len(relevance)} maps but {len(images)} images")
    if titles is not None and len(titles) != len(relevance):
        raise ValueError(f"got {len(relevance)} maps but {len(titles)} titles")
    if signed is None:
        signed = bool((relevance < 0).any())
    limits = scale(relevance, signed)[1:] if shared_scale else None
    fig, axes = _grid(len(relevance), ncols, panel_size)
    for i, ax in enumerate(axes):
        plot_heatmap(
            relevance[i],
            None if images is None else images[i],
            ax=ax,
            signed=signed,
            title=None if titles is None else titles[i],
            label=label,
            limits=limits,
        )
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def comparison_grid(
    maps: Mapping[str, np.ndarray],
    images: np.ndarray | None = None,
    *,
    column_titles: Sequence[str] | None = None,
    normalize: bool = True,
    signed: bool | None = None,
    label: str | None = None,
    suptitle: str | None = None,
    panel_size: float = 1.3,
) -> Figure:
    """Several methods side by side: one row per method (``maps``' keys label the rows), one
    column per sample, one shared colorbar.

    Parameters
    ----------
    maps
        Method name → batch of maps, every batch of the same shape ``(N, H, W[, C])``.
    images
        The explained inputs, drawn as outlines; ``None`` for none.
    column_titles
        One title per sample (for example ``"digit 3"``).
    normalize
        ``True`` (default) divides every map by its own :math:`\\max_i |R_i|`, so the colours
        compare the *shapes* of the maps across methods whose scales differ; ``False`` shares the
        limits of all maps, so magnitudes compare.
    signed, label, suptitle, panel_size
        Colormap choice as in :func:`plot_heatmap` (decided once for all maps), colorbar label,
        figure title, size of one panel in inches.
    """
    if not maps:
        raise ValueError("maps is empty: give at least one method's maps")
    batches = {name: np.asarray(batch) for name, batch in maps.items()}
    shapes = {batch.shape for batch in batches.values()}
    if len(shapes) != 1:
        raise ValueError(f"every method needs maps of the same shape, got {sorted(shapes)}")
    n_samples = next(iter(shapes))[0]
    if images is not None and len(images) != n_samples:
        raise ValueError(f"got {n_samples} maps per method but {len(images)} images")
    if column_titles is not None and len(column_titles) != n_samples:
        raise ValueError(f"got {n_samples} maps per method but {len(column_titles)} column titles")
    if normalize:
        batches = {
            name: batch / np.maximum(np.abs(batch).reshape(n_samples, -1).max(axis=1), 1e-30).reshape(
                (-1,) + (1,) * (batch.ndim - 1)
            )
            for name, batch in batches.items()
        }
    everything = np.stack(list(batches.values()))
    if signed is None:
        signed = bool((everything < 0).any())
    limits = scale(everything, signed)[1:]
    if label is None:
        label = r"$R_i \,/\, \max_i |R_i|$" if normalize else "relevance"
    fig, axes = plt.subplots(
        len(batches), n_samples, figsize=(panel_size * n_samples + 1.2, panel_size * len(batches)),
        squeeze=False, layout="constrained",
    )
    for row, (name, batch) in zip(axes, batches.items()):
        for column, ax in enumerate(row):
            shown = plot_heatmap(
                batch[column], None if images is None else images[column], ax=ax, signed=signed,
                colorbar=False, limits=limits,
            )
        row[0].set_ylabel(name, fontsize=9)
    if column_titles is not None:
        for ax, title in zip(axes[0], column_titles):
            ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=axes, shrink=0.6, label=label)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def image_grid(
    images: np.ndarray,
    *,
    titles: Sequence[str] | None = None,
    ncols: int = 5,
    cmap: str = "gray_r",
    limits: tuple[float, float] | None = (0.0, 1.0),
    suptitle: str | None = None,
    panel_size: float = 1.6,
) -> Figure:
    """A grid of input images (digits, prototypes), ink dark on white, on the data range [0, 1]."""
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(images)} images but {len(titles)} titles")
    fig, axes = _grid(len(images), ncols, panel_size)
    vmin, vmax = limits if limits is not None else (None, None)
    for i, ax in enumerate(axes):
        ax.imshow(_as_2d(images[i], "image"), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_overlay(
    relevance: np.ndarray,
    image: np.ndarray,
    boxes: np.ndarray | None = None,
    *,
    select: np.ndarray | None = None,
    ax: Axes | None = None,
    signed: bool | None = None,
    title: str | None = None,
    colorbar: bool = True,
    label: str = "relevance",
    limits: tuple[float, float] | None = None,
    opacity: float = 0.75,
) -> ScalarMappable:
    """Draw a map over its image (a class activation map over its canvas), with boxes on top.

    The image is drawn in grey (ink dark on white, data range [0, 1]); the map on top in the
    colormap of :func:`scale`, with an opacity that grows with :math:`|R_i|` (transparent where
    the map is zero), so the ink shows through where the map is weak.

    Parameters
    ----------
    relevance
        The map, shape ``(H, W)`` or ``(H, W, C)`` (channels are summed).
    image
        The input it explains, same height and width.
    boxes
        Optional boxes ``(k, 4)`` as ``(top, left, bottom, right)``, bottom and right exclusive
        (the boxes of :class:`~understanding_nn.data.ClutteredMNIST`).
    select
        Optional booleans ``(k,)``: the selected boxes (the target's digits) are drawn solid, the
        others dashed. All boxes are solid when ``None``.
    ax, signed, title, colorbar, label, limits
        As in :func:`plot_heatmap`.
    opacity
        The opacity of the map where :math:`|R_i|` is largest, in (0, 1].
    """
    if not 0 < opacity <= 1:
        raise ValueError(f"opacity must be in (0, 1], got {opacity!r}")
    ax = ax or plt.gca()
    relevance = _as_2d(relevance, "relevance")
    image = _as_2d(image, "image")
    if image.shape != relevance.shape:
        raise ValueError(f"image has shape {image.shape} but relevance has shape {relevance.shape}")
    cmap_name, vmin, vmax = scale(relevance, signed)
    if limits is not None:
        vmin, vmax = limits
    norm = mcolors.Normalize(vmin=vmin, vmax=vmax)
    cmap = plt.get_cmap(cmap_name)
    rgba = cmap(norm(relevance))
    peak = max(abs(vmin), abs(vmax)) or 1.0
    rgba[..., 3] = opacity * np.clip(np.abs(relevance) / peak, 0.0, 1.0)
    ax.imshow(image, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.imshow(rgba, interpolation="nearest")
    if boxes is not None:
        boxes = np.asarray(boxes).reshape(-1, 4)
        chosen = np.ones(len(boxes), dtype=bool) if select is None else np.asarray(select, dtype=bool).reshape(-1)
        if len(chosen) != len(boxes):
            raise ValueError(f"got {len(boxes)} boxes but {len(chosen)} select flags")
        for (top, left, bottom, right), solid in zip(boxes, chosen):
            ax.add_patch(Rectangle(
                (left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                edgecolor="tab:blue" if solid else "0.4", linestyle="-" if solid else "--", linewidth=1.2,
            ))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    if colorbar:
        bar = ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label(label, fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return mappable


def overlay_grid(
    relevance: np.ndarray,
    images: np.ndarray,
    boxes: np.ndarray | None = None,
    *,
    select: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 5,
    signed: bool | None = None,
    normalize: bool = True,
    label: str | None = None,
    suptitle: str | None = None,
    panel_size: float = 2.0,
) -> Figure:
    """A grid of maps drawn over their canvases (:func:`plot_overlay`), one shared colorbar.

    Parameters
    ----------
    relevance
        A batch of maps ``(N, H, W)`` or ``(N, H, W, C)``.
    images
        The canvases they explain, same leading shape.
    boxes, select
        Optional boxes ``(N, k, 4)`` and which of them to draw solid ``(N, k)`` (for example the
        digits of the explained class); see :func:`plot_overlay`.
    titles
        One title per panel.
    ncols
        Panels per row.
    signed
        Colormap choice as in :func:`plot_heatmap`, decided once for the batch.
    normalize
        ``True`` (default) divides each map by its own :math:`\\max_i |R_i|`, so the panels compare
        shapes on one colorbar from 0 to 1; ``False`` shares the raw limits of the whole batch.
    label, suptitle, panel_size
        Colorbar label (by default it says whether the maps are normalized), figure title, size of
        one panel in inches.
    """
    relevance = np.asarray(relevance, dtype=np.float64)
    if len(images) != len(relevance):
        raise ValueError(f"got {len(relevance)} maps but {len(images)} images")
    if titles is not None and len(titles) != len(relevance):
        raise ValueError(f"got {len(relevance)} maps but {len(titles)} titles")
    if boxes is not None and len(boxes) != len(relevance):
        raise ValueError(f"got {len(relevance)} maps but boxes for {len(boxes)}")
    if select is not None and (boxes is None or len(select) != len(relevance)):
        raise ValueError("select needs boxes and one row of flags per map")
    if normalize:
        peaks = np.abs(relevance).reshape(len(relevance), -1).max(axis=1)
        relevance = relevance / np.maximum(peaks, 1e-30).reshape((-1,) + (1,) * (relevance.ndim - 1))
    if signed is None:
        signed = bool((relevance < 0).any())
    limits = scale(relevance, signed)[1:]
    if label is None:
        label = r"$R_i \,/\, \max_i |R_i|$" if normalize else "relevance"
    nrows = -(-len(relevance) // max(1, min(ncols, len(relevance))))
    fig, axes = _grid(len(relevance), ncols, panel_size)
    for i, ax in enumerate(axes):
        mappable = plot_overlay(
            relevance[i], images[i], None if boxes is None else boxes[i],
            select=None if select is None else select[i], ax=ax, signed=signed,
            title=None if titles is None else titles[i], colorbar=False, limits=limits,
        )
    fig.colorbar(mappable, ax=list(axes), shrink=0.8 if nrows > 1 else 0.9, label=label)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def interval_chart(
    labels: Sequence[str],
    intervals: Mapping[str, object] | object,
    *,
    xlabel: str,
    title: str | None = None,
    order: str | None = "ascending",
    reference: float | None = None,
    reference_label: str | None = None,
    log: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """Means with their confidence intervals, one row per label, as horizontal error bars: the
    charts of Part V, where every row is a method.

    Parameters
    ----------
    labels
        One label per row (for example the method names).
    intervals
        An :class:`~understanding_nn.metrics.Interval` whose ``estimate``, ``low`` and ``high``
        are arrays with one value per label (from
        :func:`~understanding_nn.metrics.bootstrap_interval` of a ``(N, len(labels))`` array), or
        a mapping series name → such an interval, drawn side by side in every row with a legend.
    xlabel, title
        Axis label (say which direction is better) and title.
    order
        ``"ascending"`` puts the smallest estimate of the first series at the top,
        ``"descending"`` the largest, ``None`` keeps the order of ``labels``.
    reference, reference_label
        An optional vertical dotted line (a threshold, a baseline, 0) and its legend entry.
    log
        A logarithmic horizontal axis, for values that span orders of magnitude.
    ax
        The axes to draw on; a new figure by default.
    """
    series = dict(intervals) if isinstance(intervals, Mapping) else {"": intervals}
    if not series:
        raise ValueError("intervals is empty: give at least one Interval")
    labels = list(labels)
    for name, interval in series.items():
        for part in ("estimate", "low", "high"):
            values = np.atleast_1d(np.asarray(getattr(interval, part)))
            if values.shape != (len(labels),):
                raise ValueError(
                    f"interval {name!r} has {values.size} {part} values for {len(labels)} labels; "
                    "give one value per label (bootstrap_interval of an (N, labels) array)"
                )
    if order not in ("ascending", "descending", None):
        raise ValueError(f"order must be 'ascending', 'descending' or None, got {order!r}")
    first = np.asarray(next(iter(series.values())).estimate)
    rows = np.arange(len(labels)) if order is None else np.argsort(first if order == "ascending" else -first, kind="stable")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.26 * len(labels)), layout="constrained")
    else:
        fig = ax.figure
    positions = np.arange(len(labels))
    offsets = (np.arange(len(series)) - (len(series) - 1) / 2) * (0.3 if len(series) > 1 else 0.0)
    for offset, (name, interval), marker in zip(offsets, series.items(), "osD^v<>"):
        estimate, low, high = (np.asarray(getattr(interval, part))[rows] for part in ("estimate", "low", "high"))
        ax.errorbar(estimate, positions + offset, xerr=[estimate - low, high - estimate], fmt=marker, ms=4,
                    capsize=2, lw=1, label=name or None)
    if reference is not None:
        ax.axvline(reference, color="0.4", ls=":", lw=1, label=reference_label)
    ax.set_yticks(positions, [labels[i] for i in rows], fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # the first row at the top
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    if len(series) > 1 or reference_label:
        ax.legend(fontsize=8)
    return fig


def cluster_gallery(
    relevance: np.ndarray,
    images: np.ndarray,
    clusters: np.ndarray,
    *,
    per_cluster: int = 6,
    seed: int = 0,
    label: str = "relevance",
    suptitle: str | None = None,
    panel_size: float = 1.5,
) -> Figure:
    """One row per cluster of explanations: the cluster's mean map, then examples of its members.

    The mean map (first column, titled with the cluster's size) averages the members' maps; the
    examples, drawn at random with ``seed``, show each member's own map over its digit. Every map
    is divided by its largest absolute value (the mean map after averaging), so that one colorbar
    serves all panels and the gallery compares shapes, not magnitudes.

    Parameters
    ----------
    relevance
        The maps, ``(N, H, W)`` or ``(N, H, W, C)``.
    images
        The explained inputs, the same leading shape.
    clusters
        The cluster of every map, ``(N,)`` (for example :attr:`Spray.labels
        <understanding_nn.analysis.Spray.labels>`).
    per_cluster
        Examples per row (fewer if a cluster is smaller).
    seed, label, suptitle, panel_size
        The draw of the examples, the colorbar label, the figure title and the size of a panel.
    """
    relevance, images, clusters = np.asarray(relevance, dtype=np.float64), np.asarray(images), np.asarray(clusters)
    if relevance.ndim == 4:
        relevance = relevance.sum(axis=-1)
    if len(images) != len(relevance) or clusters.shape != (len(relevance),):
        raise ValueError(
            f"got {len(relevance)} maps, {len(images)} images and clusters of shape {clusters.shape}; "
            "give one image and one cluster per map"
        )
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be at least 1, got {per_cluster}")
    names = np.unique(clusters)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(
        len(names), per_cluster + 1, figsize=(panel_size * (per_cluster + 1), panel_size * len(names)),
        squeeze=False, layout="constrained",
    )
    # Every panel divided by its own peak, so that one colorbar serves the whole gallery.
    peaks = np.abs(relevance).max(axis=(1, 2), keepdims=True)
    relative = np.divide(relevance, peaks, out=np.zeros_like(relevance), where=peaks > 0)
    signed = bool((relevance < 0).any())
    limits = (-1.0, 1.0) if signed else (0.0, 1.0)
    shown = None
    for row, name in zip(axes, names):
        members = np.flatnonzero(clusters == name)
        mean = relative[members].mean(axis=0)
        mean_peak = np.abs(mean).max()
        shown = plot_heatmap(mean / mean_peak if mean_peak > 0 else mean, ax=row[0], colorbar=False, signed=signed,
                             limits=limits, title=f"cluster {name}: mean of {len(members)}")
        chosen = rng.choice(members, size=min(per_cluster, len(members)), replace=False)
        for ax, index in zip(row[1:], chosen):
            plot_heatmap(relative[index], images[index], ax=ax, colorbar=False, signed=signed, limits=limits,
                         title=f"#{index}")
        for ax in row[1 + len(chosen):]:
            ax.set_visible(False)
    bar = fig.colorbar(shown, ax=axes, fraction=0.02, pad=0.01)
    bar.set_label(f"{label}, each panel divided by its largest |{label}|", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def spectrum_chart(eigenvalues: np.ndarray, n_clusters: int, *, ax: Axes | None = None, title: str | None = None) -> Figure:
    """The smallest eigenvalues of a graph Laplacian, with the eigengap that chose ``n_clusters``
    marked: the figure that goes with :func:`~understanding_nn.analysis.spray`."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    if eigenvalues.ndim != 1 or len(eigenvalues) < 2:
        raise ValueError(f"eigenvalues must be a 1-D array of at least 2 values, got shape {eigenvalues.shape}")
    if not 1 <= n_clusters < len(eigenvalues):
        raise ValueError(f"n_clusters must be between 1 and {len(eigenvalues) - 1}, got {n_clusters}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 2.8), layout="constrained")
    else:
        fig = ax.figure
    index = np.arange(1, len(eigenvalues) + 1)
    ax.plot(index, eigenvalues, "o-", ms=4, lw=1)
    gap_at = n_clusters + 0.5
    ax.annotate("", xy=(gap_at, eigenvalues[n_clusters]), xytext=(gap_at, eigenvalues[n_clusters - 1]),
                arrowprops=dict(arrowstyle="<->", color="C3", shrinkA=0, shrinkB=0))
    noun = "cluster" if n_clusters == 1 else "clusters"
    ax.plot([], [], color="C3", label=rf"gap after $\lambda_{{{n_clusters}}}$: {n_clusters} {noun}")
    ax.set_xticks(index)
    ax.set_xlabel("k")
    ax.set_ylabel(r"eigenvalue $\lambda_k$ of the Laplacian")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def embedding_scatter(
    points: np.ndarray,
    groups: np.ndarray,
    *,
    highlight: np.ndarray | None = None,
    highlight_label: str = "highlighted",
    group_label: str = "cluster",
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """A 2-D embedding of explanations (from :func:`~understanding_nn.analysis.embed`), one colour
    per group; the samples in the boolean mask ``highlight`` (for example those that carry a
    planted cue) are ringed in black."""
    points, groups = np.asarray(points), np.asarray(groups)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {points.shape}")
    if groups.shape != (len(points),):
        raise ValueError(f"groups has shape {groups.shape}; give one group per point, shape ({len(points)},)")
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 4.0), layout="constrained")
    else:
        fig = ax.figure
    for color, name in enumerate(np.unique(groups)):
        chosen = groups == name
        ax.scatter(*points[chosen].T, s=9, color=f"C{color % 10}", label=f"{group_label} {name}")
    if highlight is not None:
        highlight = np.asarray(highlight, dtype=bool)
        if highlight.shape != (len(points),):
            raise ValueError(f"highlight has shape {highlight.shape}; give one bool per point")
        ax.scatter(*points[highlight].T, s=22, facecolors="none", edgecolors="k", linewidths=0.5, label=highlight_label)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=1.5)
    if title:
        ax.set_title(title)
    return fig
