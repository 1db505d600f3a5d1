"""Tests of understanding_nn.gradients: gradient (saliency), sensitivity and gradient × input."""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import pytest

import understanding_nn as unn
from understanding_nn import attribution, gradients
from understanding_nn.models import circle_model

TARGETS = np.array([1, 4, 7])


@pytest.fixture(scope="module")
def x3(images):
    return images[:3]


@pytest.fixture(scope="module")
def smooth_gradient(smooth_model, x3):
    return gradients.gradient(smooth_model, x3, TARGETS, absolute=False)


# --------------------------------------------------------------------------------------------
# The gradient against finite differences
# --------------------------------------------------------------------------------------------


def test_gradient_matches_float32_central_differences(smooth_model, x3, smooth_gradient):
    """Central differences through the model itself (float32, step 1e-2) on 40 random pixels."""
    step = 1e-2
    coordinates = np.random.default_rng(1).choice(28 * 28, size=40, replace=False)
    for n, target in enumerate(TARGETS):
        shifted = np.repeat(x3[n].reshape(1, -1), 2 * len(coordinates), axis=0)
        for k, i in enumerate(coordinates):
            shifted[2 * k, i] += step
            shifted[2 * k + 1, i] -= step
        scores = attribution.predict_logits(smooth_model, shifted.reshape(-1, 28, 28, 1))[:, target]
        finite_difference = (scores[0::2] - scores[1::2]) / (2 * step)
        analytic = smooth_gradient[n].reshape(-1)[coordinates]
        assert np.abs(analytic).max() > 1e-2  # the comparison is not between zeros
        # Observed error about 1.3e-5 against gradients of about 2e-2.
        np.testing.assert_allclose(analytic, finite_difference, rtol=0, atol=1e-4)


def test_gradient_matches_float64_central_differences(smooth_model, x3, smooth_gradient):
    """Central differences of a float64 NumPy replica of the model, on every pixel."""
    w1, b1, w2, b2, w3, b3 = (w.astype(np.float64) for w in smooth_model.get_weights())

    def logits(v):
        hidden = np.logaddexp(0.0, np.tanh(v @ w1 + b1) @ w2 + b2)  # tanh, then softplus
        return hidden @ w3 + b3

    step = 1e-5
    eye = np.eye(28 * 28)
    for n, target in enumerate(TARGETS):
        v = x3[n].reshape(-1).astype(np.float64)
        np.testing.assert_allclose(logits(v[None])[0], smooth_model.predict(x3[n : n + 1], verbose=0)[0], rtol=1e-5, atol=1e-6)
        finite_difference = (logits(v + step * eye)[:, target] - logits(v - step * eye)[:, target]) / (2 * step)
        # Observed error about 2e-8 against gradients up to 7e-2 (float32 gradient, float64 reference).
        np.testing.assert_allclose(smooth_gradient[n].reshape(-1), finite_difference, rtol=1e-4, atol=1e-7)


def test_gradient_of_a_linear_model_is_its_weight_column(images):
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    kernel, _ = model.get_weights()
    relevance = gradients.gradient(model, images[:2], 3, absolute=False)
    for sample in relevance:
        np.testing.assert_allclose(sample.reshape(-1), kernel[:, 3], rtol=1e-6)


# --------------------------------------------------------------------------------------------
# The three methods from one gradient
# --------------------------------------------------------------------------------------------


def test_gradient_defaults_to_the_absolute_value(smooth_model, x3, smooth_gradient):
    assert (smooth_gradient < 0).any() and (smooth_gradient > 0).any()
    saliency = gradients.gradient(smooth_model, x3, TARGETS)
    assert (saliency >= 0).all()
    np.testing.assert_array_equal(saliency, np.abs(smooth_gradient))
    np.testing.assert_array_equal(unn.explain(smooth_model, x3, "gradient", TARGETS), saliency)


def test_sensitivity_is_the_squared_gradient(smooth_model, conv_model, x3, smooth_gradient):
    np.testing.assert_allclose(gradients.sensitivity(smooth_model, x3, TARGETS), smooth_gradient**2, rtol=1e-6)
    conv_gradient = gradients.gradient(conv_model, x3, TARGETS, absolute=False)
    np.testing.assert_allclose(unn.explain(conv_model, x3, "sensitivity", TARGETS), conv_gradient**2, rtol=1e-6)


def test_gradient_x_input_is_input_times_gradient(smooth_model, conv_model, x3, smooth_gradient):
    np.testing.assert_allclose(gradients.gradient_x_input(smooth_model, x3, TARGETS), x3 * smooth_gradient, rtol=1e-6)
    conv_gradient = gradients.gradient(conv_model, x3, TARGETS, absolute=False)
    np.testing.assert_allclose(unn.explain(conv_model, x3, "gradient_x_input", TARGETS), x3 * conv_gradient, rtol=1e-6)


def test_sensitivity_sums_to_the_squared_gradient_norm(relu_model, digits):
    x, labels = digits
    relevance = gradients.sensitivity(relu_model, x, labels)
    norms = np.linalg.norm(gradients.gradient(relu_model, x, labels).reshape(len(x), -1), axis=1)
    np.testing.assert_allclose(relevance.reshape(len(x), -1).sum(axis=1), norms**2, rtol=1e-5)


