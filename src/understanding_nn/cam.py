"""Class activation maps: CAM, Grad-CAM and Grad-CAM++.

Part IV of the book: chapter 4.1 (CAM, Zhou et al. 2016, *Learning deep features for
discriminative localization*), 4.2 (Grad-CAM, Selvaraju et al. 2017, *Grad-CAM: visual
explanations from deep networks via gradient-based localization*) and 4.3 (Grad-CAM++,
Chattopadhay et al. 2018, *Grad-CAM++: generalized gradient-based visual explanations for deep
convolutional networks*).

The three methods explain a decision with the feature maps :math:`A^k \\in \\mathbb R^{h \\times w}`
(:math:`k = 1, \\dots, K`) of one convolutional layer, by default the last. Each gives every
channel a weight for the target class :math:`c` and sums the weighted maps,

.. math:: L^c = \\mathrm{ReLU}\\Bigl(\\sum_{k=1}^{K} w^c_k A^k\\Bigr),

and the methods differ only in the weights :math:`w^c_k`: the weights of the dense layer after a
global average pooling (CAM), the mean gradient of the logit over the positions (Grad-CAM), or
a positively weighted sum of the gradients (Grad-CAM++). The map has the layer's resolution
:math:`h \\times w`; it is then resized bilinearly to the input's, so that it can be compared
with every other attribution method and drawn over the input.

All three are registered for :func:`understanding_nn.explain` (``"cam"``, ``"grad_cam"`` and
``"grad_cam_plus_plus"``) with the parameters ``layer``, ``upsample`` and ``relu``.
:func:`channel_weights` returns the weights :math:`w^c_k` themselves, :func:`feature_maps` the
maps :math:`A^k`, and
:func:`localisation_table` measures how well maps of any method point at the digits of
cluttered-MNIST canvases (:func:`understanding_nn.data.cluttered_mnist`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .propagation import Graph, trace
from .attribution import (
    DEFAULT_BATCH_SIZE,
    Target,
    UnsupportedModelError,
    compile_batch_function,
    compiled,
    explain,
    register,
    run_batched,
    validate_input,
    validate_model,
)

__all__ = [
    "METHODS",
    "cam",
    "channel_weights",
    "feature_maps",
    "grad_cam",
    "grad_cam_plus_plus",
    "localisation_table",
    "map_layers",
]

# The registered names of this module's methods: they need image inputs and a convolutional layer.
METHODS = ("cam", "grad_cam", "grad_cam_plus_plus")
_SQUASHING = ("softmax", "sigmoid")


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def map_layers(model: keras.Model) -> list[str]:
    """Names of the layers of ``model`` whose output is a stack of feature maps, shape
    ``(batch, height, width, channels)``: the layers a class activation map can be computed at."""
    validate_model(model)
    return [layer.name for layer in _layers(model) if len(layer.output.shape) == 4]


def _feature_layer(model: keras.Model, layer: str | None) -> keras.layers.Layer:
    """The layer named ``layer``, or the last Conv2D layer of ``model`` if ``layer`` is None."""
    validate_model(model)
    if len(model.inputs[0].shape) != 4:
        raise UnsupportedModelError(
            f"model {model.name!r} takes inputs of shape {tuple(model.inputs[0].shape)}; class activation "
            "maps need image inputs, shape (batch, height, width, channels)"
        )
    candidates = map_layers(model)
    if layer is None:
        convolutions = [lay for lay in _layers(model) if isinstance(lay, keras.layers.Conv2D)]
        if not convolutions:
            raise UnsupportedModelError(
                f"model {model.name!r} has no Conv2D layer to take the default feature maps from; "
                f"name a layer with the argument layer (layers with feature maps: {', '.join(candidates) or 'none'})"
            )
        return convolutions[-1]
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name (str) or None, got {type(layer).__name__}")
    names = [lay.name for lay in _layers(model)]
    if layer not in names:
        raise ValueError(
            f"model {model.name!r} has no layer named {layer!r}; its layers with feature maps are: "
            f"{', '.join(candidates) or 'none'} (all layers: {', '.join(names)})"
        )
    chosen = model.get_layer(layer)
    if layer not in candidates:
        raise ValueError(
            f"layer {layer!r} outputs shape {tuple(chosen.output.shape)}, not feature maps "
            f"(batch, height, width, channels); layers with feature maps: {', '.join(candidates) or 'none'}"
        )
    return chosen


def _maps_and_logits(model: keras.Model, layer: keras.layers.Layer) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """A function ``x -> (A, S(x))``: the feature maps of ``layer`` and the logits, from one
    forward pass in inference mode, so that gradients of the logits with respect to ``A`` exist.

    As in :func:`understanding_nn.attribution.logit_function`, a final softmax or sigmoid (a
    separate layer, or the activation of the last Dense layer) is left out.
    """
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    squashing = getattr(activation, "__name__", None) in _SQUASHING
    separate = isinstance(last, keras.layers.Softmax) or (isinstance(last, keras.layers.Activation) and squashing)
    if separate or squashing:
        if squashing and not separate and not isinstance(last, keras.layers.Dense):
            raise UnsupportedModelError(
                f"the last layer {last.name!r} ({type(last).__name__}) applies a {activation.__name__}; "
                "only a Dense layer's or a separate activation layer's squashing can be removed"
            )
        joint = keras.Model(model.inputs, [layer.output, last.input])
    else:
        joint = keras.Model(model.inputs, [layer.output, model.outputs[0]])

    def maps_and_logits(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        maps, scores = joint(x, training=False)
        if squashing and not separate:
            scores = tf.matmul(scores, last.kernel)
            if last.use_bias:
                scores = scores + last.bias
        return maps, scores

    return maps_and_logits


def _gap_head(model: keras.Model, layer: str | None) -> tuple[keras.layers.Layer, keras.layers.Dense]:
    """The layer whose maps enter the global average pooling, and the dense layer after it;
    refuses a model whose head is not global average pooling followed by one dense layer."""
    layers = _layers(model)
    head = [lay for lay in layers if not isinstance(lay, keras.layers.Dropout)]
    names = ", ".join(f"{lay.name} ({type(lay).__name__})" for lay in head[-3:])
    def squashing(lay: keras.layers.Layer) -> bool:
        return getattr(getattr(lay, "activation", None), "__name__", None) in _SQUASHING

    tail = head[-1]
    # A final softmax or sigmoid is left out, as everywhere (the map explains the logit).
    if isinstance(tail, keras.layers.Softmax) or (isinstance(tail, keras.layers.Activation) and squashing(tail)):
        head = head[:-1]
    if (
        len(head) < 3
        or type(head[-2]) is not keras.layers.GlobalAveragePooling2D
        or head[-2].keepdims
        or type(head[-1]) is not keras.layers.Dense
        or not (squashing(head[-1]) or head[-1].activation.__name__ == "linear")
    ):
        raise UnsupportedModelError(
            f"cam needs a network that ends in global average pooling followed by one linear Dense layer "
            f"(Zhou et al. 2016); model {model.name!r} ends in {names}. "
            "Use grad_cam, which works with any head"
        )
    pooling, dense = head[-2], head[-1]
    features = layers[layers.index(pooling) - 1]
    if layer is not None:
        chosen = _feature_layer(model, layer)
        if chosen is not features:
            raise ValueError(
                f"cam is defined on the feature maps that enter the global average pooling, the output "
                f"of layer {features.name!r}; got layer={layer!r} (use grad_cam for other layers)"
            )
    return features, dense


# --------------------------------------------------------------------------------------------
# The three maps
# --------------------------------------------------------------------------------------------


def _check_flags(upsample: Any, relu: Any) -> None:
    for name, value in (("upsample", upsample), ("relu", relu)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}")


def _finish(
    weighted: tf.Tensor, x: tf.Tensor, *, upsample: bool, relu: bool
) -> tf.Tensor:
    """From the weighted sum :math:`\\sum_k w_k A^k` (batch, h, w) to the returned map."""
    if relu:
        weighted = tf.nn.relu(weighted)
    if not upsample:
        return weighted
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    resized = tf.image.resize(weighted[..., None], (height, width), method="bilinear")
    # Relevance is additive over channels (the plots sum them), so a colour image shares the
    # map evenly among its channels.
    return tf.tile(resized / channels, [1, 1, 1, channels])


def _target_gradient(graph: Graph, maps_and_logits: Callable, x: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Feature maps :math:`A` and :math:`\\partial S_c / \\partial A`, for every sample's target."""
    with tf.GradientTape() as tape:
        maps, logits = maps_and_logits(x)
        score = graph.target_score(logits, target)
    return maps, tape.gradient(score, maps)


