"""Density experts: models of p(x), the distribution of the training digits (chapter 1.2).

Montavon, Samek & Müller (2018, §3.2) improve activation maximization by adding the log-density
of the data, :math:`\\log p(x)`, to the objective, so that the prototype is both typical of the
class for the classifier and likely as an input. By Bayes' rule,

.. math:: \\log p(\\omega_c \\mid x) + \\log p(x) = \\log p(x \\mid \\omega_c) + \\log p(\\omega_c),

so the maximiser is the most likely input of class :math:`c` under the joint model formed by the
classifier and the expert. This module provides two experts, each a Keras model whose weights are
all its state (so the model zoo can cache it) and each with a differentiable
``log_density(x)`` usable inside a ``tf.function``:

* :class:`GaussianRBM`, the Gaussian-Bernoulli restricted Boltzmann machine suggested by the paper
  (Hinton 2002 for contrastive divergence; Cho, Ilin & Raiko 2011 for the Gaussian visible units),
  whose log-density is known up to its normalising constant through the *free energy*;
* :class:`PCAGaussian`, a Gaussian with a low-rank-plus-isotropic covariance (probabilistic PCA,
  Tipping & Bishop 1999), fitted in closed form and exactly normalised, whose number of
  components sets its capacity (chapter 1.2 compares an under- and an over-fitted one).

:func:`train_rbm` and :func:`fit_pca_gaussian` are their zoo trainers; :func:`log_likelihood_ratio`
measures the fit of an unnormalised expert without its normalising constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from . import data as _data

__all__ = [
    "GaussianRBM",
    "PCAGaussian",
    "PCATraining",
    "RBMTraining",
    "fit_pca_gaussian",
    "gaussian_rbm",
    "log_likelihood_ratio",
    "pca_gaussian",
    "shuffle_pixels",
    "train_rbm",
]

_DIMENSION = int(np.prod(_data.IMAGE_SHAPE))
# Pixels that never vary in the training digits (the border) would get a zero variance and an
# infinitely narrow density; no standard deviation or variance is allowed below this floor.
_MIN_SIGMA = 0.05


def _flat(x: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.cast(x, tf.float32), (-1, _DIMENSION))


def _check_images(name: str, x: Any) -> np.ndarray:
    x = np.asarray(x.numpy() if isinstance(x, tf.Tensor) else x)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric images, got dtype {x.dtype}")
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != _DIMENSION:
        raise ValueError(f"{name} must be a batch of 28×28 images, shape (N, 28, 28, 1), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x.astype(np.float32).reshape((-1, *_data.IMAGE_SHAPE))


# --------------------------------------------------------------------------------------------
# Gaussian-Bernoulli RBM
# --------------------------------------------------------------------------------------------


class GaussianRBM(keras.Model):
    """A Gaussian-Bernoulli restricted Boltzmann machine on 28×28 images.

    Visible units :math:`x \\in \\mathbb{R}^d` are Gaussian with fixed per-pixel standard
    deviations :math:`\\sigma_i`, hidden units :math:`h \\in \\{0, 1\\}^m` are binary, and the
    energy is

    .. math:: E(x, h) = \\sum_i \\frac{(x_i - a_i)^2}{2 \\sigma_i^2}
              - \\sum_{i,j} \\frac{x_i}{\\sigma_i} W_{ij} h_j - \\sum_j b_j h_j ,
              \\qquad p(x, h) = e^{-E(x, h)} / Z .

    Summing :math:`e^{-E}` over the :math:`2^m` hidden states factorises over :math:`j`, which
    gives the *free energy* :math:`p(x) = e^{-F(x)} / Z` with

    .. math:: F(x) = \\sum_i \\frac{(x_i - a_i)^2}{2 \\sigma_i^2}
              - \\sum_j \\operatorname{softplus}\\Bigl(b_j + \\sum_i \\frac{x_i}{\\sigma_i} W_{ij}\\Bigr),

    the paper's :math:`\\log p(x) = \\sum_j f_j(x) - \\tfrac12 x^\\top \\Sigma^{-1} x + \\text{const}`
    with :math:`\\Sigma = \\operatorname{diag}(\\sigma^2)` (the linear term :math:`a_i x_i / \\sigma_i^2`
    completes the square). The conditionals are
    :math:`p(h_j = 1 \\mid x) = \\operatorname{sigmoid}(b_j + \\sum_i W_{ij} x_i / \\sigma_i)` and
    :math:`p(x_i \\mid h) = \\mathcal{N}(a_i + \\sigma_i \\sum_j W_{ij} h_j, \\sigma_i^2)`.

    :meth:`log_density` returns :math:`-F(x)`, the log-density up to the constant
    :math:`-\\log Z`, which no gradient with respect to :math:`x` sees. Calling the model returns
    the same thing. The standard deviations are not trained: :func:`train_rbm` sets them from the
    training digits.
    """

    def __init__(self, hidden: int = 100, *, init_scale: float = 0.01, name: str = "rbm", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < 1:
            raise ValueError(f"hidden (the number of hidden units) must be a positive integer, got {hidden!r}")
        self.hidden = int(hidden)
        self.weights_ = self.add_weight(
            shape=(_DIMENSION, self.hidden), name="W",
            initializer=keras.initializers.RandomNormal(stddev=init_scale),
        )
        self.visible_bias = self.add_weight(shape=(_DIMENSION,), name="a", initializer="zeros")
        self.hidden_bias = self.add_weight(shape=(self.hidden,), name="b", initializer="zeros")
        self.sigma = self.add_weight(shape=(_DIMENSION,), name="sigma", initializer="ones", trainable=False)
        # Every weight exists now, so the model counts as built (save_weights requires it).
        self.built = True

    def hidden_input(self, x: tf.Tensor) -> tf.Tensor:
        """:math:`b_j + \\sum_i W_{ij} x_i / \\sigma_i`, shape ``(N, hidden)``."""
        return tf.matmul(_flat(x) / self.sigma, self.weights_) + self.hidden_bias

    def free_energy(self, x: tf.Tensor) -> tf.Tensor:
        """:math:`F(x)`, shape ``(N,)``, for a batch of images."""
        quadratic = tf.reduce_sum(tf.square(_flat(x) - self.visible_bias) / (2.0 * tf.square(self.sigma)), axis=1)
        return quadratic - tf.reduce_sum(tf.nn.softplus(self.hidden_input(x)), axis=1)

    def log_density(self, x: tf.Tensor) -> tf.Tensor:
        """The unnormalised log-density :math:`-F(x) = \\log p(x) + \\log Z`, shape ``(N,)``."""
        return -self.free_energy(x)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.log_density(x)

    def gibbs_step(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """One step of block Gibbs sampling :math:`x \\to h \\sim p(h \\mid x) \\to x' \\sim p(x \\mid h)`.

        ``seed`` is a stateless-random seed, shape ``(2,)``; the result has the shape of ``x``.
        """
        probability = tf.sigmoid(self.hidden_input(x))
        h = tf.cast(tf.random.stateless_uniform(tf.shape(probability), seed) < probability, tf.float32)
        mean = self.visible_bias + self.sigma * tf.matmul(h, self.weights_, transpose_b=True)
        noise = tf.random.stateless_normal(tf.shape(mean), seed + 1)
        return tf.reshape(mean + self.sigma * noise, tf.shape(x))


def gaussian_rbm(hidden: int = 100, *, name: str = "rbm") -> GaussianRBM:
    """The zoo builder of :class:`GaussianRBM` (untrained)."""
    return GaussianRBM(hidden, name=name)


@dataclass(frozen=True)
class RBMTraining:
    """How :func:`train_rbm` trains a :class:`GaussianRBM`: CD-``k`` (or persistent CD) with Adam.

    ``gibbs_steps`` is ``k``; with ``persistent`` the chains are not restarted at the training
    digits but continue from where the previous step left them (Tieleman 2008).
    ``sigma_floor`` is the smallest per-pixel standard deviation; ``weight_decay`` multiplies
    :math:`\\tfrac12 \\lVert W \\rVert^2` in the loss.
    """

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    gibbs_steps: int = 1
    persistent: bool = True
    weight_decay: float = 1e-4
    sigma_floor: float = 0.1
    seed: int = 0


def train_rbm(model: GaussianRBM, training: RBMTraining) -> dict[str, Any]:
    """Train ``model`` on the training digits by contrastive divergence (Hinton 2002).

    The gradient of the average log-likelihood is
    :math:`-\\langle \\nabla_\\theta F(x) \\rangle_{\\text{data}} + \\langle \\nabla_\\theta F(x) \\rangle_{\\text{model}}`;
    CD-k replaces the model's expectation, which would need samples from :math:`p(x)`, by
    samples :math:`x^-` reached from each training digit :math:`x^+` by ``k`` Gibbs steps. So each
    step descends

    .. math:: L(\\theta) = \\operatorname{mean}_n \\bigl[F(x^+_n) - F(x^-_n)\\bigr]
              + \\tfrac{\\kappa}{2} \\lVert W \\rVert^2

    with :math:`x^-` held fixed (no gradient flows through the sampling), using Adam. The
    per-pixel :math:`\\sigma_i` are the training digits' standard deviations, floored at
    ``sigma_floor``; the visible bias starts at their mean. Returns the card's measurements: the
    held-out :func:`log_likelihood_ratio` against pixel-shuffled digits, before and after training.
    """
    (x_train, _), (x_test, _) = _data.load_mnist("train"), _data.load_mnist("test")
    flat = x_train.reshape(len(x_train), -1)
    model.sigma.assign(np.maximum(flat.std(axis=0), training.sigma_floor).astype(np.float32))
    model.visible_bias.assign(flat.mean(axis=0).astype(np.float32))
    ratio_before = float(log_likelihood_ratio(model, x_test, seed=training.seed).mean())

    optimizer = keras.optimizers.Adam(training.learning_rate)
    variables = [model.weights_, model.visible_bias, model.hidden_bias]

    # Persistent chains start at training digits and are carried from step to step.
    chains = tf.Variable(x_train[: training.batch_size])

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        negative = chains if training.persistent else x
        for k in range(training.gibbs_steps):
            negative = model.gibbs_step(negative, seed + 2 * k)
        negative = tf.stop_gradient(negative)
        if training.persistent:
            chains.assign(negative)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.free_energy(x) - model.free_energy(negative))
            loss += 0.5 * training.weight_decay * tf.reduce_sum(tf.square(model.weights_))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    # Whole batches only, so that the persistent chains keep one shape.
    batches = _data.minibatches(len(x_train), training.batch_size, training.epochs, seed=training.seed, whole_batches=True)
    for counter, batch in enumerate(batches, start=1):
        step(tf.constant(x_train[batch]), tf.constant([training.seed, 2 * training.gibbs_steps * counter]))
    ratio_after = float(log_likelihood_ratio(model, x_test, seed=training.seed).mean())
    return {
        "held_out_log_ratio_vs_shuffled": ratio_after,
        "held_out_log_ratio_untrained": ratio_before,
        "n_test": int(len(x_test)),
    }


# --------------------------------------------------------------------------------------------
# PCA-Gaussian
# --------------------------------------------------------------------------------------------


class PCAGaussian(keras.Model):
    """A Gaussian density whose covariance has ``components`` principal directions plus an
    isotropic rest (probabilistic PCA, Tipping & Bishop 1999), on 28×28 images.

    With mean :math:`\\mu`, orthonormal principal directions :math:`U \\in \\mathbb{R}^{d \\times k}`,
    their variances :math:`\\lambda_1, \\dots, \\lambda_k` and the variance :math:`s^2` of every
    other direction, the covariance is
    :math:`C = U \\operatorname{diag}(\\lambda) U^\\top + s^2 (I - U U^\\top)` and, with
    :math:`y = U^\\top (x - \\mu)`,

    .. math:: \\log p(x) = -\\frac12 \\Bigl[ \\sum_{i=1}^k \\frac{y_i^2}{\\lambda_i}
              + \\frac{\\lVert x - \\mu \\rVert^2 - \\lVert y \\rVert^2}{s^2}
              + \\sum_{i=1}^k \\log \\lambda_i + (d - k) \\log s^2 + d \\log 2\\pi \\Bigr] .

    This density is normalised, so held-out log-likelihoods compare across experts. All the
    parameters are non-trainable weights set by :func:`fit_pca_gaussian`.
    """

    def __init__(self, components: int = 20, *, name: str = "pca_gaussian", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if (isinstance(components, bool) or not isinstance(components, (int, np.integer))
                or not 1 <= components < _DIMENSION):
            raise ValueError(f"components must be an integer from 1 to {_DIMENSION - 1}, got {components!r}")
        self.components = int(components)
        self.mean = self.add_weight(shape=(_DIMENSION,), name="mean", initializer="zeros", trainable=False)
        self.directions = self.add_weight(
            shape=(_DIMENSION, self.components), name="directions", trainable=False,
            initializer=lambda shape, dtype=None: tf.eye(*shape, dtype=dtype),
        )
        self.variances = self.add_weight(shape=(self.components,), name="variances", initializer="ones", trainable=False)
        self.rest_variance = self.add_weight(shape=(), name="rest_variance", initializer="ones", trainable=False)
        self.built = True

    def log_density(self, x: tf.Tensor) -> tf.Tensor:
        """The normalised :math:`\\log p(x)`, shape ``(N,)``, in nats."""
        centred = _flat(x) - self.mean
        y = tf.matmul(centred, self.directions)
        inside = tf.reduce_sum(tf.square(y) / self.variances, axis=1)
        rest = (tf.reduce_sum(tf.square(centred), axis=1) - tf.reduce_sum(tf.square(y), axis=1)) / self.rest_variance
        log_det = tf.reduce_sum(tf.math.log(self.variances)) + (_DIMENSION - self.components) * tf.math.log(self.rest_variance)
        return -0.5 * (inside + rest + log_det + _DIMENSION * np.log(2.0 * np.pi))

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.log_density(x)


def pca_gaussian(components: int = 20, *, name: str = "pca_gaussian") -> PCAGaussian:
    """The zoo builder of :class:`PCAGaussian` (unfitted: zero mean, unit covariance)."""
    return PCAGaussian(components, name=name)


@dataclass(frozen=True)
class PCATraining:
    """How :func:`fit_pca_gaussian` fits a :class:`PCAGaussian` (closed form; ``seed`` is unused
    by the fit but kept for the zoo's interface)."""

    variance_floor: float = 1e-5
    seed: int = 0


def fit_pca_gaussian(model: PCAGaussian, training: PCATraining) -> dict[str, Any]:
    """Fit ``model`` to the training digits by maximum likelihood, in closed form.

    :math:`\\mu` is the mean digit, :math:`U` and :math:`\\lambda` the top ``components``
    eigenvectors and eigenvalues of the sample covariance, and :math:`s^2` the mean of the other
    eigenvalues (Tipping & Bishop 1999), each variance floored at ``variance_floor`` (the
    digits' border pixels never vary). Returns the average log-likelihood of the training and
    the held-out digits, in nats per image.
    """
    (x_train, _), (x_test, _) = _data.load_mnist("train"), _data.load_mnist("test")
    flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    covariance = np.cov(flat - mean, rowvar=False, bias=True)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = np.maximum(eigenvalues[order], 0.0), eigenvectors[:, order]
    k = model.components
    model.mean.assign(mean.astype(np.float32))
    model.directions.assign(eigenvectors[:, :k].astype(np.float32))
    model.variances.assign(np.maximum(eigenvalues[:k], training.variance_floor).astype(np.float32))
    model.rest_variance.assign(np.float32(max(eigenvalues[k:].mean(), training.variance_floor)))
    return {
        "train_log_likelihood": float(tf.reduce_mean(model.log_density(x_train))),
        "held_out_log_likelihood": float(tf.reduce_mean(model.log_density(x_test))),
        "n_test": int(len(x_test)),
    }


# --------------------------------------------------------------------------------------------
# Measuring the fit of an unnormalised expert
# --------------------------------------------------------------------------------------------


def shuffle_pixels(x: Any, *, seed: int = 0) -> np.ndarray:
    """Each image with its pixels permuted at random (one permutation per image, seeded).

    The shuffled image has the same pixel values, hence the same amount of ink and the same
    :math:`\\lVert x \\rVert`, as the original, but no strokes.
    """
    x = _check_images("x", x)
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    shuffled = np.stack([row[rng.permutation(row.size)] for row in flat])
    return shuffled.reshape(x.shape)


def log_likelihood_ratio(expert: keras.Model, x: Any, *, seed: int = 0) -> np.ndarray:
    """:math:`\\log p(x) - \\log p(\\tilde x)` for each image :math:`x` and its pixel-shuffled
    copy :math:`\\tilde x` (see :func:`shuffle_pixels`), shape ``(N,)``.

    The normalising constant cancels, so the ratio measures the fit of an unnormalised expert
    such as :class:`GaussianRBM`: a good expert finds real digits far more likely than the same
    ink scattered at random; an untrained one cannot tell them apart.
    """
    if not hasattr(expert, "log_density"):
        raise TypeError(f"expert must have a log_density(x) method, got {type(expert).__name__}")
    x = _check_images("x", x)
    shuffled = shuffle_pixels(x, seed=seed)
    return (expert.log_density(tf.constant(x)) - expert.log_density(tf.constant(shuffled))).numpy().astype(np.float64)


# The code the trainers run beyond their own bodies, hashed into the zoo's cache key.
train_rbm.depends_on = (GaussianRBM, log_likelihood_ratio, shuffle_pixels, _data.minibatches)  # type: ignore[attr-defined]
fit_pca_gaussian.depends_on = (PCAGaussian,)  # type: ignore[attr-defined]
