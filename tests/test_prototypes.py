"""Tests of understanding_nn.prototypes: activation maximization (class model visualisation), with an
expert, in a generator's code space, and the distance of prototypes to the data."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import understanding_nn as unn
from understanding_nn import experts, generators
from understanding_nn.prototypes import (
    Prototypes,
    activation_maximization,
    code_space_maximization,
    distance_to_data,
    step_function,
)


@pytest.fixture(scope="module")
def mlp():
    """The zoo MLP (784-512-100-10), read from the cache."""
    return unn.models.load("mlp")


def _squared_distance(result, reference=0.0):
    return ((result.inputs - reference) ** 2).reshape(len(result.inputs), -1).sum(axis=1)


# --------------------------------------------------------------------------------------------
# The ascent
# --------------------------------------------------------------------------------------------


def test_result_shapes_dtypes_and_rows_follow_classes(smooth_model):
    result = activation_maximization(smooth_model, [3, 7, 3], steps=5)
    assert isinstance(result, Prototypes)
    assert result.inputs.shape == (3, 28, 28, 1) and result.inputs.dtype == np.float32
    assert result.classes.tolist() == [3, 7, 3]
    assert result.objective_trace.shape == (6, 3) and result.objective_trace.dtype == np.float64
    # Same class, same start: the same prototype; the trace's last row is the final objective.
    np.testing.assert_allclose(result.inputs[0], result.inputs[2], rtol=1e-5, atol=1e-5)
    logits = unn.attribution.predict_logits(smooth_model, result.inputs)
    expected = logits[np.arange(3), [3, 7, 3]] - 0.1 * _squared_distance(result)
    np.testing.assert_allclose(result.objective_trace[-1], expected, rtol=1e-5, atol=1e-5)


def test_objective_increases_with_adam(smooth_model):
    trace = activation_maximization(smooth_model, range(10), steps=50).objective_trace
    assert (trace[-1] > trace[0] + 1e-3).all()


@pytest.mark.parametrize("objective", ["logit", "log_probability"])
def test_small_sgd_steps_never_decrease_the_objective(smooth_model, objective):
    trace = activation_maximization(
        smooth_model, range(10), objective=objective, optimizer="sgd", learning_rate=1e-3,
        steps=60, start="noise",
    ).objective_trace
    assert (np.diff(trace, axis=0) >= -1e-6).all()
    assert (trace[-1] > trace[0]).all()


def test_box_is_respected(smooth_model):
    result = activation_maximization(smooth_model, range(10), box=(0.0, 1.0), l2=0.0, steps=30, start="noise")
    assert result.inputs.min() >= 0.0 and result.inputs.max() <= 1.0
    assert np.isclose(result.inputs, 0.0).any() or np.isclose(result.inputs, 1.0).any()  # the box is active


def test_same_seed_same_prototype_other_seed_other(smooth_model):
    first = activation_maximization(smooth_model, [2, 5], start="noise", seed=4, steps=10)
    again = activation_maximization(smooth_model, [2, 5], start="noise", seed=4, steps=10)
    other = activation_maximization(smooth_model, [2, 5], start="noise", seed=5, steps=10)
    np.testing.assert_array_equal(first.inputs, again.inputs)
    np.testing.assert_array_equal(first.objective_trace, again.objective_trace)
    assert not np.allclose(first.inputs, other.inputs)


def test_larger_l2_stays_closer_to_the_reference(smooth_model, digits):
    reference = digits[0][1]
    near = activation_maximization(smooth_model, range(10), l2=1.0, reference=reference, steps=100)
    far = activation_maximization(smooth_model, range(10), l2=0.01, reference=reference, steps=100)
    assert (_squared_distance(near, reference) < _squared_distance(far, reference)).all()


def test_one_compiled_step_for_any_number_of_classes(make_dense_net):
    model = make_dense_net((8,), seed=7, name="trace_once")
    one = activation_maximization(model, 4, steps=3)
    many = activation_maximization(model, [9, 0, 4, 1], steps=3)
    assert step_function(model, "logit", "adam").experimental_get_tracing_count() == 1
    # Rows are independent: class 4 gives the same prototype alone or in a batch.
    np.testing.assert_allclose(many.inputs[2], one.inputs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(many.objective_trace[:, 2], one.objective_trace[:, 0], rtol=1e-5, atol=1e-6)


def test_final_softmax_is_stripped(make_dense_net):
    plain = make_dense_net((8,), seed=8, name="plain")
    squashed = make_dense_net((8,), seed=8, final_activation="softmax", name="squashed")
    a = activation_maximization(plain, [1, 2], steps=5)
    b = activation_maximization(squashed, [1, 2], steps=5)
    np.testing.assert_allclose(a.inputs, b.inputs, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# On the zoo MLP
# --------------------------------------------------------------------------------------------


def test_prototype_is_more_typical_than_its_start(mlp):
    start = np.full((28, 28, 1), 0.1, np.float32)
    result = activation_maximization(
        mlp, range(10), objective="log_probability", l2=0.05, start=start, box=(0.0, 1.0), steps=200
    )
    probability = lambda x: keras.ops.convert_to_numpy(keras.ops.softmax(unn.attribution.predict_logits(mlp, x)))
    before = probability(np.repeat(start[None], 10, axis=0))[np.arange(10), np.arange(10)]
    after = probability(result.inputs)[np.arange(10), np.arange(10)]
    assert (after > before).all()
    assert (after > 0.9).all()


def test_logit_and_log_probability_give_different_prototypes(mlp):
    logit = activation_maximization(mlp, [3, 8], objective="logit", box=(0.0, 1.0), steps=100)
    log_p = activation_maximization(mlp, [3, 8], objective="log_probability", box=(0.0, 1.0), steps=100)
    assert np.abs(logit.inputs - log_p.inputs).max() > 0.1


# --------------------------------------------------------------------------------------------
# With an expert
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_expert():
    """A PCA-Gaussian expert with random orthonormal directions (untrained, seeded)."""
    expert = experts.PCAGaussian(3, name="test_expert")
    rng = np.random.default_rng(0)
    directions, _ = np.linalg.qr(rng.normal(size=(784, 3)))
    expert.mean.assign(rng.uniform(0.0, 0.5, 784).astype(np.float32))
    expert.directions.assign(directions.astype(np.float32))
    expert.variances.assign(np.array([1.0, 0.5, 0.2], np.float32))
    expert.rest_variance.assign(np.float32(0.5))
    return expert


def test_expert_term_enters_the_objective(smooth_model, small_expert):
    result = activation_maximization(
        smooth_model, [1, 4], objective="log_probability", l2=0.2, expert=small_expert, expert_weight=0.3,
        box=(0.0, 1.0), steps=5,
    )
    logits = unn.attribution.predict_logits(smooth_model, result.inputs)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = (log_p[np.arange(2), [1, 4]] + 0.3 * small_expert.log_density(tf.constant(result.inputs)).numpy()
                - 0.2 * _squared_distance(result))
    np.testing.assert_allclose(result.objective_trace[-1], expected, rtol=1e-4, atol=1e-3)


def test_small_sgd_steps_never_decrease_the_objective_with_an_expert(smooth_model, small_expert):
    trace = activation_maximization(
        smooth_model, range(10), objective="log_probability", l2=0.0, expert=small_expert, expert_weight=0.1,
        optimizer="sgd", learning_rate=1e-3, steps=40, start="noise",
    ).objective_trace
    assert (np.diff(trace, axis=0) >= -1e-5).all()
    assert (trace[-1] > trace[0]).all()


def test_a_heavier_expert_gives_more_likely_prototypes(smooth_model, small_expert):
    density = lambda result: small_expert.log_density(tf.constant(result.inputs)).numpy()
    light = activation_maximization(smooth_model, range(10), objective="log_probability", l2=0.0,
                                    expert=small_expert, expert_weight=0.01, box=(0.0, 1.0), steps=100)
    heavy = activation_maximization(smooth_model, range(10), objective="log_probability", l2=0.0,
                                    expert=small_expert, expert_weight=1.0, box=(0.0, 1.0), steps=100)
    assert (density(heavy) > density(light)).all()


def test_each_expert_gets_its_own_compiled_step(make_dense_net, small_expert):
    model = make_dense_net((8,), seed=9, name="expert_steps")
    plain = step_function(model, "logit", "adam")
    with_expert = step_function(model, "logit", "adam", expert=small_expert)
    assert plain is not with_expert
    assert step_function(model, "logit", "adam", expert=small_expert) is with_expert


# --------------------------------------------------------------------------------------------
# In code space
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def decoder():
    """The decoder of a small untrained VAE (seeded): codes of size 4 to 28×28×1 images."""
    keras.utils.set_random_seed(5)
    return generators.vae(code_size=4, hidden=32, name="test_vae").decoder


def test_code_space_result_is_the_generated_image_of_the_codes(smooth_model, decoder):
    result = code_space_maximization(smooth_model, decoder, [0, 6, 6], steps=10, start="noise", seed=1)
    assert result.codes.shape == (3, 4) and result.codes.dtype == np.float32
    assert result.inputs.shape == (3, 28, 28, 1)
    np.testing.assert_allclose(result.inputs, decoder(tf.constant(result.codes)).numpy(), rtol=1e-5, atol=1e-6)
    assert result.inputs.min() >= 0.0 and result.inputs.max() <= 1.0  # the decoder's sigmoid
    logits = unn.attribution.predict_logits(smooth_model, result.inputs)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = log_p[np.arange(3), [0, 6, 6]] - 0.5 * (result.codes**2).sum(axis=1)
    np.testing.assert_allclose(result.objective_trace[-1], expected, rtol=1e-4, atol=1e-4)


def test_code_space_ascent_increases_the_objective_and_is_seeded(smooth_model, decoder):
    sgd = code_space_maximization(smooth_model, decoder, range(10), optimizer="sgd", learning_rate=1e-3,
                                  steps=40, start="noise", seed=3)
    assert (np.diff(sgd.objective_trace, axis=0) >= -1e-5).all()
    assert (sgd.objective_trace[-1] > sgd.objective_trace[0]).all()
    again = code_space_maximization(smooth_model, decoder, range(10), optimizer="sgd", learning_rate=1e-3,
                                    steps=40, start="noise", seed=3)
    np.testing.assert_array_equal(sgd.codes, again.codes)
    other = code_space_maximization(smooth_model, decoder, range(10), steps=5, start="noise", seed=4)
    assert not np.allclose(sgd.codes, other.codes)


def test_code_space_reference_is_the_centre_of_the_prior(smooth_model, decoder):
    centre = np.full(4, 2.0, np.float32)
    near = code_space_maximization(smooth_model, decoder, range(10), l2=5.0, reference=centre, steps=100)
    assert np.abs(near.codes - centre).max() < 0.5


# --------------------------------------------------------------------------------------------
# Distance to the data
# --------------------------------------------------------------------------------------------


def test_distance_to_data_finds_the_nearest_point():
    data = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    distances, indices = distance_to_data(np.array([[3.0, 3.0], [0.1, 0.0]]), data)
    np.testing.assert_allclose(distances, [1.0, 0.1])
    assert indices.tolist() == [1, 0]
    distances, indices = distance_to_data(np.array([[0.1, 0.0]]), data, labels=[0, 1, 1], classes=[1])
    assert indices.tolist() == [2] and distances[0] == pytest.approx(np.hypot(0.9, 1.0))


def test_correlation_distance_ignores_contrast(digits):
    images = digits[0]
    faint = 0.1 * images[:3]
    distances, indices = distance_to_data(faint, images, metric="correlation")
    np.testing.assert_allclose(distances, 0.0, atol=1e-9)
    assert indices.tolist() == [0, 1, 2]
    euclidean, _ = distance_to_data(faint, images)
    assert (euclidean > 0.5).all()


# --------------------------------------------------------------------------------------------
# On the zoo's models (slow on an empty cache)
# --------------------------------------------------------------------------------------------


def _target_probability(model, x, classes):
    logits = unn.attribution.predict_logits(model, x)
    probability = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (probability / probability.sum(axis=1, keepdims=True))[np.arange(len(classes)), classes]


@pytest.mark.slow
def test_expert_prototypes_are_more_natural_than_plain_ones(mlp):
    x_train = unn.data.load_mnist("train")[0]
    rbm = unn.models.load("rbm")
    start = np.repeat(x_train.mean(axis=0)[None], 10, axis=0)
    plain = activation_maximization(mlp, range(10), objective="log_probability", l2=0.1, box=(0.0, 1.0), steps=300)
    expert = activation_maximization(mlp, range(10), objective="log_probability", l2=0.0, expert=rbm,
                                     expert_weight=0.1, start=start, box=(0.0, 1.0), learning_rate=0.01, steps=300)
    assert (expert.objective_trace[-1] > expert.objective_trace[0]).all()
    assert (_target_probability(mlp, expert.inputs, np.arange(10)) > _target_probability(mlp, start, np.arange(10))).all()
    plain_distance, _ = distance_to_data(plain.inputs, x_train, metric="correlation")
    expert_distance, _ = distance_to_data(expert.inputs, x_train, metric="correlation")
    assert expert_distance.mean() < plain_distance.mean()


@pytest.mark.slow
def test_code_space_prototypes_raise_the_target_probability(mlp):
    decoder = unn.models.load("vae").decoder
    result = code_space_maximization(mlp, decoder, range(10), steps=300)
    start = decoder(tf.zeros((10, 8))).numpy()
    assert (_target_probability(mlp, result.inputs, np.arange(10)) > _target_probability(mlp, start, np.arange(10))).all()
    assert (_target_probability(mlp, result.inputs, np.arange(10)) > 0.5).all()


# --------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"objective": "probability"}, ValueError, "unknown objective 'probability'"),
        ({"optimizer": "rmsprop"}, ValueError, "unknown optimizer 'rmsprop'"),
        ({"l2": -0.1}, ValueError, "l2 .* non-negative"),
        ({"l2": float("nan")}, ValueError, "l2 must be finite"),
        ({"steps": 0}, ValueError, "steps must be an integer of at least 1"),
        ({"steps": 2.5}, ValueError, "steps must be an integer"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate must be positive"),
        ({"box": (1.0, 0.0)}, ValueError, "low < high"),
        ({"box": (0.0,)}, ValueError, "box must be None or a pair"),
        ({"box": (0.0, float("inf"))}, ValueError, "box high must be finite"),
        ({"reference": np.zeros((5, 5))}, ValueError, "reference: reference has shape"),
        ({"reference": "mean"}, TypeError, "reference must be None or an array"),
        ({"start": np.zeros((3, 28, 28, 1))}, ValueError, "start: .*one per sample"),
        ({"start": "zeros"}, ValueError, "start must be None, 'noise' or an array"),
    ],
)
def test_bad_arguments_raise(smooth_model, kwargs, error, match):
    with pytest.raises(error, match=match):
        activation_maximization(smooth_model, [0, 1], **{"steps": 2, **kwargs})


@pytest.mark.parametrize(
    ("classes", "error", "match"),
    [
        (10, ValueError, "target 10 is out of range: the model has 10 classes"),
        ([0, -1], ValueError, "target -1 is out of range"),
        ([], ValueError, "classes is empty"),
        (np.zeros((2, 2), int), ValueError, "1-D sequence"),
        ([0.5], TypeError, "integer class indices"),
    ],
)
def test_bad_classes_raise(smooth_model, classes, error, match):
    with pytest.raises(error, match=match):
        activation_maximization(smooth_model, classes, steps=2)


def test_not_a_model_raises():
    with pytest.raises(TypeError, match="Keras 3 model"):
        activation_maximization("model", 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"expert_weight": -1.0}, ValueError, "expert_weight .* non-negative, got -1.0"),
        ({"expert": "rbm"}, TypeError, "expert must have a log_density"),
        ({"expert_weight": "a lot"}, TypeError, "expert_weight must be a number"),
    ],
)
def test_bad_expert_arguments_raise(smooth_model, kwargs, error, match):
    with pytest.raises(error, match=match):
        activation_maximization(smooth_model, [0, 1], steps=2, **kwargs)


def test_code_space_bad_arguments_raise(smooth_model, decoder, make_dense_net):
    with pytest.raises(TypeError, match="generator must be a Keras 3 model"):
        code_space_maximization(smooth_model, lambda z: z, [0])
    wrong = make_dense_net((8,), input_shape=(4,), n_classes=5, name="wrong_generator")
    with pytest.raises(ValueError, match=r"outputs shape \(5,\), but model 'smooth_net' takes inputs of shape \(28, 28, 1\)"):
        code_space_maximization(smooth_model, wrong, [0])
    with pytest.raises(ValueError, match="target 12 is out of range"):
        code_space_maximization(smooth_model, decoder, [12])
    with pytest.raises(ValueError, match="l2 .* non-negative"):
        code_space_maximization(smooth_model, decoder, [0], l2=-0.5)
    with pytest.raises(ValueError, match=r"reference: reference has shape \(3,\)"):
        code_space_maximization(smooth_model, decoder, [0], reference=np.zeros(3))


def test_distance_to_data_bad_arguments_raise():
    with pytest.raises(ValueError, match="prototypes have 3 features but data has 2"):
        distance_to_data(np.zeros((1, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="unknown metric 'cosine'"):
        distance_to_data(np.zeros((1, 2)), np.zeros((4, 2)), metric="cosine")
    with pytest.raises(ValueError, match="give both labels"):
        distance_to_data(np.zeros((1, 2)), np.zeros((4, 2)), labels=[0, 0, 1, 1])
    with pytest.raises(ValueError, match="has no data point"):
        distance_to_data(np.zeros((1, 2)), np.zeros((2, 2)), labels=[0, 0], classes=[3])
    with pytest.raises(ValueError, match="non-empty batch"):
        distance_to_data(np.zeros(3), np.zeros((4, 3)))
