"""Layer-wise relevance propagation (LRP) and deep Taylor decomposition (DTD).

Chapters 2.3 to 2.5 (Montavon, Samek & Müller 2018, §4.3, §5 and §6; Bach et al. 2015;
Montavon et al. 2017). The relevance of the target logit, :math:`R_c = S_c(x)`, is passed down
the network layer by layer by the shared backward pass of :mod:`understanding_nn.propagation`.
At a linear step (Dense, a convolution, or a merge such as ``Add``) with inputs :math:`a_j` and
outputs :math:`z_k`, a **rule** decides how the relevance :math:`R_k` of each output is shared
among the inputs; every rule here is an instance of

.. math:: R_j = \\sum_k \\frac{q_{jk}}{\\sum_{j'} q_{j'k}} R_k,

with its own contribution :math:`q_{jk}` (for LRP-0, :math:`q_{jk} = a_j w_{jk}`). The sums are
computed with the forward function of the layer and its transpose (the "forward, divide,
backward, multiply" recipe of §5.1): :math:`z = \\text{forward}(a)`, :math:`s = R / z`,
:math:`c = \\text{forward}^\\top(s)`, :math:`R_j = a_j c_j`. A zero denominator gives zero
relevance, never NaN.

Rules are small objects (:class:`Epsilon`, :class:`Gamma`, :class:`AlphaBeta`, :class:`ZPlus`,
:class:`WSquare`, :class:`Flat`, :class:`ZBox`, and :class:`WinnerTakeAll` and
:class:`Proportional` for pooling), assigned to the steps of a model by a :class:`Composite`
(a default, by position, by kind of layer, or by layer name). What the other steps do:

* an element-wise activation (ReLU, tanh, GELU, ...), dropout, and an element-wise affine map
  (a batch normalization that cannot be folded, ``Rescaling``, ``Normalization``,
  ``LayerNormalization`` with its statistics held constant) pass relevance unchanged;
* ``Add``, ``Subtract`` and ``Average`` share relevance in proportion to each input's
  contribution, :math:`R_i = a^{(i)} w_i / (z + \\epsilon\\,\\mathrm{sign}(z)) \\, R` (LRP-0 by
  default, ``Epsilon(0)``; switch with ``by_type={"merge": rule}``);
* reshaping steps and ``Concatenate`` move relevance back to where each value came from;
* max-pooling gives each window's relevance to its maximum (``max_pooling="winner_take_all"``)
  or shares it in proportion to the activations (``"proportional"``), as average pooling does.

``Multiply``, ``Maximum``, a softmax inside the network and layers the package does not know are
refused, naming the layer, unless the composite gives them a rule by name.

Every rule computes in float32, for a mixed-precision model too: the sums they divide by would
be rounded, or flushed to zero, in half precision (see :mod:`understanding_nn.propagation`).

The registered methods (``lrp.z``, ``lrp.epsilon``, ``lrp.gamma``, ``lrp.alpha_beta``,
``lrp.zplus``, ``lrp.w_square``, ``lrp.flat``, ``deep_taylor``, ``lrp.composite``) are presets;
:func:`lrp` takes any composite and :func:`layer_relevances` returns every layer's relevance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
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
    resolve_target,
    run_batched,
    validate_input,
    validate_model,
)
from .propagation import (
    Composite as BaseComposite,
    Gradient,
    LinearOp,
    Op,
    Pass,
    PoolOp,
    Record,
    _inputs,
    Rule,
    backward,
    divide,
    trace,
)

__all__ = [
    "MAX_POOLING",
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "Flat",
    "Gamma",
    "LinearRule",
    "Proportional",
    "WSquare",
    "WinnerTakeAll",
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
]

MAX_POOLING = ("winner_take_all", "proportional")

def _positive(inputs: list[tf.Tensor]) -> list[tf.Tensor]:
    return [tf.nn.relu(a) for a in inputs]


def _negative(inputs: list[tf.Tensor]) -> list[tf.Tensor]:
    return [-tf.nn.relu(-a) for a in inputs]


# --------------------------------------------------------------------------------------------
# Rules for linear steps
# --------------------------------------------------------------------------------------------


class LinearRule(Rule):
    """A relevance rule for linear steps (:class:`~understanding_nn.propagation.LinearOp`:
    Dense, convolutions, merges). Subclasses implement :meth:`relevance`.
    """

    def applies_to(self, op: Op) -> bool:
        return isinstance(op, LinearOp)

    def backward(self, op: Op, record: Record, signal: tf.Tensor) -> list[tf.Tensor]:
        return self.relevance(op, record.inputs, signal, record)

    def relevance(
        self, op: LinearOp, inputs: list[tf.Tensor], relevance: tf.Tensor, record: Record | None = None
    ) -> list[tf.Tensor]:
        """The relevance of each input, given the relevance of the step's outputs. ``record``,
        the step's part of a recorded forward pass, lets a rule reuse the step's own output and
        chain rule instead of computing them again; the result is the same."""
        raise NotImplementedError

    def propagate(self, op: LinearOp, inputs: Any, relevance: Any) -> tf.Tensor | list[tf.Tensor]:
        """:meth:`relevance` for one input tensor (returned as one tensor) or a list of them."""
        result = self.relevance(op, _inputs(inputs), tf.convert_to_tensor(relevance, tf.float32))
        return result if isinstance(inputs, (list, tuple)) else result[0]

    @staticmethod
    def _bias(op: LinearOp, use: bool, part: Callable[[tf.Tensor], tf.Tensor] = lambda b: b) -> tf.Tensor | None:
        bias = op.bias
        return part(bias) if use and bias is not None else None


def _transpose_only(op: LinearOp, inputs: list[tf.Tensor], kernel: tf.Tensor, s: tf.Tensor) -> list[tf.Tensor]:
    """:math:`(\\sum_k w_{jk} s_k)_j` for a kernel, shaped like the inputs. (The affine map it
    differentiates is not needed by the result, so the compiled graph does not compute it.)"""
    return op.linearized([tf.ones_like(a) for a in inputs], kernel)[1](s)


def _input_free(op: LinearOp, inputs: list[tf.Tensor], kernel: tf.Tensor, relevance: tf.Tensor) -> list[tf.Tensor]:
    """:math:`R_i = \\sum_j q_{ij} / \\sum_{i'} q_{i'j} \\, R_j` for contributions
    :math:`q_{ij}` that are the kernel's entries, whatever the input (w², flat): the denominators
    are computed on one sample and broadcast."""
    z = op.affine([tf.ones_like(a[:1]) for a in inputs], kernel)
    return _transpose_only(op, inputs, kernel, divide(relevance, z))


def _check_number(name: str, value: Any, *, non_negative: bool = True) -> None:
    """A rule's parameter must be a finite real number (and by default not negative)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not np.isfinite(value) or (non_negative and value < 0):
        kind = "non-negative and finite" if non_negative else "finite"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


