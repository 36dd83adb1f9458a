"""Stage folders: where a stage works, how it is declared finished, and how it is found.

A stage writes everything into a hidden staging folder next to its final folder and
renames it into place as its very last act. The rename is atomic on one filesystem, so
a folder under its final name is always complete, and a crash (or a preempted Slurm
job) leaves only a staging folder, which is also where the next attempt resumes from.

A finished folder is trusted only as far as it matches its manifest. The manifest records
the size and xxh3-128 digest of every file (logs and checkpoints aside) and a sha256 of
its own content. Planning, on a login node, checks the manifest's own digest and every
file's size (a stat per file: it must not read gigabytes); a stage that loads a finished
folder as its input checks every digest first (`verify_inputs`). A mismatch names the
file and says what to do. `hpcadapt verify DIR...` runs the full check.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcadapt.atomic import write_json_atomic
from hpcadapt.errors import ModelError, WriteFailed, write_failure

if TYPE_CHECKING:
    from hpcadapt.spec import StageSpec

MANIFEST = "manifest.json"
# Not covered by a manifest's digests: the launcher's log tee appends to logs/ after the
# rename, and kept Trainer checkpoints carry their own record (hpcadapt/training.py).
UNRECORDED = ("logs", "checkpoints")


class StageFolderError(ModelError):
    """A finished stage folder no longer matches its manifest."""


def staging_dir_for(stage_dir: Path) -> Path:
    return stage_dir.parent / f".staging-{stage_dir.name}"


def is_complete(stage_dir: Path) -> bool:
    """Whether the folder is a finished stage; raises StageFolderError if it is one that changed since.

    Only cheap checks (the manifest's own digest, each recorded file's presence and size):
    planning calls this for every stage on a login node. A folder under its final name
    always had a valid manifest (it is written before the rename), so an unreadable one
    was damaged later and is reported, not silently trained again.
    """
    stage_dir = Path(stage_dir)
    manifest = stage_dir / MANIFEST
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StageFolderError(f"{manifest} is not valid JSON ({e}); {_REDO.format(d=stage_dir)}") from None
    if not isinstance(data, dict) or not data.get("complete"):
        return False
    check_manifest(stage_dir, data)
    return True


_REDO = ("the folder changed after its stage finished. Delete {d} to train that stage again (the stages after it "
         "re-run too), or restore the original file.")


def manifest_digest(data: dict[str, Any]) -> str:
    """sha256 of the manifest's content without this digest itself (catches hand edits)."""
    body = {k: v for k, v in data.items() if k != "manifest_digest"}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def check_manifest(stage_dir: Path, data: dict[str, Any]) -> None:
    """The cheap half of verification: the manifest is as written, and its files are there at their sizes.

    Manifests written before digests were recorded carry neither `files` nor `manifest_digest`
    and are accepted as they are.
    """
    where = stage_dir / MANIFEST
    if "manifest_digest" in data and data["manifest_digest"] != manifest_digest(data):
        raise StageFolderError(f"{where} was edited after the stage finished (its recorded digest no longer "
                               f"matches its content); {_REDO.format(d=stage_dir)}")
    name, digest = data.get("name"), str(data.get("hash") or "")
    if name and digest and stage_dir.name.startswith(f"{name}-") and len(stage_dir.name) == len(name) + 13 \
            and stage_dir.name != f"{name}-{digest[:12]}":
        raise StageFolderError(f"{where} records hash {digest[:12]}..., but the folder is named {stage_dir.name}; "
                               f"{_REDO.format(d=stage_dir)}")
    for rel, info in (data.get("files") or {}).items():
        problem = file_problem(stage_dir, rel, info, full=False)
        if problem:
            raise StageFolderError(f"{stage_dir / rel}: {problem}; {_REDO.format(d=stage_dir)}")


def verify_folder(stage_dir: Path) -> int:
    """The full check of a finished folder: every recorded file's digest. Returns the files checked."""
    stage_dir = Path(stage_dir)
    if not is_complete(stage_dir):
        raise StageFolderError(f"{stage_dir} is not a finished stage folder (no complete {MANIFEST})")
    files = read_manifest(stage_dir).get("files") or {}
    for rel, info in files.items():
        problem = file_problem(stage_dir, rel, info, full=True)
        if problem:
            raise StageFolderError(f"{stage_dir / rel}: {problem}; {_REDO.format(d=stage_dir)}")
    return len(files)


def verify_inputs(spec: StageSpec) -> None:
    """Check every finished stage folder this stage reads, file by file, before anything loads it.

    Hub ids and folders not made by hpcadapt (no manifest) are identified otherwise
    (hpcadapt/identity.py). Each rank checks for itself: a rank must not load weights
    another rank has not vouched for, and xxh3 reads at disk speed.
    """
    models = [spec.input_model, spec.instruct_model, spec.base_model, spec.other_model, *spec.models.values()]
    for ref in dict.fromkeys(m for m in models if m):
        folder = Path(ref).expanduser()
        if (folder / MANIFEST).is_file():
            verify_folder(folder)


