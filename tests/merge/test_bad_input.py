"""Bad input fails before any tensor is merged, with an error naming file and tensor,
and leaves nothing behind."""

import json
import shutil
import struct

import pytest
import torch
from hpcadapt_merge import run_merge
from hpcadapt_merge.checkpoint import CheckpointError
from hpcadapt_merge.config import ConfigError
from merge_helpers import slerp_config
from safetensors.torch import load_file, save_file

EMBED = "model.embed_tokens.weight"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


@pytest.fixture
def broken(models, tmp_path):
    """A private copy of the tuned model to damage."""
    return shutil.copytree(models["tuned"], tmp_path / "broken")


def assert_fails(models, tmp_path, tuned, error, match, **config_changes):
    config = slerp_config({**models, "tuned": tuned})
    config.update(config_changes)
    with pytest.raises(error, match=match):
        run_merge(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def rewrite_weights(folder, edit):
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def split_in_two_shards(folder, second_from=10):
    """Rewrite `folder`'s model.safetensors as two shards: the first 10 tensors (by name) in the first, those
    from `second_from` on in the second. Returns the names and the index to write (first 10 in the first shard)."""
    weights = load_file(folder / "model.safetensors")
    names = sorted(weights)
    (folder / "model.safetensors").unlink()
    save_file({k: weights[k] for k in names[:10]}, folder / SHARDS[0], metadata={"format": "pt"})
    save_file({k: weights[k] for k in names[second_from:]}, folder / SHARDS[1], metadata={"format": "pt"})
    return names, {"metadata": {}, "weight_map": {k: SHARDS[0] if i < 10 else SHARDS[1] for i, k in enumerate(names)}}


def test_corrupt_header(models, tmp_path, broken):
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[8:20] = b"not json at "
    (broken / "model.safetensors").write_bytes(bytes(data))
    assert_fails(models, tmp_path, broken, CheckpointError, r"broken/model.safetensors: corrupt safetensors header")


def test_header_length_beyond_file(models, tmp_path, broken):
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(struct.pack("<Q", 10**9) + data[8:])
    assert_fails(models, tmp_path, broken, CheckpointError, "corrupt safetensors header")


def test_truncated_data(models, tmp_path, broken):
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[:-1000])
    assert_fails(models, tmp_path, broken, CheckpointError,
                 r"broken/model.safetensors: truncated — tensor '[^']+' ends at byte")


def test_missing_shard_and_missing_index_entry(models, tmp_path, broken):
    names, index = split_in_two_shards(broken)
    del index["weight_map"][names[3]]
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_fails(models, tmp_path, broken, CheckpointError,
                 f"tensor '{names[3]}' is in model-00001-of-00002.safetensors but has no index entry")
    (broken / SHARDS[1]).unlink()
    assert_fails(models, tmp_path, broken, CheckpointError,
                 r"model-00002-of-00002.safetensors: listed in model.safetensors.index.json .* but missing")


def test_tensor_in_one_parent_only(models, tmp_path, broken):
    rewrite_weights(broken, lambda s: s.pop("model.layers.2.mlp.up_proj.weight"))
    assert_fails(models, tmp_path, broken, CheckpointError,
                 r"tensor 'model.layers.2.mlp.up_proj.weight' is in .*base but not in .*broken")


def test_shape_and_dtype_mismatch(models, tmp_path, broken):
    name = "model.layers.1.self_attn.q_proj.weight"
    rewrite_weights(broken, lambda s: s.update({name: s[name][:-1].contiguous()}))
    assert_fails(models, tmp_path, broken, CheckpointError,
                 rf"shape mismatch: tensor '{name}' is \[64, 64\] in .* but \[63, 64\]")
    rewrite_weights(broken, lambda s: s.update({name: torch.zeros(64, 64, dtype=torch.float16)}))
    assert_fails(models, tmp_path, broken, CheckpointError, rf"dtype mismatch: tensor '{name}' is BF16 in .* but F16")


def test_vocabulary_sizes_differ(models, tmp_path, broken):
    rewrite_weights(broken, lambda s: s.update({EMBED: s[EMBED][:-8].contiguous()}))
    assert_fails(models, tmp_path, broken, CheckpointError, f"differing vocabulary sizes: tensor '{EMBED}'")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] - 8}))
    assert_fails(models, tmp_path, broken, CheckpointError, r"differing vocabulary sizes: .*config.json has vocab_size")


