"""DeepLIFT with the Rescale rule (Shrikumar, Greenside & Kundaje 2017).

Chapter 2.6. DeepLIFT explains the *difference* of the target logit from its value at a
reference input :math:`x_0`, :math:`\\Delta S_c = S_c(x) - S_c(x_0)`, by contributions
:math:`C_i` that sum to it (*summation-to-delta*):

.. math:: \\sum_i C_i = S_c(x) - S_c(x_0), \\qquad C_i = m_i \\, (x_i - x_{0,i}).

The multipliers :math:`m` are propagated backwards like gradients, with the chain rule, but a
nonlinearity :math:`y = \\sigma(z)` passes :math:`m_z = m_y \\cdot \\Delta y / \\Delta z` (the
**Rescale rule**) instead of :math:`m_y \\cdot \\sigma'(z)`; where :math:`\\Delta z = 0` the
derivative is used. Linear layers (Dense, Conv2D, average pooling) pass multipliers through
their transpose, so summation-to-delta holds exactly for networks of linear layers and ReLUs.
Max-pooling passes multipliers to the maximum of each window at :math:`x`, as the gradient
does; it is exact only where :math:`x` and :math:`x_0` have the same maxima.

The network is walked with the same layer machinery as relevance propagation
(:func:`understanding_nn.lrp.plan`), so the same layers are supported and the same ones refused.
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
    register,
    resolve_reference,
    run_batched,
    validate_input,
    validate_model,
)
from .lrp import Linear, Pool, plan, record_forward

__all__ = ["deeplift"]


def _rescale(delta_out: tf.Tensor, delta_in: tf.Tensor, derivative: tf.Tensor) -> tf.Tensor:
    """:math:`\\Delta y / \\Delta z`, or the derivative where :math:`\\Delta z` is (almost) 0."""
    close = tf.abs(delta_in) < 1e-7
    return tf.where(close, derivative, delta_out / tf.where(close, tf.ones_like(delta_in), delta_in))


def _multipliers(model: keras.Model) -> Any:
    """The compiled function ``(x, target, x0) -> C`` of ``model``."""
    validate_model(model)

    def build() -> Any:
        steps = plan(model)

        def contributions(x: tf.Tensor, target: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
            inputs, relu_arguments, logits = record_forward(steps, x)
            _, reference_arguments, _ = record_forward(steps, reference)
            multiplier = tf.one_hot(target, tf.shape(logits)[1], dtype=logits.dtype)
            backward = zip(reversed(steps), reversed(inputs), reversed(relu_arguments), reversed(reference_arguments))
            for step, a, z, z0 in backward:
                if z is not None:  # a ReLU: the Rescale rule
                    multiplier = multiplier * _rescale(tf.nn.relu(z) - tf.nn.relu(z0), z - z0, tf.cast(z > 0, z.dtype))
                if isinstance(step, Linear):
                    multiplier = step.transpose(a, step.kernel, multiplier)
                elif isinstance(step, Pool):
                    multiplier = step.transpose(a, multiplier)
                else:
                    multiplier = tf.reshape(multiplier, tf.shape(a))
            return multiplier * (x - reference)

        return compile_batch_function(model, contributions, references=1)

    return compiled(model, "deeplift", build)


@register("deeplift")
def deeplift(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    reference: Any = "zeros",
    blur_sigma: float = 3.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """DeepLIFT contributions with the Rescale rule.

    .. math:: C_i = m_i (x_i - x_{0,i}), \\qquad \\sum_i C_i = S_c(x) - S_c(x_0)

    Parameters
    ----------
    model, x, target
        As in :func:`understanding_nn.explain`.
    reference
        The reference input :math:`x_0`: ``"zeros"`` (default, a black image), ``"blur"`` (each
        input blurred with a Gaussian of ``blur_sigma`` pixels), or an array: one input (such as
        the mean training image) or one reference per sample.
    blur_sigma
        Standard deviation, in pixels, of the ``"blur"`` reference.
    batch_size
        Samples per compiled pass.
    """
    contributions = _multipliers(model)
    x = validate_input(validate_model(model), x)
    references = resolve_reference(x, reference, blur_sigma=blur_sigma)
    return run_batched(model, x, target, contributions, batch_size=batch_size, per_sample=(references,))
