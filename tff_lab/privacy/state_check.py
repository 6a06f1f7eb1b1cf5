"""The per-round check of the ledger against what the DP aggregator itself records.

The ledger says what each round should have done (:class:`~tff_lab.privacy.accounting.MechanismSpec`);
the engine's server state says what the aggregator did. After every round
:func:`check_aggregator_state` reads the state and raises
:class:`~tff_lab.errors.PrivacyAccountingError` on any difference:

- TFF's ``DPAggregatorState.dp_event``: the ``DpEvent`` tensorflow_privacy's query emitted in the
  last round (``tff.aggregators.differential_privacy.extract_dp_event_from_state`` reads the
  same field). It must equal ``spec.query_event()`` (Gaussian mechanisms; the tree query emits
  ``UnsupportedDpEvent``), and ``is_init_state`` must be False: the aggregator ran.
- The DP query's global state, found by field names wherever it sits in the state (TFF's
  ``DPAggregatorState.query_state``, or a vectorised engine's own nest of the same queries):
  ``gaussian_fixed``: the sum query's ``l2_norm_clip`` == the clip and ``stddev / l2_norm_clip``
  == the noise multiplier; ``gaussian_adaptive``: the value query's ``stddev / l2_norm_clip`` ==
  the value noise multiplier (the clip itself evolves; it is returned and recorded), the
  clipped-count query's clip 0.5 and stddev == the clipped-count stddev; ``tree``: the node
  noise ``stddev`` == noise x clip, ``clip_value`` == clip, and the tree's leaf count (from
  ``level_buffer_idx``: its set bits are those of leaves + 1) == the ledger's rounds.
- Seeded queries (:mod:`tff_lab.privacy.queries`) count their calls (``round`` beside ``seed``):
  the count must equal the ledger's rounds, so a round that skipped the aggregator, or ran it
  twice, is caught.

Floats in the state are float32: values are compared to a relative ``1e-5``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import dp_accounting
import numpy as np

from tff_lab.errors import PrivacyAccountingError
from tff_lab.privacy.accounting import MechanismSpec, event_from_json

RTOL = 1e-5

Path = tuple


def flatten_with_paths(obj: Any, prefix: Path = ()) -> dict:
    """``{path: leaf}`` over namedtuples, attrs classes, mappings and sequences (paths of field names / indices)."""
    out: dict = {}
    items = _children(obj)
    if items is None:
        out[prefix] = obj
        return out
    for k, v in items:
        out.update(flatten_with_paths(v, prefix + (k,)))
    return out


def _children(obj):
    if hasattr(obj, "_asdict") and isinstance(obj, tuple):
        return list(obj._asdict().items())
    try:
        import attr

        if attr.has(type(obj)):
            return [(f.name, getattr(obj, f.name)) for f in attr.fields(type(obj))]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, (list, tuple)):
        return list(enumerate(obj))
    return None


def find_dp_aggregator_state(state: Any) -> Optional[Any]:
    """TFF's ``DPAggregatorState`` (``query_state``, ``dp_event``, ``is_init_state``) inside ``state``, or None."""
    stack = [state]
    found = []
    while stack:
        node = stack.pop()
        if all(hasattr(node, f) for f in ("query_state", "dp_event", "is_init_state")):
            found.append(node)
            continue
        kids = _children(node)
        if kids:
            stack.extend(v for _, v in kids)
    if len(found) > 1:
        raise PrivacyAccountingError(f"the engine state holds {len(found)} DP aggregators; the ledger accounts one")
    return found[0] if found else None


def event_from_state(event_tuple: Any) -> dp_accounting.DpEvent:
    """The ``DpEvent`` from TFF's tensor form (``DpEvent.to_named_tuple`` with numpy leaves, bytes names)."""
    return event_from_json(_event_json(event_tuple))


def _event_json(nt):
    d = nt._asdict()
    out = {"type": _text(d.pop("class_name"))}
    d.pop("module_name", None)
    for k, v in d.items():
        if hasattr(v, "_asdict") and hasattr(v, "class_name"):
            out[k] = _event_json(v)
        elif isinstance(v, (list, tuple)):
            out[k] = [_event_json(e) if hasattr(e, "class_name") else _scalar(e) for e in v]
        else:
            out[k] = _scalar(v)
    return out


def _text(v) -> str:
    v = np.asarray(v).item() if isinstance(v, np.ndarray) else v
    return v.decode() if isinstance(v, bytes) else str(v)


def _scalar(v):
    a = np.asarray(v)
    if a.dtype.kind in "SUO":
        return _text(a.item())
    if a.dtype.kind in "iu":
        return int(a)
    if a.dtype.kind == "b":
        return bool(a)
    return float(a)


def events_match(a: dp_accounting.DpEvent, b: dp_accounting.DpEvent, rtol: float = RTOL) -> bool:
    """Same event structure, Gaussian multipliers within ``rtol`` (float32 state against float64 spec)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dp_accounting.GaussianDpEvent):
        return _close(a.noise_multiplier, b.noise_multiplier, rtol)
    if isinstance(a, dp_accounting.ComposedDpEvent):
        return len(a.events) == len(b.events) and all(events_match(x, y, rtol) for x, y in zip(a.events, b.events))
    return a == b


def _close(a: float, b: float, rtol: float = RTOL) -> bool:
    a, b = float(a), float(b)
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)


def _pairs(flat: dict) -> dict:
    """Parents of ``(l2_norm_clip, stddev)`` pairs: the Gaussian sum queries' global states."""
    keys = set(flat)
    return {
        p[:-1]: (float(np.asarray(flat[p])), float(np.asarray(flat[p[:-1] + ("stddev",)])))
        for p in keys
        if p and p[-1] == "l2_norm_clip" and p[:-1] + ("stddev",) in keys
    }


