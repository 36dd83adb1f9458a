"""Everything in the output folder besides the weights: index, config, tokenizer, card, report.

These files are deterministic (no timestamps, no timings), so two runs of one recipe
give byte-identical folders — which is how resume is tested.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from . import methods
from .plan import MergePlan

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def write_metadata(plan: MergePlan, reports: list[dict], folder: Path, fingerprint: str) -> None:
    """Write index, config, tokenizer files, generation config, card and report into `folder`."""
    config = plan.config
    base = plan.checkpoints[config.parents[0]]
    weight_map = {job.name: plan.shard_names[job.shard] for job in plan.jobs}
    _write_json(folder / "model.safetensors.index.json",
                {"metadata": {"total_size": plan.total_bytes}, "weight_map": weight_map})
    _write_json(folder / "config.json", _model_config(base.config, plan))
    _copy_tokenizer(plan, folder)
    if (base.path / "generation_config.json").is_file():
        shutil.copyfile(base.path / "generation_config.json", folder / "generation_config.json")
    recipe = yaml.safe_dump(_portable_recipe(plan), sort_keys=False, default_flow_style=None)
    (folder / "mergekit_config.yml").write_text(recipe)
    _write_json(folder / "merge_report.json", {**_report(plan, reports), "fingerprint": fingerprint})
    (folder / "README.md").write_text(model_card(plan, reports))


def _copy_tokenizer(plan: MergePlan, folder: Path) -> None:
    """The tokenizer of `tokenizer_source` (the base by default). With tokenizer_source: union, the
    vocabulary (tokenizer.json, its config and special tokens) is the grown parent's, while the chat
    template stays the base's."""
    source = plan.config.tokenizer_source or plan.config.parents[0]
    vocabulary = plan.vocab.donor if plan.vocab else source
    for name in TOKENIZER_FILES:
        origin = source if name.startswith("chat_template") else vocabulary
        if (origin / name).is_file():
            shutil.copyfile(origin / name, folder / name)
    settings = vocabulary / "tokenizer_config.json"
    if plan.vocab and settings.is_file() and vocabulary != source:
        data = json.loads(settings.read_text())
        theirs = source / "tokenizer_config.json"
        template = json.loads(theirs.read_text()).get("chat_template") if theirs.is_file() else None
        data.pop("chat_template", None)
        if template is not None:
            data["chat_template"] = template
        _write_json(folder / "tokenizer_config.json", data)
        for name in ("chat_template.jinja", "chat_template.json"):  # the donor's own template must not win
            if not (source / name).is_file():
                (folder / name).unlink(missing_ok=True)


def _model_config(config: dict, plan: MergePlan) -> dict:
    out = dict(config)
    if plan.vocab:
        out["vocab_size"] = plan.vocab.rows + plan.vocab.extra
    dtypes = {job.out_dtype for job in plan.jobs if job.out_dtype in _DTYPE_NAMES}
    if len(dtypes) == 1:
        name = _DTYPE_NAMES[dtypes.pop()]
        keys = [k for k in ("dtype", "torch_dtype") if k in out] or ["torch_dtype"]
        for key in keys:
            out[key] = name
    return out


def _portable_recipe(plan: MergePlan) -> dict:
    """The recipe as run, with parents named by folder (no machine paths in a shared model)."""
    config = plan.config
    recipe = {"merge_method": config.method}
    if config.base:
        recipe["base_model"] = config.base.name
    models = [{"model": m.path.name, **({"parameters": m.parameters} if m.parameters else {})} for m in config.models]
    if config.slice_parameters:
        sources = [{**m, "layer_range": [0, plan.num_layers]} for m in models]
        recipe["slices"] = [{"sources": sources, "parameters": config.slice_parameters}]
    else:
        recipe["models"] = models
    if config.parameters:
        recipe["parameters"] = config.parameters
    for key in ("dtype", "out_dtype"):
        if getattr(config, key):
            recipe[key] = getattr(config, key)
    if config.tokenizer_union:
        recipe["tokenizer_source"] = "union"
    return recipe


def _report(plan: MergePlan, reports: list[dict]) -> dict:
    by_name = {r["name"]: r for r in reports}
    tensors = {}
    for job in plan.jobs:
        entry = {k: v for k, v in by_name[job.name].items() if k != "name"}
        tensors[job.name] = entry
    branches = [r.get("branch") for r in reports if r.get("branch")]
    report = {
        "method": plan.config.method,
        "parents": [p.name for p in plan.config.parents],
        "num_layers": plan.num_layers,
        "options": {k: v for k, v in plan.options.items() if v is not None},
        "branch_counts": {b: branches.count(b) for b in sorted(set(branches))},
        "nonfinite": {name: entry["nonfinite"] for name, entry in tensors.items() if entry.get("nonfinite")},
        "tensors": tensors,
    }
    if plan.vocab:
        report["vocabulary"] = {"merged_rows": plan.vocab.rows, "copied_rows": plan.vocab.extra,
                                "copied_from": plan.vocab.donor.name, "added_tokens": list(plan.vocab.added_tokens)}
    return report


def model_card(plan: MergePlan, reports: list[dict]) -> str:
    config = plan.config
    recipe = yaml.safe_dump(_portable_recipe(plan), sort_keys=False, default_flow_style=None).rstrip()
    lines = [
        "---",
        "tags: [merge, hpcadapt-merge]",
        f"base_model: {config.parents[0].name}",
        "---",
        f"# Merged model ({config.method})",
        "",
        f"Made with `hpcadapt-merge` by **{config.method}** of:",
        "",
        *[f"- `{p.name}`{' (base)' if p == config.base else ''}" for p in config.parents],
        "",
        f"{len(plan.jobs)} tensors, {plan.num_layers} layers, {plan.total_bytes / 1e9:.3f} GB "
        f"in {len(plan.shard_names)} shard(s).",
    ]
    card = methods.get(config.method).card_function()
    if card is not None:
        lines += card(plan, reports)
    lines += ["", "## Recipe", "", "```yaml", recipe, "```", ""]
    return "\n".join(lines)


def slerp_card(plan: MergePlan, reports: list[dict]) -> list[str]:
    """SLERP's section of the model card: the t schedule and the branches taken."""
    config = plan.config
    branches = [r.get("branch") for r in reports if r.get("branch")]
    schedule = {"t": config.parameters.get("t", config.slice_parameters.get("t"))}
    return ["", "## Schedule", "",
            "t = 0 is the base model, t = 1 the other; lists are gradients over depth (layer i of n at i/(n-1)).", "",
            "```yaml", yaml.safe_dump(schedule, sort_keys=False, default_flow_style=None).rstrip(), "```", "",
            f"Branches taken: {branches.count('slerp')} spherical, {branches.count('lerp')} linear "
            "(nearly colinear tensors). Per-tensor t, cosine and branch are in `merge_report.json`."]


def _write_json(path: Path, data) -> None:
    """Strict JSON: a NaN or infinity anywhere is a bug (reports use null for them)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
