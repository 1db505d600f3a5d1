"""Explaining a whole data set: streams of batches, results on disk, progress, several devices.

What :func:`understanding_nn.explain` does when the input is larger than one batch (README,
"Explaining a data set"):

* **Streams.** A ``tf.data.Dataset``, a ``keras.utils.PyDataset`` or any other iterable of batches
  (``x`` or ``(x, y)``, ``y`` being the targets) is read one batch at a time
  (:func:`read_batches`), so memory is bounded by the batch, not by the data set. A batch that
  cannot be explained raises an error that names it (:class:`BatchError`).
* **Results on disk.** :class:`NpyWriter` appends each batch's relevance to a ``.npy`` file whose
  length need not be known in advance; whatever was written before an error is kept.
* **Progress.** :func:`progress_bar` shows a ``keras.utils.Progbar`` where a person is watching
  (a terminal, a notebook) and nothing elsewhere; the environment variable
  ``UNDERSTANDING_NN_PROGRESS`` (``off`` in the book's build and the tests) or an explicit
  ``progress=`` argument decides it. Only the outermost piece of work shows a bar.
* **Several devices and machines.** Under a ``tf.distribute.Strategy`` scope (``MirroredStrategy``
  on one machine, ``MultiWorkerMirroredStrategy`` across machines) every compiled per-batch
  function runs on all replicas at once, each explaining its share of the batch, and the shares
  are gathered back in input order (:func:`distributed`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pathlib
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "BatchError",
    "NpyWriter",
    "ProgressBar",
    "batch_offset",
    "checked_batches",
    "distributed",
    "is_stream",
    "progress_bar",
    "progress_setting",
    "read_batches",
    "replicas",
    "stream_length",
    "uniform_rows",
    "watching",
]


# --------------------------------------------------------------------------------------------
# Streams of batches
# --------------------------------------------------------------------------------------------


class BatchError(ValueError):
    """A batch of a stream could not be explained; the message names the batch and its inputs."""


def is_stream(data: Any) -> bool:
    """Whether ``data`` is a stream of batches rather than one array-like batch.

    Streams are ``tf.data.Dataset`` objects, ``keras.utils.PyDataset`` objects, iterators and
    generators, and any other iterable that is not array-like (NumPy arrays, tensors, lists and
    tuples, and objects with ``__array__``, are one batch).
    """
    if isinstance(data, (tf.data.Dataset, keras.utils.PyDataset)):
        return True
    if isinstance(data, (np.ndarray, tf.Tensor, list, tuple, str, bytes)) or hasattr(data, "__array__"):
        return False
    return isinstance(data, Iterable)


def stream_length(data: Any) -> int | None:
    """The number of batches of ``data`` when it is known without reading it, else ``None``."""
    if isinstance(data, tf.data.Dataset):
        cardinality = int(data.cardinality())
        return cardinality if cardinality >= 0 else None
    if isinstance(data, keras.utils.PyDataset):
        return data.num_batches
    try:
        return len(data)
    except TypeError:
        return None


def _as_array(value: Any) -> Any:
    return value.numpy() if isinstance(value, tf.Tensor) else value


def read_batches(data: Any) -> Iterator[tuple[Any, Any]]:
    """The batches of the stream ``data`` as pairs ``(x, y)``, NumPy where they were tensors;
    ``y`` is ``None`` for a stream of bare inputs.

    Raises :class:`BatchError` for an element that is neither ``x`` nor ``(x, y)`` (a dict, or a
    tuple with sample weights, say), naming the batch.
    """
    if isinstance(data, tf.distribute.DistributedDataset):
        raise TypeError(
            "data is a distributed data set; pass the tf.data.Dataset itself: under a strategy, "
            "explain shares every batch among the replicas"
        )
    if isinstance(data, tf.data.Dataset):
        elements: Iterable[Any] = data.as_numpy_iterator()
    elif isinstance(data, keras.utils.PyDataset):
        elements = (data[i] for i in range(data.num_batches))
    else:
        elements = data
    for number, element in enumerate(elements, start=1):
        if isinstance(element, dict):
            raise BatchError(
                f"batch {number} of the stream is a dict (keys {', '.join(map(repr, element))}); "
                "a batch must be x or a pair (x, y): map the data set to that form first"
            )
        if isinstance(element, (tuple, list)):
            if len(element) == 1:
                element = (element[0], None)
            elif len(element) != 2:
                raise BatchError(
                    f"batch {number} of the stream is a tuple of {len(element)} values; a batch must be x "
                    "or a pair (x, y) with y the classes to explain (drop sample weights first)"
                )
            yield _as_array(element[0]), _as_array(element[1])
        else:
            yield _as_array(element), None


def checked_batches(
    data: Any, check: Callable[[Any, Any], tuple[np.ndarray, Any]]
) -> Iterator[tuple[str, int, np.ndarray, Any]]:
    """The batches ``(x, y)`` of the stream ``data``, each passed through ``check(x, y)``, as
    ``(position, start, x, y)``: ``position`` names the batch for error messages
    (``"batch 7 of 10 of the stream (inputs from 1536 on)"``), ``start`` is the index of its
    first input in the whole stream.

    A ``TypeError`` or ``ValueError`` raised by ``check`` becomes a :class:`BatchError` that
    names the batch; an empty stream is refused.
    """
    total = stream_length(data)
    start = 0
    for number, (x, y) in enumerate(read_batches(data), start=1):
        position = f"batch {number}{f' of {total}' if total else ''} of the stream (inputs from {start} on)"
        try:
            x, y = check(x, y)
        except (TypeError, ValueError) as error:
            raise BatchError(f"{position}: {error}") from error
        yield position, start, x, y
        start += len(x)
    if start == 0:
        raise BatchError("the stream yielded no batches")


_first_sample: contextvars.ContextVar[int] = contextvars.ContextVar("first_sample", default=0)


@contextlib.contextmanager
def batch_offset(start: int) -> Iterator[None]:
    """Within this context, the inputs being explained are those from index ``start`` on of a
    larger whole (a stream, or an array cut into batches): see :func:`uniform_rows`."""
    token = _first_sample.set(int(start))
    try:
        yield
    finally:
        _first_sample.reset(token)


def uniform_rows(seed: int, low: float, high: float, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform noise on ``[low, high)`` for a batch of ``shape``: the batch's rows of the draw
    ``numpy.random.default_rng(seed).uniform(low, high, (N, *shape[1:]))`` made for the whole
    data set, starting at the row :func:`batch_offset` gives (0 outside any).

    The generator jumps ahead to the batch's first row (PCG64 ``advance``) instead of drawing the
    rows before it, so every input gets the same noise whether it comes in an array, in a stream
    or in a batch of another size.
    """
    generator = np.random.PCG64(seed)
    generator.advance(_first_sample.get() * int(np.prod(shape[1:], dtype=np.int64)))
    return np.random.Generator(generator).uniform(low, high, size=shape)


