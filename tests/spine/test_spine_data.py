"""Data mixes: cheap checks name the file and line; weights mean fractions of rows."""

from __future__ import annotations

import json

import pytest
from spine_helpers import chat, write_jsonl

from hpcadapt.datamix import check_source, load_mix
from hpcadapt.errors import DataError


def test_check_source_counts_rows(tmp_path):
    f = write_jsonl(tmp_path / "chats.jsonl", [chat("q", "a")] * 3)
    assert check_source(str(f), "sft", "data.mixes.sft.sources[0]") == 3


def test_missing_file_names_key_and_path(tmp_path):
    with pytest.raises(DataError, match=r"data\.mixes\.cpt\.sources\[1\].*nope\.jsonl does not exist"):
        check_source(str(tmp_path / "nope.jsonl"), "cpt", "data.mixes.cpt.sources[1]")


def test_row_without_field_names_file_and_line(tmp_path):
    f = tmp_path / "prefs.jsonl"
    good = {"prompt": "p", "chosen": "c", "rejected": "r"}
    f.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(DataError, match=r"prefs\.jsonl:2: missing field 'rejected'.*orpo"):
        check_source(str(f), "orpo", "data.mixes.preference.sources[0]")


def test_bad_json_and_bad_messages(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl:2: not valid JSON"):
        check_source(str(f), "cpt", "k")
    g = write_jsonl(tmp_path / "msgs.jsonl", [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(DataError, match=r"msgs\.jsonl:1: field 'messages'\[0\]: unknown role 'robot'"):
        check_source(str(g), "sft", "k")


def test_empty_file(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl is empty"):
        check_source(str(f), "cpt", "k")


def test_parquet_columns_checked(tmp_path):
    import datasets

    path = tmp_path / "t.parquet"
    datasets.Dataset.from_list([{"body": "x"}]).to_parquet(str(path))
    with pytest.raises(DataError, match=r"t\.parquet: columns 'text' missing"):
        check_source(str(path), "cpt", "k")


def test_weights_subsample_and_repeat(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}"} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": f"b{i}", "extra": 1} for i in range(4)])
    mix = load_mix([{"path": str(a), "weight": 0.5}, {"path": str(b), "weight": 2.0}], "cpt", seed=0)
    texts = mix["text"]
    assert len(texts) == 5 + 8 and mix.column_names == ["text"]
    assert sum(t.startswith("a") for t in texts) == 5
    assert sorted(t for t in texts if t.startswith("b")) == sorted([f"b{i}" for i in range(4)] * 2)
    again = load_mix([{"path": str(a), "weight": 0.5}, {"path": str(b), "weight": 2.0}], "cpt", seed=0)
    assert again["text"] == texts  # seeded: the same mix every time
