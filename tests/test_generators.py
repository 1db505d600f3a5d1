"""Tests of understanding_nn.generators: the variational autoencoder of chapter 1.3."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import understanding_nn as unn
from understanding_nn import generators

# The trained zoo VAE must reconstruct held-out digits with at most this mean squared error per
# pixel; predicting the mean training digit for every image gives about 0.067.
RECONSTRUCTION_FLOOR = 0.035


def test_vae_shapes_and_range():
    model = generators.vae(code_size=4, hidden=32, name="small_vae")
    x = np.random.default_rng(0).random((5, 28, 28, 1), dtype=np.float32)
    mean, log_variance = model.encode(tf.constant(x))
    assert mean.shape == (5, 4) and log_variance.shape == (5, 4)
    images = model.decode(tf.zeros((3, 4))).numpy()
    assert images.shape == (3, 28, 28, 1)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert model.decoder.input_shape == (None, 4) and model.decoder.output_shape == (None, 28, 28, 1)
    np.testing.assert_allclose(model(tf.constant(x)).numpy(), model.decode(mean).numpy(), rtol=1e-6)


def test_negative_elbo_terms():
    model = generators.vae(code_size=3, hidden=16, name="elbo_vae")
    x = np.random.default_rng(1).random((4, 28, 28, 1), dtype=np.float32)
    noise = tf.zeros((4, 3))
    reconstruction, kl = model.negative_elbo(tf.constant(x), noise)
    # With zero noise, z is the mean: the reconstruction term is the Bernoulli cross-entropy of g(mu).
    probability = np.clip(model(tf.constant(x)).numpy().reshape(4, -1), 1e-6, 1 - 1e-6)
    flat = x.reshape(4, -1)
    expected = -(flat * np.log(probability) + (1 - flat) * np.log(1 - probability)).sum(axis=1)
    np.testing.assert_allclose(reconstruction.numpy(), expected, rtol=1e-4)
    mean, log_variance = (t.numpy() for t in model.encode(tf.constant(x)))
    expected_kl = 0.5 * (mean**2 + np.exp(log_variance) - log_variance - 1).sum(axis=1)
    np.testing.assert_allclose(kl.numpy(), expected_kl, rtol=1e-4, atol=1e-6)
    assert (kl.numpy() >= 0).all()


def test_training_is_deterministic_and_lowers_the_reconstruction_error(mnist_test):
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        model = generators.vae(code_size=4, hidden=64, name="quick_vae")
        runs.append((model, generators.train_vae(model, generators.VAETraining(epochs=2))))
    (first, card), (second, card_again) = runs
    assert card == card_again
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    keras.utils.set_random_seed(0)
    untrained = generators.vae(code_size=4, hidden=64, name="quick_vae")
    before = generators.reconstruction_error(untrained, mnist_test[0]).mean()
    assert card["held_out_reconstruction_mse"] < 0.7 * before


def test_vae_round_trips_through_the_weight_file(tmp_path):
    model = unn.models.build("vae")
    path = tmp_path / "vae.weights.h5"
    model.save_weights(path)
    again = generators.vae(code_size=8, hidden=256, name="vae")
    again.load_weights(path)
    z = tf.constant(np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32))
    np.testing.assert_array_equal(model.decode(z).numpy(), again.decode(z).numpy())


@pytest.mark.slow
def test_zoo_vae_reconstructs_held_out_digits_below_the_floor(mnist_test):
    model = unn.models.load("vae")
    error = generators.reconstruction_error(model, mnist_test[0]).mean()
    assert error < RECONSTRUCTION_FLOOR, f"held-out reconstruction error {error:.4f} >= {RECONSTRUCTION_FLOOR}"
    mean_digit = unn.data.load_mnist("train")[0].mean(axis=0)
    assert error < 0.6 * ((mnist_test[0] - mean_digit) ** 2).mean()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"code_size": 0}, "code_size must be a positive integer, got 0"), ({"hidden": -3}, "hidden must be a positive integer")],
)
def test_bad_sizes_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generators.vae(**kwargs)


def test_reconstruction_error_refuses_a_wrong_shape():
    model = generators.vae(code_size=2, hidden=8, name="shape_vae")
    with pytest.raises(ValueError, match=r"28×28 images, .* got shape \(2, 5, 5\)"):
        generators.reconstruction_error(model, np.zeros((2, 5, 5)))
