"""Processes fail together and nothing is destroyed or mixed: a killed main process takes its
workers with it, a killed worker ends the merge at once with the tensor it held named, a second
run on the same output is refused, Ctrl-C and an unwritable folder give one error line, the
output may never be (or hold, or sit in) an input, --force leaves nothing behind, and a resume
notices an input rewritten with its old modification time."""

import json
import os
import shutil
import signal
import subprocess
import time

import psutil
import pytest
from hpcadapt_merge import run_merge
from hpcadapt_merge.config import MergeError
from merge_helpers import CLI, folder_bytes, slerp_config, write_recipe
from merge_helpers import merge_cli as run
from safetensors.torch import load_file, save_file


def start(recipe, out, delay=0.15, workers=2, *extra):
    """The command in its own session (a terminal's process group), each tensor slowed by `delay` s.
    It gets SIGINT's default action as a foreground command does, also when the tests run as a
    background job of a shell, whose commands inherit SIGINT ignored."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HPCADAPT_MERGE_TEST_DELAY": str(delay)}
    env.pop("HPCADAPT_MERGE_KILL_AT", None)
    return subprocess.Popen([*CLI, str(recipe), str(out), "--workers", str(workers),
                             "--no-progress", "--out-shard-size", "100KB", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def workers_of(proc, count=2, timeout=30.0):
    """The worker processes, once they exist and the merge has finished a tensor or two."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(proc.pid).children()
        if len(children) >= count:
            time.sleep(0.5)
            return children
        time.sleep(0.05)
    raise AssertionError("no workers appeared")


