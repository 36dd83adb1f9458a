"""Run a corpus of bad inputs and faults through `python -m hpcadapt` and print what each one does.

    python tools/bad_inputs.py                 # every case (~3 min on 2 cores; tmpfs cases need root)
    python tools/bad_inputs.py --only parquet  # cases whose name contains a word
    python tools/bad_inputs.py --json out.json

Each case copies a prepared output root (the tiny demo's data and a finished `tiny_init` stage;
for checkpoint cases also a finished `cpt` stage that kept its checkpoints), breaks one thing
in it (a data file, the config, a model folder, a checkpoint, the filesystem) and runs the
command a user would. The table says, per case: the exit code, the first line of the message,
whether the message named what was wrong (the file and line, or the config key), which stages
the run marked complete, and whether the finished stage folders that were there before are
byte-identical afterwards. Settings are the tests' small ones (tests/spine/spine_helpers.py
FAST), so most cases fail in planning within seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# As tests/spine/spine_helpers.py FAST: a 2-layer model and a few steps per stage.
FAST = [
    "stages.tiny_init.extra.vocab_size=400", "+stages.tiny_init.extra.hidden_size=64",
    "+stages.tiny_init.extra.intermediate_size=128", "+stages.tiny_init.extra.num_hidden_layers=2",
    "stages.cpt.max_steps=6", "stages.sft.max_steps=6", "stages.orpo.max_steps=6",
    "pipeline.merge=false", "pipeline.evaluate=false", "wandb.enabled=false",
    # The tiny model is both Base and Instruct: one cheap finished stage to build on.
    "pipeline.prepare=[tiny_init]", "model.base=@tiny_init", "model.instruct=@tiny_init",
]
CHAIN = ["data.generate=null", "pipeline.chain=[cpt,sft,orpo]"]
CPT_ONLY = ["data.generate=null", "pipeline.chain=[cpt]", "stages.cpt.save_steps=2"]
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false",
       "TRL_EXPERIMENTAL_SILENCE": "1"}


@dataclass
class Case:
    name: str
    group: str  # data | config | models | checkpoints | environment
    named: str  # regex the message must contain: the file (and line) or the key at fault
    fault: Callable[[Path], list[str] | None] | None = None  # breaks the copy; may return more overrides
    overrides: list[str] = field(default_factory=lambda: list(CHAIN))
    base: str = "prefix"  # prefix | trained
    expect_exit: int = 2


@dataclass
class Result:
    case: str
    group: str
    exit: int
    message: str
    named: bool
    completed: list[str]
    intact: bool
    seconds: float


# --- faults --------------------------------------------------------------------------------------


def data(root: Path, name: str) -> Path:
    return root / "demo_data" / name


def edit_line(name: str, lineno: int, row) -> Callable[[Path], None]:
    """Replace line `lineno` of a demo data file by `row` (an object, or raw text/bytes)."""
    def fault(root: Path) -> None:
        path = data(root, name)
        rows = path.read_bytes().splitlines()
        text = row if isinstance(row, (bytes, str)) else json.dumps(row)
        rows[lineno - 1] = text if isinstance(text, bytes) else text.encode()
        path.write_bytes(b"\n".join(rows) + b"\n")
    return fault


def first_row(root: Path, name: str) -> dict:
    return json.loads(data(root, name).read_text().splitlines()[0])


def edit_first(name: str, change: Callable[[dict], dict], lineno: int = 2) -> Callable[[Path], None]:
    """Line `lineno` of a data file becomes `change(its first row)`."""
    def fault(root: Path) -> None:
        edit_line(name, lineno, change(first_row(root, name)))(root)
    return fault


def own_source(mix: str, filename: str, make: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """Point a mix at a file of our own, written by `make`."""
    def fault(root: Path) -> list[str]:
        path = root / "bad" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
        return [f"data.mixes.{mix}.sources=[{{path: {path}}}]"]
    return fault


def parquet(columns: dict) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns), path)
    return make


def rows_parquet(rows: list[dict]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return make


def stage_dir(root: Path, name: str) -> Path:
    return sorted((root / "stages").glob(f"{name}-*"))[0]


def model_folder(root: Path, *, drop: tuple[str, ...] = (), pickled: bool = False) -> Path:
    """A copy of the finished tiny model outside the stages, with files left out (or pickled weights)."""
    folder = root / "models" / "start"
    shutil.copytree(stage_dir(root, "tiny_init"), folder)
    (folder / "manifest.json").unlink()
    for name in drop:
        (folder / name).unlink()
    if pickled:
        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    return folder


def start_model(**kwargs) -> Callable[[Path], list[str]]:
    def fault(root: Path) -> list[str]:
        folder = model_folder(root, **kwargs)
        return ["pipeline.prepare=[]", f"model.base={folder}", f"model.instruct={folder}"]
    return fault


def weights_of(root: Path, stage: str = "tiny_init") -> Path:
    return stage_dir(root, stage) / "model.safetensors"


def truncate_weights(root: Path) -> None:
    w = weights_of(root)
    w.write_bytes(w.read_bytes()[:-100])


def flip_byte(root: Path) -> None:
    w = weights_of(root)
    b = bytearray(w.read_bytes())
    b[len(b) // 2] ^= 1
    w.write_bytes(bytes(b))


def edit_manifest(change: Callable[[dict], dict] | None = None, text: str | None = None) -> Callable[[Path], None]:
    def fault(root: Path) -> None:
        path = stage_dir(root, "tiny_init") / "manifest.json"
        path.write_text(text if text is not None else json.dumps(change(json.loads(path.read_text()))))
    return fault


def resumable(root: Path, tamper: Callable[[Path], None]) -> list[str]:
    """The finished cpt's kept checkpoints placed where an interrupted run of a longer cpt resumes
    from (its staging folder), then `tamper`ed with."""
    staging = staging_of(root, CPT_ONLY + ["stages.cpt.max_steps=8"])
    shutil.copytree(stage_dir(root, "cpt") / "checkpoints", staging / "checkpoints")
    tamper(staging / "checkpoints")
    return ["stages.cpt.max_steps=8"]


def staging_of(root: Path, overrides: list[str]) -> Path:
    """The staging folder of the cpt stage these overrides plan (hash-named), by a dry run."""
    out = subprocess.run([sys.executable, "-m", "hpcadapt", f"output_root={root}", *FAST, *overrides, "dry_run=true"],
                         capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=120)
    name = re.search(r"\b(cpt-[0-9a-f]{12})\b", out.stdout).group(1)
    return root / "stages" / f".staging-{name}"


class Payload:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def torn_checkpoint(ckpts: Path) -> None:
    """The newest checkpoint as a kill mid-save leaves it: no completion record, half an optimizer file."""
    newest = sorted(ckpts.glob("checkpoint-*"))[-1]
    (newest / "hpcadapt-checkpoint.json").unlink()
    opt = newest / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])


def swapped_pickle(ckpts: Path) -> None:
    """Every checkpoint's optimizer state replaced by a same-size pickle that runs code when loaded."""
    for folder in ckpts.glob("checkpoint-*"):
        opt = folder / "optimizer.pt"
        payload = pickle.dumps(Payload(str(ckpts.parent.parent.parent / "CODE-RAN")))
        opt.write_bytes(payload.ljust(opt.stat().st_size, b"\0"))


def mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


MOUNTS: list[Path] = []


def on_tmpfs(root: Path, options: str, copy: bool) -> Path:
    """`root` moved onto a fresh tmpfs (or left where it is if none can be mounted)."""
    disk = root.parent / f"{root.name}-tmpfs"
    if not mount_tmpfs(disk, options):
        return root
    MOUNTS.append(disk)
    if copy:
        shutil.copytree(root, disk / "out")
    return disk / "out"


# --- the corpus ----------------------------------------------------------------------------------


def corpus() -> list[Case]:
    pref = "domain_prefs.jsonl"
    chat = "domain_chat.jsonl"
    text = "domain_text.jsonl"
    assistant_null = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]}
    good_chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    return [
        # data
        Case("missing data file", "data", r"preference\.sources\[0\].*domain_prefs\.jsonl does not exist",
             lambda r: data(r, pref).unlink()),
        Case("empty data file", "data", r"domain_text\.jsonl is empty", lambda r: data(r, text).write_text("")),
        Case("row without the needed field", "data", r"domain_chat\.jsonl:3: missing field 'messages'",
             edit_line(chat, 3, {"conversation": []})),
        Case("line that is not JSON", "data", r"domain_text\.jsonl:2: not valid JSON", edit_line(text, 2, '{"text": ')),
        Case("non-UTF-8 byte in JSONL", "data", r"domain_text\.jsonl:4: byte 0xe9 .* not UTF-8",
             edit_line(text, 4, b'{"text": "caf\xe9 au lait"}')),
        Case("content: null", "data", r"domain_chat\.jsonl:2: field 'messages'\[1\]: 'content' is null",
             edit_line(chat, 2, assistant_null)),
        Case("content is a number", "data", r"domain_chat\.jsonl:2: .*'content' is int",
             edit_line(chat, 2, {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]})),
        Case("conversation without an assistant turn", "data",
             r"domain_chat\.jsonl:2: field 'messages' has no assistant",
             edit_line(chat, 2, {"messages": [{"role": "user", "content": "q"}]})),
        Case("unknown role", "data", r"domain_chat\.jsonl:2: field 'messages'\[0\]: unknown role",
             edit_line(chat, 2, {"messages": [{"role": "human", "content": "q"}, good_chat["messages"][1]]})),
        Case("messages as one string", "data", r"domain_chat\.jsonl:2: field 'messages' must be",
             edit_line(chat, 2, {"messages": "user: hi"})),
        Case("text that is not a string", "data", r"domain_text\.jsonl:2: field 'text' must be a string",
             edit_line(text, 2, {"text": 42})),
        Case("chosen equals rejected", "data", r"domain_prefs\.jsonl:2: 'chosen' and 'rejected' are identical",
             edit_first(pref, lambda row: {**row, "rejected": row["chosen"]})),
        Case("pair in two formats", "data", r"domain_prefs\.jsonl:2: 'chosen' is a string",
             edit_first(pref, lambda row: {**row, "chosen": "True"})),
        Case("answer without an assistant reply", "data", r"domain_prefs\.jsonl:2: field 'rejected' has no assistant",
             edit_first(pref, lambda row: {**row, "rejected": row["prompt"]})),
        Case("format changes between rows", "data", r"domain_prefs\.jsonl:2: field 'prompt' is a string",
             edit_first(pref, lambda row: {"prompt": "q", "chosen": "a", "rejected": "b"})),
        Case("broken .json file", "data", r"rows\.json:3: not valid JSON",
             own_source("cpt", "rows.json", lambda p: p.write_text('[\n {"text": "a"},\n {"text": }\n]\n'))),
        Case(".json that is not a list", "data", r"rows\.json: expected a JSON list",
             own_source("cpt", "rows.json", lambda p: p.write_text('{"text": "a"}'))),
        Case("non-UTF-8 byte in .json", "data", r"rows\.json:2: byte 0xff",
             own_source("cpt", "rows.json", lambda p: p.write_bytes(b'[\n {"text": "\xff"}\n]\n'))),
        Case("Parquet text column of integers", "data", r"t\.parquet: column 'text' is int64",
             own_source("cpt", "t.parquet", parquet({"text": [1, 2, 3]}))),
        Case("Parquet messages column of strings", "data", r"m\.parquet: column 'messages' is string",
             own_source("sft", "m.parquet", parquet({"messages": ["user: hi"]}))),
        Case("Parquet row with null content", "data", r"n\.parquet: row 1: field 'messages'\[1\]: 'content' is null",
             own_source("sft", "n.parquet", rows_parquet([good_chat, assistant_null]))),
        Case("file named .parquet that is not one", "data", r"x\.parquet: not a readable Parquet file",
             own_source("cpt", "x.parquet", lambda p: p.write_bytes(b"PAR1 but not really"))),
        Case("folder that is not a saved dataset", "data", r"saved: .*is a folder but not a saved HF dataset|"
             r"saved is a folder but not a saved HF dataset",
             own_source("cpt", "saved", lambda p: p.mkdir())),
        Case("hub dataset not cached, offline", "data", r"sources\[0\]: hub dataset org/corpus@",
             lambda r: ["data.mixes.cpt.sources=[{path: org/corpus, revision: " + "ab" * 20 + "}]"]),
        Case("hub dataset unpinned, offline", "data", r"sources\[0\]\.revision: hub dataset org/corpus",
             lambda r: ["data.mixes.cpt.sources=[{path: org/corpus}]"]),
        Case("mix weight 0", "data", r"data\.mixes\.cpt\.sources\[0\]\.weight must be > 0",
             lambda r: ["data.mixes.cpt.sources.0.weight=0"]),
        # config
        Case("misspelt key with +", "config", r"stages\.cpt\.learnig_rate is not a setting; did you mean",
             lambda r: ["+stages.cpt.learnig_rate=1e-5"]),
        Case("learning rate 0", "config", r"stages\.cpt: learning_rate must be > 0",
             lambda r: ["stages.cpt.learning_rate=0"]),
        Case("negative learning rate", "config", r"stages\.sft: learning_rate must be > 0",
             lambda r: ["stages.sft.learning_rate=-1e-5"]),
        Case("max_length 0", "config", r"stages\.cpt: max_length must be > 0", lambda r: ["stages.cpt.max_length=0"]),
        Case("ORPO without beta", "config", r"stages\.orpo\.beta is not set", lambda r: ["stages.orpo.beta=null"]),
        Case("unknown stage kind", "config", r"stage kind 'cptx' is unknown", lambda r: ["stages.cpt.kind=cptx"]),
        Case("chain names a missing stage", "config", r"pipeline\.chain names stage 'nope'",
             lambda r: ["pipeline.chain=[cpt,nope]"]),
        Case("batch not divisible by processes", "config", r"stages\.\w+\.global_batch_size \(8\) is not a multiple",
             lambda r: ["cluster.nprocs=3"]),
        Case("secret among stage settings", "config", r"stages\.cpt\.extra\.hub_token looks like a secret",
             lambda r: ["+stages.cpt.extra.hub_token=hf_FAKEsecretTOKEN00000000000000000"]),
        Case("W&B key as config", "config", r"wandb\.api_key is not a setting",
             lambda r: ["+wandb.api_key=0123456789abcdef0123456789abcdef01234567"]),
        Case("unknown merge method", "config", r"merge\.method 'slurp' is unknown", lambda r: ["merge.method=slurp"]),
        Case("plugin that cannot be imported", "config", r"plugins names 'no_such_plugin'",
             lambda r: ["plugins=[no_such_plugin]"]),
        # models
        Case("start model folder missing", "models", r"model folder .*/not_there does not exist",
             lambda r: ["pipeline.prepare=[]", f"model.instruct={r}/not_there", f"model.base={r}/not_there"]),
        Case("start model with pickled weights", "models", r"models/start has no \*\.safetensors.*pickled",
             start_model(pickled=True)),
        Case("start model without tokenizer", "models", r"models/start has no tokenizer files",
             start_model(drop=("tokenizer.json", "tokenizer_config.json"))),
        Case("start model without chat template", "models", r"models/start has no chat template",
             start_model(drop=("chat_template.jinja",))),
        Case("hub model not cached, offline", "models", r"model\.(base|instruct)_revision: hub model org/model",
             lambda r: ["pipeline.prepare=[]", "model.instruct=org/model", "model.base=org/model"]),
        Case("finished stage's weights truncated", "models", r"tiny_init-\w+/model\.safetensors: is [\d,]+ bytes",
             truncate_weights),
        Case("finished stage's weights with a flipped byte", "models",
             r"tiny_init-\w+/model\.safetensors: its content differs", flip_byte, overrides=list(CPT_ONLY)),
        Case("hand-edited manifest hash", "models", r"tiny_init-\w+/manifest\.json was edited",
             edit_manifest(lambda m: {**m, "hash": "0" * 64})),
        Case("manifest that is not JSON", "models", r"tiny_init-\w+/manifest\.json is not valid JSON",
             edit_manifest(text="{complete: true")),
        # checkpoints
        Case("torn newest checkpoint (resumes from the one before)", "checkpoints",
             r"skipped checkpoint-4, incomplete.*removed it", lambda r: resumable(r, torn_checkpoint),
             overrides=list(CPT_ONLY), base="trained", expect_exit=0),
        Case("swapped pickle in every checkpoint (restarts, runs no code)", "checkpoints",
             r"refused checkpoint-\d, changed after it was written: optimizer\.pt",
             lambda r: resumable(r, swapped_pickle), overrides=list(CPT_ONLY), base="trained", expect_exit=0),
        # environment
        Case("output_root below a file", "environment", r"output folder .*/blocker/out is not writable",
             None, overrides=list(CHAIN)),
        Case("read-only output_root", "environment", r"output folder .* is not writable \(Read-only file system\)",
             None, overrides=list(CHAIN)),
        Case("full disk while planning", "environment", r"no space left on the device", None,
             overrides=["pipeline.chain=[cpt,sft,orpo]"]),  # the demo's data is generated into output_root
        Case("full disk during a checkpoint save", "environment", r"writing checkpoint-\d+ in .*failed: "
             r"(no space left|a short write)", None, overrides=[*CPT_ONLY, "stages.cpt.max_steps=12"], base="trained"),
        Case("full disk during a checkpoint save, then space freed", "environment",
             r"resuming cpt from .*/checkpoint-2", None, overrides=[*CPT_ONLY, "stages.cpt.max_steps=12"],
             base="trained", expect_exit=0),
        Case("unwritable Slurm log folder", "environment", r"blocker/logs.*(a path component is a file|not a folder)",
             None, overrides=[*CHAIN, "cluster=local_slurm"]),
    ]


