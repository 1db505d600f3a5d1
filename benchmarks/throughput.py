"""Section ``throughput``: images per second of ``gradient`` and ``lrp.epsilon`` on the timing CNN,
for 1, 2 and 4 intra-op threads and batch sizes from 32 to 1,024.

TensorFlow fixes its thread pools when it starts, so each thread count runs in a fresh process
(:func:`benchmarks.worker.run_in_subprocess`) that sets
``tf.config.threading.set_intra_op_parallelism_threads`` before anything else and the inter-op
pool to one thread: the graph's operations then run one after another, each split over the
intra-op threads, so the count is the number of threads doing the arithmetic. Every call
explains the same fixed number of images (the test digits repeated) with its batch size, the
targets given (the predicted classes, computed beforehand), and is timed with
:func:`understanding_nn.metrics.median_seconds`. The thread counts take turns: the suite runs
them round after round, each round in a new process, and reports the median over the rounds,
so a busy spell of the machine lands on one round of one count rather than on all of its
cells. More threads than the machine has cores oversubscribes it: the table says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.table import Row, join_remarks, plural, usable_cores
from benchmarks.worker import load_model, run_in_subprocess, serve

SECTION = "throughput"
MODEL = "cnn"
METHODS = ("gradient", "lrp.epsilon")
THREADS = (1, 2, 4)
BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
INTER_OP_THREADS = 1


def measure(
    *, model: str, threads: int, methods: Sequence[str], batch_sizes: Sequence[int], images: int, repeats: int
) -> dict[str, Any]:
    """The worker, run in a fresh process: seconds per call for every method and batch size.

    Returns
    -------
    dict
        ``seconds[method][str(batch_size)]``; ``cores_busy``, the process's CPU time over the
        wall-clock time of all the calls; and the intra-op and inter-op thread counts TensorFlow
        reports having used.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # Before any tensor exists: afterwards TensorFlow refuses to change its pools.
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(INTER_OP_THREADS)
    import understanding_nn as unn

    network = load_model(model)
    digits, _ = unn.data.load_mnist("test")
    x = np.resize(digits, (images, *digits.shape[1:]))  # the digits repeated up to `images`
    target = unn.attribution.predict_logits(network, x).argmax(axis=1)
    for method in methods:  # tracing is Python on one core: done before the clock of cores_busy starts
        unn.explain(network, x[:1], method, target[:1])
    seconds: dict[str, dict[str, float]] = {}
    # How many cores the process kept busy on average: on a quiet machine the thread count, up
    # to the number of cores; less means other work took the cores and the rates say little.
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    for method in methods:
        seconds[method] = {
            str(batch_size): unn.metrics.median_seconds(
                lambda: unn.explain(network, x, method, target, batch_size=batch_size), repeats
            )
            for batch_size in batch_sizes
        }
    return {
        "seconds": seconds,
        "cores_busy": (time.process_time() - cpu_started) / (time.perf_counter() - wall_started),
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def images_per_second(
    *,
    model: str = MODEL,
    label: str | None = None,
    threads: Sequence[int] = THREADS,
    methods: Sequence[str] = METHODS,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    images: int = 1024,
    rounds: int = 3,
    repeats: int = 1,
) -> list[Row]:
    """Throughput for every thread count, method and batch size.

    Parameters
    ----------
    model
        A zoo name or a ``.keras`` file (see :func:`benchmarks.worker.load_model`).
    label
        The model's name in the table (default ``model``).
    threads
        Intra-op thread counts, one fresh process each per round.
    methods, batch_sizes
        The cells measured in every process.
    images
        Inputs explained by each timed call.
    rounds
        How many times every thread count is measured, in turn; the table holds the median.
    repeats
        Timed calls per cell and round (after one warm-up call).

    Returns
    -------
    list of Row
        One row per method, batch size and thread count, in images per second; and per thread
        count, the cores the process kept busy.
    """
    seconds: dict[tuple[int, str, int], list[float]] = {}
    cores_busy: dict[int, list[float]] = {}
    for _ in range(rounds):
        for count in threads:
            result = run_in_subprocess("benchmarks.throughput", dict(
                model=model, threads=count, methods=list(methods), batch_sizes=list(batch_sizes), images=images, repeats=repeats,
            ))
            if (result["intra_op"], result["inter_op"]) != (count, INTER_OP_THREADS):
                raise RuntimeError(
                    f"TensorFlow ran with {result['intra_op']} intra-op and {result['inter_op']} inter-op threads, "
                    f"not the {count} and {INTER_OP_THREADS} the benchmark set"
                )
            cores_busy.setdefault(count, []).append(result["cores_busy"])
            for method in methods:
                for batch_size in batch_sizes:
                    seconds.setdefault((count, method, batch_size), []).append(result["seconds"][method][str(batch_size)])
    cores = usable_cores()
    rows = []
    common = [f"{images:,} images per call", plural(INTER_OP_THREADS, "inter-op thread"), f"median of {plural(rounds, 'round')}"]
    for method in methods:
        for batch_size in batch_sizes:
            for count in threads:
                rows.append(Row(
                    SECTION, label or model, f"{method}, batch {batch_size:,}", count,
                    images / float(np.median(seconds[(count, method, batch_size)])), "images/s",
                    join_remarks(*common, _oversubscribed(count, cores)),
                ))
    for count in threads:
        rows.append(Row(
            SECTION, label or model, "cores kept busy (CPU time / wall time)", count,
            float(np.median(cores_busy[count])), "cores",
            join_remarks(*common, _oversubscribed(count, cores), "cores kept busy: over every call of the process, "
                         "on a quiet machine the thread count, at most the cores"),
        ))
    return rows


def _oversubscribed(threads: int, cores: int) -> str:
    return f"{threads} threads on {cores} cores: oversubscribed" if threads > cores else ""


def section(quick: bool) -> list[Row]:
    """The section as the suite runs it: 1,024 images per call, 3 rounds (``--quick``: 256
    images, batch sizes 32 and 256, one round)."""
    if quick:
        return images_per_second(batch_sizes=(32, 256), images=256, rounds=1)
    return images_per_second()


if __name__ == "__main__":
    serve(measure)
