"""Explaining a whole data set: streams, results on disk, progress, several devices.

`explain` on a tf.data.Dataset, a keras.utils.PyDataset, a generator or an array gives the same
result; `out=` writes it to disk; under a MirroredStrategy over the two logical CPU devices that
conftest.py creates, each replica explains its share and the result equals the single-device one
in input order; progress bars appear only where they are asked for; a bad batch in a stream is
named, and the batches before it are kept on disk.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import understanding_nn as unn
from understanding_nn import streaming
from understanding_nn.streaming import BatchError, NpyWriter

def assert_same(actual, expected, what=""):
    """Equal up to float32 rounding: a batch of another size may take another convolution
    algorithm, whose sums round differently in the last bits."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * float(np.abs(expected).max()), err_msg=what)


# One method of each family, with settings that keep them quick.
FAMILIES = {
    "gradient": {},
    "lrp.epsilon": {},
    "integrated_gradients": {"steps": 6},
    "grad_cam": {},
}


@pytest.fixture(scope="module")
def data():
    """Fifty random images and labels, seeded."""
    rng = np.random.default_rng(7)
    return rng.random((50, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 50)


@pytest.fixture(scope="module")
def strategy():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, f"conftest.py should have made two logical CPU devices, found {devices}"
    return tf.distribute.MirroredStrategy(devices)


class Digits(keras.utils.PyDataset):
    """A Keras PyDataset of batches (x, y)."""

    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[rows], self.y[rows]


# --------------------------------------------------------------------------------------------
# Streams give what arrays give
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", FAMILIES)
def test_dataset_pydataset_generator_and_array_give_the_same_relevance(conv_model, data, method):
    x, y = data
    params = FAMILIES[method]
    expected = unn.explain(conv_model, x, method, y, **params)
    streams = {
        "tf.data of (x, y)": tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
        "PyDataset of (x, y)": Digits(x, y, 16),
        "generator of (x, y)": ((x[i : i + 7], y[i : i + 7]) for i in range(0, len(x), 7)),
        "list of tensor pairs": iter([(tf.constant(x[:30]), tf.constant(y[:30])), (x[30:], y[30:, None])]),
    }
    for name, stream in streams.items():
        assert_same(unn.explain(conv_model, stream, method, **params), expected, name)
    # Batches of the same sizes as the array's give the same bits.
    same_batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    np.testing.assert_array_equal(
        unn.explain(conv_model, same_batches, method, **params), unn.explain(conv_model, x, method, y, batch_size=16, **params)
    )


def test_a_stream_of_inputs_alone_explains_the_predicted_class_or_the_given_int(conv_model, data):
    x, _ = data
    predicted = unn.explain(conv_model, x, "gradient")
    stream = tf.data.Dataset.from_tensor_slices(x).batch(20)
    assert_same(unn.explain(conv_model, stream, "gradient"), predicted)
    # An int target overrides the labels a stream carries.
    labelled = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x), int))).batch(20)
    assert_same(unn.explain(conv_model, labelled, "gradient", 4), unn.explain(conv_model, x, "gradient", 4))


def test_explain_batches_yields_one_result_per_batch_in_order(conv_model, data):
    x, y = data
    stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    parts = list(unn.explain_batches(conv_model, stream, "lrp.epsilon"))
    assert [len(p) for p in parts] == [16, 16, 16, 2]
    assert all(p.dtype == np.float32 for p in parts)
    assert_same(np.concatenate(parts), unn.explain(conv_model, x, "lrp.epsilon", y))
    # An array is cut into batches of batch_size, its targets with it.
    parts = list(unn.explain_batches(conv_model, x, "gradient", y, batch_size=20))
    assert [len(p) for p in parts] == [20, 20, 10]
    assert_same(np.concatenate(parts), unn.explain(conv_model, x, "gradient", y))


def test_smoothgrad_of_a_stream_equals_smoothgrad_of_the_array(conv_model, data):
    x, y = data
    params = {"n_samples": 3}
    stream = ((x[i : i + 10], y[i : i + 10]) for i in range(0, len(x), 10))
    assert_same(unn.explain(conv_model, stream, "smoothgrad", **params), unn.explain(conv_model, x, "smoothgrad", y, **params))


