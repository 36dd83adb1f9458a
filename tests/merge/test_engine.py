"""End-to-end merges of tiny bf16 models: results, determinism, streaming, output folder."""

import json

import pytest
import torch
from hpcadapt_merge import kernels, run_merge
from hpcadapt_merge.methods import slerp
from hpcadapt_merge.schedule import PAPER_SLERP_T, resolve_t
from merge_helpers import folder_bytes, load_tensors, slerp_config
from test_methods import reference_slerp


def test_slerp_merge_matches_reference_per_tensor(models, tmp_path):
    summary = run_merge(slerp_config(models), tmp_path / "out", workers=2, progress=False)
    merged, a, b = load_tensors(tmp_path / "out"), load_tensors(models["base"]), load_tensors(models["tuned"])
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())["tensors"]
    assert set(merged) == set(a) and summary.tensors == len(a)
    for name, out in merged.items():
        t = resolve_t(name, PAPER_SLERP_T, 4)
        assert report[name]["t"] == t and out.dtype == torch.bfloat16
        if t in (0.0, 1.0):  # endpoints are byte copies of one parent
            assert torch.equal(out.view(torch.int16), (a if t == 0 else b)[name].view(torch.int16)), name
            continue
        ref, cos = reference_slerp(a[name].float().numpy(), b[name].float().numpy(), t)
        assert report[name]["cosine"] == pytest.approx(cos, abs=1e-5)  # float32 sums in mergekit's order
        assert report[name]["branch"] == ("lerp" if abs(report[name]["cosine"]) > 0.9995 else "slerp")
        expected = torch.from_numpy(ref).reshape(out.shape).bfloat16()
        ulps = (out.view(torch.int16).int() - expected.view(torch.int16).int()).abs()
        assert int(ulps.max()) <= 1, name
    assert {r["branch"] for r in report.values()} == {"lerp", "slerp"}


def test_output_bytes_do_not_depend_on_workers_or_io_chunking(models, tmp_path, monkeypatch):
    monkeypatch.setattr(slerp, "CHUNK", 1000)  # several reduction chunks per tensor, even in a tiny model
    config = slerp_config(models)
    run_merge(config, tmp_path / "w1", workers=1, progress=False, shard_size=100_000, fsync=False)
    run_merge(config, tmp_path / "w3", workers=3, progress=False, shard_size=100_000)
    monkeypatch.setattr(kernels, "DECODED_BYTES", 0)  # decode again in each pass instead of keeping floats
    monkeypatch.setattr(kernels, "PIECE", 300)  # in pieces smaller than a reduction chunk
    monkeypatch.setattr(kernels, "MAP_WINDOW", 4096)  # and map the inputs a few pages at a time
    monkeypatch.setattr(kernels, "WRITE_PIECE", 4099)  # and write in odd-sized pieces
    run_merge(config, tmp_path / "streamed", workers=1, progress=False, shard_size=100_000)
    one = folder_bytes(tmp_path / "w1")
    assert sum(name.startswith("model-") for name in one) > 2
    assert one == folder_bytes(tmp_path / "w3") == folder_bytes(tmp_path / "streamed")


def test_speculated_linear_branch_gives_the_same_bytes(models, tmp_path, monkeypatch):
    """SLERP writes the linear branch's output during the dot pass when a sample predicts it; right or
    wrong, the bytes are those of the plain three passes."""
    monkeypatch.setattr(kernels, "DECODED_BYTES", 0)  # every tensor takes the streaming path
    config = slerp_config(models)
    outputs, guesses, passes = {}, [], []
    real_write = kernels._Output.write

    def write(self, start, values):
        passes.append(self)
        return real_write(self, start, values)

    monkeypatch.setattr(kernels._Output, "write", write)
    for guess in (None, True, False):
        if guess is not None:
            monkeypatch.setattr(kernels, "_looks_linear", lambda *args, guess=guess: guesses.append(guess) or guess)
        passes.clear()
        run_merge(config, tmp_path / str(guess), workers=1, progress=False, fsync=False)
        outputs[guess] = (load_tensors(tmp_path / str(guess)), len(set(map(id, passes))))
    report = json.loads((tmp_path / "None" / "merge_report.json").read_text())["tensors"]
    linear = sum(entry["branch"] == "lerp" and 0 < entry["t"] < 1 for entry in report.values())
    slerp_ = sum(entry["branch"] == "slerp" and 0 < entry["t"] < 1 for entry in report.values())
    assert linear and slerp_ and True in guesses and False in guesses
    assert outputs[True][1] == linear + 2 * slerp_  # a right guess writes once, a wrong one twice
    assert outputs[False][1] == linear + slerp_
    for name in outputs[None][0]:
        for guess in (True, False):
            plain, speculated = outputs[None][0][name], outputs[guess][0][name]
            assert torch.equal(plain.view(torch.int16), speculated.view(torch.int16)), name


