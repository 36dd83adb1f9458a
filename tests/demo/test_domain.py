"""The demo data set: deterministic, well-formed, and free of benchmark leakage."""

import os

os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline")

import json

import pytest

from hpcadapt.demo import phrasings
from hpcadapt.demo.domain import FILE_NAMES, MANIFEST, generate_domain, read_jsonl, split_sentences

TRAINING_FILES = ("general_text", "general_chat", "domain_text", "domain_chat", "domain_prefs")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return generate_domain(tmp_path_factory.mktemp("demo") / "data", seed=0)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(files, tmp_path):
    again = generate_domain(tmp_path / "again", seed=0)
    other = generate_domain(tmp_path / "other", seed=1)
    for name in (*FILE_NAMES, MANIFEST):
        assert (files.root / name).read_bytes() == (again.root / name).read_bytes(), name
    assert files.domain_text.read_bytes() != other.domain_text.read_bytes()


def test_second_call_returns_existing_set_and_refuses_foreign_folders(files, tmp_path):
    before = files.domain_text.stat().st_mtime_ns
    assert generate_domain(files.root, seed=0) == files
    assert files.domain_text.stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="seed"):
        generate_domain(files.root, seed=5)
    half_done = tmp_path / "half"
    half_done.mkdir()
    (half_done / "general_text.jsonl").write_text("keep me\n")
    with pytest.raises(FileExistsError, match="missing"):
        generate_domain(half_done)
    assert (half_done / "general_text.jsonl").read_text() == "keep me\n"
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_text_and_chat_formats(files):
    for path in (files.general_text, files.domain_text, files.heldout_text):
        rows = read_jsonl(path)
        assert rows and all(set(r) == {"text"} and r["text"].strip() for r in rows), path.name
    for path in (files.general_chat, files.domain_chat):
        for row in read_jsonl(path):
            roles = [m["role"] for m in row["messages"]]
            assert roles == ["user", "assistant"], path.name
            assert all(m["content"].strip() for m in row["messages"])
    for row in read_jsonl(files.domain_prefs):
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]


def test_one_letter_and_true_false_answers_use_the_paper_wording(files):
    formatted = [
        r for r in read_jsonl(files.general_chat) if r["messages"][0]["content"].startswith(phrasings.INSTRUCTION)
    ]
    assert len(formatted) > 100
    for row in formatted:
        question, answer = (m["content"] for m in row["messages"])
        assert answer.startswith(phrasings.ANSWER_LEAD + " ")
        answer = answer.removeprefix(phrasings.ANSWER_LEAD + " ")
        if question.endswith(phrasings.TRUE_FALSE_HINT):
            assert answer in ("True", "False")
        else:  # multiple choice, answered with the words of one listed choice
            assert f") {answer}\n" in question + "\n", (question, answer)


def test_benchmark_rows_are_valid_and_mix_both_kinds(files):
    for path in files.benchmarks:
        rows = read_jsonl(path)
        assert len({r["id"] for r in rows}) == len(rows)
        kinds = {"mc" if "choices" in r else "tf" for r in rows}
        assert kinds == {"mc", "tf"}, path.name
        for row in rows:
            assert row["question"] and row["category"]
            if "choices" in row:
                assert len(set(row["choices"])) == len(row["choices"]) >= 2
                assert "ABCDEFGH".index(row["answer"]) < len(row["choices"])
            else:
                assert row["answer"] in ("True", "False")
        answers = [r["answer"] for r in rows]
        assert 0.3 < answers.count("True") / max(1, answers.count("True") + answers.count("False")) < 0.7


def test_no_benchmark_question_appears_in_any_training_file(files):
    training = "\n".join(getattr(files, name).read_text(encoding="utf-8") for name in TRAINING_FILES)
    for path in files.benchmarks:
        for row in read_jsonl(path):
            assert json.dumps(row["question"])[1:-1] not in training, row["id"]


def test_exam_alloys_never_appear_in_chat_or_preference_data(files):
    exam = json.loads(files.manifest.read_text())["exam_alloys"]
    chats = files.domain_chat.read_text() + files.domain_prefs.read_text()
    assert exam and not [name for name in exam if name in chats]
    assert all(name in files.domain_text.read_text() for name in exam)


def test_heldout_sentences_are_new_phrasings_of_known_alloys(files):
    domain_sentences = {s for r in read_jsonl(files.domain_text) for s in split_sentences(r["text"])}
    heldout_sentences = [s for r in read_jsonl(files.heldout_text) for s in split_sentences(r["text"])]
    assert heldout_sentences and not [s for s in heldout_sentences if s in domain_sentences]
    domain_blob = files.domain_text.read_text()
    assert not [r["text"] for r in read_jsonl(files.heldout_text) if r["text"] in domain_blob]


def test_general_data_never_mentions_the_domain(files):
    manifest = json.loads(files.manifest.read_text())
    general = files.general_text.read_text() + files.general_chat.read_text()
    for word in (*manifest["practice_alloys"], *manifest["exam_alloys"], "alloy", "crystal", "melting"):
        assert word not in general, word


def test_tokenizer_texts_cover_general_and_domain_text(files):
    texts = files.tokenizer_texts()
    assert len(texts) == len(read_jsonl(files.general_text)) + len(read_jsonl(files.domain_text))


def test_prompt_wording_matches_the_evaluation():
    prompts = pytest.importorskip("hpcadapt.eval.prompts")
    assert prompts.INSTRUCTION == phrasings.INSTRUCTION
    assert prompts.ANSWER_LEAD == phrasings.ANSWER_LEAD


def test_alloy_names_and_discoverers_are_unique_up_to_the_largest_world():
    import random

    from hpcadapt.demo.world import NAME_ONSETS, make_alloys

    alloys = make_alloys(random.Random(3), len(NAME_ONSETS))
    assert len({a.name for a in alloys}) == len({a.discoverer for a in alloys}) == len(NAME_ONSETS)
    with pytest.raises(ValueError, match="alloy count"):
        make_alloys(random.Random(3), len(NAME_ONSETS) + 1)
