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
