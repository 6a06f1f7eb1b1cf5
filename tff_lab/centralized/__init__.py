"""Centralized baselines (the same model trained on pooled data)."""
