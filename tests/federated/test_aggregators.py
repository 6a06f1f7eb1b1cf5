"""make_aggregator: DP factories run the accounted mechanism, with reproducible noise; compression,
secure and distributed-DP factories build and aggregate correctly (TFF aggregation processes, real)."""

from __future__ import annotations

import numpy as np
import pytest

tff = pytest.importorskip("tensorflow_federated")

from tensorflow_federated.python.aggregators.differential_privacy import extract_dp_event_from_state  # noqa: E402

from tff_lab.config import load_config  # noqa: E402
from tff_lab.errors import ConfigError  # noqa: E402
from tff_lab.federated import runtime  # noqa: E402
from tff_lab.federated.aggregators import default_clipped_count_stddev, make_aggregator  # noqa: E402
from tff_lab.privacy.calibration import spec_for  # noqa: E402

DIM = 2000
VT = tff.types.TensorType(np.float32, [DIM])
DP = ["algorithm.weighting=uniform", "privacy.noise_multiplier=1.0", "training.clients_per_round=4"]


@pytest.fixture(scope="module", autouse=True)
def context():
    # TFF's test context: the local C++ runtime with secure-sum intrinsics compiled to plain sums
    # (the native context refuses them). The loop uses it for secure/ddp_secure aggregation.
    tff.backends.test.set_sync_test_cpp_execution_context()
    yield
    runtime.shutdown()


def run_process(overrides, rounds=2, clients=None, state=None, population=20, value_type=VT):
    cfg = load_config(None, overrides)
    process = make_aggregator(cfg, population=population).create(value_type)
    state = process.initialize() if state is None else state
    outs, states = [], []
    for _ in range(rounds):
        out = process.next(state, clients if clients is not None else [np.zeros(DIM, np.float32)] * 4)
        state = out.state
        outs.append(np.asarray(out.result))
        states.append(state)
    return cfg, outs, states


@pytest.mark.parametrize("mechanism", ["gaussian_fixed", "gaussian_adaptive"])
def test_dp_noise_is_reproducible_per_round_and_resumable(mechanism):
    over = DP + [f"privacy.mechanism={mechanism}"]
    cfg, a, states = run_process(over, rounds=3)
    _, b, _ = run_process(over, rounds=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)  # a seed fixes the noise
    assert not np.array_equal(a[0], a[1])  # fresh noise every round
    _, other, _ = run_process(over + ["seed=1"], rounds=1)
    assert not np.array_equal(a[0], other[0])
    # Resume: the state after round 1 through numpy (as a checkpoint stores it) continues identically.
    import tensorflow as tf

    flat = [np.asarray(v) for v in tf.nest.flatten(states[0])]
    restored = tf.nest.pack_sequence_as(states[0], flat)
    _, resumed, _ = run_process(over, rounds=2, state=restored)
    np.testing.assert_array_equal(resumed[0], a[1])
    np.testing.assert_array_equal(resumed[1], a[2])


@pytest.mark.parametrize("mechanism,clients", [("gaussian_fixed", 4), ("gaussian_adaptive", 10)])
def test_dp_event_that_ran_is_the_event_accounted(mechanism, clients):
    """TFF records in the aggregator state the DpEvent tensorflow_privacy's query emitted; it must
    be the query event the ledger composes (adaptive: value noise and clipped-count noise)."""
    over = [
        "algorithm.weighting=uniform",
        "privacy.noise_multiplier=1.0",
        f"training.clients_per_round={clients}",
        f"privacy.mechanism={mechanism}",
    ]
    for reproducible in ("true", "false"):  # the seeded queries and TFF's stock factories emit the same
        cfg, _, states = run_process(
            over + [f"privacy.reproducible_noise={reproducible}"],
            rounds=1,
            clients=[np.zeros(DIM, np.float32)] * clients,
        )
        ran = extract_dp_event_from_state(states[-1])
        accounted = spec_for(cfg, 20, 1.0).query_event()
        assert type(ran) is type(accounted)
        if mechanism == "gaussian_fixed":
            assert ran.noise_multiplier == pytest.approx(accounted.noise_multiplier, rel=1e-6)
        else:
            got = [e.noise_multiplier for e in ran.events]
            want = [e.noise_multiplier for e in accounted.events]
            assert got == pytest.approx(want, rel=1e-6)
            # TFF's default clipped_count_stddev (0.05 * 10 = 0.5) would raise at noise 1.0; ours is safe.
            assert want[1] == pytest.approx(2 * default_clipped_count_stddev(clients, 1.0))


def test_dp_noise_has_the_accounted_scale():
    """Zero updates: the output is the noise alone, N(0, (z C / m)^2) per coordinate."""
    over = DP + ["privacy.mechanism=gaussian_fixed", "privacy.clip=0.5", "privacy.noise_multiplier=2.0"]
    _, outs, _ = run_process(over, rounds=1)
    expected = 2.0 * 0.5 / 4
    assert np.std(outs[0]) == pytest.approx(expected, rel=0.06)
    assert abs(np.mean(outs[0])) < 4 * expected / np.sqrt(DIM)


