"""How much wall time hpcadapt adds over a bare TRL script doing the same tiny CPT run.

    python tools/bench_overhead.py [--steps 300] [--repeats 3] [--device cpu|cuda]

Both sides train the same tiny Llama on the same packed text with the same settings (no
checkpoint, no dataloader workers, logging every 10 steps; on cuda bf16 autocast over fp32
weights on both sides) and save a model folder; they run alternately, each in a fresh
process (and, for hpcadapt, a fresh output folder so nothing is skipped). Printed: the
training loop's time per step (Trainer's train_runtime / steps: what a long run pays) and
the whole command's wall time (start-up included), medians and ratios. Also times `--cfg job`.
Targets: per-step overhead <= 2 %, wall time <= 5 %, `--cfg job` <= 1.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
       "TOKENIZERS_PARALLELISM": "false"}

BARE_SCRIPT = textwrap.dedent('''
    import sys
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_dir, data, out, steps, device = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=data, split="train").shuffle(seed=42)
    args = SFTConfig(output_dir=out + "/checkpoints", learning_rate=2e-3, lr_scheduler_type="cosine",
                     warmup_steps=0.1, max_steps=steps, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                     logging_steps=10, save_strategy="no", report_to=[], use_cpu=device == "cpu",
                     bf16=device == "cuda", seed=42, dataloader_num_workers=0,
                     dataset_text_field="text", packing=True, max_length=128,
                     gradient_checkpointing=False)  # as tiny_demo's cpt stage (TRL defaults it on)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    print(f"TRAIN_RUNTIME={result.metrics['train_runtime']}")
    trainer.save_model(out)
    tokenizer.save_pretrained(out)
''')


def timed(cmd: list[str]) -> tuple[float, str]:
    """The command's wall time and its standard output."""
    started = time.perf_counter()
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return time.perf_counter() - started, out.stdout


def toolkit_runtime(output_root: Path) -> float:
    """train_runtime of the toolkit's cpt stage, from its manifest."""
    import json

    (manifest,) = output_root.glob("stages/cpt-*/manifest.json")
    return float(json.loads(manifest.read_text())["metrics"]["runtime_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()

    from hpcadapt.demo.domain import generate_domain
    from hpcadapt.demo.tiny import build_tiny_model_dir

    work = Path(tempfile.mkdtemp(prefix="hpcadapt-bench-"))
    files = generate_domain(work / "data")
    texts = [line for line in Path(files.domain_text).read_text().splitlines()]
    import json

    model_dir = build_tiny_model_dir(work / "model", [json.loads(t)["text"] for t in texts])
    bare = work / "bare.py"
    bare.write_text(BARE_SCRIPT)

    def run_bare(i: int) -> tuple[float, float]:
        wall, out = timed([sys.executable, str(bare), str(model_dir), str(files.domain_text), str(work / f"bare{i}"),
                           str(args.steps), args.device])
        return wall, float(out.split("TRAIN_RUNTIME=")[1].split()[0])

    def run_toolkit(i: int) -> tuple[float, float]:
        wall, _ = timed([
            sys.executable, "-m", "hpcadapt", f"output_root={work / f'tk{i}'}", "data.generate=null",
            "pipeline.prepare=[]", f"model.instruct={model_dir}", "pipeline.chain=[cpt]", "pipeline.merge=false",
            "pipeline.evaluate=false", "wandb.enabled=false", "deepspeed=none", "threads=1",  # as OMP_NUM_THREADS
            f"data.mixes.cpt.sources=[{{path: {files.domain_text}}}]", f"stages.cpt.max_steps={args.steps}",
            "stages.cpt.learning_rate=2e-3", "stages.cpt.save_steps=1000000",
            f"model.dtype={'bfloat16' if args.device == 'cuda' else 'float32'}", "stages.cpt.logging_steps=10",
        ])
        return wall, toolkit_runtime(work / f"tk{i}")

    bare_runs, tk_runs = [], []
    for i in range(args.repeats):
        bare_runs.append(run_bare(i))
        tk_runs.append(run_toolkit(i))
        print(f"  run {i + 1}: bare TRL {bare_runs[-1][0]:.2f} s ({1000 * bare_runs[-1][1] / args.steps:.1f} ms/step), "
              f"hpcadapt {tk_runs[-1][0]:.2f} s ({1000 * tk_runs[-1][1] / args.steps:.1f} ms/step)", flush=True)
    for what, index, target in (("per step", 1, 2), ("wall time", 0, 5)):
        b = statistics.median(r[index] for r in bare_runs)
        t = statistics.median(r[index] for r in tk_runs)
        scale, unit = (1000 / args.steps, "ms") if index else (1, "s")
        print(f"tiny CPT on {args.device}, {args.steps} steps, {what}: bare TRL median {b * scale:.2f} {unit}, "
              f"hpcadapt median {t * scale:.2f} {unit}, ratio {t / b:.3f} ({100 * (t / b - 1):+.1f} %, "
              f"target <= {target} %)")

    cfg_times = [timed([sys.executable, "-m", "hpcadapt", "+experiment=mistral_orpo_slerp", "--cfg", "job"])[0]
                 for _ in range(5)]
    print(f"--cfg job: median {statistics.median(cfg_times):.2f} s over 5 runs (target <= 1.5 s)")


if __name__ == "__main__":
    main()
