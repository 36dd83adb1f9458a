"""What sharing stages saves on the paper's Mistral grid, and how long planning and submitting it takes.

    python tools/bench_grid.py [--grid paper_mistral] [--submit]   # --submit needs Slurm (held jobs, cancelled)

1. Stage runs: the chain steps of all strategies against the unique stages of the graph.
2. GPU-hours, estimated from the paper's settings: each training stage's tokens (epochs x
   rows x tokens per row of its mix, the assumptions printed below) x 6N FLOPs per token at
   an assumed MFU on H100s (989 TFLOP/s bf16); merge and eval are not counted.
3. Time to plan the grid (`dry_run=true`) and, with --submit, to plan and submit it, as the
   command's wall time, in a fresh process that must not import torch. Target: under 3 s.

The paper's data files are stood in by tiny JSONL files in the right fields, and the hub
models by a Hugging Face cache holding only their refs, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARAMETERS = 7.25e9  # Mistral-7B-v0.3
PEAK = 989e12  # H100 SXM, dense bf16
MFU = 0.40
# Rows and tokens per row of the paper's mixes (names as in conf/data/paper_mix.yaml), assumed.
MIX_TOKENS = {"cpt": (80_000 + 60_000) * 1_500, "sft": (100_000 + 10_000) * 1_200,
              "preference": (40_000 + 5_000) * 2 * 700}

ROWS = {"text": {"text": "A silk fibre is a protein."},
        "messages": {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]},
        "preference": {"prompt": "Q?", "chosen": "A.", "rejected": "B."},
        "benchmark": {"id": "q1", "question": "Silk is a protein.", "answer": "True", "category": "tf"}}


def stand_in_inputs(root: Path) -> dict[str, str]:
    """Tiny data files at the paper mix's paths, and a hub cache that pins the models."""
    data = root / "data"
    layout = {"cpt": "text", "sft": "messages", "preference": "preference", "benchmark": "benchmark",
              "heldout": "text"}
    names = {"cpt": ["bio-silk-mech-mix-80K", "bio-materials-text-60K"], "sft": ["ultrachat_200k", "domain_qa"],
             "preference": ["orpo-dpo-mix-40k", "domain_preferences"], "benchmark": ["basic", "advanced"],
             "heldout": ["domain_text"]}
    for folder, files in names.items():
        for name in files:
            path = data / folder / f"{name}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(ROWS[layout[folder]]) + "\n")
    cache = root / "hub"
    for repo in ("mistralai/Mistral-7B-v0.3", "mistralai/Mistral-7B-Instruct-v0.3"):
        refs = cache / f"models--{repo.replace('/', '--')}" / "refs"
        refs.mkdir(parents=True)
        (refs / "main").write_text("0" * 40)
    return {"HPCADAPT_DATA": str(data), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def stage_gpu_hours(stage: dict) -> float:
    settings = stage["settings"]
    mix = next((m for m in MIX_TOKENS if stage["data_sources"] and f"/{m}/" in stage["data_sources"][0]["path"]),
               None)
    if mix is None:
        return 0.0
    tokens = MIX_TOKENS[mix] * settings["num_train_epochs"]
    return tokens * 6 * PARAMETERS / (MFU * PEAK) / 3600


def plan_in_process(grid: str, out: Path) -> list:
    from hydra import compose, initialize_config_dir

    from hpcadapt.__main__ import conf_dir
    from hpcadapt.config import register_configs
    from hpcadapt.grid import strategies_of
    from hpcadapt.plan import plan_pipeline

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"+grid={grid}", f"output_root={out}", "model.attn_implementation=sdpa"])
    return [plan_pipeline(cfg, strategy) for strategy in strategies_of(cfg)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default="paper_mistral")
    ap.add_argument("--submit", action="store_true", help="also submit to Slurm (held, then cancelled)")
    ap.add_argument("--partition", default="debug")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpcadapt-grid-"))
    os.environ.update({**stand_in_inputs(work), "WANDB_MODE": "disabled"})

    plans = plan_in_process(args.grid, work / "out")
    every = [s for p in plans for s in p.stages]
    unique = list({s.stage_dir: s for s in every}.values())

    def hours(stages) -> float:
        return sum(stage_gpu_hours({"settings": s.spec.settings, "data_sources": s.spec.data_sources})
                   for s in stages)

    print(f"{args.grid}: {len(plans)} strategies")
    print(f"stage runs: {len(every)} chain steps, {len(unique)} unique stages "
          f"({len(every) / len(unique):.2f}x fewer runs with sharing)")
    print(f"training GPU-hours (assumed {MFU:.0%} MFU on H100, N = {PARAMETERS:.3g}): {hours(every):,.0f} without "
          f"sharing, {hours(unique):,.0f} with sharing ({hours(every) / max(hours(unique), 1e-9):.2f}x)")
    print(f"assumed tokens per epoch of each mix: {MIX_TOKENS}")

    base = [sys.executable, "-X", "importtime", "-m", "hpcadapt", f"+grid={args.grid}",
            f"output_root={work / 'out'}", "model.attn_implementation=sdpa"]

    def timed(extra: list[str]) -> tuple[float, str, bool]:
        started = time.perf_counter()
        done = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=300)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"failed: {done.stderr[-3000:]}")
        torch = any(line.rstrip().endswith("| torch") for line in done.stderr.splitlines())
        return elapsed, done.stdout, torch

    plan_s, _, torch = timed(["dry_run=true"])
    print(f"plan (dry run) of the whole grid: {plan_s:.2f} s wall, torch imported: {torch} (target < 3 s, no torch)")
    if args.submit:
        held = ["cluster=local_slurm", f"cluster.partition={args.partition}",
                "+cluster.additional_parameters.hold=true", "+cluster.merge.additional_parameters.hold=true",
                "+cluster.eval.additional_parameters.hold=true", "cluster.snapshot_code=false"]
        submit_s, out, torch = timed(held)
        jobs = [line.split()[2] for line in out.splitlines() if " job " in line and "submitted" in line]
        print(f"plan and submit: {submit_s:.2f} s wall for {len(jobs)} jobs, torch imported: {torch}")
        subprocess.run(["scancel", *{j.split("_")[0] for j in jobs}], check=False)
        subprocess.run(["scancel", "-n", f"{args.grid}.report"], check=False)


if __name__ == "__main__":
    main()
