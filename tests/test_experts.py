"""Tests of understanding_nn.experts: the density experts of chapter 1.2 (RBM, PCA-Gaussian)."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import understanding_nn as unn
from understanding_nn import experts


def _random_rbm(hidden: int = 6, seed: int = 0, scale: float = 0.3) -> experts.GaussianRBM:
    """A small RBM with random parameters everywhere (no zero bias hides a sign error)."""
    keras.utils.set_random_seed(seed)
    rbm = experts.GaussianRBM(hidden, name=f"random_rbm_{hidden}")
    rng = np.random.default_rng(seed)
    rbm.weights_.assign(rng.normal(0, scale, (784, hidden)).astype(np.float32))
    rbm.visible_bias.assign(rng.uniform(0, 0.5, 784).astype(np.float32))
    rbm.hidden_bias.assign(rng.normal(0, 1, hidden).astype(np.float32))
    rbm.sigma.assign(rng.uniform(0.3, 1.0, 784).astype(np.float32))
    return rbm


# --------------------------------------------------------------------------------------------
# Gaussian-Bernoulli RBM
# --------------------------------------------------------------------------------------------


def test_free_energy_sums_the_energy_over_all_hidden_states(digits):
    """F(x) = -log sum_h exp(-E(x, h)), checked by enumerating the 2^3 hidden states."""
    rbm = _random_rbm(hidden=3)
    x = digits[0][:4].reshape(4, -1).astype(np.float64)
    W, a, b, sigma = (v.numpy().astype(np.float64) for v in (rbm.weights_, rbm.visible_bias, rbm.hidden_bias, rbm.sigma))
    energies = []
    for h in itertools.product([0.0, 1.0], repeat=3):
        h = np.array(h)
        energies.append(((x - a) ** 2 / (2 * sigma**2)).sum(axis=1) - (x / sigma) @ W @ h - b @ h)
    expected = -np.log(np.exp(-np.array(energies)).sum(axis=0))
    np.testing.assert_allclose(rbm.free_energy(tf.constant(digits[0][:4])).numpy(), expected, rtol=1e-4)
    np.testing.assert_allclose(rbm.log_density(tf.constant(digits[0][:4])).numpy(), -expected, rtol=1e-4)


def test_free_energy_gradient_matches_finite_differences_and_the_formula(digits):
    rbm = _random_rbm(hidden=6, seed=1)
    x = digits[0][3:4].astype(np.float32)
    with tf.GradientTape() as tape:
        variable = tf.constant(x)
        tape.watch(variable)
        energy = rbm.free_energy(variable)
    gradient = tape.gradient(energy, variable).numpy().reshape(-1)

    # The formula: dF/dx_i = (x_i - a_i) / sigma_i^2 - sum_j W_ij sigmoid(b_j + sum_k W_kj x_k / sigma_k) / sigma_i.
    W, a, b, sigma = (v.numpy().astype(np.float64) for v in (rbm.weights_, rbm.visible_bias, rbm.hidden_bias, rbm.sigma))
    flat = x.reshape(-1).astype(np.float64)
    hidden = 1 / (1 + np.exp(-(b + (flat / sigma) @ W)))
    np.testing.assert_allclose(gradient, (flat - a) / sigma**2 - (W @ hidden) / sigma, rtol=1e-4, atol=1e-4)

    # Central differences on a few pixels, in float64 through the same formula's F.
    def free_energy(v: np.ndarray) -> float:
        return float(((v - a) ** 2 / (2 * sigma**2)).sum() - np.logaddexp(0, b + (v / sigma) @ W).sum())

    for i in [0, 100, 406, 783]:
        step = np.zeros_like(flat)
        step[i] = 1e-4
        numeric = (free_energy(flat + step) - free_energy(flat - step)) / 2e-4
        assert gradient[i] == pytest.approx(numeric, rel=1e-3, abs=1e-3)


def test_gibbs_step_is_seeded_and_keeps_the_shape(digits):
    rbm = _random_rbm()
    x = tf.constant(digits[0][:3])
    first = rbm.gibbs_step(x, tf.constant([1, 2])).numpy()
    again = rbm.gibbs_step(x, tf.constant([1, 2])).numpy()
    other = rbm.gibbs_step(x, tf.constant([1, 3])).numpy()
    assert first.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_contrastive_divergence_improves_the_held_out_fit(mnist_test):
    keras.utils.set_random_seed(0)
    rbm = experts.gaussian_rbm(32, name="small_rbm")
    card = experts.train_rbm(rbm, experts.RBMTraining(epochs=3))
    # The held-out digits are far more likely than their shuffled pixels, more so after training.
    assert card["held_out_log_ratio_vs_shuffled"] > card["held_out_log_ratio_untrained"] + 10.0
    ratio = experts.log_likelihood_ratio(rbm, mnist_test[0][:200])
    assert (ratio > 0).mean() > 0.99


def test_rbm_training_is_deterministic():
    cards, weights = [], []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        rbm = experts.gaussian_rbm(8, name="tiny_rbm")
        cards.append(experts.train_rbm(rbm, experts.RBMTraining(epochs=1)))
        weights.append(rbm.weights_.numpy())
    assert cards[0] == cards[1]
    np.testing.assert_array_equal(weights[0], weights[1])


def test_log_likelihood_ratio_is_the_difference_of_log_densities(digits):
    rbm = _random_rbm()
    ratio = experts.log_likelihood_ratio(rbm, digits[0], seed=2)
    shuffled = experts.shuffle_pixels(digits[0], seed=2)
    expected = rbm.log_density(tf.constant(digits[0])).numpy() - rbm.log_density(tf.constant(shuffled)).numpy()
    np.testing.assert_allclose(ratio, expected, rtol=1e-6)
    assert ratio.shape == (10,) and ratio.dtype == np.float64


def test_shuffle_pixels_keeps_the_ink():
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    shuffled = experts.shuffle_pixels(x, seed=3)
    np.testing.assert_allclose(np.sort(shuffled.reshape(4, -1), axis=1), np.sort(x.reshape(4, -1), axis=1))
    assert not np.allclose(shuffled, x)
    np.testing.assert_array_equal(shuffled, experts.shuffle_pixels(x, seed=3))


# --------------------------------------------------------------------------------------------
# PCA-Gaussian
# --------------------------------------------------------------------------------------------


def test_pca_gaussian_is_the_gaussian_with_its_covariance(digits):
    """log p(x) equals the multivariate normal log-density with C = U diag(λ) U^T + s^2 (I - U U^T)."""
    pca = experts.PCAGaussian(4, name="random_pca")
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.normal(size=(784, 4)))
    mean, variances, rest = rng.uniform(0, 0.3, 784), np.array([2.0, 1.0, 0.5, 0.2]), 0.05
    pca.mean.assign(mean.astype(np.float32))
    pca.directions.assign(U.astype(np.float32))
    pca.variances.assign(variances.astype(np.float32))
    pca.rest_variance.assign(np.float32(rest))
    covariance = U @ np.diag(variances) @ U.T + rest * (np.eye(784) - U @ U.T)
    x = digits[0][:3].reshape(3, -1).astype(np.float64)
    sign, log_det = np.linalg.slogdet(covariance)
    centred = x - mean
    expected = -0.5 * (np.einsum("ni,ij,nj->n", centred, np.linalg.inv(covariance), centred) + log_det + 784 * np.log(2 * np.pi))
    np.testing.assert_allclose(pca.log_density(tf.constant(digits[0][:3])).numpy(), expected, rtol=1e-4)


def test_more_components_fit_the_training_digits_better_and_overfit_more():
    small, large = experts.pca_gaussian(5, name="pca_small"), experts.pca_gaussian(600, name="pca_large")
    small_card = experts.fit_pca_gaussian(small, experts.PCATraining())
    large_card = experts.fit_pca_gaussian(large, experts.PCATraining())
    assert large_card["train_log_likelihood"] > small_card["train_log_likelihood"]
    small_gap = small_card["train_log_likelihood"] - small_card["held_out_log_likelihood"]
    large_gap = large_card["train_log_likelihood"] - large_card["held_out_log_likelihood"]
    assert 0 < small_gap < large_gap
    # Its principal directions are orthonormal.
    U = large.directions.numpy()
    np.testing.assert_allclose(U.T @ U, np.eye(600), atol=1e-4)


def test_expert_zoo_entries_round_trip_through_the_weight_file(tmp_path):
    for name in ("rbm", "pca_gaussian_5"):
        model = unn.models.build(name)
        assert hasattr(model, "log_density")
        for variable in model.weights:
            variable.assign(np.full(variable.shape, 0.25, np.float32))
        path = tmp_path / f"{name}.weights.h5"
        model.save_weights(path)
        again = unn.models.build(name)
        again.load_weights(path)
        for a, b in zip(model.weights, again.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
def test_trained_zoo_experts_fit_the_held_out_digits():
    card = unn.models.info("rbm")
    assert card["held_out_log_ratio_vs_shuffled"] > card["held_out_log_ratio_untrained"] + 20.0
    under, over = unn.models.info("pca_gaussian_5"), unn.models.info("pca_gaussian_600")
    assert over["held_out_log_likelihood"] > under["held_out_log_likelihood"]
    assert (over["train_log_likelihood"] - over["held_out_log_likelihood"]
            > 10 * (under["train_log_likelihood"] - under["held_out_log_likelihood"]))


# --------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: experts.GaussianRBM(0), ValueError, "hidden .* positive integer, got 0"),
        (lambda: experts.GaussianRBM(2.5), ValueError, "hidden .* positive integer"),
        (lambda: experts.PCAGaussian(0), ValueError, "components must be an integer from 1 to 783, got 0"),
        (lambda: experts.PCAGaussian(784), ValueError, "components must be an integer from 1 to 783"),
    ],
)
def test_bad_capacities_raise(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_bad_images_raise():
    rbm = _random_rbm()
    with pytest.raises(ValueError, match=r"batch of 28×28 images, .* got shape \(3, 10\)"):
        experts.log_likelihood_ratio(rbm, np.zeros((3, 10)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        experts.shuffle_pixels(np.full((1, 28, 28, 1), np.nan))
    with pytest.raises(TypeError, match="x must be numeric images"):
        experts.shuffle_pixels(np.array([["a"] * 784]))
    with pytest.raises(TypeError, match="log_density"):
        experts.log_likelihood_ratio("expert", np.zeros((1, 28, 28, 1)))
