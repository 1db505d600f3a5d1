"""Section ``ratios``: every attribution method's time as a multiple of one plain gradient.

The unit is one ``gradient`` call on the same batch, one forward and one backward pass; each
method is timed with :func:`understanding_nn.metrics.relative_cost`, which runs the method and
the gradient in turn after a warm-up call of each (tracing) and divides the medians, so a
machine that slows down meanwhile slows both. The targets are the predicted classes, resolved
beforehand. ``gradient`` against itself is in the table too: its distance from 1 is the noise of
the run. A method that does not apply to a model (CAM without a global-average-pooling head) is
listed as not applicable, with the reason the package gives.

The propagation engine's targets on ``cnn``: every single-pass method (one forward and one
modified backward pass: the LRP presets, deep Taylor, DeepLIFT, deconvnet, guided backprop) at
most 1.5× the gradient, LRP-αβ at most 2.5×.

Run alone with ``.venv/bin/python -m benchmarks --section ratios`` (or this file as a script).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import understanding_nn as unn  # noqa: E402
from benchmarks.table import NOT_APPLICABLE, Row, join_remarks, plural, usable_cores  # noqa: E402

SECTION = "ratios"
MODELS = ("cnn", "resnet")
# A run of these is already dozens of passes (their steps and samples): fewer runs give as
# steady a median, and they would otherwise take most of the section's time.
MANY_PASSES = ("integrated_gradients", "smoothgrad")


def method_ratios(
    models: Mapping[str, keras.Model],
    x: np.ndarray,
    *,
    repeats: int,
    methods: Sequence[str] | None = None,
    repeats_of: Mapping[str, int] | None = None,
    threads: int | None = None,
) -> list[Row]:
    """Time every method against one gradient on each model.

    Parameters
    ----------
    models
        The networks by the name the table shows.
    x
        The batch, explained in one call (``batch_size=len(x)``).
    repeats
        Timed runs of each method and of the gradient (after one warm-up call of each).
    methods
        The methods to time; ``None`` for every one of :func:`understanding_nn.methods`.
    repeats_of
        Other numbers of runs for some methods, by name (noted in their rows).
    threads
        The intra-op thread count to record; ``None`` for TensorFlow's default, one per core.

    Returns
    -------
    list of Row
        Per model: the absolute time of one gradient (ms; the unit of the others), then one
        ratio per method, ``None`` with the reason for a method that does not apply.
    """
    unknown = sorted(set(repeats_of or {}) - set(unn.methods()))
    if unknown:
        raise ValueError(f"repeats_of names no method of unn.methods(): {', '.join(unknown)}")
    threads = usable_cores() if threads is None else threads
    batch = f"batch of {len(x):,}"
    rows = []
    for name, model in models.items():
        target = unn.attribution.predict_logits(model, x).argmax(axis=1)
        gradient = unn.metrics.median_seconds(lambda: unn.explain(model, x, "gradient", target, batch_size=len(x)), repeats)
        rows.append(Row(SECTION, name, "one gradient (forward + backward)", threads, gradient * 1000, "ms",
                        join_remarks(batch, "absolute: depends on the machine, the unit of the ratios")))
        for method in methods if methods is not None else unn.methods():
            runs = (repeats_of or {}).get(method, repeats)
            fewer = f"{plural(runs, 'run')} of it and of the gradient, the others {repeats}" if runs != repeats else ""
            try:
                ratio = unn.metrics.relative_cost(model, x, method, target, repeats=runs)
            except unn.UnsupportedModelError as error:
                reason = join_remarks(batch, f"{NOT_APPLICABLE}: {error}")
                rows.append(Row(SECTION, name, method, threads, None, "× gradient", reason))
                continue
            self_check = "the gradient against itself: 1 up to the noise of the run" if method == "gradient" else ""
            rows.append(Row(SECTION, name, method, threads, ratio, "× gradient", join_remarks(batch, self_check, fewer)))
    return rows


def section(quick: bool) -> list[Row]:
    """The section as the suite runs it: 256 test digits, 5 interleaved runs per method (3 for
    those of :data:`MANY_PASSES`), on the timing CNN and the residual network (``--quick``: 32
    digits, one run)."""
    x, _ = unn.data.load_mnist("test")
    x = x[: 32 if quick else 256]
    models = {name: unn.models.load(name) for name in MODELS}
    if quick:
        return method_ratios(models, x, repeats=1)
    return method_ratios(models, x, repeats=5, repeats_of=dict.fromkeys(MANY_PASSES, 3))


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--section", SECTION, *sys.argv[1:]]))
