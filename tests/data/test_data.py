import numpy as np
import pytest

from tff_lab.config import load_config
from tff_lab.data import client_stats, load_federated_data
from tff_lab.data import partition as P
from tff_lab.errors import ConfigError, DataError


def _labels(n=1000, k=10, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "quantity_skew"])
def test_partitions_cover_every_example_exactly_once(scheme):
    y = _labels()
    from tff_lab.config import PartitionConfig

    parts = P.partition(y, 20, np.random.default_rng(1), PartitionConfig(scheme=scheme, alpha=0.3))
    allidx = np.concatenate(parts)
    assert len(parts) == 20
    assert np.array_equal(np.sort(allidx), np.arange(len(y)))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    y = _labels(3000)

    def mean_tv(alpha):
        parts = P.dirichlet(y, 20, np.random.default_rng(0), alpha=alpha, min_examples=5)
        g = np.bincount(y, minlength=10) / len(y)
        return np.mean([0.5 * np.abs(np.bincount(y[p], minlength=10) / len(p) - g).sum() for p in parts])

    tv = [mean_tv(a) for a in (100.0, 1.0, 0.1)]
    assert tv[0] < 0.1 < tv[1] < tv[2]


def test_shards_give_each_client_few_classes():
    y = np.repeat(np.arange(10), 100)
    parts = P.shards(y, 20, np.random.default_rng(0), classes_per_client=2)
    assert max(len(np.unique(y[p])) for p in parts) <= 3  # a shard can straddle a class boundary


def test_quantity_skew_sizes_vary_and_respect_minimum():
    parts = P.quantity_skew(_labels(2000), 20, np.random.default_rng(0), sigma=1.5, min_examples=10)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 10 and max(sizes) > 4 * min(sizes)


def test_digits_splits_are_deterministic_and_disjoint():
    cfg = load_config(None)
    a, b = load_federated_data(cfg), load_federated_data(cfg)
    assert a.client_ids == b.client_ids
    for c in a.client_ids:
        assert np.array_equal(a.train[c][0], b.train[c][0])
    assert a.num_classes == 10 and a.input_shape == (64,)
    total = a.num_train_examples() + sum(len(a.eval[c][1]) for c in a.client_ids) + len(a.test[1])
    assert total == 1797
    assert 0.18 < len(a.test[1]) / 1797 < 0.22
    c = load_federated_data(load_config(None, ["seed=1"]))
    assert not np.array_equal(a.test[1], c.test[1])
    assert float(a.train[a.client_ids[0]][0].max()) <= 1.0  # scaled by 1/16


def test_breast_cancer_standardized_with_train_statistics():
    d = load_federated_data(
        load_config(
            None,
            ["data.source=breast_cancer", "data.num_clients=4", "training.clients_per_round=2", "model.name=logreg"],
        )
    )
    x, _ = d.union_train()
    assert d.num_classes == 2 and d.input_shape == (30,)
    assert abs(float(x.mean())) < 0.2
    assert len(d.preprocessing["offset"]) == 30


def test_synthetic_has_a_thousand_heterogeneous_clients():
    cfg = load_config(
        None, ["data.source=synthetic", "data.num_clients=1000", "training.clients_per_round=50", "model.name=logreg"]
    )
    d = load_federated_data(cfg)
    assert d.num_clients == 1000 and d.input_shape == (60,) and d.num_classes == 10
    # Client sizes are lognormal(4, 2) + 50 capped at 500 (FedProx's formula), of which round(20 %) go
    # to the global test set: 40..400 examples each, median ~(e^4 + 50) * 0.8 = 84, and
    # P(lognormal(4, 2) + 50 >= 500) = P(Z > (ln 450 - 4) / 2) = 0.147 of the clients at the cap.
    sizes = np.array([len(d.train[c][1]) + len(d.eval[c][1]) for c in d.client_ids])
    assert sizes.min() == 40 and sizes.max() == 400
    assert 70 <= np.median(sizes) <= 100 and sizes.max() > 4 * np.median(sizes)
    assert 0.11 <= np.mean(sizes == 400) <= 0.19  # +-3.5 binomial standard deviations around 0.147
    stats = client_stats(d)
    assert stats["mean_tv_distance"] > 0.3  # synthetic(1,1) clients have very different label mixes
    iid = load_federated_data(
        load_config(
            None,
            ["data.source=synthetic", "data.num_clients=50", "data.synthetic_iid=true", "training.clients_per_round=5"],
        )
    )
    assert client_stats(iid)["mean_tv_distance"] < stats["mean_tv_distance"]