# --------------------------------------------------------------------------------------------
# Results on disk
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients"])
def test_the_on_disk_result_equals_the_in_memory_result(conv_model, data, tmp_path, method):
    x, y = data
    params = FAMILIES[method]
    expected = unn.explain(conv_model, x, method, y, **params)
    from_array = unn.explain(conv_model, x, method, y, out=tmp_path / "array.npy", batch_size=16, **params)
    stream = ((x[i : i + 9], y[i : i + 9]) for i in range(0, len(x), 9))  # length unknown in advance
    from_stream = unn.explain(conv_model, stream, method, out=str(tmp_path / "stream.npy"), **params)
    for result, path in [(from_array, tmp_path / "array.npy"), (from_stream, tmp_path / "stream.npy")]:
        assert isinstance(result, np.memmap) and not result.flags.writeable
        assert_same(result, expected)
        np.testing.assert_array_equal(np.load(path), result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["array.npy", "stream.npy"], "a partial file was left"


def test_npy_writer_writes_a_standard_file_and_refuses_bad_paths_and_shapes(tmp_path):
    with NpyWriter(tmp_path / "a.npy") as writer:
        writer.write(np.arange(6, dtype=np.float64).reshape(2, 3))
        writer.write(np.ones((1, 3)))
        with pytest.raises(ValueError, match=r"shape \(4,\).*\(3,\)"):
            writer.write(np.ones((1, 4)))
    loaded = np.load(tmp_path / "a.npy")
    assert loaded.dtype == np.float32 and loaded.shape == (3, 3)
    np.testing.assert_array_equal(loaded[2], 1.0)
    with pytest.raises(ValueError, match="ending in .npy"):
        NpyWriter(tmp_path / "a.txt")
    with pytest.raises(ValueError, match="does not exist"):
        NpyWriter(tmp_path / "missing" / "a.npy")


def test_streaming_to_disk_keeps_memory_bounded_by_the_batch(conv_model, tmp_path):
    """Peak memory allocated by NumPy (which tracemalloc sees) while 1,000 and 8,000 inputs are
    explained to disk: the data set grows eightfold, the peak must not."""

    def peak(n_inputs: int) -> int:
        def batches():
            rng = np.random.default_rng(0)
            for _ in range(n_inputs // 100):
                yield rng.random((100, 28, 28, 1), dtype=np.float32)

        unn.explain(conv_model, batches(), "gradient", 0, out=tmp_path / "warm-up.npy")  # traces the function
        tracemalloc.start()
        try:
            unn.explain(conv_model, batches(), "gradient", 0, out=tmp_path / f"{n_inputs}.npy")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(1_000), peak(8_000)
    one_batch = 100 * 28 * 28 * 4
    assert large < 1.5 * small, f"peak {large / 1e6:.1f} MB for 8,000 inputs, {small / 1e6:.1f} MB for 1,000"
    assert large < 20 * one_batch, f"peak {large / 1e6:.1f} MB: more than a few batches are held"
    assert np.load(tmp_path / "8000.npy", mmap_mode="r").shape == (8_000, 28, 28, 1)


# --------------------------------------------------------------------------------------------
# Bad input in a stream
# --------------------------------------------------------------------------------------------


def _ten_batches(x, bad=None, at=7):
    for number in range(1, 11):
        batch = x[(number - 1) * 5 : number * 5].copy()
        if number == at and bad == "nan":
            batch[2, 3, 4, 0] = np.nan
        if number == at and bad == "shape":
            batch = batch[:, :27]
        yield batch


def test_a_nan_in_batch_7_of_10_names_the_batch_and_keeps_the_six_before_it(conv_model, data, tmp_path):
    x, _ = data
    out = tmp_path / "R.npy"
    with pytest.raises(BatchError, match=r"batch 7 of the stream \(inputs from 30 on\).*NaN.*30 explanations before it"):
        unn.explain(conv_model, _ten_batches(x, "nan"), "gradient", 1, out=out)
    kept = np.load(out)
    assert_same(kept, unn.explain(conv_model, x[:30], "gradient", 1))


def test_a_batch_of_the_wrong_shape_is_named(conv_model, data):
    x, _ = data
    with pytest.raises(BatchError, match=r"batch 3 of the stream.*shape \(5, 27, 28, 1\)"):
        unn.explain(conv_model, _ten_batches(x, "shape", at=3), "lrp.epsilon", 1)


def test_a_dataset_of_known_length_is_counted_in_the_message(conv_model, data):
    x, y = data
    y = y.copy()
    y[33] = 12  # no such class
    stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    with pytest.raises(BatchError, match=r"batch 4 of 5 of the stream \(inputs from 30 on\).*target 12 is out of range"):
        unn.explain(conv_model, stream, "gradient")


@pytest.mark.parametrize(
    "stream, message",
    [
        (lambda x, y: tf.data.Dataset.from_tensor_slices(x), r"batch 1 .*single sample of shape \(28, 28, 1\).*dataset\.batch"),
        (lambda x, y: iter([(x[:5], y[:5], np.ones(5))]), r"batch 1 .*tuple of 3 values"),
        (lambda x, y: iter([{"image": x[:5]}]), r"batch 1 .*dict \(keys 'image'\)"),
        (lambda x, y: iter([x[:5].astype(np.uint8)]), r"batch 1 .*dtype uint8"),
        (lambda x, y: iter([]), r"no batches"),
    ],
    ids=["unbatched dataset", "sample weights", "dict", "integer images", "empty"],
)
def test_malformed_streams_are_refused_with_a_message_that_says_what_to_do(conv_model, data, stream, message):
    x, y = data
    with pytest.raises(BatchError, match=message):
        unn.explain(conv_model, stream(x, y), "gradient")


def test_per_sample_targets_for_a_stream_must_come_in_the_stream(conv_model, data):
    x, y = data
    with pytest.raises(TypeError, match=r"as batches \(x, y\)"):
        unn.explain(conv_model, tf.data.Dataset.from_tensor_slices(x).batch(10), "gradient", y)


def test_bad_keyword_arguments_are_refused_before_any_batch_is_read(conv_model, data):
    x, _ = data
    read = []

    def stream():
        read.append(1)
        yield x[:5]

    with pytest.raises(TypeError, match="has no parameter 'steps'"):
        unn.explain(conv_model, stream(), "gradient", steps=3)
    with pytest.raises(TypeError, match="strategy must be a tf.distribute.Strategy"):
        unn.explain(conv_model, x, "gradient", strategy="mirrored")
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        unn.explain(conv_model, x, "gradient", progress="yes")
    assert not read


# --------------------------------------------------------------------------------------------
# Several devices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", FAMILIES)
def test_the_distributed_result_equals_the_single_device_result_in_order(conv_model, data, strategy, method):
    x, y = data
    params = FAMILIES[method]
    # 50 inputs in batches of 16: batches of 16 and a last one of 2, split over two replicas.
    expected = unn.explain(conv_model, x, method, y, batch_size=16, **params)
    assert_same(unn.explain(conv_model, x, method, y, strategy=strategy, batch_size=16, **params), expected)
    with strategy.scope():
        stream = tf.data.Dataset.from_tensor_slices((x[:21], y[:21])).batch(7)  # odd batches: padded
        assert_same(unn.explain(conv_model, stream, method, **params), expected[:21])


def test_a_distributed_data_set_is_refused_with_what_to_pass_instead(conv_model, data, strategy):
    x, _ = data
    distributed_data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(10))
    with strategy.scope(), pytest.raises(TypeError, match="pass the tf.data.Dataset itself"):
        unn.explain(conv_model, distributed_data, "gradient")


def test_each_replica_explains_its_share_of_every_batch(strategy):
    """A batch function that answers with the replica's number shows who computed which rows."""

    def which_replica(x, target):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tf.fill(tf.shape(x), tf.cast(replica, tf.float32)) + tf.cast(target, tf.float32)[:, None] * 0

    with strategy.scope():
        assert streaming.replicas() == 2
        shares = streaming.distributed(which_replica)(tf.zeros((5, 3)), tf.zeros(5, tf.int32)).numpy()
    # Five rows padded to six: rows 0-2 on replica 0, rows 3-4 on replica 1.
    np.testing.assert_array_equal(shares[:, 0], [0, 0, 0, 1, 1])
    assert streaming.replicas() == 1
    assert streaming.distributed(which_replica) is which_replica


def test_a_model_built_under_the_strategy_explains_like_its_single_device_twin(data, strategy, make_dense_net):
    x, y = data
    single = make_dense_net(seed=4)
    with strategy.scope():
        mirrored = make_dense_net(seed=4)
        assert isinstance(mirrored.layers[1].kernel.value, tf.distribute.DistributedValues)  # one copy per device
        result = unn.explain(mirrored, x, "lrp.epsilon", y, batch_size=16)
    assert_same(result, unn.explain(single, x, "lrp.epsilon", y))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_under_a_multi_worker_strategy_explain_like_one_process(tmp_path):
    """Two processes on this machine, one replica each, joined by TF_CONFIG as two machines would be."""
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    outputs = [tmp_path / f"worker{i}.json" for i in range(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("multi_worker.py")),
             json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}), str(outputs[i])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    logs = [process.communicate(timeout=600)[0] for process in processes]
    for process, log in zip(processes, logs):
        assert process.returncode == 0, log[-3000:]
    for output in outputs:
        result = json.loads(output.read_text())
        assert result["replicas"] == 2
        assert result["shares"] == [0, 0, 0, 1, 1], "each worker should explain its share of the batch"
        for method, difference in result["differences"].items():
            assert difference < 1e-5, f"{method}: the two workers' result differs from one process's by {difference:.2g}"


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


