"""Prototypes: the inputs a model finds most typical of a class (Part I of the book).

Activation maximization (Montavon et al. 2018, §3.1; Erhan et al. 2009) looks for the input that
the model scores highest for a class :math:`\\omega_c`, kept near a reference input :math:`x_0` by
a penalty:

.. math:: x^\\star = \\arg\\max_x \\; S_c(x) - \\lambda \\lVert x - x_0 \\rVert^2
   \\quad\\text{or}\\quad
   x^\\star = \\arg\\max_x \\; \\log p(\\omega_c \\mid x) - \\lambda \\lVert x - x_0 \\rVert^2 .

With the logit :math:`S_c` and :math:`x_0 = 0` this is the *class model visualisation* of
Simonyan, Vedaldi & Zisserman (2014), chapter 3.2 of the book; with the log-probability it is
the prototype of chapter 1.1. Two extensions make the prototypes look like data:

* **an expert** (§3.2, chapter 1.2): a density model :math:`p(x)` of the data (see
  :mod:`understanding_nn.experts`) adds :math:`\\eta \\log p(x)` to the objective,
  ``activation_maximization(..., expert=rbm, expert_weight=eta)``;
* **code space** (§3.3, chapter 1.3; Nguyen et al. 2016): the search runs over the code
  :math:`z` of a generator :math:`g` (see :mod:`understanding_nn.generators`),
  :math:`\\max_z \\log p(\\omega_c \\mid g(z)) - \\lambda \\lVert z - \\bar z \\rVert^2`, and the prototype
  is :math:`x^\\star = g(z^\\star)`: :func:`code_space_maximization`.

:func:`distance_to_data` measures how natural a prototype is: its distance to the nearest
training digit.

The problem is solved by gradient ascent, for all requested classes at once: one
``tf.function``-compiled step updates the whole batch of prototypes (or codes), and is traced
once per model, objective, optimizer, expert and generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

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

__all__ = [
    "OBJECTIVES",
    "OPTIMIZERS",
    "Prototypes",
    "activation_maximization",
    "code_space_maximization",
    "distance_to_data",
    "step_function",
]

OBJECTIVES = ("logit", "log_probability")
OPTIMIZERS = ("adam", "sgd")

# Adam's constants (Kingma & Ba 2015 defaults).
_BETA_1, _BETA_2, _EPSILON = 0.9, 0.999, 1e-7
# Half-width of the uniform noise of start="noise".
_NOISE = 0.05

Classes = Union[int, Sequence[int], np.ndarray]


@dataclass(frozen=True)
class Prototypes:
    """The result of :func:`activation_maximization` and :func:`code_space_maximization`.

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
    codes
        In code space, the codes :math:`z^\\star` with :math:`x^\\star = g(z^\\star)`, float32,
        shape ``(N, code_size)``; ``None`` for activation maximization in input space.
    """

    inputs: np.ndarray
    classes: np.ndarray
    objective_trace: np.ndarray
    codes: Optional[np.ndarray] = None


def step_function(
    model: keras.Model,
    objective: str,
    optimizer: str,
    *,
    expert: Any = None,
    generator: Optional[keras.Model] = None,
) -> Any:
    """The compiled ascent step of ``model`` for ``objective`` and ``optimizer``, built once.

    ``step(u, m, v, t, reference, classes, l2, learning_rate, low, high, expert_weight)`` returns
    ``(objective_value, u_new, m_new, v_new)``: the objective of every row of ``u`` (before the
    update) and the state after one update projected into ``[low, high]``. ``u`` is the input
    :math:`x`, or the code :math:`z` when a ``generator`` maps it to :math:`x = g(z)`; with an
    ``expert``, :math:`\\eta \\log p(x)` (``expert_weight`` times ``expert.log_density(x)``) is
    added to the objective. The input signature has an open batch size, so the step is traced
    once per model, objective, optimizer, expert and generator, whatever the number of classes.
    """
    _check_choice("objective", objective, OBJECTIVES)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    logits = logit_function(model)
    variable_shape = tuple(generator.inputs[0].shape[1:]) if generator is not None else tuple(model.inputs[0].shape[1:])

    def build() -> Any:
        u_spec = tf.TensorSpec((None, *variable_shape), tf.float32)
        scalar = tf.TensorSpec((), tf.float32)
        signature = [u_spec, u_spec, u_spec, scalar, u_spec, tf.TensorSpec((None,), tf.int32),
                     scalar, scalar, scalar, scalar, scalar]

        def step(u, m, v, t, reference, classes, l2, learning_rate, low, high, expert_weight):
            axes = list(range(1, len(u_spec.shape)))
            with tf.GradientTape() as tape:
                tape.watch(u)
                x = generator(u, training=False) if generator is not None else u
                scores = logits(x)
                if objective == "log_probability":
                    scores = tf.nn.log_softmax(scores, axis=1)
                value = tf.gather(scores, classes, axis=1, batch_dims=1)
                value -= l2 * tf.reduce_sum(tf.square(u - reference), axis=axes)
                if expert is not None:
                    value += expert_weight * expert.log_density(x)
            # Rows are independent, so the gradient of the sum is each row's own gradient.
            g = tape.gradient(value, u)
            if optimizer == "adam":
                m = _BETA_1 * m + (1.0 - _BETA_1) * g
                v = _BETA_2 * v + (1.0 - _BETA_2) * tf.square(g)
                m_hat = m / (1.0 - _BETA_1**t)
                v_hat = v / (1.0 - _BETA_2**t)
                update = m_hat / (tf.sqrt(v_hat) + _EPSILON)
            else:
                update = g
            u_new = tf.clip_by_value(u + learning_rate * update, low, high)
            return value, u_new, m, v

        return compile_function(step, signature)

    # The step holds the expert and the generator, so their ids stay theirs while it is cached.
    key = f"activation_maximization/{objective}/{optimizer}"
    if expert is not None:
        key += f"/expert={id(expert)}"
    if generator is not None:
        key += f"/generator={id(generator)}"
    return compiled(model, key, build)


def activation_maximization(
    model: keras.Model,
    classes: Classes,
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
    expert: Any = None,
    expert_weight: float = 1.0,
) -> Prototypes:
    """Find, for each class, the input the model finds most typical of it (activation maximization).

    For each requested class :math:`c`, gradient ascent on the input maximises

    .. math:: J_c(x) = S_c(x) - \\lambda \\lVert x - x_0 \\rVert^2
              \\quad (\\text{objective="logit"}),

    .. math:: J_c(x) = \\log p(\\omega_c \\mid x) - \\lambda \\lVert x - x_0 \\rVert^2
              = S_c(x) - \\log \\textstyle\\sum_k e^{S_k(x)} - \\lambda \\lVert x - x_0 \\rVert^2
              \\quad (\\text{objective="log_probability"}),

    where :math:`S(x)` are the model's logits (a final softmax is stripped), :math:`\\lambda` is
    ``l2`` and :math:`x_0` is ``reference``. With an ``expert`` (a density model of the data,
    Montavon et al. 2018, §3.2) the objective gains the term :math:`\\eta \\log p(x)`,

    .. math:: J_c(x) = \\log p(\\omega_c \\mid x) + \\eta \\log p(x) - \\lambda \\lVert x - x_0 \\rVert^2 ,

    with :math:`\\eta` = ``expert_weight``. With ``box=(low, high)``, each step is followed by a
    projection (clipping) of :math:`x` into the box, so the result stays in the data domain. All
    classes are optimised together, as one batch, by a single compiled step.

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
    expert
        ``None``, or a density model with a differentiable ``log_density(x)`` returning
        :math:`\\log p(x)` (up to a constant) for a batch, such as
        :class:`understanding_nn.experts.GaussianRBM`.
    expert_weight
        :math:`\\eta \\ge 0`, the weight of the expert's log-density.

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
    settings = _settings(model, classes, objective, optimizer, l2, learning_rate, steps, expert, expert_weight)
    input_shape = tuple(model.inputs[0].shape[1:])
    if any(size is None for size in input_shape):
        raise ValueError(f"activation maximization needs a fixed input shape, model has {input_shape}")
    classes = settings["classes"]
    low, high = _box(box)
    shape = (len(classes), *input_shape)
    x0 = _reference(reference, shape)
    x_start = _start(start, x0, lambda: np.random.default_rng(seed).uniform(-_NOISE, _NOISE, size=shape))
    x_start = np.clip(x_start, low, high).astype(np.float32)

    step = step_function(model, objective, optimizer, expert=expert)
    x, trace = _ascend(step, x_start, x0, low, high, **settings)
    return Prototypes(inputs=x, classes=classes, objective_trace=trace)


