"""The paper's prompt wording, shared by both scorers so they see identical questions.

The question (with lettered choices for multiple choice) goes into the user turn of
the model's own chat template; the assistant turn is then opened with
"The correct answer is:" so that both a greedy reply and the log-likelihood of each
choice continue the same text.
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
    """The full prompt string (template applied, generation prompt opened, answer lead)."""
    messages = [{"role": "user", "content": INSTRUCTION + question_text(question)}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return rendered + ANSWER_LEAD