def _write_clients(tmp_path, n=4, kind="npz", dim=5):
    rng = np.random.default_rng(0)
    for k in range(n):
        x = rng.normal(size=(30, dim)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        if kind == "npz":
            np.savez(tmp_path / f"site_{k}.npz", x=x, y=y)
        else:
            np.savetxt(tmp_path / f"site_{k}.csv", np.column_stack([x, y]), delimiter=",")


@pytest.mark.parametrize("kind", ["npz", "csv"])
def test_user_client_directory(tmp_path, kind):
    _write_clients(tmp_path, kind=kind)
    cfg = load_config(
        None, [f"data.source={kind}_dir", f"data.path={tmp_path}", "training.clients_per_round=2", "model.name=logreg"]
    )
    d = load_federated_data(cfg)
    assert d.client_ids == [f"site_{k}" for k in range(4)]
    assert d.input_shape == (5,) and d.num_classes == 2
    assert len(d.test[1]) > 0


def test_client_file_with_wrong_shape_is_named(tmp_path):
    _write_clients(tmp_path)
    np.savez(tmp_path / "site_9.npz", x=np.zeros((10, 7), np.float32), y=np.zeros(10, np.int64))
    cfg = load_config(None, ["data.source=npz_dir", f"data.path={tmp_path}", "training.clients_per_round=2"])
    with pytest.raises(DataError) as e:
        load_federated_data(cfg)
    assert "site_9.npz" in str(e.value) and "shape" in str(e.value)


def test_client_file_with_wrong_dtype_or_pickle_is_refused(tmp_path):
    _write_clients(tmp_path)
    np.savez(tmp_path / "site_8.npz", x=np.array([["a"]] * 10), y=np.zeros(10, np.int64))
    cfg = load_config(None, ["data.source=npz_dir", f"data.path={tmp_path}", "training.clients_per_round=2"])
    with pytest.raises(DataError) as e:
        load_federated_data(cfg)
    assert "site_8.npz" in str(e.value)
    (tmp_path / "site_8.npz").unlink()
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "obj.npy").rename(tmp_path / "site_7.npz")
    with pytest.raises(DataError) as e:
        load_federated_data(cfg)
    assert "site_7.npz" in str(e.value)


def test_missing_data_directory(tmp_path):
    cfg = load_config(None, ["data.source=npz_dir", f"data.path={tmp_path / 'nope'}", "training.clients_per_round=2"])
    with pytest.raises(DataError) as e:
        load_federated_data(cfg)
    assert "not found" in str(e.value)


def test_clients_per_round_above_a_loaded_population(tmp_path):
    _write_clients(tmp_path, n=3)
    cfg = load_config(None, ["data.source=npz_dir", f"data.path={tmp_path}", "training.clients_per_round=5"])
    with pytest.raises(ConfigError) as e:
        load_federated_data(cfg)
    assert e.value.where == "training.clients_per_round"


@pytest.mark.parametrize(
    "kind, bad, what",
    [
        ("npz", np.nan, "NaN"),
        ("npz", np.inf, "inf"),
        ("csv", -np.inf, "inf"),
        ("csv", np.nan, "NaN"),
        ("npz", 1e300, "inf"),
    ],
    ids=["npz-nan", "npz-inf", "csv-neginf", "csv-nan", "npz-beyond-float32"],
)
def test_client_file_with_non_finite_features_is_named(tmp_path, kind, bad, what):
    _write_clients(tmp_path, kind=kind)
    x = np.ones((12, 5))
    x[7, 2] = bad
    y = np.zeros(12, np.int64)
    if kind == "npz":
        np.savez(tmp_path / "site_2.npz", x=x, y=y)
    else:
        np.savetxt(tmp_path / "site_2.csv", np.column_stack([x, y]), delimiter=",")
    cfg = load_config(None, [f"data.source={kind}_dir", f"data.path={tmp_path}", "training.clients_per_round=2"])
    with pytest.raises(DataError) as e:
        load_federated_data(cfg)
    assert e.value.where.endswith(f"site_2.{kind}") and f"{what} at example 7" in e.value.message


def test_test_file_with_nan_is_named(tmp_path):
    _write_clients(tmp_path)
    x = np.zeros((5, 5), np.float32)
    x[0, 0] = np.nan
    np.savez(tmp_path / "test.npz", x=x, y=np.zeros(5, np.int64))
    cfg = load_config(None, ["data.source=npz_dir", f"data.path={tmp_path}", "training.clients_per_round=2"])
    with pytest.raises(DataError, match="test.npz.*NaN at example 0"):
        load_federated_data(cfg)


def test_check_finite_names_the_client_of_any_federated_data():
    from tff_lab.data.sources import check_finite

    d = load_federated_data(load_config(None, ["data.num_clients=4", "training.clients_per_round=2"]))
    check_finite(d, "data")  # the bundled data is finite
    cid = d.client_ids[2]
    x, y = d.eval[cid]
    x = x.copy()
    x[1, 3] = np.inf
    d.eval[cid] = (x, y)
    with pytest.raises(DataError) as e:
        check_finite(d, "my_data")
    assert e.value.where == "my_data" and f"client '{cid}' (eval split) holds inf at example 1" in e.value.message
    d.eval[cid] = (np.nan_to_num(x), y)
    d.test[0][4, 0] = np.nan
    with pytest.raises(DataError, match="global test set holds NaN at example 4"):
        check_finite(d, "my_data")


def test_load_federated_data_checks_whatever_a_loader_returns(monkeypatch):
    from tff_lab.data import sources

    real = sources.BUILTIN_LOADERS["digits"]

    def poisoned(cfg, rng):
        d = real(cfg, rng)
        d.train[d.client_ids[0]][0][0, 0] = np.nan
        return d

    from tff_lab.data import registry

    monkeypatch.setattr(registry, "source_part", lambda cfg: (poisoned, {}))
    with pytest.raises(DataError) as e:
        load_federated_data(load_config(None, ["data.num_clients=4", "training.clients_per_round=2"]))
    assert e.value.where == "data.source 'digits'" and "client 'client_0' (train split) holds NaN" in e.value.message


def test_labels_beyond_int32_are_refused(tmp_path):
    _write_clients(tmp_path)
    np.savez(tmp_path / "site_5.npz", x=np.zeros((3, 5), np.float32), y=np.array([0, 1, 2**40]))
    cfg = load_config(None, ["data.source=npz_dir", f"data.path={tmp_path}", "training.clients_per_round=2"])
    with pytest.raises(DataError, match="site_5.npz.*labels"):
        load_federated_data(cfg)
