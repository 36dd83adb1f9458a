"""Reading safetensors checkpoints without loading them: headers, index, validation.

Everything the merge needs to know before touching a weight — names, shapes, dtypes,
byte ranges — is in the 8-byte length prefix and JSON header of each shard. We parse
those ourselves so that a malformed or truncated file is refused by file and tensor
name before any tensor is merged, as the `safetensors` library itself would refuse it
(duplicate names, metadata that is not a string map, byte ranges that overlap, leave
gaps, do not match shape x dtype or do not cover the data), and so that no pickle is
ever opened.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}
FLOAT_DTYPES = {"BF16", "F16", "F32", "F64"}
CONFIG_DTYPE_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}
_MAX_HEADER = 100 * 1024 * 1024
SAMPLE_BYTES = 4096  # per sampled block of the resume check


class CheckpointError(ValueError):
    """A checkpoint that cannot be merged as it stands; the message names file and tensor."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def rows(self, start: int, stop: int) -> TensorInfo:
        """Rows [start, stop) of the first dimension, as a tensor of its own (a contiguous byte range)."""
        row_bytes = self.nbytes // self.shape[0] if self.shape and self.shape[0] else 0
        return TensorInfo(self.name, self.dtype, (stop - start, *self.shape[1:]), self.file,
                          self.offset + start * row_bytes, (stop - start) * row_bytes)


@dataclass
class Checkpoint:
    """A model folder: its tensors by name, its config.json, and where it lives."""

    path: Path
    tensors: dict[str, TensorInfo]
    config: dict
    header_digests: dict[str, str] = field(default_factory=dict)  # shard file name -> sha256 of its header

    @property
    def num_layers(self) -> int:
        return layer_count(self.config, self.path / "config.json")


def layer_count(config: dict, config_file: Path) -> int:
    """The decoder layer count a model's config.json gives (a multimodal config's text_config
    too): what a t schedule is spread over. The toolkit reads it here as well."""
    layers = config.get("num_hidden_layers") or config.get("text_config", {}).get("num_hidden_layers")
    if not isinstance(layers, int):
        raise CheckpointError(f"{config_file}: no integer 'num_hidden_layers'; the layer count of the t schedule "
                              "comes from it")
    return layers


