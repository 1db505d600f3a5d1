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

The maps, their gradients and the weights are computed in float32, for a mixed-precision model
too (see :mod:`understanding_nn.propagation`).

All three are registered for :func:`understanding_nn.explain` (``"cam"``, ``"grad_cam"`` and
``"grad_cam_plus_plus"``) with the parameters ``layer``, ``upsample`` and ``relu``.
:func:`channel_weights` returns the weights :math:`w^c_k` themselves, :func:`feature_maps` the
maps :math:`A^k`, and
:func:`localisation_table` measures how well maps of any method point at the digits of
cluttered-MNIST canvases (:func:`understanding_nn.data.cluttered_mnist`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .propagation import Graph, Node, _float32, trace
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


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------

_CONV_2D = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D, keras.layers.Conv2DTranspose)


@dataclass(frozen=True)
class _Features:
    """Where the feature maps are read: a value of the model's (unfolded) graph, the layer that
    computes it, and whether its channels come first."""

    value: int
    name: str
    channels_first: bool


def _graph(model: keras.Model) -> Graph:
    """The model's graph with every layer's own output a value (batch norms not folded)."""
    return trace(model, fold=False)


def _image_model(model: keras.Model) -> Graph:
    validate_model(model)
    if len(model.inputs[0].shape) != 4:
        raise UnsupportedModelError(
            f"model {model.name!r} takes inputs of shape {tuple(model.inputs[0].shape)}; class activation "
            "maps need image inputs, shape (batch, height, width, channels)"
        )
    return _graph(model)


def _map_nodes(graph: Graph) -> list[Node]:
    """The last step of every layer whose output is a stack of feature maps."""
    last: dict[str, Node] = {}
    for node in graph.nodes:
        if len(graph.shapes[node.output]) == 4:
            last[node.op.name.removesuffix(".activation")] = node
    return list(last.values())


def map_layers(model: keras.Model) -> list[str]:
    """Names of the layers of ``model`` whose output is a stack of feature maps, shape
    ``(batch, height, width, channels)`` (or channels first): the layers a class activation map
    can be computed at. Layers of nested models are named by their path, ``"block/conv"``."""
    return [node.op.name.removesuffix(".activation") for node in _map_nodes(_image_model(model))]


def _channels_first(op: Any) -> bool:
    return getattr(op.layer, "data_format", "channels_last") == "channels_first"


def _feature_layer(model: keras.Model, layer: str | None) -> _Features:
    """The feature maps of the layer named ``layer``, or of the last 2-D convolution if ``None``."""
    graph = _image_model(model)
    maps = _map_nodes(graph)
    candidates = [node.op.name.removesuffix(".activation") for node in maps]
    if layer is None:
        convolutions = [node for node in graph.nodes if isinstance(node.op.layer, _CONV_2D)]
        if not convolutions:
            raise UnsupportedModelError(
                f"model {model.name!r} has no 2-D convolution to take the default feature maps from; "
                f"name a layer with the argument layer (layers with feature maps: {', '.join(candidates) or 'none'})"
            )
        node = convolutions[-1]
        value = graph.value_of(node.op.name)
        return _Features(value, node.op.name, _channels_first(node.op))
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name (str) or None, got {type(layer).__name__}")
    try:
        value = graph.value_of(layer)
    except ValueError:
        names = sorted({node.op.name.removesuffix(".activation") for node in graph.nodes})
        raise ValueError(
            f"model {model.name!r} has no layer named {layer!r}; its layers with feature maps are: "
            f"{', '.join(candidates) or 'none'} (all layers: {', '.join(names)})"
        ) from None
    if len(graph.shapes[value]) != 4:
        raise ValueError(
            f"layer {layer!r} outputs shape {graph.shapes[value]}, not feature maps "
            f"(batch, height, width, channels); layers with feature maps: {', '.join(candidates) or 'none'}"
        )
    producer = next(node for node in graph.nodes if node.output == value)
    return _Features(value, layer, _channels_first(producer.op))


