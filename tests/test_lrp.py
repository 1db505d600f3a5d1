"""Tests of understanding_nn.lrp: relevance propagation (LRP) and deep Taylor decomposition.

Every defining property of the engine is checked on small seeded models: conservation, the
identities between rules (LRP-0 = gradient × input, z⁺ = α1β0), each rule against an
independent float64 NumPy computation of its formula (convolutions unrolled with explicit loops
over positions and receptive fields), batch-norm folding, the refusal of unsupported layers,
the absence of NaN, batching, parameters and composites, and a quick check on a trained model.
"""

from __future__ import annotations

import gc
import math
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

import understanding_nn as unn
from understanding_nn import lrp as L
from understanding_nn.attribution import UnsupportedModelError, predict_logits

PRESETS = [
    "lrp.z", "lrp.epsilon", "lrp.gamma", "lrp.alpha_beta", "lrp.zplus",
    "lrp.w_square", "lrp.flat", "deep_taylor", "lrp.composite",
]

# --------------------------------------------------------------------------------------------
# Small seeded models
# --------------------------------------------------------------------------------------------

IMAGE = (10, 10, 1)
N_CLASSES = 5


def _dense_net(*, use_bias=False, seed=0, name="dense"):
    keras.utils.set_random_seed(seed)
    bias = {"bias_initializer": keras.initializers.RandomNormal(stddev=0.1)} if use_bias else {}
    return keras.Sequential(
        [
            keras.Input(IMAGE),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu", use_bias=use_bias, **bias),
            keras.layers.Dense(12, activation="relu", use_bias=use_bias, **bias),
            keras.layers.Dense(N_CLASSES, use_bias=use_bias, **bias),
        ],
        name=name,
    )


def _conv_net(kind, *, use_bias=False, seed=0):
    """A small ReLU CNN on 10×10×1: ``kind`` is "max", "avg", "gap" or "strided"."""
    keras.utils.set_random_seed(seed)
    bias = {"bias_initializer": keras.initializers.RandomNormal(stddev=0.1)} if use_bias else {}

    def conv(filters, size, strides=1):
        return keras.layers.Conv2D(
            filters, size, strides=strides, padding="same", activation="relu", use_bias=use_bias, **bias
        )

    if kind in ("max", "avg"):
        pool = keras.layers.MaxPooling2D if kind == "max" else keras.layers.AveragePooling2D
        # The second pooling pads (5 → 3), as in the zoo's CNN (7 → 4).
        body = [conv(4, 3), pool(2), conv(6, 3), pool(2, padding="same"), keras.layers.Flatten()]
    elif kind == "gap":
        body = [conv(4, 3), conv(6, 3), keras.layers.GlobalAveragePooling2D()]
    elif kind == "strided":
        body = [conv(4, 3, strides=2), conv(6, 4, strides=2), keras.layers.Flatten()]
    else:
        raise ValueError(kind)
    return keras.Sequential(
        [keras.Input(IMAGE), *body, keras.layers.Dense(N_CLASSES, use_bias=use_bias, **bias)],
        name=f"conv_{kind}{'_bias' if use_bias else ''}",
    )


_BUILDERS = {
    "dense": lambda: _dense_net(seed=0),
    "conv_max": lambda: _conv_net("max", seed=1),
    "conv_avg": lambda: _conv_net("avg", seed=2),
    "conv_gap": lambda: _conv_net("gap", seed=3),
    "conv_strided": lambda: _conv_net("strided", seed=4),
    "dense_bias": lambda: _dense_net(use_bias=True, seed=5, name="dense_bias"),
    "conv_max_bias": lambda: _conv_net("max", use_bias=True, seed=6),
    "conv_avg_bias": lambda: _conv_net("avg", use_bias=True, seed=7),
    "conv_gap_bias": lambda: _conv_net("gap", use_bias=True, seed=8),
}


