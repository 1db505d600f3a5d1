"""Layer-wise relevance propagation (LRP) and deep Taylor decomposition (DTD).

Chapters 2.3 to 2.5 (Montavon, Samek & Müller 2018, §4.3, §5 and §6; Bach et al. 2015;
Montavon et al. 2017). The relevance of the target logit, :math:`R_c = S_c(x)`, is passed down
the network layer by layer. At a linear layer (Dense or Conv2D) with inputs :math:`a_j` and
outputs :math:`z_k`, a **rule** decides how the relevance :math:`R_k` of each output is shared
among the inputs; every rule here is an instance of

.. math:: R_j = \\sum_k \\frac{q_{jk}}{\\sum_{j'} q_{j'k}} R_k,

with its own contribution :math:`q_{jk}` (for LRP-0, :math:`q_{jk} = a_j w_{jk}`). The sums are
computed with the forward function of the layer and its transpose (the "forward, divide,
backward, multiply" recipe of §5.1): :math:`z = \\text{forward}(a)`, :math:`s = R / z`,
:math:`c = \\text{forward}^\\top(s)`, :math:`R_j = a_j c_j`. A zero denominator gives zero
relevance, never NaN.

Rules are small objects (:class:`Epsilon`, :class:`Gamma`, :class:`AlphaBeta`, :class:`ZPlus`,
:class:`WSquare`, :class:`Flat`, :class:`ZBox`), assigned to layers by a :class:`Composite`
(a default, by layer type, by position, or by layer name). Pooling, reshaping and dropout layers
have fixed behaviour (``max_pooling`` chooses winner-take-all or proportional max-pooling), and a
BatchNormalization that follows a Dense or Conv2D layer is folded into it. Any other layer is
refused with :class:`~understanding_nn.attribution.UnsupportedModelError`.

The registered methods (``lrp.z``, ``lrp.epsilon``, ``lrp.gamma``, ``lrp.alpha_beta``,
``lrp.zplus``, ``lrp.w_square``, ``lrp.flat``, ``deep_taylor``, ``lrp.composite``) are presets;
:func:`lrp` takes any composite and :func:`layer_relevances` returns every layer's relevance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .attribution import (
    DEFAULT_BATCH_SIZE,
    Target,
    UnsupportedModelError,
    compile_batch_function,
    compiled,
    register,
    resolve_target,
    run_batched,
    validate_input,
    validate_model,
)

__all__ = [
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "Flat",
    "Gamma",
    "Linear",
    "Passthrough",
    "Pool",
    "Rule",
    "WSquare",
    "ZBox",
    "ZPlus",
    "deep_taylor",
    "layer_relevances",
    "lrp",
    "lrp_alpha_beta",
    "lrp_composite",
    "lrp_epsilon",
    "lrp_flat",
    "lrp_gamma",
    "lrp_w_square",
    "lrp_z",
    "lrp_zplus",
    "plan",
    "record_forward",
]

MAX_POOLING = ("winner_take_all", "proportional")


def _divide(numerator: tf.Tensor, denominator: tf.Tensor) -> tf.Tensor:
    """``numerator / denominator``, and 0 where the denominator is 0 (no relevance, no NaN)."""
    return tf.math.divide_no_nan(numerator, denominator)


# --------------------------------------------------------------------------------------------
# Layers as propagation steps
# --------------------------------------------------------------------------------------------


@dataclass
class Linear:
    """A Dense or Conv2D layer, with any batch normalization that follows it folded in, as an
    affine map :math:`z = w^\\top a + b`.

    ``activation`` is ``"relu"`` or ``"linear"``: relevance passes a ReLU unchanged, so only
    the affine part matters for the rules. ``kernel`` and ``bias`` are read from the layers'
    variables at every access, so a compiled propagation always uses the current weights.
    """

    layer: keras.layers.Layer
    activation: str
    norm: keras.layers.BatchNormalization | None = None

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def kind(self) -> str:
        return "dense" if isinstance(self.layer, keras.layers.Dense) else "conv"

    def _norm_scale(self) -> tf.Tensor:
        """:math:`s = \\gamma / \\sqrt{\\sigma^2 + \\epsilon}` of the folded normalization."""
        norm = self.norm
        scale = tf.math.rsqrt(tf.convert_to_tensor(norm.moving_variance) + norm.epsilon)
        return scale * norm.gamma if norm.scale else scale

    @property
    def kernel(self) -> tf.Tensor:
        """:math:`w`, or :math:`w s` with a folded normalization."""
        kernel = tf.convert_to_tensor(self.layer.kernel)
        return kernel if self.norm is None else kernel * self._norm_scale()

    @property
    def bias(self) -> tf.Tensor | None:
        """:math:`b`, or :math:`(b - \\mu) s + \\beta` with a folded normalization; ``None`` for
        a layer without bias or normalization."""
        bias = tf.convert_to_tensor(self.layer.bias) if self.layer.use_bias else None
        if self.norm is None:
            return bias
        norm = self.norm
        if bias is None:
            bias = tf.zeros_like(tf.convert_to_tensor(norm.moving_mean))
        bias = (bias - norm.moving_mean) * self._norm_scale()
        return bias + norm.beta if norm.center else bias

    def affine(self, a: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor | None = None) -> tf.Tensor:
        """The layer's affine map with a given (possibly modified) kernel and bias."""
        a = tf.convert_to_tensor(a, tf.float32)
        if self.kind == "dense":
            z = tf.matmul(a, kernel)
        else:
            layer = self.layer
            z = tf.nn.conv2d(
                a, kernel, strides=layer.strides, padding=layer.padding.upper(), dilations=layer.dilation_rate
            )
        return z if bias is None else z + bias

    def transpose(self, a: tf.Tensor, kernel: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
        """:math:`c_j = \\sum_k w_{jk} s_k`: the affine map's transpose applied to ``s``."""
        a, s = tf.convert_to_tensor(a, tf.float32), tf.convert_to_tensor(s, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(a)
            z = self.affine(a, kernel)
        return tape.gradient(z, a, output_gradients=s)

    def forward(self, a: tf.Tensor) -> tf.Tensor:
        z = self.affine(a, self.kernel, self.bias)
        return tf.nn.relu(z) if self.activation == "relu" else z


@dataclass
class Pool:
    """Max, average or global average pooling."""

    name: str
    kind: str  # "max", "avg" or "global_avg"
    pool_size: tuple[int, int] = (2, 2)
    strides: tuple[int, int] = (2, 2)
    padding: str = "VALID"

    def average(self, a: tf.Tensor) -> tf.Tensor:
        if self.kind == "global_avg":
            return tf.reduce_mean(a, axis=(1, 2))
        return tf.nn.avg_pool2d(a, self.pool_size, self.strides, self.padding)

    def forward(self, a: tf.Tensor) -> tf.Tensor:
        if self.kind == "max":
            return tf.nn.max_pool2d(a, self.pool_size, self.strides, self.padding)
        return self.average(a)

    def transpose(self, a: tf.Tensor, signal: tf.Tensor) -> tf.Tensor:
        """Pass a backward signal as the gradient does: max-pooling routes each window's signal
        to its maximum at ``a`` (the "switches"), average pooling shares it evenly."""
        with tf.GradientTape() as tape:
            tape.watch(a)
            pooled = self.forward(a)
        return tape.gradient(pooled, a, output_gradients=signal)

    def propagate(self, a: tf.Tensor, relevance: tf.Tensor, max_pooling: str) -> tf.Tensor:
        """Winner-take-all routes each window's relevance to its maximum (Bach et al. 2015);
        proportional, and average pooling, share it as :math:`R_j = a_j / \\sum_{j'} a_{j'} R_k`."""
        winner_take_all = self.kind == "max" and max_pooling == "winner_take_all"
        with tf.GradientTape() as tape:
            tape.watch(a)
            pooled = self.forward(a) if winner_take_all else self.average(a)
        if winner_take_all:
            return tape.gradient(pooled, a, output_gradients=relevance)
        return a * tape.gradient(pooled, a, output_gradients=_divide(relevance, pooled))


@dataclass
class Passthrough:
    """A layer that only reshapes its input (Flatten, Reshape), drops nothing at explanation time
    (Dropout), or applies a ReLU: relevance passes it unchanged, reshaped back to its input."""

    name: str
    function: Callable[[tf.Tensor], tf.Tensor]
    elementwise: bool = False  # True for the ReLU, False for reshapes and dropout

    def forward(self, a: tf.Tensor) -> tf.Tensor:
        return self.function(a)


Step = Linear | Pool | Passthrough


def record_forward(steps: list[Step], x: tf.Tensor) -> tuple[list[tf.Tensor], list[tf.Tensor | None], tf.Tensor]:
    """Run ``x`` through ``steps``, keeping what backward passes need.

    Returns the input of every step, the argument of every ReLU (the pre-activation ``z`` of a
    Linear step with a ReLU, the input of a ReLU layer; ``None`` elsewhere), and the output.
    """
    inputs, relu_arguments = [], []
    a = x
    for step in steps:
        inputs.append(a)
        if isinstance(step, Linear):
            z = step.affine(a, step.kernel, step.bias)
            relu_arguments.append(z if step.activation == "relu" else None)
            a = tf.nn.relu(z) if step.activation == "relu" else z
        else:
            relu_arguments.append(a if isinstance(step, Passthrough) and step.elementwise else None)
            a = step.forward(a)
    return inputs, relu_arguments, a


def _activation_name(layer: keras.layers.Layer) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "linear")


def _linear_from(layer: keras.layers.Layer, is_last: bool) -> Linear:
    activation = _activation_name(layer)
    allowed = ("relu", "linear", "softmax", "sigmoid") if is_last else ("relu", "linear")
    if activation not in allowed:
        raise UnsupportedModelError(
            f"layer {layer.name!r} ({type(layer).__name__}) has activation {activation!r}; relevance "
            "propagation supports ReLU or no activation (and a final softmax or sigmoid)"
        )
    if isinstance(layer, keras.layers.Conv2D) and (layer.data_format != "channels_last" or layer.groups != 1):
        raise UnsupportedModelError(
            f"Conv2D layer {layer.name!r} uses data_format={layer.data_format!r}, groups={layer.groups}; "
            "relevance propagation supports channels_last convolutions without groups"
        )
    return Linear(layer, "relu" if activation == "relu" else "linear")


def _fold_batch_norm(linear: Linear, norm: keras.layers.BatchNormalization) -> Linear:
    """Fold an inference-mode batch normalization into the affine layer before it.

    :math:`\\gamma (z - \\mu) / \\sqrt{\\sigma^2 + \\epsilon} + \\beta` of :math:`z = w^\\top a + b`
    is again affine, with kernel :math:`w s` and bias :math:`(b - \\mu) s + \\beta`, where
    :math:`s = \\gamma / \\sqrt{\\sigma^2 + \\epsilon}` (see :attr:`Linear.kernel`, :attr:`Linear.bias`).
    """
    if linear.activation != "linear" or linear.norm is not None:
        raise UnsupportedModelError(
            f"BatchNormalization layer {norm.name!r} follows {linear.name!r}, which applies a ReLU "
            "first; only a normalization directly after a Dense or Conv2D without activation can be folded"
        )
    if norm.axis not in (-1, len(norm.input.shape) - 1):
        raise UnsupportedModelError(f"BatchNormalization layer {norm.name!r} normalises axis {norm.axis}, not the channels")
    return Linear(linear.layer, "linear", norm)


def _pool_from(layer: keras.layers.Layer, kind: str) -> Pool:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise UnsupportedModelError(f"pooling layer {layer.name!r} is not channels_last")
    if kind == "global_avg":
        if getattr(layer, "keepdims", False):
            raise UnsupportedModelError(f"GlobalAveragePooling2D layer {layer.name!r} keeps its dimensions")
        return Pool(layer.name, kind)
    return Pool(layer.name, kind, tuple(layer.pool_size), tuple(layer.strides), layer.padding.upper())


def plan(model: keras.Model) -> list[Step]:
    """The model as a list of propagation steps, after checking every layer is supported.

    Supported: Dense and Conv2D (ReLU or no activation; a final softmax or sigmoid is ignored),
    MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Flatten, Reshape, Dropout,
    BatchNormalization right after a Dense or Conv2D without activation (folded into it), ReLU
    as a layer or an ``Activation("relu")``, and a final ``Softmax``/``Activation("softmax")``;
    in a Sequential model or a functional model that is a single chain.
    """
    validate_model(model)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    previous_output = model.inputs[0]
    steps: list[Step] = []
    for index, layer in enumerate(layers):
        if layer.input is not previous_output and not isinstance(model, keras.Sequential):
            raise UnsupportedModelError(
                f"layer {layer.name!r} does not take the output of the layer before it; relevance "
                "propagation supports Sequential models and single-chain functional models"
            )
        previous_output = layer.output
        is_last = index == len(layers) - 1
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)) and type(layer) in (
            keras.layers.Dense, keras.layers.Conv2D
        ):
            steps.append(_linear_from(layer, is_last))
        elif isinstance(layer, keras.layers.BatchNormalization):
            if not steps or not isinstance(steps[-1], Linear):
                raise UnsupportedModelError(
                    f"BatchNormalization layer {layer.name!r} does not follow a Dense or Conv2D layer, "
                    "so it cannot be folded"
                )
            steps[-1] = _fold_batch_norm(steps[-1], layer)
        elif type(layer) is keras.layers.MaxPooling2D:
            steps.append(_pool_from(layer, "max"))
        elif type(layer) is keras.layers.AveragePooling2D:
            steps.append(_pool_from(layer, "avg"))
        elif type(layer) is keras.layers.GlobalAveragePooling2D:
            steps.append(_pool_from(layer, "global_avg"))
        elif type(layer) in (keras.layers.Flatten, keras.layers.Reshape):
            target_shape = tuple(layer.output.shape[1:])
            steps.append(Passthrough(layer.name, lambda a, s=target_shape: tf.reshape(a, (-1, *s))))
        elif type(layer) is keras.layers.Dropout:
            steps.append(Passthrough(layer.name, tf.identity))
        elif (type(layer) is keras.layers.ReLU and _is_plain_relu(layer)) or (
            type(layer) is keras.layers.Activation and _activation_name(layer) == "relu"
        ):
            steps.append(Passthrough(layer.name, tf.nn.relu, elementwise=True))
        elif is_last and (
            type(layer) is keras.layers.Softmax
            or (type(layer) is keras.layers.Activation and _activation_name(layer) in ("softmax", "sigmoid"))
        ):
            pass  # explanations start from the logits
        else:
            raise UnsupportedModelError(
                f"layer {layer.name!r} ({type(layer).__name__}) is not supported by relevance "
                "propagation; supported: Dense, Conv2D, MaxPooling2D, AveragePooling2D, "
                "GlobalAveragePooling2D, Flatten, Reshape, Dropout, BatchNormalization (after Dense "
                "or Conv2D), ReLU"
            )
    if not any(isinstance(step, Linear) for step in steps):
        raise UnsupportedModelError(f"model {model.name!r} has no Dense or Conv2D layer to propagate through")
    return steps


