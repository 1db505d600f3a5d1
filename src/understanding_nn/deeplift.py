"""DeepLIFT with the Rescale rule (Shrikumar, Greenside & Kundaje 2017).

Chapter 2.6. DeepLIFT explains the *difference* of the target logit from its value at a
reference input :math:`x_0`, :math:`\\Delta S_c = S_c(x) - S_c(x_0)`, by contributions
:math:`C_i = m_i \\, (x_i - x_{0,i})`.

The multipliers :math:`m` are propagated backwards like gradients, with the chain rule, by the
shared backward pass of :mod:`understanding_nn.propagation`, but every element-wise step
:math:`y = f(z)` (any activation, and a layer normalization with its statistics held constant)
passes :math:`m_z = m_y \\cdot \\Delta y / \\Delta z` (the **Rescale rule**) instead of
:math:`m_y \\cdot f'(z)`; where :math:`\\Delta z = 0` the derivative is used. Linear steps
(Dense, convolutions, merges, affine maps, average pooling) and reshaping steps pass multipliers
through their transpose.

**Summation-to-delta**, :math:`\\sum_i C_i = \\Delta S_c`, then holds exactly for every network
built from those steps, with any branching and any reference. Max-pooling is the exception: it
passes multipliers to the maximum of each window at :math:`x`, as the gradient does, and the sum
is exact only where :math:`x` and :math:`x_0` have their maxima at the same positions (a
reference that is 0 where :math:`x` is positive, for instance, but not a blurred or uniform one).
``Multiply``, ``Maximum`` and layers the package does not know are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

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
from .propagation import Composite, Gradient, Op, Pass, Record, Rule, backward, trace

__all__ = ["DeepLiftComposite", "Rescale", "deeplift"]


@dataclass(frozen=True)
class Rescale(Rule):
    """The Rescale rule at an element-wise step :math:`y = f(z)`:
    :math:`m_z = m_y \\, \\Delta y / \\Delta z`, with :math:`\\Delta z = z - z_0`,
    :math:`\\Delta y = f(z) - f(z_0)`, and :math:`f'(z)` where :math:`\\Delta z = 0`."""

    def applies_to(self, op: Op) -> bool:
        return op.kind in ("relu", "activation", "layer_norm")

    def backward(self, op: Op, record: Record, signal: tf.Tensor) -> list[tf.Tensor]:
        if record.reference_inputs is None:
            raise ValueError("the Rescale rule needs the forward pass at the reference input")
        (z,), (z0,) = record.inputs, record.reference_inputs
        delta_in = z - z0
        close = tf.abs(delta_in) < 1e-7
        ratio = (record.output - record.reference_output) / tf.where(close, tf.ones_like(delta_in), delta_in)
        # Where the input did not change, the derivative: the chain rule of an element-wise
        # activation, or the frozen scale of a layer normalization.
        derivative = op.derivative(z) * signal if op.kind == "layer_norm" else record.vjp(op, signal)[0]
        return [tf.where(close, derivative, signal * ratio)]


@dataclass(frozen=True)
class DeepLiftComposite(Composite):
    """DeepLIFT's rules: :class:`Rescale` at element-wise steps, the transpose elsewhere."""

    method: ClassVar[str] = "DeepLIFT"

    def kind_rules(self) -> Mapping[str, Rule | None]:
        linear = Gradient()
        return {
            "dense": linear, "conv": linear, "merge": linear, "affine": linear, "reshape": linear,
            "avg_pool": linear, "max_pool": linear, "identity": Pass(),
            "relu": Rescale(), "activation": Rescale(), "layer_norm": Rescale(),
        }


def _multipliers(model: keras.Model) -> Any:
    """The compiled function ``(x, target, x0) -> C`` of ``model``."""
    validate_model(model)

    def build() -> Any:
        graph = trace(model)
        rules = DeepLiftComposite().rules(graph, "deeplift")

        def contributions(x: tf.Tensor, target: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
            # One reference for every sample (the black image, a mean image) runs once, and its
            # values broadcast against the batch.
            shared = tf.reduce_all(tf.equal(reference, reference[:1]))
            reference_values = tf.cond(shared, lambda: graph.run(reference[:1]), lambda: graph.run(reference))
            multiplier = backward(graph, rules, graph.forward(x), graph.selector(target), reference_values)
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

    The sum holds exactly for networks without max-pooling (any branching, any reference); with
    max-pooling only where :math:`x` and :math:`x_0` have the maxima of every window at the same
    positions (see the module's docstring).

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