@pytest.fixture(scope="module")
def model_zoo():
    """Lazily built small models, shared by the tests of this module (compiled functions too)."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = _BUILDERS[name]()
        return built[name]

    return get


@pytest.fixture(scope="module")
def unit_images():
    """Eight random 10×10×1 images in [0, 1]."""
    return np.random.default_rng(0).random((8, *IMAGE), dtype=np.float32)


def _relative_error(total, logit):
    return np.abs(total - logit) / np.abs(logit)


def _sums(relevance):
    return relevance.reshape(len(relevance), -1).astype(np.float64).sum(axis=1)


# --------------------------------------------------------------------------------------------
# 1. Conservation
# --------------------------------------------------------------------------------------------

BIAS_FREE = ["dense", "conv_max", "conv_avg", "conv_gap", "conv_strided"]

CONSERVATIVE = [
    ("lrp.z", {}),
    ("lrp.epsilon", {"epsilon": 1e-9}),
    ("lrp.zplus", {}),
    ("deep_taylor", {}),
]


def _conservation_cases():
    for model_name in BIAS_FREE:
        for method, params in CONSERVATIVE:
            poolings = ["winner_take_all", "proportional"] if model_name == "conv_max" else ["winner_take_all"]
            for max_pooling in poolings:
                yield pytest.param(
                    model_name, method, params, max_pooling, id=f"{model_name}-{method}-{max_pooling}"
                )


def _positively_predicted(model, images):
    """The inputs whose predicted-class logit is positive, with that class and logit: z⁺ and
    z^B conserve positive relevance, so conservation is checked on these."""
    logits = predict_logits(model, images)
    target = logits.argmax(axis=1)
    logit = logits[np.arange(len(target)), target]
    positive = logit > 1e-3
    assert positive.sum() >= 5
    return images[positive], target[positive], logit[positive]


@pytest.mark.parametrize(("model_name", "method", "params", "max_pooling"), list(_conservation_cases()))
def test_conservation_on_bias_free_relu_nets(model_zoo, unit_images, model_name, method, params, max_pooling):
    """Σ_i R_i = S_c(x) for the predicted class (whose logit is positive on these inputs)."""
    model = model_zoo(model_name)
    x, target, logit = _positively_predicted(model, unit_images)
    relevance = unn.explain(model, x, method, target=target, max_pooling=max_pooling, **params)
    assert relevance.shape == x.shape
    assert np.isfinite(relevance).all()
    np.testing.assert_array_less(_relative_error(_sums(relevance), logit), 1e-4)


@pytest.mark.parametrize("method", ["lrp.w_square", "lrp.flat"])
@pytest.mark.parametrize("model_name", ["dense", "conv_max"])
def test_w_square_and_flat_presets_conserve(model_zoo, unit_images, model_name, method):
    """w² and flat on the input layer, z⁺ above: still conservative on bias-free ReLU nets."""
    model = model_zoo(model_name)
    x, target, logit = _positively_predicted(model, unit_images)
    relevance = unn.explain(model, x, method, target=target)
    np.testing.assert_array_less(_relative_error(_sums(relevance), logit), 1e-4)


def test_z_conserves_negative_logits_too(model_zoo, unit_images):
    """LRP-0 conserves any logit, negative ones included (the least likely class)."""
    model = model_zoo("conv_max")
    logits = predict_logits(model, unit_images)
    target = logits.argmin(axis=1)
    logit = logits[np.arange(len(target)), target]
    assert (logit < 0).all()
    relevance = unn.explain(model, unit_images, "lrp.z", target=target)
    np.testing.assert_array_less(_relative_error(_sums(relevance), logit), 1e-4)


@pytest.mark.parametrize(
    ("model_name", "composite", "max_pooling"),
    [
        ("conv_max", L.Composite(L.Epsilon(0.0)), "winner_take_all"),
        ("conv_max", L.Composite(L.Epsilon(0.0)), "proportional"),
        ("conv_avg", L.Composite(L.ZPlus(), first=L.ZBox(0.0, 1.0)), "winner_take_all"),
        ("conv_gap", L.Composite(L.Epsilon(0.0)), "winner_take_all"),
        ("conv_strided", L.Composite(L.ZPlus()), "winner_take_all"),
        ("dense", L.Composite(L.ZPlus(), first=L.ZBox(0.0, 1.0)), "winner_take_all"),
    ],
    ids=["max-z-wta", "max-z-proportional", "avg-deep_taylor", "gap-z", "strided-zplus", "dense-deep_taylor"],
)
def test_every_layer_conserves(model_zoo, unit_images, model_name, composite, max_pooling):
    """layer_relevances: every layer boundary carries the same total relevance, the logit."""
    model = model_zoo(model_name)
    logits = predict_logits(model, unit_images)
    target = logits.argmax(axis=1)
    logit = logits[np.arange(len(target)), target]
    keep = logit > 1e-3
    assert keep.sum() >= 5
    layers = L.layer_relevances(
        model, unit_images[keep], target[keep], composite=composite, max_pooling=max_pooling
    )
    graph = unn.propagation.trace(model)
    layer_names = [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert [name for name, _ in layers] == ["input"] + layer_names
    # Each relevance has the shape of its layer's output, and the last is the one-hot logit.
    outputs = keras.Model(model.inputs, [layer.output for layer in model.layers[-len(layer_names):]])
    for (name, relevance), output in zip(layers[1:], outputs([unit_images[keep]])):
        assert relevance.shape == tuple(output.shape), name
    assert len(graph.nodes) >= len(layer_names)
    expected_top = np.eye(N_CLASSES)[target[keep]] * logits[keep]
    np.testing.assert_allclose(layers[-1][1], expected_top, rtol=1e-5, atol=1e-6)
    for name, relevance in layers:
        np.testing.assert_array_less(_relative_error(_sums(relevance), logit[keep]), 1e-4, err_msg=name)
    np.testing.assert_allclose(
        layers[0][1], L.lrp(model, unit_images[keep], target[keep], composite=composite, max_pooling=max_pooling),
        rtol=1e-6, atol=1e-7,
    )


def test_epsilon_and_biases_break_conservation(model_zoo, unit_images):
    """The counterpart of conservation (so the tests above can fail): with biases in the
    denominators, or a large ε, part of the relevance is absorbed."""
    model = model_zoo("dense_bias")
    target = predict_logits(model, unit_images).argmax(axis=1)
    logit = predict_logits(model, unit_images)[np.arange(len(target)), target]
    with_bias = unn.explain(model, unit_images, "lrp.z", target=target)
    assert _relative_error(_sums(with_bias), logit).max() > 1e-2
    bias_free = model_zoo("dense")
    logits = predict_logits(bias_free, unit_images)
    big_epsilon = unn.explain(bias_free, unit_images, "lrp.epsilon", target=target, epsilon=1.0)
    assert _relative_error(_sums(big_epsilon), logits[np.arange(len(target)), target]).min() > 1e-2


# --------------------------------------------------------------------------------------------
# 2. Identities between rules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["dense", "conv_max", "dense_bias", "conv_max_bias", "conv_avg_bias", "conv_gap_bias"])
def test_lrp_0_equals_gradient_x_input(model_zoo, unit_images, model_name):
    """On ReLU nets LRP-0 (winner-take-all max-pooling, proportional average pooling) is
    gradient × input, with or without biases (biases sit in LRP-0's denominators)."""
    model = model_zoo(model_name)
    target = np.arange(len(unit_images)) % N_CLASSES
    relevance = unn.explain(model, unit_images, "lrp.z", target=target)
    reference = unn.explain(model, unit_images, "gradient_x_input", target=target)
    assert np.abs(reference).max() > 1e-3
    np.testing.assert_allclose(relevance, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize("model_name", ["conv_max_bias", "dense_bias"])
def test_zplus_is_alpha_1_beta_0(model_zoo, unit_images, model_name):
    model = model_zoo(model_name)
    target = np.arange(len(unit_images)) % N_CLASSES
    zplus = unn.explain(model, unit_images, "lrp.zplus", target=target)
    alpha_beta = unn.explain(model, unit_images, "lrp.alpha_beta", target=target, alpha=1.0, beta=0.0)
    assert np.abs(zplus).max() > 0
    np.testing.assert_allclose(zplus, alpha_beta, rtol=1e-6, atol=1e-8)
    # Also for inputs of mixed sign, and for composites built from the rule objects.
    mixed = unit_images - 0.5
    np.testing.assert_allclose(
        L.lrp(model, mixed, target, composite=L.Composite(L.ZPlus())),
        L.lrp(model, mixed, target, composite=L.Composite(L.AlphaBeta(1.0, 0.0, bias=False))),
        rtol=1e-6, atol=1e-8,
    )


def _single_dense(seed=0, units=4, inputs=6, use_bias=True):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(
                units, use_bias=use_bias, bias_initializer=keras.initializers.RandomNormal(stddev=0.5)
            ),
        ],
        name="single_dense",
    )


