"""Data sources -> :class:`FederatedData` (per-client train/eval splits plus a global test set).

Everything here is offline: digits and breast cancer ship with scikit-learn, FedProx's
synthetic(alpha, beta) data is generated from its formula, user data comes from a
directory of per-client ``.npz``/``.csv`` files. TFF's EMNIST loader is kept for
users with network access.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np

from tff_lab.config.schema import ExperimentConfig
from tff_lab.data import partition as partition_lib
from tff_lab.errors import DataError
from tff_lab.inputs import check_example_shape, check_labels, regular_file

NATURAL_SOURCES = ("synthetic", "npz_dir", "csv_dir", "emnist", "shakespeare")


@dataclasses.dataclass
class FederatedData:
    """Client datasets as numpy arrays; ``x`` float32, ``y`` int32 class ids."""

    client_ids: list[str]
    train: dict[str, tuple[np.ndarray, np.ndarray]]
    eval: dict[str, tuple[np.ndarray, np.ndarray]]
    test: tuple[np.ndarray, np.ndarray]
    num_classes: int
    labels: list[str]
    # Preprocessing already applied to the arrays, recorded for export:
    # model_input = (raw - offset) * scale.
    preprocessing: dict
    # "separate": the global test set is not client data; "clients": it was held out from the
    # clients' own examples (privacy.json says so: evaluating on it touches client data).
    test_source: str = "separate"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test[0].shape[1:])

    @property
    def num_clients(self) -> int:
        return len(self.client_ids)

    def union_train(self) -> tuple[np.ndarray, np.ndarray]:
        xs = [self.train[c][0] for c in self.client_ids]
        ys = [self.train[c][1] for c in self.client_ids]
        return np.concatenate(xs), np.concatenate(ys)

    def num_train_examples(self) -> int:
        return int(sum(len(self.train[c][1]) for c in self.client_ids))


def _split_client(x: np.ndarray, y: np.ndarray, frac: float, rng: np.random.Generator):
    n = len(y)
    n_eval = int(round(n * frac))
    n_eval = min(n_eval, n - 1) if n > 1 else 0
    perm = rng.permutation(n)
    ev, tr = perm[:n_eval], perm[n_eval:]
    return (x[tr], y[tr]), (x[ev], y[ev])


def _stratified_test_split(y: np.ndarray, frac: float, rng: np.random.Generator):
    test_idx = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.append(idx[: int(round(len(idx) * frac))])
    test = np.sort(np.concatenate(test_idx))
    mask = np.ones(len(y), bool)
    mask[test] = False
    return np.flatnonzero(mask), test


def _from_pooled(x, y, cfg: ExperimentConfig, rng, labels, preprocessing, *, standardize: bool) -> FederatedData:
    pool_idx, test_idx = _stratified_test_split(y, cfg.data.test_fraction, rng)
    x = x.astype(np.float32)
    if standardize:
        # Statistics of the training pool only: the test set must not leak into them.
        mean = x[pool_idx].mean(axis=0)
        std = x[pool_idx].std(axis=0) + 1e-7
        x = (x - mean) / std
        preprocessing = {"offset": mean.astype(float).tolist(), "scale": (1.0 / std).astype(float).tolist()}
    pool_x, pool_y = x[pool_idx], y[pool_idx]
    scheme = cfg.partition.scheme
    pcfg = dataclasses.replace(cfg.partition, scheme="dirichlet") if scheme == "auto" else cfg.partition
    parts = partition_lib.partition(pool_y, cfg.data.num_clients, rng, pcfg)
    return _assemble(
        [(pool_x[p], pool_y[p]) for p in parts], (x[test_idx], y[test_idx]), cfg, rng, labels, preprocessing
    )


def _assemble(client_arrays, test, cfg, rng, labels, preprocessing, ids: Optional[list[str]] = None):
    width = len(str(len(client_arrays) - 1))
    ids = ids or [f"client_{k:0{width}d}" for k in range(len(client_arrays))]
    train, ev = {}, {}
    for cid, (cx, cy) in zip(ids, client_arrays):
        train[cid], ev[cid] = _split_client(
            cx.astype(np.float32), cy.astype(np.int32), cfg.data.client_eval_fraction, rng
        )
    num_classes = len(labels)
    return FederatedData(
        client_ids=list(ids),
        train=train,
        eval=ev,
        test=(test[0].astype(np.float32), test[1].astype(np.int32)),
        num_classes=num_classes,
        labels=list(labels),
        preprocessing=preprocessing,
    )


def load_digits(cfg: ExperimentConfig, rng) -> FederatedData:
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = d.data.astype(np.float32) / 16.0  # pixel intensities 0..16 -> 0..1
    return _from_pooled(
        x,
        d.target.astype(np.int32),
        cfg,
        rng,
        [str(i) for i in range(10)],
        {"offset": 0.0, "scale": 1.0 / 16.0},
        standardize=False,
    )


def load_breast_cancer(cfg: ExperimentConfig, rng) -> FederatedData:
    from sklearn.datasets import load_breast_cancer as _load

    d = _load()
    return _from_pooled(d.data, d.target.astype(np.int32), cfg, rng, list(d.target_names), {}, standardize=True)


def generate_synthetic(cfg: ExperimentConfig, rng) -> FederatedData:
    """FedProx synthetic(alpha, beta) (Li et al. 2020, Sec. 5.1), one client per draw.

    For client k: u_k ~ N(0, alpha), B_k ~ N(0, beta); W_k, b_k ~ N(u_k, 1);
    v_k ~ N(B_k, 1) per coordinate; x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2;
    y = argmax(softmax(W_k x + b_k)). Client sizes follow the paper's
    lognormal(4, 2) + 50, capped at ``data.synthetic_max_examples``.
    ``synthetic_iid`` draws W, b, v once for all clients (the paper's IID variant).
    """
    d = cfg.data
    dim, k_cls = d.synthetic_dim, d.synthetic_classes
    sigma = np.power(np.arange(1, dim + 1, dtype=np.float64), -1.2)
    sizes = np.minimum(rng.lognormal(4, 2, d.num_clients).astype(int) + 50, d.synthetic_max_examples)
    shared = None
    if d.synthetic_iid:
        shared = (rng.normal(0, 1, (dim, k_cls)), rng.normal(0, 1, k_cls), np.zeros(dim))
    clients, tests = [], []
    for k in range(d.num_clients):
        if shared is None:
            u = rng.normal(0, np.sqrt(d.synthetic_alpha))
            big_b = rng.normal(0, np.sqrt(d.synthetic_beta))
            w = rng.normal(u, 1, (dim, k_cls))
            b = rng.normal(u, 1, k_cls)
            v = rng.normal(big_b, 1, dim)
        else:
            w, b, v = shared
        x = rng.normal(v, np.sqrt(sigma), (sizes[k], dim))
        y = np.argmax(x @ w + b, axis=1)
        x = x.astype(np.float32)  # halves peak memory at 10,000 clients; labels come from float64
        n_test = max(1, int(round(sizes[k] * d.test_fraction)))
        tests.append((x[:n_test], y[:n_test]))
        clients.append((x[n_test:].astype(np.float32), y[n_test:].astype(np.int32)))
    test = (np.concatenate([t[0] for t in tests]), np.concatenate([t[1] for t in tests]))
    data = _natural_or_repartition(clients, test, cfg, rng, [str(i) for i in range(k_cls)], {})
    data.test_source = "clients"  # each client's first draws are held out for the global test set
    return data


def _natural_or_repartition(clients, test, cfg, rng, labels, preprocessing, ids=None) -> FederatedData:
    if cfg.partition.scheme in ("auto", "natural"):
        return _assemble(clients, test, cfg, rng, labels, preprocessing, ids)
    x = np.concatenate([c[0] for c in clients])
    y = np.concatenate([c[1] for c in clients])
    parts = partition_lib.partition(y, cfg.data.num_clients, rng, cfg.partition)
    return _assemble([(x[p], y[p]) for p in parts], test, cfg, rng, labels, preprocessing)


MAX_CSV_BYTES = 1 << 30  # a client CSV is parsed whole (float64): larger files belong in .npz


def _npy_header(zf, member: str, path: Path, key: str):
    """(shape, dtype) of one .npy inside an .npz, read from its header alone (nothing allocated)."""
    fmt = np.lib.format
    try:
        with zf.open(member) as fp:
            version = fmt.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(fp)
            else:
                shape, _, dtype = fmt._read_array_header(fp, version)
    except Exception as e:  # a corrupt zip member or .npy header
        raise DataError(str(path), f"array {key!r} is not a readable .npy ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise DataError(str(path), f"array {key!r} holds Python objects (pickled); only numeric arrays are read")
    return tuple(shape), dtype


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """x and y of a client .npz: a zip of .npy files whose headers (shape, dtype) are checked before
    any array is read; never unpickled (allow_pickle=False)."""
    import zipfile

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DataError(str(path), f"not a readable .npz (a zip of .npy arrays): {type(e).__name__}: {e}") from None
    with zf:
        members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
        if "x" not in members or "y" not in members:
            found = sorted(members)
            shown = ", ".join(repr(k) for k in found[:10]) + (", ..." if len(found) > 10 else "")
            raise DataError(str(path), f"expected arrays 'x' and 'y', found [{shown}]")
        (xs, xd), (ys, yd) = _npy_header(zf, members["x"], path, "x"), _npy_header(zf, members["y"], path, "y")
        _check_xy_header(path, xs, xd, ys, yd)
        try:
            with zf.open(members["x"]) as fp:
                x = np.lib.format.read_array(fp, allow_pickle=False)
            with zf.open(members["y"]) as fp:
                y = np.lib.format.read_array(fp, allow_pickle=False)
        except Exception as e:  # truncated or corrupt data after a valid header
            raise DataError(str(path), f"not a readable .npz of numeric arrays ({type(e).__name__}: {e})") from None
    if x.shape != xs or y.shape != ys:
        raise DataError(str(path), "arrays do not match their headers (a corrupt file)")
    return x, y


def _check_xy_header(path: Path, xs, xd, ys, yd) -> None:
    if xd.kind not in "fiu" or yd.kind not in "fiu":
        raise DataError(str(path), f"expected numeric x and integer y, got x {xd}, y {yd}")
    if len(ys) != 1 or len(xs) < 1 or xs[0] != ys[0]:
        raise DataError(str(path), f"expected x of shape (n, ...) and y of shape (n,), got x {xs}, y {ys}")
    check_example_shape(xs, str(path), itemsize=max(xd.itemsize, 4))


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import warnings

    regular_file(path, str(path), MAX_CSV_BYTES)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": refused below, in one line
            arr = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, comments="#")
    except (ValueError, IndexError) as e:
        raise DataError(
            str(path), f"expected numeric CSV rows 'feature,...,label' ({' '.join(str(e).split())[:200]})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(str(path), f"cannot read the CSV ({type(e).__name__}: {e})") from None
    if arr.shape[0] == 0:
        raise DataError(str(path), "holds no examples")
    if arr.shape[1] < 2:
        raise DataError(str(path), "expected at least one feature column and a label column")
    return arr[:, :-1], arr[:, -1]


def _read_client_file(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One client's (x float32, y int32), every check made where the file enters: a regular file
    of bounded size (no directory, FIFO or device), shapes and dtypes from the headers before
    anything is read, labels integer ids in range before anything is sized by one, features finite."""
    regular_file(path, str(path))
    x, y = _read_npz(path) if kind == "npz" else _read_csv(path)
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "fiu":
        raise DataError(str(path), f"expected numeric x and integer y, got x {x.dtype}, y {y.dtype}")
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(str(path), f"expected x of shape (n, ...) and y of shape (n,), got x {x.shape}, y {y.shape}")
    check_example_shape(x.shape, str(path))
    check_labels(y, str(path))
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
        x = x.astype(np.float32)
    bad = _first_non_finite(x)
    if bad is not None:
        raise DataError(str(path), f"x holds {bad}; features must be finite numbers (float32)")
    return x, y.astype(np.int32)


def _first_non_finite(x: np.ndarray) -> Optional[str]:
    """None when every value is finite, else e.g. 'NaN at example 3' (the first bad example)."""
    if x.dtype.kind != "f":
        return None
    ok = np.isfinite(x).reshape(len(x), -1).all(axis=1) if x.ndim and x.size else np.isfinite(x)
    if np.all(ok):
        return None
    i = int(np.flatnonzero(~ok)[0])
    row = x[i]
    what = "NaN" if np.isnan(row).any() else "inf"
    return f"{what} at example {i}"


def check_finite(data: FederatedData, where: str) -> None:
    """Refuses client data whose features are NaN or inf (after the cast to float32, so values beyond
    float32's range count as inf): a model trained on them "succeeds" with NaN weights. Names the
    client (or the global test set); ``where`` names the data's origin (a config field or a part)."""
    for split_name, split in (("train", data.train), ("eval", data.eval)):
        for cid in data.client_ids:
            if cid not in split:
                continue
            bad = _first_non_finite(np.asarray(split[cid][0]))
            if bad is not None:
                raise DataError(where, f"client {cid!r} ({split_name} split) holds {bad}; features must be finite")
    bad = _first_non_finite(np.asarray(data.test[0]))
    if bad is not None:
        raise DataError(where, f"the global test set holds {bad}; features must be finite")


def hold_out_test(clients, fraction: float, rng):
    """Holds ``fraction`` of every client's examples out for the global test set (seeded);
    returns (the clients' remaining examples, the test set)."""
    held, kept = [], []
    for x, y in clients:
        n_test = int(round(len(y) * fraction))
        perm = rng.permutation(len(y))
        held.append((x[perm[:n_test]], y[perm[:n_test]]))
        kept.append((x[perm[n_test:]], y[perm[n_test:]]))
    return kept, (np.concatenate([h[0] for h in held]), np.concatenate([h[1] for h in held]))


def load_client_dir(cfg: ExperimentConfig, rng) -> FederatedData:
    """One file per client (``<client_id>.npz`` with arrays x, y; or ``<client_id>.csv`` rows of
    features then label). An optional ``test.npz``/``test.csv`` is the global test set; without
    it, ``data.test_fraction`` of each client's examples is held out for it."""
    kind = "npz" if cfg.data.source == "npz_dir" else "csv"
    root = Path(os.path.expanduser(cfg.data.path))
    if not root.is_dir():
        raise DataError(str(root), f"data directory not found (data.path, source {cfg.data.source})")
    files = sorted(p for p in root.glob(f"*.{kind}") if p.stem != "test")
    if not files:
        raise DataError(str(root), f"no client files '*.{kind}' found")
    clients, ids = [], []
    shape = None
    for f in files:
        x, y = _read_client_file(f, kind)
        if shape is None:
            shape = x.shape[1:]
        elif x.shape[1:] != shape:
            raise DataError(str(f), f"expected examples of shape {shape} like {files[0].name}, got {x.shape[1:]}")
        clients.append((x, y))
        ids.append(f.stem)
    test_file = root / f"test.{kind}"
    if test_file.exists():
        test = _read_client_file(test_file, kind)
        if test[0].shape[1:] != shape:
            raise DataError(str(test_file), f"expected examples of shape {shape}, got {test[0].shape[1:]}")
    else:
        clients, test = hold_out_test(clients, cfg.data.test_fraction, rng)
    num_classes = int(max(max(int(c[1].max()) for c in clients), int(test[1].max()))) + 1
    data = _natural_or_repartition(clients, test, cfg, rng, [str(i) for i in range(num_classes)], {}, ids)
    data.test_source = "separate" if test_file.exists() else "clients"
    return data


def load_emnist(cfg: ExperimentConfig, rng, **kwargs) -> FederatedData:
    """TFF's federated EMNIST from ``data.cache_dir`` (never downloads): see :mod:`tff_lab.tasks.emnist`."""
    from tff_lab.tasks.emnist import load_emnist as _load

    return _load(cfg, rng, **kwargs)


BUILTIN_LOADERS = {
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
    "synthetic": generate_synthetic,
    "npz_dir": load_client_dir,
    "csv_dir": load_client_dir,
    "emnist": load_emnist,
}


def load_federated_data(cfg: ExperimentConfig) -> FederatedData:
    """Builds the experiment's client data; deterministic in ``cfg.seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xDA7A]))
    from tff_lab.data.registry import load_source

    data = load_source(cfg, rng)
    check_finite(data, f"data.source {cfg.data.source!r}")
    if cfg.training.sampling == "uniform" and cfg.training.clients_per_round > data.num_clients:
        from tff_lab.errors import ConfigError

        raise ConfigError(
            "training.clients_per_round",
            f"expected at most the population ({data.num_clients} clients), got {cfg.training.clients_per_round}",
        )
    return data