def code_space_maximization(
    model: keras.Model,
    generator: keras.Model,
    classes: Classes,
    *,
    objective: str = "log_probability",
    l2: float = 0.5,
    reference: Any = None,
    start: Any = None,
    steps: int = 500,
    learning_rate: float = 0.05,
    optimizer: str = "adam",
    seed: int = 0,
    expert: Any = None,
    expert_weight: float = 1.0,
) -> Prototypes:
    """Activation maximization in the code space of a generator (Montavon et al. 2018, §3.3).

    For each requested class :math:`c`, gradient ascent on the code :math:`z` maximises

    .. math:: J_c(z) = \\log p(\\omega_c \\mid g(z)) - \\lambda \\lVert z - \\bar z \\rVert^2
              \\quad\\text{and returns}\\quad x^\\star = g(z^\\star),

    (or the logit :math:`S_c(g(z))` with ``objective="logit"``; plus :math:`\\eta \\log p(g(z))`
    with an ``expert``). When the generator was trained with the prior :math:`q(z) = \\mathcal{N}(0, I)`
    (as :class:`understanding_nn.generators.VAE`), :math:`\\bar z = 0` and :math:`\\lambda = 1/2`
    make the penalty exactly :math:`\\log q(z)` up to a constant: :math:`z^\\star` is then the
    code most probable under the prior and the classifier together.

    Parameters
    ----------
    model
        The classifier (as in :func:`activation_maximization`).
    generator
        A built Keras model mapping codes, shape ``(N, code_size)``, to inputs of ``model``, shape
        ``(N, *input_shape)``, such as ``vae.decoder``.
    classes
        A class index, or a sequence of class indices; one prototype each.
    objective
        ``"log_probability"`` (default, as in the paper) or ``"logit"``.
    l2
        The prior's weight :math:`\\lambda \\ge 0`.
    reference
        :math:`\\bar z`: ``None`` for zeros, one code (used for every class) or one code per class,
        shape ``(N, code_size)``, for example the mean code of the class's training digits.
    start
        The initial code: ``None`` for the reference, ``"noise"`` for the reference plus a draw
        from :math:`\\mathcal{N}(0, I)` with ``seed``, or an array of codes.
    steps, learning_rate, optimizer, seed, expert, expert_weight
        As in :func:`activation_maximization`.

    Returns
    -------
    Prototypes
        ``inputs`` (:math:`g(z^\\star)`), ``classes``, ``objective_trace`` and ``codes`` (:math:`z^\\star`).
    """
    validate_model(model)
    if not isinstance(generator, keras.Model):
        raise TypeError(f"generator must be a Keras 3 model mapping codes to inputs, got {type(generator).__name__}")
    code_shape = tuple(generator.inputs[0].shape[1:])
    output_shape = tuple(generator.outputs[0].shape[1:])
    input_shape = tuple(model.inputs[0].shape[1:])
    if output_shape != input_shape:
        raise ValueError(
            f"generator {generator.name!r} outputs shape {output_shape}, but model {model.name!r} "
            f"takes inputs of shape {input_shape}"
        )
    settings = _settings(model, classes, objective, optimizer, l2, learning_rate, steps, expert, expert_weight)
    classes = settings["classes"]
    shape = (len(classes), *code_shape)
    z0 = _reference(reference, shape)
    z_start = _start(start, z0, lambda: np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)

    step = step_function(model, objective, optimizer, expert=expert, generator=generator)
    z, trace = _ascend(step, z_start, z0, -np.inf, np.inf, **settings)
    x = keras.ops.convert_to_numpy(generator(tf.constant(z), training=False)).astype(np.float32)
    return Prototypes(inputs=x, classes=classes, objective_trace=trace, codes=z)


