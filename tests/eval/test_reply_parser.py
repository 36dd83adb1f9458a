"""The reply parser on the shapes real models answer in."""

from __future__ import annotations

import sys

import pytest

from hpcadapt.eval.reply_parser import parse_reply

LETTERS = ("A", "B", "C", "D")
CHOICES = ("Iron", "Copper", "Gold", "Silver")
TF = ("True", "False")


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("B", "B"), ("(B)", "B"), ("B)", "B"), ("B) Copper", "B"), ("B. Copper", "B"), ("B: Copper", "B"),
        ("B - Copper", "B"), ("[C]", "C"), ("**D**", "D"), (" b ", "B"), ("b.", "B"), ("(c)", "C"),
        ("The answer is b.", "B"), ("The correct answer is (c) Gold", "C"), ("Answer: D", "D"),
        ("answer is C because", "C"), ("copper", "B"), ("Gold.", "C"), ("A\nBecause iron is magnetic", "A"),
        # unparseable: no label, out of range, words that start with a letter, two candidates
        ("", None), ("E", None), ("A metal", None), ("I think so", None), ("a metal that conducts", None),
        ("The answer is A or B", None), ("answer: (A)/(C)", None), ("platinum", None),
    ],
)
def test_multiple_choice_replies(reply, expected):
    assert parse_reply(reply, LETTERS, CHOICES) == expected


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("True", "True"), ("true", "True"), ("False.", "False"), ("FALSE", "False"), ("T", "True"), ("F", "False"),
        ("The statement is true.", "True"), ("It is false", "False"),
        ("True or false", None), ("maybe", None), ("", None), ("B", None),
    ],
)
def test_true_false_replies(reply, expected):
    assert parse_reply(reply, TF) == expected


def test_parser_imports_without_torch():
    import subprocess

    code = ("import sys, hpcadapt.eval.suite, hpcadapt.eval.synergy, hpcadapt.eval.sweep, hpcadapt.eval.lm_eval_tasks; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