# --- running ---------------------------------------------------------------------------------------


def run_env() -> dict[str, str]:
    env = {**os.environ, **ENV}
    env.pop("WANDB_API_KEY", None)
    return env


def hpcadapt(root: Path, overrides: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcadapt", f"output_root={root}", *FAST, *overrides],
                          capture_output=True, text=True, env=run_env(), cwd=REPO, timeout=timeout)


def complete_stages(root: Path) -> dict[str, Path]:
    """Stage folders whose manifest says complete (read directly: a tampered one still counts)."""
    out = {}
    for manifest in (root / "stages").glob("*/manifest.json") if (root / "stages").is_dir() else []:
        try:
            if json.loads(manifest.read_text()).get("complete"):
                out[manifest.parent.name] = manifest.parent
        except (json.JSONDecodeError, UnicodeDecodeError):
            out[manifest.parent.name] = manifest.parent
    return out


def fingerprint(folders: dict[str, Path]) -> dict[str, str]:
    """sha256 of every file of the given stage folders but their logs (a run appends to those)."""
    out = {}
    for name, folder in folders.items():
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "logs" not in path.relative_to(folder).parts:
                out[f"{name}/{path.relative_to(folder)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def message_of(proc: subprocess.CompletedProcess) -> str:
    """The error paragraph (or, for a run that succeeded, hpcadapt's notes about skipped checkpoints).

    A stage that failed is reported with its log's last lines, which hold the stage's own
    error: that one's first line follows the launcher's, after "->".
    """
    text = proc.stderr + proc.stdout
    if "hpcadapt: error:" in proc.stderr:
        paragraphs = proc.stderr.split("hpcadapt: error:")
        outer, inner = paragraphs[1].strip(), paragraphs[-1].strip()
        if len(paragraphs) > 2:
            return outer.split(" Log: ")[0] + " -> " + inner
        return outer
    notes = [ln for ln in text.splitlines() if re.search(r"hpcadapt: (\w+: (skipped|refused) |resuming )", ln)]
    if notes:
        return "\n".join(notes)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def prepare_bases(work: Path) -> dict[str, Path]:
    """The output roots cases start from: `prefix` (demo data, finished tiny_init) and `trained`
    (also a finished cpt that kept its checkpoints, for the checkpoint cases)."""
    prefix = work / "base-prefix"
    done = hpcadapt(prefix, ["pipeline.chain=[]"])
    if done.returncode:
        sys.exit(f"setting up the base output root failed:\n{done.stderr[-3000:]}")
    trained = work / "base-trained"
    shutil.copytree(prefix, trained)
    done = hpcadapt(trained, [*CPT_ONLY, "stages.cpt.keep_checkpoints=true", "stages.cpt.checkpoint_every_minutes=0"])
    if done.returncode:
        sys.exit(f"setting up the trained output root failed:\n{done.stderr[-3000:]}")
    return {"prefix": prefix, "trained": trained}


def environment_fault(case: Case, root: Path) -> Path:
    """Faults of the filesystem: where the case's output root is, and what it sits on."""
    if case.name == "output_root below a file":
        (root.parent / "blocker").write_text("a file")
        return root.parent / "blocker" / "out"
    if case.name == "read-only output_root":
        return on_tmpfs(root, "ro,size=1m", copy=False)
    if case.name == "full disk while planning":
        return on_tmpfs(root, "size=48k", copy=False)
    if case.name.startswith("full disk during a checkpoint save"):
        # Room for what is there, the first checkpoint and the logs, not for the second checkpoint.
        ckpt = sum(p.stat().st_size for p in (stage_dir(root, "cpt") / "checkpoints" / "checkpoint-2").rglob("*"))
        shutil.rmtree(stage_dir(root, "cpt"))
        used = sum(p.stat().st_size // 4096 * 4096 + 4096 for p in root.rglob("*"))
        root = on_tmpfs(root, f"size={(used + int(ckpt * 1.5)) // 4096 * 4096 + 100 * 4096}", copy=True)
        if case.name.endswith("then space freed") and root.parent in MOUNTS:
            failed = hpcadapt(root, case.overrides)
            assert failed.returncode == 2 and "checkpoint-2 is intact" in failed.stderr, failed.stderr[-2000:]
            subprocess.run(["mount", "-o", "remount,size=256m", str(root.parent)], check=True)
        return root
    if case.name == "unwritable Slurm log folder":
        (root.parent / "blocker").write_text("a file")
        case.overrides = [*case.overrides, f"cluster.log_root={root.parent / 'blocker' / 'logs'}"]
    return root


def run_case(case: Case, bases: dict[str, Path], work: Path) -> Result:
    slug = re.sub(r"\W+", "-", case.name).strip("-")
    root = work / slug / "out"
    base = bases[case.base]
    shutil.copytree(base, root)
    root = environment_fault(case, root)
    extra = (case.fault(root) or []) if case.fault else []
    before = complete_stages(root)
    prints = fingerprint(before)
    started = time.perf_counter()
    proc = hpcadapt(root, [*case.overrides, *extra])
    seconds = time.perf_counter() - started
    (work / slug / "output.txt").write_text(f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n"
                                            f"--- stderr\n{proc.stderr}")
    after = complete_stages(root)
    message = message_of(proc)
    return Result(
        case=case.name, group=case.group, exit=proc.returncode,
        message=message.splitlines()[0] if message else "",
        named=bool(re.search(case.named, proc.stderr + proc.stdout, re.DOTALL)),
        completed=sorted(n.rsplit("-", 1)[0] for n in after if n not in before),
        intact=fingerprint(before) == prints and not (root.parent.parent / "CODE-RAN").exists(),
        seconds=seconds,
    )


def table(results: list[Result], cases: dict[str, Case]) -> str:
    rows = ["| # | case | exit | first line of the message | named | completed | earlier intact | s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(results, 1):
        first = r.message.replace("|", "\\|")
        first = first if len(first) <= 120 else first[:117] + "..."
        exit_mark = "" if r.exit == cases[r.case].expect_exit else " (!)"
        rows.append(f"| {i} | {r.group}: {r.case} | {r.exit}{exit_mark} | {first} | {'yes' if r.named else 'NO'} | "
                    f"{', '.join(r.completed) or 'none'} | {'yes' if r.intact else 'NO'} | {r.seconds:.1f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = parser.parse_args()
    cases = [c for c in corpus() if args.only.lower() in c.name.lower()]
    work = Path(tempfile.mkdtemp(prefix="hpcadapt-bad-inputs-"))
    results = []
    try:
        bases = prepare_bases(work)
        for case in cases:
            results.append(run_case(case, bases, work))
            r = results[-1]
            print(f"  {r.exit:>3} {r.seconds:5.1f}s {r.case}: {r.message[:100]}", file=sys.stderr, flush=True)
    finally:
        for mount in MOUNTS:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder: {work}", file=sys.stderr)
    print(table(results, {c.name: c for c in cases}))
    bad = [r for r in results if r.exit != {c.name: c for c in cases}[r.case].expect_exit or not r.named
           or not r.intact or (r.exit != 0 and r.completed)]
    print(f"\n{len(results)} cases, {len(results) - len(bad)} as expected"
          + (f"; not as expected: {', '.join(r.case for r in bad)}" if bad else ""))
    if args.json:
        args.json.write_text(json.dumps([vars(r) for r in results], indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
