"""One rule for "these folders tokenize alike": the merger's plan and the toolkit's evaluation
(hpcadapt.eval.model_dir.check_same_tokenizer) both ask hpcadapt_merge.tokenizer, so they accept
and refuse the same pairs, and a refusal names both files and the first difference."""

import json
import shutil

import pytest
from hpcadapt_merge.checkpoint import CheckpointError
from hpcadapt_merge.config import load_config
from hpcadapt_merge.plan import build_plan
from hpcadapt_merge.tokenizer import compare_tokenizers
from merge_helpers import grow_vocabulary, slerp_config

from hpcadapt.eval.model_dir import ModelDirError, check_same_tokenizer

PAD = "<|extra_pad|>"


def edit_tokenizer(src, dst, edit):
    """A copy of the model folder `src` whose tokenizer.json `edit` changed in place."""
    if not dst.exists():
        shutil.copytree(src, dst)
    data = json.loads((dst / "tokenizer.json").read_text())
    edit(data)
    (dst / "tokenizer.json").write_text(json.dumps(data))
    return dst


def swap_ids(data):
    vocab = data["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[100:102]
    vocab[first], vocab[second] = vocab[second], vocab[first]


def drop_last_merge(data):
    data["model"]["merges"] = data["model"]["merges"][:-1]


def merger_verdict(base, other):
    """None when the merger plans the merge of `base` and `other` (with tokenizer_source: union, its most
    lenient setting), else its refusal; and the folder the appended rows would come from."""
    config = load_config(slerp_config({"base": base, "tuned": other}, tokenizer_source="union"))
    try:
        plan = build_plan(config)
    except CheckpointError as error:
        return str(error), None
    return None, plan.vocab.donor if plan.vocab else None


def evaluation_verdict(base, other):
    try:
        match = check_same_tokenizer({"base": base, "other": other})
    except ModelDirError as error:
        return str(error), None
    return None, match.donor


@pytest.fixture(scope="module")
def variants(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer-variants")
    tuned = models["tuned"]
    grown = grow_vocabulary(tuned, root / "appended-pad", tokens=(PAD,))
    return {
        "same": (tuned, None),
        "appended pad token": (grown, grown),
        "swapped token ids": (edit_tokenizer(tuned, root / "swapped", swap_ids), "refused"),
        "different merges": (edit_tokenizer(tuned, root / "merges", drop_last_merge), "refused"),
        "appended, then swapped": (edit_tokenizer(grown, root / "grown-swapped", swap_ids), "refused"),
        "appended, other merges": (edit_tokenizer(grown, root / "grown-merges", drop_last_merge), "refused"),
    }


@pytest.mark.parametrize("case", ["same", "appended pad token", "swapped token ids", "different merges",
                                  "appended, then swapped", "appended, other merges"])
def test_the_merger_and_the_evaluation_agree(models, variants, case):
    other, expected = variants[case]
    merger_error, merger_donor = merger_verdict(models["base"], other)
    evaluation_error, evaluation_donor = evaluation_verdict(models["base"], other)
    if expected == "refused":
        assert merger_error and evaluation_error, (merger_error, evaluation_error)
        assert merger_error.startswith("tokenizers differ: ") and "different tokenizers" in evaluation_error
        assert merger_error in evaluation_error  # the evaluation gives the merger's reason
    else:
        assert merger_error is None and evaluation_error is None, (merger_error, evaluation_error)
        assert merger_donor == evaluation_donor == expected


def test_a_refusal_names_both_files_and_the_first_difference(models, variants):
    swapped, merges = variants["swapped token ids"][0], variants["different merges"][0]
    with pytest.raises(CheckpointError, match=r"tokenizers differ: .*base/tokenizer.json and .*swapped/tokenizer.json "
                                              r"define different vocabularies; merge parents must share one tokenizer "
                                              r"\(first difference: token '.+' is id 10\d in the first, id 10\d in the "
                                              r"second\)"):
        compare_tokenizers([models["base"], swapped])
    with pytest.raises(CheckpointError, match=r"merges/tokenizer.json define .*\(first difference: \d+ merges in the "
                                              r"first, \d+ in the second\)"):
        compare_tokenizers([models["base"], merges])


def test_the_order_of_the_folders_names_the_donor_and_the_appended_tokens(models, variants):
    grown = variants["appended pad token"][0]
    for folders in ([models["base"], grown, models["tuned"]], [grown, models["base"]]):
        match = compare_tokenizers(folders)
        assert not match.exact and match.donor == grown and match.added_tokens == (PAD,)
    assert compare_tokenizers([models["base"], models["tuned"]]).exact
    with pytest.raises(CheckpointError, match="define different vocabularies"):
        compare_tokenizers([models["base"], grown], appended=False)


def test_fine_tunes_that_appended_different_tokens_are_refused(models, tmp_path):
    one = grow_vocabulary(models["tuned"], tmp_path / "one", tokens=("<|one|>",))
    two = grow_vocabulary(models["tuned"], tmp_path / "two", tokens=("<|two|>",))
    longer = grow_vocabulary(models["tuned"], tmp_path / "longer", tokens=("<|two|>", "<|three|>"))
    with pytest.raises(ModelDirError, match=r"different tokenizers .*token '<\|one\|>' is id 320 in the first, absent"):
        check_same_tokenizer({"base": models["base"], "one": one, "two": two})
    with pytest.raises(ModelDirError, match=r"different tokenizers .*one/tokenizer.json has '<\|one\|>' at id 320 but "
                                            r".*longer/tokenizer.json has it at None"):
        check_same_tokenizer({"base": models["base"], "one": one, "longer": longer})
    assert check_same_tokenizer({"base": models["base"], "two": two, "longer": longer}).donor == longer


def test_merges_written_as_strings_or_as_pairs_are_the_same_merges(models, tmp_path):
    from tokenizers import Tokenizer

    def as_strings(data):
        data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]

    legacy = edit_tokenizer(models["tuned"], tmp_path / "legacy", as_strings)
    text = "steel grain boundary 12 fatigue crack"
    assert (Tokenizer.from_file(str(legacy / "tokenizer.json")).encode(text).ids
            == Tokenizer.from_file(str(models["base"] / "tokenizer.json")).encode(text).ids)
    assert merger_verdict(models["base"], legacy) == (None, None)
    assert evaluation_verdict(models["base"], legacy) == (None, None)


def test_sentencepiece_only_folders_compare_byte_for_byte(models, tmp_path):
    folders = {}
    for name, content in (("a", b"\x0a\x05piece"), ("b", b"\x0a\x05piece"), ("c", b"\x0a\x05pieze")):
        folders[name] = shutil.copytree(models["tuned"], tmp_path / name)
        (folders[name] / "tokenizer.json").unlink()
        (folders[name] / "tokenizer.model").write_bytes(content)
    assert merger_verdict(folders["a"], folders["b"]) == (None, None)
    assert evaluation_verdict(folders["a"], folders["b"]) == (None, None)
    error = r"c/tokenizer.model define different vocabularies.*\(first difference: the files differ from byte 5"
    with pytest.raises(CheckpointError, match=error):
        build_plan(load_config(slerp_config({"base": folders["a"], "tuned": folders["c"]})))
    with pytest.raises(ModelDirError, match="different tokenizers .*" + error):
        check_same_tokenizer({"a": folders["a"], "c": folders["c"]})
    with pytest.raises(ModelDirError, match=r"tokenizers cannot be compared: .*a holds tokenizer.model; .*base holds "
                                            r"tokenizer.json; they share no tokenizer file"):
        check_same_tokenizer({"a": folders["a"], "base": models["base"]})
