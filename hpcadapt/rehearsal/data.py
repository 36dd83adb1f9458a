"""Small local stand-ins for every dataset an experiment names, in the same files and fields.

A rehearsal (`scale=rehearsal`) keeps the experiment's data mixes as they are: the same
source files (under `data_root`), the same weights, the same benchmark and held-out
files. Only the contents are replaced by a few rows of the same shape, taken from the
demo's fictional alloy domain (hpcadapt/demo/domain.py), with the traits that break
real pipelines present on purpose:
- CPT documents several `max_length` windows long beside short ones;
- chats of three exchanges, half of them with a system message;
- conversational preference pairs, as the paper's mixes are after `hpcadapt.data fetch`.

Every file is written atomically and deterministically, so the stand-ins hash the same
on every run and re-running reuses the stages they fed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpcadapt.atomic import write_atomic
from hpcadapt.config import ConfigError
from hpcadapt.demo.domain import DomainFiles, generate_domain, read_jsonl
from hpcadapt.stages import kinds

ROWS_PER_SOURCE = 12
QUESTIONS_PER_SET = 8
LONG_DOCUMENT_WORDS = 700  # several windows of the rehearsal's max_length


def write_standin_data(cfg: Any) -> list[Path]:
    """Write a stand-in for every local data file under `cfg.data_root` that the config names.

    Files outside `data_root` (a user's own) are left alone. Returns the files written or
    confirmed.
    """
    root = Path(cfg.data_root).expanduser().resolve()
    domain = generate_domain(root / ".domain")
    written = []
    for mix_name, mix in cfg.data.mixes.items():
        users = {stage.kind for stage in cfg.stages.values() if stage.data == mix_name}
        for i, source in enumerate(mix.sources):
            path = Path(source.path).expanduser().resolve()
            if root not in path.parents:
                continue
            rows = rows_for(users, domain, seed=i)
            written.append(write_jsonl_atomic(path, rows))
    for i, bench in enumerate(cfg.data.benchmark):
        path = Path(bench).expanduser().resolve()
        if root in path.parents:
            source = domain.benchmarks[i % len(domain.benchmarks)]
            written.append(write_jsonl_atomic(path, read_jsonl(source)[:QUESTIONS_PER_SET]))
    if cfg.data.heldout and root in Path(cfg.data.heldout).expanduser().resolve().parents:
        path = Path(cfg.data.heldout).expanduser().resolve()
        written.append(write_jsonl_atomic(path, read_jsonl(domain.heldout_text)[:QUESTIONS_PER_SET]))
    return written


def rows_for(users: set[str], domain: DomainFiles, seed: int) -> list[dict[str, Any]]:
    """Rows with the fields that the stage kinds using the mix read (hpcadapt/stages/kinds.py)."""
    fields = {kinds.get(kind).data_fields for kind in users}
    if len(fields) > 1:
        raise ConfigError(f"a data mix feeds stages of kinds {sorted(users)}, which read different fields; "
                          f"give each kind its own mix")
    makers = {kinds.TEXT: documents, kinds.CONVERSATION: conversations, kinds.PREFERENCE: preference_pairs}
    return makers[fields.pop()](domain, seed) if fields else []


def documents(domain: DomainFiles, seed: int) -> list[dict[str, str]]:
    """Two long documents (many windows each) and short ones, from the domain's raw text."""
    texts = [row["text"] for row in read_jsonl(domain.domain_text)]
    texts = texts[seed:] + texts[:seed]
    rows = []
    for start in (0, len(texts) // 2):
        words: list[str] = []
        for text in texts[start:] + texts[:start]:
            words += text.split()
            if len(words) >= LONG_DOCUMENT_WORDS:
                break
        rows.append({"text": " ".join(words)})
    rows += [{"text": text} for text in texts[: ROWS_PER_SOURCE - len(rows)]]
    return rows


def conversations(domain: DomainFiles, seed: int) -> list[dict[str, Any]]:
    """Chats of three exchanges (user/assistant x 3), every other one with a system message."""
    singles = [row["messages"] for row in read_jsonl(domain.domain_chat)]
    singles = singles[seed:] + singles[:seed]
    rows = []
    for i in range(ROWS_PER_SOURCE):
        turns = [message for single in singles[3 * i: 3 * i + 3] for message in single]
        if i % 2 == 0:
            turns = [{"role": "system", "content": "You are an expert in alloys. Answer briefly."}, *turns]
        rows.append({"messages": turns})
    return rows


def preference_pairs(domain: DomainFiles, seed: int) -> list[dict[str, Any]]:
    """Conversational prompt / chosen / rejected rows."""
    pairs = read_jsonl(domain.domain_prefs)
    pairs = pairs[seed:] + pairs[:seed]
    return pairs[:ROWS_PER_SOURCE]


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSONL unless the file already holds exactly these bytes."""
    data = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
    if not (path.is_file() and path.read_bytes() == data):
        write_atomic(path, data)
    return path
