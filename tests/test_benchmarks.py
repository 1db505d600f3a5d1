"""The benchmark suite (benchmarks/, `make bench`) on tiny untrained models: every section's table
has the expected columns and finite positive values, cases that do not apply say why, the CSV
round-trips, and the README shows the table generated from the committed CSV."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

import understanding_nn as unn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is not installed: it is imported from the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks import run, selectivity_speed, streaming, throughput  # noqa: E402
from benchmarks.attribution_speed import method_ratios  # noqa: E402
from benchmarks.worker import load_model  # noqa: E402
from benchmarks.table import (  # noqa: E402
    COLUMNS,
    NOT_APPLICABLE,
    Row,
    format_text,
    read_csv,
    usable_cores,
    write_csv,
)


def _measured(rows: list[Row]) -> list[Row]:
    return [row for row in rows if row.value is not None]


def _check_values(rows: list[Row]) -> None:
    assert rows
    for row in _measured(rows):
        assert math.isfinite(row.value) and row.value > 0, row


@pytest.fixture(scope="module")
def saved_conv_model(tmp_path_factory, conv_model) -> str:
    """The tiny conv net saved as a .keras file, for the sections that run in a fresh process."""
    path = tmp_path_factory.mktemp("model") / "conv_net.keras"
    conv_model.save(path)
    return str(path)


def test_ratio_section_times_methods_and_says_why_one_does_not_apply(conv_model, digits, tmp_path):
    x, _ = digits
    rows = method_ratios({"conv_net": conv_model}, x[:4], repeats=1, methods=["gradient", "lrp.epsilon", "cam"],
                         repeats_of={"lrp.epsilon": 2})
    assert [row.case for row in rows] == ["one gradient (forward + backward)", "gradient", "lrp.epsilon", "cam"]
    assert [row.unit for row in rows] == ["ms", "× gradient", "× gradient", "× gradient"]
    _check_values(rows)
    with pytest.raises(unn.UnsupportedModelError) as refusal:  # no global-average-pooling head
        unn.explain(conv_model, x[:4], "cam")
    assert "2 runs of it and of the gradient, the others 1" in rows[2].note
    cam = rows[-1]
    assert cam.value is None and f"{NOT_APPLICABLE}: {refusal.value}" in cam.note

    path = tmp_path / "results.csv"
    write_csv(rows, path, {"cpu": "test"})
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert read_csv(path) == (rows, {"cpu": "test"})
    assert format_text(rows).splitlines()[0].split() == list(COLUMNS)

    table = run.markdown(rows, {})
    assert "| case | unit | conv_net |" in table
    assert "| cam | × gradient | n/a [" in table  # the reason is a footnote
    assert "Batch of 4." in table  # the remark every row shares is said once


def test_pixel_flipping_section_against_its_forward_passes(conv_model, digits):
    x, _ = digits
    rows = selectivity_speed.flipping_cost(conv_model, x[:3], label="conv_net", rounds=1, repeats=1)
    assert [(row.case, row.unit) for row in rows] == [
        ("pixel flipping", "× forward passes"),
        ("pixel flipping", "inputs/s"),
        ("forward passes alone", "inputs/s"),
    ]
    _check_values(rows)
    assert all("3 digits × 50 steps = 150 inputs" in row.note for row in rows)


def test_perturbed_inputs_remove_one_more_patch_per_step(digits):
    x, _ = digits
    relevance = np.random.default_rng(0).normal(size=x[:2].shape)
    perturbed = selectivity_speed.perturbed_inputs(x[:2], relevance, 4).reshape(2, 50, 28, 28, 1)
    np.testing.assert_array_equal(perturbed[:, 0], x[:2])  # step 0: intact
    assert not perturbed[:, -1].any()  # step 49: every patch zero
    patches = unn.metrics.patch_index(x.shape[1:], 4)
    changed = perturbed[:, 1:] != perturbed[:, :-1]  # pixels that change from one step to the next
    for sample in range(2):
        for step in range(49):
            assert len(np.unique(patches[changed[sample, step, ..., 0]])) <= 1  # at most one patch per step


def test_throughput_section_runs_each_thread_count_in_a_fresh_process(saved_conv_model):
    oversubscribed = usable_cores() + 1
    rows = throughput.images_per_second(
        model=saved_conv_model, label="conv_net", threads=(oversubscribed,), methods=("gradient",),
        batch_sizes=(8, 16), images=32, rounds=1,
    )
    assert [(row.case, row.threads, row.unit) for row in rows] == [
        ("gradient, batch 8", oversubscribed, "images/s"),
        ("gradient, batch 16", oversubscribed, "images/s"),
        ("cores kept busy (CPU time / wall time)", oversubscribed, "cores"),
    ]
    _check_values(rows)
    assert all("oversubscribed" in row.note for row in rows[:2])
    assert f"| {oversubscribed} threads |" in run.markdown(rows, {})


def test_streaming_section_rows(saved_conv_model, monkeypatch):
    # In this process rather than three fresh ones: the peaks are then the test run's, but the
    # streaming call, its checks and the table are the section's.
    monkeypatch.setattr(streaming, "run_in_subprocess", lambda module, arguments: streaming.measure(**arguments))
    rows = streaming.stream(model=saved_conv_model, label="conv_net", sizes=(300, 600))
    assert [(row.case, row.unit) for row in rows] == [
        ("tf.data.Dataset of 300 (batches of 256) to .npy", "images/s"),
        ("tf.data.Dataset of 300 (batches of 256) to .npy: peak memory", "MB"),
        ("tf.data.Dataset of 600 (batches of 256) to .npy", "images/s"),
        ("tf.data.Dataset of 600 (batches of 256) to .npy: peak memory", "MB"),
        ("tf.data.Dataset of 600 (batches of 256) to .npy: peak memory", "× 300 streamed"),
        ("array of 600 in memory (reference)", "images/s"),
        ("array of 600 in memory (reference): peak memory", "MB"),
        ("array of 600 in memory (reference): peak memory", "× 300 streamed"),
        ("tf.data.Dataset of 600 to .npy: rate", "× array in memory"),
    ]
    _check_values(rows)


def test_the_ratio_section_refuses_repeats_for_a_method_it_does_not_know(conv_model, digits):
    with pytest.raises(ValueError, match="repeats_of names no method.*smooth_grad"):
        method_ratios({"conv_net": conv_model}, digits[0][:2], repeats=1, repeats_of={"smooth_grad": 3})


def test_a_row_refuses_a_value_that_is_not_a_measurement():
    for value in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite and positive"):
            Row("ratios", "cnn", "gradient", 2, value, "× gradient")
    with pytest.raises(ValueError, match="not applicable"):
        Row("ratios", "cnn", "cam", 2, None, "× gradient", "no reason given")


def test_a_section_is_chosen_by_name(capsys):
    with pytest.raises(SystemExit):
        run.parse_arguments(["--section", "speed"])
    message = capsys.readouterr().err
    assert "--section" in message and "'speed'" in message and "'ratios'" in message
    assert run.parse_arguments(["--section", "pixel flipping", "--quick"]).section == ["pixel flipping"]


def test_readme_shows_the_table_generated_from_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(run.README_START) + len(run.README_START), readme.index(run.README_END)
    rows, machine = read_csv(run.RESULTS)
    assert {row.section for row in rows} == set(run.SECTIONS)  # a full run
    assert machine.get("quick") == "False"
    assert readme[start:end].strip() == run.markdown(rows, machine)


def test_a_fresh_process_loads_the_same_network(saved_conv_model, conv_model, digits):
    x, _ = digits
    loaded = load_model(saved_conv_model)
    np.testing.assert_allclose(loaded.predict_on_batch(x), conv_model.predict_on_batch(x), rtol=1e-6, atol=1e-6)