@dataclass(frozen=True)
class Epsilon(LinearRule):
    """LRP-ε (LRP-0 for ``epsilon=0``), §5.1:

    .. math:: R_j = \\sum_k \\frac{a_j w_{jk}}{\\epsilon \\cdot \\mathrm{sign}(z_k) + z_k} R_k,
              \\qquad z_k = \\sum_j a_j w_{jk} + b_k

    with :math:`\\mathrm{sign}(0) = 1`. ``bias=True`` (the paper's convention) puts the bias in
    :math:`z_k`, where it absorbs its share of relevance; ``bias=False`` leaves it out, so the
    layer conserves relevance exactly for ``epsilon=0``, but on a layer with biases the
    denominators :math:`z_k - b_k` can then be close to zero and the relevance explode.

    Examples
    --------
    Two inputs of a unit-weight sum (an ``Add``) share the relevance 6 as 1 : 2:

    >>> from understanding_nn.propagation import MergeOp
    >>> add = MergeOp(None, "add", [1.0, 1.0])
    >>> [r.numpy().tolist() for r in Epsilon(0.0).propagate(add, [[[1.0]], [[2.0]]], [[6.0]])]
    [[[2.0]], [[4.0]]]
    """

    epsilon: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        _check_number("epsilon", self.epsilon)

    def relevance(
        self, op: LinearOp, inputs: list[tf.Tensor], relevance: tf.Tensor, record: Record | None = None
    ) -> list[tf.Tensor]:
        bias = self._bias(op, self.bias)
        if record is not None and (bias is not None or op.bias is None):
            # z is the step's own output, and the transpose its chain rule: nothing to recompute.
            z, transpose = record.output, (lambda s: record.vjp(op, s))
        else:
            z, transpose = op.linearized(inputs, op.kernel, bias)
        sign = tf.where(z >= 0, tf.ones_like(z), -tf.ones_like(z))
        s = divide(relevance, z + self.epsilon * sign)
        return [a * c for a, c in zip(inputs, transpose(s))]


