"""A test's own parts (imported by import path from YAML and passed from Python)."""

import numpy as np
import tensorflow as tf


def tiny_net(input_shape, num_classes, *, width=8):
    inputs = tf.keras.Input(shape=input_shape, name="x")
    x = tf.keras.layers.Flatten()(inputs)
    x = tf.keras.layers.Dense(width, activation="relu")(x)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(num_classes)(x))  # logits


def returns_not_a_model(input_shape, num_classes):
    return "a string"


def wrong_classes(input_shape, num_classes):
    inputs = tf.keras.Input(shape=input_shape, name="x")
    return tf.keras.Model(inputs, tf.keras.layers.Dense(2, activation="softmax")(inputs))


def blobs(num_clients=6, per_client=40, dim=5, classes=3, seed=0):
    """Client id -> (x, y): Gaussian blobs, each client with its own label mix."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, dim))
    out = {}
    for k in range(num_clients):
        p = rng.dirichlet(np.ones(classes))
        y = rng.choice(classes, size=per_client, p=p).astype(np.int32)
        x = (centers[y] + rng.normal(0, 1, (per_client, dim))).astype(np.float32)
        out[f"c{k}"] = (x, y)
    return out


def load_blobs(cfg, rng, *, num_clients=6):
    return blobs(num_clients, seed=cfg.seed)


def my_fedavg(model_fn, model_aggregator=None, *, lr=0.1):
    import tensorflow_federated as tff

    return tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(lr),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0),
        model_aggregator=model_aggregator,
        loop_implementation=tff.learning.LoopImplementation.DATASET_ITERATOR,
    )


def not_a_learning_process(model_fn, model_aggregator=None):
    import tensorflow_federated as tff

    @tff.tensorflow.computation
    def init():
        return tf.constant(0)

    @tff.tensorflow.computation(tf.int32)
    def nxt(s):
        return s + 1

    return tff.templates.IterativeProcess(init, nxt)


def mean_factory():
    import tensorflow_federated as tff

    return tff.aggregators.MeanFactory()


def softmax_net(input_shape, num_classes, *, width=8):
    inputs = tf.keras.Input(shape=input_shape, name="x")
    x = tf.keras.layers.Dense(width, activation="relu")(tf.keras.layers.Flatten()(inputs))
    return tf.keras.Model(inputs, tf.keras.layers.Dense(num_classes, activation="softmax")(x))


def sigmoid_net(input_shape, num_classes):
    inputs = tf.keras.Input(shape=input_shape, name="x")
    return tf.keras.Model(inputs, tf.keras.layers.Dense(num_classes, activation="sigmoid")(inputs))


class NetFactory:
    """A callable instance and a bound method as model builders."""

    def __init__(self, width):
        self.width = width

    def __call__(self, input_shape, num_classes):
        return tiny_net(input_shape, num_classes, width=self.width)

    def build(self, input_shape, num_classes):
        return softmax_net(input_shape, num_classes, width=self.width)


def make_net(width):
    def net(input_shape, num_classes):
        return tiny_net(input_shape, num_classes, width=width)

    return net
