"""FedSGD (McMahan et al. 2017): each client sends its example-weighted mean gradient at the global
model; the server optimizer takes their weighted mean as its gradient.

TFF: ``build_fed_sgd`` (weighted by examples in TFF 0.87, so ``algorithm.weighting: num_examples``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from tff_lab.algorithms.base import Algorithm, GradFn
from tff_lab.errors import ConfigError

if TYPE_CHECKING:
    from tff_lab.config.schema import AlgorithmConfig


class FedSGD(Algorithm):
    name = "fedsgd"
    dp_refusal = "fedsgd is weighted in TFF 0.87; use fedavg with local_epochs 1 for DP"

    @classmethod
    def check_config(cls, cfg: AlgorithmConfig, p: str) -> None:
        if cfg.weighting != "num_examples":
            raise ConfigError(
                f"{p}.weighting", "TFF's FedSGD weights clients by examples; set algorithm.weighting: num_examples"
            )

    def learning_process(self, model_fn: Callable[..., Any], *, aggregator: Any, loop_implementation: Any) -> Any:
        import tensorflow_federated as tff

        from tff_lab.algorithms.optimizers import build_optimizer

        return tff.learning.algorithms.build_fed_sgd(
            model_fn,
            server_optimizer_fn=build_optimizer(self.cfg.server_optimizer),
            model_aggregator=aggregator,
            loop_implementation=loop_implementation,
        )

    # -- vectorised engine: the carry is the example-weighted gradient sum ------------------------
    def client_init(self, initial: list[Any], client_work: Any) -> Any:
        import tensorflow as tf

        return [tf.zeros_like(w) for w in initial]

    def client_step(
        self, carry: Any, client_in: Any, initial: list[Any], grad_fn: GradFn, n: Any
    ) -> tuple[Any, Any, Any]:
        grads, preds, loss = grad_fn(initial)
        return [a + n * g for a, g in zip(carry, grads)], preds, loss

    def client_end(
        self, carry: Any, client_in: Any, initial: list[Any], num_examples: Any, num_steps: Any
    ) -> tuple[list[Any], Any]:
        return [a / num_examples for a in carry], ()

    def client_weights(self, num_examples: Any, finite: Any) -> Any:
        import tensorflow as tf

        return tf.where(finite, num_examples, 0.0)
