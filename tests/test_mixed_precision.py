"""Mixed precision: models built under ``mixed_float16`` or ``mixed_bfloat16`` are explained in float32.

Such a model computes its own forward pass in half precision from float32 variables. The
propagation engine runs every layer it calls with a float32 policy and reads the float32
variables, so each method's map of the mixed model must equal the map of its **float32 twin**:
the same architecture with the same weights, built under the float32 policy.

Tolerances. Both maps come from the same float32 operations on the same numbers; they can differ
only by float32 rounding (unit roundoff 6e-8, a few ulps through these small nets), so the
relative error of a map, ``||R - R_twin|| / ||R_twin||``, must stay below ``TOLERANCE = 1e-5``.
Half precision has a unit roundoff of 4.9e-4 (float16) and 3.9e-3 (bfloat16): a propagation
that kept its steps in half precision misses that bound by far, which the conservation test
checks on an LRP-0 whose every step is rounded to the half-precision dtype.

No test runs a float16 operation in TensorFlow: on a CPU without AVX-512 (this one), TensorFlow
logs an error for the first one (oneDNN falls back to Eigen), and the tests write nothing to
stderr. Nor do they need one: the explanations of a ``mixed_float16`` model compute in float32,
the model's half precision is checked on its symbolic output, and half-precision rounding is
done in NumPy. Variables stored in half precision are tested with bfloat16 (the cast up is the
same for float16).

Every model is built under its policy inside a ``try``/``finally`` that restores ``"float32"``,
and an autouse fixture checks after each test that the global policy is float32 again: a policy
left behind would make every later test of the session compute in half precision.
"""

from __future__ import annotations

import collections
import contextlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import understanding_nn as unn
from understanding_nn import lrp as L

Lay = keras.layers

MIXED = ["mixed_float16", "mixed_bfloat16"]
HALF = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
TOLERANCE = 1e-5

# Every method family, with settings that keep the test quick (fewer steps and noisy copies).
METHODS = {
    "gradient": {},
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"n_samples": 3},
    "lrp.epsilon": {},
    "lrp.zplus": {},
    "lrp.alpha_beta": {},
    "lrp.composite": {},
    "deep_taylor": {},
    "deeplift": {},
    "guided_backprop": {},
    "deconvnet": {},
    "grad_cam": {},
    "grad_cam_plus_plus": {},
    "cam": {},
}


@contextlib.contextmanager
def global_policy(name: str):
    """Keras's global dtype policy set to ``name`` inside the block, float32 again after it."""
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(autouse=True)
def _policy_is_float32_after_each_test():
    yield
    left = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    assert left == "float32", f"the test left the global policy at {left!r}"


# --------------------------------------------------------------------------------------------
# Models, each built twice: under the policy, and as its float32 twin with the same weights
# --------------------------------------------------------------------------------------------


def dense_net(bias: bool = True) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((28, 28, 1)), Lay.Flatten(name="flatten"),
        Lay.Dense(32, activation="relu", use_bias=bias, name="hidden1"),
        Lay.Dense(16, activation="relu", use_bias=bias, name="hidden2"),
        Lay.Dense(10, use_bias=bias, name="logits"),
    ], name="dense")


def conv_net() -> keras.Model:
    """Rescaling (a layer Keras computes in the policy's dtype), conv, max-pool, dense."""
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((28, 28, 1)), Lay.Rescaling(0.8),
        Lay.Conv2D(4, 3, padding="same", activation="relu"), Lay.MaxPooling2D(2),
        Lay.Conv2D(8, 3, padding="same", activation="relu"), Lay.MaxPooling2D(2),
        Lay.Flatten(), Lay.Dense(10),
    ], name="conv")


def residual_net() -> keras.Model:
    """A residual block whose batch normalization folds into its convolution, an Add, a batch
    normalization that cannot fold (it reads the Add), a global-average-pooling head."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((28, 28, 1))
    x = Lay.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    y = Lay.Conv2D(4, 3, padding="same")(x)
    y = Lay.ReLU()(Lay.BatchNormalization()(y))
    y = Lay.Conv2D(4, 3, padding="same")(y)
    x = Lay.BatchNormalization()(Lay.ReLU()(Lay.Add()([x, y])))
    x = Lay.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, Lay.Dense(10)(x), name="residual")


def _with_statistics(model: keras.Model) -> keras.Model:
    """Batch normalizations with statistics and scales other than their initial 0 and 1."""
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, Lay.BatchNormalization):
            channels = layer.gamma.shape
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
            layer.beta.assign(rng.normal(0.0, 0.1, channels))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, channels))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels))
    return model


def twins(build, policy: str) -> tuple[keras.Model, keras.Model]:
    """``(twin, model)``: ``build()`` under the float32 policy and under ``policy``, with the same
    weights. Under a policy whose variables are half precision themselves (``"float16"``), the twin
    gets the model's rounded weights, cast up."""
    twin = _with_statistics(build())
    with global_policy(policy):
        model = build()
    model.set_weights(twin.get_weights())
    twin.set_weights([w.astype(np.float32) for w in model.get_weights()])
    return twin, model


