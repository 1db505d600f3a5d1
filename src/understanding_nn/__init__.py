"""Understanding NN: interpreting and explaining Keras 3 models.

The package behind the *Understanding NN* textbook (Montavon, Samek & Müller, *Methods for
Interpreting and Understanding Deep Neural Networks*, Digital Signal Processing 73, 2018).

>>> import understanding_nn as unn
>>> R = unn.explain(model, x, method="sensitivity", target=labels)   # doctest: +SKIP
>>> unn.methods()                                                     # doctest: +SKIP

Modules, by idea: :mod:`~understanding_nn.data` (MNIST, cluttered MNIST, toys),
:mod:`~understanding_nn.models` (the model zoo), :mod:`~understanding_nn.attribution` (the
uniform :func:`explain` call), :mod:`~understanding_nn.propagation` (the model's graph and the one
backward pass every propagation method shares), :mod:`~understanding_nn.gradients` (gradient-based methods),
:mod:`~understanding_nn.lrp` (layer-wise relevance propagation and deep Taylor decomposition),
:mod:`~understanding_nn.deeplift` (DeepLIFT), :mod:`~understanding_nn.cam` (class activation maps: CAM,
Grad-CAM, Grad-CAM++), :mod:`~understanding_nn.prototypes` (activation
maximization, with an expert or in a generator's code space), :mod:`~understanding_nn.experts`
(density models of the digits), :mod:`~understanding_nn.generators` (a variational autoencoder), :mod:`~understanding_nn.metrics` (quality measures of maps),
:mod:`~understanding_nn.analysis` (what explanations are for: SpRAy, contrastive explanations, summaries) and
:mod:`~understanding_nn.plotting` (heatmaps); :mod:`~understanding_nn.streaming` holds what
:func:`explain` does for a whole data set (streams of batches, results on disk, progress, several
devices).
"""

__version__ = "0.1.0"

from . import analysis, attribution, cam, data, deeplift, experts, generators, gradients, lrp, metrics, models, plotting, propagation, prototypes, streaming  # noqa: E402
from .attribution import UnsupportedModelError, explain, explain_batches, methods  # noqa: E402

__all__ = [
    "UnsupportedModelError",
    "__version__",
    "analysis",
    "attribution",
    "cam",
    "data",
    "deeplift",
    "experts",
    "explain",
    "explain_batches",
    "generators",
    "gradients",
    "lrp",
    "methods",
    "metrics",
    "models",
    "plotting",
    "propagation",
    "prototypes",
    "streaming",
]
