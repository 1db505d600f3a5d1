"""Part III methods: deconvnet, guided backpropagation, integrated gradients, SmoothGrad."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import understanding_nn as unn
from understanding_nn.gradients import quadrature, relu_backward_pass


# --------------------------------------------------------------------------------------------
# The three backward rules on the 2×2 toy of Springenberg et al.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    """ReLU on a 2×2 input, then one logit with weights (-1, -1, 1, 1): the signal arriving at
    the ReLU's output is [[-1, -1], [1, 1]]."""
    model = keras.Sequential(
        [keras.Input((2, 2, 1)), keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(1, use_bias=False)]
    )
    model.layers[-1].set_weights([np.array([[-1.0], [-1.0], [1.0], [1.0]])])
    x = np.array([[[-2.0], [2.0]], [[2.0], [-2.0]]], dtype=np.float32)[None]
    return model, x


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("gradient", [[0, -1], [1, 0]]),
        ("deconvnet", [[0, 0], [1, 1]]),
        ("guided_backprop", [[0, 0], [1, 0]]),
    ],
)
def test_backward_rules_on_the_two_by_two_toy(toy, rule, expected):
    model, x = toy
    signal = relu_backward_pass(model, rule)(x, np.ones(1, dtype=np.int32)).numpy()  # target 1: the single logit
    np.testing.assert_array_equal(signal[0, :, :, 0], expected)


def test_registered_methods_give_the_toy_values(toy):
    model, x = toy
    np.testing.assert_array_equal(unn.explain(model, x, "deconvnet", target=1)[0, :, :, 0], [[0, 0], [1, 1]])
    np.testing.assert_array_equal(unn.explain(model, x, "guided_backprop", target=1)[0, :, :, 0], [[0, 0], [1, 0]])
    np.testing.assert_array_equal(unn.explain(model, x, "gradient", target=1, absolute=False)[0, :, :, 0], [[0, -1], [1, 0]])


def test_gradient_rule_of_the_backward_pass_equals_the_gradient(conv_model, images):
    target = np.arange(len(images)) % 10
    backward = relu_backward_pass(conv_model, "gradient")(images, target.astype(np.int32)).numpy()
    gradient = unn.explain(conv_model, images, "gradient", target=target, absolute=False)
    np.testing.assert_allclose(backward, gradient, rtol=1e-5, atol=1e-7)


def test_unknown_backward_rule_raises(conv_model):
    with pytest.raises(ValueError, match="rule must be one of"):
        relu_backward_pass(conv_model, "zeiler")


