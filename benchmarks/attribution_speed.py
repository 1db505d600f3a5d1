"""Speed of every attribution method relative to one plain gradient.

Run with `.venv/bin/python benchmarks/attribution_speed.py [model] [batch]` (defaults: `cnn`, the
book's 4-layer CNN, and 256 test digits; `resnet` is the residual network of chapter 2.7). Each
method is timed with `unn.metrics.relative_cost`: after a warm-up call (which traces its compiled
function), five runs of the method and five of one `gradient` call on the same batch (one forward
and one backward pass) are timed in turn, and the ratio of the medians is reported. Targets are the
predicted classes.

The propagation engine's targets on `cnn`: every single-pass method (one forward and one modified
backward pass: the LRP presets, deep Taylor, DeepLIFT, deconvnet, guided backprop) at most 1.5×
the gradient, LRP-αβ at most 2.5×.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import understanding_nn as unn  # noqa: E402


def main(model_name: str = "cnn", batch: int = 256) -> None:
    x, _ = unn.data.load_mnist("test")
    x = x[:batch]
    model = unn.models.load(model_name)
    target = unn.attribution.predict_logits(model, x).argmax(axis=1)
    baseline = unn.metrics.median_seconds(lambda: unn.explain(model, x, "gradient", target, batch_size=batch), repeats=5)
    print(f"model {model_name!r}, batch of {len(x)}: one gradient takes {baseline * 1000:.1f} ms")
    print(f"{'method':22s} {'× gradient':>11s}")
    for method in unn.methods():
        try:
            ratio = unn.metrics.relative_cost(model, x, method, target, repeats=5)
        except unn.UnsupportedModelError as error:  # e.g. CAM on a model without a GAP head
            print(f"{method:22s} {'not applicable':>20s}: {error}")
            continue
        print(f"{method:22s} {ratio:11.2f}")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["cnn"]), *(int(a) for a in sys.argv[2:3]))
