"""Cost of pixel flipping against the forward passes it cannot avoid (chapter 5.2).

Run with `.venv/bin/python benchmarks/selectivity_speed.py [model] [digits]` (defaults: `cnn_gap`,
1,000 test digits). For each fill, `unn.metrics.pixel_flipping` (4×4 patches, every patch
removed: 50 steps per digit) is timed against one `predict_logits` call on the same number of
inputs, the perturbed copies already built: the forward passes alone. The ratio is what the
measure adds (building the perturbed copies, ranking the patches, and for `"impute"` the linear
solves); the goal for the fills without a solve is at most 1.2. Times are medians of three runs
after a warm-up call.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import understanding_nn as unn  # noqa: E402


def main(model_name: str = "cnn_gap", digits: int = 1000) -> None:
    x, _ = unn.data.load_mnist("test")
    x = x[:digits]
    model = unn.models.load(model_name)
    target = unn.attribution.predict_logits(model, x).argmax(axis=1)
    relevance = unn.explain(model, x, "gradient_x_input", target)
    steps = (x.shape[1] // 4) * (x.shape[2] // 4) + 1
    perturbed = np.repeat(x, steps, axis=0)  # as many inputs as pixel flipping sends through the model
    batch = 1024
    forward = unn.metrics.median_seconds(lambda: unn.attribution.predict_logits(model, perturbed, batch_size=batch))
    print(f"model {model_name!r}, {digits} digits × {steps} steps = {len(perturbed):,} forward passes: "
          f"{forward:.2f} s ({len(perturbed) / forward:,.0f} inputs/s)")
    print(f"{'fill':10s} {'seconds':>8s} {'× forward passes':>17s}")
    for fill in unn.metrics.FILLS:
        seconds = unn.metrics.median_seconds(
            lambda: unn.metrics.pixel_flipping(model, x, relevance, target, fill=fill, batch_size=batch), repeats=1 if fill == "impute" else 3
        )
        print(f"{fill:10s} {seconds:8.2f} {seconds / forward:17.2f}")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["cnn_gap"]), *(int(a) for a in sys.argv[2:3]))