@pytest.fixture
def immediate_bars(monkeypatch):
    """Bars appear at once (instead of after a second of work)."""
    monkeypatch.setattr(streaming, "_DELAY_SECONDS", 0.0)


def test_progress_goes_to_standard_output_when_asked_for_and_nowhere_otherwise(conv_model, data, capsys, immediate_bars):
    x, y = data
    unn.explain(conv_model, x, "gradient", y, batch_size=10, progress=True)
    shown = capsys.readouterr()
    assert "50/50" in shown.out and "sample" in shown.out and shown.err == ""
    unn.explain(conv_model, x, "gradient", y, batch_size=10, progress=False)
    unn.explain(conv_model, x, "gradient", y, batch_size=10)  # UNDERSTANDING_NN_PROGRESS is off in the tests
    assert capsys.readouterr() == ("", "")


def test_the_environment_decides_when_progress_is_not_given(monkeypatch, capsys, immediate_bars):
    monkeypatch.setenv("UNDERSTANDING_NN_PROGRESS", "on")
    assert streaming.watching()
    with streaming.progress_bar(3) as bar:
        for _ in range(3):
            bar.update()
    assert "3/3" in capsys.readouterr().out
    monkeypatch.setenv("UNDERSTANDING_NN_PROGRESS", "maybe")
    with pytest.raises(ValueError, match="UNDERSTANDING_NN_PROGRESS must be on or off"):
        streaming.watching()
    monkeypatch.delenv("UNDERSTANDING_NN_PROGRESS")
    # Under pytest, standard output is captured: no terminal, no notebook, nobody watching.
    assert not streaming.watching()


