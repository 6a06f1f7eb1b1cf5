"""Model specs: a builder of fresh Keras models with its declared outputs, loss and metrics.

Built-in models (the zoo, the tasks) and a user's models go through the same registry and the
same :class:`ModelSpec`. A builder is ``builder(input_shape, num_classes, **kwargs) ->
tf.keras.Model`` and must return a *new* model on every call (TFF calls it once per trace).
The loss and metrics are declared: by default sparse categorical cross-entropy and accuracy, on
probabilities or on logits as ``outputs`` says. ``outputs`` is checked on a probe batch before
training (:func:`check_outputs`): a builder that declares nothing gets what its outputs are (rows
in [0, 1] summing to 1: probabilities; anything else: logits), and a declaration its outputs
contradict is refused. The first metric is the one reported as ``accuracy``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Optional

from tff_lab import parts as parts_lib
from tff_lab.errors import ConfigError, PartTypeError, PartValueError

OUTPUTS = ("probabilities", "logits")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model part.

    Args:
      builder: ``(input_shape, num_classes, **kwargs) -> tf.keras.Model`` (a fresh model per
        call); a zero-argument callable is accepted too.
      outputs: ``"probabilities"`` (the model ends in a softmax), ``"logits"``, or None (the
        default): found from the model's outputs on a probe batch before training.
      loss: zero-argument factory of a Keras loss; default sparse categorical cross-entropy
        (``from_logits`` follows ``outputs``).
      metrics: zero-argument factory of a list of Keras metrics; the first is reported as
        ``accuracy``. Default: sparse categorical accuracy.
      kwargs: keyword arguments for ``builder``.
      name: a label for reports.

    Example:
      >>> spec = ModelSpec(builder=my_resnet, outputs="logits", kwargs={"width": 16})
    """

    builder: Callable[..., Any]
    outputs: Optional[str] = None
    loss: Optional[Callable[[], Any]] = None
    metrics: Optional[Callable[[], list]] = None
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    name: str = "model"
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not callable(self.builder):
            raise TypeError(f"model builder must be callable, got {type(self.builder).__name__}")
        if self.outputs is not None and self.outputs not in OUTPUTS:
            raise ValueError(
                f"model outputs must be one of {OUTPUTS} (or None: found on a probe batch), got {self.outputs!r}"
            )
        if not isinstance(self.kwargs, Mapping):
            raise TypeError(f"model kwargs must be a mapping, got {type(self.kwargs).__name__}")
        for what in ("loss", "metrics"):
            v = getattr(self, what)
            if v is not None and not callable(v):
                raise TypeError(f"model {what} must be a zero-argument factory (a callable), got {type(v).__name__}")

    # -- building -------------------------------------------------------------------------------
    def build(self, input_shape, num_classes: int):
        """A fresh, uncompiled Keras model; checks that the builder returned one."""
        import tensorflow as tf

        fn = self.builder
        try:
            params = inspect.signature(fn).parameters
            takes_args = any(
                p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params.values()
            ) or any(p.kind == p.VAR_POSITIONAL for p in params.values())
        except (TypeError, ValueError):
            takes_args = True
        try:
            model = fn(tuple(input_shape), int(num_classes), **self.kwargs) if takes_args else fn(**self.kwargs)
        except TypeError as e:
            raise PartTypeError(
                "model",
                f"builder {self.name!r} could not be called as builder(input_shape, "
                f"num_classes{', **kwargs' if self.kwargs else ''}): {e}",
            ) from None
        except (PartTypeError, PartValueError, ConfigError):
            raise
        except Exception as e:  # noqa: BLE001 - the user's builder raised: one line naming it
            raise PartValueError(
                "model",
                f"builder {self.name!r} raised {type(e).__name__} for input shape "
                f"{tuple(input_shape)}, {int(num_classes)} classes"
                f"{f', kwargs {dict(self.kwargs)}' if self.kwargs else ''}: "
                f"{(str(e).strip().splitlines() or [''])[0][:200]}",
            ) from None
        if not isinstance(model, tf.keras.Model):
            raise PartTypeError(
                "model",
                f"builder {self.name!r} returned {type(model).__name__}, expected a fresh "
                "tf.keras.Model (Keras 2, tf.keras)",
            )
        return model

    def make_loss(self):
        import tensorflow as tf

        if self.loss is not None:
            return self.loss()
        return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=self.outputs == "logits")

    def make_metrics(self) -> list:
        import tensorflow as tf

        if self.metrics is not None:
            ms = list(self.metrics())
            if not ms:
                raise PartValueError("model.metrics", f"model {self.name!r}: the metrics factory returned no metric")
            return ms
        return [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def compile(self, model, optimizer=None):
        """Compiles ``model`` with this spec's loss and metrics (the first metric named accuracy)."""
        metrics = self.make_metrics()
        kwargs = {"loss": self.make_loss(), "metrics": metrics}
        if optimizer is not None:
            kwargs["optimizer"] = optimizer
        model.compile(**kwargs)
        return model

    def probabilities(self, outputs):
        """Model outputs as probabilities (softmax of logits), numpy in, numpy out."""
        import numpy as np

        out = np.asarray(outputs)
        if self.outputs != "logits":
            return out
        z = out - out.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)


def outputs_kind(outputs) -> str:
    """``probabilities`` when every row (last axis) lies in [0, 1] and sums to 1, else ``logits``."""
    import numpy as np

    out = np.asarray(outputs, np.float64)
    if out.ndim == 0 or out.shape[-1] < 2 or not np.all(np.isfinite(out)):
        return "logits"
    sums = out.sum(axis=-1)
    ok = np.all(out >= -1e-6) and np.all(out <= 1 + 1e-6) and np.all(np.abs(sums - 1.0) < 1e-3)
    return "probabilities" if ok else "logits"