def _single_conv(seed=0, *, strides=2, padding="same", input_shape=(8, 7, 2), filters=3, size=3):
    """A Conv2D layer (followed by a Flatten and a Dense so that the model outputs class scores)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(
                filters, size, strides=strides, padding=padding, activation="relu",
                bias_initializer=keras.initializers.RandomNormal(stddev=0.5), name="the_conv",
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ],
        name="single_conv",
    )


def test_w_square_ignores_the_input_one_layer():
    """Applied to one layer, w² gives the same input relevance for any two inputs."""
    rng = np.random.default_rng(1)
    for model in (_single_dense(), _single_conv()):
        step = _first_step(model)
        shape = (3, *model.inputs[0].shape[1:])
        a1 = rng.normal(size=shape).astype(np.float32)
        a2 = rng.normal(size=shape).astype(np.float32) * 3.0
        out_shape = step.forward(tf.constant(a1)).shape
        relevance = tf.constant(rng.normal(size=out_shape).astype(np.float32))
        r1 = L.WSquare().propagate(step, tf.constant(a1), relevance).numpy()
        r2 = L.WSquare().propagate(step, tf.constant(a2), relevance).numpy()
        assert np.abs(r1).max() > 1e-3
        np.testing.assert_allclose(r1, r2, rtol=1e-6, atol=1e-7)
        # LRP-0 on the same layer does depend on the input (the comparison can fail).
        e1 = L.Epsilon(0.1).propagate(step, tf.constant(a1), relevance).numpy()
        e2 = L.Epsilon(0.1).propagate(step, tf.constant(a2), relevance).numpy()
        assert not np.allclose(e1, e2)


def test_w_square_preset_on_one_dense_layer_ignores_the_input():
    """Two inputs with the same logit (they differ orthogonally to the class's weights) get the
    same relevance through lrp.w_square, R_i = w_ic² / Σ_i' w_i'c² · S_c(x)."""
    model = _single_dense(seed=2, use_bias=False)
    w = model.layers[0].kernel.numpy().astype(np.float64)
    target = 1
    rng = np.random.default_rng(2)
    x1 = rng.normal(size=6)
    step = rng.normal(size=6)
    step -= (step @ w[:, target]) / (w[:, target] @ w[:, target]) * w[:, target]
    x2 = x1 + 2.0 * step
    x = np.stack([x1, x2]).astype(np.float32)
    logits = predict_logits(model, x)
    assert abs(logits[0, target] - logits[1, target]) < 1e-5
    assert np.abs(x[0] - x[1]).max() > 0.1
    relevance = unn.explain(model, x, "lrp.w_square", target=target)
    np.testing.assert_allclose(relevance[0], relevance[1], rtol=1e-5, atol=1e-6)
    expected = w[:, target] ** 2 / (w[:, target] ** 2).sum() * logits[0, target]
    np.testing.assert_allclose(relevance[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-1.0, 2.0)])
def test_z_box_conserves_on_a_first_layer(low, high):
    """z^B's denominator is positive for inputs inside the box, so one layer conserves exactly."""
    rng = np.random.default_rng(3)
    rule = L.ZBox(low, high)
    for model in (_single_dense(seed=3), _single_conv(seed=3)):
        step = _first_step(model)
        shape = (4, *model.inputs[0].shape[1:])
        a = rng.uniform(low, high, size=shape).astype(np.float32)
        out_shape = step.forward(tf.constant(a)).shape
        relevance = rng.normal(size=out_shape).astype(np.float32)
        result = rule.propagate(step, tf.constant(a), tf.constant(relevance)).numpy()
        assert result.shape == a.shape
        np.testing.assert_allclose(_sums(result), _sums(relevance), rtol=1e-4, atol=1e-5)
    # Through a whole model (deep_taylor) on inputs in [low, high], conservation to the logit.
    model = _dense_net(seed=9, name="box_net")
    x = rng.uniform(low, high, size=(6, *IMAGE)).astype(np.float32)
    logits = predict_logits(model, x)
    target = logits.argmax(axis=1)
    logit = logits[np.arange(6), target]
    keep = logit > 1e-3
    assert keep.sum() >= 3
    relevance = unn.explain(model, x[keep], "deep_taylor", target=target[keep], low=low, high=high)
    np.testing.assert_array_less(_relative_error(_sums(relevance), logit[keep]), 1e-4)


# --------------------------------------------------------------------------------------------
# 3. Every rule against an independent NumPy computation of its formula
# --------------------------------------------------------------------------------------------


def _share(contributions, extra, relevance):
    """R_j = Σ_k q_jk / (Σ_j' q_j'k + extra_k) R_k, with 0 where the denominator is 0.

    ``contributions`` q has shape (N, J, K), ``extra`` broadcasts to (N, K), relevance (N, K)."""
    denominator = contributions.sum(axis=1) + extra
    ratio = np.divide(relevance, denominator, out=np.zeros_like(denominator), where=denominator != 0)
    return np.einsum("njk,nk->nj", contributions, ratio)


def reference_rule(rule, a, w, mask, b, relevance):
    """The rule's formula (from its docstring) in float64 for an affine map z = a @ w + b.

    ``a`` is (N, J), ``w`` and ``mask`` (which input feeds which output) are (J, K), ``b`` (K,),
    ``relevance`` (N, K). Returns the input relevance (N, J).
    """
    a, w, b, relevance = (np.asarray(v, dtype=np.float64) for v in (a, w, b, relevance))
    n = len(a)
    pos, neg = np.maximum(w, 0), np.minimum(w, 0)
    q = a[:, :, None] * w[None]  # q_jk = a_j w_jk
    if isinstance(rule, L.Epsilon):
        z = q.sum(axis=1) + (b if rule.bias else 0.0)
        sign = np.where(z >= 0, 1.0, -1.0)  # sign(0) = +1
        return _share(q, (b if rule.bias else 0.0) + rule.epsilon * sign, relevance)
    if isinstance(rule, L.Gamma):
        q_gamma = a[:, :, None] * (w + rule.gamma * pos)[None]
        extra = b + rule.gamma * np.maximum(b, 0) if rule.bias else np.zeros_like(b)
        return _share(q_gamma, extra, relevance)
    if isinstance(rule, L.ZPlus):
        # The z⁺ docstring: a_j w_jk⁺ / Σ_j' a_j' w_j'k⁺ (for a ≥ 0).
        assert (a >= 0).all()
        return _share(a[:, :, None] * pos[None], 0.0, relevance)
    if isinstance(rule, L.AlphaBeta):
        b_pos = np.maximum(b, 0) if rule.bias else 0.0
        b_neg = np.minimum(b, 0) if rule.bias else 0.0
        return rule.alpha * _share(np.maximum(q, 0), b_pos, relevance) - rule.beta * _share(
            np.minimum(q, 0), b_neg, relevance
        )
    if isinstance(rule, L.WSquare):
        return _share(np.broadcast_to(mask * w**2, (n, *w.shape)), 0.0, relevance)
    if isinstance(rule, L.Flat):
        return _share(np.broadcast_to(mask.astype(np.float64), (n, *w.shape)), 0.0, relevance)
    if isinstance(rule, L.ZBox):
        low = rule.low * mask[None]
        high = rule.high * mask[None]
        q_box = q - low * pos[None] - high * neg[None]
        return _share(q_box, 0.0, relevance)
    raise AssertionError(f"no reference for {rule!r}")


RULES = [
    L.Epsilon(0.1, bias=True),
    L.Epsilon(0.1, bias=False),
    L.Epsilon(0.0, bias=True),
    L.Gamma(0.25, bias=True),
    L.Gamma(0.5, bias=False),
    L.AlphaBeta(2.0, 1.0),
    L.AlphaBeta(2.0, 1.0, bias=True),
    L.AlphaBeta(1.5, 0.5),
    L.ZPlus(),
    L.WSquare(),
    L.Flat(),
    L.ZBox(-1.0, 5.0),
]


@pytest.fixture(scope="module")
def two_layer_net():
    """Dense(5, ReLU) → Dense(4), with random biases, and its weights in float64."""
    keras.utils.set_random_seed(13)
    init = keras.initializers.RandomNormal(stddev=0.5)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="relu", bias_initializer=init, name="hidden"),
            keras.layers.Dense(4, bias_initializer=init, name="out"),
        ],
        name="two_layer",
    )
    return model, [v.astype(np.float64) for v in model.get_weights()]


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_rule_on_a_two_layer_dense_net(two_layer_net, rule):
    model, (w1, b1, w2, b2) = two_layer_net
    rng = np.random.default_rng(12)
    # Mixed signs at the input layer (non-negative for z⁺, whose formula assumes a ≥ 0).
    x = rng.uniform(0.0 if isinstance(rule, L.ZPlus) else -1.0, 1.0, size=(16, 6)).astype(np.float32)
    target = np.arange(16) % 4
    hidden = np.maximum(x @ w1 + b1, 0)
    logits = hidden @ w2 + b2
    assert (hidden > 0).any(axis=0).all()  # every hidden unit is active somewhere
    start = np.eye(4)[target] * logits
    r_hidden = reference_rule(rule, hidden, w2, np.ones_like(w2), b2, start)
    expected = reference_rule(rule, x, w1, np.ones_like(w1), b1, r_hidden)
    result = L.lrp(model, x, target, composite=L.Composite(rule))
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    # The hidden layer's relevance too.
    layers = L.layer_relevances(model, x, target, composite=L.Composite(rule))
    np.testing.assert_allclose(layers[1][1], r_hidden, rtol=1e-4, atol=1e-5 * np.abs(r_hidden).max())


