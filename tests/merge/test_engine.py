"""End-to-end merges of tiny bf16 models: results, determinism, streaming, output folder."""

import json

import pytest
import torch
from conftest import PAPER_T, folder_bytes, load_tensors, slerp_config
from test_methods import reference_slerp

from hpcadapt_merge import kernels, run_merge
from hpcadapt_merge.methods import slerp
from hpcadapt_merge.schedule import resolve_t


def test_slerp_merge_matches_reference_per_tensor(models, tmp_path):
    summary = run_merge(slerp_config(models), tmp_path / "out", workers=2, progress=False)
    merged, a, b = load_tensors(tmp_path / "out"), load_tensors(models["base"]), load_tensors(models["tuned"])
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())["tensors"]
    assert set(merged) == set(a) and summary.tensors == len(a)
    for name, out in merged.items():
        t = resolve_t(name, PAPER_T, 4)
        assert report[name]["t"] == t and out.dtype == torch.bfloat16
        if t in (0.0, 1.0):  # endpoints are byte copies of one parent
            assert torch.equal(out.view(torch.int16), (a if t == 0 else b)[name].view(torch.int16)), name
            continue
        ref, cos = reference_slerp(a[name].float().numpy(), b[name].float().numpy(), t)
        assert report[name]["cosine"] == pytest.approx(cos, abs=1e-5)  # float32 sums in mergekit's order
        assert report[name]["branch"] == ("lerp" if abs(report[name]["cosine"]) > 0.9995 else "slerp")
        ulps = (out.view(torch.int16).int() - torch.from_numpy(ref).reshape(out.shape).bfloat16().view(torch.int16).int()).abs()
        assert int(ulps.max()) <= 1, name
    assert {r["branch"] for r in report.values()} == {"lerp", "slerp"}


def test_output_bytes_do_not_depend_on_workers_or_io_chunking(models, tmp_path, monkeypatch):
    monkeypatch.setattr(slerp, "CHUNK", 1000)  # several reduction chunks per tensor, even in a tiny model
    config = slerp_config(models)
    run_merge(config, tmp_path / "w1", workers=1, progress=False, shard_size=100_000)
    run_merge(config, tmp_path / "w3", workers=3, progress=False, shard_size=100_000)
    monkeypatch.setattr(kernels, "DECODED_BYTES", 0)  # decode again in each pass instead of keeping floats
    monkeypatch.setattr(kernels, "MAP_WINDOW", 4096)  # and map the inputs a few pages at a time
    monkeypatch.setattr(kernels, "WRITE_PIECE", 4099)  # and write in odd-sized pieces
    run_merge(config, tmp_path / "streamed", workers=1, progress=False, shard_size=100_000)
    one = folder_bytes(tmp_path / "w1")
    assert sum(name.startswith("model-") for name in one) > 2
    assert one == folder_bytes(tmp_path / "w3") == folder_bytes(tmp_path / "streamed")


def test_output_folder_is_complete(models, tmp_path):
    run_merge(slerp_config(models), tmp_path / "out", progress=False, shard_size=100_000)
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == shards and shards[-1].endswith(f"-of-{len(shards):05d}.safetensors")
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in load_tensors(out).values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (models["base"] / name).read_bytes()
    card = (out / "README.md").read_text()
    assert "slerp" in card and "self_attn" in card and models["tuned"].name in card and str(models["base"]) not in card
    assert not list(tmp_path.glob(".*"))  # no staging left behind


def test_finished_output_is_not_overwritten_without_force(models, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        run_merge(slerp_config(models), tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    run_merge(slerp_config(models), tmp_path / "out", progress=False, force=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "merge_report.json").is_file()


def _multi_config(models, method, **params):
    return {
        "merge_method": method,
        "base_model": str(models["base"]),
        "models": [{"model": str(models["tuned"]), "parameters": {"weight": 0.6, "density": 0.5}},
                   {"model": str(models["other"]), "parameters": {"weight": 0.4, "density": 0.7}}],
        "parameters": params,
        "dtype": "bfloat16",
    }


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"])
def test_other_methods_match_their_formulas(models, tmp_path, method):
    from hpcadapt_merge.methods.dare import dare
    from hpcadapt_merge.methods.ties import ties

    config = _multi_config(models, method, **({"lambda": 0.9} if method != "linear" else {}))
    if method == "linear":
        config["models"].insert(0, {"model": str(models["base"]), "parameters": {"weight": 1.0}})
    if method in ("linear", "task_arithmetic"):
        for m in config["models"]:
            m["parameters"].pop("density", None)
    run_merge(config, tmp_path / "a", workers=2, progress=False)
    merged = load_tensors(tmp_path / "a")
    base, x1, x2 = (load_tensors(models[k]) for k in ("base", "tuned", "other"))
    name = "model.layers.1.mlp.up_proj.weight"
    b, t1, t2 = (d[name].float() for d in (base, x1, x2))
    if method == "linear":
        expected = (1.0 * b + 0.6 * t1 + 0.4 * t2) / 2.0
    elif method == "task_arithmetic":
        expected = b + 0.9 * (0.6 * (t1 - b) + 0.4 * (t2 - b))
    elif method == "ties":
        expected = ties(b, [t1, t2], [0.6, 0.4], [0.5, 0.7], lam=0.9)
    else:
        expected = dare(b, [t1, t2], [0.6, 0.4], [0.5, 0.7], seed=0, tensor_name=name, lam=0.9,
                        sign_election=method == "dare_ties", normalize=method == "dare_ties")
    diff = (merged[name].float() - expected).abs()
    assert float(diff.max()) <= float(expected.abs().max()) * 2**-7, method
    if method.startswith("dare"):  # seeded: a second run (other worker count) gives the same bytes
        run_merge(config, tmp_path / "b", workers=1, progress=False)
        assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
