"""Run a graph of stages on this machine, each unique stage once, then write the reports.

Stages run in the graph's order (every stage after its inputs), each as fresh processes
(hpcadapt/launch/processes.py), under a lock on its folder: another run on the same output
root that needs the same stage waits for it, saying who holds it, and then uses it rather
than training it again.
"""

from __future__ import annotations

import time
from typing import Any

from hpcadapt.errors import StageFailed
from hpcadapt.graph import StageGraph
from hpcadapt.launch.prepare import Prepared, graph_name, prepare
from hpcadapt.launch.processes import WarmWorker, run_stage_local
from hpcadapt.launch.report import graph_record, write_reports
from hpcadapt.plan import write_specs
from hpcadapt.stagedir import is_complete, read_manifest, stage_lock


def launch(cfg: Any) -> None:
    """The local launcher (hpcadapt/launch/__init__.py): every stage on this machine, in order."""
    run_local(cfg)


def run_local(cfg: Any):
    """Prepare and run one config's pipeline (or grid) here; returns its plan (a grid's: the graph)."""
    graph = run_configs([cfg], graph_name(cfg))
    return graph if cfg.grid.strategies else graph.pipelines[0]


def run_configs(configs: list[Any], name: str) -> StageGraph:
    prepared = prepare(configs, name)
    run_graph(prepared)
    return prepared.graph


def run_graph(prepared: Prepared) -> None:
    started = time.time()
    graph = prepared.graph
    if prepared.dry_run:
        return
    for pipeline in graph.pipelines:
        write_specs(pipeline)
    echo = "all" if prepared.configs[0].verbose else "quiet"
    stages = graph.ordered
    single = [s for s in stages if not s.plan.done and s.plan.nprocs == 1]
    # The first single-process stage's process imports torch and TRL while the others run.
    warm = WarmWorker() if single else None
    logs = stages[0].plan.stage_dir.parent if stages else None
    if echo == "quiet" and logs is not None:
        print(f"hpcadapt: each stage's full output goes to logs/ in its folder under {logs} (verbose=true shows it)")
    try:
        for i, stage in enumerate(stages, start=1):
            plan = stage.plan
            label = f"[stage {i}/{len(stages)}] {plan.name} ({plan.kind})"
            if plan.done or is_complete(plan.stage_dir):
                print(f"{label}: already complete, skipped", flush=True)
                continue
            with stage_lock(plan.stage_dir):
                if is_complete(plan.stage_dir):  # another run finished it while this one waited
                    print(f"{label}: completed by another run, used as it is", flush=True)
                    continue
                print(f"{label} on {plan.nprocs} process(es) -> {plan.stage_dir.name}", flush=True)
                t0 = time.time()
                current = None  # multi-process stages start cold; a warm worker waits for the next single one
                if plan.nprocs == 1:
                    current, warm = warm, None
                    if any(s.plan.nprocs == 1 and not is_complete(s.folder) for s in stages[i:]):
                        warm = WarmWorker()  # the next stage's, importing while this one runs
                run_stage_local(plan, warm=current, echo=echo)
                if not is_complete(plan.stage_dir):
                    raise StageFailed(f"stage {plan.name!r} exited cleanly but {plan.stage_dir} is not complete")
                print(f"{label} done in {time.time() - t0:.1f} s{key_result(plan.stage_dir)}", flush=True)
    finally:
        if warm is not None:
            warm.discard()
    write_reports(graph_record(graph, prepared.output_root))
    where = graph.pipelines[0].run_dir if len(graph.pipelines) == 1 else "grids/"
    print(f"\nhpcadapt: {graph.name} finished in {time.time() - started:.1f} s; results in {where}")


def key_result(stage_dir) -> str:
    """The one number worth a glance when a stage ends: its loss, or how the merge went."""
    metrics = read_manifest(stage_dir).get("metrics", {})
    if metrics.get("first_loss") is not None and metrics.get("last_loss") is not None:
        speed = (metrics.get("speed") or {}).get("tokens_per_s_per_gpu")
        return f": loss {metrics['first_loss']:.3g} -> {metrics['last_loss']:.3g}" + (
            f", {speed:,.0f} tokens/s" if speed else "")
    if "merge" in metrics:
        return f": {metrics['merge'].get('tensors', '?')} tensors merged"
    return ""
