"""Whether model folders tokenize text alike: the one rule the merger and the toolkit's evaluation both apply.

Two folders tokenize alike exactly when every tokenizer file both hold is the same: tokenizer.json by what it
defines (its vocabulary, its merges and its added tokens; merges written as "a b" strings and as ["a", "b"]
pairs are the same merges, as the tokenizers library reads them), tokenizer.model, vocab.json and merges.txt
byte for byte. A folder with only a sentencepiece tokenizer.model is therefore compared byte for byte.

They tokenize alike up to appended tokens when the larger vocabulary gives every token of the smaller one the
same id, adds tokens only at ids the smaller one does not reach, and its tokenizer model (merges and settings)
is the same: a pad token appended by a fine-tune changes the tokens of no text without it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")


@dataclass(frozen=True)
class TokenizerMatch:
    """How the folders' tokenizers relate, when they tokenize alike."""

    donor: Path | None = None  # the first folder with the largest vocabulary; None when all are alike exactly
    added_tokens: tuple[str, ...] = ()  # the tokens the donor appends to the smallest vocabulary, in id order

    @property
    def exact(self) -> bool:
        return self.donor is None


def compare_tokenizers(folders: Sequence[Path], *, appended: bool = True, sizes: Mapping[Path, int] | None = None,
                       require: bool = False) -> TokenizerMatch:
    """Whether `folders` tokenize alike exactly, or alike up to appended tokens; else raise CheckpointError
    naming the two files and their first difference.

    Without `appended`, only alike exactly passes. `sizes` gives each folder's vocabulary size (the rows of
    its embeddings); without it the sizes are read from the tokenizer.json files, and folders of which one
    lacks a tokenizer.json are compared exactly. The first folder of each size is the one the others of that
    size are compared with, so the order of `folders` decides the donor. With `require`, two folders that
    share no tokenizer file are refused instead of passing unchecked.
    """
    folders = [Path(f) for f in dict.fromkeys(folders)]
    if require:
        _require_common_files(folders)
    if not appended or len(folders) < 2:
        return _exact(folders)
    ids: dict[Path, dict[str, int]] = {}
    if sizes is None:
        if not all((folder / "tokenizer.json").is_file() for folder in folders):
            return _exact(folders)
        ids = {folder: token_ids(folder) for folder in folders}
        sizes = {folder: max(ids[folder].values(), default=-1) + 1 for folder in folders}
    groups: dict[int, list[Path]] = {}
    for folder in folders:
        groups.setdefault(sizes[folder], []).append(folder)
    if len(groups) == 1:
        return _exact(folders)
    chain = [(size, groups[size][0]) for size in sorted(groups)]
    for _, folder in chain:
        if folder not in ids:
            ids[folder] = token_ids(folder)
    for folder in folders:
        representative = groups[sizes[folder]][0]
        if folder != representative:
            check_same_tokenizer(representative, folder)
    for (small, reference), (large, donor) in zip(chain, chain[1:]):
        _check_appended(reference, ids[reference], small, donor, ids[donor], large)
    smallest, donor = ids[chain[0][1]], chain[-1][1]
    added = sorted((index, token) for token, index in ids[donor].items() if token not in smallest)
    return TokenizerMatch(donor=donor, added_tokens=tuple(token for _, token in added))


def check_same_tokenizer(folder_a: Path, folder_b: Path) -> None:
    """Raise unless the two folders tokenize alike exactly (every tokenizer file both hold is the same)."""
    for filename in TOKENIZER_FILES:
        file_a, file_b = folder_a / filename, folder_b / filename
        if not (file_a.is_file() and file_b.is_file()):
            continue
        if filename == "tokenizer.json":
            difference = _definition_difference(json.loads(file_a.read_text()), json.loads(file_b.read_text()))
        else:
            difference = _byte_difference(file_a.read_bytes(), file_b.read_bytes())
        if difference:
            raise CheckpointError(f"tokenizers differ: {file_a} and {file_b} define different vocabularies; merge "
                                  f"parents must share one tokenizer (first difference: {difference})")


