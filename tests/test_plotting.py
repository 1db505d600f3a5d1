"""Tests of understanding_nn.plotting: colour scales and heatmap figures (Agg backend)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from understanding_nn import plotting
from understanding_nn.plotting import DIVERGING, SEQUENTIAL


def _panels(fig: Figure) -> list:
    """The visible axes that show an image (the panels), in order, without colorbars."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.images and ax.get_label() != "<colorbar>"]


def _colorbars(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


@pytest.fixture(scope="module")
def signed_maps():
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 28, 28, 1)) * np.arange(1, 8)[:, None, None, None]


@pytest.fixture(scope="module")
def digit_images():
    return np.random.default_rng(1).random((7, 28, 28, 1)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# scale
# --------------------------------------------------------------------------------------------


def test_scale_signed_is_diverging_and_symmetric():
    assert plotting.scale(np.array([-1.0, 0.5, 2.0])) == (DIVERGING, -2.0, 2.0)
    assert plotting.scale(np.array([[-3.0, 0.5], [1.0, 0.0]])) == (DIVERGING, -3.0, 3.0)
    assert plotting.scale(np.array([-0.25, -0.5])) == (DIVERGING, -0.5, 0.5)


def test_scale_non_negative_is_sequential_from_zero():
    assert plotting.scale(np.array([0.0, 1.0, 3.0])) == (SEQUENTIAL, 0.0, 3.0)
    assert plotting.scale(np.array([0.5, 0.75])) == (SEQUENTIAL, 0.0, 0.75)


def test_scale_signed_can_be_forced():
    assert plotting.scale(np.array([0.0, 1.0, 3.0]), signed=True) == (DIVERGING, -3.0, 3.0)
    assert plotting.scale(np.array([-4.0, 1.0]), signed=False) == (SEQUENTIAL, 0.0, 4.0)


@pytest.mark.parametrize("relevance", [np.zeros((28, 28)), np.zeros(0), -np.zeros(3)], ids=["zeros", "empty", "negative-zeros"])
def test_scale_of_an_all_zero_map_is_valid(relevance):
    cmap, vmin, vmax = plotting.scale(relevance)
    assert vmin < vmax
    assert np.isfinite([vmin, vmax]).all()
    assert (cmap, vmin, vmax) == (SEQUENTIAL, 0.0, 1.0)
    assert plotting.scale(relevance, signed=True) == (DIVERGING, -1.0, 1.0)


def test_colormaps_exist():
    assert plt.get_cmap(DIVERGING).name == DIVERGING
    assert plt.get_cmap(SEQUENTIAL).name == SEQUENTIAL


# --------------------------------------------------------------------------------------------
# plot_heatmap
# --------------------------------------------------------------------------------------------


def test_plot_heatmap_draws_the_map_with_its_scale():
    relevance = np.zeros((28, 28))
    relevance[3, 4], relevance[10, 10] = -2.0, 1.0
    fig, ax = plt.subplots()
    shown = plotting.plot_heatmap(relevance, ax=ax, title="gradient", label="∂S/∂x")
    assert isinstance(shown, AxesImage)
    assert shown.get_cmap().name == DIVERGING
    assert shown.get_clim() == (-2.0, 2.0)
    np.testing.assert_array_equal(shown.get_array(), relevance)
    assert ax.get_title() == "gradient"
    (bar,) = _colorbars(fig)
    assert bar.get_ylabel() == "∂S/∂x"
    assert not [c for c in ax.collections if isinstance(c, ContourSet)]  # no image, no contour


def test_plot_heatmap_with_image_draws_a_contour():
    image = np.zeros((28, 28, 1))
    image[8:20, 8:20] = 1.0
    fig, ax = plt.subplots()
    plotting.plot_heatmap(np.abs(np.random.default_rng(0).normal(size=(28, 28, 1))), image, ax=ax)
    contours = [c for c in ax.collections if isinstance(c, ContourSet)]
    assert len(contours) == 1
    np.testing.assert_allclose(contours[0].levels, [0.5])
    assert ax.images[0].get_cmap().name == SEQUENTIAL


def test_plot_heatmap_with_a_blank_image_draws_no_contour():
    fig, ax = plt.subplots()
    plotting.plot_heatmap(np.ones((28, 28)), np.zeros((28, 28)), ax=ax)
    assert not [c for c in ax.collections if isinstance(c, ContourSet)]


def test_plot_heatmap_sums_channels_and_honours_limits_and_colorbar():
    relevance = np.ones((5, 6, 3))
    fig, ax = plt.subplots()
    shown = plotting.plot_heatmap(relevance, ax=ax, limits=(-7.0, 7.0), colorbar=False)
    np.testing.assert_array_equal(shown.get_array(), np.full((5, 6), 3.0))
    assert shown.get_clim() == (-7.0, 7.0)
    assert not _colorbars(fig)


def test_plot_heatmap_uses_the_current_axes():
    fig, ax = plt.subplots()
    plotting.plot_heatmap(np.ones((4, 4)))
    assert len(ax.images) == 1


def test_plot_heatmap_rejects_bad_shapes():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"image has shape \(27, 28\) but relevance has shape \(28, 28\)"):
        plotting.plot_heatmap(np.ones((28, 28)), np.ones((27, 28)), ax=ax)
    with pytest.raises(ValueError, match=r"relevance must be an image of shape \(H, W\) or \(H, W, C\), got shape \(2, 28, 28, 1\)"):
        plotting.plot_heatmap(np.ones((2, 28, 28, 1)), ax=ax)


