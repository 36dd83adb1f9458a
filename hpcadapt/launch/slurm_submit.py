"""Put a graph of stages (a pipeline, a sweep, a strategy grid) on Slurm from a login node, at once.

One job per unfinished unique stage, each `afterok` on exactly the jobs that make its
inputs (`--kill-on-invalid-dep=yes`: when a stage fails or is cancelled, only what depends
on it is cancelled; re-running the command submits just what is missing). Stages already
complete are skipped; a stage whose job from an earlier submission is still queued or
running is depended on, not submitted twice. A last one-task job writes the run folders
and, for a grid, the comparison. Job ids, logs and output folders are printed and kept in
each pipeline's `<run_dir>/slurm_jobs.json` for `status=true`.

Jobs run the code that was submitted: the `hpcadapt` sources are copied into the log
folder (content-addressed, so unchanged code is not copied twice) and put first on
the jobs' PYTHONPATH. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hpcadapt.atomic import write_json_atomic
from hpcadapt.errors import HpcadaptError
from hpcadapt.launch.slurm_record import RECORD_NAME, StageJobInfo, SubmissionRecord
from hpcadapt.launch.slurm_status import SlurmUnavailable, queued_jobs
from hpcadapt.plan import write_specs
from hpcadapt.stages import kinds
from hpcadapt.tracking import lift_secrets

# Setup lines that fail stop the job with this code, so status can say why.
SETUP_FAILED_EXIT = 97
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "cephfs", "wekafs",
                       "fuse.glusterfs", "glusterfs", "pvfs2", "orangefs", "panfs", "fuse.sshfs", "9p", "virtiofs"}
PACKAGES_TO_SNAPSHOT = ("hpcadapt", "hpcadapt_merge")
OWNER_FILE = "slurm_job.json"  # in a stage's staging folder: the job that trains it


class SubmissionRejected(HpcadaptError):
    """sbatch refused a job (unknown partition, over a limit...); carries Slurm's message."""


def submit_graph(prepared: Any, stage_module: str = "hpcadapt.worker") -> list[SubmissionRecord]:
    """Submit every unfinished stage of a prepared graph (hpcadapt/launch/prepare.py) at once."""
    from hpcadapt.launch.report import graph_record

    cfg = prepared.configs[0]
    log_root = Path(cfg.cluster.log_root or Path(cfg.output_root) / "slurm").expanduser().resolve()
    warn_if_not_shared(cfg.cluster.nodes, [log_root, prepared.output_root])
    report = graph_record(prepared.graph, prepared.output_root)
    return submit_stages(prepared.graph, cfg.cluster, log_root, dry_run=prepared.dry_run, stage_module=stage_module,
                         report=report, time_limits=prepared.time_limits)


def submit_plan(plan: Any, cluster: Any, log_root: Path, dry_run: bool = False,
                stage_module: str = "hpcadapt.worker") -> SubmissionRecord:
    """Submit one pipeline plan's unfinished stages (the probe-stage tests use this directly)."""
    from hpcadapt.graph import build_graph

    return submit_stages(build_graph(plan.name, [plan]), cluster, log_root, dry_run, stage_module)[0]


