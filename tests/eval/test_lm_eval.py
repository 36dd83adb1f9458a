"""Our JSONL benchmark as a local lm-evaluation-harness task, run with no network at all."""

from __future__ import annotations

import socket

import pytest

from hpcadapt.eval.lm_eval_tasks import export_lm_eval_task, lm_eval_available, run_lm_eval

pytestmark = pytest.mark.skipif(not lm_eval_available(), reason="lm_eval not installed (optional extra hpcadapt[eval])")


def test_exported_task_validates_the_benchmark(tmp_path):
    from hpcadapt.eval.benchmark import BenchmarkError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "question": "q", "choices": ["a", "b"], "answer": "C"}\n')
    with pytest.raises(BenchmarkError, match="bad.jsonl:1"):
        export_lm_eval_task(bad, tmp_path / "tasks")
    assert not (tmp_path / "tasks").exists()


@pytest.mark.slow
def test_local_task_runs_offline_and_agrees_with_our_loglik(
    trained_dir, bench_file, eval_results, tmp_path, monkeypatch
):
    task = export_lm_eval_task(bench_file, tmp_path / "tasks")
    assert task == "hpcadapt_domain"

    def no_network(*args, **kwargs):
        raise OSError("network access attempted during an offline lm-eval run")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    output = run_lm_eval(trained_dir, [task], include_path=tmp_path / "tasks", batch_size=8, log_samples=True)
    metrics = output["results"][task]
    assert metrics["acc,none"] == 1.0 and metrics["acc_norm,none"] == 1.0

    ours = {r["id"]: r["choice_loglik"] for r in eval_results[0].records["trained"]["loglik"]}
    samples = output["samples"][task]
    assert len(samples) == len(ours)
    for sample in samples:
        theirs = [float(resp[0][0]) for resp in sample["resps"]]
        assert theirs == pytest.approx(ours[sample["doc"]["id"]], abs=1e-4)
