"""Tests of understanding_nn.cam: CAM, Grad-CAM, Grad-CAM++ and the localisation table."""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

import understanding_nn as unn
from understanding_nn import cam as cam_module
from understanding_nn.attribution import UnsupportedModelError

METHODS = ["cam", "grad_cam", "grad_cam_plus_plus"]


def gap_net(*, use_bias: bool = False, final_activation: str | None = None, seed: int = 0) -> keras.Model:
    """A small functional CNN whose head is global average pooling then one dense layer."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = keras.layers.MaxPooling2D(2, name="pool1")(h)
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="last_conv")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = keras.layers.Dense(3, use_bias=use_bias, activation=final_activation, name="logits")(h)
    return keras.Model(inputs, outputs, name="gap_net")


def flat_net(seed: int = 1) -> keras.Model:
    """A small Sequential CNN without a GAP head (flatten, dense ReLU, dense logits)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((10, 10, 1)),
            keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="last_conv"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(4, name="logits"),
        ],
        name="flat_net",
    )


@pytest.fixture(scope="module")
def gap_model():
    return gap_net(use_bias=True)


@pytest.fixture(scope="module")
def flat_model():
    return flat_net()


@pytest.fixture(scope="module")
def images12():
    return np.random.default_rng(0).random((7, 12, 12, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def images10():
    return np.random.default_rng(1).random((6, 10, 10, 1), dtype=np.float32)


def _maps_and_gradients(model: keras.Model, layer: str, x: np.ndarray, target: np.ndarray):
    """Feature maps A of ``layer`` and dS_target/dA, computed here independently of the package."""
    layer_index = [lay.name for lay in model.layers].index(layer)
    with tf.GradientTape() as tape:
        a = tf.constant(x)
        for lay in model.layers[: layer_index + 1]:
            a = lay(a)
        maps = a
        for lay in model.layers[layer_index + 1 :]:
            a = lay(a)
        score = tf.gather(a, target, axis=1, batch_dims=1)
    return maps.numpy().astype(np.float64), tape.gradient(score, maps).numpy().astype(np.float64)


# --------------------------------------------------------------------------------------------
# Registration and defining properties
# --------------------------------------------------------------------------------------------


def test_methods_are_registered():
    assert set(METHODS) <= set(unn.methods())
    assert unn.cam.grad_cam is cam_module.grad_cam


@pytest.mark.parametrize("use_bias", [False, True])
def test_grad_cam_equals_cam_divided_by_the_number_of_positions(use_bias, images12):
    model = gap_net(use_bias=use_bias, seed=3)
    target = np.array([0, 1, 2, 0, 1, 2, 2])
    signed_cam = unn.explain(model, images12, "cam", target, relu=False, upsample=False)
    signed_grad_cam = unn.explain(model, images12, "grad_cam", target, relu=False, upsample=False)
    assert signed_cam.shape == (7, 6, 6)
    positions = 6 * 6
    np.testing.assert_allclose(signed_grad_cam * positions, signed_cam, rtol=1e-5, atol=1e-6)
    # The default maps (ReLU, upsampled) scale the same way, and are not trivially zero.
    default_cam = unn.explain(model, images12, "cam", target)
    np.testing.assert_allclose(unn.explain(model, images12, "grad_cam", target) * positions, default_cam,
                               rtol=1e-5, atol=1e-6)
    assert default_cam.max() > 0


def test_cam_has_the_logit_as_its_mean_on_a_bias_free_head(images12):
    model = gap_net(use_bias=False, seed=4)
    logits = unn.attribution.predict_logits(model, images12)
    for c in range(3):
        signed = unn.explain(model, images12, "cam", c, relu=False, upsample=False)
        np.testing.assert_allclose(signed.mean(axis=(1, 2)), logits[:, c], rtol=1e-5, atol=1e-6)


def test_cam_weights_are_the_dense_weights(gap_model, images12):
    kernel = gap_model.get_layer("logits").kernel.numpy()
    target = np.array([2, 0, 1, 1, 0, 2, 0])
    weights = unn.cam.channel_weights(gap_model, images12, target, method="cam")
    np.testing.assert_array_equal(weights, kernel.T[target])
    mean_gradients = unn.cam.channel_weights(gap_model, images12, target, method="grad_cam")
    np.testing.assert_allclose(mean_gradients * 36, weights, rtol=1e-5, atol=1e-7)


def test_grad_cam_weights_match_numpy(flat_model, images10):
    target = np.array([0, 1, 2, 3, 1, 0])
    maps, grads = _maps_and_gradients(flat_model, "last_conv", images10, target)
    expected_weights = grads.mean(axis=(1, 2))
    weights = unn.cam.channel_weights(flat_model, images10, target, method="grad_cam")
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-4, atol=1e-7)
    expected_map = np.maximum(np.einsum("nijk,nk->nij", maps, expected_weights), 0)
    result = unn.explain(flat_model, images10, "grad_cam", target, upsample=False)
    np.testing.assert_allclose(result, expected_map, rtol=1e-4, atol=1e-7)


def test_grad_cam_plus_plus_weights_match_numpy(flat_model, images10):
    target = np.array([3, 2, 1, 0, 0, 1])
    maps, grads = _maps_and_gradients(flat_model, "last_conv", images10, target)
    # The closed form of Chattopadhay et al. for Y = exp(S), written out per pixel with a loop-free
    # NumPy expression; alpha is 0 where the gradient is 0.
    sums = maps.sum(axis=(1, 2), keepdims=True)
    denominator = 2 * grads**2 + sums * grads**3
    alpha = np.zeros_like(grads)
    nonzero = denominator != 0
    alpha[nonzero] = grads[nonzero] ** 2 / denominator[nonzero]
    expected_weights = (alpha * np.maximum(grads, 0)).sum(axis=(1, 2))
    assert (grads > 0).mean() > 0.05 and (grads < 0).mean() > 0.05  # both signs occur
    weights = unn.cam.channel_weights(flat_model, images10, target, method="grad_cam_plus_plus")
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-4, atol=1e-7)
    # The weights differ from Grad-CAM's: the method is not the mean gradient in disguise.
    assert not np.allclose(weights, grads.mean(axis=(1, 2)), rtol=1e-2)
    expected_map = np.maximum(np.einsum("nijk,nk->nij", maps, expected_weights), 0)
    result = unn.explain(flat_model, images10, "grad_cam_plus_plus", target, upsample=False)
    np.testing.assert_allclose(result, expected_map, rtol=1e-4, atol=1e-7)


