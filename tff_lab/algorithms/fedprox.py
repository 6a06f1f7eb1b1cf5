"""FedProx (Li et al. 2020): FedAvg whose clients add a proximal term (``algorithm.proximal_strength``).

TFF: ``build_weighted_fed_prox`` / ``build_unweighted_fed_prox``. Vectorised engine: TFF 0.87's
``proximal_client_work``, which differs from FedAvg's client work only in what is overridden here.
"""

from __future__ import annotations

from typing import Any, Callable

from tff_lab.algorithms.fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"
    uses = ("proximal_strength",)
    resets_metrics_of_non_finite = False  # TFF's proximal_client_work keeps them

    def learning_process(self, model_fn: Callable[..., Any], *, aggregator: Any, loop_implementation: Any) -> Any:
        import tensorflow_federated as tff

        from tff_lab.algorithms.optimizers import build_optimizer

        build = (
            tff.learning.algorithms.build_weighted_fed_prox
            if self.weighted
            else tff.learning.algorithms.build_unweighted_fed_prox
        )
        return build(
            model_fn,
            self.cfg.proximal_strength,
            build_optimizer(self.cfg.client_optimizer),
            build_optimizer(self.cfg.server_optimizer),
            model_aggregator=aggregator,
            loop_implementation=loop_implementation,
        )

    def initial_client_work(self) -> Any:
        return ()  # proximal_client_work keeps no state

    def client_optimizer_state(self, client_work: Any) -> Any:
        return self.client_optimizer.initialize(tuple(self.specs))

    def gradient(self, grads: list[Any], weights: list[Any], initial: list[Any], client_in: Any) -> list[Any]:
        mu = float(self.cfg.proximal_strength)
        if mu == 0.0:
            return grads
        # TFF's proximal_client_work term, as written there: mu * (initial - current).
        return [g + mu * (w0 - w) for g, w, w0 in zip(grads, weights, initial)]
