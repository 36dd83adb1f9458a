"""The two benchmark scorers and held-out perplexity, batched on one loaded model.

Both scorers take the same prompt (prompts.chat_prompt), so "generate" (the paper's
greedy one-word answer) and "loglik" (lm-evaluation-harness style multiple choice)
differ only in how the answer is read off the model.

Per question, the loglik scorer records the summed log-probability of each choice's
text after the prompt; acc takes the argmax, acc_norm the argmax after dividing by
the choice's length in characters, which is how lm-evaluation-harness defines them.
"""

from __future__ import annotations

from collections.abc import Iterable

from tqdm.auto import tqdm

from .benchmark import Question
from .prompts import chat_prompt
from .reply_parser import parse_reply


def score_loglik(
    model, tokenizer, questions: list[Question], *, batch_size: int = 16, desc: str = "loglik"
) -> list[dict]:
    """Per-question log-likelihood records: choice scores, predictions, acc and acc_norm."""
    pairs, owners = [], []
    for q_index, question in enumerate(questions):
        prompt = chat_prompt(tokenizer, question)
        for choice in question.choices:
            pairs.append((prompt, " " + choice))
            owners.append(q_index)
    scores = continuation_logprobs(model, tokenizer, pairs, batch_size=batch_size, desc=desc)
    per_question: list[list[float]] = [[] for _ in questions]
    for owner, score in zip(owners, scores):
        per_question[owner].append(score)
    records = []
    for question, lls in zip(questions, per_question):
        lengths = [float(len(choice)) for choice in question.choices]
        pred = argmax(lls)
        pred_norm = argmax([ll / length for ll, length in zip(lls, lengths)])
        records.append(
            {
                "id": question.id,
                "set": question.set_name,
                "category": question.category,
                "gold": question.labels[question.gold_index],
                "choice_loglik": lls,
                "pred": question.labels[pred],
                "pred_norm": question.labels[pred_norm],
                "acc": float(pred == question.gold_index),
                "acc_norm": float(pred_norm == question.gold_index),
            }
        )
    return records


def score_generate(
    model,
    tokenizer,
    questions: list[Question],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    desc: str = "generate",
) -> list[dict]:
    """Per-question records of the paper's protocol: greedy reply, parsed label, correctness."""
    prompts = [chat_prompt(tokenizer, question) for question in questions]
    replies = greedy_replies(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, desc=desc)
    records = []
    for question, reply in zip(questions, replies):
        parsed = parse_reply(reply, question.labels, question.choices if question.kind == "mc" else ())
        gold = question.labels[question.gold_index]
        records.append(
            {
                "id": question.id,
                "set": question.set_name,
                "category": question.category,
                "gold": gold,
                "reply": reply,
                "parsed": parsed,
                "unparseable": parsed is None,
                "acc": float(parsed == gold),
            }
        )
    return records


def continuation_logprobs(
    model, tokenizer, pairs: list[tuple[str, str]], *, batch_size: int = 16, desc: str = "loglik"
) -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context, continuation) pair.

    Context and continuation are tokenized separately (the context's template already
    holds bos), so the continuation's tokens are exactly the ones scored. Batches are
    formed from similar lengths; position ids follow the attention mask, so padding
    changes nothing but float rounding.
    """
    import torch

    max_len = _max_length(model)
    encoded = []
    for context, continuation in pairs:
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not cont:
            raise ValueError(f"continuation {continuation!r} tokenizes to nothing")
        if len(cont) >= max_len:
            raise ValueError(
                f"continuation {continuation[:40]!r}... has {len(cont)} tokens, more than the context window"
            )
        ids = (ctx + cont)[-max_len:]
        encoded.append((ids, len(cont)))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    results = [0.0] * len(encoded)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            batch_ids = order[start : start + batch_size]
            width = max(len(encoded[i][0]) for i in batch_ids)
            # Left padding puts every continuation at the end, so the vocabulary projection
            # is computed only for the last positions (a large share of the cost at 128k vocab).
            input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch_ids), width), dtype=torch.long)
            for row, i in enumerate(batch_ids):
                ids = encoded[i][0]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            keep = max(encoded[i][1] for i in batch_ids) + 1
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                position_ids=positions.to(device),
                logits_to_keep=keep,
            ).logits
            for row, i in enumerate(batch_ids):
                ids, n_cont = encoded[i]
                targets = torch.tensor(ids[len(ids) - n_cont :], device=logits.device)
                step_logits = logits[row, keep - n_cont - 1 : keep - 1].float()
                logprobs = torch.log_softmax(step_logits, dim=-1).gather(1, targets[:, None])
                results[i] = float(logprobs.sum())
    return results


def greedy_replies(
    model, tokenizer, prompts: list[str], *, batch_size: int = 16, max_new_tokens: int = 8, desc: str = "generate"
) -> list[str]:
    """Greedy continuations of each prompt, batched with left padding, special tokens dropped."""
    import torch

    device = next(model.parameters()).device
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    replies = [""] * len(prompts)
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
                batch_ids = order[start : start + batch_size]
                batch = tokenizer(
                    [prompts[i] for i in batch_ids], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(device)
                output = model.generate(
                    **batch,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
                new_tokens = output[:, batch["input_ids"].shape[1] :]
                for row, i in enumerate(batch_ids):
                    replies[i] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = previous_side
    return replies


def perplexity(model, tokenizer, texts: Iterable[str], *, batch_size: int = 16, desc: str = "perplexity") -> float:
    """Token-weighted perplexity over texts, each split into windows of the model's context length."""
    import math

    import torch

    max_len = _max_length(model)
    windows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        windows.extend(ids[i : i + max_len] for i in range(0, len(ids), max_len) if len(ids[i : i + max_len]) > 1)
    if not windows:
        raise ValueError("held-out texts are too short to score (need at least two tokens)")
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in tqdm(range(0, len(windows), batch_size), desc=desc, unit="batch", leave=False):
            chunk = windows[start : start + batch_size]
            width = max(len(w) for w in chunk)
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, window in enumerate(chunk):
                input_ids[row, : len(window)] = torch.tensor(window)
                attention[row, : len(window)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            targets = input_ids[:, 1:].to(logits.device)
            mask = attention[:, 1:].to(logits.device).bool()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
            total_nll += float(nll[mask].sum())
            total_tokens += int(mask.sum())
    return math.exp(total_nll / total_tokens)


def _max_length(model) -> int:
    return int(min(getattr(model.config, "max_position_embeddings", 2048) or 2048, 4096))


def argmax(values: list[float]) -> int:
    """Index of the largest value; the first one on ties, as numpy's argmax."""
    return max(range(len(values)), key=lambda i: (values[i], -i))