@pytest.mark.parametrize("model_name", ["bias_free_relu_model", "conv_bias_free"])
def test_gradient_x_input_is_conservative_without_biases(request, model_name, digits):
    """Euler: a bias-free ReLU net is positively homogeneous, so sum_i x_i dS_c/dx_i = S_c(x)."""
    if model_name == "conv_bias_free":
        keras.utils.set_random_seed(7)
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(4, 3, padding="same", activation="relu", use_bias=False),
                keras.layers.MaxPooling2D(2),
                keras.layers.Flatten(),
                keras.layers.Dense(16, activation="relu", use_bias=False),
                keras.layers.Dense(10, use_bias=False),
            ]
        )
    else:
        model = request.getfixturevalue(model_name)
    x, _ = digits
    logits = attribution.predict_logits(model, x)
    for target in (0, 3, 9):
        relevance = gradients.gradient_x_input(model, x, target)
        totals = relevance.reshape(len(x), -1).sum(axis=1, dtype=np.float64)
        assert np.abs(logits[:, target]).min() > 1e-3
        np.testing.assert_allclose(totals, logits[:, target], rtol=1e-4, atol=1e-6)


def test_gradient_x_input_is_not_conservative_with_biases(make_dense_net, digits):
    """The control for the test above: with biases the sum misses the bias terms."""
    model = make_dense_net((32, 16), use_bias=True, seed=8)
    model.set_weights([w if w.ndim > 1 else np.full_like(w, 0.5) for w in model.get_weights()])
    x, _ = digits
    totals = gradients.gradient_x_input(model, x, 0).reshape(len(x), -1).sum(axis=1)
    assert not np.allclose(totals, attribution.predict_logits(model, x)[:, 0], rtol=1e-2)


# --------------------------------------------------------------------------------------------
# The circle toy worked out by hand (chapter 2.1): S_1(x) = x1² + x2² - r², gradient 2x
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def circle():
    return circle_model()


def test_circle_model_logits(circle):
    points = np.array([[-1.0, 1.0], [-4.0, -4.0], [0.0, 3.0]], dtype=np.float32)
    g = (points**2).sum(axis=1) - 9.0
    np.testing.assert_allclose(attribution.predict_logits(circle, points), np.stack([-g, g], axis=1), rtol=1e-6)


def test_circle_gradient_and_sensitivity_by_hand(circle):
    points = np.array([[-1.0, 1.0], [-4.0, -4.0]], dtype=np.float32)
    np.testing.assert_allclose(gradients.gradient(circle, points, 1, absolute=False), [[-2.0, 2.0], [-8.0, -8.0]], rtol=1e-6)
    np.testing.assert_allclose(gradients.gradient(circle, points, 0, absolute=False), [[2.0, -2.0], [8.0, 8.0]], rtol=1e-6)
    np.testing.assert_allclose(gradients.gradient(circle, points, 1), [[2.0, 2.0], [8.0, 8.0]], rtol=1e-6)
    np.testing.assert_allclose(gradients.sensitivity(circle, points, 1), [[4.0, 4.0], [64.0, 64.0]], rtol=1e-6)
    np.testing.assert_allclose(unn.explain(circle, points, "sensitivity", 1), [[4.0, 4.0], [64.0, 64.0]], rtol=1e-6)
    # gradient × input: x * 2x = 2x², summing to 2‖x‖² (twice the homogeneous part, Euler for degree 2).
    np.testing.assert_allclose(gradients.gradient_x_input(circle, points, 1), [[2.0, 2.0], [32.0, 32.0]], rtol=1e-6)


def test_circle_gradient_for_every_point(circle):
    points, _ = unn.data.circle_toy(50, seed=1)
    np.testing.assert_allclose(gradients.gradient(circle, points, 1, absolute=False), 2 * points, rtol=1e-5, atol=1e-6)
    radius_5 = circle_model(radius=5.0)
    np.testing.assert_allclose(attribution.predict_logits(radius_5, points)[:, 1], (points**2).sum(axis=1) - 25.0, rtol=1e-5, atol=1e-4)


def test_circle_predicted_class_matches_the_toy_labels(circle):
    points, labels = unn.data.circle_toy(200, seed=2)
    np.testing.assert_array_equal(attribution.resolve_target(circle, points, None), labels)


# --------------------------------------------------------------------------------------------
# Class specificity, batching, caching
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradient", "sensitivity", "gradient_x_input"])
def test_maps_are_class_specific(relu_model, conv_model, digits, method):
    x, _ = digits
    for model in (relu_model, conv_model):
        first = unn.explain(model, x, method, 2)
        second = unn.explain(model, x, method, 8)
        for a, b in zip(first, second):
            assert not np.allclose(a, b, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("method", ["gradient", "sensitivity", "gradient_x_input"])
def test_batched_equals_per_sample(relu_model, conv_model, digits, method):
    x, labels = digits
    for model in (relu_model, conv_model):
        batched = unn.explain(model, x, method, labels)
        single = np.concatenate([unn.explain(model, x[i : i + 1], method, labels[i : i + 1]) for i in range(len(x))])
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-8)


def test_input_gradient_is_compiled_once_per_model(relu_model, conv_model):
    first = gradients.input_gradient(relu_model)
    assert gradients.input_gradient(relu_model) is first
    assert gradients.input_gradient(conv_model) is not first


def test_compiled_functions_do_not_keep_the_model_alive(make_dense_net, images):
    model = make_dense_net(final_activation="softmax", seed=11)
    for method in [m for m in unn.methods() if m not in unn.cam.METHODS]:  # CAMs need convolutions
        unn.explain(model, images[:2], method, None)
    reference = weakref.ref(model)
    del model
    gc.collect()
    assert reference() is None
