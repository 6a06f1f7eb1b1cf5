"""Flower's side of bench/round_time.py: the same task on Flower's simulation engine (Ray backend).

Runs inside Flower's own environment (.venv-flower: flwr[simulation], tensorflow-cpu 2.14), started
by bench/round_time.py as ``.venv-flower/bin/python bench/flower_app.py --worker SPEC``. The work is
identical to the TFF runs: the data arrays and initial weights come from the parent (an .npz), the
Keras model from tff_lab's own builder, and each round trains the clients tff_lab samples for that
round on the very same batches (``tff_lab.sampling.client_dataset``); tff_lab's config and zoo
modules need no TFF, so they import here.

Clients are ``NumPyClient``s training with Keras (``model.fit`` with SGD for FedAvg; a
``tf.function`` step with the proximal term for FedProx), the server runs ``FedAvg``/``FedProx``
(wrapped in ``DifferentialPrivacyServerSideFixedClipping`` for the DP tasks, with uniform weights as
Flower documents for it). Each simulated client process (Ray actor) keeps its Keras model and the
data between rounds, as a performance-minded Flower user would; ``model_per_call`` builds the
model in every fit instead, as Flower's TensorFlow quickstart does in ``client_fn``.
"""

from __future__ import annotations

import json
import os
import sys
import time

_STATE: dict = {}  # per process (one per Ray actor): spec, data, model


def _spec() -> dict:
    if "spec" not in _STATE:
        with open(os.environ["TFF_LAB_FLOWER_SPEC"]) as f:
            _STATE["spec"] = json.load(f)
    return _STATE["spec"]


def _cfg():
    if "cfg" not in _STATE:
        from tff_lab.config import from_dict

        _STATE["cfg"] = from_dict(_spec()["config"])
    return _STATE["cfg"]


def _data():
    if "data" not in _STATE:
        import numpy as np

        _STATE["data"] = np.load(_spec()["data"])
    return _STATE["data"]


def _build_model():
    from tff_lab.models.zoo import build_model

    spec = _spec()
    return build_model(_cfg().model, tuple(spec["input_shape"]), spec["num_classes"])


def _trainer():
    """The actor's Keras model and its local-training function: built once per actor, or on
    every fit with ``model_per_call`` (as Flower's TensorFlow quickstart builds it in client_fn)."""
    if "trainer" in _STATE and not _spec().get("model_per_call"):
        return _STATE["trainer"]
    import tensorflow as tf

    cfg = _cfg()
    model = _build_model()
    lr = cfg.algorithm.client_optimizer.learning_rate
    mu = cfg.algorithm.proximal_strength if cfg.algorithm.name == "fedprox" else 0.0
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()
    if mu == 0.0:
        model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=lr), loss=loss_fn)

        def train(ds):
            model.fit(ds.map(lambda b: (b["x"], b["y"])), epochs=1, verbose=0)
    else:
        opt = tf.keras.optimizers.SGD(learning_rate=lr)

        @tf.function
        def step(x, y, anchor):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
                prox = tf.add_n([tf.reduce_sum(tf.square(w - a)) for w, a in zip(model.trainable_variables, anchor)])
                loss += 0.5 * mu * prox
            opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

        def train(ds):
            anchor = [tf.constant(w) for w in model.get_weights()]
            for b in ds:
                step(b["x"], b["y"], anchor)

    _STATE["trainer"] = (model, train)
    return _STATE["trainer"]


def client_fn(context):
    from flwr.client import NumPyClient

    from tff_lab.sampling import client_dataset

    class BenchClient(NumPyClient):
        def fit(self, parameters, config):
            cfg = _cfg()
            k, round_num = int(config["client"]), int(config["round"])
            x, y = _data()[f"x{k}"], _data()[f"y{k}"]
            model, train = _trainer()
            model.set_weights(parameters)
            train(client_dataset(cfg, x, y, k, round_num))
            weight = len(y) * cfg.training.local_epochs if cfg.algorithm.weighting == "num_examples" else 1
            return model.get_weights(), weight, {}

    return BenchClient().to_client()


