"""Shared fixtures: tiny seeded Keras models and a few real digits.

Every model here is untrained but seeded with ``keras.utils.set_random_seed``, so the tests are
deterministic; none of them needs the network or the zoo cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Progress bars are for people watching; the tests that check them switch them on themselves.
os.environ["UNDERSTANDING_NN_PROGRESS"] = "off"

import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so that tf.distribute runs on two replicas here
# (tests/test_streaming.py); ops are placed on the first unless a strategy says otherwise. This
# must happen before TensorFlow initialises its devices, hence before anything else runs.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import understanding_nn as unn  # noqa: E402


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mnist_test():
    """The 1,000 test digits of ``load_mnist`` (images, labels)."""
    return unn.data.load_mnist("test")


@pytest.fixture(scope="session")
def digits(mnist_test):
    """Ten real test digits, one per class, and their labels."""
    images, labels = mnist_test
    index = unn.data.one_per_class(labels)
    return images[index], labels[index]


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """The whole book, built once per session the way `make book` builds it (warnings are
    errors), with every chapter executed afresh into a temporary folder, never from the
    execution cache. Returns the folder of the HTML site.

    To run the site's tests against a site you have built already, set
    ``UNDERSTANDING_NN_BUILT_SITE`` to its HTML folder (e.g. ``_build/html``). To keep the site
    this build makes (the GitHub workflow publishes it, so the book is built once), set
    ``UNDERSTANDING_NN_BOOK_OUTPUT`` to a folder that does not exist yet: the site goes to its
    ``_build/html``."""
    prebuilt = os.environ.get("UNDERSTANDING_NN_BUILT_SITE")
    if prebuilt:
        assert (Path(prebuilt) / "index.html").is_file(), f"no built site in {prebuilt}"
        return Path(prebuilt).resolve()
    kept = os.environ.get("UNDERSTANDING_NN_BOOK_OUTPUT")
    if kept:
        # A fresh folder, so that no page is taken from an earlier build's execution cache.
        assert not Path(kept).exists(), f"UNDERSTANDING_NN_BOOK_OUTPUT={kept} exists already; give a new folder"
        output = Path(kept).resolve()
        output.mkdir(parents=True)
    else:
        output = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(output),
         "--warningiserror", "--nitpick", "--keep-going"],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", UNDERSTANDING_NN_PROGRESS="off"),
        capture_output=True, text=True, timeout=3600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"the book build failed:\n{log[-6000:]}"
    return output / "_build" / "html"


@pytest.fixture(autouse=True)
def _close_figures():
    """No test leaves a Matplotlib figure open."""
    yield
    plt.close("all")


# --------------------------------------------------------------------------------------------
# Tiny seeded models (untrained)
# --------------------------------------------------------------------------------------------


def dense_net(
    hidden=(32, 16),
    activation="relu",
    *,
    use_bias=True,
    final_activation=None,
    input_shape=(28, 28, 1),
    n_classes=10,
    seed=0,
    name="dense",
):
    """A seeded Sequential MLP: flatten, ``hidden`` dense layers, dense output."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input(input_shape), keras.layers.Flatten()]
    for units in hidden:
        layers.append(keras.layers.Dense(units, activation=activation, use_bias=use_bias))
    layers.append(keras.layers.Dense(n_classes, activation=final_activation, use_bias=use_bias))
    return keras.Sequential(layers, name=name)


@pytest.fixture(scope="session")
def make_dense_net():
    """The :func:`dense_net` builder, for tests that need a fresh model of their own."""
    return dense_net


@pytest.fixture(scope="session")
def relu_model():
    """A small dense ReLU net on 28×28×1 inputs with biases."""
    return dense_net(name="relu_net")


@pytest.fixture(scope="session")
def bias_free_relu_model():
    """A small dense ReLU net without any bias: positively homogeneous of degree 1."""
    return dense_net((32, 16), use_bias=False, seed=1, name="bias_free_relu_net")


@pytest.fixture(scope="session")
def smooth_model():
    """A small dense net with smooth activations (tanh, softplus), for finite differences."""
    keras.utils.set_random_seed(2)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(12, activation="softplus"),
            keras.layers.Dense(10),
        ],
        name="smooth_net",
    )


@pytest.fixture(scope="session")
def conv_model():
    """A small Conv2D ReLU net on 28×28×1 inputs."""
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ],
        name="conv_net",
    )


@pytest.fixture(scope="session")
def images():
    """Twelve random float32 images in [0, 1] (seeded), shape (12, 28, 28, 1)."""
    return np.random.default_rng(0).random((12, 28, 28, 1), dtype=np.float32)
