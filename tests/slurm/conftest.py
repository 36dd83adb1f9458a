"""Fixtures for tests that submit real jobs to a Slurm cluster.

The tests never start the cluster: the project's test command runs
`bash slurm/local-cluster.sh up` (as root) first. Without an answering controller
and accounting, every test here is skipped with that instruction.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

START_HINT = "run `bash slurm/local-cluster.sh up` as root"


def _wait_until(condition, timeout_s: float, what: str, explain=None) -> None:
    """Poll until true; on timeout fail naming what never happened, plus `explain()`'s
    account of the jobs (their states and log tails), so a CI failure can be read."""
    deadline = time.time() + timeout_s
    while not condition():
        if time.time() > deadline:
            detail = ""
            if explain is not None:
                try:
                    detail = "\n" + explain()
                except Exception as e:  # the account is a courtesy; never mask the timeout
                    detail = f"\n(could not describe the jobs: {e!r})"
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{detail}")
        time.sleep(0.3)


def _answers(cmd: list[str]) -> tuple[bool, str]:
    if shutil.which(cmd[0]) is None:
        return False, f"`{cmd[0]}` not installed"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False, f"`{' '.join(cmd)}` timed out"
    if proc.returncode != 0:
        return False, f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[:200]}"
    return True, proc.stdout


@pytest.fixture(scope="session")
def slurm_cluster() -> dict:
    """The default partition of a cluster whose controller and accounting answer."""
    ok, out = _answers(["sinfo", "-h", "-o", "%P|%t"])
    if not ok or not out.strip():
        pytest.skip(f"no Slurm cluster answers ({out.strip() or 'sinfo lists no partition'}); {START_HINT}")
    ok, clusters = _answers(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"])
    if not ok or not clusters.strip():
        pytest.skip(f"Slurm accounting does not answer ({clusters.strip()}); {START_HINT}")
    default = [line.split("|")[0] for line in out.splitlines() if "*" in line.split("|")[0]]
    partition = (default or [out.split("|")[0]])[0].rstrip("*")
    return {"partition": partition, "cluster": clusters.split()[0]}


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """Job logs and outputs go where every node can read them.

    All nodes of the local cluster are this host, so any folder is shared; on a real
    cluster point HPCADAPT_SLURM_SHARED at a shared filesystem.
    """
    root = os.environ.get("HPCADAPT_SLURM_SHARED")
    if not root:
        return tmp_path
    folder = Path(root) / tmp_path.name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def make_executor(slurm_cluster: dict, shared_dir: Path):
    """A submitit Slurm executor writing into the shared folder; small defaults."""
    import submitit

    def make(name: str = "jobs", **params):
        max_num_timeout = params.pop("slurm_max_num_timeout", 3)  # a constructor argument
        executor = submitit.AutoExecutor(folder=shared_dir / name, cluster="slurm",
                                         slurm_max_num_timeout=max_num_timeout)
        settings = {"timeout_min": 5, "cpus_per_task": 1, "mem_gb": 1, "slurm_partition": slurm_cluster["partition"]}
        settings.update(params)
        executor.update_parameters(**settings)
        return executor

    return make


@pytest.fixture
def wait_until():
    """wait_until(condition, timeout_s, what): poll until true, or fail naming what never happened."""
    return _wait_until
