"""Helpers for the evaluation tests: benchmark rows, JSONL writing, memorizing training."""

from __future__ import annotations

import json

ELEMENTS = ["iron", "copper", "gold", "zinc", "tin", "lead", "silver", "nickel"]
CATEGORIES = ["basic", "advanced"]
NAMES = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
         "romeo sierra tango").split()


def benchmark_rows(n_mc: int = 12, n_tf: int = 8, prefix: str = "") -> list[dict]:
    """Distinct multiple-choice and true/false questions with balanced answers."""
    rows = []
    for i in range(n_mc):
        choices = [ELEMENTS[(i + k) % len(ELEMENTS)] for k in range(4)]
        rows.append(
            {
                "id": f"{prefix}mc{i}",
                "question": f"Which metal fits the {NAMES[i % 20]} sample {prefix}{i}?",
                "choices": choices,
                "answer": "ABCD"[i % 4],
                "category": CATEGORIES[i % 2],
            }
        )
    for i in range(n_tf):
        rows.append(
            {
                "id": f"{prefix}tf{i}",
                "question": f"The {NAMES[(i + 12) % 20]} alloy {prefix}{i} is harder than steel.",
                "answer": "True" if i % 2 else False,
                "category": CATEGORIES[i % 2],
            }
        )
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def tokenizer_corpus(rows: list[dict]) -> list[str]:
    from hpcadapt.eval.prompts import ANSWER_LEAD, INSTRUCTION

    texts = [r["question"] + " " + " ".join(r.get("choices", [])) for r in rows]
    return texts * 3 + [INSTRUCTION + ANSWER_LEAD + " True False Answer A) B) C) D)"] * 3


def train_to_memorize(model_dir: str, rows: list[dict], out_dir, steps: int = 120, seed: int = 0, lr: float = 3e-3):
    """Plain full-batch AdamW on prompt + correct choice text + eos, loss on the answer only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hpcadapt.demo.tiny import save_pretrained_dir
    from hpcadapt.eval.benchmark import read_benchmark_file
    from hpcadapt.eval.prompts import chat_prompt

    path = out_dir.parent / "train.jsonl"
    questions = read_benchmark_file(write_jsonl(path, rows))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    sequences, answer_starts = [], []
    for q in questions:
        prompt_ids = tokenizer(chat_prompt(tokenizer, q), add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(" " + q.choices[q.gold_index], add_special_tokens=False)["input_ids"]
        sequences.append(prompt_ids + answer_ids + [tokenizer.eos_token_id])
        answer_starts.append(len(prompt_ids))
    width = max(map(len, sequences))
    input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    labels = torch.full((len(sequences), width), -100)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (seq, start) in enumerate(zip(sequences, answer_starts)):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, start : len(seq)] = torch.tensor(seq[start:])
        attention[row, : len(seq)] = 1
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return save_pretrained_dir(model, tokenizer, out_dir)