class NpyWriter:
    """Write a float32 array to a ``.npy`` file one batch at a time, its length unknown in advance.

    The file is written under a temporary name beside ``path`` and renamed to ``path`` by
    :meth:`close`, which also writes the final shape into the header; a file of the batches
    written so far is what an interrupted run leaves. Each batch is written with a plain file
    write (not a memory map), so the process's memory does not grow with the file.

    Parameters
    ----------
    path
        Where the array goes; it must end in ``.npy`` and its folder must exist.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = Path(tempfile.mkdtemp()) / "R.npy"
    >>> with NpyWriter(path) as writer:
    ...     writer.write(np.ones((2, 3)))
    ...     writer.write(np.zeros((1, 3)))
    >>> np.load(path).shape
    (3, 3)
    """

    # Room for the header of any shape the writer produces (NumPy pads headers to 64 bytes).
    _HEADER_BYTES = 256

    def __init__(self, path: str | pathlib.Path) -> None:
        self.path = Path(path)
        if self.path.suffix != ".npy":
            raise ValueError(f"out must be a path ending in .npy, got {str(path)!r}")
        if not self.path.parent.is_dir():
            raise ValueError(f"out is {str(path)!r}, but the folder {str(self.path.parent)!r} does not exist")
        self._partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self._file = open(self._partial, "wb")
        self._file.write(b"\0" * self._HEADER_BYTES)
        self.sample_shape: tuple[int, ...] | None = None
        self.rows = 0

    def write(self, batch: np.ndarray) -> None:
        """Append ``batch`` (shape ``(n, *sample_shape)``; every batch has the same sample shape)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.sample_shape is None:
            self.sample_shape = tuple(batch.shape[1:])
        elif tuple(batch.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"this batch's samples have shape {tuple(batch.shape[1:])}, the earlier ones {self.sample_shape}; "
                "an array on disk needs one sample shape"
            )
        self._file.write(batch.tobytes())
        self.rows += len(batch)

    def close(self) -> Path:
        """Write the header for the rows written and move the file to ``path``."""
        if self._file.closed:
            return self.path
        header = repr(
            {"descr": np.dtype(np.float32).str, "fortran_order": False, "shape": (self.rows, *(self.sample_shape or ()))}
        )
        preamble = b"\x93NUMPY\x01\x00"
        length = self._HEADER_BYTES - len(preamble) - 2
        text = header.ljust(length - 1).encode("latin1") + b"\n"
        self._file.seek(0)
        self._file.write(preamble + length.to_bytes(2, "little") + text)
        self._file.close()
        os.replace(self._partial, self.path)
        return self.path

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------

_PROGRESS_VARIABLE = "UNDERSTANDING_NN_PROGRESS"
# Work that ends within this time shows no bar at all, so that quick calls stay quiet.
_DELAY_SECONDS = 1.0

_setting: contextvars.ContextVar[bool | None] = contextvars.ContextVar("progress_setting", default=None)
_bar_open: contextvars.ContextVar[bool] = contextvars.ContextVar("progress_bar_open", default=False)


def watching() -> bool:
    """Whether a person is likely watching: ``UNDERSTANDING_NN_PROGRESS`` says so (``on``/``off``,
    ``1``/``0``, ``true``/``false``), or else standard output is a terminal or a notebook's."""
    value = os.environ.get(_PROGRESS_VARIABLE, "").strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    if value:
        raise ValueError(f"{_PROGRESS_VARIABLE} must be on or off, got {value!r}")
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


