"""Part V quality measures (selectivity, continuity, sanity checks) against closed forms and naive loops."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import scipy.stats
import skimage.metrics

import understanding_nn as unn
from understanding_nn import metrics
from understanding_nn.attribution import gaussian_blur

# --------------------------------------------------------------------------------------------
# Small seeded models and independent helpers
# --------------------------------------------------------------------------------------------

SIDE = 8  # the images here are 8×8


def _linear_model(kernel, *, name="linear"):
    """f(x) = w·x: Flatten + Dense without bias, with ``kernel`` of shape (*sample, classes)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input(kernel.shape[:-1]), keras.layers.Flatten(), keras.layers.Dense(kernel.shape[-1], use_bias=False)],
        name=name,
    )
    model.layers[-1].kernel.assign(kernel.reshape(-1, kernel.shape[-1]).astype(np.float32))
    return model


def _identity_model(sample_shape, *, name="identity"):
    """One output per input value: the logit of class i is the i-th value of the flattened
    input, so a pixel-flipping curve shows what the followed value has become."""
    size = int(np.prod(sample_shape))
    return _linear_model(np.eye(size).reshape(*sample_shape, size), name=name)


@pytest.fixture(scope="module")
def linear_setup():
    """A linear model with 3 classes on 8×8×1 inputs, three inputs, their targets and R = w ⊙ x."""
    rng = np.random.default_rng(10)
    kernel = rng.normal(size=(SIDE, SIDE, 1, 3)).astype(np.float32)
    x = rng.random((3, SIDE, SIDE, 1)).astype(np.float32)
    target = np.array([0, 2, 1])
    relevance = kernel[..., target].transpose(3, 0, 1, 2).astype(np.float64) * x
    return _linear_model(kernel), x, target, relevance


@pytest.fixture(scope="module")
def identity_model():
    return _identity_model((SIDE, SIDE, 2))


@pytest.fixture(scope="module")
def small_conv():
    """A small ReLU conv net on 8×8×2 inputs with 5 classes (biases included)."""
    keras.utils.set_random_seed(4)
    return keras.Sequential(
        [
            keras.Input((SIDE, SIDE, 2)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu",
                                bias_initializer=keras.initializers.RandomNormal(stddev=0.1)),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(5, bias_initializer=keras.initializers.RandomNormal(stddev=0.1)),
        ],
        name="small_conv",
    )


@pytest.fixture(scope="module")
def conv_inputs():
    rng = np.random.default_rng(11)
    x = rng.random((4, SIDE, SIDE, 2)).astype(np.float32)
    relevance = rng.normal(size=x.shape)
    return x, relevance


