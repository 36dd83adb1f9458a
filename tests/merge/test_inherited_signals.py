"""A merge run inside a Slurm job: the process carries submitit's signal handlers.

submitit ignores SIGTERM in the job's process, and forked workers inherit that; the
pool ends its workers with SIGTERM, so unless workers restore the default the merge
finishes its work and then waits forever.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from merge_helpers import load_tensors, slerp_config

SCRIPT = textwrap.dedent("""
    import json, signal, sys
    signal.signal(signal.SIGTERM, lambda *a: print("ignored SIGTERM", flush=True))  # as submitit does
    signal.signal(signal.SIGUSR2, lambda *a: None)
    from hpcadapt_merge import run_merge
    run_merge(json.loads(sys.argv[1]), sys.argv[2], workers=2, progress=False)
    print("merged", flush=True)
""")


def test_merge_with_workers_ends_when_sigterm_is_ignored_by_the_parent(models, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(slerp_config(models)), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "merged" in proc.stdout
    assert load_tensors(tmp_path / "out")
