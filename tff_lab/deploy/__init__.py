"""Kubernetes deployment: manifests rendered from the kubernetes client's models, sweeps as Jobs."""
