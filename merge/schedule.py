"""Which `t` (or any other merge parameter) a tensor gets.

Users bring mergekit YAML, so a parameter means what it means there: a number; a
list of numbers read as a piecewise-linear gradient over depth; or a list of
`{filter, value}` entries where the first entry whose filter occurs in the tensor
name wins (an entry without a filter, or with filter "*", matches everything).
The depth of a tensor is its layer index over the model's layer count, taken from
config.json, so a schedule written for 32 layers stretches correctly over 24.
"""

from __future__ import annotations

import math
import re
from typing import Any

# The paper's SLERP schedule (Lu, Luu & Buehler 2024): attention moves from the base (t = 0) at the
# bottom to the other model (t = 1) at the top, the MLPs the other way round, everything else halfway.
# One shared list: copy it (copy.deepcopy) before changing it.
PAPER_SLERP_T = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]

_LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def layer_index(tensor_name: str) -> int | None:
    """The decoder layer a tensor belongs to, or None for embeddings, final norm, lm_head."""
    match = _LAYER_PATTERN.search(tensor_name)
    return int(match.group(1)) if match else None


def depth_position(tensor_name: str, num_layers: int) -> float:
    """Position in [0, 1] over depth; tensors outside the layers sit at 0 (as mergekit does)."""
    index = layer_index(tensor_name)
    if index is None or num_layers <= 1:
        return 0.0
    if index >= num_layers:
        raise ValueError(f"tensor {tensor_name!r} is in layer {index} but the model has {num_layers} layers")
    return index / (num_layers - 1)


def resolve_t(tensor_name: str, t_spec: Any, num_layers: int) -> float:
    """The value of `t_spec` for `tensor_name` in a model of `num_layers` layers."""
    value = resolve_value(tensor_name, t_spec, depth_position(tensor_name, num_layers))
    if value is None:
        raise ValueError(f"no entry of the parameter matches tensor {tensor_name!r} and there is no default entry")
    return float(value)


def resolve_value(tensor_name: str, spec: Any, position: float) -> Any:
    """Evaluate a number / gradient / filter list at `position`; None when no entry matches."""
    if isinstance(spec, bool):
        return spec
    if isinstance(spec, (int, float)):
        return spec
    if isinstance(spec, dict):
        spec = [spec]
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError(f"a parameter must be a number, a list of numbers or a list of filter entries, got {spec!r}")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
        return gradient_value(list(spec), position)
    if all(isinstance(v, (bool, int, float, str)) for v in spec):  # booleans (or labels) are picked, not interpolated
        return spec[min(int(position * (len(spec) - 1)), len(spec) - 1)]
    for entry in spec:
        if not isinstance(entry, dict) or "value" not in entry:
            raise ValueError(f"filter entries need a 'value' key, got {entry!r}")
        pattern = entry.get("filter")
        if pattern is None or pattern == "*" or pattern in tensor_name:
            return resolve_value(tensor_name, entry["value"], position)
    return None


def filters_of(spec: Any) -> list[str | None]:
    """The filter strings of a spec in order (None for the default entry)."""
    if isinstance(spec, dict):
        spec = [spec]
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(e, dict) for e in spec):
        return [e.get("filter") for e in spec]
    return [None]


def all_numbers(spec: Any) -> list[float]:
    """Every number that occurs in a spec, for range checks before any work."""
    if isinstance(spec, bool):
        return []
    if isinstance(spec, (int, float)):
        return [float(spec)]
    if isinstance(spec, dict):
        return all_numbers(spec.get("value", []))
    if isinstance(spec, (list, tuple)):
        return [x for item in spec for x in all_numbers(item)]
    return []


def gradient_value(values: list[float], position: float) -> float:
    """Piecewise-linear interpolation of `values` spread evenly over [0, 1]."""
    if len(values) == 1:
        return float(values[0])
    scaled = position * (len(values) - 1)
    low = min(int(math.floor(scaled)), len(values) - 1)
    high = min(low + 1, len(values) - 1)
    frac = scaled - low
    return (1 - frac) * values[low] + frac * values[high]
