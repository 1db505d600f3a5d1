"""Tests of understanding_nn.prototypes: activation maximization (class model visualisation)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import understanding_nn as unn
from understanding_nn.prototypes import Prototypes, activation_maximization, step_function


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