@dataclass(frozen=True)
class Gamma(LinearRule):
    """LRP-γ: positive weights (and biases) enlarged by a factor :math:`1 + \\gamma`,

    .. math:: R_j = \\sum_k \\frac{a_j (w_{jk} + \\gamma w_{jk}^+)}
              {\\sum_{j'} a_{j'} (w_{j'k} + \\gamma w_{j'k}^+) + b_k + \\gamma b_k^+} R_k ,

    which favours positive evidence and tends to LRP-0 for :math:`\\gamma \\to 0` and to
    z⁺ for :math:`\\gamma \\to \\infty`.
    """

    gamma: float = 0.25
    bias: bool = True

    def __post_init__(self) -> None:
        _check_number("gamma", self.gamma)

    def relevance(
        self, op: LinearOp, inputs: list[tf.Tensor], relevance: tf.Tensor, record: Record | None = None
    ) -> list[tf.Tensor]:
        kernel = op.kernel + self.gamma * tf.nn.relu(op.kernel)
        bias = self._bias(op, self.bias, lambda b: b + self.gamma * tf.nn.relu(b))
        z, transpose = op.linearized(inputs, kernel, bias)
        return [a * c for a, c in zip(inputs, transpose(divide(relevance, z)))]


@dataclass(frozen=True)
class AlphaBeta(LinearRule):
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
        _check_number("alpha", self.alpha, non_negative=False)
        _check_number("beta", self.beta, non_negative=False)
        if self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise ValueError(f"alpha - beta must be 1 with beta >= 0, got alpha={self.alpha}, beta={self.beta}")

    def _share(self, op: LinearOp, inputs: list[tf.Tensor], relevance: tf.Tensor, sign: float) -> list[tf.Tensor]:
        """Relevance shared in proportion to the positive (sign=+1) or negative (-1) contributions."""
        a_pos, a_neg = _positive(inputs), _negative(inputs)
        w_pos, w_neg = tf.nn.relu(op.kernel), -tf.nn.relu(-op.kernel)
        pairs = [(a_pos, w_pos), (a_neg, w_neg)] if sign > 0 else [(a_pos, w_neg), (a_neg, w_pos)]
        linearized = [op.linearized(parts, weights) for parts, weights in pairs]
        bias = self._bias(op, self.bias, self._part(sign))
        s = divide(relevance, op.add_bias(sum(z for z, _ in linearized), bias))
        shares = [[a * c for a, c in zip(parts, transpose(s))] for (parts, _), (_, transpose) in zip(pairs, linearized)]
        return [first + second for first, second in zip(*shares)]

    @staticmethod
    def _part(sign: float) -> Callable[[tf.Tensor], tf.Tensor]:
        return (lambda b: tf.nn.relu(b)) if sign > 0 else (lambda b: -tf.nn.relu(-b))

    def _non_negative_inputs(self, op: LinearOp, inputs: list[tf.Tensor], relevance: tf.Tensor, record: Record) -> list[tf.Tensor]:
        """The same rule when every :math:`a_j \\ge 0`: the contributions' signs are the weights',
        :math:`z^\\pm = \\sum_j a_j w^\\pm_{jk}`, and with :math:`W^- = W - W^+` the two shares
        need one transpose of :math:`W^+` and the step's own chain rule:
        :math:`R = a \\odot (W^{+\\top}(\\alpha s^+ + \\beta s^-) - \\beta W^\\top s^-)`.
        (:math:`z^-` is computed, not taken as :math:`z - z^+`, whose rounding would turn an
        exact 0, a neuron without negative contributions, into a tiny divisor.)"""
        z_pos, transpose_pos = op.linearized(inputs, tf.nn.relu(op.kernel))
        s_pos = divide(relevance, op.add_bias(z_pos, self._bias(op, self.bias, self._part(+1.0))))
        if self.beta == 0:
            return [self.alpha * a * c for a, c in zip(inputs, transpose_pos(s_pos))]
        z_neg = op.affine(inputs, -tf.nn.relu(-op.kernel))
        s_neg = divide(relevance, op.add_bias(z_neg, self._bias(op, self.bias, self._part(-1.0))))
        positive = transpose_pos(self.alpha * s_pos + self.beta * s_neg)
        negative = record.vjp(op, s_neg)
        return [a * (p - self.beta * n) for a, p, n in zip(inputs, positive, negative)]

    def relevance(
        self, op: LinearOp, inputs: list[tf.Tensor], relevance: tf.Tensor, record: Record | None = None
    ) -> list[tf.Tensor]:
        if record is not None and record.non_negative:
            return self._non_negative_inputs(op, inputs, relevance, record)
        if record is not None:
            # Not known from the graph (the model's input, say): decided on the batch itself.
            return tf.cond(
                tf.reduce_all([tf.reduce_all(a >= 0) for a in inputs]),
                lambda: self._non_negative_inputs(op, inputs, relevance, record),
                lambda: self._any_inputs(op, inputs, relevance),
            )
        return self._any_inputs(op, inputs, relevance)

    def _any_inputs(self, op: LinearOp, inputs: list[tf.Tensor], relevance: tf.Tensor) -> list[tf.Tensor]:
        positive = self._share(op, inputs, relevance, +1.0)
        if self.beta == 0:
            return [self.alpha * r for r in positive]
        negative = self._share(op, inputs, relevance, -1.0)
        return [self.alpha * p - self.beta * n for p, n in zip(positive, negative)]


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
class WSquare(LinearRule):
    """The w² rule of deep Taylor decomposition, for inputs in all of :math:`\\mathbb{R}^d`:

    .. math:: R_i = \\sum_j \\frac{w_{ij}^2}{\\sum_{i'} w_{i'j}^2} R_j

    It does not depend on the input values, only on the weights and on :math:`R_j`.
    """

    def relevance(
        self, op: LinearOp, inputs: list[tf.Tensor], relevance: tf.Tensor, record: Record | None = None
    ) -> list[tf.Tensor]:
        return _input_free(op, inputs, tf.square(op.kernel), relevance)


