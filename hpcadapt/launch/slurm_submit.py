"""Put a whole pipeline on Slurm from a login node and return at once.

One job per unfinished stage, each `afterok` on the jobs of the stages it reads
(`--kill-on-invalid-dep=yes`: when a stage fails its dependants are cancelled instead
of pending forever). Stages already complete per their manifests are skipped, and a
stage whose job from an earlier submission is still queued or running is not
submitted twice: its dependants wait on that job. The job ids, log and output folders
are printed and kept in `<run_dir>/slurm_jobs.json` for `status=true`.

Jobs run the code that was submitted: the `hpcadapt` sources are copied into the log
folder (content-addressed, so unchanged code is not copied twice) and put first on
the jobs' PYTHONPATH. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from hpcadapt.errors import HpcadaptError
from hpcadapt.launch.slurm_record import RECORD_NAME, StageJobInfo, SubmissionRecord, read_record
from hpcadapt.launch.slurm_status import SlurmUnavailable, queued_jobs

# Setup lines that fail stop the job with this code, so status can say why.
SETUP_FAILED_EXIT = 97
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "cephfs", "wekafs",
                       "fuse.glusterfs", "glusterfs", "pvfs2", "orangefs", "panfs", "fuse.sshfs", "9p", "virtiofs"}
PACKAGES_TO_SNAPSHOT = ("hpcadapt", "hpcadapt_merge")
ONE_TASK_KINDS = ("merge", "eval")  # stage kinds with their own resources in the cluster config


class SubmissionRejected(HpcadaptError):
    """sbatch refused a job (unknown partition, over a limit...); carries Slurm's message."""


def submit_pipeline(cfg: Any) -> SubmissionRecord:
    """Plan, check and submit every unfinished stage of `cfg` as a chain of Slurm jobs."""
    from hpcadapt.pipeline import check_environment, check_models, check_writable, prepare_data, print_plan
    from hpcadapt.plan import plan_pipeline, write_specs

    if not cfg.dry_run:
        require_sbatch()
    check_writable(Path(cfg.output_root))
    prepare_data(cfg)
    plan = plan_pipeline(cfg)
    check_models(plan, cfg)
    check_environment(plan, cfg)
    print_plan(plan)
    log_root = Path(cfg.cluster.log_root or Path(cfg.output_root) / "slurm").expanduser().resolve()
    warn_if_not_shared(cfg.cluster.nodes, [log_root, Path(cfg.output_root).expanduser().resolve()])
    if not cfg.dry_run:
        write_specs(plan)
    return submit_plan(plan, cfg.cluster, log_root, dry_run=bool(cfg.dry_run))


def submit_plan(plan: Any, cluster: Any, log_root: Path, dry_run: bool = False,
                stage_module: str = "hpcadapt.worker") -> SubmissionRecord:
    """Submit the plan's unfinished stages in order; returns (and records) what was done.

    `plan` is a `hpcadapt.plan.PipelinePlan`; `cluster` the `cluster` config node.
    """
    from hpcadapt.launch.slurm_job import StageJob

    started = time.perf_counter()
    run_log_dir = log_root / plan.run_dir.name
    snapshot = None
    if cluster.snapshot_code and not dry_run:
        snapshot = snapshot_code(log_root / "code")
    in_flight = {} if dry_run else jobs_still_going(plan.run_dir)
    job_of: dict[str, str] = {}
    infos: list[StageJobInfo] = []
    for stage in plan.stages:
        if stage.done:
            infos.append(StageJobInfo(stage.name, None, "already-complete", str(stage.stage_dir)))
            continue
        deps = [job_of[d] for d in stage.depends_on if d in job_of]
        if stage.name in in_flight:
            prior = in_flight[stage.name]
            job_of[stage.name] = prior.job_id
            infos.append(StageJobInfo(stage.name, prior.job_id, "already-queued", str(stage.stage_dir),
                                      prior.log_out, prior.log_err, prior.depends_on_jobs))
            continue
        executor = make_executor(cluster, run_log_dir / stage.name, job_name=f"{plan.name}.{stage.name}",
                                 nprocs=stage.nprocs, snapshot=snapshot, kind=stage.kind,
                                 dependency_job_ids=[f"<jobid:{d}>" for d in stage.depends_on] if dry_run else deps)
        job_callable = StageJob(str(stage.spec_path), stage.name, stage_module=stage_module)
        if dry_run:
            print(f"\n# ---- sbatch script for stage {stage.name} ----")
            print(sbatch_script(executor))
            infos.append(StageJobInfo(stage.name, None, "dry-run", str(stage.stage_dir)))
            continue
        try:
            job = submit_or_explain(executor, job_callable, stage.name)
        except SubmissionRejected as e:
            cancel_jobs([i.job_id for i in infos if i.state == "submitted" and i.job_id])
            raise SubmissionRejected(f"{e}. Jobs already submitted by this command were cancelled; nothing "
                                     "is left half-submitted.") from None
        job_of[stage.name] = job.job_id
        infos.append(StageJobInfo(stage.name, job.job_id, "submitted", str(stage.stage_dir),
                                  str(job.paths.stdout), str(job.paths.stderr), deps))
    record = SubmissionRecord(plan.name, str(plan.run_dir), time.time(), str(snapshot) if snapshot else None, infos)
    if not dry_run:
        from hpcadapt.stagedir import write_json_atomic

        plan.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(plan.run_dir / RECORD_NAME, asdict(record))
        print_submission(record, time.perf_counter() - started)
    return record


