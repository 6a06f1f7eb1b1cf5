"""The algorithm contract: one object gives both engines what they run.

An algorithm (one file each: :mod:`.fedavg`, :mod:`.fedprox`, :mod:`.fedsgd`, :mod:`.scaffold`)
is a subclass of :class:`Algorithm`, listed in :mod:`.registry`. It provides

- for the TFF engine, :meth:`Algorithm.learning_process`: a ``tff.learning.templates.LearningProcess``
  from TFF 0.87's own builders (or ``tff_refusal``: one line saying why the TFF engine cannot run it);
- for the vectorised engine (:mod:`tff_lab.engines.vectorized`), pure TF functions that the
  engine composes inside its graph. The engine owns the data, the cohort, the model's forward and
  backward pass, the lock step over local steps (``tf.while_loop``), the vectorisation over clients
  (``tf.vectorized_map``), the masking of clients without a batch, the per-client zeroing of
  non-finite updates and the aggregation (mean or DP query). The algorithm owns what a client
  does with a batch and what the server does with the aggregate:

  ========================  =================================================================
  ``client_init``           the per-client carry at the start of local training (unbatched)
  ``client_step``           one local step: ``(carry, client_in, initial, grad_fn, n) -> carry``
  ``client_end``            the client's model update (``initial - final``) and its outputs
  ``client_weights``        the aggregation weight of each client
  ``server_step``           the server optimizer step (and any server-side state of the algorithm)
  ========================  =================================================================

  ``client_in`` / ``client_out`` are per-client tensors kept by the simulation between rounds
  (SCAFFOLD's control variates); :meth:`Algorithm.split_state` and :meth:`Algorithm.merge_state`
  move them between the engine state (numpy, checkpointed) and the round's graph.

The engine state has TFF's ``LearningAlgorithmState`` layout; the algorithm owns its
``client_work`` part (:meth:`Algorithm.initial_client_work`), e.g. TFF's FedAvg keeps the client
optimizer's hyperparameters there. It must round-trip through NPZ (numpy leaves). A leaf whose
initial shape starts with 0 is a table that grows (one row per client that has state);
:func:`tff_lab.training.checkpoint.load` restores it at its saved length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Sequence

import numpy as np
import numpy.typing as npt

from tff_lab.errors import ConfigError

if TYPE_CHECKING:
    from tff_lab.config.schema import AlgorithmConfig

GradFn = Callable[[Sequence[Any]], tuple[list[Any], Any, Any]]


class Algorithm:
    """A federated algorithm for both engines. Subclasses set ``name`` and override what differs."""

    name: ClassVar[str] = ""
    #: AlgorithmConfig fields only this algorithm reads (others must leave them at their defaults).
    uses: ClassVar[tuple[str, ...]] = ()
    #: Why the TFF engine cannot run it (None: it can, through :meth:`learning_process`).
    tff_refusal: ClassVar[Optional[str]] = None
    #: Why it cannot run under a DP mechanism (None: it can).
    dp_refusal: ClassVar[Optional[str]] = None
    #: TFF's FedAvg drops a client's loss/example counts from the round's metrics when its update is
    #: not finite; FedProx and FedSGD keep them.
    resets_metrics_of_non_finite: ClassVar[bool] = False
    #: Model-sized tensors a client sends besides its update and receives besides the model
    #: (the communication hook counts them).
    extra_model_copies: ClassVar[int] = 0

    def __init__(self, cfg: AlgorithmConfig) -> None:
        self.cfg = cfg
        self.weighted = cfg.weighting == "num_examples"
        self.specs: list[Any] = []
        self.population = 0
        self.server_optimizer: Any = None

    @classmethod
    def check_config(cls, cfg: AlgorithmConfig, p: str) -> None:
        """Rules of this algorithm's own config section (raise :class:`ConfigError`)."""

    # -- the TFF engine --------------------------------------------------------------------------
    def learning_process(self, model_fn: Callable[..., Any], *, aggregator: Any, loop_implementation: Any) -> Any:
        """The ``tff.learning.templates.LearningProcess`` the TFF engine runs."""
        raise ConfigError("algorithm.name", self.tff_refusal or f"{self.name} has no TFF learning process")

    # -- the vectorised engine: setup and state (numpy) ------------------------------------------
    def setup(self, specs: Sequence[Any], population: int) -> None:
        """Called once by the engine with the trainable weights' ``tf.TensorSpec`` and the population."""
        from tff_lab.algorithms.optimizers import build_optimizer

        self.specs = list(specs)
        self.population = int(population)
        self.server_optimizer = build_optimizer(self.cfg.server_optimizer)

    def initial_client_work(self) -> Any:
        """The ``client_work`` part of the state (TFF's layout for TFF's algorithms)."""
        return ()

    def initial_finalizer(self) -> Any:
        """The server optimizer's state (TFF's ``finalizer`` part of the state)."""
        from tff_lab.algorithms.optimizers import optimizer_state

        return optimizer_state(self.server_optimizer, self.specs)

    def split_state(self, client_work: Any, client_indices: npt.NDArray[Any], slots: int) -> tuple[Any, Any]:
        """(the part of ``client_work`` the round's graph reads, the per-client inputs ``[slots, ...]``
        of the sampled clients). Padded slots beyond ``len(client_indices)`` are ignored."""
        return client_work, ()

    def merge_state(
        self, client_work: Any, graph_client_work: Any, client_indices: npt.NDArray[Any], client_out: Any
    ) -> Any:
        """The new ``client_work`` after a round, from the graph's outputs (numpy)."""
        return graph_client_work

    # -- the vectorised engine: pure TF, inside the round's graph -------------------------------
    def client_init(self, initial: list[Any], client_work: Any) -> Any:
        """One client's carry before its first local step (the engine broadcasts it to every client)."""
        raise NotImplementedError

    def client_step(
        self, carry: Any, client_in: Any, initial: list[Any], grad_fn: GradFn, n: Any
    ) -> tuple[Any, Any, Any]:
        """One local step of one client on one batch of ``n`` real examples. ``grad_fn(weights)``
        returns (gradients of the batch loss, predictions, batch loss). Returns (carry,
        predictions, loss). The engine keeps the old carry when ``n`` is 0."""
        raise NotImplementedError

    def client_end(
        self, carry: Any, client_in: Any, initial: list[Any], num_examples: Any, num_steps: Any
    ) -> tuple[list[Any], Any]:
        """One client's (model update ``initial - final``, outputs kept by the simulation)."""
        raise NotImplementedError

    def client_weights(self, num_examples: Any, finite: Any) -> Any:
        """Every client's aggregation weight ([clients]); a non-finite update has been zeroed."""
        import tensorflow as tf

        if self.weighted:
            return tf.where(finite, num_examples, 0.0)
        return tf.ones_like(num_examples)

    def server_step(
        self,
        finalizer: Any,
        client_work: Any,
        weights: list[Any],
        aggregate: list[Any],
        client_out: Any,
        client_mask: Any,
    ) -> tuple[Any, Any, list[Any], Any]:
        """(new server optimizer state, new graph ``client_work``, new weights, non_finite)."""
        from tff_lab.algorithms.optimizers import server_step

        finalizer, weights, non_finite = server_step(self.server_optimizer, finalizer, weights, aggregate)
        return finalizer, client_work, weights, non_finite


def to_numpy(nest: Any) -> Any:
    """Leaves as numpy arrays; Python numbers and strings converted as TF converts them (float32,
    int32, bytes), as TFF's computations return them."""
    import tensorflow as tf

    def leaf(t: Any) -> npt.NDArray[Any]:
        if isinstance(t, (bool, int, float, str)):
            t = tf.convert_to_tensor(t)
        return np.asarray(t.numpy() if hasattr(t, "numpy") else t)

    return tf.nest.map_structure(leaf, nest)