@dataclass(frozen=True)
class Flat(LinearRule):
    """The flat rule: every input in an output's receptive field gets an equal share,

    .. math:: R_i = \\sum_j \\frac{1}{\\sum_{i'} 1} R_j .
    """

    def relevance(
        self, op: LinearOp, inputs: list[tf.Tensor], relevance: tf.Tensor, record: Record | None = None
    ) -> list[tf.Tensor]:
        return _input_free(op, inputs, tf.ones_like(op.kernel), relevance)


@dataclass(frozen=True)
class ZBox(LinearRule):
    """The z^B rule of deep Taylor decomposition, for inputs in a box :math:`[l, h]`:

    .. math:: R_i = \\sum_j \\frac{x_i w_{ij} - l_i w_{ij}^+ - h_i w_{ij}^-}
              {\\sum_{i'} (x_{i'} w_{i'j} - l_{i'} w_{i'j}^+ - h_{i'} w_{i'j}^-)} R_j

    ``low`` and ``high`` are numbers (the book's pixels lie in ``[0, 1]``, the default). The
    rule is derived for inputs inside the box: the presets that use it check that the inputs are.
    """

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        _check_number("low", self.low, non_negative=False)
        _check_number("high", self.high, non_negative=False)
        if not self.low < self.high:
            raise ValueError(f"the box needs low < high, got low={self.low}, high={self.high}")

    def relevance(
        self, op: LinearOp, inputs: list[tf.Tensor], relevance: tf.Tensor, record: Record | None = None
    ) -> list[tf.Tensor]:
        w_pos, w_neg = tf.nn.relu(op.kernel), -tf.nn.relu(-op.kernel)
        # The box's terms do not depend on the input: computed on one sample, then broadcast.
        one = [tf.ones_like(a[:1]) for a in inputs]
        z_box = self.low * op.affine(one, w_pos) + self.high * op.affine(one, w_neg)
        if record is not None:
            z_x = record.output if op.bias is None else op.add_bias(record.output, -op.bias)
            transpose_x = lambda s: record.vjp(op, s)  # noqa: E731
        else:
            z_x, transpose_x = op.linearized(inputs, op.kernel)
        s = divide(relevance, z_x - z_box)
        c_x = transpose_x(s)
        c_pos = _transpose_only(op, inputs, w_pos, s)
        c_neg = [c - p for c, p in zip(c_x, c_pos)]  # W⁻ᵀs = Wᵀs − W⁺ᵀs
        return [x * cx - self.low * cp - self.high * cn for x, cx, cp, cn in zip(inputs, c_x, c_pos, c_neg)]


