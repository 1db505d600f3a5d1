"""The one traversal of a Keras model that every propagation method shares.

The machinery under chapters 2.3 to 2.6 and 3.1 to 3.3:
layer-wise relevance propagation and deep Taylor decomposition (Bach et al. 2015; Montavon et al.
2017, 2018), DeepLIFT (Shrikumar et al. 2017), the deconvnet (Zeiler & Fergus 2014) and guided
backpropagation (Springenberg et al. 2014) are all one backward pass through the model's graph
in which each layer passes a signal from its output to its inputs by a **rule**. They differ
only in the rules, and a :class:`Composite` says which rule each layer gets (as zennit's
composites do). The plain gradient is the trivial case: every layer applies the chain rule.

The model is first turned into a :class:`Graph`, once per model:

* every node of the Keras graph is visited in topological order; nested models and Sequential
  blocks are looked through, so a ``Sequential([Rescaling, net])`` is the same graph as ``net``
  with a rescaling in front;
* a layer with a fused activation (``Dense(10, activation="relu")``) becomes two steps, the
  linear map and an element-wise activation, so rules see the pre-activation;
* a batch normalization directly after a Dense or convolution without activation, whose output
  nothing else reads, is folded into it (computed from the live variables; the model is not
  touched); any other batch normalization stays an element-wise affine step;
* the model's output is traced back to its **logit**: a final softmax, log-softmax or sigmoid,
  whatever its spelling (a string, ``keras.activations``, ``keras.ops``, ``tf.nn``, a layer, or
  the last layer of a nested model), is removed. An output that cannot be traced to its logit is
  refused.

Each step has a **kind** (see :data:`KINDS` and :func:`supported_layers`): ``dense``, ``conv``,
``merge`` (Add, Subtract, Average), ``affine`` (BatchNormalization, Rescaling, Normalization),
``layer_norm``, ``max_pool``, ``avg_pool``, ``reshape`` (Flatten, Reshape, Permute, padding,
cropping, Concatenate), ``identity`` (dropout and noise layers), ``relu`` (the ReLU family),
``activation`` (other element-wise activations), ``gate`` (Multiply, Maximum, Minimum) and
``other`` (anything else). A composite that has no rule for a step refuses the model with an
error naming the layer, its type and the method: never a silent wrong answer.

In the backward pass a tensor read by several layers (a branch point) receives the sum of the
signals that come back from each of them.

**Precision.** Every step computes in float32, whatever the model's dtype policy. A model built
under ``keras.mixed_precision.set_global_policy("mixed_float16")`` (or ``"mixed_bfloat16"``)
computes its own forward pass in half precision from float32 variables; its graph here reads
those float32 variables, and runs each Keras layer it calls under a float32 policy for the
duration of the call (while a compiled function is traced; the layer's policy is restored
afterwards). Weights stored in half precision (a ``"float16"`` policy) are cast up. Half
precision would silently change explanations: float16 keeps about 3 significant digits and
bfloat16 about 2, the relevance rules divide by sums of contributions that can be small, and
float16 rounds signals below about :math:`6 \\cdot 10^{-5}` coarsely and flushes those below
:math:`6 \\cdot 10^{-8}` to zero. So every method explains a mixed-precision model as it explains
its float32 twin with the same weights, at the same cost (the compiled graph is the same), and
returns float32. Nothing assumes a device: the same compiled functions run on a CPU or a GPU.
One difference is TensorFlow's, not the package's: on GPUs with TensorFloat-32 (NVIDIA Ampere and
later) TensorFlow computes float32 matrix products and convolutions with 10-bit mantissas by
default, which rounds their inputs to float16's precision (about three significant digits);
``tf.config.experimental.enable_tensor_float_32_execution(False)`` restores full float32 (a
process-wide setting, so the package leaves it to you).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "KINDS",
    "ActivationOp",
    "CallOp",
    "Composite",
    "Forward",
    "Gradient",
    "Graph",
    "LayerNormOp",
    "LinearOp",
    "MergeOp",
    "Node",
    "Op",
    "Pass",
    "PoolOp",
    "Record",
    "Rule",
    "UnsupportedModelError",
    "WeightedOp",
    "activation_name",
    "backward",
    "symbolic_io",
    "divide",
    "supported_layers",
    "trace",
]


class UnsupportedModelError(ValueError):
    """The model (or one of its layers) cannot be explained by the requested method."""


def divide(numerator: tf.Tensor, denominator: tf.Tensor) -> tf.Tensor:
    """``numerator / denominator``, and 0 where the denominator is 0 (no relevance, no NaN)."""
    return tf.math.divide_no_nan(numerator, denominator)


# --------------------------------------------------------------------------------------------
# Activation functions, recognised by identity whatever their spelling
# --------------------------------------------------------------------------------------------

# Canonical name -> attribute names under which Keras and TensorFlow expose the function.
_ACTIVATION_SPELLINGS = {
    "linear": ["linear"],
    "relu": ["relu"],
    "relu6": ["relu6"],
    "leaky_relu": ["leaky_relu"],
    "elu": ["elu"],
    "selu": ["selu"],
    "gelu": ["gelu"],
    "silu": ["silu", "swish"],
    "tanh": ["tanh"],
    "sigmoid": ["sigmoid"],
    "hard_sigmoid": ["hard_sigmoid"],
    "hard_silu": ["hard_silu", "hard_swish"],
    "softplus": ["softplus"],
    "softsign": ["softsign"],
    "mish": ["mish"],
    "softmax": ["softmax"],
    "log_softmax": ["log_softmax"],
}
RELU_FAMILY = frozenset({"relu", "relu6", "leaky_relu"})
SQUASHING = frozenset({"softmax", "log_softmax", "sigmoid"})
_NOT_ELEMENTWISE = frozenset({"softmax", "log_softmax"})


def _activation_table() -> dict[int, str]:
    table: dict[int, str] = {}
    namespaces = [keras.activations, keras.ops, tf.nn, tf.math]
    for name, spellings in _ACTIVATION_SPELLINGS.items():
        for namespace in namespaces:
            for spelling in spellings:
                function = getattr(namespace, spelling, None)
                if callable(function):
                    table.setdefault(id(function), name)
    return table


_ACTIVATIONS = _activation_table()

# keras.ops used on symbolic tensors create graph nodes of these Operation classes.
_OPERATION_ACTIVATIONS = {
    "Relu": "relu", "Relu6": "relu6", "LeakyRelu": "leaky_relu", "Elu": "elu", "Selu": "selu",
    "Gelu": "gelu", "Silu": "silu", "Tanh": "tanh", "Sigmoid": "sigmoid", "HardSigmoid": "hard_sigmoid",
    "HardSilu": "hard_silu", "Softplus": "softplus", "Softsign": "softsign", "Softmax": "softmax",
    "LogSoftmax": "log_softmax",
}


def activation_name(function: Any) -> str | None:
    """The canonical name of a known activation function (``"relu"``, ``"softmax"``, ...), or
    ``None`` for a function the package does not recognise (a lambda, a custom function)."""
    return _ACTIVATIONS.get(id(function))


# --------------------------------------------------------------------------------------------
# Precision: every step in float32
# --------------------------------------------------------------------------------------------

_FLOAT32_POLICY = keras.DTypePolicy("float32")


def _float32(value: Any) -> tf.Tensor:
    """``value`` (a tensor, a variable, an array or numbers) as a float32 tensor; a cast only
    where it has another dtype, so a float32 graph is unchanged."""
    tensor = tf.convert_to_tensor(value)
    return tensor if tensor.dtype == tf.float32 else tf.cast(tensor, tf.float32)


@contextlib.contextmanager
def _computing_in_float32(layer: Any) -> Iterator[None]:
    """Run the block with ``layer`` and every layer inside it under a float32 dtype policy.

    A Keras layer whose policy computes in another floating dtype (``mixed_float16``,
    ``mixed_bfloat16``, ``float16``, ...) casts its inputs to it and reads its variables cast
    to it; with the float32 policy it computes in float32 from its (float32) variables. The
    policies are restored when the block ends; in a compiled function the block runs while the
    function is traced, and the graph keeps no trace of the swap. Quantized layers and layers
    that compute in an integer dtype (lookups, say) keep their own.
    """
    if not isinstance(layer, keras.layers.Layer):
        yield  # a keras.ops operation computes in the dtype of its inputs
        return
    swapped = []
    for inner in layer._flatten_layers(include_self=True, recursive=True):
        compute = inner.compute_dtype
        if inner.quantization_mode is None and compute != "float32" and keras.backend.is_float_dtype(compute):
            swapped.append((inner, inner._dtype_policy))
    try:
        for inner, _ in swapped:
            inner._dtype_policy = _FLOAT32_POLICY
        yield
    finally:
        for inner, policy in reversed(swapped):
            inner._dtype_policy = policy


def _call_in_float32(layer: Any, *args: Any, **kwargs: Any) -> tf.Tensor:
    """``layer(*args, **kwargs)`` computed in float32 (see :func:`_computing_in_float32`)."""
    with _computing_in_float32(layer):
        return _float32(layer(*args, **kwargs))


# --------------------------------------------------------------------------------------------
# Steps of the graph
# --------------------------------------------------------------------------------------------


def _inputs(inputs: Any) -> list[tf.Tensor]:
    """A step's inputs as a list of float32 tensors (a single tensor is one input)."""
    if isinstance(inputs, (list, tuple)):
        return [_float32(a) for a in inputs]
    return [_float32(inputs)]


