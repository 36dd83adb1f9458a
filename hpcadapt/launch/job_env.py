"""Check, before submitting, the Python environment that Slurm jobs will run in.

Jobs run `cluster.python` (by default `python3` as `cluster.setup` leaves PATH, e.g. after
activating a venv) on compute nodes. A missing package there (flash-attn above all) would
otherwise surface at model load in the first job, and `--kill-on-invalid-dep` would then
cancel the whole chain. Login nodes usually share the software stack with compute nodes,
so the setup lines are run here once, in a subshell, and the interpreter they leave is
asked what it can import. Where the setup cannot run here (modules only on compute
nodes), a warning says so and each stage checks again when it starts.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import warnings
from dataclasses import dataclass
from typing import Any

from hpcadapt import attention
from hpcadapt.errors import HpcadaptError

# What a stage needs importable in the job's interpreter (hpcadapt itself comes from the
# code snapshot on PYTHONPATH when cluster.snapshot_code is on).
STACK = ("torch", "transformers", "trl", "datasets", "deepspeed", "submitit", "safetensors")
_PROBE = (
    "import importlib.util as u, json, sys; "
    "print(json.dumps({'python': sys.executable, 'version': sys.version.split()[0], "
    "'modules': {m: u.find_spec(m) is not None for m in sys.argv[1:]}}))"
)


@dataclass(frozen=True)
class JobPython:
    python: str
    version: str
    modules: dict[str, bool]


def probe(cluster: Any, modules: tuple[str, ...], timeout_s: float = 120) -> JobPython | None:
    """Run the setup lines and ask the job interpreter which modules it can import; None if
    the setup lines cannot run on this machine."""
    from hpcadapt.launch.slurm_submit import job_python

    command = f"{job_python(cluster)} -c {shlex.quote(_PROBE)} {' '.join(modules)}"
    script = "\n".join(["set -e", *(cluster.setup or []), command])
    try:
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None
    try:
        info = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return JobPython(info["python"], info["version"], info["modules"])


def check_job_environment(cluster: Any, attn_implementation: str, trains: bool) -> JobPython | None:
    """Refuse a submission whose jobs could not import the training stack or the attention kernel."""
    flash_module = attention.FLASH_MODULES.get(attn_implementation)
    modules = (*STACK, *([flash_module] if flash_module else [])) if trains else ("submitit",)
    found = probe(cluster, modules)
    if found is None:
        warnings.warn("hpcadapt: could not run cluster.setup on this machine to check the jobs' Python; each stage "
                      "checks its environment when it starts", stacklevel=2)
        return None
    missing = [m for m in modules if not found.modules.get(m)]
    if flash_module in missing:
        raise attention.missing_flash_error(attn_implementation, f"by the jobs' Python ({found.python}, after "
                                                                 f"cluster.setup)")
    if missing:
        raise HpcadaptError(
            f"jobs would run {found.python} (Python {found.version}, after cluster.setup), which cannot import "
            f"{', '.join(missing)}. Activate the environment that has hpcadapt's dependencies in cluster.setup, "
            f"or set cluster.python to its interpreter."
        )
    return found
