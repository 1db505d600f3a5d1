"""One call for every attribution method: :func:`explain`.

Every explanation in the book (Part II onwards) goes through this module. It does, once and for
every method, what each method would otherwise repeat:

* checks the model (a built Keras 3 Sequential or functional model with one input and a 2-D
  output of class scores) and finds its **logits** in the model's graph
  (:func:`understanding_nn.propagation.trace`): a final softmax, log-softmax or sigmoid is
  stripped, because explanations start from the class score :math:`S_c(x)`, not from a
  probability (Montavon et al. 2018, §2; the original tutorial's LRP started from the softmax,
  which this fixes);
* validates the input batch (shape, floating dtype, finite values) with errors that name the
  problem;
* resolves the target: an int for every sample, one class index per sample, or ``None`` for the
  class the model predicts;
* splits the batch and runs the method's compiled per-batch function on each part (on every
  replica of a ``tf.distribute`` strategy, with a progress bar where a person is watching);
* reads a stream of batches (a ``tf.data.Dataset``, any iterable) one batch at a time, writing
  the results to disk if asked (:func:`explain_batches`; the machinery is in
  :mod:`understanding_nn.streaming`).

A method is a plain function ``method(model, x, target=None, *, batch_size=..., **params)``
registered under its name with :func:`register`; :func:`explain` dispatches to it by name and
:func:`methods` lists the names.
"""

from __future__ import annotations

import inspect
import pathlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Union

import keras
import numpy as np
import tensorflow as tf

from .propagation import UnsupportedModelError, symbolic_io, trace
from .streaming import (
    BatchError,
    NpyWriter,
    batch_offset,
    checked_batches,
    distributed,
    is_stream,
    progress_bar,
    progress_setting,
    stream_length,
    uniform_rows,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Target",
    "batch_checker",
    "batch_signature",
    "check_stream_target",
    "class_indices",
    "class_scores",
    "compile_batch_function",
    "compile_function",
    "compiled",
    "explain",
    "explain_batches",
    "explain_sliding",
    "gaussian_blur",
    "logit_function",
    "methods",
    "n_classes",
    "predict_logits",
    "predict_probabilities",
    "register",
    "resolve_reference",
    "resolve_target",
    "run_batched",
    "validate_input",
    "validate_model",
]

DEFAULT_BATCH_SIZE = 256

Target = Union[int, Sequence[int], np.ndarray, None]

_METHODS: dict[str, Callable[..., np.ndarray]] = {}



# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def register(name: str) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register an attribution function under ``name`` so that :func:`explain` can find it."""

    def decorate(function: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in _METHODS:
            raise ValueError(f"an attribution method named {name!r} is already registered")
        _METHODS[name] = function
        return function

    return decorate


def methods() -> list[str]:
    """The names of the attribution methods that :func:`explain` accepts, sorted."""
    return sorted(_METHODS)


def explain(
    model: keras.Model,
    x: Any,
    method: str,
    target: Target = None,
    *,
    out: str | pathlib.Path | None = None,
    progress: bool | None = None,
    strategy: tf.distribute.Strategy | None = None,
    **params: Any,
) -> np.ndarray:
    """Explain the decisions of ``model`` on the inputs ``x`` with the attribution ``method``.

    Parameters
    ----------
    model
        A built Keras 3 Sequential or functional model with one input and one output of class
        scores, shape ``(batch, n_classes)``; nested models, residual and branching graphs are
        fine. A final softmax, log-softmax or sigmoid, in any spelling, is found in the graph
        and ignored: the method explains the logit :math:`S_c(x)`. A model with a single
        output :math:`z` is a binary classifier: class 1 is explained by :math:`S_1 = z`, class
        0 by :math:`S_0 = -z`. What each propagation method does on each kind of layer is
        listed by :func:`understanding_nn.propagation.supported_layers`; a layer a method has
        no rule for is refused with :class:`~understanding_nn.propagation.UnsupportedModelError`.
    x
        The inputs: a batch (NumPy array or tensor) shaped like the model's input
        (``(N, 28, 28, 1)`` for the book's MNIST models), floating point, finite; or a stream of
        such batches, read one at a time: a ``tf.data.Dataset``, a ``keras.utils.PyDataset``, a
        generator or any other iterable, of ``x`` or of pairs ``(x, y)`` whose ``y`` are the
        classes to explain (see :func:`explain_batches`).
    method
        One of :func:`methods`, for example ``"gradient"`` or ``"sensitivity"``.
    target
        The class to explain: an int (the same class for every sample), a sequence of ``N`` class
        indices (shape ``(N,)`` or a column ``(N, 1)``), or ``None`` for the class the model
        predicts for each sample (or, for a stream of pairs ``(x, y)``, the ``y`` of each batch).
    out
        A path ending in ``.npy``: the relevance is written there batch by batch, so that an
        explanation larger than memory is one call, and a read-only memory map of the file is
        returned. If a batch fails, the file keeps the explanations of the batches before it.
    progress
        Show a progress bar (``True``), never (``False``), or where a person is watching
        (``None``: a terminal or a notebook, unless ``UNDERSTANDING_NN_PROGRESS=off``); work that
        ends within a second shows none.
    strategy
        A ``tf.distribute.Strategy`` whose replicas share every batch (the same as calling
        ``explain`` inside ``strategy.scope()``): each replica explains its share and the
        results are gathered in input order.
    **params
        The method's own parameters (see the method's function), and ``batch_size``.

    Returns
    -------
    numpy.ndarray
        The relevance :math:`R(x)`, float32, with the same shape as ``x`` (for a stream: all its
        batches, concatenated in order).

    Examples
    --------
    >>> R = explain(model, x_test[:10], method="sensitivity", target=y_test[:10])  # doctest: +SKIP
    >>> stream = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(256)  # doctest: +SKIP
    >>> R = explain(model, stream, "lrp.epsilon", out="relevance.npy")              # doctest: +SKIP
    """
    function = _method_function(method, params)
    if strategy is not None:
        if not isinstance(strategy, tf.distribute.Strategy):
            raise TypeError(f"strategy must be a tf.distribute.Strategy, got {type(strategy).__name__}")
        with strategy.scope():
            return explain(model, x, method, target, out=out, progress=progress, **params)
    with progress_setting(progress):
        if out is None and not is_stream(x):
            return function(model, x, target, **params)
        if out is not None:
            return _explain_to_disk(model, x, method, target, out, params)
        return np.concatenate(list(explain_batches(model, x, method, target, **params)), axis=0)


def explain_batches(
    model: keras.Model,
    data: Any,
    method: str,
    target: Target = None,
    *,
    progress: bool | None = None,
    **params: Any,
) -> Iterator[np.ndarray]:
    """Explain a stream of batches one batch at a time: a generator of each batch's relevance.

    Memory stays bounded by the batch, whatever the length of the stream. Each batch is
    explained as :func:`explain` explains an array, under the current ``tf.distribute``
    strategy if any.

    Parameters
    ----------
    model, method, progress, **params
        As in :func:`explain`.
    data
        A ``tf.data.Dataset``, a ``keras.utils.PyDataset``, a generator or any iterable of
        batches, each either ``x`` or a pair ``(x, y)`` with ``y`` the classes to explain (an
        array or a tensor also works: it is cut into batches of ``batch_size``).
    target
        An int (the same class for every sample, overriding any ``y``) or ``None`` (each batch's
        ``y``, or the predicted class where there is none). Per-sample targets of a stream come
        in the stream, as ``(x, y)``.

    Yields
    ------
    numpy.ndarray
        The relevance of each batch, float32, shaped like the batch, in the stream's order.

    Raises
    ------
    understanding_nn.streaming.BatchError
        For a batch that is not a valid input (wrong shape or dtype, NaN, a bad ``y``): the
        message names the batch (counting from 1) and the inputs it holds.

    Examples
    --------
    >>> for R in explain_batches(model, dataset, "gradient"):   # doctest: +SKIP
    ...     save(R)
    """
    function = _method_function(method, params)
    validate_model(model)
    batch_size = params.get("batch_size", DEFAULT_BATCH_SIZE)
    if is_stream(data):
        check_stream_target(target)
    else:
        data = _array_batches(model, data, target, batch_size)
        target = None  # the targets travel with their rows
    with progress_setting(progress), progress_bar(stream_length(data), unit="batch") as bar:
        for _, start, xb, batch_target in checked_batches(data, batch_checker(model, target)):
            # Computed inside the context, yielded outside it: the caller's own code between two
            # batches must not see this batch's offset.
            with batch_offset(start):
                relevance = function(model, xb, batch_target, **params)
            yield relevance
            bar.update()


def check_stream_target(target: Target) -> None:
    """Refuse a ``target`` that a stream of batches cannot take: anything but an int or ``None``."""
    if target is not None and (isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer))):
        raise TypeError(
            "with a stream of batches, target must be an int or None; per-sample targets come in "
            "the stream, as batches (x, y)"
        )


