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
        "wandb": wandb_settings(graph),
    }


def wandb_settings(graph: StageGraph) -> dict[str, Any]:
    """Where the grid's comparison is logged: the stages' project and group, without the config."""
    spec = next((s.plan.spec for s in graph.ordered if s.plan.spec is not None), None)
    if spec is None:
        return {"enabled": False}
    return {k: v for k, v in spec.wandb.items() if k != "config"}


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
    for name, target in (("table.md", "table.md"), ("synergy/report.md", "synergy.md"),
                         ("retention.md", "retention.md"), ("domain_vs_general.png", "domain_vs_general.png")):
        if (evaluation / name).is_file():
            shutil.copyfile(evaluation / name, run_dir / target)
    if echo:
        table = (evaluation / "table.md").read_text().split("\nPer category")[0]  # categories: in table.md
        print("\n" + table.rstrip())
        print(LEGEND)
        if (evaluation / "retention.md").is_file():
            print("\nDomain against general ability (what the merge is meant to keep; plot: domain_vs_general.png):\n"
                  + (evaluation / "retention.md").read_text().rstrip())
        verdict = synergy_sentence(evaluation / "synergy" / "report.json")
        if verdict:
            print(f"\n{verdict}\nFull report: {run_dir / 'synergy.md'}")


LEGEND = ("ppl: held-out perplexity; acc, acc_norm: log-likelihood accuracy (raw, length-normalised); "
          "gen acc: the paper's generate-and-parse accuracy; unparsed: replies that named no choice.")


def synergy_sentence(report_file: Path) -> str | None:
    """The merge's verdict against its parents in one sentence, with its interval."""
    if not report_file.is_file():
        return None
    report = json.loads(report_file.read_text())
    overall = next((c for c in report["comparisons"]
                    if c["group"] == "all" and c["metric"] == report["primary_metric"]), None)
    if overall is None:
        return None
    best = overall["vs_best"]
    return (f"Synergy {overall['verdict'].upper()}: merged minus best parent {best['estimate']:+.3f} "
            f"[{best['low']:+.3f}, {best['high']:+.3f}] ({report['primary_metric']}, n={overall['n']}, "
            f"95% paired-bootstrap interval; synergy is claimed only when the interval excludes zero).")


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
    report = compare(strategies, out, n_boot=record["bootstrap_samples"])
    write_json_atomic(out / GRAPH_FILE, record)
    log_grid_to_wandb(record, report, out)
    if echo:
        print("\n" + (out / "report.md").read_text())
    return out


def log_grid_to_wandb(record: dict[str, Any], report: dict[str, Any], out: Path) -> None:
    """The comparison as one W&B run in the grid's group: the ranked table and the plots."""
    from hpcadapt.tracking import resolve_mode

    settings = record.get("wandb") or {"enabled": False}
    mode = resolve_mode(settings)
    if mode == "disabled":
        return
    import wandb

    os.environ.pop("WANDB_SERVICE", None)  # this process's own service, as every stage's
    run = wandb.init(project=settings["project"], entity=settings.get("entity"), group=settings.get("group"),
                     job_type="grid", name=record["name"], mode=mode, dir=str(out.parent.parent),
                     tags=list(settings.get("tags", [])), config={"metric": report["metric"]})
    columns = ["rank", "strategy", "accuracy", "low", "high", "minus_best", "synergy", "stage_seconds"]
    table = wandb.Table(columns=columns, data=[
        [r["rank"], r["strategy"], r["overall"]["estimate"], r["overall"]["low"], r["overall"]["high"],
         r["minus_best"]["estimate"], r["synergy"], r["compute"]["stage_seconds"]] for r in report["strategies"]])
    run.log({"strategies": table, **{p.stem: wandb.Image(str(p)) for p in sorted(out.glob("*.png"))}})
    run.finish()


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
