"""Multi-worker training: cluster discovery and the MultiWorkerMirroredStrategy trainer.

``tff_lab.distributed.cluster`` has no TensorFlow import; the trainer imports it when it runs.
"""

from tff_lab.distributed.cluster import ClusterSpec, discover, parse_tf_config

EXIT_RETRIABLE = 143  # 128 + SIGTERM; equal to trainer.EXIT_RETRIABLE (a test checks it)


def train_distributed(*args, **kwargs):
    """See :func:`tff_lab.distributed.trainer.train_distributed`."""
    from tff_lab.distributed.trainer import train_distributed as _train

    return _train(*args, **kwargs)


__all__ = ["EXIT_RETRIABLE", "ClusterSpec", "discover", "parse_tf_config", "train_distributed"]
