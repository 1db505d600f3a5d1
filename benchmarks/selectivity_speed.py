"""Section ``pixel flipping``: the cost of Part V's selectivity curves against the forward passes
they cannot avoid.

:func:`understanding_nn.metrics.pixel_flipping` (4×4 patches, fill ``"zero"``, every patch
removed, most relevant first) on test digits of ``cnn_gap``, the model of chapter 5.2, is timed
against :func:`understanding_nn.attribution.class_scores` alone on the same N × (K + 1)
perturbed inputs, built here beforehand from the package's patch tiling and removal order and
sent through the model in the same batches (every step of a group of digits together). The
curves they give are checked to be pixel flipping's: the two calls do the same forward work.
The ratio is what the measure adds (building the perturbed copies and ranking the patches);
the goal is at most 1.2. The two are timed in turn, round after round, with
:func:`understanding_nn.metrics.median_seconds`, and the table holds the median over the
rounds of each round's ratio.

Run alone with ``.venv/bin/python -m benchmarks --section "pixel flipping"`` (or this file as a
script).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import understanding_nn as unn  # noqa: E402
from benchmarks.table import Row, join_remarks, plural, usable_cores  # noqa: E402

SECTION = "pixel flipping"
MODEL = "cnn_gap"
PATCH_SIZE = 4
FILL = "zero"
INPUTS_PER_PASS = 1024  # pixel_flipping's default batch_size


def perturbed_inputs(x: np.ndarray, relevance: np.ndarray, patch_size: int) -> np.ndarray:
    """Every input with its first k most relevant patches set to zero, for k = 0 … K (all
    patches): shape ``(N * (K + 1), *x.shape[1:])``, the K + 1 copies of an input together."""
    patches = unn.metrics.patch_index(x.shape[1:], patch_size)  # (H, W): the patch of each pixel
    n_patches = int(patches.max()) + 1
    # Summed in float64 as pixel flipping sums them: equal patches must tie here as they tie there.
    by_pixel = relevance.astype(np.float64).reshape(len(x), patches.size, -1).sum(axis=2)
    patch_relevance = by_pixel @ np.eye(n_patches)[patches.ravel()]
    removal = unn.metrics.removal_order(patch_relevance, "morf")  # (N, P): patch removed at each step
    step_of_patch = np.argsort(removal, axis=1)  # (N, P): the step at which each patch goes
    step_of_pixel = step_of_patch[:, patches]  # (N, H, W)
    steps = np.arange(n_patches + 1)
    kept = step_of_pixel[:, None] >= steps[None, :, None, None]  # (N, K + 1, H, W)
    return (x[:, None] * kept[..., None]).reshape(-1, *x.shape[1:]).astype(np.float32)


def flipping_cost(model: keras.Model, x: np.ndarray, *, label: str, rounds: int, repeats: int) -> list[Row]:
    """Pixel flipping on ``x`` against its forward passes alone.

    Parameters
    ----------
    model
        The network; ``label`` is its name in the table.
    x
        The inputs ``(N, H, W, C)``; their ``gradient_x_input`` explanations rank the patches.
    rounds
        How many times the two are timed in turn; the table holds the median.
    repeats
        Timed calls of each per round (after one warm-up call).

    Returns
    -------
    list of Row
        The ratio (× forward passes), and the rates of both in perturbed inputs per second.
    """
    target = unn.attribution.predict_logits(model, x).argmax(axis=1)
    relevance = unn.explain(model, x, "gradient_x_input", target)
    perturbed = perturbed_inputs(x, relevance, PATCH_SIZE)
    steps = len(perturbed) // len(x)
    per_pass = (INPUTS_PER_PASS // steps) * steps  # pixel flipping sends whole groups of K + 1 copies

    def flip() -> np.ndarray:
        return unn.metrics.pixel_flipping(
            model, x, relevance, target, patch_size=PATCH_SIZE, fill=FILL, batch_size=INPUTS_PER_PASS, progress=False
        )

    def forward() -> np.ndarray:
        return unn.attribution.class_scores(model, perturbed, batch_size=per_pass)

    curves = forward()[np.arange(len(perturbed)), np.repeat(target, steps)].reshape(len(x), steps)
    if not np.allclose(curves, flip(), rtol=1e-5, atol=1e-5):
        raise RuntimeError("the perturbed inputs built here do not give pixel flipping's curves: the comparison would be unfair")
    flips, forwards = [], []
    for _ in range(rounds):
        flips.append(unn.metrics.median_seconds(flip, repeats))
        forwards.append(unn.metrics.median_seconds(forward, repeats))
    ratio = float(np.median(np.divide(flips, forwards)))
    note = join_remarks(
        f"{len(x):,} digits × {steps} steps = {len(perturbed):,} inputs",
        f"{PATCH_SIZE}×{PATCH_SIZE} patches, fill {FILL!r}",
        f"median of {plural(rounds, 'round')}",
    )
    threads = usable_cores()
    return [
        Row(SECTION, label, "pixel flipping", threads, ratio, "× forward passes", note),
        Row(SECTION, label, "pixel flipping", threads, len(perturbed) / float(np.median(flips)), "inputs/s", note),
        Row(SECTION, label, "forward passes alone", threads, len(perturbed) / float(np.median(forwards)), "inputs/s", note),
    ]


def section(quick: bool) -> list[Row]:
    """The section as the suite runs it: 100 test digits, 5 rounds of 3 timed calls each
    (``--quick``: 20 digits, one round of one)."""
    x, _ = unn.data.load_mnist("test")
    x = x[: 20 if quick else 100]
    model = unn.models.load(MODEL)
    return flipping_cost(model, x, label=MODEL, rounds=1 if quick else 5, repeats=1 if quick else 3)


if __name__ == "__main__":
    from benchmarks.run import main

    raise SystemExit(main(["--section", SECTION, *sys.argv[1:]]))