def gone(process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_workers_end_within_a_second_of_a_sigkilled_main_process(models, tmp_path, uninterrupted):
    recipe, out = write_recipe(models, tmp_path), tmp_path / "out"
    proc = start(recipe, out)
    workers = workers_of(proc)
    os.kill(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    while not all(gone(w) for w in workers) and time.monotonic() - killed < 5:
        time.sleep(0.01)
    assert all(gone(w) for w in workers) and time.monotonic() - killed < 1.0
    proc.wait(10)
    resumed = run(recipe, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and folder_bytes(out) == uninterrupted


def test_a_killed_worker_ends_the_merge_at_once_naming_its_tensor(models, tmp_path, uninterrupted):
    recipe, out = write_recipe(models, tmp_path), tmp_path / "out"
    proc = start(recipe, out, 0.3)
    workers = workers_of(proc)
    os.kill(workers[0].pid, signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - killed < 2.0
    assert proc.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"hpcadapt-merge: error: worker process {workers[0].pid} was killed by SIGKILL")
    assert "while merging tensor 'model." in lines[0] and "run the same command again to resume" in lines[0]
    assert all(gone(w) for w in workers)
    resumed = run(recipe, out)
    assert resumed.returncode == 0, resumed.stderr
    assert folder_bytes(out) == uninterrupted


def test_a_second_run_on_the_same_output_is_refused(models, tmp_path, uninterrupted):
    recipe, out = write_recipe(models, tmp_path), tmp_path / "out"
    first = start(recipe, out, 0.1)
    workers_of(first)
    second = run(recipe, out)
    assert second.returncode == 1
    assert second.stderr.strip() == (f"hpcadapt-merge: error: another hpcadapt-merge (pid {first.pid}) "
                                      f"is writing {out}; wait for it to finish or stop it, "
                                      "then run this command again")
    assert first.wait(60) == 0
    assert folder_bytes(out) == uninterrupted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.yml", "out"]


def test_ctrl_c_gives_one_line_and_the_merge_resumes(models, tmp_path, uninterrupted):
    recipe, out = write_recipe(models, tmp_path), tmp_path / "out"
    proc = start(recipe, out, 0.2)
    workers = workers_of(proc)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends to its foreground group
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert stderr.strip() == ("hpcadapt-merge: error: interrupted; the finished tensors are kept in "
                              f"{tmp_path / '.out.partial'}: run the same command again to resume")
    assert all(gone(w) for w in workers)
    assert run(recipe, out).returncode == 0 and folder_bytes(out) == uninterrupted


def test_an_unwritable_output_folder_gives_one_line(models, tmp_path):
    recipe = write_recipe(models, tmp_path)
    if os.geteuid() == 0:  # root writes anywhere a mode allows: take a folder no one can create files in
        out = "/sys/hpcadapt-merge-test/out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        out = locked / "out"
    done = run(recipe, out)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("hpcadapt-merge: error: "), done.stderr


@pytest.mark.parametrize("where", ["the input", "inside the input", "holding the input"])
def test_the_output_may_not_be_hold_or_sit_in_an_input(models, tmp_path, where):
    parent = tmp_path / "models"
    tuned = shutil.copytree(models["tuned"], parent / "tuned")
    before = folder_bytes(tuned)
    out = {"the input": tuned, "inside the input": tuned / "merged", "holding the input": parent}[where]
    with pytest.raises(MergeError, match="choose another output folder|choose a folder outside it"):
        run_merge(slerp_config({**models, "tuned": tuned}), out, force=True, progress=False)
    assert folder_bytes(tuned) == before and not (tuned / "merged").exists()
    assert sorted(p.name for p in parent.iterdir()) == ["tuned"]


def test_force_replaces_a_file_or_folder_and_leaves_nothing_else(models, tmp_path):
    config = slerp_config(models)
    (tmp_path / "out").write_text("a file where the output goes")
    run_merge(config, tmp_path / "out", force=True, progress=False)
    assert (tmp_path / "out" / "merge_report.json").is_file()
    run_merge({**config, "parameters": {"t": 0.3}}, tmp_path / "out", force=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_resume_notices_an_input_rewritten_with_its_old_mtime(models, tmp_path):
    tuned = shutil.copytree(models["tuned"], tmp_path / "tuned")
    recipe, out = write_recipe({**models, "tuned": tuned}, tmp_path), tmp_path / "out"
    assert run(recipe, out, kill_at="tensor:10").returncode == -signal.SIGKILL
    weights = tuned / "model.safetensors"
    stat = os.stat(weights)
    state = load_file(weights)
    state = {k: (v * 1.01).to(v.dtype) for k, v in state.items()}  # same header, other values
    save_file(state, weights, metadata={"format": "pt"})
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(weights).st_size == stat.st_size and os.stat(weights).st_mtime_ns == stat.st_mtime_ns
    again = run(recipe, out)
    assert again.returncode == 0, again.stderr
    assert "resuming" not in again.stderr and "starting afresh" in again.stderr
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert run(write_recipe({**models, "tuned": tuned}, fresh), fresh / "out").returncode == 0
    assert folder_bytes(out) == folder_bytes(fresh / "out")


def test_the_output_is_fsynced_before_it_is_published(models, tmp_path, monkeypatch):
    from hpcadapt_merge import engine

    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(self, target):
        events.append(("rename", str(target)))
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(engine.Path, "rename", rename)
    run_merge(slerp_config(models), tmp_path / "out", progress=False, shard_size=100_000)
    published = events.index(("rename", str(tmp_path / "out")))
    synced = {os.path.basename(path) for kind, path in events[:published] if kind == "fsync"}
    shards = {p.name for p in (tmp_path / "out").iterdir()}
    assert shards <= synced and ".out.partial" in synced
    assert ("fsync", str(tmp_path)) in events[published:]
    assert json.loads((tmp_path / "out" / "merge_report.json").read_text())["tensors"]


@pytest.mark.parametrize("workers", [1, 2])
def test_the_output_is_flushed_to_disk_while_it_is_merged(models, tmp_path, monkeypatch, workers):
    """Every FLUSH_STEP bytes of finished tensors the shards are fdatasynced, before the last
    tensor is done: the fsync before publishing then has little left to wait for."""
    from hpcadapt_merge import engine

    staging = tmp_path / ".out.partial"
    finished_at_flush = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd):
        finished_at_flush.append(len((staging / engine.JOURNAL).read_text().splitlines()))
        return real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(engine, "FLUSH_STEP", 4096)
    monkeypatch.setenv("HPCADAPT_MERGE_TEST_DELAY", "0.01")  # the flushing thread's turn comes between tensors
    summary = run_merge(slerp_config(models), tmp_path / "out", workers=workers, progress=False, shard_size=100_000)
    assert len(finished_at_flush) >= 2
    assert min(finished_at_flush) < summary.tensors


def test_a_failed_flush_while_merging_publishes_nothing(models, tmp_path, monkeypatch):
    """A writeback error seen by the flushing thread is the merge's error (a later fsync might not
    report it again), naming the shard; nothing is published."""
    from hpcadapt_merge import engine

    def fdatasync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(engine, "FLUSH_STEP", 4096)
    with pytest.raises(OSError, match="writing the output to disk failed: Input/output error") as raised:
        run_merge(slerp_config(models), tmp_path / "out", workers=2, progress=False, shard_size=100_000)
    assert raised.value.filename.startswith(str(tmp_path / ".out.partial" / "model-"))
    assert not (tmp_path / "out").exists()
