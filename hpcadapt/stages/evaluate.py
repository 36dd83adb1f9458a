"""eval: every model of the chain on identical questions, and the merge's synergy report.

Runs as the last stage of a pipeline (`pipeline.evaluate=true`). Scores the start model,
the output of each stage and the merged model on the benchmark sets (log-likelihood
and the paper's generate-and-parse protocol) and held-out perplexity, then compares
the merge with both parents with paired bootstrap intervals (hpcadapt/eval/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcadapt import tracking
from hpcadapt.hub import local_model
from hpcadapt.spec import StageSpec


def run(spec: StageSpec) -> dict[str, Any]:
    from hpcadapt.eval.suite import evaluate_models

    e = spec.settings
    out = Path(spec.staging_dir)
    models = {label: local_model(ref, spec.revisions) for label, ref in spec.models.items()}
    if spec.synergy:  # parents must share a tokenizer; fail before any model is loaded
        from hpcadapt.eval.model_dir import check_same_tokenizer

        check_same_tokenizer({p: models[p] for p in spec.synergy["parents"]})
    results = evaluate_models(
        models, spec.benchmark, spec.heldout, out,
        protocols=e["protocols"], batch_size=e["batch_size"], max_new_tokens=e["max_new_tokens"],
    )
    print("\n" + results.table_text(), flush=True)
    metrics: dict[str, Any] = {"summary": results.summary()}
    run = tracking.start_run(spec, job_type="eval")
    if spec.synergy:
        from hpcadapt.eval.synergy import log_synergy_to_wandb, synergy_report

        syn = spec.synergy
        report = synergy_report(results, syn["merged"], tuple(syn["parents"]), out / "synergy",
                                n_boot=e["bootstrap_samples"], seed=e["seed"], t_spec=spec.merge_t)
        # Paths in the summary must name the final folder, which exists once the stage finishes.
        summary = report.summary_text().replace(str(out), spec.stage_dir)
        (out / "synergy" / "summary.txt").write_text(summary + "\n")
        print("\n" + summary, flush=True)
        metrics["synergy_verdict"] = report.overall().verdict
        if run is not None:
            log_synergy_to_wandb(report, run)
    return metrics
