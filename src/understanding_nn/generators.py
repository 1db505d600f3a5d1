"""A generator of digits: a small variational autoencoder (chapter 1.3).

Activation maximization in code space (Montavon et al. 2018, §3.3; Nguyen et al. 2016) searches
over the code :math:`z` of a generator :math:`g: z \\mapsto x` instead of over the pixels, so that
every candidate prototype :math:`g(z)` is an image the generator can draw. The generator here is
the decoder of a variational autoencoder (Kingma & Welling 2014): an encoder
:math:`q(z \\mid x) = \\mathcal{N}(\\mu(x), \\operatorname{diag} \\sigma^2(x))` and a decoder
:math:`g(z) \\in [0, 1]^d`, the pixel means of a Bernoulli likelihood, trained together to
maximise the evidence lower bound

.. math:: \\log p(x) \\ge \\mathbb{E}_{q(z \\mid x)}\\bigl[\\log p(x \\mid z)\\bigr]
          - \\mathrm{KL}\\bigl(q(z \\mid x) \\,\\Vert\\, \\mathcal{N}(0, I)\\bigr),

.. math:: \\log p(x \\mid z) = \\sum_i x_i \\log g_i(z) + (1 - x_i) \\log (1 - g_i(z)), \\qquad
          \\mathrm{KL} = \\tfrac12 \\sum_k \\bigl(\\mu_k^2 + \\sigma_k^2 - \\log \\sigma_k^2 - 1\\bigr).

Because the codes of the training digits are pulled towards the prior :math:`\\mathcal{N}(0, I)`,
the same prior is the natural penalty on :math:`z` during activation maximization.

(The original tutorial's generator was a GAN-trained decoder of the classifier's hidden code, as
in Dosovitskiy & Brox 2016; the VAE trains in seconds, deterministically, and has an explicit prior.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from . import data as _data

__all__ = ["VAE", "VAETraining", "reconstruction_error", "train_vae", "vae"]

_DIMENSION = int(np.prod(_data.IMAGE_SHAPE))


class VAE(keras.Model):
    """A dense variational autoencoder for 28×28 digits in [0, 1].

    ``encoder``: 784 → ``hidden`` (ReLU) → ``2 × code_size`` (the means :math:`\\mu(x)` and the
    log-variances :math:`\\log \\sigma^2(x)`). ``decoder``: ``code_size`` → ``hidden`` (ReLU) →
    784 (sigmoid) → 28×28×1; the decoder is the generator :math:`g`. Both are Keras models of
    their own, so ``vae.decoder`` can be handed to
    :func:`understanding_nn.prototypes.code_space_maximization`. Calling the VAE returns the
    reconstruction :math:`g(\\mu(x))`.
    """

    def __init__(self, code_size: int = 8, hidden: int = 256, *, name: str = "vae", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        for argument, value in (("code_size", code_size), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{argument} must be a positive integer, got {value!r}")
        self.code_size = int(code_size)
        self.encoder = keras.Sequential(
            [
                keras.Input(_data.IMAGE_SHAPE),
                keras.layers.Flatten(),
                keras.layers.Dense(hidden, activation="relu"),
                keras.layers.Dense(2 * self.code_size),
            ],
            name=f"{name}_encoder",
        )
        self.decoder = keras.Sequential(
            [
                keras.Input((self.code_size,)),
                keras.layers.Dense(hidden, activation="relu"),
                keras.layers.Dense(_DIMENSION, activation="sigmoid"),
                keras.layers.Reshape(_data.IMAGE_SHAPE),
            ],
            name=f"{name}_decoder",
        )
        # Both halves are built from their Input layers, so the VAE is too (save_weights requires it).
        self.built = True

    def encode(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The mean :math:`\\mu(x)` and log-variance :math:`\\log \\sigma^2(x)` of :math:`q(z \\mid x)`."""
        mean, log_variance = tf.split(self.encoder(x, training=False), 2, axis=1)
        return mean, log_variance

    def decode(self, z: tf.Tensor) -> tf.Tensor:
        """The generator :math:`g(z)`, images in [0, 1]."""
        return self.decoder(z, training=False)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.decode(self.encode(x)[0])

    def negative_elbo(self, x: tf.Tensor, noise: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Per image, the reconstruction term :math:`-\\log p(x \\mid z)` at
        :math:`z = \\mu + \\sigma \\odot \\varepsilon` (``noise`` is :math:`\\varepsilon`) and the KL term."""
        mean, log_variance = self.encode(x)
        z = mean + tf.exp(0.5 * log_variance) * noise
        probability = tf.reshape(self.decode(z), (-1, _DIMENSION))
        target = tf.reshape(tf.cast(x, tf.float32), (-1, _DIMENSION))
        clipped = tf.clip_by_value(probability, 1e-6, 1.0 - 1e-6)
        reconstruction = -tf.reduce_sum(target * tf.math.log(clipped) + (1 - target) * tf.math.log(1 - clipped), axis=1)
        kl = 0.5 * tf.reduce_sum(tf.square(mean) + tf.exp(log_variance) - log_variance - 1.0, axis=1)
        return reconstruction, kl


def vae(code_size: int = 8, hidden: int = 256, *, name: str = "vae") -> VAE:
    """The zoo builder of :class:`VAE` (untrained)."""
    return VAE(code_size, hidden, name=name)


@dataclass(frozen=True)
class VAETraining:
    """How :func:`train_vae` trains a :class:`VAE`: Adam on the negative ELBO."""

    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0


def reconstruction_error(model: VAE, x: Any) -> np.ndarray:
    """Mean squared error per pixel between each image and its reconstruction :math:`g(\\mu(x))`,
    shape ``(N,)``."""
    x = np.asarray(x, np.float32)
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != _DIMENSION:
        raise ValueError(f"x must be a batch of 28×28 images, shape (N, 28, 28, 1), got shape {x.shape}")
    x = x.reshape((-1, *_data.IMAGE_SHAPE))
    reconstruction = keras.ops.convert_to_numpy(model(tf.constant(x)))
    return ((reconstruction - x) ** 2).reshape(len(x), -1).mean(axis=1).astype(np.float64)


def train_vae(model: VAE, training: VAETraining) -> dict[str, Any]:
    """Train ``model`` on the training digits by minimising the negative ELBO with Adam.

    One Monte-Carlo sample :math:`\\varepsilon \\sim \\mathcal{N}(0, I)` per image and step (the
    reparameterisation trick), drawn from a stateless generator seeded with ``training.seed`` and
    the step number, so the training is deterministic. Returns the held-out measurements for the
    card: the mean reconstruction error per pixel, the mean negative ELBO and its KL part (nats
    per image).
    """
    (x_train, _), (x_test, _) = _data.load_mnist("train"), _data.load_mnist("test")
    optimizer = keras.optimizers.Adam(training.learning_rate)
    variables = model.encoder.trainable_variables + model.decoder.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        noise = tf.random.stateless_normal((tf.shape(x)[0], model.code_size), seed)
        with tf.GradientTape() as tape:
            reconstruction, kl = model.negative_elbo(x, noise)
            loss = tf.reduce_mean(reconstruction + kl)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    batches = _data.minibatches(len(x_train), training.batch_size, training.epochs, seed=training.seed)
    for counter, batch in enumerate(batches, start=1):
        step(tf.constant(x_train[batch]), tf.constant([training.seed, counter]))
    noise = tf.random.stateless_normal((len(x_test), model.code_size), [training.seed, -1])
    reconstruction, kl = model.negative_elbo(tf.constant(x_test), noise)
    return {
        "held_out_reconstruction_mse": float(reconstruction_error(model, x_test).mean()),
        "held_out_negative_elbo": float(tf.reduce_mean(reconstruction + kl)),
        "held_out_kl": float(tf.reduce_mean(kl)),
        "n_test": int(len(x_test)),
    }


# The code the trainer runs beyond its own body, hashed into the zoo's cache key.
train_vae.depends_on = (VAE, reconstruction_error, _data.minibatches)  # type: ignore[attr-defined]