@pytest.mark.parametrize("method", ["deconvnet", "guided_backprop"])
def test_modified_backward_passes_batch_like_single_samples(conv_model, images, method):
    target = np.arange(len(images)) % 10
    whole = unn.explain(conv_model, images, method, target=target)
    single = np.concatenate([unn.explain(conv_model, images[i : i + 1], method, target=target[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(whole[:4], single, rtol=1e-5, atol=1e-7)
    assert np.abs(whole).max() > 0


def test_guided_backprop_leaves_the_gradient_unchanged_afterwards(conv_model, images):
    """The modified pass is local to its call: gradients computed after it are the usual ones."""
    before = unn.explain(conv_model, images[:3], "gradient", target=1, absolute=False)
    unn.explain(conv_model, images[:3], "guided_backprop", target=1)
    after = unn.explain(conv_model, images[:3], "gradient", target=1, absolute=False)
    np.testing.assert_array_equal(before, after)
    assert not np.allclose(before, unn.explain(conv_model, images[:3], "guided_backprop", target=1))


def test_saliency_is_class_specific_on_a_trained_model(digits):
    model = unn.models.load("cnn")
    x, _ = digits
    three, eight = (unn.explain(model, x, "gradient", target=c) for c in (3, 8))
    assert np.abs(three - eight).max() > 0.1 * np.abs(three).max()


# --------------------------------------------------------------------------------------------
# Integrated gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["left", "right", "midpoint", "trapezoid"])
@pytest.mark.parametrize("steps", [1, 7, 64])
def test_quadrature_integrates_polynomials(rule, steps):
    alphas, weights = quadrature(steps, rule)
    assert np.all((alphas >= 0) & (alphas <= 1))
    assert weights.sum() == pytest.approx(1.0)
    if rule in ("midpoint", "trapezoid"):  # exact for straight lines
        assert (weights * alphas).sum() == pytest.approx(0.5)
    error = abs((weights * alphas**2).sum() - 1 / 3)
    assert error <= 1.0 / steps + 1e-12


def completeness_error(model, x, target, baseline, **params):
    relevance = unn.explain(model, x, "integrated_gradients", target=target, baseline=baseline, **params)
    x0 = unn.attribution.resolve_reference(x, baseline)
    rows = np.arange(len(x))
    gap = unn.attribution.predict_logits(model, x)[rows, target] - unn.attribution.predict_logits(model, x0)[rows, target]
    return np.abs(relevance.sum(axis=(1, 2, 3)) - gap) / np.abs(gap)


def test_completeness_error_shrinks_with_the_number_of_steps(conv_model, images):
    target = np.arange(6) % 10
    errors = [completeness_error(conv_model, images[:6], target, "uniform", steps=s).max() for s in (2, 8, 32, 512)]
    assert errors[-1] < errors[0] / 10, errors
    assert errors[-1] < 1e-2, errors


def test_trapezoid_at_a_zero_baseline_of_a_bias_free_net_errs_by_half_a_step(images):
    """At x' = 0 a bias-free ReLU net sits on every kink (gradient 0), while along the path the
    gradient is constant: the trapezoid's half-weighted end point then misses 1/(2 steps) of the
    integral, and the midpoint rule, which never evaluates the end points, is exact."""
    keras.utils.set_random_seed(9)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu", use_bias=False), keras.layers.Dense(10, use_bias=False)])
    target = np.arange(4)
    trapezoid = completeness_error(model, images[:4], target, "zeros", steps=8, quadrature_rule="trapezoid")
    midpoint = completeness_error(model, images[:4], target, "zeros", steps=8, quadrature_rule="midpoint")
    np.testing.assert_allclose(trapezoid, 1 / 16, rtol=1e-3)
    assert midpoint.max() < 1e-4


def test_completeness_at_the_default_on_the_trained_cnn(mnist_test):
    model = unn.models.load("cnn")
    x, y = mnist_test[0][:16], mnist_test[1][:16]
    assert completeness_error(model, x, y, "zeros").max() < 0.01


def test_memory_bound_and_batches_do_not_change_the_result(conv_model, images):
    target = np.arange(len(images)) % 10
    reference = unn.explain(conv_model, images, "integrated_gradients", target=target, steps=16)
    chunked = unn.explain(conv_model, images, "integrated_gradients", target=target, steps=16, max_inputs_per_pass=7)
    batched = unn.explain(conv_model, images, "integrated_gradients", target=target, steps=16, batch_size=5)
    np.testing.assert_allclose(chunked, reference, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(batched, reference, rtol=1e-4, atol=1e-6)


def test_baseline_equal_to_the_input_gives_zero(conv_model, images):
    relevance = unn.explain(conv_model, images[:3], "integrated_gradients", target=2, baseline=images[:3])
    assert np.abs(relevance).max() == 0


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"steps": 0}, ValueError, "steps must be an integer >= 1"),
        ({"steps": 2.5}, ValueError, "steps must be an integer >= 1"),
        ({"quadrature_rule": "simpson"}, ValueError, "quadrature must be one of"),
        ({"baseline": np.zeros((28, 27, 1))}, ValueError, r"reference has shape \(28, 27, 1\)"),
        ({"max_inputs_per_pass": 0}, ValueError, "max_inputs_per_pass must be a positive integer"),
    ],
)
def test_bad_integrated_gradients_parameters_raise(conv_model, images, params, error, message):
    with pytest.raises(error, match=message):
        unn.explain(conv_model, images[:2], "integrated_gradients", target=0, **params)


# --------------------------------------------------------------------------------------------
# SmoothGrad
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base_method", ["gradient", "gradient_x_input", "lrp.epsilon"])
def test_zero_noise_gives_the_wrapped_method(conv_model, images, base_method):
    target = np.arange(5) % 10
    smooth = unn.explain(conv_model, images[:5], "smoothgrad", target=target, base_method=base_method, sigma=0.0, n_samples=3)
    plain = unn.explain(conv_model, images[:5], base_method, target=target)
    np.testing.assert_allclose(smooth, plain, rtol=1e-5, atol=1e-7)


def test_the_same_seed_gives_the_same_map_and_another_seed_another(conv_model, images):
    first, again, other = (
        unn.explain(conv_model, images[:4], "smoothgrad", target=1, n_samples=8, seed=seed) for seed in (3, 3, 4)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_smoothgrad_batches_like_single_samples(conv_model, images):
    whole = unn.explain(conv_model, images[:6], "smoothgrad", target=2, n_samples=5)
    single = np.concatenate([unn.explain(conv_model, images[i : i + 1], "smoothgrad", target=2, n_samples=5) for i in range(6)])
    np.testing.assert_allclose(whole, single, rtol=1e-5, atol=1e-7)


def test_smoothgrad_is_the_average_over_noisy_copies(conv_model, images):
    """Recompute the estimator by hand from the documented noise: σ times each input's range."""
    x = images[:3]
    noise = np.random.default_rng(7).standard_normal((4, *x.shape[1:])).astype(np.float32)
    scale = 0.2 * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))[:, None, None, None]
    by_hand = np.mean([unn.explain(conv_model, x + scale * n, "gradient", target=0) for n in noise], axis=0)
    smooth = unn.explain(conv_model, x, "smoothgrad", target=0, sigma=0.2, n_samples=4, seed=7)
    np.testing.assert_allclose(smooth, by_hand, rtol=1e-5, atol=1e-7)


def test_smoothgrad_wraps_integrated_gradients(conv_model, images):
    smooth = unn.explain(
        conv_model, images[:2], "smoothgrad", target=0, base_method="integrated_gradients",
        n_samples=2, base_params={"steps": 4},
    )
    plain = unn.explain(conv_model, images[:2], "integrated_gradients", target=0, steps=4)
    assert smooth.shape == plain.shape and not np.allclose(smooth, plain)


@pytest.mark.parametrize(
    "params, error, message",
    [
        ({"sigma": -0.1}, ValueError, "sigma must be non-negative"),
        ({"n_samples": 0}, ValueError, "n_samples must be a positive integer"),
        ({"n_samples": 2.0}, ValueError, "n_samples must be a positive integer"),
        ({"base_method": "smoothgrad"}, ValueError, "cannot wrap itself"),
        ({"base_method": "magic"}, ValueError, "unknown attribution method 'magic'"),
        ({"base_params": {"steps": 0}, "base_method": "integrated_gradients"}, ValueError, "steps must be"),
    ],
)
def test_bad_smoothgrad_parameters_raise(conv_model, images, params, error, message):
    with pytest.raises(error, match=message):
        unn.explain(conv_model, images[:2], "smoothgrad", target=0, **{"n_samples": 2, **params})