def test_nested_work_shows_only_the_outermost_bar(conv_model, data, capsys, immediate_bars):
    x, y = data
    unn.explain(conv_model, x, "smoothgrad", y, n_samples=4, batch_size=10, progress=True)
    out = capsys.readouterr().out
    assert "4/4" in out and "noisy copy" in out
    assert "50/50" not in out, "the explanations SmoothGrad averages showed bars of their own"


def test_a_stream_counts_batches_and_quick_work_shows_no_bar(conv_model, data, capsys, immediate_bars, monkeypatch):
    x, y = data
    unn.explain(conv_model, tf.data.Dataset.from_tensor_slices((x, y)).batch(25), "gradient", progress=True)
    assert "2/2" in capsys.readouterr().out
    monkeypatch.setattr(streaming, "_DELAY_SECONDS", 60.0)
    unn.explain(conv_model, x, "gradient", y, progress=True)
    assert capsys.readouterr().out == ""


def test_pixel_flipping_and_training_show_progress(conv_model, data, capsys, immediate_bars):
    x, y = data
    relevance = unn.explain(conv_model, x[:6], "gradient", y[:6])
    unn.metrics.pixel_flipping(conv_model, x[:6], relevance, y[:6], patch_size=7, progress=True)
    assert "6/6" in capsys.readouterr().out
    with streaming.progress_setting(True):
        steps = list(unn.data.minibatches(10, 4, 2, seed=0))
    assert "6/6" in capsys.readouterr().out and len(steps) == 6