def _vjp(forward: Callable[[list[tf.Tensor]], tf.Tensor], inputs: list[tf.Tensor], signal: tf.Tensor) -> list[tf.Tensor]:
    """The vector-Jacobian product of ``forward`` at ``inputs`` with ``signal`` (the chain rule)."""
    # Separate copies, so that a tensor given twice (Add()([h, h])) gets each input's share once.
    inputs = [tf.identity(a) for a in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        output = forward(inputs)
    gradients = tape.gradient(output, inputs, output_gradients=signal)
    return [tf.zeros_like(a) if g is None else g for a, g in zip(inputs, gradients)]


class Op:
    """One step of a :class:`Graph`: a Keras layer (or part of one) with its forward function.

    ``kind`` says what kind of step it is (see :data:`KINDS`); ``layer`` is the Keras layer or
    operation it comes from and ``name`` its name (prefixed by the names of nested models).
    """

    kind: str = "other"

    def __init__(self, layer: Any, name: str) -> None:
        self.layer = layer
        self.name = name
        self.aliases: tuple[str, ...] = ()  # other names it answers to (a batch norm folded into it)

    def names(self) -> set[str]:
        """The names a composite's ``by_name`` may use for this step: its own, the names of layers
        folded into it, and each of them without the path of nested models."""
        names = {self.name, *self.aliases}
        return names | {name.rsplit("/", 1)[-1] for name in names}

    @property
    def layer_type(self) -> str:
        return type(self.layer).__name__

    def forward(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        raise NotImplementedError

    def vjp(self, inputs: list[tf.Tensor], signal: tf.Tensor) -> list[tf.Tensor]:
        """The chain rule through this step: :math:`s_j = \\sum_k s_k \\, \\partial y_k / \\partial a_j`."""
        return _vjp(self.forward, inputs, signal)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, kind={self.kind!r})"


class CallOp(Op):
    """A step computed by calling the Keras layer (or operation) itself, in inference mode and
    in float32 whatever the layer's dtype policy (see the module's docstring)."""

    def __init__(self, layer: Any, name: str, kind: str, arguments: Any) -> None:
        super().__init__(layer, name)
        self.kind = kind
        self._arguments = arguments
        self._tensors = list(arguments.keras_tensors)
        self._training = bool(getattr(layer, "_call_has_training_arg", False))

    def forward(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        args, kwargs = self._arguments.fill_in({id(t): a for t, a in zip(self._tensors, inputs)})
        if self._training:
            kwargs = {**kwargs, "training": False}
        return _call_in_float32(self.layer, *args, **kwargs)


class ActivationOp(Op):
    """An element-wise activation :math:`y = f(z)`: a layer's fused activation or a layer of its own."""

    def __init__(self, layer: Any, name: str, activation: str, function: Callable[[tf.Tensor], tf.Tensor]) -> None:
        super().__init__(layer, name)
        self.activation = activation
        # A softmax mixes its inputs: it is no element-wise step (but is removed at the output).
        self.kind = "relu" if activation in RELU_FAMILY else "other" if activation in _NOT_ELEMENTWISE else "activation"
        self._function = function

    def forward(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        return _float32(self._function(inputs[0]))

    def derivative(self, z: tf.Tensor) -> tf.Tensor:
        """:math:`f'(z)`, element by element."""
        with tf.GradientTape() as tape:
            tape.watch(z)
            y = self._function(z)
        return tape.gradient(y, z)


class LinearOp(Op):
    """A step that is affine in its inputs, :math:`z = \\sum_j w_{jk} a_j + b_k`: the steps that
    relevance rules such as :class:`~understanding_nn.lrp.Epsilon` apply to.

    A rule may change the weights: :meth:`affine` and :meth:`transpose` take a kernel shaped like
    :attr:`kernel` (for example its positive part ``tf.nn.relu(op.kernel)``). Inputs are lists,
    one tensor per input of the layer (one for Dense and convolutions, several for merges).
    """

    @property
    def kernel(self) -> tf.Tensor:
        """The weights :math:`w` of the affine map."""
        raise NotImplementedError

    @property
    def bias(self) -> tf.Tensor | None:
        """The bias :math:`b` of the affine map, ``None`` for none."""
        raise NotImplementedError

    def affine(self, inputs: Any, kernel: tf.Tensor, bias: tf.Tensor | None = None) -> tf.Tensor:
        """:math:`\\sum_j w_{jk} a_j (+ b_k)` with the given kernel (and bias); ``inputs`` is a
        list of tensors, or one tensor for a step with a single input."""
        raise NotImplementedError(f"{type(self).__name__} must define affine(inputs, kernel, bias)")

    def add_bias(self, z: tf.Tensor, bias: tf.Tensor | None) -> tf.Tensor:
        """``z`` plus a bias shaped like :attr:`LinearOp.bias` (``None``: no bias)."""
        return z if bias is None else z + bias

    def linearized(
        self, inputs: list[tf.Tensor], kernel: tf.Tensor, bias: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, Callable[[tf.Tensor], list[tf.Tensor]]]:
        """:meth:`affine` with a (modified) kernel, and the function :math:`s \\mapsto
        (\\sum_k w_{jk} s_k)_j` of its transpose, from one computation of the map: what a
        relevance rule with modified weights needs (the transpose may be applied once)."""
        inputs = [tf.identity(a) for a in _inputs(inputs)]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(inputs)
            z = self.affine(inputs, kernel, bias)

        def transpose(s: tf.Tensor) -> list[tf.Tensor]:
            gradients = tape.gradient(z, inputs, output_gradients=s)
            return [tf.zeros_like(a) if g is None else g for a, g in zip(inputs, gradients)]

        return z, transpose

    def transpose(self, inputs: Any, kernel: tf.Tensor, s: tf.Tensor) -> list[tf.Tensor] | tf.Tensor:
        """:math:`c_j = \\sum_k w_{jk} s_k` for every input: the transpose of :meth:`affine`
        (a list for a list of inputs, a tensor for a single tensor)."""
        result = _vjp(lambda a: self.affine(a, kernel), _inputs(inputs), _float32(s))
        return result if isinstance(inputs, (list, tuple)) else result[0]

    def forward(self, inputs: Any) -> tf.Tensor:
        return self.affine(inputs, self.kernel, self.bias)


class WeightedOp(LinearOp):
    """A Dense or convolution layer without its activation, with any batch normalization that
    follows it folded in: kernel :math:`w s` and bias :math:`(b - \\mu) s + \\beta`, where
    :math:`s = \\gamma / \\sqrt{\\sigma^2 + \\epsilon}`. Kernel and bias are read from the layers'
    variables at every access, so a compiled propagation always uses the current weights, and in
    float32 (the variables of a mixed-precision model are float32; half-precision ones are cast)."""

    def __init__(self, layer: keras.layers.Layer, name: str) -> None:
        super().__init__(layer, name)
        self.kind = "dense" if isinstance(layer, keras.layers.Dense) else "conv"
        self.norm: keras.layers.BatchNormalization | None = None

    @property
    def channel_axis(self) -> int:
        """The axis of the output channels in this layer's outputs."""
        return 1 if getattr(self.layer, "data_format", "channels_last") == "channels_first" else -1

    def _raw_kernel(self) -> tf.Tensor:
        layer = self.layer
        if isinstance(layer, keras.layers.SeparableConv1D | keras.layers.SeparableConv2D):
            depthwise = _float32(layer.depthwise_kernel)
            pointwise = _float32(layer.pointwise_kernel)
            channels, multiplier = depthwise.shape[-2], depthwise.shape[-1]
            pointwise = tf.reshape(pointwise, (channels, multiplier, pointwise.shape[-1]))
            return tf.einsum("...cm,cmo->...co", depthwise, pointwise)
        return _float32(layer.kernel)

    def _norm_scale(self) -> tf.Tensor:
        norm = self.norm
        scale = tf.math.rsqrt(_float32(norm.moving_variance) + norm.epsilon)
        return scale * _float32(norm.gamma) if norm.scale else scale

    def _scale_outputs(self, kernel: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
        """The kernel with every output channel multiplied by ``scale``."""
        if isinstance(self.layer, keras.layers.DepthwiseConv1D | keras.layers.DepthwiseConv2D):
            return kernel * tf.reshape(scale, kernel.shape[-2:])
        if isinstance(self.layer, keras.layers.Conv1DTranspose | keras.layers.Conv2DTranspose | keras.layers.Conv3DTranspose):
            return kernel * tf.reshape(scale, (-1, 1))
        return kernel * scale

    @property
    def kernel(self) -> tf.Tensor:
        kernel = self._raw_kernel()
        return kernel if self.norm is None else self._scale_outputs(kernel, self._norm_scale())

    @property
    def bias(self) -> tf.Tensor | None:
        bias = _float32(self.layer.bias) if self.layer.use_bias else None
        if self.norm is None:
            return bias
        norm = self.norm
        mean = _float32(norm.moving_mean)
        if bias is None:
            bias = tf.zeros_like(mean)
        bias = (bias - mean) * self._norm_scale()
        return bias + _float32(norm.beta) if norm.center else bias

    def affine(self, inputs: Any, kernel: tf.Tensor, bias: tf.Tensor | None = None) -> tf.Tensor:
        (a,) = _inputs(inputs)
        layer = self.layer
        if self.kind == "dense":
            z = keras.ops.matmul(a, kernel)
        elif isinstance(layer, keras.layers.DepthwiseConv1D | keras.layers.DepthwiseConv2D):
            z = keras.ops.depthwise_conv(a, kernel, layer.strides, layer.padding, layer.data_format, layer.dilation_rate)
        elif isinstance(layer, keras.layers.Conv1DTranspose | keras.layers.Conv2DTranspose | keras.layers.Conv3DTranspose):
            z = keras.ops.conv_transpose(
                a, kernel, layer.strides, layer.padding, layer.output_padding, layer.data_format, layer.dilation_rate
            )
        else:
            padding = layer.padding
            if padding == "causal":
                a, padding = keras.ops.pad(a, layer._compute_causal_padding()), "valid"
            z = keras.ops.conv(a, kernel, layer.strides, padding, layer.data_format, layer.dilation_rate)
        return self.add_bias(z, bias)

    def add_bias(self, z: tf.Tensor, bias: tf.Tensor | None) -> tf.Tensor:
        """``z`` plus one bias per output channel (``None``: no bias), in the layer's layout."""
        if bias is None:
            return z
        if self.channel_axis == 1:
            return z + tf.reshape(bias, (-1,) + (1,) * (len(z.shape) - 2))
        # BiasAdd, not AddV2: TensorFlow's graph optimiser fuses a convolution with an AddV2
        # whose result is also read elsewhere (DeepLIFT's differences) into a broken graph
        # and logs an error; with BiasAdd it fuses correctly.
        return tf.nn.bias_add(z, bias)


class MergeOp(LinearOp):
    """Add, Subtract or Average: the weighted sum :math:`z = \\sum_i w_i a^{(i)}` of its inputs
    (weights 1, ±1 or 1/n), as a linear step with one scalar weight per input and no bias."""

    kind = "merge"

    def __init__(self, layer: Any, name: str, weights: Sequence[float]) -> None:
        super().__init__(layer, name)
        self._weights = tuple(float(w) for w in weights)

    @property
    def kernel(self) -> tf.Tensor:
        return tf.constant(self._weights, tf.float32)

    @property
    def bias(self) -> None:
        return None

    def affine(self, inputs: Any, kernel: tf.Tensor, bias: tf.Tensor | None = None) -> tf.Tensor:
        return sum(kernel[i] * a for i, a in enumerate(_inputs(inputs)))


class PoolOp(CallOp):
    """Max or average pooling, windowed or global: computed by the layer; :meth:`average` is the
    average pooling over the same windows, which proportional relevance rules share by."""

    def average(self, a: tf.Tensor) -> tf.Tensor:
        """Average pooling over the same windows (over all positions for a global pooling)."""
        layer = self.layer
        if isinstance(layer, _GLOBAL_POOLING):
            first = 2 if layer.data_format == "channels_first" else 1
            axes = list(range(first, first + len(a.shape) - 2))
            return keras.ops.mean(a, axis=axes, keepdims=layer.keepdims)
        return keras.ops.average_pool(a, layer.pool_size, layer.strides, layer.padding, layer.data_format)


class LayerNormOp(CallOp):
    """LayerNormalization. With its mean and variance held constant it is the element-wise
    affine map :math:`y_i = s_i x_i + t_i`, :math:`s = \\gamma / \\sqrt{\\sigma^2(x) + \\epsilon}`:
    relevance passes it element by element, and DeepLIFT's Rescale rule uses :math:`s` where an
    input did not change. (Ali et al. 2022 hold only the normaliser constant and propagate the
    centring as a linear map; that is a rule one would give the layer by name.)"""

    def derivative(self, a: tf.Tensor) -> tf.Tensor:
        layer = self.layer
        axes = [axis % len(a.shape) for axis in layer.axis]
        if layer.rms_scaling:
            spread = tf.reduce_mean(tf.square(a), axis=axes, keepdims=True)
        else:
            spread = tf.math.reduce_variance(a, axis=axes, keepdims=True)
        scale = tf.math.rsqrt(spread + layer.epsilon)
        return scale * _float32(layer.gamma) if layer.scale else scale * tf.ones_like(a)


def _plain_relu(op: ActivationOp) -> bool:
    """An activation that is >= 0: not a ReLU layer with a negative slope (leaky, parametric)."""
    layer = op.layer
    if isinstance(layer, (keras.layers.LeakyReLU, keras.layers.PReLU)):
        return False
    if isinstance(layer, keras.layers.ReLU):
        return float(layer.negative_slope) == 0.0 and float(layer.threshold) >= 0.0
    return True


# --------------------------------------------------------------------------------------------
# Layer types and their kinds
# --------------------------------------------------------------------------------------------

L = keras.layers
_GLOBAL_POOLING = (
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
)
_WEIGHTED = (
    L.Dense, L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D, L.DepthwiseConv2D,
    L.SeparableConv1D, L.SeparableConv2D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose,
)
_AFFINE = (L.BatchNormalization, L.Rescaling, L.Normalization)
_MAX_POOLING = (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D)
_AVG_POOLING = (
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
)
_RESHAPING = (
    L.Flatten, L.Reshape, L.Permute, L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
    L.Cropping1D, L.Cropping2D, L.Cropping3D, L.Concatenate,
)
_IDENTITY = (
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianNoise,
    L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
)
_RELU_LAYERS = (L.ReLU, L.LeakyReLU, L.PReLU)
_GATES = (L.Multiply, L.Maximum, L.Minimum)

#: What each kind of step is, and the Keras layers of that kind.
KINDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "dense": ("fully connected layer", (L.Dense,)),
    "conv": ("convolution, 1-D to 3-D, depthwise, separable or transposed", _WEIGHTED[1:]),
    "merge": ("weighted sum of several inputs", (L.Add, L.Subtract, L.Average)),
    "affine": ("element-wise affine map y = s x + t", _AFFINE),
    "layer_norm": ("layer normalization", (L.LayerNormalization,)),
    "max_pool": ("max pooling, windowed or global", _MAX_POOLING),
    "avg_pool": ("average pooling, windowed or global", _AVG_POOLING),
    "reshape": ("moves values without changing them", _RESHAPING),
    "identity": ("the identity at inference", _IDENTITY),
    "relu": ("ReLU family: ReLU, ReLU6, leaky and parametric ReLU", _RELU_LAYERS),
    "activation": ("other element-wise activation (ELU, GELU, SiLU, tanh, sigmoid, softplus, ...)", (L.ELU, L.Activation)),
    "gate": ("multiplicative or selecting merge", _GATES),
}


# Exact types: a subclass of a layer may compute anything, so it is of kind "other".
_KIND_OF = {layer_type: kind for kind, (_, layer_types) in KINDS.items() for layer_type in layer_types}


def _call(layer: Any, name: str, kind: str, node: Any) -> CallOp:
    return CallOp(layer, name, kind, node.arguments)


def _activation_step(layer: Any, name: str, node: Any) -> Op:
    """The step of an activation layer: ReLU, LeakyReLU, PReLU, ELU, Activation or Softmax."""
    if type(layer) in _RELU_LAYERS:
        return ActivationOp(layer, name, "relu", lambda z: _call_in_float32(layer, z))
    if type(layer) is L.ELU:
        return ActivationOp(layer, name, "elu", lambda z: _call_in_float32(layer, z))
    if type(layer) is L.Softmax:
        if layer.axis not in (-1, [-1], (-1,)):
            return _call(layer, name, "other", node)
        return ActivationOp(layer, name, "softmax", lambda z: keras.ops.softmax(z, axis=-1))
    activation = activation_name(layer.activation)
    if activation == "linear":
        return _call(layer, name, "identity", node)
    if activation is None:
        return _call(layer, name, "other", node)
    return ActivationOp(layer, name, activation, layer.activation)


def _operation_step(operation: Any, name: str, node: Any) -> Op:
    """The step of a ``keras.ops`` call made on symbolic tensors inside a functional model."""
    class_name = type(operation).__name__
    tensors = node.arguments.keras_tensors
    if class_name in _OPERATION_ACTIVATIONS and len(tensors) == 1:
        activation = _OPERATION_ACTIVATIONS[class_name]
        axis = getattr(operation, "axis", -1)
        if activation in _NOT_ELEMENTWISE and axis not in (-1, None):
            return _call(operation, name, "other", node)
        call = _call(operation, name, "other", node)
        return ActivationOp(operation, name, activation, lambda z: call.forward([z]))
    arguments = list(node.arguments.args)
    if class_name in ("Add", "Subtract") and len(tensors) == 2 and len(arguments) == 2 and all(
        isinstance(a, keras.KerasTensor) for a in arguments
    ) and tuple(arguments[0].shape) == tuple(arguments[1].shape):
        return MergeOp(operation, name, (1.0, 1.0) if class_name == "Add" else (1.0, -1.0))
    return _call(operation, name, "other", node)


def _steps_of(layer: Any, name: str, node: Any) -> list[Op]:
    """The steps of one call of a (non-model) layer: usually one, two for a fused activation."""
    if not isinstance(layer, keras.layers.Layer):
        return [_operation_step(layer, name, node)]
    kind = _KIND_OF.get(type(layer), "other")
    if kind in ("dense", "conv"):
        if getattr(layer, "quantization_mode", None) is not None:
            return [_call(layer, name, "other", node)]
        activation = getattr(layer, "activation", None)
        canonical = activation_name(activation)
        if canonical == "linear":
            return [WeightedOp(layer, name)]
        fused = ActivationOp(layer, f"{name}.activation", canonical or "unknown", activation)
        if canonical is None:
            fused.kind = "other"  # computed, but no method can know what it does
        return [WeightedOp(layer, name), fused]
    if kind == "merge":
        tensors = node.arguments.keras_tensors
        if len({tuple(t.shape[1:]) for t in tensors}) != 1:
            return [_call(layer, name, "other", node)]  # a broadcasting merge is no plain sum
        count = len(tensors)
        weights = {L.Add: [1.0] * count, L.Subtract: [1.0, -1.0], L.Average: [1.0 / count] * count}[type(layer)]
        return [MergeOp(layer, name, weights)]
    if kind in ("relu", "activation") or type(layer) is L.Softmax:
        return [_activation_step(layer, name, node)]
    if kind == "layer_norm":
        return [LayerNormOp(layer, name, kind, node.arguments)]
    if kind in ("max_pool", "avg_pool"):
        return [PoolOp(layer, name, kind, node.arguments)]
    return [_call(layer, name, kind, node)]


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------


@dataclass
class Node:
    """A step of the graph and the tensors it reads and writes (indices into the graph's values)."""

    op: Op
    inputs: list[int]
    output: int


@dataclass
class Forward:
    """A recorded forward pass (see :meth:`Graph.forward`)."""

    values: list[tf.Tensor]
    step_inputs: list[list[tf.Tensor]]
    tape: tf.GradientTape


# Steps whose output is >= 0 for any input, and steps that keep inputs >= 0 non-negative.
_NON_NEGATIVE_ACTIVATIONS = frozenset({"relu", "relu6", "sigmoid", "hard_sigmoid", "softplus"})
_KEEPS_SIGN = frozenset({"reshape", "identity", "max_pool", "avg_pool"})


@dataclass
class Graph:
    """A model as steps in topological order, from its input (value 0) to its logit.

    ``squashing`` is the softmax, log-softmax or sigmoid removed from the output (or ``None``);
    ``n_outputs`` the number of logits; ``binary`` is true for one logit, whose two classes
    are explained by the scores :math:`S_1 = z` and :math:`S_0 = -z` (see :meth:`scores`).
    """

    nodes: list[Node]
    logit: int
    squashing: str | None
    n_outputs: int
    model_name: str
    shapes: list[tuple[int | None, ...]] = field(default_factory=list)

    @property
    def binary(self) -> bool:
        return self.n_outputs == 1

    @property
    def n_classes(self) -> int:
        """How many classes a target can name (2 for a single logit, else one per logit)."""
        return 2 if self.binary else self.n_outputs

    def run(self, x: tf.Tensor, *, until: int | None = None, watch: tuple[int, tf.GradientTape] | None = None) -> list[tf.Tensor]:
        """Every value of the graph for the batch ``x``: ``values[0]`` is ``x``, ``values[logit]``
        the logits. ``until`` stops once that value is computed; ``watch=(value, tape)`` has
        ``tape`` watch that value, so that gradients with respect to it can be taken."""
        values: list[Any] = [None] * (self.logit + 1)
        values[0] = x
        if watch is not None and watch[0] == 0:
            watch[1].watch(x)
        for node in self.nodes:
            values[node.output] = node.op.forward([values[i] for i in node.inputs])
            if watch is not None and node.output == watch[0]:
                watch[1].watch(values[node.output])
            if node.output == until:
                break
        return values

    def forward(self, x: tf.Tensor) -> Forward:
        """The forward pass for a backward pass: every value, and every step's inputs as they
        entered the step, recorded on a tape so that each step's chain rule can be applied
        without computing the step again."""
        values: list[Any] = [None] * (self.logit + 1)
        step_inputs: list[list[tf.Tensor]] = []
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(x)
            values[0] = x
            for node in self.nodes:
                # Copies, so that the chain rule of a step that reads a value twice, or a value
                # and another computed from it (a skip connection), takes partial derivatives.
                inputs = [tf.identity(values[i]) for i in node.inputs]
                step_inputs.append(inputs)
                values[node.output] = node.op.forward(inputs)
        return Forward(values, step_inputs, tape)

    def value_of(self, layer: str) -> int:
        """The value computed by the Keras layer named ``layer`` (after its fused activation;
        a nested model's layer may be named by its path, ``"block/conv"``, or by its own name)."""
        found = None
        for node in self.nodes:
            names = node.op.names()
            if layer in names or f"{layer}.activation" in names:
                found = node.output
        if found is None:
            raise ValueError(f"model {self.model_name!r} has no layer named {layer!r}")
        return found

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        return self.run(x)[self.logit]

    def selector(self, target: tf.Tensor) -> tf.Tensor:
        """The weights :math:`e` with :math:`S_c = \\sum_k e_k z_k`: one-hot rows of the targets,
        or for a single logit :math:`+1` (class 1) and :math:`-1` (class 0)."""
        if self.binary:
            return tf.cast(2 * target - 1, tf.float32)[:, None]
        return tf.one_hot(target, self.n_outputs, dtype=tf.float32)

    def target_score(self, logits: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        """The score :math:`S_c` of each sample's target class :math:`c`, shape ``(N,)``."""
        return tf.reduce_sum(self.selector(target) * logits, axis=1)

    def scores(self, logits: tf.Tensor) -> tf.Tensor:
        """The class scores :math:`S(x)`, one per class: the logits, or :math:`(-z, z)` for one logit."""
        return tf.concat([-logits, logits], axis=1) if self.binary else logits

    def non_negative(self) -> set[int]:
        """The values that are :math:`\\ge 0` whatever the input: outputs of ReLU, ReLU6,
        sigmoid and softplus steps (not of a leaky ReLU), and what pooling, reshaping, adding or
        averaging makes of such values."""
        known: set[int] = set()
        for node in self.nodes:
            op = node.op
            inputs_known = bool(node.inputs) and all(i in known for i in node.inputs)
            if isinstance(op, ActivationOp) and op.activation in _NON_NEGATIVE_ACTIVATIONS and _plain_relu(op):
                known.add(node.output)
            elif inputs_known and (op.kind in _KEEPS_SIGN or (isinstance(op, MergeOp) and min(op._weights) >= 0)):
                known.add(node.output)
        return known

    def weighted(self) -> list[Node]:
        """The Dense and convolution steps, in topological order."""
        return [node for node in self.nodes if node.op.kind in ("dense", "conv")]

    def first_and_last(self) -> tuple[set[int], set[int]]:
        """The weighted steps nearest the input (no weighted step before them) and nearest the
        logit (no weighted step between them and the logit), by node index."""
        weighted_before = {0: False}
        first = set()
        for index, node in enumerate(self.nodes):
            before = any(weighted_before.get(i, False) for i in node.inputs)
            if node.op.kind in ("dense", "conv"):
                if not before:
                    first.add(index)
                before = True
            weighted_before[node.output] = before
        weighted_after: dict[int, bool] = {self.logit: False}
        last = set()
        for index in reversed(range(len(self.nodes))):
            node = self.nodes[index]
            after = weighted_after.get(node.output, False)
            if node.op.kind in ("dense", "conv"):
                if not after:
                    last.add(index)
                after = True
            for i in node.inputs:
                weighted_after[i] = weighted_after.get(i, False) or after
        return first, last


_GRAPHS: weakref.WeakKeyDictionary[keras.Model, dict[bool, Graph]] = weakref.WeakKeyDictionary()


def trace(model: keras.Model, *, fold: bool = True) -> Graph:
    """The :class:`Graph` of ``model``, built once per model.

    ``fold=False`` keeps every batch normalization a step of its own, so that every layer's own
    output is a value of the graph (class activation maps read them).

    Raises :class:`UnsupportedModelError` for a model without symbolic inputs and outputs, with
    several inputs or outputs, or whose output cannot be traced to its logit.
    """
    graphs = _GRAPHS.setdefault(model, {})
    if fold in graphs:
        return graphs[fold]
    builder = _Builder()
    inputs, outputs = symbolic_io(model)
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedModelError(
            f"model {model.name!r} has {len(inputs)} inputs and {len(outputs)} outputs; explanations need exactly one of each"
        )
    builder.shapes[0] = tuple(inputs[0].shape)
    (output,) = builder.expand(model, [0], prefix="")
    graphs[fold] = builder.finish(model, output, fold=fold)
    return graphs[fold]


def symbolic_io(model: keras.Model) -> tuple[list[Any], list[Any]]:
    """The symbolic inputs and outputs of a built model, or an :class:`UnsupportedModelError`."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise UnsupportedModelError(
            f"model {model.name!r} has no symbolic inputs and outputs; explanations need a Sequential "
            "model with an Input (or a built input shape) or a functional model"
        )
    return list(inputs), list(outputs)


class _Builder:
    """Builds a :class:`Graph`: expands nested models, splits fused activations, folds batch norms."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.count = 1  # value 0 is the model's input
        self.keep: list[Any] = []  # the Keras tensors whose ids index the maps below stay alive
        self.shapes: dict[int, tuple[int | None, ...]] = {}

    def new_value(self) -> int:
        self.count += 1
        return self.count - 1

    def expand(self, model: keras.Model, input_values: list[int], prefix: str) -> list[int]:
        """Add the steps of ``model`` applied to ``input_values``; return its output values."""
        inputs, outputs = symbolic_io(model)
        self.keep.extend(inputs + outputs)
        values = {id(t): v for t, v in zip(inputs, input_values)}
        for node in _topological_nodes(outputs):
            operation = node.operation
            if isinstance(operation, keras.layers.InputLayer):
                continue
            tensors = list(node.arguments.keras_tensors)
            self.keep.extend(tensors + list(node.outputs))
            node_inputs = [values[id(t)] for t in tensors]
            if isinstance(operation, keras.Model):
                results = self.expand(operation, node_inputs, f"{prefix}{operation.name}/")
            else:
                results = [self.add_steps(operation, f"{prefix}{operation.name}", node, node_inputs)]
            if len(results) != len(node.outputs):
                raise UnsupportedModelError(f"layer {operation.name!r} returns {len(node.outputs)} tensors")
            for tensor, value in zip(node.outputs, results):
                values[id(tensor)] = value
        return [values[id(t)] for t in outputs]

    def add_steps(self, layer: Any, name: str, node: Any, inputs: list[int]) -> int:
        steps = _steps_of(layer, name, node)
        if len(node.outputs) != 1:
            steps = [_call(layer, name, "other", node)]
        value_inputs = inputs
        for step in steps:
            output = self.new_value()
            self.nodes.append(Node(step, value_inputs, output))
            self.shapes[output] = tuple(node.outputs[0].shape)  # a split activation keeps the shape
            value_inputs = [output]
        return value_inputs[0]

    def finish(self, model: keras.Model, output: int, fold: bool = True) -> Graph:
        if fold:
            self._fold_batch_norms()
        producer = {node.output: node for node in self.nodes}
        squashing = None
        last = producer.get(output)
        if isinstance(last, Node) and isinstance(last.op, ActivationOp) and last.op.activation in SQUASHING:
            squashing = last.op.activation
            output = last.inputs[0]
            last = producer.get(output)
        if last is None:
            raise UnsupportedModelError(f"model {model.name!r} has no layer between its input and its output")
        if last.op.kind in ("other", "gate"):
            raise UnsupportedModelError(
                f"the output of model {model.name!r} comes from layer {last.op.name!r} ({last.op.layer_type}), "
                "which the package cannot trace to the model's logits; explanations start from the logit "
                "S_c(x). End the model with a Dense or convolution layer (with or without a softmax or "
                "sigmoid), or explain keras.Model(model.input, <the logit tensor>)"
            )
        needed = _ancestors(self.nodes, output)
        nodes = [node for node in self.nodes if node.output in needed]
        # Renumber the values in topological order, so that graphs compare and print simply.
        order = {0: 0}
        for node in nodes:
            order[node.output] = len(order)
        nodes = [Node(node.op, [order[i] for i in node.inputs], order[node.output]) for node in nodes]
        shape = tuple(model.outputs[0].shape)
        if len(shape) != 2 or shape[1] is None:
            raise UnsupportedModelError(
                f"model {model.name!r} outputs shape {shape}; explanations need one score per class, "
                "shape (batch, n_classes)"
            )
        shapes = [self.shapes[value] for value in sorted(order, key=order.get)]
        return Graph(nodes, order[output], squashing, int(shape[1]), model.name, shapes)

    def _fold_batch_norms(self) -> None:
        readers: dict[int, int] = {}
        for node in self.nodes:
            for i in node.inputs:
                readers[i] = readers.get(i, 0) + 1
        producer = {node.output: node for node in self.nodes}
        kept = []
        for node in self.nodes:
            previous = producer.get(node.inputs[0]) if node.inputs else None
            if (
                node.op.kind == "affine"
                and isinstance(node.op.layer, keras.layers.BatchNormalization)
                and isinstance(previous, Node)
                and isinstance(previous.op, WeightedOp)
                and previous.op.norm is None
                and readers.get(previous.output, 0) == 1
                and _normalises_channels(node.op.layer, previous.op)
            ):
                previous.op.norm = node.op.layer
                previous.op.aliases = (*previous.op.aliases, node.op.name)
                producer[node.output] = previous
                previous.output = node.output
                continue
            kept.append(node)
        self.nodes = kept


def _normalises_channels(norm: keras.layers.BatchNormalization, step: WeightedOp) -> bool:
    rank = len(step.layer.output.shape)
    axis = norm.axis if isinstance(norm.axis, int) else (norm.axis[0] if len(norm.axis) == 1 else None)
    return axis is not None and axis % rank == step.channel_axis % rank


def _topological_nodes(outputs: list[Any]) -> list[Any]:
    """The Keras nodes that compute ``outputs``, each after the nodes it reads from."""
    order: list[Any] = []
    seen: set[int] = set()
    stack = [(t._keras_history.operation._inbound_nodes[t._keras_history.node_index], False) for t in reversed(outputs)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            if id(node) not in seen:
                seen.add(id(node))
                order.append(node)
            continue
        if id(node) in seen:
            continue
        stack.append((node, True))
        for tensor in reversed(list(node.arguments.keras_tensors)):
            history = tensor._keras_history
            if history.operation is not None:
                parent = history.operation._inbound_nodes[history.node_index]
                if id(parent) not in seen:
                    stack.append((parent, False))
    return order


def _ancestors(nodes: list[Node], output: int) -> set[int]:
    producer = {node.output: node for node in nodes}
    needed, stack = set(), [output]
    while stack:
        value = stack.pop()
        if value in needed or value not in producer:
            continue
        needed.add(value)
        stack.extend(producer[value].inputs)
    return needed


# --------------------------------------------------------------------------------------------
# Rules and composites
# --------------------------------------------------------------------------------------------


@dataclass
class Record:
    """What a rule may read about one step of the forward pass: the step's inputs and output at
    ``x`` and, for methods with a reference input (DeepLIFT), at the reference :math:`x_0`.

    :meth:`vjp` applies the chain rule through the step at ``x`` from the recorded forward pass
    (no recomputation); ``non_negative`` says that every input is known to be :math:`\\ge 0`
    from the graph (the output of a ReLU, for instance), which lets rules skip negative parts.
    """

    inputs: list[tf.Tensor]
    output: tf.Tensor
    reference_inputs: list[tf.Tensor] | None = None
    reference_output: tf.Tensor | None = None
    non_negative: bool = False
    tape: tf.GradientTape | None = None

    def vjp(self, op: Op, signal: tf.Tensor) -> list[tf.Tensor]:
        """:math:`s_j = \\sum_k s_k \\, \\partial y_k / \\partial a_j` at the recorded inputs."""
        if self.tape is None:
            return op.vjp(self.inputs, signal)
        gradients = self.tape.gradient(self.output, self.inputs, output_gradients=signal)
        return [tf.zeros_like(a) if g is None else g for a, g in zip(self.inputs, gradients)]


class Rule:
    """How one step passes the backward signal of its output to its inputs.

    A rule implements :meth:`backward`, which returns one signal per input of the step, and may
    narrow :meth:`applies_to` (by default, every step). Its settings are published by
    :meth:`get_config` as plain data: compiled propagations are cached under them. A frozen
    dataclass gets both for free; any other rule must override :meth:`get_config`.

    Examples
    --------
    A rule that halves the signal at every step it is given (it conserves nothing, but shows the
    shape of a rule):

    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Halve(Rule):
    ...     def backward(self, op, record, signal):
    ...         return [0.5 * g for g in op.vjp(record.inputs, signal)]
    >>> Halve().get_config()["rule"].endswith("Halve")
    True
    """

    def applies_to(self, op: Op) -> bool:
        """Whether the rule can handle the step ``op`` (a composite that gives it to another step is refused)."""
        return True

    def backward(self, op: Op, record: Record, signal: tf.Tensor) -> list[tf.Tensor]:
        """The signal of each input of ``op``, given the ``signal`` at its output."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The rule's class and settings as plain data (numbers, strings, lists, mappings, rules)."""
        if not dataclasses.is_dataclass(self):
            raise TypeError(
                f"rule {type(self).__name__} publishes no settings: make it a frozen dataclass or define get_config()"
            )
        config = {f.name: _config_value(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"rule": f"{type(self).__module__}.{type(self).__qualname__}", **config}


def _config_value(value: Any) -> Any:
    if isinstance(value, Rule):
        return value.get_config()
    if isinstance(value, Mapping):
        return {str(k): _config_value(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_config_value(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"setting {value!r} is not plain data (a number, string, rule, list or mapping)")


@dataclass(frozen=True)
class Gradient(Rule):
    """The chain rule: :math:`s_j = \\sum_k s_k \\, \\partial y_k / \\partial a_j`. On a reshaping
    step it moves each value back to where it came from, on a linear step it applies the
    transposed weights, on max-pooling it routes each window's signal to its maximum."""

    def backward(self, op: Op, record: Record, signal: tf.Tensor) -> list[tf.Tensor]:
        return record.vjp(op, signal)


@dataclass(frozen=True)
class Pass(Rule):
    """The signal passes unchanged, :math:`s_x = s_y`: for steps whose output has the shape of
    their single input (element-wise activations and affine maps, dropout). Relevance passes an
    element-wise step unchanged; the shift of an affine map gets no share."""

    def applies_to(self, op: Op) -> bool:
        return op.kind in ("identity", "relu", "activation", "affine", "layer_norm")

    def backward(self, op: Op, record: Record, signal: tf.Tensor) -> list[tf.Tensor]:
        return [tf.reshape(signal, tf.shape(record.inputs[0]))]


def _config_key(config: Any) -> str:
    return json.dumps(config, sort_keys=True, allow_nan=True)


@dataclass(frozen=True)
class Composite:
    """Assigns a rule to every step of a model's graph.

    The first match wins: ``by_name`` (a layer's name, or its path through nested models, → rule),
    then for Dense and convolution layers ``first`` (those reading the input without a weighted
    layer before them) and ``last`` (those producing the logit without a weighted layer after
    them), then ``by_type`` (a kind of :data:`KINDS` → rule), then ``default`` for Dense and
    convolution layers, then the method's own choice for each kind, :meth:`kind_rules`. A kind
    mapped to ``None`` in ``by_type`` is refused.

    Subclasses fix :meth:`kind_rules` (see :class:`~understanding_nn.lrp.Composite`); the base class
    maps no kind, so every rule must be given.
    """

    default: Rule | None = None
    first: Rule | None = None
    last: Rule | None = None
    by_type: Mapping[str, Rule | None] = field(default_factory=dict)
    by_name: Mapping[str, Rule] = field(default_factory=dict)

    #: What error messages call the method.
    method: ClassVar[str] = "this composite"

    def kind_rules(self) -> Mapping[str, Rule | None]:
        """The method's rule for each kind of step not matched otherwise (missing: refused)."""
        return {}

    def __post_init__(self) -> None:
        unknown = set(self.by_type) - set(KINDS) - {"other"}
        if unknown:
            raise ValueError(f"by_type keys must be kinds of layers, {sorted(KINDS)} or 'other'; got {sorted(unknown)}")
        for rule in [self.default, self.first, self.last, *self.by_type.values(), *self.by_name.values()]:
            if rule is not None and not isinstance(rule, Rule):
                raise TypeError(f"a composite's rules must be Rule objects, got {rule!r}")

    def get_config(self) -> dict[str, Any]:
        """The composite's class and every rule's settings as plain data."""
        config = {f.name: _config_value(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"composite": f"{type(self).__module__}.{type(self).__qualname__}", **config}

    def key(self) -> str:
        """The composite's settings as a string, for caching compiled propagations."""
        return _config_key(self.get_config())

    def assignment(self, model: keras.Model, method: str | None = None) -> dict[str, Rule]:
        """The rule each step of ``model`` gets, by step name (a fused activation is named
        ``"<layer>.activation"``; a folded batch normalization is part of its layer's step).

        Examples
        --------
        >>> import keras
        >>> from understanding_nn.lrp import Composite, Epsilon, ZPlus
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu", name="hidden"),
        ...                           keras.layers.Dense(2, name="logits")])
        >>> Composite(Epsilon(0.25), first=ZPlus()).assignment(model)  # doctest: +NORMALIZE_WHITESPACE
        {'hidden': ZPlus(alpha=1.0, beta=0.0, bias=False), 'hidden.activation': Pass(),
         'logits': Epsilon(epsilon=0.25, bias=True)}
        """
        graph = trace(model)
        return {node.op.name: rule for node, rule in zip(graph.nodes, self.rules(graph, method))}

    def rules(self, graph: Graph, method: str | None = None) -> list[Rule]:
        """The rule of every step of ``graph``, or an :class:`UnsupportedModelError` naming the
        first step that has none (its layer, its type and the method)."""
        method = method or self.method
        known = set().union(*(node.op.names() for node in graph.nodes))
        missing = set(self.by_name) - known
        if missing:
            raise ValueError(
                f"the composite names layers {sorted(missing)} that are not in model {graph.model_name!r}; "
                f"its layers are {sorted(node.op.name for node in graph.nodes)}"
            )
        first, last = graph.first_and_last()
        chosen = []
        for index, node in enumerate(graph.nodes):
            op = node.op
            rule = next((self.by_name[name] for name in sorted(op.names()) if name in self.by_name), None)
            weighted = op.kind in ("dense", "conv")
            if rule is None and weighted and index in first:
                rule = self.first
            if rule is None and weighted and index in last:
                rule = self.last
            if rule is None and op.kind in self.by_type:
                rule = self.by_type[op.kind]
                if rule is None:
                    raise _refusal(op, method, f"the composite refuses layers of kind {op.kind!r}")
            if rule is None and weighted:
                rule = self.default
            if rule is None:
                rule = self.kind_rules().get(op.kind)
            if rule is None:
                raise _refusal(op, method, _why_refused(op))
            if not rule.applies_to(op):
                raise _refusal(op, method, f"its rule {type(rule).__name__} does not apply to layers of kind {op.kind!r}")
            chosen.append(rule)
        return chosen


def _why_refused(op: Op) -> str:
    if op.kind == "other":
        if isinstance(op, ActivationOp):
            return "its activation function is not one the package recognises"
        return "the package has no rule for this type of layer"
    return f"the method has no rule for layers of kind {op.kind!r} ({KINDS[op.kind][0]})"


def _refusal(op: Op, method: str, reason: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"layer {op.name!r} ({op.layer_type}) cannot be explained by {method}: {reason}. "
        "Give it a rule with Composite(by_name={...}) if you know one; gradient-based methods "
        "('gradient', 'gradient_x_input', 'integrated_gradients', 'smoothgrad', 'grad_cam') work on "
        "any differentiable model; unn.propagation.supported_layers() lists what each method supports"
    )


# --------------------------------------------------------------------------------------------
# The backward pass
# --------------------------------------------------------------------------------------------


def backward(
    graph: Graph,
    rules: Sequence[Rule],
    forward: Forward,
    start: tf.Tensor,
    reference_values: list[tf.Tensor] | None = None,
    keep: bool = False,
) -> tf.Tensor | dict[int, tf.Tensor]:
    """Pass ``start`` (the signal at the logits) back to the input, step by step in reverse
    topological order, each step by its rule; a value read by several steps sums their signals.

    ``forward`` is the recorded forward pass (:meth:`Graph.forward`); ``reference_values`` the
    values at a reference input (:meth:`Graph.run`), for DeepLIFT. Returns the signal at the
    input, or with ``keep=True`` the signal at every value (a dict by value index, the input at 0).
    """
    values = forward.values
    non_negative = graph.non_negative()
    signals: dict[int, tf.Tensor] = {graph.logit: start}
    kept: dict[int, tf.Tensor] = {}
    for index in reversed(range(len(graph.nodes))):
        node, rule = graph.nodes[index], rules[index]
        signal = signals.pop(node.output, None)
        if signal is None:
            continue
        if keep:
            kept[node.output] = signal
        record = Record(
            forward.step_inputs[index],
            values[node.output],
            None if reference_values is None else [reference_values[i] for i in node.inputs],
            None if reference_values is None else reference_values[node.output],
            non_negative=all(i in non_negative for i in node.inputs),
            tape=forward.tape,
        )
        for value, passed in zip(node.inputs, rule.backward(node.op, record, signal)):
            signals[value] = signals[value] + passed if value in signals else passed
    result = signals.get(0, tf.zeros_like(values[0]))
    if keep:
        kept[0] = result
        return kept
    return result


# --------------------------------------------------------------------------------------------
# The table of supported layers
# --------------------------------------------------------------------------------------------


def supported_layers(composites: Mapping[str, Composite] | None = None) -> list[dict[str, str]]:
    """One row per kind of step: the Keras layers of that kind and, for each method, the rule it
    applies (``"refused"`` where it has none). Generated from :data:`KINDS` and the composites'
    :meth:`Composite.kind_rules`, so it cannot drift from the code.

    ``composites`` maps a column title to a composite; by default the methods of the package.
    """
    if composites is None:
        from .deeplift import DeepLiftComposite
        from .gradients import DeconvnetComposite, GradientComposite, GuidedBackpropComposite
        from .lrp import Composite as LrpComposite

        composites = {
            "gradient": GradientComposite(),
            "LRP": LrpComposite(),
            "DeepLIFT": DeepLiftComposite(),
            "guided backprop": GuidedBackpropComposite(),
            "deconvnet": DeconvnetComposite(),
        }
    rows = []
    for kind, (meaning, layers) in [*KINDS.items(), ("other", ("any other layer or function", ()))]:
        row = {"kind": kind, "meaning": meaning, "layers": ", ".join(t.__name__ for t in layers) or "—"}
        for title, composite in composites.items():
            if kind in ("dense", "conv") and composite.default is not None:
                rule = composite.default
            else:
                rule = composite.kind_rules().get(kind)
            row[title] = "refused" if rule is None else _rule_label(rule)
        rows.append(row)
    return rows


def _rule_label(rule: Rule) -> str:
    config = rule.get_config()
    settings = ", ".join(f"{k}={v}" for k, v in config.items() if k != "rule")
    return f"{type(rule).__name__}({settings})"

