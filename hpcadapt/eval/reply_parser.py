"""Map a free-form model reply to a choice label, or to None when it cannot be read.

Small models rarely answer with a bare letter: they write "(B)", "B) Iron", "The
answer is b.", "false." or repeat the choice text. A reply counts only when it names
exactly one label; anything ambiguous is unparseable (and reported as such) rather
than guessed, because a lenient guess would inflate the accuracy of weak models.
"""

from __future__ import annotations

import re

from .benchmark import TRUE_FALSE

# A letter standing alone at the start: "B", "(B)", "B)", "B.", "B:", "[B]", "**B**".
_LEADING_LETTER = re.compile(r"^[\s*\[(\"'`]*([A-Za-z])([\])\"'`*]+[.:,]?|[.:,]|\s+[-–])?(?=\s|$)")
# "answer is B", "answer: (b)", "option C", "choice d."
_ANSWER_PHRASE = re.compile(
    r"\b(?:answer|option|choice)\s*(?:is|would be|:)?\s*[:\-]?\s*[\[(\"'*]*([A-Za-z])(?![A-Za-z])",
    re.IGNORECASE,
)
# "... A or B", "A/B", "A and C": a second letter right after the first one.
_ALTERNATIVE = re.compile(r"^[\])\"'*]*\s*(?:or|and|/|,)\s*[\[(\"'*]*([A-Za-z])(?![A-Za-z])", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]+")


def parse_reply(reply: str, labels: tuple[str, ...], choices: tuple[str, ...] = ()) -> str | None:
    """Return the label the reply names (a letter, or "True"/"False"), or None.

    `labels` are the allowed answers; `choices` the choice texts of a multiple-choice
    question, so that a reply repeating one choice's text maps to its letter.
    """
    text = reply.strip()
    if not text:
        return None
    if tuple(labels) == TRUE_FALSE:
        return _parse_true_false(text)
    letters = tuple(labels)
    by_choice = _match_choice_text(text, letters, choices)
    if by_choice is not None:
        return by_choice
    first_line = text.splitlines()[0]
    leading = _LEADING_LETTER.match(first_line)
    if leading:
        letter, separator = leading.group(1), leading.group(2)
        rest = first_line[leading.end():].strip()
        # Without a separator, a letter followed by words is a word ("A metal", "I think").
        if (separator or not rest) and letter.upper() in letters:
            return letter.upper()
    found = set()
    for match in _ANSWER_PHRASE.finditer(text):
        found.add(match.group(1).upper())
        alternative = _ALTERNATIVE.match(text[match.end():])
        if alternative:
            found.add(alternative.group(1).upper())
    found &= set(letters)
    if len(found) == 1:
        return found.pop()
    return None


def _parse_true_false(text: str) -> str | None:
    words = {w.lower() for w in _WORD.findall(text)}
    named = {w for w in ("true", "false") if w in words}
    if len(named) == 1:
        return named.pop().capitalize()
    if not named and len(words) == 1 and words <= {"t", "f"}:
        return "True" if words == {"t"} else "False"
    return None


def _match_choice_text(text: str, letters: tuple[str, ...], choices: tuple[str, ...]) -> str | None:
    """A reply that is exactly one choice's text (ignoring case and punctuation)."""
    normalized = _normalize(text)
    hits = [letters[i] for i, choice in enumerate(choices[: len(letters)]) if _normalize(choice) == normalized]
    return hits[0] if len(hits) == 1 else None


def _normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))
