"""Model zoo (Keras builders) and the TFF adapter."""

from tff_lab.models.zoo import available, build_model, initial_weights, register

__all__ = ["available", "build_model", "initial_weights", "register"]