# --------------------------------------------------------------------------------------------
# Rules for pooling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WinnerTakeAll(Rule):
    """Max-pooling gives each window's relevance to the window's maximum (Bach et al. 2015)."""

    def applies_to(self, op: Op) -> bool:
        return op.kind == "max_pool"

    def backward(self, op: Op, record: Record, signal: tf.Tensor) -> list[tf.Tensor]:
        return record.vjp(op, signal)


@dataclass(frozen=True)
class Proportional(Rule):
    """Pooling shares each window's relevance in proportion to the activations,
    :math:`R_j = a_j / \\sum_{j'} a_{j'} \\, R_k` (the window's average pooling under LRP-0)."""

    def applies_to(self, op: Op) -> bool:
        return isinstance(op, PoolOp)

    def backward(self, op: Op, record: Record, signal: tf.Tensor) -> list[tf.Tensor]:
        (a,) = record.inputs
        if op.kind == "avg_pool":  # the step itself: its output and its chain rule are recorded
            (c,) = record.vjp(op, divide(signal, record.output))
            return [a * c]
        copy = tf.identity(a)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(copy)
            pooled = op.average(copy)
        return [a * tape.gradient(pooled, copy, output_gradients=divide(signal, pooled))]


# --------------------------------------------------------------------------------------------
# Composites: which rule for which layer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Composite(BaseComposite):
    """Assigns an LRP rule to every layer of a model.

    The first match wins: ``by_name`` (layer name → rule), then ``first`` (the Dense and
    convolution layers closest to the input) and ``last`` (those producing the logits), then
    ``by_type`` (a kind of layer, ``"dense"``, ``"conv"``, ``"merge"``, ... → rule; see
    :data:`understanding_nn.propagation.KINDS`), then ``default`` for Dense and convolution
    layers. The other kinds get the rules listed in the module's docstring, with max-pooling as
    ``max_pooling`` says.

    Compiled propagations are cached per model under the composite's
    :meth:`~understanding_nn.propagation.Composite.get_config`, the
    rules' parameters as data; a custom rule publishes its own (a frozen dataclass does).

    Examples
    --------
    z^B on the input layer, LRP-γ on the other convolutions, LRP-ε on the dense layers, LRP-0 on
    the logit layer, and proportional max-pooling:

    >>> composite = Composite(Epsilon(0.25), first=ZBox(0.0, 1.0), last=Epsilon(0.0),
    ...                       by_type={"conv": Gamma(0.25)}, max_pooling="proportional")
    >>> composite.get_config()["by_type"]["conv"]["gamma"]
    0.25
    """

    default: Rule | None = field(default_factory=Epsilon)
    max_pooling: str = "winner_take_all"

    method: ClassVar[str] = "LRP"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_pooling not in MAX_POOLING:
            raise ValueError(f"max_pooling must be one of {MAX_POOLING}, got {self.max_pooling!r}")

    def kind_rules(self) -> Mapping[str, Rule | None]:
        return {
            "merge": Epsilon(0.0),
            "affine": Pass(),
            "layer_norm": Pass(),
            "identity": Pass(),
            "relu": Pass(),
            "activation": Pass(),
            "reshape": Gradient(),
            "avg_pool": Proportional(),
            "max_pool": WinnerTakeAll() if self.max_pooling == "winner_take_all" else Proportional(),
        }