def test_grad_cam_plus_plus_equals_a_single_pixel_hand_computation():
    # One channel, a bias-free linear score S = sum_ij v_ij A_ij: g = v, and with sum A = s,
    # alpha_ij = 1 / (2 + v_ij s) where v_ij > 0.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2, 2, 1))
    maps = keras.layers.Conv2D(1, 1, use_bias=False, name="maps")(inputs)
    logits = keras.layers.Dense(2, use_bias=False, name="logits")(keras.layers.Flatten()(maps))
    model = keras.Model(inputs, logits)
    model.get_layer("maps").set_weights([np.ones((1, 1, 1, 1), np.float32)])
    v = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
    model.get_layer("logits").set_weights([np.stack([v, -v], axis=1)])
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 2, 2, 1)
    s = 10.0
    expected = sum(max(vi, 0) / (2 + vi * s) for vi in v)
    weight = unn.cam.channel_weights(model, x, 0, method="grad_cam_plus_plus", layer="maps")
    np.testing.assert_allclose(weight, [[expected]], rtol=1e-6)


def test_a_final_softmax_is_ignored(images12):
    plain = gap_net(use_bias=True, seed=5)
    squashed = gap_net(use_bias=True, final_activation="softmax", seed=5)
    for method in METHODS:
        np.testing.assert_allclose(
            unn.explain(squashed, images12, method, 1), unn.explain(plain, images12, method, 1), rtol=1e-5, atol=1e-7
        )


# --------------------------------------------------------------------------------------------
# Shapes, options and batching
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_maps_have_the_input_shape_and_are_non_negative(method, gap_model, images12):
    maps = unn.explain(gap_model, images12, method, 0)
    assert maps.shape == images12.shape
    assert maps.dtype == np.float32
    assert (maps >= 0).all()
    assert maps.max() > 0


