"""Nothing lost, nothing trusted blindly: whole-or-ignored checkpoints, verified stage folders,
data errors by file and line before training, one paragraph instead of tracebacks, no secrets stored.

The slow part (a finished `tiny_init` stage to build on) is made once per module; each test
copies it, so tampering in one test never reaches another.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from spine_helpers import FAST, chat, compose_cfg, write_toy_domain

from hpcadapt import training
from hpcadapt.datamix import check_source
from hpcadapt.errors import DataError, HpcadaptError, WriteFailed
from hpcadapt.launch.local import run_local
from hpcadapt.plan import plan_pipeline, write_specs
from hpcadapt.spec import StageSpec
from hpcadapt.stagedir import StageFolderError, read_manifest
from hpcadapt.stagedir import main as verify_main

# A pipeline of one cheap stage to build on: the tiny model is both Base and Instruct.
ON_TINY = [*FAST, "pipeline.prepare=[tiny_init]", "model.base=@tiny_init", "model.instruct=@tiny_init",
           "wandb.enabled=false"]
CPT = [*ON_TINY, "pipeline.chain=[cpt]"]


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prefix")
    write_toy_domain(root)
    run_local(compose_cfg([f"output_root={root}", *ON_TINY, "pipeline.chain=[]"]))
    return root


def copy_of(prefix: Path, dest: Path) -> Path:
    shutil.copytree(prefix, dest, dirs_exist_ok=True)
    return dest


def tiny_init_dir(root: Path) -> Path:
    (folder,) = (root / "stages").glob("tiny_init-*")
    return folder


def cli(*args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcadapt", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or os.environ.copy())


def one_paragraph(out: subprocess.CompletedProcess, *expected: str) -> str:
    """The command failed with exit code 2 and one `hpcadapt: error:` paragraph, no traceback."""
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "hpcadapt: error:" in out.stderr, out.stderr[-3000:]
    message = out.stderr.split("hpcadapt: error:", 1)[1]
    for text in expected:
        assert text in message, message
    return message


# --- 1 and 3: checkpoints whole or ignored, nothing unverified unpickled ---------------------------


def fake_checkpoint(root: Path, step: int, seal: bool = True) -> Path:
    """A checkpoint folder as the Trainer writes it (weights, optimizer, state), sealed or not."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 4000)
    with (folder / "optimizer.pt").open("wb") as f:
        pickle.dump({"state": list(range(500))}, f)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if seal:
        training.seal_checkpoint(folder)
    return folder


def stage_spec(tmp_path: Path) -> StageSpec:
    staging = tmp_path / ".staging-cpt-0123456789ab"
    return StageSpec(name="cpt", kind="cpt", hash="0123456789ab", pipeline="p", stage_dir=str(tmp_path / "cpt"),
                     staging_dir=str(staging), inputs={}, settings={}, model_loading={})


ONE_PROCESS = training.Env(rank=0, world_size=1, cuda=False, bf16=False)


@pytest.fixture
def key_file(tmp_path, monkeypatch) -> Path:
    key = tmp_path / "keys" / "checkpoint.key"
    monkeypatch.setenv("HPCADAPT_KEY_FILE", str(key))
    return key


def test_resume_takes_the_newest_complete_checkpoint_and_says_what_it_skipped(tmp_path, key_file, capsys):
    spec = stage_spec(tmp_path)
    ckpts = Path(spec.staging_dir) / "checkpoints"
    good = fake_checkpoint(ckpts, 2)
    # Saves interrupted at three points: before trainer_state.json, before a shard, mid-optimizer.
    (fake_checkpoint(ckpts, 4, seal=False) / "trainer_state.json").unlink()
    (fake_checkpoint(ckpts, 6, seal=False) / "model.safetensors").unlink()
    half = fake_checkpoint(ckpts, 8, seal=False) / "optimizer.pt"
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    # A sealed checkpoint whose optimizer file was cut short later.
    cut = fake_checkpoint(ckpts, 10) / "optimizer.pt"
    cut.write_bytes(cut.read_bytes()[:100])

    assert training.resume_checkpoint(spec, ONE_PROCESS) == str(good)
    log = capsys.readouterr().out
    for step in (4, 6, 8):
        assert f"skipped checkpoint-{step}, incomplete: it has no completion record" in log, log
        assert not (ckpts / f"checkpoint-{step}").exists()
    assert "refused checkpoint-10, changed after it was written: optimizer.pt is 100 bytes" in log, log
    assert (ckpts / "rejected-checkpoint-10" / "optimizer.pt").is_file() and good.is_dir()
    assert key_file.stat().st_mode & 0o777 == 0o600