def batch_checker(model: keras.Model, target: Target) -> Callable[[Any, Any], tuple[np.ndarray, np.ndarray | None]]:
    """The check of one batch ``(x, y)`` of a stream for ``model``: ``x`` validated, and its
    targets, ``target`` (an int) if given, else ``y`` (``None`` when the batch has none),
    resolved to class indices (see :func:`understanding_nn.streaming.checked_batches`)."""

    def check(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray | None]:
        if np.ndim(x) == len(model.inputs[0].shape) - 1:
            raise ValueError(
                f"it is a single sample of shape {np.shape(x)}, not a batch: batch the stream "
                "(for a tf.data.Dataset, dataset.batch(256))"
            )
        x = validate_input(model, x)
        batch_target = target if target is not None else y
        return x, None if batch_target is None else class_indices(batch_target, len(x), n_classes(model))

    return check


def _array_batches(model: keras.Model, x: Any, target: Target, batch_size: Any) -> list[tuple[np.ndarray, Any]]:
    """The batch ``x`` cut into pairs (inputs, targets) of ``batch_size`` rows, targets resolved."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = validate_input(model, x)
    targets = None if target is None else class_indices(target, len(x), n_classes(model))
    return [
        (x[i : i + batch_size], None if targets is None else targets[i : i + batch_size])
        for i in range(0, len(x), batch_size)
    ]


def _explain_to_disk(model: keras.Model, x: Any, method: str, target: Target, out: Any, params: dict) -> np.ndarray:
    """:func:`explain` writing to ``out`` batch by batch, keeping what was done if a batch fails."""
    writer = NpyWriter(out)
    try:
        for relevance in explain_batches(model, x, method, target, **params):
            writer.write(relevance)
    except BatchError as error:
        writer.close()
        raise BatchError(f"{error}; the {writer.rows} explanations before it are in {str(writer.path)!r}") from error
    finally:
        writer.close()
    return np.load(writer.path, mmap_mode="r")


def _method_function(method: Any, params: dict[str, Any]) -> Callable[..., np.ndarray]:
    """The registered function of ``method``, after checking that it takes ``params``."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a method name (str), got {type(method).__name__}")
    try:
        function = _METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown attribution method {method!r}; available methods: {', '.join(methods())}"
        ) from None
    accepted = [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(
            f"method {method!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(accepted)}"
        )
    return function


# --------------------------------------------------------------------------------------------
# Model, input and target checks
# --------------------------------------------------------------------------------------------


def validate_model(model: Any) -> keras.Model:
    """Check that ``model`` is a built, single-input Keras model with a ``(batch, classes)`` output."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a Keras 3 model (keras.Model), got {type(model).__name__}")
    inputs, outputs = symbolic_io(model)
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedModelError(
            f"model {model.name!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
            "explanations need exactly one of each"
        )
    if len(outputs[0].shape) != 2:
        raise UnsupportedModelError(
            f"model {model.name!r} outputs shape {tuple(outputs[0].shape)}; explanations need "
            "one score per class, shape (batch, n_classes)"
        )
    return model


def validate_input(model: keras.Model, x: Any) -> np.ndarray:
    """Return ``x`` as a float32 NumPy batch after checking it fits ``model``.

    Raises a ``TypeError`` for a non-numeric or integer dtype and a ``ValueError`` for a wrong
    shape, an empty batch, or non-finite values, each naming what is wrong.
    """
    if isinstance(x, tf.Tensor):
        x = x.numpy()
    x = np.asarray(x)
    if x.dtype.kind in "iub":
        raise TypeError(
            f"x has dtype {x.dtype}; explanations need floating-point inputs "
            "(for 8-bit images use x.astype('float32') / 255 to map them to [0, 1])"
        )
    if x.dtype.kind != "f":
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    expected = tuple(model.inputs[0].shape)
    sample_shape = expected[1:]
    if x.ndim == len(sample_shape) and _shape_fits(x.shape, sample_shape):
        raise ValueError(
            f"x has shape {x.shape}, a single sample; explanations take a batch, "
            f"shape (N, {', '.join(map(str, sample_shape))}): use x[None] for one sample"
        )
    if x.ndim != len(expected) or not _shape_fits(x.shape[1:], sample_shape):
        raise ValueError(
            f"x has shape {x.shape} but model {model.name!r} expects inputs of shape "
            f"{_format_shape(expected)}"
        )
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (0 samples)")
    finite = np.isfinite(x)
    if not finite.all():
        raise ValueError(f"x contains {int((~finite).sum())} NaN or infinite values")
    largest = float(np.abs(x).max())
    if largest > float(np.finfo(np.float32).max):
        raise ValueError(
            f"x holds values up to {largest:.3g}, beyond float32's range (about 3.4e38), in which the "
            "model computes; rescale the inputs"
        )
    return x.astype(np.float32, copy=False)


def resolve_target(
    model: keras.Model, x: np.ndarray, target: Target, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """Turn ``target`` into one class index per sample of ``x`` (int32 array of length N).

    ``None`` means the predicted class, :math:`\\arg\\max_c S_c(x)`.
    """
    if target is None:
        return np.argmax(class_scores(model, x, batch_size=batch_size), axis=1).astype(np.int32)
    return class_indices(target, x.shape[0], n_classes(model))


def class_indices(target: Target, n_samples: int, n_classes: int) -> np.ndarray:
    """Check an explicit ``target`` (an int, or one class index per sample, shape ``(N,)`` or a
    column ``(N, 1)``) and return it as ``n_samples`` int32 class indices in ``0 .. n_classes - 1``."""
    if isinstance(target, tf.Tensor):
        target = target.numpy()
    if isinstance(target, (bool, np.bool_)):
        raise TypeError("target must be a class index, a sequence of class indices or None, not a bool")
    if isinstance(target, (int, np.integer)):
        indices = np.full(n_samples, int(target))
    else:
        indices = np.asarray(target)
        if indices.shape == (n_samples, 1):
            indices = indices[:, 0]  # one label per row, in a column, as many data sets store them
        one_hot_hint = (
            " (one-hot labels? use labels.argmax(axis=1))" if indices.ndim == 2 and indices.shape[1] > 1 else ""
        )
        if indices.dtype.kind not in "iu":
            raise TypeError(f"target must hold integer class indices, got dtype {indices.dtype}{one_hot_hint}")
        if indices.shape != (n_samples,):
            raise ValueError(
                f"target has shape {indices.shape}; it needs one class index per sample, "
                f"shape ({n_samples},){one_hot_hint}"
            )
    bad = (indices < 0) | (indices >= n_classes)
    if bad.any():
        raise ValueError(
            f"target {int(indices[bad][0])} is out of range: the model has {n_classes} classes "
            f"(0 to {n_classes - 1})"
        )
    return indices.astype(np.int32)


def _shape_fits(shape: Sequence[int], expected: Sequence[int | None]) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def _format_shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


# --------------------------------------------------------------------------------------------
# Logits and compiled per-model functions
# --------------------------------------------------------------------------------------------

# Compiled functions are cached per model. The cached values never hold the model itself (only
# its layers), so that a model that goes out of scope is freed together with its functions.
_COMPILED: weakref.WeakKeyDictionary[keras.Model, dict[str, Any]] = weakref.WeakKeyDictionary()

def compiled(model: keras.Model, key: str, build: Callable[[], Any]) -> Any:
    """Return the function ``build()`` made for ``model`` under ``key``, building it once."""
    functions = _COMPILED.setdefault(model, {})
    if key not in functions:
        functions[key] = build()
    return functions[key]


def logit_function(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function mapping a batch to the model's logits :math:`z(x)`, in inference mode.

    The logits are found from the model's graph (:func:`understanding_nn.propagation.trace`): a
    final softmax, log-softmax or sigmoid is left out, whether it is a layer's activation (given
    as a string, a ``keras.activations``, ``keras.ops`` or ``tf.nn`` function), a layer of its
    own, a ``keras.ops`` call, or the last layer of a nested model. An output that cannot be
    traced to its logits is refused with :class:`~understanding_nn.propagation.UnsupportedModelError`.
    """
    validate_model(model)
    # The unfolded graph: every layer computes as Keras does, batch normalizations included.
    return trace(model, fold=False).logits


def n_classes(model: keras.Model) -> int:
    """The number of classes a target of ``model`` can name: one per logit, or 2 for a binary
    classifier with a single logit (class 1 is the logit's class, class 0 the other)."""
    return trace(validate_model(model)).n_classes


def batch_signature(model: keras.Model, *, target: bool = True, references: int = 0) -> list[tf.TensorSpec]:
    """The ``input_signature`` of a compiled per-batch function of ``model``: ``[x, target]``,
    or ``[x]`` without target, followed by ``references`` extra inputs shaped like ``x``.

    Fixing it (with an open batch size) traces each function once per model, whatever the sizes
    of the batches.
    """
    x_spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)
    target_spec = [tf.TensorSpec((None,), tf.int32)] if target else []
    return [x_spec, *target_spec, *[x_spec] * references]


