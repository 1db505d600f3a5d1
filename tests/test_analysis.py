"""Tests of understanding_nn.analysis: SpRAy, summaries and contrastive explanations (Part VI)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import understanding_nn as unn
from understanding_nn import analysis


def planted_maps(sizes=(40, 25, 15), side=16, noise=0.15, seed=0, channels=True):
    """Maps in len(sizes) groups, each a bright blob in its own place plus noise, shuffled;
    returns the maps and each map's group."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:side, :side]
    centres = [(side * 0.25, side * 0.25), (side * 0.75, side * 0.7), (side * 0.3, side * 0.8), (side * 0.7, side * 0.2)]
    maps, groups = [], []
    for group, count in enumerate(sizes):
        r, c = centres[group]
        blob = np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * (side / 8) ** 2))
        scale = rng.uniform(0.5, 5.0, size=(count, 1, 1))  # the size of the score must not matter
        maps.append(scale * (blob + noise * rng.standard_normal((count, side, side))))
        groups += [group] * count
    order = rng.permutation(sum(sizes))
    maps, groups = np.concatenate(maps)[order], np.array(groups)[order]
    return (maps[..., None] if channels else maps), groups


# --------------------------------------------------------------------------------------------
# Maps as features
# --------------------------------------------------------------------------------------------


def test_normalized_maps_sum_channels_pool_and_scale_to_unit_length():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((5, 8, 6, 3))
    maps[2] = 0.0
    features = analysis.normalized_maps(maps, downsample=2)
    assert features.shape == (5, 12)
    summed = maps.sum(axis=-1)
    pooled = summed.reshape(5, 4, 2, 3, 2).mean(axis=(2, 4)).reshape(5, -1)
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True).clip(1e-300)
    np.testing.assert_allclose(features[[0, 1, 3, 4]], expected[[0, 1, 3, 4]])
    np.testing.assert_allclose(np.linalg.norm(features[[0, 1, 3, 4]], axis=1), 1.0)
    assert (features[2] == 0).all()  # an all-zero map stays zero


