"""Time per SLERP schedule: in-memory sweep against merge-to-disk-then-evaluate.

Builds two parents of a chosen size from scratch (no hub), a benchmark of N
questions, and for each schedule measures
  in memory: merge tensors into the one loaded model + evaluate (hpcadapt.eval.sweep);
  on disk:   hpcadapt_merge.run_merge to a full checkpoint + load it + evaluate.
Writes bench_eval.json and bench_eval.png into --out and prints a table.

    OMP_NUM_THREADS=2 python tools/bench_eval.py --out bench_eval_out --hidden 512 --layers 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def build_parents(work: Path, hidden: int, layers: int, vocab: int, questions: int) -> tuple[Path, Path, Path]:
    """Two parents sharing one tokenizer (the second a perturbed copy) and a benchmark file."""
    import torch

    from hpcadapt.demo.tiny import TinyShape, build_model, build_tokenizer, save_pretrained_dir

    rows = [{"id": f"q{i}", "question": f"Which phase forms in alloy number {i} after annealing?",
             "choices": ["ferrite", "austenite", "martensite", "pearlite"], "answer": "ABCD"[i % 4],
             "category": ["basic", "advanced"][i % 2]} for i in range(questions)]
    bench = work / "bench.jsonl"
    bench.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tokenizer = build_tokenizer([r["question"] + " " + " ".join(r["choices"]) for r in rows] * 3, vocab_size=vocab)
    shape = TinyShape(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                      num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 128, 1))
    base = build_model(tokenizer, shape=shape, seed=0)
    save_pretrained_dir(base, tokenizer, work / "base")
    with torch.no_grad():
        for param in base.parameters():
            param.add_(torch.randn_like(param) * param.std().clamp_min(1e-3) * 0.5)
    save_pretrained_dir(base, tokenizer, work / "other")
    return work / "base", work / "other", bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2, help="sweep/merge repetitions; the median is reported")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    from hpcadapt_merge import run_merge

    from hpcadapt.atomic import write_atomic
    from hpcadapt.eval.suite import evaluate_models
    from hpcadapt.eval.sweep import default_schedules, sweep_schedules

    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base, other, bench = build_parents(work, args.hidden, args.layers, args.vocab, args.questions)
    params = sum(os.path.getsize(p) for p in base.glob("*.safetensors")) // 4
    schedules = default_schedules()
    print(f"parents: {params / 1e6:.1f}M parameters (float32, {params * 4 / 1e6:.0f} MB each); "
          f"{args.questions} questions; schedules: {', '.join(schedules)}", file=sys.stderr)

    in_memory, on_disk = {n: [] for n in schedules}, {n: [] for n in schedules}
    memory_merge, disk_merge = {n: [] for n in schedules}, {n: [] for n in schedules}
    written = 0
    sweep_totals = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        sweep = sweep_schedules(base, other, [bench], schedules=schedules, include_defaults=False,
                                batch_size=args.batch_size, device=args.device)
        sweep_totals.append(time.perf_counter() - started)
        for name in schedules:
            in_memory[name].append(sweep.seconds[name])
            memory_merge[name].append(sweep.merge_seconds[name])
        for name, spec in schedules.items():
            merged_dir = work / f"merged_{name}"
            config = {"merge_method": "slerp", "base_model": str(base.resolve()),
                      "models": [{"model": str(base.resolve())}, {"model": str(other.resolve())}],
                      "parameters": {"t": spec}, "dtype": "float32"}
            started = time.perf_counter()
            run_merge(config, merged_dir, force=True, progress=False)
            merged_at = time.perf_counter()
            evaluate_models({name: merged_dir}, [bench], None, work / f"eval_{name}", batch_size=args.batch_size,
                            device=args.device)
            on_disk[name].append(time.perf_counter() - started)
            disk_merge[name].append(merged_at - started)
            written = sum(p.stat().st_size for p in merged_dir.rglob("*") if p.is_file())
            shutil.rmtree(merged_dir)

    def med(values):
        return round(statistics.median(values), 3)

    rows = {name: {"in_memory_s": med(in_memory[name]), "in_memory_merge_s": med(memory_merge[name]),
                   "disk_s": med(on_disk[name]), "disk_merge_s": med(disk_merge[name])} for name in schedules}
    summary = {
        "parameters": params,
        "disk_bytes_per_schedule": written,
        "questions": args.questions,
        "repeats": args.repeats,
        "schedules": rows,
        "sweep_total_s (incl. one model load)": med(sweep_totals),
        "disk_total_s": med([sum(on_disk[n][r] for n in schedules) for r in range(args.repeats)]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "bench_eval.json", json.dumps(summary, indent=1))
    plot(rows, args.out / "bench_eval.png", params)
    print(f"{'schedule':14} {'in-memory s':>12} {'(merge)':>8} {'disk s':>8} {'(merge)':>8}")
    for name, row in rows.items():
        print(
            f"{name:14} {row['in_memory_s']:12.2f} {row['in_memory_merge_s']:8.2f} {row['disk_s']:8.2f} "
            f"{row['disk_merge_s']:8.2f}"
        )
    print(
        f"whole sweep in memory {summary['sweep_total_s (incl. one model load)']:.2f} s; "
        f"merge-to-disk then evaluate {summary['disk_total_s']:.2f} s"
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


def plot(rows: dict, path: Path, params: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [rows[n]["in_memory_s"] for n in names], 0.4, label="in memory (merge + evaluate)")
    ax.bar([x + 0.2 for x in xs], [rows[n]["disk_s"] for n in names], 0.4, label="merge to disk, load, evaluate")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("seconds per schedule (median)")
    ax.set_title(f"schedule sweep cost, {params / 1e6:.0f}M-parameter parents")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