class Payload:
    """Unpickling this runs code: it creates the file named in `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("forge_record", [False, True], ids=["same-size-swap", "swap-with-rewritten-record"])
def test_swapped_checkpoint_file_refused_before_it_is_unpickled(tmp_path, key_file, capsys, forge_record):
    spec = stage_spec(tmp_path)
    folder = fake_checkpoint(Path(spec.staging_dir) / "checkpoints", 3)
    marker = tmp_path / "code-ran"
    evil = pickle.dumps(Payload(str(marker)))
    target = folder / "optimizer.pt"
    target.write_bytes(evil.ljust(target.stat().st_size, b"\0"))  # same size: only the digest tells
    if forge_record:  # someone who can write the folder also rewrites the digests, but has no key
        import hashlib

        record = json.loads((folder / training.CHECKPOINT_RECORD).read_text())
        record["files"]["optimizer.pt"]["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
        (folder / training.CHECKPOINT_RECORD).write_text(json.dumps(record))

    assert training.resume_checkpoint(spec, ONE_PROCESS) is None  # the stage restarts from its input model
    log = capsys.readouterr().out
    why = "signature does not match" if forge_record else "optimizer.pt its content differs"
    assert "refused checkpoint-3, changed after it was written" in log and why in log, log
    assert "nothing in it was loaded" in log and not marker.exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (root only); None where one cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    yield mount if done.returncode == 0 else None
    if done.returncode == 0:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run_stage_here(root: Path, *overrides: str):
    """Plan the chain and run its cpt stage in this process (faults can be injected here)."""
    from hpcadapt.worker import run_stage

    plan = plan_pipeline(compose_cfg([f"output_root={root}", *CPT, *overrides]))
    write_specs(plan)
    run_stage(plan.stage("cpt").spec_path)
    return plan


def test_full_disk_during_a_checkpoint_stops_the_stage_and_the_previous_one_resumes(
        prefix, tmp_path, small_disk, key_file, monkeypatch, capsys):
    root = copy_of(prefix, (small_disk or tmp_path) / "out")
    filler = root / "filler"
    seal = training.seal_checkpoint

    def seal_then_fill_the_disk(folder: Path) -> None:
        seal(folder)
        if small_disk is None:  # no tmpfs here: the next save's writes fail as a full disk's do
            import torch

            def no_space(*args, **kwargs):
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(torch, "save", no_space)
        elif not filler.exists():
            with filler.open("wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()
                except OSError:
                    pass

    monkeypatch.setattr(training, "seal_checkpoint", seal_then_fill_the_disk)
    settings = ["stages.cpt.save_steps=2", "stages.cpt.checkpoint_every_minutes=0"]
    with pytest.raises(WriteFailed, match=r"writing checkpoint-4 in .* failed: (no space left|a short write).*"
                                          r"checkpoint-2 is intact and the next run resumes from it"):
        run_stage_here(root, *settings)
    staging = next((root / "stages").glob(".staging-cpt-*"))
    assert sorted(p.name for p in (staging / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    assert not list((root / "stages").glob("cpt-*"))  # nothing marked complete

    monkeypatch.undo()
    monkeypatch.setenv("HPCADAPT_KEY_FILE", str(key_file))
    filler.unlink(missing_ok=True)
    capsys.readouterr()
    plan = run_stage_here(root, *settings)
    assert f"hpcadapt: resuming cpt from {staging}/checkpoints/checkpoint-2" in capsys.readouterr().out
    assert read_manifest(plan.stage("cpt").stage_dir)["metrics"]["steps"] == 6


# --- 2: finished stage folders verified ------------------------------------------------------------


def test_manifest_records_checksums_and_planning_notices_truncated_weights(prefix, tmp_path):
    root = copy_of(prefix, tmp_path / "out")
    folder = tiny_init_dir(root)
    files = read_manifest(folder)["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    assert set(files["model.safetensors"]) == {"size", "xxh3_128"}
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(StageFolderError, match=r"tiny_init-\w+/model\.safetensors: is [\d,]+ bytes, the manifest "
                                                r"recorded [\d,]+; .*Delete .*tiny_init"):
        plan_pipeline(compose_cfg([f"output_root={root}", *CPT]))


def test_flipped_byte_is_named_by_the_stage_that_loads_it(prefix, tmp_path):
    root = copy_of(prefix, tmp_path / "out")
    weights = tiny_init_dir(root) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert verify_main([str(weights.parent)]) == 1
    with pytest.raises(HpcadaptError, match=r"model\.safetensors: its content differs from what the manifest "
                                             r"recorded \(xxh3_128 digest\)"):
        run_local(compose_cfg([f"output_root={root}", *CPT]))
    assert not list((root / "stages").glob("cpt-*"))


def test_hand_edited_manifest_is_noticed(prefix, tmp_path):
    root = copy_of(prefix, tmp_path / "out")
    folder = tiny_init_dir(root)
    assert verify_main([str(folder)]) == 0
    manifest = read_manifest(folder)
    (folder / "manifest.json").write_text(json.dumps({**manifest, "hash": "f" * 64}))
    with pytest.raises(StageFolderError, match=r"manifest\.json was edited after the stage finished"):
        plan_pipeline(compose_cfg([f"output_root={root}", *CPT]))


def test_verify_command_checks_every_stage_a_run_folder_links(prefix, tmp_path):
    root = copy_of(prefix, tmp_path / "out")
    (run_dir,) = (root / "runs").iterdir()
    ok = cli("verify", str(run_dir))
    assert ok.returncode == 0 and "tiny_init: ok (" in ok.stdout, ok.stderr
    weights = (run_dir / "tiny_init").resolve() / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    bad = cli("verify", str(run_dir))
    assert bad.returncode == 1 and "model.safetensors" in bad.stderr and "Traceback" not in bad.stderr


# --- 4: data errors by file and line, before any training --------------------------------------------


def lines(path: Path, *rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD_CHAT = chat("q", "a")
PAIR = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "yes"}],
        "rejected": [{"role": "assistant", "content": "no"}]}
DATA_CASES = {
    "no assistant turn": ("sft", [GOOD_CHAT, {"messages": [{"role": "user", "content": "q"}]}],
                          r"x\.jsonl:2: field 'messages' has no assistant reply"),
    "null content": ("sft", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]}],
                     r"x\.jsonl:1: field 'messages'\[1\]: 'content' is null"),
    "number content": ("sft", [{"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}]}],
                       r"x\.jsonl:1: field 'messages'\[0\]: 'content' is int"),
    "chosen equals rejected": ("orpo", [PAIR, {**PAIR, "rejected": PAIR["chosen"]}],
                               r"x\.jsonl:2: 'chosen' and 'rejected' are identical"),
    "mixed pair formats": ("dpo", [{**PAIR, "chosen": "yes"}], r"x\.jsonl:1: 'chosen' is a string but 'prompt', "
                                                               r"'rejected' are lists"),
    "answer without reply": ("orpo", [{**PAIR, "chosen": [{"role": "user", "content": "x"}]}],
                             r"x\.jsonl:1: field 'chosen' has no assistant reply"),
    "shape changes between rows": ("orpo", [{"prompt": "q", "chosen": "a", "rejected": "b"}, PAIR],
                                   r"x\.jsonl:2: field 'prompt' is a list of messages, but a string at .*x\.jsonl:1"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_data_problem_named_by_file_and_line(tmp_path, case):
    kind, rows, expected = DATA_CASES[case]
    with pytest.raises(DataError, match=expected):
        check_source(str(lines(tmp_path / "x.jsonl", *rows)), kind, "data.mixes.m.sources[0]")


def test_bytes_and_json_files_named_by_line(tmp_path):
    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:3: byte 0xe9 at column 14 is not UTF-8"):
        check_source(str(jsonl), "cpt", "k")
    broken = tmp_path / "rows.json"
    broken.write_text('[\n  {"text": "a"},\n  {"text": "b",\n]\n')
    with pytest.raises(DataError, match=r"rows\.json:4: not valid JSON \(Expecting property name"):
        check_source(str(broken), "cpt", "k")
    latin = tmp_path / "latin1.json"
    latin.write_bytes(b'[\n {"text": "ok"},\n {"text": "\xff"}\n]\n')
    with pytest.raises(DataError, match=r"latin1\.json:3: byte 0xff at column 12 is not UTF-8"):
        check_source(str(latin), "cpt", "k")


def test_parquet_column_of_the_right_name_and_wrong_type(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), numbers)
    with pytest.raises(DataError, match=r"numbers\.parquet: column 'text' is int64; it must hold strings"):
        check_source(str(numbers), "cpt", "k")
    flat = tmp_path / "flat.parquet"
    pq.write_table(pa.table({"messages": ["user: hi", "assistant: hello"]}), flat)
    with pytest.raises(DataError, match=r"flat\.parquet: column 'messages' is string; it must be a list"):
        check_source(str(flat), "sft", "k")
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD_CHAT, {"messages": [{"role": "user", "content": None}]}]), nulls)
    with pytest.raises(DataError, match=r"nulls\.parquet: row 1: field 'messages'\[0\]: 'content' is null"):
        check_source(str(nulls), "sft", "k")


def test_pinned_hub_dataset_missing_from_the_cache_while_offline(prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = "data.mixes.cpt.sources=[{path: org/corpus, revision: " + "0123456789" * 4 + "}]"
    with pytest.raises(DataError, match=r"data\.mixes\.cpt\.sources\[0\]: hub dataset org/corpus@012345678901 is not "
                                        r"in the local cache .* Prefetch"):
        plan_pipeline(compose_cfg([f"output_root={prefix}", *CPT, source]))


def test_bad_row_fails_before_any_stage_runs(tmp_path):
    data = write_toy_domain(tmp_path)
    rows = (data / "domain_chat.jsonl").read_text().splitlines()
    rows[4] = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]})
    (data / "domain_chat.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"domain_chat\.jsonl:5: field 'messages'\[1\]: 'content' is null"):
        run_local(compose_cfg([f"output_root={tmp_path}", *FAST]))
    assert not (tmp_path / "stages").exists() or not list((tmp_path / "stages").glob("*/manifest.json"))


# --- 5: one paragraph instead of tracebacks -----------------------------------------------------------


def test_unwritable_output_root_is_one_paragraph_from_the_cli(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # nothing can be created below a file, even by root
    out = cli(f"output_root={blocker}/out", "dry_run=true")
    one_paragraph(out, f"output folder {blocker}/out is not writable", "HPCADAPT_OUTPUT")


@pytest.fixture
def mounted(tmp_path):
    """mount(name, options) -> a tmpfs folder, or a skip where tmpfs cannot be mounted (not root)."""
    made = []

    def mount(name: str, options: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        made.append(folder)
        return folder

    yield mount
    for folder in made:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_read_only_and_full_output_root_are_one_paragraph_from_the_cli(tmp_path, mounted):
    read_only = mounted("ro", "ro,size=1m")
    one_paragraph(cli(f"output_root={read_only}", "dry_run=true"), "is not writable (Read-only file system)")
    full = mounted("full", "size=48k")
    out = cli(f"output_root={full}", "dry_run=true")  # the demo's generated data does not fit
    one_paragraph(out, "no space left on the device", "No stage was marked complete")


# --- 6: secrets never stored ---------------------------------------------------------------------------


FAKE = {"env": "hf_FAKEenvTOKEN0000000000000000000000", "setup": "hf_FAKEsetupTOKEN111111111111111111",
        "password": "Fake-Passw0rd-2222", "flag": "fake-flag-secret-3333", "dict": "fake-dict-secret-4444"}


def test_secrets_in_config_and_environment_are_in_no_output(prefix, tmp_path):
    root = copy_of(prefix, tmp_path / "out")
    env = {**os.environ, "HF_TOKEN": FAKE["env"], "MY_SERVICE_PASSWORD": FAKE["password"]}
    secrets = [f'cluster.setup=["export HF_TOKEN={FAKE["setup"]}","true --token {FAKE["flag"]}",'
               f'"echo ${{oc.env:MY_SERVICE_PASSWORD}} $HF_TOKEN"]',
               f"+cluster.eval.additional_parameters.api_key={FAKE['dict']}", f"cluster.python={sys.executable}"]
    run = cli(f"output_root={root}", *CPT, "wandb.enabled=true", *secrets, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    submit = cli(f"output_root={root}", *CPT, "stages.cpt.max_steps=7", "cluster=slurm", "cluster.gpus_per_node=1",
                 "cluster.tasks_per_node=1", "dry_run=true", *secrets,
                 env=env)
    assert submit.returncode == 0, submit.stderr[-3000:]
    assert 'export HF_TOKEN="${HF_TOKEN}"' in submit.stdout and "true --token" in submit.stdout
    outputs = [p for p in root.rglob("*") if p.is_file() and p.stat().st_size < 20_000_000]
    assert any(p.name == "spec.json" for p in outputs) and any(p.parent.name == ".hydra" for p in outputs)
    assert any("offline-run-" in str(p) for p in outputs)  # W&B's record was written, and is checked too
    for name, value in FAKE.items():
        assert value not in run.stdout + run.stderr + submit.stdout + submit.stderr, name
        leaked = [str(p) for p in outputs if value.encode() in p.read_bytes()]
        assert not leaked, (name, leaked)


def test_secret_among_stage_settings_is_refused_by_name(prefix):
    with pytest.raises(HpcadaptError, match=r"stages\.cpt\.extra\.hub_token looks like a secret"):
        plan_pipeline(compose_cfg([f"output_root={prefix}", *CPT, f"+stages.cpt.extra.hub_token={FAKE['dict']}"]))
