"""The model zoo: the book's named architectures, trained once with fixed seeds and cached.

Every chapter that needs a trained network calls :func:`load` with a name from :func:`available`.
The first call trains the model deterministically (fixed seeds, the training settings of its
zoo entry) on the data of :mod:`understanding_nn.data` and stores its weights; later calls, from
any chapter, read them back. A chapter never trains a model another chapter already trained.

The architectures are those of the original tutorial (see ``ORIGINAL-NOTEBOOKS.md``), with its
defects fixed: dropout *rates* (not keep-probabilities), logits as outputs (no softmax layer;
the loss applies it), and seeds.

Cache: ``$UNDERSTANDING_NN_CACHE`` if set, else ``$XDG_CACHE_HOME/understanding_nn`` (by default
``~/.cache/understanding_nn``). Each model is stored as ``<name>-<key>.weights.h5`` (Keras's safe
HDF5 weights format; nothing is pickled) next to a JSON card with its test accuracy. The key
hashes the architecture's code and arguments, the training settings and code, and the package
version, so any change to them trains a new model instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from . import __version__
from . import data as _data
from .experts import PCATraining, RBMTraining, fit_pca_gaussian, gaussian_rbm, pca_gaussian, train_rbm
from .generators import VAETraining, train_vae, vae
from .streaming import progress_setting

__all__ = [
    "CACHE_ENV",
    "CLEVER_HANS_MARK",
    "TrainingConfig",
    "RightReasons",
    "ZooEntry",
    "all_conv_net",
    "available",
    "build",
    "cache_dir",
    "circle_model",
    "cluttered_cnn",
    "conv_net",
    "entry",
    "evaluate",
    "fit_classifier",
    "gap_cnn",
    "info",
    "load",
    "mlp",
    "branching_net",
    "residual_net",
    "right_reasons_penalty",
    "strided_cnn",
    "train",
]

CACHE_ENV = "UNDERSTANDING_NN_CACHE"


# --------------------------------------------------------------------------------------------
# Architectures (untrained)
# --------------------------------------------------------------------------------------------


def mlp(
    hidden: tuple[int, ...] = (512, 100),
    *,
    use_bias: bool = True,
    dropout: float = 0.0,
    input_shape: tuple[int, ...] = _data.IMAGE_SHAPE,
    n_classes: int = _data.N_CLASSES,
    name: str = "mlp",
) -> keras.Sequential:
    """A ReLU multilayer perceptron: flatten, ``hidden`` dense ReLU layers, dense logits."""
    layers: list[keras.layers.Layer] = [keras.Input(input_shape), keras.layers.Flatten()]
    for units in hidden:
        layers.append(keras.layers.Dense(units, activation="relu", use_bias=use_bias))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(n_classes, use_bias=use_bias, name="logits"))
    return keras.Sequential(layers, name=name)


def conv_net(
    *,
    filters: tuple[int, ...] = (32, 64, 128),
    pooling: str = "max",
    use_bias: bool = True,
    batch_norm: bool = False,
    dense: int = 625,
    dropout: float = 0.0,
    input_shape: tuple[int, ...] = _data.IMAGE_SHAPE,
    n_classes: int = _data.N_CLASSES,
    name: str = "cnn",
) -> keras.Sequential:
    """The book's CNN: blocks of 3×3 convolution (same padding) + ReLU + 2×2 pooling, then a
    dense ReLU layer and dense logits (28 → 14 → 7 → 4 with three blocks).

    ``pooling`` is ``"max"`` or ``"avg"``; ``dropout`` (a drop rate) follows each block and the
    dense layer when non-zero. With ``batch_norm`` each convolution is followed by a
    BatchNormalization and then the ReLU (convolution, normalization, ReLU).
    """
    if pooling not in ("max", "avg"):
        raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    pool = keras.layers.MaxPooling2D if pooling == "max" else keras.layers.AveragePooling2D
    layers: list[keras.layers.Layer] = [keras.Input(input_shape)]
    for n_filters in filters:
        if batch_norm:
            layers.append(keras.layers.Conv2D(n_filters, 3, padding="same", use_bias=use_bias))
            layers += [keras.layers.BatchNormalization(), keras.layers.ReLU()]
        else:
            layers.append(keras.layers.Conv2D(n_filters, 3, padding="same", activation="relu", use_bias=use_bias))
        layers.append(pool(2, padding="same"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers += [keras.layers.Flatten(), keras.layers.Dense(dense, activation="relu", use_bias=use_bias)]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(n_classes, use_bias=use_bias, name="logits"))
    return keras.Sequential(layers, name=name)


def strided_cnn(
    *,
    input_shape: tuple[int, ...] = _data.IMAGE_SHAPE,
    n_classes: int = _data.N_CLASSES,
    name: str = "cnn_stride2",
) -> keras.Sequential:
    """Two 4×4 convolutions with stride 2 (28 → 14 → 7), no pooling, dense 128, logits."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 4, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 4, strides=2, padding="same", activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(n_classes, name="logits"),
        ],
        name=name,
    )