def test_clipping_bounds_each_client():
    big = [np.full(DIM, 10.0, np.float32)] * 4
    over = DP + ["privacy.mechanism=gaussian_fixed", "privacy.clip=1.0", "privacy.noise_multiplier=1.0e-6"]
    _, outs, _ = run_process(over, rounds=1, clients=big)
    assert np.linalg.norm(outs[0]) == pytest.approx(1.0, rel=1e-3)  # mean of 4 updates clipped to norm 1


def test_stock_tff_noise_is_not_reproducible():
    """Why privacy.reproducible_noise exists: TFF's own factory draws different noise each time."""
    over = DP + ["privacy.mechanism=gaussian_fixed", "privacy.reproducible_noise=false"]
    _, a, _ = run_process(over, rounds=1)
    _, b, _ = run_process(over, rounds=1)
    assert not np.array_equal(a[0], b[0])


def test_tree_aggregation_is_seeded_by_tff():
    import tensorflow as tf

    specs = [tf.TensorSpec([DIM], tf.float32)]
    cfg = load_config(None, DP + ["privacy.mechanism=tree"])
    outs = []
    for _ in range(2):
        p = make_aggregator(cfg, population=20, record_specs=specs).create(tff.types.StructWithPythonType([VT], list))
        s = p.initialize()
        o = p.next(s, [[np.zeros(DIM, np.float32)]] * 4)
        outs.append(np.asarray(o.result[0]))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_adaptive_with_too_small_clipped_count_noise_is_a_config_error():
    cfg = load_config(None, DP + ["privacy.mechanism=gaussian_adaptive", "privacy.clipped_count_stddev=0.4"])
    with pytest.raises(ConfigError, match="privacy.clipped_count_stddev"):
        make_aggregator(cfg, population=20)


def test_empty_round_still_releases_noise():
    """A Poisson round that samples nobody can still run the DP aggregator: the output is pure noise."""
    over = DP + ["privacy.mechanism=gaussian_fixed"]
    _, outs, _ = run_process(over, rounds=1, clients=[])
    assert np.std(outs[0]) == pytest.approx(1.0 / 4, rel=0.1)


# -- non-DP families ---------------------------------------------------------------------------


def weighted_mean(overrides, values, weights):
    cfg = load_config(None, overrides)
    factory = make_aggregator(cfg, population=20)
    process = factory.create(VT, tff.types.TensorType(np.float32))
    out = process.next(process.initialize(), values, weights)
    return np.asarray(out.result)


@pytest.fixture(scope="module")
def client_values():
    rng = np.random.default_rng(0)
    values = [rng.normal(0, 0.01, DIM).astype(np.float32) for _ in range(5)]  # norms < 1: below TFF's default clip
    weights = [1.0, 2.0, 3.0, 1.0, 5.0]
    truth = np.average(np.stack(values), axis=0, weights=weights)
    return values, weights, truth


@pytest.mark.parametrize("bits,rotation,tol", [(8, "none", 1e-3), (8, "hadamard", 1e-3), (2, "none", 0.02)])
def test_compression_is_close_to_the_mean(client_values, bits, rotation, tol):
    values, weights, truth = client_values
    over = [
        "aggregation.kind=compression",
        f"aggregation.quantization_bits={bits}",
        f"aggregation.rotation={rotation}",
        "aggregation.zeroing=false",
        "aggregation.clipping=false",
    ]
    got = weighted_mean(over, values, weights)
    err = np.abs(got - truth).max()
    assert err < tol
    assert err > 0  # it did quantize (TFF's own compression_aggregator quantizes nothing this small)


def test_quantization_error_shrinks_with_bits(client_values):
    values, weights, truth = client_values
    errs = []
    for bits in (2, 4, 8):
        over = [
            "aggregation.kind=compression",
            f"aggregation.quantization_bits={bits}",
            "aggregation.zeroing=false",
            "aggregation.clipping=false",
            "aggregation.stochastic_rounding=false",
        ]
        errs.append(float(np.sqrt(np.mean((weighted_mean(over, values, weights) - truth) ** 2))))
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("kind", ["secure", "robust"])
def test_secure_and_robust_equal_the_plain_mean_on_small_updates(client_values, kind):
    """TFF's simulation evaluates secure sums as plain sums (after its bounds/clipping)."""
    values, weights, truth = client_values
    got = weighted_mean([f"aggregation.kind={kind}"], values, weights)
    np.testing.assert_allclose(got, truth, atol=2e-3 if kind == "secure" else 1e-5)


def test_ddp_secure_runs_in_tffs_test_runtime():
    """Distributed Skellam under SecAgg, simulated (secure sums evaluated as plain sums)."""
    cfg = load_config(None, DP + ["privacy.mechanism=ddp_secure"])
    process = make_aggregator(cfg, population=20).create(tff.types.TensorType(np.float32, [64]))
    out = process.next(process.initialize(), [np.full(64, 0.01, np.float32)] * 4)
    r = np.asarray(out.result)
    assert np.isfinite(r).all()
    assert 0 < np.abs(r - 0.01).max() < 0.5  # noisy mean of 4 equal updates (noise 1 x initial clip 0.1 / 4)


def test_ddp_secure_rejects_too_few_bits():
    bad = load_config(None, DP + ["privacy.mechanism=ddp_secure", "aggregation.ddp_bits=1"])
    with pytest.raises(ConfigError, match="aggregation.ddp_bits"):
        make_aggregator(bad, population=20)
