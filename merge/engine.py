"""Running a merge: staging, worker processes, journal-based resume, durable atomic publish.

The output is built in a hidden staging folder next to the destination. Shards are
created up front with their final headers and size; workers then write each tensor
into its fixed byte range, so the bytes do not depend on how many workers ran or in
which order they finished. Each finished tensor is appended to a journal; after a
crash (even SIGKILL) the same command finds the staging folder, checks that recipe
and inputs are unchanged (input headers and sampled content, not modification times),
and redoes only tensors missing from the journal. The folder is fsynced and renamed to
its final name only once complete.

Processes fail together: workers die with the main process (PR_SET_PDEATHSIG), and the
main process watches each worker's pipe and process sentinel, so a worker killed from
outside (the OOM killer) ends the merge at once with the tensor it was computing named.
A lock file next to the output keeps a second run off the same output.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import hashlib
import json
import os
import resource
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import kernels, methods
from .checkpoint import file_identity
from .config import MergeError, load_config
from .output import write_metadata
from .plan import DEFAULT_SHARD_SIZE, MergePlan, TensorJob, build_plan

FORMAT_VERSION = 3  # 3: mergekit's arithmetic for every method; inputs identified by content
JOURNAL, FINGERPRINT = ".journal.jsonl", ".fingerprint"
FLUSH_STEP = 256 << 20  # bytes of finished tensors between two fdatasyncs of the output while merging


@dataclass
class MergeSummary:
    out_dir: Path
    seconds: float
    bytes: int  # bytes of tensor data written
    bytes_read: int
    tensors: int
    resumed_tensors: int  # tensors found finished in the journal of an interrupted run
    workers: int
    peak_rss: int  # largest resident set of any one process (what /usr/bin/time reports), bytes
    peak_rss_total: int  # largest sampled sum over the main process and its workers, bytes
    branch_counts: dict
    nonfinite: dict = field(default_factory=dict)  # tensor -> {"inputs": {parent: count}, "output": count}

    @property
    def gb_per_s(self) -> float:
        return (self.bytes + self.bytes_read) / 1e9 / max(self.seconds, 1e-9)

    def describe(self) -> str:
        return (f"merged {self.tensors} tensors ({self.bytes / 1e9:.2f} GB written, "
                f"{self.bytes_read / 1e9:.2f} GB read) "
                f"in {self.seconds:.2f} s = {self.gb_per_s:.2f} GB/s with {self.workers} worker(s); "
                f"peak RSS {self.peak_rss / 2**20:.0f} MiB per process, "
                f"{self.peak_rss_total / 2**20:.0f} MiB all processes"
                + (f"; resumed {self.resumed_tensors} finished tensors" if self.resumed_tensors else "")
                + (f"; branches {self.branch_counts}" if self.branch_counts else "")
                + (f"\n{describe_nonfinite(self.nonfinite)}" if self.nonfinite else ""))


def describe_nonfinite(nonfinite: dict, limit: int = 10) -> str:
    """One line per tensor with NaN/Inf: where they were and how many."""
    lines = [f"NaN/Inf found in {len(nonfinite)} tensor(s):"]
    for name, entry in list(nonfinite.items())[:limit]:
        inputs = ", ".join(f"{parent} {count}" for parent, count in entry["inputs"].items()) or "none"
        lines.append(f"  {name}: inputs {inputs}; output {entry['output']}")
    if len(nonfinite) > limit:
        lines.append(f"  ... and {len(nonfinite) - limit} more (all in merge_report.json)")
    return "\n".join(lines)


def run_merge(config, out_dir, *, workers: int | None = None, force: bool = False, progress: bool = True,
              shard_size: int = DEFAULT_SHARD_SIZE, precise: bool = False,
              mergekit_sort: bool = False, random_seed: int | None = None, fsync: bool = True,
              fail_on_nonfinite: bool = False) -> MergeSummary:
    """Merge per `config` (mergekit-style dict or YAML path) into `out_dir`; see the module doc.

    precise: keep intermediates in float32 instead of mergekit's rounding to the recipe's dtype
    (linear, task arithmetic, TIES, DARE). mergekit_sort: TIES keeps torch's own choice among
    equal magnitudes at the cut (holds each tensor's |δ| and sort indices). random_seed: DARE's
    seed, as mergekit's --random-seed (default 0). fsync: make the output durable before it is
    published. fail_on_nonfinite: a NaN/Inf in any input or output is an error (nothing is
    published)."""
    started = time.perf_counter()
    out_dir = Path(out_dir).absolute()
    plan = build_plan(load_config(config), shard_size=shard_size, precise=precise, mergekit_sort=mergekit_sort,
                      random_seed=0 if random_seed is None else int(random_seed))
    _check_out_dir(plan, out_dir)
    fingerprint = plan_fingerprint(plan)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _OutputLock(out_dir):
        if out_dir.exists() or out_dir.is_symlink():
            if not force and _completed_fingerprint(out_dir) == fingerprint:
                _say(progress, f"{out_dir} already holds this merge (same recipe and inputs); nothing to do")
                return _summary(plan, out_dir, started, len(plan.jobs), 0, None, {})  # resumed = all, no workers
            if not force:
                raise FileExistsError(f"{out_dir} already exists; pass --force (force=True) to replace it")
        staging.mkdir(exist_ok=True)
        done = _prepare_staging(staging, plan, fingerprint, progress)
        todo = [job for job in plan.jobs if job.name not in done]
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
        peak_total = _execute(plan, todo, staging, done, workers, progress, fsync,
                              resumed_bytes=sum(j.out_nbytes for j in plan.jobs if j.name in done))
        reports = [done[job.name] for job in plan.jobs]
        nonfinite = {r["name"]: r["nonfinite"] for r in reports if r.get("nonfinite")}
        if nonfinite and fail_on_nonfinite:
            raise MergeError(f"{describe_nonfinite(nonfinite, limit=5)}\nnothing was published (--fail-on-nonfinite); "
                             f"the finished tensors stay in {staging}")
        _crash_point("metadata")
        write_metadata(plan, reports, staging, fingerprint)
        if fsync:
            _fsync_folder(staging)
        _crash_point("publish")
        _publish(staging, out_dir, fsync)
    summary = _summary(plan, out_dir, started, len(plan.jobs) - len(todo), workers, peak_total, done)
    _say(progress, summary.describe())
    return summary


def _check_out_dir(plan: MergePlan, out_dir: Path) -> None:
    """OUT may not be an input folder, lie inside one, or contain one: replacing it would destroy an input."""
    out = _real(out_dir)
    folders = list(plan.config.parents) + ([plan.config.tokenizer_source] if plan.config.tokenizer_source else [])
    for folder in dict.fromkeys(folders):
        real = _real(folder)
        if out == real:
            raise MergeError(f"the output folder {out_dir} is the input model {folder}; choose another output folder")
        if real in out.parents:
            raise MergeError(f"the output folder {out_dir} is inside the input model {folder}; "
                             "choose a folder outside it")
        if out in real.parents:
            raise MergeError(f"the input model {folder} is inside the output folder {out_dir}; replacing the output "
                             "would delete it — choose another output folder")


def _real(path: Path) -> Path:
    """The path with symlinks resolved, also for a path that does not exist yet."""
    path = Path(path).absolute()
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path.name)
        path = path.parent
    return path.resolve().joinpath(*reversed(missing))


class _OutputLock:
    """`.OUT.lock` next to the output, held (flock) for the whole run and removed at its end;
    a second run on the same output fails at once with the holder's process id."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.path = out_dir.parent / f".{out_dir.name}.lock"
        self.fd = None

    def __enter__(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise MergeError(f"another hpcadapt-merge (pid {holder}) is writing {self.out_dir}; wait for it to "
                                 "finish or stop it, then run this command again") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the previous holder removed the file between our open and our lock: retry
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)


def _prepare_staging(staging: Path, plan: MergePlan, fingerprint: str, progress: bool) -> dict[str, dict]:
    """Resume an interrupted run of this exact recipe, or start the staging folder afresh."""
    marker = staging / FINGERPRINT
    if marker.is_file() and marker.read_text() == fingerprint:
        done = read_journal(staging / JOURNAL)
        _say(progress, f"resuming: {len(done)} of {len(plan.jobs)} tensors already finished in {staging}")
        return done
    if marker.is_file():
        _say(progress, f"{staging} holds an interrupted merge of another recipe or of inputs that changed since; "
                       "starting afresh")
    for entry in staging.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for name, header, size in zip(plan.shard_names, plan.shard_headers, plan.shard_sizes):
        with open(staging / name, "wb") as shard:
            shard.write(header)
            shard.truncate(size)
            _preallocate(shard.fileno(), size)
    (staging / JOURNAL).touch()
    marker.write_text(fingerprint)  # last: a folder without it is never resumed
    return {}


def _preallocate(fd: int, size: int) -> None:
    """Reserve the shard's blocks up front (fallocate(2)): page-cache writes into them then skip
    per-page block reservation (~25% faster measured on ext4). Where the filesystem cannot, the
    file simply stays sparse; never glibc's posix_fallocate, which would write every block."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        libc.fallocate(fd, 0, 0, size)
    except (OSError, AttributeError):
        pass


def read_journal(path: Path) -> dict[str, dict]:
    """Finished tensors; a line torn by a kill mid-write is ignored (that tensor is redone)."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                done[record["name"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def _dispatch(plan: MergePlan, todo: list[TensorJob]):
    """(job, extra) in the order workers should take them: biggest first, so workers finish
    together; for a random method (DARE) in name order, with each job's generator states (mergekit
    draws one stream through the tensors in name order, so a job's state depends on all jobs before it)."""
    method = methods.get(plan.config.method)
    if not method.random:
        for job in sorted(todo, key=lambda job: -job.out_nbytes):
            yield job, None
        return
    import numpy as np

    draws = method.draws_function()
    wanted = {job.name for job in todo}
    # as torch.manual_seed seeds mt19937
    legacy = np.random.RandomState(plan.options["random_seed"] & 0xFFFFFFFF).get_state()
    stream = np.random.MT19937()
    stream.state = {"bit_generator": "MT19937", "state": {"key": legacy[1], "pos": legacy[2]}}
    for job in plan.jobs:
        states = []
        if job.method == method.name:  # not a copied tensor
            for count in draws(job):
                if count:
                    states.append(stream.state)
                    stream.random_raw(count, output=False)
                else:
                    states.append(None)
        if job.name in wanted:
            yield job, {"rng": states}


def _execute(plan, todo, staging: Path, done: dict, workers: int, progress: bool, fsync: bool,
             resumed_bytes: int) -> int:
    from tqdm import tqdm

    out_paths = [str(staging / name) for name in plan.shard_names]
    bar = tqdm(total=plan.total_bytes, initial=resumed_bytes, unit="B", unit_scale=True, unit_divisor=1000,
               desc="merging", disable=not progress, smoothing=0.1, file=sys.stderr)
    sampler = _RssSampler()
    kernels.write_behind = fsync
    flusher = _Flusher(out_paths) if fsync else None
    with open(staging / JOURNAL, "a") as journal:
        def finished(job, report):
            journal.write(json.dumps(report, allow_nan=False) + "\n")
            journal.flush()
            done[job.name] = report
            bar.update(job.out_nbytes)
            if flusher is not None:
                flusher.wrote(job.shard, job.out_nbytes)
            sampler.sample()
            _crash_point(f"tensor:{len(done)}")

        torch_threads = None
        if kernels.needs_torch(todo):
            kernels.use_torch()  # imported once here, before any fork: workers inherit it
            if workers == 1:
                torch_threads = kernels.single_threaded()
        gc.freeze()  # the ~10^6 objects of torch's import out of the collector's walks, here and in forks
        try:
            if workers == 1:
                for job, extra in _dispatch(plan, todo):
                    _test_delay()
                    finished(job, kernels.run_job(job, out_paths, extra))
            else:
                _Workers(plan.jobs, out_paths, workers, staging).run(_dispatch(plan, todo), finished, sampler,
                                                                     len(done))
        finally:
            flush_error = flusher.stop() if flusher is not None else None
            gc.unfreeze()
            if workers == 1:
                kernels.close_files()
            if torch_threads is not None:
                kernels.restore_threads(torch_threads)
            bar.close()
    if flush_error is not None:
        raise flush_error
    return sampler.peak


class _Flusher:
    """Makes the output durable while it is computed: a thread fdatasyncs the shards written to
    each time another FLUSH_STEP bytes of tensors are finished. Each call also empties the disk's
    write cache (on a VM, the host's), which otherwise the fsync before publishing would wait for
    all at once. A failed fdatasync is returned by stop(), for the engine to raise: once one
    descriptor has seen a writeback error, a later fsync may not report it. The thread starts
    with the first finished tensor, after the workers are forked."""

    def __init__(self, paths: list[str]):
        import threading

        self.paths, self.fds = paths, []
        self.pending, self.closing, self.error = 0, False, None
        self.touched: set[int] = set()  # shards written to since the last round
        self.wake = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="hpcadapt-merge-flusher", daemon=True)

    def wrote(self, shard: int, nbytes: int) -> None:
        if not self.fds:
            self.fds = [os.open(path, os.O_RDONLY) for path in self.paths]
            self.thread.start()
        with self.wake:
            self.touched.add(shard)
            self.pending += nbytes
            if self.pending >= FLUSH_STEP:
                self.wake.notify()

    def _loop(self) -> None:
        while True:
            with self.wake:
                self.wake.wait_for(lambda: self.closing or self.pending >= FLUSH_STEP)
                if self.closing:
                    return
                shards, self.touched, self.pending = sorted(self.touched), set(), 0
            for shard in shards:
                try:
                    os.fdatasync(self.fds[shard])
                except OSError as error:
                    self.error = OSError(error.errno, f"writing the output to disk failed: {error.strerror}",
                                         self.paths[shard])
                    return

    def stop(self) -> OSError | None:
        if self.fds:
            with self.wake:
                self.closing = True
                self.wake.notify()
            self.thread.join()
            for fd in self.fds:
                os.close(fd)
        return self.error