def _assert_mixed(model: keras.Model, policy: str) -> None:
    """The model computes in half precision (its symbolic output says so) from float32 variables."""
    assert model.outputs[0].dtype == HALF[policy]
    assert {variable.dtype for variable in model.weights} == {"float32"}


def _relative_error(result: np.ndarray, reference: np.ndarray) -> float:
    norm = float(np.linalg.norm(reference))
    assert norm > 0, "an all-zero reference map would make the comparison empty"
    return float(np.linalg.norm(result.astype(np.float64) - reference)) / norm


def _explain_both(twin, model, x, target, method, params):
    """Both maps, or ``(None, None)`` where both models are refused with the same message (up to
    the numbers Keras appends to the names of the twin's layers)."""
    try:
        expected = unn.explain(twin, x, method, target, **params)
    except unn.propagation.UnsupportedModelError as refusal:
        with pytest.raises(type(refusal)) as raised:
            unn.explain(model, x, method, target, **params)
        unnumbered = lambda message: re.sub(r"_\d+\b", "", message)  # noqa: E731
        assert unnumbered(str(raised.value)) == unnumbered(str(refusal)), method
        return None, None
    return expected, unn.explain(model, x, method, target, **params)


# --------------------------------------------------------------------------------------------
# Every method family on every model
# --------------------------------------------------------------------------------------------


# The methods each model is refused (for both twins): no convolution, or no pooling head for CAM.
REFUSED = {"dense": {"grad_cam", "grad_cam_plus_plus", "cam"}, "conv": {"cam"}, "residual": set()}


@pytest.mark.parametrize("policy", MIXED)
@pytest.mark.parametrize("build", [dense_net, conv_net, residual_net])
def test_every_method_explains_a_mixed_model_as_its_float32_twin(build, policy, digits):
    x, labels = digits
    twin, model = twins(build, policy)
    _assert_mixed(model, policy)
    refused = set()
    for method, params in METHODS.items():
        expected, relevance = _explain_both(twin, model, x, labels, method, params)
        if expected is None:
            refused.add(method)
            continue
        assert relevance.dtype == np.float32 and relevance.shape == x.shape, method
        assert _relative_error(relevance, expected) < TOLERANCE, method
    assert refused == REFUSED[model.name]
    # The predicted class (target None) comes from the same float32 logits.
    np.testing.assert_array_equal(
        unn.attribution.resolve_target(model, x, None), unn.attribution.resolve_target(twin, x, None)
    )
    # Explaining changed no layer's policy: the model still computes as it did.
    assert {layer.dtype_policy.name for layer in model.layers} == {policy}


