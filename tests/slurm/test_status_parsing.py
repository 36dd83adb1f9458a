"""sacct/squeue parsing and failure wording, on real output captured from the local cluster."""

from __future__ import annotations

import pytest

from hpcadapt.launch.slurm_status import parse_sacct, parse_squeue

pytestmark = pytest.mark.slurm

# sacct -n -P -D -o JobID,JobName,State,ExitCode,Elapsed,NodeList,Reason (Slurm 22.05)
SACCT = """\
4|wrap|OUT_OF_MEMORY|0:125|00:00:01|n1|None
4.batch|batch|OUT_OF_MEMORY|0:125|00:00:01|n1|
5|wrap|CANCELLED by 0|0:0|00:00:02|n1|None
5.batch|batch|CANCELLED|0:15|00:00:03|n1|
7|wrap|FAILED|3:0|00:00:00|n1|None
7.batch|batch|FAILED|3:0|00:00:00|n1|
9|probe.sft|CANCELLED|0:0|00:00:00|None assigned|Dependency
11|stage|REQUEUED|0:0|00:00:47|n1|None
11|stage|COMPLETED|0:0|00:01:12|n1|None
12|stage|TIMEOUT|0:0|00:01:00|n2|None
13|stage|FAILED|0:9|00:00:03|n[1-2]|None
13.0|python|OUT_OF_MEMORY|0:125|00:00:03|n2|
"""


def test_sacct_lines_fold_into_jobs_with_reasons():
    jobs = parse_sacct(SACCT)
    assert set(jobs) == {"4", "5", "7", "9", "11", "12", "13"}
    assert jobs["4"].state == "OUT_OF_MEMORY" and "out of memory" in jobs["4"].reason()
    assert jobs["5"].state == "CANCELLED" and jobs["5"].reason() == "cancelled by uid 0"
    assert jobs["7"].exit_code == 3 and jobs["7"].reason() == "failed with exit code 3 (see the job's log)"
    assert "dependency never satisfied" in jobs["9"].reason()
    assert jobs["11"].state == "COMPLETED" and jobs["11"].reason() == ""  # the last run of a requeued job wins
    assert "time limit" in jobs["12"].reason()
    assert jobs["13"].state == "OUT_OF_MEMORY", "a step that ran out of memory marks the job"
    assert not jobs["11"].failed and jobs["13"].failed


def test_squeue_gives_pending_reasons():
    jobs = parse_squeue("6|wrap|PENDING|0:00||DependencyNeverSatisfied\n8|x|RUNNING|0:12|n1|None\n")
    assert "will never start" in jobs["6"].reason()
    assert jobs["8"].reason() == "" and not jobs["8"].finished
