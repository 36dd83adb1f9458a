"""The paper's prompt wording, shared by both scorers so they see identical questions.

The question (with lettered choices for multiple choice) goes into the user turn of
the model's own chat template; the assistant turn is then opened with
"The correct answer is:" so that both a greedy reply and the log-likelihood of each
choice continue the same text. A Base model has no chat template (Mistral-7B-v0.3's,
SmolLM's): it is asked the same words as plain text, and the results say so.
"""

from __future__ import annotations

from .benchmark import LETTERS, Question

INSTRUCTION = "You respond with one word or letter. Select the correct answer to this question: "
ANSWER_LEAD = "The correct answer is:"
TRUE_FALSE_HINT = "Answer True or False."


def question_text(question: Question) -> str:
    """The user-visible question: the text, then "A) ..." lines or a True/False hint."""
    if question.kind == "tf":
        return f"{question.question}\n{TRUE_FALSE_HINT}"
    lines = [f"{LETTERS[i]}) {choice}" for i, choice in enumerate(question.choices)]
    return question.question + "\n" + "\n".join(lines)


def chat_prompt(tokenizer, question: Question) -> str:
    """The full prompt string (template applied, generation prompt opened, answer lead).

    Without a chat template: the same words as plain text, after bos where the tokenizer
    puts one before plain text (prompts are tokenized without special tokens)."""
    if not tokenizer.chat_template:
        ids = tokenizer("x")["input_ids"]
        bos = tokenizer.bos_token if tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id] else ""
        return f"{bos}{INSTRUCTION}{question_text(question)}\n{ANSWER_LEAD}"
    messages = [{"role": "user", "content": INSTRUCTION + question_text(question)}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return rendered + ANSWER_LEAD


def prompt_format(tokenizer) -> str:
    return "chat template" if tokenizer.chat_template else "plain text (no chat template)"