def test_normalized_maps_average_partial_blocks_at_the_edges_and_take_flat_vectors():
    maps = np.arange(2 * 5 * 5, dtype=np.float64).reshape(2, 5, 5)
    features = analysis.normalized_maps(maps, downsample=2)
    assert features.shape == (2, 9)
    pooled = np.array([[maps[0, r : r + 2, c : c + 2].mean() for c in (0, 2, 4)] for r in (0, 2, 4)]).ravel()
    np.testing.assert_allclose(features[0], pooled / np.linalg.norm(pooled))
    vectors = np.array([[1.0, 3.0, 5.0, 7.0, 9.0], [0.0, 0.0, 0.0, 0.0, 2.0]])
    np.testing.assert_allclose(analysis.normalized_maps(vectors, downsample=2)[1], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(analysis.normalized_maps(vectors)[0], vectors[0] / np.linalg.norm(vectors[0]))


@pytest.mark.parametrize(
    ("maps", "options", "message"),
    [
        (np.zeros((3, 8, 8, 1, 1)), {}, r"relevance must have shape \(N, D\), \(N, H, W\) or \(N, H, W, C\), got \(3, 8, 8, 1, 1\)"),
        (np.zeros((0, 8, 8)), {}, "relevance is empty"),
        (np.full((3, 8, 8), np.nan), {}, "relevance contains NaN or infinite values"),
        (np.zeros((3, 8, 8)), {"downsample": 9}, r"downsample must be an int from 1 to 8 \(the side of the maps\), got 9"),
        (np.zeros((3, 8, 8)), {"downsample": 0}, "downsample must be an int from 1 to 8"),
        (np.zeros((3, 8, 8)), {"downsample": 2.0}, "downsample must be an int"),
    ],
)
def test_normalized_maps_refuses_bad_maps(maps, options, message):
    with pytest.raises(ValueError, match=message):
        analysis.normalized_maps(maps, **options)


# --------------------------------------------------------------------------------------------
# SpRAy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(40, 25, 15), (30, 30), (20, 20, 20, 20), (8, 8, 8), (6, 6, 6, 6), (60, 50, 40)])
def test_spray_recovers_planted_groups_and_the_eigengap_finds_their_number(sizes):
    maps, groups = planted_maps(sizes)
    result = analysis.spray(maps, downsample=2)
    assert result.n_clusters == len(sizes)
    assert analysis.purity(result.labels, groups) == 1.0
    assert analysis.purity(groups, result.labels) == 1.0  # and no group is split
    # Clusters are numbered by decreasing size.
    assert list(result.sizes()) == sorted(sizes, reverse=True)
    # The eigengap: len(sizes) eigenvalues near zero, then the largest jump.
    gaps = np.diff(result.eigenvalues)
    assert np.argmax(gaps) == len(sizes) - 1
    assert (result.eigenvalues[: len(sizes)] < 1e-6).all()
    assert np.all(np.diff(result.eigenvalues) >= -1e-12)
    assert result.features.shape == (sum(sizes), 64)
    # The graph: symmetric, 0/1, at least n_neighbors edges per map, none across the groups here.
    graph = result.affinity.toarray()
    neighbours = min(10, max(3, sum(sizes) // 10))  # the default: a tenth of fewer than 100 maps
    assert (graph == graph.T).all() and set(np.unique(graph)) == {0.0, 1.0} and (graph.sum(axis=1) >= neighbours).all()
    assert not graph[np.ix_(groups == 0, groups != 0)].any()


def test_spray_is_deterministic_with_its_seed_and_takes_maps_with_or_without_channels():
    maps, groups = planted_maps(noise=0.6, seed=3)
    first = analysis.spray(maps, seed=1)
    again = analysis.spray(maps, seed=1)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.eigenvalues, again.eigenvalues)
    without_channels = analysis.spray(maps[..., 0], seed=1)
    np.testing.assert_array_equal(first.labels, without_channels.labels)


def test_spray_finds_ten_planted_groups_like_the_classes_of_a_digit_data_set():
    rng = np.random.default_rng(5)
    rows, cols = np.mgrid[:20, :20]
    maps, groups = [], []
    for group in range(10):
        blob = np.exp(-((rows - 3 - group // 5 * 10) ** 2 + (cols - 2 - group % 5 * 4) ** 2) / 4.0)
        maps += [blob + 0.2 * rng.standard_normal((20, 20)) for _ in range(15)]
        groups += [group] * 15
    assert analysis.spray(np.array(maps)).n_clusters <= 8  # the default looks for at most 8
    result = analysis.spray(np.array(maps), max_clusters=12)
    assert result.n_clusters == 10 and len(result.eigenvalues) == 13
    assert analysis.purity(result.labels, groups) == 1.0 and analysis.purity(groups, result.labels) == 1.0
    # With few maps the defaults shrink: 4 maps, at most 3 clusters, 3 neighbours.
    assert len(analysis.spray(np.array(maps[:4])).eigenvalues) == 4


def test_spray_with_a_given_number_of_clusters():
    maps, groups = planted_maps((40, 25, 15))
    two = analysis.spray(maps, n_clusters=2)
    assert two.n_clusters == 2 and set(two.labels) == {0, 1}
    one = analysis.spray(maps, n_clusters=1)
    assert (one.labels == 0).all() and one.n_clusters == 1
    # The eigenvalues do not depend on the number of clusters asked for.
    np.testing.assert_allclose(two.eigenvalues, analysis.spray(maps).eigenvalues)


def test_spray_finds_one_cluster_in_maps_of_one_kind():
    maps, _ = planted_maps((60,), noise=0.3)
    assert analysis.spray(maps).n_clusters == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_neighbors": 0}, "n_neighbors must be an int from 1 to 79"),
        ({"n_neighbors": 80}, "n_neighbors must be an int from 1 to 79"),
        ({"max_clusters": 1}, "max_clusters must be an int from 2 to 79"),
        ({"n_clusters": 0}, "n_clusters must be None or an int from 1 to 79"),
        ({"n_clusters": 2.5}, "n_clusters must be None or an int"),
        ({"downsample": 17}, "downsample must be an int from 1 to 16"),
    ],
)
def test_spray_refuses_bad_settings(options, message):
    maps, _ = planted_maps()
    with pytest.raises(ValueError, match=message):
        analysis.spray(maps, **options)


def test_spray_finds_a_small_cue_on_top_of_a_shared_pattern_in_maps_of_any_size():
    # The Clever Hans case: every map shows the class's common evidence, some add a small blob.
    rng = np.random.default_rng(4)
    for side, sizes in ((27, (150, 50)), (28, (100, 60, 40)), (13, (40, 40))):
        rows, cols = np.mgrid[:side, :side]
        common = np.exp(-((rows - side / 2) ** 2 + (cols - side / 2) ** 2) / (2 * (side / 5) ** 2))
        maps, truth = [], []
        for group, count in enumerate(sizes):
            for _ in range(count):
                shown = common + 0.2 * rng.standard_normal((side, side))
                if group:
                    r, c = [(1, 1), (1, side - 4)][group - 1]
                    shown[r : r + 3, c : c + 3] += 1.0
                maps.append(shown)
                truth.append(group)
        result = analysis.spray(np.array(maps))
        assert result.n_clusters == len(sizes), side
        assert analysis.purity(result.labels, truth) == 1.0, side


def test_spray_refuses_too_few_maps_and_maps_of_different_shapes():
    with pytest.raises(ValueError, match="spray needs at least 3 maps, got 2"):
        analysis.spray(np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match=r"the maps have different shapes: map 2 has shape \(5, 5\), map 0 has \(4, 4\)"):
        analysis.spray([np.ones((4, 4)), np.ones((4, 4)), np.ones((5, 5))])
    with pytest.raises(ValueError, match="the maps have different shapes"):
        analysis.group_means([np.ones((4, 4)), np.ones((4, 5))], [0, 1])


def test_purity():
    assert analysis.purity([0, 0, 1, 1, 1], [5, 5, 6, 6, 6]) == 1.0
    assert analysis.purity([0, 0, 0, 0], ["a", "a", "a", "b"]) == 0.75
    assert analysis.purity([0, 1, 2, 3], [1, 1, 1, 1]) == 1.0  # singletons are pure
    assert analysis.purity(np.array([0, 0, 1, 1]), np.array([True, False, True, False])) == 0.5
    with pytest.raises(ValueError, match=r"truth has shape \(3,\); it needs one entry per map, shape \(4,\)"):
        analysis.purity([0, 0, 1, 1], [0, 0, 1])


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def test_group_means_average_the_normalised_maps_of_each_group():
    maps, groups = planted_maps((6, 4), side=8)
    names, means = analysis.group_means(maps, groups)
    assert list(names) == [0, 1] and means.shape == (2, 8, 8)
    summed = maps[..., 0]
    normalised = summed / np.abs(summed).sum(axis=(1, 2), keepdims=True)
    for name, mean in zip(names, means):
        np.testing.assert_allclose(mean, normalised[groups == name].mean(axis=0))
    names, raw = analysis.group_means(maps, groups, normalize=False)
    np.testing.assert_allclose(raw[1], summed[groups == 1].mean(axis=0))
    with pytest.raises(ValueError, match="groups has shape"):
        analysis.group_means(maps, groups[:-1])


def test_outlier_scores_rank_a_planted_odd_map_first():
    maps, groups = planted_maps((30, 30), side=8, noise=0.1)
    odd = np.flatnonzero(groups == 0)[3]
    maps[odd] = planted_maps((0, 1), side=8, noise=0.1, seed=9)[0][0]  # a group-1 map among group 0
    scores = analysis.outlier_scores(maps, groups, n_neighbors=5, downsample=1)
    assert scores.shape == (60,)
    assert np.argmax(scores) == odd
    assert scores[odd] > 2
    assert np.median(scores[groups == 0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="group 0 has 30 maps; outlier_scores needs more than n_neighbors = 30"):
        analysis.outlier_scores(maps, groups, n_neighbors=30)


def test_embed_gives_a_reproducible_2d_embedding_that_keeps_groups_apart():
    maps, groups = planted_maps((30, 30), side=8)
    points = analysis.embed(maps, downsample=1)
    assert points.shape == (60, 2)
    np.testing.assert_array_equal(points, analysis.embed(maps, downsample=1))
    centres = np.stack([points[groups == g].mean(axis=0) for g in (0, 1)])
    spread = max(np.linalg.norm(points[groups == g] - centres[g], axis=1).mean() for g in (0, 1))
    assert np.linalg.norm(centres[0] - centres[1]) > 2 * spread


# --------------------------------------------------------------------------------------------
# Contrastive explanations
# --------------------------------------------------------------------------------------------


def test_contrastive_copy_scores_are_differences_and_the_model_is_untouched(relu_model, digits):
    x, _ = digits
    weights = [w.copy() for w in relu_model.get_weights()]
    copy = analysis.contrastive_copy(relu_model, 4)
    scores = unn.attribution.predict_logits(relu_model, x)
    np.testing.assert_allclose(unn.attribution.predict_logits(copy, x), scores - scores[:, 4:5], rtol=1e-5, atol=1e-5)
    for before, after in zip(weights, relu_model.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_a_contrastive_copy_follows_the_weights_the_model_has_now(make_dense_net, digits):
    x, labels = digits
    model = make_dense_net(seed=6, name="changing")
    versus = (labels + 1) % 10
    before = analysis.explain_contrast(model, x, "gradient", labels, versus)
    assert analysis.contrastive_copy(model, 2) is analysis.contrastive_copy(model, 2)  # made once
    model.set_weights([2.0 * w for w in model.get_weights()])
    after = analysis.explain_contrast(model, x, "gradient", labels, versus)
    fresh = make_dense_net(seed=6, name="fresh")
    fresh.set_weights(model.get_weights())
    np.testing.assert_allclose(after, analysis.explain_contrast(fresh, x, "gradient", labels, versus), rtol=1e-5, atol=1e-7)
    assert not np.allclose(after, before)


@pytest.mark.parametrize("method", ["lrp.z", "gradient_x_input", "integrated_gradients"])
def test_a_contrastive_explanation_of_a_linear_method_is_the_difference_of_the_explanations(bias_free_relu_model, digits, method):
    x, labels = digits
    versus = (labels + 1) % 10
    contrast = analysis.explain_contrast(bias_free_relu_model, x, method, labels, versus)
    difference = unn.explain(bias_free_relu_model, x, method, labels) - unn.explain(bias_free_relu_model, x, method, versus)
    np.testing.assert_allclose(contrast, difference, atol=1e-5 * np.abs(difference).max())
    # LRP-0 on a bias-free ReLU network conserves: the map sums to S_c − S_c'.
    scores = unn.attribution.predict_logits(bias_free_relu_model, x)
    gap = scores[np.arange(10), labels] - scores[np.arange(10), versus]
    if method != "integrated_gradients":
        np.testing.assert_allclose(contrast.sum(axis=(1, 2, 3)), gap, rtol=1e-4, atol=1e-5)


def test_versus_none_is_the_runner_up_and_target_none_the_prediction(relu_model, digits):
    x, _ = digits
    scores = unn.attribution.predict_logits(relu_model, x)
    ranked = np.argsort(-scores, axis=1)
    np.testing.assert_array_equal(analysis.runner_up(relu_model, x), ranked[:, 1])
    default = analysis.explain_contrast(relu_model, x, "gradient")
    explicit = analysis.explain_contrast(relu_model, x, "gradient", ranked[:, 0], ranked[:, 1])
    np.testing.assert_array_equal(default, explicit)
    # For a target that is not the prediction, the rival is the best of the other classes.
    target = ranked[:, 1]
    np.testing.assert_array_equal(analysis.runner_up(relu_model, x, target), ranked[:, 0])
    target = ranked[:, 5]
    np.testing.assert_array_equal(analysis.runner_up(relu_model, x, target), ranked[:, 0])
    against_rival = analysis.explain_contrast(relu_model, x, "gradient", ranked[:, 1])
    np.testing.assert_array_equal(against_rival, analysis.explain_contrast(relu_model, x, "gradient", ranked[:, 1], ranked[:, 0]))


def test_explain_contrast_strips_a_final_softmax(make_dense_net, digits):
    x, labels = digits
    logits_net = make_dense_net(seed=5, name="logits_net")
    softmax_net = make_dense_net(seed=5, final_activation="softmax", name="softmax_net")
    a = analysis.explain_contrast(logits_net, x, "gradient_x_input", labels, (labels + 1) % 10)
    b = analysis.explain_contrast(softmax_net, x, "gradient_x_input", labels, (labels + 1) % 10)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_explain_contrast_refuses_bad_targets_and_models(relu_model, conv_model, digits):
    x, labels = digits
    with pytest.raises(ValueError, match=r"target and versus are the same class \(3\) for 1 samples, the first at index 3"):
        analysis.explain_contrast(relu_model, x, "gradient", labels, np.where(labels == 3, 3, (labels + 1) % 10))
    with pytest.raises(ValueError, match=r"target 12 is out of range: the model has 10 classes \(0 to 9\)"):
        analysis.explain_contrast(relu_model, x, "gradient", labels, 12)
    with pytest.raises(ValueError, match="target 10 is out of range"):
        analysis.contrastive_copy(relu_model, 10)
    keras.utils.set_random_seed(0)
    conv_head = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Conv2D(10, 28), keras.layers.Flatten()], name="conv_head"
    )
    with pytest.raises(unn.UnsupportedModelError, match=r"must be a Dense layer .* ends in '.*' \(Flatten\)"):
        analysis.explain_contrast(conv_head, x, "gradient", labels, 0)
    with pytest.raises(ValueError, match="x has shape"):
        analysis.explain_contrast(relu_model, x[:, :10], "gradient", labels, 0)


def test_spray_on_many_maps_finds_the_same_eigenvalues_with_the_sparse_solver(monkeypatch):
    maps, groups = planted_maps((40, 30, 20), noise=0.3)
    dense = analysis.spray(maps)
    monkeypatch.setattr(analysis, "_DENSE_EIGENSOLVE", 0)
    sparse = analysis.spray(maps)
    np.testing.assert_allclose(sparse.eigenvalues, dense.eigenvalues, atol=1e-8)
    np.testing.assert_array_equal(sparse.labels, dense.labels)
