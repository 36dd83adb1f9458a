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
from hpcadapt.atomic import write_json_atomic
from hpcadapt.errors import ModelError
from hpcadapt.hub import local_model
from hpcadapt.spec import StageSpec


def run(spec: StageSpec) -> dict[str, Any]:
    from hpcadapt.eval.suite import Suite, evaluate_suites

    e = spec.settings
    out = Path(spec.staging_dir)
    models = {label: local_model(ref, spec.revisions) for label, ref in spec.models.items()}
    if spec.synergy:  # parents must share a tokenizer; fail before any model is loaded
        from hpcadapt.eval.model_dir import check_same_tokenizer

        check_same_tokenizer({p: models[p] for p in spec.synergy["parents"]})
    suites = [Suite(spec.benchmark, spec.heldout, out)]
    if spec.general_benchmark:  # the same models on general ability: what adaptation should keep
        suites.append(Suite(spec.general_benchmark, None, out / "general"))
    results, *general = evaluate_suites(models, suites, protocols=e["protocols"], batch_size=e["batch_size"],
                                        max_new_tokens=e["max_new_tokens"])
    print("\n" + results.table_text(), flush=True)
    metrics: dict[str, Any] = {"summary": results.summary()}
    if general:
        from hpcadapt.eval.retention import retention

        metrics["retention"] = retention(results, general[0], out, n_boot=e["bootstrap_samples"], seed=e["seed"])
    run = tracking.start_run(spec, job_type="eval")
    if spec.synergy:
        from hpcadapt.eval.synergy import log_synergy_to_wandb, synergy_report

        syn = spec.synergy
        sweep = schedule_sweep(spec, models, out) if e.get("schedules") else None
        report = synergy_report(results, syn["merged"], tuple(syn["parents"]), out / "synergy",
                                n_boot=e["bootstrap_samples"], seed=e["seed"], t_spec=spec.merge_t, sweep=sweep)
        # Paths in the summary must name the final folder, which exists once the stage finishes.
        summary = report.summary_text().replace(str(out), spec.stage_dir)
        (out / "synergy" / "summary.txt").write_text(summary + "\n")
        print("\n" + summary, flush=True)
        metrics["synergy_verdict"] = report.overall().verdict
        if run is not None:
            log_synergy_to_wandb(report, run)
    if e.get("lm_eval_tasks"):
        metrics["lm_eval"] = lm_eval_scores(models, e, out)
    return metrics


def schedule_sweep(spec: StageSpec, models: dict[str, str], out: Path):
    """The merge's parents under each schedule of `eval.schedules`, merged in memory and scored."""
    from hpcadapt.eval.sweep import default_schedules, sweep_schedules

    known = default_schedules()
    named: dict[str, Any] = {}
    for entry in spec.settings["schedules"]:
        if isinstance(entry, dict):
            named[str(entry["name"])] = entry["t"]
        elif isinstance(entry, (int, float)):
            named[f"constant_{entry:g}"] = float(entry)
        elif entry in known:
            named[entry] = known[entry]
        else:
            raise ModelError(f"eval.schedules names {entry!r}; use one of {', '.join(known)}, a number (constant t) "
                             f"or {{name: ..., t: ...}}")
    base, other = (models[label] for label in spec.synergy["parents"])
    e = spec.settings
    return sweep_schedules(base, other, spec.benchmark, schedules=named, include_defaults=False,
                           heldout_file=spec.heldout, out_dir=out / "schedules", protocols=e["protocols"],
                           batch_size=e["batch_size"], max_new_tokens=e["max_new_tokens"])


def lm_eval_scores(models: dict[str, str], e: dict[str, Any], out: Path) -> dict[str, Any]:
    """lm-evaluation-harness tasks on every model, or the reason they were skipped."""
    from hpcadapt.eval.lm_eval_tasks import lm_eval_available, run_lm_eval

    if not lm_eval_available():
        reason = "lm-evaluation-harness is not installed (pip install 'hpcadapt[eval]')"
        print(f"hpcadapt: eval.lm_eval_tasks skipped: {reason}", flush=True)
        return {"skipped": reason}
    scores = {}
    for label, folder in models.items():
        found = run_lm_eval(folder, list(e["lm_eval_tasks"]), include_path=e.get("lm_eval_include"),
                            batch_size=e["batch_size"], limit=e.get("lm_eval_limit"))
        scores[label] = {task: {k: v for k, v in values.items() if isinstance(v, (int, float))}
                         for task, values in found["results"].items()}
    write_json_atomic(out / "lm_eval.json", scores)
    return scores