# --------------------------------------------------------------------------------------------
# The propagation
# --------------------------------------------------------------------------------------------


def _propagation(model: keras.Model, composite: Composite, method: str, *, every_layer: bool = False) -> Callable[..., Any]:
    """The compiled function ``(x, target) -> R_input``, or with ``every_layer`` the function
    ``(x, target) -> {value index: relevance}`` of every value of the model's graph, from the
    input (0) to the logits."""
    if not isinstance(composite, BaseComposite):
        raise TypeError(f"composite must be a Composite, got {type(composite).__name__}")

    def build() -> Callable[..., Any]:
        graph = trace(model)
        rules = composite.rules(graph, method)

        def propagate(x: tf.Tensor, target: tf.Tensor) -> Any:
            forward = graph.forward(x)
            start = graph.selector(target) * forward.values[graph.logit]
            return backward(graph, rules, forward, start, keep=every_layer)

        return compile_batch_function(model, propagate)

    return compiled(model, f"lrp:{method}:{every_layer}:{composite.key()}", build)


def _boxes(model: keras.Model, composite: Composite) -> list[tuple[ZBox, int]]:
    """The z^B rules the composite gives to the first layers, with the value each one reads."""

    def build() -> list[tuple[ZBox, int]]:
        graph = trace(model)
        first, _ = graph.first_and_last()
        rules = composite.rules(graph)
        return sorted({(rules[i], graph.nodes[i].inputs[0]) for i in first if isinstance(rules[i], ZBox)}, key=repr)

    return compiled(model, f"lrp-boxes:{composite.key()}", build)


def _check_box(model: keras.Model, x: Any, composite: Composite) -> None:
    """The z^B rule is derived for inputs inside its box: refuse inputs outside it, wherever the
    layer reads them (the model's input, or what a Rescaling or Normalization made of it)."""
    boxes = _boxes(model, composite)
    if not boxes:
        return
    x = validate_input(model, x)
    graph = trace(model)
    for box, value in boxes:
        if value == 0:
            low, high, where = float(x.min()), float(x.max()), "x"
        else:
            name = next(node.op.name for node in graph.nodes if node.output == value)

            def value_range(xb: tf.Tensor, value: int = value) -> tf.Tensor:
                # Reduced where it is computed (on a GPU, say): only two numbers per batch are copied.
                seen = graph.run(xb, until=value)[value]
                return tf.stack([tf.reduce_min(seen), tf.reduce_max(seen)])

            reach = compiled(model, f"value-range:{value}", lambda: compile_batch_function(model, value_range, target=False))
            ranges = np.array([reach(tf.constant(x[i : i + DEFAULT_BATCH_SIZE])).numpy() for i in range(0, len(x), DEFAULT_BATCH_SIZE)])
            low, high = float(ranges[:, 0].min()), float(ranges[:, 1].max())
            where = f"the output of layer {name!r}, which the z^B layer reads,"
        if low < box.low - 1e-6 or high > box.high + 1e-6:
            raise ValueError(
                f"the z^B rule assumes inputs in [{box.low:g}, {box.high:g}], but {where} lies in [{low:g}, {high:g}]; "
                "pass the range of those values as low=..., high=..."
            )


