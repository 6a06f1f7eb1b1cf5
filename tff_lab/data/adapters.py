"""A user's federated data -> :class:`FederatedData`.

Accepted (see :func:`federated_data`):

- a TFF ``tff.simulation.datasets.ClientData`` (every TFF dataset and any user ClientData);
- a mapping client id -> ``(x, y)`` arrays, or -> ``{"x": ..., "y": ...}``;
- a mapping client id -> ``tf.data.Dataset`` of single examples.

Examples are materialised as numpy arrays once, at load time: the loop then shuffles and
batches them from the seed (so sampling, shuffles and a resumed run are exact), and the
privacy ledger can check what each round processed. Dataset elements are ``(x, y)`` tuples
or dicts; for dicts the keys are ``x_key``/``y_key`` (defaults: ``x``/``y``, or TFF's
``pixels``/``label`` and ``snippets`` conventions when present). ``preprocess`` is applied to
each client's ``tf.data.Dataset`` (as TFF's ``ClientData.preprocess`` does) and to a test set
given as a dataset or ``ClientData``; test arrays ``(x, y)`` are taken as model inputs as they are.

TFF-tutorial pipelines are read as the tutorials intend (:func:`checked_client_dataset`): a
batched dataset (``ds.batch(10)``, with or without ``drop_remainder``) is unbatched into examples
(tff_lab batches, shuffles and runs ``training.local_epochs`` itself, from the seed); a repeated
or infinite dataset (``ds.repeat(3)``, ``ds.repeat()``, or whose examples come back as exact
copies of the first pass) is refused in one line naming the client: its duplicates would count
several times and leak into the evaluation split.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping, Optional

import numpy as np

from tff_lab.errors import PartTypeError, PartValueError

_X_KEYS = ("x", "pixels", "image", "features", "inputs")
_Y_KEYS = ("y", "label", "labels", "target", "targets")


def _keys(element, x_key, y_key, where):
    if isinstance(element, Mapping):
        keys = list(element)
        xk = x_key or next((k for k in _X_KEYS if k in element), None)
        yk = y_key or next((k for k in _Y_KEYS if k in element), None)
        if xk not in element or yk not in element:
            raise PartValueError(
                where,
                f"dataset elements are dicts with keys {keys}; pass x_key= and y_key= "
                "to name the features and the label",
            )
        return xk, yk
    if isinstance(element, (tuple, list)) and len(element) == 2:
        return 0, 1
    raise PartTypeError(where, f"dataset elements must be (x, y) tuples or dicts, got {type(element).__name__}")


_BATCH_OPS = frozenset(
    {
        "BatchDataset",
        "BatchDatasetV2",
        "PaddedBatchDataset",
        "PaddedBatchDatasetV2",
        "ParallelBatchDataset",
        "RebatchDataset",
        "RebatchDatasetV2",
    }
)
_UNBATCH_OPS = frozenset({"UnbatchDataset", "ExperimentalUnbatchDataset"})
_REPEAT_OPS = frozenset({"RepeatDataset"})


def dataset_structure(ds) -> Optional[dict]:
    """What a ``tf.data`` pipeline does, read from its graph (``DatasetToGraphV2``): whether its
    elements are batches (a batch op not undone by a later ``unbatch``) and the counts of every
    ``repeat`` in it (-1: infinite). None when the graph cannot be serialised (e.g. external state)."""
    import tensorflow as tf

    try:
        blob = tf.raw_ops.DatasetToGraphV2(input_dataset=ds._variant_tensor, external_state_policy=1).numpy()
        graph = tf.compat.v1.GraphDef()
        graph.ParseFromString(blob)
    except Exception:  # noqa: BLE001 - a pipeline TF cannot serialise: judged by its elements only
        return None
    nodes = {n.name: n for n in graph.node}
    repeats = []
    for n in graph.node:
        if n.op in _REPEAT_OPS:
            count = None
            if len(n.input) > 1 and n.input[1].split(":")[0] in nodes:
                c = nodes[n.input[1].split(":")[0]]
                if c.op == "Const":
                    count = int(tf.make_ndarray(c.attr["value"].tensor))
            repeats.append(count)
    out = next((n for n in graph.node if n.op == "_Retval"), None)
    batched = False
    node = nodes.get(out.input[0].split(":")[0]) if out is not None and out.input else None
    for _ in range(len(nodes)):
        if node is None:
            break
        if node.op in _UNBATCH_OPS:
            break
        if node.op in _BATCH_OPS:
            batched = True
            break
        node = nodes.get(node.input[0].split(":")[0].lstrip("^")) if node.input else None
    return {"batched": batched, "repeats": repeats}


def checked_client_dataset(ds, where: str):
    """A client's ``tf.data.Dataset`` as examples: refused (one line naming ``where``) when
    infinite or repeated, unbatched when its elements are batches. Returns (dataset, unbatched)."""
    import tensorflow as tf

    card = int(ds.cardinality())
    if card == tf.data.INFINITE_CARDINALITY:
        raise PartValueError(
            where,
            "the dataset is infinite (ds.repeat() without a count, or a generator that never "
            "ends); give each client's examples once: tff_lab runs training.local_epochs passes itself",
        )
    info = dataset_structure(ds)
    if info is not None and info["repeats"]:
        counts = ", ".join("" if c is None else str(c) for c in info["repeats"])
        if any(c is not None and c < 0 for c in info["repeats"]):
            raise PartValueError(
                where,
                "the dataset is infinite (ds.repeat()); give each client's examples once: "
                "tff_lab runs training.local_epochs passes itself",
            )
        if any(c is None or c != 1 for c in info["repeats"]):
            raise PartValueError(
                where,
                f"the dataset is repeated (ds.repeat({counts})): each example would count "
                "several times and its copies would leak into the evaluation split; remove .repeat() "
                "(for several local passes set training.local_epochs)",
            )
    if info is not None and info["batched"]:
        return ds.unbatch(), True
    return ds, False


def _repeated_pass(x: np.ndarray, y: np.ndarray) -> Optional[int]:
    """k when the examples are k exact copies of their first pass (a repeat TF's graph did not show)."""
    n = len(y)
    if n < 4:
        return None
    xb = np.ascontiguousarray(x).reshape(n, -1).view(np.uint8) if x.size else None
    for k in range(2, 9):
        if n % k or n // k < 2:
            continue
        m = n // k
        if xb is not None and all(
            np.array_equal(xb[:m], xb[i * m : (i + 1) * m]) and np.array_equal(y[:m], y[i * m : (i + 1) * m])
            for i in range(1, k)
        ):
            return k
    return None


def _dataset_arrays(ds, x_key, y_key, where) -> tuple[np.ndarray, np.ndarray]:
    ds, unbatched = checked_client_dataset(ds, where)
    xs, ys = [], []
    keys = None
    try:
        for el in ds.as_numpy_iterator():
            if keys is None:
                keys = _keys(el, x_key, y_key, where)
            xs.append(np.asarray(el[keys[0]]))
            ys.append(np.asarray(el[keys[1]]))
    except (PartTypeError, PartValueError):
        raise
    except Exception as e:  # noqa: BLE001 - the user's pipeline (or preprocess) failed inside TensorFlow
        raise PartValueError(where, f"reading its dataset failed: {type(e).__name__}: {_error_line(e)}") from None
    if xs:
        k = _repeated_pass(
            np.stack(xs) if len({a.shape for a in xs}) == 1 else np.zeros((0,)),
            np.stack(ys) if len({a.shape for a in ys}) == 1 else np.zeros((0,)),
        )
        if k:
            raise PartValueError(
                where,
                f"the dataset holds its examples {k} times over (exact copies of the first "
                "pass, as ds.repeat() gives): copies would count several times and leak into the "
                "evaluation split; give each example once (training.local_epochs sets the passes)",
            )
    if unbatched and ys and ys[0].shape == (1,):
        ys = [a.reshape(()) for a in ys]  # TFF tutorials' y of shape (batch, 1): one label per example
    if not xs:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int32)
    try:
        return np.stack(xs), np.stack(ys)
    except ValueError as e:
        raise PartValueError(
            where, f"examples of different shapes ({e}); preprocess them to one shape (and return unbatched examples)"
        ) from None


