"""How much wall time hpcadapt adds over a bare TRL script doing the same tiny CPT run.

    python tools/bench_overhead.py [--steps 300] [--repeats 3]

Both sides train the same tiny Llama on the same packed text with the same settings
and save a model folder; they run alternately, each in a fresh process (and, for
hpcadapt, a fresh output folder so nothing is skipped). Also times `--cfg job`.
Targets: overhead <= 5 %, `--cfg job` <= 1.5 s.
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

    model_dir, data, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=data, split="train").shuffle(seed=42)
    args = SFTConfig(output_dir=out + "/checkpoints", learning_rate=2e-3, lr_scheduler_type="cosine",
                     warmup_steps=0.1, max_steps=steps, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                     logging_steps=10, save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=42,
                     dataset_text_field="text", packing=True, max_length=128,
                     gradient_checkpointing=False)  # as tiny_demo's cpt stage (TRL defaults it on)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(out)
    tokenizer.save_pretrained(out)
''')


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from hpcadapt.demo.domain import generate_domain
    from hpcadapt.tiny import build_tiny_model_dir

    work = Path(tempfile.mkdtemp(prefix="hpcadapt-bench-"))
    files = generate_domain(work / "data")
    texts = [line for line in Path(files.domain_text).read_text().splitlines()]
    import json

    model_dir = build_tiny_model_dir(work / "model", [json.loads(t)["text"] for t in texts])
    bare = work / "bare.py"
    bare.write_text(BARE_SCRIPT)

    def run_bare(i: int) -> float:
        return timed([sys.executable, str(bare), str(model_dir), str(files.domain_text), str(work / f"bare{i}"),
                      str(args.steps)])

    def run_toolkit(i: int) -> float:
        return timed([
            sys.executable, "-m", "hpcadapt", f"output_root={work / f'tk{i}'}", "data.generate=null",
            "pipeline.prepare=[]", f"model.instruct={model_dir}", "pipeline.chain=[cpt]", "pipeline.merge=false",
            "pipeline.evaluate=false", "wandb.enabled=false", "deepspeed=none",
            f"data.mixes.cpt.sources=[{{path: {files.domain_text}}}]", f"stages.cpt.max_steps={args.steps}",
            "stages.cpt.learning_rate=2e-3", "stages.cpt.save_steps=1000000",
        ])

    bare_times, tk_times = [], []
    for i in range(args.repeats):
        bare_times.append(run_bare(i))
        tk_times.append(run_toolkit(i))
        print(f"  run {i + 1}: bare TRL {bare_times[-1]:.2f} s, hpcadapt {tk_times[-1]:.2f} s", flush=True)
    b, t = statistics.median(bare_times), statistics.median(tk_times)
    print(f"tiny CPT, {args.steps} steps: bare TRL median {b:.2f} s, hpcadapt median {t:.2f} s, "
          f"overhead {100 * (t / b - 1):+.1f} % (target <= 5 %)")

    cfg_times = [timed([sys.executable, "-m", "hpcadapt", "+experiment=mistral_orpo_slerp", "--cfg", "job"])
                 for _ in range(5)]
    print(f"--cfg job: median {statistics.median(cfg_times):.2f} s over 5 runs (target <= 1.5 s)")


if __name__ == "__main__":
    main()
