"""``tff-lab k8s render`` and ``tff-lab sweep`` (being written)."""


def register(subparsers) -> None:
    pass