def _as_arrays(value, x_key, y_key, preprocess, where):
    import tensorflow as tf

    if isinstance(value, tf.data.Dataset):
        ds = _preprocessed(preprocess, value, where) if preprocess is not None else value
        return _dataset_arrays(ds, x_key, y_key, where)
    if isinstance(value, Mapping):
        xk = x_key or next((k for k in _X_KEYS if k in value), None)
        yk = y_key or next((k for k in _Y_KEYS if k in value), None)
        if xk is None or yk is None:
            raise PartValueError(where, f"expected keys 'x' and 'y' (or x_key=/y_key=), got {list(value)}")
        x, y = value[xk], value[yk]
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        x, y = value
    else:
        raise PartTypeError(
            where, f"expected (x, y) arrays, a dict of arrays or a tf.data.Dataset, got {type(value).__name__}"
        )
    x, y = np.asarray(x), np.asarray(y)
    if preprocess is not None:
        return _dataset_arrays(
            _preprocessed(preprocess, tf.data.Dataset.from_tensor_slices((x, y)), where), 0, 1, where
        )
    return x, y


def _error_line(e: BaseException) -> str:
    """One line of an exception: TensorFlow's autograph errors put the cause last ("in user code: ...")."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if not lines:
        return ""
    return (lines[-1] if lines[0].startswith("in user code") else lines[0])[:200]


def _preprocessed(preprocess, ds, where):
    """``preprocess(ds)``; a failure is one line naming ``where``."""
    import tensorflow as tf

    try:
        out = preprocess(ds)
    except Exception as e:  # noqa: BLE001 - the user's preprocess raised (often a raw TensorFlow error)
        raise PartValueError(where, f"preprocess failed: {type(e).__name__}: {_error_line(e)}") from None
    if not isinstance(out, tf.data.Dataset):
        raise PartTypeError(where, f"preprocess returned {type(out).__name__}, expected a tf.data.Dataset")
    return out


def _test_preprocess(test, preprocess):
    """Preprocess applies to a test set given as a dataset or ClientData (as to the clients'), not
    to test arrays: those are taken as model inputs as they are."""
    import tensorflow as tf

    is_data = isinstance(test, tf.data.Dataset) or hasattr(test, "create_tf_dataset_for_client")
    return preprocess if is_data else None


def _normalise(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise PartValueError(
            where, f"expected x of shape (n, ...) and y of shape (n, ...), got x {x.shape}, y {y.shape}"
        )
    if x.dtype.kind not in "fiub":
        raise PartTypeError(where, f"features must be numeric, got dtype {x.dtype}")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and len(y) and not np.all(np.mod(y, 1) == 0)):
        raise PartTypeError(where, f"labels must be integer class ids, got dtype {y.dtype}")
    _check_entering(x, y, where)
    x = x.astype(np.int32) if x.dtype.kind in "iu" else x.astype(np.float32)
    return x, y.astype(np.int32)


def _check_entering(x: np.ndarray, y: np.ndarray, where: str) -> None:
    """Bounds of arrays entering from Python, from their shape before anything else is built: zero
    features, too many dimensions or values per example; labels finite integer ids >= 0 and below
    tff_lab.inputs.MAX_CLASSES (the output layer and label names are sized by the largest one)."""
    from tff_lab.inputs import check_example_shape, check_labels

    if x.ndim >= 2:
        check_example_shape(x.shape, where, allow_empty=True, error=PartValueError)
    check_labels(y, where, name="labels", error=PartValueError)


def federated_data(
    obj: Any,
    *,
    cfg=None,
    rng: Optional[np.random.Generator] = None,
    test: Any = None,
    preprocess: Optional[Callable] = None,
    x_key: Optional[str] = None,
    y_key: Optional[str] = None,
    num_classes: Optional[int] = None,
    labels: Optional[list] = None,
    where: str = "data",
):
    """Builds a :class:`~tff_lab.data.FederatedData` from a user's client data.

    Args:
      obj: a TFF ``ClientData``, a mapping client id -> arrays/dict/``tf.data.Dataset``, or a
        ``FederatedData`` (returned as is, with ``test`` replacing its test set if given).
      cfg: the experiment config (``data.client_eval_fraction``, ``data.test_fraction``, ``seed``,
        ``partition``); defaults when None.
      rng: the generator for splits; default from ``cfg.seed``.
      test: the global test set: ``(x, y)``, a ``tf.data.Dataset`` or a ``ClientData`` (all its
        clients). Without it ``data.test_fraction`` of every client's examples is held out for it
        (then the test set is client data, which ``privacy.json`` says).
      preprocess: ``fn(tf.data.Dataset) -> tf.data.Dataset`` applied to every client's data.
      x_key, y_key: the feature and label keys of dict elements.
      num_classes: the number of classes (default: max label + 1).
      labels: class names (default: "0".."K-1").

    Raises:
      TypeError / ValueError (also ConfigError, so the CLI prints one line and exits 2) naming
      ``where`` and what was expected.
    """
    from tff_lab.config import ExperimentConfig
    from tff_lab.data.sources import FederatedData, _natural_or_repartition, hold_out_test

    cfg = cfg or ExperimentConfig()
    if rng is None:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xDA7A]))
    if isinstance(obj, FederatedData):
        if test is not None:
            obj.test = _normalise(
                *_as_arrays(test, x_key, y_key, _test_preprocess(test, preprocess), f"{where} test"), f"{where} test"
            )
            obj.test_source = "separate"
        return obj

    if hasattr(obj, "client_ids") and hasattr(obj, "create_tf_dataset_for_client"):
        ids = [str(c) for c in obj.client_ids]
        get = obj.create_tf_dataset_for_client
    elif isinstance(obj, Mapping):
        ids = [str(c) for c in obj]
        keys = {str(k): k for k in obj}

        def get(cid):
            return obj[keys[cid]]
    else:
        raise PartTypeError(
            where,
            f"expected a tff.simulation.datasets.ClientData or a mapping client id -> data, got {type(obj).__name__}",
        )
    if not ids:
        raise PartValueError(where, "holds no clients")
    if cfg.data.max_clients is not None:
        ids = ids[: cfg.data.max_clients]
    clients = []
    for cid in ids:
        x, y = _normalise(
            *_as_arrays(get(cid), x_key, y_key, preprocess, f"{where} client {cid!r}"), f"{where} client {cid!r}"
        )
        clients.append((x, y))
    if all(len(c[1]) == 0 for c in clients):
        raise PartValueError(where, "every client is empty")
    shape = clients[0][0].shape[1:]
    for cid, (x, _) in zip(ids, clients):
        if x.shape[1:] != shape and len(x):
            raise PartValueError(
                f"{where} client {cid!r}",
                f"examples of shape {x.shape[1:]}, but client "
                f"{ids[0]!r} has {shape}: every client must have the same example shape",
            )
    test_source = "separate"
    if test is not None:
        if hasattr(test, "client_ids") and hasattr(test, "create_tf_dataset_for_client"):
            parts = [
                _as_arrays(test.create_tf_dataset_for_client(c), x_key, y_key, preprocess, f"{where} test")
                for c in test.client_ids
            ]
            parts = [p for p in parts if len(p[1])]
            if not parts:
                raise PartValueError(f"{where} test", "the test ClientData holds no examples")
            tx, ty = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        else:
            tx, ty = _as_arrays(test, x_key, y_key, _test_preprocess(test, preprocess), f"{where} test")
        test_arr = _normalise(tx, ty, f"{where} test")
        if test_arr[0].shape[1:] != shape:
            note = (
                " (test arrays are taken as model inputs: preprocess applies to datasets only)"
                if preprocess is not None and _test_preprocess(test, preprocess) is None
                else ""
            )
            raise PartValueError(
                f"{where} test", f"examples of shape {test_arr[0].shape[1:]}, clients have {shape}{note}"
            )
    else:
        clients, test_arr = hold_out_test(clients, cfg.data.test_fraction, rng)
        test_source = "clients"
    max_label = max(
        [int(c[1].max()) for c in clients if len(c[1])] + ([int(test_arr[1].max())] if len(test_arr[1]) else [])
    )
    if num_classes is not None:
        from tff_lab.inputs import MAX_CLASSES, check_int

        check_int(num_classes, f"{where} num_classes", 1, MAX_CLASSES, error=PartValueError)
    k = int(num_classes) if num_classes is not None else max_label + 1
    if max_label >= k:
        raise PartValueError(where, f"label {max_label} does not fit num_classes={k}")
    names = list(labels) if labels is not None else [str(i) for i in range(k)]
    data = _natural_or_repartition(clients, test_arr, cfg, rng, names, {}, ids)
    data.test_source = test_source
    return data


def content_hash(data) -> str:
    """sha256 over every client's arrays and the test set: the identity of a run's data."""
    h = hashlib.sha256()
    for cid in data.client_ids:
        for arr in (*data.train[cid], *data.eval[cid]):
            h.update(cid.encode())
            h.update(str(arr.shape).encode() + str(arr.dtype).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    for arr in data.test:
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]
