"""A toy domain and a config composer shared by the spine's tests.

The toy domain is hand-written (not the demo's generator) so these tests pin the
pipeline's mechanics, independent of how the demo's data is tuned.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from hpcadapt.__main__ import conf_dir
from hpcadapt.config import register_configs

MATERIALS = ["Varnite", "Quelium", "Dorsan", "Pellax", "Ostrine", "Kubrite", "Malvex", "Tessorite"]
COLOURS = ["red", "blue", "green", "amber"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_toy_domain(root: Path) -> Path:
    """The files the tiny_demo data config expects, under root/demo_data."""
    d = root / "demo_data"
    colour = {m: COLOURS[i % 4] for i, m in enumerate(MATERIALS)}
    write_jsonl(d / "general_text.jsonl", [
        {"text": f"The {a} sat on the {b} near the {c}."}
        for a in ["cat", "dog", "bird", "child"] for b in ["mat", "chair", "wall"] for c in ["door", "window", "tree"]
    ])
    write_jsonl(d / "domain_text.jsonl", [
        {"text": f"{m} is a {colour[m]} alloy that melts at {1000 + 100 * i} K. Engineers value {m}."}
        for i, m in enumerate(MATERIALS)
    ] * 4)
    write_jsonl(d / "heldout_text.jsonl", [{"text": f"The alloy {m} has a {colour[m]} colour."} for m in MATERIALS])
    write_jsonl(d / "general_chat.jsonl", [chat(f"Where is the {a}?", f"The {a} is on the mat.")
                                           for a in ["cat", "dog", "bird", "child"]] * 4)
    write_jsonl(d / "domain_chat.jsonl", [chat(f"What colour is {m}?", colour[m]) for m in MATERIALS] * 2)
    write_jsonl(d / "domain_prefs.jsonl", [
        {"prompt": [{"role": "user", "content": f"What colour is {m}?"}],
         "chosen": [{"role": "assistant", "content": colour[m]}],
         # A contrast a few steps can learn (a hedge against an answer), so DPO's loss can fall.
         "rejected": [{"role": "assistant", "content": "I am not sure, maybe it has no colour at all."}]}
        for m in MATERIALS
    ] * 2)
    write_jsonl(d / "benchmark_basic.jsonl", [
        {"id": f"b{i}", "question": f"What colour is {m}?", "choices": COLOURS,
         "answer": "ABCD"[COLOURS.index(colour[m])], "category": "colour"} for i, m in enumerate(MATERIALS)
    ])
    write_jsonl(d / "benchmark_advanced.jsonl", [
        {"id": f"a{i}", "question": f"{m} is {colour[m]}.", "answer": "True", "category": "tf"}
        for i, m in enumerate(MATERIALS)
    ])
    write_jsonl(d / "benchmark_general.jsonl", [
        {"id": f"g{i}", "question": f"Where is the {a}?", "answer": "A", "category": "places",
         "choices": ["on the mat", "in the sea", "up a mast", "in a box"]}
        for i, a in enumerate(["cat", "dog", "bird", "child"])
    ])
    return d


# Small, fast settings for every stage of the tiny_demo experiment.
FAST = [
    "data.generate=null",
    "stages.tiny_init.extra.vocab_size=400",
    "+stages.tiny_init.extra.hidden_size=64",
    "+stages.tiny_init.extra.intermediate_size=128",
    "+stages.tiny_init.extra.num_hidden_layers=2",
    "stages.base_pretrain.max_steps=6",
    "stages.instruct_sft.max_steps=6",
    "stages.cpt.max_steps=6",
    "stages.sft.max_steps=6",
    "stages.orpo.max_steps=6",
    "stages.cpt.logging_steps=1",
    "stages.sft.logging_steps=1",
    "stages.orpo.logging_steps=1",
    "pipeline.merge=false",
    "pipeline.evaluate=false",
]


def compose_cfg(overrides: list[str], experiment: str | None = "tiny_demo"):
    """Compose exactly as `python -m hpcadapt +experiment=... overrides` would (None: no experiment,
    e.g. for `+grid=...`, which brings its own)."""
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        chosen = [f"+experiment={experiment}"] if experiment else []
        return compose(config_name="config", overrides=[*chosen, *overrides])
