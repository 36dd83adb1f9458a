"""What a finished run leaves for people to read, the same whichever launcher ran it.

- `runs/<pipeline>-<hash>/`: links to the pipeline's stage folders, its evaluation table
  and synergy report;
- for several pipelines (a grid or a sweep), `grids/<name>-<hash>/`: the strategy
  comparison (report.md, report.json, plots; hpcadapt/eval/compare.py), and the graph.

A local run writes these at its end; a Slurm submission adds a last one-task job that
does (`python -m hpcadapt.launch.report GRAPH.json`), once every stage it waits on is done.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hpcadapt.atomic import write_json_atomic
from hpcadapt.graph import StageGraph
from hpcadapt.stagedir import is_complete, read_manifest

GRAPH_FILE = "graph.json"


def grid_dir(graph: StageGraph, output_root: Path) -> Path:
    return output_root / "grids" / f"{graph.name}-{graph.identity}"


def graph_record(graph: StageGraph, output_root: Path) -> dict[str, Any]:
    """Everything the report needs, as JSON: the report job reads it on a compute node."""
    return {
        "name": graph.name,
        "grid_dir": str(grid_dir(graph, output_root)) if len(graph.pipelines) > 1 else None,
        "pipelines": [{"name": p.name, "run_dir": str(p.run_dir), "models": p.models,
                       "stages": [{"name": s.name, "kind": s.kind, "dir": str(s.stage_dir)} for s in p.stages]}
                      for p in graph.pipelines],
        "bootstrap_samples": 2000,
    }


def write_reports(record: dict[str, Any], echo: bool = True) -> None:
    """Run folders for every finished pipeline, then the comparison when there are several."""
    for pipeline in record["pipelines"]:
        write_run_folder(pipeline, echo=echo and len(record["pipelines"]) == 1)
    if record["grid_dir"]:
        write_grid_report(record, echo=echo)


def write_run_folder(pipeline: dict[str, Any], echo: bool) -> None:
    run_dir = Path(pipeline["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage in pipeline["stages"]:  # `runs/<pipeline>/<stage>` -> the hash-named folder, for humans
        link = run_dir / stage["name"]
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(stage["dir"], run_dir))
    evaluation = next((Path(s["dir"]) for s in pipeline["stages"] if s["kind"] == "eval"), None)
    if evaluation is None or not is_complete(evaluation):
        return
    for name, target in (("table.md", "table.md"), ("synergy/report.md", "synergy.md")):
        if (evaluation / name).is_file():
            shutil.copyfile(evaluation / name, run_dir / target)
    if echo:
        print("\n" + (evaluation / "table.md").read_text())
        summary = evaluation / "synergy" / "summary.txt"
        if summary.is_file():
            print(summary.read_text())


def write_grid_report(record: dict[str, Any], echo: bool) -> Path | None:
    from hpcadapt.eval.compare import StrategyResult, compare

    strategies = []
    for pipeline in record["pipelines"]:
        stages = pipeline["stages"]
        evaluation = next((Path(s["dir"]) for s in stages if s["kind"] == "eval"), None)
        if evaluation is None or not is_complete(evaluation):
            print(f"hpcadapt: {pipeline['name']} has no finished evaluation; left out of the comparison")
            continue
        chain = [s for s in stages if s["kind"] not in ("merge", "eval")]
        final = "merged" if any(s["kind"] == "merge" for s in stages) else list(pipeline["models"])[-1]
        metrics = read_manifest(evaluation)["metrics"]
        strategies.append(StrategyResult(pipeline["name"], final, len(chain), evaluation,
                                         metrics.get("synergy_verdict"), stage_compute(stages)))
    if len(strategies) < 2:
        return None
    out = Path(record["grid_dir"])
    compare(strategies, out, n_boot=record["bootstrap_samples"])
    write_json_atomic(out / GRAPH_FILE, record)
    if echo:
        print("\n" + (out / "report.md").read_text())
    return out


def stage_compute(stages: list[dict[str, Any]]) -> dict[str, float]:
    """Wall seconds and GPU-hours of a pipeline's finished stages, from their manifests."""
    seconds = gpu_hours = 0.0
    for stage in stages:
        folder = Path(stage["dir"])
        if not is_complete(folder):
            continue
        metrics = read_manifest(folder).get("metrics", {})
        wall = float(metrics.get("wall_s") or 0)
        seconds += wall
        if (metrics.get("speed") or {}).get("device") not in (None, "cpu"):
            gpu_hours += wall * metrics.get("world_size", 1) / 3600
    return {"stage_seconds": round(seconds, 1), "gpu_hours": round(gpu_hours, 3)}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hpcadapt.launch.report GRAPH.json")
    write_reports(json.loads(Path(sys.argv[1]).read_text()), echo=True)


if __name__ == "__main__":
    main()
