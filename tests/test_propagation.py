"""The shared propagation engine (understanding_nn.propagation) on the models people bring:
residual, branching, nested, 1-D, 3-D, depthwise, separable, transposed, normalised, non-ReLU,
binary. Every identity is checked against an independent computation: autodiff, NumPy, or a
model whose ReLU gradient is overridden with tf.custom_gradient."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import understanding_nn as unn
from understanding_nn import lrp as L
from understanding_nn.propagation import UnsupportedModelError, trace

Lay = keras.layers
RNG = np.random.default_rng(2026)

PROPAGATION_METHODS = [
    "lrp.z", "lrp.epsilon", "lrp.gamma", "lrp.alpha_beta", "lrp.zplus", "lrp.w_square", "lrp.flat",
    "deep_taylor", "lrp.composite", "deeplift", "deconvnet", "guided_backprop",
]


# --------------------------------------------------------------------------------------------
# Models of the kinds people bring
# --------------------------------------------------------------------------------------------


def _seeded(seed):
    keras.utils.set_random_seed(seed)
    return {"kernel_initializer": keras.initializers.RandomNormal(stddev=0.4, seed=seed)}


def residual_net(bias=False, seed=0, activation="relu", norm=False, pool="avg"):
    """Two residual blocks (conv → [BN] → ReLU → conv, + skip, ReLU) and a dense head."""
    init = _seeded(seed)
    inputs = keras.Input((8, 8, 1))
    x = Lay.Conv2D(4, 3, padding="same", use_bias=bias, activation=activation, **init)(inputs)
    for block in range(2):
        y = Lay.Conv2D(4, 3, padding="same", use_bias=bias, **init, name=f"block{block}_a")(x)
        if norm:
            y = Lay.BatchNormalization(center=bias, name=f"block{block}_bn")(y)
        y = Lay.Activation(activation)(y)
        y = Lay.Conv2D(4, 3, padding="same", use_bias=bias, **init, name=f"block{block}_b")(y)
        x = Lay.Activation(activation)(Lay.Add(name=f"block{block}_add")([x, y]))
    x = (Lay.AveragePooling2D(2) if pool == "avg" else Lay.MaxPooling2D(2))(x)
    x = Lay.Flatten()(x)
    return keras.Model(inputs, Lay.Dense(3, use_bias=bias, **init, name="logits")(x), name="residual")


def branching_net(bias=False, seed=1):
    """A branch point read by three branches that meet in a Concatenate, and an Average."""
    init = _seeded(seed)
    inputs = keras.Input((8, 8, 1))
    stem = Lay.Conv2D(3, 3, padding="same", use_bias=bias, activation="relu", **init)(inputs)
    wide = Lay.Conv2D(2, 3, padding="same", use_bias=bias, activation="relu", **init)(stem)
    narrow = Lay.Conv2D(2, 1, use_bias=bias, activation="relu", **init)(stem)
    pooled = Lay.MaxPooling2D(3, strides=1, padding="same")(stem)
    joined = Lay.Concatenate(name="joined")([wide, narrow, pooled])
    mixed = Lay.Average(name="mixed")([Lay.Conv2D(2, 1, use_bias=bias, **init)(joined), wide])
    x = Lay.GlobalAveragePooling2D()(Lay.ReLU()(mixed))
    return keras.Model(inputs, Lay.Dense(3, use_bias=bias, **init)(x), name="branching")


def nested_net(bias=False, seed=2):
    """A Sequential block inside a functional model inside a Sequential."""
    init = _seeded(seed)
    block = keras.Sequential([Lay.Dense(6, use_bias=bias, activation="relu", **init), Lay.Dense(5, use_bias=bias, **init)], name="block")
    inputs = keras.Input((7,))
    hidden = Lay.Dense(6, use_bias=bias, activation="relu", **init)(inputs)
    inner = keras.Model(inputs, Lay.Add()([block(hidden), Lay.Dense(5, use_bias=bias, **init)(hidden)]), name="inner")
    return keras.Sequential([keras.Input((7,)), inner, Lay.ReLU(), Lay.Dense(3, use_bias=bias, **init)], name="outer")


def conv1d_net(bias=False, seed=3):
    init = _seeded(seed)
    return keras.Sequential([
        keras.Input((16, 2)), Lay.Conv1D(4, 3, padding="causal", dilation_rate=2, use_bias=bias, activation="relu", **init),
        Lay.MaxPooling1D(2), Lay.DepthwiseConv1D(3, depth_multiplier=2, use_bias=bias, depthwise_initializer=init["kernel_initializer"]), Lay.LeakyReLU(0.1),
        Lay.GlobalMaxPooling1D(), Lay.Dense(3, use_bias=bias, **init),
    ], name="conv1d")


def depthwise_net(bias=False, seed=4):
    init = _seeded(seed)
    return keras.Sequential([
        keras.Input((8, 8, 2)), Lay.ZeroPadding2D(1), Lay.DepthwiseConv2D(3, depth_multiplier=2, use_bias=bias, activation="relu", depthwise_initializer=init["kernel_initializer"]),
        Lay.SeparableConv2D(3, 3, use_bias=bias, activation="relu", depthwise_initializer=init["kernel_initializer"], pointwise_initializer=init["kernel_initializer"]), Lay.Cropping2D(1),
        Lay.Permute((2, 1, 3)), Lay.Dropout(0.5), Lay.Flatten(), Lay.Dense(3, use_bias=bias, **init),
    ], name="depthwise")


def transposed_net(bias=False, seed=5):
    init = _seeded(seed)
    return keras.Sequential([
        keras.Input((4, 4, 4, 1)), Lay.Conv3D(2, 2, use_bias=bias, activation="relu", **init),
        Lay.Reshape((3, 3, 6)), Lay.Conv2DTranspose(2, 3, strides=2, use_bias=bias, activation="relu", **init),
        Lay.AveragePooling2D(2), Lay.GaussianNoise(0.3), Lay.Flatten(), Lay.Dense(3, use_bias=bias, **init),
    ], name="transposed")


RELU_NETS = [residual_net, branching_net, nested_net, conv1d_net, depthwise_net, transposed_net]


def _inputs(model, n=6, low=0.0, high=1.0, seed=0):
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).uniform(low, high, size=(n, *shape)).astype(np.float32)


def _autodiff_gradient(model, x, target):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.gather(model(x, training=False), target, axis=1, batch_dims=1)
    return tape.gradient(score, x).numpy()


def _sums(r):
    return r.reshape(len(r), -1).sum(axis=1)


# --------------------------------------------------------------------------------------------
# The graph reproduces the model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", RELU_NETS, ids=lambda f: f.__name__)
def test_graph_reproduces_the_model(build):
    model = build(bias=True)
    x = _inputs(model)
    np.testing.assert_allclose(trace(model).logits(tf.constant(x)).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_nested_models_are_looked_through():
    graph = trace(nested_net())
    names = [node.op.name for node in graph.nodes]
    assert any(name.startswith("inner/block/") for name in names), names
    assert not any(isinstance(node.op.layer, keras.Model) for node in graph.nodes)


# --------------------------------------------------------------------------------------------
# Identities on bias-free ReLU networks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", RELU_NETS, ids=lambda f: f.__name__)
def test_lrp_0_equals_gradient_times_input(build):
    model = build()
    x = _inputs(model)
    target = np.arange(len(x)) % 3
    lrp0 = unn.explain(model, x, "lrp.z", target=target)
    gxi = x * _autodiff_gradient(model, x, target)
    assert np.abs(gxi).max() > 1e-3
    np.testing.assert_allclose(lrp0, gxi, rtol=1e-4, atol=1e-5 * np.abs(gxi).max())


@pytest.mark.parametrize("build", RELU_NETS, ids=lambda f: f.__name__)
def test_gradient_composite_equals_autodiff(build):
    model = build(bias=True)
    x = _inputs(model)
    target = np.arange(len(x)) % 3
    engine = unn.gradients.relu_backward_pass(model, "gradient")(x, target.astype(np.int32)).numpy()
    np.testing.assert_allclose(engine, _autodiff_gradient(model, x, target), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method, params", [("lrp.z", {}), ("lrp.epsilon", {"epsilon": 1e-9}), ("lrp.zplus", {})])
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_relevance_is_conserved_through_skip_connections(method, params, pool):
    model = residual_net(pool=pool, seed=7)
    x = _inputs(model, n=12)
    logits = model(x).numpy()
    target = logits.argmax(axis=1)
    relevance = unn.explain(model, x, method, target=target, **params)
    np.testing.assert_allclose(_sums(relevance), logits[np.arange(len(x)), target], rtol=1e-4, atol=1e-5)
    # At every layer of the graph, the relevance of each block's sum equals the logit too.
    layers = dict(L.layer_relevances(model, x, target))
    for block in ("block0_add", "block1_add"):
        np.testing.assert_allclose(_sums(layers[block]), logits[np.arange(len(x)), target], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reference", ["zeros", "blur", "uniform"])
@pytest.mark.parametrize("norm", [False, True])
def test_deeplift_sums_to_delta_on_residual_nets(reference, norm):
    model = residual_net(bias=True, norm=norm, seed=8, activation="relu")
    if norm:
        for layer in model.layers:
            if isinstance(layer, Lay.BatchNormalization):
                shape = layer.moving_mean.shape
                layer.set_weights([RNG.uniform(0.5, 2, shape), RNG.normal(size=shape), RNG.normal(size=shape), RNG.uniform(0.5, 2, shape)])
    x = _inputs(model, n=8)
    target = np.arange(8) % 3
    contributions = unn.explain(model, x, "deeplift", target=target, reference=reference, blur_sigma=1.0)
    x0 = unn.attribution.resolve_reference(x, reference, blur_sigma=1.0)
    rows = np.arange(8)
    delta = model(x).numpy()[rows, target] - model(x0).numpy()[rows, target]
    np.testing.assert_allclose(_sums(contributions), delta, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "tanh", "silu", "elu", "softplus"])
def test_deeplift_sums_to_delta_with_smooth_activations_and_branches(activation):
    model = residual_net(bias=True, seed=9, activation=activation)
    x = _inputs(model, n=6)
    x0 = np.full_like(x, 0.4)
    target = np.arange(6) % 3
    contributions = unn.explain(model, x, "deeplift", target=target, reference=x0)
    rows = np.arange(6)
    delta = model(x).numpy()[rows, target] - model(x0).numpy()[rows, target]
    np.testing.assert_allclose(_sums(contributions), delta, rtol=1e-4, atol=1e-5)
    # LRP on the same model: an element-wise activation passes relevance unchanged.
    layers = dict(L.layer_relevances(model, x, target))
    activation_layers = [layer.name for layer in model.layers if isinstance(layer, Lay.Activation)]
    assert activation_layers
    for name in activation_layers:
        before = model.get_layer(name).input
        producer = before._keras_history.operation.name
        np.testing.assert_allclose(layers[name], layers[producer], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Guided backprop and deconvnet against an override of the ReLU's gradient
# --------------------------------------------------------------------------------------------


@tf.custom_gradient
def _guided_relu(z):
    return tf.nn.relu(z), lambda s: tf.cast(z > 0, s.dtype) * tf.nn.relu(s)


@tf.custom_gradient
def _deconv_relu(z):
    return tf.nn.relu(z), lambda s: tf.nn.relu(s)


def _override_net(relu, seed=10):
    """A residual, branching net whose every ReLU is the layer Activation(relu)."""
    init = _seeded(seed)
    inputs = keras.Input((8, 8, 1))
    x = Lay.Activation(relu)(Lay.Conv2D(4, 3, padding="same", **init)(inputs))
    y = Lay.Activation(relu)(Lay.Conv2D(4, 3, padding="same", **init)(x))
    y = Lay.Conv2D(4, 3, padding="same", **init)(y)
    x = Lay.Activation(relu)(Lay.Add()([x, y]))
    x = Lay.MaxPooling2D(2)(x)
    branch = Lay.Activation(relu)(Lay.Dense(6, **init)(Lay.Flatten()(x)))
    other = Lay.Activation(relu)(Lay.Dense(6, **init)(Lay.Flatten()(x)))
    return keras.Model(inputs, Lay.Dense(3, **init)(Lay.Concatenate()([branch, other])))


@pytest.mark.parametrize("method, override", [("guided_backprop", _guided_relu), ("deconvnet", _deconv_relu)])
def test_modified_backward_passes_match_an_overridden_relu_gradient(method, override):
    model = _override_net("relu")
    reference = _override_net(lambda z: override(z))
    reference.set_weights(model.get_weights())
    x = _inputs(model, n=6)
    target = np.arange(6) % 3
    expected = _autodiff_gradient(reference, x, target)
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(unn.explain(model, x, method, target=target), expected, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Every linear layer against NumPy
# --------------------------------------------------------------------------------------------

LINEAR_LAYERS = {
    "dense_3d": ((5, 4), lambda: Lay.Dense(3)),
    "conv1d_causal": ((9, 2), lambda: Lay.Conv1D(3, 3, padding="causal", dilation_rate=2)),
    "conv2d_strided": ((7, 7, 2), lambda: Lay.Conv2D(3, 3, strides=2, padding="same")),
    "conv2d_first": ((2, 6, 6), lambda: Lay.Conv2D(3, 3, data_format="channels_first")),
    "conv3d": ((4, 4, 4, 1), lambda: Lay.Conv3D(2, 2)),
    "depthwise1d": ((8, 2), lambda: Lay.DepthwiseConv1D(3, depth_multiplier=2)),
    "depthwise2d": ((6, 6, 2), lambda: Lay.DepthwiseConv2D(3, depth_multiplier=3, padding="same")),
    "separable1d": ((8, 2), lambda: Lay.SeparableConv1D(3, 3, depth_multiplier=2)),
    "separable2d": ((6, 6, 2), lambda: Lay.SeparableConv2D(4, 3, depth_multiplier=2)),
    "transpose1d": ((5, 2), lambda: Lay.Conv1DTranspose(3, 3, strides=2)),
    "transpose2d": ((4, 4, 2), lambda: Lay.Conv2DTranspose(3, 3, strides=2, padding="same")),
    "transpose3d": ((3, 3, 3, 1), lambda: Lay.Conv3DTranspose(2, 2)),
}


def _as_matrix(layer, shape):
    """The layer's linear part as a matrix, column k = output k, computed by Keras itself on the
    basis vectors; and its bias as the output at 0."""
    size = int(np.prod(shape))
    basis = np.eye(size, dtype=np.float32).reshape(size, *shape)
    zero = np.asarray(layer(np.zeros((1, *shape), np.float32))).reshape(1, -1).astype(np.float64)
    responses = np.asarray(layer(basis)).reshape(size, -1).astype(np.float64)
    return responses - zero, zero[0]


@pytest.mark.parametrize("name", list(LINEAR_LAYERS))
@pytest.mark.parametrize("rule", [L.Epsilon(0.0), L.Epsilon(0.3), L.Gamma(0.5), L.AlphaBeta(2.0, 1.0, bias=True), L.WSquare(), L.Flat()], ids=repr)
def test_every_linear_layer_against_numpy(name, rule):
    shape, make = LINEAR_LAYERS[name]
    keras.utils.set_random_seed(11)
    inputs = keras.Input(shape)
    layer = make()
    model = keras.Model(inputs, Lay.Flatten()(layer(inputs)))
    layer.bias.assign(np.random.default_rng(12).normal(size=layer.bias.shape) * 0.3)
    op = trace(model).weighted()[0].op
    matrix, bias = _as_matrix(layer, shape)
    a = np.random.default_rng(13).uniform(-1, 1, size=(3, *shape)).astype(np.float32)
    z = a.reshape(3, -1).astype(np.float64) @ matrix + bias
    np.testing.assert_allclose(np.asarray(op.forward(a)).reshape(3, -1), z, rtol=1e-5, atol=1e-5)
    R = np.random.default_rng(14).normal(size=z.shape)
    flat_a = a.reshape(3, -1).astype(np.float64)
    if isinstance(rule, L.Epsilon):
        denominator = z + rule.epsilon * np.where(z >= 0, 1, -1)
        expected = flat_a * ((R / denominator) @ matrix.T)
    elif isinstance(rule, L.Gamma):
        w = matrix + rule.gamma * np.maximum(matrix, 0)
        zg = flat_a @ w + bias + rule.gamma * np.maximum(bias, 0)
        expected = flat_a * ((R / zg) @ w.T)
    elif isinstance(rule, L.AlphaBeta):
        def share(keep):
            contributions = flat_a[:, :, None] * matrix[None]
            part = keep(contributions)
            total = part.sum(axis=1) + keep(bias)[None]
            return (part * np.where(total == 0, 0, R / np.where(total == 0, 1, total))[:, None, :]).sum(axis=2)
        expected = rule.alpha * share(lambda c: np.maximum(c, 0)) - rule.beta * share(lambda c: np.minimum(c, 0))
    else:
        # w² squares the weights; the flat rule spreads over the receptive field (the kernel's
        # support, not the exact zeros of the matrix)
        w = matrix**2 if isinstance(rule, L.WSquare) else _as_matrix_support(op, shape)
        expected = (R / w.sum(axis=0, keepdims=True).clip(1e-30)) @ w.T
    result = rule.propagate(op, tf.constant(a), tf.constant(R.reshape(np.asarray(op.forward(a)).shape), tf.float32))
    result = np.asarray(result).reshape(3, -1)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(result, expected, rtol=1e-3, atol=2e-5 * np.abs(expected).max())


def _as_matrix_support(op, shape):
    """The receptive-field matrix (1 where an input is under an output's kernel) of a step."""
    size = int(np.prod(shape))
    basis = np.eye(size, dtype=np.float32).reshape(size, *shape)
    responses = np.asarray(op.affine(basis, tf.ones_like(op.kernel))).reshape(size, -1)
    return (responses != 0).astype(np.float64)


@pytest.mark.parametrize("name", ["dense_3d", "conv2d_strided", "depthwise2d", "separable2d", "transpose2d", "conv2d_first"])
def test_batch_norm_folds_into_every_weighted_layer(name):
    shape, make = LINEAR_LAYERS[name]
    keras.utils.set_random_seed(15)
    inputs = keras.Input(shape)
    layer = make()
    axis = 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1
    norm = Lay.BatchNormalization(axis=axis, name="bn")
    model = keras.Model(inputs, Lay.Dense(2)(Lay.Flatten()(norm(layer(inputs)))))
    size = norm.moving_mean.shape
    norm.set_weights([RNG.uniform(0.5, 2, size), RNG.normal(size=size), RNG.normal(size=size), RNG.uniform(0.5, 2, size)])
    graph = trace(model)
    assert not any(node.op.kind == "affine" for node in graph.nodes)
    assert "bn" in graph.weighted()[0].op.aliases
    x = _inputs(model, n=3, low=-1)
    np.testing.assert_allclose(graph.logits(tf.constant(x)).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Merges and moving layers against NumPy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("merge, weights", [(Lay.Add, (1, 1)), (Lay.Subtract, (1, -1)), (Lay.Average, (0.5, 0.5))])
@pytest.mark.parametrize("epsilon", [0.0, 0.2])
def test_merge_rules_against_numpy(merge, weights, epsilon):
    """R_i = w_i a_i / (z + ε sign z) · R for z = Σ w_i a_i."""
    op = unn.propagation.MergeOp(None, "merge", weights)
    a = [RNG.normal(size=(3, 5)).astype(np.float32) for _ in weights]
    R = RNG.normal(size=(3, 5)).astype(np.float32)
    z = sum(w * x for w, x in zip(weights, a))
    denominator = z + epsilon * np.where(z >= 0, 1, -1)
    result = L.Epsilon(epsilon).propagate(op, a, R)
    for w, x, r in zip(weights, a, result):
        np.testing.assert_allclose(r.numpy(), w * x / denominator * R, rtol=1e-4, atol=1e-6)
    # and the layer computes the same sum
    layer = merge()
    np.testing.assert_allclose(layer([tf.constant(x) for x in a]).numpy(), z, rtol=1e-6, atol=1e-6)


def test_add_rule_is_switchable():
    """by_type={"merge": rule} changes how an Add shares: z⁺ gives everything to the positive input."""
    inputs = keras.Input((2,))
    left = Lay.Dense(1, use_bias=False, name="left")(inputs)
    right = Lay.Dense(1, use_bias=False, name="right")(inputs)
    model = keras.Model(inputs, Lay.Dense(1, use_bias=False, name="out")(Lay.Add(name="add")([left, right])))
    model.get_layer("left").set_weights([np.array([[3.0], [0.0]])])
    model.get_layer("right").set_weights([np.array([[0.0], [-1.0]])])
    model.get_layer("out").set_weights([np.array([[1.0]])])
    x = np.array([[1.0, 1.0]], np.float32)  # left 3, right -1, sum 2
    default = L.lrp(model, x, 1)
    np.testing.assert_allclose(default, [[3.0, -1.0]], rtol=1e-6)
    positive = L.lrp(model, x, 1, composite=L.Composite(by_type={"merge": L.ZPlus()}))
    np.testing.assert_allclose(positive, [[2.0, 0.0]], rtol=1e-6)


def test_concatenate_splits_relevance_back_along_its_axis():
    inputs = keras.Input((3,))
    a = Lay.Dense(2, use_bias=False, activation="relu")(inputs)
    b = Lay.Dense(3, use_bias=False, activation="relu")(inputs)
    joined = Lay.Concatenate(name="joined")([a, b])
    model = keras.Model(inputs, Lay.Dense(2, use_bias=False)(joined))
    x = _inputs(model, n=4)
    layers = dict(L.layer_relevances(model, x, 0))
    names = [layer.name for layer in model.layers]
    a_name, b_name = names[1], names[2]
    np.testing.assert_allclose(layers["joined"][:, :2], layers[a_name], rtol=1e-6)
    np.testing.assert_allclose(layers["joined"][:, 2:], layers[b_name], rtol=1e-6)


@pytest.mark.parametrize("layer, undo", [
    (Lay.Permute((2, 1)), lambda r: r.transpose(0, 2, 1)),
    (Lay.Cropping1D((1, 2)), lambda r: np.pad(r, ((0, 0), (1, 2), (0, 0)))),
    (Lay.ZeroPadding1D(2), lambda r: r[:, 2:-2]),
    (Lay.Reshape((3, 8)), lambda r: r.reshape(-1, 6, 4)),
])
def test_moving_layers_move_relevance_back(layer, undo):
    inputs = keras.Input((6, 4))
    moved = layer(inputs)
    model = keras.Model(inputs, Lay.Dense(2, use_bias=False)(Lay.Flatten()(moved)))
    x = _inputs(model, n=3)
    layers = dict(L.layer_relevances(model, x, 0))
    np.testing.assert_allclose(layers["input"], undo(layers[layer.name]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layer", [Lay.MaxPooling1D(2), Lay.MaxPooling3D(2), Lay.GlobalMaxPooling2D(), Lay.AveragePooling1D(2), Lay.GlobalAveragePooling3D()], ids=lambda l: type(l).__name__)
@pytest.mark.parametrize("max_pooling", ["winner_take_all", "proportional"])
def test_pooling_in_every_dimension(layer, max_pooling):
    rank = {"MaxPooling1D": 1, "AveragePooling1D": 1, "GlobalMaxPooling2D": 2, "MaxPooling3D": 3, "GlobalAveragePooling3D": 3}[type(layer).__name__]
    shape = {1: (8, 2), 2: (6, 6, 2), 3: (4, 4, 4, 2)}[rank]
    inputs = keras.Input(shape)
    model = keras.Model(inputs, Lay.Dense(2, use_bias=False)(Lay.Flatten()(layer(inputs))))
    x = _inputs(model, n=3, low=0.1)
    R_in = L.lrp(model, x, 0, max_pooling=max_pooling)
    logits = model(x).numpy()
    np.testing.assert_allclose(_sums(R_in), logits[:, 0], rtol=1e-4, atol=1e-6)  # conserved
    pooled = np.asarray(layer(x))
    R_out = dict(L.layer_relevances(model, x, 0, max_pooling=max_pooling))[layer.name]
    if "Max" in type(layer).__name__ and max_pooling == "winner_take_all":
        # all of each window's relevance sits on inputs equal to the window's maximum
        on = R_in != 0
        assert np.isin(x[on], pooled).all()
    else:
        assert np.abs(R_out).max() > 0 and (R_in[x > 0] != 0).any()


# --------------------------------------------------------------------------------------------
# Other layers: normalizations, activations, rescaling
# --------------------------------------------------------------------------------------------


def test_layer_norm_rescaling_and_normalization_pass_relevance():
    keras.utils.set_random_seed(16)
    norm = Lay.Normalization(mean=0.5, variance=0.04)
    model = keras.Sequential([
        keras.Input((6,)), Lay.Rescaling(2.0, offset=-1.0, name="rescale"), norm, Lay.Dense(5, name="d1"),
        Lay.LayerNormalization(name="ln"), Lay.Activation("gelu", name="act"), Lay.Dense(3, name="d2"),
    ])
    x = _inputs(model, n=4)
    graph = trace(model)
    assert [node.op.kind for node in graph.nodes] == ["affine", "affine", "dense", "layer_norm", "activation", "dense"]
    np.testing.assert_allclose(graph.logits(tf.constant(x)).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    layers = dict(L.layer_relevances(model, x, 0))
    np.testing.assert_allclose(layers["ln"], layers["d1"], rtol=1e-6)
    np.testing.assert_allclose(layers["input"], layers[norm.name], rtol=1e-6)
    np.testing.assert_allclose(layers["input"], layers["rescale"], rtol=1e-6)
    for method in PROPAGATION_METHODS:
        kwargs = {"low": -10.0, "high": 10.0} if method in ("deep_taylor", "lrp.composite") else {}
        relevance = unn.explain(model, x, method, target=0, **kwargs)
        assert np.isfinite(relevance).all() and np.abs(relevance).max() > 0, method


@pytest.mark.parametrize("spelling", ["relu", keras.activations.relu, tf.nn.relu, keras.ops.relu, "relu6", tf.nn.relu6, "leaky_relu", tf.nn.leaky_relu])
def test_relu_family_in_every_spelling_gets_the_relu_rules(spelling):
    model = keras.Sequential([keras.Input((6,)), Lay.Dense(8, activation=spelling), Lay.Dense(3)])
    assert [node.op.kind for node in trace(model).nodes] == ["dense", "relu", "dense"]
    x = _inputs(model, n=3, low=-1)
    unn.explain(model, x, "guided_backprop", target=0)


# --------------------------------------------------------------------------------------------
# The logit is found from the graph: every softmax spelling is stripped
# --------------------------------------------------------------------------------------------


def _head(kind):
    """The same network (weights from seed 17) ending in one spelling of a softmax/sigmoid."""
    keras.utils.set_random_seed(17)
    body = [keras.Input((8, 8, 1)), Lay.Conv2D(3, 3, activation="relu"), Lay.Flatten()]
    if kind == "logits":
        return keras.Sequential([*body, Lay.Dense(4)])
    activations = {"string": "softmax", "tf_nn": tf.nn.softmax, "keras_ops": keras.ops.softmax,
                   "keras_activations": keras.activations.softmax, "log_softmax": "log_softmax",
                   "tf_log_softmax": tf.nn.log_softmax, "sigmoid": "sigmoid", "tf_sigmoid": tf.math.sigmoid}
    if kind in activations:
        return keras.Sequential([*body, Lay.Dense(4, activation=activations[kind])])
    if kind == "softmax_layer":
        return keras.Sequential([*body, Lay.Dense(4), Lay.Softmax()])
    if kind == "activation_layer":
        return keras.Sequential([*body, Lay.Dense(4), Lay.Activation("softmax")])
    if kind == "ops_on_tensor":
        inputs = keras.Input((8, 8, 1))
        x = Lay.Flatten()(Lay.Conv2D(3, 3, activation="relu")(inputs))
        return keras.Model(inputs, keras.ops.softmax(Lay.Dense(4)(x)))
    if kind == "nested_functional":
        net = keras.Sequential([*body, Lay.Dense(4, activation="softmax")])
        inputs = keras.Input((8, 8, 1))
        return keras.Model(inputs, net(inputs))
    if kind == "nested_sequential":
        net = keras.Sequential([*body, Lay.Dense(4, activation="softmax")])
        return keras.Sequential([keras.Input((8, 8, 1)), Lay.Rescaling(1.0), net])
    raise ValueError(kind)


HEADS = ["string", "tf_nn", "keras_ops", "keras_activations", "log_softmax", "tf_log_softmax", "sigmoid",
         "tf_sigmoid", "softmax_layer", "activation_layer", "ops_on_tensor", "nested_functional", "nested_sequential"]


@pytest.mark.parametrize("kind", HEADS)
def test_every_softmax_spelling_is_stripped(kind):
    logit_model = _head("logits")
    model = _head(kind)
    model.set_weights(logit_model.get_weights())
    x = _inputs(model, n=3)
    expected = logit_model(x).numpy()
    np.testing.assert_allclose(unn.attribution.predict_logits(model, x), expected, rtol=1e-5, atol=1e-6)
    assert trace(model).squashing in ("softmax", "log_softmax", "sigmoid")
    for method in unn.methods():
        params = {"n_samples": 2} if method == "smoothgrad" else {"steps": 4} if method == "integrated_gradients" else {}
        if method == "cam":
            continue  # needs a global-average-pooling head
        ours = unn.explain(model, x, method, target=1, **params)
        theirs = unn.explain(logit_model, x, method, target=1, **params)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7, err_msg=method)


def test_an_output_that_cannot_be_traced_to_its_logit_is_refused():
    inputs = keras.Input((4,))
    squashed = Lay.Lambda(lambda t: tf.nn.softmax(t), name="hidden_softmax")(Lay.Dense(3)(inputs))
    model = keras.Model(inputs, squashed)
    with pytest.raises(UnsupportedModelError, match="'hidden_softmax' \\(Lambda\\), which the package cannot trace"):
        unn.explain(model, np.ones((1, 4), np.float32), "gradient", target=0)


# --------------------------------------------------------------------------------------------
# Binary classifiers and labels in a column
# --------------------------------------------------------------------------------------------


def test_binary_classifier_with_one_sigmoid_output():
    keras.utils.set_random_seed(18)
    model = keras.Sequential([keras.Input((5,)), Lay.Dense(4, activation="relu"), Lay.Dense(1, activation="sigmoid")])
    x = np.random.default_rng(18).normal(size=(40, 5)).astype(np.float32)
    z = unn.attribution.predict_logits(model, x)[:, 0]
    assert (z > 0).any() and (z < 0).any()
    probabilities = unn.attribution.predict_probabilities(model, x)
    np.testing.assert_allclose(probabilities[:, 1], model(x).numpy()[:, 0], rtol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(unn.attribution.resolve_target(model, x, None), (z > 0).astype(int))
    positive = unn.explain(model, x, "gradient_x_input", target=1)
    negative = unn.explain(model, x, "gradient_x_input", target=0)
    np.testing.assert_allclose(negative, -positive, rtol=1e-6)
    lrp = unn.explain(model, x, "lrp.epsilon", target=np.ones(40, int), epsilon=0.0)
    assert np.isfinite(lrp).all()
    with pytest.raises(ValueError, match="target 2 is out of range: the model has 2 classes"):
        unn.explain(model, x, "gradient", target=2)


def test_labels_in_a_column_are_one_label_per_sample():
    model = residual_net(seed=19)
    x = _inputs(model, n=5)
    labels = np.array([0, 2, 1, 1, 0])
    for method in ("lrp.epsilon", "deeplift", "gradient"):
        np.testing.assert_array_equal(
            unn.explain(model, x, method, target=labels[:, None]), unn.explain(model, x, method, target=labels)
        )


# --------------------------------------------------------------------------------------------
# Writing a rule and a composite; caching by settings as data
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HalfAndHalf(unn.propagation.Rule):
    """A custom merge rule: each input of a two-input Add gets half the relevance."""

    def applies_to(self, op):
        return op.kind == "merge"

    def backward(self, op, record, signal):
        return [0.5 * signal for _ in record.inputs]


def test_a_custom_rule_and_composite_through_explain():
    model = residual_net(seed=20)
    x = _inputs(model, n=4)
    composite = L.Composite(L.Epsilon(0.0), by_type={"merge": HalfAndHalf()})
    relevance = unn.explain(model, x, "lrp.composite", target=0, composite=composite)
    np.testing.assert_allclose(relevance, L.lrp(model, x, 0, composite=composite), rtol=1e-6)
    assert not np.allclose(relevance, unn.explain(model, x, "lrp.z", target=0), atol=1e-5)
    np.testing.assert_allclose(_sums(relevance), model(x).numpy()[:, 0], rtol=1e-4, atol=1e-5)  # still conserving


def test_compiled_propagations_are_cached_by_settings_as_data():
    model = residual_net(seed=21)
    x = _inputs(model, n=2)
    def propagations():
        return [key for key in unn.attribution._COMPILED[model] if key.startswith("lrp:")]

    L.lrp(model, x, 0, composite=L.Composite(L.Epsilon(0.1)))
    before = propagations()
    L.lrp(model, x, 0, composite=L.Composite(L.Epsilon(0.1)))  # an equal composite: no new function
    assert propagations() == before
    L.lrp(model, x, 0, composite=L.Composite(L.Epsilon(0.2)))
    assert len(propagations()) == len(before) + 1
    assert L.Composite(L.Epsilon(0.1)).key() != L.Composite(L.Epsilon(0.2)).key()


def test_a_rule_without_settings_as_data_is_refused():
    class Opaque(unn.propagation.Rule):
        def backward(self, op, record, signal):
            return op.vjp(record.inputs, signal)

    with pytest.raises(TypeError, match="rule Opaque publishes no settings"):
        L.Composite(Opaque()).key()


def test_supported_layers_table_is_generated_from_the_code():
    rows = {row["kind"]: row for row in unn.propagation.supported_layers()}
    assert set(rows) == set(unn.propagation.KINDS) | {"other"}
    assert "Add" in rows["merge"]["layers"] and rows["merge"]["LRP"].startswith("Epsilon")
    assert rows["gate"]["LRP"] == "refused" and rows["gate"]["gradient"] == "Gradient()"
    assert rows["relu"]["guided backprop"] == "GuidedRelu()" and rows["relu"]["DeepLIFT"] == "Rescale()"
    assert rows["other"]["deconvnet"] == "refused"


# --------------------------------------------------------------------------------------------
# Refusals name the layer, its type and the method
# --------------------------------------------------------------------------------------------


def _refused_models():
    inputs = keras.Input((6,))
    gate = keras.Model(inputs, Lay.Dense(2)(Lay.Multiply(name="the_gate")([Lay.Dense(3)(inputs), Lay.Dense(3)(inputs)])))
    maximum = keras.Model(inputs, Lay.Dense(2)(Lay.Maximum(name="the_max")([Lay.Dense(3)(inputs), Lay.Dense(3)(inputs)])))
    gru = keras.Sequential([keras.Input((4, 3)), Lay.GRU(3, name="the_gru"), Lay.Dense(2)])
    attention = keras.Sequential([keras.Input((6,)), Lay.Dense(4), Lay.Softmax(name="the_softmax"), Lay.Dense(2)])
    return {"the_gate": (gate, "Multiply"), "the_max": (maximum, "Maximum"), "the_gru": (gru, "GRU"), "the_softmax": (attention, "Softmax")}


@pytest.mark.parametrize("name", ["the_gate", "the_max", "the_gru", "the_softmax"])
@pytest.mark.parametrize("method", ["lrp.z", "lrp.epsilon", "lrp.alpha_beta", "deep_taylor", "deeplift"])
def test_every_refusal_names_the_layer_its_type_and_the_method(name, method):
    model, layer_type = _refused_models()[name]
    x = np.ones((1, *model.inputs[0].shape[1:]), np.float32) * 0.5
    with pytest.raises(UnsupportedModelError, match=f"'{name}' \\({layer_type}\\) cannot be explained by {method}"):
        unn.explain(model, x, method, target=0)
    unn.explain(model, x, "gradient", target=0)  # the gradient needs no rule


# --------------------------------------------------------------------------------------------
# Inputs outside what a method assumes
# --------------------------------------------------------------------------------------------


def test_float64_inputs_beyond_float32_are_refused():
    model = residual_net(seed=22)
    x = _inputs(model, n=2).astype(np.float64)
    x[0, 0, 0, 0] = 1e300
    with pytest.raises(ValueError, match="beyond float32's range"):
        unn.explain(model, x, "gradient", target=0)


@pytest.mark.parametrize("method, params", [("deeplift", {"reference": "uniform"}), ("integrated_gradients", {"baseline": "uniform"})])
def test_the_uniform_reference_refuses_data_outside_its_range(method, params):
    model = residual_net(seed=23)
    x = _inputs(model, n=2, low=0, high=255)
    with pytest.raises(ValueError, match="draws values in \\[0, 1\\].*x lies in \\[0.*, 25"):
        unn.explain(model, x, method, target=0, **params)


@pytest.mark.parametrize("method", ["deep_taylor", "lrp.composite"])
def test_the_z_box_refuses_inputs_outside_its_box(method):
    model = residual_net(seed=24)
    x = _inputs(model, n=2, low=0, high=255)
    with pytest.raises(ValueError, match="z\\^B rule assumes inputs in \\[0, 1\\], but x lies in \\[0"):
        unn.explain(model, x, method, target=0)
    relevance = unn.explain(model, x, method, target=0, low=0.0, high=255.0)
    assert np.isfinite(relevance).all()


# --------------------------------------------------------------------------------------------
# Every supported layer type in one table
# --------------------------------------------------------------------------------------------

EVERY_LAYER = {
    "Dense": ((6,), lambda: Lay.Dense(5, activation="elu")),
    "Conv1D": ((8, 2), lambda: Lay.Conv1D(3, 3, activation="gelu")),
    "Conv2D": ((6, 6, 2), lambda: Lay.Conv2D(3, 3, activation="silu")),
    "Conv3D": ((4, 4, 4, 1), lambda: Lay.Conv3D(2, 2, activation="tanh")),
    "DepthwiseConv1D": ((8, 2), lambda: Lay.DepthwiseConv1D(3, activation="softplus")),
    "DepthwiseConv2D": ((6, 6, 2), lambda: Lay.DepthwiseConv2D(3, activation="relu6")),
    "SeparableConv1D": ((8, 2), lambda: Lay.SeparableConv1D(3, 3, activation="sigmoid")),
    "SeparableConv2D": ((6, 6, 2), lambda: Lay.SeparableConv2D(3, 3, activation="leaky_relu")),
    "Conv1DTranspose": ((5, 2), lambda: Lay.Conv1DTranspose(3, 3)),
    "Conv2DTranspose": ((4, 4, 2), lambda: Lay.Conv2DTranspose(3, 3)),
    "Conv3DTranspose": ((3, 3, 3, 1), lambda: Lay.Conv3DTranspose(2, 2)),
    "BatchNormalization": ((6,), lambda: Lay.BatchNormalization()),
    "Rescaling": ((6,), lambda: Lay.Rescaling(0.5, offset=0.1)),
    "Normalization": ((6,), lambda: Lay.Normalization(mean=0.2, variance=2.0)),
    "LayerNormalization": ((6,), lambda: Lay.LayerNormalization()),
    "MaxPooling1D": ((8, 2), lambda: Lay.MaxPooling1D(2)),
    "MaxPooling2D": ((6, 6, 2), lambda: Lay.MaxPooling2D(2)),
    "MaxPooling3D": ((4, 4, 4, 1), lambda: Lay.MaxPooling3D(2)),
    "AveragePooling1D": ((8, 2), lambda: Lay.AveragePooling1D(2)),
    "AveragePooling2D": ((6, 6, 2), lambda: Lay.AveragePooling2D(2)),
    "AveragePooling3D": ((4, 4, 4, 1), lambda: Lay.AveragePooling3D(2)),
    "GlobalMaxPooling1D": ((8, 2), lambda: Lay.GlobalMaxPooling1D()),
    "GlobalAveragePooling2D": ((6, 6, 2), lambda: Lay.GlobalAveragePooling2D(keepdims=True)),
    "GlobalMaxPooling3D": ((4, 4, 4, 1), lambda: Lay.GlobalMaxPooling3D()),
    "Flatten": ((3, 2), lambda: Lay.Flatten()),
    "Reshape": ((6,), lambda: Lay.Reshape((2, 3))),
    "Permute": ((3, 2), lambda: Lay.Permute((2, 1))),
    "ZeroPadding2D": ((4, 4, 1), lambda: Lay.ZeroPadding2D(1)),
    "Cropping3D": ((4, 4, 4, 1), lambda: Lay.Cropping3D(1)),
    "Dropout": ((6,), lambda: Lay.Dropout(0.5)),
    "SpatialDropout2D": ((4, 4, 2), lambda: Lay.SpatialDropout2D(0.5)),
    "GaussianNoise": ((6,), lambda: Lay.GaussianNoise(1.0)),
    "ReLU": ((6,), lambda: Lay.ReLU(max_value=0.8, negative_slope=0.1)),
    "LeakyReLU": ((6,), lambda: Lay.LeakyReLU(0.2)),
    "PReLU": ((6,), lambda: Lay.PReLU(alpha_initializer=keras.initializers.Constant(0.3))),
    "ELU": ((6,), lambda: Lay.ELU()),
    "Activation": ((6,), lambda: Lay.Activation(tf.nn.gelu)),
}


@pytest.mark.parametrize("name", list(EVERY_LAYER))
def test_every_supported_layer(name):
    """Each layer type in a small model: the graph computes what Keras computes, every method
    gives finite maps, and the identities hold where they must (LRP-0 conserves on a bias-free
    head; the gradient composite equals autodiff; DeepLIFT sums to delta without max-pooling)."""
    shape, make = EVERY_LAYER[name]
    keras.utils.set_random_seed(30)
    inputs = keras.Input(shape)
    layer = make()
    outputs = Lay.Dense(3, use_bias=False)(Lay.Flatten()(layer(inputs)))
    model = keras.Model(inputs, outputs)
    assert type(layer).__name__ == name
    graph = trace(model)
    kinds = {node.op.kind for node in graph.nodes}
    assert "other" not in kinds
    x = _inputs(model, n=4, low=0.05, high=1.0)
    np.testing.assert_allclose(graph.logits(tf.constant(x)).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    target = np.array([0, 1, 2, 0])
    engine = unn.gradients.relu_backward_pass(model, "gradient")(x, target.astype(np.int32)).numpy()
    np.testing.assert_allclose(engine, _autodiff_gradient(model, x, target), rtol=1e-4, atol=1e-6)
    for method in PROPAGATION_METHODS:
        # The box of z^B must hold what the first weighted layer reads (normalised values here).
        box = {"low": -10.0, "high": 10.0} if method in ("deep_taylor", "lrp.composite") else {}
        relevance = unn.explain(model, x, method, target=target, **box)
        assert relevance.shape == x.shape and np.isfinite(relevance).all(), method
    if "MaxPooling" not in name:
        x0 = np.full_like(x, 0.3)
        contributions = unn.explain(model, x, "deeplift", target=target, reference=x0)
        rows = np.arange(4)
        delta = model(x).numpy()[rows, target] - model(x0).numpy()[rows, target]
        np.testing.assert_allclose(_sums(contributions), delta, rtol=1e-4, atol=1e-5)


def test_deeplift_with_max_pooling_is_exact_only_where_the_winners_agree():
    """The condition the docstring states: with a zero reference a bias-free ReLU net has zero
    activations, every window's winner at x carries the whole difference and the sum is exact;
    with a blurred reference the winners move and the sum misses."""
    model = residual_net(pool="max", seed=31)
    x = _inputs(model, n=8)
    target = np.arange(8) % 3
    rows = np.arange(8)
    for reference, exact in (("zeros", True), ("blur", False)):
        contributions = unn.explain(model, x, "deeplift", target=target, reference=reference, blur_sigma=1.0)
        x0 = unn.attribution.resolve_reference(x, reference, blur_sigma=1.0)
        delta = model(x).numpy()[rows, target] - model(x0).numpy()[rows, target]
        error = np.abs(_sums(contributions) - delta).max() / np.abs(delta).max()
        assert (error < 1e-4) == exact, (reference, error)


def test_the_z_box_is_checked_where_the_first_layer_reads_its_input():
    """After a Normalization the first convolution reads standardised values, outside [0, 1]:
    deep Taylor's box is checked there, not on the raw input."""
    keras.utils.set_random_seed(32)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), Lay.Normalization(mean=0.5, variance=0.05, name="standardise"),
        Lay.Conv2D(3, 3, activation="relu"), Lay.Flatten(), Lay.Dense(3),
    ])
    x = _inputs(model, n=3)
    with pytest.raises(ValueError, match="output of layer 'standardise', which the z\\^B layer reads, lies in"):
        unn.explain(model, x, "deep_taylor", target=0)
    assert np.isfinite(unn.explain(model, x, "deep_taylor", target=0, low=-3.0, high=3.0)).all()