def _is_plain_relu(layer: keras.layers.ReLU) -> bool:
    return layer.max_value is None and float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


class Rule:
    """How a linear layer shares its outputs' relevance among its inputs."""

    def propagate(self, layer: Linear, a: tf.Tensor, relevance: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    @staticmethod
    def _bias(layer: Linear, use: bool, part: Callable[[tf.Tensor], tf.Tensor] = lambda b: b) -> tf.Tensor | None:
        return part(layer.bias) if use and layer.bias is not None else None


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε (LRP-0 for ``epsilon=0``), §5.1:

    .. math:: R_j = \\sum_k \\frac{a_j w_{jk}}{\\epsilon \\cdot \\mathrm{sign}(z_k) + z_k} R_k,
              \\qquad z_k = \\sum_j a_j w_{jk} + b_k

    with :math:`\\mathrm{sign}(0) = 1`. ``bias=True`` (the paper's convention) puts the bias in
    :math:`z_k`, where it absorbs its share of relevance; ``bias=False`` leaves it out, so the
    layer conserves relevance exactly for ``epsilon=0``, but on a layer with biases the
    denominators :math:`z_k - b_k` can then be close to zero and the relevance explode.
    """

    epsilon: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        if not self.epsilon >= 0:
            raise ValueError(f"epsilon must be non-negative, got {self.epsilon!r}")

    def propagate(self, layer: Linear, a: tf.Tensor, relevance: tf.Tensor) -> tf.Tensor:
        z = layer.affine(a, layer.kernel, self._bias(layer, self.bias))
        sign = tf.where(z >= 0, tf.ones_like(z), -tf.ones_like(z))
        return a * layer.transpose(a, layer.kernel, _divide(relevance, z + self.epsilon * sign))


@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-γ: positive weights (and biases) enlarged by a factor :math:`1 + \\gamma`,

    .. math:: R_j = \\sum_k \\frac{a_j (w_{jk} + \\gamma w_{jk}^+)}
              {\\sum_{j'} a_{j'} (w_{j'k} + \\gamma w_{j'k}^+) + b_k + \\gamma b_k^+} R_k ,

    which favours positive evidence and tends to LRP-0 for :math:`\\gamma \\to 0` and to
    z⁺ for :math:`\\gamma \\to \\infty`.
    """

    gamma: float = 0.25
    bias: bool = True

    def __post_init__(self) -> None:
        if not self.gamma >= 0:
            raise ValueError(f"gamma must be non-negative, got {self.gamma!r}")

    def propagate(self, layer: Linear, a: tf.Tensor, relevance: tf.Tensor) -> tf.Tensor:
        kernel = layer.kernel + self.gamma * tf.nn.relu(layer.kernel)
        bias = self._bias(layer, self.bias, lambda b: b + self.gamma * tf.nn.relu(b))
        z = layer.affine(a, kernel, bias)
        return a * layer.transpose(a, kernel, _divide(relevance, z))


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-αβ (Bach et al. 2015), with :math:`\\alpha - \\beta = 1`, :math:`\\beta \\ge 0`:

    .. math:: R_j = \\sum_k \\Bigl(\\alpha \\frac{(a_j w_{jk})^+}{\\sum_{j'} (a_{j'} w_{j'k})^+}
              - \\beta \\frac{(a_j w_{jk})^-}{\\sum_{j'} (a_{j'} w_{j'k})^-}\\Bigr) R_k

    where :math:`(\\cdot)^+` and :math:`(\\cdot)^-` keep the positive and negative
    contributions (for any sign of :math:`a_j`). ``bias=True`` adds :math:`b_k^+` and
    :math:`b_k^-` to the two denominators; the default leaves biases out, as §5.1 writes the rule.
    A neuron without negative contributions has a zero second denominator, whose share is then
    taken as zero: it passes down :math:`\\alpha R_k`, so with :math:`\\beta > 0` the rule does
    not conserve relevance exactly.
    """

    alpha: float = 2.0
    beta: float = 1.0
    bias: bool = False

    def __post_init__(self) -> None:
        if self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise ValueError(f"alpha - beta must be 1 with beta >= 0, got alpha={self.alpha}, beta={self.beta}")

    def _share(self, layer: Linear, a: tf.Tensor, relevance: tf.Tensor, sign: float) -> tf.Tensor:
        """Relevance shared in proportion to the positive (sign=+1) or negative (-1) contributions."""
        a_pos, a_neg = tf.nn.relu(a), -tf.nn.relu(-a)
        w_pos, w_neg = tf.nn.relu(layer.kernel), -tf.nn.relu(-layer.kernel)
        pairs = [(a_pos, w_pos), (a_neg, w_neg)] if sign > 0 else [(a_pos, w_neg), (a_neg, w_pos)]
        bias = self._bias(layer, self.bias, (lambda b: tf.nn.relu(b)) if sign > 0 else (lambda b: -tf.nn.relu(-b)))
        z = sum(layer.affine(inputs, weights) for inputs, weights in pairs)
        s = _divide(relevance, z if bias is None else z + bias)
        return sum(inputs * layer.transpose(inputs, weights, s) for inputs, weights in pairs)

    def propagate(self, layer: Linear, a: tf.Tensor, relevance: tf.Tensor) -> tf.Tensor:
        positive = self._share(layer, a, relevance, +1.0)
        if self.beta == 0:
            return self.alpha * positive
        return self.alpha * positive - self.beta * self._share(layer, a, relevance, -1.0)


@dataclass(frozen=True)
class ZPlus(AlphaBeta):
    """The z⁺ rule of deep Taylor decomposition (§5.2), for ReLU inputs :math:`a_j \\ge 0`:

    .. math:: R_j = \\sum_k \\frac{a_j w_{jk}^+}{\\sum_{j'} a_{j'} w_{j'k}^+} R_k

    It is LRP-αβ with :math:`\\alpha = 1, \\beta = 0`.
    """

    alpha: float = 1.0
    beta: float = 0.0
    bias: bool = False


@dataclass(frozen=True)
class WSquare(Rule):
    """The w² rule of deep Taylor decomposition, for inputs in all of :math:`\\mathbb{R}^d`:

    .. math:: R_i = \\sum_j \\frac{w_{ij}^2}{\\sum_{i'} w_{i'j}^2} R_j

    It does not depend on the input values, only on the weights and on :math:`R_j`.
    """

    def propagate(self, layer: Linear, a: tf.Tensor, relevance: tf.Tensor) -> tf.Tensor:
        ones = tf.ones_like(a)
        kernel = tf.square(layer.kernel)
        return layer.transpose(ones, kernel, _divide(relevance, layer.affine(ones, kernel)))


@dataclass(frozen=True)
class Flat(Rule):
    """The flat rule: every input in an output's receptive field gets an equal share,

    .. math:: R_i = \\sum_j \\frac{1}{\\sum_{i'} 1} R_j .
    """

    def propagate(self, layer: Linear, a: tf.Tensor, relevance: tf.Tensor) -> tf.Tensor:
        ones = tf.ones_like(a)
        kernel = tf.ones_like(layer.kernel)
        return layer.transpose(ones, kernel, _divide(relevance, layer.affine(ones, kernel)))


@dataclass(frozen=True)
class ZBox(Rule):
    """The z^B rule of deep Taylor decomposition, for inputs in a box :math:`[l, h]`:

    .. math:: R_i = \\sum_j \\frac{x_i w_{ij} - l_i w_{ij}^+ - h_i w_{ij}^-}
              {\\sum_{i'} (x_{i'} w_{i'j} - l_{i'} w_{i'j}^+ - h_{i'} w_{i'j}^-)} R_j

    ``low`` and ``high`` are numbers (the book's pixels lie in ``[0, 1]``, the default).
    """

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"the box needs low < high, got low={self.low}, high={self.high}")

    def propagate(self, layer: Linear, a: tf.Tensor, relevance: tf.Tensor) -> tf.Tensor:
        low, high = self.low * tf.ones_like(a), self.high * tf.ones_like(a)
        w_pos, w_neg = tf.nn.relu(layer.kernel), -tf.nn.relu(-layer.kernel)
        z = layer.affine(a, layer.kernel) - layer.affine(low, w_pos) - layer.affine(high, w_neg)
        s = _divide(relevance, z)
        return (
            a * layer.transpose(a, layer.kernel, s)
            - low * layer.transpose(low, w_pos, s)
            - high * layer.transpose(high, w_neg, s)
        )


# --------------------------------------------------------------------------------------------
# Composites: which rule for which layer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Composite:
    """Assigns a rule to every Dense and Conv2D layer of a model.

    The first match wins: ``by_name`` (layer name → rule), then ``first`` (the layer closest to
    the input) and ``last`` (the logit layer), then ``by_type`` (``"dense"`` or ``"conv"`` →
    rule), then ``default``.

    Compiled propagations are cached per model under the composite's ``repr``, so a custom rule
    should, like the rules here, be a frozen dataclass whose ``repr`` lists its parameters.
    """

    default: Rule = field(default_factory=Epsilon)
    first: Rule | None = None
    last: Rule | None = None
    by_type: Mapping[str, Rule] = field(default_factory=dict)
    by_name: Mapping[str, Rule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.by_type) - {"dense", "conv"}
        if unknown:
            raise ValueError(f"by_type keys must be 'dense' or 'conv', got {sorted(unknown)}")

    def rules(self, steps: list[Step]) -> dict[str, Rule]:
        """The rule of every linear layer of ``steps``, by layer name."""
        linear = [step for step in steps if isinstance(step, Linear)]
        missing = set(self.by_name) - {step.name for step in linear}
        if missing:
            raise ValueError(
                f"the composite names layers {sorted(missing)} that are not Dense or Conv2D layers "
                f"of the model; its linear layers are {[step.name for step in linear]}"
            )
        chosen = {}
        for position, step in enumerate(linear):
            rule = self.by_name.get(step.name)
            if rule is None and position == 0:
                rule = self.first
            if rule is None and position == len(linear) - 1:
                rule = self.last
            if rule is None:
                rule = self.by_type.get(step.kind, self.default)
            chosen[step.name] = rule
        return chosen


# --------------------------------------------------------------------------------------------
# The propagation
# --------------------------------------------------------------------------------------------


def _check_max_pooling(max_pooling: str) -> None:
    if max_pooling not in MAX_POOLING:
        raise ValueError(f"max_pooling must be one of {MAX_POOLING}, got {max_pooling!r}")


def _propagation(model: keras.Model, composite: Composite, max_pooling: str) -> Callable[..., list[tf.Tensor]]:
    """The compiled function ``(x, target) -> [R_input, R_after_step_1, ..., R_logits]``."""
    _check_max_pooling(max_pooling)
    key = f"lrp:{composite!r}:{max_pooling}"

    def build() -> Callable[..., list[tf.Tensor]]:
        steps = plan(model)
        rules = composite.rules(steps)

        def propagate(x: tf.Tensor, target: tf.Tensor) -> list[tf.Tensor]:
            activations = [x]
            for step in steps:
                activations.append(step.forward(activations[-1]))
            logits = activations[-1]
            relevance = tf.one_hot(target, tf.shape(logits)[1], dtype=logits.dtype) * logits
            relevances = [relevance]
            for step, a in zip(reversed(steps), reversed(activations[:-1])):
                if isinstance(step, Linear):
                    relevance = rules[step.name].propagate(step, a, relevance)
                elif isinstance(step, Pool):
                    relevance = step.propagate(a, relevance, max_pooling)
                else:
                    relevance = tf.reshape(relevance, tf.shape(a))
                relevances.append(relevance)
            return relevances[::-1]

        return compile_batch_function(model, propagate)

    return compiled(model, key, build)


def lrp(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    composite: Composite | None = None,
    max_pooling: str = "winner_take_all",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Layer-wise relevance propagation with any :class:`Composite` of rules.

    Starts from :math:`R = S_c(x)` at the target logit and returns the input relevance, shaped
    like ``x``. ``composite`` defaults to LRP-0 everywhere. ``max_pooling`` is
    ``"winner_take_all"`` (the maximum of each window takes all its relevance) or
    ``"proportional"`` (shared in proportion to the activations).
    """
    propagate = _propagation(model, composite or Composite(), max_pooling)
    return run_batched(model, x, target, lambda xb, tb: propagate(xb, tb)[0], batch_size=batch_size)


def layer_relevances(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    composite: Composite | None = None,
    max_pooling: str = "winner_take_all",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[tuple[str, np.ndarray]]:
    """The relevance at every layer boundary, from the input to the logits (for conservation plots).

    Returns ``[("input", R_0), (name_1, R_1), ..., (name_L, R_L)]`` where ``R_l`` is the
    relevance of the outputs of layer ``name_l`` and ``R_L`` is the starting relevance at the
    logits. With a conservative composite every ``R_l`` has the same sum.
    """
    validate_model(model)
    x = validate_input(model, x)
    targets = resolve_target(model, x, target, batch_size)
    propagate = _propagation(model, composite or Composite(), max_pooling)
    batches = [
        propagate(tf.constant(x[i : i + batch_size]), tf.constant(targets[i : i + batch_size]))
        for i in range(0, len(x), batch_size)
    ]
    names = ["input"] + [step.name for step in plan(model)]
    return [
        (name, np.concatenate([batch[layer].numpy() for batch in batches], axis=0))
        for layer, name in enumerate(names)
    ]


# --------------------------------------------------------------------------------------------
# Presets, registered as attribution methods
# --------------------------------------------------------------------------------------------


# Every preset shares the last two parameters: how max-pooling shares relevance, and the batch size.


@register("lrp.z")
def lrp_z(
    model: keras.Model, x: Any, target: Target = None, *, bias: bool = True,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """LRP-0 on every layer: :class:`Epsilon` with :math:`\\epsilon = 0` (§4.3)."""
    return lrp(model, x, target, composite=Composite(Epsilon(0.0, bias)), max_pooling=max_pooling, batch_size=batch_size)


@register("lrp.epsilon")
def lrp_epsilon(
    model: keras.Model, x: Any, target: Target = None, *, epsilon: float = 0.25, bias: bool = True,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """LRP-ε on every layer (:class:`Epsilon`): weak or contradictory contributions are absorbed
    by the stabiliser :math:`\\epsilon`, which makes the explanation sparser and less noisy."""
    composite = Composite(Epsilon(epsilon, bias))
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size)


@register("lrp.gamma")
def lrp_gamma(
    model: keras.Model, x: Any, target: Target = None, *, gamma: float = 0.25, bias: bool = True,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """LRP-γ on every layer (:class:`Gamma`)."""
    composite = Composite(Gamma(gamma, bias))
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size)


@register("lrp.alpha_beta")
def lrp_alpha_beta(
    model: keras.Model, x: Any, target: Target = None, *, alpha: float = 2.0, beta: float = 1.0,
    bias: bool = False, max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """LRP-αβ on every layer (:class:`AlphaBeta`; α − β = 1, default α2β1)."""
    composite = Composite(AlphaBeta(alpha, beta, bias))
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size)


@register("lrp.zplus")
def lrp_zplus(
    model: keras.Model, x: Any, target: Target = None, *,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """The z⁺ rule on every layer, the input layer included (:class:`ZPlus`)."""
    return lrp(model, x, target, composite=Composite(ZPlus()), max_pooling=max_pooling, batch_size=batch_size)


@register("lrp.w_square")
def lrp_w_square(
    model: keras.Model, x: Any, target: Target = None, *,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Deep Taylor decomposition for unbounded inputs: w² on the input layer, z⁺ above (§5.2)."""
    composite = Composite(ZPlus(), first=WSquare())
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size)


@register("lrp.flat")
def lrp_flat(
    model: keras.Model, x: Any, target: Target = None, *,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """The flat rule on the input layer, z⁺ above: the input layer spreads relevance uniformly
    over each receptive field, showing *where* the relevance is, not which pixel carries it."""
    composite = Composite(ZPlus(), first=Flat())
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size)


@register("deep_taylor")
def deep_taylor(
    model: keras.Model, x: Any, target: Target = None, *, low: float = 0.0, high: float = 1.0,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Deep Taylor decomposition for inputs in a box (§5.2): z^B with box
    ``[low, high]`` on the input layer, z⁺ on every layer above."""
    composite = Composite(ZPlus(), first=ZBox(low, high))
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size)


@register("lrp.composite")
def lrp_composite(
    model: keras.Model, x: Any, target: Target = None, *, epsilon: float = 0.25, gamma: float = 0.25,
    low: float = 0.0, high: float = 1.0, max_pooling: str = "winner_take_all",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """The per-layer rules recommended in §6: z^B on the input layer, LRP-γ on the other
    convolutions, LRP-ε on the dense layers in the middle, LRP-0 on the logit layer."""
    composite = Composite(
        Epsilon(epsilon), first=ZBox(low, high), last=Epsilon(0.0), by_type={"conv": Gamma(gamma)}
    )
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size)
