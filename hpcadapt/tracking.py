"""W&B runs: one group per pipeline run, one job type per stage, stable ids for requeues.

The run is opened by us (on rank 0) before the Trainer exists, so its config is the
resolved hpcadapt config rather than the Trainer's arguments; the Trainer's W&B callback
then logs into this same run. The run id is derived from the stage hash and the stage
folder's location, so a requeued Slurm job continues the run it started while the same
settings run under another output root get a run of their own. Without an API key runs
are written offline (`wandb sync` uploads them later); nothing here ever writes a key
anywhere.

Secrets are redacted from everything hpcadapt stores (`redact`): values under keys that
name a secret (`api_key`, `hub_token`, `password`...), the values of environment
variables whose names do (`HF_TOKEN`, `WANDB_API_KEY`...), secret assignments and flags
inside strings (`export HF_TOKEN=...`, `--token ...`) and well-known token formats. Hydra's
own record of a run is written here too, redacted (`hydra_callback`), and so is its check
that the output folder can be written before Hydra creates its run folder there.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from hpcadapt.spec import StageSpec

REDACTED = "<redacted>"
# A name is a secret's when its last word is one of these (`HF_TOKEN`, `api_key`, `DB_PASS`),
# unless its first word says it counts or names a tokenizer's special token (`max_new_tokens`
# ends in "tokens" anyway; `pad_token` is "<pad>").
SECRET_LAST_WORDS = {"token", "key", "apikey", "password", "passwd", "pass", "secret", "credential",
                     "credentials", "pat"}
SECRET_ANY_WORDS = {"password", "passwd", "secret", "credential", "credentials", "apikey"}
NOT_SECRET_FIRST_WORDS = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "max", "min", "num"}
# Token formats recognisable without a name: Hugging Face, GitHub, OpenAI-style, Slack.
TOKEN_PATTERN = re.compile(r"\b(hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}"
                           r"|xox[abprs]-[A-Za-z0-9-]{10,})\b")
_VALUE = r"(\"[^\"]*\"|'[^']*'|[^\s\"',;&|)]+)"
ASSIGNMENT = re.compile(r"(?<![\w.-])([A-Za-z_][\w.-]*)(\s*[=:]\s*)" + _VALUE)
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)(\s+|=)" + _VALUE)


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name))
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_key(name: str) -> bool:
    """Whether a config key or environment variable name names a secret."""
    words = _words(name)
    if not words or words[0] in NOT_SECRET_FIRST_WORDS:
        return False
    return words[-1] in SECRET_LAST_WORDS or any(w in SECRET_ANY_WORDS for w in words)


def secret_env() -> dict[str, str]:
    """Environment variables that hold secrets, name -> value (values under 8 characters,
    like `1` or `offline`, would redact ordinary words and are left alone)."""
    return {k: v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= 8}


def redact_text(text: str, replace=None, env: dict[str, str] | None = None) -> str:
    """`text` with every secret in it replaced by `replace(value, name)` (default: <redacted>).

    `name` is the variable the secret was assigned to or read from, when known.
    """
    replace = replace or (lambda value, name: REDACTED)
    env = secret_env() if env is None else env
    for name, value in sorted(env.items(), key=lambda kv: -len(kv[1])):
        if value in text:
            text = text.replace(value, replace(value, name))

    def named(match: re.Match) -> str:
        name, sep, value = match.group(1), match.group(2), match.group(3)
        bare = value.strip("\"'")
        if not is_secret_key(name.lstrip("-")) or not bare or "$" in bare or REDACTED in bare:
            return match.group(0)
        return name + sep + replace(bare, None if name.startswith("-") else name)

    text = ASSIGNMENT.sub(named, text)
    text = FLAG.sub(named, text)
    return TOKEN_PATTERN.sub(lambda m: replace(m.group(0), None), text)


def redact(obj: Any, env: dict[str, str] | None = None) -> Any:
    """`obj` (dicts, lists, strings) with secrets replaced by <redacted>, at any depth: values under
    secret-looking keys, and secrets inside strings (`redact_text`)."""
    env = secret_env() if env is None else env
    if isinstance(obj, dict):
        return {k: (REDACTED if _secret_item(k, v) else redact(v, env)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, env) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, env=env)
    return obj


def _secret_item(key: Any, value: Any) -> bool:
    """A set value under a secret's name (None, "" and booleans like `use_auth_token: true` hide nothing)."""
    return is_secret_key(str(key)) and value not in (None, "") and not isinstance(value, (bool, dict, list))


