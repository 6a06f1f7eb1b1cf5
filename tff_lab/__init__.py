"""tff_lab: private federated learning on TensorFlow Federated, from simulation to cluster to edge.

The Python API mirrors the CLI::

    from tff_lab import run_experiment, load_config
    summary = run_experiment("experiments/default.yaml", "runs/a", overrides=["training.rounds=20"])
"""

__version__ = "0.1.0"

from tff_lab.config import ExperimentConfig, load_config  # noqa: E402  (light: no TensorFlow)


def __getattr__(name):
    # Lazily (they import TensorFlow): the research API's parts and stages.
    if name == "ModelSpec":
        from tff_lab.models.spec import ModelSpec

        return ModelSpec
    if name in (
        "build",
        "initialize",
        "run_rounds",
        "finalize",
        "RoundHook",
        "federated_data",
        "register_model",
        "register_source",
    ):
        if name == "RoundHook":
            from tff_lab.training.hooks import RoundHook as obj
        elif name == "federated_data":
            from tff_lab.data import federated_data as obj
        elif name == "register_model":
            from tff_lab.models import register_model as obj
        elif name == "register_source":
            from tff_lab.data import register_source as obj
        else:
            from tff_lab.training import loop

            obj = getattr(loop, name)
        return obj
    raise AttributeError(f"module 'tff_lab' has no attribute {name!r}")


def run_experiment(*args, **kwargs):
    """See :func:`tff_lab.training.loop.run_experiment` (imported lazily: it loads TensorFlow)."""
    from tff_lab.training.loop import run_experiment as _run

    return _run(*args, **kwargs)


__all__ = [
    "ExperimentConfig",
    "ModelSpec",
    "RoundHook",
    "build",
    "federated_data",
    "finalize",
    "initialize",
    "load_config",
    "register_model",
    "register_source",
    "run_experiment",
    "run_rounds",
    "__version__",
]
