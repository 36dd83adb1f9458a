"""What will be merged, from where, to where — decided and checked before any math.

The plan is complete before the first tensor is touched: every parent is opened
and cross-checked (tensor sets, shapes, dtypes, vocabularies, tokenizers, layer
counts, filters), every tensor gets its method parameters, and every output
tensor gets its shard and byte offset. Because safetensors headers depend only on
names, dtypes and shapes, the output headers are written before any data exists,
which is what lets workers write their tensors in place and in any order.

Parameters resolve as mergekit 0.1.5 resolves them: a model's own `parameters`, then
the slice's, then the top-level ones, the first that yields a value for the tensor
winning (a filter list that matches nothing falls through), then mergekit's default.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import methods
from .checkpoint import (
    CONFIG_DTYPE_NAMES,
    DTYPE_SIZES,
    FLOAT_DTYPES,
    Checkpoint,
    CheckpointError,
    TensorInfo,
    open_checkpoint,
)
from .config import ConfigError, MergeConfig, ModelSpec
from .schedule import depth_position, filters_of, resolve_value
from .tokenizer import compare_tokenizers

DEFAULT_SHARD_SIZE = 5_000_000_000
_VOCAB_HINTS = ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings")


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: how to compute it and where its bytes go."""

    name: str
    method: str
    sources: tuple[TensorInfo, ...]  # base first (when the method has one), then the others; the merged rows
    params: dict[str, Any]  # resolved scalars: t, or weights/densities per source, lambda, ...
    out_dtype: str
    shard: int
    out_offset: int  # absolute byte offset in the output shard
    out_nbytes: int
    shape: tuple[int, ...] = ()  # of the output (more rows than the sources when `tail` is set)
    tail: TensorInfo | None = None  # rows appended by one parent's grown vocabulary, copied after the merged rows

    @property
    def numel(self) -> int:
        """Elements computed by the method (the tail is copied)."""
        return self.sources[0].numel


@dataclass(frozen=True)
class VocabUnion:
    """tokenizer_source: union, for parents whose vocabularies differ only by appended tokens."""

    rows: int  # N: the rows every parent has (and merges)
    extra: int  # k: rows [N, N + k) exist in the larger parents only and are copied from `donor`
    donor: Path  # the first parent (in source order) with the larger vocabulary: tokenizer and rows come from it
    added_tokens: tuple[str, ...]


@dataclass
class MergePlan:
    config: MergeConfig
    checkpoints: dict[Path, Checkpoint]
    num_layers: int
    jobs: list[TensorJob]
    shard_names: list[str]
    shard_headers: list[bytes] = field(repr=False)
    shard_sizes: list[int]
    vocab: VocabUnion | None = None
    options: dict[str, Any] = field(default_factory=dict)  # precise, random_seed, ...

    @property
    def total_bytes(self) -> int:
        return sum(job.out_nbytes for job in self.jobs)

    @property
    def read_bytes(self) -> int:
        return sum(s.nbytes for job in self.jobs for s in job.sources) + sum(j.tail.nbytes for j in self.jobs if j.tail)


def build_plan(config: MergeConfig, shard_size: int = DEFAULT_SHARD_SIZE, *, precise: bool = False,
               mergekit_sort: bool = False, random_seed: int = 0) -> MergePlan:
    checkpoints = {path: open_checkpoint(path) for path in config.parents}
    base = checkpoints[config.parents[0]]
    num_layers, vocab = _check_parents(config, checkpoints)
    _check_filters(config, base)
    method = methods.get(config.method)
    order = _source_order(config)
    jobs_spec = []
    for name in sorted(base.tensors):
        infos = [checkpoints[p].tensors[name] for p in order]
        tail = None
        if vocab is not None and _is_vocab_tensor(name, infos):
            tail = checkpoints[vocab.donor].tensors[name].rows(vocab.rows, vocab.rows + vocab.extra)
            infos = [info.rows(0, vocab.rows) for info in infos]
        sources = tuple(infos)
        out_dtype = _output_dtype(config, sources[0])
        params = _tensor_params(config, method, name, num_layers, sources[0].dtype)
        if "precise" in method.options:
            params["precise"] = precise
        if "mergekit_sort" in method.options and mergekit_sort:
            params["mergekit_sort"] = True
        job_method = config.method if sources[0].dtype in FLOAT_DTYPES else "copy"
        shape = (sources[0].shape[0] + tail.shape[0], *sources[0].shape[1:]) if tail else sources[0].shape
        jobs_spec.append((name, job_method, sources, params, out_dtype, shape, tail))
    jobs, names, headers, sizes = _layout(jobs_spec, shard_size)
    options = {"precise": precise if "precise" in method.options else None,
               "mergekit_sort": mergekit_sort if "mergekit_sort" in method.options else None,
               "random_seed": random_seed if method.random else None}
    return MergePlan(config, checkpoints, num_layers, jobs, names, headers, sizes, vocab, options)


def _source_order(config: MergeConfig) -> list[Path]:
    """Input folders in the order a job's sources are: the contributors, after the base when the method has one."""
    contributors = [m.path for m in config.contributors()]
    return contributors if methods.get(config.method).base is None else [config.base] + contributors


