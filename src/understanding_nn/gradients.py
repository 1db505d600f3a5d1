"""Gradient-based explanations: sensitivity, gradient × input, saliency, deconvnet, guided
backpropagation, integrated gradients and SmoothGrad.

Chapters 2.1 (sensitivity analysis, Montavon et al. 2018, §4.1), 2.2 (simple Taylor
decomposition, §4.2) and Part III: 3.1 deconvolution (Zeiler & Fergus 2014), 3.2 saliency
(Simonyan et al. 2014), 3.3 guided backpropagation (Springenberg et al. 2014), 3.4 integrated
gradients (Sundararajan et al. 2017) and 3.5 SmoothGrad (Smilkov et al. 2017).

All three start from the gradient of the target logit with respect to the input,

.. math:: \\nabla_x S_c(x) = \\Bigl(\\frac{\\partial S_c}{\\partial x_1}, \\dots,
          \\frac{\\partial S_c}{\\partial x_d}\\Bigr),

computed for a whole batch in one compiled pass (the gradient of :math:`\\sum_n S_{c_n}(x_n)`,
whose part for sample :math:`n` is that sample's own gradient, since the model treats samples
independently in inference mode).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    logit_function,
    register,
    resolve_reference,
    resolve_target,
    run_batched,
    validate_input,
    validate_model,
)
from .propagation import KINDS, Composite, Gradient, Op, Pass, Record, Rule, backward, trace
from .streaming import progress_bar

__all__ = [
    "QUADRATURES",
    "DeconvRelu",
    "DeconvnetComposite",
    "GradientComposite",
    "GuidedBackpropComposite",
    "GuidedRelu",
    "deconvnet",
    "gradient",
    "gradient_x_input",
    "guided_backprop",
    "input_gradient",
    "integrated_gradients",
    "quadrature",
    "relu_backward_pass",
    "sensitivity",
    "smoothgrad",
]


def input_gradient(model: keras.Model) -> Any:
    """The compiled function ``(x, target) -> ∂S_target/∂x`` of ``model``, built once per model."""
    logits = logit_function(model)
    graph = trace(model)

    def gradient_of_target_logit(x: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            scores = graph.target_score(logits(x), target)
        return tape.gradient(scores, x)

    return compiled(model, "input_gradient", lambda: compile_batch_function(model, gradient_of_target_logit))


def _of_gradient(model: keras.Model, name: str, combine: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> Any:
    """The compiled function ``(x, target) -> combine(x, ∂S_target/∂x)`` of ``model``, built once
    per model under ``name`` (one function per method, so that it is traced once)."""
    grad = input_gradient(model)
    return compiled(model, name, lambda: compile_batch_function(model, lambda xb, tb: combine(xb, grad(xb, tb))))


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
    if absolute:
        return run_batched(model, x, target, _of_gradient(model, "saliency", lambda _, g: tf.abs(g)), batch_size=batch_size)
    return run_batched(model, x, target, input_gradient(model), batch_size=batch_size)


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
    return run_batched(model, x, target, _of_gradient(model, "sensitivity", lambda _, g: tf.square(g)), batch_size=batch_size)


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
    return run_batched(model, x, target, _of_gradient(model, "gradient_x_input", tf.multiply), batch_size=batch_size)


# --------------------------------------------------------------------------------------------
# Modified backward passes: deconvnet and guided backpropagation (chapters 3.1 and 3.3)
# --------------------------------------------------------------------------------------------

# How each method passes a backward signal s through a step of the ReLU family y = f(z)
# (Springenberg et al. 2014, Fig. 1): the gradient masks by the forward pass, the deconvnet by the
# sign of the signal, guided backpropagation by both. Every other step applies the chain rule.


@dataclass(frozen=True)
class DeconvRelu(Rule):
    """The deconvnet at a ReLU: only the positive part of the signal passes, whatever the
    forward input, :math:`s_z = \\max(0, s_y)`."""

    def applies_to(self, op: Op) -> bool:
        return op.kind == "relu"

    def backward(self, op: Op, record: Record, signal: tf.Tensor) -> list[tf.Tensor]:
        return [tf.nn.relu(signal)]


@dataclass(frozen=True)
class GuidedRelu(Rule):
    """Guided backpropagation at a ReLU-family step: the derivative times the positive part of
    the signal, :math:`s_z = f'(z) \\max(0, s_y)` (for the ReLU, :math:`\\mathbb 1[z > 0] \\max(0, s_y)`)."""

    def applies_to(self, op: Op) -> bool:
        return op.kind == "relu"

    def backward(self, op: Op, record: Record, signal: tf.Tensor) -> list[tf.Tensor]:
        return record.vjp(op, tf.nn.relu(signal))  # f'(z) max(0, s): the chain rule of the positive part


@dataclass(frozen=True)
class GradientComposite(Composite):
    """The chain rule at every step: the plain gradient, as one backward pass of the shared engine."""

    method: ClassVar[str] = "the gradient"

    def kind_rules(self) -> Mapping[str, Rule | None]:
        rules: dict[str, Rule | None] = {kind: Gradient() for kind in (*KINDS, "other")}
        rules["identity"] = Pass()
        return rules


@dataclass(frozen=True)
class GuidedBackpropComposite(GradientComposite):
    """Guided backpropagation: :class:`GuidedRelu` at the ReLU family, the chain rule elsewhere.
    Layers the package does not know are refused: a ReLU inside them would be missed."""

    method: ClassVar[str] = "guided_backprop"

    def kind_rules(self) -> Mapping[str, Rule | None]:
        rules = dict(super().kind_rules())
        rules["relu"], rules["other"] = GuidedRelu(), None
        return rules


@dataclass(frozen=True)
class DeconvnetComposite(GradientComposite):
    """The deconvnet: :class:`DeconvRelu` at the ReLU family, the chain rule elsewhere."""

    method: ClassVar[str] = "deconvnet"

    def kind_rules(self) -> Mapping[str, Rule | None]:
        rules = dict(super().kind_rules())
        rules["relu"], rules["other"] = DeconvRelu(), None
        return rules


_BACKWARD_COMPOSITES: dict[str, Composite] = {
    "gradient": GradientComposite(),
    "deconvnet": DeconvnetComposite(),
    "guided_backprop": GuidedBackpropComposite(),
}


def relu_backward_pass(model: keras.Model, rule: str) -> Any:
    """The compiled function ``(x, target) -> signal at the input`` of a backward pass from the
    target logit in which every step of the ReLU family uses ``rule`` (``"gradient"``,
    ``"deconvnet"`` or ``"guided_backprop"``) and every other step the chain rule: linear layers
    pass the signal through their transpose, max-pooling through its switches.

    The modified pass is the shared backward pass of :mod:`understanding_nn.propagation` with
    the method's composite: no TensorFlow gradient is overridden, so nothing changes outside it.
    """
    if rule not in _BACKWARD_COMPOSITES:
        raise ValueError(f"rule must be one of {sorted(_BACKWARD_COMPOSITES)}, got {rule!r}")
    validate_model(model)

    def build() -> Any:
        graph = trace(model)
        rules = _BACKWARD_COMPOSITES[rule].rules(graph, rule)

        def signal_at_input(x: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
            return backward(graph, rules, graph.forward(x), graph.selector(target))

        return compile_batch_function(model, signal_at_input)

    return compiled(model, f"relu_backward:{rule}", build)


@register("deconvnet")
def deconvnet(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """The deconvolution network of Zeiler & Fergus (2014) as a backward pass from the target logit.

    Convolutions pass the signal through their transposed filters, max-pooling through the
    switches recorded in the forward pass, and a ReLU passes only the positive part of the
    signal, whatever its forward input was:

    .. math:: s^{(l)} = \\max\\bigl(0, s^{(l+1)}\\bigr) .

    The rule applies to the ReLU family (ReLU, ReLU6, leaky and parametric ReLU, as layers or as
    activations); every other step, other element-wise activations included, applies the chain
    rule. Layers the package does not know are refused, since a ReLU inside them would be missed.
    """
    backward = relu_backward_pass(model, "deconvnet")
    return run_batched(model, x, target, backward, batch_size=batch_size)


@register("guided_backprop")
def guided_backprop(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Guided backpropagation (Springenberg et al. 2014): at a ReLU with argument :math:`z`,
    the backward signal passes only where both the forward input and the signal are positive,

    .. math:: s^{(l)} = \\mathbb{1}[z > 0] \\, \\max\\bigl(0, s^{(l+1)}\\bigr) .

    Any step of the ReLU family passes :math:`f'(z) \\max(0, s)` (for a leaky ReLU, the slope
    where :math:`z < 0`); every other step applies the chain rule, and layers the package does
    not know are refused, as for :func:`deconvnet`.
    """
    backward = relu_backward_pass(model, "guided_backprop")
    return run_batched(model, x, target, backward, batch_size=batch_size)


