"""Tiny benchmark files and tiny real models shared by the evaluation tests."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
from eval_fixtures import ELEMENTS, benchmark_rows, tokenizer_corpus, train_to_memorize, write_jsonl


@pytest.fixture(scope="session")
def rows() -> list[dict]:
    return benchmark_rows()


@pytest.fixture(scope="session")
def bench_file(tmp_path_factory, rows) -> str:
    return write_jsonl(tmp_path_factory.mktemp("bench") / "domain.jsonl", rows)


@pytest.fixture(scope="session")
def heldout_file(tmp_path_factory) -> str:
    texts = [{"text": f"The {a} and {b} alloy was annealed."} for a in ELEMENTS for b in ELEMENTS[:3]]
    return write_jsonl(tmp_path_factory.mktemp("heldout") / "heldout.jsonl", texts)


@pytest.fixture(scope="session")
def untrained_dir(tmp_path_factory, rows) -> str:
    from hpcadapt.demo.tiny import TinyShape, build_tiny_model_dir

    out = tmp_path_factory.mktemp("untrained") / "model"
    shape = TinyShape(hidden_size=64, intermediate_size=176)  # 4 layers, so schedules vary over depth
    return str(build_tiny_model_dir(out, tokenizer_corpus(rows), vocab_size=512, shape=shape, seed=0))


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory, rows, untrained_dir) -> str:
    """The untrained model taught to answer every benchmark question (same tokenizer)."""
    out = tmp_path_factory.mktemp("trained") / "model"
    return str(train_to_memorize(untrained_dir, rows, out))


@pytest.fixture(scope="session")
def eval_results(tmp_path_factory, untrained_dir, trained_dir, bench_file, heldout_file):
    """Both tiny models evaluated with both protocols; (EvalResults, out_dir)."""
    from hpcadapt.eval.suite import evaluate_models

    out = tmp_path_factory.mktemp("eval_out")
    results = evaluate_models(
        {"untrained": untrained_dir, "trained": trained_dir}, [bench_file], heldout_file, out, batch_size=8
    )
    return results, out