def _grad_cam_plus_plus_weights(maps: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    """Grad-CAM++ channel weights (batch, K), divided by the positive factor :math:`e^{S_c}`."""
    sums = tf.reduce_sum(maps, axis=(1, 2), keepdims=True)
    numerator = tf.square(grads)
    denominator = 2.0 * numerator + sums * grads**3
    # alpha is 0/0 where the gradient vanishes; ReLU(gradient) is 0 there, so any value would do.
    alpha = tf.math.divide_no_nan(numerator, denominator)
    return tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2))


def _batch_function(model: keras.Model, method: str, layer: str | None, *, upsample: bool, relu: bool,
                    weights_only: bool = False) -> Any:
    """The compiled per-batch function of one method at one layer (built once per model)."""
    if method == "cam":
        features, dense = _gap_head(model, layer)
    else:
        features = _feature_layer(model, layer)

    def build() -> Any:
        if method == "cam":
            body = keras.Model(model.inputs, features.output)

            def batch(x: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
                maps = body(x, training=False)
                weights = tf.gather(tf.transpose(dense.kernel), target)
                if weights_only:
                    return weights
                return _finish(tf.einsum("bhwk,bk->bhw", maps, weights), x, upsample=upsample, relu=relu)

        else:
            maps_and_logits = _maps_and_logits(model, features)
            graph = trace(model)

            def batch(x: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
                maps, grads = _target_gradient(graph, maps_and_logits, x, target)
                if method == "grad_cam":
                    weights = tf.reduce_mean(grads, axis=(1, 2))
                else:
                    weights = _grad_cam_plus_plus_weights(maps, grads)
                if weights_only:
                    return weights
                return _finish(tf.einsum("bhwk,bk->bhw", maps, weights), x, upsample=upsample, relu=relu)

        return compile_batch_function(model, batch)

    key = f"{method}:{features.name}:{'weights' if weights_only else f'{upsample}:{relu}'}"
    return compiled(model, key, build)


@register("cam")
def cam(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    layer: str | None = None,
    upsample: bool = True,
    relu: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Class activation map (Zhou et al. 2016) of a network with a global-average-pooling head.

    If the last feature maps :math:`f_k(i, j)` (:math:`h \\times w` positions, :math:`Z = hw`) are
    averaged, :math:`F_k = \\frac1Z \\sum_{i,j} f_k(i, j)`, and a dense layer with weights
    :math:`w^c_k` and bias :math:`b_c` gives the logits, then

    .. math:: S_c = \\sum_k w^c_k F_k + b_c = \\frac1Z \\sum_{i,j} M_c(i, j) + b_c, \\qquad
              M_c(i, j) = \\sum_k w^c_k f_k(i, j).

    :math:`M_c` is the class activation map: the logit is its mean (plus the bias), so it shows
    where the evidence for class :math:`c` lies.

    Parameters
    ----------
    model, x, target
        As in :func:`understanding_nn.explain`. The model must end in a
        ``GlobalAveragePooling2D`` and one linear ``Dense`` layer (Dropout between them is
        allowed, and a final softmax or sigmoid is ignored); any other model is refused with
        :class:`~understanding_nn.attribution.UnsupportedModelError`.
    layer
        ``None`` (default) or the name of the layer whose output enters the pooling (the only
        layer CAM is defined at).
    upsample
        ``True`` (default): resize the :math:`h \\times w` map bilinearly (half-pixel centres) to
        the input's size and return an array shaped like ``x``; ``False``: return the map at the
        layer's resolution, shape ``(N, h, w)``.
    relu
        ``True`` (default): keep only the positive part of :math:`M_c` (evidence for the class);
        ``False``: the signed map, whose mean is :math:`S_c - b_c`.
    batch_size
        Samples per compiled pass.
    """
    _check_flags(upsample, relu)
    function = _batch_function(model, "cam", layer, upsample=upsample, relu=relu)
    return run_batched(model, x, target, function, batch_size=batch_size)


@register("grad_cam")
def grad_cam(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    layer: str | None = None,
    upsample: bool = True,
    relu: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): feature maps weighted by their mean gradient.

    For the feature maps :math:`A^k` of ``layer`` (:math:`Z = hw` positions) and the target logit
    :math:`S_c`,

    .. math:: \\alpha^c_k = \\frac1Z \\sum_{i,j} \\frac{\\partial S_c}{\\partial A^k_{ij}}, \\qquad
              L^c = \\mathrm{ReLU}\\Bigl(\\sum_k \\alpha^c_k A^k\\Bigr).

    On a network whose head is global average pooling and a dense layer, the gradient is
    :math:`w^c_k / Z` at every position, so :math:`\\alpha^c_k = w^c_k / Z` and Grad-CAM is the
    CAM divided by :math:`Z`. Unlike CAM, it works with any head.

    Parameters
    ----------
    model, x, target
        As in :func:`understanding_nn.explain`; the model takes images
        ``(N, height, width, channels)``.
    layer
        Name of the layer whose feature maps are used; ``None`` (default) for the last
        ``Conv2D`` layer. :func:`map_layers` lists the possible names.
    upsample, relu, batch_size
        As in :func:`cam`.
    """
    _check_flags(upsample, relu)
    function = _batch_function(model, "grad_cam", layer, upsample=upsample, relu=relu)
    return run_batched(model, x, target, function, batch_size=batch_size)


@register("grad_cam_plus_plus")
def grad_cam_plus_plus(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    layer: str | None = None,
    upsample: bool = True,
    relu: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al. 2018): feature maps weighted by a positively weighted sum
    of their gradients.

    The explained score is :math:`Y_c = \\exp(S_c)`. With :math:`g^k_{ij} = \\partial S_c /
    \\partial A^k_{ij}` and a piecewise-linear network (ReLU), the higher derivatives of
    :math:`Y_c` are powers of the first, :math:`\\partial^n Y_c / (\\partial A^k_{ij})^n =
    e^{S_c} (g^k_{ij})^n`, and the paper's closed form of the pixel weights becomes

    .. math:: \\alpha^{kc}_{ij} = \\frac{(g^k_{ij})^2}
              {2 (g^k_{ij})^2 + \\sum_{a,b} A^k_{ab} \\, (g^k_{ij})^3}, \\qquad
              w^c_k = \\sum_{i,j} \\alpha^{kc}_{ij} \\, \\mathrm{ReLU}\\Bigl(
              \\frac{\\partial Y_c}{\\partial A^k_{ij}}\\Bigr), \\qquad
              L^c = \\mathrm{ReLU}\\Bigl(\\sum_k w^c_k A^k\\Bigr).

    Since :math:`\\partial Y_c / \\partial A^k_{ij} = e^{S_c} g^k_{ij}`, every weight carries the
    same positive factor :math:`e^{S_c}`; it is left out (the map is the paper's divided by
    :math:`e^{S_c}`), because it changes no map's shape and overflows float32 for logits above
    about 88. Where :math:`g^k_{ij} = 0` the weight :math:`\\alpha` is 0/0 and set to 0 (its
    factor :math:`\\mathrm{ReLU}(g^k_{ij})` is 0 anyway).

    Parameters
    ----------
    model, x, target, layer, upsample, relu, batch_size
        As in :func:`grad_cam`.
    """
    _check_flags(upsample, relu)
    function = _batch_function(model, "grad_cam_plus_plus", layer, upsample=upsample, relu=relu)
    return run_batched(model, x, target, function, batch_size=batch_size)


def feature_maps(
    model: keras.Model, x: Any, *, layer: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """The feature maps :math:`A^k` of ``layer`` (default: the last ``Conv2D`` layer) for the batch
    ``x``, shape ``(N, h, w, K)``: what the three methods weigh."""
    features = _feature_layer(model, layer)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = validate_input(model, x)

    def build() -> Any:
        body = keras.Model(model.inputs, features.output)
        return compile_batch_function(model, lambda xb: body(xb, training=False), target=False)

    forward = compiled(model, f"feature_maps:{features.name}", build)
    return np.concatenate([forward(tf.constant(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)])


def channel_weights(
    model: keras.Model,
    x: Any,
    target: Target = None,
    *,
    method: str = "grad_cam",
    layer: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """The channel weights :math:`w^c_k` of a class activation map, shape ``(N, K)``.

    ``method`` is ``"cam"`` (the dense weights :math:`w^c_k`), ``"grad_cam"`` (the mean gradients
    :math:`\\alpha^c_k`) or ``"grad_cam_plus_plus"`` (the weights of :func:`grad_cam_plus_plus`,
    without the factor :math:`e^{S_c}`); ``layer`` as in those functions.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    function = _batch_function(model, method, layer, upsample=False, relu=False, weights_only=True)
    return run_batched(model, x, target, function, batch_size=batch_size)


# --------------------------------------------------------------------------------------------
# Localisation on cluttered MNIST
# --------------------------------------------------------------------------------------------


def localisation_table(
    runs: Mapping[str, tuple[keras.Model, str, Mapping[str, Any]]],
    canvases: Any,
    *,
    uniform_baseline: bool = True,
) -> list[dict[str, Any]]:
    """How well the maps of several methods point at the target digits of cluttered canvases.

    Every canvas is explained for the class of its first digit (``canvases.labels[:, 0]``), and
    the target's boxes are those of every digit of that class on the canvas. For each run, the
    maps are scored with :func:`understanding_nn.metrics.positive_mass_in_boxes` (the share of the
    map's positive mass inside the target's boxes) and
    :func:`understanding_nn.metrics.pointing_game` (whether the map's maximum is inside them).

    Parameters
    ----------
    runs
        Row label → ``(model, method, params)``: the maps are
        ``explain(model, canvases.images, method, target, **params)``.
    canvases
        A :class:`~understanding_nn.data.ClutteredMNIST` (images, labels, boxes).
    uniform_baseline
        Add a first row for a map that is the same everywhere: its share of mass in the boxes
        is their share of the canvas, and its "maximum" a random pixel (the expected hit rate is
        that share too). A method that localises must do better.

    Returns
    -------
    list of dict
        One row per run: ``method`` (the label), ``mass_in_box`` and ``pointing_hit_rate``
        (means over the canvases), ``n_canvases``; ready for ``pandas.DataFrame(rows)``.
    """
    from . import metrics

    for attribute in ("images", "labels", "boxes"):
        if not hasattr(canvases, attribute):
            raise TypeError(
                f"canvases must be a ClutteredMNIST (with images, labels and boxes), got {type(canvases).__name__}"
            )
    target = np.asarray(canvases.labels[:, 0])
    select = np.asarray(canvases.labels) == target[:, None]
    rows = []
    if uniform_baseline:
        area = metrics.box_mask(canvases.boxes, canvases.images.shape[1:3], select).mean(axis=(1, 2))
        rows.append({
            "method": "uniform map (box area / canvas area)",
            "mass_in_box": float(area.mean()),
            "pointing_hit_rate": float(area.mean()),
            "n_canvases": len(target),
        })
    for label, run in runs.items():
        if not (isinstance(run, tuple) and len(run) == 3):
            raise TypeError(f"runs[{label!r}] must be a tuple (model, method, params), got {run!r}")
        model, method, params = run
        maps = explain(model, canvases.images, method, target, **dict(params))
        rows.append({
            "method": label,
            "mass_in_box": float(metrics.positive_mass_in_boxes(maps, canvases.boxes, select).mean()),
            "pointing_hit_rate": float(metrics.pointing_game(maps, canvases.boxes, select).mean()),
            "n_canvases": len(target),
        })
    return rows
