"""Benchmark hpcadapt-merge against mergekit on a synthetic, deterministic model pair.

    python tools/bench_merge.py                      # Mistral-shaped 22 layers, ~2.9 GB per parent
    python tools/bench_merge.py --method ties --repeats 1 --keep   # TIES: time, memory, parity
    python tools/bench_merge.py --shape 7b --only-ours --repeats 1   # the 7B memory check

The second parent is the first plus relative Gaussian noise whose size varies per
tensor, so cosines spread over 0.99-0.9999 like a real fine-tune and both SLERP
branches occur. Each repeat runs, in turn, tuned mergekit (its faster malloc settings),
ours as shipped (the output on disk, fsynced, before it is published), ours with --no-fsync
(what mergekit does: it never fsyncs, its output is in the page cache when it exits) and, with
--shipped-mergekit, mergekit as shipped; warm page cache, no pending writeback (sync before each
run). Each run is timed and measured by /usr/bin/time -v (peak RSS of the largest process; ours
also reports the sum over its workers), with the 1-minute load average read just before it, and
the `sync` right after it is timed too: run + sync is when that output is on disk.

The summary gives pair-by-pair ratios (the baseline's time over ours in the same repeat: median,
lowest, highest) three ways: ours as shipped against tuned mergekit as it runs (ours pays the
disk, mergekit does not), and like for like, ours --no-fsync against tuned mergekit (neither
waits for the disk) and ours as shipped against tuned mergekit + sync (both on disk). It also
measures the disk: the output's bytes written and fdatasynced by one writer, the floor of any
merge that leaves its output on disk. Then medians, GB/s against the page-cache read/write
floor, and parity with mergekit (hpcadapt_merge.compare). Other load inflates every figure: run
it when /proc/loadavg is low (the load of every run is printed).
Data lives in bench/ (git-ignored) and is deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

from hpcadapt_merge import methods
from hpcadapt_merge.schedule import PAPER_SLERP_T

SHAPES = {
    "mistral-22": dict(layers=22, hidden=2048, intermediate=8192, vocab=32768, kv_ratio=4),
    "7b": dict(layers=32, hidden=4096, intermediate=14336, vocab=32768, kv_ratio=4),
    "tiny": dict(layers=4, hidden=256, intermediate=1024, vocab=4096, kv_ratio=4),
}
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


def tensor_shapes(s: dict) -> dict[str, tuple[int, ...]]:
    h, i, v, kv = s["hidden"], s["intermediate"], s["vocab"], s["hidden"] // s["kv_ratio"]
    shapes = {"model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h), "model.norm.weight": (h,)}
    for n in range(s["layers"]):
        p = f"model.layers.{n}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                       p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    return shapes


def generate_pair(folder: Path, shape: dict, shard_bytes: int = 2 * 10**9) -> tuple[Path, Path]:
    """Write parents a/ and b/ (bf16, sharded, with config.json) unless already there."""
    import torch
    from safetensors.torch import save_file

    a_dir, b_dir = folder / "a", folder / "b"
    if (b_dir / "model.safetensors.index.json").is_file():
        return a_dir, b_dir
    shapes = tensor_shapes(shape)
    for d in (a_dir, b_dir):
        d.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], [], 0
    for name, dims in shapes.items():
        nbytes = math.prod(dims) * 2
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    shards.append(current)
    weight_map = {}
    for k, names in enumerate(shards):
        shard_name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        a_part, b_part = {}, {}
        for name in names:
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            dims = shapes[name]
            if len(dims) == 1:
                a = 1.0 + 0.05 * torch.randn(dims, generator=g)
                b = a + 0.001 * torch.randn(dims, generator=g)
            else:
                a = 0.02 * torch.randn(dims, generator=g)
                # relative noise sigma from 0.01 to 0.14: cosine 0.99..0.99995, both branches
                sigma = math.exp(math.log(0.01) + (zlib.crc32(b"s" + name.encode()) % 1000) / 999 * math.log(14))
                b = a + sigma * 0.02 * torch.randn(dims, generator=g)
            a_part[name], b_part[name] = a.bfloat16(), b.bfloat16()
            weight_map[name] = shard_name
        save_file(a_part, a_dir / shard_name, metadata={"format": "pt"})
        save_file(b_part, b_dir / shard_name, metadata={"format": "pt"})
        del a_part, b_part
    total = sum(math.prod(d) * 2 for d in shapes.values())
    config = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": shape["hidden"],
              "intermediate_size": shape["intermediate"], "num_hidden_layers": shape["layers"],
              "num_attention_heads": shape["hidden"] // 64,
              "num_key_value_heads": shape["hidden"] // 64 // shape["kv_ratio"], "vocab_size": shape["vocab"],
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
              "torch_dtype": "bfloat16", "hidden_act": "silu"}
    for d in (a_dir, b_dir):
        (d / "config.json").write_text(json.dumps(config, indent=2))
        (d / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return a_dir, b_dir


def recipe(a: Path, b: Path, layers: int, method: str = "slerp") -> dict:
    spec = methods.get(method)
    if method == "slerp":  # the paper's merge
        return {"merge_method": "slerp", "base_model": str(a),
                "slices": [{"sources": [{"model": str(a), "layer_range": [0, layers]},
                                        {"model": str(b), "layer_range": [0, layers]}]}],
                "parameters": {"t": PAPER_SLERP_T}, "dtype": "bfloat16"}
    sparsifies = spec.kernel_args.get("sparsify") is not None  # TIES, DARE: half of each task vector kept
    parameters = {"weight": 1.0, "density": 0.5} if sparsifies else {"weight": 1.0}
    models = [{"model": str(b), "parameters": parameters}]
    if spec.base is None:  # linear: every model is an input, the first one too
        models.insert(0, {"model": str(a), "parameters": {"weight": 1.0}})
        return {"merge_method": method, "models": models, "dtype": "bfloat16"}
    return {"merge_method": method, "base_model": str(a), "models": models, "dtype": "bfloat16"}


def load_average() -> float:
    return float(open("/proc/loadavg").read().split()[0]) if os.path.exists("/proc/loadavg") else float("nan")


def timed(command: list[str], env: dict) -> tuple[float, int, str]:
    """Wall seconds and peak RSS (KiB, /usr/bin/time -v) of one command."""
    time_bin = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None
    full = ([time_bin, "-v"] if time_bin else []) + command
    started = time.perf_counter()
    done = subprocess.run(full, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{done.stderr[-3000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return seconds, int(match.group(1)) if match else -1, done.stderr


def warm(paths) -> float:
    """Read every input file (page cache) and return the read throughput in GB/s."""
    total, started = 0, time.perf_counter()
    buf = bytearray(16 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total / 1e9 / (time.perf_counter() - started)


def fill_seconds(folder: Path, nbytes: int, durable: bool) -> float:
    """Seconds one writer takes to fill a preallocated file with pwrites of the merger's piece
    size, as the merger writes its shards: into the page cache (the output's floor on one core),
    or, durable, followed by one fdatasync (which also empties the disk's write cache: the floor
    of any merge that leaves its output on disk)."""
    from hpcadapt_merge.kernels import WRITE_PIECE

    chunk = os.urandom(WRITE_PIECE)
    path = folder / "fill.bin"
    with open(path, "wb", buffering=0) as f:
        os.posix_fallocate(f.fileno(), 0, nbytes)
    os.sync()
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY)
    for offset in range(0, nbytes, len(chunk)):
        os.pwrite(fd, chunk, offset)
    if durable:
        os.fdatasync(fd)
    os.close(fd)
    seconds = time.perf_counter() - started
    path.unlink()
    os.sync()
    return seconds


def ratios(baseline: list[float], ours: list[float]) -> str:
    pairs = [b / o for b, o in zip(baseline, ours)]
    return (f"median {statistics.median(pairs):.2f}x, lowest {min(pairs):.2f}x, highest {max(pairs):.2f}x "
            f"({', '.join(f'{r:.2f}' for r in pairs)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="mistral-22")
    parser.add_argument("--method", default="slerp", choices=methods.METHOD_NAMES)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--dir", type=Path, default=Path("bench"))
    parser.add_argument("--only-ours", action="store_true", help="skip mergekit (e.g. the 7B memory check)")
    parser.add_argument("--shipped-mergekit", action="store_true", help="also time mergekit as shipped (slow)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    folder = args.dir / args.shape
    folder.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[args.shape]
    started = time.perf_counter()
    a, b = generate_pair(folder, shape)
    print(f"pair ready in {time.perf_counter() - started:.0f} s: {a}, {b}", flush=True)
    config = folder / f"recipe-{args.method}.yml"
    import yaml

    config.write_text(yaml.safe_dump(recipe(a.resolve(), b.resolve(), shape["layers"], args.method)))
    inputs = sorted(a.glob("*.safetensors")) + sorted(b.glob("*.safetensors"))
    in_bytes = sum(p.stat().st_size for p in inputs)
    bin_dir = Path(sys.executable).parent
    # as a user runs it (its progress bar goes to the captured stderr): its last line gives the peak
    # RSS summed over the main process and its workers
    ours = [str(bin_dir / "hpcadapt-merge"), str(config), str(folder / "ours"), "--force"]
    ours += ["--workers", str(args.workers)] if args.workers else []
    seed = ["--random-seed", "0"] if methods.get(args.method).random else []
    runs, envs = {}, {}
    if not args.only_ours:
        mergekit = [str(bin_dir / "mergekit-yaml"), str(config), str(folder / "mergekit-tuned")] + seed
        runs["mergekit-tuned"], envs["mergekit-tuned"] = mergekit, {**env, **TUNED_MALLOC}
    runs["ours"], envs["ours"] = ours + seed, env
    runs["ours --no-fsync"], envs["ours --no-fsync"] = ours + seed + ["--no-fsync"], env
    if args.shipped_mergekit and not args.only_ours:
        runs["mergekit"], envs["mergekit"] = mergekit[:2] + [str(folder / "mergekit")] + seed, env
    results = {name: [] for name in runs}
    syncs = {name: [] for name in runs}
    summed_mib: dict[str, int] = {}  # ours: peak RSS summed over its processes
    warm(inputs)  # the first read may come from disk
    read_gbps = warm(inputs)
    print(f"load average before the runs: {load_average():.2f}", flush=True)
    for repeat in range(args.repeats):
        for name, command in runs.items():
            out = Path(command[2])
            shutil.rmtree(out, ignore_errors=True)
            warm(inputs)
            os.sync()  # no run pays for the previous run's writeback
            load = load_average()
            seconds, rss_kib, stderr = timed(command, envs[name])
            synced = time.perf_counter()
            os.sync()  # what it takes to have this output on disk
            sync_s = time.perf_counter() - synced
            results[name].append((seconds, rss_kib, load))
            if summed := re.search(r"(\d+) MiB all processes", stderr):
                summed_mib[name] = max(summed_mib.get(name, 0), int(summed.group(1)))
            syncs[name].append(sync_s)
            print(f"[{repeat + 1}/{args.repeats}] {name:16s} {seconds:7.2f} s, then sync {sync_s:5.2f} s  "
                  f"peak RSS {rss_kib / 2**20:6.2f} GiB  load {load:.2f}", flush=True)
    os.sync()
    fill_bytes = 2 * 10**9
    write_gbps = fill_bytes / 1e9 / min(fill_seconds(folder, fill_bytes, durable=False) for _ in range(2))
    out_bytes = sum(p.stat().st_size for p in (folder / "ours").glob("*.safetensors"))
    disk_s = min(fill_seconds(folder, out_bytes, durable=True) for _ in range(2))
    loads = [load for r in results.values() for _, _, load in r]
    print(f"\nsummary ({args.shape}, {args.method}, {args.repeats} repeats, warm cache; load average at the runs "
          f"{min(loads):.2f}-{max(loads):.2f}, median {statistics.median(loads):.2f})")
    medians = {n: (statistics.median(s for s, _, _ in r), max(m for _, m, _ in r)) for n, r in results.items()}
    floor = in_bytes / 1e9 / read_gbps + out_bytes / 1e9 / write_gbps
    for name, (seconds, rss) in medians.items():
        print(f"  {name:16s} median {seconds:7.2f} s (runs {', '.join(f'{s:.2f}' for s, _, _ in results[name])}), "
              f"then sync {statistics.median(syncs[name]):.2f} s   peak RSS {rss / 2**20:5.2f} GiB   "
              f"{(in_bytes + out_bytes) / 1e9 / seconds:5.2f} GB/s (read+write)")
    print(f"  floor: page-cache read {read_gbps:.1f} GB/s, write {write_gbps:.2f} GB/s -> "
          f"{in_bytes / 1e9:.2f} GB read + {out_bytes / 1e9:.2f} GB written take >= {floor:.2f} s on one core")
    print(f"  disk: {out_bytes / 1e9:.2f} GB written and fdatasynced by one writer in {disk_s:.2f} s "
          f"({out_bytes / 1e9 / disk_s:.2f} GB/s, best of 2): no merge that leaves its output on disk is faster")
    for name, mib in summed_mib.items():
        print(f"  {name}: peak RSS summed over the main process and its workers {mib / 1024:.2f} GiB (largest run)")
    if not args.only_ours:
        tuned = [s for s, _, _ in results["mergekit-tuned"]]
        tuned_on_disk = [s + sync_s for s, sync_s in zip(tuned, syncs["mergekit-tuned"])]
        ours_s = [s for s, _, _ in results["ours"]]
        print(f"  tuned mergekit / ours (as shipped; only ours waits for the disk): {ratios(tuned, ours_s)}")
        print("  like for like:")
        print(f"    tuned mergekit / ours --no-fsync (neither waits for the disk): "
              f"{ratios(tuned, [s for s, _, _ in results['ours --no-fsync']])}")
        print(f"    tuned mergekit + sync / ours (both on disk): {ratios(tuned_on_disk, ours_s)}")
        print(f"  peak RSS {medians['mergekit-tuned'][1] / medians['ours'][1]:.1f}x smaller")
        from hpcadapt_merge.compare import agreement, compare

        if args.method == "slerp":
            parity = compare(folder / "ours", folder / "mergekit-tuned", a, b)
            print(f"  parity vs tuned mergekit: {parity['elements']} elements, "
                  f"identical {parity['identical_fraction']:.6%}, max {parity['max_ulp']} bf16 ulp, "
                  f"{len(parity['branch_mismatches'])} branch mismatches, branches {parity['branches']}")
            if parity["branch_mismatches"]:
                print("  mismatched:", json.dumps(parity["branch_mismatches"]))
        else:
            parity = agreement(folder / "ours", folder / "mergekit-tuned")
            print(f"  parity vs tuned mergekit: {parity['elements']} elements, "
                  f"identical {parity['identical_fraction']:.6%}, within 1 ulp {parity['within_one_ulp']:.6%}, "
                  f"max {parity['max_ulp']} ulp, {len(parity['differing'])} tensors differ")
    if not args.keep:
        shutil.rmtree(folder)
        print(f"removed {folder}")


if __name__ == "__main__":
    main()
