"""Centralized example-level DP-SGD baseline: the experiment's model on the union of the clients'
training data, with tensorflow_privacy's DP Keras optimizer, and epsilon from the same accountants.

The accounting is exact for what runs, which takes two details tensorflow_privacy's tutorials
leave approximate:

- Batches are Poisson samples (each example joins a step with probability ``q = B / N``), the
  sampling ``PoissonSampledDpEvent`` accounts for; tutorials shuffle into fixed batches and
  account them *as if* Poisson.
- The released update is ``(sum of clipped per-example gradients + N(0, (zC)^2)) / B`` with the
  *expected* batch size ``B``: a post-processing of the noised sum. tensorflow_privacy's optimizer
  divides by the actual batch size, which depends on the sample; the gradient it returns is scaled
  back by ``actual / B`` before it is applied. Every batch carries one zero-weight dummy example,
  so an empty Poisson sample still releases (pure) noise, as the accounted mechanism does.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from tff_lab.errors import ConfigError
from tff_lab.privacy.accounting import MechanismSpec, default_delta, epsilon_for_rounds

_DPSGD_STREAM = 0xD9560


def dp_sgd_spec(num_examples: int, batch_size: int, noise_multiplier: float) -> MechanismSpec:
    """One DP-SGD step as a Poisson-sampled Gaussian over ``num_examples`` records."""
    if not 1 <= batch_size <= num_examples:
        raise ConfigError("batch_size", f"expected 1 <= batch size <= {num_examples} examples, got {batch_size}")
    return MechanismSpec(
        "gaussian_fixed", float(noise_multiplier), int(num_examples), "poisson", sampling_rate=batch_size / num_examples
    )


def train_dp_sgd(
    cfg,
    data,
    epochs: float,
    *,
    noise_multiplier: Optional[float] = None,
    target_epsilon: Optional[float] = None,
    l2_norm_clip: Optional[float] = None,
    batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    delta: Optional[float] = None,
    initial_weights=None,
) -> dict:
    """Trains the experiment's model with DP-SGD; returns accuracy, loss and epsilon (RDP and PLD).

    Args:
      cfg: the experiment (model, seed; defaults: ``centralized.dp_noise_multiplier``,
        ``centralized.dp_l2_norm_clip``, ``training.batch_size`` as the expected batch size and the
        client learning rate).
      data: the experiment's :class:`~tff_lab.data.sources.FederatedData`.
      epochs: expected passes over the data (steps = epochs * N / B).
      noise_multiplier / target_epsilon: one of them (neither: the config's noise multiplier).
      delta: default ``min(1e-5, N^-1.1)`` over the N training examples.
    """
    import tensorflow as tf
    import tensorflow_privacy as tfp

    from tff_lab.centralized.baseline import compile_for_eval, evaluate
    from tff_lab.models import build_model
    from tff_lab.privacy.calibration import calibrate_noise_multiplier

    if noise_multiplier is not None and target_epsilon is not None:
        raise ConfigError("centralized.dp_noise_multiplier", "give a noise multiplier or a target epsilon, not both")
    x, y = data.union_train()
    n = int(len(y))
    b = int(batch_size or cfg.training.batch_size)
    clip = float(l2_norm_clip if l2_norm_clip is not None else cfg.centralized.dp_l2_norm_clip)
    lr = float(learning_rate if learning_rate is not None else cfg.algorithm.client_optimizer.learning_rate)
    if not epochs > 0:
        raise ConfigError("epochs", f"expected a number of epochs > 0, got {epochs}")
    steps = max(1, int(round(epochs * n / b)))
    delta = float(delta if delta is not None else default_delta(n))
    if not 0 < delta < 1.0 / n:
        raise ConfigError("delta", f"delta {delta} is not below 1/N (N = {n} training examples)")
    spec = dp_sgd_spec(n, b, 1.0)
    if target_epsilon is not None:
        z = calibrate_noise_multiplier(spec, steps, delta, target_epsilon, where="target_epsilon")
    else:
        z = float(noise_multiplier if noise_multiplier is not None else cfg.centralized.dp_noise_multiplier)
    spec = dataclasses.replace(spec, noise_multiplier=z)

    tf.keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    optimizer = tfp.VectorizedDPKerasSGDOptimizer(
        l2_norm_clip=clip, noise_multiplier=z, num_microbatches=None, learning_rate=lr
    )
    per_example_loss = tf.keras.losses.SparseCategoricalCrossentropy(reduction=tf.keras.losses.Reduction.NONE)
    expected_b = tf.constant(float(b))

    @tf.function(reduce_retracing=True)
    def step(xb, yb, wb):
        with tf.GradientTape() as tape:
            losses = per_example_loss(yb, model(xb, training=True)) * wb
        # tensorflow_privacy's own DP gradient (clip per example, sum, noise, / actual batch size);
        # scaled to / expected batch size so the update is a post-processing of the noised sum.
        grads_and_vars = optimizer._compute_gradients(losses, model.trainable_variables, tape=tape)  # pylint: disable=protected-access
        actual = tf.cast(tf.shape(yb)[0], tf.float32)
        optimizer.apply_gradients([(g * (actual / expected_b), v) for g, v in grads_and_vars])

    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _DPSGD_STREAM]))
    q = spec.sampling_rate
    dummy_x = np.zeros((1, *x.shape[1:]), dtype=x.dtype)
    sizes = []
    for _ in range(steps):
        idx = np.flatnonzero(rng.random(n) < q)
        sizes.append(len(idx))
        xb = np.concatenate([x[idx], dummy_x])
        yb = np.concatenate([y[idx], np.zeros(1, dtype=y.dtype)])
        wb = np.concatenate([np.ones(len(idx), np.float32), np.zeros(1, np.float32)])
        step(xb, yb, wb)
    eps = epsilon_for_rounds(spec, steps, delta)
    loss, acc = evaluate(compile_for_eval(model), *data.test)
    return {
        "accuracy": acc,
        "loss": loss,
        "epsilon_rdp": eps.rdp,
        "epsilon_pld": eps.pld,
        "rdp_optimal_order": eps.rdp_order,
        "delta": delta,
        "noise_multiplier": z,
        "l2_norm_clip": clip,
        "expected_batch_size": b,
        "sampling_rate": q,
        "steps": steps,
        "epochs": float(epochs),
        "learning_rate": lr,
        "train_examples": n,
        "mean_batch_size": float(np.mean(sizes)),
        "dp_unit": "example",
        "sampling": "poisson",
    }