def _is_vocab_tensor(name: str, infos: list[TensorInfo]) -> bool:
    return any(h in name for h in _VOCAB_HINTS) and len({i.shape[0] for i in infos if i.shape}) > 1


def _check_parents(config: MergeConfig, checkpoints: dict[Path, Checkpoint]) -> tuple[int, VocabUnion | None]:
    base_path = config.parents[0]
    base = checkpoints[base_path]
    num_layers = base.num_layers
    for model in config.models:
        if model.layer_range is not None and tuple(model.layer_range) != (0, num_layers):
            raise ConfigError(
                f"model {model.path}: layer_range {list(model.layer_range)} must cover all {num_layers} layers "
                f"([0, {num_layers}]) — partial slices are layer surgery, not a merge"
            )
    hint = ("; if one parent only appended tokens (e.g. a pad token), set tokenizer_source: union to merge the "
            "common rows and copy the new ones from that parent")
    vocab_rows: dict[Path, int] = {}
    for path, other in checkpoints.items():
        if path == base_path:
            continue
        if other.num_layers != num_layers:
            raise CheckpointError(f"different layer counts: {base_path} has {num_layers} layers, "
                                  f"{path} has {other.num_layers} (num_hidden_layers)")
        vocab_a, vocab_b = base.config.get("vocab_size"), other.config.get("vocab_size")
        if vocab_a != vocab_b and not config.tokenizer_union:
            raise CheckpointError(f"differing vocabulary sizes: {base_path / 'config.json'} has vocab_size {vocab_a}, "
                                  f"{path / 'config.json'} has {vocab_b}; refusing to truncate{hint}")
        only_base = sorted(set(base.tensors) - set(other.tensors))
        only_other = sorted(set(other.tensors) - set(base.tensors))
        if only_base or only_other:
            name, holder, lacking = (only_base[0], base_path, path) if only_base else (only_other[0], path, base_path)
            raise CheckpointError(f"tensor {name!r} is in {holder} but not in {lacking} "
                                  f"({len(only_base) + len(only_other)} such tensors)")
        for name, a in base.tensors.items():
            b = other.tensors[name]
            if a.dtype != b.dtype:
                raise CheckpointError(f"dtype mismatch: tensor {name!r} is {a.dtype} in {a.file} "
                                      f"but {b.dtype} in {b.file}")
            if a.shape == b.shape:
                continue
            vocab_like = (any(h in name for h in _VOCAB_HINTS) and len(a.shape) == len(b.shape)
                          and a.shape[1:] == b.shape[1:])
            if not vocab_like:
                raise CheckpointError(f"shape mismatch: tensor {name!r} is {list(a.shape)} in {a.file} "
                                      f"but {list(b.shape)} in {b.file}")
            if not config.tokenizer_union:
                raise CheckpointError(f"differing vocabulary sizes: tensor {name!r} is {list(a.shape)} in {a.file} but "
                                      f"{list(b.shape)} in {b.file}{hint}")
            vocab_rows.setdefault(base_path, a.shape[0])
            vocab_rows.setdefault(path, b.shape[0])
    if not vocab_rows:
        compare_tokenizers(list(checkpoints), appended=False)
        return num_layers, None
    return num_layers, _vocab_union(config, checkpoints, vocab_rows)


def _vocab_union(config: MergeConfig, checkpoints: dict[Path, Checkpoint], seen: dict[Path, int]) -> VocabUnion:
    """Check that the parents' vocabularies differ only by tokens appended to a common prefix."""
    rows = {}
    for path, checkpoint in checkpoints.items():
        counts = {info.shape[0] for name, info in checkpoint.tensors.items()
                  if any(h in name for h in _VOCAB_HINTS) and info.shape}
        if len(counts) != 1:
            raise CheckpointError(f"{path}: its vocabulary tensors disagree on the vocabulary size "
                                  f"({sorted(counts)} rows)")
        rows[path] = counts.pop()
        declared = checkpoint.config.get("vocab_size")
        if declared is not None and declared != rows[path]:
            raise CheckpointError(f"{path / 'config.json'}: vocab_size {declared} "
                                  f"but its embeddings have {rows[path]} rows")
    sizes = sorted(set(rows.values()))
    if len(sizes) != 2:
        listing = ", ".join(f"{p} has {n}" for p, n in rows.items())
        raise CheckpointError("tokenizer_source: union merges parents with two vocabulary sizes "
                              f"(one grown by appended tokens); {listing} rows")
    small, large = sizes
    match = compare_tokenizers(_source_order(config), sizes=rows)
    return VocabUnion(rows=small, extra=large - small, donor=match.donor, added_tokens=match.added_tokens)