def _patch_sums(maps, patch_size):
    """Summed relevance of every patch of image maps (N, H, W, C), patches in row-major order."""
    n, h, w, c = maps.shape
    p = patch_size
    return np.asarray(maps, dtype=np.float64).reshape(n, h // p, p, w // p, p, c).sum(axis=(2, 4, 5)).reshape(n, -1)


def _ranking(scores, order):
    """Patch numbers in removal order, ties broken by the patch number."""
    numbers = range(len(scores))
    if order == "morf":
        return sorted(numbers, key=lambda j: (-scores[j], j))
    return sorted(numbers, key=lambda j: (scores[j], j))


def _patch_of_position(h, w, patch_size):
    rows, cols = np.indices((h, w))
    return (rows // patch_size) * (w // patch_size) + cols // patch_size


def _logit(model, image, target):
    return float(np.asarray(model(image[None].astype(np.float32), training=False))[0, target])


def naive_pixel_flipping(model, x, relevance, target, *, patch_size, fill="zero", order="morf", blur_sigma=2.0):
    """Pixel flipping written out: per image and per step, set the next patch to the fill and
    call the model on that one image."""
    n, h, w, _ = x.shape
    p = patch_size
    corners = [(r, c) for r in range(0, h, p) for c in range(0, w, p)]
    curves = []
    for i in range(n):
        image = x[i].astype(np.float64)
        if isinstance(fill, str) and fill == "zero":
            replacement = np.zeros_like(image)
        elif isinstance(fill, str) and fill == "mean":
            replacement = np.ones_like(image) * image.mean(axis=(0, 1))
        elif isinstance(fill, str) and fill == "blur":
            replacement = gaussian_blur(x[i : i + 1].astype(np.float32), blur_sigma)[0].astype(np.float64)
        elif isinstance(fill, str) and fill == "impute":
            replacement = None
        else:
            fill = np.asarray(fill, dtype=np.float64)
            replacement = fill if fill.ndim == 3 else fill[i]
        if target is None:
            t = int(np.argmax(np.asarray(model(x[i : i + 1], training=False))[0]))
        elif isinstance(target, int):
            t = target
        else:
            t = int(target[i])
        scores = [float(relevance[i, r : r + p, c : c + p].sum()) for r, c in corners]
        current = image.copy()
        removed = np.zeros((h, w), dtype=bool)
        curve = [_logit(model, current, t)]
        for patch in _ranking(scores, order):
            r, c = corners[patch]
            removed[r : r + p, c : c + p] = True
            if replacement is None:
                current = metrics.impute(image[None], removed[None])[0]
            else:
                current[r : r + p, c : c + p] = replacement[r : r + p, c : c + p]
            curve.append(_logit(model, current, t))
        curves.append(curve)
    return np.array(curves)


# --------------------------------------------------------------------------------------------
# Patches and removal order
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, patch_size", [((8, 8, 1), 4), ((8, 12, 3), 4), ((6, 6, 2), 1), ((4, 6, 1), 2)])
def test_patch_index_numbers_grid_cells_in_row_major_order(shape, patch_size):
    index = metrics.patch_index(shape, patch_size)
    assert index.shape == shape[:2]
    np.testing.assert_array_equal(index, _patch_of_position(shape[0], shape[1], patch_size))


def test_patch_index_of_signals_and_flat_features_tiles_segments():
    np.testing.assert_array_equal(metrics.patch_index((12, 3), 3), np.arange(12) // 3)  # signal (L, C)
    np.testing.assert_array_equal(metrics.patch_index((10,), 5), np.arange(10) // 5)  # flat features


def test_removal_order_breaks_ties_by_patch_number():
    scores = np.array([[1.0, 3.0, 3.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(metrics.removal_order(scores, "morf"), [[1, 2, 4, 0, 3], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(metrics.removal_order(scores, "lerf"), [[0, 3, 4, 1, 2], [0, 1, 2, 3, 4]])


def test_random_removal_order_is_a_seeded_permutation_per_sample():
    scores = np.zeros((50, 9))
    first = metrics.removal_order(scores, "random", seed=3)
    np.testing.assert_array_equal(np.sort(first, axis=1), np.tile(np.arange(9), (50, 1)))
    np.testing.assert_array_equal(first, metrics.removal_order(scores, "random", seed=3))
    assert not np.array_equal(first, metrics.removal_order(scores, "random", seed=4))
    assert len({tuple(row) for row in first}) > 40  # samples get their own permutations


# --------------------------------------------------------------------------------------------
# Pixel flipping on a linear model: closed forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch_size", [1, 2, 4])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_linear_model_curve_is_logit_minus_cumulative_sorted_contributions(linear_setup, patch_size, order):
    model, x, target, relevance = linear_setup
    curves = metrics.pixel_flipping(model, x, relevance, target, patch_size=patch_size, order=order)
    n_patches = (SIDE // patch_size) ** 2
    assert curves.shape == (3, n_patches + 1) and curves.dtype == np.float64
    contributions = _patch_sums(relevance, patch_size)
    for n in range(3):
        ordered = np.sort(contributions[n])[::-1] if order == "morf" else np.sort(contributions[n])
        expected = relevance[n].sum() - np.concatenate([[0.0], np.cumsum(ordered)])
        np.testing.assert_allclose(curves[n], expected, atol=2e-5)
        assert abs(curves[n, -1]) < 2e-5  # everything removed: f(0) = 0


def test_linear_model_curve_of_flat_features():
    rng = np.random.default_rng(12)
    kernel = rng.normal(size=(12, 2)).astype(np.float32)
    model = _linear_model(kernel, name="flat_linear")
    x = rng.random((2, 12)).astype(np.float32)
    relevance = kernel[:, 1].astype(np.float64) * x
    curves = metrics.pixel_flipping(model, x, relevance, 1, patch_size=3)
    for n in range(2):
        segments = relevance[n].reshape(4, 3).sum(axis=1)
        expected = relevance[n].sum() - np.concatenate([[0.0], np.cumsum(np.sort(segments)[::-1])])
        np.testing.assert_allclose(curves[n], expected, atol=2e-5)


def test_random_order_mean_curve_approaches_the_straight_line(linear_setup):
    model, x, target, relevance = linear_setup
    draws, patch_size = 400, 2
    n_patches = (SIDE // patch_size) ** 2
    copies = np.repeat(x[:1], draws, axis=0)
    curves = metrics.pixel_flipping(
        model, copies, np.repeat(relevance[:1], draws, axis=0), int(target[0]), patch_size=patch_size, order="random"
    )
    start = _logit(model, x[0], target[0])
    end = _logit(model, np.zeros_like(x[0]), target[0])
    k = np.arange(n_patches + 1)
    line = start + (end - start) * k / n_patches
    # The sum of k patches drawn without replacement has variance k (P - k) / (P - 1) σ².
    contributions = _patch_sums(relevance[:1], patch_size)[0]
    spread = np.sqrt(k * (n_patches - k) / (n_patches - 1) * contributions.var() / draws)
    assert (np.abs(curves.mean(axis=0) - line) <= 5 * spread + 1e-4).all()
    assert (curves.std(axis=0)[1:-1] > 0).all()  # the orders really are random
    np.testing.assert_allclose(curves[:, 0], start, atol=1e-5)
    np.testing.assert_allclose(curves[:, -1], end, atol=2e-5)


def test_steps_truncate_the_curve_and_none_removes_every_patch(linear_setup):
    model, x, target, relevance = linear_setup
    full = metrics.pixel_flipping(model, x, relevance, target, patch_size=2, steps=None)
    assert full.shape == (3, 17)
    np.testing.assert_allclose(metrics.pixel_flipping(model, x, relevance, target, patch_size=2, steps=5), full[:, :6], atol=1e-6)
    intact = metrics.pixel_flipping(model, x, relevance, target, patch_size=2, steps=0)
    assert intact.shape == (3, 1)
    logits = np.asarray(model(x, training=False))[np.arange(3), target]
    np.testing.assert_allclose(intact[:, 0], logits, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Pixel flipping against a naive implementation
# --------------------------------------------------------------------------------------------

ARRAY_FILL = np.random.default_rng(13).random((SIDE, SIDE, 2)).astype(np.float32)


@pytest.mark.parametrize("fill", ["zero", "mean", "blur", "impute", "array"])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_pixel_flipping_matches_a_naive_loop(small_conv, conv_inputs, fill, order):
    x, relevance = conv_inputs
    fill_value = ARRAY_FILL if fill == "array" else fill
    result = metrics.pixel_flipping(small_conv, x, relevance, None, patch_size=2, fill=fill_value, order=order)
    expected = naive_pixel_flipping(small_conv, x, relevance, None, patch_size=2, fill=fill_value, order=order)
    np.testing.assert_allclose(result, expected, atol=1e-5)


@pytest.mark.parametrize("target", [3, np.array([0, 4, 2, 1]), None])
def test_pixel_flipping_matches_a_naive_loop_for_every_kind_of_target(small_conv, conv_inputs, target):
    x, relevance = conv_inputs
    per_sample_fill = np.random.default_rng(14).random(x.shape).astype(np.float32)
    result = metrics.pixel_flipping(small_conv, x, relevance, target, patch_size=4, fill=per_sample_fill)
    expected = naive_pixel_flipping(small_conv, x, relevance, target, patch_size=4, fill=per_sample_fill)
    np.testing.assert_allclose(result, expected, atol=1e-5)
    predicted = np.argmax(np.asarray(small_conv(x, training=False)), axis=1)
    followed = predicted if target is None else np.broadcast_to(target, (4,))
    np.testing.assert_allclose(result[:, 0], np.asarray(small_conv(x, training=False))[np.arange(4), followed], atol=1e-5)


# --------------------------------------------------------------------------------------------
# What each fill puts in a removed patch (seen through the identity model)
# --------------------------------------------------------------------------------------------


def _identity_case(patch_size=2, copies=128, seed=15):
    """``copies`` copies of one 8×8×2 image, each following another input value (target i is
    value i of the flattened image), and the step at which each followed value is removed."""
    rng = np.random.default_rng(seed)
    image = rng.random((SIDE, SIDE, 2)).astype(np.float32)
    relevance = rng.normal(size=(SIDE, SIDE, 2))
    x = np.repeat(image[None], copies, axis=0)
    targets = np.arange(copies) % image.size
    ranking = _ranking(_patch_sums(relevance[None], patch_size)[0], "morf")
    rank = np.empty(len(ranking), dtype=int)
    rank[ranking] = np.arange(len(ranking))
    position_rank = np.repeat(rank[_patch_of_position(SIDE, SIDE, patch_size)][..., None], 2, axis=-1)
    # removed_at[i]: the first step at which the value followed by copy i is gone.
    removed_at = position_rank.ravel()[targets] + 1
    return x, np.repeat(relevance[None], copies, axis=0), targets, removed_at, len(ranking)


def _expected_identity_curves(x, targets, removed_at, n_steps, fill_values):
    k = np.arange(n_steps + 1)[None, :]
    original = x.reshape(len(x), -1)[np.arange(len(x)), targets][:, None]
    filled = fill_values.reshape(len(x), -1)[np.arange(len(x)), targets][:, None]
    return np.where(k >= removed_at[:, None], filled, original)


@pytest.mark.parametrize("patch_size", [1, 2])
def test_zero_fill_sets_the_removed_patch_to_zero(identity_model, patch_size):
    x, relevance, targets, removed_at, n_patches = _identity_case(patch_size)
    curves = metrics.pixel_flipping(identity_model, x, relevance, targets, patch_size=patch_size, fill="zero")
    expected = _expected_identity_curves(x, targets, removed_at, n_patches, np.zeros_like(x))
    np.testing.assert_allclose(curves, expected, atol=1e-6)


def test_mean_fill_uses_each_samples_channel_mean(identity_model):
    x, relevance, targets, removed_at, n_patches = _identity_case()
    x = x * np.array([1.0, 3.0], dtype=np.float32)  # channels with different means
    x[1::2] += 0.5  # and samples with different means
    curves = metrics.pixel_flipping(identity_model, x, relevance, targets, patch_size=2, fill="mean")
    means = np.broadcast_to(x.astype(np.float64).mean(axis=(1, 2), keepdims=True), x.shape)
    np.testing.assert_allclose(curves, _expected_identity_curves(x, targets, removed_at, n_patches, means), atol=1e-5)


def test_blur_fill_puts_the_blurred_image_in_the_patch_and_keeps_the_rest(identity_model):
    x, relevance, targets, removed_at, n_patches = _identity_case()
    curves = metrics.pixel_flipping(identity_model, x, relevance, targets, patch_size=2, fill="blur", blur_sigma=1.5)
    blurred = gaussian_blur(x, 1.5)
    assert not np.allclose(blurred, x, atol=1e-3)
    np.testing.assert_allclose(curves, _expected_identity_curves(x, targets, removed_at, n_patches, blurred), atol=1e-5)


def test_impute_fill_keeps_the_rest_and_fills_by_imputation(identity_model):
    x, relevance, targets, removed_at, n_patches = _identity_case(copies=24)
    targets = targets * 5 % x[0].size  # spread the followed values over the image and channels
    _, _, _, removal_step, _ = _identity_case(copies=x[0].size)  # removal step of every value
    removed_at = removal_step[targets]
    step_of_position = removal_step[::2].reshape(SIDE, SIDE)  # the same for both channels
    curves = metrics.pixel_flipping(identity_model, x, relevance, targets, patch_size=2, fill="impute")
    for k in range(n_patches + 1):
        filled = metrics.impute(x[:1], (step_of_position <= k)[None])[0].ravel()
        np.testing.assert_allclose(curves[:, k], filled[targets], atol=1e-5)
    # Before its removal, a followed value is the original one.
    original = x.reshape(len(x), -1)[np.arange(len(x)), targets]
    for i in range(len(x)):
        np.testing.assert_allclose(curves[i, : removed_at[i]], original[i], atol=1e-6)
    assert not np.allclose(curves[:, -2], original, atol=1e-3)


def test_uniform_fill_is_seeded_and_lies_in_the_value_range(identity_model):
    x, relevance, targets, removed_at, n_patches = _identity_case()
    def run(seed):
        return metrics.pixel_flipping(
            identity_model, x, relevance, targets, patch_size=2, fill="uniform", value_range=(2.0, 3.0), seed=seed
        )
    curves = run(0)
    np.testing.assert_array_equal(curves, run(0))
    other = run(1)
    noise = curves[:, -1]  # everything removed: the fill of the followed value
    assert not np.allclose(noise, other[:, -1])
    assert ((noise >= 2.0) & (noise <= 3.0)).all()
    assert noise.min() < 2.2 and noise.max() > 2.8  # spread over the range, not a constant
    original = x.reshape(len(x), -1)[np.arange(len(x)), targets]
    for i in range(len(x)):
        np.testing.assert_allclose(curves[i, : removed_at[i]], original[i], atol=1e-6)  # untouched until removed
        np.testing.assert_allclose(curves[i, removed_at[i] :], noise[i], atol=1e-6)  # drawn once, not per step
    # Every copy of the image gets its own draw.
    assert len(np.unique(np.round(noise, 6))) > 100


def test_equal_relevance_removes_patches_in_patch_number_order(identity_model):
    x, _, targets, _, _ = _identity_case(patch_size=4)
    flat_relevance = np.zeros_like(x, dtype=np.float64)
    patch = _patch_of_position(SIDE, SIDE, 4)
    expected_step = np.repeat(patch[..., None], 2, axis=-1).ravel()[targets] + 1
    for order in ("morf", "lerf"):
        curves = metrics.pixel_flipping(identity_model, x, flat_relevance, targets, patch_size=4, order=order)
        expected = _expected_identity_curves(x, targets, expected_step, 4, np.zeros_like(x))
        np.testing.assert_allclose(curves, expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Linear imputation
# --------------------------------------------------------------------------------------------


def _neighbour_residual(filled, removed):
    """v_i − Σ_j w_ij v_j / Σ_j w_ij at every removed position (weights 1 side, 1/2 diagonal,
    neighbours inside the grid only), written out with loops; shape (removed positions, C)."""
    residuals = []
    spatial = removed.shape
    offsets = [o for o in np.ndindex(*(3,) * len(spatial)) if any(v != 1 for v in o)]
    for position in zip(*np.nonzero(removed)):
        total, weight = 0.0, 0.0
        for offset in offsets:
            step = tuple(v - 1 for v in offset)
            neighbour = tuple(p + s for p, s in zip(position, step))
            if all(0 <= q < length for q, length in zip(neighbour, spatial)):
                w = 1.0 / sum(s * s for s in step)
                total = total + w * filled[neighbour]
                weight += w
        residuals.append(filled[position] - total / weight)
    return np.array(residuals)


def test_impute_solves_the_neighbour_mean_equation_and_keeps_the_rest():
    rng = np.random.default_rng(16)
    x = rng.random((3, 7, 6, 3))
    removed = rng.random((3, 7, 6)) < 0.35
    removed[0, 2:5, 1:4] = True  # a block: its inner values only see other removed values
    removed[2] = False
    filled = metrics.impute(x, removed)
    assert filled.shape == x.shape
    np.testing.assert_array_equal(filled[~removed], x[~removed])
    np.testing.assert_array_equal(filled[2], x[2])  # nothing removed: unchanged
    for n in range(2):
        # Solved by float32 conjugate gradients to a relative residual of 1e-6.
        residual = _neighbour_residual(filled[n], removed[n])
        np.testing.assert_allclose(residual, 0.0, atol=1e-5)
        assert np.abs(_neighbour_residual(x[n], removed[n])).max() > 0.1  # the original does not solve it
    # Channels are filled independently of each other.
    for c in range(3):
        np.testing.assert_allclose(metrics.impute(x[..., c : c + 1], removed)[..., 0], filled[..., c], atol=1e-5)


def test_impute_fills_a_fully_removed_sample_with_its_mean():
    rng = np.random.default_rng(17)
    x = rng.random((2, 5, 5, 2))
    removed = np.zeros((2, 5, 5), dtype=bool)
    removed[1] = True
    filled = metrics.impute(x, removed)
    np.testing.assert_allclose(filled[1], np.broadcast_to(x[1].mean(axis=(0, 1)), (5, 5, 2)), atol=1e-12)
    np.testing.assert_array_equal(filled[0], x[0])


def test_impute_of_signals_uses_the_two_side_neighbours():
    x = np.array([[[0.0], [1.0], [5.0], [5.0], [3.0], [7.0]]])
    removed = np.array([[False, True, True, True, False, False]])
    filled = metrics.impute(x, removed)[0, :, 0]
    # The removed run between 0 and 3 becomes the straight line 0, 0.75, 1.5, 2.25, 3.
    np.testing.assert_allclose(filled, [0.0, 0.75, 1.5, 2.25, 3.0, 7.0], atol=1e-5)
    flat = metrics.impute(x[..., 0], removed)  # flat features (N, D): the same grid
    np.testing.assert_allclose(flat[0], filled, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Scores of the curves
# --------------------------------------------------------------------------------------------


def test_area_under_a_constant_curve_is_one_and_under_a_line_its_trapezoid():
    np.testing.assert_allclose(metrics.area_under_curve(np.full((2, 9), 3.5)), [1.0, 1.0])
    k = np.arange(11) / 10
    rng = np.random.default_rng(18)
    f0, f1 = 4.0, -1.0
    line = f0 + (f1 - f0) * k
    bumpy = 2.0 + rng.random(11)
    curves = np.stack([line, bumpy])
    result = metrics.area_under_curve(curves)
    assert result[0] == pytest.approx((f0 + f1) / 2 / f0)  # exact for a line
    expected = [np.trapezoid(c / c[0], k) for c in curves]
    np.testing.assert_allclose(result, expected, rtol=1e-12)
    np.testing.assert_allclose(metrics.area_under_curve(curves, normalize=False), [np.trapezoid(c, k) for c in curves], rtol=1e-12)


def test_area_under_curve_is_nan_without_a_positive_start():
    curves = np.array([[0.0, 1.0, 2.0], [-1.0, -2.0, -3.0], [2.0, 1.0, 0.0]])
    result = metrics.area_under_curve(curves)
    assert np.isnan(result[:2]).all()
    assert result[2] == pytest.approx(0.5)
    assert np.isfinite(metrics.area_under_curve(curves, normalize=False)).all()


def test_aopc_and_abpc_against_their_formulas():
    rng = np.random.default_rng(19)
    morf, lerf = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    expected_aopc = [sum(c[0] - c[k] for k in range(7)) / 7 for c in morf]
    np.testing.assert_allclose(metrics.aopc(morf), expected_aopc, rtol=1e-12)
    expected_abpc = [sum(lo[k] - mo[k] for k in range(7)) / 7 for mo, lo in zip(morf, lerf)]
    np.testing.assert_allclose(metrics.abpc(morf, lerf), expected_abpc, rtol=1e-12)
    np.testing.assert_allclose(metrics.abpc(morf, morf), 0.0)


# --------------------------------------------------------------------------------------------
# Bootstrap intervals
# --------------------------------------------------------------------------------------------


def test_bootstrap_interval_is_seeded_and_contains_the_mean():
    values = np.random.default_rng(20).normal(1.0, 2.0, size=60)
    first = metrics.bootstrap_interval(values, seed=5)
    again = metrics.bootstrap_interval(values, seed=5)
    other = metrics.bootstrap_interval(values, seed=6)
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)
    width = first.high - first.low
    assert abs(first.low - other.low) < 0.1 * width and abs(first.high - other.high) < 0.1 * width
    assert first.estimate == pytest.approx(values.mean())
    assert first.low < first.estimate < first.high
    assert isinstance(first.low, float) and first.confidence == 0.95


def test_bootstrap_interval_matches_the_normal_approximation():
    values = np.random.default_rng(21).normal(size=400)
    interval = metrics.bootstrap_interval(values, confidence=0.9)
    half = scipy.stats.norm.ppf(0.95) * values.std() / math.sqrt(len(values))
    assert interval.low == pytest.approx(values.mean() - half, abs=0.15 * half)
    assert interval.high == pytest.approx(values.mean() + half, abs=0.15 * half)


def test_bootstrap_interval_of_columns_draws_the_same_rows_for_every_column():
    rng = np.random.default_rng(22)
    base = rng.exponential(size=40)
    values = np.stack([base, 3 * base + 1, -base, rng.normal(size=40)], axis=1)
    interval = metrics.bootstrap_interval(values, seed=7, n_resamples=2000)
    assert interval.low.shape == interval.high.shape == interval.estimate.shape == (4,)
    for j in range(4):
        column = metrics.bootstrap_interval(values[:, j], seed=7, n_resamples=2000)
        assert interval.low[j] == pytest.approx(column.low, rel=1e-12)
        assert interval.high[j] == pytest.approx(column.high, rel=1e-12)
        assert interval.estimate[j] == pytest.approx(column.estimate, rel=1e-12)
    # Paired resamples: an affine function of a column has the affine function of its bounds.
    assert interval.low[1] == pytest.approx(3 * interval.low[0] + 1, rel=1e-12)
    assert interval.high[1] == pytest.approx(3 * interval.high[0] + 1, rel=1e-12)
    assert interval.low[2] == pytest.approx(-interval.high[0], rel=1e-12)
    assert interval.high[2] == pytest.approx(-interval.low[0], rel=1e-12)


def test_bootstrap_interval_is_wider_for_fewer_samples_or_more_confidence():
    values = np.random.default_rng(23).normal(size=500)
    many = metrics.bootstrap_interval(values)
    few = metrics.bootstrap_interval(values[:20])
    assert few.high - few.low > 2 * (many.high - many.low)
    loose = metrics.bootstrap_interval(values, confidence=0.8)
    strict = metrics.bootstrap_interval(values, confidence=0.99)
    assert strict.low < many.low < loose.low and loose.high < many.high < strict.high


@pytest.mark.parametrize(
    "values, options, message",
    [
        (np.array([1.0, np.nan, 2.0]), {}, "NaN"),
        (np.array([1.0, np.inf]), {}, "NaN or infinite"),
        (np.array([1.0]), {}, "N >= 2"),
        (np.ones((2, 2, 2)), {}, r"shape \(N,\) or \(N, M\)"),
        (np.arange(5.0), {"confidence": 0.0}, "confidence"),
        (np.arange(5.0), {"confidence": 1.0}, "confidence"),
        (np.arange(5.0), {"confidence": 95}, "confidence"),
        (np.arange(5.0), {"n_resamples": 10}, "n_resamples"),
    ],
)
def test_bootstrap_interval_refuses_bad_input(values, options, message):
    with pytest.raises(ValueError, match=message):
        metrics.bootstrap_interval(values, **options)


# --------------------------------------------------------------------------------------------
# Continuity: the max toy of §7.1
# --------------------------------------------------------------------------------------------

DELTA = 0.125
T_GRID = 0.5625 + DELTA * np.arange(8)  # 0.5625 … 1.4375, crosses t = 1 between 0.9375 and 1.0625


@pytest.fixture(scope="module")
def max_model():
    """f(x) = max(x1, x2) on x ≥ 0: 0.5 (relu(x1 − x2) + relu(x2 − x1) + relu(x1 + x2))."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)], name="max_toy"
    )
    model.layers[0].set_weights([np.array([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]]), np.zeros(3)])
    model.layers[1].set_weights([np.full((3, 1), 0.5), np.zeros(1)])
    return model


def _max_sequence():
    return np.stack([np.ones_like(T_GRID), T_GRID], axis=1).astype(np.float32)  # (T, 2)


def _normalised_continuity(inputs, relevance):
    """The normalised measure, written out for one sequence (T, D)."""
    scale = np.mean([np.abs(r).sum() for r in relevance])
    maps = relevance / scale
    return max(
        np.abs(maps[t + 1] - maps[t]).sum() / np.linalg.norm(inputs[t + 1] - inputs[t]) for t in range(len(inputs) - 1)
    )


def test_max_toy_computes_the_maximum(max_model):
    x = _max_sequence()
    np.testing.assert_allclose(np.asarray(max_model(x))[:, 0], np.maximum(x[:, 0], x[:, 1]), rtol=1e-6)


def test_sensitivity_jumps_at_the_crossing(max_model):
    x = _max_sequence()
    relevance = unn.explain(max_model, x, "sensitivity", 0)
    expected = np.where((T_GRID < 1)[:, None], [1.0, 0.0], [0.0, 1.0])
    np.testing.assert_allclose(relevance, expected, atol=1e-6)
    assert metrics.continuity(x[None], relevance[None], normalize=False)[0] == pytest.approx(2 / DELTA, rel=1e-5)
    # Every map has L1 norm 1, so the normalised measure is the same.
    assert metrics.continuity(x[None], relevance[None])[0] == pytest.approx(2 / DELTA, rel=1e-5)


def test_gradient_x_input_jumps_by_one_plus_the_new_coordinate(max_model):
    x = _max_sequence()
    relevance = unn.explain(max_model, x, "gradient_x_input", 1)  # one logit: target 1 explains it
    expected = np.where((T_GRID < 1)[:, None], np.stack([np.ones(8), np.zeros(8)], 1), np.stack([np.zeros(8), T_GRID], 1))
    np.testing.assert_allclose(relevance, expected, atol=1e-6)
    after = T_GRID[T_GRID > 1][0]
    jump = (1 + after) / DELTA  # |0 − 1| + |t_after − 0| over a step of δ
    closed_form = max(jump, 1.0)  # after the crossing R2 = t grows at rate 1
    assert metrics.continuity(x[None], relevance[None], normalize=False)[0] == pytest.approx(closed_form, rel=1e-5)
    assert metrics.continuity(x[None], relevance[None])[0] == pytest.approx(
        _normalised_continuity(x.astype(np.float64), relevance.astype(np.float64)), rel=1e-5
    )


def test_deep_taylor_zplus_is_continuous_on_the_max_toy(max_model):
    x = _max_sequence().astype(np.float64)
    relevance = unn.explain(max_model, x.astype(np.float32), "lrp.zplus", 1)
    x1, x2 = x[:, 0], x[:, 1]
    expected = np.where(
        (x1 > x2)[:, None],
        np.stack([(2 * x1 - x2) / 2, x2 / 2], axis=1),
        np.stack([x1 / 2, (2 * x2 - x1) / 2], axis=1),
    )
    np.testing.assert_allclose(relevance, expected, atol=1e-6)
    # Every move along x2 changes the map by exactly δ in L1, across the crossing too.
    assert metrics.continuity(x[None], relevance[None], normalize=False)[0] == pytest.approx(1.0, rel=1e-5)
    # The maps sum to f(x) = max(1, t) ≥ 0, so the normalised measure is 1 over their mean norm.
    assert metrics.continuity(x[None], relevance[None])[0] == pytest.approx(1 / np.maximum(1, T_GRID).mean(), rel=1e-5)
    assert metrics.continuity(x[None], relevance[None])[0] == pytest.approx(
        _normalised_continuity(x, relevance.astype(np.float64)), rel=1e-5
    )


def test_continuity_skips_equal_neighbours_and_handles_zero_maps():
    inputs = np.array([[[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]])
    same_maps = np.array([[[1.0, 0.0], [1.0, 0.0], [1.0, 2.0]]])
    assert metrics.continuity(inputs, same_maps, normalize=False)[0] == pytest.approx(2.0)
    jumping = np.array([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    assert metrics.continuity(inputs, jumping, normalize=False)[0] == np.inf
    assert metrics.continuity(inputs, np.zeros_like(inputs))[0] == 0.0


def test_continuity_of_a_batch_equals_continuity_per_sequence():
    rng = np.random.default_rng(24)
    inputs, relevances = rng.normal(size=(5, 4, 3, 3, 1)), rng.normal(size=(5, 4, 3, 3, 1))
    for normalize in (True, False):
        batch = metrics.continuity(inputs, relevances, normalize=normalize)
        single = [metrics.continuity(inputs[n : n + 1], relevances[n : n + 1], normalize=normalize)[0] for n in range(5)]
        np.testing.assert_allclose(batch, single, rtol=1e-12)
        written_out = []
        for i, r in zip(inputs, relevances):
            if normalize:
                r = r / np.mean([np.abs(m).sum() for m in r])
            written_out.append(max(np.abs(r[t + 1] - r[t]).sum() / np.linalg.norm(i[t + 1] - i[t]) for t in range(3)))
        np.testing.assert_allclose(batch, written_out, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Translations
# --------------------------------------------------------------------------------------------


def _rolled(x, shift, axis):
    """x moved by ``shift`` along ``axis`` with a zero border: np.roll with the wrapped part zeroed."""
    length = x.shape[axis]
    if abs(shift) >= length:
        return np.zeros_like(x)
    moved = np.roll(x, shift, axis=axis)
    index = [slice(None)] * x.ndim
    index[axis] = slice(0, shift) if shift > 0 else slice(length + shift, length)
    if shift:
        moved[tuple(index)] = 0
    return moved


@pytest.mark.parametrize("axis", [1, 2])
def test_translations_move_the_content_with_a_zero_border(axis):
    x = np.random.default_rng(25).random((2, 5, 6, 2)).astype(np.float32)
    shifts = [-9, -6, -5, -2, 0, 1, 3, 5, 6, 7]
    moved = metrics.translations(x, shifts, axis=axis)
    assert moved.shape == (2, len(shifts), 5, 6, 2) and moved.dtype == x.dtype
    for t, shift in enumerate(shifts):
        np.testing.assert_array_equal(moved[:, t], _rolled(x, shift, axis))
    np.testing.assert_array_equal(moved[:, shifts.index(0)], x)
    assert not moved[:, shifts.index(-9)].any() and not moved[:, shifts.index(7)].any()


def test_translation_by_one_moves_a_pixel_one_position():
    x = np.zeros((1, 4, 4, 1), dtype=np.float32)
    x[0, 1, 2, 0] = 1.0
    right = metrics.translations(x, [1], axis=2)[0, 0, ..., 0]
    down = metrics.translations(x, [1], axis=1)[0, 0, ..., 0]
    left = metrics.translations(x, [-2], axis=2)[0, 0, ..., 0]
    assert right[1, 3] == 1 and right.sum() == 1
    assert down[2, 2] == 1 and down.sum() == 1
    assert left[1, 0] == 1 and left.sum() == 1


@pytest.mark.parametrize("axis, normalize, target", [(2, True, None), (1, False, 2)])
def test_translation_continuity_equals_continuity_of_explained_translations(small_conv, conv_inputs, axis, normalize, target):
    x = conv_inputs[0][:3]
    shifts = (-2, -1, 0, 1, 2)
    result = metrics.translation_continuity(
        small_conv, x, "gradient_x_input", target, shifts=shifts, axis=axis, normalize=normalize
    )
    targets = np.argmax(np.asarray(small_conv(x, training=False)), axis=1) if target is None else np.full(3, target)
    moved = metrics.translations(x, shifts, axis=axis)
    relevance = np.stack([unn.explain(small_conv, moved[n], "gradient_x_input", int(targets[n])) for n in range(3)])
    expected = metrics.continuity(moved, relevance, normalize=normalize)
    assert result.shape == (3,)
    np.testing.assert_allclose(result, expected, rtol=1e-5)
    single = [
        metrics.translation_continuity(small_conv, x[n : n + 1], "gradient_x_input", int(targets[n]),
                                       shifts=shifts, axis=axis, normalize=normalize)[0]
        for n in range(3)
    ]
    np.testing.assert_allclose(result, single, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Sanity checks: randomised models
# --------------------------------------------------------------------------------------------


def _pretend_trained(model, seed):
    """Give every weight a random value unlike its initializer's (so re-initialising shows)."""
    rng = np.random.default_rng(seed)
    model.set_weights([np.abs(rng.normal(size=w.shape)) + 0.5 for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def norm_model():
    """Conv → BatchNormalization → ReLU → Dense on 8×8×1, with 'trained' weights."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((SIDE, SIDE, 1)),
            keras.layers.Conv2D(3, 3, padding="same", name="conv"),
            keras.layers.BatchNormalization(name="norm"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(4, name="dense"),
        ],
        name="norm_net",
    )
    model = _pretend_trained(model, 5)
    # Mixed signs for the kernels, so the classes differ.
    rng = np.random.default_rng(6)
    model.get_layer("conv").kernel.assign(rng.normal(size=(3, 3, 1, 3)).astype(np.float32))
    model.get_layer("dense").kernel.assign(rng.normal(size=(SIDE * SIDE * 3, 4)).astype(np.float32) * 0.2)
    return model


@pytest.fixture(scope="module")
def nested_model():
    """A functional model with a Sequential (conv + flatten) used as a layer, then a dense head."""
    keras.utils.set_random_seed(7)
    inner = keras.Sequential(
        [keras.Input((SIDE, SIDE, 1)), keras.layers.Conv2D(2, 3, activation="relu", name="inner_conv"),
         keras.layers.Flatten(name="inner_flatten")],
        name="inner",
    )
    inputs = keras.Input((SIDE, SIDE, 1))
    outputs = keras.layers.Dense(3, name="head")(inner(inputs))
    return _pretend_trained(keras.Model(inputs, outputs, name="nested"), 7)


@pytest.fixture(scope="module")
def gray_images():
    return np.random.default_rng(26).random((3, SIDE, SIDE, 1)).astype(np.float32)


def _weights_by_layer(model):
    layers = {}

    def visit(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                visit(layer)
            elif layer.weights:
                layers[layer.name] = [keras.ops.convert_to_numpy(w) for w in layer.weights]

    visit(model)
    return layers


def test_parametrized_layers_lists_weighted_layers_and_looks_inside_nested_models(norm_model, nested_model):
    assert metrics.parametrized_layers(norm_model) == ["conv", "norm", "dense"]
    assert metrics.parametrized_layers(nested_model) == ["inner_conv", "head"]


def test_randomized_copy_redraws_the_named_layers_only(norm_model, gray_images):
    trained = _weights_by_layer(norm_model)
    trained_logits = np.asarray(norm_model(gray_images, training=False))
    copy = metrics.randomized_copy(norm_model, ["norm", "dense"], seed=3)
    assert copy is not norm_model
    redrawn = _weights_by_layer(copy)
    for name in ("norm", "dense"):
        assert len(redrawn[name]) == len(trained[name])
        for new, old in zip(redrawn[name], trained[name]):
            assert new.shape == old.shape and (new != old).all()
    for new, old in zip(redrawn["conv"], trained["conv"]):
        np.testing.assert_array_equal(new, old)
    # Each weight comes from its own initializer: glorot_uniform kernel, zero bias, γ = 1, β = 0,
    # moving mean 0 and variance 1.
    kernel, bias = redrawn["dense"]
    limit = math.sqrt(6 / (kernel.shape[0] + kernel.shape[1]))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.5 * limit
    np.testing.assert_array_equal(bias, 0.0)
    norm = copy.get_layer("norm")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(norm.gamma), 1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(norm.beta), 0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(norm.moving_mean), 0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(norm.moving_variance), 1.0)
    # The trained model is untouched.
    for name, arrays in _weights_by_layer(norm_model).items():
        for now, before in zip(arrays, trained[name]):
            np.testing.assert_array_equal(now, before)
    np.testing.assert_array_equal(np.asarray(norm_model(gray_images, training=False)), trained_logits)
    assert not np.allclose(np.asarray(copy(gray_images, training=False)), trained_logits)


def test_randomized_copy_is_reproducible_with_its_seed(norm_model):
    first = _weights_by_layer(metrics.randomized_copy(norm_model, ["conv", "dense"], seed=1))
    again = _weights_by_layer(metrics.randomized_copy(norm_model, ["conv", "dense"], seed=1))
    other = _weights_by_layer(metrics.randomized_copy(norm_model, ["conv", "dense"], seed=2))
    for name in first:
        for a, b in zip(first[name], again[name]):
            np.testing.assert_array_equal(a, b)
    for name in ("conv", "dense"):  # the seeded kernels differ (zero biases do not depend on it)
        assert not np.array_equal(first[name][0], other[name][0])


def test_randomized_copy_of_a_nested_model_leaves_the_original_unchanged(nested_model, gray_images):
    trained = _weights_by_layer(nested_model)
    logits = np.asarray(nested_model(gray_images, training=False))
    copy = metrics.randomized_copy(nested_model, ["inner_conv"], seed=0)
    redrawn = _weights_by_layer(copy)
    for new, old in zip(redrawn["inner_conv"], trained["inner_conv"]):
        assert (new != old).all()
    for new, old in zip(redrawn["head"], trained["head"]):
        np.testing.assert_array_equal(new, old)
    for name, arrays in _weights_by_layer(nested_model).items():
        for now, before in zip(arrays, trained[name]):
            np.testing.assert_array_equal(now, before)
    np.testing.assert_array_equal(np.asarray(nested_model(gray_images, training=False)), logits)


@pytest.mark.parametrize("model_name", ["norm_model", "nested_model"])
def test_cascading_randomization_stages(request, model_name, gray_images):
    model = request.getfixturevalue(model_name)
    trained = _weights_by_layer(model)
    logits = np.asarray(model(gray_images, training=False))
    method = "gradient_x_input"
    result = metrics.cascading_randomization(model, gray_images, method, seed=4)
    names = metrics.parametrized_layers(model)
    assert result.layers == names[::-1]
    assert result.relevance.shape == (len(names) + 1, *gray_images.shape)
    targets = np.argmax(logits, axis=1)
    np.testing.assert_array_equal(result.target, targets)
    np.testing.assert_allclose(result.relevance[0], unn.explain(model, gray_images, method, targets), atol=1e-6)
    for k in range(1, len(names) + 1):
        randomized = metrics.randomized_copy(model, result.layers[:k], seed=4)
        np.testing.assert_allclose(result.relevance[k], unn.explain(randomized, gray_images, method, targets), atol=1e-5)
    assert not np.allclose(result.relevance[-1], result.relevance[0])
    similarity = result.similarity("spearman")
    assert similarity.shape == (len(names) + 1, len(gray_images))
    np.testing.assert_allclose(similarity[0], 1.0)
    np.testing.assert_allclose(
        similarity[-1], metrics.rank_correlation(result.relevance[0], result.relevance[-1]), rtol=1e-12
    )
    np.testing.assert_allclose(
        result.similarity()[1], metrics.rank_correlation(result.relevance[0], result.relevance[1], absolute=True), rtol=1e-12
    )
    for name, arrays in _weights_by_layer(model).items():
        for now, before in zip(arrays, trained[name]):
            np.testing.assert_array_equal(now, before)
    np.testing.assert_array_equal(np.asarray(model(gray_images, training=False)), logits)


def test_cascading_randomization_with_chosen_layers_and_target(norm_model, gray_images):
    result = metrics.cascading_randomization(norm_model, gray_images, "gradient", 1, layers=["dense"], seed=2)
    assert result.layers == ["dense"] and result.relevance.shape == (2, *gray_images.shape)
    np.testing.assert_array_equal(result.target, [1, 1, 1])
    randomized = metrics.randomized_copy(norm_model, ["dense"], seed=2)
    np.testing.assert_allclose(result.relevance[1], unn.explain(randomized, gray_images, "gradient", 1), atol=1e-5)


@pytest.mark.parametrize("name", ["flatten", "relu", "no_such_layer"])
def test_randomisation_refuses_a_layer_without_weights(norm_model, gray_images, name):
    with pytest.raises(ValueError, match=name):
        metrics.randomized_copy(norm_model, ["dense", name])
    with pytest.raises(ValueError, match=name):
        metrics.cascading_randomization(norm_model, gray_images, "gradient", layers=[name])


# --------------------------------------------------------------------------------------------
# Sanity checks: random logits
# --------------------------------------------------------------------------------------------


def test_random_other_class_never_returns_the_target_and_covers_the_others():
    rng = np.random.default_rng(27)
    target = rng.integers(0, 10, size=9000)
    other = metrics.random_other_class(target, 10, seed=1)
    assert other.shape == target.shape and other.dtype.kind == "i"
    assert (other != target).all() and ((other >= 0) & (other < 10)).all()
    np.testing.assert_array_equal(other, metrics.random_other_class(target, 10, seed=1))
    assert not np.array_equal(other, metrics.random_other_class(target, 10, seed=2))
    for c in range(10):
        drawn = other[target == c]
        counts = np.bincount(drawn, minlength=10)
        assert counts[c] == 0 and (np.delete(counts, c) > 0).all()
        expected = len(drawn) / 9  # uniform over the other 9 classes
        assert (np.abs(np.delete(counts, c) - expected) < 5 * math.sqrt(expected)).all()
    np.testing.assert_array_equal(metrics.random_other_class(np.zeros(50, dtype=int), 2), 1)


@pytest.mark.parametrize("target", [None, np.array([0, 4, 4, 2])])
def test_random_logit_test_explains_the_target_and_another_class(small_conv, conv_inputs, target):
    x = conv_inputs[0]
    result = metrics.random_logit_test(small_conv, x, "gradient", target, seed=3)
    expected_target = np.argmax(np.asarray(small_conv(x, training=False)), axis=1) if target is None else target
    np.testing.assert_array_equal(result.target, expected_target)
    np.testing.assert_array_equal(result.other, metrics.random_other_class(expected_target, 5, seed=3))
    assert (result.other != result.target).all()
    np.testing.assert_allclose(result.relevance, unn.explain(small_conv, x, "gradient", expected_target), atol=1e-6)
    np.testing.assert_allclose(result.other_relevance, unn.explain(small_conv, x, "gradient", result.other), atol=1e-6)
    np.testing.assert_allclose(
        result.similarity(), metrics.structural_similarity(result.relevance, result.other_relevance), rtol=1e-12
    )
    np.testing.assert_allclose(
        result.similarity("spearman"), metrics.rank_correlation(result.relevance, result.other_relevance), rtol=1e-12
    )


# --------------------------------------------------------------------------------------------
# Similarity measures
# --------------------------------------------------------------------------------------------


def test_rank_correlation_matches_scipy_spearman():
    rng = np.random.default_rng(28)
    a = rng.integers(-3, 4, size=(5, 6, 6, 1)).astype(float)  # many ties
    b = rng.normal(size=(5, 6, 6, 1))
    b[0] = a[0] ** 3  # same order
    for absolute in (False, True):
        result = metrics.rank_correlation(a, b, absolute=absolute)
        f = np.abs if absolute else (lambda v: v)
        expected = [scipy.stats.spearmanr(f(u).ravel(), f(v).ravel()).statistic for u, v in zip(a, b)]
        np.testing.assert_allclose(result, expected, rtol=1e-12)
    assert metrics.rank_correlation(a, b)[0] == pytest.approx(1.0)
    np.testing.assert_allclose(metrics.SIMILARITIES["spearman"](a, b), metrics.rank_correlation(a, b))
    np.testing.assert_allclose(metrics.SIMILARITIES["spearman_abs"](a, b), metrics.rank_correlation(a, b, absolute=True))


def test_structural_similarity_matches_scikit_image_on_unit_magnitudes():
    rng = np.random.default_rng(29)
    a, b = rng.normal(size=(3, 12, 12)), rng.normal(size=(3, 12, 12))
    b[1] = a[1] + 0.3 * b[1]
    result = metrics.structural_similarity(a, b)
    expected = [
        skimage.metrics.structural_similarity(np.abs(u) / np.abs(u).max(), np.abs(v) / np.abs(v).max(), data_range=1.0)
        for u, v in zip(a, b)
    ]
    np.testing.assert_allclose(result, expected, rtol=1e-12)
    assert result[1] > result[0]
    np.testing.assert_allclose(metrics.structural_similarity(a, a), 1.0)
    np.testing.assert_allclose(metrics.structural_similarity(a, -5 * a), 1.0)  # magnitudes, up to scale
    np.testing.assert_allclose(metrics.SIMILARITIES["ssim"](a, b), result)


def test_structural_similarity_sums_the_channels():
    rng = np.random.default_rng(30)
    a, b = rng.normal(size=(2, 12, 12, 3)), rng.normal(size=(2, 12, 12, 3))
    result = metrics.structural_similarity(a, b)
    summed_a, summed_b = a.sum(axis=-1), b.sum(axis=-1)
    expected = [
        skimage.metrics.structural_similarity(np.abs(u) / np.abs(u).max(), np.abs(v) / np.abs(v).max(), data_range=1.0)
        for u, v in zip(summed_a, summed_b)
    ]
    np.testing.assert_allclose(result, expected, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Batches give the same results as single samples
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fill", ["zero", "mean", "blur", "impute", "array"])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_pixel_flipping_in_small_batches_and_per_sample(small_conv, conv_inputs, fill, order):
    x, relevance = conv_inputs
    fill_value = ARRAY_FILL if fill == "array" else fill
    options = dict(patch_size=4, fill=fill_value, order=order)
    large = metrics.pixel_flipping(small_conv, x, relevance, None, **options)
    small = metrics.pixel_flipping(small_conv, x, relevance, None, batch_size=3, **options)
    np.testing.assert_allclose(small, large, atol=1e-5)
    single = np.concatenate(
        [metrics.pixel_flipping(small_conv, x[n : n + 1], relevance[n : n + 1], None, **options) for n in range(len(x))]
    )
    np.testing.assert_allclose(single, large, atol=1e-5)


@pytest.mark.parametrize("fill, order", [("uniform", "morf"), ("zero", "random"), ("uniform", "random")])
def test_random_fills_and_orders_do_not_depend_on_the_batch_size(small_conv, conv_inputs, fill, order):
    x, relevance = conv_inputs
    options = dict(patch_size=2, fill=fill, order=order, seed=8)
    large = metrics.pixel_flipping(small_conv, x, relevance, 1, **options)
    for batch_size in (1, 3, 20):
        np.testing.assert_allclose(metrics.pixel_flipping(small_conv, x, relevance, 1, batch_size=batch_size, **options), large, atol=1e-5)
    assert not np.allclose(metrics.pixel_flipping(small_conv, x, relevance, 1, **{**options, "seed": 9}), large, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"relevance": "short"}, "relevance has shape"),
        ({"relevance": "nan"}, "NaN or infinite"),
        ({"patch_size": 5}, "does not fit"),
        ({"patch_size": 3}, "does not fit"),
        ({"patch_size": 0}, "positive integer"),
        ({"patch_size": -2}, "positive integer"),
        ({"patch_size": 2.0}, "positive integer"),
        ({"patch_size": 2, "steps": 17}, "steps must be an integer from 0 to the number of patches, 16"),
        ({"steps": -1}, "steps must be an integer"),
        ({"fill": "noise"}, "fill must be one of"),
        ({"fill": "uniform", "value_range": (1.0, 1.0)}, "low < high"),
        ({"fill": np.zeros((4, 4, 1))}, r"fill has shape \(4, 4, 1\); it must be one input of shape \(8, 8, 1\)"),
        ({"order": "best"}, "order must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_pixel_flipping_refuses_bad_input(linear_setup, options, message):
    model, x, target, relevance = linear_setup
    options = dict(options)
    kind = options.pop("relevance", None)
    if kind == "short":
        relevance = relevance[:, :4]
    elif kind == "nan":
        relevance = relevance.copy()
        relevance[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match=message):
        metrics.pixel_flipping(model, x, relevance, target, **options)


def test_blur_fill_needs_images():
    model = _linear_model(np.ones((6, 2), dtype=np.float32), name="flat_for_blur")
    x = np.ones((2, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="needs images"):
        metrics.pixel_flipping(model, x, x, 0, patch_size=2, fill="blur")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.continuity(np.zeros((2, 3, 4)), np.zeros((2, 3, 5))), "relevances have shape"),
        (lambda: metrics.continuity(np.zeros((2, 1, 4)), np.zeros((2, 1, 4))), "T >= 2"),
        (lambda: metrics.continuity(np.zeros((2, 4)), np.zeros((2, 4))), "sequences"),
        (lambda: metrics.continuity(np.full((1, 2, 2), np.nan), np.zeros((1, 2, 2))), "finite"),
        (lambda: metrics.translations(np.zeros((2, 4, 4, 1)), [1], axis=4), "axis must be"),
        (lambda: metrics.translations(np.zeros((2, 4, 4, 1)), []), "at least one shift"),
        (lambda: metrics.impute(np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 3), dtype=bool)), "removed has shape"),
        (lambda: metrics.area_under_curve(np.ones((2, 1))), "at least one step"),
        (lambda: metrics.aopc(np.array([[1.0, np.nan]])), "NaN"),
        (lambda: metrics.abpc(np.ones((2, 3)), np.ones((2, 4))), "differ in shape"),
        (lambda: metrics.random_other_class([0], 1), "at least 2 classes"),
        (lambda: metrics.rank_correlation(np.zeros(3), np.zeros(3)), "batch of maps"),
        (lambda: metrics.structural_similarity(np.zeros((2, 8, 8)), np.zeros((2, 8, 9))), "differ in shape"),
        (lambda: metrics.structural_similarity(np.zeros((2, 8)), np.zeros((2, 8))), "structural_similarity needs"),
    ],
)
def test_measures_refuse_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_unknown_similarity_measure_is_refused():
    relevance = np.random.default_rng(31).normal(size=(2, 1, 8, 8))
    stages = metrics.Randomization(["dense"], relevance, np.zeros(1, dtype=np.int32))
    with pytest.raises(ValueError, match="measure must be one of 'spearman', 'spearman_abs', 'ssim'"):
        stages.similarity("pearson")
    logits = metrics.RandomLogit(np.zeros(1), np.ones(1), relevance[0], relevance[1])
    with pytest.raises(ValueError, match="measure must be one of"):
        logits.similarity("cosine")
    assert logits.similarity("spearman").shape == (1,)


# --------------------------------------------------------------------------------------------
# Documentation of the measures
# --------------------------------------------------------------------------------------------

QUALITY_API = [
    "patch_index", "removal_order", "impute", "pixel_flipping", "area_under_curve", "aopc", "abpc",
    "Interval", "bootstrap_interval", "translations", "continuity", "translation_continuity",
    "parametrized_layers", "randomized_copy", "cascading_randomization", "Randomization",
    "random_other_class", "random_logit_test", "RandomLogit", "rank_correlation", "structural_similarity",
]


@pytest.mark.parametrize("name", QUALITY_API)
def test_docstring_math_is_not_mangled_by_string_escapes(name):
    # A backslash escape in a non-raw docstring turns \frac into a form feed and \text into a tab.
    doc = getattr(metrics, name).__doc__
    assert doc and name in metrics.__all__
    mangled = sorted({hex(ord(c)) for c in doc if c in "\a\b\f\v\t"})
    assert not mangled, f"{name}'s docstring holds control characters {mangled} (a backslash escape in a non-raw string)"


# --------------------------------------------------------------------------------------------
# The verdict of the cascading test
# --------------------------------------------------------------------------------------------


def _randomization(stages):
    """A Randomization whose stages are the given maps (the first one is the trained model's)."""
    stages = np.asarray(stages, dtype=np.float64)
    return metrics.Randomization([f"layer{k}" for k in range(1, len(stages))], stages, np.zeros(stages.shape[1], int))


def test_a_method_whose_maps_never_change_fails_and_one_whose_maps_change_passes():
    rng = np.random.default_rng(5)
    trained = rng.normal(size=(20, 10, 10))
    unchanged = _randomization([trained, trained, trained])
    changed = _randomization([trained, rng.normal(size=trained.shape), rng.normal(size=trained.shape)])
    assert unchanged.still_similar(1) and unchanged.still_similar(2) and unchanged.fails()
    assert not changed.still_similar(1) and not changed.still_similar(2) and not changed.fails()
    # Only the top layer left unchanged still fails (stage 1), only the last stage too.
    assert _randomization([trained, trained, rng.normal(size=trained.shape)]).fails()
    assert _randomization([trained, rng.normal(size=trained.shape), trained]).fails()
    np.testing.assert_allclose(unchanged.similarity("ssim", 2), np.ones(20))
    np.testing.assert_array_equal(changed.similarity("spearman", 1), changed.similarity("spearman")[1])
    with pytest.raises(ValueError, match="stage must be between 0 and 2"):
        changed.similarity("ssim", 3)


# --------------------------------------------------------------------------------------------
# Costs
# --------------------------------------------------------------------------------------------


def test_median_seconds_times_the_call_after_a_warm_up():
    calls = []
    def call():
        calls.append(None)
    assert metrics.median_seconds(call, repeats=3) >= 0 and len(calls) == 4  # one warm-up, three timed
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        metrics.median_seconds(call, repeats=0)


def test_relative_cost_is_a_positive_ratio_and_refuses_an_unknown_method(small_conv, conv_inputs):
    x, _ = conv_inputs
    ratio = metrics.relative_cost(small_conv, x, "integrated_gradients", repeats=1, steps=8)
    assert np.isfinite(ratio) and ratio > 0
    with pytest.raises(ValueError, match="unknown attribution method 'saliency'"):
        metrics.relative_cost(small_conv, x, "saliency", repeats=1)


def test_interval_cells_format_every_column_and_str_joins_them():
    one = metrics.Interval(1.23456, 1.0, 1.5, 0.95)
    assert one.cells() == ["1.23 [1.00, 1.50]"] and str(one) == "1.23 [1, 1.5]"
    several = metrics.Interval(np.array([0.5, -2.0]), np.array([0.25, -3.0]), np.array([0.75, -1.0]), 0.95)
    assert several.cells(".1f") == ["0.5 [0.2, 0.8]", "-2.0 [-3.0, -1.0]"]
    assert str(several) == "0.5 [0.25, 0.75]; -2 [-3, -1]"


# --------------------------------------------------------------------------------------------
# AUROC with its interval (Part VI)
# --------------------------------------------------------------------------------------------


def test_auroc_interval_matches_scikit_learn_and_contains_its_estimate():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    positive = rng.random(80) < 0.3
    scores = rng.normal(size=80) + positive + np.round(rng.random(80), 1)  # some ties
    interval = metrics.auroc_interval(scores, positive, seed=1)
    assert interval.estimate == pytest.approx(roc_auc_score(positive, scores))
    assert interval.low <= interval.estimate <= interval.high and interval.confidence == 0.95
    again = metrics.auroc_interval(scores, positive, seed=1)
    assert (again.low, again.high) == (interval.low, interval.high)
    wider = metrics.auroc_interval(scores, positive, seed=1, confidence=0.99)
    assert wider.low <= interval.low and wider.high >= interval.high
    # Perfectly separated groups: every resample is separated too.
    perfect = metrics.auroc_interval(np.r_[np.ones(5), np.zeros(7)], np.r_[np.ones(5, bool), np.zeros(7, bool)])
    assert (perfect.estimate, perfect.low, perfect.high) == (1.0, 1.0, 1.0)


def test_auroc_interval_refuses_bad_input():
    with pytest.raises(ValueError, match="need positive and negative samples, got 3 positive and 0 negative"):
        metrics.auroc_interval([1.0, 2.0, 3.0], [True, True, True])
    with pytest.raises(ValueError, match="positive be booleans of the same shape"):
        metrics.auroc_interval([1.0, 2.0, 3.0], [1, 0, 1])
    with pytest.raises(ValueError, match="scores contain NaN"):
        metrics.auroc_interval([1.0, np.nan], [True, False])
