"""CPT trains every token of a corpus of long documents, not the first `max_length` of each."""

from __future__ import annotations

import json

import pytest
from spine_helpers import FAST, compose_cfg, write_jsonl, write_toy_domain

from hpcadapt.launch.local import run_local

pytestmark = pytest.mark.slow


def test_long_documents_are_trained_in_full(tmp_path):
    write_toy_domain(tmp_path)
    words = "Varnite is a red alloy that melts at 1200 K and engineers value its strength".split()
    long_doc = " ".join(words[i % len(words)] for i in range(1500))  # ~1,700 tokens, max_length is 128
    corpus = write_jsonl(tmp_path / "long.jsonl", [{"text": long_doc}, {"text": "Quelium is blue."}] * 2)
    args = [f"output_root={tmp_path}", *FAST, "wandb.enabled=false", "pipeline.prepare=[tiny_init]",
            "model.base=@tiny_init", "model.instruct=@tiny_init", "pipeline.chain=[cpt]",
            f"data.mixes.cpt.sources=[{{path: {corpus}}}]", "stages.cpt.max_steps=-1",
            "stages.cpt.num_train_epochs=1", "stages.cpt.logging_steps=1"]
    plan = run_local(compose_cfg(args))
    stage_dir = plan.stage("cpt").stage_dir

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plan.stage("tiny_init").stage_dir)
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    expected = sum(len(tokenizer(t)["input_ids"]) + 1 for t in texts)  # + eos per document
    assert expected > 40 * 128  # the two long documents are many windows long

    metrics = json.loads((stage_dir / "manifest.json").read_text())["metrics"]
    assert metrics["corpus"]["corpus_tokens"] == expected
    assert metrics["corpus"]["trained_tokens_per_epoch"] == expected
    assert metrics["corpus"]["documents"] == 4
    # TRL's own count of the tokens it trained on over the epoch agrees.
    log = json.loads((stage_dir / "train_log.json").read_text())
    assert max(e.get("num_tokens", 0) for e in log) == expected
