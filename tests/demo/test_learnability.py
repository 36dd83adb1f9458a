"""A few steps of CPT on the demo's domain text already make held-out text predictable.

A cheap guard for the property the demo's perplexity plot rests on: the held-out
sentences are new phrasings of facts in `domain_text`, in words a model trained on it
knows. Held-out phrasings written with unseen vocabulary once made a longer CPT
*raise* held-out perplexity (29 555 -> 107 004); here they would stay far above the
perplexity of the training text itself, and this test fails.
"""

import os

os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline")

import math
import random

import pytest
import torch

from hpcadapt.demo.domain import generate_domain, read_jsonl
from hpcadapt.demo.tiny import build_model, build_tokenizer


def heldout_perplexity(model, tokenizer, texts):
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


@pytest.mark.slow  # ~10 s alone, over 20 s on a busy 2-core machine
def test_short_cpt_on_domain_text_lowers_heldout_perplexity(tmp_path):
    torch.set_num_threads(1)
    files = generate_domain(tmp_path / "data")
    tokenizer = build_tokenizer(files.tokenizer_texts(), vocab_size=2048)
    model = build_model(tokenizer, seed=0)
    heldout = [row["text"] for row in read_jsonl(files.heldout_text)][:16]
    before = heldout_perplexity(model, tokenizer, heldout)

    ids = [t for row in read_jsonl(files.domain_text) for t in tokenizer(row["text"])["input_ids"]]
    blocks = torch.tensor([ids[i : i + 64] for i in range(0, len(ids) - 64, 64)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    model.train()
    for _ in range(40):
        batch = blocks[rng.sample(range(len(blocks)), 8)]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = heldout_perplexity(model, tokenizer, heldout)
    seen = heldout_perplexity(model, tokenizer, [row["text"] for row in read_jsonl(files.domain_text)][:16])
    print(f"held-out perplexity {before:.0f} -> {after:.1f}; training text {seen:.1f}")
    assert after < before / 10
    assert after < 2 * seen
