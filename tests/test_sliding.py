"""Tests of understanding_nn.attribution.explain_sliding: explaining a canvas larger than the
model's input by sliding the model over it and averaging the windows' relevance."""

from __future__ import annotations

import numpy as np
import pytest

import understanding_nn as unn
from understanding_nn.attribution import explain_sliding


def test_explain_sliding_is_public():
    assert "explain_sliding" in unn.attribution.__all__


def test_a_window_sized_canvas_gives_the_plain_explanation(conv_model, images):
    canvas, target = images[:3], np.array([1, 2, 3])
    sliding = explain_sliding(conv_model, canvas, "gradient_x_input", target, stride=5)
    plain = unn.explain(conv_model, canvas, "gradient_x_input", target)
    np.testing.assert_allclose(sliding, plain, rtol=1e-6, atol=1e-7)


def test_the_result_has_the_canvas_shape(conv_model):
    canvas = np.random.default_rng(1).random((2, 40, 36, 1), dtype=np.float32)
    relevance = explain_sliding(conv_model, canvas, "lrp.epsilon", 4, stride=3, epsilon=0.1)
    assert relevance.shape == canvas.shape
    assert relevance.dtype == np.float32
    assert np.isfinite(relevance).all()
    assert (relevance != 0).mean() > 0.9  # every part of the canvas is covered by some window


def test_two_windows_by_hand(conv_model):
    """A 28×32 canvas at stride 4 holds two windows, at columns 0 and 4: columns 0-3 come from
    the first only, 28-31 from the second only, and 4-27 are the mean of the two."""
    canvas = np.random.default_rng(2).random((1, 28, 32, 1), dtype=np.float32)
    left, right = canvas[:, :, 0:28], canvas[:, :, 4:32]
    r_left = unn.explain(conv_model, left, "gradient_x_input", 7)[0]
    r_right = unn.explain(conv_model, right, "gradient_x_input", 7)[0]
    expected = np.zeros((28, 32, 1))
    expected[:, 0:4] = r_left[:, 0:4]
    expected[:, 28:32] = r_right[:, 24:28]
    expected[:, 4:28] = (r_left[:, 4:28] + r_right[:, 0:24]) / 2
    relevance = explain_sliding(conv_model, canvas, "gradient_x_input", 7, stride=4)[0]
    np.testing.assert_allclose(relevance, expected, rtol=1e-5, atol=1e-7)


def test_the_last_window_reaches_the_border(conv_model):
    """30 columns at stride 4: windows at columns 0 and, to cover the border, 2 (not 4)."""
    canvas = np.random.default_rng(3).random((1, 28, 30, 1), dtype=np.float32)
    r_first = unn.explain(conv_model, canvas[:, :, 0:28], "gradient_x_input", 0)[0]
    r_last = unn.explain(conv_model, canvas[:, :, 2:30], "gradient_x_input", 0)[0]
    relevance = explain_sliding(conv_model, canvas, "gradient_x_input", 0, stride=4)[0]
    np.testing.assert_allclose(relevance[:, 29], r_last[:, 27], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(relevance[:, 0], r_first[:, 0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(relevance[:, 10], (r_first[:, 10] + r_last[:, 8]) / 2, rtol=1e-5, atol=1e-7)


def test_one_target_per_canvas(conv_model):
    canvas = np.random.default_rng(4).random((2, 32, 32, 1), dtype=np.float32)
    both = explain_sliding(conv_model, canvas, "gradient_x_input", [3, 5], stride=4)
    first = explain_sliding(conv_model, canvas[:1], "gradient_x_input", 3, stride=4)
    second = explain_sliding(conv_model, canvas[1:], "gradient_x_input", 5, stride=4)
    np.testing.assert_allclose(both, np.concatenate([first, second]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("canvas_shape", "stride", "target", "error", "message"),
    [
        ((1, 20, 40, 1), 4, 0, ValueError, r"smaller than one window"),
        ((1, 40, 27, 1), 4, 0, ValueError, r"smaller than one window"),
        ((1, 32, 32, 1), 0, 0, ValueError, r"stride must be an integer >= 1"),
        ((1, 32, 32, 1), -2, 0, ValueError, r"stride must be an integer >= 1"),
        ((1, 32, 32, 1), 1.5, 0, ValueError, r"stride must be an integer >= 1"),
        ((1, 32, 32, 1), True, 0, ValueError, r"stride must be an integer >= 1"),
        ((32, 32, 1), 4, 0, ValueError, r"batch of images"),
        ((1, 32, 32, 3), 4, 0, ValueError, r"batch of images"),
        ((1, 32, 32, 1), 4, None, ValueError, r"needs the class to explain"),
        ((2, 32, 32, 1), 4, [1, 2, 3], ValueError, r"target has shape \(3,\); it needs one class index per sample, shape \(2,\)"),
        ((1, 32, 32, 1), 4, 10, ValueError, r"out of range"),
    ],
)
def test_bad_arguments_raise(conv_model, canvas_shape, stride, target, error, message):
    canvas = np.zeros(canvas_shape, dtype=np.float32)
    with pytest.raises(error, match=message):
        explain_sliding(conv_model, canvas, "gradient", target, stride=stride)


def test_bad_canvas_values_raise(conv_model):
    with pytest.raises(TypeError, match="floating-point"):
        explain_sliding(conv_model, np.zeros((1, 32, 32, 1), dtype=np.uint8), "gradient", 0)
    canvas = np.zeros((1, 32, 32, 1), dtype=np.float32)
    canvas[0, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        explain_sliding(conv_model, canvas, "gradient", 0)
    with pytest.raises(ValueError, match="unknown attribution method"):
        explain_sliding(conv_model, np.zeros((1, 32, 32, 1), dtype=np.float32), "no_such_method", 0)


def test_a_model_without_a_fixed_image_size_is_refused(make_dense_net):
    flat = make_dense_net(input_shape=(784,), name="flat_inputs")
    with pytest.raises(unn.UnsupportedModelError, match="fixed size"):
        explain_sliding(flat, np.zeros((1, 800, 1, 1), dtype=np.float32), "gradient", 0)
