"""TFF wiring: algorithms, aggregators and optimizers built from the config."""