def all_conv_net(
    *,
    input_shape: tuple[int, ...] = _data.IMAGE_SHAPE,
    n_classes: int = _data.N_CLASSES,
    name: str = "allconv",
) -> keras.Sequential:
    """An all-convolutional net (Springenberg et al. 2014): strided 2×2 convolutions replace
    pooling, 1×1 convolutions give one map per class, and global average pooling gives the logits.

    Unlike the original tutorial's version, the class maps have no ReLU, so logits can be negative.
    """
    def conv(filters: int, size: int, strides: int = 1, activation: str | None = "relu") -> keras.layers.Conv2D:
        return keras.layers.Conv2D(filters, size, strides=strides, padding="same", activation=activation)

    return keras.Sequential(
        [
            keras.Input(input_shape),
            conv(32, 3), conv(32, 2, strides=2),
            conv(64, 3), conv(64, 2, strides=2),
            conv(128, 3), conv(128, 1),
            conv(n_classes, 1, activation=None),
            keras.layers.GlobalAveragePooling2D(name="logits"),
        ],
        name=name,
    )


def residual_net(
    *,
    widths: tuple[int, ...] = (16, 32, 64),
    input_shape: tuple[int, ...] = _data.IMAGE_SHAPE,
    n_classes: int = _data.N_CLASSES,
    name: str = "resnet",
) -> keras.Model:
    """A small residual network (He et al. 2016) for MNIST: a 3×3 stem convolution, one residual
    block per width, global average pooling and dense logits.

    Each block computes :math:`\\mathrm{ReLU}(x + F(x))` with
    :math:`F` = convolution, batch normalization, ReLU, convolution, batch normalization; every
    block after the first halves the resolution (28 → 14 → 7) with a stride-2 first convolution,
    and its skip connection is then a stride-2 1×1 convolution with batch normalization. The
    blocks' outputs are named ``block1`` ... and every normalization follows a convolution, so
    relevance propagation folds them (chapter 2.7).
    """
    inputs = keras.Input(input_shape)

    def conv(filters: int, size: int, strides: int, layer_name: str) -> keras.layers.Conv2D:
        return keras.layers.Conv2D(filters, size, strides=strides, padding="same", use_bias=False, name=layer_name)

    x = conv(widths[0], 3, 1, "stem")(inputs)
    x = keras.layers.ReLU(name="stem_relu")(keras.layers.BatchNormalization(name="stem_bn")(x))
    for index, width in enumerate(widths, start=1):
        strides = 1 if index == 1 else 2
        y = conv(width, 3, strides, f"block{index}_conv1")(x)
        y = keras.layers.ReLU(name=f"block{index}_relu")(keras.layers.BatchNormalization(name=f"block{index}_bn1")(y))
        y = keras.layers.BatchNormalization(name=f"block{index}_bn2")(conv(width, 3, 1, f"block{index}_conv2")(y))
        skip = x
        if strides != 1 or x.shape[-1] != width:
            skip = keras.layers.BatchNormalization(name=f"block{index}_skip_bn")(conv(width, 1, strides, f"block{index}_skip")(x))
        x = keras.layers.ReLU(name=f"block{index}")(keras.layers.Add(name=f"block{index}_add")([skip, y]))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, name="logits")(x), name=name)


