"""The experiment schema: frozen, typed dataclasses with defaults and validation.

One experiment file (YAML) maps onto :class:`ExperimentConfig`. Every field is
typed; :func:`tff_lab.config.io.from_dict` checks types, rejects unknown keys
(listing the valid ones) and then each section's ``validate`` checks ranges and
cross-field rules. Errors name the dotted field path.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from tff_lab.errors import ConfigError

# Built-in data sources and models; any other value must be an import path "module:attribute"
# (a user's loader or model builder) or a name registered from Python (tff_lab.data.register_source,
# tff_lab.models.register_model). Resolved (and refused with the valid choices) before RUN_DIR is touched.
BUILTIN_SOURCES = ("digits", "breast_cancer", "synthetic", "npz_dir", "csv_dir", "emnist", "shakespeare")
PartitionScheme = Literal["auto", "iid", "dirichlet", "shards", "quantity_skew", "natural"]
Weighting = Literal["num_examples", "uniform"]
# tff.learning.optimizers.build_* (TFF 0.87 takes only its own optimizers), for clients and server alike.
ServerOptimizerName = Literal["sgd", "sgdm", "adam", "yogi", "adagrad", "adamw"]
ClientOptimizerName = ServerOptimizerName
Sampling = Literal["uniform", "poisson"]
LoopImpl = Literal["dataset_iterator", "dataset_reduce"]
DpMechanism = Literal["none", "gaussian_fixed", "gaussian_adaptive", "tree", "ddp_secure"]
Accountant = Literal["rdp", "pld"]
AggregationKind = Literal["mean", "secure", "compression", "robust", "secagg"]
Engine = Literal["auto", "tff", "vectorized"]
ModelOutputs = Literal["probabilities", "logits"]
InputSharding = Literal["data", "explicit"]


def _require(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(path, message)


# What the libraries accept: counts, sizes and shapes go into TF as int32 (batch sizes, units, filters)
# or numpy arrays; the seed goes to numpy.random.seed / tf.keras.utils.set_random_seed (< 2**32).
INT_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1
# The zoo's layer widths (tff_lab.models.zoo also bounds the total parameter count).
MAX_HIDDEN_UNITS = 65536
MAX_CNN_FILTERS = 4096


def _int_in(value: int, lo: int, hi: int, path: str) -> None:
    _require(lo <= value <= hi, path, f"expected an integer >= {lo} and <= {hi}, got {value}")


def _type_ok(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin is Union:
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if origin is tuple:
        return isinstance(value, tuple) and all(_type_ok(v, typing.get_args(tp)[0]) for v in value)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _check_fields(obj, p: str) -> None:
    """Types of every field (a config built from Python skips io's coercion), then what holds for
    every field of a kind: numbers finite (NaN/inf mean nothing anywhere in the schema), integers
    within int64, strings non-empty and free of NUL (paths and names go to the OS and TF)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        path = f"{p}.{f.name}" if p else f.name
        v, tp = getattr(obj, f.name), hints[f.name]
        if not _type_ok(v, tp):
            raise ConfigError(path, f"expected {_type_text(tp)}, got {type(v).__name__} {v!r}")
        for i, item in enumerate(v if isinstance(v, tuple) else (v,)):
            where = f"{path}[{i}]" if isinstance(v, tuple) else path
            if isinstance(item, float):
                _require(math.isfinite(item), where, f"expected a finite number, got {item}")
            elif isinstance(item, int) and not isinstance(item, bool):
                _require(-(2**63) <= item < 2**63, where, f"expected an integer that fits in 64 bits, got {item}")
            elif isinstance(item, str):
                _require(
                    item != "" and item.strip() == item,
                    where,
                    f"expected a non-empty value without surrounding spaces, got {item!r}",
                )
                _require("\x00" not in item, where, "expected no NUL character")


def _type_text(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_text(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a tuple of {_type_text(typing.get_args(tp)[0])}"
    return {
        type(None): "None",
        int: "an integer",
        float: "a number",
        bool: "a bool",
        str: "a string",
        dict: "a dict",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _unused(obj, names, path: str, reason: str) -> None:
    """Refuses fields set away from their defaults that have no effect given another field:
    a setting that is silently ignored is a result the user did not ask for."""
    defaults = type(obj)()
    for name in names:
        if getattr(obj, name) != getattr(defaults, name):
            raise ConfigError(f"{path}.{name}", f"has no effect {reason}; remove it")


def _is_import_path(value: str) -> bool:
    """``package.module:attribute`` (resolved with importlib, never eval), or ``python:KIND:LABEL``:
    a part passed as a Python object to the process that wrote the config (tff_lab.parts)."""
    if value.startswith("python:"):
        _, kind, label = (value.split(":", 2) + ["", ""])[:3]
        return kind.isidentifier() and bool(label) and label.isprintable() and " " not in label
    mod, sep, attr = value.partition(":")
    return (
        bool(sep)
        and all(part.isidentifier() for part in mod.split("."))
        and all(part.isidentifier() for part in attr.split("."))
    )


@dataclass(frozen=True)
class DataConfig:
    """Where client data comes from.

    ``source``: digits | breast_cancer (scikit-learn bundled), synthetic (FedProx
    synthetic(alpha, beta)), npz_dir / csv_dir (one file per client in ``path``),
    emnist / shakespeare (TFF's federated datasets read from ``cache_dir``, never downloaded; the
    tasks emnist62_cnn and shakespeare_char), a registered source, or an import path of a loader.
    """

    source: str = "digits"
    num_clients: int = 20
    path: Optional[str] = None
    kwargs: dict = field(default_factory=dict)  # keyword arguments of a user's (import-path) loader
    cache_dir: Optional[str] = None  # TFF datasets (emnist, shakespeare, ...): read from here, never download
    test_fraction: float = 0.2
    client_eval_fraction: float = 0.2
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    synthetic_dim: int = 60
    synthetic_classes: int = 10
    synthetic_iid: bool = False
    synthetic_max_examples: int = 500  # cap on the log-normal client size (keeps 10k clients in memory)
    max_clients: Optional[int] = None  # for natural sources (emnist): cap the population

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        _int_in(self.num_clients, 1, INT_MAX, f"{p}.num_clients")
        _int_in(self.synthetic_dim, 1, INT_MAX, f"{p}.synthetic_dim")
        _int_in(self.synthetic_classes, 2, INT_MAX, f"{p}.synthetic_classes")
        _int_in(self.synthetic_max_examples, 10, INT_MAX, f"{p}.synthetic_max_examples")
        if self.max_clients is not None:
            _int_in(self.max_clients, 1, INT_MAX, f"{p}.max_clients")
        _require(
            0.0 < self.test_fraction < 1.0,
            f"{p}.test_fraction",
            f"expected a fraction in (0, 1), got {self.test_fraction}",
        )
        _require(
            0.0 <= self.client_eval_fraction < 1.0,
            f"{p}.client_eval_fraction",
            f"expected a fraction in [0, 1), got {self.client_eval_fraction}",
        )
        if self.source in ("npz_dir", "csv_dir"):
            _require(bool(self.path), f"{p}.path", f"source '{self.source}' needs a directory of per-client files")
        for name in ("synthetic_alpha", "synthetic_beta"):
            _require(
                0 <= getattr(self, name) <= 1e6,
                f"{p}.{name}",
                f"expected a variance >= 0 and <= 1e6, got {getattr(self, name)}",
            )
        if self.source != "synthetic":
            _unused(
                self,
                (
                    "synthetic_alpha",
                    "synthetic_beta",
                    "synthetic_dim",
                    "synthetic_classes",
                    "synthetic_iid",
                    "synthetic_max_examples",
                ),
                p,
                f"unless {p}.source is 'synthetic' (it is '{self.source}')",
            )
        if self.source in ("digits", "breast_cancer", "synthetic"):
            _require(
                self.path is None,
                f"{p}.path",
                f"has no effect with source '{self.source}' (only npz_dir, "
                "csv_dir and user loaders read it); remove it",
            )
        if self.source in ("digits", "breast_cancer", "synthetic", "npz_dir", "csv_dir"):
            _require(
                self.max_clients is None,
                f"{p}.max_clients",
                f"has no effect with source '{self.source}' (it caps the populations of TFF datasets and user "
                "loaders); remove it",
            )


@dataclass(frozen=True)
class PartitionConfig:
    """How examples are split over clients.

    ``auto``: Dirichlet label skew for pooled sources (digits, breast_cancer), the
    natural per-client split for the others (synthetic, npz_dir, csv_dir, emnist).
    Any other scheme pools a natural source's examples and re-partitions them.
    """

    scheme: PartitionScheme = "auto"
    alpha: float = 0.5  # Dirichlet concentration (smaller = more label skew)
    classes_per_client: int = 2  # pathological shards
    quantity_sigma: float = 1.0  # log-normal sigma of client sizes for quantity skew
    min_examples_per_client: int = 10

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        # numpy's Dirichlet sampler stalls below ~1e-4 (minutes per draw at 1e-10); 1e-3 is already
        # one class per client, and 1e6 is IID.
        _require(
            1e-3 <= self.alpha <= 1e6,
            f"{p}.alpha",
            f"expected a Dirichlet concentration > 0, between 0.001 and 1e6, got {self.alpha}",
        )
        _int_in(self.classes_per_client, 1, INT_MAX, f"{p}.classes_per_client")
        # lognormal(0, sigma) weights overflow float64 near sigma = 30; 10 already puts nearly all
        # examples on one client.
        _require(
            0 <= self.quantity_sigma <= 10,
            f"{p}.quantity_sigma",
            f"expected a log-normal sigma between 0 and 10, got {self.quantity_sigma}",
        )
        _int_in(self.min_examples_per_client, 1, INT_MAX, f"{p}.min_examples_per_client")
        # Which scheme reads which field ("auto" is Dirichlet for pooled sources, see ExperimentConfig).
        used = {
            "auto": ("alpha", "min_examples_per_client"),
            "dirichlet": ("alpha", "min_examples_per_client"),
            "shards": ("classes_per_client",),
            "quantity_skew": ("quantity_sigma", "min_examples_per_client"),
            "iid": (),
            "natural": (),
        }[self.scheme]
        _unused(
            self,
            [n for n in ("alpha", "classes_per_client", "quantity_sigma", "min_examples_per_client") if n not in used],
            p,
            f"with {p}.scheme '{self.scheme}'",
        )


@dataclass(frozen=True)
class ModelConfig:
    """The model: a registered name (the zoo, or ``tff_lab.models.register_model``) or ``builder``,
    an import path ``module:attribute`` of a function ``(input_shape, num_classes, **kwargs) ->
    tf.keras.Model`` that returns a fresh model on every call. ``outputs`` declares whether the
    model ends in probabilities (softmax) or logits; loss and accuracy follow it."""

    name: str = "mlp"
    builder: Optional[str] = None
    kwargs: dict = field(default_factory=dict)
    outputs: Optional[ModelOutputs] = None  # None: the registered model's declaration (zoo: probabilities)
    hidden_units: tuple[int, ...] = (64, 64)
    cnn_filters: tuple[int, ...] = (16, 32)
    dropout: float = 0.0

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        _require(bool(self.name), f"{p}.name", "expected a non-empty model name")
        if self.builder is not None:
            _require(
                _is_import_path(self.builder),
                f"{p}.builder",
                f"expected an import path 'module:attribute', got {self.builder!r}",
            )
        for name, hi in (("hidden_units", MAX_HIDDEN_UNITS), ("cnn_filters", MAX_CNN_FILTERS)):
            for i, u in enumerate(getattr(self, name)):
                _int_in(u, 1, hi, f"{p}.{name}[{i}]")
        _require(0.0 <= self.dropout < 1.0, f"{p}.dropout", f"expected a rate in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class OptimizerConfig:
    """A TFF optimizer (``tff.learning.optimizers.build_*``)."""

    name: ServerOptimizerName = "sgd"
    learning_rate: float = 1.0
    momentum: float = 0.9  # sgdm only
    beta_1: float = 0.9  # adam, yogi
    beta_2: float = 0.99  # adam, yogi
    epsilon: float = 1e-3  # adam, yogi, adagrad, adamw (FedOpt paper's tau)
    initial_preconditioner_value: Optional[float] = None  # adagrad, yogi (None: TFF's default)
    weight_decay: float = 0.004  # adamw (TFF's default)

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        _require(self.learning_rate > 0, f"{p}.learning_rate", f"expected a value > 0, got {self.learning_rate}")
        _require(0.0 <= self.momentum < 1.0, f"{p}.momentum", "expected a value in [0, 1)")
        _require(0.0 <= self.beta_1 < 1.0 and 0.0 <= self.beta_2 < 1.0, f"{p}.beta_1", "betas must be in [0, 1)")
        _require(self.epsilon > 0, f"{p}.epsilon", "expected a value > 0")
        if self.initial_preconditioner_value is not None:
            _require(
                self.initial_preconditioner_value >= 0, f"{p}.initial_preconditioner_value", "expected a value >= 0"
            )
        _require(
            0.0 <= self.weight_decay < 1.0, f"{p}.weight_decay", f"expected a decay in [0, 1), got {self.weight_decay}"
        )
        # What each tff.learning.optimizers.build_* takes (tff_lab.algorithms.optimizers).
        used = {
            "sgd": (),
            "sgdm": ("momentum",),
            "adam": ("beta_1", "beta_2", "epsilon"),
            "yogi": ("beta_1", "beta_2", "epsilon", "initial_preconditioner_value"),
            "adagrad": ("epsilon", "initial_preconditioner_value"),
            "adamw": ("beta_1", "beta_2", "epsilon", "weight_decay"),
        }[self.name]
        _unused(
            self,
            [
                n
                for n in ("momentum", "beta_1", "beta_2", "epsilon", "initial_preconditioner_value", "weight_decay")
                if n not in used
            ],
            p,
            f"with optimizer '{self.name}'",
        )


@dataclass(frozen=True)
class AlgorithmConfig:
    """A registered algorithm (``name``, resolved by :mod:`tff_lab.algorithms.registry`), or
    ``builder``: an import path of a function ``(model_fn, *, aggregator, cfg) ->
    tff.learning.templates.LearningProcess`` (TFF engine only)."""

    name: str = "fedavg"
    builder: Optional[str] = None
    kwargs: dict = field(default_factory=dict)
    weighting: Weighting = "num_examples"
    proximal_strength: float = 0.0  # FedProx mu
    client_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="sgd", learning_rate=0.1))
    server_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="sgd", learning_rate=1.0))

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        if self.builder is not None:
            _require(
                _is_import_path(self.builder),
                f"{p}.builder",
                f"expected an import path 'module:attribute', got {self.builder!r}",
            )
        if self.name == "fedsgd":  # FedSGD's clients compute one gradient: no client optimizer runs
            _require(
                self.client_optimizer == OptimizerConfig(name="sgd", learning_rate=0.1),
                f"{p}.client_optimizer",
                "has no effect with algorithm 'fedsgd' (clients send one gradient; "
                "the server optimizer applies it); remove it",
            )
        _require(self.proximal_strength >= 0, f"{p}.proximal_strength", "expected mu >= 0")
        from tff_lab.algorithms.registry import check_config  # the one list of names (imports no TF)

        check_config(self, p)  # the name, and the fields and rules of that algorithm
        self.client_optimizer.validate(f"{p}.client_optimizer")
        self.server_optimizer.validate(f"{p}.server_optimizer")


@dataclass(frozen=True)
class TrainingConfig:
    rounds: int = 100
    clients_per_round: int = 10
    sampling: Sampling = "uniform"
    sampling_rate: Optional[float] = None  # poisson: each client joins with this probability
    local_epochs: int = 1
    batch_size: int = 16
    eval_every_rounds: int = 10
    rounds_per_checkpoint: int = 10
    # Performance knobs (see BENCHMARKS.md): the defaults are the fastest settings
    # that keep results identical.
    loop_implementation: LoopImpl = "dataset_iterator"
    client_concurrency: int = 0  # 0 = as many clients at once as the executor wants
    # Which engine runs a round: TFF's runtime, or every sampled client in one TF graph (README);
    # auto: the vectorised one whenever it runs the experiment exactly, else TFF's.
    engine: Engine = "auto"
    # TFF executor workers: 0 = TFF's in-process local context; N = tff_lab starts N local
    # worker_binary processes and spreads each round's clients over them.
    workers: int = 0
    worker_addresses: tuple[str, ...] = ()  # host:port of running TFF workers (e.g. k8s pods)
    worker_retries: int = 2  # a round whose worker died is retried from the last checkpoint this often
    # Stop when the training loss is NaN/inf or exceeds this multiple of the initial model's test
    # loss (at least chance level, ln(classes)); weights that turn NaN/inf stop the run too.
    divergence_factor: float = 4.0

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        for name in (
            "rounds",
            "clients_per_round",
            "local_epochs",
            "batch_size",
            "eval_every_rounds",
            "rounds_per_checkpoint",
        ):
            _int_in(getattr(self, name), 1, INT_MAX, f"{p}.{name}")
        _int_in(self.client_concurrency, 0, INT_MAX, f"{p}.client_concurrency")
        _int_in(self.workers, 0, 1024, f"{p}.workers")  # local worker_binary processes on one machine
        _require(
            not (self.workers and self.worker_addresses),
            f"{p}.worker_addresses",
            "give training.workers (start local workers) or training.worker_addresses (use running ones), not both",
        )
        for i, addr in enumerate(self.worker_addresses):
            host, sep, port = addr.rpartition(":")
            _require(
                bool(sep) and bool(host) and port.isdigit() and 0 < int(port) < 65536,
                f"{p}.worker_addresses[{i}]",
                f"expected host:port, got {addr!r}",
            )
        _int_in(self.worker_retries, 0, INT_MAX, f"{p}.worker_retries")
        _require(
            math.isfinite(self.divergence_factor) and self.divergence_factor > 1,
            f"{p}.divergence_factor",
            f"expected a finite value > 1, got {self.divergence_factor}",
        )
        if self.sampling == "poisson":
            _require(self.sampling_rate is not None, f"{p}.sampling_rate", "poisson sampling needs a rate in (0, 1]")
        if self.sampling_rate is not None:
            _require(
                0.0 < self.sampling_rate <= 1.0,
                f"{p}.sampling_rate",
                f"expected a probability in (0, 1], got {self.sampling_rate}",
            )
            _require(self.sampling == "poisson", f"{p}.sampling_rate", "only used with sampling 'poisson'")


@dataclass(frozen=True)
class AuditConfig:
    """Empirical privacy estimation with canary clients (Andrew et al., ICLR 2024); 0 = off."""

    canaries: int = 0  # canary clients inserted into the population (sampled like everyone)
    unseen: int = 0  # canaries held back (never inserted): the null distribution of cosines

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        _int_in(self.canaries, 0, INT_MAX, f"{p}.canaries")
        _int_in(self.unseen, 0, INT_MAX, f"{p}.unseen")
        _require(
            (self.canaries == 0) == (self.unseen == 0),
            f"{p}.unseen",
            "an audit needs both inserted canaries and unseen canaries (give both or neither)",
        )


@dataclass(frozen=True)
class PrivacyConfig:
    """User-level differential privacy of the aggregate (see README, Privacy).

    ``mechanism``: gaussian_fixed | gaussian_adaptive (clip adapted to ``target_quantile``;
    the quantile estimate's noised count is accounted) | tree (DP-FTRL, no amplification by
    sampling) | ddp_secure (distributed Skellam under secure aggregation; accounted with the
    Skellam RDP bound, without amplification, and only with ``aggregation.zeroing: false``). Give ``noise_multiplier`` or
    ``target_epsilon`` (the noise is then found by searching ``accountant``).
    """

    mechanism: DpMechanism = "none"
    noise_multiplier: Optional[float] = None  # gaussian_adaptive: the total (TFF's meaning)
    clip: float = 1.0  # fixed clip norm, or the initial clip for adaptive clipping
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: Optional[float] = None  # adaptive; default max(0.05 * expected clients, noise)
    delta: Optional[float] = None  # default min(1e-5, population^-1.1), resolved at run start
    target_epsilon: Optional[float] = None
    max_epsilon: Optional[float] = None  # stop before a round would exceed it
    accountant: Accountant = "rdp"  # the one target_epsilon / max_epsilon are held to (both are reported)
    reproducible_noise: bool = True  # DP noise from a seed in the aggregator state (see README)
    # Under DP, artifacts epsilon does not cover (unnoised training metrics, client statistics) are
    # written only with this opt-in; privacy.json lists every artifact and whether epsilon covers it.
    release_unprotected: bool = False
    audit: AuditConfig = field(default_factory=AuditConfig)

    @property
    def enabled(self) -> bool:
        return self.mechanism != "none"

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        self.audit.validate(f"{p}.audit")
        if self.noise_multiplier is not None:
            _require(
                math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0,
                f"{p}.noise_multiplier",
                f"expected a finite value > 0, got {self.noise_multiplier} (0 adds no noise: epsilon is "
                "infinite; for clipping without noise use aggregation.kind: robust)",
            )
        _require(math.isfinite(self.clip) and self.clip > 0, f"{p}.clip", f"expected a clip norm > 0, got {self.clip}")
        _require(
            0.0 < self.target_quantile < 1.0,
            f"{p}.target_quantile",
            f"expected a quantile in (0, 1), got {self.target_quantile}",
        )
        _require(
            math.isfinite(self.clip_learning_rate) and self.clip_learning_rate > 0,
            f"{p}.clip_learning_rate",
            f"expected a value > 0, got {self.clip_learning_rate}",
        )
        if self.clipped_count_stddev is not None:
            _require(
                math.isfinite(self.clipped_count_stddev) and self.clipped_count_stddev > 0,
                f"{p}.clipped_count_stddev",
                f"expected a value > 0, got {self.clipped_count_stddev}",
            )
        if self.delta is not None:
            _require(0.0 < self.delta < 1.0, f"{p}.delta", f"expected delta in (0, 1), got {self.delta}")
        for name in ("target_epsilon", "max_epsilon"):
            v = getattr(self, name)
            if v is not None:
                _require(math.isfinite(v) and v > 0, f"{p}.{name}", f"expected a finite epsilon > 0, got {v}")
        if self.target_epsilon is not None and self.max_epsilon is not None:
            _require(
                self.max_epsilon >= self.target_epsilon,
                f"{p}.max_epsilon",
                f"max_epsilon ({self.max_epsilon}) is below target_epsilon ({self.target_epsilon})",
            )
        if self.enabled:
            _require(
                self.noise_multiplier is not None or self.target_epsilon is not None,
                f"{p}.noise_multiplier",
                f"mechanism '{self.mechanism}' needs noise_multiplier or target_epsilon",
            )
            _require(
                not (self.noise_multiplier is not None and self.target_epsilon is not None),
                f"{p}.target_epsilon",
                "give noise_multiplier or target_epsilon, not both",
            )
            if self.mechanism == "ddp_secure":
                _require(
                    self.accountant == "rdp",
                    f"{p}.accountant",
                    "ddp_secure is accounted with the Skellam RDP bound only (dp_accounting has no PLD for it); "
                    "use rdp",
                )
        else:
            for name in ("noise_multiplier", "target_epsilon", "max_epsilon", "delta", "clipped_count_stddev"):
                _require(getattr(self, name) is None, f"{p}.{name}", "set privacy.mechanism to use it")
            _unused(self, ("clip", "accountant", "reproducible_noise"), p, "without a privacy.mechanism")
        if self.mechanism != "gaussian_adaptive":
            _unused(
                self,
                ("target_quantile", "clip_learning_rate"),
                p,
                f"unless {p}.mechanism is 'gaussian_adaptive' (it is '{self.mechanism}')",
            )
            _require(
                self.clipped_count_stddev is None,
                f"{p}.clipped_count_stddev",
                f"has no effect unless {p}.mechanism is 'gaussian_adaptive' (it is '{self.mechanism}'); remove it",
            )


@dataclass(frozen=True)
class SecAggConfig:
    """``aggregation.kind: secagg``: the SecAgg / SecAgg+ protocol run between the sampled clients
    and a server object (:mod:`tff_lab.aggregation.secagg`)."""

    neighbors: Union[None, int, Literal["all"]] = None  # None: SecAgg+ (k ~ log2 n); 'all': SecAgg; or k
    threshold_fraction: float = 0.5  # t = floor(fraction * (k + 1)) + 1 shares of each secret
    dropout_rate: float = 0.0  # clients vanishing after share_keys or after masked_input (seeded)
    bits: int = 32  # quantisation of the model update (32 = TFF's secure sum)

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        if isinstance(self.neighbors, int):
            _int_in(self.neighbors, 2, INT_MAX, f"{p}.neighbors")
        _require(
            0.0 < self.threshold_fraction < 1.0,
            f"{p}.threshold_fraction",
            f"expected a fraction in (0, 1), got {self.threshold_fraction}",
        )
        _require(
            0.0 <= self.dropout_rate < 1.0,
            f"{p}.dropout_rate",
            f"expected a probability in [0, 1), got {self.dropout_rate}",
        )
        _int_in(self.bits, 1, 32, f"{p}.bits")


@dataclass(frozen=True)
class AggregationConfig:
    """Non-DP aggregation families (TFF factories); see README for what each does here.

    Distributed DP under secure aggregation is a privacy mechanism: ``privacy.mechanism: ddp_secure``
    (its ``ddp_bits``/``ddp_rotation``/``zeroing`` live here).
    """

    kind: AggregationKind = "mean"
    # A user's TFF aggregation factory: import path of a function (cfg) -> tff.aggregators factory.
    builder: Optional[str] = None
    kwargs: dict = field(default_factory=dict)
    zeroing: bool = True
    clipping: bool = True
    ddp_bits: int = 20
    ddp_rotation: Literal["hd", "dft"] = "hd"
    quantization_bits: int = 8  # compression
    quantization_threshold: int = 0  # compression: quantize tensors with more elements than this
    rotation: Literal["none", "hadamard"] = "none"  # compression
    stochastic_rounding: bool = True  # compression: unbiased randomized rounding (unseeded in TFF)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        self.secagg.validate(f"{p}.secagg")
        if self.kind != "secagg" and self.secagg != SecAggConfig():
            raise ConfigError(
                f"{p}.secagg", f"has no effect unless {p}.kind is 'secagg' (it is '{self.kind}'); remove it"
            )
        if self.builder is not None:
            _require(
                _is_import_path(self.builder),
                f"{p}.builder",
                f"expected an import path 'module:attribute', got {self.builder!r}",
            )
        _require(1 <= self.ddp_bits <= 22, f"{p}.ddp_bits", f"expected an integer in [1, 22], got {self.ddp_bits}")
        _require(
            1 <= self.quantization_bits <= 16,
            f"{p}.quantization_bits",
            f"expected an integer in [1, 16], got {self.quantization_bits}",
        )
        _int_in(self.quantization_threshold, 0, INT_MAX, f"{p}.quantization_threshold")
        if self.kind != "compression":
            _unused(
                self,
                ("quantization_bits", "quantization_threshold", "rotation", "stochastic_rounding"),
                p,
                f"unless {p}.kind is 'compression' (it is '{self.kind}')",
            )


@dataclass(frozen=True)
class CentralizedConfig:
    enabled: bool = True
    dp_sgd: bool = False  # also train the example-level DP-SGD baseline
    dp_noise_multiplier: float = 1.1
    dp_l2_norm_clip: float = 1.0

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        _require(
            self.dp_noise_multiplier > 0,
            f"{p}.dp_noise_multiplier",
            f"expected a value > 0, got {self.dp_noise_multiplier}",
        )
        _require(self.dp_l2_norm_clip > 0, f"{p}.dp_l2_norm_clip", f"expected a value > 0, got {self.dp_l2_norm_clip}")
        # The DP-SGD baseline is part of the centralized comparison: without it nothing trains it.
        _require(
            self.enabled or not self.dp_sgd,
            f"{p}.dp_sgd",
            f"has no effect with {p}.enabled: false (the DP-SGD baseline is part of the centralized "
            f"comparison); set {p}.enabled: true or remove it",
        )
        if not self.dp_sgd:
            _unused(self, ("dp_noise_multiplier", "dp_l2_norm_clip"), p, f"without {p}.dp_sgd: true")


@dataclass(frozen=True)
class DistConfig:
    """The MultiWorkerMirroredStrategy trainer (``tff-lab train-dist``)."""

    epochs: int = 10
    per_replica_batch_size: int = 32
    learning_rate: float = 0.05
    steps_per_execution: int = 1
    mixed_precision: bool = False  # mixed_float16 compute, float32 variables and output
    backup_dir: Optional[str] = None  # default: OUT/backup (must be a volume every worker shares)
    # How the input is split over workers: "data" = tf.data auto-shard by DATA (every worker reads
    # the same seeded order and keeps its part of each global batch); "explicit" = Dataset.shard
    # per worker via distribute_datasets_from_function.
    input_sharding: InputSharding = "data"

    def validate(self, p: str) -> None:
        _check_fields(self, p)
        _int_in(self.epochs, 1, INT_MAX, f"{p}.epochs")
        _int_in(self.per_replica_batch_size, 1, INT_MAX, f"{p}.per_replica_batch_size")
        _require(self.learning_rate > 0, f"{p}.learning_rate", f"expected a value > 0, got {self.learning_rate}")
        _int_in(self.steps_per_execution, 1, INT_MAX, f"{p}.steps_per_execution")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    centralized: CentralizedConfig = field(default_factory=CentralizedConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def validate(self) -> None:
        _check_fields(self, "")
        _int_in(self.seed, 0, SEED_MAX, "seed")
        _require(bool(self.name) and "/" not in self.name, "name", "expected a non-empty name without '/'")
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if hasattr(sub, "validate"):
                sub.validate(f.name)
        t = self.training
        if self.partition.scheme in ("auto", "natural") and self.data.source in (
            "synthetic",
            "npz_dir",
            "csv_dir",
            "emnist",
            "shakespeare",
        ):
            # The natural split: the population is the source's own, and no partitioner runs.
            why = f"with source '{self.data.source}' split naturally (partition.scheme '{self.partition.scheme}')"
            _unused(self.partition, ("alpha", "min_examples_per_client"), "partition", why)
            if self.data.source != "synthetic":
                _unused(self.data, ("num_clients",), "data", why)
        if self.partition.scheme == "natural":
            _require(
                self.data.source not in ("digits", "breast_cancer"),
                "partition.scheme",
                f"source '{self.data.source}' has no natural split; use auto, iid, dirichlet, shards or quantity_skew",
            )
        if t.sampling == "uniform" and self.data.source in ("digits", "breast_cancer", "synthetic"):
            # Natural sources know their population only after loading; checked again there.
            _require(
                t.clients_per_round <= self.data.num_clients,
                "training.clients_per_round",
                f"expected at most data.num_clients ({self.data.num_clients}), got {t.clients_per_round}",
            )
        self._validate_privacy()
        a, mech = self.aggregation, self.privacy.mechanism
        _require(
            a.kind != "secagg" or t.engine == "vectorized",
            "aggregation.kind",
            "secagg runs on the vectorised engine (training.engine: vectorized)",
        )
        if mech != "ddp_secure":
            _unused(
                a,
                ("ddp_bits", "ddp_rotation"),
                "aggregation",
                f"unless privacy.mechanism is 'ddp_secure' (it is '{mech}')",
            )
        if a.kind == "mean" and a.builder is None:
            # Plain mean and the Gaussian DP aggregators do not zero or clip through these fields;
            # ddp_secure zeroes but clips by itself (tff_lab.federated.aggregators).
            why = (
                "with privacy.mechanism 'ddp_secure' (it clips by itself)"
                if mech == "ddp_secure"
                else "with aggregation.kind 'mean' (only secure, robust, compression and ddp_secure read it)"
            )
            _unused(a, ("clipping",) if mech == "ddp_secure" else ("zeroing", "clipping"), "aggregation", why)

    def _validate_privacy(self) -> None:
        """Cross-field rules of privacy/aggregation (refused, never silently changed)."""
        pr, t = self.privacy, self.training
        if not pr.enabled:
            return
        from tff_lab.algorithms.registry import algorithm_class

        refusal = algorithm_class(self.algorithm.name).dp_refusal
        _require(refusal is None, "algorithm.name", refusal or "")
        _require(
            self.algorithm.weighting == "uniform",
            "algorithm.weighting",
            "differentially private aggregation is unweighted (each client's clipped update counts once); "
            "set algorithm.weighting: uniform",
        )
        _require(
            self.aggregation.kind == "mean",
            "aggregation.kind",
            f"'{self.aggregation.kind}' cannot be combined with privacy.mechanism (the DP aggregator does its "
            "own clipping and summation); use privacy.mechanism: ddp_secure for DP under secure aggregation",
        )
        if (
            pr.accountant == "pld"
            and t.sampling == "uniform"
            and pr.mechanism in ("gaussian_fixed", "gaussian_adaptive")
        ):
            raise ConfigError(
                "privacy.accountant",
                "dp_accounting 0.4.3's PLD accountant does not support "
                "fixed-size sampling without replacement; use accountant: rdp or training.sampling: "
                "poisson",
            )
        if self.data.source in ("digits", "breast_cancer", "synthetic") and pr.delta is not None:
            # Natural sources know their population only after loading; checked again at run start.
            n = self.data.num_clients
            _require(
                pr.delta < 1.0 / n,
                "privacy.delta",
                f"delta {pr.delta} is not below 1/population (1/{n}): a mechanism that publishes one random "
                "client's data outright meets such a delta; use a delta well below 1/population",
            )