def check_outputs(spec: ModelSpec, outputs, *, field: str = "model.outputs") -> ModelSpec:
    """``spec`` with ``outputs`` settled from the model's outputs on a probe batch: undeclared ->
    what they are; declared and contradicted -> :class:`PartValueError` naming ``model.outputs``
    (a model with its own loss declares what that loss expects: only undeclared outputs are set)."""
    import numpy as np

    seen = outputs_kind(outputs)
    if spec.outputs is None:
        return dataclasses.replace(spec, outputs=seen)
    if spec.outputs != seen and spec.loss is None:
        out = np.asarray(outputs, np.float64)
        sums = out.sum(axis=-1) if out.ndim else out
        facts = (
            f"values in [{out.min():.3g}, {out.max():.3g}], row sums in [{sums.min():.3g}, {sums.max():.3g}]"
            if out.size and np.all(np.isfinite(out))
            else "non-finite values"
        )
        why = (
            "every row lies in [0, 1] and sums to 1 (a softmax)"
            if seen == "probabilities"
            else f"they are not probabilities ({facts})"
        )
        raise PartValueError(
            field,
            f"model {spec.name!r} declares outputs '{spec.outputs}', but its outputs on a "
            f"probe batch are {seen}: {why}; declare {field}: {seen} (or leave it out: tff_lab "
            "then uses what the outputs are)",
        )
    return spec


# -- registry ------------------------------------------------------------------------------------
_REGISTRY: dict[str, ModelSpec] = {}
_CONFIG_FIELDS = ("hidden_units", "cnn_filters", "dropout")  # ModelConfig fields the zoo reads


def register_model(
    name: str,
    builder: Callable[..., Any],
    *,
    outputs: Optional[str] = None,
    loss: Optional[Callable[[], Any]] = None,
    metrics: Optional[Callable[[], list]] = None,
    replace: bool = False,
) -> ModelSpec:
    """Registers a model under ``name`` (usable as ``model.name`` in YAML and ``--set``).

    ``outputs``: "probabilities", "logits", or None (found on a probe batch before training).
    Raises on a duplicate name unless ``replace``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("model name must be a non-empty string")
    if name in _REGISTRY and not replace:
        raise ValueError(f"model '{name}' is already registered")
    builtin = getattr(builder, "__module__", "").startswith("tff_lab.")
    spec = ModelSpec(
        builder=builder,
        outputs=outputs,
        loss=loss,
        metrics=metrics,
        name=name,
        provenance=parts_lib.provenance(builder, name=name, kind="model", builtin=builtin),
    )
    _REGISTRY[name] = spec
    return spec


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    import tff_lab.models.zoo  # noqa: F401  (registers the zoo)

    try:
        import tff_lab.tasks  # noqa: F401  (registers the tasks' models)
    except ImportError as e:
        if getattr(e, "name", None) != "tff_lab.tasks":
            raise


def resolve_model(cfg, spec: Optional[ModelSpec] = None) -> ModelSpec:
    """The :class:`ModelSpec` for a :class:`~tff_lab.config.ModelConfig`.

    ``model.builder`` (an import path or a part registered in this process) wins over
    ``model.name``; ``model.kwargs`` are the builder's keyword arguments (the zoo also reads
    ``hidden_units``/``cnn_filters``/``dropout``); ``model.outputs`` overrides the declaration.
    """
    _load_builtin()
    if spec is None:
        if cfg.builder is not None:
            fn = parts_lib.resolve(cfg.builder, "model.builder")
            if not isinstance(fn, ModelSpec) and not callable(fn):
                raise ConfigError(
                    "model.builder",
                    f"{cfg.builder!r} is a {type(fn).__name__}, expected a "
                    "callable returning a tf.keras.Model (or a ModelSpec)",
                )
            if isinstance(fn, ModelSpec):
                spec = (
                    fn
                    if fn.provenance
                    else dataclasses.replace(
                        fn, provenance=parts_lib.provenance(fn.builder, name=cfg.builder, kind="model")
                    )
                )
            else:
                spec = ModelSpec(
                    builder=fn, name=cfg.builder, provenance=parts_lib.provenance(fn, name=cfg.builder, kind="model")
                )
        elif cfg.name in _REGISTRY:
            spec = _REGISTRY[cfg.name]
        else:
            raise ConfigError(
                "model.name",
                f"unknown value {cfg.name!r}; expected one of: "
                f"{', '.join(available())}; or model.builder: 'module:attribute' for your own "
                "Keras model builder",
            )
    kwargs = dict(spec.kwargs)
    if spec.provenance.get("builtin"):
        try:
            params = inspect.signature(spec.builder).parameters
        except (TypeError, ValueError):
            params = {}
        kwargs.update({k: getattr(cfg, k) for k in _CONFIG_FIELDS if k in params})
    kwargs.update(cfg.kwargs)
    outputs = cfg.outputs or spec.outputs
    return dataclasses.replace(spec, kwargs=kwargs, outputs=outputs)


def build_model(cfg, input_shape, num_classes: int):
    """A fresh, uncompiled model for a ModelConfig (zoo name, registered name or import path)."""
    return resolve_model(cfg).build(input_shape, num_classes)


def initial_weights(cfg_or_spec, input_shape, num_classes: int, seed: int) -> list:
    """The deterministic initial weights for ``seed`` (shared by federated and centralized runs)."""
    import tensorflow as tf

    spec = cfg_or_spec if isinstance(cfg_or_spec, ModelSpec) else resolve_model(cfg_or_spec)
    tf.keras.utils.set_random_seed(seed)
    return spec.build(input_shape, num_classes).get_weights()