def submit_stages(graph: Any, cluster: Any, log_root: Path, dry_run: bool = False,
                  stage_module: str = "hpcadapt.worker", report: dict | None = None,
                  time_limits: dict[Path, int] | None = None) -> list[SubmissionRecord]:
    """One job per unfinished stage, in waves by depth, each `afterok` on exactly the jobs that make
    its inputs; stages of one kind with the same inputs' jobs go out as one array.

    `time_limits` (stage folder -> minutes) are the training jobs' time limits from their
    estimates (hpcadapt/estimate.py, via `prepare`); an array asks for its longest stage's, and
    a stage without one for cluster.timeout_min.

    A stage whose job from an earlier submission (any pipeline, grid or sweep on this output
    root) is still queued or running is not submitted again: its dependants wait on that job,
    found through the job record in the stage's staging folder. Returns one record per pipeline.
    """
    from hpcadapt.launch.slurm_job import StageJob

    started = time.perf_counter()
    todo = [s for s in graph.ordered if not s.plan.done]
    if not dry_run and todo:
        require_sbatch()
        for pipeline in graph.pipelines:
            if all(s.spec is not None for s in pipeline.stages):
                write_specs(pipeline)
    in_flight = {} if dry_run else stages_still_queued([s.plan for s in todo])
    snapshot = snapshot_code(log_root / "code") if cluster.snapshot_code and not dry_run and todo else None
    info_of: dict[Path, StageJobInfo] = {}
    submitted: list[str] = []
    for wave in waves(todo):
        for group in groups_of(wave, info_of, in_flight):
            plans = [stage.plan for stage in group]
            deps = sorted({info_of[f].job_id for stage in group for f in stage.inputs if f in info_of})
            if plans[0].stage_dir in in_flight:
                prior = in_flight[plans[0].stage_dir]
                info_of[plans[0].stage_dir] = StageJobInfo(plans[0].name, prior, "already-queued",
                                                           str(plans[0].stage_dir))
                continue
            folder = log_root / graph.name / plans[0].name
            limits = [(time_limits or {}).get(p.stage_dir) for p in plans]
            executor = make_executor(cluster, folder, job_name=f"{graph.name}.{plans[0].name}",
                                     nprocs=plans[0].nprocs, snapshot=snapshot, kind=plans[0].kind,
                                     dependency_job_ids=deps,
                                     timeout_min=max(limits) if all(limits) else None)
            executor.update_parameters(slurm_array_parallelism=int(cluster.array_parallelism))
            callables = [StageJob(str(p.spec_path), p.name, stage_module=stage_module) for p in plans]
            if dry_run:
                print(f"\n# ---- sbatch script for stage {plans[0].name}"
                      f"{f' (array of {len(plans)})' if len(plans) > 1 else ''} ----")
                print(sbatch_script(executor))
                for stage in group:  # placeholders stand for the job ids in the scripts that follow
                    info_of[stage.folder] = StageJobInfo(stage.plan.name, f"<jobid:{stage.plan.name}>", "dry-run",
                                                         str(stage.folder), depends_on_jobs=deps)
                continue
            try:
                jobs = submit_or_explain(executor, callables, plans[0].name)
            except SubmissionRejected as e:
                cancel_jobs(submitted)
                raise SubmissionRejected(f"{e}. Jobs already submitted by this command were cancelled; nothing "
                                         "is left half-submitted.") from None
            for stage, job in zip(group, jobs):
                submitted.append(job.job_id)
                info_of[stage.folder] = StageJobInfo(stage.plan.name, job.job_id, "submitted", str(stage.folder),
                                                     str(job.paths.stdout), str(job.paths.stderr), deps)
                record_owner(stage.plan, job.job_id)
    if report is not None and todo and not dry_run:
        submit_report_job(report, cluster, log_root, snapshot, [i.job_id for i in info_of.values() if i.job_id])
    records = []
    for pipeline in graph.pipelines:
        infos = [info_of.get(s.stage_dir) or StageJobInfo(s.name, None, "already-complete", str(s.stage_dir))
                 for s in pipeline.stages]
        record = SubmissionRecord(pipeline.name, str(pipeline.run_dir), time.time(),
                                  str(snapshot) if snapshot else None, infos)
        records.append(record)
        if not dry_run and todo:
            pipeline.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(pipeline.run_dir / RECORD_NAME, asdict(record))
    if not dry_run:
        print_submission(graph, records, time.perf_counter() - started)
    return records


def waves(stages: list[Any]) -> list[list[Any]]:
    """Stages grouped by depth: every stage's inputs lie in earlier waves."""
    depth: dict[Path, int] = {}
    for stage in stages:
        depth[stage.folder] = 1 + max((depth.get(f, -1) for f in stage.inputs), default=-1)
    out: list[list[Any]] = []
    for stage in stages:
        while len(out) <= depth[stage.folder]:
            out.append([])
        out[depth[stage.folder]].append(stage)
    return [w for w in out if w]


def groups_of(wave: list[Any], info_of: dict[Path, StageJobInfo], in_flight: dict[Path, str]) -> list[list[Any]]:
    """One job array per kind, process count and set of input jobs; a stage queued elsewhere alone."""
    groups: dict[tuple, list[Any]] = {}
    for stage in wave:
        inputs = tuple(sorted(info_of[f].job_id for f in stage.inputs if f in info_of))
        key = ("queued", stage.folder) if stage.folder in in_flight else (stage.plan.kind, stage.plan.nprocs, inputs)
        groups.setdefault(key, []).append(stage)
    return list(groups.values())


def record_owner(plan: Any, job_id: str) -> None:
    """Note in the stage's staging folder which job trains it, for later submissions to wait on."""
    staging = plan.spec_path.parent
    staging.mkdir(parents=True, exist_ok=True)
    write_json_atomic(staging / OWNER_FILE, {"job_id": job_id, "submitted_at": time.time()})


def stages_still_queued(plans: list[Any]) -> dict[Path, str]:
    """Stage folder -> job id, for stages whose recorded job is still queued or running."""
    owners = {}
    for plan in plans:
        owner_file = plan.spec_path.parent / OWNER_FILE
        if owner_file.is_file():
            owners[plan.stage_dir] = json.loads(owner_file.read_text())["job_id"]
    if not owners:
        return {}
    try:
        queued = queued_jobs(owners.values())
    except SlurmUnavailable:
        return {}
    return {folder: job for folder, job in owners.items() if job in queued}


def submit_report_job(report: dict, cluster: Any, log_root: Path, snapshot: Path | None,
                      after: list[str]) -> None:
    """A last one-task job that writes the run folders and the comparison once the stages are done."""
    folder = log_root / report["name"] / "report"
    folder.mkdir(parents=True, exist_ok=True)
    graph_file = folder / f"graph-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    write_json_atomic(graph_file, report)
    executor = make_executor(cluster, folder, job_name=f"{report['name']}.report", nprocs=1, snapshot=snapshot,
                             kind="report", dependency_job_ids=after)
    executor.update_parameters(slurm_additional_parameters={
        **(executor._executor.parameters.get("additional_parameters") or {}),
        **({"dependency": "afterok:" + ":".join(after)} if after else {})})
    submit_or_explain(executor, [ReportJob(str(graph_file))], "report")


