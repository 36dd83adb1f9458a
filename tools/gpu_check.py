"""The GPU check: a 1B-parameter CPT stage through hpcadapt and through a bare TRL script, and
the Mistral rehearsal on CUDA. Prints one table; writes it as JSON too.

    python tools/gpu_check.py --out gpu_check/            # on a node with one GPU, ~5 minutes
    python tools/gpu_check.py --out /tmp/x --tiny          # the same logic on a CPU, in ~2 minutes

Every training run is a fresh process on the same model (a randomly initialised Llama of
1.0B parameters: hidden 2048, 22 layers, 32/4 heads, intermediate 5632), the same data
and the same settings (packing, max_length 2048, per-device batch 8, bf16, sdpa, no
activation checkpointing, no checkpoint writes, `--steps` optimizer steps). Speed is
train_runtime and the tokens TRL counted, so start-up is not in it; MFU counts
6N + 12·L·d·S FLOPs per token against the GPU's bf16 peak (hpcadapt/throughput.py).
Runs: bare TRL; hpcadapt without DeepSpeed; hpcadapt with ZeRO-3; hpcadapt with ZeRO-3 on
short documents (many per packed row). Then `+experiment=mistral_orpo_slerp
scale=rehearsal` end to end in bf16 (needs the rehearsal's tokenizer packages, or
`--standins DIR` holding prebuilt mistral_v03 `base/` and `instruct/` folders).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ONE_B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

BARE_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_dir, data, out, steps, length, batch = sys.argv[1:7]
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = load_dataset("json", data_files=data, split="train").shuffle(seed=42)
    args = SFTConfig(output_dir=out + "/checkpoints", learning_rate=2e-5, lr_scheduler_type="cosine",
                     warmup_steps=0.1, max_steps=int(steps), per_device_train_batch_size=int(batch),
                     gradient_accumulation_steps=1, logging_steps=10, save_strategy="no", report_to=[],
                     use_cpu=not cuda, bf16=cuda, seed=42, dataset_text_field="text", packing=True,
                     max_length=int(length), gradient_checkpointing=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, attn_implementation="sdpa",
                                                 dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    tokens = max(e.get("num_tokens", 0) for e in trainer.state.log_history)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    print("RESULT " + json.dumps({"train_runtime": result.metrics["train_runtime"], "tokens": tokens,
                                  "peak_memory_gib": peak}))
''')


def build_model(out: Path, shape: dict, texts: list[str], vocab_size: int) -> Path:
    import torch

    from hpcadapt.demo.tiny import TinyShape, build_tokenizer, save_pretrained_dir
    from hpcadapt.demo.tiny import build_model as tiny_model

    if (out / "config.json").is_file():
        return out
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    model = tiny_model(tokenizer, shape=TinyShape(max_position_embeddings=4096, **shape))
    model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    save_pretrained_dir(model, tokenizer, out)
    return out


def write_documents(path: Path, texts: list[str], words: tuple[int, int], count: int, seed: int = 0) -> Path:
    """`count` documents of a random length in `words`, made of the demo domain's sentences."""
    rng = random.Random(seed)
    pool = " ".join(texts).split()
    with path.open("w") as f:
        for _ in range(count):
            n = rng.randint(*words)
            start = rng.randrange(len(pool))
            doc = [pool[(start + i) % len(pool)] for i in range(n)]
            f.write(json.dumps({"text": " ".join(doc)}) + "\n")
    return path


def run(cmd: list[str], log: Path, timeout: float) -> tuple[int, float, str]:
    started = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - started, log.read_text(errors="replace")


def toolkit_run(label: str, work: Path, model: Path, data: Path, args, extra: list[str]) -> dict:
    root = work / label.replace(" ", "_").replace("=", "-")
    cmd = [sys.executable, "-m", "hpcadapt", f"output_root={root}", "data.generate=null", "pipeline.prepare=[]",
           "model.family=null", f"model.instruct={model}", f"model.base={model}", "model.dtype=bfloat16",
           "model.attn_implementation=sdpa", "pipeline.chain=[cpt]", "pipeline.merge=false",
           "pipeline.evaluate=false", "wandb.enabled=false", f"data.mixes.cpt.sources=[{{path: {data}}}]",
           f"stages.cpt.max_steps={args.steps}", f"stages.cpt.max_length={args.length}",
           f"stages.cpt.per_device_train_batch_size={args.batch}", f"stages.cpt.global_batch_size={args.batch}",
           "stages.cpt.learning_rate=2e-5", "stages.cpt.gradient_checkpointing=false",
           "stages.cpt.logging_steps=10", *extra]
    code, wall, log = run(cmd, root.with_suffix(".log"), args.timeout)
    record = {"run": label, "rc": code, "wall_s": round(wall, 1)}
    manifests = list(root.glob("stages/cpt-*/manifest.json"))
    if code == 0 and manifests:
        metrics = json.loads(manifests[0].read_text())["metrics"]
        speed = metrics["speed"]
        record.update(train_runtime=metrics["runtime_s"], tokens=speed["tokens"],
                      tokens_per_s=speed["tokens_per_s_per_gpu"], mfu=speed["mfu"],
                      peak_memory_gib=speed["peak_memory_gib"], attention=metrics.get("attention"))
    else:
        record["log_tail"] = log[-1500:]
    return record


