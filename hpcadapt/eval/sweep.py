"""Evaluate several SLERP schedules of one parent pair without writing merged checkpoints.

A merge to disk writes a full checkpoint (15 GB at 8B) only for the evaluation to
read it straight back. Here one model object is loaded once from the base parent;
for each schedule every tensor is merged with the merger's own functions
(hpcadapt_merge.schedule.resolve_t, hpcadapt_merge.methods.slerp.slerp), read lazily
from both parents' safetensors, and copied into that model in place. Peak memory is
one model plus two tensors, whatever the number of schedules.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcadapt_merge.schedule import PAPER_SLERP_T as PAPER_T  # the one source of the paper's schedule
from tqdm.auto import tqdm

from .benchmark import load_benchmarks, read_heldout_texts
from .model_dir import check_model_dir, check_same_tokenizer, load_model, load_tokenizer, num_layers_of, pick_device
from .results import EvalResults


def default_schedules() -> dict[str, Any]:
    """The schedules every sweep tries: constant, ramps over depth, and the paper's gradient."""
    return {"constant_0.5": 0.5, "ramp_up": [0.0, 1.0], "ramp_down": [1.0, 0.0], "paper": PAPER_T}


@dataclass
class SweepResult:
    """Per-schedule evaluation (models named by schedule), the specs, and seconds per schedule."""

    results: EvalResults
    t_specs: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    merge_seconds: dict[str, float] = field(default_factory=dict)


def sweep_schedules(
    base: str | Path,
    other: str | Path,
    benchmark_files: list[str | Path],
    *,
    schedules: dict[str, Any] | None = None,
    include_defaults: bool = True,
    heldout_file: str | Path | None = None,
    out_dir: str | Path | None = None,
    protocols=("loglik", "generate"),
    batch_size: int = 16,
    device: str | None = None,
    max_new_tokens: int = 8,
) -> SweepResult:
    """SLERP `base` (t = 0 end) with `other` under each schedule and score each merge in memory.

    `schedules` maps a name to a mergekit t spec (the user's own); they are tried after
    default_schedules() unless include_defaults=False, and replace a default of the same name.
    Everything is validated before weights load: folders, tokenizers, tensor names and
    shapes, benchmark files, and each t spec against every tensor.
    """
    from hpcadapt_merge.schedule import resolve_t

    from .suite import evaluate_loaded

    schedules = {**(default_schedules() if include_defaults else {}), **(schedules or {})}
    if not schedules:
        raise ValueError("no schedules to sweep")
    base_dir, other_dir = check_model_dir(base, "base parent"), check_model_dir(other, "other parent")
    check_same_tokenizer({"base parent": base_dir, "other parent": other_dir})
    base_files, other_files = tensor_files(base_dir), tensor_files(other_dir)
    mismatch = sorted(set(base_files) ^ set(other_files))
    if mismatch:
        raise ValueError(f"parents hold different tensors, e.g. {mismatch[:3]} ({base_dir} vs {other_dir})")
    num_layers = num_layers_of(base_dir)
    for name, spec in schedules.items():
        for tensor in base_files:
            t = resolve_t(tensor, spec, num_layers)
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"schedule {name!r} gives t={t} for {tensor}; t must lie in [0, 1]")
    sets = load_benchmarks(list(benchmark_files))
    heldout = read_heldout_texts(heldout_file) if heldout_file else None
    device = pick_device(device)

    model, tokenizer = load_model(base_dir, device), load_tokenizer(base_dir)
    results = EvalResults(models={}, sets=[s.name for s in sets], protocols=tuple(protocols),
                          meta={"device": device, "base": str(base_dir), "other": str(other_dir), "in_memory": True})
    sweep = SweepResult(results=results, t_specs=schedules)
    for name, spec in tqdm(schedules.items(), desc="schedules", unit="schedule"):
        started = time.perf_counter()
        merge_into(model, base_files, other_files, spec, num_layers)
        sweep.merge_seconds[name] = time.perf_counter() - started
        records, ppl = evaluate_loaded(model, tokenizer, sets, heldout, protocols=protocols, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, label=name)
        results.models[name] = f"slerp({base_dir.name}, {other_dir.name}, t={json.dumps(spec)})"
        results.records[name] = records
        results.perplexity[name] = ppl
        sweep.seconds[name] = time.perf_counter() - started
    if out_dir is not None:
        results.meta["seconds"] = sweep.seconds
        results.save(out_dir)
    return sweep


def merge_into(model, base_files: dict[str, Path], other_files: dict[str, Path], t_spec: Any, num_layers: int) -> None:
    """Overwrite `model`'s weights with SLERP(base, other, t) tensor by tensor."""
    import torch
    from hpcadapt_merge.methods.slerp import slerp
    from hpcadapt_merge.schedule import resolve_t
    from safetensors import safe_open

    params = model.state_dict()
    unknown = [n for n in base_files if n not in params]
    if unknown:
        raise ValueError(f"checkpoint tensors not in the model: {unknown[:3]}")
    handles: dict[Path, Any] = {}

    def read(path: Path, name: str):
        if path not in handles:
            handles[path] = safe_open(str(path), framework="pt", device="cpu")
        return handles[path].get_tensor(name)

    with torch.no_grad():
        for name in base_files:
            t = resolve_t(name, t_spec, num_layers)
            merged = slerp(read(base_files[name], name), read(other_files[name], name), t)
            params[name].copy_(merged.to(params[name].dtype))


def tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the shard index or the single file's header."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            files.update({name: path for name in handle.keys()})
    return files