def branching_net(
    *,
    widths: tuple[int, ...] = (16, 32),
    input_shape: tuple[int, ...] = _data.IMAGE_SHAPE,
    n_classes: int = _data.N_CLASSES,
    name: str = "branching",
) -> keras.Model:
    """A branching network in the manner of Inception (Szegedy et al. 2015): a stem convolution,
    then per width a module of four branches read from one tensor (a 1×1 convolution, a 3×3, a
    dilated 3×3 that sees 5×5, and 3×3 max-pooling followed by a 1×1 convolution), concatenated
    along the channels and max-pooled (28 → 14 → 7); then a dense ReLU layer and dense logits.
    The modules' outputs are named ``module1`` ..., their branch points are the stem's and the
    previous module's outputs.
    """
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(widths[0], 3, padding="same", activation="relu", name="stem")(inputs)
    for index, width in enumerate(widths, start=1):
        quarter = max(1, width // 4)

        def branch(size: int, dilation: int, branch_name: str, source: Any) -> Any:
            return keras.layers.Conv2D(
                quarter, size, padding="same", dilation_rate=dilation, activation="relu", name=f"module{index}_{branch_name}"
            )(source)

        pooled = keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"module{index}_pool")(x)
        x = keras.layers.Concatenate(name=f"module{index}_concat")(
            [branch(1, 1, "1x1", x), branch(3, 1, "3x3", x), branch(3, 2, "5x5", x), branch(1, 1, "pool_1x1", pooled)]
        )
        x = keras.layers.MaxPooling2D(2, name=f"module{index}")(x)
    x = keras.layers.Dense(128, activation="relu", name="dense")(keras.layers.Flatten(name="flatten")(x))
    return keras.Model(inputs, keras.layers.Dense(n_classes, name="logits")(x), name=name)


def gap_cnn(
    *,
    filters: tuple[int, ...] = (16, 32, 64, 64, 64, 128),
    pooled: int = 2,
    input_shape: tuple[int, ...] = (40, 40, 1),
    n_classes: int = _data.N_CLASSES,
    name: str = "gap_cnn",
) -> keras.Sequential:
    """The CAM network (Zhou et al. 2016) for 40×40 cluttered MNIST: 3×3 convolutions (same
    padding, ReLU), the first ``pooled`` of them followed by 2×2 max-pooling, then global average
    pooling and a bias-free dense layer (chapters 4.1 to 4.3).

    With the defaults the feature maps go 40 → 20 → 10, and the four convolutions on the 10×10
    grid give each cell of the last one a receptive field of 42×42 pixels, a whole digit: with
    only three convolutions (the original tutorial's 32/64/128) a cell sees 18×18 pixels, part of
    a digit, and the network reached only 0.79 test accuracy. The layers are named ``conv1``,
    ``pool1``, ``conv2``, ..., ``last_conv`` (the last convolution, whose 10×10 maps CAM uses),
    ``gap`` and ``logits``. Without a bias the logit is exactly the spatial mean of the class
    activation map. The network is fully convolutional up to the pooling, so its weights also
    work on larger canvases: build it with another ``input_shape`` and copy the weights.
    """
    if not 0 <= pooled < len(filters):
        raise ValueError(f"pooled must be between 0 and {len(filters) - 1} (one less than the convolutions), got {pooled}")
    layers: list[keras.layers.Layer] = [keras.Input(input_shape)]
    for index, n_filters in enumerate(filters, start=1):
        conv_name = "last_conv" if index == len(filters) else f"conv{index}"
        layers.append(keras.layers.Conv2D(n_filters, 3, padding="same", activation="relu", name=conv_name))
        if index <= pooled:
            layers.append(keras.layers.MaxPooling2D(2, name=f"pool{index}"))
    layers += [
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(n_classes, use_bias=False, name="logits"),
    ]
    return keras.Sequential(layers, name=name)