def test_without_relu_grad_cam_can_be_negative(flat_model, images10):
    signed = unn.explain(flat_model, images10, "grad_cam", 1, relu=False, upsample=False)
    rectified = unn.explain(flat_model, images10, "grad_cam", 1, upsample=False)
    assert (signed < 0).any()
    np.testing.assert_allclose(rectified, np.maximum(signed, 0), rtol=1e-6, atol=1e-8)


def test_grad_cam_plus_plus_of_relu_maps_is_never_negative(flat_model, images10):
    # Its weights sum alpha * ReLU(gradient) >= 0 and the maps after a ReLU are >= 0, so the final
    # ReLU changes nothing (Grad-CAM's mean gradients can be negative).
    signed = unn.explain(flat_model, images10, "grad_cam_plus_plus", 1, relu=False, upsample=False)
    assert (signed >= 0).all() and signed.max() > 0
    assert (unn.cam.channel_weights(flat_model, images10, 1, method="grad_cam_plus_plus") >= 0).all()
    assert (unn.cam.channel_weights(flat_model, images10, 1, method="grad_cam") < 0).any()


def test_upsampling_is_bilinear_to_the_input_size(gap_model, images12):
    coarse = unn.explain(gap_model, images12, "grad_cam", 2, upsample=False)
    fine = unn.explain(gap_model, images12, "grad_cam", 2)
    assert coarse.shape == (7, 6, 6) and fine.shape == (7, 12, 12, 1)
    expected = tf.image.resize(coarse[..., None], (12, 12), method="bilinear").numpy()
    np.testing.assert_allclose(fine, expected, rtol=1e-5, atol=1e-8)
    # Interpolation stays within the coarse map's range.
    assert (fine.max(axis=(1, 2, 3)) <= coarse.max(axis=(1, 2)) + 1e-7).all()
    assert (fine.min(axis=(1, 2, 3)) >= coarse.min(axis=(1, 2)) - 1e-7).all()


def test_colour_images_share_the_map_among_channels():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2),
    ])
    x = np.random.default_rng(2).random((2, 8, 8, 3), dtype=np.float32)
    maps = unn.explain(model, x, "grad_cam", 0)
    assert maps.shape == x.shape
    np.testing.assert_allclose(maps[..., 0], maps[..., 2])
    coarse = unn.explain(model, x, "grad_cam", 0, upsample=False)
    np.testing.assert_allclose(maps.sum(axis=-1), coarse, rtol=1e-5, atol=1e-7)  # 8 × 8: no resizing needed


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_per_sample(method, gap_model, images12):
    target = np.array([0, 2, 1, 1, 2, 0, 1])
    batched = unn.explain(gap_model, images12, method, target, batch_size=3)
    single = np.concatenate(
        [unn.explain(gap_model, images12[i : i + 1], method, int(target[i])) for i in range(len(target))]
    )
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-7)


def test_default_target_is_the_predicted_class(flat_model, images10):
    predicted = unn.attribution.predict_logits(flat_model, images10).argmax(axis=1)
    np.testing.assert_allclose(
        unn.explain(flat_model, images10, "grad_cam_plus_plus"),
        unn.explain(flat_model, images10, "grad_cam_plus_plus", predicted),
    )


def test_grad_cam_at_another_layer(flat_model, images10):
    early = unn.explain(flat_model, images10, "grad_cam", 0, layer="conv1", upsample=False, relu=False)
    maps, grads = _maps_and_gradients(flat_model, "conv1", images10, np.zeros(6, dtype=np.int32))
    np.testing.assert_allclose(early, np.einsum("nijk,nk->nij", maps, grads.mean(axis=(1, 2))), rtol=1e-4, atol=1e-7)
    assert unn.cam.map_layers(flat_model) == ["conv1", "last_conv", "pool"]


def test_the_default_layer_is_the_last_convolution(flat_model, images10):
    np.testing.assert_array_equal(
        unn.explain(flat_model, images10, "grad_cam", 1), unn.explain(flat_model, images10, "grad_cam", 1, layer="last_conv")
    )


# --------------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_an_unknown_layer_name_lists_the_layers(method, gap_model, images12):
    with pytest.raises(ValueError, match=r"no layer named 'conv9'.*conv1, pool1, last_conv"):
        unn.explain(gap_model, images12, method, 0, layer="conv9")


