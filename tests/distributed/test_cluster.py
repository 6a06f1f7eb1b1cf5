"""Cluster discovery: TF_CONFIG (TFJob), Indexed Job env, single worker; every bad value -> ConfigError."""

import json

import pytest

from tff_lab.distributed import cluster
from tff_lab.errors import ConfigError


def _tf_config(**kw):
    data = {"cluster": {"worker": ["w0:2222", "w1:2222", "w2:2222"]}, "task": {"type": "worker", "index": 1}}
    data.update(kw)
    return json.dumps(data)


def test_no_env_is_single_worker():
    spec = cluster.discover({})
    assert spec.source == "single" and spec.num_workers == 1 and spec.is_chief
    assert spec.tf_config() is None


def test_tf_config_from_tfjob():
    spec = cluster.discover({"TF_CONFIG": _tf_config()})
    assert spec.source == "tf_config"
    assert spec.num_workers == 3 and spec.task_type == "worker" and spec.task_index == 1
    assert not spec.is_chief and spec.worker_id == 1
    assert spec.tf_config()["cluster"]["worker"][2] == "w2:2222"


def test_tf_config_as_the_training_operator_writes_it():
    raw = json.dumps(
        {
            "cluster": {
                "worker": ["tff-lab-train-worker-0.default.svc:2222", "tff-lab-train-worker-1.default.svc:2222"]
            },
            "task": {"type": "worker", "index": 0},
            "environment": "cloud",
        }
    )
    spec = cluster.discover({"TF_CONFIG": raw})
    assert spec.is_chief and spec.num_workers == 2 and spec.source == "tf_config"


def test_tf_config_with_chief():
    raw = json.dumps({"cluster": {"chief": ["c:2222"], "worker": ["w0:2222"]}, "task": {"type": "chief"}})
    spec = cluster.discover({"TF_CONFIG": raw})
    assert spec.is_chief and spec.num_workers == 2 and spec.worker_id == 0
    w = cluster.discover({"TF_CONFIG": raw.replace('"type": "chief"', '"type": "worker", "index": 0')})
    assert not w.is_chief and w.worker_id == 1  # worker 0 is not the chief when a chief exists


def test_tf_config_wins_over_indexed_job_env():
    spec = cluster.discover({"TF_CONFIG": _tf_config(), "JOB_COMPLETION_INDEX": "0"})
    assert spec.source == "tf_config"


@pytest.mark.parametrize(
    "raw, where, words",
    [
        ("{not json", "TF_CONFIG", "malformed JSON"),
        ("[1, 2]", "TF_CONFIG", "JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG.cluster", "missing"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG.task", "missing"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
            "TF_CONFIG.task.index",
            "out of range",
        ),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": -1}}',
            "TF_CONFIG.task.index",
            "out of range",
        ),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
            "TF_CONFIG.task.type",
            "not a task type",
        ),
        (
            '{"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "worker"}}',
            "TF_CONFIG.cluster.ps",
            "parameter servers",
        ),
        ('{"cluster": {"worker": ["nohost"]}, "task": {"type": "worker"}}', "TF_CONFIG.cluster.worker[0]", "host:port"),
        ('{"cluster": {"worker": ["a:99999"]}, "task": {"type": "worker"}}', "TF_CONFIG.cluster.worker[0]", "1..65535"),
        ('{"cluster": {"worker": []}, "task": {"type": "worker"}}', "TF_CONFIG.cluster.worker", "non-empty"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}',
            "TF_CONFIG.task.index",
            "integer",
        ),
    ],
)
def test_bad_tf_config(raw, where, words):
    with pytest.raises(ConfigError) as e:
        cluster.discover({"TF_CONFIG": raw})
    assert e.value.where == where and words in e.value.message


def _job_env(index, n=3, **kw):
    env = {
        "JOB_COMPLETION_INDEX": str(index),
        "TFF_LAB_NUM_WORKERS": str(n),
        "TFF_LAB_JOB_NAME": "tff-lab-train",
        "TFF_LAB_SERVICE": "tff-lab-workers",
    }
    env.update(kw)
    return env


def test_indexed_job_builds_stable_hostnames():
    spec = cluster.discover(_job_env(2))
    assert spec.source == "indexed_job" and spec.task_index == 2 and not spec.is_chief
    assert spec.tf_config() == {
        "cluster": {"worker": [f"tff-lab-train-{i}.tff-lab-workers:2222" for i in range(3)]},
        "task": {"type": "worker", "index": 2},
    }
    assert cluster.discover(_job_env(0)).is_chief


def test_indexed_job_port_and_host_map():
    env = _job_env(
        1,
        n=2,
        TFF_LAB_WORKER_PORT="3333",
        TFF_LAB_HOST_MAP="tff-lab-train-0.tff-lab-workers=localhost:41000, tff-lab-train-1.tff-lab-workers=127.0.0.1",
    )
    spec = cluster.discover(env)
    assert spec.jobs["worker"] == ("localhost:41000", "127.0.0.1:3333")


def test_single_worker_indexed_job_needs_no_names():
    spec = cluster.discover({"JOB_COMPLETION_INDEX": "0", "TFF_LAB_NUM_WORKERS": "1"})
    assert spec.num_workers == 1 and spec.is_chief and not spec.is_multi_worker


@pytest.mark.parametrize(
    "env, where, words",
    [
        (_job_env(3, n=3), "JOB_COMPLETION_INDEX", "not below the worker count"),
        (_job_env(0, n=0), "TFF_LAB_NUM_WORKERS", ">= 1"),
        (_job_env(-1), "JOB_COMPLETION_INDEX", ">= 0"),
        (_job_env("x"), "JOB_COMPLETION_INDEX", "integer"),
        ({"JOB_COMPLETION_INDEX": "0"}, "TFF_LAB_NUM_WORKERS", "not set"),
        (_job_env(0, TFF_LAB_SERVICE=""), "TFF_LAB_SERVICE", "not set"),
        (_job_env(0, TFF_LAB_JOB_NAME="Bad_Name"), "TFF_LAB_JOB_NAME", "DNS label"),
        (_job_env(0, TFF_LAB_WORKER_PORT="70000"), "TFF_LAB_WORKER_PORT", "1..65535"),
        (_job_env(0, TFF_LAB_HOST_MAP="justahost"), "TFF_LAB_HOST_MAP", "host=address"),
    ],
)
def test_bad_indexed_job_env(env, where, words):
    with pytest.raises(ConfigError) as e:
        cluster.discover(env)
    assert e.value.where == where and words in e.value.message