def _unrolled_conv(kernel, in_shape, strides, padding):
    """The convolution as a (H·W·C, H_out·W_out·F) matrix, built with explicit loops over the
    output positions and their receptive fields (TensorFlow's 'same' padding puts the extra
    row/column at the bottom/right), and the mask of which input feeds which output."""
    height, width, channels = in_shape
    kh, kw, _, filters = kernel.shape
    sh, sw = strides
    if padding == "same":
        out_h, out_w = math.ceil(height / sh), math.ceil(width / sw)
        top = max((out_h - 1) * sh + kh - height, 0) // 2
        left = max((out_w - 1) * sw + kw - width, 0) // 2
    else:
        out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
        top = left = 0
    matrix = np.zeros((height * width * channels, out_h * out_w * filters))
    mask = np.zeros_like(matrix)
    for i in range(out_h):
        for j in range(out_w):
            for di in range(kh):
                for dj in range(kw):
                    row, col = i * sh + di - top, j * sw + dj - left
                    if not (0 <= row < height and 0 <= col < width):
                        continue  # padding: no input there
                    for c in range(channels):
                        for f in range(filters):
                            source = (row * width + col) * channels + c
                            output = (i * out_w + j) * filters + f
                            matrix[source, output] = kernel[di, dj, c, f]
                            mask[source, output] = 1.0
    return matrix, mask, (out_h, out_w, filters)


CONV_CONFIGS = {
    "same-stride2": dict(strides=2, padding="same", input_shape=(8, 7, 2), size=3),
    "same-stride2-k4": dict(strides=2, padding="same", input_shape=(7, 8, 2), size=4),
    "valid-stride1": dict(strides=1, padding="valid", input_shape=(6, 5, 2), size=3),
}


@pytest.fixture(scope="module", params=list(CONV_CONFIGS))
def conv_layer(request):
    """A Conv2D step, its float64 unrolled matrix and mask, and its bias."""
    config = CONV_CONFIGS[request.param]
    model = _single_conv(seed=13, **config)
    step = _first_step(model)
    layer = model.get_layer("the_conv")
    kernel, bias = (v.numpy().astype(np.float64) for v in (layer.kernel, layer.bias))
    matrix, mask, out_shape = _unrolled_conv(kernel, config["input_shape"], layer.strides, config["padding"])
    # The reference convolution reproduces the layer (padding, stride and all).
    x = np.random.default_rng(14).normal(size=(2, *config["input_shape"])).astype(np.float32)
    pre_activation = x.reshape(2, -1).astype(np.float64) @ matrix + np.tile(bias, out_shape[0] * out_shape[1])
    np.testing.assert_allclose(
        np.maximum(pre_activation, 0).reshape(2, *out_shape), layer(x).numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        step.affine(tf.constant(x), step.kernel, step.bias).numpy().reshape(2, -1), pre_activation,
        rtol=1e-5, atol=1e-5,
    )
    return step, matrix, mask, np.tile(bias, out_shape[0] * out_shape[1]), out_shape, config["input_shape"]


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_rule_on_a_conv_layer(conv_layer, rule):
    step, matrix, mask, bias, out_shape, in_shape = conv_layer
    rng = np.random.default_rng(15)
    n = 3
    if isinstance(rule, L.ZBox):
        a = rng.uniform(rule.low, rule.high, size=(n, *in_shape))
    elif isinstance(rule, L.ZPlus):
        a = rng.uniform(0.0, 1.0, size=(n, *in_shape))
    else:
        a = rng.uniform(-1.0, 1.0, size=(n, *in_shape))
    a = a.astype(np.float32)
    relevance = rng.normal(size=(n, *out_shape)).astype(np.float32)
    result = rule.propagate(step, tf.constant(a), tf.constant(relevance)).numpy()
    assert result.shape == a.shape
    expected = reference_rule(rule, a.reshape(n, -1), matrix, mask, bias, relevance.reshape(n, -1))
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(
        result.reshape(n, -1), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max()
    )


