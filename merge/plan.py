"""What will be merged, from where, to where — decided and checked before any math.

The plan is complete before the first tensor is touched: every parent is opened
and cross-checked (tensor sets, shapes, dtypes, vocabularies, tokenizers, layer
counts, filters), every tensor gets its method parameters, and every output
tensor gets its shard and byte offset. Because safetensors headers depend only on
names, dtypes and shapes, the output headers are written before any data exists,
which is what lets workers write their tensors in place and in any order.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import CONFIG_DTYPE_NAMES, DTYPE_SIZES, FLOAT_DTYPES, Checkpoint, CheckpointError, TensorInfo, open_checkpoint
from .config import ConfigError, MergeConfig
from .schedule import depth_position, filters_of, resolve_value

DEFAULT_SHARD_SIZE = 5_000_000_000
_VOCAB_HINTS = ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: how to compute it and where its bytes go."""

    name: str
    method: str
    sources: tuple[TensorInfo, ...]  # base first (when the method has one), then the others
    params: dict[str, Any]  # resolved scalars: t, or weights/densities per source, lambda, ...
    out_dtype: str
    shard: int
    out_offset: int  # absolute byte offset in the output shard
    out_nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.sources[0].shape


@dataclass
class MergePlan:
    config: MergeConfig
    checkpoints: dict[Path, Checkpoint]
    num_layers: int
    jobs: list[TensorJob]
    shard_names: list[str]
    shard_headers: list[bytes] = field(repr=False)
    shard_sizes: list[int]

    @property
    def total_bytes(self) -> int:
        return sum(job.out_nbytes for job in self.jobs)

    @property
    def read_bytes(self) -> int:
        return sum(s.nbytes for job in self.jobs for s in job.sources)


def build_plan(config: MergeConfig, shard_size: int = DEFAULT_SHARD_SIZE) -> MergePlan:
    checkpoints = {path: open_checkpoint(path) for path in config.parents}
    base = checkpoints[config.parents[0]]
    num_layers = _check_parents(config, checkpoints)
    _check_filters(config, base)
    jobs_spec = []
    for name in sorted(base.tensors):
        sources = tuple(checkpoints[p].tensors[name] for p in _source_order(config))
        out_dtype = _output_dtype(config, sources[0])
        params = _tensor_params(config, name, num_layers)
        method = config.method if sources[0].dtype in FLOAT_DTYPES else "copy"
        jobs_spec.append((name, method, sources, params, out_dtype))
    jobs, names, headers, sizes = _layout(jobs_spec, shard_size)
    return MergePlan(config, checkpoints, num_layers, jobs, names, headers, sizes)


def _source_order(config: MergeConfig) -> list[Path]:
    if config.method == "linear":
        return [m.path for m in config.models]
    return [config.base] + [m.path for m in config.others()]


def _check_parents(config: MergeConfig, checkpoints: dict[Path, Checkpoint]) -> int:
    base_path = config.parents[0]
    base = checkpoints[base_path]
    num_layers = base.num_layers
    for model in config.models:
        if model.layer_range is not None and tuple(model.layer_range) != (0, num_layers):
            raise ConfigError(
                f"model {model.path}: layer_range {list(model.layer_range)} must cover all {num_layers} layers "
                f"([0, {num_layers}]) — partial slices are layer surgery, not a merge"
            )
    for path, other in checkpoints.items():
        if path == base_path:
            continue
        if other.num_layers != num_layers:
            raise CheckpointError(f"different layer counts: {base_path} has {num_layers} layers, {path} has {other.num_layers} (num_hidden_layers)")
        vocab_a, vocab_b = base.config.get("vocab_size"), other.config.get("vocab_size")
        if vocab_a != vocab_b:
            raise CheckpointError(f"differing vocabulary sizes: {base_path / 'config.json'} has vocab_size {vocab_a}, {path / 'config.json'} has {vocab_b}; refusing to truncate")
        only_base = sorted(set(base.tensors) - set(other.tensors))
        only_other = sorted(set(other.tensors) - set(base.tensors))
        if only_base or only_other:
            name, holder, lacking = (only_base[0], base_path, path) if only_base else (only_other[0], path, base_path)
            raise CheckpointError(f"tensor {name!r} is in {holder} but not in {lacking} ({len(only_base) + len(only_other)} such tensors)")
        for name, a in base.tensors.items():
            b = other.tensors[name]
            if a.shape != b.shape:
                kind = "differing vocabulary sizes: " if any(h in name for h in _VOCAB_HINTS) else "shape mismatch: "
                raise CheckpointError(f"{kind}tensor {name!r} is {list(a.shape)} in {a.file} but {list(b.shape)} in {b.file}")
            if a.dtype != b.dtype:
                raise CheckpointError(f"dtype mismatch: tensor {name!r} is {a.dtype} in {a.file} but {b.dtype} in {b.file}")
        _check_tokenizers(base_path, path)
    return num_layers


def _check_tokenizers(path_a: Path, path_b: Path) -> None:
    """Parents must tokenize identically, else merged embeddings mean different tokens."""
    for filename in _TOKENIZER_FILES:
        file_a, file_b = path_a / filename, path_b / filename
        if not (file_a.is_file() and file_b.is_file()):
            continue
        if filename == "tokenizer.json":
            same = _tokenizer_identity(file_a) == _tokenizer_identity(file_b)
        else:
            same = file_a.read_bytes() == file_b.read_bytes()
        if not same:
            raise CheckpointError(f"tokenizers differ: {file_a} and {file_b} define different vocabularies; merge parents must share one tokenizer")