def _maps_and_logits(model: keras.Model, features: _Features) -> Callable[..., tuple[tf.Tensor, tf.Tensor]]:
    """A function ``(x, tape) -> (A, z(x))``: the feature maps (channels last) and the logits,
    from one forward pass of the model's graph in inference mode in which ``tape`` watches the
    maps, so that gradients of the logits with respect to them exist. The logits are found from
    the graph, as for every method."""
    graph = _graph(model)

    def maps_and_logits(x: tf.Tensor, tape: tf.GradientTape | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        values = graph.run(x, watch=None if tape is None else (features.value, tape))
        return values[features.value], values[graph.logit]

    return maps_and_logits


def _channels_last(maps: tf.Tensor, features: _Features) -> tf.Tensor:
    return tf.transpose(maps, (0, 2, 3, 1)) if features.channels_first else maps


def _gap_head(model: keras.Model, layer: str | None) -> tuple[_Features, keras.layers.Dense]:
    """The maps that enter the global average pooling, and the dense layer after it; refuses a
    model whose logits are not one linear Dense layer on a global average pooling."""
    graph = _image_model(model)
    producer = {node.output: node for node in graph.nodes}
    head = producer[graph.logit]
    path = [head]
    while True:
        before = producer.get(path[-1].inputs[0]) if path[-1].inputs else None
        if before is None or before.op.kind != "identity":
            break
        path.append(before)
    pooling = producer.get(path[-1].inputs[0]) if path[-1].inputs else None
    layers = list(dict.fromkeys(f"{node.op.name.removesuffix('.activation')} ({node.op.layer_type})" for node in graph.nodes))
    ending = ", ".join(layers[-3:])
    if (
        head.op.kind != "dense"
        or pooling is None
        or type(pooling.op.layer) is not keras.layers.GlobalAveragePooling2D
        or pooling.op.layer.keepdims
        or pooling.inputs[0] == 0
    ):
        raise UnsupportedModelError(
            f"cam needs a network that ends in global average pooling followed by one linear Dense layer "
            f"(Zhou et al. 2016); model {model.name!r} ends in {ending}. "
            "Use grad_cam, which works with any head"
        )
    value = pooling.inputs[0]
    maker = producer[value]
    features = _Features(value, maker.op.name.removesuffix(".activation"), pooling.op.layer.data_format == "channels_first")
    if layer is not None:
        chosen = _feature_layer(model, layer)
        if chosen.value != features.value:
            raise ValueError(
                f"cam is defined on the feature maps that enter the global average pooling, the output "
                f"of layer {features.name!r}; got layer={layer!r} (use grad_cam for other layers)"
            )
    return features, head.op.layer


# --------------------------------------------------------------------------------------------
# The three maps
# --------------------------------------------------------------------------------------------


def _check_flags(upsample: Any, relu: Any) -> None:
    for name, value in (("upsample", upsample), ("relu", relu)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}")


def _finish(
    weighted: tf.Tensor, x: tf.Tensor, *, upsample: bool, relu: bool, channels_first: bool = False
) -> tf.Tensor:
    """From the weighted sum :math:`\\sum_k w_k A^k` (batch, h, w) to the returned map."""
    if relu:
        weighted = tf.nn.relu(weighted)
    if not upsample:
        return weighted
    if channels_first:
        channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    else:
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    resized = tf.image.resize(weighted[..., None], (height, width), method="bilinear")
    # Relevance is additive over channels (the plots sum them), so a colour image shares the
    # map evenly among its channels.
    shared = tf.tile(resized / channels, [1, 1, 1, channels])
    return tf.transpose(shared, (0, 3, 1, 2)) if channels_first else shared


def _target_gradient(graph: Graph, maps_and_logits: Callable, features: _Features, x: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Feature maps :math:`A` and :math:`\\partial S_c / \\partial A` (channels last), for every
    sample's target."""
    with tf.GradientTape() as tape:
        maps, logits = maps_and_logits(x, tape)
        score = graph.target_score(logits, target)
    gradients = tape.gradient(score, maps)
    return _channels_last(maps, features), _channels_last(gradients, features)


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
    # The map is drawn in the input's layout, which the feature maps' layout stands for.
    channels_first = features.channels_first

    def build() -> Any:
        maps_and_logits = _maps_and_logits(model, features)
        graph = _graph(model)

        def batch(x: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
            if method == "cam":
                maps = _channels_last(maps_and_logits(x)[0], features)
                weights = tf.gather(tf.transpose(_float32(dense.kernel)), target)
            else:
                maps, grads = _target_gradient(graph, maps_and_logits, features, x, target)
                if method == "grad_cam":
                    weights = tf.reduce_mean(grads, axis=(1, 2))
                else:
                    weights = _grad_cam_plus_plus_weights(maps, grads)
            if weights_only:
                return weights
            weighted = tf.einsum("bhwk,bk->bhw", maps, weights)
            return _finish(weighted, x, upsample=upsample, relu=relu, channels_first=channels_first)

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
        :class:`~understanding_nn.propagation.UnsupportedModelError`.
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
        graph = _graph(model)
        return compile_batch_function(model, lambda xb: graph.run(xb, until=features.value)[features.value], target=False)

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
