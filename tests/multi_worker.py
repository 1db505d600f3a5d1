"""One worker of tests/test_streaming.py's MultiWorkerMirroredStrategy test.

Run as ``python multi_worker.py <TF_CONFIG json> <output.json>`` by the test, once per worker.
Each worker builds the same seeded model and data, explains them alone and then under the
strategy (one replica per worker, results gathered across the workers), and writes the largest
relative difference per method, and which replica computed which rows, to its output file.
"""

import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ["UNDERSTANDING_NN_PROGRESS"] = "off"
os.environ["TF_CONFIG"] = sys.argv[1]

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# The strategy must exist before any other TensorFlow work in the process.
strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402

import understanding_nn as unn  # noqa: E402

keras.utils.set_random_seed(3)
model = keras.Sequential(
    [
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ]
)
x = np.random.default_rng(0).random((37, 28, 28, 1), dtype=np.float32)
y = np.arange(37) % 10
differences = {}
for method, params in [("gradient", {}), ("lrp.epsilon", {}), ("integrated_gradients", {"steps": 4}), ("grad_cam", {})]:
    alone = unn.explain(model, x, method, y, batch_size=16, **params)
    with strategy.scope():
        shared = unn.explain(model, x, method, y, batch_size=16, **params)
    differences[method] = float(np.abs(shared - alone).max() / np.abs(alone).max())


def which_replica(inputs, target):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return tf.fill(tf.shape(inputs), tf.cast(replica, tf.float32))


with strategy.scope():
    shares = unn.streaming.distributed(which_replica)(tf.zeros((5, 1)), tf.zeros(5, tf.int32)).numpy()[:, 0]
with open(sys.argv[2], "w") as file:
    json.dump({"replicas": strategy.num_replicas_in_sync, "differences": differences, "shares": shares.tolist()}, file)
