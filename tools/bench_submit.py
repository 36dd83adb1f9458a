"""How fast a pipeline gets onto Slurm, measured on a real cluster (e.g. the local one).

1. Command to all jobs submitted: `python -m hpcadapt +experiment=tiny_demo cluster.kind=slurm`
   with a 5-stage chain (tiny_init, base_pretrain, instruct_sft, cpt, sft), timed from
   process start to exit. The jobs are submitted held (`--hold`) and cancelled after,
   so the benchmark leaves nothing running. Target: <= 3 s.
2. Submit-to-running latency: a one-task job submitted with submitit, polled with
   squeue until it runs.

    python tools/bench_submit.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIVE_STAGES = ["pipeline.chain=[cpt,sft]", "pipeline.merge=false", "pipeline.evaluate=false"]


def default_partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True).stdout.split()
    return next((p for p in out if p.endswith("*")), out[0]).rstrip("*")


def time_pipeline_submission(output_root: Path, partition: str) -> tuple[float, list[str]]:
    """Seconds from `python -m hpcadapt ...` to its exit, and the job ids it submitted."""
    cmd = [sys.executable, "-m", "hpcadapt", "+experiment=tiny_demo", "cluster.kind=slurm",
           f"cluster.partition={partition}", "cluster.cpus_per_task=1", "cluster.mem_gb=1",
           "+cluster.additional_parameters.hold=true", f"output_root={output_root}", *FIVE_STAGES]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"submission failed:\n{proc.stderr[-2000:]}")
    records = list(output_root.glob("runs/*/slurm_jobs.json"))
    jobs = [s["job_id"] for s in json.loads(records[0].read_text())["stages"] if s["job_id"]]
    return elapsed, jobs


def time_submit_to_running(folder: Path, partition: str) -> float:
    import submitit

    from hpcadapt.launch import probes

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(timeout_min=10, cpus_per_task=1, mem_gb=0.5, slurm_partition=partition)
    t0 = time.perf_counter()
    job = executor.submit(probes.sleep_for, 2)
    while True:
        state = subprocess.run(["squeue", "-h", "-j", job.job_id, "-o", "%T"], capture_output=True,
                               text=True).stdout.strip()
        if state in ("RUNNING", "COMPLETING") or (not state and time.perf_counter() - t0 > 1):
            latency = time.perf_counter() - t0
            break
        time.sleep(0.05)
    job.result()
    return latency


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, min {min(values):.2f} s, max {max(values):.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--partition", default=None)
    args = parser.parse_args()
    partition = args.partition or default_partition()

    submit_times, latencies = [], []
    with tempfile.TemporaryDirectory(prefix="bench-submit-") as tmp:
        for i in range(args.repeats):
            elapsed, jobs = time_pipeline_submission(Path(tmp) / f"pipeline{i}", partition)
            subprocess.run(["scancel", *jobs], check=False)
            submit_times.append(elapsed)
            print(f"pipeline submission {i + 1}: {elapsed:.2f} s for {len(jobs)} jobs", flush=True)
        for i in range(args.repeats):
            latencies.append(time_submit_to_running(Path(tmp) / "latency", partition))
            print(f"submit to running {i + 1}: {latencies[-1]:.2f} s", flush=True)
    print(f"\ncommand to all jobs submitted (5 stages): {summary(submit_times)}  (target <= 3 s)")
    print(f"submit to running (one task):             {summary(latencies)}")


if __name__ == "__main__":
    main()