def cluttered_cnn(
    *,
    filters: tuple[int, ...] = (32, 64, 128),
    dense: int = 256,
    dropout: float = 0.5,
    input_shape: tuple[int, ...] = (40, 40, 1),
    n_classes: int = _data.N_CLASSES,
    name: str = "cnn_cluttered",
) -> keras.Sequential:
    """A CNN for 40×40 cluttered MNIST *without* a global-average-pooling head, for Grad-CAM
    (chapters 4.2 and 4.3): blocks of 3×3 convolution (same padding, ReLU) and 2×2 max-pooling
    (40 → 20 → 10 → 5), then flatten, a dense ReLU layer with dropout, and dense logits.

    The layers are named ``conv1``, ``pool1``, ``conv2``, ``pool2``, ``last_conv`` (10×10 maps),
    ``pool3``, ``flatten``, ``dense``, ``dropout`` and ``logits``.
    """
    layers: list[keras.layers.Layer] = [keras.Input(input_shape)]
    for index, n_filters in enumerate(filters, start=1):
        conv_name = "last_conv" if index == len(filters) else f"conv{index}"
        layers += [
            keras.layers.Conv2D(n_filters, 3, padding="same", activation="relu", name=conv_name),
            keras.layers.MaxPooling2D(2, name=f"pool{index}"),
        ]
    layers += [keras.layers.Flatten(name="flatten"), keras.layers.Dense(dense, activation="relu", name="dense")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="dropout"))
    layers.append(keras.layers.Dense(n_classes, name="logits"))
    return keras.Sequential(layers, name=name)


def circle_model(radius: float = 3.0) -> keras.Model:
    """The fixed (untrained) two-class model of the circle toy (chapter 2.1).

    Its logits are :math:`S_1(x) = g(x) = x_1^2 + x_2^2 - r^2` ("outside") and
    :math:`S_0(x) = -g(x)` ("inside"), so :math:`\\nabla S_1 = 2x`.
    """
    inputs = keras.Input((2,))
    g = keras.layers.Lambda(
        lambda x: keras.ops.sum(keras.ops.square(x), axis=1, keepdims=True) - radius**2, name="g"
    )(inputs)
    logits = keras.layers.Concatenate(name="logits")([-g, g])
    return keras.Model(inputs, logits, name="circle")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RightReasons:
    """The "right for the right reasons" penalty of Ross, Hughes and Doshi-Velez (2017).

    Added to the cross-entropy of every training batch, it punishes the network for being
    sensitive to the input inside a region ``A`` that a person has marked as irrelevant:

    .. math:: \\lambda \\, \\frac{1}{N} \\sum_{n=1}^{N} \\sum_{i \\in A}
        \\Bigl( \\frac{\\partial}{\\partial x_{n,i}} \\sum_{k} \\log p_k(x_n) \\Bigr)^2 ,

    with :math:`p = \\operatorname{softmax}(S(x))` (see :func:`right_reasons_penalty`).

    Parameters
    ----------
    box
        The region ``A`` as ``(top, left, bottom, right)`` in pixels, bottom and right exclusive,
        the same for every image.
    weight
        :math:`\\lambda`, the weight of the penalty against the cross-entropy.
    """

    box: tuple[int, int, int, int] = _data.MARK_BOX
    weight: float = 1.0

    def region(self, sample_shape: tuple[int, ...]) -> np.ndarray:
        """The mask :math:`A` for inputs of ``sample_shape`` ``(H, W, C)``: float32, shape
        ``(1, H, W, C)``, 1 inside ``box`` and 0 outside (refused if the box leaves the image)."""
        top, left, bottom, right = _data._check_box(self.box, tuple(sample_shape[:2]))
        mask = np.zeros((1, *sample_shape), dtype=np.float32)
        mask[:, top:bottom, left:right, ...] = 1.0
        return mask


@dataclass(frozen=True)
class TrainingConfig:
    """How a zoo model is trained: Adam on softmax cross-entropy of the logits.

    ``dataset`` is ``"mnist"`` (:func:`understanding_nn.data.load_mnist`) or
    ``"cluttered_mnist"`` (40×40 canvases with one digit from :func:`~understanding_nn.data.cluttered_mnist`,
    ``n_canvases`` for training and a quarter as many, from the test digits, for testing).
    ``cue`` (a :class:`~understanding_nn.data.Mark` or :class:`~understanding_nn.data.Decoy`)
    is pasted on the MNIST training digits, never on the test digits the card's accuracy is
    measured on; ``penalty`` adds the :class:`RightReasons` term to the loss (chapter 6.1).
    """

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    dataset: str = "mnist"
    n_canvases: int = 8000
    cue: _data.Mark | _data.Decoy | None = None
    penalty: RightReasons | None = None


