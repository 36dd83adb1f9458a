"""Evaluation: does the merged model beat both of its parents on domain questions?

Entry points (each module imports torch only inside functions, so importing any of
them at config time is cheap):
- suite.evaluate_models(models, benchmark_files, heldout_file, out_dir, ...) -> EvalResults
- suite.evaluate_suites(models, [Suite(...), ...], ...) -> [EvalResults]: several question sets, each model loaded once
- synergy.synergy_report(results, merged, parents, out_dir, ...) -> SynergyReport
- synergy.log_synergy_to_wandb(report, run)
- sweep.sweep_schedules(base, other, benchmark_files, schedules=...) -> SweepResult
- lm_eval_tasks.export_lm_eval_task / run_lm_eval (optional lm-eval extra)
- model_dir.check_same_tokenizer({name: dir}) to refuse mismatched merge parents early
"""
