"""Sweeps: a grid YAML -> one override set per experiment, run one per Job index.

A grid file::

    # tff-lab sweep experiments/sweep_digits_dp.yaml --index 0 --out runs/sweep
    name: digits_dp                    # the sweep's name (a directory under --out)
    experiment: ../experiments/x.yaml  # the base experiment (path relative to this file), or
    base: {data: {source: digits}}     # ... an inline mapping (exactly one of the two)
    grid:                              # dotted config keys -> the values to try
      privacy.noise_multiplier: [0.5, 1.0]
      partition.alpha: [0.1, 1.0]

gives the cartesian product of the grid's values, in file order (the last key varies fastest):
4 experiments, indices 0..3. Every point is validated before anything runs, so a typo fails the
whole sweep up front instead of one Job index at a time.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import yaml

from tff_lab.config import from_dict
from tff_lab.config.io import apply_overrides, read_yaml
from tff_lab.errors import ConfigError

COMPLETION_INDEX = "JOB_COMPLETION_INDEX"


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    base: dict  # the base experiment as plain data
    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]  # per key

    def __len__(self) -> int:
        n = 1
        for v in self.values:
            n *= len(v)
        return n

    def point(self, index: int) -> dict[str, Any]:
        """The ``index``-th {dotted key: value} of the grid."""
        if not 0 <= index < len(self):
            raise ConfigError(
                COMPLETION_INDEX if os.environ.get(COMPLETION_INDEX) else "--index",
                f"{index} is out of range for the {len(self)} experiments of sweep '{self.name}'",
            )
        return dict(zip(self.keys, list(itertools.product(*self.values))[index]))

    def overrides(self, index: int) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.point(index).items()]

    def override_sets(self) -> list[list[str]]:
        return [self.overrides(i) for i in range(len(self))]

    def run_name(self, index: int) -> str:
        slug = "-".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.point(index).items())
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", slug)[:80]
        return f"{index:03d}-{slug}" if slug else f"{index:03d}"

    def config(self, index: int):
        data = apply_overrides(self.base, self.overrides(index))
        data.setdefault("name", f"{self.name}-{index:03d}")
        try:
            return from_dict(data)
        except ConfigError as e:
            raise ConfigError(
                f"sweep '{self.name}' point {index} ({', '.join(self.overrides(index))}): {e.where}", e.message
            ) from None

    def to_dict(self) -> dict:
        """Self-contained form (base inlined), as stored in the sweep ConfigMap."""
        return {"name": self.name, "base": self.base, "grid": {k: list(v) for k, v in zip(self.keys, self.values)}}

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_sweep(
    data: Any, *, where: str = "sweep", base_dir: Optional[Path] = None, default_base: Optional[dict] = None
) -> Sweep:
    if not isinstance(data, dict):
        raise ConfigError(where, "expected a mapping with 'name', 'grid' and 'experiment' or 'base'")
    unknown = set(data) - {"name", "experiment", "base", "grid"}
    if unknown:
        raise ConfigError(f"{where}: {sorted(unknown)[0]}", "unknown key; valid keys: name, experiment, base, grid")
    name = data.get("name")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise ConfigError(f"{where}: name", f"expected a name of letters, digits, '_', '.', '-', got {name!r}")
    if "experiment" in data and "base" in data:
        raise ConfigError(f"{where}: base", "give 'experiment' (a path) or 'base' (a mapping), not both")
    if "experiment" in data:
        exp = data["experiment"]
        if not isinstance(exp, str):
            raise ConfigError(f"{where}: experiment", f"expected a path, got {exp!r}")
        path = Path(exp) if Path(exp).is_absolute() or base_dir is None else base_dir / exp
        base = read_yaml(path)
    elif "base" in data:
        base = data["base"] if data["base"] is not None else {}
        if not isinstance(base, dict):
            raise ConfigError(f"{where}: base", "expected a mapping (an experiment)")
    elif default_base is not None:
        base = default_base
    else:
        raise ConfigError(where, "needs the base experiment: 'experiment: PATH' or 'base: {...}'")
    grid = data.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{where}: grid", "expected a non-empty mapping of dotted keys to lists of values")
    keys, values = [], []
    for key, vals in grid.items():
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", key):
            raise ConfigError(f"{where}: grid", f"expected dotted config keys, got {key!r}")
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}: grid.{key}", f"expected a non-empty list of values, got {vals!r}")
        keys.append(key)
        values.append(tuple(vals))
    sweep = Sweep(name=name, base=json.loads(json.dumps(base)), keys=tuple(keys), values=tuple(values))
    for i in range(len(sweep)):  # validate every point before anything runs
        sweep.config(i)
    return sweep


def load_sweep(path, *, default_base: Optional[dict] = None) -> Sweep:
    p = Path(path)
    return parse_sweep(read_yaml(p), where=str(p), base_dir=p.parent, default_base=default_base)


def index_from_env(env=None) -> int:
    env = os.environ if env is None else env
    raw = env.get(COMPLETION_INDEX, "").strip()
    if not raw:
        raise ConfigError("--index", f"not given and {COMPLETION_INDEX} is not set (it is, in an Indexed Job)")
    if not raw.isdigit():
        raise ConfigError(COMPLETION_INDEX, f"expected an integer >= 0, got {raw!r}")
    return int(raw)


def run_sweep_point(sweep: Sweep, index: int, out_dir, *, quiet: bool = True) -> dict:
    """Runs experiment ``index`` of the sweep into ``out_dir/<sweep name>/<index>-<slug>``.

    Resumes from that run's checkpoint when a retried pod finds one.
    """
    from tff_lab import run_experiment

    cfg = sweep.config(index)
    run_dir = Path(out_dir) / sweep.name / sweep.run_name(index)
    summary = run_experiment(cfg, run_dir, resume=True, quiet=quiet)
    from tff_lab.fileio import atomic_write_text

    atomic_write_text(
        run_dir / "sweep_point.json",
        json.dumps({"sweep": sweep.name, "index": index, "of": len(sweep), "point": sweep.point(index)}, indent=2)
        + "\n",
    )
    return summary
