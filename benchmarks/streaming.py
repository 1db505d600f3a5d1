"""Section ``streaming``: explanations of a data set larger than memory should need, written to disk
batch by batch.

The inputs are MNIST-shaped: the 1,000 test digits, repeated, as a ``tf.data.Dataset`` batched
by 256, explained by ``unn.explain(model, dataset, "gradient", out=<tmp>/R.npy,
progress=False)``, which writes each batch's relevance to the ``.npy`` file and returns a
read-only memory map of it. Each size runs in a fresh process, so that its peak resident memory
is its own (``VmHWM``; :func:`benchmarks.worker.peak_resident_mb` says why not ``ru_maxrss``):
the peak for 60,000 inputs should be that for 1,000, as the data set and the relevance never sit
in memory whole. The same 60,000 inputs as one array in memory,
relevance returned as an array, are the reference: what streaming saves. Rates are images per
second of the whole call (the targets, the predicted classes, are part of it), timed with
:func:`understanding_nn.metrics.median_seconds`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.table import Row, join_remarks, usable_cores
from benchmarks.worker import load_model, peak_resident_mb, run_in_subprocess, serve

SECTION = "streaming"
MODEL = "cnn"
METHOD = "gradient"
SIZES = (1_000, 60_000)
DATASET_BATCH = 256


def measure(*, model: str, inputs: int, streamed: bool, repeats: int) -> dict[str, float]:
    """The worker, run in a fresh process: seconds of one call on ``inputs`` inputs, and the
    process's peak resident memory at the end (MB, and where it was read)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import understanding_nn as unn

    network = load_model(model)
    digits, _ = unn.data.load_mnist("test")
    with tempfile.TemporaryDirectory() as folder:
        if streamed:
            copies = -(-inputs // len(digits))
            dataset = tf.data.Dataset.from_tensor_slices(digits).repeat(copies).take(inputs).batch(DATASET_BATCH)
            out = Path(folder) / "R.npy"

            def call() -> Any:
                return unn.explain(network, dataset, METHOD, out=out, progress=False)
        else:
            x = np.resize(digits, (inputs, *digits.shape[1:]))

            def call() -> Any:
                return unn.explain(network, x, METHOD, progress=False)

        seconds = unn.metrics.median_seconds(call, repeats)
        relevance = call()
        if relevance.shape != (inputs, *digits.shape[1:]):
            raise RuntimeError(f"explain returned relevance of shape {relevance.shape} for {inputs:,} inputs")
        del relevance  # the memory map must be closed before its folder goes
        peak, source = peak_resident_mb()
    return {"seconds": seconds, "peak_mb": peak, "peak_source": source}


def stream(
    *,
    model: str = MODEL,
    label: str | None = None,
    sizes: Sequence[int] = SIZES,
    reference: bool = True,
    repeats: int = 1,
) -> list[Row]:
    """Throughput and peak memory of the streaming path for each size, and of the array in
    memory for the largest (``reference``).

    Parameters
    ----------
    model
        A zoo name or a ``.keras`` file (see :func:`benchmarks.worker.load_model`).
    label
        The model's name in the table (default ``model``).
    sizes
        Numbers of inputs, each streamed in a fresh process.
    reference
        Also explain the largest size as one array in memory.
    repeats
        Timed calls per process (after one warm-up call).

    Returns
    -------
    list of Row
        Per case: images per second and the process's peak resident memory in MB; for every
        case but the smallest, that peak also as a multiple of the smallest's; with the
        reference, the streamed rate of the largest size as a multiple of the array's.
    """
    cases = [(size, True) for size in sorted(sizes)] + ([(max(sizes), False)] if reference else [])
    rows = []
    smallest_peak = None
    rates: dict[bool, float] = {}  # images/s of the largest size, streamed and in memory
    for inputs, streamed in cases:
        result = run_in_subprocess("benchmarks.streaming", dict(model=model, inputs=inputs, streamed=streamed, repeats=repeats))
        note = join_remarks(f"{METHOD}, a fresh process each", f"peak resident memory: {result['peak_source']}")
        how = (f"tf.data.Dataset of {inputs:,} (batches of {DATASET_BATCH}) to .npy" if streamed
               else f"array of {inputs:,} in memory (reference)")
        rows += [
            Row(SECTION, label or model, how, usable_cores(), inputs / result["seconds"], "images/s", note),
            Row(SECTION, label or model, f"{how}: peak memory", usable_cores(), result["peak_mb"], "MB", note),
        ]
        if smallest_peak is None:
            smallest_peak = result["peak_mb"]
        else:
            rows.append(Row(SECTION, label or model, f"{how}: peak memory", usable_cores(), result["peak_mb"] / smallest_peak,
                            f"× {min(sizes):,} streamed", note))
        rates[streamed] = inputs / result["seconds"]
    if reference:
        rows.append(Row(SECTION, label or model, f"tf.data.Dataset of {max(sizes):,} to .npy: rate", usable_cores(),
                        rates[True] / rates[False], "× array in memory", note))
    return rows


def section(quick: bool) -> list[Row]:
    """The section as the suite runs it: 1,000 and 60,000 inputs, and the 60,000 as an array
    (``--quick``: 1,000 and 4,000)."""
    if quick:
        return stream(sizes=(1_000, 4_000))
    return stream()


if __name__ == "__main__":
    serve(measure)