def lift_secrets(lines: list[str]) -> tuple[list[str], dict[str, str]]:
    """Shell lines with each secret literal replaced by a variable reference, and the variables.

    Job scripts are kept in the log folder, so `export HF_TOKEN=hf_...` in `cluster.setup`
    becomes `export HF_TOKEN="${HF_TOKEN}"`, and HF_TOKEN is set in the submitting
    environment, which sbatch passes to the job (its default `--export=ALL`). A secret the
    environment already holds becomes a reference to that variable.
    """
    env: dict[str, str] = {}

    def to_variable(value: str, name: str | None) -> str:
        if name is None or not re.fullmatch(r"[A-Za-z_]\w*", name) or env.get(name, value) != value:
            name = next((k for k, v in env.items() if v == value), f"HPCADAPT_SECRET_{len(env) + 1}")
        env[name] = value
        return '"${' + name + '}"'

    known = secret_env()
    return [redact_text(line, to_variable, known) for line in lines], env


def secret_settings(settings: Any, where: str) -> list[str]:
    """Keys under `settings` that name secrets, as full config keys (stage settings are
    stored in spec.json, the manifest and W&B, and enter the stage hash)."""
    found = []
    if isinstance(settings, dict):
        for k, v in settings.items():
            key = f"{where}.{k}"
            found += [key] if _secret_item(k, v) else secret_settings(v, key)
    elif isinstance(settings, list):
        for i, v in enumerate(settings):
            found += secret_settings(v, f"{where}[{i}]")
    return found


def resolve_mode(settings: dict[str, Any]) -> str:
    if not settings.get("enabled", True):
        return "disabled"
    if settings.get("mode"):
        return settings["mode"]
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def run_id(spec: StageSpec) -> str:
    """Stable across requeues of one stage folder, distinct for every other folder.

    The stage hash alone is not enough: two pipelines with the same settings under
    different output roots (a local run and its Slurm twin, a reference run) would share
    it, and W&B refuses a second live run with an id already in use.
    """
    where = hashlib.sha256(str(Path(spec.stage_dir).resolve()).encode()).hexdigest()[:8]
    return f"{spec.name}-{spec.hash[:16]}-{where}"


def start_run(spec: StageSpec, job_type: str | None = None):
    """Open (or resume) this stage's run on rank 0; returns None where W&B is off."""
    settings = spec.wandb
    mode = resolve_mode(settings)
    if mode == "disabled" or int(os.environ.get("RANK", 0)) != 0:
        return None
    # A wandb-core service address inherited from the launching process (a notebook or
    # test runner that used W&B; sbatch exports the whole environment) would make this
    # stage a client of that process: gone when it exits, unreachable from another node,
    # and shared with every other stage it launched. Each stage starts its own.
    os.environ.pop("WANDB_SERVICE", None)
    import wandb

    root = Path(spec.stage_dir).parent.parent  # output_root: keeps wandb/ out of the stage folder
    os.environ.setdefault("WANDB_LOG_MODEL", "false")
    return wandb.init(
        project=settings["project"],
        entity=settings.get("entity"),
        group=settings["group"],
        job_type=job_type or spec.kind,
        name=f"{spec.name}-{spec.hash[:8]}",
        id=run_id(spec),
        resume="allow",
        mode=mode,
        dir=str(root),
        tags=list(settings.get("tags", [])),
        config=redact({"stage": spec.name, "settings": spec.settings, "inputs": spec.inputs,
                      "hpcadapt": settings.get("config", {})}),
    )