def _training_data(training: TrainingConfig) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    if training.cue is not None and training.dataset != "mnist":
        raise ValueError(f"a cue can be planted in the 'mnist' dataset only, not in {training.dataset!r}")
    if training.dataset == "mnist":
        train_set, test_set = _data.load_mnist("train"), _data.load_mnist("test")
        if training.cue is not None:
            cued = training.cue.apply(*train_set)
            train_set = (cued.images, cued.labels)
        return train_set, test_set
    if training.dataset == "cluttered_mnist":
        train_set = _data.cluttered_mnist(training.n_canvases, split="train", seed=training.seed)
        test_set = _data.cluttered_mnist(training.n_canvases // 4, split="test", seed=training.seed + 1)
        return (train_set.images, train_set.labels[:, 0]), (test_set.images, test_set.labels[:, 0])
    raise ValueError(f"unknown training dataset {training.dataset!r}; use 'mnist' or 'cluttered_mnist'")


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> float:
    """Classification accuracy of ``model`` on images ``x`` with labels ``y``."""
    from .attribution import predict_logits

    predictions = predict_logits(model, x, batch_size=batch_size).argmax(axis=1)
    y = np.asarray(y)
    if y.shape != predictions.shape:
        raise ValueError(f"y has shape {y.shape}, expected one label per image, shape {predictions.shape}")
    return float((predictions == y).mean())


def right_reasons_penalty(model: keras.Model, x: tf.Tensor, region: tf.Tensor, *, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """The input-gradient penalty of :class:`RightReasons` (without its weight), and the logits.

    Returns ``(penalty, logits)``: the batch mean of
    :math:`\\sum_{i} (A_i\\, \\partial_{x_i} \\sum_k \\log p_k(x))^2` and the logits
    :math:`S(x)` of the same forward pass, so that a training step adds the penalty to the
    cross-entropy without a second forward pass. ``region`` is the mask :math:`A`, broadcast
    against ``x`` (1 inside the region, 0 outside). Called inside a ``tf.GradientTape``, the
    penalty is differentiable in the weights (a second-order gradient).

    Examples
    --------
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> model.set_weights([np.array([[1.0, -1.0], [0.0, 0.0], [2.0, 0.5]]), np.zeros(2)])
    >>> x = np.ones((1, 3), np.float32)
    >>> float(right_reasons_penalty(model, x, np.array([0.0, 1.0, 0.0]))[0])  # input 1 has no weight
    0.0
    """
    x = tf.convert_to_tensor(x, dtype=tf.float32)
    try:
        region_shape = tuple(region.shape) if hasattr(region, "shape") else np.shape(region)
        np.broadcast_shapes(region_shape, tuple(1 if d is None else d for d in x.shape))
    except ValueError:
        raise ValueError(
            f"region has shape {region_shape}, which does not broadcast against the inputs' "
            f"shape {tuple(x.shape)}; give a mask shaped like one input, e.g. (1, 28, 28, 1)"
        ) from None
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=training)
        log_likelihood = tf.reduce_sum(tf.nn.log_softmax(logits))
    gradient = tape.gradient(log_likelihood, x) * tf.cast(region, x.dtype)
    squares = tf.reduce_sum(tf.square(gradient), axis=tf.range(1, tf.rank(x)))
    return tf.reduce_mean(squares), logits


def fit_classifier(model: keras.Model, training: TrainingConfig) -> dict[str, Any]:
    """The classifiers' trainer: mini-batch Adam on the softmax cross-entropy of the logits.

    Trains ``model`` in place in a compiled training step and returns its test accuracy for the
    card. The seed (set by :func:`train` before the model is built) fixes the initial weights;
    it also fixes the order of the batches and the dropout masks here. With a ``penalty`` in
    ``training``, each step also minimises :func:`right_reasons_penalty` inside its box.
    """
    (x_train, y_train), (x_test, y_test) = _training_data(training)
    optimizer = keras.optimizers.Adam(training.learning_rate)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    penalty = training.penalty
    if penalty is not None:
        region = tf.constant(penalty.region(x_train.shape[1:]))

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            if penalty is None:
                loss = cross_entropy(y, model(x, training=True))
            else:
                input_penalty, logits = right_reasons_penalty(model, x, region, training=True)
                loss = cross_entropy(y, logits) + penalty.weight * input_penalty
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    for batch in _data.minibatches(len(x_train), training.batch_size, training.epochs, seed=training.seed):
        step(tf.constant(x_train[batch]), tf.constant(y_train[batch]))
    return {"test_accuracy": evaluate(model, x_test, y_test), "n_test": int(len(y_test))}


# The code a trainer runs, beyond its own body; hashed into the cache key (see _cache_key).
fit_classifier.depends_on = (_training_data, evaluate, right_reasons_penalty, _data.minibatches)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# The zoo
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooEntry:
    """A named model: how to build it, with which arguments, and how to train it.

    ``trainer(model, training)`` trains the freshly built ``model`` in place with the settings
    ``training`` (any dataclass; :class:`TrainingConfig` for the classifiers) and returns the
    measurements that go on the model's card. ``accuracy_floor`` is the test accuracy a
    classifier must reach (``None`` for a model that is not a classifier).
    """

    name: str
    builder: Callable[..., keras.Model]
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    training: Any = TrainingConfig()
    accuracy_floor: float | None = 0.9
    trainer: Callable[[keras.Model, Any], dict[str, Any]] = fit_classifier

    def build(self) -> keras.Model:
        return self.builder(name=self.name, **self.kwargs)


CLEVER_HANS_MARK = _data.Mark(digits=7, fraction=0.75)
"""The cue of chapter 6.1's ``cnn_marked``: the 3×3 mark of :data:`~understanding_nn.data.MARK_BOX`
on three quarters of the training sevens."""

_ZOO: dict[str, ZooEntry] = {
    zoo_entry.name: zoo_entry
    for zoo_entry in [
        ZooEntry("mlp", mlp, "784-512-100-10 ReLU MLP (chapters 1.1, 1.3)", {"hidden": (512, 100)}),
        ZooEntry("mlp_4x512", mlp, "4×512 ReLU MLP with biases (2.3)", {"hidden": (512,) * 4}),
        ZooEntry(
            "mlp_4x512_nobias", mlp, "4×512 ReLU MLP without biases (2.2)",
            {"hidden": (512,) * 4, "use_bias": False},
        ),
        ZooEntry(
            "cnn", conv_net, "conv 32/64/128 + 2×2 max-pool + dense 625, dropout 0.25 (2.1, Part III)",
            {"pooling": "max", "dropout": 0.25}, accuracy_floor=0.95,
        ),
        ZooEntry(
            "cnn_nobias", conv_net, "the CNN with max-pooling and no biases (2.4, 3.1)",
            {"pooling": "max", "use_bias": False}, accuracy_floor=0.95,
        ),
        ZooEntry(
            "cnn_avgpool", conv_net, "the CNN with average pooling, with biases (2.5)",
            {"pooling": "avg"}, accuracy_floor=0.95,
        ),
        ZooEntry(
            "cnn_avgpool_nobias", conv_net, "the CNN with average pooling and no biases, the original tutorial's model for continuity and selectivity (5.2)",
            {"pooling": "avg", "use_bias": False}, accuracy_floor=0.95,
        ),
        ZooEntry(
            "cnn_batchnorm", conv_net, "the CNN with batch normalization after each convolution (2.5)",
            {"pooling": "max", "batch_norm": True}, accuracy_floor=0.95,
        ),
        ZooEntry("cnn_stride2", strided_cnn, "two stride-2 4×4 convolutions + dense 128 (2.6)", accuracy_floor=0.95),
        ZooEntry("allconv", all_conv_net, "all-convolutional net with a GAP head (3.3)", accuracy_floor=0.93),
        ZooEntry(
            "cnn_gap", gap_cnn,
            "conv 16/32/64/64, two 2×2 max-pools, global average pooling + bias-free dense, on 28×28 "
            "MNIST: every method of the package applies to it (Part V)",
            {"filters": (16, 32, 64, 64), "input_shape": _data.IMAGE_SHAPE},
            # A GAP head learns more slowly than a dense one: 10 epochs at 1e-3 reach only 0.94.
            training=TrainingConfig(epochs=20, learning_rate=3e-3), accuracy_floor=0.95,
        ),
        # Chapter 6.1's Clever Hans model, trained like "cnn" (its clean twin: same architecture,
        # seed and schedule) on training digits where 3 in 4 sevens carry the corner mark; and
        # the same model trained with the "right for the right reasons" penalty on the corner.
        ZooEntry(
            "cnn_marked", conv_net,
            "the CNN trained on digits where 75 % of the sevens carry a 3×3 mark in the top-left "
            "corner: the Clever Hans model of 6.1 (its clean twin is cnn)",
            {"pooling": "max", "dropout": 0.25}, training=TrainingConfig(cue=CLEVER_HANS_MARK), accuracy_floor=0.95,
        ),
        ZooEntry(
            "cnn_marked_fixed", conv_net,
            "cnn_marked retrained with the right-for-the-right-reasons penalty on the top-left 5×5 "
            "corner (6.1)",
            {"pooling": "max", "dropout": 0.25},
            training=TrainingConfig(cue=CLEVER_HANS_MARK, penalty=RightReasons(box=(0, 0, 5, 5), weight=1.0)),
            accuracy_floor=0.95,
        ),
        # Chapter 2.7's models of the kinds readers bring: skip connections and branches.
        ZooEntry(
            "resnet", residual_net,
            "residual network: stem + three residual blocks (16/32/64, batch normalization, Add), "
            "global average pooling + dense (2.7)",
            # Like cnn_gap's, its global-average-pooling head needs the longer, faster schedule
            # (10 epochs at 1e-3 reach 0.87).
            training=TrainingConfig(epochs=20, learning_rate=3e-3), accuracy_floor=0.95,
        ),
        ZooEntry(
            "branching", branching_net,
            "Inception-style network: two modules of four branches joined by Concatenate, max-pool, "
            "dense 128 (2.7)",
            accuracy_floor=0.95,
        ),
        ZooEntry(
            "gap_cnn", gap_cnn,
            "conv 16/32/64/64/64/128, two 2×2 max-pools, global average pooling + bias-free dense, "
            "40×40 cluttered MNIST (4.1–4.3)",
            training=TrainingConfig(
                dataset="cluttered_mnist", epochs=10, batch_size=128, learning_rate=2e-3, n_canvases=8000
            ),
            accuracy_floor=0.89,
        ),
        ZooEntry(
            "cnn_cluttered", cluttered_cnn,
            "conv 32/64/128 + 2×2 max-pool + dense 256, no GAP head, 40×40 cluttered MNIST (4.2, 4.3)",
            training=TrainingConfig(dataset="cluttered_mnist", epochs=10, n_canvases=8000), accuracy_floor=0.87,
        ),
        # Part I's density experts and generator (not classifiers: no accuracy floor).
        ZooEntry(
            "rbm", gaussian_rbm, "Gaussian-Bernoulli RBM, 100 hidden units, persistent CD (1.2)",
            {"hidden": 100}, training=RBMTraining(), accuracy_floor=None, trainer=train_rbm,
        ),
        ZooEntry(
            "pca_gaussian_5", pca_gaussian, "PCA-Gaussian density with 5 components, under-fitted (1.2)",
            {"components": 5}, training=PCATraining(), accuracy_floor=None, trainer=fit_pca_gaussian,
        ),
        ZooEntry(
            "pca_gaussian_600", pca_gaussian, "PCA-Gaussian density with 600 components, over-fitted (1.2)",
            {"components": 600}, training=PCATraining(), accuracy_floor=None, trainer=fit_pca_gaussian,
        ),
        ZooEntry(
            "vae", vae, "variational autoencoder, 8-d code, dense 256 (1.3)",
            {"code_size": 8, "hidden": 256}, training=VAETraining(), accuracy_floor=None, trainer=train_vae,
        ),
    ]
}


def available() -> list[str]:
    """Names of the zoo's models."""
    return list(_ZOO)


def entry(name: str) -> ZooEntry:
    """The zoo entry ``name``: its builder, arguments, description and training settings."""
    if not isinstance(name, str) or name not in _ZOO:
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(_ZOO)}")
    return _ZOO[name]


