"""DeepLIFT (Rescale rule): summation-to-delta, references, equivalences, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import understanding_nn as unn


def avg_pool_net(seed: int = 4, use_bias: bool = True) -> keras.Model:
    """Convolutions, average pooling, a ReLU layer and dense layers, all with biases: every layer
    is linear or a ReLU, so summation-to-delta must hold exactly."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", use_bias=use_bias),
            keras.layers.AveragePooling2D(2),
            keras.layers.Conv2D(6, 3, padding="same", use_bias=use_bias),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu", use_bias=use_bias),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, use_bias=use_bias),
        ]
    )


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return avg_pool_net()


def delta(model, x, x0, target):
    rows = np.arange(len(x))
    return (
        unn.attribution.predict_logits(model, x)[rows, target]
        - unn.attribution.predict_logits(model, x0)[rows, target]
    )


@pytest.mark.parametrize("reference", ["zeros", "blur", "uniform", "mean", "per_sample"])
def test_summation_to_delta(model, images, reference):
    x = images[:6]
    target = np.arange(6) % 10
    if reference == "mean":
        reference = images.mean(axis=0)
    elif reference == "per_sample":
        reference = images[6:12]
    contributions = unn.explain(model, x, "deeplift", target=target, reference=reference)
    x0 = unn.attribution.resolve_reference(x, reference)
    expected = delta(model, x, x0, target)
    assert np.abs(expected).min() > 1e-4  # the check below is not trivially 0 = 0
    np.testing.assert_allclose(contributions.sum(axis=(1, 2, 3)), expected, rtol=1e-4, atol=1e-6)


def test_summation_to_delta_on_the_trained_strided_cnn(mnist_test):
    model = unn.models.load("cnn_stride2")
    x, y = mnist_test[0][:32], mnist_test[1][:32]
    contributions = unn.explain(model, x, "deeplift", target=y)
    expected = delta(model, x, np.zeros_like(x), y)
    np.testing.assert_allclose(contributions.sum(axis=(1, 2, 3)), expected, rtol=1e-4, atol=1e-4)


def test_zero_reference_on_a_bias_free_relu_net_equals_gradient_times_input(images):
    model = avg_pool_net(seed=5, use_bias=False)
    target = np.arange(len(images)) % 10
    deeplift = unn.explain(model, images, "deeplift", target=target)
    gradient_x_input = unn.explain(model, images, "gradient_x_input", target=target)
    np.testing.assert_allclose(deeplift, gradient_x_input, rtol=1e-4, atol=1e-6)


def test_rescale_differs_from_the_gradient_at_a_saturated_relu():
    """y = relu(x1 + x2 - 1) at x = (0.4, 0.4) against x0 = (1, 1): the ReLU is off at x, so the
    gradient is 0, but the output changed from 1 to 0 and DeepLIFT assigns -0.5 to each input."""
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(1, activation="relu")(inputs)
    logits = keras.layers.Dense(1, use_bias=False)(hidden)
    model = keras.Model(inputs, logits)
    model.layers[1].set_weights([np.ones((2, 1)), np.array([-1.0])])
    model.layers[2].set_weights([np.ones((1, 1))])
    x = np.array([[0.4, 0.4]], dtype=np.float32)
    # One logit: target 1 explains the logit itself (target 0 its negative, the other class).
    contributions = unn.explain(model, x, "deeplift", target=1, reference=np.array([1.0, 1.0]))
    np.testing.assert_allclose(contributions, [[-0.5, -0.5]], atol=1e-6)
    assert np.abs(unn.explain(model, x, "gradient", target=1)).max() == 0


def test_batched_equals_per_sample(model, images):
    target = np.arange(len(images)) % 10
    whole = unn.explain(model, images, "deeplift", target=target, reference="blur")
    one_by_one = np.concatenate(
        [unn.explain(model, images[i : i + 1], "deeplift", target=target[i : i + 1], reference="blur") for i in range(len(images))]
    )
    small_batches = unn.explain(model, images, "deeplift", target=target, reference="blur", batch_size=5)
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(whole, small_batches, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "reference, error, message",
    [
        ("black", ValueError, "reference must be 'zeros', 'blur', 'uniform' or an array"),
        (np.zeros((27, 28, 1)), ValueError, r"reference has shape \(27, 28, 1\)"),
        (np.zeros((3, 28, 28, 1)), ValueError, r"one per sample, shape \(4, 28, 28, 1\)"),
        (np.full((28, 28, 1), np.nan), ValueError, "NaN"),
        (np.array([["a"]]), TypeError, "reference must be numeric"),
    ],
)
def test_bad_references_raise(model, images, reference, error, message):
    with pytest.raises(error, match=message):
        unn.explain(model, images[:4], "deeplift", target=0, reference=reference)


def test_bad_blur_sigma_raises(model, images):
    with pytest.raises(ValueError, match="sigma must be positive"):
        unn.explain(model, images[:2], "deeplift", target=0, reference="blur", blur_sigma=0.0)


def test_unsupported_layer_is_refused(images):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    flat = keras.layers.Flatten()(inputs)
    gated = keras.layers.Multiply(name="the_gate")([keras.layers.Dense(5)(flat), keras.layers.Dense(5, activation="sigmoid")(flat)])
    model = keras.Model(inputs, keras.layers.Dense(10)(gated))
    with pytest.raises(unn.UnsupportedModelError, match="'the_gate' \\(Multiply\\) cannot be explained by deeplift"):
        unn.explain(model, images[:2], "deeplift", target=0)


@pytest.mark.parametrize("activation", ["tanh", "gelu", "elu", "sigmoid", "softplus", "silu", "leaky_relu"])
def test_summation_to_delta_through_any_elementwise_activation(images, activation):
    """The Rescale rule makes every element-wise activation exact: Σ C = S_c(x) - S_c(x0)."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(16, activation=activation),
                              keras.layers.Dense(8, activation=activation), keras.layers.Dense(10)])
    reference = np.full((28, 28, 1), 0.3, np.float32)
    targets = np.arange(8) % 10
    contributions = unn.explain(model, images[:8], "deeplift", target=targets, reference=reference)
    expected = delta(model, images[:8], np.broadcast_to(reference, images[:8].shape), targets)
    np.testing.assert_allclose(contributions.sum(axis=(1, 2, 3)), expected, rtol=1e-4, atol=1e-5)
    # The gradient would not be exact: DeepLIFT differs from gradient x (x - x0) (the check can fail).
    gradient = unn.explain(model, images[:8], "gradient", target=targets, absolute=False)
    assert not np.allclose(contributions, gradient * (images[:8] - reference), atol=1e-4)