def test_epsilon_sign_convention():
    """ε·sign(z_k) with sign(0) = +1: a unit with z_k = 0 gets denominator +ε."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, use_bias=True)], name="sign")
    # z_0 = a_0 - a_1 (0 at a = (1, 1)), z_1 = a_0 + a_1 - 3 (negative), z_2 = 2 a_0 (positive).
    model.layers[0].set_weights([np.array([[1.0, 1.0, 2.0], [-1.0, 1.0, 0.0]]), np.array([0.0, -3.0, 0.0])])
    step = _first_step(model)
    a = tf.constant([[1.0, 1.0]])
    epsilon = 0.5
    for unit, denominator in [(0, epsilon), (1, -1.0 - epsilon), (2, 2.0 + epsilon)]:
        relevance = np.zeros((1, 3), np.float32)
        relevance[0, unit] = 1.0
        result = L.Epsilon(epsilon).propagate(step, a, tf.constant(relevance)).numpy()
        w = model.layers[0].kernel.numpy()[:, unit]
        np.testing.assert_allclose(result[0], np.array([1.0, 1.0]) * w / denominator, rtol=1e-6)
    # Without the bias, z_1 = 2 is positive: the denominator becomes 2 + ε.
    relevance = tf.constant([[0.0, 1.0, 0.0]])
    result = L.Epsilon(epsilon, bias=False).propagate(step, a, relevance).numpy()
    np.testing.assert_allclose(result[0], np.array([1.0, 1.0]) / (2.0 + epsilon), rtol=1e-6)
    # ε = 0 and z = 0: no relevance, no NaN.
    relevance = tf.constant([[1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(L.Epsilon(0.0).propagate(step, a, relevance).numpy(), [[0.0, 0.0]])


def test_epsilon_with_bias_absorbs_the_bias_share():
    """LRP-0 with the bias in z_k passes on Σ_j a_j w_jk / z_k · R_k: the bias keeps b_k / z_k · R_k."""
    model = _single_dense(seed=16)
    step = _first_step(model)
    w, b = (v.numpy().astype(np.float64) for v in (model.layers[0].kernel, model.layers[0].bias))
    a = np.random.default_rng(16).uniform(0.5, 1.0, size=(2, 6)).astype(np.float32)
    relevance = np.ones((2, 4), np.float32)
    z = a @ w + b
    result = L.Epsilon(0.0).propagate(step, tf.constant(a), tf.constant(relevance)).numpy()
    np.testing.assert_allclose(_sums(result), ((z - b) / z).sum(axis=1), rtol=1e-4)
    result = L.Epsilon(0.0, bias=False).propagate(step, tf.constant(a), tf.constant(relevance)).numpy()
    np.testing.assert_allclose(_sums(result), 4.0, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# 4. Batch-norm folding
# --------------------------------------------------------------------------------------------


def _randomise_batch_norm(layer, rng):
    size = layer.moving_mean.shape[0]
    layer.moving_mean.assign(rng.normal(size=size).astype(np.float32))
    layer.moving_variance.assign(rng.uniform(0.3, 3.0, size=size).astype(np.float32))
    layer.gamma.assign(rng.normal(size=size).astype(np.float32))  # mixed signs
    layer.beta.assign(rng.normal(scale=0.5, size=size).astype(np.float32))


def _folded(layer, norm):
    """Hand-folded kernel and bias of a (Dense or Conv2D) layer followed by a BatchNormalization."""
    kernel = layer.kernel.numpy().astype(np.float64)
    bias = layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros(kernel.shape[-1])
    mean, variance, gamma, beta = (
        v.numpy().astype(np.float64) for v in (norm.moving_mean, norm.moving_variance, norm.gamma, norm.beta)
    )
    scale = gamma / np.sqrt(variance + norm.epsilon)
    return (kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)


@pytest.fixture(scope="module")
def dense_bn_pair():
    """Dense → BN → ReLU → Dense with random statistics, and the same net with BN folded by hand."""
    keras.utils.set_random_seed(21)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Dense(4, name="d2"),
        ],
        name="dense_bn",
    )
    _randomise_batch_norm(model.get_layer("bn"), np.random.default_rng(21))
    folded = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="d1"), keras.layers.Dense(4, name="d2")],
        name="dense_bn_folded",
    )
    folded.get_layer("d1").set_weights(_folded(model.get_layer("d1"), model.get_layer("bn")))
    folded.get_layer("d2").set_weights(model.get_layer("d2").get_weights())
    x = np.random.default_rng(22).uniform(-1, 1, size=(6, 6)).astype(np.float32)
    return model, folded, x


@pytest.fixture(scope="module")
def conv_bn_pair():
    """Conv2D (no bias) → BN → Activation(relu) → MaxPool → Flatten → Dense, and its hand-folded twin."""
    keras.utils.set_random_seed(23)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Activation("relu", name="act"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="logits"),
        ],
        name="conv_bn",
    )
    _randomise_batch_norm(model.get_layer("bn"), np.random.default_rng(23))
    folded = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="logits"),
        ],
        name="conv_bn_folded",
    )
    folded.get_layer("c1").set_weights(_folded(model.get_layer("c1"), model.get_layer("bn")))
    folded.get_layer("logits").set_weights(model.get_layer("logits").get_weights())
    x = np.random.default_rng(24).uniform(0, 1, size=(5, 8, 8, 2)).astype(np.float32)
    return model, folded, x


@pytest.mark.parametrize("pair", ["dense_bn_pair", "conv_bn_pair"])
def test_folded_plan_reproduces_the_model(request, pair):
    model, folded, x = request.getfixturevalue(pair)
    graph = unn.propagation.trace(model)
    steps = [node.op for node in graph.nodes]
    assert [type(step).__name__ for step in steps].count("WeightedOp") == 2
    assert not any(step.kind == "affine" for step in steps)
    assert any("bn" in step.aliases for step in steps)
    activation = graph.logits(tf.constant(x))
    predictions = model(x, training=False).numpy()
    # The statistics are non-trivial: normalisation changes the output.
    assert np.abs(predictions).max() > 1e-2
    np.testing.assert_allclose(activation.numpy(), predictions, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(folded(x).numpy(), predictions, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pair", ["dense_bn_pair", "conv_bn_pair"])
@pytest.mark.parametrize(
    ("method", "params"),
    [("lrp.z", {}), ("lrp.epsilon", {}), ("lrp.gamma", {}), ("lrp.alpha_beta", {"bias": True}), ("deep_taylor", {"low": -1.0})],
)
def test_lrp_through_batch_norm_equals_the_hand_folded_model(request, pair, method, params):
    model, folded, x = request.getfixturevalue(pair)
    target = np.arange(len(x)) % 3
    relevance = unn.explain(model, x, method, target=target, **params)
    expected = unn.explain(folded, x, method, target=target, **params)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(relevance, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_batch_norm_changes_after_a_first_explanation_are_seen():
    """The folded weights follow the model: after an explanation, further changes to the batch
    norm's statistics or to the layer before it (as training would make) change the next one."""
    keras.utils.set_random_seed(25)
    layers = lambda: [  # noqa: E731
        keras.Input((6,)), keras.layers.Dense(8, name="d1"), keras.layers.BatchNormalization(name="bn"),
        keras.layers.ReLU(), keras.layers.Dense(4, name="d2"),
    ]
    model = keras.Sequential(layers(), name="bn_live")
    x = np.random.default_rng(25).uniform(-1, 1, size=(4, 6)).astype(np.float32)
    before = unn.explain(model, x, "lrp.z", target=0)
    _randomise_batch_norm(model.get_layer("bn"), np.random.default_rng(26))
    model.get_layer("d1").kernel.assign(model.get_layer("d1").kernel * 2.0)
    after = unn.explain(model, x, "lrp.z", target=0)
    fresh = keras.Sequential(layers(), name="bn_fresh")
    fresh.set_weights(model.get_weights())
    expected = unn.explain(fresh, x, "lrp.z", target=0)
    assert not np.allclose(before, expected)
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-6)
    layers_after = L.layer_relevances(model, x, 0)
    np.testing.assert_allclose(layers_after[0][1], expected, rtol=1e-5, atol=1e-6)


def test_batch_norm_model_is_freed_after_explaining():
    """Folding does not keep the model alive through the per-model compiled functions."""
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(), keras.layers.Dense(2)]
    )
    unn.explain(model, np.ones((1, 4), np.float32), "lrp.epsilon")
    reference = weakref.ref(model)
    del model
    gc.collect()
    assert reference() is None


def _norm_after_relu():
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="relu", name="dense_relu"),
         keras.layers.BatchNormalization(name="the_norm"), keras.layers.Dense(3)]
    )


def _norm_first():
    return keras.Sequential([keras.Input((6,)), keras.layers.BatchNormalization(name="the_norm"), keras.layers.Dense(3)])


def _norm_after_flatten():
    return keras.Sequential(
        [keras.Input((3, 3, 2)), keras.layers.Conv2D(2, 2), keras.layers.Flatten(),
         keras.layers.BatchNormalization(name="the_norm"), keras.layers.Dense(3)]
    )


