"""Benchmark files: valid rows load; each kind of bad row fails naming file and line."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import write_jsonl

from hpcadapt.eval.benchmark import BenchmarkError, load_benchmarks, read_benchmark_file, read_heldout_texts

MC = {"id": "q1", "question": "Which is a metal?", "choices": ["wood", "iron"], "answer": "B", "category": "basic"}
TF = {"id": "q2", "question": "Iron rusts.", "answer": True}


def test_valid_rows_load_with_defaults(tmp_path):
    questions = read_benchmark_file(
        write_jsonl(tmp_path / "set.jsonl", [MC, TF, {**TF, "id": "q3", "answer": "false"}])
    )
    assert [(q.kind, q.answer, q.gold_index, q.category) for q in questions] == [
        ("mc", "B", 1, "basic"),
        ("tf", "True", 0, "all"),
        ("tf", "False", 1, "all"),
    ]
    assert questions[1].choices == ("True", "False")


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"id": "x", "question": "q?", "choices": ["a", "b"]}, "missing 'answer'"),
        ({"id": "x", "question": "q?", "choices": ["a", "b"], "answer": "C"}, "not among its choices"),
        ({"id": "x", "question": "q?", "choices": ["a", "b"], "answer": "a or b"}, "not among its choices"),
        ({"id": "x", "question": "q?", "answer": "maybe"}, "True or False"),
        ({"id": "x", "question": "q?", "choices": "ab", "answer": "A"}, "list of at least two strings"),
        ({"question": "q?", "answer": True}, "missing required key 'id'"),
        ({**MC, "id": "q1"}, "duplicate id 'q1' (first seen on line 1)"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path, bad_row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [MC, bad_row])
    with pytest.raises(BenchmarkError) as error:
        read_benchmark_file(path)
    assert "bad.jsonl:2: " in str(error.value)
    assert message in str(error.value)


def test_empty_and_broken_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(BenchmarkError, match="empty.jsonl: empty benchmark file"):
        read_benchmark_file(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(MC) + "\n{not json\n")
    with pytest.raises(BenchmarkError, match="broken.jsonl:2: not valid JSON"):
        read_benchmark_file(broken)
    with pytest.raises(BenchmarkError, match="missing.jsonl: benchmark file not found"):
        read_benchmark_file(tmp_path / "missing.jsonl")


def test_several_sets_keep_distinct_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_jsonl(tmp_path / "a" / "domain.jsonl", [MC])
    second = write_jsonl(tmp_path / "b" / "domain.jsonl", [MC, TF])
    sets = load_benchmarks([first, second])
    assert [(s.name, len(s.questions)) for s in sets] == [("domain", 1), ("domain_2", 2)]
    assert {q.set_name for q in sets[1].questions} == {"domain_2"}


def test_heldout_file_checks(tmp_path):
    assert read_heldout_texts(write_jsonl(tmp_path / "h.jsonl", [{"text": "a b"}, {"text": " "}])) == ["a b"]
    with pytest.raises(BenchmarkError, match="h2.jsonl:1: expected an object with a string 'text'"):
        read_heldout_texts(write_jsonl(tmp_path / "h2.jsonl", [{"body": "x"}]))