def _make_strategy(result: dict):
    import numpy as np
    import tensorflow as tf
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    from tff_lab.sampling import sample_clients

    cfg, spec = _cfg(), _spec()
    data = _data()
    init = [data[f"w{j}"] for j in range(spec["num_weights"])]
    rounds = cfg.training.rounds

    def evaluate_fn(server_round, weights, config):
        if server_round != rounds:
            return None
        model = _build_model()
        model.compile(
            loss=tf.keras.losses.SparseCategoricalCrossentropy(),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        model.set_weights(weights)
        loss, acc = model.evaluate(data["test_x"], data["test_y"], batch_size=1024, verbose=0)
        result["accuracy"] = float(acc)
        result["weights_list"] = [np.asarray(w) for w in weights]
        return float(loss), {"accuracy": float(acc)}

    class SameClientsFedAvg(FedAvg):
        """FedAvg that trains exactly the clients tff_lab samples in each round."""

        def configure_fit(self, server_round, parameters, client_manager):
            result["round_starts"].append(time.perf_counter())
            idx = sample_clients(cfg, spec["population"], server_round)
            nodes = client_manager.sample(num_clients=len(idx), min_num_clients=len(idx))
            return [
                (node, FitIns(parameters, {"client": int(k), "round": server_round})) for node, k in zip(nodes, idx)
            ]

    strategy = SameClientsFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_available_clients=2,
        evaluate_fn=evaluate_fn,
        initial_parameters=ndarrays_to_parameters(init),
    )
    if cfg.privacy.mechanism == "gaussian_fixed":
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=cfg.privacy.noise_multiplier,
            clipping_norm=cfg.privacy.clip,
            num_sampled_clients=cfg.training.clients_per_round,
        )
    return strategy


def run(spec: dict) -> dict:
    """Runs the simulation; returns per-round seconds and the final accuracy."""
    from flwr.client import ClientApp
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.simulation import run_simulation

    cfg = _cfg()
    result: dict = {"round_starts": []}

    def server_fn(context):
        return ServerAppComponents(strategy=_make_strategy(result), config=ServerConfig(num_rounds=cfg.training.rounds))

    t0 = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=spec["population"],
        backend_config={
            "client_resources": {"num_cpus": spec["cpus_per_client"], "num_gpus": 0.0},
            "init_args": {"include_dashboard": False, "num_cpus": os.cpu_count()},
        },
    )
    end = time.perf_counter()
    if "accuracy" not in result:
        raise RuntimeError("Flower's simulation ended without the final evaluation (see its log above)")
    # A round runs from one configure_fit to the next (fit, aggregation, evaluation); the last
    # round ends when the final evaluation has been done.
    starts = result["round_starts"] + [end]
    seconds = [b - a for a, b in zip(starts, starts[1:])]
    return {
        "seconds": seconds,
        "accuracy": result["accuracy"],
        "weights_list": result["weights_list"],
        "simulation_seconds": end - t0,
    }


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] != "--worker":
        print(__doc__)
        return 2
    spec = json.loads(sys.argv[2])
    os.environ["TFF_LAB_FLOWER_SPEC"] = spec["spec_file"]  # Ray actors inherit it and read the spec
    import _common
    import flwr

    out = run(_spec())
    seconds = out["seconds"]
    result = {
        "system": "flower",
        "flwr": flwr.__version__,
        "task": spec["task"],
        "round_seconds": seconds,
        **_common.round_stats(seconds),
        "accuracy": out["accuracy"],
        "weights": _common.weights_digest(out["weights_list"]),
        "simulation_seconds": round(out["simulation_seconds"], 2),
        "load": os.getloadavg(),
    }
    print(_common.RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    import flower_app  # run from the importable module so Ray actors find client_fn by name

    raise SystemExit(flower_app.main())
