"""Run a whole pipeline on this machine: plan, check, run each unfinished stage, report.

Everything that can be wrong with the input (data files, rows, model folders, chat
templates, an unwritable output folder) is checked before the first stage starts, so
a typo costs seconds, not a failed CPT run.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from hpcadapt import attention
from hpcadapt.config import TRAINING_KINDS, world_size
from hpcadapt.errors import HpcadaptError, ModelError, StageFailed
from hpcadapt.plan import PipelinePlan, plan_pipeline, write_specs
from hpcadapt.preflight import CHAT_KINDS, has_chat_template_files
from hpcadapt.stagedir import is_complete


def run_local(cfg: Any) -> PipelinePlan:
    from hpcadapt.launch.local import WarmWorker, run_stage_local

    started = time.time()
    check_writable(Path(cfg.output_root))
    # The first stage's process imports torch and TRL while this one plans.
    warm = WarmWorker() if not cfg.dry_run and world_size(cfg) == 1 else None
    try:
        prepare_data(cfg)
        plan = plan_pipeline(cfg)
        check_models(plan, cfg)
        check_environment(plan, cfg)
        print_plan(plan)
        if cfg.dry_run:
            return plan
        write_specs(plan)
        total = len(plan.stages)
        for i, stage in enumerate(plan.stages, start=1):
            if stage.done:
                print(f"\n[stage {i}/{total}] {stage.name} ({stage.kind}): already complete, skipped", flush=True)
                continue
            print(f"\n[stage {i}/{total}] {stage.name} ({stage.kind}) on {stage.nprocs} process(es) "
                  f"-> {stage.stage_dir}", flush=True)
            t0 = time.time()
            current = None  # multi-process stages start cold; a warm worker waits for the next single one
            if stage.nprocs == 1:
                current, warm = warm, None
                if any(s.nprocs == 1 and not s.done for s in plan.stages[i:]):
                    warm = WarmWorker()  # the next stage's, importing while this one runs on one core
            run_stage_local(stage, warm=current)
            if not is_complete(stage.stage_dir):
                raise StageFailed(f"stage {stage.name!r} exited cleanly but {stage.stage_dir} is not complete")
            print(f"[stage {i}/{total}] {stage.name} done in {time.time() - t0:.1f} s", flush=True)
    finally:
        if warm is not None:
            warm.discard()
    link_stages(plan)
    report(plan)
    print(f"\nhpcadapt: pipeline {plan.name} finished in {time.time() - started:.1f} s; run folder {plan.run_dir}")
    return plan


def check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise HpcadaptError(f"output folder {root} is not writable ({e.strerror}); set output_root=... "
                            f"or HPCADAPT_OUTPUT to a folder you can write") from None


def prepare_data(cfg: Any) -> None:
    """Write generated inputs before planning hashes them: the demo's fictional domain, or a
    rehearsal's stand-ins of the model family and of every dataset (hpcadapt/rehearsal/)."""
    if cfg.scale.standins:
        from hpcadapt.rehearsal.prepare import prepare_rehearsal

        prepare_rehearsal(cfg)
    if cfg.data.generate == "tiny_domain":
        from hpcadapt.demo.domain import generate_domain

        generate_domain(Path(cfg.output_root) / "demo_data")
    elif cfg.data.generate:
        raise HpcadaptError(f"data.generate={cfg.data.generate!r} is unknown; the only generator is 'tiny_domain'")


def check_models(plan: PipelinePlan, cfg: Any) -> None:
    """Local start models must be complete folders with the tokenizer files the chain needs."""
    chat_stage = next((s.name for s in plan.stages if s.kind in CHAT_KINDS), None)
    for stage in plan.stages:
        path = stage.spec.get("input_model")
        if not path or stage.done or not Path(path).is_dir() or stage.depends_on:
            continue  # hub ids, and models produced by this pipeline, are checked when loaded
        model_dir = Path(path)
        if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise ModelError(f"model folder {model_dir} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
        if chat_stage and not cfg.model.chat_template_file and not has_chat_template_files(model_dir):
            instruct = Path(cfg.model.instruct).expanduser()
            if instruct.is_dir() and has_chat_template_files(instruct):
                continue  # chat stages borrow the Instruct model's template (preflight.ensure_chat_template)
            raise ModelError(
                f"model folder {model_dir} has no chat template, nor has the Instruct model {cfg.model.instruct}, but "
                f"stage {chat_stage!r} formats conversations. hpcadapt never substitutes a generic template: set "
                f"model.chat_template_file to a Jinja file."
            )


def check_environment(plan: PipelinePlan, cfg: Any) -> None:
    """The interpreter that will run the stages can import what they need (flash-attention above all)."""
    trains = any(s.kind in TRAINING_KINDS and not s.done for s in plan.stages)
    if cfg.cluster.kind == "slurm":
        from hpcadapt.launch.job_env import check_job_environment

        check_job_environment(cfg.cluster, cfg.model.attn_implementation, trains)
    elif trains:
        attention.check_importable_here(cfg.model.attn_implementation)


def print_plan(plan: PipelinePlan) -> None:
    print(f"hpcadapt: pipeline {plan.name}: {len(plan.stages)} stages, run folder {plan.run_dir}")
    for i, s in enumerate(plan.stages, start=1):
        state = "done" if s.done else "to run"
        after = f" after {', '.join(s.depends_on)}" if s.depends_on else ""
        print(f"  {i}. {s.name:<14} {s.kind:<9} {state:<7} {s.stage_dir.name}{after}")


def link_stages(plan: PipelinePlan) -> None:
    """`runs/<pipeline>/<stage>` links to the hash-named stage folders, for humans."""
    for s in plan.stages:
        link = plan.run_dir / s.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(s.stage_dir, plan.run_dir))


def report(plan: PipelinePlan) -> None:
    """Print the evaluation table (and synergy summary) and copy them into the run folder."""
    evals = [s for s in plan.stages if s.kind == "eval"]
    if not evals:
        return
    out = evals[0].stage_dir
    for name in ("table.md", "synergy/report.md"):
        src = out / name
        if src.is_file():
            shutil.copyfile(src, plan.run_dir / Path(name).name.replace("report", "synergy"))
    table = out / "table.md"
    if table.is_file():
        print("\n" + table.read_text())
    summary = out / "synergy" / "summary.txt"
    if summary.is_file():
        print(summary.read_text())
