"""Measurements that need a fresh Python process: a TensorFlow thread count (fixed before
TensorFlow starts) or a peak resident memory (which only grows within a process, see
:func:`peak_resident_mb`).

A section calls :func:`run_in_subprocess` with a module of this package and keyword arguments;
the module ends in ``if __name__ == "__main__": serve(its_worker)``, so the child runs
``its_worker(**arguments)`` and hands back its JSON-serialisable result on its last line of
standard output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Anything may print to standard output before the result (a library's notice, say): the
# result is the line after this marker.
_RESULT_MARKER = "benchmark result:"


def run_in_subprocess(module: str, arguments: dict[str, Any], *, timeout: float = 1800) -> Any:
    """Run ``module``'s worker on ``arguments`` in a fresh Python process and return its result.

    Parameters
    ----------
    module
        The worker's module, for example ``"benchmarks.throughput"``; it is run with
        ``python -m`` from the repository's root.
    arguments
        Keyword arguments of the worker, JSON-serialisable.
    timeout
        Seconds after which the child is stopped and an error raised.

    Returns
    -------
    Any
        What the worker returned, decoded from JSON.
    """
    # No progress bars: nobody watches a worker, and drawing them would be timed too.
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                       UNDERSTANDING_NN_PROGRESS="off")
    completed = subprocess.run(
        [sys.executable, "-m", module, json.dumps(arguments)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout,
    )
    output = completed.stdout.rpartition(_RESULT_MARKER)
    if completed.returncode != 0 or not output[1]:
        raise RuntimeError(
            f"the benchmark worker {module} failed (exit {completed.returncode}) on {arguments}:\n"
            f"{completed.stderr[-4000:]}{completed.stdout[-2000:]}"
        )
    return json.loads(output[2])


def serve(worker: Callable[..., Any]) -> None:
    """The child's side of :func:`run_in_subprocess`: call ``worker`` with the JSON keyword
    arguments of the command line and print the result after the marker."""
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m <module> '<JSON keyword arguments>' (got {sys.argv[1:]})")
    result = worker(**json.loads(sys.argv[1]))
    print(_RESULT_MARKER + json.dumps(result), flush=True)


def peak_resident_mb() -> tuple[float, str]:
    """This process's peak resident memory so far, in MB, and where it was read.

    On Linux, ``VmHWM`` of ``/proc/self/status``: the high-water mark of the process's own
    memory. ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` would not do in a child process: Linux
    carries the largest resident size across ``fork`` and ``exec``, so a child started by a large
    parent (the suite, after its other sections) reports at least the parent's size. Elsewhere
    ``ru_maxrss`` is all there is (KB, bytes on macOS), and the second value says so.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM of /proc/self/status"
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024), "ru_maxrss, which may include the parent's peak"


def load_model(spec: str) -> Any:
    """A zoo model by name (``"cnn"``), or a model saved as a ``.keras`` file (what the tests
    pass, so that they need no trained zoo model)."""
    import keras

    import understanding_nn as unn

    if spec.endswith(".keras"):
        return keras.saving.load_model(spec, compile=False)
    return unn.models.load(spec)