def test_layers_inside_an_unknown_layer_compute_in_float32_too(digits):
    """A custom layer (kind ``other``, which the gradient methods pass by the chain rule) with a
    Dense inside: the engine runs both with a float32 policy."""

    class Projection(Lay.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = Lay.Dense(12, activation="tanh")

        def call(self, inputs):
            return self.inner(inputs) * 2.0

    def build():
        keras.utils.set_random_seed(4)
        return keras.Sequential([keras.Input((28, 28, 1)), Lay.Flatten(), Projection(), Lay.Dense(10)])

    x, labels = digits
    for policy in MIXED:
        twin, model = twins(build, policy)
        _assert_mixed(model, policy)
        for method in ("gradient", "integrated_gradients"):
            expected, relevance = _explain_both(twin, model, x, labels, method, METHODS[method])
            assert _relative_error(relevance, expected) < TOLERANCE, (policy, method)
        assert {layer.dtype_policy.name for layer in model.layers[1].inner._flatten_layers()} == {policy}


def test_half_precision_variables_are_read_in_float32(digits):
    """Under a policy whose variables are half precision themselves (``"bfloat16"``), every step
    computes in float32 from them: the maps equal those of a float32 model with the same
    (rounded) weights."""
    x, labels = digits
    twin, model = twins(residual_net, "bfloat16")
    assert {variable.dtype for variable in model.weights} == {"bfloat16"}
    for method in ("gradient", "lrp.epsilon", "lrp.alpha_beta", "deeplift", "guided_backprop", "grad_cam", "cam"):
        expected, relevance = _explain_both(twin, model, x, labels, method, METHODS[method])
        assert relevance.dtype == np.float32
        assert _relative_error(relevance, expected) < TOLERANCE, method


@pytest.mark.parametrize("policy", MIXED)
def test_compiled_passes_of_a_mixed_model_are_those_of_its_twin(policy):
    """No cast and no extra pass: the compiled graphs of the mixed model have exactly the
    operations of its float32 twin's, so explaining it costs the same."""
    twin, model = twins(residual_net, policy)

    def operations(function):
        graph = function.get_concrete_function().graph
        return collections.Counter(op.type for op in graph.get_operations())

    composite = L.Composite(L.Epsilon(0.25))
    for compiled in (
        lambda m: L._propagation(m, composite, "lrp.epsilon"),
        unn.gradients.input_gradient,
        lambda m: unn.gradients.relu_backward_pass(m, "guided_backprop"),
    ):
        assert operations(compiled(model)) == operations(compiled(twin))


# --------------------------------------------------------------------------------------------
# Conservation: what half precision would break
# --------------------------------------------------------------------------------------------


def _rounded(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` rounded to the nearest ``dtype`` number (float16 or bfloat16), as float32."""
    if dtype == "float16":
        return values.astype(np.float16).astype(np.float32)
    return tf.cast(tf.cast(values, tf.bfloat16), tf.float32).numpy()


def _half_precision_lrp_0(model: keras.Model, x: np.ndarray, target: np.ndarray, dtype: str) -> np.ndarray:
    """LRP-0 of the bias-free :func:`dense_net` as a propagation that kept every step in the
    model's compute dtype would compute it: each result (the forward pass, z, s = R / z, c = W s
    and R = a c) rounded to ``dtype``, sums accumulated in float32 (as GPUs do)."""
    kernels = [_rounded(layer.kernel.numpy(), dtype) for layer in model.layers if isinstance(layer, Lay.Dense)]
    activations = [_rounded(x.reshape(len(x), -1), dtype)]
    for kernel in kernels[:-1]:
        activations.append(_rounded(np.maximum(activations[-1] @ kernel, 0.0), dtype))
    logits = _rounded(activations[-1] @ kernels[-1], dtype)
    relevance = np.eye(10, dtype=np.float32)[target] * logits
    for kernel, a in zip(reversed(kernels), reversed(activations)):
        z = _rounded(a @ kernel, dtype)
        s = _rounded(np.divide(relevance, z, out=np.zeros_like(z), where=z != 0), dtype)
        relevance = _rounded(a * _rounded(s @ kernel.T, dtype), dtype)
    return relevance


def _conservation_error(relevance: np.ndarray, scores: np.ndarray) -> float:
    """The largest miss of :math:`\\sum_i R_i = S_c`, relative to the largest score."""
    sums = relevance.reshape(len(relevance), -1).astype(np.float64).sum(axis=1)
    return float(np.abs(sums - scores).max() / np.abs(scores).max())


@pytest.mark.parametrize("policy", MIXED)
def test_lrp_0_conserves_relevance_where_half_precision_would_not(policy, mnist_test):
    images, labels = mnist_test
    x, target = images[:64], labels[:64].astype(np.int32)
    twin, model = twins(lambda: dense_net(bias=False), policy)
    scores = unn.attribution.class_scores(twin, x)[np.arange(len(x)), target].astype(np.float64)
    relevance = unn.explain(model, x, "lrp.z", target)
    assert _conservation_error(relevance, scores) < TOLERANCE
    # Every layer passes the whole score on.
    for name, layer_relevance in L.layer_relevances(model, x, target, composite=L.Composite(L.Epsilon(0.0))):
        assert _conservation_error(layer_relevance, scores) < TOLERANCE, name
    # The same rule computed in half precision misses the tolerance by far.
    half = _half_precision_lrp_0(model, x, target, HALF[policy])
    assert _conservation_error(half, scores) > 10 * TOLERANCE


@pytest.mark.parametrize("policy", MIXED)
def test_lrp_epsilon_absorbs_exactly_its_stabilisers_share(policy, mnist_test):
    """On a bias-free chain, each LRP-ε layer passes on :math:`\\sum_k R_k z_k / (z_k + \\epsilon
    \\, \\mathrm{sign}(z_k))` of the relevance :math:`R_k` it receives (the rest is absorbed), with
    :math:`z_k` computed here in float64 from the twin's weights."""
    epsilon = 0.25
    images, labels = mnist_test
    x, target = images[:64], labels[:64].astype(np.int32)
    twin, model = twins(lambda: dense_net(bias=False), policy)
    relevances = dict(L.layer_relevances(model, x, target, composite=L.Composite(L.Epsilon(epsilon))))
    a = x.reshape(len(x), -1).astype(np.float64)
    previous = "flatten"
    for name in ("hidden1", "hidden2", "logits"):
        z = a @ twin.get_layer(name).kernel.numpy().astype(np.float64)
        received = relevances[name].astype(np.float64)
        passed_on = (received * z / (z + epsilon * np.where(z >= 0, 1.0, -1.0))).sum(axis=1)
        got = relevances[previous].reshape(len(x), -1).astype(np.float64).sum(axis=1)
        assert np.abs(got - passed_on).max() < TOLERANCE * np.abs(received.sum(axis=1)).max(), name
        a, previous = np.maximum(z, 0.0), name