def bare_run(work: Path, model: Path, data: Path, args) -> dict:
    from transformers import AutoConfig

    from hpcadapt.throughput import stage_throughput

    script = work / "bare.py"
    script.write_text(BARE_SCRIPT)
    cmd = [sys.executable, str(script), str(model), str(data), str(work / "bare"), str(args.steps), str(args.length),
           str(args.batch)]
    code, wall, log = run(cmd, work / "bare.log", args.timeout)
    record = {"run": "bare TRL", "rc": code, "wall_s": round(wall, 1)}
    lines = [line for line in log.splitlines() if line.startswith("RESULT ")]
    if code == 0 and lines:
        result = json.loads(lines[-1][len("RESULT "):])
        config = AutoConfig.from_pretrained(model)
        params = param_count(model)
        device = gpu_name()
        speed = stage_throughput(result["tokens"], result["train_runtime"], 1, config, params, args.length, device)
        record.update(train_runtime=result["train_runtime"], tokens=result["tokens"],
                      tokens_per_s=speed["tokens_per_s_per_gpu"], mfu=speed["mfu"],
                      peak_memory_gib=result["peak_memory_gib"])
    else:
        record["log_tail"] = log[-1500:]
    return record


def rehearsal_run(work: Path, args) -> dict:
    cmd = [sys.executable, "-m", "hpcadapt", "+experiment=mistral_orpo_slerp", "scale=rehearsal",
           f"output_root={work / 'rehearsal'}", "wandb.enabled=false"]
    if args.standins:
        cmd += ["model.family=null", f"model.base={Path(args.standins) / 'base'}",
                f"model.instruct={Path(args.standins) / 'instruct'}"]
    code, wall, log = run(cmd, work / "rehearsal.log", args.timeout)
    record = {"run": "mistral_orpo_slerp rehearsal", "rc": code, "wall_s": round(wall, 1)}
    merged = list((work / "rehearsal").glob("stages/merge-*/config.json"))
    if code == 0 and merged:
        record["merged_vocab"] = json.loads(merged[0].read_text())["vocab_size"]
        record["stages"] = {m.parent.name.split("-")[0]: json.loads(m.read_text())["metrics"].get("runtime_s")
                            for m in (work / "rehearsal").glob("stages/*/manifest.json")}
    else:
        record["log_tail"] = log[-2500:]
    return record


def param_count(model_dir: Path) -> int:
    from hpcadapt.training import saved_parameters

    return saved_parameters(model_dir)


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--tiny", action="store_true", help="toy sizes, to check the logic on a CPU")
    ap.add_argument("--standins", help="prebuilt mistral_v03 stand-ins (base/, instruct/) for the rehearsal")
    ap.add_argument("--skip", default="", help="comma-separated runs to skip: bare,none,zero3,short,rehearsal")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    args.length, args.batch = (128, 2) if args.tiny else (2048, 8)
    if args.tiny:
        args.steps = min(args.steps, 3)
    skip = set(filter(None, args.skip.split(",")))
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from hpcadapt.demo.domain import generate_domain, read_jsonl

    domain = generate_domain(work / "domain")
    texts = [row["text"] for row in read_jsonl(domain.domain_text)]
    model = build_model(work / "model", TINY if args.tiny else ONE_B, texts, vocab_size=9476)
    long_docs = write_documents(work / "long.jsonl", texts, (800, 900), 120 if args.tiny else 600)
    short_docs = write_documents(work / "short.jsonl", texts, (80, 400), 400 if args.tiny else 3000)
    print(f"model {param_count(model):,} parameters on {gpu_name() or 'CPU'}", flush=True)

    records = []
    plan = [("bare", lambda: bare_run(work, model, long_docs, args)),
            ("none", lambda: toolkit_run("hpcadapt deepspeed=none", work, model, long_docs, args, ["deepspeed=none"])),
            ("zero3", lambda: toolkit_run("hpcadapt deepspeed=zero3", work, model, long_docs, args,
                                          ["deepspeed=zero3"])),
            ("short", lambda: toolkit_run("hpcadapt zero3 short docs", work, model, short_docs, args,
                                          ["deepspeed=zero3"])),
            ("rehearsal", lambda: rehearsal_run(work, args))]
    for key, job in plan:
        if key in skip:
            continue
        records.append(job())
        print(json.dumps(records[-1])[:600], flush=True)
    (work / "gpu_check.json").write_text(json.dumps(records, indent=2))
    print("\n| run | rc | train_runtime s | tokens/s | MFU | peak GiB | wall s |\n|---|---|---|---|---|---|---|")
    for r in records:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        print(f"| {r['run']} | {r['rc']} | {r.get('train_runtime', '-')} | {r.get('tokens_per_s', '-')} | {mfu} | "
              f"{r.get('peak_memory_gib', '-')} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