def token_ids(folder: Path) -> dict[str, int]:
    """token -> id over the whole vocabulary of a folder's tokenizer.json, added tokens included."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; tokenizer_source: union needs each parent's tokenizer.json to check "
                              "that one vocabulary only appends tokens to the other")
    data = json.loads(path.read_text())
    ids = _vocab_ids(data.get("model", {}).get("vocab"))
    for token in data.get("added_tokens", []):
        ids[token.get("content")] = token.get("id")
    return ids


def _exact(folders: list[Path]) -> TokenizerMatch:
    for folder in folders[1:]:
        check_same_tokenizer(folders[0], folder)
    return TokenizerMatch()


def _require_common_files(folders: list[Path]) -> None:
    held = {folder: [f for f in TOKENIZER_FILES if (folder / f).is_file()] for folder in folders}
    for folder in folders[1:]:
        if not set(held[folders[0]]) & set(held[folder]):
            listing = "; ".join(f"{f} holds {', '.join(held[f]) or 'no tokenizer file'}" for f in (folders[0], folder))
            raise CheckpointError(f"tokenizers cannot be compared: {listing}; they share no tokenizer file")


def _check_appended(reference: Path, vocab_small: dict[str, int], small: int,
                    donor: Path, vocab_large: dict[str, int], large: int) -> None:
    """`donor`'s vocabulary (`large` rows) only appends tokens to `reference`'s (`small` rows)."""
    for token, index in vocab_small.items():
        if vocab_large.get(token) != index:
            raise CheckpointError(f"tokenizers differ: {reference / 'tokenizer.json'} has {token!r} at id {index} but "
                                  f"{donor / 'tokenizer.json'} has it at {vocab_large.get(token)}; union merges only "
                                  "vocabularies that differ by appended tokens")
    if max(vocab_small.values(), default=-1) >= small:
        raise CheckpointError(f"{reference / 'tokenizer.json'}: token ids up to {max(vocab_small.values())} but the "
                              f"embeddings have {small} rows")
    added = sorted((index, token) for token, index in vocab_large.items() if token not in vocab_small)
    if any(index < small or index >= large for index, _ in added):
        bad = next((i, t) for i, t in added if i < small or i >= large)
        raise CheckpointError(f"tokenizers differ: {donor / 'tokenizer.json'} adds {bad[1]!r} at id {bad[0]}, not in "
                              f"the appended rows [{small}, {large}); union merges only vocabularies grown by "
                              "appended tokens")
    if _model_settings(reference) != _model_settings(donor):
        raise CheckpointError(f"tokenizers differ: {reference / 'tokenizer.json'} and {donor / 'tokenizer.json'} "
                              "have different merges or model settings; union merges only vocabularies grown by "
                              "appended tokens")


def _vocab_ids(vocab) -> dict[str, int]:
    """token -> id of a tokenizer model's vocabulary: a map for BPE and WordPiece, [piece, score] pairs
    (the id is the position) for Unigram."""
    if isinstance(vocab, list):
        return {entry[0]: index for index, entry in enumerate(vocab)}
    return dict(vocab or {})


def _merges(model: dict) -> list | None:
    merges = model.get("merges")
    if merges is None:
        return None
    return [merge.split(" ") if isinstance(merge, str) else list(merge) for merge in merges]


def _model_settings(folder: Path) -> str:
    """The tokenizer model of a folder's tokenizer.json without its vocabulary: merges and settings."""
    model = dict(json.loads((folder / "tokenizer.json").read_text()).get("model", {}))
    model.pop("vocab", None)
    if "merges" in model:
        model["merges"] = _merges(model)
    return json.dumps(model, sort_keys=True)


def _definition_difference(a: dict, b: dict) -> str | None:
    """The first difference between what two tokenizer.json files define (vocabulary, merges, added
    tokens), in words; None when they define the same."""
    model_a, model_b = a.get("model", {}), b.get("model", {})
    if json.dumps(model_a.get("vocab"), sort_keys=True) != json.dumps(model_b.get("vocab"), sort_keys=True):
        return _vocab_difference(_vocab_ids(model_a.get("vocab")), _vocab_ids(model_b.get("vocab")))
    merges_a, merges_b = _merges(model_a), _merges(model_b)
    if merges_a != merges_b:
        if merges_a is None or merges_b is None:
            return f"merges only in the {'second' if merges_a is None else 'first'}"
        for i, (merge_a, merge_b) in enumerate(zip(merges_a, merges_b)):
            if merge_a != merge_b:
                return f"merge {i} is {' '.join(merge_a)!r} in the first, {' '.join(merge_b)!r} in the second"
        return f"{len(merges_a)} merges in the first, {len(merges_b)} in the second"
    added_a = sorted((t.get("id"), t.get("content")) for t in a.get("added_tokens", []))
    added_b = sorted((t.get("id"), t.get("content")) for t in b.get("added_tokens", []))
    if added_a != added_b:
        return _vocab_difference({t: i for i, t in added_a}, {t: i for i, t in added_b}, "added token")
    return None


def _vocab_difference(ids_a: dict[str, int], ids_b: dict[str, int], what: str = "token") -> str:
    for token, index in sorted(ids_a.items(), key=lambda item: (item[1], item[0])):
        if ids_b.get(token) != index:
            where = f"id {ids_b[token]}" if token in ids_b else "absent"
            return f"{what} {token!r} is id {index} in the first, {where} in the second"
    for token, index in sorted(ids_b.items(), key=lambda item: (item[1], item[0])):
        if token not in ids_a:
            return f"{what} {token!r} (id {index}) is only in the second"
    return f"the {what}s have the same ids but different scores"


def _byte_difference(a: bytes, b: bytes) -> str | None:
    if a == b:
        return None
    offset = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"the files differ from byte {offset} ({len(a)} and {len(b)} bytes)"
