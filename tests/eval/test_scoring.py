"""Scorers on tiny real models: exact log-likelihoods, batching invariance, memorize vs chance."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from hpcadapt.eval.benchmark import BenchmarkError, read_benchmark_file
from hpcadapt.eval.model_dir import ModelDirError, check_model_dir, load_model, load_tokenizer
from hpcadapt.eval.prompts import ANSWER_LEAD, INSTRUCTION, chat_prompt
from hpcadapt.eval.results import EvalResults
from hpcadapt.eval.scoring import greedy_replies, perplexity, score_loglik
from hpcadapt.eval.suite import evaluate_models


@pytest.fixture(scope="module")
def untrained(untrained_dir):
    return load_model(untrained_dir, "cpu"), load_tokenizer(untrained_dir)


def test_loglik_equals_direct_computation(untrained, bench_file):
    import torch

    model, tokenizer = untrained
    questions = read_benchmark_file(bench_file)[8:16]  # multiple choice and true/false, varied lengths
    records = score_loglik(model, tokenizer, questions, batch_size=3)
    for question, record in zip(questions, records):
        context = tokenizer(chat_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
        direct = []
        for choice in question.choices:
            continuation = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
            direct.append(sum(float(logprobs[len(context) + k - 1, tok]) for k, tok in enumerate(continuation)))
        assert record["choice_loglik"] == pytest.approx(direct, abs=1e-4)
        best = max(range(len(direct)), key=direct.__getitem__)
        best_norm = max(range(len(direct)), key=lambda i: direct[i] / len(question.choices[i]))
        assert record["pred"] == question.labels[best]
        assert record["pred_norm"] == question.labels[best_norm]
        assert record["acc"] == float(best == question.gold_index)
        assert record["acc_norm"] == float(best_norm == question.gold_index)


def test_left_padded_batches_generate_what_single_prompts_do(untrained, bench_file):
    model, tokenizer = untrained
    prompts = [chat_prompt(tokenizer, q) for q in read_benchmark_file(bench_file)[::3]]
    assert len({len(p) for p in prompts}) > 1
    batched = greedy_replies(model, tokenizer, prompts, batch_size=8, max_new_tokens=6)
    single = greedy_replies(model, tokenizer, prompts, batch_size=1, max_new_tokens=6)
    assert batched == single
    assert tokenizer.padding_side == "right"  # restored


def test_perplexity_matches_the_models_own_loss(untrained):
    import torch

    model, tokenizer = untrained
    texts = ["The iron and copper alloy was annealed.", "Gold is soft."]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    with torch.no_grad():
        nll = sum(float(model(input_ids=torch.tensor([i]), labels=torch.tensor([i])).loss) * (len(i) - 1) for i in ids)
    expected = math.exp(nll / sum(len(i) - 1 for i in ids))
    assert perplexity(model, tokenizer, texts, batch_size=2) == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_memorized_model_scores_one_and_untrained_near_chance(eval_results, tmp_path):
    results, out_dir = eval_results
    summary = results.summary()
    trained, untrained = summary["trained"]["domain"], summary["untrained"]["domain"]
    assert trained["loglik_acc"] == trained["loglik_acc_norm"] == trained["generate_acc"] == 1.0
    assert trained["unparseable"] == 0
    chance = (12 * 1 / 4 + 8 * 1 / 2) / 20
    assert abs(untrained["loglik_acc"] - chance) <= 0.25
    assert untrained["generate_acc"] <= 0.5
    assert all(p is not None and p > 1 for p in results.perplexity.values())
    # written files: per-question records and the table, reloadable
    reloaded = EvalResults.load(out_dir)
    assert reloaded.summary() == json.loads(json.dumps(summary))
    assert len(reloaded.records["trained"]["generate"]) == 20
    table = (out_dir / "table.md").read_text()
    assert table.startswith(results.table_text() + "\n")
    assert "Per category" in table and "| basic    | trained   | 1.000" in table
    assert "| trained" in table and "domain gen acc" in table and "0/20" in table


def test_model_folder_errors_come_before_loading(untrained_dir, bench_file, tmp_path, monkeypatch):
    import hpcadapt.eval.suite as suite

    monkeypatch.setattr(suite, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    no_tokenizer = shutil.copytree(untrained_dir, tmp_path / "no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    out = tmp_path / "out"
    with pytest.raises(ModelDirError, match=r"cpt \(.*no_tokenizer\): no tokenizer"):
        evaluate_models({"start": untrained_dir, "cpt": no_tokenizer}, [bench_file], None, out)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(BenchmarkError, match="empty.jsonl: empty benchmark file"):
        evaluate_models({"start": untrained_dir}, [bench_file, empty], None, out)
    assert not out.exists()


def test_tables_show_each_set_overall_and_categories():
    def records(correct, sets):
        return {"generate": [{"id": f"q{i}", "set": s, "category": "basic" if i % 2 else "advanced", "gold": "A",
                              "reply": "?" if not ok else "A", "parsed": "A" if ok else None, "unparseable": not ok,
                              "acc": float(ok)} for i, (ok, s) in enumerate(zip(correct, sets))]}

    sets = ["first"] * 4 + ["second"] * 2
    results = EvalResults(models={"m": "m"}, sets=["first", "second"], protocols=("generate",),
                          records={"m": records([1, 1, 0, 1, 0, 1], sets)}, perplexity={"m": 12.345})
    table = results.table_text().splitlines()
    assert table[0].split("|")[1:-1] == [" model ", " ppl   ", " first gen acc ", " first unparsed ",
                                         " second gen acc ", " second unparsed ", " all gen acc ", " all unparsed "]
    assert [c.strip() for c in table[2].split("|")[1:-1]] == [
        "m",
        "12.35",
        "0.750",
        "1/4",
        "0.500",
        "1/2",
        "0.667",
        "2/6",
    ]
    assert results.category_summary()["m"] == {
        "advanced": {"generate_acc": 1 / 3, "n": 3},
        "basic": {"generate_acc": 1.0, "n": 3},
    }
    assert results.category_table_text().splitlines()[2].split("|")[1:-1] == [
        " advanced ",
        " m     ",
        " 0.333   ",
        " 3 ",
    ]


def test_a_model_without_chat_template_is_asked_in_plain_text(untrained_dir, bench_file, tmp_path):
    """A Base model (Mistral-7B-v0.3's, SmolLM's) has no template: it gets the same words as
    plain text, the table says so, and merge checks still require a template."""
    no_template = shutil.copytree(untrained_dir, tmp_path / "no_template")
    (no_template / "chat_template.jinja").unlink()
    with pytest.raises(ModelDirError, match=r"no chat template"):
        check_model_dir(no_template, "sft")

    tokenizer = load_tokenizer(no_template)
    question = read_benchmark_file(bench_file)[0]
    prompt = chat_prompt(tokenizer, question)
    assert prompt.startswith(tokenizer.bos_token + INSTRUCTION) and prompt.endswith("\n" + ANSWER_LEAD)
    results = evaluate_models(
        {"base": no_template, "instruct": untrained_dir}, [bench_file], None, tmp_path / "out", protocols=["loglik"]
    )
    assert results.meta["prompt_format"] == {"base": "plain text (no chat template)", "instruct": "chat template"}
    assert "Asked in plain text, having no chat template: base." in results.table_text()


def test_several_suites_load_each_model_once_and_score_as_one_suite_at_a_time(
    untrained_dir, trained_dir, bench_file, heldout_file, rows, tmp_path, monkeypatch
):
    """The evaluation stage scores the domain and the general benchmark on one load of each model;
    every record equals what a separate evaluation of each suite gives."""
    from eval_fixtures import write_jsonl

    from hpcadapt.eval import suite

    general_file = write_jsonl(tmp_path / "general.jsonl", rows[:12])
    models = {"untrained": untrained_dir, "trained": trained_dir}
    separately = [evaluate_models(models, [bench_file], heldout_file, tmp_path / "alone-domain", batch_size=8),
                  evaluate_models(models, [general_file], None, tmp_path / "alone-general", batch_size=8)]
    loads = []
    real_load = suite.load_model
    monkeypatch.setattr(suite, "load_model", lambda folder, device: loads.append(folder) or real_load(folder, device))
    together = suite.evaluate_suites(models, [suite.Suite([bench_file], heldout_file, tmp_path / "domain"),
                                              suite.Suite([general_file], None, tmp_path / "general")], batch_size=8)
    assert len(loads) == len(models)
    for alone, joint, folder in zip(separately, together, ("domain", "general")):
        assert joint.records == alone.records and joint.perplexity == alone.perplexity
        assert json.loads((tmp_path / folder / "results.json").read_text())["records"] == alone.records
    assert together[1].perplexity == {"untrained": None, "trained": None}