def test_tokenizers_differ(models, tmp_path, broken):
    tokenizer = json.loads((broken / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[100:102]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (broken / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert_fails(models, tmp_path, broken, CheckpointError, r"tokenizers differ: .*tokenizer.json")


def test_layer_counts_differ(models, tmp_path, broken):
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    assert_fails(models, tmp_path, broken, CheckpointError, "different layer counts: .* has 4 layers, .*broken has 3")


@pytest.mark.parametrize("t, match", [(1.5, r"parameters.t: 1.5 is outside \[0, 1\]"),
                                      ([{"filter": "mlp", "value": [0, -0.2]}, {"value": 0.5}], "-0.2 is outside"),
                                      ([{"filter": "mlpp", "value": 0.3}, {"value": 0.5}],
                                       "filter 'mlpp' matches no tensor")])
def test_bad_t(models, tmp_path, t, match):
    assert_fails(models, tmp_path, models["tuned"], ConfigError, match, parameters={"t": t})


def test_unknown_method_and_parameter(models, tmp_path):
    assert_fails(models, tmp_path, models["tuned"], ConfigError, "unknown merge_method 'slurp'", merge_method="slurp")
    assert_fails(models, tmp_path, models["tuned"], ConfigError, "slerp takes no parameter",
                 parameters={"t": 0.5, "density": 0.3})


def test_pickled_checkpoints_are_refused_with_a_hint(models, tmp_path, broken):
    (broken / "model.safetensors").unlink()
    (broken / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    assert_fails(models, tmp_path, broken, CheckpointError,
                 r"pytorch_model.bin.*never loaded.*save_pretrained\(OUT, safe_serialization=True\)")


def test_hub_ids_are_refused_and_relative_paths_resolve(models, tmp_path, monkeypatch):
    assert_fails(models, tmp_path, models["tuned"], ConfigError,
                 "base_model: .mistralai/Mistral-7B-Instruct-v0.3. is not a local model folder.*never downloads",
                 base_model="mistralai/Mistral-7B-Instruct-v0.3")
    monkeypatch.chdir(models["base"].parent)
    config = slerp_config({k: v.name for k, v in models.items()}, t=0.5)
    summary = run_merge(config, tmp_path / "out", progress=False)
    assert summary.tensors > 0


def rewrite_header(folder, edit=None, raw_edit=None, extra_bytes=b""):
    """Rewrite model.safetensors's JSON header (data bytes untouched) through `edit` (on the dict)
    or `raw_edit` (on the JSON text)."""
    path = folder / "model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    if edit:
        edit(header)
    text = json.dumps(header)
    if raw_edit:
        text = raw_edit(text)
    encoded = text.encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :] + extra_bytes)


Q_PROJ, O_PROJ = "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.o_proj.weight"


def test_overlapping_data_offsets(models, tmp_path, broken):
    rewrite_header(broken, lambda h: h[O_PROJ].update(data_offsets=h[Q_PROJ]["data_offsets"]))  # reads q_proj's bytes
    assert_fails(models, tmp_path, broken, CheckpointError,
                 r"broken/model.safetensors: tensor '[^']+' data_offsets \[\d+, \d+\] overlap tensor")


def test_gap_in_data_offsets(models, tmp_path, broken):
    rewrite_header(broken, lambda h: h.pop(Q_PROJ))  # its bytes stay, covered by no entry
    assert_fails(models, tmp_path, broken, CheckpointError,
                 r"broken/model.safetensors: gap of 8192 bytes after tensor '[^']+', before tensor")


def test_data_offsets_not_matching_shape_and_dtype(models, tmp_path, broken):
    rewrite_header(broken, lambda h: h[Q_PROJ].update(shape=[64, 32]))
    assert_fails(models, tmp_path, broken, CheckpointError,
                 rf"broken/model.safetensors: tensor '{Q_PROJ}' data_offsets \[\d+, \d+\] span 8192 bytes "
                 r"but BF16\[64, 32\] needs 4096")


def test_duplicate_tensor_names(models, tmp_path, broken):
    def duplicate(text):
        entry = json.dumps({Q_PROJ: json.loads(text)[Q_PROJ]})[1:-1]
        return text[:-1] + ", " + entry + "}"

    rewrite_header(broken, raw_edit=duplicate)
    assert_fails(models, tmp_path, broken, CheckpointError,
                 rf"broken/model.safetensors: duplicate tensor name '{Q_PROJ}'")


def test_metadata_that_is_not_a_string_map(models, tmp_path, broken):
    rewrite_header(broken, lambda h: h["__metadata__"].update(format=1))
    assert_fails(models, tmp_path, broken, CheckpointError,
                 r"broken/model.safetensors: header __metadata__ must map strings to strings, "
                 r"but key 'format' has a int value")


def test_bytes_after_the_last_tensor(models, tmp_path, broken):
    rewrite_header(broken, extra_bytes=b"\0" * 16)
    assert_fails(models, tmp_path, broken, CheckpointError,
                 r"broken/model.safetensors: 16 bytes after the last tensor .* not covered")


def test_a_tensor_in_two_shards(models, tmp_path, broken):
    names, index = split_in_two_shards(broken, second_from=9)  # tensor 9 in both
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_fails(models, tmp_path, broken, CheckpointError,
                 rf"model-00002-of-00002.safetensors: duplicate tensor name '{names[9]}': "
                 r"it is also in model-00001-of-00002.safetensors")
