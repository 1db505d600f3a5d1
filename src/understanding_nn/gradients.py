"""Gradient-based explanations: sensitivity analysis and gradient × input.

Chapter 2.1 (sensitivity analysis, Montavon et al. 2018, §4.1) and chapter 2.2 (simple Taylor
decomposition, §4.2) use these; Part III (saliency, Simonyan et al. 2014) builds on them.

All three start from the gradient of the target logit with respect to the input,

.. math:: \\nabla_x S_c(x) = \\Bigl(\\frac{\\partial S_c}{\\partial x_1}, \\dots,
          \\frac{\\partial S_c}{\\partial x_d}\\Bigr),

computed for a whole batch in one compiled pass (the gradient of :math:`\\sum_n S_{c_n}(x_n)`,
whose part for sample :math:`n` is that sample's own gradient, since the model treats samples
independently in inference mode).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .attribution import (
    DEFAULT_BATCH_SIZE,
    Target,
    compile_batch_function,
    compiled,
    logit_function,
    register,
    run_batched,
)

__all__ = ["gradient", "gradient_x_input", "input_gradient", "sensitivity"]


def input_gradient(model: keras.Model) -> Any:
    """The compiled function ``(x, target) -> ∂S_target/∂x`` of ``model``, built once per model."""
    logits = logit_function(model)

    def gradient_of_target_logit(x: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            scores = tf.gather(logits(x), target, axis=1, batch_dims=1)
        return tape.gradient(scores, x)

    return compiled(model, "input_gradient", lambda: compile_batch_function(model, gradient_of_target_logit))


@register("gradient")
def gradient(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    absolute: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Saliency: the magnitude of the gradient of the target logit (Simonyan et al. 2014).

    .. math:: R_i(x) = \\Bigl|\\frac{\\partial S_c}{\\partial x_i}(x)\\Bigr|

    Parameters
    ----------
    model, x, target
        As in :func:`understanding_nn.explain`.
    absolute
        ``True`` (default) returns :math:`|\\partial S_c/\\partial x_i|`, the saliency map;
        ``False`` returns the signed gradient.
    batch_size
        Samples per compiled pass.
    """
    grad = input_gradient(model)
    if absolute:
        return run_batched(model, x, target, lambda xb, tb: tf.abs(grad(xb, tb)), batch_size=batch_size)
    return run_batched(model, x, target, grad, batch_size=batch_size)


@register("sensitivity")
def sensitivity(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Sensitivity analysis: the squared gradient of the target logit (Montavon et al. 2018, §4.1).

    .. math:: R_i(x) = \\Bigl(\\frac{\\partial S_c}{\\partial x_i}(x)\\Bigr)^2

    Its sum is :math:`\\lVert\\nabla_x S_c(x)\\rVert^2`: sensitivity decomposes the local
    steepness of the function, not its value, so it answers "what would change the score",
    not "what makes up the score".
    """
    grad = input_gradient(model)
    return run_batched(model, x, target, lambda xb, tb: tf.square(grad(xb, tb)), batch_size=batch_size)


@register("gradient_x_input")
def gradient_x_input(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Gradient × input, the simple Taylor decomposition at the root point 0 (§4.2).

    .. math:: R_i(x) = x_i \\, \\frac{\\partial S_c}{\\partial x_i}(x)

    For a bias-free ReLU network :math:`S_c` is positively homogeneous and piecewise linear, so
    :math:`\\sum_i R_i(x) = S_c(x)` exactly (Euler's theorem); with biases it is only approximate.
    """
    grad = input_gradient(model)
    return run_batched(model, x, target, lambda xb, tb: xb * grad(xb, tb), batch_size=batch_size)
