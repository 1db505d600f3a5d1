"""Tests of understanding_nn.models: the zoo, deterministic training, and the weight cache."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from understanding_nn import data, models
from understanding_nn.models import TrainingConfig

ZOO = [
    "mlp",
    "mlp_4x512",
    "mlp_4x512_nobias",
    "cnn",
    "cnn_nobias",
    "cnn_avgpool",
    "cnn_avgpool_nobias",
    "cnn_batchnorm",
    "cnn_stride2",
    "allconv",
    "cnn_gap",
    "cnn_marked",
    "cnn_marked_fixed",
    "resnet",
    "branching",
    "gap_cnn",
    "cnn_cluttered",
]
# Part I's density experts and generator: zoo models that are not classifiers.
NOT_CLASSIFIERS = ["rbm", "pca_gaussian_5", "pca_gaussian_600", "vae"]

# The Part IV models, trained on 40×40 cluttered-MNIST canvases.
CLUTTERED = ("gap_cnn", "cnn_cluttered")


def _same_weights(a: keras.Model, b: keras.Model) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(wa, wb))


# --------------------------------------------------------------------------------------------
# The zoo's architectures
# --------------------------------------------------------------------------------------------


def test_available_lists_the_zoo():
    names = models.available()
    assert names == ZOO + NOT_CLASSIFIERS
    assert all(models.entry(name).accuracy_floor is None for name in NOT_CLASSIFIERS)
    assert all(isinstance(name, str) for name in names)


@pytest.mark.parametrize("name", ZOO)
def test_build_gives_an_untrained_model_with_ten_logits(name):
    model = models.build(name)
    assert isinstance(model, keras.Model)
    assert model.name == name
    assert model.output_shape == (None, 10)
    side = 40 if name in CLUTTERED else 28
    assert model.input_shape == (None, side, side, 1)
    x = np.random.default_rng(0).random((3, side, side, 1), dtype=np.float32)
    assert model.predict(x, verbose=0).shape == (3, 10)
    # Logits, not probabilities: the zoo has no softmax layer.
    assert getattr(model.layers[-1], "activation", keras.activations.linear).__name__ == "linear"


@pytest.mark.parametrize("name", ["mlp", "mlp_4x512_nobias", "cnn", "gap_cnn"])
def test_build_is_seeded(name):
    first = models.build(name)
    keras.utils.set_random_seed(1234)  # whatever happened to the global seeds in between
    np.random.default_rng().random(10)
    second = models.build(name)
    assert _same_weights(first, second)


def test_bias_free_entries_have_no_bias():
    for name in ("mlp_4x512_nobias", "cnn_nobias", "cnn_avgpool_nobias"):
        model = models.build(name)
        assert all(not getattr(layer, "use_bias", False) for layer in model.layers)
        assert all(weight.ndim > 1 for weight in model.get_weights())
    assert any(weight.ndim == 1 for weight in models.build("cnn").get_weights())


def test_entries_sharing_an_architecture_differ_in_their_arguments():
    max_pool = [type(layer).__name__ for layer in models.build("cnn_nobias").layers]
    avg_pool = [type(layer).__name__ for layer in models.build("cnn_avgpool_nobias").layers]
    assert "MaxPooling2D" in max_pool and "AveragePooling2D" not in max_pool
    assert "AveragePooling2D" in avg_pool and "MaxPooling2D" not in avg_pool
    assert any(type(layer).__name__ == "Dropout" for layer in models.build("cnn").layers)


def test_entry_describes_the_zoo_model():
    zoo_entry = models.entry("gap_cnn")
    assert isinstance(zoo_entry, models.ZooEntry)
    assert zoo_entry.name == "gap_cnn"
    assert zoo_entry.training.dataset == "cluttered_mnist"
    assert 0.0 < zoo_entry.accuracy_floor < 1.0
    assert models.entry("cnn_nobias").kwargs == {"pooling": "max", "use_bias": False}
    assert all(models.entry(name).training.dataset == "cluttered_mnist" for name in CLUTTERED)
    assert all(models.entry(name).training.dataset == "mnist" for name in ZOO if name not in CLUTTERED)


def test_each_zoo_entry_has_a_trainer_whose_code_is_in_the_cache_key(monkeypatch):
    zoo_entry = models.entry("mlp")
    assert zoo_entry.trainer is models.fit_classifier
    before = models._cache_key(zoo_entry, zoo_entry.training)
    # A change to the code the trainer depends on must change the key (no stale weights).
    monkeypatch.setattr(models.fit_classifier, "depends_on", (models.evaluate,))
    assert models._cache_key(zoo_entry, zoo_entry.training) != before


def test_conv_net_refuses_an_unknown_pooling():
    with pytest.raises(ValueError, match="pooling must be 'max' or 'avg', got 'sum'"):
        models.conv_net(pooling="sum")


@pytest.mark.parametrize("call", [models.entry, models.build, models.load, models.info, models.train], ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", ["resnet50", "MLP", 3])
def test_unknown_name_lists_the_zoo(call, name):
    with pytest.raises(ValueError, match=rf"unknown zoo model {name!r}; available: mlp, mlp_4x512, .*gap_cnn"):
        call(name)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_epoch_mlp():
    return models.train("mlp", TrainingConfig(epochs=1))


def test_training_is_deterministic(one_epoch_mlp):
    model, card = one_epoch_mlp
    again, card_again = models.train("mlp", TrainingConfig(epochs=1))
    assert _same_weights(model, again)
    assert card_again["test_accuracy"] == card["test_accuracy"]


def test_training_learns_and_reports_a_card(one_epoch_mlp):
    model, card = one_epoch_mlp
    assert not _same_weights(model, models.build("mlp"))
    assert card["name"] == "mlp"
    assert card["training"]["epochs"] == 1
    assert card["n_test"] == 1000
    x_test, y_test = data.load_mnist("test")
    assert card["test_accuracy"] == models.evaluate(model, x_test, y_test)
    assert card["test_accuracy"] > 0.8  # one epoch of Adam on 4,000 digits
    json.dumps(card)  # the card is JSON-serialisable


def test_training_seed_changes_the_weights(one_epoch_mlp):
    other, _ = models.train("mlp", TrainingConfig(epochs=1, seed=1))
    assert not _same_weights(one_epoch_mlp[0], other)


def test_training_refuses_an_unknown_dataset():
    with pytest.raises(ValueError, match="unknown training dataset 'cifar'"):
        models.train("mlp", TrainingConfig(epochs=1, dataset="cifar"))


def test_evaluate(relu_model, mnist_test):
    x, y = mnist_test
    predictions = relu_model.predict(x[:50], verbose=0).argmax(axis=1)
    assert models.evaluate(relu_model, x[:50], y[:50]) == pytest.approx(float((predictions == y[:50]).mean()))
    assert models.evaluate(relu_model, x[:50], predictions) == 1.0
    with pytest.raises(ValueError, match=r"y has shape \(50, 10\), expected one label per image, shape \(50,\)"):
        models.evaluate(relu_model, x[:50], np.eye(10)[y[:50]])


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UNDERSTANDING_NN_CACHE", str(tmp_path / "zoo"))
    assert models.cache_dir() == tmp_path / "zoo"
    monkeypatch.delenv("UNDERSTANDING_NN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "understanding_nn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "understanding_nn"


@pytest.fixture
def counted_training(monkeypatch, tmp_path):
    """An empty cache in tmp_path, and a one-epoch ``train`` that counts its calls."""
    monkeypatch.setenv("UNDERSTANDING_NN_CACHE", str(tmp_path))
    real_train = models.train
    calls: list[str] = []

    def one_epoch_train(name, training=None):
        calls.append(name)
        return real_train(name, TrainingConfig(epochs=1))

    monkeypatch.setattr(models, "train", one_epoch_train)
    return calls


def test_load_trains_once_then_reads_the_cache(counted_training, tmp_path):
    first = models.load("mlp")
    assert counted_training == ["mlp"]
    files = sorted(path.name for path in tmp_path.iterdir())
    key = models._cache_key(models.entry("mlp"), models.entry("mlp").training)
    assert files == [f"mlp-{key}.json", f"mlp-{key}.weights.h5"]
    # Keras's HDF5 weights format and a JSON card: nothing else, nothing pickled.
    assert not [path for path in tmp_path.rglob("*") if path.suffix in {".pkl", ".pickle", ".keras", ".npy", ".npz"}]
    assert (tmp_path / f"mlp-{key}.weights.h5").read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    card = json.loads((tmp_path / f"mlp-{key}.json").read_text())
    assert card["name"] == "mlp" and 0.0 < card["test_accuracy"] <= 1.0

    second = models.load("mlp")
    assert counted_training == ["mlp"]  # read back, not trained again
    assert second is not first
    assert _same_weights(first, second)
    x = data.load_mnist("test")[0][:20]
    np.testing.assert_array_equal(first.predict(x, verbose=0), second.predict(x, verbose=0))

    info = models.info("mlp")
    assert counted_training == ["mlp"]
    assert info == card
    assert isinstance(info["test_accuracy"], float)


def test_info_trains_if_needed(counted_training, tmp_path):
    info = models.info("mlp")
    assert counted_training == ["mlp"]
    assert 0.0 < info["test_accuracy"] <= 1.0
    assert len(list(tmp_path.glob("mlp-*.weights.h5"))) == 1


def test_load_retrains_when_the_card_is_missing(counted_training, tmp_path):
    models.load("mlp")
    (card,) = tmp_path.glob("mlp-*.json")
    card.unlink()
    models.load("mlp")
    assert counted_training == ["mlp", "mlp"]
    assert len(list(tmp_path.glob("mlp-*.json"))) == 1


def test_cache_key_tracks_the_recipe():
    entry = models.entry("mlp")
    key = models._cache_key(entry, entry.training)
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    assert models._cache_key(entry, TrainingConfig()) == key  # the same recipe, the same key
    changed = {
        models._cache_key(entry, TrainingConfig(epochs=1)),
        models._cache_key(entry, TrainingConfig(seed=1)),
        models._cache_key(entry, TrainingConfig(learning_rate=1e-4)),
        models._cache_key(entry, TrainingConfig(batch_size=32)),
        models._cache_key(entry, TrainingConfig(dataset="cluttered_mnist")),
    }
    assert key not in changed and len(changed) == 5
    # Same builder, other arguments: other keys.
    keys = {models._cache_key(models.entry(name), models.entry(name).training) for name in ZOO + NOT_CLASSIFIERS}
    assert len(keys) == len(ZOO + NOT_CLASSIFIERS)


def test_cache_paths_are_named_after_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("UNDERSTANDING_NN_CACHE", str(tmp_path))
    weights, card = models._paths("cnn")
    assert weights.parent == card.parent == Path(tmp_path)
    assert weights.name.startswith("cnn-") and weights.name.endswith(".weights.h5")
    assert card.name == weights.name.replace(".weights.h5", ".json")


# --------------------------------------------------------------------------------------------
# Accuracy of the trained zoo (slow: trains into the user cache on first run)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in ZOO if models.entry(name).accuracy_floor is not None])
def test_zoo_classifier_reaches_its_accuracy_floor(name):
    entry = models.entry(name)
    model = models.load(name)
    x_test, y_test = models._training_data(entry.training)[1]
    if name in CLUTTERED:
        assert x_test.shape[1:] == (40, 40, 1)
    else:
        assert len(x_test) == 1000
    accuracy = models.evaluate(model, x_test, y_test)
    assert accuracy >= entry.accuracy_floor, f"{name}: test accuracy {accuracy:.4f} < floor {entry.accuracy_floor}"


# --------------------------------------------------------------------------------------------
# Planted cues and the right-for-the-right-reasons penalty (chapter 6.1)
# --------------------------------------------------------------------------------------------


def test_a_cue_is_planted_in_the_training_digits_only():
    mark = data.Mark(digits=7, fraction=0.5)
    (x_train, y_train), (x_test, y_test) = models._training_data(TrainingConfig(cue=mark))
    cued = data.marked_mnist("train", mark)
    np.testing.assert_array_equal(x_train, cued.images)
    np.testing.assert_array_equal(y_train, cued.labels)
    clean_x, clean_y = data.load_mnist("test")
    np.testing.assert_array_equal(x_test, clean_x)
    np.testing.assert_array_equal(y_test, clean_y)
    with pytest.raises(ValueError, match="a cue can be planted in the 'mnist' dataset only, not in 'cluttered_mnist'"):
        models._training_data(TrainingConfig(dataset="cluttered_mnist", cue=mark))


def test_the_clever_hans_entries_are_the_twin_of_cnn_but_for_the_cue_and_the_penalty():
    twin, marked, fixed = (models.entry(name) for name in ("cnn", "cnn_marked", "cnn_marked_fixed"))
    assert twin.builder is marked.builder is fixed.builder and twin.kwargs == marked.kwargs == fixed.kwargs
    assert marked.training == TrainingConfig(cue=models.CLEVER_HANS_MARK) and twin.training == TrainingConfig()
    assert fixed.training.cue == models.CLEVER_HANS_MARK and isinstance(fixed.training.penalty, models.RightReasons)
    keys = {models._cache_key(e, e.training) for e in (twin, marked, fixed)}
    assert len(keys) == 3
    assert models._cache_key(marked, TrainingConfig(cue=data.Mark(digits=7, fraction=0.5))) not in keys


def _linear_model(kernel: np.ndarray) -> keras.Model:
    model = keras.Sequential([keras.Input((kernel.shape[0],)), keras.layers.Dense(kernel.shape[1])])
    model.set_weights([kernel.astype(np.float32), np.zeros(kernel.shape[1], np.float32)])
    return model


def test_right_reasons_penalty_is_the_squared_input_gradient_of_the_log_likelihoods_in_the_region():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((6, 4))
    x = rng.random((5, 6)).astype(np.float32)
    region = np.array([0, 0, 1, 1, 0, 0], np.float32)
    penalty, logits = models.right_reasons_penalty(_linear_model(kernel), x, region)
    # For S = xW, the gradient of Σ_k log p_k is Σ_k w_k − K·W p (K classes, p the softmax).
    scores = x @ kernel
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    gradient = kernel.sum(axis=1)[None, :] - kernel.shape[1] * p @ kernel.T
    expected = ((gradient * region) ** 2).sum(axis=1).mean()
    assert float(penalty) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(np.asarray(logits), scores, rtol=1e-5, atol=1e-6)


def test_right_reasons_penalty_is_zero_when_the_region_has_no_gradient_and_grows_with_it():
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((6, 4))
    x = rng.random((5, 6)).astype(np.float32)
    region = np.array([1, 1, 0, 0, 0, 0], np.float32)
    blind = kernel.copy()
    blind[:2] = 0.0
    assert float(models.right_reasons_penalty(_linear_model(blind), x, region)[0]) == 0.0
    penalties = []
    for scale in (0.5, 1.0, 2.0):
        seeing = blind.copy()
        seeing[:2] = scale * kernel[:2]
        penalties.append(float(models.right_reasons_penalty(_linear_model(seeing), x, region)[0]))
    assert 0.0 < penalties[0] < penalties[1] < penalties[2]


def test_the_penalty_refuses_a_region_outside_the_image_or_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"box \(20, 20, 30, 30\) .* is not a non-empty box inside the 28×28 image"):
        models.train("mlp", TrainingConfig(epochs=1, penalty=models.RightReasons(box=(20, 20, 30, 30))))
    x = np.zeros((2, 6), np.float32)
    with pytest.raises(ValueError, match=r"region has shape \(5,\), which does not broadcast against the inputs' shape \(2, 6\)"):
        models.right_reasons_penalty(_linear_model(np.ones((6, 3))), x, np.ones(5, np.float32))


def test_training_with_the_penalty_makes_the_model_insensitive_inside_the_region():
    mark = data.Mark(digits=7, fraction=1.0)
    corner = models.RightReasons(box=(0, 0, 5, 5), weight=10.0)
    plain, _ = models.train("mlp", TrainingConfig(epochs=1, cue=mark))
    corrected, card = models.train("mlp", TrainingConfig(epochs=1, cue=mark, penalty=corner))
    x = data.marked_mnist("test", data.Mark(digits="all")).images[:200]
    region = corner.region((28, 28, 1))
    assert region.shape == (1, 28, 28, 1) and region.sum() == 25 and region[0, :5, :5].all()
    before = float(models.right_reasons_penalty(plain, x, region)[0])
    after = float(models.right_reasons_penalty(corrected, x, region)[0])
    assert after < 0.01 * before
    assert card["training"]["penalty"] == {"box": (0, 0, 5, 5), "weight": 10.0}
    assert card["test_accuracy"] > 0.8


def test_load_caches_a_model_trained_with_other_settings_under_its_own_key(counted_training, tmp_path):
    other = TrainingConfig(epochs=2)
    models.load("mlp", training=other)
    models.load("mlp", training=other)
    assert counted_training == ["mlp"]
    key = models._cache_key(models.entry("mlp"), other)
    assert (tmp_path / f"mlp-{key}.weights.h5").exists()
    assert models.info("mlp", training=other)["name"] == "mlp"
    models.load("mlp")
    assert counted_training == ["mlp", "mlp"]  # the entry's own settings are another model
    with pytest.raises(TypeError, match="zoo model 'mlp' is trained with a TrainingConfig, got a RightReasons"):
        models.load("mlp", training=models.RightReasons())
