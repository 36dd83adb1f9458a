"""General-capability retention through lm-evaluation-harness (the optional `eval` extra).

Two uses: run any of the harness's own tasks by name (sciq, mmlu_college_chemistry,
...), and run our JSONL benchmark through the harness as a local task, so the same
questions can be scored by the reference implementation. The exported task uses our
prompt wording and, with the chat template applied, the same assistant prefix
("The correct answer is:") as our log-likelihood scorer, so the two agree question
by question.

Local tasks read a JSON file from disk (`dataset_path: json`); nothing is fetched
from the hub when HF_HUB_OFFLINE=1 is set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hpcadapt.atomic import write_atomic

from .benchmark import read_benchmark_file
from .prompts import ANSWER_LEAD, INSTRUCTION, question_text


def lm_eval_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def export_lm_eval_task(benchmark_file: str | Path, out_dir: str | Path, task_name: str | None = None) -> str:
    """Write `<task>.jsonl` and `<task>.yaml` for one benchmark file into out_dir; return the task name.

    The file is validated exactly as for our own scorers first.
    """
    benchmark_file = Path(benchmark_file)
    questions = read_benchmark_file(benchmark_file)
    task = task_name or "hpcadapt_" + re.sub(r"[^A-Za-z0-9_]", "_", benchmark_file.stem)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": q.id, "category": q.category, "prompt": INSTRUCTION + question_text(q),
         "choices": list(q.choices), "gold": q.gold_index}
        for q in questions
    ]
    data_file = out / f"{task}.jsonl"
    write_atomic(data_file, "\n".join(json.dumps(r) for r in rows) + "\n")
    config = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{prompt}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "gen_prefix": ANSWER_LEAD,
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
    import yaml

    write_atomic(out / f"{task}.yaml", yaml.safe_dump(config, sort_keys=False))
    return task


def run_lm_eval(
    model_dir: str | Path,
    tasks: list[str],
    *,
    include_path: str | Path | None = None,
    batch_size: int = 16,
    device: str | None = None,
    apply_chat_template: bool = True,
    limit: int | None = None,
    log_samples: bool = False,
) -> dict:
    """Run lm-evaluation-harness tasks on a local model folder; returns its results dict.

    `include_path` is a folder of task YAMLs (e.g. from export_lm_eval_task). Harness
    tasks need their datasets in the local HF cache when the hub is unreachable.
    """
    if not lm_eval_available():
        raise ImportError("lm-evaluation-harness is not installed: pip install 'hpcadapt[eval]'")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from .model_dir import check_model_dir, pick_device

    folder = check_model_dir(model_dir)
    device = pick_device(device)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    return simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},dtype={dtype},trust_remote_code=False",
        tasks=list(tasks),
        task_manager=manager,
        batch_size=batch_size,
        device=device,
        apply_chat_template=apply_chat_template,
        limit=limit,
        log_samples=log_samples,
    )