def test_a_layer_without_feature_maps_is_refused(flat_model, images10):
    with pytest.raises(ValueError, match=r"layer 'hidden' outputs shape \(None, 16\), not feature maps"):
        unn.explain(flat_model, images10, "grad_cam", 0, layer="hidden")


def test_cam_refuses_a_model_without_a_gap_head(flat_model, images10):
    with pytest.raises(UnsupportedModelError, match=r"global average pooling followed by one linear Dense.*'flat_net'"):
        unn.explain(flat_model, images10, "cam", 0)


def test_cam_refuses_a_nonlinear_head(images12):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
        keras.layers.Activation("relu"),
    ])
    with pytest.raises(UnsupportedModelError, match="linear Dense layer"):
        unn.explain(model, images12, "cam", 0)
    assert unn.explain(model, images12, "grad_cam", 0).shape == images12.shape


def test_cam_refuses_a_layer_other_than_the_pooled_one(gap_model, images12):
    with pytest.raises(ValueError, match=r"enter the global average pooling.*'last_conv'.*layer='conv1'"):
        unn.explain(gap_model, images12, "cam", 0, layer="conv1")


def test_a_model_without_convolutions_is_refused(make_dense_net):
    model = make_dense_net(hidden=(8,), input_shape=(6, 6, 1))
    x = np.zeros((2, 6, 6, 1), np.float32)
    with pytest.raises(UnsupportedModelError, match="no 2-D convolution"):
        unn.explain(model, x, "grad_cam", 0)
    flat_input = make_dense_net(hidden=(8,), input_shape=(36,))
    with pytest.raises(UnsupportedModelError, match="need image inputs"):
        unn.explain(flat_input, np.zeros((2, 36), np.float32), "grad_cam", 0)


def test_flags_must_be_booleans(gap_model, images12):
    with pytest.raises(TypeError, match="upsample must be True or False"):
        unn.explain(gap_model, images12, "grad_cam", 0, upsample="yes")
    with pytest.raises(TypeError, match="relu must be True or False"):
        unn.explain(gap_model, images12, "cam", 0, relu=1)
    with pytest.raises(ValueError, match="method must be one of"):
        unn.cam.channel_weights(gap_model, images12, 0, method="gradient")


def test_bad_input_is_refused(gap_model):
    with pytest.raises(ValueError, match="expects inputs of shape"):
        unn.explain(gap_model, np.zeros((2, 10, 10, 1), np.float32), "grad_cam", 0)
    with pytest.raises(ValueError, match="out of range"):
        unn.explain(gap_model, np.zeros((2, 12, 12, 1), np.float32), "cam", 5)


# --------------------------------------------------------------------------------------------
# Localisation table
# --------------------------------------------------------------------------------------------


def test_localisation_table_rows():
    canvases = unn.data.cluttered_mnist(6, size=60, digits_per_canvas=2, split="test",
                                        classes=np.array([[1, 1], [2, 3]] * 3), seed=0)
    keras.utils.set_random_seed(0)
    model = unn.models.gap_cnn(input_shape=(60, 60, 1), name="untrained_gap")
    rows = unn.cam.localisation_table(
        {"CAM": (model, "cam", {}), "gradient": (model, "gradient", {"absolute": True})}, canvases
    )
    assert [row["method"] for row in rows] == ["uniform map (box area / canvas area)", "CAM", "gradient"]
    # The baseline is the area of the target class's boxes (both digits where the classes agree).
    select = canvases.labels == canvases.labels[:, :1]
    area = unn.metrics.box_mask(canvases.boxes, (60, 60), select).mean()
    assert rows[0]["mass_in_box"] == pytest.approx(area)
    assert select[0].all() and not select[1].all()
    for row in rows:
        assert 0.0 <= row["mass_in_box"] <= 1.0 and 0.0 <= row["pointing_hit_rate"] <= 1.0
        assert row["n_canvases"] == 6
    target = canvases.labels[:, 0]
    maps = unn.explain(model, canvases.images, "cam", target)
    assert rows[1]["mass_in_box"] == pytest.approx(
        unn.metrics.positive_mass_in_boxes(maps, canvases.boxes, select).mean()
    )


