"""The pipeline's evaluation stage: every named model on identical questions.

All inputs (model folders, benchmark files, held-out text) are validated before the
first model is loaded; models are then loaded one at a time and released, so the
peak memory is one model however many are compared.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

from .benchmark import BenchmarkSet, load_benchmarks, read_heldout_texts
from .model_dir import check_model_dir, load_model, load_tokenizer, pick_device
from .prompts import prompt_format
from .results import EvalResults

PROTOCOLS = ("loglik", "generate")


@dataclass(frozen=True)
class Suite:
    """One set of questions every model is scored on, and the folder its results go to."""

    benchmark_files: list[str | Path]
    heldout_file: str | Path | None
    out_dir: str | Path


def evaluate_models(
    models: dict[str, str | Path],
    benchmark_files: list[str | Path],
    heldout_file: str | Path | None,
    out_dir: str | Path,
    **options,
) -> EvalResults:
    """Score each model on the benchmarks (and held-out perplexity); write results.json and table.md.
    Options as evaluate_suites."""
    return evaluate_suites(models, [Suite(benchmark_files, heldout_file, out_dir)], **options)[0]


def evaluate_suites(
    models: dict[str, str | Path],
    suites: list[Suite],
    *,
    protocols=PROTOCOLS,
    batch_size: int = 16,
    device: str | None = None,
    max_new_tokens: int = 8,
) -> list[EvalResults]:
    """Score each model on every suite (e.g. the domain benchmark and a general one), loading each
    model once; one EvalResults per suite, saved to its folder."""
    protocols = tuple(protocols)
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {protocols}")
    if not models:
        raise ValueError("no models to evaluate")
    folders = {name: check_model_dir(path, name, require_template=False) for name, path in models.items()}
    questions = [(load_benchmarks(list(suite.benchmark_files)),
                  read_heldout_texts(suite.heldout_file) if suite.heldout_file else None) for suite in suites]
    device = pick_device(device)

    all_results = [
        EvalResults(
            models={name: str(path) for name, path in folders.items()},
            sets=[s.name for s in sets],
            protocols=protocols,
            meta={
                "device": device,
                "batch_size": batch_size,
                "max_new_tokens": max_new_tokens,
                "benchmark_files": [str(s.path) for s in sets],
                "heldout_file": str(suite.heldout_file) if suite.heldout_file else None,
            },
        )
        for suite, (sets, _) in zip(suites, questions)
    ]
    for name, folder in folders.items():
        started = time.perf_counter()  # the first suite's seconds include loading the model
        model, tokenizer = load_model(folder, device), load_tokenizer(folder)
        for results, (sets, heldout) in zip(all_results, questions):
            results.meta.setdefault("prompt_format", {})[name] = prompt_format(tokenizer)
            records, ppl = evaluate_loaded(
                model,
                tokenizer,
                sets,
                heldout,
                protocols=protocols,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                label=name,
            )
            results.records[name] = records
            results.perplexity[name] = ppl
            results.meta.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
        del model
        gc.collect()
    for results, suite in zip(all_results, suites):
        results.save(suite.out_dir)
    return all_results


def evaluate_loaded(
    model,
    tokenizer,
    sets: list[BenchmarkSet],
    heldout_texts: list[str] | None,
    *,
    protocols=PROTOCOLS,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    label: str = "model",
) -> tuple[dict[str, list[dict]], float | None]:
    """Score a model already in memory (the schedule sweep passes merged weights this way)."""
    from .scoring import perplexity, score_generate, score_loglik

    questions = [q for s in sets for q in s.questions]
    records: dict[str, list[dict]] = {}
    if "loglik" in protocols:
        records["loglik"] = score_loglik(model, tokenizer, questions, batch_size=batch_size, desc=f"{label} loglik")
    if "generate" in protocols:
        records["generate"] = score_generate(
            model, tokenizer, questions, batch_size=batch_size, max_new_tokens=max_new_tokens, desc=f"{label} generate"
        )
    ppl = (
        perplexity(model, tokenizer, heldout_texts, batch_size=batch_size, desc=f"{label} ppl")
        if heldout_texts
        else None
    )
    return records, ppl