def make_executor(cluster: Any, folder: Path, job_name: str, nprocs: int, dependency_job_ids: list[str],
                  snapshot: Optional[Path], kind: str = "cpt"):
    """A submitit executor for one stage: all ranks for training, one task with the kind's own
    resources for merge and eval."""
    import submitit

    one_task = getattr(cluster, kind, None) if kind in ONE_TASK_KINDS else None
    multi = nprocs > 1
    extra = dict((one_task.additional_parameters if one_task is not None else cluster.additional_parameters) or {})
    if dependency_job_ids:
        extra["dependency"] = "afterok:" + ":".join(dependency_job_ids)
        extra["kill-on-invalid-dep"] = "yes"
    params: dict[str, Any] = {
        "name": job_name,
        "timeout_min": int(one_task.timeout_min if one_task is not None else cluster.timeout_min),
        "nodes": int(cluster.nodes) if multi else 1,
        "tasks_per_node": int(cluster.tasks_per_node) if multi else 1,
        "cpus_per_task": int(one_task.cpus_per_task if one_task is not None else cluster.cpus_per_task),
        "slurm_setup": setup_lines(list(cluster.setup or []), snapshot),
        "slurm_additional_parameters": extra,
    }
    if one_task is not None:
        gpus = one_task.gpus
    else:  # one GPU per task
        gpus = int(cluster.gpus_per_node or 0) if multi else min(1, int(cluster.gpus_per_node or 0))
    if gpus:
        params["gpus_per_node"] = gpus
    mem_gb = one_task.mem_gb if one_task is not None else cluster.mem_gb
    if mem_gb:
        params["mem_gb"] = mem_gb
    for key in ("partition", "account", "qos"):
        value = getattr(one_task, key, None) or getattr(cluster, key, None)
        if value:
            params[f"slurm_{key}"] = value
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=int(cluster.max_num_timeout),
                                     slurm_python=job_python(cluster))
    executor.update_parameters(**params)
    return executor


def job_python(cluster: Any) -> str:
    """The interpreter command jobs run: the configured one, else python3 as the setup lines leave
    PATH (they activate the job's environment), else the submitting interpreter."""
    if cluster.python:
        return str(cluster.python)
    return "python3" if cluster.setup else shlex.quote(sys.executable)


def setup_lines(user_setup: list[str], snapshot: Optional[Path]) -> list[str]:
    """The user's setup lines, each stopping the job if it fails, then the code snapshot.

    sbatch scripts do not stop on a failing line: a missing `module load` would
    otherwise surface much later as an import error on one node.
    """
    lines = []
    for line in user_setup:
        quoted = line.replace("'", "'\\''")
        lines.append(f"{line} || {{ echo 'hpcadapt: setup line failed on '\"$(hostname)\"': {quoted}' >&2; "
                     f"exit {SETUP_FAILED_EXIT}; }}")
    if snapshot is not None:
        # `python -m` puts the working directory first on sys.path, which would import
        # the checkout the job was submitted from; PYTHONSAFEPATH (3.11+) stops that.
        lines.append(f"export PYTHONPATH={snapshot}${{PYTHONPATH:+:$PYTHONPATH}} PYTHONSAFEPATH=1")
    return lines