def distance_to_data(
    prototypes: Any, data: Any, *, metric: str = "euclidean", labels: Any = None, classes: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """How far each prototype is from the data: its distance to the nearest data point.

    .. math:: d(x^\\star) = \\min_n \\lVert x^\\star - x_n \\rVert_2
              \\quad\\text{or}\\quad
              d(x^\\star) = \\min_n \\bigl(1 - \\rho(x^\\star, x_n)\\bigr),

    with ``metric="euclidean"`` or ``metric="correlation"`` (:math:`\\rho` is the Pearson
    correlation of the pixels). A prototype that looks like a real digit has a real digit close
    to it; a prototype made of patterns no digit has is far from all of them. The correlation
    ignores the contrast, so a faint prototype is not rewarded for being close to the black
    image. With ``labels`` (one per data point) and ``classes`` (one per prototype), the search
    is restricted to the data of the prototype's class.

    Returns
    -------
    tuple of numpy.ndarray
        ``(distances, indices)``: float64 distances and the int64 index of the nearest data
        point, each shape ``(N,)``.
    """
    _check_choice("metric", metric, ("euclidean", "correlation"))
    prototypes = _as_matrix("prototypes", prototypes)
    data = _as_matrix("data", data)
    if prototypes.shape[1] != data.shape[1]:
        raise ValueError(
            f"prototypes have {prototypes.shape[1]} features but data has {data.shape[1]}; they must match"
        )
    if metric == "euclidean":
        distance = np.sqrt(np.maximum(
            (prototypes**2).sum(axis=1)[:, None] - 2.0 * prototypes @ data.T + (data**2).sum(axis=1)[None, :], 0.0
        ))
    else:
        def standardised(rows: np.ndarray) -> np.ndarray:
            centred = rows - rows.mean(axis=1, keepdims=True)
            # A constant image has no defined correlation; it gets correlation 0 with everything.
            return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)

        distance = 1.0 - standardised(prototypes) @ standardised(data).T
    if (labels is None) != (classes is None):
        raise ValueError("give both labels (one per data point) and classes (one per prototype), or neither")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        classes = np.asarray(classes).reshape(-1)
        if labels.shape != (len(data),) or classes.shape != (len(prototypes),):
            raise ValueError(
                f"labels must have shape ({len(data)},) and classes ({len(prototypes)},), "
                f"got {labels.shape} and {classes.shape}"
            )
        other_class = classes[:, None] != labels[None, :]
        if other_class.all(axis=1).any():
            raise ValueError("a prototype's class has no data point among the labels")
        distance = np.where(other_class, np.inf, distance)
    indices = distance.argmin(axis=1)
    return distance[np.arange(len(prototypes)), indices].astype(np.float64), indices.astype(np.int64)


