"""The tasks' sources read tiny files in TFF's own formats through TFF's own loaders."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tff_lab.config import load_config
from tff_lab.data import load_federated_data
from tff_lab.errors import ConfigError, DataError
from tff_lab.tasks import task_config, task_overrides
from tff_lab.tasks import vocab as V

fx = sys.modules["tff_lab_tests_text_run_fixture"]  # loaded by tests/tasks/conftest.py


def test_emnist62_natural_writers_and_tff_test_split(tff_cache):
    cfg = task_config("emnist62_cnn", **{"data.cache_dir": str(tff_cache), "training.clients_per_round": 2})
    data = load_federated_data(cfg)
    assert data.num_classes == 62 and data.labels[:3] == ["0", "1", "2"] and data.labels[10] == "A"
    assert data.labels[36] == "a" and data.input_shape == (28, 28)
    assert data.client_ids == [f"f{w:04d}_{w % 3:02d}" for w in range(5)]
    assert len(data.test[1]) == 10 and data.test_source == "clients"  # TFF's per-writer test split
    assert data.num_train_examples() + sum(len(data.eval[c][1]) for c in data.client_ids) == 30
    # the pixels are the file's own, read back by TFF
    import tensorflow_federated as tff

    train, _ = tff.simulation.datasets.emnist.load_data(only_digits=False, cache_dir=str(tff_cache))
    cid = data.client_ids[1]
    ref = sorted(e["pixels"].sum() for e in train.create_tf_dataset_for_client(cid).as_numpy_iterator())
    got = sorted(np.concatenate([data.train[cid][0], data.eval[cid][0]]).sum(axis=(1, 2)))
    assert np.allclose(ref, got)


def test_emnist_digits_only_and_max_clients(tff_cache):
    cfg = task_config(
        "emnist62_cnn",
        task_kwargs={"only_digits": True},
        **{"data.cache_dir": str(tff_cache), "data.max_clients": 3, "training.clients_per_round": 2},
    )
    data = load_federated_data(cfg)
    assert data.num_classes == 10 and data.num_clients == 3
    assert max(int(data.union_train()[1].max()), int(data.test[1].max() if len(data.test[1]) else 0)) < 10
    assert load_federated_data(cfg).client_ids == data.client_ids  # seeded


def test_shakespeare_from_tff_cache_packs_as_tff_does(tff_cache):
    """Token for token what TFF's own preprocessing (char_prediction_preprocessing) produces."""
    import tensorflow_federated as tff
    from tensorflow_federated.python.simulation.baselines import client_spec
    from tensorflow_federated.python.simulation.baselines.shakespeare import char_prediction_preprocessing as P

    assert V.CHAR_VOCAB == "".join(P.CHAR_VOCAB) and (V.PAD, V.OOV, V.BOS, V.EOS) == P.get_special_tokens()
    train, _ = tff.simulation.datasets.shakespeare.load_data(cache_dir=str(tff_cache))
    fn = P.create_preprocess_fn(
        client_spec.ClientSpec(num_epochs=1, batch_size=1000, shuffle_buffer_size=1), sequence_length=fx.SEQ_LEN
    )
    for cid in train.client_ids:
        tx, ty = zip(*fn(train.create_tf_dataset_for_client(cid)).as_numpy_iterator())
        snippets = [e["snippets"] for e in train.create_tf_dataset_for_client(cid).as_numpy_iterator()]
        x, y = V.snippets_to_sequences(snippets, fx.SEQ_LEN)
        assert np.array_equal(np.concatenate(tx), x) and np.array_equal(np.concatenate(ty), y), cid
    assert V.OOV in V.encode("\u00e9")  # non-ASCII: one OOV per UTF-8 byte, as tf.strings.bytes_split

    cfg = task_config(
        "shakespeare_char",
        task_kwargs={"sequence_length": fx.SEQ_LEN},
        **{"data.cache_dir": str(tff_cache), "training.clients_per_round": 2},
    )
    data = load_federated_data(cfg)
    assert data.client_ids == sorted(fx.CORPUS) and data.num_classes == V.VOCAB_SIZE == 90
    assert data.input_shape == (fx.SEQ_LEN,) and data.test[0].dtype == np.int32 and data.test[1].shape[1] == fx.SEQ_LEN
    assert V.decode(data.test[0][0]).startswith(fx.CORPUS_TEST["ALICE"][0][: fx.SEQ_LEN - 1])
    assert data.preprocessing["kind"] == "tokens" and data.preprocessing["masked_ids"] == [0, 87, 88, 89]


def test_shakespeare_from_a_directory_of_text_files(tmp_path):
    root = fx.write_text_dir(tmp_path / "texts")
    over = {"data.path": str(root), "training.clients_per_round": 2}
    data = load_federated_data(task_config("shakespeare_char", task_kwargs={"sequence_length": 20}, **over))
    assert data.client_ids == sorted(n.lower() for n in fx.CORPUS) and data.test_source == "separate"
    assert V.decode(data.test[0][0]) == "Wind the clock again."[:19]  # BOS + 19 characters
    (root / "test.txt").unlink()
    held = load_federated_data(task_config("shakespeare_char", task_kwargs={"sequence_length": 20}, **over))
    assert held.test_source == "clients" and len(held.test[1]) >= 1


def test_tasks_match_their_yaml_files():
    from tff_lab.config import from_dict

    assert load_config("experiments/emnist62_cnn.yaml") == from_dict(task_overrides("emnist62_cnn"))
    assert load_config("experiments/shakespeare_char.yaml") == from_dict(task_overrides("shakespeare_char"))


@pytest.mark.parametrize(
    "task,file", [("emnist62_cnn", "emnist_all.sqlite"), ("shakespeare_char", "shakespeare.sqlite")]
)
def test_a_missing_cache_file_is_named_and_never_downloaded(tmp_path, task, file):
    cfg = task_config(task, **{"data.cache_dir": str(tmp_path), "training.clients_per_round": 2})
    with pytest.raises(DataError) as e:
        load_federated_data(cfg)
    assert str(tmp_path / file) in str(e.value) and "never downloads" in str(e.value) and ".lzma" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # TFF's loader never ran (it would create the file)


def test_bad_inputs_are_refused(tmp_path, tff_cache):
    (tmp_path / "emnist_all.sqlite").write_text("not a database")
    with pytest.raises(DataError, match="not TFF's emnist SQLite file"):
        load_federated_data(task_config("emnist62_cnn", **{"data.cache_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match="partition.scheme"):
        load_federated_data(
            task_config("shakespeare_char", **{"data.cache_dir": str(tff_cache), "partition.scheme": "iid"})
        )
    with pytest.raises(ConfigError, match="sequence_length"):
        load_federated_data(
            task_config("shakespeare_char", task_kwargs={"sequence_length": 0}, **{"data.cache_dir": str(tff_cache)})
        )
    with pytest.raises(DataError, match="no client files"):
        load_federated_data(task_config("shakespeare_char", **{"data.path": str(tmp_path)}))
