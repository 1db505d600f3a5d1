"""Tests of understanding_nn.attribution: the uniform explain() call and its checks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import understanding_nn as unn
from understanding_nn import attribution, gradients

# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def test_methods_lists_the_gradient_methods():
    names = unn.methods()
    assert {"gradient", "sensitivity", "gradient_x_input"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize(
    ("method", "function"),
    [
        ("gradient", gradients.gradient),
        ("sensitivity", gradients.sensitivity),
        ("gradient_x_input", gradients.gradient_x_input),
    ],
)
def test_explain_dispatches_to_the_method(relu_model, images, method, function):
    relevance = unn.explain(relu_model, images[:4], method=method, target=3)
    assert relevance.shape == images[:4].shape
    assert relevance.dtype == np.float32
    assert np.abs(relevance).sum() > 0
    np.testing.assert_array_equal(relevance, function(relu_model, images[:4], 3))


def test_explain_passes_method_parameters(relu_model, images):
    signed = unn.explain(relu_model, images[:3], "gradient", 2, absolute=False)
    absolute = unn.explain(relu_model, images[:3], "gradient", 2, absolute=True)
    assert (signed < 0).any()
    np.testing.assert_allclose(absolute, np.abs(signed))


def test_explain_unknown_method_lists_the_available_ones(relu_model, images):
    with pytest.raises(ValueError, match="unknown attribution method 'lrp_magic'; available methods: .*gradient.*sensitivity"):
        unn.explain(relu_model, images[:2], "lrp_magic")


def test_explain_method_must_be_a_name(relu_model, images):
    with pytest.raises(TypeError, match="method must be a method name"):
        unn.explain(relu_model, images[:2], gradients.gradient)


def test_explain_unknown_parameter_names_it(relu_model, images):
    with pytest.raises(TypeError, match=r"method 'sensitivity' has no parameter 'absolute'; its parameters are: batch_size"):
        unn.explain(relu_model, images[:2], "sensitivity", absolute=True)
    with pytest.raises(TypeError, match="'epsilon', 'gamma'"):
        unn.explain(relu_model, images[:2], "gradient", gamma=0.1, epsilon=1e-3)


def test_register_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="'gradient' is already registered"):
        attribution.register("gradient")(lambda model, x, target=None: x)
    assert unn.methods().count("gradient") == 1


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


def _per_sample(model, x, targets):
    return np.concatenate([gradients.gradient(model, x[i : i + 1], int(t), absolute=False) for i, t in enumerate(targets)])


def test_int_target_applies_to_every_sample(relu_model, images):
    x = images[:4]
    np.testing.assert_allclose(
        unn.explain(relu_model, x, "gradient", 7, absolute=False), _per_sample(relu_model, x, [7] * 4), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_array_equal(
        unn.explain(relu_model, x, "gradient", np.int64(7)), unn.explain(relu_model, x, "gradient", 7)
    )


@pytest.mark.parametrize("as_type", [list, np.array, tf.constant], ids=["list", "ndarray", "tensor"])
def test_per_sample_targets(relu_model, images, as_type):
    x = images[:4]
    targets = [0, 5, 9, 5]
    relevance = unn.explain(relu_model, x, "gradient", as_type(targets), absolute=False)
    np.testing.assert_allclose(relevance, _per_sample(relu_model, x, targets), rtol=1e-5, atol=1e-7)


def test_none_target_is_the_predicted_class(relu_model, images):
    predicted = np.argmax(relu_model.predict(images, verbose=0), axis=1)
    assert len(set(predicted)) > 1  # the check below distinguishes per-sample classes
    np.testing.assert_array_equal(attribution.resolve_target(relu_model, images, None), predicted)
    np.testing.assert_array_equal(
        unn.explain(relu_model, images, "gradient", None), unn.explain(relu_model, images, "gradient", predicted)
    )


def test_resolve_target_returns_int32_indices(relu_model, images):
    resolved = attribution.resolve_target(relu_model, images[:3], 4)
    assert resolved.dtype == np.int32
    np.testing.assert_array_equal(resolved, [4, 4, 4])


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (10, ValueError, r"target 10 is out of range: the model has 10 classes \(0 to 9\)"),
        (-1, ValueError, r"target -1 is out of range"),
        ([0, 1, 12], ValueError, r"target 12 is out of range"),
        ([0, -3, 1], ValueError, r"target -3 is out of range"),
        (3.0, TypeError, "target must hold integer class indices, got dtype float64"),
        (np.array([1.0, 2.0, 3.0]), TypeError, "target must hold integer class indices, got dtype float64"),
        (True, TypeError, "not a bool"),
        ([0, 1], ValueError, r"target has shape \(2,\); it needs one class index per sample, shape \(3,\)"),
        ([0, 1, 2, 3], ValueError, r"target has shape \(4,\).*shape \(3,\)"),
        (np.eye(10, dtype=np.float32)[[1, 2, 3]], TypeError, r"one-hot labels\? use labels.argmax\(axis=1\)"),
        (np.eye(10, dtype=np.int64)[[1, 2, 3]], ValueError, r"target has shape \(3, 10\).*one-hot labels\? use labels.argmax"),
        ("3", TypeError, "target must hold integer class indices"),
    ],
)
def test_bad_targets_raise_clear_errors(relu_model, images, target, error, message):
    with pytest.raises(error, match=message):
        unn.explain(relu_model, images[:3], "gradient", target)


def test_labels_in_a_column_are_one_label_per_sample(relu_model, images):
    labels = np.array([3, 0, 7], dtype=np.int64)
    as_column = unn.explain(relu_model, images[:3], "gradient", labels[:, None])
    np.testing.assert_array_equal(as_column, unn.explain(relu_model, images[:3], "gradient", labels))
    with pytest.raises(TypeError, match=r"got dtype float64$"):  # no one-hot hint for a column
        unn.explain(relu_model, images[:3], "gradient", labels[:, None].astype(float))
    with pytest.raises(ValueError, match=r"target has shape \(2, 1\)"):
        unn.explain(relu_model, images[:3], "gradient", labels[:2, None])


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def test_wrong_input_shape(relu_model, images):
    with pytest.raises(ValueError, match=r"x has shape \(2, 28, 28\) but model 'relu_net' expects inputs of shape \(N, 28, 28, 1\)"):
        unn.explain(relu_model, images[:2, ..., 0], "gradient", 0)
    with pytest.raises(ValueError, match=r"x has shape \(2, 32, 32, 1\)"):
        unn.explain(relu_model, np.zeros((2, 32, 32, 1), np.float32), "gradient", 0)


def test_single_sample_without_batch_axis(relu_model, images):
    with pytest.raises(ValueError, match=r"a single sample.*use x\[None\] for one sample"):
        unn.explain(relu_model, images[0], "gradient", 0)
    # The advice works.
    assert unn.explain(relu_model, images[0][None], "gradient", 0).shape == (1, 28, 28, 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
def test_integer_input_is_refused_with_advice(relu_model, dtype):
    x = np.zeros((2, 28, 28, 1), dtype=dtype)
    with pytest.raises(TypeError, match=r"explanations need floating-point inputs.*astype\('float32'\) / 255"):
        unn.explain(relu_model, x, "gradient", 0)


def test_non_numeric_input_is_refused(relu_model):
    with pytest.raises(TypeError, match="x must be a floating-point array, got dtype object"):
        unn.explain(relu_model, np.full((2, 28, 28, 1), None, dtype=object), "gradient", 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(relu_model, images, bad):
    x = images[:3].copy()
    x[1, 4, 5, 0] = bad
    x[2, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="x contains 2 NaN or infinite values"):
        unn.explain(relu_model, x, "sensitivity", 0)


def test_empty_batch(relu_model):
    with pytest.raises(ValueError, match=r"x is an empty batch \(0 samples\)"):
        unn.explain(relu_model, np.zeros((0, 28, 28, 1), np.float32), "gradient", 0)


def test_float64_and_tensor_inputs_are_accepted(relu_model, images):
    expected = unn.explain(relu_model, images[:3], "gradient", 1)
    np.testing.assert_allclose(unn.explain(relu_model, images[:3].astype(np.float64), "gradient", 1), expected)
    np.testing.assert_array_equal(unn.explain(relu_model, tf.constant(images[:3]), "gradient", 1), expected)
    validated = attribution.validate_input(relu_model, images[:3].astype(np.float64))
    assert validated.dtype == np.float32


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class _NotKeras:
    def __call__(self, x):
        return x


def test_non_keras_model_is_refused(images):
    with pytest.raises(TypeError, match="model must be a Keras 3 model .*got _NotKeras"):
        unn.explain(_NotKeras(), images[:2], "gradient", 0)


def test_model_with_two_outputs_is_unsupported():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(2)(inputs)], name="two_heads")
    with pytest.raises(unn.UnsupportedModelError, match="'two_heads' has 1 inputs and 2 outputs"):
        unn.explain(model, np.ones((2, 4), np.float32), "gradient", 0)


def test_model_with_two_inputs_is_unsupported():
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Dense(3)(keras.layers.Concatenate()([a, b])), name="two_inputs")
    with pytest.raises(unn.UnsupportedModelError, match="has 2 inputs and 1 outputs"):
        attribution.validate_model(model)


def test_model_with_4d_output_is_unsupported(images):
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(10, 3)(inputs), name="dense_prediction")
    with pytest.raises(unn.UnsupportedModelError, match=r"outputs shape \(None, 26, 26, 10\).*shape \(batch, n_classes\)"):
        unn.explain(model, images[:2], "gradient", 0)


def test_subclassed_model_without_symbolic_graph_is_unsupported(images):
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.flatten = keras.layers.Flatten()
            self.dense = keras.layers.Dense(10)

        def call(self, x):
            return self.dense(self.flatten(x))

    model = Subclassed()
    model(images[:1])
    with pytest.raises(unn.UnsupportedModelError, match="'subclassed' has no symbolic inputs and outputs"):
        unn.explain(model, images[:2], "gradient", 0)


def test_sequential_needs_a_known_input_shape(images):
    unbuilt = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    with pytest.raises(unn.UnsupportedModelError, match="has no symbolic inputs and outputs.*built input shape"):
        unn.explain(unbuilt, images[:2], "gradient", 0)
    unbuilt.build((None, 28, 28, 1))  # a built input shape suffices
    relevance = unn.explain(unbuilt, images[:2], "gradient", 0, absolute=False)
    assert relevance.shape == (2, 28, 28, 1) and np.abs(relevance).sum() > 0


def test_unsupported_model_error_is_a_value_error():
    assert issubclass(unn.UnsupportedModelError, ValueError)


def _with_linear_copy(make_dense_net, **kwargs):
    squashed = make_dense_net(**kwargs)
    linear = make_dense_net(seed=99, **{k: v for k, v in kwargs.items() if k != "final_activation"})
    linear.set_weights(squashed.get_weights())
    return squashed, linear


@pytest.mark.parametrize("squashing", ["softmax", "sigmoid"])
def test_final_dense_squashing_is_stripped(make_dense_net, images, squashing):
    squashed, linear = _with_linear_copy(make_dense_net, final_activation=squashing)
    x = images[:5]
    probabilities = squashed.predict(x, verbose=0)
    if squashing == "softmax":
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    logits = attribution.predict_logits(squashed, x)
    np.testing.assert_allclose(logits, linear.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits, probabilities)
    for method in [m for m in unn.methods() if m not in unn.cam.METHODS]:  # CAMs need convolutions
        np.testing.assert_allclose(
            unn.explain(squashed, x, method, 4), unn.explain(linear, x, method, 4), rtol=1e-5, atol=1e-8
        )


def test_final_dense_softmax_without_bias_is_stripped(make_dense_net, images):
    squashed, linear = _with_linear_copy(make_dense_net, final_activation="softmax", use_bias=False)
    np.testing.assert_allclose(
        gradients.gradient(squashed, images[:3], 2, absolute=False),
        gradients.gradient(linear, images[:3], 2, absolute=False),
        rtol=1e-5,
        atol=1e-8,
    )


@pytest.mark.parametrize(
    "squashing_layer",
    [lambda: keras.layers.Softmax(), lambda: keras.layers.Activation("softmax"), lambda: keras.layers.Activation("sigmoid")],
    ids=["Softmax", "Activation(softmax)", "Activation(sigmoid)"],
)
def test_separate_squashing_layer_is_stripped(make_dense_net, images, squashing_layer):
    linear = make_dense_net(name="linear")
    inputs = keras.Input((28, 28, 1))
    squashed = keras.Model(inputs, squashing_layer()(linear(inputs)), name="squashed")
    x = images[:4]
    np.testing.assert_allclose(attribution.predict_logits(squashed, x), linear.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        gradients.gradient(squashed, x, 6, absolute=False), gradients.gradient(linear, x, 6, absolute=False), rtol=1e-5, atol=1e-8
    )


def test_sequential_model_ending_in_an_activation_layer(make_dense_net, images):
    linear = make_dense_net(name="linear_seq")
    squashed = keras.Sequential([keras.Input((28, 28, 1)), *linear.layers, keras.layers.Activation("softmax")])
    assert squashed.layers[-1].name != linear.layers[-1].name
    x = images[:4]
    np.testing.assert_allclose(attribution.predict_logits(squashed, x), linear.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unn.explain(squashed, x, "sensitivity", 1), unn.explain(linear, x, "sensitivity", 1), rtol=1e-5, atol=1e-10)


def test_functional_model_ending_in_dense_softmax(images):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((28, 28, 1))
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(inputs))
    head = keras.layers.Dense(10, activation="softmax")
    squashed = keras.Model(inputs, head(hidden))
    kernel, bias = head.get_weights()
    body = keras.Model(inputs, hidden)
    expected = body.predict(images[:3], verbose=0) @ kernel + bias
    np.testing.assert_allclose(attribution.predict_logits(squashed, images[:3]), expected, rtol=1e-5, atol=1e-6)


def test_squashing_on_a_non_dense_last_layer_is_unsupported(images):
    class Squash(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.activation = keras.activations.softmax

        def call(self, x):
            return self.activation(x)

    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, Squash()(keras.layers.Dense(10)(keras.layers.Flatten()(inputs))))
    with pytest.raises(unn.UnsupportedModelError, match=r"comes from layer 'squash.*' \(Squash\), which the package cannot trace to the model's logits"):
        unn.explain(model, images[:2], "gradient", 0)


def test_predict_logits_shape_and_values(relu_model, conv_model, images):
    for model in (relu_model, conv_model):
        logits = attribution.predict_logits(model, images)
        assert logits.shape == (12, 10)
        assert logits.dtype == np.float32
        np.testing.assert_allclose(logits, model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        attribution.predict_logits(relu_model, images, batch_size=5), attribution.predict_logits(relu_model, images), rtol=1e-6
    )


def test_predict_logits_validates(relu_model, images):
    with pytest.raises(ValueError, match="NaN or infinite"):
        attribution.predict_logits(relu_model, np.full((1, 28, 28, 1), np.nan, np.float32))
    with pytest.raises(TypeError, match="Keras 3 model"):
        attribution.predict_logits(object(), images)


def test_explain_uses_inference_mode(images):
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.5), keras.layers.Dense(10)]
    )
    first = unn.explain(model, images[:4], "gradient", 0)
    np.testing.assert_array_equal(first, unn.explain(model, images[:4], "gradient", 0))
    # Dropout inactive: the same map as the net without the dropout layer.
    plain = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    plain.set_weights(model.get_weights())
    np.testing.assert_allclose(first, unn.explain(plain, images[:4], "gradient", 0), rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradient", "sensitivity", "gradient_x_input"])
@pytest.mark.parametrize("model_name", ["relu_model", "conv_model"])
def test_batch_size_does_not_change_the_result(request, images, method, model_name):
    model = request.getfixturevalue(model_name)
    x = images[:10]
    targets = np.arange(10) % 10
    whole = unn.explain(model, x, method, targets, batch_size=256)
    split = unn.explain(model, x, method, targets, batch_size=3)
    assert split.shape == whole.shape
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-8)
    one_by_one = unn.explain(model, x, method, targets, batch_size=1)
    np.testing.assert_allclose(one_by_one, whole, rtol=1e-5, atol=1e-8)


def test_batch_size_applies_to_the_predicted_target(relu_model, images):
    np.testing.assert_allclose(
        unn.explain(relu_model, images[:10], "gradient", None, batch_size=3),
        unn.explain(relu_model, images[:10], "gradient", None),
        rtol=1e-5,
        atol=1e-8,
    )


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "8", True, None])
def test_bad_batch_size_raises(relu_model, images, batch_size):
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got"):
        unn.explain(relu_model, images[:3], "gradient", 0, batch_size=batch_size)


def test_numpy_integer_batch_size_is_accepted(relu_model, images):
    np.testing.assert_allclose(
        unn.explain(relu_model, images[:5], "gradient", 0, batch_size=np.int64(2)),
        unn.explain(relu_model, images[:5], "gradient", 0),
        rtol=1e-5,
        atol=1e-8,
    )


def test_predict_probabilities_is_the_softmax_of_the_logits(relu_model, images):
    logits = attribution.predict_logits(relu_model, images)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probabilities = attribution.predict_probabilities(relu_model, images)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    targets = np.arange(len(images)) % 10
    np.testing.assert_allclose(
        attribution.predict_probabilities(relu_model, images, targets), expected[np.arange(len(images)), targets], rtol=1e-5
    )
    with pytest.raises(ValueError, match="target"):
        attribution.predict_probabilities(relu_model, images, 10)