def _tokenizer_identity(path: Path) -> tuple:
    data = json.loads(path.read_text())
    model = data.get("model", {})
    added = sorted((t.get("id"), t.get("content")) for t in data.get("added_tokens", []))
    return json.dumps(model.get("vocab"), sort_keys=True), json.dumps(model.get("merges")), added


def _check_filters(config: MergeConfig, base: Checkpoint) -> None:
    specs = [("parameters." + key, spec) for key, spec in config.parameters.items()]
    specs += [(f"{m.path.name}.parameters.{key}", spec) for m in config.models for key, spec in m.parameters.items()]
    for where, spec in specs:
        for pattern in filters_of(spec):
            if pattern is not None and pattern != "*" and not any(pattern in name for name in base.tensors):
                raise ConfigError(f"{where}: filter {pattern!r} matches no tensor of {base.path} (e.g. {next(iter(sorted(base.tensors)))!r})")


def _output_dtype(config: MergeConfig, source: TensorInfo) -> str:
    if source.dtype not in FLOAT_DTYPES:
        return source.dtype
    chosen = config.out_dtype or config.dtype
    return CONFIG_DTYPE_NAMES[chosen] if chosen else source.dtype


def _tensor_params(config: MergeConfig, name: str, num_layers: int) -> dict[str, Any]:
    position = depth_position(name, num_layers)

    def value(spec, key):
        result = resolve_value(name, spec, position)
        if result is None:
            raise ConfigError(f"parameter {key!r}: no entry matches tensor {name!r} and there is no default entry")
        return result

    if config.method == "slerp":
        t = float(value(config.parameters["t"], "t"))
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"t = {t} for tensor {name!r} is outside [0, 1]")
        dtype = CONFIG_DTYPE_NAMES[config.dtype] if config.dtype else None  # inputs are cast to it before merging
        return {"t": t, "dtype": dtype}
    params: dict[str, Any] = {
        "normalize": bool(value(config.parameters.get("normalize", config.method in ("linear", "ties", "dare_ties")), "normalize")),
        "lambda": float(value(config.parameters.get("lambda", 1.0), "lambda")),
        "seed": int(value(config.parameters.get("seed", 0), "seed")),
    }
    contributors = config.models if config.method == "linear" else config.others()
    params["weights"] = [float(value(m.parameters.get("weight", config.parameters.get("weight", 1.0)), "weight")) for m in contributors]
    params["densities"] = [float(value(m.parameters.get("density", config.parameters.get("density", 1.0)), "density")) for m in contributors]
    return params


def _layout(jobs_spec, shard_size: int):
    """Assign tensors to shards in name order and compute headers and byte offsets."""
    groups: list[list] = [[]]
    current = 0
    for spec in jobs_spec:
        nbytes = _nbytes(spec[2][0].shape, spec[4])
        if groups[-1] and current + nbytes > shard_size:
            groups.append([])
            current = 0
        groups[-1].append((spec, nbytes))
        current += nbytes
    count = len(groups)
    names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    jobs, headers, sizes = [], [], []
    for shard, group in enumerate(groups):
        entries, offset = {"__metadata__": {"format": "pt"}}, 0
        for (name, _m, sources, _p, out_dtype), nbytes in group:
            entries[name] = {"dtype": out_dtype, "shape": list(sources[0].shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header = json.dumps(entries, separators=(",", ":")).encode()
        header += b" " * (-(8 + len(header)) % 8)
        prefix = struct.pack("<Q", len(header)) + header
        headers.append(prefix)
        sizes.append(len(prefix) + offset)
        offset = 0
        for (name, method, sources, params, out_dtype), nbytes in group:
            jobs.append(TensorJob(name, method, sources, params, out_dtype, shard, len(prefix) + offset, nbytes))
            offset += nbytes
    return jobs, names, headers, sizes


def _nbytes(shape, dtype: str) -> int:
    count = 1
    for d in shape:
        count *= d
    return count * DTYPE_SIZES[dtype]


def format_plan(plan: MergePlan) -> str:
    """The dry run: one line per tensor with method, t (or weights), sources and output shard."""
    lines = [f"# {plan.config.method} of {', '.join(str(p) for p in plan.config.parents)}; {plan.num_layers} layers; "
             f"{len(plan.jobs)} tensors, {plan.total_bytes / 1e9:.3f} GB out in {len(plan.shard_names)} shard(s)"]
    for job in plan.jobs:
        if "t" in job.params:
            what = f"t={job.params['t']:.6g}"
        else:
            what = "w=" + ",".join(f"{w:g}" for w in job.params.get("weights", [])) + " d=" + ",".join(f"{d:g}" for d in job.params.get("densities", []))
        srcs = " + ".join(f"{s.file.parent.name}/{s.file.name}" for s in job.sources)
        lines.append(f"{job.name}\t{job.method}\t{what}\t{srcs}\t-> {plan.shard_names[job.shard]}")
    return "\n".join(lines)