@contextlib.contextmanager
def progress_setting(progress: bool | None) -> Iterator[None]:
    """Within this context, show progress (``True``), never (``False``), or as the enclosing
    context or :func:`watching` decides (``None``)."""
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    token = _setting.set(bool(progress) if progress is not None else _setting.get())
    try:
        yield
    finally:
        _setting.reset(token)


class ProgressBar:
    """Counts units of work and shows a ``keras.utils.Progbar`` of them once the work has lasted
    a second (or counts silently when ``shown`` is false); made by :func:`progress_bar`."""

    def __init__(self, total: int | None, unit: str, shown: bool) -> None:
        self.total, self.unit, self.shown = total, unit, shown
        self.done = 0
        self._started = time.monotonic()
        self._bar: keras.utils.Progbar | None = None

    def update(self, units: int = 1) -> None:
        """Count ``units`` more units of work done."""
        self.done += int(units)
        if not self.shown:
            return
        if self._bar is None and time.monotonic() - self._started >= _DELAY_SECONDS:
            self._bar = keras.utils.Progbar(self.total, unit_name=self.unit)
        if self._bar is not None:
            self._bar.update(self.done, finalize=self.total is not None and self.done >= self.total)

    def finish(self) -> None:
        """Close the bar of work whose total was not known."""
        if self._bar is not None and self._bar.target is None:
            self._bar.update(self.done, finalize=True)


@contextlib.contextmanager
def progress_bar(total: int | None, unit: str = "sample") -> Iterator[ProgressBar]:
    """A progress bar for ``total`` units of work (``None`` if unknown), advanced by ``update(n)``.

    Only the outermost bar of nested work is shown (SmoothGrad's bar counts noisy copies, and the
    explanations it averages show none); it is shown when :func:`progress_setting` or, failing
    that, :func:`watching` says so, and only once the work has lasted a second.
    """
    if _bar_open.get():
        yield ProgressBar(total, unit, shown=False)
        return
    setting = _setting.get()
    bar = ProgressBar(total, unit, shown=watching() if setting is None else setting)
    token = _bar_open.set(True)
    try:
        yield bar
        bar.finish()
    finally:
        _bar_open.reset(token)


# --------------------------------------------------------------------------------------------
# Several devices and machines
# --------------------------------------------------------------------------------------------


def replicas() -> int:
    """How many replicas the current ``tf.distribute`` strategy runs (1 outside any scope)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def distributed(batch_function: Callable[..., tf.Tensor]) -> Callable[..., tf.Tensor]:
    """``batch_function`` run by every replica of the current strategy on its share of a batch.

    The batch (and each per-sample argument with it) is padded to a multiple of the number of
    replicas :math:`n` by repeating its last sample, replica :math:`i` explains rows
    :math:`i k, \\dots, (i + 1) k - 1` with :math:`k` the padded size over :math:`n`, and
    ``strategy.gather`` puts the shares back in input order (across machines too, under
    ``MultiWorkerMirroredStrategy``); the padding is dropped. Outside a strategy with several
    replicas, ``batch_function`` itself is returned.
    """
    strategy = tf.distribute.get_strategy()
    n = strategy.num_replicas_in_sync
    if n == 1:
        return batch_function
    # The compiled step is kept on the function (one per strategy), so that a method's cached
    # per-model function is traced for distribution once, not once per call.
    steps = getattr(batch_function, "_distributed_steps", None)
    if steps is None:
        steps = weakref.WeakKeyDictionary()
        with contextlib.suppress(AttributeError, TypeError):
            batch_function._distributed_steps = steps  # type: ignore[attr-defined]
    if strategy not in steps:
        steps[strategy] = _compile_distributed(batch_function, strategy, n)
    step = steps[strategy]

    def run(*arguments: tf.Tensor) -> tf.Tensor:
        size = int(arguments[0].shape[0])
        padded = -(-size // n) * n
        if padded != size:
            arguments = tuple(tf.concat([a, tf.repeat(a[-1:], padded - size, axis=0)], axis=0) for a in arguments)
        return step(*arguments)[:size]

    return run


def _compile_distributed(batch_function: Callable[..., tf.Tensor], strategy: Any, n: int) -> Any:
    def share(*arguments: tf.Tensor) -> tf.Tensor:
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        # A reshape and an index keep the share's static shape, which some methods read.
        return batch_function(*(tf.reshape(a, (n, a.shape[0] // n, *a.shape[1:]))[replica] for a in arguments))

    @tf.function
    def step(*arguments: tf.Tensor) -> tf.Tensor:
        return strategy.gather(strategy.run(share, args=arguments), axis=0)

    # Traced once per batch shape and per method call that builds its batch function afresh
    # (integrated gradients does); TensorFlow's warning about frequent retracing does not apply.
    step._omit_frequent_tracing_warning = True
    return step
