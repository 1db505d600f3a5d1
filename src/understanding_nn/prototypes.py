"""Prototypes: the inputs a model finds most typical of a class.

Activation maximization (Montavon et al. 2018, §3.1) looks for the input that the model scores
highest for a class :math:`\\omega_c`, kept near a reference input :math:`x_0` by a penalty:

.. math:: x^\\star = \\arg\\max_x \\; S_c(x) - \\lambda \\lVert x - x_0 \\rVert^2
   \\quad\\text{or}\\quad
   x^\\star = \\arg\\max_x \\; \\log p(\\omega_c \\mid x) - \\lambda \\lVert x - x_0 \\rVert^2 .

With the logit :math:`S_c` and :math:`x_0 = 0` this is the *class model visualisation* of
Simonyan, Vedaldi & Zisserman (2014), chapter 3.2 of the book; with the log-probability it is
the prototype of chapter 1.1. (Part I will extend this module with density experts and
activation maximization in code space.)

The problem is solved by gradient ascent on the input, for all requested classes at once: one
``tf.function``-compiled step updates the whole batch of prototypes, and is traced once per
model, objective and optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import keras
import numpy as np
import tensorflow as tf

from .attribution import (
    class_indices,
    compile_function,
    compiled,
    logit_function,
    resolve_reference,
    validate_model,
)

__all__ = ["OBJECTIVES", "OPTIMIZERS", "Prototypes", "activation_maximization", "step_function"]

OBJECTIVES = ("logit", "log_probability")
OPTIMIZERS = ("adam", "sgd")

# Adam's constants (Kingma & Ba 2015 defaults).
_BETA_1, _BETA_2, _EPSILON = 0.9, 0.999, 1e-7
# Half-width of the uniform noise of start="noise".
_NOISE = 0.05


@dataclass(frozen=True)
class Prototypes:
    """The result of :func:`activation_maximization`.

    Attributes
    ----------
    inputs
        The prototypes :math:`x^\\star`, float32, shape ``(N, *input_shape)``; row ``n`` belongs to
        ``classes[n]``.
    classes
        The class of each prototype, int32, shape ``(N,)``.
    objective_trace
        The objective of each prototype at each step, float64, shape ``(steps + 1, N)``: row 0 is
        the starting point, row ``t`` the value after ``t`` updates.
    """

    inputs: np.ndarray
    classes: np.ndarray
    objective_trace: np.ndarray


def step_function(model: keras.Model, objective: str, optimizer: str) -> Any:
    """The compiled ascent step of ``model`` for ``objective`` and ``optimizer``, built once.

    ``step(x, m, v, t, reference, classes, l2, learning_rate, low, high)`` returns
    ``(objective_value, x_new, m_new, v_new)``: the objective of every row of ``x`` (before the
    update) and the state after one update projected into ``[low, high]``. Its input signature has
    an open batch size, so it is traced once per model, whatever the number of classes.
    """
    _check_choice("objective", objective, OBJECTIVES)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    logits = logit_function(model)

    def build() -> Any:
        x_spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)
        scalar = tf.TensorSpec((), tf.float32)
        signature = [x_spec, x_spec, x_spec, scalar, x_spec, tf.TensorSpec((None,), tf.int32),
                     scalar, scalar, scalar, scalar]

        def step(x, m, v, t, reference, classes, l2, learning_rate, low, high):
            axes = list(range(1, len(x_spec.shape)))
            with tf.GradientTape() as tape:
                tape.watch(x)
                scores = logits(x)
                if objective == "log_probability":
                    scores = tf.nn.log_softmax(scores, axis=1)
                value = tf.gather(scores, classes, axis=1, batch_dims=1)
                value -= l2 * tf.reduce_sum(tf.square(x - reference), axis=axes)
            # Rows are independent, so the gradient of the sum is each row's own gradient.
            g = tape.gradient(value, x)
            if optimizer == "adam":
                m = _BETA_1 * m + (1.0 - _BETA_1) * g
                v = _BETA_2 * v + (1.0 - _BETA_2) * tf.square(g)
                m_hat = m / (1.0 - _BETA_1**t)
                v_hat = v / (1.0 - _BETA_2**t)
                update = m_hat / (tf.sqrt(v_hat) + _EPSILON)
            else:
                update = g
            x_new = tf.clip_by_value(x + learning_rate * update, low, high)
            return value, x_new, m, v

        return compile_function(step, signature)

    return compiled(model, f"activation_maximization/{objective}/{optimizer}", build)


def activation_maximization(
    model: keras.Model,
    classes: Union[int, Sequence[int], np.ndarray],
    *,
    objective: str = "logit",
    l2: float = 0.1,
    reference: Any = None,
    start: Any = None,
    box: tuple[float, float] | None = None,
    steps: int = 500,
    learning_rate: float = 0.05,
    optimizer: str = "adam",
    seed: int = 0,
) -> Prototypes:
    """Find, for each class, the input the model finds most typical of it (activation maximization).

    For each requested class :math:`c`, gradient ascent on the input maximises

    .. math:: J_c(x) = S_c(x) - \\lambda \\lVert x - x_0 \\rVert^2
              \\quad (\\text{objective="logit"}),

    .. math:: J_c(x) = \\log p(\\omega_c \\mid x) - \\lambda \\lVert x - x_0 \\rVert^2
              = S_c(x) - \\log \\textstyle\\sum_k e^{S_k(x)} - \\lambda \\lVert x - x_0 \\rVert^2
              \\quad (\\text{objective="log_probability"}),

    where :math:`S(x)` are the model's logits (a final softmax is stripped), :math:`\\lambda` is
    ``l2`` and :math:`x_0` is ``reference``. With ``box=(low, high)``, each step is followed by
    a projection (clipping) of :math:`x` into the box, so the result stays in the data domain.
    All classes are optimised together, as one batch, by a single compiled step.

    Parameters
    ----------
    model
        A built Keras 3 model with one input and one ``(batch, n_classes)`` output.
    classes
        A class index, or a sequence of class indices (repeats allowed); one prototype each.
    objective
        ``"logit"`` (Simonyan et al. 2014) or ``"log_probability"`` (Montavon et al. 2018, §3.1).
    l2
        The penalty weight :math:`\\lambda \\ge 0`.
    reference
        :math:`x_0`: ``None`` for zeros, one input of the model's input shape (used for every
        class), or one input per class, shape ``(N, *input_shape)``.
    start
        The initial :math:`x`: ``None`` for the reference, ``"noise"`` for the reference plus
        uniform noise in :math:`[-0.05, 0.05]` drawn with ``seed``, or an array (one input, or one
        per class). It is projected into the box, if any.
    box
        ``None``, or ``(low, high)`` with ``low < high``: the range every pixel is kept in.
    steps
        Number of ascent steps, at least 1.
    learning_rate
        Step size, positive.
    optimizer
        ``"adam"`` (default; Adam's bias-corrected steps of about ``learning_rate`` per pixel) or
        ``"sgd"`` (plain gradient ascent, :math:`x \\leftarrow x + \\eta \\nabla J_c(x)`).
    seed
        Seed of the noise of ``start="noise"``.

    Returns
    -------
    Prototypes
        ``inputs`` (float32, ``(N, *input_shape)``), ``classes`` (int32, ``(N,)``) and
        ``objective_trace`` (float64, ``(steps + 1, N)``, :math:`J_c` at every step).

    Examples
    --------
    >>> model = unn.models.load("cnn")                                                # doctest: +SKIP
    >>> result = activation_maximization(model, range(10), l2=0.1, box=(0.0, 1.0))  # doctest: +SKIP
    >>> result.inputs.shape, result.objective_trace.shape                            # doctest: +SKIP
    ((10, 28, 28, 1), (501, 10))
    """
    validate_model(model)
    _check_choice("objective", objective, OBJECTIVES)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    input_shape = tuple(model.inputs[0].shape[1:])
    if any(size is None for size in input_shape):
        raise ValueError(f"activation maximization needs a fixed input shape, model has {input_shape}")
    n_classes = int(model.outputs[0].shape[-1])

    if isinstance(classes, range):
        classes = list(classes)
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, (bool, np.bool_)):
        classes = [int(classes)]
    classes = np.asarray(classes) if not isinstance(classes, (bool, np.bool_)) else classes
    if isinstance(classes, np.ndarray) and classes.ndim != 1:
        raise ValueError(f"classes must be a class index or a 1-D sequence of them, got shape {classes.shape}")
    if isinstance(classes, np.ndarray) and classes.size == 0:
        raise ValueError("classes is empty: ask for at least one class")
    n = len(classes) if isinstance(classes, np.ndarray) else 1
    classes = class_indices(classes, n, n_classes)

    l2 = _number("l2", l2)
    if l2 < 0:
        raise ValueError(f"l2 (the penalty weight λ) must be non-negative, got {l2}")
    learning_rate = _number("learning_rate", learning_rate)
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer of at least 1, got {steps!r}")
    low, high = _box(box)

    shape = (n, *input_shape)
    zeros = np.zeros(shape, np.float32)
    if reference is None:
        x0 = zeros
    elif isinstance(reference, str):
        raise TypeError(f"reference must be None or an array, got the string {reference!r}")
    else:
        x0 = _inputs("reference", reference, zeros)
    if start is None:
        x_start = x0.copy()
    elif isinstance(start, str):
        if start != "noise":
            raise ValueError(f"start must be None, 'noise' or an array, got {start!r}")
        noise = np.random.default_rng(seed).uniform(-_NOISE, _NOISE, size=shape)
        x_start = (x0 + noise).astype(np.float32)
    else:
        x_start = _inputs("start", start, zeros)
    x_start = np.clip(x_start, low, high).astype(np.float32)

    step = step_function(model, objective, optimizer)
    x = tf.constant(x_start)
    m = tf.zeros_like(x)
    v = tf.zeros_like(x)
    constants = (
        tf.constant(x0), tf.constant(classes), tf.constant(l2, tf.float32),
        tf.constant(learning_rate, tf.float32), tf.constant(low, tf.float32), tf.constant(high, tf.float32),
    )
    trace = np.empty((steps + 1, n), np.float64)
    for t in range(1, steps + 1):
        value, x, m, v = step(x, m, v, tf.constant(float(t)), *constants)
        trace[t - 1] = value.numpy()
    # One more call evaluates the final prototypes (its update is discarded).
    value, _, _, _ = step(x, m, v, tf.constant(float(steps + 1)), *constants)
    trace[steps] = value.numpy()
    return Prototypes(inputs=x.numpy().astype(np.float32), classes=classes, objective_trace=trace)


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _box(box: Any) -> tuple[float, float]:
    if box is None:
        return -np.inf, np.inf
    try:
        low, high = box
    except (TypeError, ValueError):
        raise ValueError(f"box must be None or a pair (low, high), got {box!r}") from None
    low, high = _number("box low", low), _number("box high", high)
    if not low < high:
        raise ValueError(f"box must satisfy low < high, got ({low}, {high})")
    return low, high


def _inputs(name: str, value: Any, zeros: np.ndarray) -> np.ndarray:
    """``value`` as one input per class (one input is repeated), checked like a reference input."""
    value = np.asarray(value.numpy() if isinstance(value, tf.Tensor) else value)
    if value.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric, got dtype {value.dtype}")
    try:
        return resolve_reference(zeros, value)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