# --------------------------------------------------------------------------------------------
# The ascent
# --------------------------------------------------------------------------------------------


def _ascend(
    step: Any, u_start: np.ndarray, u0: np.ndarray, low: float, high: float, *, classes: np.ndarray,
    l2: float, learning_rate: float, steps: int, expert_weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``steps`` compiled ascent steps from ``u_start``; the final variable and the trace."""
    u = tf.constant(u_start)
    m = tf.zeros_like(u)
    v = tf.zeros_like(u)
    constants = (
        tf.constant(u0), tf.constant(classes), tf.constant(l2, tf.float32),
        tf.constant(learning_rate, tf.float32), tf.constant(low, tf.float32), tf.constant(high, tf.float32),
        tf.constant(expert_weight, tf.float32),
    )
    trace = np.empty((steps + 1, len(classes)), np.float64)
    for t in range(1, steps + 1):
        value, u, m, v = step(u, m, v, tf.constant(float(t)), *constants)
        trace[t - 1] = value.numpy()
    # One more call evaluates the final variable (its update is discarded).
    value, _, _, _ = step(u, m, v, tf.constant(float(steps + 1)), *constants)
    trace[steps] = value.numpy()
    return u.numpy().astype(np.float32), trace


def _settings(
    model: keras.Model, classes: Classes, objective: str, optimizer: str, l2: Any, learning_rate: Any,
    steps: Any, expert: Any, expert_weight: Any,
) -> dict[str, Any]:
    """Check the arguments shared by both searches; the values :func:`_ascend` needs."""
    _check_choice("objective", objective, OBJECTIVES)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
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
    expert_weight = _number("expert_weight", expert_weight)
    if expert_weight < 0:
        raise ValueError(f"expert_weight (the expert's weight η) must be non-negative, got {expert_weight}")
    if expert is not None and not callable(getattr(expert, "log_density", None)):
        raise TypeError(f"expert must have a log_density(x) method (a density model), got {type(expert).__name__}")
    return {"classes": classes, "l2": l2, "learning_rate": learning_rate, "steps": int(steps),
            "expert_weight": expert_weight}


def _reference(reference: Any, shape: tuple[int, ...]) -> np.ndarray:
    zeros = np.zeros(shape, np.float32)
    if reference is None:
        return zeros
    if isinstance(reference, str):
        raise TypeError(f"reference must be None or an array, got the string {reference!r}")
    return _inputs("reference", reference, zeros)


def _start(start: Any, u0: np.ndarray, noise: Any) -> np.ndarray:
    if start is None:
        return u0.copy()
    if isinstance(start, str):
        if start != "noise":
            raise ValueError(f"start must be None, 'noise' or an array, got {start!r}")
        return (u0 + noise()).astype(np.float32)
    return _inputs("start", start, np.zeros_like(u0))


def _as_matrix(name: str, value: Any) -> np.ndarray:
    value = np.asarray(value.numpy() if isinstance(value, tf.Tensor) else value)
    if value.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric, got dtype {value.dtype}")
    if value.ndim < 2 or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty batch, shape (N, ...), got shape {value.shape}")
    return value.reshape(len(value), -1).astype(np.float64)


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
