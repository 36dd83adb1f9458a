"""The demo's data: a small fictional technical domain (alloys) and a general world.

`generate_domain(out_dir, seed)` writes every file the CPU demo trains and evaluates
on. Same seed, same bytes, on any machine: all randomness comes from one
`random.Random(seed)` drawn in a fixed order, and JSON is written with fixed options.

How the demo stays an honest test of knowledge learned by CPT:
- The alloys' facts appear as raw text only in `domain_text.jsonl` (CPT), each fact in
  several phrasings across documents. `heldout_text.jsonl` states the same facts with
  phrasings CPT never sees, so its perplexity measures what was learned, not recall.
- The alloys are split in two halves. Chat (SFT) and preference data ask only about
  the *practice* half: they teach the answer formats on domain words. The benchmark
  asks about *all* alloys, always with wordings no training file contains, so on the
  *exam* half (listed in `manifest.json`) every correct answer must come from CPT.
- The general world (everyday things) is what the tiny Base/Instruct models are built
  from. It is stated in the same way (text facts, then questions about them) so that
  the Instruct model arrives at CPT already knowing how to answer a question about a
  fact it has read, in the paper's prompt wording ("one word or letter").

What a ~1M-parameter model can learn here (measured with the demo's budgets): it names
the right choice of a multiple-choice question, so multiple-choice answers in the chat
data are the choice's words (see `_mc_chat`); it does not learn to verify True/False
statements or to compare two alloys, so those questions stay near chance, as harder
questions do for the paper's small model.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import phrasings as P
from .world import (
    ALLOY_PROPERTIES,
    DAYS,
    NUMBER_WORDS,
    OPPOSITES,
    PEOPLE,
    THINGS,
    WEATHER,
    Alloy,
    Thing,
    make_alloys,
    property_text,
    property_values,
)

FORMAT_VERSION = 2
LETTERS = "ABCDEFGH"
ALLOY_COUNT = 24
DOCS_PER_ALLOY = 14
FAQ_DOCS_PER_ALLOY = 2
GENERAL_DOCS_PER_THING = 6
STORY_COUNT = 240
MC_CHOICES = 4

FILE_NAMES = (
    "general_text.jsonl",
    "general_chat.jsonl",
    "domain_text.jsonl",
    "domain_chat.jsonl",
    "domain_prefs.jsonl",
    "heldout_text.jsonl",
    "benchmark_basic.jsonl",
    "benchmark_advanced.jsonl",
    "benchmark_general.jsonl",
)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DomainFiles:
    """Paths of one generated demo data set (all under `root`)."""

    root: Path
    general_text: Path
    general_chat: Path
    domain_text: Path
    domain_chat: Path
    domain_prefs: Path
    heldout_text: Path
    benchmark_basic: Path
    benchmark_advanced: Path
    benchmark_general: Path
    manifest: Path

    @classmethod
    def at(cls, root: str | Path) -> DomainFiles:
        root = Path(root)
        paths = {name.removesuffix(".jsonl"): root / name for name in FILE_NAMES}
        return cls(root=root, manifest=root / MANIFEST, **paths)

    @property
    def benchmarks(self) -> list[Path]:
        return [self.benchmark_basic, self.benchmark_advanced]

    def tokenizer_texts(self) -> list[str]:
        """General and domain raw text: what the demo's tokenizer is trained on, so that
        domain words get sensible tokens without the tokenizer seeing any question."""
        return [row["text"] for path in (self.general_text, self.domain_text) for row in read_jsonl(path)]


def generate_domain(out_dir: str | Path, seed: int = 0) -> DomainFiles:
    """Write the demo data set to `out_dir` (atomically) and return its paths.

    A complete set already at `out_dir` for the same seed is returned as is; anything
    else already there is an error, never overwritten.
    """
    files = DomainFiles.at(out_dir)
    if files.root.exists():
        return _check_existing(files, seed)
    staging = files.root.with_name(f".{files.root.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_all(staging, seed)
        try:
            os.rename(staging, files.root)
        except OSError:
            if not files.root.exists():  # not a race with another writer: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _check_existing(files, seed)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _check_existing(files: DomainFiles, seed: int) -> DomainFiles:
    missing = [p.name for p in (files.manifest, *(files.root / n for n in FILE_NAMES)) if not p.is_file()]
    if missing:
        raise FileExistsError(
            f"{files.root} exists but is not a complete demo data set (missing {', '.join(missing)}); "
            "remove it or choose another folder"
        )
    manifest = json.loads(files.manifest.read_text(encoding="utf-8"))
    if manifest.get("seed") != seed or manifest.get("format_version") != FORMAT_VERSION:
        raise FileExistsError(
            f"{files.manifest} records seed {manifest.get('seed')!r}, format {manifest.get('format_version')!r}; "
            f"expected seed {seed!r}, format {FORMAT_VERSION}: remove the folder or choose another"
        )
    return files


def _write_all(folder: Path, seed: int) -> None:
    rng = random.Random(seed)
    alloys = make_alloys(rng, ALLOY_COUNT)
    practice, exam = alloys[: ALLOY_COUNT // 2], alloys[ALLOY_COUNT // 2 :]
    domain_text = alloy_documents(rng, alloys)
    heldout = heldout_documents(rng, alloys)
    _check_heldout_is_new(heldout, domain_text)
    rows = {
        "general_text.jsonl": [{"text": t} for t in general_documents(rng)],
        "general_chat.jsonl": general_chats(rng),
        "domain_text.jsonl": [{"text": t} for t in domain_text],
        "domain_chat.jsonl": alloy_chats(rng, practice, alloys),
        "domain_prefs.jsonl": alloy_preferences(rng, practice, alloys),
        "heldout_text.jsonl": [{"text": t} for t in heldout],
        "benchmark_basic.jsonl": basic_benchmark(rng, alloys),
        "benchmark_advanced.jsonl": advanced_benchmark(rng, alloys),
        "benchmark_general.jsonl": general_benchmark(rng),
    }
    for name in FILE_NAMES:
        _write_jsonl(folder / name, rows[name])
    manifest = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "practice_alloys": [a.name for a in practice],
        "exam_alloys": [a.name for a in exam],
        "counts": {name: len(rows[name]) for name in FILE_NAMES},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _check_heldout_is_new(heldout: list[str], domain_text: list[str]) -> None:
    seen = {s for doc in domain_text for s in split_sentences(doc)}
    repeated = [s for doc in heldout for s in split_sentences(doc) if s in seen]
    if repeated:  # a bug in the phrasing tables, not a user error
        raise AssertionError(f"held-out sentences also appear in domain text: {repeated[:3]}")


# ---------------------------------------------------------------- raw text


def alloy_documents(rng: random.Random, alloys: list[Alloy]) -> list[str]:
    """Per-alloy data sheets (all facts, shuffled order, varied phrasing), question-and-
    answer passages, and surveys listing one property across several alloys; shuffled so
    CPT batches mix alloys."""
    docs = []
    for alloy in alloys:
        for _ in range(DOCS_PER_ALLOY):
            props = rng.sample(ALLOY_PROPERTIES, len(ALLOY_PROPERTIES))
            sentences = [_fill(rng.choice(P.ALLOY_INTROS), a=alloy.name)]
            sentences += [_fill(rng.choice(P.ALLOY_TEXT[p]), a=alloy.name, v=property_text(alloy, p)) for p in props]
            docs.append(" ".join(sentences))
        for _ in range(FAQ_DOCS_PER_ALLOY):
            props = rng.sample(ALLOY_PROPERTIES, len(ALLOY_PROPERTIES))
            docs.append(" ".join(_fill(P.ALLOY_FAQ[p], a=alloy.name, v=property_text(alloy, p)) for p in props))
    for prop in ALLOY_PROPERTIES:
        for _ in range(len(alloys) // 3):
            group = rng.sample(alloys, 6)
            sentences = [P.ALLOY_SURVEY_INTROS[prop]]
            sentences += [_fill(rng.choice(P.ALLOY_TEXT[prop]), a=a.name, v=property_text(a, prop)) for a in group]
            docs.append(" ".join(sentences))
    rng.shuffle(docs)
    return docs


def heldout_documents(rng: random.Random, alloys: list[Alloy]) -> list[str]:
    """One profile per alloy and held-out phrasing set, in words CPT never saw."""
    docs = []
    for alloy in alloys:
        for variant in range(2):
            props = rng.sample(ALLOY_PROPERTIES, len(ALLOY_PROPERTIES))
            sentences = [_fill(P.ALLOY_HELDOUT_INTROS[variant], a=alloy.name)]
            sentences += [_fill(P.ALLOY_HELDOUT[p][variant], a=alloy.name, v=property_text(alloy, p)) for p in props]
            docs.append(" ".join(sentences))
    return docs


def general_documents(rng: random.Random) -> list[str]:
    """Everyday facts in varied phrasing and as question-and-answer passages, plus short
    stories for ordinary English."""
    docs = []
    for thing in THINGS:
        for _ in range(GENERAL_DOCS_PER_THING):
            props = rng.sample(tuple(P.THING_TEXT), len(P.THING_TEXT))
            docs.append(" ".join(_fill(rng.choice(P.THING_TEXT[p]), **_thing_slots(thing, p)) for p in props))
        props = rng.sample(tuple(P.THING_FAQ), len(P.THING_FAQ))
        docs.append(" ".join(_fill(P.THING_FAQ[p], **_thing_slots(thing, p)) for p in props))
    for _ in range(STORY_COUNT):
        docs.append(" ".join(_story_sentence(rng) for _ in range(rng.randint(3, 5))))
    rng.shuffle(docs)
    return docs


def _story_sentence(rng: random.Random) -> str:
    p, q = rng.sample(PEOPLE, 2)
    thing = rng.choice(THINGS)
    return _fill(
        rng.choice(P.STORY_SENTENCES), p=p, q=q, day=rng.choice(DAYS), w=rng.choice(WEATHER),
        t=thing.name, at=_with_article(thing.name), place=thing.place,
    )


# ---------------------------------------------------------------- chats


def general_chats(rng: random.Random) -> list[dict]:
    """Everyday questions (open, one-letter multiple choice, True/False) and small tasks."""
    chats = []
    for thing in THINGS:
        for prop in P.THING_TEXT:
            value = getattr(thing, prop)
            for question in P.THING_CHAT_OPEN[prop]:
                chats.append(_chat(_fill(question, **_thing_slots(thing, prop)), value))
            wrong = _distractors(rng, value, sorted({getattr(t, prop) for t in THINGS}))
            for _ in range(2):
                chats.append(_mc_chat(rng, _fill(P.THING_CHAT_MC[prop], **_thing_slots(thing, prop)), value, wrong))
            for truth in (True, False):
                shown = value if truth else rng.choice(wrong)
                chats.append(_tf_chat(_fill(P.THING_CHAT_TF[prop], **_thing_slots(thing, prop, shown)), truth))
    for i, day in enumerate(DAYS):
        chats.append(_chat(f"What day comes after {day}?", DAYS[(i + 1) % 7]))
        chats.append(_chat(f"What day comes before {day}?", DAYS[i - 1]))
    for word, opposite in OPPOSITES:
        chats.append(_chat(f"What is the opposite of {word}?", opposite))
        chats.append(_chat(f"What is the opposite of {opposite}?", word))
    for a in range(6):
        for b in range(5):
            chats.append(_chat(f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?", NUMBER_WORDS[a + b]))
    for person in PEOPLE:
        chats.append(_chat(f"Repeat this name: {person}", person))
    rng.shuffle(chats)
    return chats


def alloy_chats(rng: random.Random, practice: list[Alloy], alloys: list[Alloy]) -> list[dict]:
    """Questions about the practice alloys only, in every answer format."""
    chats = []
    for alloy in practice:
        for prop in ALLOY_PROPERTIES:
            value = property_text(alloy, prop)
            wrong = _distractors(rng, value, property_values(prop, alloys))
            for question in P.ALLOY_CHAT_OPEN[prop]:
                chats.append(_chat(_fill(question, a=alloy.name), value))
            for _ in range(2):
                chats.append(_mc_chat(rng, _fill(P.ALLOY_CHAT_MC[prop], a=alloy.name), value, wrong))
            for truth in (True, False):
                shown = value if truth else rng.choice(wrong)
                chats.append(_tf_chat(_fill(P.ALLOY_CHAT_TF[prop], a=alloy.name, v=shown), truth))
    rng.shuffle(chats)
    return chats


def alloy_preferences(rng: random.Random, practice: list[Alloy], alloys: list[Alloy]) -> list[dict]:
    """Preference pairs on the practice alloys: the correct answer against a plausible
    wrong one (another value of the same property, or the opposite truth)."""
    pairs = []
    for alloy in practice:
        for prop in ALLOY_PROPERTIES:
            value = property_text(alloy, prop)
            wrong = _distractors(rng, value, property_values(prop, alloys))
            question = _fill(rng.choice(P.ALLOY_CHAT_OPEN[prop]), a=alloy.name)
            pairs.append(_pair(question, value, rng.choice(wrong)))
            mc = _mc_chat(rng, _fill(P.ALLOY_CHAT_MC[prop], a=alloy.name), value, wrong)
            pairs.append(_pair(mc["messages"][0]["content"], _lead(value), _lead(rng.choice(wrong))))
            truth = rng.random() < 0.5
            shown = value if truth else rng.choice(wrong)
            tf = _tf_chat(_fill(P.ALLOY_CHAT_TF[prop], a=alloy.name, v=shown), truth)
            pairs.append(_pair(tf["messages"][0]["content"], _lead(str(truth)), _lead(str(not truth))))
    rng.shuffle(pairs)
    return pairs


def _chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def _mc_chat(rng: random.Random, stem: str, value: str, wrong: list[str]) -> dict:
    """A multiple-choice chat answered with the choice's words, not its letter.

    The paper's prompt allows "one word or letter". A ~1M-parameter model cannot learn
    to map a fact to its letter in the demo's budget (measured: chance level even on
    its own training questions), but it can learn to name the right choice, which both
    of hpcadapt.eval's scorers read (log-likelihood of each choice's text; a greedy
    reply matched to a choice's text).
    """
    choices, _ = _shuffled_choices(rng, value, wrong)
    return _chat(P.INSTRUCTION + format_multiple_choice(stem, choices), _lead(value))


def _tf_chat(statement: str, truth: bool) -> dict:
    return _chat(P.INSTRUCTION + format_true_false(statement), _lead(str(truth)))


def _pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def _lead(answer: str) -> str:
    return f"{P.ANSWER_LEAD} {answer}"


def format_multiple_choice(question: str, choices: list[str]) -> str:
    """The user-visible question with lettered choices, as the evaluation shows it."""
    return question + "\n" + "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))


def format_true_false(statement: str) -> str:
    return f"{statement}\n{P.TRUE_FALSE_HINT}"


# ---------------------------------------------------------------- benchmark


def basic_benchmark(rng: random.Random, alloys: list[Alloy]) -> list[dict]:
    """One question per alloy and property, alternating multiple choice and True/False."""
    rows = []
    for i, alloy in enumerate(alloys):
        for j, prop in enumerate(ALLOY_PROPERTIES):
            value = property_text(alloy, prop)
            wrong = _distractors(rng, value, property_values(prop, alloys))
            qid = f"basic-{len(rows):03d}"
            if (i + j) % 2 == 0:
                choices, letter = _shuffled_choices(rng, value, wrong)
                question = _fill(P.ALLOY_BENCH_MC[prop], a=alloy.name)
                rows.append({"id": qid, "question": question, "choices": choices, "answer": letter, "category": prop})
            else:
                truth = (i // 2 + j) % 2 == 0
                shown = value if truth else rng.choice(wrong)
                question = _fill(P.ALLOY_BENCH_TF[prop], a=alloy.name, v=shown)
                rows.append({"id": qid, "question": question, "answer": str(truth), "category": prop})
    return rows


def general_benchmark(rng: random.Random) -> list[dict]:
    """General ability, which the merge is meant to keep: everyday facts the Instruct model was
    taught before the domain, asked as it learned to answer them. Per thing, one
    multiple-choice and one True/False question, on properties taken in turn."""
    rows = []
    props = tuple(P.THING_TEXT)
    for i, thing in enumerate(THINGS):
        mc, tf = props[i % len(props)], props[(i + 1) % len(props)]
        value = getattr(thing, mc)
        choices, letter = _shuffled_choices(
            rng, value, _distractors(rng, value, sorted({getattr(t, mc) for t in THINGS}))
        )
        rows.append(
            {
                "id": f"general-{len(rows):03d}",
                "question": _fill(P.THING_CHAT_MC[mc], **_thing_slots(thing, mc)),
                "choices": choices,
                "answer": letter,
                "category": mc,
            }
        )
        value = getattr(thing, tf)
        truth = i % 2 == 0
        shown = value if truth else rng.choice(_distractors(rng, value, sorted({getattr(t, tf) for t in THINGS})))
        rows.append(
            {
                "id": f"general-{len(rows):03d}",
                "question": _fill(P.THING_CHAT_TF[tf], **_thing_slots(thing, tf, shown)),
                "answer": str(truth),
                "category": tf,
            }
        )
    return rows


def advanced_benchmark(rng: random.Random, alloys: list[Alloy]) -> list[dict]:
    """Questions needing two facts: comparisons of two alloys and two-step look-ups."""
    rows: list[dict] = []

    def add(question: str, category: str, answer: str, choices: list[str] | None = None) -> None:
        row = {"id": f"advanced-{len(rows):03d}", "question": question}
        if choices is not None:
            row["choices"] = choices
        rows.append({**row, "answer": answer, "category": category})

    for k in range(12):  # highest / lowest melting point among alloys that all differ
        group = _distinct_by(rng, alloys, "melting_point", MC_CHOICES)
        pick = max if k % 2 == 0 else min
        best = pick(group, key=lambda a: a.melting_point)
        stem = P.BENCH_HIGHEST_MELTING if k % 2 == 0 else P.BENCH_LOWEST_MELTING
        choices, letter = _shuffled_choices(rng, best.name, [a.name for a in group if a is not best])
        add(stem, "comparison", letter, choices)
    for k in range(12):  # colour or use of the alloy a named person discovered
        alloy = alloys[(2 * k + 1) % len(alloys)]
        prop = ("colour", "use")[k % 2]
        value = property_text(alloy, prop)
        choices, letter = _shuffled_choices(rng, value, _distractors(rng, value, property_values(prop, alloys)))
        add(_fill(P.BENCH_TWO_STEP_MC[prop], d=alloy.discoverer), "two-step", letter, choices)
    for _ in range(12):
        a, b = _distinct_by(rng, alloys, "melting_point", 2)
        add(_fill(P.BENCH_MELTS_HIGHER_TF, a=a.name, b=b.name), "comparison", str(a.melting_point > b.melting_point))
    for k in range(12):  # half the pairs share a structure, half do not
        a = rng.choice(alloys)
        same = [b for b in alloys if b is not a and b.structure == a.structure]
        different = [b for b in alloys if b.structure != a.structure]
        b = rng.choice(same) if k % 2 == 0 and same else rng.choice(different)
        add(_fill(P.BENCH_SAME_STRUCTURE_TF, a=a.name, b=b.name), "comparison", str(a.structure == b.structure))
    return rows


def _distinct_by(rng: random.Random, alloys: list[Alloy], prop: str, count: int) -> list[Alloy]:
    """`count` alloys whose `prop` values all differ (redraws until they do)."""
    while True:
        group = rng.sample(alloys, count)
        if len({getattr(a, prop) for a in group}) == count:
            return group


# ---------------------------------------------------------------- small pure helpers


def _distractors(rng: random.Random, value: str, pool) -> list[str]:
    """Up to MC_CHOICES - 1 wrong values drawn from `pool` (deterministic order)."""
    candidates = sorted(set(pool) - {value})
    return rng.sample(candidates, min(MC_CHOICES - 1, len(candidates)))


def _shuffled_choices(rng: random.Random, value: str, wrong: list[str]) -> tuple[list[str], str]:
    choices = [value, *wrong[: MC_CHOICES - 1]]
    rng.shuffle(choices)
    return choices, LETTERS[choices.index(value)]


def _thing_slots(thing: Thing, prop: str, value: str | None = None) -> dict:
    shown = getattr(thing, prop) if value is None else value
    return {"t": thing.name, "at": _with_article(thing.name), "v": shown}


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _fill(template: str, **slots) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def split_sentences(text: str) -> list[str]:
    """Sentences of generated text (every generated sentence ends with '. ')."""
    return [s.strip().rstrip(".") + "." for s in text.split(". ") if s.strip()]
