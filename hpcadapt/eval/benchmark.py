"""Benchmark and held-out text files: reading and validating them.

Every check happens here, before any model is loaded, so a typo in line 812 of a
user's benchmark costs a second rather than a model load. Errors name the file and
the line, and say what was expected.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

from hpcadapt.errors import HpcadaptError

LETTERS = string.ascii_uppercase
TRUE_FALSE = ("True", "False")


class BenchmarkError(HpcadaptError, ValueError):
    """A benchmark or held-out file that cannot be scored as written."""


@dataclass(frozen=True)
class Question:
    """One benchmark question. True/false questions carry choices ("True", "False")."""

    id: str
    set_name: str
    question: str
    choices: tuple[str, ...]
    answer: str  # a letter for multiple choice, "True"/"False" for true/false
    category: str
    kind: str  # "mc" or "tf"

    @property
    def gold_index(self) -> int:
        """Index of the correct entry in `choices`."""
        if self.kind == "tf":
            return TRUE_FALSE.index(self.answer)
        return LETTERS.index(self.answer)

    @property
    def labels(self) -> tuple[str, ...]:
        """What a reply is mapped to: letters for multiple choice, True/False otherwise."""
        return TRUE_FALSE if self.kind == "tf" else tuple(LETTERS[: len(self.choices)])


@dataclass
class BenchmarkSet:
    """The questions of one file; its name (the file's stem) labels it in every table."""

    name: str
    path: Path
    questions: list[Question] = field(default_factory=list)


def load_benchmarks(files: list[str | Path]) -> list[BenchmarkSet]:
    """Read and validate several benchmark files; ids must be unique within each file.

    Two files with the same stem get a numeric suffix so that tables stay unambiguous.
    """
    if not files:
        raise BenchmarkError("no benchmark files given: expected at least one JSONL file")
    sets: list[BenchmarkSet] = []
    used_names: set[str] = set()
    for file in files:
        path = Path(file)
        name = path.stem
        suffix = 2
        while name in used_names:
            name, suffix = f"{path.stem}_{suffix}", suffix + 1
        used_names.add(name)
        sets.append(BenchmarkSet(name=name, path=path, questions=read_benchmark_file(path, name)))
    return sets


def read_benchmark_file(path: str | Path, set_name: str | None = None) -> list[Question]:
    """Parse one benchmark JSONL file into questions, raising BenchmarkError on bad rows."""
    path = Path(path)
    set_name = set_name or path.stem
    if not path.is_file():
        raise BenchmarkError(f"{path}: benchmark file not found")
    questions: list[Question] = []
    seen_ids: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkError(f"{where}: not valid JSON ({exc.msg})") from None
            question = _question_from_row(row, where, set_name)
            if question.id in seen_ids:
                raise BenchmarkError(
                    f"{where}: duplicate id {question.id!r} (first seen on line {seen_ids[question.id]})"
                )
            seen_ids[question.id] = line_no
            questions.append(question)
    if not questions:
        raise BenchmarkError(f"{path}: empty benchmark file, expected one JSON object per line")
    return questions


def _question_from_row(row: object, where: str, set_name: str) -> Question:
    if not isinstance(row, dict):
        raise BenchmarkError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("id", "question"):
        if key not in row:
            raise BenchmarkError(f"{where}: missing required key {key!r}")
    if "answer" not in row or row["answer"] is None or row["answer"] == "":
        raise BenchmarkError(f"{where}: missing 'answer' (a letter for multiple choice, True/False otherwise)")
    qid, text = str(row["id"]), row["question"]
    if not isinstance(text, str) or not text.strip():
        raise BenchmarkError(f"{where}: 'question' must be a non-empty string")
    category = str(row.get("category") or "all")
    answer = row["answer"]
    choices = row.get("choices")
    if choices is None:
        return Question(qid, set_name, text, TRUE_FALSE, _true_false(answer, where), category, "tf")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise BenchmarkError(f"{where}: 'choices' must be a list of at least two strings")
    if len(choices) > len(LETTERS):
        raise BenchmarkError(f"{where}: {len(choices)} choices, at most {len(LETTERS)} (A..Z) supported")
    letters = LETTERS[: len(choices)]
    letter = str(answer).strip().upper()
    if len(letter) != 1 or letter not in letters:
        raise BenchmarkError(
            f"{where}: answer {answer!r} is not among its choices: expected one letter of {', '.join(letters)}"
        )
    return Question(qid, set_name, text, tuple(choices), letter, category, "mc")


def _true_false(answer: object, where: str) -> str:
    if isinstance(answer, bool):
        return "True" if answer else "False"
    if isinstance(answer, str) and answer.strip().lower() in ("true", "false"):
        return answer.strip().capitalize()
    raise BenchmarkError(f"{where}: true/false answer must be True or False, got {answer!r}")


def read_heldout_texts(path: str | Path) -> list[str]:
    """Held-out domain text for perplexity: JSONL rows `{"text": str}`."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{path}: held-out text file not found")
    texts: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise BenchmarkError(f"{path}:{line_no}: expected an object with a string 'text'")
            if row["text"].strip():
                texts.append(row["text"])
    if not texts:
        raise BenchmarkError(f"{path}: empty held-out file, expected rows {{\"text\": ...}}")
    return texts