# --------------------------------------------------------------------------------------------
# heatmap_grid
# --------------------------------------------------------------------------------------------


def test_heatmap_grid_has_one_titled_panel_per_sample(signed_maps, digit_images):
    titles = [f"digit {i}" for i in range(7)]
    fig = plotting.heatmap_grid(signed_maps, digit_images, titles=titles, ncols=5, suptitle="gradient × input")
    assert isinstance(fig, Figure)
    panels = _panels(fig)
    assert len(panels) == 7
    assert [ax.get_title() for ax in panels] == titles
    assert len(_colorbars(fig)) == 7
    assert len([ax for ax in fig.axes if not ax.get_visible()]) == 3  # 2 rows of 5, 7 used
    assert fig.get_suptitle() == "gradient × input"
    for ax, relevance in zip(panels, signed_maps):
        np.testing.assert_allclose(ax.images[0].get_array(), relevance[..., 0])
        assert [c for c in ax.collections if isinstance(c, ContourSet)]


def test_heatmap_grid_decides_the_colormap_once_for_the_batch(signed_maps):
    maps = np.abs(signed_maps)
    maps[3] *= -1  # one panel negative: the whole batch is signed
    fig = plotting.heatmap_grid(maps)
    assert {ax.images[0].get_cmap().name for ax in _panels(fig)} == {DIVERGING}
    fig = plotting.heatmap_grid(np.abs(signed_maps))
    assert {ax.images[0].get_cmap().name for ax in _panels(fig)} == {SEQUENTIAL}
    fig = plotting.heatmap_grid(np.abs(signed_maps), signed=True)
    assert {ax.images[0].get_cmap().name for ax in _panels(fig)} == {DIVERGING}


def test_heatmap_grid_shared_scale(signed_maps):
    peak = np.abs(signed_maps).max()
    shared = plotting.heatmap_grid(signed_maps, shared_scale=True)
    assert {ax.images[0].get_clim() for ax in _panels(shared)} == {(-peak, peak)}
    own = plotting.heatmap_grid(signed_maps, shared_scale=False)
    limits = [ax.images[0].get_clim() for ax in _panels(own)]
    expected = [(-np.abs(m).max(), np.abs(m).max()) for m in signed_maps]
    np.testing.assert_allclose(limits, expected)
    assert len(set(limits)) == 7