class _Workers:
    """Forked worker processes fed one job at a time over pipes. The main process waits on every
    pipe and every process sentinel at once: a result, an error, or a death is seen as it happens."""

    def __init__(self, jobs: list[TensorJob], out_paths: list[str], count: int, staging: Path):
        import multiprocessing

        self.jobs, self.staging = jobs, staging
        self.index = {job.name: i for i, job in enumerate(jobs)}
        context = multiprocessing.get_context("fork")
        self.procs, self.conns = [], []
        parent = os.getpid()
        for _ in range(count):
            mine, theirs = context.Pipe()
            proc = context.Process(target=_worker_main, args=(theirs, jobs, out_paths, parent), daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(mine)

    def run(self, dispatch, finished, sampler, already_done: int) -> None:
        from multiprocessing.connection import wait

        busy: dict[int, TensorJob] = {}  # worker -> job in flight
        completed = already_done

        def feed(worker: int) -> None:
            item = next(dispatch, None)
            if item is None:
                self.conns[worker].send(None)
                return
            job, extra = item
            busy[worker] = job
            try:
                self.conns[worker].send((self.index[job.name], extra))
            except OSError:  # it died after its last result
                self._died(worker, job, completed)

        try:
            for worker in range(len(self.procs)):
                feed(worker)
            while busy:
                waiting = [self.conns[w] for w in busy] + [self.procs[w].sentinel for w in busy]
                ready = set(wait(waiting))
                for worker in list(busy):
                    conn, proc = self.conns[worker], self.procs[worker]
                    if conn in ready or (proc.sentinel in ready and conn.poll()):
                        try:
                            status, _, payload = conn.recv()
                        except (EOFError, OSError):
                            self._died(worker, busy[worker], completed)
                        if status == "error":
                            raise MergeError(f"tensor {busy[worker].name!r}: {payload}; "
                                             f"the {completed} finished tensors are kept in {self.staging}")
                        job = busy.pop(worker)
                        finished(job, payload)
                        completed += 1
                        feed(worker)
                    elif proc.sentinel in ready:
                        self._died(worker, busy[worker], completed)
        finally:
            self.stop()

    def _died(self, worker: int, job: TensorJob, completed: int):
        proc = self.procs[worker]
        proc.join(1)
        code = proc.exitcode
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
            if code == -signal.SIGKILL:
                how += " (the out-of-memory killer does that)"
        else:
            how = f"exited with status {code}"
        raise MergeError(f"worker process {proc.pid} {how} while merging tensor {job.name!r}; the other workers were "
                         f"stopped. The {completed} finished tensors are kept in {self.staging}: run the same command "
                         "again to resume")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc, conn in zip(self.procs, self.conns):
            proc.join(5)
            conn.close()


def _worker_main(conn, jobs: list[TensorJob], out_paths: list[str], parent: int) -> None:
    _worker_init(parent)
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            index, extra = message
            _test_delay()
            try:
                report = kernels.run_job(jobs[index], out_paths, extra)
            except Exception as error:  # reported to the main process, which stops the merge
                conn.send(("error", index, f"{type(error).__name__}: {error}"))
                break
            conn.send(("done", index, report))
    finally:
        os._exit(0)


def _worker_init(parent: int) -> None:
    """Workers die with the main process, so a killed merge leaves no writer behind."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the main process died before prctl took effect
        os._exit(1)
    # Ctrl-C reaches every process of the terminal's group: the main process handles it (and
    # ends the workers). A fork inherits the parent's handlers, and inside a Slurm job those are
    # submitit's, which ignore SIGTERM; restore the default so SIGTERM ends a worker. A
    # preemption warning (USR2, sent to every process of the job) is the main process's business.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    if "torch" in sys.modules:
        kernels.single_threaded()


def _fsync_folder(folder: Path) -> None:
    """Every file of the folder and the folder itself on disk (the workers started the shards'
    writeback as they finished each tensor, so this mostly waits for the last ones)."""
    for entry in sorted(folder.iterdir()):
        if entry.is_file():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as error:  # some filesystems cannot fsync a directory
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _publish(staging: Path, out_dir: Path, fsync: bool) -> None:
    """Turn the staging folder into `out_dir` with one rename; a forced replacement moves the old
    output aside first and removes it afterwards (folder or file), leaving nothing behind."""
    for name in (JOURNAL, FINGERPRINT):
        (staging / name).unlink(missing_ok=True)
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = out_dir.parent / f".{out_dir.name}.replaced"
        _remove(old)
        out_dir.rename(old)
    staging.rename(out_dir)
    if fsync:
        _fsync_dir(out_dir.parent)
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def plan_fingerprint(plan: MergePlan) -> str:
    """Recipe, options, inputs (size and sampled content) and output layout: what must match for
    a resume to be valid."""
    by_file: dict[Path, list] = {}
    for job in plan.jobs:
        for info in job.sources + ((job.tail,) if job.tail else ()):
            by_file.setdefault(info.file, []).append(info)
    others = [p / "config.json" for p in plan.config.parents]
    payload = {
        "version": FORMAT_VERSION,
        "recipe": plan.config.raw,
        "options": plan.options,
        "parents": [str(p) for p in plan.config.parents],
        "headers_in": {str(c.path / name): digest for c in plan.checkpoints.values()
                       for name, digest in sorted(c.header_digests.items())},
        "inputs": ([file_identity(path, infos) for path, infos in sorted(by_file.items())]
                   + [file_identity(p) for p in others]),
        "jobs": [[j.name, j.method, j.params, j.out_dtype, j.shard, j.out_offset, list(j.shape)] for j in plan.jobs],
        "headers": [hashlib.sha256(h).hexdigest() for h in plan.shard_headers],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _completed_fingerprint(out_dir: Path) -> str | None:
    try:
        return json.loads((out_dir / "merge_report.json").read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


class _RssSampler:
    """Largest sum of RSS over this process and its workers, sampled as tensors finish
    (at most every INTERVAL seconds: a sample walks /proc, which costs the workers CPU)."""

    INTERVAL = 0.25

    def __init__(self):
        self.peak, self.last = 0, 0.0

    def sample(self) -> None:
        now = time.monotonic()
        if now - self.last < self.INTERVAL:
            return
        self.last = now
        try:
            import psutil

            me = psutil.Process()
            total = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            self.peak = max(self.peak, total)
        except Exception:  # psutil missing or a worker exiting between listing and reading
            pass


def _own_peak_rss() -> int:
    """This process's peak resident set since it started (VmHWM). Not ru_maxrss: Linux carries that
    over an exec, so a merge launched from a large process would report the launcher's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _summary(plan, out_dir, started, resumed, workers, peak_total, done) -> MergeSummary:
    own = _own_peak_rss()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    reports = list((done or {}).values())
    branches = [r.get("branch") for r in reports if r.get("branch")]
    return MergeSummary(out_dir=out_dir, seconds=time.perf_counter() - started, bytes=plan.total_bytes,
                        bytes_read=plan.read_bytes, tensors=len(plan.jobs), resumed_tensors=resumed, workers=workers,
                        peak_rss=max(own, children), peak_rss_total=max(peak_total or 0, own),
                        branch_counts={b: branches.count(b) for b in sorted(set(branches))},
                        nonfinite={r["name"]: r["nonfinite"] for r in sorted(reports, key=lambda r: r["name"])
                                   if r.get("nonfinite")})


def _crash_point(label: str) -> None:
    """Die by SIGKILL here when HPCADAPT_MERGE_KILL_AT names this point: the resume tests'
    way of interrupting a real run at an exact moment (never set in normal use)."""
    if os.environ.get("HPCADAPT_MERGE_KILL_AT") == label:
        os.kill(os.getpid(), signal.SIGKILL)


def _test_delay() -> None:
    """Sleep HPCADAPT_MERGE_TEST_DELAY seconds before each tensor: the process tests' way of making a
    tiny merge last long enough to kill or interrupt it (never set in normal use)."""
    delay = os.environ.get("HPCADAPT_MERGE_TEST_DELAY")
    if delay:
        time.sleep(float(delay))


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)
