"""Reading safetensors checkpoints without loading them: headers, index, validation.

Everything the merge needs to know before touching a weight — names, shapes, dtypes,
byte ranges — is in the 8-byte length prefix and JSON header of each shard. We parse
those ourselves so that a corrupt header or a truncated file is reported by file and
tensor name up front, and so that no pickle is ever opened.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}
FLOAT_DTYPES = {"BF16", "F16", "F32", "F64"}
CONFIG_DTYPE_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}
_MAX_HEADER = 100 * 1024 * 1024


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


@dataclass
class Checkpoint:
    """A model folder: its tensors by name, its config.json, and where it lives."""

    path: Path
    tensors: dict[str, TensorInfo]
    config: dict

    @property
    def num_layers(self) -> int:
        layers = self.config.get("num_hidden_layers") or self.config.get("text_config", {}).get("num_hidden_layers")
        if not isinstance(layers, int):
            raise CheckpointError(f"{self.path / 'config.json'}: no integer 'num_hidden_layers'; the layer count of the t schedule comes from it")
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
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_file}: not valid JSON ({error})") from None
    return Checkpoint(path=path, tensors=_read_tensors(path), config=config)


def _read_tensors(path: Path) -> dict[str, TensorInfo]:
    index_file = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index_file}: not a safetensors index with a 'weight_map' ({error})") from None
        tensors: dict[str, TensorInfo] = {}
        for shard_name in sorted(set(weight_map.values())):
            shard = path / shard_name
            if not shard.is_file():
                missing = sorted(k for k, v in weight_map.items() if v == shard_name)[:3]
                raise CheckpointError(f"{shard}: listed in {index_file.name} (for {', '.join(missing)}...) but missing")
            tensors.update(read_header(shard))
        for name, shard_name in weight_map.items():
            if name not in tensors or tensors[name].file.name != shard_name:
                raise CheckpointError(f"{index_file}: tensor {name!r} is mapped to {shard_name} but that shard does not contain it")
        for name, info in tensors.items():
            if name not in weight_map:
                raise CheckpointError(f"{index_file}: tensor {name!r} is in {info.file.name} but has no index entry")
        return tensors
    if single.is_file():
        return read_header(single)
    pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    if pickles:
        raise CheckpointError(
            f"{path}: only pickled weights ({', '.join(pickles[:3])}); they are never loaded here because unpickling runs code. "
            "Convert them once to safetensors in a trusted environment, e.g. "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)"
        )
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def read_header(shard: Path) -> dict[str, TensorInfo]:
    """Tensor table of one .safetensors file, with every byte range checked against the file."""
    size = shard.stat().st_size
    with open(shard, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{shard}: corrupt safetensors header (file is {size} bytes, shorter than the length prefix)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{shard}: corrupt safetensors header (declared length {header_len} exceeds the file)")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{shard}: corrupt safetensors header (not JSON: {error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{shard}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{shard}: corrupt safetensors header entry for tensor {name!r}: {entry!r}") from None
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{shard}: tensor {name!r} has unsupported dtype {dtype}")
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected or begin < 0:
            raise CheckpointError(f"{shard}: tensor {name!r} spans {end - begin} bytes but {dtype}{list(shape)} needs {expected}")
        if data_start + end > size:
            raise CheckpointError(
                f"{shard}: truncated — tensor {name!r} ends at byte {data_start + end} but the file has {size} bytes"
            )
        tensors[name] = TensorInfo(name, dtype, shape, shard, data_start + begin, expected)
    return tensors


def file_fingerprint(path: Path) -> list:
    """Size and modification time: enough to notice that an input changed between runs."""
    stat = os.stat(path)
    return [str(path), stat.st_size, stat.st_mtime_ns]