@pytest.mark.parametrize("build", [_norm_after_relu, _norm_first, _norm_after_flatten], ids=lambda f: f.__name__)
def test_batch_norm_that_cannot_be_folded_is_an_affine_step_relevance_passes(build):
    """A batch normalization with no linear layer right before it stays an element-wise affine
    step: relevance passes it unchanged, and the model's output is reproduced."""
    model = build()
    norm = model.get_layer("the_norm")
    rng = np.random.default_rng(70)
    size = norm.moving_mean.shape
    norm.set_weights([rng.uniform(0.5, 2, size), rng.normal(size=size), rng.normal(size=size), rng.uniform(0.5, 2, size)])
    graph = unn.propagation.trace(model)
    assert [node.op.kind for node in graph.nodes].count("affine") == 1
    x = rng.uniform(0, 1, size=(4, *model.inputs[0].shape[1:])).astype(np.float32)
    np.testing.assert_allclose(graph.logits(tf.constant(x)).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    layers = dict(L.layer_relevances(model, x, 0))
    previous = ["input"] + [layer.name for layer in model.layers]
    before = previous[previous.index("the_norm") - 1]
    np.testing.assert_allclose(layers["the_norm"], layers[before], rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# 5. Supported and unsupported models
# --------------------------------------------------------------------------------------------


def _lstm():
    return keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, name="the_lstm"), keras.layers.Dense(3)])


def _softmax_in_the_middle():
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="softmax", name="the_middle_softmax"), keras.layers.Dense(3)]
    )


def _gate():
    inputs = keras.Input((6,))
    left = keras.layers.Dense(4, activation="relu")(inputs)
    right = keras.layers.Dense(4, activation="sigmoid")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Multiply(name="the_gate")([left, right])))


def _lambda():
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5), keras.layers.Lambda(lambda t: t * t, name="the_lambda"), keras.layers.Dense(3)]
    )


def _unknown_activation():
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation=lambda t: t * t, name="the_square"), keras.layers.Dense(3)]
    )


class _ScaledDense(keras.layers.Dense):
    """A Dense subclass: it may compute anything, so the package does not assume it is a Dense."""

    def call(self, inputs):
        return 2.0 * super().call(inputs)


def _dense_subclass():
    return keras.Sequential([keras.Input((6,)), _ScaledDense(5, name="the_subclass"), keras.layers.Dense(3)])


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (_lstm, "the_lstm"),
        (_softmax_in_the_middle, "the_middle_softmax"),
        (_gate, "the_gate"),
        (_lambda, "the_lambda"),
        (_unknown_activation, "the_square"),
        (_dense_subclass, "the_subclass"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_unsupported_layers_are_refused_by_name(build, name):
    """Every propagation method refuses the layer, naming it, its type and the method; the
    gradient still works (it needs no rule)."""
    model = build()
    x = np.ones((1, *model.inputs[0].shape[1:]), np.float32)
    refusing = ["lrp.z", "deep_taylor", "deeplift"] + ([] if build is _gate else ["guided_backprop", "deconvnet"])
    for method in refusing:
        with pytest.raises(UnsupportedModelError, match=f"{name}.*cannot be explained by {method}"):
            unn.explain(model, x, method)
    with pytest.raises(UnsupportedModelError, match=name):
        L.layer_relevances(model, x)
    gradient = unn.explain(model, x, "gradient", target=1, absolute=False)
    np.testing.assert_allclose(gradient, _autodiff_gradient(model, x, 1), rtol=1e-5, atol=1e-6)


def _autodiff_gradient(model, x, target):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = model(x)[:, target]
    return tape.gradient(score, x).numpy()


def _mlp_layers(final=None):
    keras.utils.set_random_seed(31)
    layers = [keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="h"),
              keras.layers.Dense(4, activation=final, name="out")]
    return layers


@pytest.fixture(scope="module")
def softmax_models():
    plain = keras.Sequential(_mlp_layers(), name="plain")
    weights = plain.get_weights()
    variants = {
        "dense_softmax": keras.Sequential(_mlp_layers("softmax"), name="dense_softmax"),
        "softmax_layer": keras.Sequential([*_mlp_layers(), keras.layers.Softmax()], name="softmax_layer"),
        "activation_softmax": keras.Sequential(
            [*_mlp_layers(), keras.layers.Activation("softmax")], name="activation_softmax"
        ),
    }
    for model in variants.values():
        model.set_weights(weights)
    return plain, variants


@pytest.mark.parametrize("variant", ["dense_softmax", "softmax_layer", "activation_softmax"])
def test_final_softmax_is_explained_from_the_logits(softmax_models, variant):
    plain, variants = softmax_models
    model = variants[variant]
    x = np.random.default_rng(32).uniform(-1, 1, size=(5, 6)).astype(np.float32)
    target = np.array([0, 1, 2, 3, 0])
    probabilities = model(x).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)  # the model does squash
    for method in ("lrp.epsilon", "lrp.zplus"):
        expected = unn.explain(plain, x, method, target=target)
        assert np.abs(expected).max() > 1e-3
        np.testing.assert_allclose(unn.explain(model, x, method, target=target), expected, rtol=1e-6, atol=1e-7)
    # The logit layer's relevance is the one-hot logit, not a probability.
    top = L.layer_relevances(model, x, target)[-1][1]
    logits = plain(x).numpy()
    np.testing.assert_allclose(top, np.eye(4)[target] * logits, rtol=1e-5, atol=1e-6)


def test_single_chain_functional_model_is_supported():
    """A functional chain (with an InputLayer) explains like the Sequential model with its weights."""
    sequential = _dense_net(use_bias=True, seed=33, name="chain_sequential")
    inputs = keras.Input(IMAGE)
    h = keras.layers.Flatten()(inputs)
    for units in (16, 12):
        h = keras.layers.Dense(units, activation="relu")(h)
    functional = keras.Model(inputs, keras.layers.Dense(N_CLASSES)(h), name="chain_functional")
    functional.set_weights(sequential.get_weights())
    x = np.random.default_rng(33).random((3, *IMAGE), dtype=np.float32)
    for method in ("lrp.gamma", "deep_taylor"):
        expected = unn.explain(sequential, x, method, target=2)
        np.testing.assert_allclose(unn.explain(functional, x, method, target=2), expected, rtol=1e-6, atol=1e-7)


def test_dropout_reshape_and_relu_layers_pass_relevance_through(unit_images):
    """Dropout, Reshape and ReLU layers do not change LRP (same weights without them)."""
    keras.utils.set_random_seed(34)
    with_extras = keras.Sequential(
        [
            keras.Input(IMAGE),
            keras.layers.Reshape((100,)),
            keras.layers.Dense(12),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(N_CLASSES),
        ],
        name="extras",
    )
    plain = keras.Sequential(
        [keras.Input(IMAGE), keras.layers.Flatten(), keras.layers.Dense(12, activation="relu"), keras.layers.Dense(N_CLASSES)],
        name="no_extras",
    )
    plain.set_weights(with_extras.get_weights())
    for method in ("lrp.epsilon", "lrp.alpha_beta"):
        expected = unn.explain(plain, unit_images, method, target=1)
        np.testing.assert_allclose(unn.explain(with_extras, unit_images, method, target=1), expected, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# 6. No NaN
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dead_model():
    """A CNN with biases whose first convolution is dead (bias -50): every hidden output is 0,
    and the logits are the last layer's (non-zero) biases."""
    keras.utils.set_random_seed(41)
    return keras.Sequential(
        [
            keras.Input(IMAGE),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu",
                                bias_initializer=keras.initializers.Constant(-50.0)),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(N_CLASSES, bias_initializer=keras.initializers.RandomNormal(stddev=1.0)),
        ],
        name="dead",
    )