def close_run(spec: StageSpec, metrics: dict[str, Any] | None = None) -> None:
    """Log the finished stage folder as a reference artifact (no upload of the weights), then finish.

    Parent stages logged the same way are marked as used, so W&B's lineage graph shows
    the chain, including both parents of a merge. Stages that log nothing while they run
    (a merge, a model builder) open their run here, so every stage of a chain is in W&B
    with its numbers. Called after the folder is final.
    """
    import sys

    wandb = sys.modules.get("wandb")
    run = wandb.run if wandb is not None else None
    if run is None:
        run = start_run(spec)
        wandb = sys.modules.get("wandb")
    if run is None:
        return
    summary = {f"{key}/{k}" if isinstance(value, dict) else key: v
               for key, value in (metrics or {}).items()
               for k, v in (value.items() if isinstance(value, dict) else [(key, value)])
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if summary:
        run.summary.update(summary)
    parents = [spec.input_model, spec.base_model, spec.other_model]
    for parent in [p for p in parents if p and Path(p, "manifest.json").is_file()]:
        try:
            run.use_artifact(f"{Path(parent).name}:latest")
        except Exception:  # noqa: BLE001 - the parent was not logged (W&B off then, or another project)
            pass
    art = wandb.Artifact(Path(spec.stage_dir).name, type="model", metadata={"kind": spec.kind})
    art.add_reference(f"file://{spec.stage_dir}", checksum=False)
    run.log_artifact(art)
    run.finish()


def hydra_callback():
    """The Hydra callback (`hydra.callbacks.record` in conf/config.yaml) for what Hydra writes itself.

    - Before Hydra creates its run folder under output_root: that folder can be made and
      written, else one `hpcadapt: error:` paragraph and exit code 2 instead of Hydra's
      chained tracebacks.
    - Hydra's record of the run (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`, as
      `hydra.output_subdir` would write them; conf/config.yaml turns that off) is written
      here, with secrets redacted.
    Built on call so this module imports without Hydra.
    """
    from hydra.experimental.callback import Callback

    class HydraRecord(Callback):
        def on_run_start(self, config: Any, **kwargs: Any) -> None:
            _check_output_root(config)

        def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
            _check_output_root(config)

        def on_job_start(self, config: Any, **kwargs: Any) -> None:
            _save_hydra_record(config)

    return HydraRecord()


def _fail(message: str) -> None:
    """End the command as the entry point ends on a user error (Hydra's callbacks run outside it)."""
    import sys

    print(f"\nhpcadapt: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _check_output_root(config: Any) -> None:
    """The writability check planning makes (hpcadapt/launch/prepare.py), made before Hydra creates
    its run folder under output_root, so a refusal is one paragraph rather than Hydra's tracebacks."""
    from omegaconf import OmegaConf

    from hpcadapt.errors import HpcadaptError
    from hpcadapt.launch.prepare import check_writable

    try:
        check_writable(Path(str(OmegaConf.select(config, "output_root"))).expanduser().resolve())
    except HpcadaptError as e:
        _fail(str(e))


def _save_hydra_record(config: Any) -> None:
    """Hydra's three record files, redacted, in `<run folder>/.hydra/`."""
    import yaml
    from omegaconf import OmegaConf

    from hpcadapt.atomic import write_atomic
    from hpcadapt.errors import write_failure

    folder = Path(str(config.hydra.runtime.output_dir)) / ".hydra"
    everything = OmegaConf.to_container(config, resolve=False, enum_to_str=True)
    hydra_part = everything.pop("hydra", {})
    files = {"config.yaml": everything, "hydra.yaml": {"hydra": hydra_part},
             "overrides.yaml": hydra_part.get("overrides", {}).get("task", [])}
    try:
        for name, data in files.items():
            write_atomic(folder / name, yaml.safe_dump(redact(data), sort_keys=False, allow_unicode=True))
    except OSError as e:
        if write_failure(e) is None:
            raise
        _fail(f"could not write Hydra's record of this run in {folder}: {write_failure(e)}. Free space, or set "
              f"output_root=... to another folder, and run the same command again.")


def refuse_secret_settings(settings: Any, where: str) -> None:
    """Stage settings are stored (spec.json, manifest, W&B) and name the stage's folder, so a
    secret among them is refused at planning rather than stored or silently blanked."""
    found = secret_settings(settings, where)
    if found:
        from hpcadapt.config import ConfigError

        raise ConfigError(f"{found[0]} looks like a secret; stage settings are stored in spec.json, the manifest "
                          f"and W&B, so hpcadapt does not take secrets there. Give it through the environment "
                          f"instead (e.g. HF_TOKEN for the Hugging Face Hub), which every stage inherits.")
