"""merge: SLERP (or another method) of the chain's last model with the Instruct model.

Runs as one stage of a pipeline (`pipeline.merge=true`), e.g.
    python -m hpcadapt +experiment=mistral_orpo_slerp merge.t=0.5

The Instruct model is mergekit's `base_model` (the t = 0 end), as in the paper; the
layer count for a gradient t comes from the model's config, never a constant. The work
is done by the standalone merger in merge/ (package hpcadapt_merge).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from hpcadapt_merge.checkpoint import layer_count

from hpcadapt.hub import local_model
from hpcadapt.spec import StageSpec


def merge_config(spec: StageSpec) -> dict[str, Any]:
    """The mergekit-style recipe this stage hands to the merger (also recorded in the manifest)."""
    m = spec.settings
    base, other = (local_model(ref, spec.revisions) for ref in (spec.base_model, spec.other_model))
    base_config, other_config = (json.loads((Path(f) / "config.json").read_text()) for f in (base, other))
    layers = layer_count(base_config, Path(base) / "config.json")
    # A chain that had to add a pad token grew its vocabulary by one appended row: the merge
    # keeps that row from the chain's model and merges the rest (mergekit's `union`).
    grown = other_config.get("vocab_size", 0) > base_config.get("vocab_size", 0)
    return {
        "merge_method": m["method"],
        "base_model": base,
        "slices": [{"sources": [{"model": base, "layer_range": [0, layers]},
                                {"model": other, "layer_range": [0, layers]}]}],
        "parameters": merge_parameters(m),
        "dtype": m["dtype"],
        "tokenizer_source": "union" if grown else "base",
    }


def merge_parameters(settings: dict[str, Any]) -> dict[str, Any]:
    """The recipe's parameters: `t` where the method reads it (SLERP), then merge.parameters."""
    from hpcadapt_merge import methods

    reads = {p.name for p in methods.get(settings["method"]).parameters}
    return {**({"t": settings["t"]} if "t" in reads else {}), **(settings.get("parameters") or {})}


def run(spec: StageSpec) -> dict[str, Any]:
    from hpcadapt_merge import run_merge

    staging = Path(spec.staging_dir)
    out = staging / "merged"
    summary = run_merge(merge_config(spec), out, workers=spec.settings["workers"], progress=True)
    # The stage folder itself is the merged model folder, like every other stage's.
    for item in out.iterdir():
        target = staging / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    out.rmdir()
    replayable_recipe(staging / "mergekit_config.yml", spec)
    return {"merge": {k: v for k, v in vars(summary).items() if isinstance(v, (int, float, str))}}


def replayable_recipe(recipe_file: Path, spec: StageSpec) -> None:
    """Name the parents in the stored recipe by their paths relative to the final stage folder.

    The merger names parents by folder name only (no machine paths in a shared model). Here
    they are the stage's siblings or other folders of this machine, and relative to the stage
    folder the recipe replays as it is: `hpcadapt-merge STAGE/mergekit_config.yml OUT`."""
    import yaml

    final = Path(spec.stage_dir)
    parents = [local_model(ref, spec.revisions) for ref in (spec.base_model, spec.other_model)]
    relative = {Path(p).name: os.path.relpath(p, final) for p in parents}

    def rename(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (relative.get(v, v) if k in ("model", "base_model") and isinstance(v, str) else rename(v))
                    for k, v in node.items()}
        return [rename(v) for v in node] if isinstance(node, list) else node

    recipe = yaml.safe_load(recipe_file.read_text())
    recipe_file.write_text(yaml.safe_dump(rename(recipe), sort_keys=False, default_flow_style=None))