def test_heatmap_grid_without_images_or_titles(signed_maps):
    fig = plotting.heatmap_grid(signed_maps[:2, ..., 0], ncols=5)
    panels = _panels(fig)
    assert len(panels) == 2
    assert all(ax.get_title() == "" for ax in panels)
    assert not any(isinstance(c, ContourSet) for ax in panels for c in ax.collections)
    assert len(fig.axes) == 4  # ncols shrinks to the batch: 2 panels + 2 colorbars


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": np.zeros((6, 28, 28, 1))}, "got 7 maps but 6 images"),
        ({"titles": ["a", "b"]}, "got 7 maps but 2 titles"),
    ],
)
def test_heatmap_grid_mismatched_inputs_raise(signed_maps, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plotting.heatmap_grid(signed_maps, **kwargs)
    assert plt.get_fignums() == []  # no half-drawn figure left behind


def test_heatmap_grid_empty_batch_raises():
    with pytest.raises(ValueError, match="nothing to plot: the batch is empty"):
        plotting.heatmap_grid(np.zeros((0, 28, 28)))


# --------------------------------------------------------------------------------------------
# image_grid
# --------------------------------------------------------------------------------------------


def test_image_grid(digit_images):
    titles = [str(i) for i in range(7)]
    fig = plotting.image_grid(digit_images, titles=titles, ncols=4, suptitle="digits")
    assert isinstance(fig, Figure)
    panels = _panels(fig)
    assert len(panels) == 7
    assert not _colorbars(fig)
    assert [ax.get_title() for ax in panels] == titles
    assert len([ax for ax in fig.axes if not ax.get_visible()]) == 1  # 2 rows of 4
    assert fig.get_suptitle() == "digits"
    for ax, image in zip(panels, digit_images):
        shown = ax.images[0]
        assert shown.get_clim() == (0.0, 1.0)
        assert shown.get_cmap().name == "gray_r"
        np.testing.assert_allclose(shown.get_array(), image[..., 0])


def test_image_grid_free_limits_and_colormap(digit_images):
    fig = plotting.image_grid(digit_images[:2] * 5, limits=None, cmap="viridis")
    for ax, image in zip(_panels(fig), digit_images[:2] * 5):
        assert ax.images[0].get_cmap().name == "viridis"
        np.testing.assert_allclose(ax.images[0].get_clim(), (image.min(), image.max()), rtol=1e-6)


def test_image_grid_mismatched_titles_raise(digit_images):
    with pytest.raises(ValueError, match="got 7 images but 3 titles"):
        plotting.image_grid(digit_images, titles=["a", "b", "c"])
    assert plt.get_fignums() == []  # no empty grid left behind


def test_image_grid_empty_batch_raises():
    with pytest.raises(ValueError, match="nothing to plot"):
        plotting.image_grid(np.zeros((0, 28, 28, 1)))


def test_comparison_grid_has_one_row_per_method_and_one_shared_colorbar():
    rng = np.random.default_rng(0)
    maps = {"a": rng.normal(size=(3, 8, 8, 1)), "b": 100 * rng.normal(size=(3, 8, 8, 1))}
    images = rng.uniform(size=(3, 8, 8, 1))
    fig = plotting.comparison_grid(maps, images, column_titles=["x", "y", "z"], suptitle="t")
    panels = [ax for ax in fig.axes if ax.get_images()]
    colorbars = [ax for ax in fig.axes if not ax.get_images()]
    assert len(panels) == 6 and len(colorbars) == 1
    assert [panels[0].get_ylabel(), panels[3].get_ylabel()] == ["a", "b"]
    assert [ax.get_title() for ax in panels[:3]] == ["x", "y", "z"]
    # Normalised per map: every panel spans [-1, 1] whatever the method's scale.
    for ax in panels:
        data = ax.get_images()[0].get_array()
        assert np.abs(data).max() == pytest.approx(1.0)
        assert ax.get_images()[0].get_clim() == (-1.0, 1.0)


def test_comparison_grid_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same shape"):
        plotting.comparison_grid({"a": np.zeros((2, 4, 4)), "b": np.zeros((3, 4, 4))})
    with pytest.raises(ValueError, match="column titles"):
        plotting.comparison_grid({"a": np.zeros((2, 4, 4))}, column_titles=["only one"])
    with pytest.raises(ValueError, match="maps is empty"):
        plotting.comparison_grid({})


# --------------------------------------------------------------------------------------------
# Overlays of class activation maps (Part IV)
# --------------------------------------------------------------------------------------------


def test_plot_overlay_draws_canvas_map_and_boxes():
    from matplotlib.patches import Rectangle

    image = np.zeros((12, 12, 1))
    image[2:6, 3:7] = 1.0
    relevance = np.zeros((12, 12, 1))
    relevance[3, 4] = 2.0
    relevance[10, 10] = 0.5
    fig, ax = plt.subplots()
    mappable = plotting.plot_overlay(relevance, image, np.array([[2, 3, 6, 7], [8, 8, 12, 12]]),
                                     select=np.array([True, False]), ax=ax, title="t", label="CAM")
    assert len(ax.images) == 2  # the canvas, then the map on top
    rgba = ax.images[1].get_array()
    # Opacity grows with |R|: transparent where the map is zero, most opaque at its peak.
    assert rgba[0, 0, 3] == 0 and rgba[3, 4, 3] == pytest.approx(0.75) and 0 < rgba[10, 10, 3] < rgba[3, 4, 3]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [b.get_linestyle() for b in boxes] == ["-", "--"]
    assert (boxes[0].get_width(), boxes[0].get_height()) == (4, 4)
    assert mappable.get_clim() == (0.0, 2.0) and mappable.get_cmap().name == SEQUENTIAL
    assert _colorbars(fig)[0].get_ylabel() == "CAM" and ax.get_title() == "t"


def test_plot_overlay_refuses_mismatched_input():
    with pytest.raises(ValueError, match="image has shape"):
        plotting.plot_overlay(np.zeros((4, 4)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="2 boxes but 1 select"):
        plotting.plot_overlay(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((2, 4), int), select=np.array([True]))
    with pytest.raises(ValueError, match="opacity"):
        plotting.plot_overlay(np.zeros((4, 4)), np.zeros((4, 4)), opacity=0)


def test_overlay_grid_normalizes_each_map_and_shares_one_colorbar():
    rng = np.random.default_rng(1)
    maps = rng.random((4, 10, 10, 1)) * np.array([1, 10, 100, 1000])[:, None, None, None]
    images = rng.random((4, 10, 10, 1))
    boxes = np.tile(np.array([[[1, 1, 5, 5]]]), (4, 1, 1))
    fig = plotting.overlay_grid(maps, images, boxes, titles=list("abcd"), ncols=2, suptitle="s")
    panels = _panels(fig)
    assert len(panels) == 4 and [ax.get_title() for ax in panels] == list("abcd")
    assert len(_colorbars(fig)) == 1
    for ax in panels:  # every map is divided by its own maximum: its peak is fully opaque
        assert ax.images[1].get_array()[..., 3].max() == pytest.approx(0.75)
    assert "max" in _colorbars(fig)[0].get_ylabel()
    with pytest.raises(ValueError, match="got 4 maps but 3 images"):
        plotting.overlay_grid(maps, images[:3])
    with pytest.raises(ValueError, match="select needs boxes"):
        plotting.overlay_grid(maps, images, select=np.ones((4, 1), bool))


# --------------------------------------------------------------------------------------------
# Interval charts (Part V)
# --------------------------------------------------------------------------------------------


def test_interval_chart_draws_one_row_per_label_in_the_order_asked():
    from understanding_nn.metrics import bootstrap_interval

    values = np.random.default_rng(0).normal(loc=[3.0, 1.0, 2.0], size=(50, 3))
    interval = bootstrap_interval(values, seed=0)
    fig = plotting.interval_chart(["a", "b", "c"], interval, xlabel="score", title="t", reference=0.0,
                                      reference_label="zero")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "c", "a"]  # ascending, smallest on top
    assert ax.get_xlabel() == "score" and ax.get_title() == "t"
    descending = plotting.interval_chart(["a", "b", "c"], interval, xlabel="score", order="descending")
    assert [t.get_text() for t in descending.axes[0].get_yticklabels()] == ["a", "c", "b"]
    kept = plotting.interval_chart(["a", "b", "c"], interval, xlabel="score", order=None, log=True)
    assert [t.get_text() for t in kept.axes[0].get_yticklabels()] == ["a", "b", "c"]
    assert kept.axes[0].get_xscale() == "log"


def test_interval_chart_draws_several_series_with_a_legend_and_refuses_mismatches():
    from understanding_nn.metrics import bootstrap_interval

    rng = np.random.default_rng(1)
    two = {"first": bootstrap_interval(rng.normal(size=(30, 4)), seed=0),
           "second": bootstrap_interval(rng.normal(size=(30, 4)), seed=0)}
    fig = plotting.interval_chart(list("wxyz"), two, xlabel="v")
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["first", "second"]
    with pytest.raises(ValueError, match="3 estimate values for 4 labels"):
        plotting.interval_chart(list("wxyz"), bootstrap_interval(rng.normal(size=(30, 3)), seed=0), xlabel="v")
    with pytest.raises(ValueError, match="order must be"):
        plotting.interval_chart(list("wxyz"), two, xlabel="v", order="up")


# --------------------------------------------------------------------------------------------
# Clusters of explanations (Part VI)
# --------------------------------------------------------------------------------------------


def test_cluster_gallery_has_a_row_per_cluster_with_its_mean_first_and_one_colorbar():
    rng = np.random.default_rng(2)
    maps = rng.standard_normal((11, 8, 8, 1)) * rng.uniform(1, 100, size=(11, 1, 1, 1))
    images = rng.random((11, 8, 8, 1))
    clusters = np.array([0] * 6 + [1] * 3 + [2] * 2)
    fig = plotting.cluster_gallery(maps, images, clusters, per_cluster=4, suptitle="s")
    panels = _panels(fig)
    # 3 means + 4 + 3 + 2 examples; the unused panels of the smaller clusters are hidden.
    assert len(panels) == 3 + 4 + 3 + 2
    assert [ax.get_title() for ax in panels if ax.get_title().startswith("cluster")] == [
        "cluster 0: mean of 6", "cluster 1: mean of 3", "cluster 2: mean of 2"]
    assert len(_colorbars(fig)) == 1 and "largest" in _colorbars(fig)[0].get_ylabel()
    for ax in panels:  # every panel divided by its own peak, on one signed scale
        shown = ax.images[0]
        assert np.abs(shown.get_array()).max() == pytest.approx(1.0)
        assert shown.get_clim() == (-1.0, 1.0)
    with pytest.raises(ValueError, match="give one image and one cluster per map"):
        plotting.cluster_gallery(maps, images, clusters[:-1])
    with pytest.raises(ValueError, match="per_cluster must be at least 1"):
        plotting.cluster_gallery(maps, images, clusters, per_cluster=0)


def test_spectrum_chart_marks_the_gap_and_embedding_scatter_rings_the_highlighted():
    fig = plotting.spectrum_chart(np.array([0.0, 0.001, 0.4, 0.5, 0.55]), 2, title="t")
    ax = fig.axes[0]
    assert ax.get_title() == "t" and "eigenvalue" in ax.get_ylabel()
    assert "2 clusters" in ax.get_legend().get_texts()[0].get_text()
    with pytest.raises(ValueError, match="n_clusters must be between 1 and 4, got 5"):
        plotting.spectrum_chart(np.zeros(5), 5)
    points = np.random.default_rng(0).random((20, 2))
    groups = np.repeat([0, 1], 10)
    fig = plotting.embedding_scatter(points, groups, highlight=np.arange(20) < 3, highlight_label="marked")
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["cluster 0", "cluster 1", "marked"]
    assert len(fig.axes[0].collections[-1].get_offsets()) == 3
    with pytest.raises(ValueError, match=r"points must have shape \(N, 2\)"):
        plotting.embedding_scatter(points[:, :1], groups)
    with pytest.raises(ValueError, match="groups has shape"):
        plotting.embedding_scatter(points, groups[:5])