def test_minibatches_are_the_seeded_shuffles_of_every_epoch():
    order = np.random.default_rng(3)
    expected = [p[s : s + 4] for p in (order.permutation(10) for _ in range(2)) for s in range(0, 10, 4)]
    got = list(unn.data.minibatches(10, 4, 2, seed=3))
    assert len(got) == len(expected) == 6
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    whole = list(unn.data.minibatches(10, 4, 2, seed=3, whole_batches=True))
    assert [len(b) for b in whole] == [4, 4, 4, 4]


# --------------------------------------------------------------------------------------------
# Part V's pixel flipping on a stream
# --------------------------------------------------------------------------------------------


def test_pixel_flipping_of_a_stream_equals_pixel_flipping_of_the_array(conv_model, data, tmp_path):
    x, y = data
    relevance = unn.explain(conv_model, x, "gradient", y, out=tmp_path / "R.npy")
    settings = {"patch_size": 7, "fill": "mean"}
    expected = unn.metrics.pixel_flipping(conv_model, x, np.asarray(relevance), y, **settings)
    stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    assert_same(unn.metrics.pixel_flipping(conv_model, stream, relevance, **settings), expected)
    in_step = unn.explain_batches(conv_model, stream, "gradient")
    assert_same(unn.metrics.pixel_flipping(conv_model, stream, in_step, **settings), expected)
    # Random orders are drawn per batch: valid curves of the same shape, not the array's draws.
    random = unn.metrics.pixel_flipping(conv_model, stream, relevance, order="random", **settings)
    assert random.shape == expected.shape
    np.testing.assert_allclose(random[:, 0], expected[:, 0], rtol=1e-5)  # the intact inputs
    np.testing.assert_allclose(random[:, -1], expected[:, -1], rtol=1e-5, atol=1e-6)  # everything removed


def test_pixel_flipping_of_a_stream_names_the_batch_whose_relevance_is_missing(conv_model, data):
    x, y = data
    stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    full = unn.explain(conv_model, x, "gradient", y)
    short = full[:40]
    with pytest.raises(BatchError, match=r"batch 3 of 4 of the stream \(inputs from 32 on\).*relevance"):
        unn.metrics.pixel_flipping(conv_model, stream, short, patch_size=7)
    with pytest.raises(BatchError, match=r"batch 4 of 4 .*relevance ended"):
        three_batches = (full[i : i + 16] for i in range(0, 48, 16))
        unn.metrics.pixel_flipping(conv_model, stream, three_batches, patch_size=7)


@pytest.mark.parametrize("method, params", [("integrated_gradients", {"baseline": "uniform", "steps": 4}),
                                            ("deeplift", {"reference": "uniform"})])
def test_the_uniform_reference_gives_every_input_the_same_noise_in_any_batching(conv_model, data, tmp_path, method, params):
    x, y = data
    expected = unn.explain(conv_model, x, method, y, **params)
    stream = ((x[i : i + 7], y[i : i + 7]) for i in range(0, len(x), 7))
    assert_same(unn.explain(conv_model, stream, method, **params), expected)
    assert_same(unn.explain(conv_model, x, method, y, out=tmp_path / "R.npy", batch_size=16, **params), expected)
    # The noise itself: rows 30 to 39 of the whole draw, whatever batch they come in.
    whole = np.random.default_rng(0).uniform(0, 1, size=x.shape)
    with streaming.batch_offset(30):
        np.testing.assert_array_equal(streaming.uniform_rows(0, 0.0, 1.0, (10, *x.shape[1:])), whole[30:40])