def _one(flat: dict, name: str, within: Optional[str] = None):
    hits = [(p, v) for p, v in flat.items() if p and p[-1] == name and (within is None or within in p)]
    if len(hits) != 1:
        return None
    return hits[0][1]


def check_aggregator_state(spec: MechanismSpec, rounds: int, state: Any, round_num: Optional[int] = None) -> dict:
    """Compare the engine's server state after round ``rounds`` of the ledger with ``spec``.

    Returns what was observed (``noise_multiplier``, ``clip``, ``aggregator_calls`` where the state
    records them); raises :class:`PrivacyAccountingError` on a difference, or when the state holds
    no DP query state at all (the aggregator is not the accounted mechanism). ``ddp_secure`` has
    no accounted event and is not checked (returns ``{}``).
    """
    if spec.mechanism == "ddp_secure":
        return {}
    r = round_num if round_num is not None else rounds
    where = f"round {r}: the DP aggregator's state"

    def fail(msg: str):
        raise PrivacyAccountingError(f"{where} {msg}; what ran departs from what the ledger accounts")

    observed: dict = {}
    dp_state = find_dp_aggregator_state(state)
    root = getattr(state, "aggregator", state)
    if dp_state is not None:
        if bool(np.asarray(dp_state.is_init_state)):
            fail("is still the initial state (the aggregator did not run)")
        event = event_from_state(dp_state.dp_event)
        observed["dp_event"] = type(event).__name__
        if spec.mechanism == "tree":
            if not isinstance(event, dp_accounting.UnsupportedDpEvent):
                fail(f"records {event}, not the tree query's UnsupportedDpEvent (another query ran)")
        elif not events_match(event, spec.query_event()):
            fail(f"records the event {event}, the ledger accounts {spec.query_event()}")
        root = dp_state.query_state
    flat = flatten_with_paths(root)
    pairs = _pairs(flat)
    clip = float(spec.clip) if spec.clip is not None else None

    if spec.mechanism == "gaussian_fixed":
        if len(pairs) != 1:
            fail(f"holds {len(pairs)} Gaussian sum queries (l2_norm_clip, stddev); gaussian_fixed has one")
        ((c, sd),) = pairs.values()
        observed.update(clip=c, noise_multiplier=sd / c)
        if clip is not None and not _close(c, clip):
            fail(f"clips at {c:.7g}, the ledger accounts clip {clip:.7g}")
        if not _close(sd / c, spec.noise_multiplier):
            fail(
                f"adds noise multiplier {sd / c:.7g} (stddev {sd:.7g} / clip {c:.7g}), the ledger accounts "
                f"{spec.noise_multiplier:.7g}"
            )
    elif spec.mechanism == "gaussian_adaptive":
        comp = spec.noise_components()
        value = [v for p, v in pairs.items() if "sum_state" in p]
        count = [v for p, v in pairs.items() if "below_estimate_state" in p]
        if len(value) != 1 or len(count) != 1:
            fail("holds no adaptive-clip query state (sum_state and below_estimate_state)")
        (c, sd), (cc, csd) = value[0], count[0]
        observed.update(clip=c, noise_multiplier=sd / c, clipped_count_stddev=csd)
        if not _close(sd / c, comp["value_noise_multiplier"]):
            fail(
                f"adds value noise multiplier {sd / c:.7g} (stddev {sd:.7g} at clip {c:.7g}), the ledger accounts "
                f"{comp['value_noise_multiplier']:.7g}"
            )
        if not _close(cc, 0.5) or not _close(csd, comp["clipped_count_stddev"]):
            fail(
                f"noises the clipped count with stddev {csd:.7g} (record clip {cc:.7g}), the ledger accounts "
                f"{comp['clipped_count_stddev']:.7g} (clip 0.5)"
            )
        est = _one(flat, "current_estimate")
        if est is not None and not _close(float(np.asarray(est)), c):
            fail(f"clips at {c:.7g} but its quantile estimate is {float(np.asarray(est)):.7g}")
        if not (math.isfinite(c) and c > 0):
            fail(f"has clip {c}")
    elif spec.mechanism == "tree":
        sd = _one(flat, "stddev", within="value_generator_state")
        cv = _one(flat, "clip_value")
        idx = _one(flat, "level_buffer_idx")
        if sd is None or cv is None or idx is None:
            fail("holds no tree-aggregation query state (value_generator_state.stddev, clip_value, level_buffer_idx)")
        sd, cv = float(np.asarray(sd)), float(np.asarray(cv))
        leaves = int(sum(1 << int(i) for i in np.asarray(idx).ravel())) - 1
        observed.update(clip=cv, noise_multiplier=sd / cv, aggregator_calls=leaves)
        if clip is not None and not _close(cv, clip):
            fail(f"clips at {cv:.7g}, the ledger accounts clip {clip:.7g}")
        if not _close(sd / cv, spec.noise_multiplier):
            fail(
                f"adds node noise multiplier {sd / cv:.7g} (stddev {sd:.7g} / clip {cv:.7g}), the ledger accounts "
                f"{spec.noise_multiplier:.7g}"
            )
        if leaves != rounds:
            fail(f"holds a tree of {leaves} leaves, the ledger {rounds} (one leaf per round, empty rounds included)")
    # Seeded queries count their calls beside the seed.
    counters = [v for p, v in flat.items() if p and p[-1] == "round" and p[:-1] + ("seed",) in flat]
    if len(counters) == 1:
        calls = int(np.asarray(counters[0]))
        observed["aggregator_calls"] = calls
        if calls != rounds:
            fail(f"counts {calls} calls of the seeded query, the ledger {rounds} rounds")
    return observed