def submit_or_explain(executor: Any, job_callable: Any, stage_name: str):
    """Submit; an sbatch refusal becomes SubmissionRejected with Slurm's own words."""
    import submitit

    try:
        return executor.submit(job_callable)
    except submitit.core.utils.FailedJobError as e:
        message = str(e).strip().splitlines()
        slurm_lines = [ln for ln in message if "sbatch" in ln.lower() or "error" in ln.lower()] or message
        raise SubmissionRejected(f"sbatch rejected stage {stage_name!r}: " + " ".join(slurm_lines[-3:])) from None


def sbatch_script(executor: Any) -> str:
    """The sbatch script submitit would write for this executor (for --dry-run)."""
    slurm = executor._executor
    return slurm._make_submission_file_text(slurm._submitit_command_str, "dry-run")


def cancel_jobs(job_ids: list[str]) -> None:
    import subprocess

    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, check=False, timeout=60)


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise SlurmUnavailable(
            "cluster=slurm but `sbatch` is not on this machine's PATH. Run on a Slurm login node, use "
            "cluster=local to run here, or start the local test cluster: `sudo bash slurm/local-cluster.sh up`."
        )


def jobs_still_going(run_dir: Path) -> dict[str, StageJobInfo]:
    """Stages whose job from an earlier submission of this run is queued or running."""
    record = read_record(run_dir)
    if record is None:
        return {}
    by_stage = {s.stage: s for s in record.stages if s.job_id}
    try:
        queued = queued_jobs([s.job_id for s in by_stage.values()])
    except SlurmUnavailable:
        return {}
    return {name: info for name, info in by_stage.items() if info.job_id in queued}


def print_submission(record: SubmissionRecord, elapsed_s: float) -> None:
    print(f"\nhpcadapt: submitted pipeline {record.pipeline} in {elapsed_s:.2f} s; run folder {record.run_dir}")
    for s in record.stages:
        job = s.job_id or "-"
        after = f" (after {', '.join(s.depends_on_jobs)})" if s.depends_on_jobs else ""
        print(f"  {s.stage:<14} job {job:<10} {s.state}{after}")
        print(f"  {'':<14} output {s.stage_dir}")
        if s.log_out:
            print(f"  {'':<14} log    {s.log_out}")
    if record.code_snapshot:
        print(f"  jobs run the code snapshot {record.code_snapshot}")
    print("  follow with: python -m hpcadapt <same overrides> status=true")


def warn_if_not_shared(nodes: int, paths: list[Path]) -> None:
    """Multi-node jobs read and write these folders from every node: warn if they look local."""
    if nodes <= 1:
        return
    for path in paths:
        fs = filesystem_type(path)
        if fs not in NETWORK_FILESYSTEMS:
            warnings.warn(
                f"{path} is on a local filesystem ({fs}), but stages run on {nodes} nodes: every node must see "
                f"it. Put output_root and cluster.log_root on a shared filesystem (harmless on one machine).",
                stacklevel=2,
            )


def snapshot_code(code_root: Path) -> Path:
    """Copy hpcadapt's sources into `code_root/<content hash>` (atomically) and return it."""
    sources = []
    for package in PACKAGES_TO_SNAPSHOT:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        package_dir = Path(list(spec.submodule_search_locations)[0])
        files = sorted(p for p in package_dir.rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".yaml", ".jinja", ".json"))
        sources += [(package, p.relative_to(package_dir), p) for p in files]
    digest = code_digest(sources)
    target = code_root / digest
    if target.is_dir():
        return target
    staging = code_root / f".{digest}.{time.time_ns()}"
    for package, rel, src in sources:
        dest = staging / package / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    try:
        staging.rename(target)
    except OSError:  # another submission made the same snapshot first
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------
# Pure helpers below.


def code_digest(sources: list[tuple[str, Path, Path]]) -> str:
    h = hashlib.sha256()
    for package, rel, src in sources:
        h.update(f"{package}/{rel}\0".encode())
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def filesystem_type(path: Path) -> str:
    """The type of the mount holding `path` (longest matching mount point in /proc/mounts)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    best, fs = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return fs
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = parts[1]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > len(best):
            best, fs = mount_point, parts[2]
    return fs

