"""Quality measures of maps: correlation and roughness, against direct computations."""

from __future__ import annotations

import numpy as np
import pytest

from understanding_nn import metrics


def test_map_correlation_matches_numpy_per_pair():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 6, 6, 1)), rng.normal(size=(5, 6, 6, 1))
    b[0] = 3 * a[0] + 1  # same map up to scale and offset
    b[1] = -a[1]
    expected = [np.corrcoef(u.ravel(), v.ravel())[0, 1] for u, v in zip(a, b)]
    result = metrics.map_correlation(a, b)
    np.testing.assert_allclose(result, expected, rtol=1e-12)
    assert result[0] == pytest.approx(1.0) and result[1] == pytest.approx(-1.0)


def test_constant_map_has_no_correlation():
    a = np.zeros((2, 4, 4))
    b = np.random.default_rng(1).normal(size=(2, 4, 4))
    assert np.isnan(metrics.map_correlation(a, b)).all()


def test_roughness_of_simple_maps():
    flat = np.ones((1, 4, 4, 1))
    checkerboard = (np.indices((4, 4)).sum(axis=0) % 2)[None, ..., None].astype(float)
    # Flat: no change between neighbours. Checkerboard: each of the 24 neighbour pairs differs
    # by 1, over a total of 8.
    np.testing.assert_allclose(metrics.roughness(flat), [0.0])
    np.testing.assert_allclose(metrics.roughness(checkerboard), [24 / 8])
    np.testing.assert_allclose(metrics.roughness(5 * checkerboard[..., 0]), [24 / 8])
    np.testing.assert_allclose(metrics.roughness(np.zeros((2, 3, 3))), [0.0, 0.0])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.map_correlation(np.zeros((2, 3)), np.zeros((3, 3))), "differ in shape"),
        (lambda: metrics.map_correlation(np.zeros(3), np.zeros(3)), "batch of maps"),
        (lambda: metrics.roughness(np.zeros((2, 3))), "roughness needs maps"),
    ],
)
def test_bad_shapes_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------------------------
# Localisation: mass in the box and the pointing game
# --------------------------------------------------------------------------------------------


def test_box_mask_marks_the_union_of_the_selected_boxes():
    boxes = np.array([[[0, 0, 2, 3], [3, 3, 5, 5]], [[1, 1, 2, 2], [0, 0, 0, 0]]])
    masks = metrics.box_mask(boxes, (5, 6))
    assert masks.shape == (2, 5, 6)
    expected = np.zeros((2, 5, 6), dtype=bool)
    expected[0, 0:2, 0:3] = True
    expected[0, 3:5, 3:5] = True
    expected[1, 1, 1] = True
    np.testing.assert_array_equal(masks, expected)
    only_first = metrics.box_mask(boxes, (5, 6), select=np.array([[True, False], [True, True]]))
    assert only_first[0].sum() == 6 and not only_first[0, 3:, 3:].any()
    # One box per sample may be given as (N, 4).
    np.testing.assert_array_equal(metrics.box_mask(boxes[:, 0], (5, 6)), masks & ~(np.arange(5)[:, None] >= 3)[None])


def test_positive_mass_in_boxes_counts_only_positive_relevance():
    maps = np.zeros((3, 4, 4, 1))
    maps[0, 0, 0] = 3.0  # inside
    maps[0, 3, 3] = 1.0  # outside
    maps[0, 1, 1] = -5.0  # negative inside: ignored
    maps[1] = -1.0  # no positive mass: scores 0
    maps[2, 1:3, 1:3] = 2.0  # all inside
    boxes = np.array([[0, 0, 2, 2]] * 3)
    np.testing.assert_allclose(metrics.positive_mass_in_boxes(maps, boxes), [0.75, 0.0, 0.25])
    whole = np.array([[0, 0, 4, 4]] * 3)
    np.testing.assert_allclose(metrics.positive_mass_in_boxes(maps, whole), [1.0, 0.0, 1.0])


def test_positive_mass_in_boxes_matches_a_loop():
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(6, 9, 7))
    boxes = np.stack([rng.integers(0, 4, size=(6, 2)), rng.integers(0, 3, size=(6, 2))], axis=-1)
    boxes = np.concatenate([boxes[:, :, :1], boxes[:, :, 1:], boxes[:, :, :1] + 4, boxes[:, :, 1:] + 3], axis=-1)
    result = metrics.positive_mass_in_boxes(maps, boxes)
    for n in range(6):
        inside = np.zeros((9, 7), dtype=bool)
        for top, left, bottom, right in boxes[n]:
            inside[top:bottom, left:right] = True
        positive = np.maximum(maps[n], 0)
        assert result[n] == pytest.approx(positive[inside].sum() / positive.sum())


def test_pointing_game():
    maps = np.zeros((4, 5, 5))
    maps[0, 1, 1] = 2.0  # maximum inside
    maps[1, 4, 4] = 2.0  # maximum outside
    maps[1, 1, 1] = 1.0
    maps[2] = -1.0  # no positive value: a miss
    maps[3, 0, 0] = maps[3, 4, 4] = 1.0  # a tie between inside and outside: a hit
    boxes = np.array([[0, 0, 3, 3]] * 4)
    np.testing.assert_array_equal(metrics.pointing_game(maps, boxes), [True, False, False, True])


def test_localisation_measures_refuse_bad_input():
    maps = np.ones((2, 4, 4))
    with pytest.raises(ValueError, match="boxes must have shape"):
        metrics.positive_mass_in_boxes(maps, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="boxes for 3 samples"):
        metrics.pointing_game(maps, np.zeros((3, 4), dtype=int))
    with pytest.raises(ValueError, match="outside the 4×4 image"):
        metrics.positive_mass_in_boxes(maps, np.array([[0, 0, 5, 2]] * 2))
    with pytest.raises(TypeError, match="integer pixel coordinates"):
        metrics.box_mask(np.zeros((2, 4)), (4, 4))
    with pytest.raises(ValueError, match="maps must have shape"):
        metrics.pointing_game(np.ones((2, 16)), np.zeros((2, 4), dtype=int))
    with pytest.raises(ValueError, match="NaN"):
        metrics.positive_mass_in_boxes(np.full((2, 4, 4), np.nan), np.zeros((2, 4), dtype=int))
    with pytest.raises(ValueError, match="select must be a boolean array"):
        metrics.box_mask(np.zeros((2, 1, 4), dtype=int), (4, 4), select=np.ones((2, 2), dtype=bool))


def test_positive_mass_per_box_divides_the_mass_among_the_boxes():
    maps = np.zeros((2, 6, 6))
    maps[0, 0:2, 0:2] = 1.0  # 4 units in box 0
    maps[0, 4:6, 4:6] = 3.0  # 12 units in box 1
    maps[1, 5, 0] = 2.0  # outside both
    maps[1, 0, 0] = 2.0
    boxes = np.array([[[0, 0, 2, 2], [4, 4, 6, 6]]] * 2)
    shares = metrics.positive_mass_per_box(maps, boxes)
    np.testing.assert_allclose(shares, [[0.25, 0.75], [0.5, 0.0]])
    np.testing.assert_allclose(shares.sum(axis=1), metrics.positive_mass_in_boxes(maps, boxes))
    with pytest.raises(ValueError, match=r"\(N, k, 4\)"):
        metrics.positive_mass_per_box(maps, boxes[:, 0])
