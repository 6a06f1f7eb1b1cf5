"""FedAvg (McMahan et al. 2017), weighted by examples or unweighted (``algorithm.weighting``).

TFF: ``build_weighted_fed_avg`` / ``build_unweighted_fed_avg``. Vectorised engine: TFF 0.87's
``model_delta_client_work`` -- local steps of the client optimizer, whose hyperparameters TFF keeps
as the ``client_work`` state; the update is ``initial - final``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tff_lab.algorithms.base import Algorithm, GradFn, to_numpy


class FedAvg(Algorithm):
    name = "fedavg"
    resets_metrics_of_non_finite = True

    def learning_process(self, model_fn: Callable[..., Any], *, aggregator: Any, loop_implementation: Any) -> Any:
        import tensorflow_federated as tff

        from tff_lab.algorithms.optimizers import build_optimizer

        build = (
            tff.learning.algorithms.build_weighted_fed_avg
            if self.weighted
            else tff.learning.algorithms.build_unweighted_fed_avg
        )
        return build(
            model_fn,
            build_optimizer(self.cfg.client_optimizer),
            build_optimizer(self.cfg.server_optimizer),
            model_aggregator=aggregator,
            loop_implementation=loop_implementation,
        )

    # -- vectorised engine -----------------------------------------------------------------------
    def setup(self, specs: Sequence[Any], population: int) -> None:
        from tff_lab.algorithms.optimizers import build_optimizer

        super().setup(specs, population)
        self.client_optimizer = build_optimizer(self.cfg.client_optimizer)

    def initial_client_work(self) -> Any:
        import tensorflow as tf

        # TFF's model_delta_client_work keeps the client optimizer's hyperparameters as its state.
        whimsy = self.client_optimizer.initialize(tf.TensorSpec(shape=(), dtype=tf.float32))
        return to_numpy(self.client_optimizer.get_hparams(whimsy))

    def client_optimizer_state(self, client_work: Any) -> Any:
        """The client optimizer's state at the start of local training (TFF sets the hyperparameters
        kept in ``client_work``)."""
        opt = self.client_optimizer
        return opt.set_hparams(opt.initialize(tuple(self.specs)), client_work)

    def client_init(self, initial: list[Any], client_work: Any) -> Any:
        return list(initial), self.client_optimizer_state(client_work)

    def gradient(self, grads: list[Any], weights: list[Any], initial: list[Any], client_in: Any) -> list[Any]:
        """The gradient the client optimizer takes (FedAvg: the loss gradient itself)."""
        return grads

    def client_step(
        self, carry: Any, client_in: Any, initial: list[Any], grad_fn: GradFn, n: Any
    ) -> tuple[Any, Any, Any]:
        weights, opt_state = carry
        grads, preds, loss = grad_fn(weights)
        grads = self.gradient(list(grads), list(weights), initial, client_in)
        opt_state, weights = self.client_optimizer.next(opt_state, tuple(weights), tuple(grads))
        return (list(weights), opt_state), preds, loss

    def client_end(
        self, carry: Any, client_in: Any, initial: list[Any], num_examples: Any, num_steps: Any
    ) -> tuple[list[Any], Any]:
        weights, _ = carry
        return [a - b for a, b in zip(initial, weights)], ()
