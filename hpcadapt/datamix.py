"""Dataset mixes: check them cheaply before anything runs, then load them for a stage.

`check_source` runs in the driver (and on a Slurm login node), so it reads files with
the standard library only and reports the first bad row by file and line number.
`load_mix` runs inside a stage process and returns one shuffled `datasets.Dataset`
holding only the columns the stage's trainer needs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpcadapt.errors import DataError
from hpcadapt.stages import kinds

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def is_local(path: str) -> bool:
    """A path we should find on disk, as opposed to a hub dataset id like `org/name`."""
    p = Path(path)
    return p.exists() or p.suffix in LOCAL_SUFFIXES or path.startswith((".", "/", "~"))


def check_source(path: str, kind: str, where: str) -> int:
    """Validate one source for a stage of `kind`; return its row count (-1 if unknown).

    `where` is the config key (e.g. `data.mixes.sft.sources[0]`) so errors point at it.
    """
    fields = kinds.get(kind).data_fields
    if not is_local(path):
        return -1  # a hub id: checked when the stage loads it (needs network or a cache)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{where}: data file {p} does not exist (a {kind} stage needs rows with {_fields(fields)})")
    if p.is_dir():
        return _check_saved_dataset(p, fields, kind, where)
    if p.suffix == ".parquet":
        return _check_parquet(p, fields, kind, where)
    if p.suffix == ".json":
        rows = json.loads(p.read_text())
        if not isinstance(rows, list):
            raise DataError(f"{p}: expected a JSON list of objects, got {type(rows).__name__} ({where})")
        for i, row in enumerate(rows):
            _check_row(row, fields, kind, f"{p}: item {i}")
        count = len(rows)
    else:
        count = 0
        with p.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}:{lineno}: not valid JSON ({e.msg}); each line must be one object") from None
                _check_row(row, fields, kind, f"{p}:{lineno}")
                count += 1
    if count == 0:
        raise DataError(f"{p} is empty ({where}); a {kind} stage needs at least one row with {_fields(fields)}")
    return count


def _fields(fields: Iterable[str]) -> str:
    return ", ".join(f"'{f}'" for f in fields)


def _check_row(row: Any, fields: tuple[str, ...], kind: str, at: str) -> None:
    if not isinstance(row, dict):
        raise DataError(f"{at}: expected a JSON object, got {type(row).__name__}")
    for name in fields:
        if name not in row or row[name] in (None, "", []):
            raise DataError(f"{at}: missing field '{name}', which the {kind} stage needs ({_fields(fields)})")
        value = row[name]
        if name == "text" and not isinstance(value, str):
            raise DataError(f"{at}: field 'text' must be a string")
        if name == "messages" or (name in ("prompt", "chosen", "rejected") and not isinstance(value, str)):
            _check_messages(value, f"{at}: field '{name}'")


def _check_messages(value: Any, at: str) -> None:
    if not isinstance(value, list):
        raise DataError(f"{at} must be a string or a list of {{'role', 'content'}} messages")
    for j, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise DataError(f"{at}[{j}] must be an object with 'role' and 'content'")
        if msg["role"] not in ("system", "user", "assistant", "tool"):
            raise DataError(f"{at}[{j}]: unknown role {msg['role']!r}")


def _check_parquet(p: Path, fields: tuple[str, ...], kind: str, where: str) -> int:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(p)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise DataError(f"{p}: not a readable Parquet file ({e}) ({where})") from None
    missing = [f for f in fields if f not in meta.schema_arrow.names]
    if missing:
        raise DataError(f"{p}: columns {_fields(missing)} missing; a {kind} stage needs {_fields(fields)} ({where})")
    rows = meta.metadata.num_rows
    if rows == 0:
        raise DataError(f"{p} is empty ({where})")
    return rows


def _check_saved_dataset(p: Path, fields: tuple[str, ...], kind: str, where: str) -> int:
    info_file = next(iter(sorted(p.glob("**/dataset_info.json"))), None)
    if info_file is None:
        raise DataError(f"{p} is a folder but not a saved HF dataset (no dataset_info.json) ({where})")
    features = json.loads(info_file.read_text()).get("features") or {}
    missing = [f for f in fields if f not in features]
    if missing:
        raise DataError(f"{p}: columns {_fields(missing)} missing; a {kind} stage needs {_fields(fields)} ({where})")
    return -1


def load_mix(sources: list[dict], kind: str, seed: int):
    """Load, weight, concatenate and shuffle a mix's sources into one Dataset."""
    import datasets

    fields = list(kinds.get(kind).data_fields)
    parts = []
    for src in sources:
        ds = _load_source(src)
        missing = [f for f in fields if f not in ds.column_names]
        if missing:
            raise DataError(f"{src['path']}: columns {_fields(missing)} missing; a {kind} stage needs "
                            f"{_fields(fields)}")
        ds = ds.select_columns(fields)
        parts.append(_apply_weight(ds, float(src.get("weight", 1.0)), seed))
    mixed = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(mixed) == 0:
        raise DataError(f"the {kind} mix is empty after weighting ({[s['path'] for s in sources]})")
    return mixed.shuffle(seed=seed)


def _load_source(src: dict):
    import datasets

    path = src["path"]
    p = Path(path).expanduser()
    if p.is_dir():
        ds = datasets.load_from_disk(str(p))
        return ds[src.get("split", "train")] if isinstance(ds, datasets.DatasetDict) else ds
    if p.suffix in (".jsonl", ".json"):
        return datasets.load_dataset("json", data_files=str(p), split="train")
    if p.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(p), split="train")
    return datasets.load_dataset(path, src.get("subset"), split=src.get("split", "train"), revision=src.get("revision"))


def _apply_weight(ds, weight: float, seed: int):
    """Whole copies for the integer part of `weight`, a seeded sample for the rest."""
    import datasets

    whole = math.floor(weight)
    frac_rows = round((weight - whole) * len(ds))
    parts = [ds] * whole
    if frac_rows:
        parts.append(ds.shuffle(seed=seed).select(range(frac_rows)))
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
