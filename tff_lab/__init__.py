"""tff_lab: private federated learning on TensorFlow Federated, from simulation to cluster to edge.

The Python API mirrors the CLI::

    from tff_lab import run_experiment, load_config
    summary = run_experiment("experiments/default.yaml", "runs/a", overrides=["training.rounds=20"])
"""

__version__ = "0.1.0"

from tff_lab.config import ExperimentConfig, load_config  # noqa: E402  (light: no TensorFlow)


def run_experiment(*args, **kwargs):
    """See :func:`tff_lab.training.loop.run_experiment` (imported lazily: it loads TensorFlow)."""
    from tff_lab.training.loop import run_experiment as _run

    return _run(*args, **kwargs)


__all__ = ["ExperimentConfig", "load_config", "run_experiment", "__version__"]