class ReportJob:
    """The report job's callable (pickled by submitit: plain data only)."""

    def __init__(self, graph_file: str) -> None:
        self.graph_file = graph_file

    def __call__(self) -> None:
        from hpcadapt.launch.report import write_reports

        write_reports(json.loads(Path(self.graph_file).read_text()), echo=True)


def make_executor(cluster: Any, folder: Path, job_name: str, nprocs: int, dependency_job_ids: list[str],
                  snapshot: Path | None, kind: str = "cpt", timeout_min: int | None = None):
    """A submitit executor for one stage: all ranks for training, one task with the kind's own
    resources for merge and eval. `timeout_min`: a training job's time limit from its estimate
    (else cluster.timeout_min)."""
    import submitit

    one_task = one_task_resources(cluster, kind)
    multi = nprocs > 1
    extra = dict((one_task.additional_parameters if one_task is not None else cluster.additional_parameters) or {})
    if dependency_job_ids:
        extra["dependency"] = "afterok:" + ":".join(dependency_job_ids)
        extra["kill-on-invalid-dep"] = "yes"
    params: dict[str, Any] = {
        "name": job_name,
        "timeout_min": int(one_task.timeout_min if one_task is not None else timeout_min or cluster.timeout_min),
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


def one_task_resources(cluster: Any, kind: str) -> Any:
    """The resources of a one-task job: merge, eval and the report job have their own entries
    in the cluster config; training stages None."""
    if kind == "report":
        return cluster.report
    return getattr(cluster, kind) if kinds.get(kind).one_task else None


def job_python(cluster: Any) -> str:
    """The interpreter command jobs run: the configured one, else python3 as the setup lines leave
    PATH (they activate the job's environment), else the submitting interpreter."""
    if cluster.python:
        return str(cluster.python)
    return "python3" if cluster.setup else shlex.quote(sys.executable)


def setup_lines(user_setup: list[str], snapshot: Path | None) -> list[str]:
    """The user's setup lines, each stopping the job if it fails, then the code snapshot.

    sbatch scripts do not stop on a failing line: a missing `module load` would
    otherwise surface much later as an import error on one node. Secrets in the lines
    become variables of the submitting environment, which sbatch passes on: the script is
    kept in the log folder (hpcadapt/tracking.py `lift_secrets`).
    """
    lines = []
    user_setup, secrets = lift_secrets(user_setup)
    os.environ.update(secrets)
    for line in user_setup:
        quoted = line.replace("'", "'\\''")
        lines.append(f"{line} || {{ echo 'hpcadapt: setup line failed on '\"$(hostname)\"': {quoted}' >&2; "
                     f"exit {SETUP_FAILED_EXIT}; }}")
    if snapshot is not None:
        # `python -m` puts the working directory first on sys.path, which would import
        # the checkout the job was submitted from; PYTHONSAFEPATH (3.11+) stops that.
        lines.append(f"export PYTHONPATH={snapshot}${{PYTHONPATH:+:$PYTHONPATH}} PYTHONSAFEPATH=1")
    return lines


def submit_or_explain(executor: Any, callables: list[Any], stage_name: str) -> list[Any]:
    """Submit one job (or one array for several callables); an sbatch refusal becomes
    SubmissionRejected with Slurm's own words."""
    import submitit

    try:
        return [executor.submit(callables[0])] if len(callables) == 1 else executor.submit_array(callables)
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


def print_submission(graph: Any, records: list[SubmissionRecord], elapsed_s: float) -> None:
    jobs = {i.stage_dir: i for record in records for i in record.stages}
    new = [i for i in jobs.values() if i.state == "submitted"]
    if not new and not any(i.state == "already-queued" for i in jobs.values()):
        print(f"\nhpcadapt: {graph.name}: every stage is complete; nothing submitted")
        return
    print(f"\nhpcadapt: submitted {len(new)} job(s) for {graph.name} in {elapsed_s:.2f} s")
    for info in jobs.values():
        if info.state == "already-complete":
            continue
        after = f" (after {', '.join(info.depends_on_jobs)})" if info.depends_on_jobs else ""
        print(f"  {info.stage:<14} job {info.job_id:<12} {info.state}{after}")
        print(f"  {'':<14} output {info.stage_dir}")
        if info.log_out:
            print(f"  {'':<14} log    {info.log_out}")
    if records and records[0].code_snapshot:
        print(f"  jobs run the code snapshot {records[0].code_snapshot}")
    command = " ".join(shlex.quote(a) for a in sys.argv[1:] if not a.startswith("status="))
    print(f"  follow with: python -m hpcadapt {command} status=true")


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
        suffixes = (".py", ".yaml", ".jinja", ".json")
        files = sorted(p for p in package_dir.rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts and p.suffix in suffixes)
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