def compile_function(function: Callable[..., Any], signature: Sequence[tf.TensorSpec]) -> Any:
    """``function`` compiled with ``tf.function`` for a fixed ``input_signature``.

    Each model (and each rule set of a method) gets its own compiled function by design, traced
    once thanks to the fixed signature; TensorFlow's warning about ``tf.function`` objects
    re-created in a loop, which counts traces across such functions, does not apply to them.
    """
    compiled_function = tf.function(function, input_signature=list(signature))
    compiled_function._omit_frequent_tracing_warning = True
    return compiled_function


def compile_batch_function(
    model: keras.Model, function: Callable[..., Any], *, target: bool = True, references: int = 0
) -> Any:
    """``function`` compiled for batches of ``model``'s inputs, with the :func:`batch_signature`
    of the same arguments (see :func:`compile_function`)."""
    return compile_function(function, batch_signature(model, target=target, references=references))


def predict_logits(model: keras.Model, x: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """The logits :math:`S(x)` of ``model`` for the batch ``x``, shape ``(N, n_classes)``."""
    x = validate_input(validate_model(model), x)
    logits = logit_function(model)
    forward = compiled(model, "forward", lambda: compile_batch_function(model, logits, target=False))
    parts = [forward(tf.constant(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return np.concatenate([p.numpy() for p in parts], axis=0)


def class_scores(model: keras.Model, x: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """The score :math:`S_c(x)` of every class, shape ``(N, n_classes)``: the logits, or for a
    model with a single logit :math:`z`, the two columns :math:`(-z, z)`."""
    logits = predict_logits(model, x, batch_size)
    return np.concatenate([-logits, logits], axis=1) if trace(model).binary else logits


def predict_probabilities(
    model: keras.Model, x: Any, target: Target = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """The class probabilities :math:`p(\\omega_c \\mid x)`.

    The softmax of the logits; for a model with a single logit :math:`z`, the two classes
    :math:`(1 - \\sigma(z), \\sigma(z))`; for a model whose outputs are sigmoids of several logits
    (several labels at once), :math:`\\sigma(z_c)` for each. With ``target=None``, all of them,
    shape ``(N, n_classes)``; with a target (an int, or one class per sample), the probability of
    that class for each sample, shape ``(N,)``.
    """
    logits = predict_logits(model, x, batch_size).astype(np.float64)
    graph = trace(model)
    if graph.binary or graph.squashing == "sigmoid":
        positive = 1.0 / (1.0 + np.exp(-logits))
        probabilities = np.concatenate([1.0 - positive, positive], axis=1) if graph.binary else positive
    else:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    if target is None:
        return probabilities
    return probabilities[np.arange(len(logits)), class_indices(target, len(logits), probabilities.shape[1])]


def run_batched(
    model: keras.Model,
    x: Any,
    target: Target,
    batch_function: Callable[..., tf.Tensor],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    per_sample: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Validate, resolve the target, and apply ``batch_function(x_batch, target_batch, ...)`` per batch.

    This is the shared body of every attribution function: ``batch_function`` receives a float32
    tensor of at most ``batch_size`` samples, their int32 targets, and the matching rows of each
    array in ``per_sample`` (for example reference inputs), and returns the relevance of that
    batch with the same shape as ``x_batch``. Under a ``tf.distribute`` strategy with several
    replicas, each replica computes its share of every batch
    (:func:`understanding_nn.streaming.distributed`); a progress bar counts the samples
    (:func:`understanding_nn.streaming.progress_bar`).
    """
    validate_model(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = validate_input(model, x)
    targets = resolve_target(model, x, target, batch_size)
    apply = distributed(batch_function)
    parts = []
    with progress_bar(len(x)) as bar:
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            extra = [tf.constant(array[rows]) for array in per_sample]
            relevance = apply(tf.constant(x[rows]), tf.constant(targets[rows]), *extra)
            parts.append(np.asarray(relevance, dtype=np.float32))
            bar.update(len(parts[-1]))
    return np.concatenate(parts, axis=0)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Blur a batch of images ``(N, H, W, C)`` with a Gaussian of standard deviation ``sigma``
    pixels (edges extended), channel by channel."""
    if not sigma > 0:
        raise ValueError(f"the blur's sigma must be positive, got {sigma!r}")
    if x.ndim != 4:
        raise ValueError(f"blurring needs images shaped (N, H, W, C), got shape {x.shape}")
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    for axis in (1, 2):
        padding = [(radius, radius) if a == axis else (0, 0) for a in range(4)]
        padded = np.pad(x, padding, mode="edge")
        length = x.shape[axis]
        x = sum(k * np.take(padded, np.arange(i, i + length), axis=axis) for i, k in enumerate(kernel))
    return x.astype(np.float32)


def resolve_reference(
    x: np.ndarray, reference: Any, *, blur_sigma: float = 3.0, seed: int = 0, name: str = "reference"
) -> np.ndarray:
    """The reference (baseline) input of every sample of the validated batch ``x``, shape ``x.shape``.

    ``reference`` is ``"zeros"`` (a black image), ``"blur"`` (each input blurred with a Gaussian
    of ``blur_sigma`` pixels), ``"uniform"`` (uniform noise on the book's pixel range [0, 1],
    drawn with ``seed`` for each input by its position in the data set, see
    :func:`understanding_nn.streaming.uniform_rows`; refused for inputs outside that range), or an array: one input (for example the mean training image, broadcast to
    every sample) or one reference per sample. ``name`` is what error messages call it.
    """
    if isinstance(reference, str):
        if reference == "zeros":
            return np.zeros_like(x)
        if reference == "blur":
            return gaussian_blur(x, blur_sigma)
        if reference == "uniform":
            low, high = float(x.min()), float(x.max())
            if low < 0.0 or high > 1.0:
                raise ValueError(
                    f"the 'uniform' {name} draws values in [0, 1], the book's pixel range, but x lies in "
                    f"[{low:.3g}, {high:.3g}]; pass an array instead, for example "
                    f"np.random.default_rng(0).uniform({low:.3g}, {high:.3g}, size=x.shape[1:])"
                )
            return uniform_rows(seed, 0.0, 1.0, x.shape).astype(np.float32)
        raise ValueError(f"{name} must be 'zeros', 'blur', 'uniform' or an array, got {reference!r}")
    reference = np.asarray(reference.numpy() if isinstance(reference, tf.Tensor) else reference)
    if reference.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric, got dtype {reference.dtype}")
    if reference.shape == x.shape[1:]:
        reference = np.broadcast_to(reference, x.shape)
    if reference.shape != x.shape:
        raise ValueError(
            f"{name} has shape {reference.shape}; it must be one input of shape {x.shape[1:]} "
            f"or one per sample, shape {x.shape}"
        )
    if not np.isfinite(reference).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return reference.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Explaining inputs larger than the model's: the sliding window (translation trick)
# --------------------------------------------------------------------------------------------

# Windows explained per call of explain() in explain_sliding (each call batches them further).
_SLIDING_CHUNK = 2048


def _window_offsets(length: int, size: int, stride: int) -> list[int]:
    """Offsets ``0, stride, 2 stride, ...`` of the windows along one axis, plus the last
    possible offset ``length - size`` if the stride does not reach it, so every pixel is covered."""
    offsets = list(range(0, length - size + 1, stride))
    if offsets[-1] != length - size:
        offsets.append(length - size)
    return offsets


def explain_sliding(
    model: keras.Model,
    canvas: Any,
    method: str,
    target: Target,
    *,
    stride: int = 4,
    **params: Any,
) -> np.ndarray:
    """Explain a canvas larger than the model's input by sliding the model over it.

    Every window of the model's input size ``h × w`` is cut from each canvas at the offsets
    :math:`o = (r, c)` with :math:`r = 0, s, 2s, \\dots` and :math:`c = 0, s, 2s, \\dots`
    (stride :math:`s`, plus the last offset of each axis so that the border is covered). Each
    window :math:`x^{(o)}` is explained for the target class with :func:`explain`, and the
    relevance of a canvas pixel :math:`p` is the mean over the windows :math:`O(p)` that contain it:

    .. math:: R_p = \\frac{1}{|O(p)|} \\sum_{o \\in O(p)} R^{(o)}_{p - o}(x^{(o)}) .

    This is the translation trick (Montavon et al. 2018, §6) for a classifier of fixed input
    size: the canvas is explained by the same model at every placement, and the maps are
    averaged where they overlap. The result is not a decomposition of one score (the windows
    have different logits), so it need not sum to any logit.

    Parameters
    ----------
    model
        As in :func:`explain`; its input shape ``(h, w, channels)`` must be fully known.
    canvas
        A batch of canvases ``(N, H, W, channels)``, floating point, finite, with
        ``H >= h`` and ``W >= w``.
    method
        One of :func:`methods`.
    target
        The class to explain in every window: an int, or one class index per canvas.
        ``None`` is refused: a canvas has no single predicted class.
    stride
        Step between neighbouring windows in pixels, an integer ``>= 1``; ``stride=1`` uses
        every placement.
    **params
        Passed to :func:`explain` (the method's parameters and ``batch_size``).

    Returns
    -------
    numpy.ndarray
        The averaged relevance, float32, shaped like ``canvas``.
    """
    validate_model(model)
    window = tuple(model.inputs[0].shape[1:])
    if len(window) != 3 or any(d is None for d in window):
        raise UnsupportedModelError(
            f"model {model.name!r} has input shape {_format_shape(tuple(model.inputs[0].shape))}; "
            "sliding windows need images of a fixed size, shape (N, height, width, channels)"
        )
    height, width, channels = (int(d) for d in window)
    if isinstance(canvas, tf.Tensor):
        canvas = canvas.numpy()
    canvas = np.asarray(canvas)
    if canvas.dtype.kind != "f":
        raise TypeError(f"canvas must be a floating-point array, got dtype {canvas.dtype}")
    if canvas.ndim != 4 or canvas.shape[-1] != channels:
        raise ValueError(
            f"canvas has shape {canvas.shape}; it must be a batch of images (N, H, W, {channels}) "
            f"for model {model.name!r}"
        )
    if canvas.shape[0] == 0:
        raise ValueError("canvas is an empty batch (0 canvases)")
    n_canvases, canvas_height, canvas_width = canvas.shape[:3]
    if canvas_height < height or canvas_width < width:
        raise ValueError(
            f"the canvas ({canvas_height}×{canvas_width}) is smaller than one window of the model's "
            f"input size ({height}×{width})"
        )
    if isinstance(stride, (bool, np.bool_)) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
    if not np.isfinite(canvas).all():
        raise ValueError(f"canvas contains {int((~np.isfinite(canvas)).sum())} NaN or infinite values")
    if target is None:
        raise ValueError(
            "explain_sliding needs the class to explain (an int or one class per canvas): "
            "a canvas has no single predicted class"
        )
    targets = class_indices(target, n_canvases, n_classes(model))

    rows = _window_offsets(canvas_height, height, stride)
    cols = _window_offsets(canvas_width, width, stride)
    coverage = np.zeros((canvas_height, canvas_width), dtype=np.float64)
    for r in rows:
        for c in cols:
            coverage[r : r + height, c : c + width] += 1
    places = [(n, r, c) for n in range(n_canvases) for r in rows for c in cols]
    total = np.zeros(canvas.shape, dtype=np.float64)
    with progress_bar(len(places), unit="window") as bar:
        for start in range(0, len(places), _SLIDING_CHUNK):
            chunk = places[start : start + _SLIDING_CHUNK]
            windows = np.stack([canvas[n, r : r + height, c : c + width] for n, r, c in chunk])
            relevance = explain(model, windows, method, targets[[n for n, _, _ in chunk]], **params)
            for (n, r, c), window_relevance in zip(chunk, relevance):
                total[n, r : r + height, c : c + width] += window_relevance
            bar.update(len(chunk))
    return (total / coverage[None, :, :, None]).astype(np.float32)