# --------------------------------------------------------------------------------------------
# Integrated gradients (chapter 3.4) and SmoothGrad (chapter 3.5)
# --------------------------------------------------------------------------------------------

QUADRATURES = ("left", "right", "midpoint", "trapezoid")


def quadrature(steps: int, rule: str = "trapezoid") -> tuple[np.ndarray, np.ndarray]:
    """Points :math:`\\alpha_k` and weights :math:`w_k` of a Riemann rule on [0, 1] with
    ``steps`` intervals, so that :math:`\\int_0^1 g(\\alpha) d\\alpha \\approx \\sum_k w_k g(\\alpha_k)`.

    ``"left"``, ``"right"`` and ``"midpoint"`` use ``steps`` points with weights ``1/steps``;
    ``"trapezoid"`` uses the ``steps + 1`` interval ends, the two outer ones with half weight.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if rule not in QUADRATURES:
        raise ValueError(f"quadrature must be one of {QUADRATURES}, got {rule!r}")
    k = np.arange(steps, dtype=np.float64)
    if rule == "trapezoid":
        alphas = np.arange(steps + 1, dtype=np.float64) / steps
        weights = np.full(steps + 1, 1.0 / steps)
        weights[[0, -1]] /= 2
        return alphas, weights
    offset = {"left": 0.0, "right": 1.0, "midpoint": 0.5}[rule]
    return (k + offset) / steps, np.full(steps, 1.0 / steps)


@register("integrated_gradients")
def integrated_gradients(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    baseline: Any = "zeros",
    steps: int = 64,
    quadrature_rule: str = "midpoint",
    blur_sigma: float = 3.0,
    seed: int = 0,
    max_inputs_per_pass: int = 2048,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Integrated gradients (Sundararajan, Taly & Yan 2017) along the straight path from a
    baseline :math:`x'` to :math:`x`:

    .. math:: R_i(x) = (x_i - x'_i) \\int_0^1 \\frac{\\partial S_c}{\\partial x_i}
              \\bigl(x' + \\alpha (x - x')\\bigr) \\, d\\alpha
              \\approx (x_i - x'_i) \\sum_k w_k \\frac{\\partial S_c}{\\partial x_i}\\bigl(x' + \\alpha_k (x - x')\\bigr)

    By the fundamental theorem of calculus the exact integral is *complete*:
    :math:`\\sum_i R_i(x) = S_c(x) - S_c(x')`; the Riemann sum approaches it as ``steps`` grows.

    Parameters
    ----------
    baseline
        :math:`x'`: ``"zeros"`` (default), ``"blur"`` (``x`` blurred with a Gaussian of
        ``blur_sigma`` pixels), ``"uniform"`` (uniform noise on [0, 1], drawn with ``seed``), or
        an array: one input or one per sample.
    steps, quadrature_rule
        Number of intervals and the Riemann rule (see :func:`quadrature`). The default,
        ``"midpoint"``, never evaluates the gradient at the baseline or at the input themselves:
        with a zero baseline, a bias-free ReLU network sits exactly on the kink of every ReLU at
        the baseline, where the gradient (0) is not the one of the path just beside it.
    max_inputs_per_pass
        Memory bound: at most this many path points (samples × steps) per gradient pass; the
        steps of a batch are evaluated in vectorised chunks of that size.
    """
    alphas, weights = quadrature(steps, quadrature_rule)
    if isinstance(max_inputs_per_pass, bool) or not isinstance(max_inputs_per_pass, (int, np.integer)) or max_inputs_per_pass < 1:
        raise ValueError(f"max_inputs_per_pass must be a positive integer, got {max_inputs_per_pass!r}")
    x = validate_input(validate_model(model), x)
    baselines = resolve_reference(x, baseline, blur_sigma=blur_sigma, seed=seed)
    grad = input_gradient(model)

    def integrate(xb: tf.Tensor, tb: tf.Tensor, x0: tf.Tensor) -> tf.Tensor:
        n = int(xb.shape[0])
        per_pass = max(1, max_inputs_per_pass // n)
        delta = xb - x0
        total = tf.zeros_like(xb)
        for start in range(0, len(alphas), per_pass):
            chunk = tf.constant(alphas[start : start + per_pass], tf.float32)
            k = int(chunk.shape[0])
            shape = (-1,) + (1,) * len(xb.shape)
            path = tf.reshape(x0[None] + tf.reshape(chunk, shape) * delta[None], (k * n, *xb.shape[1:]))
            gradients = tf.reshape(grad(path, tf.tile(tb, [k])), (k, n, *xb.shape[1:]))
            chunk_weights = tf.constant(weights[start : start + per_pass], tf.float32)
            total += tf.tensordot(chunk_weights, gradients, axes=1)
        return delta * total

    return run_batched(model, x, target, integrate, batch_size=batch_size, per_sample=(baselines,))


@register("smoothgrad")
def smoothgrad(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    base_method: str = "gradient",
    sigma: float = 0.15,
    n_samples: int = 50,
    seed: int = 0,
    base_params: dict[str, Any] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """SmoothGrad (Smilkov et al. 2017): the average of an explanation over noisy copies of the input,

    .. math:: \\hat R(x) = \\frac{1}{n} \\sum_{k=1}^{n} R\\bigl(x + \\sigma_x \\varepsilon_k\\bigr),
              \\qquad \\varepsilon_k \\sim \\mathcal{N}(0, I), \\quad
              \\sigma_x = \\sigma \\, (\\max_i x_i - \\min_i x_i) .

    The target is resolved once on the noise-free inputs, so every noisy copy explains the same
    class.

    Parameters
    ----------
    base_method
        The explanation :math:`R` that is averaged, any name of :func:`understanding_nn.methods`
        except ``"smoothgrad"`` (default ``"gradient"``, the saliency map), with its own
        parameters in ``base_params`` (for example ``{"steps": 32}`` for integrated gradients).
    sigma
        The noise level as a fraction of each input's value range (``0`` gives the base method).
    n_samples
        Number :math:`n` of noisy copies.
    seed
        Seed of the noise. The same :math:`n` noise patterns are used for every input, so an
        input's explanation does not depend on the batch it comes in.
    """
    from .attribution import explain  # the registry's entry point, for any base method

    if base_method == "smoothgrad":
        raise ValueError("smoothgrad cannot wrap itself; choose another base_method")
    if not sigma >= 0:
        raise ValueError(f"sigma must be non-negative (a fraction of the input range), got {sigma!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    x = validate_input(validate_model(model), x)
    targets = resolve_target(model, x, target, batch_size)
    noise = np.random.default_rng(seed).standard_normal((n_samples, *x.shape[1:])).astype(np.float32)
    value_range = (x.max(axis=tuple(range(1, x.ndim))) - x.min(axis=tuple(range(1, x.ndim))))
    scale = (sigma * value_range).reshape((-1,) + (1,) * (x.ndim - 1))
    total = np.zeros_like(x, dtype=np.float64)
    with progress_bar(n_samples, unit="noisy copy") as bar:
        for pattern in noise:
            total += explain(model, x + scale * pattern, base_method, targets, batch_size=batch_size, **(base_params or {}))
            bar.update()
    return (total / n_samples).astype(np.float32)
