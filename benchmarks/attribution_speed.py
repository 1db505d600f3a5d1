"""Speed of every attribution method relative to one plain gradient, on the book's CNN.

Run with `.venv/bin/python benchmarks/attribution_speed.py [model] [batch]` (defaults: `cnn`, 256
test digits). Each method is timed after a warm-up call (which traces its compiled function),
as the median of five runs, and reported as a multiple of the time of one `gradient` call on the
same batch (one forward and one backward pass). Targets are the predicted classes.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import understanding_nn as unn  # noqa: E402


def main(model_name: str = "cnn", batch: int = 256) -> None:
    x, _ = unn.data.load_mnist("test")
    x = x[:batch]
    model = unn.models.load(model_name)
    target = unn.attribution.predict_logits(model, x).argmax(axis=1)
    baseline = unn.metrics.median_seconds(lambda: unn.explain(model, x, "gradient", target, batch_size=batch), repeats=5)
    print(f"model {model_name!r}, batch of {len(x)}: one gradient takes {baseline * 1000:.1f} ms")
    print(f"{'method':22s} {'ms':>8s} {'× gradient':>11s}")
    for method in unn.methods():
        try:
            seconds = unn.metrics.median_seconds(lambda: unn.explain(model, x, method, target, batch_size=batch), repeats=5)
        except unn.UnsupportedModelError as error:  # e.g. CAM on a model without a GAP head
            print(f"{method:22s} {'not applicable':>20s}: {error}")
            continue
        print(f"{method:22s} {seconds * 1000:8.1f} {seconds / baseline:11.2f}")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["cnn"]), *(int(a) for a in sys.argv[2:3]))