def _check_filters(config: MergeConfig, base: Checkpoint) -> None:
    specs = [("parameters." + key, spec) for key, spec in config.parameters.items()]
    specs += [("slices[0].parameters." + key, spec) for key, spec in config.slice_parameters.items()]
    specs += [(f"{m.path.name}.parameters.{key}", spec) for m in config.models for key, spec in m.parameters.items()]
    for where, spec in specs:
        for pattern in filters_of(spec):
            if pattern is not None and pattern != "*" and not any(pattern in name for name in base.tensors):
                raise ConfigError(f"{where}: filter {pattern!r} matches no tensor of {base.path} "
                                  f"(e.g. {next(iter(sorted(base.tensors)))!r})")


def _output_dtype(config: MergeConfig, source: TensorInfo) -> str:
    if source.dtype not in FLOAT_DTYPES:
        return source.dtype
    chosen = config.out_dtype or config.dtype
    return CONFIG_DTYPE_NAMES[chosen] if chosen else source.dtype


def resolve_parameter(config: MergeConfig, name: str, parameter: methods.Parameter, position: float,
                      model: ModelSpec | None = None) -> Any:
    """mergekit's precedence: the model's own setting, the slice's, the top level's; a setting whose
    filters match nothing falls through to the next; then the method's default."""
    key = parameter.name
    scopes = ([model.parameters] if model is not None else []) + [config.slice_parameters, config.parameters]
    for scope in scopes:
        if key in scope:
            try:
                value = resolve_value(name, scope[key], position)
            except ValueError as error:
                raise ConfigError(f"parameter {key!r}: {error}") from None
            if value is not None:
                return _typed(parameter, value)
    if parameter.default is None:
        where = f"{model.path.name}.{name}" if model is not None else name
        raise ConfigError(f"parameter {key!r}: nothing gives a value for {where} "
                          f"and {config.method} has no default for it")
    return parameter.default


def _typed(parameter: methods.Parameter, value: Any) -> Any:
    key = parameter.name
    if parameter.boolean:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, (bool, int, float)):
            raise ConfigError(f"parameter {key!r}: {value!r} is not a boolean")
        return bool(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"parameter {key!r}: {value!r} is not a number")
    return float(value)


def _tensor_params(config: MergeConfig, method: methods.MergeMethod, name: str, num_layers: int,
                   source_dtype: str) -> dict[str, Any]:
    """The job's parameters for tensor `name`: the recipe's dtype, then each parameter of the method
    resolved at the tensor's depth (per-model ones as a list over the contributors)."""
    position = depth_position(name, num_layers)
    dtype = CONFIG_DTYPE_NAMES[config.dtype] if config.dtype else source_dtype  # inputs are cast to it before merging
    params: dict[str, Any] = {"dtype": dtype}
    contributors = config.contributors(method)
    for parameter in method.parameters:
        if not parameter.per_model:
            value = params[parameter.key] = resolve_parameter(config, name, parameter, position)
            if not parameter.accepts(value):
                raise ConfigError(f"{parameter.name} = {value} for tensor {name!r} is outside {parameter.interval}")
            continue
        values = params[parameter.key] = [resolve_parameter(config, name, parameter, position, m) for m in contributors]
        for model, value in zip(contributors, values):
            if not parameter.accepts(value):
                raise ConfigError(f"model {model.path}: {parameter.name} {value} for tensor {name!r} "
                                  f"is outside {parameter.interval}")
    return params


def _layout(jobs_spec, shard_size: int):
    """Assign tensors to shards in name order and compute headers and byte offsets."""
    groups: list[list] = [[]]
    current = 0
    for spec in jobs_spec:
        nbytes = _nbytes(spec[5], spec[4])
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
        for (name, _m, _s, _p, out_dtype, shape, _t), nbytes in group:
            entries[name] = {"dtype": out_dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header = json.dumps(entries, separators=(",", ":")).encode()
        header += b" " * (-(8 + len(header)) % 8)
        prefix = struct.pack("<Q", len(header)) + header
        headers.append(prefix)
        sizes.append(len(prefix) + offset)
        offset = 0
        for (name, method, sources, params, out_dtype, shape, tail), nbytes in group:
            jobs.append(TensorJob(name, method, sources, params, out_dtype, shard, len(prefix) + offset, nbytes,
                                  tuple(shape), tail))
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
    if plan.vocab:
        lines.append(f"# tokenizer_source: union — rows [0, {plan.vocab.rows}) merged, rows [{plan.vocab.rows}, "
                     f"{plan.vocab.rows + plan.vocab.extra}) copied from {plan.vocab.donor.name} "
                     f"({', '.join(plan.vocab.added_tokens)})")
    for job in plan.jobs:
        if "t" in job.params:
            what = f"t={job.params['t']:.6g}"
        else:
            what = "w=" + ",".join(f"{w:g}" for w in job.params.get("weights", []))
            if "densities" in job.params:
                what += " d=" + ",".join(f"{d:g}" for d in job.params["densities"])
        srcs = " + ".join(f"{s.file.parent.name}/{s.file.name}" for s in job.sources)
        if job.tail is not None:
            srcs += f" (+{job.tail.shape[0]} rows from {job.tail.file.parent.name})"
        lines.append(f"{job.name}\t{job.method}\t{what}\t{srcs}\t-> {plan.shard_names[job.shard]}")
    return "\n".join(lines)