@pytest.mark.parametrize("method", PRESETS)
def test_all_zero_layer_gives_zero_relevance_and_no_nan(model_zoo, dead_model, unit_images, method):
    # Dead ReLUs: the logits are non-zero (the biases) but no relevance reaches the input.
    logits = predict_logits(dead_model, unit_images[:3])
    assert np.abs(logits).min() > 1e-3
    for max_pooling in ("winner_take_all", "proportional"):
        relevance = unn.explain(dead_model, unit_images[:3], method, target=[0, 1, 2], max_pooling=max_pooling)
        assert np.isfinite(relevance).all()
        np.testing.assert_array_equal(relevance, 0.0)
    # An all-zero input to a bias-free net: every layer's output is 0.
    zeros = np.zeros((2, *IMAGE), np.float32)
    for model_name in ("conv_max", "conv_gap"):
        relevance = unn.explain(model_zoo(model_name), zeros, method, target=[0, 3])
        assert np.isfinite(relevance).all()
        np.testing.assert_array_equal(relevance, 0.0)


def test_dead_layers_give_finite_layer_relevances(dead_model, unit_images):
    layers = L.layer_relevances(dead_model, unit_images[:3], [0, 1, 2], composite=L.Composite(L.AlphaBeta()))
    for name, relevance in layers:
        assert np.isfinite(relevance).all(), name
    assert np.abs(layers[-1][1]).max() > 1e-3  # relevance at the logits ...
    np.testing.assert_array_equal(layers[-2][1], 0.0)  # ... stops at the dead layer below


