"""One graph of unique stages for one or more pipelines (a single run, a sweep, a strategy grid).

A stage's folder is named by the hash of everything that decides its result, so two
pipelines that share a prefix (`Base-CPT` feeds half of the paper's strategies) plan the
same folder for it. The graph keeps each folder once, with the folders it reads and the
pipelines that use it; launchers run or submit the graph, each unique stage once, in an
order where every stage comes after its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hpcadapt.identity import stable_hash
from hpcadapt.plan import PipelinePlan, StagePlan


@dataclass
class GraphStage:
    plan: StagePlan  # as the first pipeline that uses the folder planned it
    inputs: list[Path]  # folders of the stages it reads
    used_by: list[str] = field(default_factory=list)  # pipelines (strategies) that include it

    @property
    def folder(self) -> Path:
        return self.plan.stage_dir


@dataclass
class StageGraph:
    name: str
    pipelines: list[PipelinePlan]
    stages: dict[Path, GraphStage]  # in planning order, which is topological

    @property
    def ordered(self) -> list[GraphStage]:
        return list(self.stages.values())

    @property
    def chain_steps(self) -> int:
        """Stages the pipelines list between them, shared ones counted once per pipeline."""
        return sum(len(p.stages) for p in self.pipelines)

    @property
    def identity(self) -> str:
        return stable_hash(sorted(str(folder) for folder in self.stages))[:8]

    def dependants(self, folder: Path) -> list[Path]:
        """Every stage that reads `folder`, directly or through others."""
        found: list[Path] = []
        for stage in self.ordered:
            if folder in stage.inputs or any(i in found for i in stage.inputs):
                found.append(stage.folder)
        return found


def build_graph(name: str, pipelines: list[PipelinePlan]) -> StageGraph:
    stages: dict[Path, GraphStage] = {}
    for pipeline in pipelines:
        folder_of = {s.name: s.stage_dir for s in pipeline.stages}
        for stage in pipeline.stages:
            node = stages.get(stage.stage_dir)
            if node is None:
                node = stages[stage.stage_dir] = GraphStage(stage, [folder_of[d] for d in stage.depends_on])
            if pipeline.name not in node.used_by:
                node.used_by.append(pipeline.name)
    return StageGraph(name, pipelines, stages)


def describe(graph: StageGraph) -> str:
    """The dry run's view: unique stages, the steps they replace, who uses each, what is done."""
    todo = [s for s in graph.ordered if not s.plan.done]
    lines = [f"hpcadapt: {graph.name}: {len(graph.pipelines)} pipeline(s), {graph.chain_steps} stage step(s) as "
             f"{len(graph.stages)} unique stage(s); {len(graph.stages) - len(todo)} done, {len(todo)} pending"]
    index = {stage.folder: i for i, stage in enumerate(graph.ordered, start=1)}
    for i, stage in enumerate(graph.ordered, start=1):
        state = "done" if stage.plan.done else "to run"
        after = f" after {', '.join(str(index[f]) for f in stage.inputs)}" if stage.inputs else ""
        users = ""
        if len(graph.pipelines) > 1:
            users = "  [all]" if len(stage.used_by) == len(graph.pipelines) else f"  [{', '.join(stage.used_by)}]"
        lines.append(f"  {i:>3}. {stage.plan.name:<14} {stage.plan.kind:<9} {state:<7} {stage.folder.name}{after}"
                     f"{users}")
    return "\n".join(lines)