@pytest.mark.parametrize("method, params", [("ties", {"rescale": True}), ("dare_ties", {}), ("linear", {})])
def test_other_methods_do_not_depend_on_workers_or_chunking(models, tmp_path, monkeypatch, method, params):
    """TIES's histograms and cut, DARE's stream and rescale sums, linear's FMAs: the same bytes
    whatever the chunk, window and worker count."""
    config = multi_config(models, method, **params)
    run_merge(config, tmp_path / "w2", workers=2, progress=False, fsync=False, random_seed=2)
    monkeypatch.setattr(kernels, "CHUNK", 1024)  # tensors of 2048 to 20480 elements: 2 to 20 chunks
    monkeypatch.setattr(kernels, "SMALL_WINDOW", 4096)
    run_merge(config, tmp_path / "w1", workers=1, progress=False, fsync=False, random_seed=2)
    assert folder_bytes(tmp_path / "w2") == folder_bytes(tmp_path / "w1")


def test_output_folder_is_complete(models, tmp_path):
    run_merge(slerp_config(models), tmp_path / "out", progress=False, shard_size=100_000)
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == shards
    assert shards[-1].endswith(f"-of-{len(shards):05d}.safetensors")
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


def multi_config(models, method, dtype="bfloat16", **params) -> dict:
    """A three-parent recipe (base + two fine-tunes) for the methods other than SLERP."""
    config = {
        "merge_method": method,
        "base_model": str(models["base"]),
        "models": [{"model": str(models["tuned"]), "parameters": {"weight": 0.6, "density": 0.5}},
                   {"model": str(models["other"]), "parameters": {"weight": 0.4, "density": 0.7}}],
        "parameters": params,
        "dtype": dtype,
    }
    if method == "linear":
        config["models"] = [{"model": str(models["base"]), "parameters": {"weight": 0.3}}] + [
            {"model": m["model"], "parameters": {"weight": m["parameters"]["weight"]}} for m in config["models"]]
    if method == "task_arithmetic":
        for m in config["models"]:
            m["parameters"].pop("density")
    return config


DEFAULTS = {"linear": (True, False), "task_arithmetic": (False, False), "ties": (True, False),
            "dare_ties": (False, True), "dare_linear": (False, True)}  # mergekit's (normalize, rescale)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"])
def test_methods_equal_the_mergekit_reference_bit_for_bit(models, tmp_path, method, dtype):
    """Every tensor, with mergekit's defaults, against mergekit_reference.py (whole tensors, the
    recipe's dtype for every step, DARE's masks from one generator through the tensors in name order)."""
    import mergekit_reference as ref

    lam = 1.0 if method == "linear" else 0.9
    run_merge(multi_config(models, method, dtype, **({} if method == "linear" else {"lambda": lam})), tmp_path / "a",
              workers=2, progress=False, random_seed=11, fsync=False)
    merged = load_tensors(tmp_path / "a")
    parents = [load_tensors(models[k]) for k in ("base", "tuned", "other")]
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(11)
    normalize, rescale = DEFAULTS[method]
    for name in sorted(merged):
        base, x1, x2 = (p[name].to(torch_dtype) for p in parents)
        if method == "linear":
            expected = ref.linear([base, x1, x2], [0.3, 0.6, 0.4])
        else:
            densities = [1.0, 1.0] if method == "task_arithmetic" else [0.5, 0.7]
            expected = ref.generalized_task_arithmetic(method, base, [x1, x2], [0.6, 0.4], densities,
                                                       normalize=normalize, rescale=rescale, lam=lam,
                                                       generator=generator)
        assert merged[name].dtype == torch_dtype
        assert torch.equal(merged[name].view(torch.uint8), expected.view(torch.uint8)), name


def test_dare_is_reproducible_from_its_seed_and_independent_of_workers(models, tmp_path):
    config = multi_config(models, "dare_ties")
    run_merge(config, tmp_path / "a", workers=2, progress=False, random_seed=3, fsync=False)
    run_merge(config, tmp_path / "b", workers=1, progress=False, random_seed=3, fsync=False, shard_size=100_000)
    run_merge(config, tmp_path / "c", workers=2, progress=False, random_seed=4, fsync=False)
    a, b, c = (load_tensors(tmp_path / k) for k in "abc")
    assert all(torch.equal(a[k].view(torch.int16), b[k].view(torch.int16)) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert json.loads((tmp_path / "a" / "merge_report.json").read_text())["options"]["random_seed"] == 3


def test_precise_mode_is_closer_to_float64(models, tmp_path):
    """--precise keeps intermediates in float32: more elements are the correctly rounded bfloat16
    of a float64 computation than with mergekit's bfloat16 steps."""
    config = multi_config(models, "task_arithmetic", **{"lambda": 0.9})
    run_merge(config, tmp_path / "default", progress=False, fsync=False)
    run_merge(config, tmp_path / "precise", progress=False, fsync=False, precise=True)
    default, precise = load_tensors(tmp_path / "default"), load_tensors(tmp_path / "precise")
    base, x1, x2 = (load_tensors(models[k]) for k in ("base", "tuned", "other"))
    right = {"default": 0, "precise": 0}
    total = 0
    for name in default:
        b, t1, t2 = (d[name].double() for d in (base, x1, x2))
        exact = (b + 0.9 * (0.6 * (t1 - b) + 0.4 * (t2 - b))).float().bfloat16()
        total += exact.numel()
        for label, out in (("default", default), ("precise", precise)):
            right[label] += int((out[name] == exact).sum())
    assert right["precise"] / total > 0.999 and right["default"] / total < 0.99
    assert json.loads((tmp_path / "precise" / "merge_report.json").read_text())["options"]["precise"] is True