def lrp(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    composite: Composite | None = None,
    max_pooling: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    method: str = "LRP",
) -> np.ndarray:
    """Layer-wise relevance propagation with any :class:`Composite` of rules.

    Starts from :math:`R = S_c(x)` at the target logit and returns the input relevance, shaped
    like ``x``.

    Parameters
    ----------
    model, x, target
        As in :func:`understanding_nn.explain`.
    composite
        The rules; by default LRP-0 everywhere, ``Composite()``.
    max_pooling
        ``"winner_take_all"`` (the maximum of each window takes all its relevance) or
        ``"proportional"`` (shared in proportion to the activations); ``None`` keeps the
        composite's own setting.
    batch_size
        Samples per compiled pass.
    method
        What error messages call the method.

    Examples
    --------
    >>> import keras, numpy as np
    >>> inputs = keras.Input((3,))
    >>> hidden = keras.layers.Dense(4, activation="relu", use_bias=False)(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False)(keras.layers.Add()([hidden, hidden])))
    >>> x = np.random.default_rng(0).random((5, 3)).astype("float32")
    >>> R = lrp(model, x, target=0)
    >>> bool(np.allclose(R.sum(axis=1), model.predict(x, verbose=0)[:, 0], atol=1e-5))
    True
    """
    composite = composite if composite is not None else Composite()
    if max_pooling is not None:
        if not isinstance(composite, Composite):
            raise TypeError("max_pooling applies to an LRP Composite; set the rule of 'max_pool' steps in by_type instead")
        composite = replace(composite, max_pooling=max_pooling)
    propagate = _propagation(model, composite, method)
    _check_box(model, x, composite)
    return run_batched(model, x, target, propagate, batch_size=batch_size)


