"""tokenizer_source: union, for a fine-tune that appended tokens (a pad token, say): rows [0, N)
of embed_tokens and lm_head merge as usual, rows [N, N + k) come from the parent that has them,
the output's vocabulary is the larger one and its chat template and generation config the base's.
Any other vocabulary difference is refused, naming both files."""

import json

import pytest
import torch
from hpcadapt_merge import run_merge
from hpcadapt_merge.checkpoint import CheckpointError
from merge_helpers import NEW_TOKEN as NEW
from merge_helpers import VOCAB_TENSORS as VOCAB
from merge_helpers import grow_vocabulary, load_tensors, slerp_config


@pytest.fixture(scope="module")
def grown(models, tmp_path_factory):
    return grow_vocabulary(models["tuned"], tmp_path_factory.mktemp("grown") / "tuned-pad")


def test_without_union_the_refusal_suggests_it(models, grown, tmp_path):
    with pytest.raises(CheckpointError, match="differing vocabulary sizes: .*config.json has vocab_size 320, "
                                              ".*tuned-pad/config.json has 321.*tokenizer_source: union"):
        run_merge(slerp_config({**models, "tuned": grown}), tmp_path / "out", progress=False)


@pytest.mark.parametrize("method", ["slerp", "ties", "dare_ties"])
def test_union_merges_the_common_rows_and_copies_the_new_one(models, grown, tmp_path, method):
    if method == "slerp":
        normal, union = slerp_config(models), slerp_config({**models, "tuned": grown}, tokenizer_source="union")
    else:
        def recipe(tuned, **extra):
            return {"merge_method": method, "base_model": str(models["base"]), "dtype": "bfloat16", **extra,
                    "models": [{"model": str(tuned), "parameters": {"weight": 0.6, "density": 0.5}},
                               {"model": str(models["other"]), "parameters": {"weight": 0.4, "density": 0.7}}]}
        normal, union = recipe(models["tuned"]), recipe(grown, tokenizer_source="union")
    run_merge(normal, tmp_path / "normal", progress=False, fsync=False)
    run_merge(union, tmp_path / "union", workers=2, progress=False, fsync=False)
    plain, merged, donor = load_tensors(tmp_path / "normal"), load_tensors(tmp_path / "union"), load_tensors(grown)
    for name, tensor in merged.items():
        if name in VOCAB:
            assert tensor.shape == (321, 64)
            assert torch.equal(tensor[:320].view(torch.int16), plain[name].view(torch.int16)), name
            assert torch.equal(tensor[320].view(torch.int16), donor[name][320].view(torch.int16)), name
        else:
            assert torch.equal(tensor.view(torch.int16), plain[name].view(torch.int16)), name
    out = tmp_path / "union"
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 321
    report = json.loads((out / "merge_report.json").read_text())
    assert report["vocabulary"] == {"merged_rows": 320, "copied_rows": 1, "copied_from": "tuned-pad",
                                    "added_tokens": [NEW]}


def test_union_output_tokenizer_has_the_new_token_and_the_base_chat_template(models, grown, tmp_path):
    from transformers import AutoTokenizer

    run_merge(slerp_config({**models, "tuned": grown}, tokenizer_source="union"), tmp_path / "out", progress=False,
              fsync=False)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer(f"{NEW} steel", add_special_tokens=False).input_ids[0] == 320
    assert tokenizer.convert_ids_to_tokens(320) == NEW and len(tokenizer) == 321
    base = AutoTokenizer.from_pretrained(models["base"])
    assert tokenizer.chat_template == base.chat_template
    generation_config = (tmp_path / "out" / "generation_config.json").read_bytes()
    assert generation_config == (models["base"] / "generation_config.json").read_bytes()


def test_union_also_works_when_the_base_has_the_larger_vocabulary(models, grown, tmp_path):
    config = slerp_config({**models, "base": grown, "tuned": models["tuned"]}, tokenizer_source="union")
    run_merge(config, tmp_path / "out", progress=False, fsync=False)
    merged = load_tensors(tmp_path / "out")
    assert merged[VOCAB[0]].shape == (321, 64)
    assert torch.equal(merged[VOCAB[0]][320].view(torch.int16), load_tensors(grown)[VOCAB[0]][320].view(torch.int16))


def test_union_refuses_a_vocabulary_that_was_not_only_appended_to(models, tmp_path):
    swapped = grow_vocabulary(models["tuned"], tmp_path / "swapped")
    tokenizer = json.loads((swapped / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[100:102]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (swapped / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(CheckpointError, match=r"tokenizers differ: .*base/tokenizer.json has .* at id 10\d "
                                              r"but .*swapped/tokenizer.json has it at 10\d"):
        run_merge(slerp_config({**models, "tuned": swapped}, tokenizer_source="union"), tmp_path / "out",
                  progress=False)
    merges = grow_vocabulary(models["tuned"], tmp_path / "merges")
    tokenizer = json.loads((merges / "tokenizer.json").read_text())
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][:-1]
    (merges / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(CheckpointError, match=r"tokenizers differ: .*base/tokenizer.json and "
                                              r".*merges/tokenizer.json have different merges"):
        run_merge(slerp_config({**models, "tuned": merges}, tokenizer_source="union"), tmp_path / "out",
                  progress=False)