# --------------------------------------------------------------------------------------------
# 7. Batching, parameters, composites
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lrp.epsilon", "deep_taylor", "lrp.composite"])
def test_batched_equals_per_sample(model_zoo, unit_images, method):
    model = model_zoo("conv_max_bias")
    x = unit_images[:5]
    target = np.array([0, 1, 2, 3, 4])
    whole = unn.explain(model, x, method, target=target)
    in_pairs = unn.explain(model, x, method, target=target, batch_size=2)
    one_by_one = np.concatenate([unn.explain(model, x[i : i + 1], method, target=target[i : i + 1]) for i in range(5)])
    assert np.abs(whole).max() > 1e-4
    np.testing.assert_allclose(in_pairs, whole, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(one_by_one, whole, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("method", "params", "composite", "max_pooling"),
    [
        ("lrp.z", {"bias": False}, L.Composite(L.Epsilon(0.0, False)), "winner_take_all"),
        ("lrp.epsilon", {"epsilon": 0.1, "bias": False, "max_pooling": "proportional"},
         L.Composite(L.Epsilon(0.1, False)), "proportional"),
        ("lrp.gamma", {"gamma": 0.5, "bias": False}, L.Composite(L.Gamma(0.5, False)), "winner_take_all"),
        ("lrp.alpha_beta", {"alpha": 1.5, "beta": 0.5, "bias": True},
         L.Composite(L.AlphaBeta(1.5, 0.5, True)), "winner_take_all"),
        ("lrp.zplus", {"max_pooling": "proportional"}, L.Composite(L.ZPlus()), "proportional"),
        ("lrp.w_square", {}, L.Composite(L.ZPlus(), first=L.WSquare()), "winner_take_all"),
        ("lrp.flat", {}, L.Composite(L.ZPlus(), first=L.Flat()), "winner_take_all"),
        ("deep_taylor", {"low": -0.5, "high": 1.5}, L.Composite(L.ZPlus(), first=L.ZBox(-0.5, 1.5)), "winner_take_all"),
        ("lrp.composite", {"epsilon": 0.1, "gamma": 0.1, "low": -1.0, "high": 2.0},
         L.Composite(L.Epsilon(0.1), first=L.ZBox(-1.0, 2.0), last=L.Epsilon(0.0), by_type={"conv": L.Gamma(0.1)}),
         "winner_take_all"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_explain_passes_the_preset_parameters(model_zoo, unit_images, method, params, composite, max_pooling):
    model = model_zoo("conv_max_bias")
    x = unit_images[:4]
    target = [0, 1, 2, 3]
    result = unn.explain(model, x, method, target=target, **params)
    expected = L.lrp(model, x, target, composite=composite, max_pooling=max_pooling)
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-8)
    if params:  # the parameters matter: the defaults give another explanation
        assert not np.allclose(unn.explain(model, x, method, target=target), result, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    ("method", "params", "error", "message"),
    [
        ("lrp.epsilon", {"epsilon": -0.1}, ValueError, "epsilon must be non-negative and finite"),
        ("lrp.epsilon", {"epsilon": float("nan")}, ValueError, "epsilon must be non-negative and finite"),
        ("lrp.gamma", {"gamma": -1.0}, ValueError, "gamma must be non-negative and finite"),
        ("lrp.composite", {"gamma": -0.5}, ValueError, "gamma must be non-negative and finite"),
        ("lrp.epsilon", {"epsilon": float("inf")}, ValueError, "epsilon must be non-negative and finite, got inf"),
        ("lrp.epsilon", {"epsilon": "0.1"}, TypeError, "epsilon must be a number, got '0.1' \\(str\\)"),
        ("lrp.gamma", {"gamma": None}, TypeError, "gamma must be a number, got None"),
        ("deep_taylor", {"low": "0"}, TypeError, "low must be a number"),
        ("lrp.alpha_beta", {"alpha": 3.0, "beta": 1.0}, ValueError, "alpha - beta must be 1"),
        ("lrp.alpha_beta", {"alpha": 0.0, "beta": -1.0}, ValueError, "beta >= 0"),
        ("deep_taylor", {"low": 1.0, "high": 0.0}, ValueError, "low < high"),
        ("deep_taylor", {"low": 0.5, "high": 0.5}, ValueError, "low < high"),
        ("lrp.composite", {"low": 2.0, "high": 1.0}, ValueError, "low < high"),
        ("lrp.z", {"max_pooling": "foo"}, ValueError, "max_pooling must be one of .*'foo'"),
        ("deep_taylor", {"max_pooling": "average"}, ValueError, "max_pooling must be one of"),
        ("lrp.zplus", {"epsilon": 0.1}, TypeError, "has no parameter 'epsilon'"),
        ("lrp.w_square", {"bias": False}, TypeError, "has no parameter 'bias'"),
    ],
)
def test_explain_rejects_bad_parameters(model_zoo, unit_images, method, params, error, message):
    with pytest.raises(error, match=message):
        unn.explain(model_zoo("conv_max_bias"), unit_images[:2], method, **params)


def test_lrp_defaults_to_lrp_0(model_zoo, unit_images):
    model = model_zoo("conv_max_bias")
    np.testing.assert_allclose(
        L.lrp(model, unit_images[:3], 1), unn.explain(model, unit_images[:3], "lrp.z", target=1), rtol=1e-6, atol=1e-8
    )
    with pytest.raises(ValueError, match="max_pooling"):
        L.lrp(model, unit_images[:3], 1, max_pooling="foo")
    with pytest.raises(ValueError, match="max_pooling"):
        L.layer_relevances(model, unit_images[:3], 1, max_pooling="foo")


def test_max_pooling_choice_matters(model_zoo, unit_images):
    model = model_zoo("conv_max_bias")
    wta = unn.explain(model, unit_images[:3], "lrp.epsilon", target=1)
    proportional = unn.explain(model, unit_images[:3], "lrp.epsilon", target=1, max_pooling="proportional")
    assert not np.allclose(wta, proportional, rtol=1e-3, atol=1e-6)


def test_composite_by_type_with_an_unknown_key_raises():
    with pytest.raises(ValueError, match="by_type keys must be kinds of layers.*'pool'"):
        L.Composite(by_type={"pool": L.Epsilon()})


@pytest.fixture(scope="module")
def named_net():
    """conv c1 → max-pool → conv c2 → flatten → dense d1 → dense d2 (the logits), with biases."""
    keras.utils.set_random_seed(51)
    init = keras.initializers.RandomNormal(stddev=0.1)
    return keras.Sequential(
        [
            keras.Input(IMAGE),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", bias_initializer=init, name="c1"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Conv2D(6, 3, padding="same", activation="relu", bias_initializer=init, name="c2"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(10, activation="relu", bias_initializer=init, name="d1"),
            keras.layers.Dense(N_CLASSES, bias_initializer=init, name="d2"),
        ],
        name="named",
    )


@pytest.mark.parametrize("name", ["nope", "pool"])
def test_composite_naming_a_missing_layer_raises(named_net, unit_images, name):
    composite = L.Composite(by_name={name: L.ZPlus(), "d1": L.Flat()})
    message = "names layers \\['nope'\\] that are not in model" if name == "nope" else "'pool'.*ZPlus does not apply to layers of kind 'max_pool'"
    with pytest.raises(ValueError, match=message):
        L.lrp(named_net, unit_images[:2], 0, composite=composite)
    with pytest.raises(ValueError, match=name):
        _weighted_rules(composite, named_net)
    with pytest.raises(ValueError, match=name):
        L.layer_relevances(named_net, unit_images[:2], 0, composite=composite)


EPS, GAM, AB, ZP, WS, FL, E3 = (
    L.Epsilon(0.1), L.Gamma(0.5), L.AlphaBeta(2.0, 1.0), L.ZPlus(), L.WSquare(), L.Flat(), L.Epsilon(0.3)
)


@pytest.mark.parametrize(
    ("composite", "expected"),
    [
        # by_name beats first and last; by_type beats the default.
        (L.Composite(EPS, first=GAM, last=AB, by_type={"conv": ZP, "dense": FL}, by_name={"c1": WS, "d2": E3}),
         {"c1": WS, "c2": ZP, "d1": FL, "d2": E3}),
        # first and last beat by_type.
        (L.Composite(EPS, first=GAM, last=AB, by_type={"conv": ZP, "dense": FL}),
         {"c1": GAM, "c2": ZP, "d1": FL, "d2": AB}),
        # by_type for one kind only; the other kind falls back to the default.
        (L.Composite(EPS, by_type={"conv": GAM}, by_name={"d1": ZP}),
         {"c1": GAM, "c2": GAM, "d1": ZP, "d2": EPS}),
    ],
    ids=["by_name-first-last", "first-last-by_type", "by_type-default"],
)
def test_composite_priority(named_net, unit_images, composite, expected):
    assert _weighted_rules(composite, named_net) == expected
    x, target = unit_images[:3], [0, 1, 2]
    explicit = L.Composite(L.Epsilon(0.7), by_name=expected)
    result = L.lrp(named_net, x, target, composite=composite)
    np.testing.assert_allclose(result, L.lrp(named_net, x, target, composite=explicit), rtol=1e-6, atol=1e-8)
    # Swapping the rules of the two dense layers changes the explanation (the check can fail).
    swapped = L.Composite(L.Epsilon(0.7), by_name={**expected, "d1": expected["d2"], "d2": expected["d1"]})
    assert not np.allclose(result, L.lrp(named_net, x, target, composite=swapped), rtol=1e-3, atol=1e-7)


def _first_step(model):
    """The first Dense or convolution step of ``model``'s graph."""
    return unn.propagation.trace(model).weighted()[0].op


def _weighted_rules(composite, model):
    """The rules a composite gives the Dense and convolution layers of ``model``, by name."""
    weighted = {node.op.name for node in unn.propagation.trace(model).weighted()}
    return {name: rule for name, rule in composite.assignment(model).items() if name in weighted}


def test_first_beats_last_on_a_single_layer():
    model = _single_dense()
    assert list(L.Composite(EPS, first=GAM, last=AB).assignment(model).values()) == [GAM]
    assert list(L.Composite(EPS, last=AB).assignment(model).values()) == [AB]
    assert list(L.Composite(EPS, last=AB, by_type={"dense": FL}).assignment(model).values()) == [AB]


def test_preset_composite_assigns_the_recommended_rules(named_net, unit_images):
    """lrp.composite: z^B on the input layer, γ on the other convolutions, ε on the middle dense
    layers, LRP-0 on the logits."""
    x, target = unit_images[:3], [4, 3, 2]
    explicit = L.Composite(
        L.Flat(),
        by_name={"c1": L.ZBox(0.0, 1.0), "c2": L.Gamma(0.25), "d1": L.Epsilon(0.25), "d2": L.Epsilon(0.0)},
    )
    np.testing.assert_allclose(
        unn.explain(named_net, x, "lrp.composite", target=target),
        L.lrp(named_net, x, target, composite=explicit), rtol=1e-6, atol=1e-8,
    )


# --------------------------------------------------------------------------------------------
# 8. Trained models of the zoo
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twenty_digits():
    images, labels = unn.data.load_mnist("test")
    return images[:20], labels[:20]


def test_trained_cnn_conservation_and_absorption(twenty_digits):
    model = unn.models.load("cnn_nobias")
    x, labels = twenty_digits
    logits = predict_logits(model, x)
    logit = logits[np.arange(20), labels]
    assert (logits.argmax(axis=1) == labels).mean() >= 0.9  # the model is trained
    z = unn.explain(model, x, "lrp.z", target=labels)
    np.testing.assert_array_less(_relative_error(_sums(z), logit), 1e-3)
    epsilon = unn.explain(model, x, "lrp.epsilon", target=labels, epsilon=0.25)
    absorbed = np.abs(_sums(epsilon)) <= np.abs(logit)
    assert absorbed.sum() >= 18, (_sums(epsilon), logit)
    # Absorption is real: ε = 0.25 loses a visible share of the relevance on average.
    assert np.mean(np.abs(_sums(epsilon)) / np.abs(logit)) < 0.99


def test_trained_mlp_lrp_0_is_gradient_x_input_and_conserves(twenty_digits):
    model = unn.models.load("mlp_4x512_nobias")
    x, labels = twenty_digits
    z = unn.explain(model, x, "lrp.z", target=labels)
    reference = unn.explain(model, x, "gradient_x_input", target=labels)
    np.testing.assert_allclose(z, reference, rtol=1e-3, atol=1e-4 * np.abs(reference).max())
    logit = predict_logits(model, x)[np.arange(20), labels]
    np.testing.assert_array_less(_relative_error(_sums(z), logit), 1e-3)