def layer_relevances(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    composite: Composite | None = None,
    max_pooling: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[tuple[str, np.ndarray]]:
    """The relevance at every layer's output, from the input to the logits (for conservation plots).

    Returns ``[("input", R_0), (name_1, R_1), ..., (name_L, R_L)]`` in topological order, where
    ``R_l`` is the relevance of the outputs of layer ``name_l`` (summed over the layers that read
    them) and ``R_L`` the starting relevance at the logits. A layer's fused activation passes
    relevance unchanged and has no entry of its own. With a conservative composite every ``R_l``
    of a chain has the same sum.
    """
    composite = composite if composite is not None else Composite()
    if max_pooling is not None:
        composite = replace(composite, max_pooling=max_pooling)
    validate_model(model)
    x = validate_input(model, x)
    targets = resolve_target(model, x, target, batch_size)
    propagate = _propagation(model, composite, "LRP", every_layer=True)
    graph = trace(model)
    shown = [node for node in graph.nodes if not node.op.name.endswith(".activation")]
    batches = [
        propagate(tf.constant(x[i : i + batch_size]), tf.constant(targets[i : i + batch_size]))
        for i in range(0, len(x), batch_size)
    ]

    def gathered(value: int) -> np.ndarray:
        return np.concatenate([batch[value].numpy() for batch in batches], axis=0)

    return [("input", gathered(0))] + [(node.op.name, gathered(_after_activation(graph, node))) for node in shown]


def _after_activation(graph: Any, node: Any) -> int:
    """The value a layer's relevance is read at: after its fused activation, if it has one."""
    for other in graph.nodes:
        if other.inputs == [node.output] and other.op.name == f"{node.op.name}.activation":
            return other.output
    return node.output


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
    return lrp(model, x, target, composite=Composite(Epsilon(0.0, bias)), max_pooling=max_pooling, batch_size=batch_size, method="lrp.z")


@register("lrp.epsilon")
def lrp_epsilon(
    model: keras.Model, x: Any, target: Target = None, *, epsilon: float = 0.25, bias: bool = True,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """LRP-ε on every layer (:class:`Epsilon`): weak or contradictory contributions are absorbed
    by the stabiliser :math:`\\epsilon`, which makes the explanation sparser and less noisy."""
    composite = Composite(Epsilon(epsilon, bias))
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size, method="lrp.epsilon")


@register("lrp.gamma")
def lrp_gamma(
    model: keras.Model, x: Any, target: Target = None, *, gamma: float = 0.25, bias: bool = True,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """LRP-γ on every layer (:class:`Gamma`)."""
    composite = Composite(Gamma(gamma, bias))
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size, method="lrp.gamma")


@register("lrp.alpha_beta")
def lrp_alpha_beta(
    model: keras.Model, x: Any, target: Target = None, *, alpha: float = 2.0, beta: float = 1.0,
    bias: bool = False, max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """LRP-αβ on every layer (:class:`AlphaBeta`; α − β = 1, default α2β1)."""
    composite = Composite(AlphaBeta(alpha, beta, bias))
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size, method="lrp.alpha_beta")


@register("lrp.zplus")
def lrp_zplus(
    model: keras.Model, x: Any, target: Target = None, *,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """The z⁺ rule on every layer, the input layer included (:class:`ZPlus`)."""
    return lrp(model, x, target, composite=Composite(ZPlus()), max_pooling=max_pooling, batch_size=batch_size, method="lrp.zplus")


@register("lrp.w_square")
def lrp_w_square(
    model: keras.Model, x: Any, target: Target = None, *,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Deep Taylor decomposition for unbounded inputs: w² on the input layer, z⁺ above (§5.2)."""
    composite = Composite(ZPlus(), first=WSquare())
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size, method="lrp.w_square")


@register("lrp.flat")
def lrp_flat(
    model: keras.Model, x: Any, target: Target = None, *,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """The flat rule on the input layer, z⁺ above: the input layer spreads relevance uniformly
    over each receptive field, showing *where* the relevance is, not which pixel carries it."""
    composite = Composite(ZPlus(), first=Flat())
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size, method="lrp.flat")


@register("deep_taylor")
def deep_taylor(
    model: keras.Model, x: Any, target: Target = None, *, low: float = 0.0, high: float = 1.0,
    max_pooling: str = "winner_take_all", batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Deep Taylor decomposition for inputs in a box (§5.2): z^B with box
    ``[low, high]`` on the input layer, z⁺ on every layer above."""
    composite = Composite(ZPlus(), first=ZBox(low, high))
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size, method="deep_taylor")


@register("lrp.composite")
def lrp_composite(
    model: keras.Model, x: Any, target: Target = None, *, epsilon: float = 0.25, gamma: float = 0.25,
    low: float = 0.0, high: float = 1.0, composite: Composite | None = None, max_pooling: str = "winner_take_all",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """The per-layer rules recommended in §6: z^B on the input layer, LRP-γ on the other
    convolutions, LRP-ε on the dense layers in the middle, LRP-0 on the logit layer.

    ``composite`` replaces them by any :class:`Composite` of your own (then ``epsilon``,
    ``gamma``, ``low`` and ``high`` are not used), so that ``explain(model, x, "lrp.composite",
    composite=...)`` runs custom rules through the uniform call.
    """
    if composite is None:
        composite = Composite(
            Epsilon(epsilon), first=ZBox(low, high), last=Epsilon(0.0), by_type={"conv": Gamma(gamma)}
        )
    return lrp(model, x, target, composite=composite, max_pooling=max_pooling, batch_size=batch_size, method="lrp.composite")
