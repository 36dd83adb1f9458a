"""Dataset mixes: check them cheaply before anything runs, then load them for a stage.

`check_source` runs in the driver (and on a Slurm login node), so it reads files with
the standard library (and pyarrow for Parquet) only and reports the first bad row by
file and line number.
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


def check_source(path: str, kind: str, where: str, revision: str | None = None) -> int:
    """Validate one source for a stage of `kind`; return its row count (-1 if unknown).

    `where` is the config key (e.g. `data.mixes.sft.sources[0]`) so errors point at it.
    Every row of a local file is checked, with the standard library and pyarrow only
    (no torch): bytes that are not UTF-8, JSON that does not parse, columns of the wrong
    type, null or non-string contents, conversations without an assistant reply,
    preference pairs whose answers are equal or of different shapes. The first problem
    is reported by file and line (JSON Lines, JSON) or row (Parquet).
    """
    fields = kinds.get(kind).data_fields
    if not is_local(path):
        check_hub_source(path, revision, where)
        return -1
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{where}: data file {p} does not exist (a {kind} stage needs rows with {_fields(fields)})")
    if p.is_dir():
        return _check_saved_dataset(p, fields, kind, where)
    if p.suffix == ".parquet":
        return _check_parquet(p, fields, kind, where)
    rows = RowChecker(fields, kind)
    if p.suffix == ".json":
        count = _check_json(p, rows, where)
    else:
        count = _check_jsonl(p, rows)
    if count == 0:
        raise DataError(f"{p} is empty ({where}); a {kind} stage needs at least one row with {_fields(fields)}")
    return count


def check_hub_source(repo_id: str, revision: str | None, where: str) -> None:
    """A hub dataset must be in the local cache at its pinned commit when the hub is offline
    (compute nodes usually are): otherwise the stage would fail to load it, much later."""
    from hpcadapt import hub

    if not hub.offline() or not revision:
        return
    snapshot = hub.cache_folder(repo_id, "dataset") / "snapshots" / revision
    if not snapshot.is_dir():
        raise DataError(
            f"{where}: hub dataset {repo_id}@{revision[:12]} is not in the local cache ({snapshot.parent}) and the hub "
            f"is offline (HF_HUB_OFFLINE=1). Prefetch it on a machine with network (`python -m hpcadapt.data fetch` "
            f"with the same overrides, or `huggingface-cli download --repo-type dataset {repo_id} --revision "
            f"{revision}`), or point the source at a local copy."
        )


def _check_jsonl(p: Path, rows: RowChecker) -> int:
    count = 0
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, p, lineno)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{lineno}: not valid JSON ({e.msg}, column {e.colno}); each line must be one "
                                f"object") from None
            rows.check(row, f"{p}:{lineno}")
            count += 1
    return count


def _check_json(p: Path, rows: RowChecker, where: str) -> int:
    """A JSON list of objects; JSON Lines in a `.json` file (which `datasets` also reads) too."""
    text = _decode(p.read_bytes(), p, None)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            return _check_jsonl(p, rows)
        raise DataError(f"{p}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}) ({where})") from None
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of objects, got {type(data).__name__} ({where})")
    for i, row in enumerate(data):
        rows.check(row, f"{p}: item {i}")
    return len(data)


def _decode(raw: bytes, p: Path, lineno: int | None) -> str:
    """UTF-8 text, or a DataError naming the line and column of the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if lineno is None:  # a whole file: find the line
            lineno = raw.count(b"\n", 0, e.start) + 1
            column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        else:
            column = e.start + 1
        raise DataError(f"{p}:{lineno}: byte 0x{raw[e.start]:02x} at column {column} is not UTF-8; save the file as "
                        f"UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _fields(fields: Iterable[str]) -> str:
    return ", ".join(f"'{f}'" for f in fields)


class RowChecker:
    """Checks rows one by one, remembering each field's shape (string or message list) from the
    first row: `datasets` needs one type per column, and TRL one format per dataset."""

    def __init__(self, fields: tuple[str, ...], kind: str) -> None:
        self.fields, self.kind = fields, kind
        self.shape: dict[str, tuple[str, str]] = {}  # field -> (shape, where it was first seen)

    def check(self, row: Any, at: str) -> None:
        _check_row(row, self.fields, self.kind, at)
        for name in self.fields:
            shape = "a string" if isinstance(row[name], str) else "a list of messages"
            first = self.shape.setdefault(name, (shape, at))
            if first[0] != shape:
                raise DataError(f"{at}: field '{name}' is {shape}, but {first[0]} at {first[1]}; a dataset holds one "
                                f"type per column, so use one format throughout")


def _check_row(row: Any, fields: tuple[str, ...], kind: str, at: str) -> None:
    if not isinstance(row, dict):
        raise DataError(f"{at}: expected a JSON object, got {type(row).__name__}")
    for name in fields:
        if name not in row or row[name] in (None, "", []):
            raise DataError(f"{at}: missing field '{name}', which the {kind} stage needs ({_fields(fields)})")
        value = row[name]
        if name == "text" and not isinstance(value, str):
            raise DataError(f"{at}: field 'text' must be a string, got {type(value).__name__}")
        if name == "messages" or (name in ("prompt", "chosen", "rejected") and not isinstance(value, str)):
            _check_messages(value, f"{at}: field '{name}'")
        if name == "messages" or (name in ("chosen", "rejected") and isinstance(value, list)):
            _require_reply(value, f"{at}: field '{name}'")
    if "chosen" in fields:
        _check_pair(row, at)


def _check_messages(value: Any, at: str) -> None:
    if not isinstance(value, list):
        raise DataError(f"{at} must be a string or a list of {{'role', 'content'}} messages")
    for j, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise DataError(f"{at}[{j}] must be an object with 'role' and 'content'")
        if msg["role"] not in ("system", "user", "assistant", "tool"):
            raise DataError(f"{at}[{j}]: unknown role {msg['role']!r}")
        if not isinstance(msg["content"], str):
            got = "null" if msg["content"] is None else type(msg["content"]).__name__
            raise DataError(f"{at}[{j}]: 'content' is {got}; it must be a string (the chat template renders text)")


def _require_reply(messages: list[dict], at: str) -> None:
    """A conversation trains on its assistant replies: without one there is nothing to learn."""
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError(f"{at} has no assistant reply with text; every conversation needs at least one (the loss "
                        f"covers only what the assistant says)")


def _check_pair(row: dict, at: str) -> None:
    """A preference pair: the prompt and both answers in one format, and answers that differ."""
    shapes = {name: isinstance(row[name], str) for name in ("prompt", "chosen", "rejected")}
    if len(set(shapes.values())) > 1:
        strings = [n for n, is_str in shapes.items() if is_str]
        lists = [n for n, is_str in shapes.items() if not is_str]
        raise DataError(f"{at}: {_fields(strings)} {'is a string' if len(strings) == 1 else 'are strings'} but "
                        f"{_fields(lists)} {'is a list' if len(lists) == 1 else 'are lists'} of messages; TRL "
                        f"needs all three as strings or all as message lists")
    if row["chosen"] == row["rejected"]:
        raise DataError(f"{at}: 'chosen' and 'rejected' are identical; the pair teaches the model nothing (remove it)")


# Arrow types a column may have: text columns strings, message columns lists of {role, content}.
_STRING_TYPES = ("string", "large_string", "string_view")


def _arrow_shape_problem(name: str, dtype: Any) -> str | None:
    """Why a Parquet/Arrow column cannot hold field `name` (None if it can)."""
    import pyarrow as pa

    is_string = str(dtype) in _STRING_TYPES
    if name == "text":
        return None if is_string else f"column 'text' is {dtype}; it must hold strings"
    is_messages = (pa.types.is_list(dtype) or pa.types.is_large_list(dtype)) and pa.types.is_struct(dtype.value_type)
    if is_messages:
        names = {f.name for f in dtype.value_type}
        if not {"role", "content"} <= names:
            return f"column '{name}' is {dtype}; its messages need 'role' and 'content'"
        content = dtype.value_type.field("content").type
        if str(content) not in _STRING_TYPES:
            return f"column '{name}' is {dtype}; each message's 'content' must be a string, not {content}"
        return None
    if name == "messages":
        return f"column 'messages' is {dtype}; it must be a list of {{role, content}} messages"
    return None if is_string else f"column '{name}' is {dtype}; it must hold strings or lists of messages"


def _check_parquet(p: Path, fields: tuple[str, ...], kind: str, where: str) -> int:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(p)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise DataError(f"{p}: not a readable Parquet file ({e}) ({where})") from None
    schema = meta.schema_arrow
    missing = [f for f in fields if f not in schema.names]
    if missing:
        raise DataError(f"{p}: columns {_fields(missing)} missing; a {kind} stage needs {_fields(fields)} ({where})")
    for name in fields:
        problem = _arrow_shape_problem(name, schema.field(name).type)
        if problem:
            raise DataError(f"{p}: {problem} (a {kind} stage; {where})")
    rows = meta.metadata.num_rows
    if rows == 0:
        raise DataError(f"{p} is empty ({where})")
    checker, index = RowChecker(fields, kind), 0
    for batch in meta.iter_batches(batch_size=4096, columns=list(fields)):
        for row in batch.to_pylist():
            checker.check(row, f"{p}: row {index}")
            index += 1
    return rows


def _check_saved_dataset(p: Path, fields: tuple[str, ...], kind: str, where: str) -> int:
    info_file = next(iter(sorted(p.glob("**/dataset_info.json"))), None)
    if info_file is None:
        raise DataError(f"{p} is a folder but not a saved HF dataset (no dataset_info.json) ({where})")
    features = json.loads(info_file.read_text()).get("features") or {}
    missing = [f for f in fields if f not in features]
    if missing:
        raise DataError(f"{p}: columns {_fields(missing)} missing; a {kind} stage needs {_fields(fields)} ({where})")
    text = features.get("text")
    if "text" in fields and isinstance(text, dict) and text.get("_type") == "Value" and text.get("dtype") != "string":
        raise DataError(f"{p}: column 'text' is {text.get('dtype')}; it must hold strings ({where})")
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