def open_checkpoint(path: Path) -> Checkpoint:
    """Read config.json and every shard header of a model folder, checking them all."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: model folder does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: missing; the merge needs the model's config.json")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_file}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: not a JSON object")
    digests: dict[str, str] = {}
    return Checkpoint(path=path, tensors=_read_tensors(path, digests), config=config, header_digests=digests)


def _read_tensors(path: Path, digests: dict[str, str]) -> dict[str, TensorInfo]:
    index_file = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index_file.is_file():
        try:
            index = json.loads(index_file.read_text(), object_pairs_hook=_unique_keys(index_file))
            weight_map = index["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index_file}: not a safetensors index with a 'weight_map' ({error})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index_file}: 'weight_map' must map tensor names to shard file names")
        tensors: dict[str, TensorInfo] = {}
        for shard_name in sorted(set(weight_map.values())):
            shard = path / shard_name
            if Path(shard_name).name != shard_name:
                raise CheckpointError(f"{index_file}: shard {shard_name!r} is not a file name inside the model folder")
            if not shard.is_file():
                missing = sorted(k for k, v in weight_map.items() if v == shard_name)[:3]
                raise CheckpointError(f"{shard}: listed in {index_file.name} (for {', '.join(missing)}...) but missing")
            found, digests[shard_name] = read_header(shard, with_digest=True)
            for name, info in found.items():
                if name in tensors:
                    raise CheckpointError(f"{shard}: duplicate tensor name {name!r}: "
                                          f"it is also in {tensors[name].file.name}")
                tensors[name] = info
        for name, shard_name in weight_map.items():
            if name not in tensors or tensors[name].file.name != shard_name:
                raise CheckpointError(f"{index_file}: tensor {name!r} is mapped to {shard_name} "
                                      "but that shard does not contain it")
        for name, info in tensors.items():
            if name not in weight_map:
                raise CheckpointError(f"{index_file}: tensor {name!r} is in {info.file.name} but has no index entry")
        return tensors
    if single.is_file():
        tensors, digests[single.name] = read_header(single, with_digest=True)
        return tensors
    pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    if pickles:
        raise CheckpointError(
            f"{path}: only pickled weights ({', '.join(pickles[:3])}); "
            "they are never loaded here because unpickling runs code. "
            "Convert them once to safetensors in a trusted environment, e.g. "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)"
        )
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _unique_keys(source: Path):
    """A json object_pairs_hook that refuses duplicate keys (json.loads would keep the last)."""

    def hook(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                tensor_level = source.suffix == ".safetensors" and key not in ("dtype", "shape", "data_offsets")
                raise CheckpointError(f"{source}: duplicate tensor name {key!r} in the header" if tensor_level
                                      else f"{source}: duplicate key {key!r}")
            seen[key] = value
        return seen

    return hook


def read_header(shard: Path, with_digest: bool = False):
    """Tensor table of one .safetensors file, checked as safetensors checks it: the byte ranges
    must tile the data section exactly (from 0, no gap, no overlap, to the end of the file),
    each matching its shape x dtype. With `with_digest`, also the sha256 of the header bytes."""
    size = shard.stat().st_size
    with open(shard, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{shard}: corrupt safetensors header "
                                  f"(file is {size} bytes, shorter than the length prefix)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{shard}: corrupt safetensors header "
                                  f"(declared length {header_len} exceeds the file)")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys(shard))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{shard}: corrupt safetensors header (not JSON: {error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{shard}: corrupt safetensors header (not a JSON object)")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        bad = (next((k for k, v in metadata.items() if not isinstance(v, str)), None)
               if isinstance(metadata, dict) else None)
        what = (f"key {bad!r} has a {type(metadata[bad]).__name__} value" if bad is not None
                else f"it is a {type(metadata).__name__}")
        raise CheckpointError(f"{shard}: header __metadata__ must map strings to strings, but {what}")
    data_start = 8 + header_len
    tensors = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = info = _entry(shard, name, entry, data_start)
        spans.append((info.offset - data_start, info.offset - data_start + info.nbytes, name))
    _check_tiling(shard, spans, data_start, size)
    if with_digest:
        return tensors, hashlib.sha256(prefix + raw).hexdigest()
    return tensors


def _entry(shard: Path, name: str, entry, data_start: int) -> TensorInfo:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{shard}: corrupt safetensors header entry for tensor {name!r}: {why}")

    if not isinstance(entry, dict) or set(entry) - {"dtype", "shape", "data_offsets"} or len(entry) != 3:
        raise bad(f"expected exactly dtype, shape and data_offsets, got {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise bad(f"dtype {dtype!r} is not a string")
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{shard}: tensor {name!r} has unsupported dtype {dtype}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
        raise bad(f"data_offsets {offsets!r} is not a pair of non-negative integers")
    begin, end = offsets
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end < begin or end - begin != expected:
        raise CheckpointError(f"{shard}: tensor {name!r} data_offsets [{begin}, {end}] span {end - begin} bytes "
                              f"but {dtype}{list(shape)} needs {expected}")
    return TensorInfo(name, dtype, tuple(shape), shard, data_start + begin, expected)


def _check_tiling(shard: Path, spans: list, data_start: int, size: int) -> None:
    """Byte ranges must follow each other from 0 to the end of the file (safetensors' rule)."""
    data_size = size - data_start
    ordered = sorted(spans, key=lambda s: (s[0], s[1]))
    for (_, end_a, name_a), (begin, end, name) in zip(ordered, ordered[1:]):  # overlaps first: the worse fault
        if begin < end_a:
            raise CheckpointError(f"{shard}: tensor {name!r} data_offsets [{begin}, {end}] overlap tensor {name_a!r} "
                                  f"(which ends at {end_a})")
    position, previous = 0, None
    for begin, end, name in ordered:
        if begin > position:
            after = f"after tensor {previous!r}" if previous else "at the start of the data"
            raise CheckpointError(f"{shard}: gap of {begin - position} bytes {after}, before tensor {name!r} "
                                  f"(data_offsets [{begin}, {end}])")
        position, previous = end, name
    if position > data_size:
        raise CheckpointError(f"{shard}: truncated — tensor {previous!r} ends at byte {data_start + position} "
                              f"but the file has {size} bytes")
    if position < data_size:
        raise CheckpointError(f"{shard}: {data_size - position} bytes after the last tensor ({previous!r}) "
                              "are not covered by any tensor's data_offsets")


def file_identity(path: Path, tensors: list[TensorInfo] | None = None) -> list:
    """What must match for a resumed run to read the same input: size, and a digest of the file's
    sampled content — the whole file when small (config, tokenizer), else the header plus the first,
    middle and last SAMPLE_BYTES of every tensor in it. Modification times are not trusted: a file
    rewritten with its old mtime restored is still noticed (unless it differs only between samples)."""
    stat = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if not tensors or stat.st_size <= 1 << 20:
            digest.update(handle.read())
        else:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            digest.update(handle.read(header_len))
            for info in sorted(tensors, key=lambda t: t.offset):
                for start in sorted({info.offset, info.offset + max(0, info.nbytes // 2 - SAMPLE_BYTES // 2),
                                     info.offset + max(0, info.nbytes - SAMPLE_BYTES)}):
                    handle.seek(start)
                    digest.update(handle.read(min(SAMPLE_BYTES, info.nbytes)))
    return [str(path), stat.st_size, digest.hexdigest()]