def test_localisation_table_refuses_bad_runs():
    canvases = unn.data.cluttered_mnist(2, seed=0)
    with pytest.raises(TypeError, match="must be a tuple"):
        unn.cam.localisation_table({"x": "cam"}, canvases)
    with pytest.raises(TypeError, match="must be a ClutteredMNIST"):
        unn.cam.localisation_table({}, canvases.images)


def test_feature_maps_are_the_layer_outputs(flat_model, images10):
    maps, _ = _maps_and_gradients(flat_model, "conv1", images10, np.zeros(6, dtype=np.int32))
    np.testing.assert_allclose(unn.cam.feature_maps(flat_model, images10, layer="conv1", batch_size=4), maps,
                               rtol=1e-5, atol=1e-7)
    assert unn.cam.feature_maps(flat_model, images10).shape == (6, 10, 10, 5)  # last_conv by default
    with pytest.raises(ValueError, match="no layer named"):
        unn.cam.feature_maps(flat_model, images10, layer="conv7")


def test_compiled_functions_do_not_keep_the_model_alive(images12):
    model = gap_net(use_bias=True, final_activation="softmax", seed=9)
    for method in METHODS:
        unn.explain(model, images12[:2], method, None)
        unn.cam.channel_weights(model, images12[:2], 0, method=method)
    unn.cam.feature_maps(model, images12[:2])
    reference = weakref.ref(model)
    del model
    gc.collect()
    assert reference() is None


def test_methods_constant_lists_this_modules_methods():
    assert unn.cam.METHODS == tuple(METHODS)


def _gap_net(data_format, seed=40):
    keras.utils.set_random_seed(seed)
    shape = (1, 12, 12) if data_format == "channels_first" else (12, 12, 1)
    return keras.Sequential([
        keras.Input(shape), keras.layers.Conv2D(4, 3, activation="relu", data_format=data_format),
        keras.layers.Conv2D(5, 3, activation="relu", data_format=data_format, name="maps"),
        keras.layers.GlobalAveragePooling2D(data_format=data_format), keras.layers.Dense(3, activation="softmax"),
    ])


@pytest.mark.parametrize("method", ["cam", "grad_cam", "grad_cam_plus_plus"])
def test_channels_first_models_get_the_same_maps_in_their_own_layout(method):
    """A channels-first network with the weights of a channels-last one explains the transposed
    digits with the transposed maps."""
    last, first = _gap_net("channels_last"), _gap_net("channels_first")
    first.set_weights(last.get_weights())
    x = np.random.default_rng(41).uniform(0, 1, size=(4, 12, 12, 1)).astype(np.float32)
    x_first = x.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(first(x_first).numpy(), last(x).numpy(), rtol=1e-5, atol=1e-6)
    expected = unn.explain(last, x, method, target=[0, 1, 2, 0])
    ours = unn.explain(first, x_first, method, target=[0, 1, 2, 0])
    assert ours.shape == x_first.shape
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(ours, expected.transpose(0, 3, 1, 2), rtol=1e-4, atol=1e-6)
    small = unn.explain(first, x_first, method, target=0, upsample=False)
    np.testing.assert_allclose(small, unn.explain(last, x, method, target=0, upsample=False), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["cam", "grad_cam"])
def test_maps_of_a_nested_model(method):
    """keras.Model(inputs, net(inputs)) with a softmax inside net: the same maps as net itself."""
    net = _gap_net("channels_last", seed=42)
    inputs = keras.Input((12, 12, 1))
    wrapped = keras.Model(inputs, net(inputs))
    x = np.random.default_rng(43).uniform(0, 1, size=(3, 12, 12, 1)).astype(np.float32)
    np.testing.assert_allclose(unn.explain(wrapped, x, method, target=1), unn.explain(net, x, method, target=1), rtol=1e-6)
    assert f"{net.name}/maps" in unn.cam.map_layers(wrapped)
    np.testing.assert_allclose(
        unn.explain(wrapped, x, "grad_cam", target=1, layer=f"{net.name}/maps"), unn.explain(net, x, "grad_cam", target=1, layer="maps"), rtol=1e-6
    )
