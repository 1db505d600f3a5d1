"""Tests of understanding_nn.data: real MNIST without a download, cluttered MNIST, 2-D toys."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest

from understanding_nn import data

# --------------------------------------------------------------------------------------------
# load_mnist
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_split():
    return data.load_mnist("train")


@pytest.fixture(scope="module")
def test_split():
    return data.load_mnist("test")


def _fingerprints(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(image.tobytes()).hexdigest() for image in images}


@pytest.mark.parametrize(("split", "n"), [("train", 4000), ("test", 1000), ("all", 5000)])
def test_load_mnist_shapes_dtypes_and_ranges(split, n):
    images, labels = data.load_mnist(split)
    assert images.shape == (n, 28, 28, 1)
    assert images.dtype == np.float32
    assert labels.shape == (n,)
    assert labels.dtype == np.int64
    assert images.min() == 0.0
    assert images.max() == 1.0  # real digits have saturated ink
    assert set(np.unique(labels)) == set(range(10))
    # Stratified: every class has the same share.
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))


def test_load_mnist_train_and_test_are_disjoint(train_split, test_split):
    train_prints, test_prints = _fingerprints(train_split[0]), _fingerprints(test_split[0])
    assert len(train_prints) == 4000  # no duplicate inside a split either
    assert len(test_prints) == 1000
    assert not train_prints & test_prints


def test_load_mnist_all_is_train_then_test(train_split, test_split):
    images, labels = data.load_mnist("all")
    np.testing.assert_array_equal(images[:4000], train_split[0])
    np.testing.assert_array_equal(images[4000:], test_split[0])
    np.testing.assert_array_equal(labels, np.concatenate([train_split[1], test_split[1]]))


def test_load_mnist_is_deterministic(test_split):
    images, labels = data.load_mnist("test")
    np.testing.assert_array_equal(images, test_split[0])
    np.testing.assert_array_equal(labels, test_split[1])
    images_again, labels_again = data.load_mnist("test", seed=0)
    np.testing.assert_array_equal(images_again, test_split[0])
    np.testing.assert_array_equal(labels_again, test_split[1])


def test_load_mnist_other_seed_gives_other_split(test_split):
    images, labels = data.load_mnist("test", seed=1)
    assert _fingerprints(images) != _fingerprints(test_split[0])
    # Still a stratified split of the same 5,000 digits.
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 100))
    all_images = data.load_mnist("all", seed=1)[0]
    assert _fingerprints(all_images) == _fingerprints(data.load_mnist("all")[0])


def test_load_mnist_splits_are_shuffled(train_split, test_split):
    for _, labels in (train_split, test_split):
        assert set(labels[:100]) == set(range(10))  # a prefix has every class
        assert not np.all(np.diff(labels) >= 0)  # not in class order


@pytest.mark.parametrize("split", ["validation", "TRAIN", ""])
def test_load_mnist_bad_split_names_the_split(split):
    with pytest.raises(ValueError, match=rf"split must be one of 'train', 'test', 'all', got {split!r}"):
        data.load_mnist(split)


# --------------------------------------------------------------------------------------------
# load_full_mnist (never downloads)
# --------------------------------------------------------------------------------------------


def test_load_full_mnist_failed_download_raises_runtime_error(monkeypatch):
    def no_network():
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", no_network)
    with pytest.raises(RuntimeError, match="could not download the full MNIST.*load_mnist") as caught:
        data.load_full_mnist("train")
    assert isinstance(caught.value.__cause__, OSError)


def test_load_full_mnist_converts_like_load_mnist(monkeypatch):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    x_train[0, 0, 0], x_train[1, 0, 0] = 0, 255
    y_train = np.array([5, 0, 4], dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    y_test = np.array([7, 2], dtype=np.uint8)
    calls = []

    def fake_load_data():
        calls.append(1)
        return (x_train, y_train), (x_test, y_test)

    monkeypatch.setattr(keras.datasets.mnist, "load_data", fake_load_data)

    images, labels = data.load_full_mnist("train")
    assert images.shape == (3, 28, 28, 1)
    assert images.dtype == np.float32
    assert labels.dtype == np.int64
    np.testing.assert_allclose(images[..., 0], x_train / 255.0, rtol=1e-6)
    assert images[0, 0, 0, 0] == 0.0 and images[1, 0, 0, 0] == 1.0
    np.testing.assert_array_equal(labels, [5, 0, 4])

    images, labels = data.load_full_mnist("test")
    assert images.shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(labels, [7, 2])

    images, labels = data.load_full_mnist("all")
    assert images.shape == (5, 28, 28, 1)
    np.testing.assert_allclose(images[3:, ..., 0], x_test / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, [5, 0, 4, 7, 2])
    assert len(calls) == 3


def test_load_full_mnist_bad_split_fails_before_loading(monkeypatch):
    def must_not_be_called():
        raise AssertionError("load_data called for a bad split")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", must_not_be_called)
    with pytest.raises(ValueError, match="split must be one of .* got 'val'"):
        data.load_full_mnist("val")


# --------------------------------------------------------------------------------------------
# one_per_class
# --------------------------------------------------------------------------------------------


def test_one_per_class_picks_the_first_of_each_class(test_split):
    labels = test_split[1]
    index = data.one_per_class(labels)
    assert index.shape == (10,)
    np.testing.assert_array_equal(labels[index], np.arange(10))
    for digit in range(10):
        assert index[digit] == np.flatnonzero(labels == digit)[0]


def test_one_per_class_occurrence(test_split):
    labels = test_split[1]
    second = data.one_per_class(labels, occurrence=1)
    np.testing.assert_array_equal(labels[second], np.arange(10))
    for digit in range(10):
        assert second[digit] == np.flatnonzero(labels == digit)[1]
    assert not np.array_equal(second, data.one_per_class(labels))


def test_one_per_class_missing_class_raises():
    labels = np.array([0, 1, 2, 4, 5, 6, 7, 8, 9, 0])
    with pytest.raises(ValueError, match="class 3 has only 0 samples"):
        data.one_per_class(labels)
    with pytest.raises(ValueError, match="class 0 has only 1 samples, asked for number 1"):
        data.one_per_class(np.arange(10).repeat(1), occurrence=1)


# --------------------------------------------------------------------------------------------
# cluttered_mnist
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clutter():
    return data.cluttered_mnist(12, size=56, digits_per_canvas=2, n_clutter=6, seed=5)


def _crops_by_class(split: str) -> dict[int, list[np.ndarray]]:
    """Every digit of ``split`` cropped to its ink (nonzero pixels), by class."""
    images, labels = data.load_mnist(split)
    crops: dict[int, list[np.ndarray]] = {c: [] for c in range(10)}
    for image, label in zip(images[..., 0], labels):
        rows = np.flatnonzero(image.any(axis=1))
        cols = np.flatnonzero(image.any(axis=0))
        crops[int(label)].append(image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    return crops


def test_cluttered_mnist_shapes_and_dtypes(clutter):
    assert len(clutter) == 12
    assert clutter.images.shape == (12, 56, 56, 1)
    assert clutter.images.dtype == np.float32
    assert clutter.labels.shape == (12, 2)
    assert clutter.labels.dtype == np.int64
    assert clutter.boxes.shape == (12, 2, 4)
    assert clutter.boxes.dtype == np.int64
    assert clutter.images.min() >= 0.0 and clutter.images.max() <= 1.0
    assert ((clutter.labels >= 0) & (clutter.labels <= 9)).all()


def test_cluttered_mnist_defaults():
    canvases = data.cluttered_mnist(3)
    assert canvases.images.shape == (3, 40, 40, 1)
    assert canvases.labels.shape == (3, 1)
    assert canvases.boxes.shape == (3, 1, 4)


def test_cluttered_mnist_is_deterministic_by_seed(clutter):
    again = data.cluttered_mnist(12, size=56, digits_per_canvas=2, n_clutter=6, seed=5)
    np.testing.assert_array_equal(again.images, clutter.images)
    np.testing.assert_array_equal(again.labels, clutter.labels)
    np.testing.assert_array_equal(again.boxes, clutter.boxes)


def test_cluttered_mnist_different_seeds_differ(clutter):
    other = data.cluttered_mnist(12, size=56, digits_per_canvas=2, n_clutter=6, seed=6)
    assert not np.array_equal(other.images, clutter.images)
    assert not np.array_equal(other.boxes, clutter.boxes)


def test_cluttered_mnist_boxes_lie_inside_the_canvas(clutter):
    top, left, bottom, right = np.moveaxis(clutter.boxes, -1, 0)
    assert (top >= 0).all() and (left >= 0).all()
    assert (bottom <= 56).all() and (right <= 56).all()
    assert (top < bottom).all() and (left < right).all()
    # A digit's ink box fits the 28×28 digit.
    assert (bottom - top <= 28).all() and (right - left <= 28).all()


def test_cluttered_mnist_boxes_of_a_canvas_never_overlap():
    canvases = data.cluttered_mnist(10, size=70, digits_per_canvas=4, seed=2)
    for boxes in canvases.boxes:
        occupied = np.zeros((70, 70), dtype=int)
        for top, left, bottom, right in boxes:
            occupied[top:bottom, left:right] += 1
        assert occupied.max() == 1


def test_cluttered_mnist_box_holds_the_digit_ink(clutter):
    for image, boxes, labels in zip(clutter.images[..., 0], clutter.boxes, clutter.labels):
        for top, left, bottom, right in boxes:
            region = image[top:bottom, left:right]
            # The box is the digit's ink box: ink touches all four of its edges.
            assert region[0].max() > 0 and region[-1].max() > 0
            assert region[:, 0].max() > 0 and region[:, -1].max() > 0


def test_cluttered_mnist_box_contains_a_digit_of_its_class(clutter):
    crops = _crops_by_class("train")
    for image, boxes, labels in zip(clutter.images[..., 0], clutter.boxes, clutter.labels):
        for (top, left, bottom, right), label in zip(boxes, labels):
            region = image[top:bottom, left:right]
            # Clutter combines by maximum, so the region is at least one digit of the label's class.
            assert any(
                crop.shape == region.shape and (region >= crop).all() for crop in crops[int(label)]
            )


def test_cluttered_mnist_without_clutter_is_exactly_the_digits():
    classes = np.array([[3, 3], [7, 1], [0, 9], [4, 4]])
    canvases = data.cluttered_mnist(4, size=60, digits_per_canvas=2, n_clutter=0, split="test", classes=classes, seed=9)
    np.testing.assert_array_equal(canvases.labels, classes)
    crops = _crops_by_class("test")
    for image, boxes, labels in zip(canvases.images[..., 0], canvases.boxes, canvases.labels):
        outside = np.ones(image.shape, dtype=bool)
        for (top, left, bottom, right), label in zip(boxes, labels):
            region = image[top:bottom, left:right]
            assert any(crop.shape == region.shape and np.array_equal(region, crop) for crop in crops[int(label)])
            outside[top:bottom, left:right] = False
        assert (image[outside] == 0).all()


def test_cluttered_mnist_honours_classes():
    classes = np.array([[0], [0], [5], [9], [9]], dtype=np.int32)
    canvases = data.cluttered_mnist(5, classes=classes, seed=1)
    np.testing.assert_array_equal(canvases.labels, classes)


def test_cluttered_mnist_clutter_adds_ink_outside_the_boxes():
    canvases = data.cluttered_mnist(6, n_clutter=8, seed=4)
    outside_ink = []
    for image, boxes in zip(canvases.images[..., 0], canvases.boxes):
        mask = np.ones(image.shape, dtype=bool)
        for top, left, bottom, right in boxes:
            mask[top:bottom, left:right] = False
        outside_ink.append(image[mask].sum())
    assert max(outside_ink) > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be a positive integer"),
        ({"n": -2}, "n must be a positive integer"),
        ({"n": True}, "n must be a positive integer"),
        ({"n": 2.0}, "n must be a positive integer"),
        ({"n": 2, "size": 27}, "size must be at least 28"),
        ({"n": 2, "clutter_size": 0}, "clutter_size must be between 1 and 28"),
        ({"n": 2, "clutter_size": 29}, "clutter_size must be between 1 and 28"),
        ({"n": 2, "n_clutter": -1}, "n_clutter must be non-negative"),
        ({"n": 2, "digits_per_canvas": 0}, "digits_per_canvas must be at least 1"),
        ({"n": 2, "classes": np.zeros((2, 2), dtype=int)}, r"classes must be an integer array of shape \(2, 1\)"),
        ({"n": 2, "classes": np.zeros(2, dtype=int)}, r"classes must be an integer array of shape \(2, 1\)"),
        ({"n": 2, "classes": np.zeros((2, 1))}, r"classes must be an integer array .* float64"),
        ({"n": 2, "classes": np.array([[1], [10]])}, r"classes must lie in 0\.\.9"),
        ({"n": 2, "classes": np.array([[-1], [1]])}, r"classes must lie in 0\.\.9"),
    ],
)
def test_cluttered_mnist_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.cluttered_mnist(**kwargs)


def test_cluttered_mnist_impossible_placement_raises():
    # Every MNIST zero is at least 10 pixels wide and most are 20 tall: three never fit side by
    # side or stacked on a 28×28 canvas.
    with pytest.raises(ValueError, match="could not place 3 non-overlapping digits on a 28×28 canvas"):
        data.cluttered_mnist(2, size=28, digits_per_canvas=3, classes=np.zeros((2, 3), dtype=int), max_tries=200)


# --------------------------------------------------------------------------------------------
# 2-D toys
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [1.0, 3.0, 4.5])
def test_circle_toy_labels_follow_the_circle(radius):
    points, labels = data.circle_toy(500, radius=radius, seed=3)
    assert points.shape == (500, 2) and points.dtype == np.float32
    assert labels.shape == (500,) and labels.dtype == np.int64
    assert points.min() >= -5.0 and points.max() <= 5.0
    expected = (points[:, 0] ** 2 + points[:, 1] ** 2 >= radius**2).astype(np.int64)
    np.testing.assert_array_equal(labels, expected)
    assert 0 < labels.sum() < 500  # both classes present


def test_circle_toy_is_seeded():
    np.testing.assert_array_equal(data.circle_toy(seed=1)[0], data.circle_toy(seed=1)[0])
    assert not np.array_equal(data.circle_toy(seed=1)[0], data.circle_toy(seed=2)[0])
    points, _ = data.circle_toy(50, low=1.0, high=2.0)
    assert points.min() >= 1.0 and points.max() <= 2.0


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"radius": 0.0}, {"radius": -1.0}, {"low": 1.0, "high": 1.0}])
def test_circle_toy_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="need n >= 1, radius > 0 and low < high"):
        data.circle_toy(**kwargs)


def test_max_toy_values_are_the_max():
    points, values = data.max_toy(300, high=2.0, seed=4)
    assert points.shape == (300, 2) and points.dtype == np.float32
    assert values.shape == (300,) and values.dtype == np.float32
    assert points.min() >= 0.0 and points.max() <= 2.0
    np.testing.assert_array_equal(values, np.maximum(points[:, 0], points[:, 1]))
    assert (points[:, 0] > points[:, 1]).any() and (points[:, 0] < points[:, 1]).any()


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"high": 0.0}, {"high": -1.0}])
def test_max_toy_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="need n >= 1 and high > 0"):
        data.max_toy(**kwargs)


def test_cluttered_mnist_fits_two_digits_on_the_default_canvas():
    # Where the first digit leaves no room for the second, the canvas's digits are laid out again.
    canvases = data.cluttered_mnist(200, digits_per_canvas=2, classes=np.full((200, 2), 0), split="test", seed=3)
    assert canvases.images.shape == (200, 40, 40, 1)
    for boxes in canvases.boxes:
        occupied = np.zeros((40, 40), dtype=int)
        for top, left, bottom, right in boxes:
            occupied[top:bottom, left:right] += 1
        assert occupied.max() == 1
    with pytest.raises(ValueError, match="non-overlapping digits on a 40×40 canvas"):
        data.cluttered_mnist(2, digits_per_canvas=4, seed=0, max_tries=5)


# --------------------------------------------------------------------------------------------
# Planted cues (Part VI): Mark and Decoy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.75, 1.0])
def test_mark_marks_exactly_the_fraction_of_the_class_and_nothing_else(train_split, fraction):
    images, labels = train_split
    cued = data.Mark(digits=7, fraction=fraction).apply(images, labels)
    sevens = labels == 7
    assert cued.cued.sum() == round(fraction * sevens.sum())
    assert not cued.cued[~sevens].any()
    np.testing.assert_array_equal(cued.labels, labels)
    # The box, recorded for every image, is where the mark went.
    assert cued.boxes.shape == (len(images), 4) and cued.boxes.dtype == np.int64
    assert (cued.boxes == np.array(data.MARK_BOX)).all()
    top, left, bottom, right = data.MARK_BOX
    inside = np.zeros(images.shape[1:3], dtype=bool)
    inside[top:bottom, left:right] = True
    assert (cued.images[cued.cued][:, inside] == 1.0).all()
    # Every pixel outside the box of a marked image, and every pixel of an unmarked one, is untouched.
    np.testing.assert_array_equal(cued.images[:, ~inside], images[:, ~inside])
    np.testing.assert_array_equal(cued.images[~cued.cued], images[~cued.cued])
    assert cued.images.dtype == np.float32 and len(cued) == len(images)


def test_mark_is_deterministic_with_its_seed_and_leaves_the_input_alone(train_split):
    images, labels = train_split
    before = images.copy()
    first = data.Mark(digits=3, fraction=0.5, seed=4).apply(images, labels)
    again = data.Mark(digits=3, fraction=0.5, seed=4).apply(images, labels)
    other = data.Mark(digits=3, fraction=0.5, seed=5).apply(images, labels)
    np.testing.assert_array_equal(first.cued, again.cued)
    np.testing.assert_array_equal(first.images, again.images)
    assert (first.cued != other.cued).any()
    np.testing.assert_array_equal(images, before)


def test_mark_on_several_classes_or_all_with_its_own_box_and_value(test_split):
    images, labels = test_split
    several = data.Mark(digits=(1, 4), fraction=1.0, box=(20, 22, 26, 27), value=0.5).apply(images, labels)
    np.testing.assert_array_equal(several.cued, np.isin(labels, (1, 4)))
    assert (several.images[several.cued, 20:26, 22:27] == 0.5).all()
    assert (several.boxes == [20, 22, 26, 27]).all()
    everywhere = data.marked_mnist("test", data.Mark(digits="all"))
    assert everywhere.cued.all()
    np.testing.assert_array_equal(everywhere.labels, labels)


def test_marked_mnist_is_the_mark_applied_to_the_split(train_split):
    mark = data.Mark(digits=7, fraction=0.75)
    direct = mark.apply(*train_split)
    cued = data.marked_mnist("train", mark)
    np.testing.assert_array_equal(cued.images, direct.images)
    np.testing.assert_array_equal(cued.cued, direct.cued)


@pytest.mark.parametrize(
    ("mark", "error", "message"),
    [
        (data.Mark(digits=10), ValueError, "class 10 does not exist: MNIST has the classes 0 to 9"),
        (data.Mark(digits=(1, -1)), ValueError, "class -1 does not exist"),
        (data.Mark(digits="some"), ValueError, "digits must be a class, a tuple of classes or 'all'"),
        (data.Mark(digits=2.0), TypeError, "a class must be an int from 0 to 9, got 2.0"),
        (data.Mark(fraction=1.5), ValueError, "fraction must be between 0 and 1, got 1.5"),
        (data.Mark(box=(25, 25, 30, 30)), ValueError, r"box \(25, 25, 30, 30\) .* is not a non-empty box inside the 28×28 image"),
        (data.Mark(box=(3, 3, 3, 5)), ValueError, "not a non-empty box"),
    ],
)
def test_mark_refuses_bad_settings(test_split, mark, error, message):
    with pytest.raises(error, match=message):
        mark.apply(*test_split)


def test_cues_refuse_labels_that_do_not_fit_the_images(test_split):
    images, labels = test_split
    with pytest.raises(ValueError, match=r"labels has shape \(999,\); it needs one class per image, shape \(1000,\)"):
        data.Mark().apply(images, labels[:-1])
    with pytest.raises(ValueError, match="images must have shape"):
        data.Decoy().apply(images[..., 0], labels)


@pytest.mark.parametrize("informative", [True, False])
def test_decoy_puts_a_swatch_in_a_corner_of_every_digit(test_split, informative):
    images, labels = test_split
    size = 4
    cued = data.Decoy(size=size, informative=informative, seed=2).apply(images, labels)
    assert cued.cued.all()
    top, left, bottom, right = cued.boxes.T
    assert set(top) <= {0, 28 - size} and set(left) <= {0, 28 - size}
    assert (bottom - top == size).all() and (right - left == size).all()
    assert len({(t, l) for t, l in zip(top, left)}) == 4  # every corner is used
    shades = np.empty(len(images), dtype=np.float32)
    for index, (t, l, b, r) in enumerate(cued.boxes):
        swatch = cued.images[index, t:b, l:r, 0]
        assert (swatch == swatch[0, 0]).all()
        shades[index] = swatch[0, 0]
        outside = np.ones((28, 28), dtype=bool)
        outside[t:b, l:r] = False
        np.testing.assert_array_equal(cued.images[index, outside, 0], images[index, outside, 0])
    encodes_label = np.isclose(shades, (255 - 25 * labels) / 255)
    if informative:
        assert encodes_label.all()
    else:
        # A random class: right by chance about one time in ten.
        assert 0.03 < encodes_label.mean() < 0.2
        assert set(np.round(shades * 255).astype(int)) <= {255 - 25 * k for k in range(10)}


def test_decoy_mnist_encodes_the_label_in_training_only_and_is_seeded():
    train = data.decoy_mnist("train")
    test = data.decoy_mnist("test")
    shade = lambda cued: cued.images[np.arange(len(cued)), cued.boxes[:, 0], cued.boxes[:, 1], 0]  # noqa: E731
    assert np.allclose(shade(train), (255 - 25 * train.labels) / 255)
    assert not np.allclose(shade(test), (255 - 25 * test.labels) / 255)
    np.testing.assert_array_equal(data.decoy_mnist("test", seed=3).images, data.decoy_mnist("test", seed=3).images)
    with pytest.raises(ValueError, match="size must be between 1 and 28, got 0"):
        data.decoy_mnist(size=0)
