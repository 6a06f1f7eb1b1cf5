"""Models: one registry for the zoo, the tasks and a user's Keras builders (see ModelSpec)."""

from tff_lab.models.spec import ModelSpec, available, build_model, initial_weights, register_model, resolve_model

register = register_model  # the zoo's former name

__all__ = ["ModelSpec", "available", "build_model", "initial_weights", "register", "register_model", "resolve_model"]