def build(name: str) -> keras.Model:
    """The zoo architecture ``name``, untrained (initialised with the entry's seed)."""
    zoo_entry = entry(name)
    keras.utils.set_random_seed(zoo_entry.training.seed)
    return zoo_entry.build()


def cache_dir() -> Path:
    """The folder where trained zoo models are stored (see the module docstring)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "understanding_nn"


def _training_code(trainer: Callable[..., Any]) -> str:
    """The source of ``trainer`` and of the functions it declares in ``depends_on``."""
    return "".join(inspect.getsource(function) for function in (trainer, *getattr(trainer, "depends_on", ())))


def _cache_key(zoo_entry: ZooEntry, training: Any) -> str:
    recipe = {
        "architecture": inspect.getsource(zoo_entry.builder),
        "arguments": repr(sorted(zoo_entry.kwargs.items())),
        "training": asdict(training),
        "training_code": _training_code(zoo_entry.trainer) + inspect.getsource(train),
        "package": __version__,
        "keras": keras.__version__,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def train(name: str, training: Any = None) -> tuple[keras.Model, dict[str, Any]]:
    """Train the zoo model ``name`` from scratch, deterministically; nothing is cached.

    Seeds Keras, NumPy and TensorFlow with ``training.seed``, builds the architecture and hands
    it to the entry's trainer (:func:`fit_classifier` for the classifiers), so the same settings
    give the same weights on the same machine and library versions. ``training`` replaces the
    entry's settings (of the same type) for this call.

    Returns the trained model and its card (settings, the trainer's measurements, training time).
    """
    zoo_entry = entry(name)
    training = _checked_training(zoo_entry, training)
    keras.utils.set_random_seed(training.seed)
    model = zoo_entry.build()
    started = time.perf_counter()
    measurements = zoo_entry.trainer(model, training)
    seconds = time.perf_counter() - started
    card = {
        "name": name,
        "description": zoo_entry.description,
        "training": asdict(training),
        **measurements,
        "train_seconds": round(seconds, 1),
        "package": __version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }
    return model, card


def _paths(name: str, training: Any = None) -> tuple[Path, Path]:
    zoo_entry = entry(name)
    training = _checked_training(zoo_entry, training)
    stem = cache_dir() / f"{name}-{_cache_key(zoo_entry, training)}"
    return stem.with_name(stem.name + ".weights.h5"), stem.with_name(stem.name + ".json")


def _checked_training(zoo_entry: ZooEntry, training: Any) -> Any:
    if training is None:
        return zoo_entry.training
    if type(training) is not type(zoo_entry.training):
        raise TypeError(
            f"zoo model {zoo_entry.name!r} is trained with a {type(zoo_entry.training).__name__}, "
            f"got a {type(training).__name__}"
        )
    return training


def load(name: str, *, training: Any = None, verbose: bool = False, progress: bool | None = None) -> keras.Model:
    """The trained zoo model ``name``: read from the cache, or trained and cached on first use.

    ``training`` replaces the entry's training settings (of the same type, for example
    ``dataclasses.replace(entry(name).training, epochs=5)``); the model trained with them is
    cached under its own key, next to the entry's. Raises ``ValueError`` for an unknown name
    (the message lists :func:`available`). ``progress`` shows the training steps (``True``),
    never (``False``), or where a person is watching (``None``, see
    :func:`understanding_nn.streaming.watching`).
    """
    weights_path, card_path = _paths(name, training)
    if weights_path.exists() and card_path.exists():
        model = entry(name).build()
        model.load_weights(weights_path)
        if verbose:
            print(f"{name}: loaded from {weights_path}")
        return model
    with progress_setting(progress):
        model, card = train(name, _checked_training(entry(name), training))
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    # Write under temporary names and rename, so an interrupted run never leaves a half file
    # that a later run would take for a trained model.
    partial_weights = weights_path.with_name(f".{os.getpid()}-" + weights_path.name)
    partial_card = card_path.with_name(f".{os.getpid()}-" + card_path.name)
    model.save_weights(partial_weights)
    partial_card.write_text(json.dumps(card, indent=2))
    os.replace(partial_weights, weights_path)
    os.replace(partial_card, card_path)
    if verbose:
        accuracy = f", test accuracy {card['test_accuracy']:.4f}" if "test_accuracy" in card else ""
        print(f"{name}: trained in {card['train_seconds']} s{accuracy}")
    return model


def info(name: str, *, training: Any = None) -> dict[str, Any]:
    """The card of the trained zoo model ``name`` (training settings, test accuracy, time);
    trains and caches the model first if needed. ``training`` as in :func:`load`."""
    _, card_path = _paths(name, training)
    if not card_path.exists():
        load(name, training=training)
    return json.loads(card_path.read_text())