def file_problem(root: Path, rel: str, info: dict[str, Any], full: bool) -> str | None:
    """What is wrong with one recorded file (None if nothing): missing, resized, or (full) other content."""
    path = root / rel
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing (the manifest records it)"
    if size != info["size"]:
        return f"is {size:,} bytes, the manifest recorded {info['size']:,}"
    algorithm = next((a for a in info if a != "size"), None)
    if full and algorithm and file_digest(path, algorithm) != info[algorithm]:
        return f"its content differs from what the manifest recorded ({algorithm} digest)"
    return None


def file_digest(path: Path, algorithm: str) -> str:
    """Digest of a file, read in 8 MiB blocks. xxh3_128 (xxhash, which `datasets` brings) for
    integrity at disk speed; sha256 where a deliberate swap must be caught (checkpoints)."""
    if algorithm == "xxh3_128":
        import xxhash

        h: Any = xxhash.xxh3_128()
    else:
        h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_files(root: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Every regular file under `root` as a relative POSIX path, sorted; top-level `skip` names left out."""
    out = []
    for path in Path(root).rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or not path.is_file() or path.is_symlink():
            continue
        out.append(rel.as_posix())
    return sorted(out)


def record_files(root: Path, names: list[str], algorithm: str) -> dict[str, dict[str, Any]]:
    """Size and digest of each named file under `root`."""
    return {rel: {"size": (root / rel).stat().st_size, algorithm: file_digest(root / rel, algorithm)}
            for rel in names}


def default_algorithm() -> str:
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return "blake2b"
    return "xxh3_128"


def read_manifest(stage_dir: Path) -> dict[str, Any]:
    return json.loads((stage_dir / MANIFEST).read_text())


def library_versions() -> dict[str, str]:
    """Versions of what shaped the result, recorded in every manifest."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("hpcadapt", "torch", "transformers", "trl", "datasets", "accelerate", "deepspeed", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def finalize(spec: StageSpec, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write the manifest into the staging folder and move it to its final name."""
    staging = Path(spec.staging_dir)
    final = Path(spec.stage_dir)
    if not spec.keep_checkpoints:
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    # The Trainer pickles its arguments next to the weights; a finished model folder
    # should hold nothing that has to be unpickled (spec.json records the settings).
    (staging / "training_args.bin").unlink(missing_ok=True)
    models = {k: getattr(spec, k) for k in ("input_model", "base_model", "other_model") if getattr(spec, k)}
    manifest = {
        "name": spec.name,
        "kind": spec.kind,
        "hash": spec.hash,
        "pipeline": spec.pipeline,
        "inputs": spec.inputs,
        # Where the inputs were read from this time (not part of the hash).
        "sources": {"data": [src["path"] for src in spec.data_sources],
                    "models": models | spec.models,
                    "files": [*spec.benchmark, *([spec.heldout] if spec.heldout else [])]},
        "settings": spec.settings,
        "versions": library_versions(),
        "metrics": metrics,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": True,
        **(extra or {}),
    }
    from hpcadapt.tracking import redact

    manifest = redact(manifest)
    manifest["files"] = record_files(staging, folder_files(staging, skip=(*UNRECORDED, MANIFEST)), default_algorithm())
    manifest["manifest_digest"] = manifest_digest(manifest)
    try:
        write_json_atomic(staging / MANIFEST, manifest)
    except OSError as e:
        if write_failure(e) is None:
            raise
        raise WriteFailed(f"stage {spec.name}: writing {staging / MANIFEST} failed ({write_failure(e)}); the stage "
                          f"is not marked complete and its model folder stays in {staging}. Free space and run the "
                          f"same command again.") from None
    if final.exists():  # an identical stage finished meanwhile (e.g. a duplicate job)
        if is_complete(final):
            shutil.rmtree(staging)
            return final
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


@contextmanager
def stage_lock(stage_dir: Path) -> Iterator[None]:
    """Hold a stage folder's lock while its stage runs; if another run holds it, say who and wait.

    An advisory lock on a small file beside the folder: released by the kernel when the
    holder exits or dies, so a crash never leaves a lock that blocks the next run.
    """
    lock_file = stage_dir.parent / f".lock-{stage_dir.name}"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            print(f"hpcadapt: waiting for stage {stage_dir.name}: {holder}", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"held by pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)



def stage_folders_of(folder: Path) -> list[Path]:
    """A stage folder itself, or the stage folders a run folder links (outputs/runs/NAME-HASH/)."""
    if (folder / "manifest.json").is_file() or not folder.is_dir():
        return [folder]
    linked = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "manifest.json").is_file())
    return linked or [folder]


def main(argv: list[str] | None = None) -> int:
    """`hpcadapt verify DIR...` (or `python -m hpcadapt.stagedir DIR...`): check finished stage
    folders, or every stage a run folder links, file by file against their manifests."""
    folders = argv if argv is not None else sys.argv[1:]
    if not folders:
        print("usage: hpcadapt verify STAGE_DIR|RUN_DIR...", file=sys.stderr)
        return 2
    bad = 0
    for folder in [f for given in folders for f in stage_folders_of(Path(given))]:
        try:
            print(f"{folder}: ok ({verify_folder(folder)} files match the manifest)")
        except ModelError as e:
            print(f"hpcadapt: error: {e}", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
