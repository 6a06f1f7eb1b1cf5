"""YAML parsed with limits (tff_lab.config.io.parse_yaml, used by read_yaml and --set): generated alias
bombs of every fan-out and depth, nesting past the bound in every YAML syntax, recursive anchors,
oversized documents, duplicate keys at any depth, values Python refuses to convert. Each is one
ConfigError naming the file (or --set key), in bounded time and memory; documents within the
limits still load. A few go through the real CLI."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import assert_user_error, run_cli
from input_checks import one_line, small_peak, within

from tff_lab.config.io import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, parse_yaml, read_yaml
from tff_lab.errors import ConfigError

RNG = np.random.default_rng(1515)


def _bomb(fanout: int, levels: int, flow: bool = True) -> str:
    """a0 = [x]*fanout; a(i+1) = [*a(i)]*fanout: fanout**levels leaves from a few hundred bytes."""
    lines = [f"a0: &a0 [{', '.join(['x'] * fanout)}]"]
    for i in range(1, levels + 1):
        refs = [f"*a{i - 1}"] * fanout
        if flow:
            lines.append(f"a{i}: &a{i} [{', '.join(refs)}]")
        else:
            lines.append(f"a{i}: &a{i}\n" + "\n".join(f"  - {r}" for r in refs))
    return "\n".join(lines) + "\n"


def _map_bomb(fanout: int, levels: int) -> str:
    lines = ["m0: &m0 {" + ", ".join(f"k{j}: v" for j in range(fanout)) + "}"]
    for i in range(1, levels + 1):
        lines.append(f"m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(fanout)) + "}")
    return "\n".join(lines) + "\n"


BOMBS = [
    (_bomb(f, lv, flow), f"bomb fanout {f} levels {lv} {'flow' if flow else 'block'}")
    for f, lv, flow in [
        (2, 20, True),
        (3, 12, True),
        (9, 9, True),
        (10, 6, False),
        (50, 4, True),
        (1000, 2, True),
        (2, 40, False),
    ]
]
BOMBS += [(_map_bomb(f, lv), f"map bomb {f}^{lv}") for f, lv in [(4, 10), (10, 6), (30, 4)]]


def _deep(depth: int, kind: str) -> str:
    if kind == "flow_seq":
        return "[" * depth + "]" * depth
    if kind == "flow_map":
        return "{a: " * depth + "1" + "}" * depth
    if kind == "block_map":
        return "".join("  " * i + "k:\n" for i in range(depth)) + "  " * depth + "v\n"
    if kind == "block_seq":
        return "".join("  " * i + "-\n" for i in range(depth)) + "  " * depth + "x\n"
    if kind == "mixed":
        return "a: " + "[{b: " * (depth // 2) + "1" + "}]" * (depth // 2) + "\n"
    if kind == "alias_chain":  # each anchor one level deeper than the last
        return "".join(f"k{i}: &k{i} [{'*k' + str(i - 1) if i else '1'}]\n" for i in range(depth))
    raise ValueError(kind)


DEEP = [
    (_deep(d, k), f"{k} depth {d}")
    for k in ("flow_seq", "flow_map", "block_map", "block_seq", "mixed", "alias_chain")
    for d in (MAX_YAML_DEPTH + 2, 3 * MAX_YAML_DEPTH, 1000)
]
DEEP += [(_deep(100_000, "flow_seq"), "flow_seq depth 100000"), (_deep(100_000, "flow_map"), "flow_map 100000")]

RECURSIVE = [
    ("a: &a [*a]", "self list"),
    ("a: &a {b: *a}", "self map"),
    ("a: &a [1, [2, [*a]]]", "nested self"),
    ("a: &a {b: [{c: *a}]}", "nested map self"),
    ("- &x [*x, *x]", "top-level"),
]


def _check_refused(text: str, words=()):
    kind, err = within(20, parse_yaml, text, "exp.yaml")
    assert kind == "raised" and isinstance(err, ConfigError), err
    msg = one_line(err)
    assert msg.startswith("exp.yaml: "), msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.mark.parametrize("text,label", BOMBS, ids=[b[1] for b in BOMBS])
def test_alias_bombs_refused_fast(text, label):
    assert len(text) < MAX_YAML_BYTES
    t0 = time.monotonic()
    with small_peak(32 << 20):
        msg = _check_refused(text)
    assert "values" in msg or "aliases" in msg or "deeper" in msg, msg
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("text,label", DEEP, ids=[d[1] for d in DEEP])
def test_deep_nesting_refused(text, label):
    _check_refused(text, ["deeper", str(MAX_YAML_DEPTH)])


@pytest.mark.parametrize("text,label", RECURSIVE, ids=[r[1] for r in RECURSIVE])
def test_recursive_aliases_refused(text, label):
    _check_refused(text, ["recursive"])


def test_many_aliases_refused():
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 5000) + "]\n"
    _check_refused(text, ["aliases"])


@pytest.mark.parametrize("size", [MAX_YAML_BYTES + 1, 2 * MAX_YAML_BYTES, 8 * MAX_YAML_BYTES])
def test_oversized_documents_refused(size, tmp_path):
    text = "a: '" + "x" * (size - 6) + "'\n"
    _check_refused(text, ["larger"])
    f = tmp_path / "big.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match="at most") as e:
        read_yaml(f)
    assert one_line(e.value).startswith(str(f))


def _random_mapping(depth: int) -> dict:
    keys = [f"k{i}" for i in range(int(RNG.integers(1, 5)))]
    return {
        k: (_random_mapping(depth - 1) if depth > 1 and RNG.random() < 0.5 else int(RNG.integers(100))) for k in keys
    }


def _dump_with_duplicate(d: dict, indent: int = 0) -> tuple[str, bool]:
    """Block YAML of ``d`` with one key repeated somewhere (the first mapping it reaches at random)."""
    out, done = [], False
    items = list(d.items())
    for k, v in items:
        if isinstance(v, dict):
            body, sub = _dump_with_duplicate(v, indent + 1)
            out.append("  " * indent + f"{k}:\n" + body)
            done = done or sub
        else:
            out.append("  " * indent + f"{k}: {v}\n")
    if not done and (RNG.random() < 0.5 or indent == 0):
        k = items[int(RNG.integers(len(items)))][0]
        out.append("  " * indent + f"{k}: 0\n")
        done = True
    return "".join(out), done


def test_duplicate_keys_refused_at_any_depth():
    for _ in range(30):
        text, done = _dump_with_duplicate(_random_mapping(4))
        assert done
        _check_refused(text, ["duplicate key"])


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "9" * 5000,
        "a: [" + "1" * 4400 + "]",
        "a: 0x" + "f" * 5000,
        "a: 0b" + "1" * 2000,
        "a: -" + "7" * 400,
        "a: {b: [0" + "7" * 400 + "]}",
    ],
)
def test_huge_integers_refused(text):
    _check_refused(text, ["integer"])


def test_huge_integer_in_set_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="bits") as e:
        from tff_lab.config import load_config

        load_config(None, ["seed=0x" + "f" * 5000])
    assert one_line(e.value).startswith("--set seed")


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object/apply:os.system ['true']",
        "a: !!python/name:os.system",
        "a: !!binary AAAA\nb: !!set {x}\n!!python/tuple [1]",
    ],
)
def test_python_tags_never_constructed(text):
    _check_refused(text)


def test_within_limits_still_loads():
    ok = _bomb(2, 10)  # 2**10 leaves
    data = parse_yaml(ok, "x")
    assert len(data["a10"]) == 2 and data["a10"][0] is data["a10"][1]  # shared, as PyYAML builds it
    nested = parse_yaml(_deep(MAX_YAML_DEPTH - 1, "flow_seq"), "x")
    depth = 0
    while isinstance(nested, list) and nested:
        nested, depth = nested[0], depth + 1
    assert depth == MAX_YAML_DEPTH - 2
    assert parse_yaml("base: &b {lr: 0.1}\nrun:\n  <<: *b\n  rounds: 3\n", "x")["run"] == {"lr": 0.1, "rounds": 3}
    assert MAX_YAML_NODES >= 10_000


def test_cli_refuses_bombs_and_deep_yaml(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb(9, 9))
    assert_user_error(run_cli("privacy", "epsilon", bomb, timeout=60), "bomb.yaml", "values")
    deep = tmp_path / "deep.yaml"
    deep.write_text(_deep(100_000, "flow_map"))
    assert_user_error(run_cli("privacy", "epsilon", deep, timeout=60), "deep.yaml", "deeper")


def test_cli_set_values_have_the_same_limits(tmp_path):
    value = "[" * 1000 + "]" * 1000
    assert_user_error(
        run_cli("privacy", "epsilon", "--set", f"model.kwargs.x={value}", timeout=60), "--set model.kwargs.x", "deeper"
    )


@pytest.mark.parametrize("kind", ["dir", "fifo", "device"])
def test_experiment_file_must_be_regular(tmp_path, kind):
    p = tmp_path / "exp.yaml"
    if kind == "dir":
        p.mkdir()
    elif kind == "fifo":
        import os

        os.mkfifo(p)
    else:
        p.symlink_to("/dev/zero")
    kind_, err = within(5, read_yaml, p)
    assert kind_ == "raised" and isinstance(err, ConfigError)
    assert one_line(err).startswith(str(p))
